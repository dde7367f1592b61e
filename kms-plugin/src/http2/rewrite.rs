//! The client-to-server byte stream of one HTTP/2 connection, rewritten so that h2 accepts
//! any `:authority`: every header block is decoded (the client's dynamic table mirrored)
//! and written again as literals without indexing, less an `:authority` that is not a
//! valid URI authority. Every other frame passes through byte for byte.
//!
//! Sans-I/O: [`HeaderRewriter::feed`] takes bytes as they arrive and appends what the
//! server is to read; the fuzz target drives it directly.

use super::hpack::{Decoder, HpackError, encode_literal};

/// The connection preface of a client (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest header block (all its fragments) held while its CONTINUATION frames
/// arrive, and the largest decoded header list: far above h2's own limit (hyper's 16 KiB
/// default), so h2, not this layer, refuses large headers with its usual stream error.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// The frame payload size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's minimum):
/// rewritten blocks are cut at it.
const MAX_OUT_FRAME: usize = 16_384;

const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why the connection must end (each is a connection error in HTTP/2 too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A header block cannot be decoded.
    #[error("HPACK: {0}")]
    Hpack(#[from] HpackError),
    /// A HEADERS frame whose padding or priority passes its end.
    #[error("malformed HEADERS frame")]
    MalformedHeaders,
    /// A frame other than CONTINUATION (of the same stream) inside a header block, or a
    /// PUSH_PROMISE, which a client never sends.
    #[error("unexpected frame type {0:#x} inside or instead of a header block")]
    UnexpectedFrame(u8),
    /// A header block over [`MAX_HEADER_BLOCK`].
    #[error("header block over {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
}

#[derive(Debug)]
enum Phase {
    /// Checking the preface; the count of its bytes seen so far.
    Preface(usize),
    /// Reading frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: forwarded untouched (h2 answers it as it would).
    Verbatim,
}

#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

/// The rewriter of one connection.
#[derive(Debug)]
pub struct HeaderRewriter {
    phase: Phase,
    decoder: Decoder,
    input: Vec<u8>,
    /// Payload bytes of a forwarded frame still to copy as they arrive.
    copy_remaining: usize,
    open: Option<OpenBlock>,
    dropped_authorities: u64,
}

impl Default for HeaderRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderRewriter {
    /// A rewriter for a new connection.
    #[must_use]
    pub fn new() -> Self {
        Self {
            phase: Phase::Preface(0),
            decoder: Decoder::new(MAX_HEADER_BLOCK),
            input: Vec::new(),
            copy_remaining: 0,
            open: None,
            dropped_authorities: 0,
        }
    }

    /// How many `:authority` fields were dropped so far.
    #[must_use]
    pub fn dropped_authorities(&self) -> u64 {
        self.dropped_authorities
    }

    /// Takes the next bytes from the client and appends to `out` what the server is to
    /// read; bytes of an incomplete header frame are kept for the next call.
    ///
    /// # Errors
    /// [`RewriteError`]: the connection must end.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut bytes = bytes;
        if let Phase::Preface(seen) = self.phase {
            let want = &PREFACE[seen..];
            let n = want.len().min(bytes.len());
            out.extend_from_slice(&bytes[..n]);
            if bytes[..n] != want[..n] {
                self.phase = Phase::Verbatim;
                out.extend_from_slice(&bytes[n..]);
                return Ok(());
            }
            bytes = &bytes[n..];
            self.phase = if seen + n == PREFACE.len() {
                Phase::Frames
            } else {
                Phase::Preface(seen + n)
            };
        }
        match self.phase {
            Phase::Preface(_) => Ok(()),
            Phase::Verbatim => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Phase::Frames => self.frames(bytes, out),
        }
    }

    /// The client closed its side: whatever is held (an incomplete frame) goes to the
    /// server as it came, which then sees the same truncation.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.input);
    }

    fn frames(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        // A forwarded payload is copied straight through, without buffering.
        if self.input.is_empty() {
            let n = self.copy_remaining.min(bytes.len());
            out.extend_from_slice(&bytes[..n]);
            self.copy_remaining -= n;
            bytes = &bytes[n..];
        }
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            if self.copy_remaining > 0 {
                let n = self.copy_remaining.min(self.input.len() - at);
                out.extend_from_slice(&self.input[at..at + n]);
                self.copy_remaining -= n;
                at += n;
                if self.copy_remaining > 0 {
                    break Ok(());
                }
            }
            let Some(head) = self.input.get(at..at + FRAME_HEADER) else {
                break Ok(());
            };
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let kind = head[3];
            let flags = head[4];
            let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let in_block = self.open.is_some();
            if kind == TYPE_PUSH_PROMISE || (in_block && kind != TYPE_CONTINUATION) {
                break Err(RewriteError::UnexpectedFrame(kind));
            }
            if kind != TYPE_HEADERS && !(kind == TYPE_CONTINUATION && in_block) {
                // Not ours to read (a stray CONTINUATION included: h2 refuses it itself).
                out.extend_from_slice(head);
                at += FRAME_HEADER;
                self.copy_remaining = len;
                continue;
            }
            let held = self.open.as_ref().map_or(0, |b| b.fragments.len());
            if held + len > MAX_HEADER_BLOCK + 256 {
                break Err(RewriteError::BlockTooLarge);
            }
            let Some(payload) = self.input.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
                break Ok(());
            };
            let step = if kind == TYPE_HEADERS {
                Self::open_block(flags, stream_id, payload).map(|b| self.open = Some(b))
            } else {
                match self.open.as_mut() {
                    Some(b) if b.stream_id == stream_id => {
                        b.fragments.extend_from_slice(payload);
                        Ok(())
                    }
                    _ => Err(RewriteError::UnexpectedFrame(kind)),
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
            at += FRAME_HEADER + len;
            if flags & FLAG_END_HEADERS != 0
                && let Some(block) = self.open.take()
                && let Err(e) = self.close_block(block, out)
            {
                break Err(e);
            }
        };
        self.input.drain(..at);
        result
    }

    fn open_block(flags: u8, stream_id: u32, payload: &[u8]) -> Result<OpenBlock, RewriteError> {
        let mut body = payload;
        let mut pad = 0;
        if flags & FLAG_PADDED != 0 {
            let (&p, rest) = body.split_first().ok_or(RewriteError::MalformedHeaders)?;
            pad = usize::from(p);
            body = rest;
        }
        let priority = if flags & FLAG_PRIORITY != 0 {
            let (p, rest) = body
                .split_first_chunk::<5>()
                .ok_or(RewriteError::MalformedHeaders)?;
            body = rest;
            Some(*p)
        } else {
            None
        };
        let fragment = body
            .len()
            .checked_sub(pad)
            .and_then(|end| body.get(..end))
            .ok_or(RewriteError::MalformedHeaders)?;
        Ok(OpenBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragments: fragment.to_vec(),
        })
    }

    fn close_block(&mut self, block: OpenBlock, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let fields = self.decoder.decode(&block.fragments)?;
        let mut encoded = Vec::with_capacity(block.fragments.len() * 2);
        for (name, value) in &fields {
            if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                self.dropped_authorities += 1;
                continue;
            }
            encode_literal(&mut encoded, name, value);
        }
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        let mut payload = Vec::with_capacity(encoded.len() + 5);
        if let Some(p) = block.priority {
            flags |= FLAG_PRIORITY;
            payload.extend_from_slice(&p);
        }
        payload.extend_from_slice(&encoded);
        let mut chunks = payload.chunks(MAX_OUT_FRAME).peekable();
        let mut kind = TYPE_HEADERS;
        // An empty block still needs its HEADERS frame.
        let first: &[u8] = chunks.next().unwrap_or(&[]);
        let mut chunk = first;
        loop {
            let last = chunks.peek().is_none();
            let f = if last {
                flags | FLAG_END_HEADERS
            } else {
                flags
            };
            write_frame(out, kind, f, block.stream_id, chunk);
            match chunks.next() {
                Some(next) => {
                    chunk = next;
                    kind = TYPE_CONTINUATION;
                    flags = 0;
                }
                None => break,
            }
        }
        Ok(())
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::super::hpack::huffman_encode;
    use super::*;

    /// A block as gRPC C-core writes it: Huffman strings, the authority indexed into the
    /// dynamic table.
    fn c_core_block(authority: &str, path: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x44); // :path, incremental indexing
        huff(&mut b, path);
        b.push(0x41); // :authority, incremental indexing
        huff(&mut b, authority);
        b.extend_from_slice(&[0x40]);
        huff(&mut b, "te");
        huff(&mut b, "trailers");
        b
    }

    fn huff(b: &mut Vec<u8>, text: &str) {
        let h = huffman_encode(text.as_bytes());
        assert!(h.len() < 127);
        b.push(0x80 | h.len() as u8);
        b.extend_from_slice(&h);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, flags, stream, payload);
        out
    }

    /// Parses the rewritten stream back into (kind, flags, stream, header fields or raw).
    fn read_back(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, HeaderRewriter) {
        let mut r = HeaderRewriter::new();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out).expect("feed");
        }
        (out, r)
    }

    #[test]
    fn a_percent_encoded_authority_is_dropped_and_everything_else_kept() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let block = c_core_block("%2Ftmp%2Fkms.sock", "/v2.KeyManagementService/Status");
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // The second request names its fields by their dynamic indexes, newest first:
        // te is 62, :authority 63, :path 64.
        let mut second = vec![0x83, 0x86];
        second.extend_from_slice(&[0xc0, 0xbf, 0xbe]); // :path, :authority, te
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second));
        // Byte by byte, so every partial state is crossed.
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (out, r) = run(&chunks);
        assert_eq!(r.dropped_authorities(), 2);
        let frames = read_back(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].0, 0x4);
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        let mut d = Decoder::new(1 << 16);
        for (i, stream) in [(1, 1), (3, 3)] {
            let (kind, flags, id, payload) = &frames[i];
            assert_eq!(
                (*kind, *flags, *id),
                (TYPE_HEADERS, FLAG_END_HEADERS, stream)
            );
            let fields = d.decode(payload).expect("decode");
            let names: Vec<&[u8]> = fields.iter().map(|(n, _)| n.as_slice()).collect();
            assert_eq!(names, [&b":method"[..], b":scheme", b":path", b"te"]);
            assert_eq!(fields[2].1, b"/v2.KeyManagementService/Status");
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut input = PREFACE.to_vec();
        let block = c_core_block("localhost", "/v2.KeyManagementService/Status");
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &block,
        ));
        let (out, r) = run(&[&input]);
        assert_eq!(r.dropped_authorities(), 0);
        let frames = read_back(&out);
        let fields = Decoder::new(1 << 16).decode(&frames[0].3).expect("decode");
        assert!(fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert_eq!(frames[0].1, FLAG_END_HEADERS | FLAG_END_STREAM);
    }

    #[test]
    fn padding_priority_and_continuations_are_understood_and_large_blocks_split() {
        let mut block = vec![0x83, 0x86, 0x84];
        let big = "x".repeat(20_000);
        encode_literal(&mut block, b"a", big.as_bytes());
        let mut headers_payload = vec![3]; // pad length
        headers_payload.extend_from_slice(&[0x80, 0, 0, 1, 16]); // priority
        headers_payload.extend_from_slice(&block[..100]);
        headers_payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            5,
            &headers_payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, &block[100..10_000]));
        input.extend(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            5,
            &block[10_000..],
        ));
        let (out, _) = run(&[&input[..7000], &input[7000..]]);
        let frames = read_back(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, TYPE_HEADERS);
        assert_eq!(frames[0].1, FLAG_PRIORITY);
        assert_eq!(frames[0].3.len(), MAX_OUT_FRAME);
        assert_eq!(&frames[0].3[..5], &[0x80, 0, 0, 1, 16]);
        assert_eq!(
            (frames[1].0, frames[1].1),
            (TYPE_CONTINUATION, FLAG_END_HEADERS)
        );
        let mut joined = frames[0].3[5..].to_vec();
        joined.extend_from_slice(&frames[1].3);
        let fields = Decoder::new(1 << 16).decode(&joined).expect("decode");
        assert_eq!(fields[3], (b"a".to_vec(), big.into_bytes()));
    }

    #[test]
    fn protocol_violations_end_the_connection() {
        let mut open = PREFACE.to_vec();
        open.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        let mut r = HeaderRewriter::new();
        let mut out = Vec::new();
        r.feed(&open, &mut out).expect("open block");
        assert_eq!(
            r.feed(&frame(0x0, 0, 1, b"x"), &mut out),
            Err(RewriteError::UnexpectedFrame(0))
        );
        let mut r = HeaderRewriter::new();
        r.feed(&open, &mut out).expect("open block");
        assert_eq!(
            r.feed(
                &frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x82]),
                &mut out
            ),
            Err(RewriteError::UnexpectedFrame(TYPE_CONTINUATION))
        );
        for (flags, payload) in [(FLAG_PADDED, vec![5, 0x82]), (FLAG_PRIORITY, vec![0, 0])] {
            let mut input = PREFACE.to_vec();
            input.extend(frame(TYPE_HEADERS, flags | FLAG_END_HEADERS, 1, &payload));
            assert_eq!(
                HeaderRewriter::new().feed(&input, &mut Vec::new()),
                Err(RewriteError::MalformedHeaders)
            );
        }
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xbe]));
        assert_eq!(
            HeaderRewriter::new().feed(&input, &mut Vec::new()),
            Err(RewriteError::Hpack(HpackError::BadIndex(62)))
        );
        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&[0x10, 0, 0, TYPE_HEADERS, 0, 0, 0, 0, 1]);
        assert_eq!(
            HeaderRewriter::new().feed(&huge, &mut Vec::new()),
            Err(RewriteError::BlockTooLarge)
        );
    }

    #[test]
    fn not_http2_passes_through_untouched() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, _) = run(&[&request[..3], &request[3..]]);
        assert_eq!(out, request);
        // A stray CONTINUATION and an unknown frame type go to h2 as they came.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0xbe]));
        input.extend(frame(0xfa, 0, 0, b"whatever"));
        let (out, _) = run(&[&input]);
        assert_eq!(out, input);
    }
}
