//! The terminal, or standard input when there is none.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{self, LocalFlags, SetArg};
use zeroize::Zeroizing;

use super::{Prompt, PromptError};

/// Longest answer we keep; capacity is reserved up front so the buffer never moves.
const MAX_ANSWER: usize = 1024;

/// Asks on the controlling terminal with echo off (on standard input when there is none).
#[derive(Debug, Default)]
pub struct Terminal;

impl Terminal {
    pub fn new() -> Self {
        Terminal
    }
}

/// Turns echo off for as long as it lives, and back on when dropped (also on error paths).
struct EchoOff {
    saved: termios::Termios,
}

impl EchoOff {
    fn new() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &quiet).ok()?;
        Some(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

impl Prompt for Terminal {
    fn ask_secret(&mut self, question: &str) -> Result<Zeroizing<String>, PromptError> {
        let stdin = std::io::stdin();
        let on_terminal = stdin.is_terminal();
        let _echo = if on_terminal { EchoOff::new() } else { None };
        let mut err = std::io::stderr();
        let _ = write!(err, "{question} ");
        let _ = err.flush();
        let mut line = Zeroizing::new(String::with_capacity(MAX_ANSWER));
        let n = stdin
            .lock()
            .take(MAX_ANSWER as u64)
            .read_line(&mut line)
            .map_err(PromptError::Io)?;
        if !on_terminal {
            // The terminal would have echoed the newline (ECHONL); keep the transcript tidy.
            let _ = writeln!(err);
        }
        if n == 0 {
            return Err(PromptError::Closed);
        }
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        Ok(line)
    }

    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }
}
