//! `make demo`: the whole story on one laptop in QEMU, narrated. Its consoles are shown as
//! they come. With INTERACTIVE=1 you type the one-time password yourself.

use std::io::BufRead;

use crate::harness::*;

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m\n");
}

#[test]
#[ignore = "the narrated demo: make demo"]
fn demo() {
    let interactive = std::env::var("INTERACTIVE").is_ok_and(|v| v == "1");
    say(
        "A company laptop: Debian 12, LUKS2 root, a TPM (swtpm). The escrow server runs on this \
         host's 127.0.0.1 with its own TPM; the laptop reaches it as 10.0.2.100.",
    );
    let mut w = World::new(Flavour::InitramfsTools);
    w.echo = true;
    say(
        "The administrator sets the laptop up: a recoverable storage key (DRSK) backed up to \
         the server's TPM, the disk key sealed to PCR 16, escrowed to the server. Then a \
         firmware update changes PCR 16 — and the user has forgotten the disk passphrase.",
    );
    w.provision(true);
    println!("client ID {}", w.client_id);
    let mut boot = w.boot();
    boot.wait_for("Passphrase or one-time password:", 1);
    say(
        "The boot shows a recovery ID. The user calls the helpdesk; the administrator approves \
         the request on the server (lifeline-server admin approve-recovery), which prints the \
         one-time password the helpdesk reads out.",
    );
    let otp = w.approve_recovery();
    println!("helpdesk reads out: {otp}");
    boot.wait_for("verified (signed, for this machine and volume)", 1);
    let typed = if interactive {
        println!("\nType it (then Enter) — it goes to the laptop's console:");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
        line.trim().to_string()
    } else {
        println!("(typed for you; run with INTERACTIVE=1 to type it yourself)");
        otp
    };
    boot.type_line(&typed);
    let f = boot.finish();
    assert_root(&f);

    say(
        "Next morning: the key was re-sealed to the new PCR values, so the laptop boots \
         unattended again.",
    );
    let f = w.boot().finish();
    assert!(assert_root(&f).contains("unlocked (TPM)"));

    say(
        "The motherboard dies. The new one has an empty TPM. From a live system on the new \
         board, lifeline asks the server for the DRSK (lifeline restore --server); the \
         administrator approves (lifeline-server admin approve-restore).",
    );
    let new_board = w.sb.path("tpm-new-board");
    print!("{}", w.approve_restore(&new_board));
    say(
        "The new board boots: lifeline finds its DRSK missing, fetches the approved restore, \
         and the old sealed key opens the disk — nobody types anything.",
    );
    let initrd = w.initrd();
    let f = w
        .boot_with(&initrd, Some(&new_board), true, None, "")
        .finish();
    assert!(assert_root(&f).contains("DRSK restored"));
    say(
        "That was the story: unattended boots, a forgotten passphrase recovered over the phone, \
         and a motherboard swap without re-enrolling. The consoles are in target/tmp/qemu/logs/.",
    );
}
