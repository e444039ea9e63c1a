//! The initramfs glue without booting: every script passes shellcheck; mkinitcpio's install
//! hooks run against a harness that provides mkinitcpio's documented build functions
//! (`add_binary`, `add_file`, `add_module`, `add_symlink`, `add_runscript`, `error`, `warning`)
//! and records what they are asked; its runtime hook runs under busybox `sh`. dracut and
//! initramfs-tools are proven by the QEMU boots (qemu-tests/).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn sh(program: &str, args: &[&str], script: &str, env: &[(&str, &Path)]) -> Run {
    let mut c = Command::new(program);
    c.args(args).arg("-c").arg(script);
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().expect(program))
}

#[test]
fn every_glue_script_passes_shellcheck() {
    for (shell, file) in [
        ("sh", "initramfs-tools/hooks/lifeline"),
        ("sh", "initramfs-tools/scripts/init-premount/lifeline"),
        ("bash", "dracut/90lifeline/module-setup.sh"),
        ("sh", "dracut/90lifeline/lifeline-unlock.sh"),
        ("sh", "mkinitcpio/hooks/lifeline"),
        ("bash", "mkinitcpio/install/lifeline"),
        ("bash", "mkinitcpio/install/sd-lifeline"),
        ("sh", "mkinitcpio/udhcpc"),
    ] {
        let out = Command::new("shellcheck")
            .args(["-x", "-s", shell])
            .arg(repo(file))
            .current_dir(repo(""))
            .output()
            .expect("shellcheck (apt install shellcheck)");
        assert!(
            out.status.success(),
            "{file}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// mkinitcpio's build functions, each recording its call in $CALLS.
const HARNESS: &str = r#"
record() { echo "$*" >> "$CALLS"; }
add_binary() { record add_binary "$@"; }
add_file() { record add_file "$@"; }
add_module() { record add_module "$@"; }
add_symlink() { record add_symlink "$@"; }
add_runscript() { record add_runscript "$(basename "$HOOK")"; }
add_checked_modules() { record add_checked_modules "$@"; }
add_systemd_unit() { record add_systemd_unit "$@"; }
add_systemd_drop_in() { record add_systemd_drop_in "$@" "$(cat)"; }
error() { echo "==> ERROR: $*" >&2; }
warning() { echo "==> WARNING: $*" >&2; }
_builderrors=0
_d_hooks=$2
HOOK=$1
. "$HOOK"
build || { echo "build errors counted: $_builderrors" >&2; exit 1; }
help | head -n 1
"#;

/// The harness for the install hook `hook` (a path in the repository), with the repository's
/// runtime hooks where mkinitcpio keeps its own.
fn harness(hook: &str) -> String {
    HARNESS
        .replace("$1", &repo(hook).display().to_string())
        .replace("$2", &repo("mkinitcpio/hooks").display().to_string())
}

fn mkinitcpio_build(sb: &Sandbox, hook: &str, config: &Path) -> (Run, String) {
    let calls = sb.path(&format!("{hook}.calls"));
    let run = sh(
        "bash",
        &[],
        &harness(&format!("mkinitcpio/install/{hook}")),
        &[
            ("CALLS", &calls),
            ("LIFELINE", Path::new(env!("CARGO_BIN_EXE_lifeline"))),
            ("LIFELINE_CONFIG", config),
            ("LIFELINE_UDHCPC", &repo("mkinitcpio/udhcpc")),
        ],
    );
    (run, std::fs::read_to_string(calls).unwrap_or_default())
}

fn config(sb: &Sandbox, server: bool) -> PathBuf {
    let trust = sb.write("minisign.pub", "untrusted comment: x\nRWQ\n");
    let ca = sb.write("ca.pem", "");
    let mut text = format!(
        "trust = \"{}\"\nca = \"{}\"\nmachine_id = \"5a0c4e2b9d7f41c3a8e6b1d2f3c4e5a6\"\n",
        trust.display(),
        ca.display()
    );
    if server {
        text.push_str("server = \"https://10.0.2.100:8443\"\n");
    }
    text.push_str(
        "[[volume]]\nuuid = \"8f14e45f-ceea-467a-9af3-6b1d2c3e4f50\"\nname = \"cryptroot\"\n",
    );
    sb.write("lifeline.toml", text)
}

#[test]
fn mkinitcpio_install_hooks_add_the_binary_tcti_files_and_modules() {
    let sb = Sandbox::new();
    let config = config(&sb, true);
    let (run, calls) = mkinitcpio_build(&sb, "lifeline", &config);
    run.ok();
    assert!(
        run.stdout.contains("Unlocks encrypted volumes at boot"),
        "help: {}",
        run.all()
    );
    let lines: Vec<&str> = calls.lines().collect();
    let bin = env!("CARGO_BIN_EXE_lifeline");
    assert_eq!(lines[0], format!("add_binary {bin} /usr/bin/lifeline"));
    assert!(
        lines[1].starts_with("add_binary /") && lines[1].ends_with("libtss2-tcti-device.so.0"),
        "the dlopen()ed TCTI: {calls}"
    );
    for expected in [
        format!("add_file {}", config.display()),
        format!("add_file {}", sb.path("minisign.pub").display()),
        format!("add_file {}", sb.path("ca.pem").display()),
        "add_module dm_crypt".to_string(),
        "add_module tpm_tis?".to_string(),
        "add_module usb_storage?".to_string(),
        "add_module vfat?".to_string(),
        "add_runscript lifeline".to_string(),
        // An escrow server is configured: network drivers and the DHCP lease script.
        "add_checked_modules /drivers/net/".to_string(),
        format!(
            "add_file {} /usr/lib/lifeline/udhcpc 755",
            repo("mkinitcpio/udhcpc").display()
        ),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no {expected:?} in:\n{calls}"
        );
    }
    assert!(
        !calls.contains("machine-id"),
        "machine_id is configured: {calls}"
    );

    let (run, calls) = mkinitcpio_build(&sb, "sd-lifeline", &config);
    run.ok();
    assert!(calls.contains("add_file /usr/lib/lifeline/lifeline-unlock.service /usr/lib/systemd/system/lifeline-unlock.service"), "{calls}");
    assert!(
        calls.contains(&format!(
            "add_file {} /usr/lib/lifeline/hook 644",
            repo("mkinitcpio/hooks/lifeline").display()
        )),
        "the unit runs the runtime hook: {calls}"
    );
    assert!(calls.contains("add_symlink /usr/lib/systemd/system/sysinit.target.wants/lifeline-unlock.service ../lifeline-unlock.service"), "{calls}");
    // The ordering holds in sd-encrypt's image: the target it names is there, and
    // systemd-cryptsetup waits for lifeline whatever the targets.
    assert!(
        calls.contains("add_systemd_unit cryptsetup-pre.target"),
        "{calls}"
    );
    assert!(
        calls.contains("add_systemd_drop_in systemd-cryptsetup@.service lifeline [Unit]\nAfter=lifeline-unlock.service"),
        "{calls}"
    );
    assert!(!calls.contains("add_runscript"), "{calls}");
}

#[test]
fn mkinitcpio_install_hook_refuses_a_bad_configuration() {
    let sb = Sandbox::new();
    let bad = sb.write("lifeline.toml", "colour = \"blue\"\n");
    let (run, calls) = mkinitcpio_build(&sb, "lifeline", &bad);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("unknown setting 'colour'"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("==> ERROR: lifeline: fix"),
        "{}",
        run.all()
    );
    assert!(calls.is_empty(), "nothing added: {calls}");
    let (run, _) = mkinitcpio_build(&sb, "lifeline", &sb.path("absent.toml"));
    assert!(
        run.stderr.contains("not found: write it first"),
        "{}",
        run.all()
    );
    // Each failure is counted in mkinitcpio's own error count, which makes it exit 1.
    assert!(
        run.stderr.contains("build errors counted: 1"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("the image is built WITHOUT lifeline"),
        "{}",
        run.all()
    );
}

#[test]
fn mkinitcpio_install_hook_names_a_missing_binary_as_such() {
    let sb = Sandbox::new();
    let config = config(&sb, false);
    let calls = sb.path("missing.calls");
    let run = sh(
        "bash",
        &[],
        &harness("mkinitcpio/install/lifeline"),
        &[
            ("CALLS", &calls),
            ("LIFELINE", &sb.path("no-such-lifeline")),
            ("LIFELINE_CONFIG", &config),
        ],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("no-such-lifeline is not there: install lifeline"),
        "{}",
        run.all()
    );
    assert!(
        !run.stderr.contains("fix "),
        "not a configuration problem: {}",
        run.all()
    );
    assert!(
        run.stderr.contains("build errors counted: 1"),
        "{}",
        run.all()
    );
    assert!(!calls.exists(), "nothing added");
}

/// The runtime hook under busybox sh, with a stand-in lifeline: `--tpm-only` exits with
/// `tpm`, the full run with `code`; a server is configured when `server`. Returns the run and
/// the calls made (lifeline's and ipconfig's).
fn run_hook(sb: &Sandbox, tpm: u8, code: u8, server: bool) -> (Run, String) {
    let calls = sb.path("hook.calls");
    let _ = std::fs::remove_file(&calls);
    let fake = sb.write(
        "fake-lifeline",
        format!(
            "#!/bin/sh\necho \"lifeline $*\" >> \"{}\"\ncase \"$*\" in\n*--needs-network*) exit {} ;;\n*--tpm-only*) exit {tpm} ;;\nesac\nexit {code}\n",
            calls.display(),
            if server { 0 } else { 9 }
        ),
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = sh(
        "busybox",
        &["sh"],
        &format!(
            "msg() {{ echo \"msg: $*\"; }}\nmodprobe() {{ :; }}\nipconfig() {{ echo \"ipconfig $*\" >> \"$CALLS\"; }}\nip() {{ echo \"ip $*\"; }}\n. '{}'\nrun_hook",
            repo("mkinitcpio/hooks/lifeline").display()
        ),
        &[("LIFELINE", &fake), ("CALLS", &calls)],
    );
    (run, std::fs::read_to_string(calls).unwrap_or_default())
}

#[test]
fn mkinitcpio_runtime_hook_runs_under_busybox_and_never_stops_the_boot() {
    let sb = Sandbox::new();
    // The TPM opens everything: no network, nothing else.
    let (run, calls) = run_hook(&sb, 0, 0, true);
    run.ok();
    assert_eq!(run.stdout, "", "{}", run.all());
    assert_eq!(calls, "lifeline unlock --tpm-only\n");

    // Recovery with a server: the network first.
    let (run, calls) = run_hook(&sb, 9, 9, true);
    run.ok();
    assert_eq!(
        calls,
        "lifeline unlock --tpm-only\nlifeline unlock --needs-network\nipconfig -t 20 ip=dhcp\nlifeline unlock\n"
    );
    assert!(
        run.stdout
            .contains("msg: lifeline stepped aside; the passphrase prompt follows"),
        "{}",
        run.all()
    );
    // What it brought up, it takes down again before the distribution goes on (the hook
    // walks this host's /sys/class/net: only when it has an interface besides lo).
    let interfaces = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() != "lo");
    if interfaces {
        let down = run.stdout.find("down").expect("the network taken down");
        assert!(
            down < run.stdout.find("msg: lifeline stepped aside").unwrap(),
            "{}",
            run.all()
        );
    }

    // Recovery without a server: no network.
    let (run, calls) = run_hook(&sb, 9, 1, false);
    run.ok();
    assert_eq!(
        calls,
        "lifeline unlock --tpm-only\nlifeline unlock --needs-network\nlifeline unlock\n"
    );
    assert!(
        run.stdout.contains("msg: lifeline failed (exit 1)"),
        "{}",
        run.all()
    );

    // A bad configuration: said once, then the distribution's prompt.
    let (run, calls) = run_hook(&sb, 2, 0, true);
    run.ok();
    assert_eq!(calls, "lifeline unlock --tpm-only\n");
    assert!(
        run.stdout.contains("msg: lifeline: bad configuration"),
        "{}",
        run.all()
    );
}

#[test]
fn make_install_puts_everything_where_the_tools_look() {
    let sb = Sandbox::new();
    let built = Path::new(env!("CARGO_BIN_EXE_lifeline")).parent().unwrap();
    let out = Command::new("make")
        .args(["-s", "install-files", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", sb.path("stage").display()))
        .arg(format!("BUILT={}", built.display()))
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stage = |p: &str| sb.path("stage").join(p.trim_start_matches('/'));
    for file in [
        "/usr/sbin/lifeline",
        "/usr/sbin/lifeline-server",
        "/usr/lib/dracut/modules.d/90lifeline/module-setup.sh",
        "/usr/share/initramfs-tools/hooks/lifeline",
        "/usr/share/initramfs-tools/scripts/init-premount/lifeline",
        "/usr/lib/initcpio/install/lifeline",
        "/usr/lib/initcpio/install/sd-lifeline",
        "/usr/lib/initcpio/hooks/lifeline",
        "/usr/lib/lifeline/udhcpc",
        "/usr/lib/lifeline/lifeline-unlock.service",
        "/usr/share/doc/lifeline/UNLOCK.md",
    ] {
        assert!(stage(file).is_file(), "{file} not installed");
    }
    // The units start the binaries that were installed.
    for (unit, exec) in [
        (
            "lifeline-server.service",
            "/usr/sbin/lifeline-server serve ",
        ),
        (
            "lifeline-status.service",
            "/usr/sbin/lifeline status --repair\n",
        ),
    ] {
        let text =
            std::fs::read_to_string(stage(&format!("/usr/lib/systemd/system/{unit}"))).unwrap();
        assert!(text.contains(&format!("\nExecStart={exec}")), "{text}");
    }
    assert!(stage("/usr/lib/systemd/system/lifeline-status.timer").is_file());
    for man in ["lifeline", "lifeline-server"] {
        let page = std::fs::read_to_string(stage(&format!("/usr/share/man/man8/{man}.8"))).unwrap();
        assert!(
            page.contains(&format!(".TH {}", man.to_uppercase())),
            "{page}"
        );
    }
    // The completions know the subcommands.
    let completion = stage("/usr/share/bash-completion/completions/lifeline-server");
    let script = format!(
        ". '{}'; COMP_WORDS=(lifeline-server admin appr); COMP_CWORD=2; _lifeline_server; echo \"${{COMPREPLY[@]}}\"",
        completion.display()
    );
    let run = sh("bash", &[], &script, &[]);
    assert_eq!(run.ok().stdout.trim(), "approve-recovery approve-restore");
    // The sample configuration changes nothing as installed (only lifeline.toml is read), and
    // is a valid one once its lines are uncommented.
    assert!(!stage("/etc/lifeline/lifeline.toml").exists());
    let sample = std::fs::read_to_string(stage("/etc/lifeline/lifeline.toml.example")).unwrap();
    let filled: String = sample
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase() || c == '['))
        .map(|l| format!("{l}\n"))
        .collect();
    sb.write("lifeline.toml", filled);
    sb.lifeline(&[
        "unlock",
        "--config",
        sb.path("lifeline.toml").to_str().unwrap(),
        "--cmdline",
        "/dev/null",
        "--list-files",
    ])
    .ok();
}

#[test]
fn the_debian_packages_build_and_pass_lintian() {
    let sb = Sandbox::new();
    let built = Path::new(env!("CARGO_BIN_EXE_lifeline")).parent().unwrap();
    let out = Command::new(repo("scripts/build-debs.sh"))
        .arg(built)
        .arg(sb.path("debs"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("lintian: no errors or warnings"), "{said}");
    let version = env!("CARGO_PKG_VERSION");
    let deb = |pkg: &str| sb.path(&format!("debs/{pkg}_{version}_amd64.deb"));
    let contents = |pkg: &str, what: &str| -> String {
        let o = Command::new("dpkg-deb")
            .arg(what)
            .arg(deb(pkg))
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let client = contents("lifeline", "-c");
    for file in [
        "./usr/sbin/lifeline",
        "./usr/share/initramfs-tools/hooks/lifeline",
        "./usr/lib/dracut/modules.d/90lifeline/module-setup.sh",
        "./etc/lifeline/lifeline.toml.example",
        "./usr/share/man/man8/lifeline.8.gz",
        "./usr/lib/systemd/system/lifeline-status.timer",
    ] {
        assert!(client.contains(file), "{file} not in lifeline: {client}");
    }
    assert!(
        !client.contains("initcpio") && !client.contains("lifeline-server"),
        "{client}"
    );
    let server = contents("lifeline-server", "-c");
    for file in [
        "./usr/sbin/lifeline-server",
        "./usr/lib/systemd/system/lifeline-server.service",
    ] {
        assert!(
            server.contains(file),
            "{file} not in lifeline-server: {server}"
        );
    }
    let info = contents("lifeline", "-I");
    assert!(
        info.contains("libtss2-tcti-device0") && info.contains("libcryptsetup12"),
        "{info}"
    );
    assert!(contents("lifeline-server", "-I").contains("adduser"));
}
