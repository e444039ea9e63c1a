//! Rate limits: a fixed one-minute window per key (an address, a machine). Enough to stop a
//! client hammering the unauthenticated endpoints or guessing; not a traffic shaper.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many keys, windows that ended are forgotten.
const PRUNE_AT: usize = 100_000;

#[derive(Default)]
pub struct Limits {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limits {
    /// Counts one request for `key`; false when it is over `per_minute`.
    pub fn allow(&self, key: &str, per_minute: u32) -> bool {
        let Ok(mut windows) = self.windows.lock() else {
            return false;
        };
        let now = Instant::now();
        if windows.len() >= PRUNE_AT {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= per_minute
    }

    /// True when `key` used up `per_minute` in its current window (counts nothing).
    pub fn exhausted(&self, key: &str, per_minute: u32) -> bool {
        let Ok(windows) = self.windows.lock() else {
            return true;
        };
        windows
            .get(key)
            .is_some_and(|(start, count)| start.elapsed() < WINDOW && *count >= per_minute)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_per_key() {
        let l = super::Limits::default();
        assert!((0..3).all(|_| l.allow("a", 3)));
        assert!(l.exhausted("a", 3) && !l.exhausted("b", 3));
        assert!(!l.allow("a", 3));
        assert!(l.allow("b", 3));
    }
}
