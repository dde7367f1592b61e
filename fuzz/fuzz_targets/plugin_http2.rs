//! The plugin socket's HTTP/2 rewriter (kms-plugin/src/http2): any bytes a client may
//! send, cut into chunks where the input says. Invariants: never a panic; when the
//! connection survives, every header block written decodes with a fresh HPACK decoder
//! (literals only, so none depends on another) and holds no :authority that `http`
//! refuses, and frames other than HEADERS/CONTINUATION pass through unchanged.
#![no_main]

use kms_plugin::http2::HeaderRewriter;
use kms_plugin::http2::hpack::Decoder;
use kms_plugin::http2::rewrite::{MAX_HEADER_BLOCK, PREFACE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    // The seeds are real client streams after the preface; a leading 0 feeds them whole,
    // n > 0 in pieces of 7n bytes.
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(bytes);
    let chunk = if cut == 0 {
        input.len()
    } else {
        usize::from(cut) * 7
    };
    let mut rewriter = HeaderRewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        if rewriter.feed(piece, &mut out).is_err() {
            return;
        }
    }
    // Check what was written: complete frames only (a tail may be in flight).
    let mut rest = &out[PREFACE.len()..];
    let mut block: Vec<u8> = Vec::new();
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        let (kind, flags) = (rest[3], rest[4]);
        if kind == 0x1 || (kind == 0x9 && !block.is_empty()) {
            let start = if kind == 0x1 && flags & 0x20 != 0 {
                5
            } else {
                0
            };
            assert_eq!(flags & 0x8, 0, "rewritten HEADERS carry no padding");
            block.extend_from_slice(&payload[start..]);
            if flags & 0x4 != 0 {
                let fields = Decoder::new(MAX_HEADER_BLOCK)
                    .decode(&block)
                    .expect("a rewritten block decodes on its own");
                for (name, value) in fields {
                    if name == b":authority" {
                        assert!(http::uri::Authority::try_from(value.as_slice()).is_ok());
                    }
                }
                kubekms_fuzz::trace(format_args!("rewritten block ok"));
                block.clear();
            }
        }
        rest = &rest[9 + len..];
    }
});
