//! Plymouth's boot splash when no systemd runs the boot (under systemd, plymouth answers the
//! ask-password protocol itself). We speak plymouthd's own socket protocol, as systemd does,
//! rather than running the `plymouth` client: a request is a command byte, then `\x02`, the
//! argument's length with its NUL, the argument and a NUL; the daemon answers `\x06` (done),
//! `\x15` (refused), `\x05` (no answer: cancelled) or `\x02`, a 32-bit length and the answer.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

use zeroize::Zeroizing;

use super::{Prompt, PromptError};

/// plymouthd's socket, in the abstract namespace.
pub const SOCKET: &str = "/org/freedesktop/plymouthd";

const ACK: u8 = 0x06;
const ANSWER: u8 = 0x02;
/// Longest answer taken; a passphrase is far shorter.
const MAX_ANSWER: usize = 4096;
/// How long plymouthd may take to acknowledge a request that is not a question.
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Plymouth {
    name: String,
}

impl Plymouth {
    /// The daemon listening on the abstract socket `name` (`SOCKET` at boot).
    pub fn new(name: &str) -> Plymouth {
        Plymouth { name: name.into() }
    }

    /// Whether plymouth's daemon is running (and so owns the screen).
    pub fn available(&self) -> bool {
        self.request(b'P', None).is_ok_and(|reply| reply == ACK)
    }

    /// Shows `line` on the splash; a line that cannot be shown is still on the console.
    pub fn show(&self, line: &str) -> bool {
        self.request(b'M', Some(line))
            .is_ok_and(|reply| reply == ACK)
    }

    /// Sends one request; returns the connection, for an answer to follow, and the reply type.
    /// Every request but a question must be acknowledged within `REPLY_WAIT`: a daemon that
    /// takes the connection and never answers must not stall the boot flow. A question waits
    /// for the person (on the prompt's own thread).
    fn send(&self, command: u8, argument: Option<&str>) -> std::io::Result<(UnixStream, u8)> {
        let addr = SocketAddr::from_abstract_name(self.name.as_bytes())?;
        let mut stream = UnixStream::connect_addr(&addr)?;
        let wait = (command != b'*').then_some(REPLY_WAIT);
        stream.set_read_timeout(wait)?;
        stream.set_write_timeout(Some(REPLY_WAIT))?;
        let mut request = vec![command];
        if let Some(arg) = argument {
            // The length is one byte: longer text is cut (at a character boundary).
            let mut end = arg.len().min(254);
            while !arg.is_char_boundary(end) {
                end -= 1;
            }
            let arg: String = arg[..end].chars().filter(|c| *c != '\0').collect();
            request.extend([0x02, arg.len() as u8 + 1]);
            request.extend(arg.as_bytes());
        }
        request.push(0);
        stream.write_all(&request)?;
        let mut reply = [0u8];
        stream.read_exact(&mut reply)?;
        Ok((stream, reply[0]))
    }

    fn request(&self, command: u8, argument: Option<&str>) -> std::io::Result<u8> {
        self.send(command, argument).map(|(_, reply)| reply)
    }
}

impl Prompt for Plymouth {
    fn ask_secret(&mut self, question: &str) -> Result<Zeroizing<String>, PromptError> {
        let (mut stream, reply) = self.send(b'*', Some(question)).map_err(PromptError::Io)?;
        if reply != ANSWER {
            return Err(PromptError::Closed);
        }
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).map_err(PromptError::Io)?;
        let size = u32::from_ne_bytes(size) as usize;
        if size > MAX_ANSWER {
            return Err(PromptError::Io(std::io::Error::other(
                "the answer is too long",
            )));
        }
        let mut answer = Zeroizing::new(vec![0u8; size]);
        stream.read_exact(&mut answer).map_err(PromptError::Io)?;
        let text = answer.split(|b| *b == 0).next().unwrap_or_default();
        std::str::from_utf8(text)
            .map(|a| Zeroizing::new(a.to_string()))
            .map_err(|_| PromptError::Io(std::io::Error::other("the answer is not UTF-8")))
    }

    fn say(&mut self, line: &str) {
        eprintln!("{line}");
        self.show(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Plays plymouthd for `requests` connections: records each request, answers questions
    /// with `answer` (`None`: cancelled) and everything else with ACK.
    fn daemon(
        name: &str,
        requests: usize,
        answer: Option<&'static str>,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..requests {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 512];
                let n = s.read(&mut buf).unwrap();
                buf.truncate(n);
                match (buf[0], answer) {
                    (b'*', Some(a)) => {
                        let mut reply = vec![ANSWER];
                        reply.extend((a.len() as u32 + 1).to_ne_bytes());
                        reply.extend(a.as_bytes());
                        reply.push(0);
                        s.write_all(&reply).unwrap();
                    }
                    (b'*', None) => s.write_all(&[0x05]).unwrap(),
                    _ => s.write_all(&[ACK]).unwrap(),
                }
                seen.push(buf);
            }
            seen
        })
    }

    #[test]
    fn asks_and_shows_through_plymouthd() {
        let name = format!("lifeline-test-plymouth-{}", std::process::id());
        let d = daemon(&name, 3, Some("123453-000011"));
        let mut p = Plymouth::new(&name);
        assert!(p.available());
        let answer = p.ask_secret("Passphrase or one-time password:").unwrap();
        assert_eq!(answer.as_str(), "123453-000011");
        assert!(p.show("Recovery ID 1a2b-3c4d"));
        let seen = d.join().unwrap();
        assert_eq!(seen[0], b"P\0");
        assert_eq!(seen[1], b"*\x02\x21Passphrase or one-time password:\0");
        assert_eq!(seen[2], b"M\x02\x16Recovery ID 1a2b-3c4d\0");
    }

    #[test]
    fn a_cancelled_question_or_no_daemon_is_no_answer() {
        let name = format!("lifeline-test-plymouth-cancel-{}", std::process::id());
        let d = daemon(&name, 1, None);
        let mut p = Plymouth::new(&name);
        assert!(matches!(p.ask_secret("q:"), Err(PromptError::Closed)));
        d.join().unwrap();
        assert!(!Plymouth::new("lifeline-test-no-such-daemon").available());
    }

    #[test]
    fn a_daemon_that_takes_the_connection_and_never_answers_does_not_stall() {
        let name = format!("lifeline-test-plymouth-silent-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        // Accepts, reads, keeps every connection open, answers nothing.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let p = Plymouth::new(&name);
        let started = std::time::Instant::now();
        assert!(!p.available());
        assert!(!p.show("Recovery ID 1a2b-3c4d"));
        // Each gave up after REPLY_WAIT instead of waiting for ever.
        assert!(
            started.elapsed() < REPLY_WAIT * 4,
            "{:?}",
            started.elapsed()
        );
    }
}
