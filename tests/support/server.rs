//! The real escrow server on 127.0.0.1 with its own TLS CA, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Sandbox;

pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    pub port: u16,
    /// The administrator credential file.
    pub admin: PathBuf,
    pub log: PathBuf,
    /// The server's TPM (DRSK custody), if it has one.
    tcti: Option<String>,
    /// Its PostgreSQL database, when it has one rather than its SQLite file.
    pub database: Option<String>,
}

impl Server {
    /// Initialises an authority with TLS in `srv/`, applies `config` (lines of `key = value`
    /// replacing the defaults), adds administrator "alice", and starts serving.
    pub fn start(sb: &Sandbox, config: &[(&str, &str)]) -> Server {
        Server::start_with_tpm(sb, config, None)
    }

    /// `start`, with `tpm` as the server's TPM.
    pub fn start_with_tpm(
        sb: &Sandbox,
        config: &[(&str, &str)],
        tpm: Option<&super::swtpm::Swtpm>,
    ) -> Server {
        sb.write("admin.pass", format!("{}\n", super::ADMIN_PASSPHRASE));
        Server::start_with(sb, &["--passphrase-file", "admin.pass"], config, tpm)
    }

    /// `start`, with `authority` the options of `lifeline-server init` that say where its
    /// authority comes from (a passphrase file, shares, or `--authority-public DIR`).
    pub fn start_with(
        sb: &Sandbox,
        authority: &[&str],
        config: &[(&str, &str)],
        tpm: Option<&super::swtpm::Swtpm>,
    ) -> Server {
        Server::launch(sb, authority, config, tpm, super::pg::enabled())
    }

    /// `start` on a PostgreSQL database of its own, whatever `LIFELINE_TEST_DATABASE` says:
    /// for tests of several instances (`second_instance`).
    pub fn start_on_postgres(sb: &Sandbox, config: &[(&str, &str)]) -> Server {
        sb.write("admin.pass", format!("{}\n", super::ADMIN_PASSPHRASE));
        Server::launch(sb, &["--passphrase-file", "admin.pass"], config, None, true)
    }

    fn launch(
        sb: &Sandbox,
        authority: &[&str],
        config: &[(&str, &str)],
        tpm: Option<&super::swtpm::Swtpm>,
        postgres: bool,
    ) -> Server {
        let port = free_port();
        let dir = sb.path("srv");
        let listen = format!("127.0.0.1:{port}");
        let mut init = vec!["init", "--dir", "srv"];
        init.extend_from_slice(authority);
        init.extend([
            "--tls-name",
            "127.0.0.1",
            // The address QEMU guests reach the host's server by (qemu-tests/).
            "--tls-name",
            "10.0.2.100",
            "--listen",
            &listen,
        ]);
        sb.server(&init).ok();
        let database = postgres.then(|| super::pg::cluster().new_database());
        let quoted = database.as_ref().map(|url| format!("\"{url}\""));
        let mut config = config.to_vec();
        config.extend(quoted.as_deref().map(|q| ("database", q)));
        configure(&dir, &config);
        let mut server = Server {
            child: None,
            dir,
            url: format!("https://127.0.0.1:{port}"),
            port,
            admin: PathBuf::new(),
            log: sb.path("serve.log"),
            tcti: tpm.map(|t| t.tcti()),
            database,
        };
        server.admin = server.add_admin(sb, "alice");
        server.spawn();
        server
    }

    /// A second instance of this server: a copy of its directory in `name/` that listens on
    /// a port of its own and shares its PostgreSQL database (which it must have).
    pub fn second_instance(&self, sb: &Sandbox, name: &str) -> Server {
        let database = self
            .database
            .clone()
            .expect("instances share a PostgreSQL database");
        let dir = sb.path(name);
        let copied = Command::new("cp")
            .args(["-a"])
            .arg(&self.dir)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(copied.success());
        let port = free_port();
        let listen = format!("\"127.0.0.1:{port}\"");
        configure(&dir, &[("listen", &listen)]);
        let mut server = Server {
            child: None,
            dir,
            url: format!("https://127.0.0.1:{port}"),
            port,
            admin: self.admin.clone(),
            log: sb.path(&format!("{name}.log")),
            tcti: self.tcti.clone(),
            database: Some(database),
        };
        server.spawn();
        server
    }

    /// Every row of `sql` on this server's database, each value as text (NULL as "", bytes as
    /// hex): the same for SQLite and PostgreSQL.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match &self.database {
            Some(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                client
                    .simple_query(sql)
                    .unwrap()
                    .into_iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => Some(
                            (0..r.len())
                                .map(|i| {
                                    let v = r.get(i).unwrap_or("");
                                    v.strip_prefix("\\x").unwrap_or(v).to_string()
                                })
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect()
            }
            None => {
                let db = rusqlite::Connection::open(self.dir.join("lifeline.db")).unwrap();
                let mut stmt = db.prepare(sql).unwrap();
                let n = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| {
                        (0..n)
                            .map(|i| {
                                use rusqlite::types::ValueRef;
                                Ok(match r.get_ref(i)? {
                                    ValueRef::Null => String::new(),
                                    ValueRef::Integer(n) => n.to_string(),
                                    ValueRef::Real(f) => f.to_string(),
                                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                    ValueRef::Blob(b) => {
                                        b.iter().map(|x| format!("{x:02x}")).collect()
                                    }
                                })
                            })
                            .collect()
                    })
                    .unwrap();
                rows.map(Result::unwrap).collect()
            }
        }
    }

    /// Runs `sql` (statements, no result) on this server's database.
    pub fn execute(&self, sql: &str) {
        match &self.database {
            Some(url) => postgres::Client::connect(url, postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
            None => rusqlite::Connection::open(self.dir.join("lifeline.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
        }
    }

    /// Keeps a copy of the database, the server stopped, for `reset_database`.
    pub fn keep_database(&self) {
        match &self.database {
            Some(url) => {
                let name = super::pg::database_name(url);
                super::pg::cluster()
                    .client("postgres")
                    .unwrap()
                    .batch_execute(&format!("CREATE DATABASE {name}_kept TEMPLATE {name}"))
                    .unwrap();
            }
            None => {
                std::fs::copy(
                    self.dir.join("lifeline.db"),
                    self.dir.with_extension("kept.db"),
                )
                .unwrap();
            }
        }
    }

    /// Puts back the database `keep_database` kept, the server stopped.
    pub fn reset_database(&self) {
        match &self.database {
            Some(url) => {
                let name = super::pg::database_name(url);
                // One statement per call: neither may run in a transaction block.
                let mut admin = super::pg::cluster().client("postgres").unwrap();
                admin
                    .batch_execute(&format!("DROP DATABASE {name}"))
                    .unwrap();
                admin
                    .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {name}_kept"))
                    .unwrap();
            }
            None => {
                let _ = std::fs::remove_file(self.dir.join("lifeline.db-wal"));
                std::fs::copy(
                    self.dir.with_extension("kept.db"),
                    self.dir.join("lifeline.db"),
                )
                .unwrap();
            }
        }
    }

    /// Everything the database holds, as text, to search for secrets stored in clear: the
    /// SQLite file's bytes, or every PostgreSQL table's rows.
    pub fn contents(&self) -> String {
        match &self.database {
            None => String::from_utf8_lossy(&std::fs::read(self.dir.join("lifeline.db")).unwrap())
                .into_owned(),
            Some(_) => {
                let tables = self
                    .rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1");
                let mut out = String::new();
                for table in tables {
                    for row in self.rows(&format!("SELECT * FROM {}", table[0])) {
                        out.push_str(&row.join("|"));
                        out.push('\n');
                    }
                }
                out
            }
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_lifeline-server"));
        if let Some(tcti) = &self.tcti {
            command.args(["--tcti", tcti]);
        }
        let child = command
            .args(["serve", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not start: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, then start again on the same directory.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `lifeline-server admin ...` against this server as alice.
    pub fn admin(&self, sb: &Sandbox, args: &[&str]) -> super::Run {
        self.admin_as(sb, &self.admin, args)
    }

    /// Adds an administrator; returns their credential file.
    pub fn add_admin(&self, sb: &Sandbox, name: &str) -> PathBuf {
        let dir = self.dir.to_str().unwrap();
        let credential = sb
            .server(&["admin", "add", "--dir", dir, "--name", name])
            .ok()
            .stdout
            .trim()
            .to_string();
        sb.write(&format!("{name}.cred"), credential)
    }

    /// `lifeline-server admin ...` against this server with the credential in `credential`.
    pub fn admin_as(
        &self,
        sb: &Sandbox,
        credential: &std::path::Path,
        args: &[&str],
    ) -> super::Run {
        let dir = self.dir.to_str().unwrap();
        let admin = credential.to_str().unwrap();
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend(["--dir", dir, "--credential-file", admin]);
        sb.server(&all)
    }

    /// alice approves the newest recovery request; returns its recovery ID and the OTP the
    /// helpdesk reads out.
    pub fn approve_newest_request(&self, sb: &Sandbox) -> (String, String) {
        let requests = self.admin(sb, &["requests", "--json"]).ok().stdout.clone();
        let newest = requests.lines().last().expect("a recovery request");
        let request: serde_json::Value = serde_json::from_str(newest).unwrap();
        let id = request["request"].as_str().unwrap();
        let otp = self
            .admin(
                sb,
                &["approve-recovery", id, "--passphrase-file", "admin.pass"],
            )
            .ok()
            .stdout
            .trim()
            .to_string();
        (request["recovery_id"].as_str().unwrap().to_string(), otp)
    }

    /// Joins a machine to this server with a new enrollment token; `run` runs `lifeline` as
    /// that machine (its state directory, its TPM if it has one).
    pub fn join(&self, sb: &Sandbox, extra: &[&str], run: impl FnOnce(&[&str]) -> super::Run) {
        let token = self.token(sb);
        let mut args = vec![
            "join",
            "--server",
            &self.url,
            "--ca",
            "srv/tls/ca.pem",
            "--token",
            &token,
        ];
        args.extend_from_slice(extra);
        run(&args).ok();
    }

    /// A new enrollment token.
    pub fn token(&self, sb: &Sandbox) -> String {
        self.admin(sb, &["enrollment-token"])
            .ok()
            .stdout
            .trim()
            .to_string()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sets `key = value` lines of `dir/server.toml` (each key one the file has).
fn configure(dir: &std::path::Path, config: &[(&str, &str)]) {
    let toml = dir.join("server.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    for (key, value) in config {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .expect("a known key")
            .to_string();
        text = text.replace(&line, &format!("{key} = {value}"));
    }
    std::fs::write(&toml, text).unwrap();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
