//! The command line as people type it: argh, plus what argh leaves out — `-h`, `--version`,
//! usage errors that name the subcommand's own `--help`, and a suggestion for a mistyped
//! option or subcommand.

use std::io::Write;
use std::path::Path;

use super::Exit;

/// Parses the command line like `argh::from_env`, but exits with [`Exit::Usage`] on bad
/// arguments (argh's own choice is 1, which we reserve for failures).
pub fn parse_args<T: argh::TopLevelCommand>() -> T {
    let strings: Vec<String> = std::env::args_os()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let cmd = strings
        .first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(p)
        })
        .unwrap_or("lifeline");
    let mut rest: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    if matches!(rest.as_slice(), ["--version"] | ["-V"]) {
        println!("{cmd} {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(Exit::Ok as i32);
    }
    // -h is --help, as in most tools (an option's value is never "-h" here; after "--" it is
    // a positional argument and left alone).
    for arg in rest.iter_mut().take_while(|a| **a != "--") {
        if *arg == "-h" {
            *arg = "--help";
        }
    }
    T::from_args(&[cmd], &rest).unwrap_or_else(|early| match early.status {
        Ok(()) => {
            // Not println!: help piped into `head` must not panic.
            let _ = writeln!(std::io::stdout(), "{}", early.output);
            std::process::exit(Exit::Ok as i32);
        }
        Err(()) => {
            let (usage, suggestion) = help_for::<T>(cmd, &rest, &early.output);
            let mut text = early.output.trim_end().to_string();
            if let Some(s) = suggestion {
                text.push_str(&format!("\nDid you mean {s}?"));
            }
            eprintln!("{text}\nRun {usage} --help for more information.");
            std::process::exit(Exit::Usage as i32);
        }
    })
}

/// The (sub)command a usage error is about, and the closest option or subcommand to an
/// unrecognized one.
fn help_for<T: argh::TopLevelCommand>(
    cmd: &str,
    rest: &[&str],
    error: &str,
) -> (String, Option<String>) {
    let bad = error
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Unrecognized argument: "))
        .map(str::trim);
    // The help of the deepest subcommand reached before the mistake.
    let upto = bad
        .and_then(|b| rest.iter().position(|a| *a == b))
        .unwrap_or(rest.len());
    let mut ask: Vec<&str> = rest[..upto]
        .iter()
        .copied()
        .take_while(|a| !a.starts_with('-'))
        .collect();
    ask.push("--help");
    let help = match T::from_args(&[cmd], &ask) {
        Err(early) if early.status.is_ok() => early.output,
        _ => return (cmd.to_string(), None),
    };
    let usage = help
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Usage: "))
        .map(|l| {
            l.split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| cmd.to_string());
    (usage, bad.and_then(|b| closest(b, &known_words(&help))))
}

/// The options (`--x`) and subcommands a help text lists.
fn known_words(help: &str) -> Vec<String> {
    let mut section = "";
    let mut words = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end_matches(':');
            continue;
        }
        // Entries start two spaces in; their descriptions' continuation lines start further.
        let Some(entry) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) else {
            continue;
        };
        let first = entry.split([' ', ',']).next().unwrap_or("");
        match section {
            "Options" if first.starts_with("--") => words.push(first.to_string()),
            "Commands" if !first.is_empty() => words.push(first.to_string()),
            _ => {}
        }
    }
    words
}

/// The known word nearest to `typed`, if it is near enough to be a typing mistake.
fn closest(typed: &str, known: &[String]) -> Option<String> {
    let (best, distance) = known
        .iter()
        .map(|k| (k, edit_distance(typed, k)))
        .min_by_key(|(_, d)| *d)?;
    let allowed = (typed.trim_start_matches('-').chars().count() / 3).clamp(1, 3);
    (distance <= allowed).then(|| best.clone())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typing_mistake_finds_the_word_and_a_different_word_does_not() {
        let known: Vec<String> = ["--recipient", "--out", "--server", "escrow", "recover"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            closest("--recipent", &known).as_deref(),
            Some("--recipient")
        );
        assert_eq!(closest("escrw", &known).as_deref(), Some("escrow"));
        assert_eq!(closest("--passphrase", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_help_text_lists_options_and_commands() {
        let help = "Usage: x [--tcti <t>] <command>\n\nOptions:\n  --tcti            TPM\n                    more --not-this\n  --help, help      display\n\nCommands:\n  escrow            Escrow a key\n";
        assert_eq!(known_words(help), ["--tcti", "--help", "escrow"]);
    }
}
