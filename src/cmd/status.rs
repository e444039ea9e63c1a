//! `lifeline status`: whether every disk can still be opened and recovered, reported to the
//! escrow server; `--repair` fixes what needs nobody to type anything.

use std::path::PathBuf;

use argh::FromArgs;
use serde::Serialize;

use super::backup;
use super::escrow::{escrow_volume, joined_recipient, Destination};
use super::{machine_id, CmdResult, Exit, Failure, Globals};
use crate::api;
use crate::escrow::https::Https;
use crate::escrow::slot::{self, RecoverySlot};
use crate::luks::LuksVolume;
use crate::secret::VolumeKey;
use crate::tpm::token::read_sealed;
use crate::tpm::{self, TssTpm};

#[derive(FromArgs, Debug)]
/// Check that each volume can still be opened and recovered: the TPM unseals its key and the
/// key opens it, the escrow server holds that key, the random recovery passphrase's keyslot is
/// there and no administrator has been shown it, and the escrow server keeps the DRSK. Each run
/// reports to the escrow server this machine joined. Exits 10 when anything is at risk, naming
/// the fix; --repair first fixes what needs nobody to type anything.
#[argh(
    subcommand,
    name = "status",
    example = "{command_name}",
    example = "{command_name} /dev/nvme0n1p3 --json",
    example = "{command_name} --repair",
    note = "The volume key for the escrow check comes from the TPM: the escrow of a volume not enrolled (lifeline enroll) shows as unknown, or missing when the server has no packet for it. The shipped lifeline-status.timer runs --repair daily once enabled."
)]
pub struct Args {
    /// the LUKS block devices or image files (default: the volumes in --config)
    #[argh(positional)]
    pub devices: Vec<PathBuf>,
    /// the lifeline.toml whose [[volume]] blocks name the volumes (default:
    /// /etc/lifeline/lifeline.toml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// print the findings as one JSON object
    #[argh(switch)]
    pub json: bool,
    /// first escrow again what is missing or stale, replace a recovery passphrase an
    /// administrator has seen (or whose keyslot is gone), and back up a DRSK the server lacks
    #[argh(switch)]
    pub repair: bool,
    /// the machine ID escrow packets name (default: /etc/machine-id)
    #[argh(option)]
    pub machine_id: Option<String>,
    /// PBKDF2 iterations for a replaced recovery keyslot instead of cryptsetup's benchmarked
    /// default; for test images only
    #[argh(option)]
    pub pbkdf2_iterations: Option<u32>,
}

/// Something that puts a disk at risk, and what fixes it.
#[derive(Serialize, Debug, Clone)]
struct Problem {
    what: String,
    fix: String,
    /// `--repair` can fix it.
    repairable: bool,
}

impl Problem {
    fn new(what: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            what: what.into(),
            fix: fix.into(),
            repairable: false,
        }
    }

    fn repairable(mut self) -> Problem {
        self.repairable = true;
        self
    }
}

#[derive(Serialize, Debug)]
struct VolumeStatus {
    device: PathBuf,
    uuid: Option<String>,
    /// "opens the volume", "not enrolled", or why not.
    tpm: String,
    /// The PCRs (SHA-256) the TPM's copy is bound to.
    pcrs: Vec<u8>,
    /// `api::ESCROW_*`, or "not checked" (not joined).
    escrow: String,
    packet: Option<String>,
    /// "none", "keyslot N", "keyslot N, shown to an administrator", "keyslot removed".
    recovery_passphrase: String,
    problems: Vec<Problem>,
    #[serde(skip)]
    key: Option<VolumeKey>,
    #[serde(skip)]
    slot: RecoverySlot,
    #[serde(skip)]
    revealed: bool,
}

#[derive(Serialize, Debug)]
struct Status {
    volumes: Vec<VolumeStatus>,
    /// The escrow server this machine joined.
    server: Option<String>,
    /// The DRSK's backup to each server its policy names.
    drsk_backups: Vec<DrskBackup>,
    problems: Vec<Problem>,
    at_risk: bool,
}

#[derive(Serialize, Debug)]
struct DrskBackup {
    /// The server key's Name (hex), as in the DRSK's policy.
    server_key: String,
    /// Whether it is the key of the escrow server this machine joined.
    joined: bool,
    /// `api::DRSK_IN_CUSTODY` or `_MISSING` from the joined server; for the others, what this
    /// machine recorded: "backed up <time>" or "not backed up".
    state: String,
}

const NOT_CHECKED: &str = "not checked";
/// What status says of a key sealed with a PIN.
const PIN_ONLY: &str = "sealed with a PIN (checked at boot, when the PIN is typed)";

pub fn run(args: Args, g: &Globals) -> CmdResult {
    let devices = if args.devices.is_empty() {
        configured_devices(args.config.as_deref())?
    } else {
        args.devices.clone()
    };
    let server = joined(g)?;
    let mut status = check(&devices, g, server.as_ref())?;
    if args.repair && status.problems().any(|p| p.repairable) {
        repair(&args, g, server.as_ref(), status);
        status = check(&devices, g, server.as_ref())?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", status.text());
    }
    if status.at_risk {
        let count = status.problems().count();
        let fix = match status.problems().any(|p| p.repairable) {
            true => "lifeline status --repair fixes what it can (named above); the rest needs the fix named",
            false => "follow the fix named with each problem",
        };
        return Err(Failure::new(
            Exit::AtRisk,
            format!(
                "{count} problem{} put{} a disk at risk",
                if count == 1 { "" } else { "s" },
                if count == 1 { "s" } else { "" }
            ),
        )
        .todo(fix));
    }
    Ok(())
}

/// The devices of the `[[volume]]` blocks of lifeline.toml.
fn configured_devices(path: Option<&std::path::Path>) -> Result<Vec<PathBuf>, Failure> {
    let default = std::path::Path::new("/etc/lifeline/lifeline.toml");
    if path.is_none() && !default.exists() {
        return Err(Failure::usage(format!(
            "no volume named, and {} does not exist",
            default.display()
        ))
        .todo("name the LUKS devices: lifeline status /dev/…"));
    }
    let path = path.unwrap_or(default);
    let text = String::from_utf8(super::read_small(path, 64 * 1024)?)
        .map_err(|_| Failure::usage(format!("{} is not a text file", path.display())))?;
    let config = crate::config::Config::parse(&text, &path.display().to_string())
        .map_err(|e| Failure::usage(e.to_string()))?;
    if config.volumes.is_empty() {
        return Err(
            Failure::usage(format!("{} names no volume", path.display()))
                .todo("name the devices, or add [[volume]] blocks to lifeline.toml"),
        );
    }
    Ok(config.volumes.iter().map(|v| v.device()).collect())
}

/// The escrow server this machine joined, or none when it has not joined one.
fn joined(g: &Globals) -> Result<Option<Https>, Failure> {
    if !g.state_dir.join("server-url").exists() {
        return Ok(None);
    }
    super::join::joined_server(g, None, true).map(Some)
}

fn check(devices: &[PathBuf], g: &Globals, server: Option<&Https>) -> Result<Status, Failure> {
    let mut tpm: Option<Result<TssTpm, String>> = None;
    let mut volumes = Vec::new();
    for device in devices {
        volumes.push(check_volume(device, g, &mut tpm));
    }
    let client_id = match &mut tpm {
        Some(Ok(t)) => t.drsk_public().ok().map(|p| tpm::client_id(&p)),
        _ => None,
    };
    let policy = match &client_id {
        Some(_) => backup::policy_servers(g).unwrap_or_default(),
        None => Vec::new(),
    };
    // The joined server should keep the DRSK only if the DRSK's policy names its key.
    let joined_key = match server {
        Some(s) if !policy.is_empty() => backup::announced_server_key(s)
            .ok()
            .map(|(_, name)| name)
            .filter(|name| policy.contains(name)),
        _ => None,
    };
    let mut status = Status {
        volumes,
        server: server.map(|s| s.base().to_string()),
        drsk_backups: Vec::new(),
        problems: Vec::new(),
        at_risk: false,
    };
    let joined_state = match server {
        Some(s) => Some(status.ask(s, client_id.clone().filter(|_| joined_key.is_some()))?),
        None => {
            status.problems.push(Problem::new(
                "this machine has not joined an escrow server: nothing shows that its disks are in escrow",
                "lifeline join, then lifeline escrow each volume",
            ));
            None
        }
    };
    for name in &policy {
        let joined = joined_key.as_ref() == Some(name);
        let recorded = client_id
            .as_deref()
            .and_then(|c| backup::recorded_backup(g, c, name));
        let state = match (joined, &joined_state, recorded) {
            (true, Some(state), _) => state.clone(),
            (_, _, Some(time)) => format!("backed up {}", api::iso8601(time)),
            (_, _, None) => {
                status.problems.push(Problem::new(
                    format!(
                        "the DRSK is not backed up to the server whose key is {}",
                        short(name)
                    ),
                    "join that server and run lifeline backup --server URL there, or give it lifeline backup --server-key drsk.pub --out FILE for lifeline-server drsk import",
                ));
                "not backed up".into()
            }
        };
        status.drsk_backups.push(DrskBackup {
            server_key: crate::hex::encode(name),
            joined,
            state,
        });
    }
    status.at_risk = status.problems().count() > 0;
    Ok(status)
}

/// A server key's Name as the text output shows it.
fn short(name: &[u8]) -> String {
    let hex = crate::hex::encode(name);
    format!("{}…", &hex[..hex.len().min(16)])
}

/// What the machine itself can tell about one volume.
fn check_volume(
    device: &std::path::Path,
    g: &Globals,
    tpm: &mut Option<Result<TssTpm, String>>,
) -> VolumeStatus {
    let dev = device.display();
    let mut v = VolumeStatus {
        device: device.to_path_buf(),
        uuid: None,
        tpm: NOT_CHECKED.into(),
        pcrs: Vec::new(),
        escrow: NOT_CHECKED.into(),
        packet: None,
        recovery_passphrase: "none".into(),
        problems: Vec::new(),
        key: None,
        slot: RecoverySlot::None,
        revealed: false,
    };
    let mut volume = match LuksVolume::open(device).and_then(|mut vol| Ok((vol.info()?, vol))) {
        Ok((info, volume)) => {
            v.uuid = Some(info.uuid);
            volume
        }
        Err(e) => {
            v.problems.push(Problem::new(
                e.to_string(),
                "check the device name (lifeline.toml's [[volume]] blocks)",
            ));
            return v;
        }
    };
    let uuid = v.uuid.clone().unwrap_or_default();
    match read_sealed(&mut volume, &g.state_dir, &uuid) {
        Ok(None) => v.tpm = "not enrolled".into(),
        Ok(Some(token)) => {
            v.pcrs = token
                .pcrs
                .as_ref()
                .map(|b| b.pcrs.clone())
                .unwrap_or_default();
            let tpm = tpm.get_or_insert_with(|| g.open_tpm().map_err(|f| f.what));
            let opened = match tpm {
                // A PIN is typed at boot only: no unattended check can give one.
                Ok(_) if token.pin_salt.is_some() => Err(PIN_ONLY.to_string()),
                Ok(tpm) => tpm
                    .unseal_token(&token, None)
                    .map_err(|e| e.to_string())
                    .and_then(|key| {
                        volume
                            .check_key(&key)
                            .map(|()| key)
                            .map_err(|_| "the key the TPM holds no longer opens the volume (was it re-encrypted?)".to_string())
                    }),
                Err(why) => Err(why.clone()),
            };
            match opened {
                Ok(key) => {
                    v.tpm = "opens the volume".into();
                    v.key = Some(key);
                }
                Err(why) if why == PIN_ONLY => v.tpm = why,
                Err(why) => {
                    v.tpm = why.clone();
                    v.problems.push(Problem::new(
                        format!("{dev}: the TPM does not open it: {why}"),
                        format!("lifeline enroll {dev} (it asks for a passphrase)"),
                    ));
                }
            }
        }
        Err(e) => {
            v.tpm = e.to_string();
            v.problems.push(Problem::new(
                format!("{dev}: {e}"),
                format!("lifeline enroll {dev} (it asks for a passphrase)"),
            ));
        }
    }
    match slot::read(&mut volume, &g.state_dir, &uuid) {
        Ok(RecoverySlot::In(n)) => {
            v.slot = RecoverySlot::In(n);
            v.recovery_passphrase = format!("keyslot {n}");
        }
        Ok(RecoverySlot::Removed) => {
            v.slot = RecoverySlot::Removed;
            v.recovery_passphrase = "keyslot removed".into();
            v.problems.push(
                Problem::new(
                    format!("{dev}: the keyslot of its random recovery passphrase was removed"),
                    format!(
                        "lifeline escrow {dev} --server <URL> --random-passphrase --obsolete-older"
                    ),
                )
                .repairable(),
            );
        }
        Ok(RecoverySlot::None) => {}
        Err(e) => v
            .problems
            .push(Problem::new(format!("{dev}: {e}"), "check the device")),
    }
    v
}

impl Status {
    fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.volumes
            .iter()
            .flat_map(|v| v.problems.iter())
            .chain(self.problems.iter())
    }

    /// Sends what the machine found to the server and adds what the server holds; returns
    /// what the server says of the DRSK (`api::DRSK_*`). `client_id` only when the DRSK's
    /// policy names this server's key.
    fn ask(&mut self, server: &Https, client_id: Option<String>) -> Result<String, Failure> {
        let report = api::StatusReport {
            volumes: self
                .volumes
                .iter()
                .filter_map(|v| {
                    Some(api::VolumeReport {
                        uuid: v.uuid.clone()?,
                        key: v.key.as_ref().map(|k| {
                            crate::secret::key_fingerprint(k, v.uuid.as_deref().unwrap_or(""), None)
                        }),
                    })
                })
                .collect(),
            client_id,
            problems: self.problems().map(|p| p.what.clone()).collect(),
        };
        let answer: api::StatusAnswer = server.post_json(&api::STATUS.path(&[]), &report)?;
        for escrow in answer.volumes {
            let Some(v) = self
                .volumes
                .iter_mut()
                .find(|v| v.uuid.as_deref() == Some(&escrow.uuid))
            else {
                continue;
            };
            let dev = v.device.display().to_string();
            let again = format!(
                "lifeline escrow {dev} --server {} --obsolete-older",
                server.base()
            );
            let unattended = v.key.is_some();
            let problem = match escrow.escrow.as_str() {
                api::ESCROW_MISSING => Some(format!("{dev}: not in escrow on the server")),
                api::ESCROW_STALE => Some(format!(
                    "{dev}: the escrow holds an older key; a recovery from it would fail"
                )),
                _ => None,
            };
            if let Some(what) = problem {
                let p = Problem::new(what, again.clone());
                v.problems.push(if unattended { p.repairable() } else { p });
            }
            if escrow.passphrase_revealed {
                v.revealed = true;
                v.recovery_passphrase
                    .push_str(", shown to an administrator");
                let p = Problem::new(
                    format!("{dev}: its random recovery passphrase was shown to an administrator"),
                    format!("{again} --random-passphrase, then remove the old keyslot"),
                );
                v.problems.push(match (unattended, v.slot) {
                    (true, RecoverySlot::In(_)) => p.repairable(),
                    _ => p,
                });
            }
            v.escrow = escrow.escrow;
            v.packet = escrow.packet;
        }
        if answer.drsk == api::DRSK_MISSING {
            self.problems.push(
                Problem::new(
                    "the DRSK is not backed up to the escrow server: a new motherboard would need every volume recovered",
                    format!("lifeline backup --server {}", server.base()),
                )
                .repairable(),
            );
        }
        Ok(answer.drsk)
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for v in &self.volumes {
            let uuid = v.uuid.as_deref().unwrap_or("?");
            out.push_str(&format!("{} (volume {uuid}):\n", v.device.display()));
            let pcrs = match v.pcrs.is_empty() {
                true => String::new(),
                false => format!(
                    " (bound to PCR {})",
                    v.pcrs
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            out.push_str(&format!("  TPM: {}{pcrs}\n", v.tpm));
            let packet = v
                .packet
                .as_ref()
                .map(|p| format!(" (packet {p})"))
                .unwrap_or_default();
            out.push_str(&format!("  escrow: {}{packet}\n", v.escrow));
            out.push_str(&format!(
                "  recovery passphrase: {}\n",
                v.recovery_passphrase
            ));
        }
        for b in &self.drsk_backups {
            let name = crate::hex::decode(&b.server_key).unwrap_or_default();
            let joined = if b.joined { " (the joined server)" } else { "" };
            out.push_str(&format!(
                "DRSK backup to server key {}{joined}: {}\n",
                short(&name),
                b.state
            ));
        }
        if !self.at_risk {
            out.push_str("Every disk can be opened and recovered.\n");
        }
        for p in self.problems() {
            let mark = match p.repairable {
                true => "\n  or, with no passphrase: lifeline status --repair",
                false => "",
            };
            out.push_str(&format!(
                "At risk: {}\n  what to do: {}{mark}\n",
                p.what, p.fix
            ));
        }
        out
    }
}

/// Fixes what `check` marked repairable, volume by volume, and says what it did. A repair that
/// fails is named and the others still run; the check after them shows what is left.
fn repair(args: &Args, g: &Globals, server: Option<&Https>, status: Status) {
    let Some(server) = server else {
        return;
    };
    let failed = |what: &str, f: Failure| {
        eprintln!("lifeline: could not repair {what}: {}", f.what);
        if let Some(todo) = f.todo {
            eprintln!("  what to do: {todo}");
        }
    };
    for v in status.volumes {
        let (Some(key), true) = (v.key, v.problems.iter().any(|p| p.repairable)) else {
            continue;
        };
        let device = v.device.display().to_string();
        if let Err(f) = escrow_again(args, g, server, &v.device, key, v.slot) {
            failed(&device, f);
        }
    }
    if status.problems.iter().any(|p| p.repairable) {
        let args = backup::Args {
            server_key: None,
            out: None,
            server: Some(server.base().to_string()),
        };
        if let Err(f) = backup::run(args, g) {
            failed("the DRSK backup", f);
        }
    }
}

/// Escrows the volume again with the key from the TPM, older packets obsolete. A volume that
/// had a random recovery passphrase gets a new one, and the old keyslot is destroyed once the
/// new passphrase is in escrow.
fn escrow_again(
    args: &Args,
    g: &Globals,
    server: &Https,
    device: &std::path::Path,
    key: VolumeKey,
    slot: RecoverySlot,
) -> CmdResult {
    let recipient = joined_recipient(g)?;
    let mut volume = LuksVolume::open(device)?;
    let to = Destination {
        recipient: &recipient,
        server: Some(server),
        out: None,
        machine_id: machine_id(args.machine_id.as_deref())?,
        obsolete_older: true,
        random_passphrase: slot != RecoverySlot::None,
        pbkdf2_iterations: args.pbkdf2_iterations,
        state_dir: &g.state_dir,
    };
    let done = escrow_volume(&mut volume, key, &to)?;
    let device = device.display();
    let packet = done.uploaded.map(|a| a.packet).unwrap_or_default();
    eprintln!("Repaired {device}: escrowed again as packet {packet}.");
    if let (RecoverySlot::In(old), Some(new)) = (slot, done.added_slot) {
        volume.destroy_keyslot(old)?;
        eprintln!(
            "Repaired {device}: the recovery passphrase is now in keyslot {new}; the one in keyslot {old} no longer opens the volume."
        );
    }
    Ok(())
}
