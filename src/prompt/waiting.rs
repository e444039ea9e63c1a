//! A prompt that can wait: the question is asked on its own thread, so the boot flow keeps
//! polling for recovery packets while the person types.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{Prompt, PromptError};
use crate::unlock::{Answer, Console};

pub struct Waiting {
    questions: Sender<String>,
    answers: Receiver<Result<Zeroizing<String>, PromptError>>,
    /// The question on screen whose answer is not yet taken.
    asking: Option<String>,
    /// Plymouth's splash, where lines are shown besides standard error.
    splash: Option<super::Plymouth>,
}

impl Waiting {
    /// Asks through `prompt` on a thread of its own.
    pub fn new<P: Prompt + Send + 'static>(mut prompt: P) -> Waiting {
        let (questions, asked) = channel::<String>();
        let (answered, answers) = channel();
        std::thread::spawn(move || {
            while let Ok(q) = asked.recv() {
                if answered.send(prompt.ask_secret(&q)).is_err() {
                    break;
                }
            }
        });
        Waiting {
            questions,
            answers,
            asking: None,
            splash: None,
        }
    }

    /// Also shows every line on plymouth's splash (the console behind it is hidden).
    pub fn on_splash(mut self, splash: super::Plymouth) -> Waiting {
        self.splash = Some(splash);
        self
    }
}

impl Console for Waiting {
    fn say(&mut self, line: &str) {
        if let Some(splash) = &self.splash {
            splash.show(line);
        }
        match &self.asking {
            // The question waits on the current line: say this below it, then ask again.
            Some(q) => eprint!("\n{line}\n{q} "),
            None => eprintln!("{line}"),
        }
    }

    fn answer(&mut self, question: &str, wait: Duration) -> Answer {
        if self.asking.is_none() {
            if self.questions.send(question.to_string()).is_err() {
                return Answer::Closed;
            }
            self.asking = Some(question.to_string());
        }
        match self.answers.recv_timeout(wait) {
            Ok(Ok(line)) => {
                self.asking = None;
                Answer::Line(line)
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Answer::Closed,
            Err(RecvTimeoutError::Timeout) => Answer::Nothing,
        }
    }
}
