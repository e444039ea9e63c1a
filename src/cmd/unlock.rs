//! `lifeline unlock`: the initramfs agent. Builds the real adapters and runs the boot flow
//! (`crate::unlock`) for every configured volume. Nothing here may make a boot worse than
//! without lifeline: every problem is one line and a non-zero exit, after which the
//! distribution's own unlock step runs as usual.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use argh::FromArgs;

use super::{CmdResult, Exit, Failure};
use crate::config::{Config, VolumeConfig};
use crate::escrow::https::Https;
use crate::escrow::usb::Usb;
use crate::luks::{LuksError, LuksVolume};
use crate::secret::{Passphrase, VolumeKey};
use crate::tpm::token::{luks1_file, read_sealed, SealedToken, TokenError, TOKEN_TYPE};
use crate::tpm::{TpmError, TssTpm};
use crate::unlock::{self, EscrowSource, Opened, Settings, Tpm, Volume};

#[derive(FromArgs, Debug)]
/// Unlock the configured volumes at boot: with the TPM, else by recovery — a recovery packet
/// from the escrow server or a USB stick with the one-time password from the helpdesk, or the
/// volume's passphrase, typed at one prompt. Exits 0 when every volume is open, 9 when lifeline
/// steps aside (the distribution's own unlock step takes over), 2 on a configuration error.
#[argh(
    subcommand,
    name = "unlock",
    example = "{command_name} --check-only",
    example = "{command_name} --tpm-only"
)]
pub struct Args {
    /// the configuration file (default /etc/lifeline/lifeline.toml)
    #[argh(option, default = "PathBuf::from(\"/etc/lifeline/lifeline.toml\")")]
    pub config: PathBuf,
    /// the kernel command line to read rd.lifeline.* from (default /proc/cmdline)
    #[argh(option, default = "PathBuf::from(\"/proc/cmdline\")")]
    pub cmdline: PathBuf,
    /// prove the key opens each volume without creating the device-mapper mapping
    #[argh(switch)]
    pub check_only: bool,
    /// try only the TPM (asking the PIN of a key sealed with one), without recovery: exit 0 when
    /// it opened every volume, 9 when not (the glue then brings the network up and runs
    /// lifeline unlock again, which does not ask that PIN again)
    #[argh(switch)]
    pub tpm_only: bool,
    /// for initramfs hooks: exit 0 when lifeline is enabled with an escrow server (so the
    /// network is needed), 9 when not, 2 on a configuration error; nothing is unlocked
    #[argh(switch)]
    pub needs_network: bool,
    /// for initramfs hooks: print the files the initramfs needs besides the binary (the
    /// configuration, CA, trust key, machine ID, LUKS1 sealed keys), one per line
    #[argh(switch)]
    pub list_files: bool,
}

/// Where removable media are mounted while they are read.
const MOUNT_DIR: &str = "/run/lifeline/media";
/// How long a configured device may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

pub fn run(args: Args, g: &super::Globals, started: Instant) -> CmdResult {
    if args.needs_network {
        let config = load(&args)?;
        return match config.enabled && config.server.is_some() {
            true => Ok(()),
            false => Err(Failure::new(
                Exit::StepAside,
                "no network needed: no escrow server is configured, or lifeline is disabled",
            )),
        };
    }
    if args.list_files {
        for file in initramfs_files(&load(&args)?, &args.config, &g.state_dir) {
            println!("{}", file.display());
        }
        return Ok(());
    }
    harden();
    let _terminal = TerminalRestored::new();
    let config = load(&args)?;
    if !config.enabled {
        return Err(Failure::new(Exit::StepAside, "disabled (rd.lifeline=0)"));
    }
    let machine_id = match &config.machine_id {
        Some(id) => id.clone(),
        None => super::machine_id(None).map_err(|f| f.context("machine_id is not configured"))?,
    };
    let say = |line: String| eprintln!("lifeline: {line}");
    let trust = match super::recover::read_trust_key(&config.trust) {
        Ok(k) => Some(k),
        Err(f) => {
            say(format!(
                "{}; recovery packets cannot be checked, only passphrases work",
                f.what
            ));
            None
        }
    };
    let mut sources: Vec<Box<dyn EscrowSource>> = Vec::new();
    if let Some(url) = &config.server {
        match std::fs::read(&config.ca)
            .map_err(|e| e.to_string())
            .and_then(|ca| Https::new(url, &ca, Duration::from_secs(10)).map_err(|e| e.to_string()))
        {
            Ok(https) if config.poll => sources.push(Box::new(https)),
            Ok(_) => {}
            Err(e) => say(format!("no escrow server: {} ({e})", config.ca.display())),
        }
    }
    if config.usb {
        sources.push(Box::new(Usb::new(
            config.usb_devices.clone(),
            config.usb_label.clone(),
            PathBuf::from(MOUNT_DIR),
        )));
    }
    let mut tpm: Box<dyn Tpm> = match TssTpm::open(&config.tcti, config.tpm_wait) {
        Ok(t) => Box::new(t),
        Err(e) => Box::new(NoTpm(e)),
    };
    let settings = Settings {
        machine_id,
        trust,
        poll_interval: config.poll_interval,
        timeout: config.timeout,
        reseal: config.reseal,
        offer_new_passphrase: config.offer_new_passphrase,
        now: SystemTime::now(),
    };
    let (mut console, _withdraw) = prompt(&config.prompt);
    let mut closed = 0;
    for v in &config.volumes {
        match open_volume(v, args.check_only, &g.state_dir) {
            Ok(None) => say(format!("volume {} is open already ({}).", v.uuid, v.name)),
            Ok(Some(mut volume)) if args.tpm_only => {
                match unlock::tpm_only(&v.uuid, &mut volume, tpm.as_mut(), &mut console, &settings)
                {
                    Ok(()) => say(format!(
                        "volume {} unlocked{} (TPM) after {} ms.",
                        v.uuid,
                        if args.check_only { " (check only)" } else { "" },
                        started.elapsed().as_millis()
                    )),
                    Err(not) => {
                        if let Some(e) = &not.handoff {
                            leave_handoff(&v.uuid, e);
                        }
                        say(format!("volume {}: {}; recovery follows.", v.uuid, not.why));
                        closed += 1;
                    }
                }
            }
            Ok(Some(mut volume)) => {
                let earlier = take_handoff(&v.uuid);
                match unlock::unlock(
                    &v.uuid,
                    &mut volume,
                    tpm.as_mut(),
                    &mut sources,
                    &mut console,
                    &settings,
                    earlier,
                ) {
                    Ok(how) => say(format!(
                        "volume {} unlocked{} ({}) after {} ms.",
                        v.uuid,
                        if args.check_only { " (check only)" } else { "" },
                        match how {
                            Opened::Tpm => "TPM",
                            Opened::RestoredTpm => "TPM, DRSK restored from the server",
                            Opened::Passphrase => "passphrase",
                            Opened::RecoveryPacket => "recovery packet",
                        },
                        started.elapsed().as_millis()
                    )),
                    Err(why) => {
                        say(format!("stepping aside for volume {}: {why}.", v.uuid));
                        closed += 1;
                    }
                }
            }
            Err(e) => {
                say(format!("volume {}: {e}", v.uuid));
                closed += 1;
            }
        }
    }
    if closed > 0 {
        // With --tpm-only, each closed volume's line said "recovery follows": nothing to add.
        let what = match args.tpm_only {
            true => String::new(),
            false => format!(
                "{closed} volume(s) not unlocked; the distribution's own unlock step takes over"
            ),
        };
        return Err(Failure::new(Exit::StepAside, what));
    }
    Ok(())
}

/// Where `--tpm-only` leaves how a PIN prompt ended, for the whole flow after it in the same
/// boot (so that the PIN is asked once): `$LIFELINE_RUN_DIR` (default /run/lifeline, in
/// memory, gone at the next boot) `/pin-<uuid>`. Nothing secret: the kind of failure and its
/// words. None for a UUID that is not one.
fn handoff_path(uuid: &str) -> Option<PathBuf> {
    if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let run = std::env::var_os("LIFELINE_RUN_DIR")
        .map_or_else(|| PathBuf::from("/run/lifeline"), PathBuf::from);
    Some(run.join(format!("pin-{uuid}")))
}

/// Best effort: without it the whole flow asks for the PIN again.
fn leave_handoff(uuid: &str, e: &TpmError) {
    if let Some(path) = handoff_path(uuid) {
        let text = unlock::handoff_text(e);
        let _ = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::atomic_file::replace(&path, text.as_bytes(), 0o600));
    }
}

/// The handoff `--tpm-only` left for this volume, if any; removed as it is read.
fn take_handoff(uuid: &str) -> Option<TpmError> {
    let path = handoff_path(uuid)?;
    let text = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    unlock::handoff_from(&text?)
}

/// What the initramfs needs so that this configuration works at boot.
fn initramfs_files(config: &Config, path: &Path, state_dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf(), config.trust.clone()];
    if config.server.is_some() {
        files.push(config.ca.clone());
    }
    if config.machine_id.is_none() {
        files.push(PathBuf::from("/etc/machine-id"));
    }
    for v in &config.volumes {
        let sealed = luks1_file(state_dir, &v.uuid);
        if sealed.exists() {
            files.push(sealed);
        }
    }
    files
}

/// systemd's password agents (console, plymouth) when systemd runs the boot; else plymouthd
/// when its splash is up; else the console. With the agents, also the guard that
/// withdraws a question still open when lifeline exits.
fn prompt(
    setting: &str,
) -> (
    crate::prompt::Waiting,
    Option<crate::prompt::ask_password::Withdraw>,
) {
    use crate::prompt::{AskPassword, Plymouth, Terminal, Waiting};
    let plymouth = || Plymouth::new(crate::prompt::plymouth::SOCKET);
    let chosen = match setting {
        "auto" if AskPassword::available() => "ask-password",
        "auto" if plymouth().available() => "plymouth",
        other => other,
    };
    match chosen {
        "ask-password" => {
            let agents = AskPassword::new(crate::prompt::ask_password::DEFAULT_DIR);
            let withdraw = agents.withdraw_on_drop();
            (Waiting::new(agents), Some(withdraw))
        }
        "plymouth" => (Waiting::new(plymouth()).on_splash(plymouth()), None),
        _ => (Waiting::new(Terminal::new()), None),
    }
}

/// Puts the terminal back as it was when lifeline exits: a question may still be open (with
/// echo off) when it steps aside, and the distribution's prompt or a shell comes next.
struct TerminalRestored(Option<nix::sys::termios::Termios>);

impl TerminalRestored {
    fn new() -> Self {
        use std::os::fd::AsFd;
        TerminalRestored(nix::sys::termios::tcgetattr(std::io::stdin().as_fd()).ok())
    }
}

impl Drop for TerminalRestored {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// No core dumps, not dumpable, memory locked where the kernel allows: secrets stay in RAM.
fn harden() {
    use nix::sys::resource::{setrlimit, Resource};
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::sys::mman::mlockall(
        nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
    );
}

fn load(args: &Args) -> Result<Config, Failure> {
    let step_aside = |what: String| {
        Failure::usage(format!("{what}; stepping aside"))
            .todo("fix the configuration; until then the distribution unlocks as without lifeline")
    };
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| step_aside(format!("cannot read {}: {e}", args.config.display())))?;
    let mut config = Config::parse(&text, &args.config.display().to_string())
        .map_err(|e| step_aside(e.to_string()))?;
    let cmdline = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    config
        .apply_cmdline(&cmdline)
        .map_err(|e| step_aside(e.to_string()))?;
    if config.volumes.is_empty() && config.enabled {
        return Err(step_aside(format!(
            "{} lists no [[volume]]",
            args.config.display()
        )));
    }
    Ok(config)
}

/// The volume, once its device is there; `None` when its mapping exists already.
fn open_volume(
    v: &VolumeConfig,
    check_only: bool,
    state_dir: &Path,
) -> Result<Option<BootVolume>, String> {
    if !check_only && Path::new("/dev/mapper").join(&v.name).exists() {
        return Ok(None);
    }
    let device = v.device();
    let deadline = Instant::now() + DEVICE_WAIT;
    while !device.exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} did not appear", device.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut luks = LuksVolume::open(&device).map_err(|e| e.to_string())?;
    let uuid = luks.info().map_err(|e| e.to_string())?.uuid;
    if !uuid.eq_ignore_ascii_case(&v.uuid) {
        return Err(format!(
            "{} has LUKS UUID {uuid}, not the configured one",
            device.display()
        ));
    }
    Ok(Some(BootVolume {
        luks,
        uuid,
        name: (!check_only).then(|| v.name.clone()),
        state_dir: state_dir.to_path_buf(),
    }))
}

/// A LUKS volume at boot: opened under its mapping name (or only checked).
struct BootVolume {
    luks: LuksVolume,
    uuid: String,
    name: Option<String>,
    /// Where LUKS1 volumes' sealed keys are (the initramfs glue copies them in).
    state_dir: PathBuf,
}

impl Volume for BootVolume {
    fn token(&mut self) -> Option<Result<SealedToken, TokenError>> {
        read_sealed(&mut self.luks, &self.state_dir, &self.uuid).transpose()
    }

    fn activate(&mut self, key: &VolumeKey) -> Result<(), LuksError> {
        match &self.name {
            Some(name) => self.luks.activate(name, key),
            None => self.luks.check_key(key),
        }
    }

    fn key_from_passphrase(&mut self, passphrase: &Passphrase) -> Result<VolumeKey, LuksError> {
        self.luks.unlock(passphrase).map(|(_, key)| key)
    }

    fn store_token(&mut self, token: &SealedToken) -> Result<(), LuksError> {
        if !self.luks.is_luks2() {
            return Err(LuksError::Other("LUKS1 keeps its sealed key on the root file system: run lifeline enroll once booted".into()));
        }
        self.luks
            .put_token(TOKEN_TYPE, &token.to_json())
            .map(|_| ())
    }

    fn add_passphrase(&mut self, key: &VolumeKey, new: &Passphrase) -> Result<u32, LuksError> {
        self.luks.add_passphrase(key, new)
    }
}

/// A TPM that could not be opened: every call says why, and the flow falls back.
struct NoTpm(TpmError);

impl Tpm for NoTpm {
    fn unseal(&mut self, _: &SealedToken, _: Option<&Passphrase>) -> Result<VolumeKey, TpmError> {
        Err(self.0.clone())
    }
    fn in_lockout(&mut self) -> bool {
        false
    }
    fn srk_public(&mut self) -> Result<Vec<u8>, TpmError> {
        Err(self.0.clone())
    }
    fn load_restored(&mut self, _: &[u8]) -> Result<String, TpmError> {
        Err(self.0.clone())
    }
    fn reseal(&mut self, _: &VolumeKey, _: &[u8]) -> Result<SealedToken, TpmError> {
        Err(self.0.clone())
    }
}
