//! `server.toml` in the server directory, and the TLS material `init` makes for small sites.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const CONFIG_FILE: &str = "server.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. "0.0.0.0:8443".
    pub listen: SocketAddr,
    /// The database: an SQLite file (relative to the server directory), or a PostgreSQL URL
    /// ("postgresql://user@host/db", "postgresql:///db?host=/run/postgresql") that several
    /// instances share.
    #[serde(default = "default_database")]
    pub database: String,
    /// Server certificate chain and key (PEM), relative to the server directory.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Networks (CIDR) administrators may connect from.
    #[serde(default = "default_admin_networks")]
    pub admin_networks: Vec<String>,
    /// Networks (CIDR) that may read `/metrics`.
    #[serde(default = "default_admin_networks")]
    pub metrics_networks: Vec<String>,
    #[serde(default = "default_max_packets")]
    pub max_packets_per_machine: u32,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long approved recovery packets can be fetched, e.g. "72h".
    #[serde(default = "default_recovery_valid_for")]
    pub recovery_valid_for: String,
    /// How long an enrollment token is valid, e.g. "24h".
    #[serde(default = "default_token_valid_for")]
    pub enrollment_token_valid_for: String,
    /// How long a DRSK restore request waits for approval, and an approved restore can be
    /// fetched, e.g. "72h".
    #[serde(default = "default_recovery_valid_for")]
    pub restore_valid_for: String,
    /// Where every committed audit entry is also written as a JSON line: "stderr" (journald
    /// under systemd), a file (appended to; relative paths are in the server directory), or
    /// "none". `audit verify --stream` checks the database against it.
    #[serde(default = "default_audit_stream")]
    pub audit_stream: String,
    /// Requests per minute from one address (all endpoints), and per machine credential.
    #[serde(default = "default_per_address")]
    pub requests_per_minute_per_address: u32,
    #[serde(default = "default_per_machine")]
    pub requests_per_minute_per_machine: u32,
    /// Where recovery packets are made: "server" (an approval sends the administrator
    /// passphrase, which unlocks the authority in this process for that one operation) or
    /// "offline" (the server holds no secret key; administrators approve with
    /// `admin approve-recovery --authority DIR`, which builds the packet on their machine).
    #[serde(default)]
    pub authority: AuthorityMode,
    /// How long shares toward one K-of-N approval are held (in memory) for the rest to arrive.
    #[serde(default = "default_share_window")]
    pub share_window: String,
    /// A machine whose `lifeline status` has not reported for this long shows as "not
    /// reporting" in `admin machines` (the shipped timer reports daily).
    #[serde(default = "default_report_overdue_after")]
    pub report_overdue_after: String,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityMode {
    #[default]
    Server,
    Offline,
}

pub fn default_database() -> String {
    "lifeline.db".into()
}
fn default_admin_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
fn default_max_packets() -> u32 {
    1000
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_recovery_valid_for() -> String {
    "72h".into()
}
fn default_token_valid_for() -> String {
    "24h".into()
}
fn default_audit_stream() -> String {
    "stderr".into()
}
fn default_per_address() -> u32 {
    1200
}
fn default_per_machine() -> u32 {
    300
}
fn default_share_window() -> String {
    "15m".into()
}
fn default_report_overdue_after() -> String {
    "3d".into()
}

impl Config {
    pub fn load(dir: &Path) -> Result<Config, String> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for net in &config.admin_networks {
            Cidr::parse(net).map_err(|e| format!("{}: admin_networks: {e}", path.display()))?;
        }
        for net in &config.metrics_networks {
            Cidr::parse(net).map_err(|e| format!("{}: metrics_networks: {e}", path.display()))?;
        }
        config.recovery_valid_for()?;
        config.token_valid_for()?;
        config.restore_valid_for()?;
        config.share_window()?;
        config.report_overdue_after()?;
        Ok(config)
    }

    /// `restore_valid_for` in seconds.
    pub fn restore_valid_for(&self) -> Result<i64, String> {
        humantime::parse_duration(&self.restore_valid_for)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map_err(|e| format!("restore_valid_for: {e}"))
    }

    pub fn recovery_valid_for(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.recovery_valid_for)
            .map_err(|e| format!("recovery_valid_for: {e}"))
    }

    pub fn share_window(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.share_window).map_err(|e| format!("share_window: {e}"))
    }

    /// `report_overdue_after` in seconds.
    pub fn report_overdue_after(&self) -> Result<i64, String> {
        humantime::parse_duration(&self.report_overdue_after)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map_err(|e| format!("report_overdue_after: {e}"))
    }

    pub fn token_valid_for(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.enrollment_token_valid_for)
            .map_err(|e| format!("enrollment_token_valid_for: {e}"))
    }

    /// True when `ip` is inside one of the administrator networks.
    pub fn is_admin_address(&self, ip: IpAddr) -> bool {
        inside(&self.admin_networks, ip)
    }

    /// True when `ip` may read `/metrics`.
    pub fn is_metrics_address(&self, ip: IpAddr) -> bool {
        inside(&self.metrics_networks, ip)
    }
}

fn inside(networks: &[String], ip: IpAddr) -> bool {
    networks
        .iter()
        .filter_map(|n| Cidr::parse(n).ok())
        .any(|c| c.contains(ip))
}

/// `server.toml`'s text `text` with its `database` line set to `database` (added after
/// `listen` when the file has none), everything else as it was.
pub fn with_database(text: &str, database: &str) -> String {
    let line = format!("database = {}", toml::Value::String(database.to_string()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let key = |l: &str, k: &str| l.split('=').next().is_some_and(|n| n.trim() == k);
    match lines.iter().position(|l| key(l, "database")) {
        Some(i) => lines[i] = line,
        None => {
            let at = lines
                .iter()
                .position(|l| key(l, "listen"))
                .map_or(0, |i| i + 1);
            lines.insert(at, line);
        }
    }
    lines.join("\n") + "\n"
}

/// The configuration `init` writes: listening on the loopback only until an administrator says
/// otherwise.
pub fn default_text(listen: &str, authority: AuthorityMode) -> String {
    let authority = match authority {
        AuthorityMode::Server => "server",
        AuthorityMode::Offline => "offline",
    };
    format!(
        "# lifeline-server configuration. Paths are relative to this directory.\n\
         listen = \"{listen}\"\n\
         # The database: an SQLite file here, or PostgreSQL for several instances\n\
         # (\"postgresql://lifeline@db.example.org/lifeline\", or for a unix socket\n\
         # \"postgresql:///lifeline?host=/run/postgresql\"). lifeline-server creates the tables.\n\
         database = \"lifeline.db\"\n\
         tls_cert = \"tls/server.pem\"\n\
         tls_key = \"tls/server.key\"\n\
         # Administrators may call admin endpoints only from these networks.\n\
         admin_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\
         # Prometheus may read /metrics only from these networks.\n\
         metrics_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\
         max_packets_per_machine = 1000\n\
         max_body_bytes = 65536\n\
         recovery_valid_for = \"72h\"\n\
         enrollment_token_valid_for = \"24h\"\n\
         # DRSK restore requests wait this long for approval; approved ones can be fetched as long.\n\
         restore_valid_for = \"72h\"\n\
         # Every audit entry also goes here as a JSON line (stderr: the journal under systemd),\n\
         # so that `audit verify --stream` can tell when entries were deleted from the database.\n\
         audit_stream = \"stderr\"\n\
         # Rate limits (429 Too Many Requests beyond them).\n\
         requests_per_minute_per_address = 1200\n\
         requests_per_minute_per_machine = 300\n\
         # \"server\": approvals send the administrator passphrase, which unlocks the authority\n\
         # here for that one operation. \"offline\": this server holds no secret key; approve with\n\
         # `lifeline-server admin approve-recovery ID --authority DIR` on your own machine.\n\
         authority = \"{authority}\"\n\
         # Shares toward a K-of-N approval wait this long (in memory) for the others.\n\
         share_window = \"15m\"\n\
         # A machine whose `lifeline status` (its daily timer) has not reported for this long\n\
         # shows as \"not reporting\" in `admin machines`.\n\
         report_overdue_after = \"3d\"\n"
    )
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not address/prefix"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("'{prefix}' is not a prefix length up to {max}"))?;
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A local CA and a server certificate for `names` (host names or IP addresses), written to
/// `dir/tls/`: ca.pem (give it to clients), ca.key, server.pem, server.key.
pub fn make_tls(dir: &Path, names: &[String]) -> Result<(), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lifeline local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let server_key = KeyPair::generate().map_err(e)?;
    let mut server_params = CertificateParams::new(names.to_vec()).map_err(e)?;
    server_params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "lifeline".into()),
    );
    let issuer = Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).map_err(e)?;
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
    let write = |name: &str, text: String, mode: u32| {
        crate::atomic_file::write_new(&tls.join(name), text.as_bytes(), mode)
            .map_err(|e| e.to_string())
    };
    write("ca.pem", ca_cert.pem(), 0o644)?;
    write("ca.key", issuer.key().serialize_pem(), 0o600)?;
    write("server.pem", server_cert.pem(), 0o644)?;
    write("server.key", server_key.serialize_pem(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
    }
}
