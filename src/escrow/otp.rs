//! One-time passwords for dictation over the phone.
//!
//! A code is `groups` groups of six decimal digits. Each group is a 16-bit random value times
//! 11 (the rule BitLocker recovery keys use), so every group is divisible by 11 and below
//! 720896. A single mistyped digit or a swapped pair of neighbours breaks divisibility by 11,
//! which lets us name the group that is wrong before spending a second on the scrypt KDF.
//! Four groups carry 64 bits.

use std::fmt;

use zeroize::Zeroizing;

use crate::secret::{random_bytes, Otp};

/// Groups in a code unless configured otherwise (64 bits).
pub const DEFAULT_GROUPS: usize = 4;
/// Fewer groups would make offline guessing of a stolen packet practical.
pub const MIN_GROUPS: usize = 4;
/// More than this is not something a person should be asked to type.
pub const MAX_GROUPS: usize = 16;

const GROUP_DIGITS: usize = 6;
const GROUP_LIMIT: u32 = 65536 * 11;

#[derive(Debug, PartialEq, Eq)]
pub enum OtpError {
    /// Something other than digits, spaces and dashes.
    NotDigits,
    /// The digit count is not `expected` groups of six.
    WrongLength { digits: usize, expected: usize },
    /// Group `n` (1-based) fails the divisible-by-11 check.
    BadGroup(usize),
    /// Group count outside [MIN_GROUPS, MAX_GROUPS].
    GroupCount(usize),
}

impl fmt::Display for OtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtpError::NotDigits => {
                write!(
                    f,
                    "a one-time password has only digits (spaces and dashes are ignored)"
                )
            }
            OtpError::WrongLength { digits, expected } => write!(
                f,
                "the one-time password has {digits} digits, expected {} ({expected} groups of six)",
                expected * GROUP_DIGITS
            ),
            OtpError::BadGroup(n) => write!(
                f,
                "group {n} is not valid: check those six digits with the helpdesk"
            ),
            OtpError::GroupCount(n) => write!(
                f,
                "{n} groups is not allowed: use {MIN_GROUPS} to {MAX_GROUPS} groups"
            ),
        }
    }
}

impl std::error::Error for OtpError {}

/// Makes a fresh code from the OS CSPRNG.
pub fn generate(groups: usize) -> Result<Otp, GenerateError> {
    if !(MIN_GROUPS..=MAX_GROUPS).contains(&groups) {
        return Err(GenerateError::Otp(OtpError::GroupCount(groups)));
    }
    let mut raw = Zeroizing::new(vec![0u8; groups * 2]);
    random_bytes(&mut raw).map_err(GenerateError::Random)?;
    let mut text = String::with_capacity(groups * (GROUP_DIGITS + 1));
    for (i, pair) in raw.chunks(2).enumerate() {
        if i > 0 {
            text.push('-');
        }
        let value = u32::from(u16::from_le_bytes([pair[0], pair[1]])) * 11;
        text.push_str(&format!("{value:06}"));
    }
    Ok(Otp::from_canonical(text))
}

#[derive(Debug)]
pub enum GenerateError {
    Otp(OtpError),
    Random(std::io::Error),
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::Otp(e) => e.fmt(f),
            GenerateError::Random(e) => e.fmt(f),
        }
    }
}

/// Parses what a person typed. Spaces and dashes anywhere are ignored; `expected_groups` comes
/// from the signed packet so a short or long entry is named as such.
pub fn parse(input: &str, expected_groups: usize) -> Result<Otp, OtpError> {
    let digits = Zeroizing::new(digits_only(input).ok_or(OtpError::NotDigits)?);
    if digits.len() != expected_groups * GROUP_DIGITS {
        return Err(OtpError::WrongLength {
            digits: digits.len(),
            expected: expected_groups,
        });
    }
    let mut canonical = String::with_capacity(expected_groups * (GROUP_DIGITS + 1));
    for (i, group) in digits.as_bytes().chunks(GROUP_DIGITS).enumerate() {
        // Digits only, so this is ASCII and parses.
        let value: u32 = group
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
        if value % 11 != 0 || value >= GROUP_LIMIT {
            return Err(OtpError::BadGroup(i + 1));
        }
        if i > 0 {
            canonical.push('-');
        }
        canonical.extend(group.iter().map(|&d| char::from(d)));
    }
    Ok(Otp::from_canonical(canonical))
}

/// True when `input` has the shape of a code (digits in groups of six, at least the minimum
/// number of groups), whatever its checksums say. The boot prompt uses this to tell a typed
/// OTP from a LUKS passphrase.
pub fn looks_like_otp(input: &str) -> bool {
    match digits_only(input) {
        Some(d) => d.len() % GROUP_DIGITS == 0 && d.len() / GROUP_DIGITS >= MIN_GROUPS,
        None => false,
    }
}

fn digits_only(input: &str) -> Option<String> {
    let mut out = String::with_capacity(input.len());
    for c in input.trim().chars() {
        match c {
            '0'..='9' => out.push(c),
            ' ' | '-' | '\t' => {}
            _ => {
                zeroize::Zeroize::zeroize(&mut out);
                return None;
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_back() {
        for _ in 0..200 {
            let otp = generate(4).unwrap();
            assert_eq!(otp.groups(), 4);
            assert_eq!(otp.expose_secret().len(), 4 * 6 + 3);
            let back = parse(otp.expose_secret(), 4).unwrap();
            assert_eq!(back.expose_secret(), otp.expose_secret());
        }
    }

    #[test]
    fn tolerant_of_spaces_and_dashes() {
        let otp = parse(" 000000 000011-720874  123453 ", 4).unwrap();
        assert_eq!(otp.expose_secret(), "000000-000011-720874-123453");
    }

    #[test]
    fn names_the_mistyped_group() {
        assert_eq!(
            parse("000000-000011-720875-123453", 4).unwrap_err(),
            OtpError::BadGroup(3)
        );
        // divisible by 11 but above 65535 * 11
        assert_eq!(
            parse("000000-000011-720896-123453", 4).unwrap_err(),
            OtpError::BadGroup(3)
        );
        // swapped neighbouring digits in group 1 (123453 -> 124353)
        assert_eq!(
            parse("124353-000011-720874-123453", 4).unwrap_err(),
            OtpError::BadGroup(1)
        );
    }

    #[test]
    fn every_single_digit_typo_is_caught() {
        let good = "123453";
        for pos in 0..6 {
            for d in b'0'..=b'9' {
                let mut g = good.as_bytes().to_vec();
                if g[pos] == d {
                    continue;
                }
                g[pos] = d;
                let typed = format!("{}-000000-000000-000000", String::from_utf8(g).unwrap());
                assert_eq!(
                    parse(&typed, 4).unwrap_err(),
                    OtpError::BadGroup(1),
                    "{typed}"
                );
            }
        }
    }

    #[test]
    fn wrong_length_and_letters() {
        assert_eq!(
            parse("000000-000011-720874", 4).unwrap_err(),
            OtpError::WrongLength {
                digits: 18,
                expected: 4
            }
        );
        assert_eq!(parse("00000a", 4).unwrap_err(), OtpError::NotDigits);
        assert_eq!(parse("", 4).unwrap_err(), OtpError::NotDigits);
    }

    #[test]
    fn group_count_limits() {
        assert!(generate(3).is_err());
        assert!(generate(17).is_err());
        assert_eq!(generate(8).unwrap().groups(), 8);
    }

    #[test]
    fn shape_recognition() {
        assert!(looks_like_otp("000000-000011-720874-123453"));
        assert!(looks_like_otp("000000 000011 720874 123457")); // shape only
        assert!(!looks_like_otp("correct horse battery"));
        assert!(!looks_like_otp("123456"));
        assert!(!looks_like_otp("1234567"));
    }
}
