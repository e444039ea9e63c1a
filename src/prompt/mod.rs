//! Asking a person for a secret.
//!
//! `console.rs` reads from the terminal with echo off, or line by line from standard input when
//! that is not a terminal (scripts, tests); `ask_password.rs` asks through systemd's password
//! agents when systemd runs the boot; `plymouth.rs` through plymouthd's socket when plymouth
//! runs without systemd; `waiting.rs` lets the boot flow poll while a question is
//! open. Prompt lines go to standard error, always in the
//! same shape, so programs driving us can wait for them.

pub mod ask_password;
mod console;
pub mod plymouth;
mod waiting;

pub use ask_password::AskPassword;
pub use console::Terminal;
pub use plymouth::Plymouth;
pub use waiting::Waiting;

use std::fmt;

use zeroize::Zeroizing;

#[derive(Debug)]
pub enum PromptError {
    /// Input ended (Ctrl-D, closed pipe) before an answer.
    Closed,
    Io(std::io::Error),
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptError::Closed => write!(f, "no answer: input was closed"),
            PromptError::Io(e) => write!(f, "cannot read the answer: {e}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// Somewhere to ask questions whose answers are secret.
pub trait Prompt {
    /// Shows `question` and returns one line of answer, without its line ending.
    fn ask_secret(&mut self, question: &str) -> Result<Zeroizing<String>, PromptError>;
    /// Shows one line of information.
    fn say(&mut self, line: &str);
}
