//! HPACK (RFC 7541): a decoder that mirrors the client's dynamic table, and an encoder
//! that writes only literals without indexing, so the block it writes leaves the
//! server's dynamic table empty and depends on no earlier block.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// A decoded header field: name and value as sent (not validated: h2 validates them
/// after the rewrite, exactly as it would have without it).
pub type Field = (Vec<u8>, Vec<u8>);

/// The dynamic table size that h2 advertises (SETTINGS_HEADER_TABLE_SIZE, its default and
/// the one hyper and tonic keep): an encoder may not ask for more.
pub const MAX_DYNAMIC_TABLE_SIZE: usize = 4096;

/// Why a header block cannot be decoded: each is a COMPRESSION_ERROR of HTTP/2, which
/// ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer longer than any limit allows.
    #[error("integer overflow")]
    IntegerOverflow,
    /// Index 0, or past the static and dynamic tables.
    #[error("header index {0} out of range")]
    BadIndex(usize),
    /// A dynamic table size update above the advertised limit, or after a field.
    #[error("invalid dynamic table size update")]
    BadSizeUpdate,
    /// Huffman: the EOS symbol, padding longer than 7 bits or not all ones.
    #[error("invalid Huffman string")]
    BadHuffman,
    /// The decoded header list passes the caller's limit.
    #[error("header list larger than {0} bytes")]
    ListTooLarge(usize),
}

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The per-entry overhead of the dynamic table (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Integers past this are refused: no length, index or size of a sane block comes near.
const MAX_INTEGER: usize = 1 << 28;

/// The decoder of one connection: its dynamic table follows the client's encoder.
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first (index 62 is the front).
    table: VecDeque<Field>,
    size: usize,
    max_size: usize,
    max_list_size: usize,
}

impl Decoder {
    /// A decoder whose table starts at [`MAX_DYNAMIC_TABLE_SIZE`] and that refuses blocks
    /// whose header list (RFC 7540 §6.5.2: names + values + 32 per field) passes
    /// `max_list_size`.
    #[must_use]
    pub fn new(max_list_size: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: MAX_DYNAMIC_TABLE_SIZE,
            max_list_size,
        }
    }

    /// Decodes one complete header block, updating the dynamic table as the client's
    /// encoder did.
    ///
    /// # Errors
    /// [`HpackError`]; the table is then out of step with the client's and the connection
    /// must end.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        let mut rest = block;
        while let Some(&first) = rest.first() {
            let field = if first & 0x80 != 0 {
                let (index, n) = decode_integer(rest, 7)?;
                rest = &rest[n..];
                self.entry(index)?
            } else if first & 0xc0 == 0x40 {
                let (field, n) = self.literal(rest, 6)?;
                rest = &rest[n..];
                self.insert(field.clone());
                field
            } else if first & 0xe0 == 0x20 {
                let (size, n) = decode_integer(rest, 5)?;
                rest = &rest[n..];
                if !fields.is_empty() || size > MAX_DYNAMIC_TABLE_SIZE {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // 0000xxxx without indexing, 0001xxxx never indexed: both 4-bit prefixes.
                let (field, n) = self.literal(rest, 4)?;
                rest = &rest[n..];
                field
            };
            list_size = list_size
                .saturating_add(field.0.len() + field.1.len())
                .saturating_add(ENTRY_OVERHEAD);
            if list_size > self.max_list_size {
                return Err(HpackError::ListTooLarge(self.max_list_size));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn literal(&self, buf: &[u8], prefix: u8) -> Result<(Field, usize), HpackError> {
        let (index, mut used) = decode_integer(buf, prefix)?;
        let name = if index == 0 {
            let (name, n) = decode_string(&buf[used..])?;
            used += n;
            name
        } else {
            self.entry(index)?.0
        };
        let (value, n) = decode_string(&buf[used..])?;
        Ok(((name, value), used + n))
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // RFC 7541 §4.4: not an error; the table ends up empty.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(field);
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// RFC 7541 §5.1. Returns the value and the bytes used.
fn decode_integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u16 << prefix) - 1;
    let first = *buf.first().ok_or(HpackError::Truncated)?;
    let mut value = usize::from(u16::from(first) & mask);
    if value < usize::from(mask) {
        return Ok((value, 1));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        value += usize::from(b & 0x7f) << shift;
        if value > MAX_INTEGER {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
    Err(HpackError::Truncated)
}

/// RFC 7541 §5.2. Returns the string and the bytes used.
fn decode_string(buf: &[u8]) -> Result<(Vec<u8>, usize), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, used) = decode_integer(buf, 7)?;
    let raw = buf.get(used..used + len).ok_or(HpackError::Truncated)?;
    let text = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok((text, used + len))
}

/// Appends a literal header field without indexing (RFC 7541 §6.2.2), the name by its
/// static index when it has one, both strings raw.
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match STATIC_TABLE.iter().position(|(n, _)| n.as_bytes() == name) {
        Some(i) => encode_integer(out, 0x00, 4, i + 1),
        None => {
            out.push(0x00);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, text: &[u8]) {
    encode_integer(out, 0x00, 7, text.len());
    out.extend_from_slice(text);
}

fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// RFC 7541 Appendix B: the code of each byte, and its length in bits.
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The EOS symbol: 30 one bits. Its prefixes are the only valid padding.
const EOS: u16 = 256;
const EOS_CODE: u32 = 0x3fff_ffff;
const EOS_LENGTH: u8 = 30;

/// A node of the decoding tree: a child per bit, each either a node or a symbol.
#[derive(Debug, Clone, Copy)]
enum Branch {
    Empty,
    Node(u16),
    Symbol(u16),
}

fn huffman_tree() -> &'static [[Branch; 2]] {
    static TREE: OnceLock<Vec<[Branch; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut tree = vec![[Branch::Empty; 2]];
        let codes = HUFFMAN_CODES
            .iter()
            .zip(HUFFMAN_LENGTHS)
            .map(|(&code, len)| (code, len))
            .chain([(EOS_CODE, EOS_LENGTH)]);
        for (symbol, (code, len)) in codes.enumerate() {
            let mut node = 0usize;
            for depth in (0..len).rev() {
                let bit = ((code >> depth) & 1) as usize;
                if depth == 0 {
                    tree[node][bit] = Branch::Symbol(symbol as u16);
                    break;
                }
                node = match tree[node][bit] {
                    Branch::Node(next) => usize::from(next),
                    // The code is prefix-free: no symbol sits on another's path.
                    Branch::Empty | Branch::Symbol(_) => {
                        let next = tree.len();
                        tree.push([Branch::Empty; 2]);
                        tree[node][bit] = Branch::Node(next as u16);
                        next
                    }
                };
            }
        }
        tree
    })
}

fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = huffman_tree();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let mut node = 0usize;
    // Bits read since the last symbol, and whether they were all ones (valid padding).
    let mut pending = 0u32;
    let mut all_ones = true;
    for &byte in raw {
        for shift in (0..8).rev() {
            let bit = usize::from((byte >> shift) & 1);
            pending += 1;
            all_ones &= bit == 1;
            match tree[node][bit] {
                Branch::Node(next) => node = usize::from(next),
                Branch::Symbol(EOS) | Branch::Empty => return Err(HpackError::BadHuffman),
                Branch::Symbol(symbol) => {
                    out.push(symbol as u8);
                    node = 0;
                    pending = 0;
                    all_ones = true;
                }
            }
        }
    }
    if pending > 7 || !all_ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &b in text {
        let len = u32::from(HUFFMAN_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(HUFFMAN_CODES[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn hex(text: &str) -> Vec<u8> {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(clean).expect("hex")
    }

    // RFC 7541 C.3 and C.4: three requests on one connection, without and with Huffman.
    #[test]
    fn rfc7541_request_examples_decode_with_the_dynamic_table() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(1 << 16);
            assert_eq!(
                d.decode(&hex(blocks[0])).expect("first"),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                ])
            );
            assert_eq!(
                d.decode(&hex(blocks[1])).expect("second"),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache"),
                ])
            );
            assert_eq!(
                d.decode(&hex(blocks[2])).expect("third"),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.size, 164);
        }
    }

    // RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn rfc7541_eviction_example() {
        let mut d = Decoder::new(1 << 16);
        d.max_size = 256;
        let blocks = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ];
        d.decode(&hex(blocks[0])).expect("first");
        assert_eq!(d.size, 222);
        let second = d.decode(&hex(blocks[1])).expect("second");
        assert_eq!(second[0], (b":status".to_vec(), b"307".to_vec()));
        assert_eq!(d.size, 222);
        let third = d.decode(&hex(blocks[2])).expect("third");
        assert_eq!(third.len(), 6);
        assert_eq!(third[5].0, b"set-cookie");
        assert_eq!(d.size, 215);
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for text in [
            &all[..],
            b"",
            b"a",
            b"%2Ftmp%2Fkms.sock",
            b"grpc-c/49.0.0 (linux)",
        ] {
            assert_eq!(huffman_decode(&huffman_encode(text)).expect("decode"), text);
        }
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        // 'a' is 00011 (5 bits): padded with zeros, then with 8+ ones.
        assert_eq!(huffman_decode(&[0x18]), Err(HpackError::BadHuffman));
        assert_eq!(huffman_decode(&[0x1f, 0xff]), Err(HpackError::BadHuffman));
        // EOS itself.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xfc]),
            Err(HpackError::BadHuffman)
        );
        assert_eq!(huffman_decode(&[0x1f]).expect("a"), b"a");
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(1 << 16);
        assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(d.decode(&[0xbe]), Err(HpackError::BadIndex(62)));
        assert_eq!(d.decode(&[0xff]), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(d.decode(&[0x40, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::BadSizeUpdate)
        );
        assert_eq!(d.decode(&[0x82, 0x20]), Err(HpackError::BadSizeUpdate));
        let mut small = Decoder::new(40);
        assert_eq!(
            small.decode(&[0x82, 0x82]),
            Err(HpackError::ListTooLarge(40))
        );
    }

    #[test]
    fn the_encoder_writes_blocks_the_decoder_reads_back() {
        let list = fields(&[
            (":method", "POST"),
            (":path", "/v2.KeyManagementService/Encrypt"),
            ("te", "trailers"),
            ("x-long", &"v".repeat(300)),
        ]);
        let mut block = Vec::new();
        for (n, v) in &list {
            encode_literal(&mut block, n, v);
        }
        let mut d = Decoder::new(1 << 16);
        assert_eq!(d.decode(&block).expect("decode"), list);
        assert!(
            d.table.is_empty(),
            "literals without indexing fill no table"
        );
    }
}
