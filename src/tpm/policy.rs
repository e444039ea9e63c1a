//! Policy digests and object Names, computed in software (TPM 2.0 Part 1, "Policy" and
//! "Names"; Part 3 for each command's update rule). All SHA-256.
//!
//! The DRSK's duplication policy has to be computed here: a trial session cannot run
//! PolicySecret against a key that lives in another machine's TPM. The integration tests
//! check these digests against real policy sessions on swtpm.

use sha2::{Digest, Sha256};

pub const CC_DUPLICATE: u32 = 0x0000_014B;
const CC_POLICY_SECRET: u32 = 0x0000_0151;
const CC_POLICY_COMMAND_CODE: u32 = 0x0000_016C;
const CC_POLICY_OR: u32 = 0x0000_0171;
const CC_POLICY_DUPLICATION_SELECT: u32 = 0x0000_0188;
const ALG_SHA256: u16 = 0x000B;

/// PolicyOR takes at most eight branches.
pub const MAX_BRANCHES: usize = 8;
/// Each backup server contributes two branches.
pub const MAX_BACKUP_SERVERS: usize = MAX_BRANCHES / 2;

pub type PolicyDigest = [u8; 32];

fn extend(parts: &[&[u8]]) -> PolicyDigest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// An object's Name: nameAlg followed by the hash of its marshalled TPMT_PUBLIC.
pub fn name_of(tpmt_public: &[u8]) -> Vec<u8> {
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt_public));
    name
}

/// PolicyDuplicationSelect(newParent, includeObject = NO).
pub fn duplication_select(old: &PolicyDigest, new_parent_name: &[u8]) -> PolicyDigest {
    extend(&[
        old,
        &CC_POLICY_DUPLICATION_SELECT.to_be_bytes(),
        new_parent_name,
        &[0],
    ])
}

/// PolicySecret(authObject) with an empty policyRef.
pub fn secret(old: &PolicyDigest, auth_object_name: &[u8]) -> PolicyDigest {
    let inner = extend(&[old, &CC_POLICY_SECRET.to_be_bytes(), auth_object_name]);
    extend(&[&inner])
}

/// PolicyCommandCode(code).
pub fn command_code(old: &PolicyDigest, code: u32) -> PolicyDigest {
    extend(&[
        old,
        &CC_POLICY_COMMAND_CODE.to_be_bytes(),
        &code.to_be_bytes(),
    ])
}

/// PolicyOR over `branches` (2 to 8 of them).
pub fn or(branches: &[PolicyDigest]) -> PolicyDigest {
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(CC_POLICY_OR.to_be_bytes());
    for b in branches {
        h.update(b);
    }
    h.finalize().into()
}

/// The branches of a DRSK's duplication policy, for backup servers whose DRSK Names are
/// given, in order: for each server, "duplicate to that server's DRSK", then "the holder of
/// that server's DRSK may duplicate". Empty when there are no servers.
pub fn drsk_branches(server_names: &[Vec<u8>]) -> Vec<PolicyDigest> {
    let zero = [0u8; 32];
    server_names
        .iter()
        .flat_map(|name| {
            [
                duplication_select(&zero, name),
                command_code(&secret(&zero, name), CC_DUPLICATE),
            ]
        })
        .collect()
}

/// The DRSK's authPolicy: PolicyOR of its branches. No servers means an empty policy, which
/// no session can satisfy: such a DRSK can never be duplicated.
pub fn drsk_auth_policy(server_names: &[Vec<u8>]) -> Vec<u8> {
    let branches = drsk_branches(server_names);
    if branches.is_empty() {
        Vec::new()
    } else {
        or(&branches).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_of_branches_depends_on_order_and_content() {
        let a = drsk_branches(&[vec![0, 11, 1], vec![0, 11, 2]]);
        assert_eq!(a.len(), 4);
        let b = drsk_branches(&[vec![0, 11, 2], vec![0, 11, 1]]);
        assert_ne!(or(&a), or(&b));
        assert!(drsk_auth_policy(&[]).is_empty());
        assert_eq!(drsk_auth_policy(&[vec![1]]).len(), 32);
    }

    #[test]
    fn command_code_matches_the_published_value() {
        // PolicyCommandCode(TPM_CC_Duplicate) from an empty digest, as tpm2_policycommandcode
        // printed it in a trial session on swtpm.
        let d = command_code(&[0; 32], CC_DUPLICATE);
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "bef56b8c1cc84e11edd717528d2cd99356bd2bbf8f015209c3f84aeeaba8e8a2"
        );
    }
}
