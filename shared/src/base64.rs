//! Base64 (RFC 4648), padded: the standard alphabet for HTTP Basic, the URL-safe one for the
//! Docker engine's `X-Registry-Auth` header.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Standard alphabet (`+`, `/`).
pub fn standard(bytes: &[u8]) -> String {
    encode(bytes, STANDARD)
}

/// URL-safe alphabet (`-`, `_`).
pub fn url_safe(bytes: &[u8]) -> String {
    encode(bytes, URL_SAFE)
}

fn encode(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes the standard alphabet, padded or not (docker `config.json`'s `auth` fields);
/// `None` for anything else.
pub fn decode_standard(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = STANDARD.iter().position(|&c| c == byte)?;
        acc = (acc << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_vectors_in_both_alphabets() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(standard(plain.as_bytes()), encoded);
            assert_eq!(url_safe(plain.as_bytes()), encoded);
        }
        assert_eq!(standard(&[0xfb, 0xff]), "+/8=");
        assert_eq!(standard(b"alice:s3cr/t+pw"), "YWxpY2U6czNjci90K3B3");
        assert_eq!(url_safe(&[0xfb, 0xff]), "-_8=");
    }

    #[test]
    fn standard_decodes_what_it_encodes() {
        for plain in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "alice:s3cr/t+pw",
        ] {
            let encoded = standard(plain.as_bytes());
            assert_eq!(decode_standard(&encoded).as_deref(), Some(plain.as_bytes()));
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(decode_standard(unpadded).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(decode_standard("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_standard("not base64!"), None);
        assert_eq!(decode_standard("Zm9vY"), None, "a lone trailing character");
    }
}
