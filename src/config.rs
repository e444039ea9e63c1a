//! `lifeline unlock`'s configuration: `/etc/lifeline/lifeline.toml`, baked into the initramfs,
//! then `rd.lifeline.*` on the kernel command line.
//!
//! The file is a small subset of TOML — `key = value` lines (strings in double quotes, integers,
//! `true`/`false`), `#` comments, and one `[[volume]]` table per volume — read by a parser of
//! its own (about 200 lines) instead of a TOML library in an initramfs binary that must stay
//! small.
//! Every unknown key, bad value or missing setting is an error naming the line: lifeline then
//! steps aside and the distribution unlocks as it would without it.

use std::path::PathBuf;
use std::time::Duration;

/// One volume to unlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    /// LUKS UUID; the device is `/dev/disk/by-uuid/<uuid>` unless `device` says otherwise.
    pub uuid: String,
    /// The device-mapper name the distribution expects (crypttab, `rd.luks.name`,
    /// `cryptdevice=`), so its own step finds the volume open.
    pub name: String,
    pub device: Option<PathBuf>,
}

impl VolumeConfig {
    pub fn device(&self) -> PathBuf {
        self.device
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/dev/disk/by-uuid/{}", self.uuid)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub enabled: bool,
    pub volumes: Vec<VolumeConfig>,
    /// The escrow server's URL; none: no network recovery.
    pub server: Option<String>,
    /// Its CA certificate (PEM).
    pub ca: PathBuf,
    /// The authority's minisign public key that recovery packets must be signed with.
    pub trust: PathBuf,
    /// The machine ID packets are bound to (the glue copies /etc/machine-id here).
    pub machine_id: Option<String>,
    /// Whether to poll the server for an approved recovery packet.
    pub poll: bool,
    /// Seconds between polls of the server and scans for removable media.
    pub poll_interval: Duration,
    /// Whether to look for recovery packets on removable media.
    pub usb: bool,
    /// Only media with this file system label (any label when unset).
    pub usb_label: Option<String>,
    /// Devices to look at instead of the removable ones the kernel lists (for tests and odd
    /// hardware).
    pub usb_devices: Vec<PathBuf>,
    /// How long to wait for the TPM device to appear.
    pub tpm_wait: Duration,
    /// The TPM, as a TCTI string.
    pub tcti: String,
    /// How long recovery waits for anything to happen (a typed answer, a packet) before
    /// stepping aside. Once someone has typed an answer, it waits as long as they need.
    pub timeout: Duration,
    /// Re-seal to the current PCR values after a recovery when the TPM works but PCRs changed.
    pub reseal: bool,
    /// Offer to set a new passphrase after a recovery.
    pub offer_new_passphrase: bool,
    /// Where questions go: `auto` (systemd's password agents when systemd runs the boot, else
    /// plymouthd when its splash is up, else the console), `console`, `ask-password` or
    /// `plymouth`.
    pub prompt: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            volumes: Vec::new(),
            server: None,
            ca: PathBuf::from("/etc/lifeline/server-ca.pem"),
            trust: PathBuf::from("/etc/lifeline/minisign.pub"),
            machine_id: None,
            poll: true,
            poll_interval: Duration::from_secs(5),
            usb: true,
            usb_label: None,
            usb_devices: Vec::new(),
            tpm_wait: Duration::from_secs(5),
            tcti: crate::tpm::DEFAULT_TCTI.to_string(),
            timeout: Duration::from_secs(300),
            reseal: true,
            offer_new_passphrase: true,
            prompt: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed value.
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
}

fn parse_value(text: &str) -> Option<Value> {
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    _ => return None,
                },
                '"' => return None,
                c => out.push(c),
            }
        }
        return Some(Value::Str(out));
    }
    match text {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => text.replace('_', "").parse().ok().map(Value::Int),
    }
}

/// Removes a `#` comment that is not inside a string.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_string && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}

impl Config {
    /// Parses the file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut volume: Option<(usize, Vec<(String, Value)>)> = None;
        let mut volumes = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let at = |what: String| ConfigError(format!("{origin} line {}: {what}", n + 1));
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if line == "[[volume]]" {
                volumes.extend(volume.take());
                volume = Some((n + 1, Vec::new()));
                continue;
            }
            if line.starts_with('[') {
                return Err(at(format!(
                    "unknown section {line} (only [[volume]] exists)"
                )));
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| at("expected key = value".into()))?;
            let (key, value_text) = (key.trim(), value.trim());
            let value = parse_value(value_text).ok_or_else(|| {
                at(format!(
                    "{key}: '{value_text}' is not a quoted string, a number, true or false"
                ))
            })?;
            match &mut volume {
                Some((_, fields)) => fields.push((key.to_string(), value)),
                None => c.set(key, value).map_err(at)?,
            }
        }
        volumes.extend(volume.take());
        for (line, fields) in volumes {
            c.volumes
                .push(volume_from(fields).map_err(|e| {
                    ConfigError(format!("{origin} [[volume]] at line {line}: {e}"))
                })?);
        }
        Ok(c)
    }

    /// Applies `rd.lifeline*` settings from a kernel command line.
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Result<(), ConfigError> {
        for word in cmdline.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, "1"));
            let key = match key {
                "rd.lifeline" => "enabled",
                _ => match key.strip_prefix("rd.lifeline.") {
                    Some(k) => k,
                    None => continue,
                },
            };
            // The command line has no types: the setting says what its text means.
            let value = match (key.replace('-', "_").as_str(), value) {
                ("enabled" | "poll" | "usb" | "reseal" | "offer_new_passphrase", v) => match v {
                    "1" | "yes" | "true" => Value::Bool(true),
                    "0" | "no" | "false" => Value::Bool(false),
                    v => Value::Str(v.to_string()),
                },
                ("poll_interval" | "tpm_wait" | "timeout", v) => v
                    .parse()
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::Str(v.to_string())),
                (_, v) => Value::Str(v.to_string()),
            };
            self.set(key, value)
                .map_err(|e| ConfigError(format!("kernel command line {word}: {e}")))?;
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: Value) -> Result<(), String> {
        let key = key.replace('-', "_");
        match key.as_str() {
            "enabled" => self.enabled = boolean(&key, value)?,
            "server" => {
                let url = string(&key, value)?;
                if !url.starts_with("https://") && !url.is_empty() {
                    return Err(format!("server: '{url}' is not an https:// URL"));
                }
                self.server = (!url.is_empty()).then_some(url);
            }
            "ca" => self.ca = string(&key, value)?.into(),
            "trust" => self.trust = string(&key, value)?.into(),
            "machine_id" => {
                let id = crate::id::machine_id(&string(&key, value)?)
                    .map_err(|e| format!("machine_id: {e}"))?;
                self.machine_id = Some(id);
            }
            "poll" => self.poll = boolean(&key, value)?,
            "poll_interval" => self.poll_interval = seconds(&key, value, 1, 3600)?,
            "usb" => self.usb = boolean(&key, value)?,
            "usb_label" => self.usb_label = Some(string(&key, value)?),
            "usb_device" => self.usb_devices.push(string(&key, value)?.into()),
            "tpm_wait" => self.tpm_wait = seconds(&key, value, 0, 600)?,
            "tcti" => self.tcti = string(&key, value)?,
            "timeout" => self.timeout = seconds(&key, value, 0, 86_400)?,
            "reseal" => self.reseal = boolean(&key, value)?,
            "offer_new_passphrase" => self.offer_new_passphrase = boolean(&key, value)?,
            "prompt" => {
                let p = string(&key, value)?;
                if !["auto", "console", "ask-password", "plymouth"].contains(&p.as_str()) {
                    return Err(format!(
                        "prompt: '{p}' is not auto, console, ask-password or plymouth"
                    ));
                }
                self.prompt = p;
            }
            _ => return Err(format!("unknown setting '{key}'")),
        }
        Ok(())
    }
}

fn string(key: &str, v: Value) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s),
        _ => Err(format!("{key} must be a quoted string")),
    }
}

fn boolean(key: &str, v: Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(b),
        _ => Err(format!("{key} must be true or false")),
    }
}

/// A number of seconds from `least` to `most`: a poll interval of 0 would spin, and a wait of
/// years is a typo (and would overflow the clock arithmetic).
fn seconds(key: &str, v: Value, least: u64, most: u64) -> Result<Duration, String> {
    match v {
        Value::Int(n) if (least..=most).contains(&n) => Ok(Duration::from_secs(n)),
        Value::Int(n) => Err(format!(
            "{key} = {n}: it must be from {least} to {most} seconds"
        )),
        _ => Err(format!("{key} must be a number of seconds")),
    }
}

fn volume_from(fields: Vec<(String, Value)>) -> Result<VolumeConfig, String> {
    let (mut uuid, mut name, mut device) = (None, None, None);
    for (key, value) in fields {
        match key.as_str() {
            "uuid" => uuid = Some(string(&key, value)?),
            "name" => name = Some(string(&key, value)?),
            "device" => device = Some(PathBuf::from(string(&key, value)?)),
            _ => return Err(format!("unknown setting '{key}'")),
        }
    }
    let uuid = crate::id::volume_uuid(&uuid.ok_or("uuid is missing")?)
        .map_err(|e| format!("uuid: {e}"))?;
    let name = name.ok_or("name (the device-mapper name) is missing")?;
    if name.is_empty()
        || name.len() > 127
        || name.contains('/')
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!("name '{name}' is not a device-mapper name"));
    }
    Ok(VolumeConfig { uuid, name, device })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# lifeline.toml
server = "https://10.0.2.100:8443"   # the escrow server
machine_id = "0123456789ABCDEF0123456789abcdef"
poll_interval = 2
usb_label = "LIFE#LINE"
reseal = false

[[volume]]
uuid = "12345678-1234-1234-1234-123456789abc"
name = "cryptroot"

[[volume]]
uuid = "87654321-4321-4321-4321-cba987654321"
name = "crypthome"
device = "/dev/vdb"
"#;

    #[test]
    fn reads_the_documented_settings_and_volumes() {
        let c = Config::parse(GOOD, "t").unwrap();
        assert_eq!(c.server.as_deref(), Some("https://10.0.2.100:8443"));
        assert_eq!(
            c.machine_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.usb_label.as_deref(), Some("LIFE#LINE"));
        assert!(!c.reseal);
        assert_eq!(c.volumes.len(), 2);
        assert_eq!(c.volumes[0].name, "cryptroot");
        assert_eq!(
            c.volumes[0].device(),
            PathBuf::from("/dev/disk/by-uuid/12345678-1234-1234-1234-123456789abc")
        );
        assert_eq!(c.volumes[1].device(), PathBuf::from("/dev/vdb"));
    }

    #[test]
    fn every_mistake_names_its_line() {
        for (text, expected) in [
            ("colour = \"blue\"", "t line 1: unknown setting 'colour'"),
            (
                "\n\npoll = yes",
                "t line 3: poll: 'yes' is not a quoted string",
            ),
            ("poll = 1", "poll must be true or false"),
            ("server = \"http://x\"", "not an https:// URL"),
            ("[volumes]", "unknown section"),
            ("just words", "expected key = value"),
            (
                "[[volume]]\nname = \"root\"",
                "[[volume]] at line 1: uuid is missing",
            ),
            (
                "[[volume]]\nuuid = \"nope\"\nname = \"r\"",
                "is not a volume UUID",
            ),
            (
                "[[volume]]\nuuid = \"12345678-1234-1234-1234-123456789abc\"\nname = \"a/b\"",
                "not a device-mapper name",
            ),
            (
                "machine_id = \"abc\"",
                "is not a machine ID (32 hex digits)",
            ),
        ] {
            let e = Config::parse(text, "t").unwrap_err();
            assert!(e.0.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_kernel_command_line_overrides_and_unknown_settings_are_refused() {
        let mut c = Config::parse(GOOD, "t").unwrap();
        c.apply_cmdline("quiet root=/dev/mapper/cryptroot rd.lifeline.server=https://other:1 rd.lifeline.poll=0 rd.lifeline.timeout=30")
            .unwrap();
        assert_eq!(c.server.as_deref(), Some("https://other:1"));
        assert!(!c.poll);
        assert_eq!(c.timeout, Duration::from_secs(30));
        c.apply_cmdline("rd.lifeline=0").unwrap();
        assert!(!c.enabled);
        let e = c.apply_cmdline("rd.lifeline.colour=red").unwrap_err();
        assert!(
            e.0.contains("rd.lifeline.colour=red: unknown setting"),
            "{e}"
        );
        c.apply_cmdline("rd.lifeline.tpm_wait=1 rd.lifeline.timeout=0 rd.lifeline.usb_label=1")
            .unwrap();
        assert_eq!(c.tpm_wait, Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::ZERO);
        assert_eq!(c.usb_label.as_deref(), Some("1"));
        let e = c.apply_cmdline("rd.lifeline.usb=maybe").unwrap_err();
        assert!(e.to_string().contains("usb must be true or false"), "{e}");
        let e = c.apply_cmdline("rd.lifeline.timeout=soon").unwrap_err();
        assert!(e.0.contains("must be a number of seconds"), "{e}");
        for (word, said) in [
            (
                "rd.lifeline.timeout=18446744073709551615",
                "timeout = 18446744073709551615: it must be from 0 to 86400 seconds",
            ),
            (
                "rd.lifeline.tpm_wait=100000000000",
                "it must be from 0 to 600 seconds",
            ),
            (
                "rd.lifeline.poll_interval=0",
                "poll_interval = 0: it must be from 1 to 3600 seconds",
            ),
            (
                "rd.lifeline.poll_interval=99999999999999999999999",
                "must be a number of seconds",
            ),
        ] {
            let e = c.apply_cmdline(word).unwrap_err();
            assert!(e.0.contains(said), "{word}: {e}");
        }
        let e = Config::parse("timeout = 999999999999", "t").unwrap_err();
        assert!(e.0.contains("t line 1: timeout = 999999999999"), "{e}");
    }
}
