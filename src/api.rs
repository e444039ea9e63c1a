//! The escrow server's HTTPS API as both sides use it: every endpoint's route, and its request
//! and answer as types. The client (`escrow::https`, the commands) builds paths and bodies from
//! these, the server's handlers (`server::http`) read and answer them, so the two cannot drift
//! apart. docs/SERVER.md describes each endpoint and who may call it.
//!
//! Secrets in bodies are secret types (`secret`): wiped when dropped, never in `Debug`, read
//! from JSON without a plain `String` in between. The buffers the HTTP crates keep (ureq's
//! header values, axum's request bytes) are theirs and not wiped.
//!
//! Endpoints whose body or answer is not JSON carry text: escrow packets and DRSK backups
//! are uploaded as they are; recovery packets and restore files are fetched as they are.

use serde::{Deserialize, Serialize};

use crate::secret::{Credential, EnrollmentToken, Otp, Passphrase, ShareText, UseToken};

/// An endpoint's path, with `{name}` for each variable segment (the syntax axum routes by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(&'static str);

impl Route {
    /// The template, for the server's router.
    pub const fn template(self) -> &'static str {
        self.0
    }

    /// The path with `args` in its `{…}` segments, in order. Every argument is
    /// percent-encoded, so an ID typed by someone cannot reach another path.
    pub fn path(self, args: &[&str]) -> String {
        let mut out = String::with_capacity(self.0.len() + 64);
        let mut args = args.iter();
        for (i, segment) in self.0.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if segment.starts_with('{') {
                encode_segment(args.next().copied().unwrap_or_default(), &mut out);
            } else {
                out.push_str(segment);
            }
        }
        debug_assert!(args.next().is_none(), "more arguments than {}", self.0);
        out
    }

    /// `text` as one percent-encoded path segment.
    pub fn segment(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        encode_segment(text, &mut out);
        out
    }
}

fn encode_segment(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A time in an answer (seconds since the epoch) as ISO 8601, UTC.
pub fn iso8601(epoch: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

// Anyone.
pub const AUTHORITY: Route = Route("/v1/authority");
pub const HEALTH: Route = Route("/v1/health");
// Anyone in `metrics_networks`.
pub const METRICS: Route = Route("/metrics");
// An enrollment token.
pub const JOIN: Route = Route("/v1/join");
// A machine's credential.
pub const ESCROW: Route = Route("/v1/escrow");
pub const DRSK_BACKUP: Route = Route("/v1/drsk/backup");
pub const STATUS: Route = Route("/v1/status");
// Anyone (a booting or replacement machine has no credential), rate-limited.
pub const RECOVERY_REQUESTS: Route = Route("/v1/recovery-requests");
pub const RECOVERY_PACKET: Route = Route("/v1/recovery/{machine}/{volume}");
pub const RECOVERY_USED: Route = Route("/v1/recovery/{packet}/used");
pub const RESTORE_REQUESTS: Route = Route("/v1/drsk/restore-requests");
pub const RESTORE_PROOF: Route = Route("/v1/drsk/restore-requests/{id}/proof");
pub const RESTORE_FILE: Route = Route("/v1/drsk/restores/{client}/{srk}");
// An administrator's credential, from an administrator network.
pub const ADMIN_ENROLLMENT_TOKENS: Route = Route("/v1/admin/enrollment-tokens");
pub const ADMIN_MACHINES: Route = Route("/v1/admin/machines");
pub const ADMIN_PACKETS: Route = Route("/v1/admin/packets");
pub const ADMIN_PACKET: Route = Route("/v1/admin/packets/{id}");
pub const ADMIN_PACKET_OBSOLETE: Route = Route("/v1/admin/packets/{id}/obsolete");
pub const ADMIN_PACKET_DELETE: Route = Route("/v1/admin/packets/{id}/delete");
pub const ADMIN_PACKET_PASSPHRASE: Route = Route("/v1/admin/packets/{id}/recovery-passphrase");
pub const ADMIN_PACKET_REVEALED: Route = Route("/v1/admin/packets/{id}/revealed");
pub const ADMIN_REQUESTS: Route = Route("/v1/admin/requests");
pub const ADMIN_REQUEST_APPROVE: Route = Route("/v1/admin/requests/{id}/approve");
pub const ADMIN_REQUEST_SHARES: Route = Route("/v1/admin/requests/{id}/shares");
pub const ADMIN_REQUEST_ESCROW: Route = Route("/v1/admin/requests/{id}/escrow");
pub const ADMIN_REQUEST_PUBLISH: Route = Route("/v1/admin/requests/{id}/publish");
pub const ADMIN_RESTORES: Route = Route("/v1/admin/restores");
pub const ADMIN_RESTORE_APPROVE: Route = Route("/v1/admin/restores/{id}/approve");
pub const ADMIN_RESTORE_DELETE: Route = Route("/v1/admin/restores/{id}/delete");

/// Every failure's answer.
#[derive(Serialize, Deserialize, Debug)]
pub struct Failure {
    pub error: String,
}

/// `GET HEALTH`: "ok", or what is wrong (then the status is 503). `tpm` is "not configured"
/// when the server keeps no DRSKs.
#[derive(Serialize, Deserialize, Debug)]
pub struct Health {
    pub storage: String,
    pub tpm: String,
}

/// The body of a POST that needs none.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Empty {}

/// The answer of a POST that changes a state: "used", "obsolete", "deleted", "pending".
#[derive(Serialize, Deserialize, Debug)]
pub struct Done {
    pub status: String,
}

/// `GET AUTHORITY`: the public halves of the authority.
#[derive(Serialize, Deserialize, Debug)]
pub struct Authority {
    /// The age recipient escrow packets are encrypted to.
    pub recipient: String,
    /// The minisign public key recovery packets are signed with (the file's text).
    pub minisign: String,
    /// The DRSK server key (hex TPM2B_PUBLIC), when this server keeps DRSKs.
    pub drsk: Option<String>,
}

/// `POST JOIN`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Join {
    pub token: EnrollmentToken,
    pub machine_id: String,
    pub client_id: Option<String>,
    pub host: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Joined {
    pub machine: String,
    pub credential: Credential,
}

/// `POST ESCROW?…`: the query; the body is the escrow packet.
#[derive(Serialize, Deserialize, Debug)]
pub struct EscrowQuery {
    /// `secret::key_fingerprint` of the escrowed key and recovery passphrase.
    pub fingerprint: String,
    /// `secret::key_fingerprint` of the key alone, which `lifeline status` can compute without
    /// the passphrase; absent from older clients (then it is `fingerprint`).
    #[serde(default)]
    pub key: Option<String>,
    /// Mark this volume's older packets obsolete once this one is stored.
    #[serde(default)]
    pub obsolete_older: bool,
}

impl EscrowQuery {
    pub fn path(&self) -> String {
        let mut path = ESCROW.path(&[]);
        path.push_str("?fingerprint=");
        encode_segment(&self.fingerprint, &mut path);
        if let Some(key) = &self.key {
            path.push_str("&key=");
            encode_segment(key, &mut path);
        }
        path.push_str(&format!("&obsolete_older={}", self.obsolete_older));
        path
    }
}

/// 201 when stored, 200 when the same key was already in escrow.
#[derive(Serialize, Deserialize, Debug)]
pub struct Escrowed {
    /// "stored" or "already in escrow".
    pub status: String,
    pub packet: String,
}

pub const STORED: &str = "stored";
pub const ALREADY_IN_ESCROW: &str = "already in escrow";

/// `POST DRSK_BACKUP`: the body is `lifeline backup`'s file.
#[derive(Serialize, Deserialize, Debug)]
pub struct BackedUp {
    pub status: String,
    pub client_id: String,
}

/// `POST STATUS`: what `lifeline status` found on the machine. The server answers what it
/// holds for it and keeps the outcome as the machine's health.
#[derive(Serialize, Deserialize, Debug)]
pub struct StatusReport {
    pub volumes: Vec<VolumeReport>,
    /// The DRSK's client ID, when the machine is provisioned.
    pub client_id: Option<String>,
    /// What the machine found wrong itself, one line each.
    pub problems: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct VolumeReport {
    pub uuid: String,
    /// `secret::key_fingerprint` of the volume key alone, when the machine could read it.
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct StatusAnswer {
    pub volumes: Vec<VolumeEscrow>,
    /// The DRSK on this server: "in custody", "missing", or "not kept" (no custody here, or
    /// the machine has no DRSK).
    pub drsk: String,
    /// What the server now records for the machine: "healthy" or "at risk".
    pub health: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct VolumeEscrow {
    pub uuid: String,
    /// "current" (a packet in use holds this key), "stale" (packets, none with this key),
    /// "missing" (no packet in use), or "unknown" (no key was given).
    pub escrow: String,
    /// The current packet, or the newest in use.
    pub packet: Option<String>,
    /// An administrator has been shown that packet's random recovery passphrase.
    pub passphrase_revealed: bool,
}

pub const ESCROW_CURRENT: &str = "current";
pub const ESCROW_STALE: &str = "stale";
pub const ESCROW_MISSING: &str = "missing";
pub const ESCROW_UNKNOWN: &str = "unknown";
pub const DRSK_IN_CUSTODY: &str = "in custody";
pub const DRSK_MISSING: &str = "missing";
pub const DRSK_NOT_KEPT: &str = "not kept";

/// `POST RECOVERY_REQUESTS`.
#[derive(Serialize, Deserialize, Debug)]
pub struct RecoveryRequest {
    /// The machine ID or the client ID.
    pub machine: String,
    pub volume_uuid: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RecoveryRequested {
    pub request: String,
    /// What the boot screen shows and the helpdesk is told.
    pub recovery_id: String,
}

/// `POST RECOVERY_USED`: proof of having opened the packet.
#[derive(Serialize, Deserialize, Debug)]
pub struct PacketUsed {
    pub use_token: UseToken,
}

/// `POST RESTORE_REQUESTS`: the replacement TPM's storage key, and its endorsement key with
/// its certificate for servers that demand the genuine-TPM proof (all hex).
#[derive(Serialize, Deserialize, Debug)]
pub struct RestoreRequest {
    pub client_id: String,
    pub srk_public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RestoreFiled {
    pub request: String,
    /// What the replacement machine's user reads out.
    pub restore_id: String,
    /// "challenged", "pending" or "approved".
    pub state: String,
    /// The genuine-TPM challenge, while the state is "challenged".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// `POST RESTORE_PROOF`: the `lifeline-tpm-proof` record answering the challenge.
#[derive(Serialize, Deserialize, Debug)]
pub struct RestoreProof {
    pub proof: String,
}

/// The state a restore request is in after the proof: "pending".
#[derive(Serialize, Deserialize, Debug)]
pub struct Proved {
    pub state: String,
}

/// `POST ADMIN_ENROLLMENT_TOKENS`.
#[derive(Serialize, Deserialize, Debug)]
pub struct EnrollmentTokenIssued {
    pub token: EnrollmentToken,
    /// As configured (`enrollment_token_valid_for`), e.g. "1h".
    pub valid_for: String,
}

/// A row of `GET ADMIN_MACHINES`.
#[derive(Serialize, Deserialize, Debug)]
pub struct MachineRow {
    pub machine: String,
    pub host: String,
    pub machine_id: String,
    pub client_id: Option<String>,
    /// Seconds since the epoch.
    pub created: i64,
    pub packets: u32,
    /// When `lifeline status` last reported (seconds since the epoch).
    #[serde(default)]
    pub last_report: Option<i64>,
    /// "healthy", "at risk: …", "not reporting" (nothing for longer than the server's
    /// `report_overdue_after`) or "never reported".
    #[serde(default)]
    pub health: String,
}

/// A row of `GET ADMIN_PACKETS`.
#[derive(Serialize, Deserialize, Debug)]
pub struct PacketRow {
    pub packet: String,
    pub machine: String,
    pub host: String,
    pub volume_uuid: String,
    pub created: i64,
    pub obsolete: bool,
}

/// A row of `GET ADMIN_REQUESTS`.
#[derive(Serialize, Deserialize, Debug)]
pub struct RequestRow {
    pub request: String,
    pub recovery_id: String,
    pub host: String,
    pub machine_id: String,
    pub volume_uuid: String,
    pub created: i64,
    /// "pending", "approved", "used", "expired".
    pub state: String,
}

/// `POST ADMIN_REQUEST_APPROVE`: the administrator passphrase unlocks the authority for this
/// one approval.
#[derive(Serialize, Deserialize, Debug)]
pub struct Approve {
    pub passphrase: Passphrase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_groups: Option<usize>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Approved {
    /// Given once, here; the server keeps no copy.
    pub otp: Otp,
    pub packet: String,
    /// RFC 3339.
    pub expires: String,
    pub recovery_id: String,
}

/// `POST ADMIN_REQUEST_SHARES`: one administrator's share toward a K-of-N approval.
#[derive(Serialize, Deserialize, Debug)]
pub struct Share {
    pub share: ShareText,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_groups: Option<usize>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ShareProgress {
    /// Shares held for this request, from distinct administrators, this one included.
    pub received: u8,
    pub needed: u8,
    /// Who gave them, in order.
    pub from: Vec<String>,
    /// Seconds until the held shares are discarded, if the rest do not arrive.
    pub discarded_in: u64,
    /// With the K-th share: the approval, as `ADMIN_REQUEST_APPROVE` answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<Approved>,
}

/// `GET ADMIN_REQUEST_ESCROW` (the escrow packet a pending request opens) and `GET
/// ADMIN_PACKET`: an escrow packet as stored, encrypted to the authority, for an administrator
/// who keeps the authority on their own machine.
#[derive(Serialize, Deserialize, Debug)]
pub struct EscrowCopy {
    pub escrow_packet: String,
    /// The server's `recovery_valid_for`: the longest a recovery packet it publishes may live.
    pub recovery_valid_for: String,
}

/// `POST ADMIN_REQUEST_PUBLISH`: a recovery packet made and signed off the server.
#[derive(Serialize, Deserialize, Debug)]
pub struct Publish {
    pub recovery_packet: String,
    /// SHA-256 (hex) of the use token inside the packet, to check the report of its use.
    pub use_token_hash: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Published {
    pub packet: String,
    /// RFC 3339.
    pub expires: String,
    pub recovery_id: String,
}

/// `POST ADMIN_PACKET_PASSPHRASE`.
#[derive(Serialize, Deserialize, Debug)]
pub struct AdminPassphrase {
    pub passphrase: Passphrase,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RecoveryPassphrase {
    /// None when the packet was escrowed without one.
    pub recovery_passphrase: Option<Passphrase>,
}

/// A row of `GET ADMIN_RESTORES`.
#[derive(Serialize, Deserialize, Debug)]
pub struct RestoreRow {
    pub request: String,
    pub restore_id: String,
    pub client_id: String,
    pub host: Option<String>,
    pub created: i64,
    /// As for RestoreFiled, or "expired".
    pub state: String,
    pub expires: i64,
    pub tpm_proven: bool,
}

/// `POST ADMIN_RESTORE_APPROVE`.
#[derive(Serialize, Deserialize, Debug)]
pub struct RestoreApproved {
    pub status: String,
    pub restore_id: String,
    pub client_id: String,
    pub host: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_segments_and_encode_what_is_not_an_id() {
        assert_eq!(
            RECOVERY_PACKET.path(&["ab12", "0f6e-11"]),
            "/v1/recovery/ab12/0f6e-11"
        );
        assert_eq!(
            ADMIN_REQUEST_APPROVE.path(&["../../x y"]),
            "/v1/admin/requests/..%2F..%2Fx%20y/approve"
        );
        assert_eq!(AUTHORITY.path(&[]), AUTHORITY.template());
        let q = EscrowQuery {
            fingerprint: "ab&c".into(),
            key: Some("k=1".into()),
            obsolete_older: true,
        };
        assert_eq!(
            q.path(),
            "/v1/escrow?fingerprint=ab%26c&key=k%3D1&obsolete_older=true"
        );
    }

    #[test]
    fn secrets_in_bodies_stay_out_of_debug() {
        let body: Approve = serde_json::from_str(r#"{"passphrase": "hunter2 \u0041"}"#).unwrap();
        assert_eq!(body.passphrase.expose_secret(), b"hunter2 A");
        assert!(!format!("{body:?}").contains("hunter2"));
        let joined: Joined =
            serde_json::from_str(r#"{"machine": "m1", "credential": "c0ffee"}"#).unwrap();
        assert!(!format!("{joined:?}").contains("c0ffee"));
        assert_eq!(
            serde_json::to_string(&joined).unwrap(),
            r#"{"machine":"m1","credential":"c0ffee"}"#
        );
        let used: Result<PacketUsed, _> = serde_json::from_str(r#"{"use_token": "zz"}"#);
        assert!(used.unwrap_err().to_string().contains("not hex"));
        let approved: Result<Approved, _> = serde_json::from_str(
            r#"{"otp": "123456", "packet": "p", "expires": "e", "recovery_id": "r"}"#,
        );
        assert!(approved.is_err(), "a code with a bad group is refused");
    }
}
