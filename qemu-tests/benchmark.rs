//! What lifeline adds to each initramfs, and boot-to-root time with and without it (TPM path;
//! without lifeline the passphrase is typed at the distribution's prompt half a second after
//! it appears). Run by hand; figures go to docs/benchmarks.md:
//!
//! ```sh
//! cargo build --release --bin lifeline
//! LIFELINE_BENCH_BINARY=target/release/lifeline \
//!     cargo test --all-features --test qemu -- --ignored boot_benchmark --nocapture
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;
use crate::support::OLD_PASSPHRASE;

const BOOTS: usize = 3;

fn seconds(d: &[Duration]) -> String {
    let mut s: Vec<f64> = d.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    format!(
        "{:.1} / {:.1} / {:.1} s",
        s[0],
        s[s.len() / 2],
        s[s.len() - 1]
    )
}

#[test]
#[ignore = "a benchmark: run by hand"]
fn boot_benchmark() {
    let binary = std::env::var("LIFELINE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| initrd::lifeline_binary().to_path_buf());
    println!(
        "lifeline binary: {} ({} bytes)",
        binary.display(),
        std::fs::metadata(&binary).unwrap().len()
    );
    for flavour in [Flavour::Dracut, Flavour::InitramfsTools] {
        let mut w = World::new(flavour);
        w.provision(false);
        let with = w.initrd_with("with.img", Some(&binary));
        let without = w.initrd_with("without.img", None);
        let size = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
        let tpm = w.tpm.clone();
        let mut times_with = Vec::new();
        let mut times_without = Vec::new();
        for _ in 0..BOOTS {
            let f = w.boot_with(&with, Some(&tpm), true, None, "").finish();
            assert!(assert_root(&f).contains("unlocked (TPM)"));
            times_with.push(f.to_root.unwrap());
            let mut boot = w.boot_with(&without, Some(&tpm), false, None, "");
            boot.wait_for(flavour.passphrase_prompt(), 1);
            boot.type_line(OLD_PASSPHRASE);
            let f = boot.finish();
            assert_root(&f);
            times_without.push(f.to_root.unwrap());
        }
        println!(
            "| {} | {} | {} | +{} | {} | {} |",
            flavour.name(),
            size(&without),
            size(&with),
            size(&with) - size(&without),
            seconds(&times_without),
            seconds(&times_with),
        );
    }
}
