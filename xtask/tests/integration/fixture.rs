//! The fixture itself, packed by GNU cpio (the reference packer), boots and passes its own checks; its
//! failure modes are the ones the other tests rely on.

use crate::common;

use std::{fs, time::Duration};

use xtask::{
    dev::fixture::{Fixture, HostKernel, Init},
    host::qemu::{Accel, Direct, Machine, Outcome},
};

/// The fixture packed by GNU cpio into DIR, booted directly by the host kernel under TCG with `append`.
fn gnu_machine(dir: &std::path::Path, fixture: &Fixture, append: &str) -> Machine {
    let tree = dir.join("tree");
    fixture.write(&tree).unwrap();
    let archive = dir.join("initramfs.cpio");
    common::gnu_cpio(&tree, &archive);
    let mut m = Machine::new(Accel::Tcg);
    m.direct = Some(Direct {
        kernel: HostKernel::find().unwrap().vmlinuz,
        initrd: archive,
        append: append.to_string(),
    });
    m
}

fn boot(init: Init, append: &str) -> (Outcome, Vec<String>) {
    let dir = common::tempdir();
    let mut fixture = Fixture::new("gnu");
    fixture.init = init;
    fixture.files.push((
        "etc/fixture.d/hello.sh".into(),
        "echo \"ramnas: hook ran\"\n".into(),
        0o644,
    ));
    let m = gnu_machine(
        dir.path(),
        &fixture,
        &format!("console=ttyS0 panic=-1 {append}"),
    );
    let mut vm = common::start(&m, dir.path(), "boot");
    let outcome = vm.wait_for(
        &regex::Regex::new("ramnas: ready").unwrap(),
        common::BOOT_TIMEOUT,
    );
    let out = vm.output();
    if outcome != Outcome::Timeout {
        vm.wait_exit(Duration::from_secs(60)).ok();
    }
    (outcome, out)
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn fixture_boots_and_passes_its_checks() {
    let (outcome, lines) = boot(Init::Ready, "ramnas.slot=b");
    assert_eq!(
        outcome,
        Outcome::Matched("ramnas: ready slot=b build=gnu".into()),
        "{lines:#?}"
    );
    common::assert_fixture_passed(&lines);
    assert!(lines.iter().any(|l| l == "ramnas: hook ran"), "{lines:#?}");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn panicking_fixture_panics() {
    let (outcome, lines) = boot(Init::Panic, "");
    assert!(
        matches!(outcome, Outcome::Panic(_)),
        "{outcome:?} {lines:#?}"
    );
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn silent_fixture_never_reports_ready() {
    let dir = common::tempdir();
    let mut fixture = Fixture::new("silent");
    fixture.init = Init::Silent;
    let m = gnu_machine(dir.path(), &fixture, "console=ttyS0");
    let mut vm = common::start(&m, dir.path(), "boot");
    vm.expect("ramnas: fixture stays silent", common::BOOT_TIMEOUT)
        .unwrap();
    let outcome = vm.wait_for(
        &regex::Regex::new("ramnas: ready").unwrap(),
        Duration::from_secs(5),
    );
    assert_eq!(outcome, Outcome::Timeout);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn fixture_lists_virtio_disks_with_serials() {
    let dir = common::tempdir();
    let disk = dir.path().join("disk.raw");
    fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let mut m = gnu_machine(dir.path(), &Fixture::new("disks"), "console=ttyS0");
    let mut d = xtask::host::qemu::Drive::raw(&disk, xtask::host::qemu::Bus::Virtio);
    d.serial = Some("ramnas-disk0".into());
    m.drives.push(d);
    let mut vm = common::start(&m, dir.path(), "boot");
    vm.expect(
        "^ramnas: disk vda serial=ramnas-disk0$",
        common::BOOT_TIMEOUT,
    )
    .unwrap();
}

/// The kernel writes its messages to the serial port even in the middle of a line a program is writing; the
/// console reader puts such lines back together. Here a program in the guest floods the kernel's log while
/// another writes numbered lines, so the kernel cuts many of them.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn lines_the_kernel_cuts_arrive_whole() {
    const LINES: usize = 1000;
    let dir = common::tempdir();
    let mut fixture = Fixture::new("cut");
    fixture.files.push((
        "etc/fixture.d/cut.sh".into(),
        format!(
            "echo on > /proc/sys/kernel/printk_devkmsg\n\
             ( i=0; while [ $i -lt {LINES} ]; do\n\
                 echo \"kmsg noise $i\" > /dev/kmsg; i=$((i+1))\n\
             done ) &\n\
             i=0; while [ $i -lt {LINES} ]; do\n\
                 echo \"ramnas: line $i of a program's output, as one write\"; i=$((i+1))\n\
             done\n\
             wait\n"
        ),
        0o644,
    ));
    let m = gnu_machine(dir.path(), &fixture, "console=ttyS0");
    let mut vm = common::start(&m, dir.path(), "boot");
    vm.expect("^ramnas: ready slot=", common::BOOT_TIMEOUT)
        .unwrap();
    let lines = vm.output();
    let program: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ramnas: line "))
        .collect();
    let want: Vec<String> = (0..LINES)
        .map(|i| format!("ramnas: line {i} of a program's output, as one write"))
        .collect();
    assert_eq!(program, want.iter().collect::<Vec<_>>(), "{lines:#?}");
    let kernel_line = regex::Regex::new(r"^\[ *\d+\.\d{6}\] kmsg noise \d+$").unwrap();
    let noise = lines.iter().filter(|l| kernel_line.is_match(l)).count();
    assert_eq!(noise, LINES, "{lines:#?}");
}
