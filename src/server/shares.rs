//! K-of-N custody of the administrator passphrase (Shamir's secret sharing over GF(256), the
//! blahaj crate): `init --shares K/N` makes a random passphrase, hands out N shares and forgets
//! it; any K shares rebuild it for one operation.
//!
//! A share is one line of text: `lifeline-share v1 K-of-N <hex>`.

use zeroize::Zeroizing;

use crate::secret::{random_bytes, Passphrase};

const TAG: &str = "lifeline-share v1";

/// Makes a random administrator passphrase and its `n` shares, any `k` of which rebuild it.
pub fn split(k: u8, n: u8) -> Result<(Passphrase, Vec<Zeroizing<String>>), String> {
    if k < 2 || n < k {
        return Err(format!(
            "{k}-of-{n} is not a sharing: use at least 2 shares and K ≤ N"
        ));
    }
    let mut raw = Zeroizing::new([0u8; 24]);
    random_bytes(&mut raw[..]).map_err(|e| e.to_string())?;
    // The passphrase is the hex of 192 random bits: text, as age and minisign want it.
    let passphrase = crate::hex::encode_secret(&raw[..]);
    let shares = blahaj::Sharks(k)
        .dealer(passphrase.as_bytes())
        .take(usize::from(n))
        .map(|share| {
            let bytes = Zeroizing::new(Vec::<u8>::from(&share));
            Zeroizing::new(format!(
                "{TAG} {k}-of-{n} {}\n",
                crate::hex::encode_secret(&bytes).as_str()
            ))
        })
        .collect();
    Ok((Passphrase::from_slice(passphrase.as_bytes()), shares))
}

/// Rebuilds the administrator passphrase from share texts.
pub fn combine(texts: &[Zeroizing<String>]) -> Result<Passphrase, String> {
    let mut threshold = None;
    let mut shares = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let rest = text
            .trim()
            .strip_prefix(TAG)
            .ok_or_else(|| format!("share {}: not a lifeline share", i + 1))?;
        let (kn, hex) = rest
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("share {}: damaged", i + 1))?;
        let k: u8 = kn
            .split_once("-of-")
            .and_then(|(k, _)| k.parse().ok())
            .ok_or_else(|| format!("share {}: damaged", i + 1))?;
        if *threshold.get_or_insert(k) != k {
            return Err("the shares come from different sharings".into());
        }
        let bytes = crate::hex::decode_secret(hex.trim())
            .ok_or_else(|| format!("share {}: damaged", i + 1))?;
        shares.push(
            blahaj::Share::try_from(bytes.as_slice())
                .map_err(|e| format!("share {}: {e}", i + 1))?,
        );
    }
    let k = threshold.ok_or("no share given")?;
    let secret = Zeroizing::new(
        blahaj::Sharks(k)
            .recover(&shares)
            .map_err(|_| format!("{} distinct shares given, {k} needed", shares.len()))?,
    );
    Ok(Passphrase::from_slice(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_rebuild_and_fewer_do_not() {
        let (pass, shares) = split(2, 3).unwrap();
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let chosen: Vec<_> = pair
                .iter()
                .map(|&i| Zeroizing::new(shares[i].to_string()))
                .collect();
            assert_eq!(
                combine(&chosen).unwrap().expose_secret(),
                pass.expose_secret()
            );
        }
        let one = [Zeroizing::new(shares[0].to_string())];
        assert!(combine(&one).unwrap_err().contains("2 needed"));
        let same = [
            Zeroizing::new(shares[0].to_string()),
            Zeroizing::new(shares[0].to_string()),
        ];
        assert!(combine(&same).is_err(), "a share given twice counts once");
        assert!(split(1, 3).is_err() && split(3, 2).is_err());
    }
}
