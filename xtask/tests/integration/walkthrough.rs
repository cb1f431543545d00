//! The README's walk-through (build → vm → create pool → deploy → flash) is written out, and every
//! `cargo xtask …` command in it exists with the flags shown: the real binary's `--help` of each subcommand
//! lists each flag, and the whole command line parses.

use crate::common;

use std::{fs, path::Path};

use clap::Parser;

/// The commands of the README's "Walk-through" section, as word lists starting after `cargo xtask`.
fn walkthrough_commands() -> (String, Vec<Vec<String>>) {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = fs::read_to_string(&readme).unwrap();
    let start = text
        .find("\n## Walk-through")
        .expect("README.md has a Walk-through section");
    let section = &text[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let commands = section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cargo xtask "))
        .map(|rest| rest.split_whitespace().map(str::to_string).collect())
        .collect();
    (section.to_string(), commands)
}

#[test]
fn the_walkthrough_covers_every_step() {
    let (section, commands) = walkthrough_commands();
    let subcommands: Vec<&str> = commands.iter().map(|c| c[0].as_str()).collect();
    for step in ["check", "build", "image", "vm", "deploy", "status", "flash"] {
        assert!(
            subcommands.contains(&step),
            "no `cargo xtask {step}` in the walk-through"
        );
    }
    assert!(
        section.contains("zpool create"),
        "the walk-through creates the pool"
    );
    assert!(
        section.contains("/dev/disk/by-id/"),
        "the pool is created by id"
    );
}

#[test]
fn every_walkthrough_command_exists_with_its_flags() {
    let (_, commands) = walkthrough_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    for words in &commands {
        let help = common::xtask(cwd, &[words[0].as_str(), "--help"]);
        assert!(
            help.status.success(),
            "`cargo xtask {} --help` failed:\n{}",
            words[0],
            common::text(&help)
        );
        let help = common::text(&help);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "`cargo xtask {}` has no {flag}:\n{help}",
                words[0]
            );
        }
        let argv = std::iter::once("cargo xtask").chain(words.iter().map(String::as_str));
        if let Err(err) = xtask::flags::Xtask::try_parse_from(argv) {
            panic!("`cargo xtask {}` does not parse: {err}", words.join(" "));
        }
    }
}
