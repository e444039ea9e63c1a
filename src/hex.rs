//! Lower-case hex, the one codec of the text formats. Secrets go through `encode_secret` and
//! `decode_secret`, which keep every intermediate in wiped memory: the output is reserved up
//! front, so it is never reallocated and leaves no unwiped copy behind.

use zeroize::Zeroizing;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn encode_into(bytes: &[u8], out: &mut String) {
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Upper-case digits are accepted; a sign ("+1") or an odd length is not.
fn decode_into(text: &str, out: &mut Vec<u8>) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() % 2 != 0 {
        return None;
    }
    for pair in text.as_bytes().chunks_exact(2) {
        out.push((nibble(pair[0])? << 4) | nibble(pair[1])?);
    }
    Some(())
}

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    out
}

/// `None` unless `text` is an even number of hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 2);
    decode_into(text, &mut out).map(|()| out)
}

/// Hex of secret bytes, itself a secret.
pub fn encode_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    encode_into(bytes, &mut out);
    out
}

/// Decodes into a wiped buffer (a partial result is wiped too); `None` if it is not hex.
pub fn decode_secret(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 2));
    decode_into(text, &mut out).map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuses_garbage() {
        assert_eq!(encode(&[0, 171, 255]), "00abff");
        assert_eq!(decode("00abff"), Some(vec![0, 171, 255]));
        assert_eq!(decode("00ABFF"), Some(vec![0, 171, 255]));
        for bad in ["0", "zz", "+1", "é1"] {
            assert_eq!(decode(bad), None, "{bad}");
            assert!(decode_secret(bad).is_none(), "{bad}");
        }
        let h = encode_secret(&[0, 1, 0xfe, 0xff]);
        assert_eq!(h.as_str(), "0001feff");
        assert_eq!(decode_secret(&h).unwrap().as_slice(), &[0, 1, 0xfe, 0xff]);
    }
}
