//! Helpers shared by the integration tests: temp dirs, running the real `cargo xtask` binary, fixture builds,
//! and booting them in qemu under TCG.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use xtask::{
    fixture::Fixture,
    qemu::{Accel, Direct, Machine, Running},
};

/// How long a test waits for a guest line: generous, since TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ramnas-test-")
        .tempdir()
        .expect("tempdir")
}

/// Runs `cargo xtask ARGS…` (the built binary) in `cwd`, returning its output.
pub fn xtask(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env("RAMNAS_ACCEL", "tcg")
        .output()
        .expect("running xtask")
}

/// Like [`xtask`], but panics with both streams when the command fails.
pub fn xtask_ok(cwd: &Path, args: &[&str]) -> Output {
    let out = xtask(cwd, args);
    assert!(
        out.status.success(),
        "xtask {args:?} failed:\n{}",
        text(&out)
    );
    out
}

/// stdout and stderr of a command, for messages and assertions.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `fixture` into DIR/tree and builds it with `cargo xtask build --base` into DIR/OUT; returns OUT.
pub fn build_fixture(dir: &Path, fixture: &Fixture, out: &str, extra: &[&str]) -> PathBuf {
    let tree = dir.join(format!("tree-{out}"));
    fixture.write(&tree).expect("writing the fixture tree");
    let out_dir = dir.join(out);
    let mut args = vec![
        "build",
        "--base",
        tree.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    xtask_ok(dir, &args);
    out_dir
}

/// A TCG machine that boots OUT/vmlinuz with OUT/initramfs and OUT/cmdline plus `append`.
pub fn direct_machine(out: &Path, append: &str) -> Machine {
    let cmdline = std::fs::read_to_string(out.join("cmdline")).unwrap_or_default();
    let mut m = Machine::new(Accel::Tcg);
    m.direct = Some(Direct {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs"),
        append: format!("{} console=ttyS0 {append}", cmdline.trim()),
    });
    m
}

/// Starts `machine`, logging its console to DIR/NAME.log.
pub fn start(machine: &Machine, dir: &Path, name: &str) -> Running {
    machine
        .start(&dir.join(format!("{name}.log")), false)
        .expect("starting qemu")
}

/// Packs `tree` with GNU cpio (`find . | cpio -o -H newc`), the reference packer, into `archive`.
pub fn gnu_cpio(tree: &Path, archive: &Path) {
    use std::io::Write;
    let list = Command::new("find")
        .arg(".")
        .current_dir(tree)
        .output()
        .expect("find");
    assert!(list.status.success(), "find in {}", tree.display());
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(tree)
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(archive).expect("creating the archive"))
        .spawn()
        .expect("cpio");
    child.stdin.take().unwrap().write_all(&list.stdout).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "cpio -o in {}",
        tree.display()
    );
}
