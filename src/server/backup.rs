//! `lifeline-server backup` and `restore`: the whole server directory as one tar file (POSIX
//! ustar, so `tar -tf` lists it and `tar -xf` unpacks it), with a consistent snapshot of the
//! database taken while the server runs. Files are archived as they are: the authority's
//! secret keys stay encrypted under the administrator passphrase, DRSKs stay wrapped by the
//! server's TPM. The TLS key is archived as it is on disk (in clear, as the server reads it):
//! keep backups where you would keep the server's disk.
//!
//! The database in a backup is always an SQLite file, `lifeline.db`, whichever engine the
//! server runs on: from PostgreSQL it is a copy of every table made in one repeatable-read
//! transaction. `restore` puts it back as it came, or into an empty PostgreSQL database (the
//! one the backup's `server.toml` names, or `--database`), which is also how a server moves
//! from SQLite to PostgreSQL.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::config::CONFIG_FILE;
use super::store;

/// The database file in a backup (and a server directory's default), and the files SQLite
/// keeps beside it while it is open.
const DB: &str = "lifeline.db";
const DB_SIDE_FILES: [&str; 2] = ["lifeline.db-wal", "lifeline.db-shm"];
const BLOCK: usize = 512;
/// The largest backup `restore` reads (into memory).
const MAX_BACKUP: u64 = 64 << 30;
/// Longest name a plain ustar header holds.
const NAME_MAX: usize = 100;

#[derive(Debug)]
pub enum BackupError {
    /// The output file, or the directory to restore into, exists already.
    Exists(PathBuf),
    /// Not a lifeline backup, or a damaged one.
    Bad(String),
    Io(String),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Exists(p) => write!(f, "{} exists already", p.display()),
            BackupError::Bad(why) | BackupError::Io(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for BackupError {
    fn from(e: io::Error) -> Self {
        BackupError::Io(e.to_string())
    }
}

/// Writes the server directory `dir` to the tar file `out` (which must not exist): a snapshot
/// of the database and every other file as it is. Returns how many files it holds.
pub fn backup(dir: &Path, out: &Path) -> Result<usize, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(BackupError::Bad(format!(
            "{} holds no {CONFIG_FILE}: not a server directory",
            dir.display()
        )));
    }
    let scratch = tempdir_beside(out)?;
    let result = (|| {
        let snapshot = scratch.join(DB);
        store::snapshot(dir, &snapshot)
            .map_err(|e| BackupError::Io(format!("cannot snapshot the database: {e}")))?;
        let mut tar = Vec::new();
        let mut count = 1;
        append_file(&mut tar, DB, &snapshot)?;
        for (name, path) in walk(dir)? {
            if name == DB || DB_SIDE_FILES.contains(&name.as_str()) {
                continue;
            }
            match path.is_dir() {
                true => append_dir(&mut tar, &name, &path)?,
                false => {
                    append_file(&mut tar, &name, &path)?;
                    count += 1;
                }
            }
        }
        tar.extend_from_slice(&[0u8; 2 * BLOCK]);
        crate::atomic_file::write_new(out, &tar, 0o600)?;
        Ok(count)
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Unpacks the backup `from` into `dir` (missing or empty), all or nothing, after checking it
/// is one: its database opens (and is migrated to this server's schema) and its audit chain
/// verifies. With `database` (a PostgreSQL URL or an SQLite file name), the restored
/// `server.toml` names it. When that is PostgreSQL, the database, which must be empty,
/// receives the backup's tables. Returns how many files it held.
pub fn restore(from: &Path, dir: &Path, database: Option<&str>) -> Result<usize, BackupError> {
    let bytes = crate::input::read_regular(from, MAX_BACKUP)
        .map_err(|e| BackupError::Bad(format!("cannot read {}: {e}", from.display())))?;
    let entries = read_tar(&bytes).map_err(|why| {
        BackupError::Bad(format!(
            "{} is not a lifeline backup: {why}",
            from.display()
        ))
    })?;
    if !entries.iter().any(|e| e.name == DB && !e.dir) {
        return Err(BackupError::Bad(format!(
            "{} holds no {DB}: not a lifeline-server backup",
            from.display()
        )));
    }
    let count = entries.iter().filter(|e| !e.dir).count();
    crate::atomic_file::create_dir_whole(
        dir,
        || BackupError::Exists(dir.to_path_buf()),
        |staging| {
            for e in &entries {
                let path = staging.join(&e.name);
                match e.dir {
                    true => fs::create_dir_all(&path)?,
                    false => {
                        if let Some(parent) = path.parent() {
                            fs::create_dir_all(parent)?;
                        }
                        let data = &bytes[e.data.clone()];
                        crate::atomic_file::write_new(&path, data, e.mode & 0o777)?;
                    }
                }
            }
            let mut db = store::open(&staging.join(DB))
                .map_err(|e| BackupError::Bad(format!("its database does not open: {e}")))?;
            db.verify_audit()
                .map_err(|e| BackupError::Bad(format!("its database does not open: {e}")))?
                .map_err(|why| {
                    BackupError::Bad(format!("its audit log was tampered with: {why}"))
                })?;
            let toml = staging.join(CONFIG_FILE);
            if let Some(database) = database {
                let text = fs::read_to_string(&toml)?;
                let text = super::config::with_database(&text, database);
                crate::atomic_file::replace(&toml, text.as_bytes(), 0o600)?;
            }
            let config = super::config::Config::load(staging).map_err(BackupError::Bad)?;
            if config.database != DB {
                let mut to = store::open_database(staging, &config.database).map_err(|e| {
                    BackupError::Bad(format!("cannot open the database to restore into: {e}"))
                })?;
                db.copy_into(&mut to).map_err(|e| {
                    BackupError::Bad(format!("cannot restore into the database: {e}"))
                })?;
                drop(db);
                for name in std::iter::once(DB).chain(DB_SIDE_FILES) {
                    let _ = fs::remove_file(staging.join(name));
                }
            }
            Ok(())
        },
    )?;
    Ok(count)
}

/// A scratch directory next to `path`, on the same file system.
fn tempdir_beside(path: &Path) -> Result<PathBuf, BackupError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tag = [0u8; 8];
    crate::secret::random_bytes(&mut tag)?;
    let dir = parent.join(format!(".lifeline-backup.{}.tmp", crate::hex::encode(&tag)));
    fs::create_dir(&dir)?;
    Ok(dir)
}

/// Every file and directory under `dir`, as (relative name, path), parents first. Anything
/// but a file or a directory (a socket, a link) is refused: a backup must restore what it
/// shows.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut names: Vec<_> = fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let path = entry.path();
            let kind = entry.file_type()?;
            let name = path
                .strip_prefix(dir)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| BackupError::Bad(format!("{}: not a UTF-8 name", path.display())))?
                .to_string();
            if !kind.is_file() && !kind.is_dir() {
                return Err(BackupError::Bad(format!(
                    "{}: neither a file nor a directory; move it out of the server directory",
                    path.display()
                )));
            }
            if kind.is_dir() {
                todo.push(path.clone());
            }
            out.push((name, path));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn append_dir(tar: &mut Vec<u8>, name: &str, path: &Path) -> Result<(), BackupError> {
    let mode = mode_of(path)?;
    tar.extend_from_slice(&header(&format!("{name}/"), mode, 0, b'5')?);
    Ok(())
}

fn append_file(tar: &mut Vec<u8>, name: &str, path: &Path) -> Result<(), BackupError> {
    let mut data = Vec::new();
    fs::File::open(path)?.read_to_end(&mut data)?;
    tar.extend_from_slice(&header(name, mode_of(path)?, data.len() as u64, b'0')?);
    tar.extend_from_slice(&data);
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    tar.extend(std::iter::repeat_n(0u8, pad));
    Ok(())
}

fn mode_of(path: &Path) -> Result<u32, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

/// A ustar header block.
fn header(name: &str, mode: u32, size: u64, kind: u8) -> Result<[u8; BLOCK], BackupError> {
    if name.len() > NAME_MAX {
        return Err(BackupError::Bad(format!(
            "{name}: name longer than {NAME_MAX} bytes"
        )));
    }
    let mut h = [0u8; BLOCK];
    let mut put = |at: usize, text: &[u8]| h[at..at + text.len()].copy_from_slice(text);
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, format!("{:011o}\0", store::now().max(0)).as_bytes());
    put(148, b"        ");
    put(156, &[kind]);
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

#[derive(Debug)]
struct Entry {
    name: String,
    dir: bool,
    mode: u32,
    data: std::ops::Range<usize>,
}

fn octal(field: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(field).map_err(|_| "a header field is not text")?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(text, 8).map_err(|_| format!("bad number {text:?} in a header"))
}

/// The entries of a ustar archive: files and directories with relative names only.
fn read_tar(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let h = bytes
            .get(at..at + BLOCK)
            .ok_or("it ends before its end marker")?;
        if h.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        let stored = octal(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(format!("the header at byte {at} is damaged"));
        }
        let name_end = h[..NAME_MAX]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NAME_MAX);
        let name = std::str::from_utf8(&h[..name_end])
            .map_err(|_| "a name is not UTF-8")?
            .trim_end_matches('/')
            .to_string();
        let safe = !name.is_empty()
            && Path::new(&name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(format!("it names {name:?}, outside the directory"));
        }
        let size = usize::try_from(octal(&h[124..136])?).map_err(|_| "a file is too large")?;
        let mode = octal(&h[100..108])? as u32;
        let start = at + BLOCK;
        let end = start.checked_add(size).ok_or("a file is too large")?;
        if end > bytes.len() {
            return Err(format!("{name} is cut short"));
        }
        let dir = match h[156] {
            b'0' | 0 => false,
            b'5' => true,
            other => {
                return Err(format!(
                    "{name} is of type {:?}, not a file or directory",
                    char::from(other)
                ))
            }
        };
        entries.push(Entry {
            name,
            dir,
            mode,
            data: start..end,
        });
        at = end + (BLOCK - size % BLOCK) % BLOCK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_reads_back_and_names_outside_the_directory_are_refused() {
        let mut tar = Vec::new();
        tar.extend_from_slice(&header("tls/", 0o755, 0, b'5').unwrap());
        tar.extend_from_slice(&header("tls/ca.pem", 0o644, 3, b'0').unwrap());
        tar.extend_from_slice(b"abc");
        tar.extend(std::iter::repeat_n(0u8, BLOCK - 3));
        tar.extend_from_slice(&[0u8; 2 * BLOCK]);
        let entries = read_tar(&tar).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].dir && entries[0].name == "tls");
        assert_eq!(&tar[entries[1].data.clone()], b"abc");
        assert_eq!(entries[1].mode, 0o644);

        let mut evil = header("../etc/passwd", 0o644, 0, b'0').unwrap().to_vec();
        evil.extend_from_slice(&[0u8; 2 * BLOCK]);
        assert!(read_tar(&evil)
            .unwrap_err()
            .contains("outside the directory"));
        let mut link = header("x", 0o644, 0, b'2').unwrap().to_vec();
        link.extend_from_slice(&[0u8; 2 * BLOCK]);
        assert!(read_tar(&link)
            .unwrap_err()
            .contains("not a file or directory"));
        tar[200] ^= 1;
        assert!(read_tar(&tar).unwrap_err().contains("damaged"));
        assert!(read_tar(&tar[..600]).is_err());
    }
}
