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
}
