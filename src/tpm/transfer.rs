//! The small text files that carry DRSK material between machines and the client's record of
//! its backup servers. Text (`key: value`, hex) so an administrator can see what they are.
//!
//! ```text
//! lifeline-drsk v1
//! client-id: <hex SHA-256 of the DRSK public>
//! servers: <Name of each backup server key, hex, space separated, in policy order>
//! public: <TPM2B_PUBLIC of the DRSK, hex>
//! private: <TPM2B_PRIVATE, hex: wrapped for the receiving key>
//! seed: <TPM2B_ENCRYPTED_SECRET, hex; absent in a server's stored copy>
//! ```

use super::{client_id, policy, Duplicate};
use crate::escrow::record::{check_version_line, Fields};
use crate::hex::{decode as unhex, encode as hex};

const TAG: &str = "lifeline-drsk";
const POLICY_TAG: &str = "lifeline-drsk-policy";

/// A DRSK in transit or in a server's custody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrskFile {
    pub client_id: String,
    /// The backup servers' key Names the DRSK's policy was built from.
    pub servers: Vec<Vec<u8>>,
    pub dup: Duplicate,
}

fn names_text(servers: &[Vec<u8>]) -> String {
    servers.iter().map(|n| hex(n)).collect::<Vec<_>>().join(" ")
}

fn parse_names(text: &str) -> Result<Vec<Vec<u8>>, String> {
    text.split_whitespace()
        .map(|n| unhex(n).ok_or_else(|| "a server name is not hex".to_string()))
        .collect()
}

impl DrskFile {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{TAG} v1\nclient-id: {}\nservers: {}\npublic: {}\nprivate: {}\n",
            self.client_id,
            names_text(&self.servers),
            hex(&self.dup.public),
            hex(&self.dup.private)
        );
        if !self.dup.seed.is_empty() {
            out.push_str(&format!("seed: {}\n", hex(&self.dup.seed)));
        }
        out
    }

    pub fn parse(text: &str) -> Result<DrskFile, String> {
        let mut lines = text.lines();
        check_version_line(lines.next().unwrap_or(""), TAG).map_err(|e| e.to_string())?;
        let f = Fields::parse(lines).map_err(|e| e.to_string())?;
        let get = |k: &str| -> Result<Vec<u8>, String> {
            unhex(f.require(k).map_err(|e| e.to_string())?)
                .ok_or_else(|| format!("'{k}' is not hex"))
        };
        let dup = Duplicate {
            public: get("public")?,
            private: get("private")?,
            seed: match f.get("seed") {
                Some(s) => unhex(s).ok_or("'seed' is not hex")?,
                None => Vec::new(),
            },
        };
        let file = DrskFile {
            client_id: f
                .require("client-id")
                .map_err(|e| e.to_string())?
                .to_string(),
            servers: parse_names(f.require("servers").map_err(|e| e.to_string())?)?,
            dup,
        };
        if client_id(&file.dup.public) != file.client_id {
            return Err("the client ID does not match the DRSK's public part".into());
        }
        if file.servers.len() > policy::MAX_BACKUP_SERVERS {
            return Err(format!(
                "more than {} backup servers",
                policy::MAX_BACKUP_SERVERS
            ));
        }
        Ok(file)
    }
}

/// Tags of the genuine-TPM proof's records: the EK bundle, the server's challenge, the answer.
pub const EK_TAG: &str = "lifeline-ek";
pub const CHALLENGE_TAG: &str = "lifeline-tpm-challenge";
pub const PROOF_TAG: &str = "lifeline-tpm-proof";

/// A `tag v1` record of hex fields: the small files of the genuine-TPM proof.
pub fn hex_record(tag: &str, fields: &[(&str, &[u8])]) -> String {
    let mut out = format!("{tag} v1\n");
    for (k, v) in fields {
        out.push_str(&format!("{k}: {}\n", hex(v)));
    }
    out
}

/// Reads the fields `keys` of a `hex_record`, in that order.
pub fn parse_hex_record(text: &str, tag: &str, keys: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    let mut lines = text.lines();
    check_version_line(lines.next().unwrap_or(""), tag).map_err(|e| e.to_string())?;
    let f = Fields::parse(lines).map_err(|e| e.to_string())?;
    keys.iter()
        .map(|k| {
            let v = f.require(k).map_err(|e| e.to_string())?;
            unhex(v).ok_or_else(|| format!("'{k}' is not hex"))
        })
        .collect()
}

/// The client's record of the backup servers its DRSK was provisioned for (PolicyOR needs all
/// branches to duplicate through any one of them).
pub fn policy_text(servers: &[Vec<u8>]) -> String {
    format!("{POLICY_TAG} v1\nservers: {}\n", names_text(servers))
}

pub fn parse_policy(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut lines = text.lines();
    check_version_line(lines.next().unwrap_or(""), POLICY_TAG).map_err(|e| e.to_string())?;
    let f = Fields::parse(lines).map_err(|e| e.to_string())?;
    parse_names(f.require("servers").map_err(|e| e.to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_client_id() {
        let public = vec![0, 3, 1, 2, 3];
        let file = DrskFile {
            client_id: client_id(&public),
            servers: vec![vec![0, 11, 9], vec![0, 11, 8]],
            dup: Duplicate {
                public,
                private: vec![0, 1, 7],
                seed: vec![0, 1, 6],
            },
        };
        assert_eq!(DrskFile::parse(&file.to_text()).unwrap(), file);
        let forged = file.to_text().replace(&file.client_id, &"0".repeat(64));
        assert!(DrskFile::parse(&forged).unwrap_err().contains("client ID"));
        assert_eq!(
            parse_policy(&policy_text(&file.servers)).unwrap(),
            file.servers
        );
    }
}
