//! A real PostgreSQL for the tests: one cluster per test process, made with `initdb` in a
//! scratch directory and run by an unprivileged user (PostgreSQL refuses root) on a unix socket
//! only, never TCP. A watcher shell stops it when the test process is gone. Each server gets a
//! database of its own.
//!
//! `LIFELINE_TEST_DATABASE=postgresql` runs every test server on it (`make test` runs the
//! integration tests once with SQLite and once so); the tests of several instances use it
//! either way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The superuser the cluster is made with, whom the servers connect as.
const USER: &str = "lifeline";

pub struct Cluster {
    /// Removed by the watcher, after PostgreSQL stopped.
    _dir: PathBuf,
    socket: PathBuf,
    _watcher: std::process::Child,
}

/// Whether test servers use PostgreSQL rather than their SQLite file.
pub fn enabled() -> bool {
    std::env::var("LIFELINE_TEST_DATABASE").is_ok_and(|v| v == "postgresql")
}

/// PostgreSQL's programs: `PG_BIN`, else the newest of Debian's `/usr/lib/postgresql/*/bin`.
fn bin(program: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/install-deps.sh installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join(program).exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions
        .pop()
        .expect("no PostgreSQL binaries")
        .join(program)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("no user nobody");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// Runs `command` as the unprivileged `nobody` when the tests run as root.
fn unprivileged(program: &Path) -> Command {
    match is_root() {
        true => {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(program);
            c
        }
        false => Command::new(program),
    }
}

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("lifeline-pg.")
            .tempdir()
            .unwrap()
            .keep();
        let (data, socket) = (dir.join("data"), dir.join("socket"));
        std::fs::create_dir(&socket).unwrap();
        if is_root() {
            let (uid, gid) = nobody();
            for path in [&dir, &socket] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let init = unprivileged(&bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // Stopped (fast shutdown) and removed once this process is gone, however it ends.
        let script = format!(
            "\"$0\" -D \"$1\" -k \"$2\" -c listen_addresses= -c max_connections=300 & pg=$!; \
             while [ -d /proc/{} ]; do sleep 1; done; kill -INT $pg; wait $pg; rm -rf \"$3\"",
            std::process::id()
        );
        // Never waited for: it ends on its own once this process is gone.
        let watcher = unprivileged(Path::new("sh"))
            .args(["-c", &script])
            .arg(bin("postgres"))
            .arg(&data)
            .arg(&socket)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        let cluster = Cluster {
            _dir: dir,
            socket,
            _watcher: watcher,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.client("postgres").is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The URL of database `name` (what `server.toml`'s `database` says).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql:///{name}?host={}&user={USER}",
            self.socket.display()
        )
    }

    pub fn client(&self, name: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.url(name), postgres::NoTls)
    }

    /// A new, empty database; returns its URL (see `database_name`).
    pub fn new_database(&self) -> String {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        let name = format!(
            "t_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        self.client("postgres")
            .unwrap()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(&name)
    }
}

/// The name of the database a URL of `Cluster::url` names.
pub fn database_name(url: &str) -> &str {
    let rest = url.strip_prefix("postgresql:///").unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}
