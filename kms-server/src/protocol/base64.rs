//! Base64 of blobs in AWS JSON bodies: the standard alphabet, padding optional on input
//! (as AWS accepts), written with padding. SIMD (`base64-simd`, which the AWS SDK for Rust
//! uses too): a 4 KiB plaintext is about 5.5 KB of base64 each way, and the scalar codec
//! took a tenth of an Encrypt's server time.
//!
//! Accepted input is exactly what the `base64` crate's standard engine with
//! `DecodePaddingMode::Indifferent` accepts (a test compares the two over every short
//! string of a small alphabet): padding absent, partial or canonical, never more; no
//! whitespace, no `=` inside, no non-zero trailing bits.

use base64_simd::{STANDARD, STANDARD_NO_PAD};

/// Text that is not base64 of the accepted form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBase64;

/// Decodes `text`: padding optional, and partial padding accepted, but never more `=`
/// than the canonical padding.
///
/// # Errors
/// [`InvalidBase64`].
pub fn decode(text: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    let unpadded = text
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(&text[..0], |last| &text[..=last]);
    let padding = text.len() - unpadded.len();
    if padding > (4 - unpadded.len() % 4) % 4 {
        return Err(InvalidBase64);
    }
    STANDARD_NO_PAD
        .decode_to_vec(unpadded)
        .map_err(|_| InvalidBase64)
}

/// Appends the padded base64 of `bytes` to `out` (written straight into its spare
/// capacity: nothing is zeroed first).
pub fn encode_into(out: &mut Vec<u8>, bytes: &[u8]) {
    STANDARD.encode_append(bytes, out);
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

    use super::*;

    const REFERENCE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    /// Every string of up to 7 characters over an alphabet with a zero-bits symbol, symbols
    /// with low bits set, both special symbols, padding, a space and a URL-safe symbol:
    /// accepted or refused alike, and decoded alike.
    #[test]
    fn accepts_and_refuses_what_the_reference_engine_does() {
        let alphabet = b"AQB/+= -";
        let mut text = Vec::new();
        let mut compared = 0usize;
        for len in 0..=7u32 {
            let total = alphabet.len().pow(len);
            for mut n in 0..total {
                text.clear();
                for _ in 0..len {
                    text.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                assert_eq!(
                    decode(&text).ok(),
                    REFERENCE.decode(&text).ok(),
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
                compared += 1;
            }
        }
        assert!(compared > 2_000_000, "{compared}");
    }

    #[test]
    fn encodes_as_the_reference_engine_and_round_trips() {
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|i| u8::try_from((i * 7 + len) % 256).unwrap_or(0))
                .collect();
            let mut out = b"prefix".to_vec();
            encode_into(&mut out, &bytes);
            assert_eq!(&out[..6], b"prefix");
            let encoded = &out[6..];
            assert_eq!(encoded, REFERENCE.encode(&bytes).as_bytes(), "{len}");
            assert_eq!(decode(encoded), Ok(bytes.clone()));
            assert_eq!(
                decode(encoded.strip_suffix(b"==").unwrap_or(encoded)),
                Ok(bytes)
            );
        }
    }
}
