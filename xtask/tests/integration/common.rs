//! Helpers shared by the integration tests: temp dirs, running the real `cargo xtask` binary and other
//! commands, fixture builds and stick images, loop devices, and booting them in qemu under TCG.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use xtask::{
    dev::fixture::{Fixture, StandIns},
    host::qemu::{self, Accel, Bus, Direct, Drive, Firmware, Machine, Running},
};

/// How long a test waits for a guest line: generous, since TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// A fresh temp dir (`ramnas-test-*`), removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ramnas-test-")
        .tempdir()
        .expect("tempdir")
}

/// `cargo xtask ARGS…` (the built binary) in `cwd` under TCG, for a test that sets more (environment,
/// stdin) before running it.
pub fn xtask_command(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(args)
        .current_dir(cwd)
        .env("RAMNAS_ACCEL", "tcg");
    command
}

/// Runs `cargo xtask ARGS…` (the built binary) in `cwd`, returning its output.
pub fn xtask(cwd: &Path, args: &[&str]) -> Output {
    xtask_command(cwd, args).output().expect("running xtask")
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

/// stdout and stderr of a command that must have succeeded (else a panic showing them).
pub fn ok(out: &Output) -> String {
    let text = text(out);
    assert!(out.status.success(), "the command failed:\n{text}");
    text
}

/// stdout and stderr of a command that must have failed (else a panic showing them).
pub fn failed(out: &Output) -> String {
    let text = text(out);
    assert!(
        !out.status.success(),
        "the command should have failed:\n{text}"
    );
    text
}

/// Runs `program ARGS…`, panicking with its output when it fails; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `fixture` into DIR/tree and builds it with `cargo xtask build --base` into DIR/OUT; returns OUT.
pub fn build_fixture(dir: &Path, fixture: &Fixture, out: &str, extra: &[&str]) -> PathBuf {
    let tree = dir.join(format!("tree-{out}"));
    fixture.write(&tree).expect("writing the fixture tree");
    let out_dir = dir.join(out);
    ok(&build_command(dir, &tree, &out_dir, extra)
        .output()
        .expect("running xtask build"));
    out_dir
}

/// `cargo xtask build --base BASE --out OUT EXTRA…` in `cwd`, to run (with more environment, say).
pub fn build_command(cwd: &Path, base: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = xtask_command(cwd, &["build", "--base"]);
    command.arg(base).arg("--out").arg(out).args(extra);
    command
}

/// `cargo xtask build --system SYSTEM --out OUT` in `cwd`, to run (through a stand-in alpine-make-rootfs,
/// say).
/// The pinned apk is `CWD/fake-apk` ([`StandIns`]), which the stand-ins never run (it fails if run).
pub fn system_build_command(cwd: &Path, system: &Path, out: &Path) -> Command {
    let stand_ins = StandIns::write(cwd).unwrap();
    let mut command = xtask_command(cwd, &["build", "--system"]);
    command
        .arg(system)
        .arg("--out")
        .arg(out)
        .env(xtask::build::rootfs::APK.env, &stand_ins.apk);
    command
}

/// `cargo xtask image --out OUT --size 192M` (room to spare for a fixture build); returns OUT/boot.img.
pub fn make_stick(dir: &Path, out: &Path) -> PathBuf {
    xtask_ok(
        dir,
        &["image", "--out", out.to_str().unwrap(), "--size", "192M"],
    );
    out.join("boot.img")
}

/// The build's initrds in load order (microcode first, then the initramfs' archives).
pub fn initrds(out: &Path) -> Vec<PathBuf> {
    xtask::build::manifest::Manifest::load(&out.join("manifest.json"))
        .unwrap()
        .initrds()
        .iter()
        .map(|n| out.join(n))
        .collect()
}

/// The initramfs' archives of the build in OUT, in load order (its initrds without the microcode).
pub fn archives(out: &Path) -> Vec<PathBuf> {
    initrds(out)
        .into_iter()
        .filter(|p| !p.ends_with("ucode.img"))
        .collect()
}

/// GNU cpio run on each of the build's archives in turn (compressed ones through `zstd -dc`), in `cwd`,
/// with `args`: what the kernel unpacks, as GNU cpio reads it. Returns the concatenated stdout.
pub fn cpio_each(out: &Path, cwd: &Path, args: &[&str]) -> String {
    let mut stdout = String::new();
    for archive in archives(out) {
        let o = Command::new("sh")
            .arg("-c")
            .arg("if zstd -t -q \"$0\" 2>/dev/null; then zstd -dc \"$0\"; else cat \"$0\"; fi | cpio \"$@\"")
            .arg(&archive)
            .args(args)
            .current_dir(cwd)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cpio {args:?} on {}: {}",
            archive.display(),
            text(&o)
        );
        stdout.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    stdout
}

/// A TCG machine that boots OUT/vmlinuz with the build's initrds (joined, as a boot loader loads them)
/// and OUT/cmdline plus `append`.
pub fn direct_machine(out: &Path, append: &str) -> Machine {
    let cmdline = std::fs::read_to_string(out.join("cmdline")).unwrap_or_default();
    let initrd = xtask::build::initramfs::join(&initrds(out), &out.join("initrd.joined")).unwrap();
    let mut m = Machine::new(Accel::Tcg);
    m.direct = Some(Direct {
        kernel: out.join("vmlinuz"),
        initrd,
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

/// A TCG machine whose IDE disk is `img` (a stick image or a block device), under SeaBIOS.
pub fn bios_machine(img: &Path) -> Machine {
    let mut m = Machine::new(Accel::Tcg);
    m.drives.push(Drive::raw(img, Bus::Ide));
    m
}

/// [`bios_machine`] under OVMF, with the variable store DIR/OVMF_VARS.fd, copied from OVMF's template on
/// first use: a DIR is the NVRAM of one simulated machine.
pub fn uefi_machine(img: &Path, dir: &Path) -> Machine {
    let (code, template) = qemu::ovmf().expect("OVMF");
    let vars = dir.join("OVMF_VARS.fd");
    if !vars.exists() {
        std::fs::copy(template, &vars).expect("copying OVMF's variable store");
    }
    let mut m = bios_machine(img);
    m.firmware = Firmware::Uefi { code, vars };
    m
}

/// Starts `machine` (console in DIR/NAME.log), waits for the fixture's ready line and for the guest to power
/// off, and checks that the fixture's own checks passed. Returns the ready line and every console line.
pub fn boot_to_ready(machine: &Machine, dir: &Path, name: &str) -> (String, Vec<String>) {
    let mut vm = start(machine, dir, name);
    let line = vm
        .expect("^ramnas: ready slot=", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_fixture_passed(&vm.output());
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    (line, vm.output())
}

/// The fixture's `/init` said its checks passed, and neither it nor a hook reported a failure.
pub fn assert_fixture_passed(lines: &[String]) {
    assert!(
        lines.iter().any(|l| l == "ramnas: fixture checks ok"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("ramnas: FAIL")),
        "{lines:#?}"
    );
}

/// Boots the stick `img` under SeaBIOS ([`boot_to_ready`]); returns the ready line.
pub fn boot_bios(img: &Path, dir: &Path, name: &str) -> String {
    boot_to_ready(&bios_machine(img), dir, name).0
}

/// Boots the stick `img` under OVMF ([`uefi_machine`], [`boot_to_ready`]); returns the ready line.
pub fn boot_uefi(img: &Path, dir: &Path, name: &str) -> String {
    boot_to_ready(&uefi_machine(img, dir), dir, name).0
}

/// Boots the stick `img` under SeaBIOS, then under OVMF; each must print the ready line `want`.
pub fn assert_boots_bios_then_uefi(img: &Path, dir: &Path, name: &str, want: &str) {
    assert_eq!(boot_bios(img, dir, name), want, "SeaBIOS");
    assert_eq!(boot_uefi(img, dir, &format!("{name}-efi")), want, "OVMF");
}

/// A loop device over a file (the tests run as root), detached when dropped.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup -f --show FILE`: the whole file as one disk.
    pub fn attach(file: &Path) -> Loop {
        let dev = run("losetup", &["-f", "--show", file.to_str().unwrap()]);
        Loop {
            dev: PathBuf::from(dev.trim()),
        }
    }

    /// [`Loop::attach`] with devices for the partitions too. This workplace's kernel has no MBR parser
    /// (CONFIG_MSDOS_PARTITION unset), so `partx` adds them from user space, as `flash` itself falls back
    /// to (it fails harmlessly when there is no table).
    pub fn attach_partitioned(file: &Path) -> Loop {
        let dev = run("losetup", &["-f", "-P", "--show", file.to_str().unwrap()]);
        let dev = PathBuf::from(dev.trim());
        let _ = Command::new("partx").arg("--update").arg(&dev).output();
        Loop { dev }
    }

    /// The device's path, as a command-line argument.
    pub fn path(&self) -> &str {
        self.dev.to_str().unwrap()
    }

    /// The device's name in /sys/block (`loop3`).
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    xtask::dev::fixture::free_port().unwrap()
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
