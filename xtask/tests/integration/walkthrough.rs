//! The README's walk-through (build → vm → create pool → deploy → flash) is written out, and every
//! `cargo xtask …` command in it exists with the flags shown: the real binary's `--help` of each subcommand
//! lists each flag, and the whole command line parses. Its image → vm → flash order leaves none of the VM's
//! secrets in the image or on the flashed stick.

use crate::common;

use std::{
    fs::{self, File},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Stdio,
};

use clap::Parser;
use xtask::dev::fixture::{Fixture, StandIns};

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
    let tests = commands.iter().position(|c| c[..] == ["vm", "--test"]);
    let deploy = commands.iter().position(|c| c[0] == "deploy");
    assert!(
        tests.is_some() && tests < deploy,
        "the walk-through runs the NAS's tests before it deploys"
    );
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

/// What the stick image at `img` holds in /persist (names, recursively).
fn persist_of(img: &Path) -> Vec<String> {
    fn walk(stick: &mut dyn xtask::stick::Stick, dir: &str, out: &mut Vec<String>) {
        for e in stick.list(dir).unwrap() {
            let path = format!("{dir}/{}", e.name);
            out.push(path.clone());
            if e.is_dir {
                walk(stick, &path, out);
            }
        }
    }
    let mut stick = xtask::stick::open(img.to_str().unwrap()).unwrap();
    let mut names = Vec::new();
    walk(&mut *stick, "persist", &mut names);
    stick.close().unwrap();
    names
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Steps 2 and 5 in the walk-through's order, on the example `system/` under a real openrc-init with
/// `ssh-keygen`: `image`, `vm --image --check` (the NAS makes its ssh host keys and saves them in /persist),
/// then `flash` to a loop device. The VM's keys stay in the VM's own stick: out/boot.img is not
/// world-readable and its /persist is empty, and the flashed stick starts with an empty /persist.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn the_vms_host_keys_reach_neither_the_image_nor_the_flashed_stick() {
    assert!(xtask::host::is_root(), "needs root (fixture, loop device)");
    let dir = common::tempdir();
    let path = dir.path();
    let tree = path.join("packages");
    let mut fixture = Fixture::openrc("walk");
    fixture.host_programs.push("ssh-keygen".to_string());
    fixture.write(&tree).unwrap();
    let stand_ins = StandIns::write(path).unwrap();
    // A key for root, as a user has (a build without one is console only).
    let home = path.join("home");
    xtask::dev::fixture::ssh_keygen(&home.join(".ssh/id_ed25519")).unwrap();
    let system = path.join("system");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system");
    common::run(
        "cp",
        &["-a", example.to_str().unwrap(), system.to_str().unwrap()],
    );
    let out = path.join("out");
    common::ok(
        &common::system_build_command(path, &system, &out)
            .envs(stand_ins.env(&tree))
            .env("HOME", &home)
            .env_remove("SUDO_USER")
            .output()
            .unwrap(),
    );

    let img = common::make_stick(path, &out);
    assert_eq!(
        mode_of(&img) & 0o077,
        0,
        "out/boot.img is readable by others"
    );
    let vm_dir = path.join("vm");
    let ran = common::xtask_command(
        path,
        &[
            "vm",
            "--out",
            out.to_str().unwrap(),
            "--image",
            "--check",
            "--disks",
            "0",
        ],
    )
    .env("RAMNAS_VM_DIR", &vm_dir)
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let text = common::ok(&ran);
    assert!(text.contains("vm: the guest powered off"), "{text}");
    let boot_log = fs::read_to_string(vm_dir.join("last-boot.log")).unwrap();
    assert!(
        boot_log.contains("ssh host key files and saved them"),
        "{boot_log}"
    );
    // The VM's stick holds its keys (so their absence below means something), private to its owner.
    let vm_stick = vm_dir.join("stick.img");
    assert!(
        persist_of(&vm_stick).contains(&"persist/ssh/ssh_host_ed25519_key".to_string()),
        "{:?}",
        persist_of(&vm_stick)
    );
    assert_eq!(mode_of(&vm_stick), 0o600);
    assert_eq!(persist_of(&img), Vec::<String>::new());
    assert_eq!(
        mode_of(&img) & 0o077,
        0,
        "out/boot.img is readable by others"
    );

    let disk = path.join("disk");
    File::create(&disk).unwrap().set_len(256 << 20).unwrap();
    let dev = common::Loop::attach(&disk);
    let flashed = common::ok(
        &common::xtask_command(path, &["flash", dev.path(), "--out", out.to_str().unwrap()])
            .args(["--yes", "--force"])
            .output()
            .unwrap(),
    );
    assert!(flashed.contains("/persist starts empty"), "{flashed}");
    assert_eq!(persist_of(&dev.dev), Vec::<String>::new());
}
