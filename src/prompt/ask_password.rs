//! systemd's password agent protocol, for initramfs images that systemd runs: the question is
//! an `ask.*` file in `/run/systemd/ask-password/`, and whichever agent answers (the console
//! agent, plymouth's) sends `+<password>` (or `-` to cancel) to our datagram socket.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::{Prompt, PromptError};

pub const DEFAULT_DIR: &str = "/run/systemd/ask-password";

pub struct AskPassword {
    dir: PathBuf,
    /// The question now open (its ask file and socket), for [`Withdraw`].
    open: Arc<Mutex<Option<(PathBuf, PathBuf)>>>,
}

/// Withdraws the open question when dropped: a process that exits while its question waits
/// on a thread would leave the ask file behind, and the agent would go on asking it instead of
/// the next program's question. Removing the file makes the agents drop it.
pub struct Withdraw(Arc<Mutex<Option<(PathBuf, PathBuf)>>>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some((ask, socket)) = self.0.lock().ok().and_then(|mut o| o.take()) {
            let _ = std::fs::remove_file(ask);
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl AskPassword {
    pub fn new(dir: impl Into<PathBuf>) -> AskPassword {
        AskPassword {
            dir: dir.into(),
            open: Arc::new(Mutex::new(None)),
        }
    }

    /// A guard that withdraws whatever question is open when it is dropped.
    pub fn withdraw_on_drop(&self) -> Withdraw {
        Withdraw(self.open.clone())
    }

    /// Whether systemd runs this boot (its password agents watch the directory then).
    pub fn available() -> bool {
        Path::new("/run/systemd/system").is_dir()
    }
}

/// Removes the question and the socket when the answer is in (or the asking failed).
struct Asked {
    ask: PathBuf,
    socket: PathBuf,
}

impl Drop for Asked {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ask);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Prompt for AskPassword {
    fn ask_secret(&mut self, question: &str) -> Result<Zeroizing<String>, PromptError> {
        std::fs::create_dir_all(&self.dir).map_err(PromptError::Io)?;
        let mut nonce = [0u8; 8];
        crate::secret::random_bytes(&mut nonce).map_err(PromptError::Io)?;
        let id = format!("lifeline.{}", crate::hex::encode(&nonce));
        let asked = Asked {
            ask: self.dir.join(format!("ask.{id}")),
            socket: self.dir.join(format!("sck.{id}")),
        };
        let socket = UnixDatagram::bind(&asked.socket).map_err(PromptError::Io)?;
        let message: String = question.chars().filter(|c| !c.is_control()).collect();
        let text = format!(
            "[Ask]\nPID={}\nSocket={}\nAcceptCached=0\nEcho=0\nNotAfter=0\nMessage={message}\nIcon=drive-harddisk\nId=lifeline\n",
            std::process::id(),
            asked.socket.display()
        );
        // Agents react to the file appearing under its final name: write, then rename.
        let staged = self.dir.join(format!(".tmp.{id}"));
        std::fs::File::create(&staged)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&staged, &asked.ask))
            .map_err(PromptError::Io)?;
        if let Ok(mut open) = self.open.lock() {
            *open = Some((asked.ask.clone(), asked.socket.clone()));
        }
        let mut reply = Zeroizing::new(vec![0u8; 4096]);
        let received = socket.recv(&mut reply);
        if let Ok(mut open) = self.open.lock() {
            *open = None;
        }
        let n = received.map_err(PromptError::Io)?;
        match reply[..n].split_first() {
            Some((b'+', answer)) => std::str::from_utf8(answer)
                .map(|a| Zeroizing::new(a.trim_end_matches('\0').to_string()))
                .map_err(|_| PromptError::Io(std::io::Error::other("the answer is not UTF-8"))),
            _ => Err(PromptError::Closed),
        }
    }

    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a password agent: waits for the question, checks it, answers on its socket.
    fn agent(dir: PathBuf, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || loop {
            let found = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("ask."));
            if let Some(entry) = found {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                let socket = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Socket="))
                    .unwrap();
                UnixDatagram::unbound()
                    .unwrap()
                    .send_to(reply, socket)
                    .unwrap();
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        })
    }

    #[test]
    fn an_agent_answers_and_the_question_is_cleaned_up() {
        let dir = std::env::temp_dir().join(format!("lifeline-ask-{}", std::process::id()));
        let answering = agent(dir.clone(), b"+123453-000011");
        let mut p = AskPassword::new(&dir);
        let answer = p.ask_secret("Passphrase or one-time password:").unwrap();
        assert_eq!(answer.as_str(), "123453-000011");
        let asked = answering.join().unwrap();
        assert!(
            asked.contains("Message=Passphrase or one-time password:"),
            "{asked}"
        );
        assert!(asked.contains("Echo=0"), "{asked}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "question and socket removed"
        );

        // A question still open when the program ends is withdrawn.
        let mut asking = AskPassword::new(&dir);
        let withdraw = asking.withdraw_on_drop();
        std::thread::spawn(move || asking.ask_secret("left open:"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(&dir).unwrap().count() < 2 {
            assert!(std::time::Instant::now() < deadline, "no question asked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(withdraw);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ask."))
            .collect();
        assert!(left.is_empty(), "the ask file is withdrawn: {left:?}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "and its socket"
        );

        let cancelling = agent(dir.clone(), b"-");
        assert!(matches!(p.ask_secret("again:"), Err(PromptError::Closed)));
        cancelling.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_agent_that_never_answers_leaves_the_boot_flow_polling() {
        use crate::unlock::{Answer, Console};
        let dir = std::env::temp_dir().join(format!("lifeline-ask-silent-{}", std::process::id()));
        let mut waiting = crate::prompt::Waiting::new(AskPassword::new(&dir));
        // Nobody answers the question: each wait ends on time, again and again.
        for _ in 0..3 {
            assert!(matches!(
                waiting.answer(
                    "Passphrase or one-time password:",
                    std::time::Duration::from_millis(200)
                ),
                Answer::Nothing
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
