//! K-of-N custody of the administrator passphrase (Shamir's secret sharing over GF(256), the
//! blahaj crate): `init --shares K/N` makes a random passphrase, hands out N shares and forgets
//! it; any K shares rebuild it for one operation.
//!
//! A share is one line of text: `lifeline-share v1 K-of-N <hex>`.
//!
//! Each administrator can also submit their share to the server for one pending approval
//! ([`Board`]), as Vault's unseal takes key shares one at a time: the server holds them in
//! memory only, for that request, for a bounded time, and approves when the K-th arrives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The threshold K and the hex of one share text.
fn parse(text: &str) -> Result<(u8, &str), &'static str> {
    let rest = text
        .trim()
        .strip_prefix(TAG)
        .ok_or("not a lifeline share")?;
    let (kn, hex) = rest.trim().split_once(' ').ok_or("damaged")?;
    let k: u8 = kn
        .split_once("-of-")
        .and_then(|(k, _)| k.parse().ok())
        .ok_or("damaged")?;
    Ok((k, hex.trim()))
}

/// Rebuilds the administrator passphrase from share texts.
pub fn combine<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Passphrase, String> {
    let mut threshold = None;
    let mut shares = Vec::new();
    for (i, text) in texts.into_iter().enumerate() {
        let (k, hex) = parse(text).map_err(|e| format!("share {}: {e}", i + 1))?;
        if *threshold.get_or_insert(k) != k {
            return Err("the shares come from different sharings".into());
        }
        let bytes =
            crate::hex::decode_secret(hex).ok_or_else(|| format!("share {}: damaged", i + 1))?;
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

/// Shares submitted toward approvals, by request: in memory only, never stored.
#[derive(Default)]
pub struct Board {
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    needed: u8,
    /// Administrators and their shares, in the order they came.
    held: Vec<(String, Zeroizing<String>)>,
    started: Instant,
}

/// Where an approval stands after a share was added.
pub enum Added {
    /// More shares are needed: who gave one so far, of how many needed, and how long the held
    /// ones are kept.
    Waiting {
        from: Vec<String>,
        needed: u8,
        left: Duration,
    },
    /// The K-th share arrived: the shares (gone from the board; [`combine`] them) and who
    /// gave them.
    Complete {
        shares: Vec<Zeroizing<String>>,
        from: Vec<String>,
    },
}

/// Why a share was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a share, or not from the same sharing as those held.
    Bad(String),
    /// This administrator gave a share for this request already.
    Twice(String),
}

impl Board {
    /// Adds `admin`'s share for `request`. Shares held longer than `window` are dropped first.
    pub fn add(
        &self,
        request: &str,
        admin: &str,
        share: &str,
        window: Duration,
    ) -> Result<Added, Refusal> {
        let (k, _) = parse(share).map_err(|e| Refusal::Bad(format!("the share is {e}")))?;
        if k < 2 {
            return Err(Refusal::Bad("the share is damaged".into()));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.started.elapsed() < window);
        let entry = pending
            .entry(request.to_string())
            .or_insert_with(|| Pending {
                needed: k,
                held: Vec::new(),
                started: Instant::now(),
            });
        if entry.needed != k {
            return Err(Refusal::Bad(format!(
                "the share is from a {k}-of-N sharing, the ones held for this request from a {}-of-N one",
                entry.needed
            )));
        }
        if entry.held.iter().any(|(who, _)| who == admin) {
            return Err(Refusal::Twice(format!(
                "{admin} gave a share for this request already; the others must come from other administrators"
            )));
        }
        entry
            .held
            .push((admin.to_string(), Zeroizing::new(share.trim().to_string())));
        let from: Vec<String> = entry.held.iter().map(|(who, _)| who.clone()).collect();
        if entry.held.len() < usize::from(k) {
            return Ok(Added::Waiting {
                from,
                needed: k,
                left: window.saturating_sub(entry.started.elapsed()),
            });
        }
        let shares = pending
            .remove(request)
            .map(|p| p.held.into_iter().map(|(_, share)| share).collect())
            .unwrap_or_default();
        Ok(Added::Complete { shares, from })
    }

    /// Takes back `admin`'s share for `request` (when its submission could not be audited).
    pub fn withdraw(&self, request: &str, admin: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pending.get_mut(request) {
            p.held.retain(|(who, _)| who != admin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_rebuild_and_fewer_do_not() {
        let (pass, shares) = split(2, 3).unwrap();
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let chosen = pair.iter().map(|&i| shares[i].as_str());
            assert_eq!(
                combine(chosen).unwrap().expose_secret(),
                pass.expose_secret()
            );
        }
        assert!(combine([shares[0].as_str()])
            .unwrap_err()
            .contains("2 needed"));
        let same = [shares[0].as_str(), shares[0].as_str()];
        assert!(combine(same).is_err(), "a share given twice counts once");
        assert!(split(1, 3).is_err() && split(3, 2).is_err());
    }

    #[test]
    fn the_board_completes_on_the_kth_administrator_and_forgets_after_the_window() {
        let (pass, shares) = split(2, 3).unwrap();
        let board = Board::default();
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            board.add("r1", "alice", &shares[0], hour),
            Ok(Added::Waiting { needed: 2, .. })
        ));
        assert!(matches!(
            board.add("r1", "alice", &shares[1], hour),
            Err(Refusal::Twice(_))
        ));
        assert!(matches!(
            board.add("r1", "bob", "lifeline-share v1 nonsense", hour),
            Err(Refusal::Bad(_))
        ));
        match board.add("r1", "bob", &shares[2], hour) {
            Ok(Added::Complete { shares, from }) => {
                let passphrase = combine(shares.iter().map(|s| s.as_str())).unwrap();
                assert_eq!(passphrase.expose_secret(), pass.expose_secret());
                assert_eq!(from, ["alice", "bob"]);
            }
            _ => panic!("two administrators' shares did not complete a 2-of-3 approval"),
        }
        // Another request starts from nothing; a held share is forgotten after the window.
        board.add("r2", "alice", &shares[0], hour).ok().unwrap();
        assert!(matches!(
            board.add("r2", "bob", &shares[1], Duration::ZERO),
            Ok(Added::Waiting { .. })
        ));
    }
}
