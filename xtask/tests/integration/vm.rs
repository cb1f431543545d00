//! `cargo xtask vm`, driven through the real binary under TCG: `--check` passes on the fixture and fails,
//! naming why, on a panic or a timeout; the data disks show up with their serials and keep what was written
//! to them; the stick from `cargo xtask image` boots with `--image` under SeaBIOS and OVMF; no qemu outlives
//! the command, Ctrl-C included; missing tools or build files are one clear error.

use crate::common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use xtask::dev::fixture::{Fixture, Init};

/// The fixture built by `cargo xtask build --base` into DIR/OUT.
fn build_fixture(dir: &Path, fixture: &Fixture, out: &str) -> PathBuf {
    common::build_fixture(dir, fixture, out, &[])
}

/// A fixture hook that prints the first bytes of /dev/vda, then writes `written-<build>` there.
const DISK_HOOK: &str = r#"old=$(dd if=/dev/vda bs=32 count=1 2>/dev/null | tr -d '\000')
echo "ramnas: vda held '$old'"
printf 'written-%s' "$(cat /etc/ramnas-build)" | dd of=/dev/vda bs=32 count=1 conv=fsync 2>/dev/null
"#;

/// The fixture whose /init never prints the ready line.
fn silent_fixture(build: &str) -> Fixture {
    Fixture {
        init: Init::Silent,
        ..Fixture::new(build)
    }
}

fn disk_fixture(build: &str) -> Fixture {
    let mut fixture = Fixture::new(build);
    fixture
        .files
        .push(("etc/fixture.d/disk.sh".into(), DISK_HOOK.into(), 0o644));
    fixture
}

/// A temp dir DIR with `fixture` built into DIR/out; returns it, the VM's directory DIR/vm and DIR/out.
fn built(fixture: &Fixture) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = common::tempdir();
    let out = build_fixture(dir.path(), fixture, "out");
    let vm_dir = dir.path().join("vm");
    (dir, vm_dir, out)
}

/// `cargo xtask vm ARGS…` with its VM state in `vm_dir`, small and under TCG.
fn vm(vm_dir: &Path, out: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["vm", "--out"])
        .arg(out)
        .args(["--mem", "512M", "--cpus", "1"])
        .args(args)
        .env("RAMNAS_ACCEL", "tcg")
        .env("RAMNAS_VM_DIR", vm_dir)
        .stdin(Stdio::null());
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("running xtask vm")
}

/// Runs [`vm`], which must succeed; returns both streams.
fn vm_ok(vm_dir: &Path, out: &Path, args: &[&str]) -> String {
    common::ok(&run(vm(vm_dir, out, args)))
}

/// Runs [`vm`], which must fail; returns both streams.
fn vm_fails(vm_dir: &Path, out: &Path, args: &[&str]) -> String {
    common::failed(&run(vm(vm_dir, out, args)))
}

/// pids of processes whose command line mentions `path` (qemu names the VM directory in its disk paths).
fn processes_naming(path: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(path)
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn assert_no_qemu(vm_dir: &Path) {
    let left = processes_naming(vm_dir);
    assert!(left.is_empty(), "qemu processes remain: {left:?}");
}

fn log(vm_dir: &Path) -> String {
    fs::read_to_string(vm_dir.join("last-boot.log")).expect("vm/last-boot.log")
}

/// Waits until the console log shows `line`, for as long as a boot may take.
fn wait_for_log(vm_dir: &Path, line: &str) {
    let start = Instant::now();
    while !fs::read_to_string(vm_dir.join("last-boot.log"))
        .unwrap_or_default()
        .contains(line)
    {
        assert!(
            start.elapsed() < common::BOOT_TIMEOUT,
            "the fixture never booted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn check_boots_the_fixture_with_persistent_data_disks() {
    let dir = common::tempdir();
    let vm_dir = dir.path().join("vm");

    let mut fixture = disk_fixture("one");
    fixture.ucode = true;
    let one = build_fixture(dir.path(), &fixture, "one");
    let text = vm_ok(&vm_dir, &one, &["--check"]);
    assert_no_qemu(&vm_dir);
    let first = log(&vm_dir);
    for line in [
        "ramnas: disk vda serial=ramnas-disk0",
        "ramnas: disk vdb serial=ramnas-disk1",
        "ramnas: vda held ''",
        "ramnas: ready slot=none build=one",
    ] {
        assert!(first.lines().any(|l| l == line), "no {line:?} in\n{first}");
        assert!(text.contains(line), "{line:?} not on the terminal:\n{text}");
    }
    for i in 0..2 {
        assert!(vm_dir.join(format!("disks/disk{i}.qcow2")).exists());
    }
    // qemu takes one initrd: the microcode archive first, then the initramfs' archives in order.
    let joined = fs::read(vm_dir.join("initrd")).unwrap();
    let ucode = fs::read(one.join("ucode.img")).unwrap();
    assert!(joined.starts_with(&ucode));
    let archives: Vec<u8> = common::archives(&one)
        .iter()
        .flat_map(|a| fs::read(a).unwrap())
        .collect();
    assert!(common::archives(&one).len() >= 2);
    assert_eq!(joined[ucode.len()..], archives);

    let two = build_fixture(dir.path(), &disk_fixture("two"), "two");
    vm_ok(&vm_dir, &two, &["--check", "--expect", "build=two"]);
    assert_no_qemu(&vm_dir);
    let second = log(&vm_dir);
    assert!(
        second
            .lines()
            .any(|l| l == "ramnas: vda held 'written-one'"),
        "the data disk lost what the first run wrote:\n{second}"
    );

    vm_ok(&vm_dir, &two, &["--check", "--fresh-disks"]);
    assert_no_qemu(&vm_dir);
    let third = log(&vm_dir);
    assert!(
        third.lines().any(|l| l == "ramnas: vda held ''"),
        "--fresh-disks kept the old disk:\n{third}"
    );
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn check_fails_naming_a_kernel_panic() {
    let fixture = Fixture {
        init: Init::Panic,
        ..Fixture::new("panic")
    };
    let (_dir, vm_dir, out_dir) = built(&fixture);
    let text = vm_fails(&vm_dir, &out_dir, &["--check", "--disks", "0"]);
    assert!(text.contains("the kernel panicked"), "{text}");
    assert!(text.contains("Kernel panic - not syncing"), "{text}");
    assert_no_qemu(&vm_dir);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn check_fails_by_timeout_when_the_line_never_comes() {
    let (_dir, vm_dir, out_dir) = built(&silent_fixture("silent"));
    let text = vm_fails(
        &vm_dir,
        &out_dir,
        &["--check", "--disks", "0", "--timeout", "15"],
    );
    assert!(
        text.contains("timed out after 15s waiting for \"ramnas: ready\""),
        "{text}"
    );
    assert_no_qemu(&vm_dir);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn ctrl_c_stops_qemu() {
    let (_dir, vm_dir, out_dir) = built(&silent_fixture("silent"));
    let mut command = vm(&vm_dir, &out_dir, &["--check", "--disks", "1"]);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting xtask vm");
    wait_for_log(&vm_dir, "ramnas: fixture stays silent");
    let qemu = processes_naming(&vm_dir);
    assert_eq!(qemu.len(), 1, "one qemu expected: {qemu:?}");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !Path::new("/proc").join(&qemu[0]).exists(),
        "qemu {} outlived xtask vm",
        qemu[0]
    );
    assert_no_qemu(&vm_dir);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn interactive_vm_runs_the_console_on_the_terminal() {
    let (_dir, vm_dir, out_dir) = built(&Fixture::new("tty"));
    let port = common::free_port().to_string();
    // The fixture powers off after its ready line, which ends qemu and the command.
    let out = run(vm(
        &vm_dir,
        &out_dir,
        &["--disks", "1", "--ssh-port", &port],
    ));
    let text = common::ok(&out);
    assert!(
        text.contains(&format!("ssh -p {port} ")),
        "no ssh command:\n{text}"
    );
    assert!(text.contains("Ctrl-a x"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ramnas: ready slot=none build=tty"),
        "{text}"
    );
    assert!(log(&vm_dir).contains("ramnas: disk vda serial=ramnas-disk0"));
    assert_no_qemu(&vm_dir);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn interactive_vm_forwards_ssh_and_quits_on_ctrl_a_x() {
    let (dir, vm_dir, out_dir) = built(&silent_fixture("quit"));
    let port = common::free_port();
    let terminal = dir.path().join("terminal");
    let mut child = vm(
        &vm_dir,
        &out_dir,
        &["--disks", "0", "--ssh-port", &port.to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(fs::File::create(&terminal).unwrap())
    .stderr(Stdio::null())
    .spawn()
    .expect("starting xtask vm");
    wait_for_log(&vm_dir, "ramnas: fixture stays silent");
    // qemu listens on the forwarded port (nothing answers inside this guest, but the host side is there).
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the ssh port is not forwarded");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"\x01x").unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(&terminal).unwrap()
    );
    assert!(fs::read_to_string(&terminal)
        .unwrap()
        .contains("ramnas: fixture stays silent"));
    assert_no_qemu(&vm_dir);
}

/// A directory holding only links to the given host tools, for a PATH that lacks the others.
fn path_with(dir: &Path, tools: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        let real = which::which(tool).unwrap();
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    bin
}

#[test]
fn missing_qemu_tools_are_one_clear_error() {
    let dir = common::tempdir();
    let vm_dir = dir.path().join("vm");
    let out_dir = dir.path().join("out");

    let mut command = vm(&vm_dir, &out_dir, &["--check"]);
    command.env("PATH", path_with(&dir.path().join("none"), &[]));
    let text = common::failed(&run(command));
    assert!(text.contains("qemu-system-x86_64 not found"), "{text}");
    assert!(text.contains("apt-get install qemu-system-x86"), "{text}");

    let mut command = vm(&vm_dir, &out_dir, &["--check"]);
    command.env(
        "PATH",
        path_with(&dir.path().join("qemu"), &["qemu-system-x86_64"]),
    );
    let text = common::failed(&run(command));
    assert!(text.contains("qemu-img not found"), "{text}");
    assert!(text.contains("apt-get install qemu-utils"), "{text}");
    assert_eq!(text.lines().count(), 1, "more than one error line:\n{text}");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn image_boots_the_stick_through_seabios_and_ovmf() {
    let (dir, vm_dir, out_dir) = built(&Fixture::new("stick"));
    common::make_stick(dir.path(), &out_dir);

    // Direct boot: the stick is attached all the same, as the only USB disk: the VM's own copy.
    let text = vm_ok(&vm_dir, &out_dir, &["--check", "--disks", "1"]);
    assert!(text.contains("the VM's stick is"), "{text}");
    let stick = vm_dir.join("stick.img");
    assert_eq!(
        fs::metadata(&stick).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let direct = log(&vm_dir);
    assert!(direct.contains("ramnas: disk sda"), "no stick:\n{direct}");
    assert!(direct.contains("ramnas: ready slot=none"), "{direct}");
    assert_no_qemu(&vm_dir);

    vm_ok(&vm_dir, &out_dir, &["--image", "--check", "--disks", "1"]);
    let bios = log(&vm_dir);
    assert!(bios.contains("SYSLINUX"), "{bios}");
    assert!(
        bios.contains("ramnas: disk vda serial=ramnas-disk0"),
        "{bios}"
    );
    assert!(bios.contains("ramnas: ready slot=a build=stick"), "{bios}");
    assert_no_qemu(&vm_dir);

    // A new image replaces the VM's copy, and says so.
    std::thread::sleep(Duration::from_millis(20));
    common::make_stick(dir.path(), &out_dir);
    let text = vm_ok(
        &vm_dir,
        &out_dir,
        &["--image", "--uefi", "--check", "--disks", "1"],
    );
    assert!(
        text.contains("is newer than") && text.contains("new ssh host keys"),
        "{text}"
    );
    let uefi = log(&vm_dir);
    assert!(uefi.contains("EFI stub"), "{uefi}");
    assert!(uefi.contains("ramnas: ready slot=a build=stick"), "{uefi}");
    let template = xtask::host::qemu::ovmf().unwrap().1;
    assert!(vm_dir.join(template.file_name().unwrap()).exists());
    assert_no_qemu(&vm_dir);
}

#[test]
fn missing_build_or_stick_is_one_clear_error() {
    let dir = common::tempdir();
    let vm_dir = dir.path().join("vm");
    let out_dir = dir.path().join("out");
    fs::create_dir_all(&out_dir).unwrap();

    let text = vm_fails(&vm_dir, &out_dir, &["--check"]);
    assert!(text.contains("out/vmlinuz not found"), "{text}");
    assert!(text.contains("cargo xtask build"), "{text}");

    let text = vm_fails(&vm_dir, &out_dir, &["--check", "--image"]);
    assert!(text.contains("out/boot.img not found"), "{text}");
    assert!(text.contains("cargo xtask image"), "{text}");
    assert!(
        !vm_dir.join("disks").exists(),
        "disks made for a run that could not start"
    );
}
