//! `lifeline.toml` and the `rd.lifeline.*` kernel command line: the input is the file, then a
//! NUL, then the command line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, cmdline) = text.split_once('\0').unwrap_or((&text, ""));
    if let Ok(mut c) = Config::parse(file, "fuzz") {
        if c.apply_cmdline(cmdline).is_ok() {
            // Whatever was accepted can be waited for without overflowing the clock.
            let now = std::time::Instant::now();
            assert!(now.checked_add(c.timeout).is_some());
            assert!(now.checked_add(c.tpm_wait).is_some());
            assert!(!c.poll_interval.is_zero());
            for v in &c.volumes {
                assert!(!v.name.contains('/'));
                let _ = v.device();
            }
        }
    }
});
