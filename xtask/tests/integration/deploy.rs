//! `cargo xtask deploy|commit|rollback|status` on every kind of target: an image file booted by SeaBIOS
//! through syslinux (trial once then back, a panicking trial falling back by itself, commit, rollback), a
//! deploy killed at every point where it changes the stick (each followed by a boot), a directory holding
//! the partition's files, a loop block device, and a real sshd standing in for the NAS.

use crate::common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{assert_boots_bios_then_uefi, boot_bios, boot_uefi};
use xtask::{
    boot::slots::{self, Build, Slot, Table},
    dev::fixture::{Fixture, Init},
    stick,
};

/// Builds fixture `marker` with `cargo xtask build --base` into DIR/out-MARKER.
fn build(dir: &Path, fixture: &Fixture) -> PathBuf {
    common::build_fixture(dir, fixture, &format!("out-{}", fixture.build), &[])
}

/// A stick image (DIR/NAME) holding build `out` in slot a, committed.
fn image(dir: &Path, out: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    fs::rename(common::make_stick(dir, out), &img).unwrap();
    img
}

/// Fixture builds PREFIX-a and PREFIX-b, and a stick image (DIR/stick.img) with PREFIX-a committed in slot
/// a. Returns (build a, build b, the stick).
fn builds_a_b_and_stick_of_a(dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let a = build(dir, &Fixture::new(&format!("{prefix}-a")));
    let b = build(dir, &Fixture::new(&format!("{prefix}-b")));
    let img = image(dir, &a, "stick.img");
    (a, b, img)
}

fn xtask(dir: &Path, args: &[&str]) -> String {
    common::text(&common::xtask_ok(dir, args))
}

/// The arguments of `cargo xtask deploy TARGET --out OUT EXTRA…`.
fn deploy_args<'a>(target: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "deploy",
        target.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

fn deploy(dir: &Path, target: &Path, out: &Path, extra: &[&str]) -> String {
    xtask(dir, &deploy_args(target, out, extra))
}

fn status(dir: &Path, target: &Path) -> String {
    xtask(dir, &["status", target.to_str().unwrap()])
}

fn commit(dir: &Path, target: &Path) -> String {
    xtask(dir, &["commit", target.to_str().unwrap()])
}

fn rollback(dir: &Path, target: &Path) -> String {
    xtask(dir, &["rollback", target.to_str().unwrap()])
}

/// Runs `cargo xtask CMD TARGET`, which must fail; returns its output.
fn refused(dir: &Path, cmd: &str, target: &Path) -> String {
    common::failed(&common::xtask(dir, &[cmd, target.to_str().unwrap()]))
}

/// Boots `img` under SeaBIOS (console in DIR/NAME.log), then under OVMF (DIR/NAME-efi.log): both must come
/// up with the ready line `want`.
fn table(target: &Path) -> Table {
    let mut s = stick::open(target.to_str().unwrap()).unwrap();
    Table::read(&mut *s).unwrap()
}

/// A directory holding a copy of the partition's files of an image (or of another such directory).
fn partition_copy(from: &Path, dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let mut fat = stick::open(from.to_str().unwrap()).unwrap();
    let mut copy = stick::Dir::open(dir).unwrap();
    stick::copy_all(&mut *fat, &mut copy).unwrap();
    dir.to_path_buf()
}

/// Deploying the committed build again, with no trial armed, says so and writes nothing; with a trial of
/// another build armed, it goes ahead (the trial must not stay armed).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_committed_build_again_changes_nothing() {
    let dir = common::tempdir();
    let dir = dir.path();
    let (a, b, img) = builds_a_b_and_stick_of_a(dir, "again");
    let before = fs::read(&img).unwrap();
    let said = deploy(dir, &img, &a, &[]);
    assert!(said.contains("nothing changed: slot a of"), "{said}");
    assert!(fs::read(&img).unwrap() == before, "the stick was written");

    deploy(dir, &img, &b, &[]);
    assert_eq!(slots::armed_trial(&table(&img)), Some(Slot::B));
    let said = deploy(dir, &img, &a, &[]);
    assert!(!said.contains("nothing changed"), "{said}");
    assert_eq!(slots::armed_trial(&table(&img)), Some(Slot::B), "{said}");
    assert_eq!(
        table(&img).slots[&Slot::B].manifest.build_id,
        Build::open(&a).unwrap().manifest.build_id
    );
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn trial_boots_the_new_build_once_then_the_committed_one() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_, b, img) = builds_a_b_and_stick_of_a(d, "dep");

    let st = status(d, &img);
    assert!(st.contains("slot a (default):\n  build   "), "{st}");
    assert!(st.contains("slot b: no complete build"), "{st}");
    assert!(st.contains("trial: none armed"), "{st}");

    let out = deploy(d, &img, &b, &[]);
    // The diff against the committed slot: the package that changed, and the kernel.
    assert!(
        out.contains("~ ramnas-fixture dep-a-r0 → dep-b-r0"),
        "{out}"
    );
    assert!(out.contains("kernel: "), "{out}");
    assert!(out.contains("into slot b"), "{out}");
    let st = status(d, &img);
    assert!(st.contains("slot a (default):"), "{st}");
    assert!(st.contains("slot b (armed for trial):"), "{st}");
    assert!(
        st.contains("trial: slot b armed for the next boot (\"b ramnas.trial=1\")"),
        "{st}"
    );
    let t = table(&img);
    assert_eq!(t.slots[&Slot::B].manifest.build_id.len(), 16);
    assert_eq!(
        t.slots[&Slot::B].manifest.packages["ramnas-fixture"],
        "dep-b-r0"
    );

    let t = table(&img);
    assert_eq!((t.uefi.committed(), t.uefi.trial()), (Some("a"), Some("b")));
    assert!(st.contains("uefi: default a, trial b, next boot b"), "{st}");
    // The same stick under UEFI: the trial once, then the committed slot again.
    let efi = d.join("efi.img");
    fs::copy(&img, &efi).unwrap();
    assert_eq!(
        boot_uefi(&efi, d, "efi-first"),
        "ramnas: ready slot=b build=dep-b"
    );
    assert_eq!(table(&efi).uefi.failed_trial(), Some("b"));
    assert_eq!(
        boot_uefi(&efi, d, "efi-second"),
        "ramnas: ready slot=a build=dep-a"
    );

    assert_eq!(
        boot_bios(&img, d, "first"),
        "ramnas: ready slot=b build=dep-b"
    );
    let st = status(d, &img);
    // ldlinux spent the BIOS trial; the UEFI one (each firmware has its own try) is still armed.
    assert!(
        st.contains("trial: slot b armed for the next UEFI boot\n"),
        "{st}"
    );
    assert!(st.contains("slot b (armed for trial):\n"), "{st}");
    assert!(st.contains("uefi: default a, trial b"), "{st}");
    assert_eq!(
        boot_bios(&img, d, "second"),
        "ramnas: ready slot=a build=dep-a"
    );
    // Rollback disarms it; then there is nothing left to commit.
    let out = rollback(d, &img);
    assert!(
        out.contains("the trial boot of slot b is disarmed"),
        "{out}"
    );
    let st = status(d, &img);
    assert!(
        st.contains("slot b:\n") && st.contains("uefi: default a, trial none"),
        "{st}"
    );
    let err = refused(d, "commit", &img);
    assert!(err.contains("no trial boot is armed"), "{err}");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_panicking_trial_falls_back_to_the_committed_slot_by_itself() {
    let dir = common::tempdir();
    let d = dir.path();
    let a = build(d, &Fixture::new("pan-a"));
    let img = image(d, &a, "stick.img");
    // A build whose /init exits, with panic=1 on its command line.
    let system = d.join("panic-system");
    fs::create_dir_all(&system).unwrap();
    fs::write(system.join("packages"), "alpine-base\nlinux-lts\n").unwrap();
    fs::write(
        system.join("system.toml"),
        "[kernel]\ncmdline = \"console=ttyS0 panic=1\"\n",
    )
    .unwrap();
    let mut bad = Fixture::new("pan-b");
    bad.init = Init::Panic;
    let b = common::build_fixture(
        d,
        &bad,
        "out-pan-b",
        &["--system", system.to_str().unwrap()],
    );
    assert!(
        fs::read_to_string(b.join("cmdline"))
            .unwrap()
            .starts_with("console=ttyS0 panic=1 ramnas.build="),
        "the panicking build's own command line"
    );
    deploy(d, &img, &b, &[]);
    assert_eq!(table(&img).trial(), Some(Slot::B));

    let mut m = common::bios_machine(&img);
    m.reboot = true;
    let mut vm = common::start(&m, d, "fallback");
    vm.expect(
        "ramnas.slot=b ramnas.trial=1|ramnas: fixture init exits",
        common::BOOT_TIMEOUT,
    )
    .unwrap();
    vm.expect(xtask::host::qemu::PANIC, common::BOOT_TIMEOUT)
        .unwrap();
    let line = vm
        .expect("^ramnas: ready slot=", common::BOOT_TIMEOUT)
        .unwrap();
    assert_eq!(line, "ramnas: ready slot=a build=pan-a");
    drop(vm);
    assert_eq!(table(&img).boot_once, None);
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn commit_keeps_the_new_build_and_rollback_returns() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_, b, img) = builds_a_b_and_stick_of_a(d, "com");
    {
        let mut s = stick::open(img.to_str().unwrap()).unwrap();
        s.write("persist/keep", &mut &b"user data"[..]).unwrap();
        s.close().unwrap();
    }
    // Nothing to roll back to yet.
    let err = refused(d, "rollback", &img);
    assert!(err.contains("slot b holds no complete build"), "{err}");

    deploy(d, &img, &b, &[]);
    let out = commit(d, &img);
    assert!(out.contains("slot b (build "), "{out}");
    let st = status(d, &img);
    assert!(st.contains("slot b (default):"), "{st}");
    assert!(st.contains("default: b\ntrial: none armed"), "{st}");
    for name in ["committed-1", "committed-2"] {
        assert_eq!(boot_bios(&img, d, name), "ramnas: ready slot=b build=com-b");
    }
    assert_eq!(table(&img).uefi.committed(), Some("b"));
    assert_eq!(
        boot_uefi(&img, d, "committed-efi"),
        "ramnas: ready slot=b build=com-b"
    );
    let out = rollback(d, &img);
    assert!(out.contains("slot a (build "), "{out}");
    assert!(status(d, &img).contains("slot a (default):"));
    assert_boots_bios_then_uefi(&img, d, "rolled-back", "ramnas: ready slot=a build=com-a");

    // The next deploy goes into b again (a is committed), with --commit straight to the default. (The
    // committed build again would change nothing: another build.)
    let c = build(d, &Fixture::new("com-c"));
    let out = deploy(d, &img, &c, &["--commit"]);
    assert!(
        out.contains("~ ramnas-fixture com-a-r0 → com-c-r0"),
        "{out}"
    );
    let t = table(&img);
    assert_eq!((t.default, t.boot_once.as_deref()), (Some(Slot::B), None));
    assert_eq!(
        t.slots[&Slot::B].manifest.packages["ramnas-fixture"],
        "com-c-r0"
    );

    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    assert_eq!(s.read("persist/keep").unwrap(), b"user data");
}

/// The file names in loader/entries (systemd-boot's entries, without temporary copies), sorted.
fn entry_names(img: &Path) -> Vec<String> {
    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    let mut names: Vec<String> = s
        .list(xtask::boot::uefi::ENTRIES_DIR)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    names
}

/// Runs `cargo xtask ARGS…` (a deploy; with `ssh` as its ssh when given) with the kill hook at point `n`:
/// true when it was killed there (by SIGKILL, nothing else), false when it finished before point `n`.
fn killed_at(dir: &Path, args: &[&str], ssh: Option<&Path>, n: u32) -> bool {
    let mut command = common::xtask_command(dir, args);
    command.env(stick::KILL_AT_ENV, n.to_string());
    if let Some(ssh) = ssh {
        command.env(xtask::stick::ssh::PROGRAM_ENV, ssh);
    }
    let res = command.output().unwrap();
    if res.status.success() {
        return false;
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        res.status.signal(),
        Some(9),
        "point {n}: {}",
        common::text(&res)
    );
    true
}

/// Builds fixture markers with the directory each was built into.
type Markers = Vec<(String, PathBuf)>;

/// The start of the kill tests: fixture builds PREFIX-a, PREFIX-b1 and PREFIX-b2, and a stick of a
/// (`base.img`) whose slot b holds b1 armed for a trial (the hardest case for a deploy of b2: the slot's
/// entries, the armed trial and its files must all change). Returns the markers, b2 and the stick.
fn stick_with_a_trial(d: &Path, prefix: &str) -> (Markers, PathBuf, PathBuf) {
    let markers: Markers = ["a", "b1", "b2"]
        .iter()
        .map(|b| {
            let marker = format!("{prefix}-{b}");
            let out = build(d, &Fixture::new(&marker));
            (marker, out)
        })
        .collect();
    let img = image(d, &markers[0].1, "base.img");
    deploy(d, &img, &markers[1].1, &[]);
    assert_eq!(table(&img).trial(), Some(Slot::B));
    let b2 = markers[2].1.clone();
    (markers, b2, img)
}

/// What the next boot runs, as the stick says: the armed trial, else the default; it must hold a complete
/// build whose every file matches its manifest. Returns (slot, build marker).
fn bootable(target: &Path, markers: &[(String, PathBuf)]) -> (Slot, String) {
    let mut s = stick::open(target.to_str().unwrap()).unwrap();
    let t = Table::read(&mut *s).unwrap();
    // UEFI: one entry per slot (Table::read refuses two), a default, and one of them boots next; every
    // entry (a person may pick a spare) names a complete build whose files match its manifest.
    t.uefi.next_boot().expect("no entry boots under UEFI");
    assert!(
        t.uefi.committed().is_some(),
        "no default entry: {:?}",
        t.uefi
    );
    for label in t.uefi.entries.keys() {
        let slot = Slot::parse(label).expect("an entry of slot a or b");
        slots::verify_slot(&mut *s, slot)
            .unwrap_or_else(|e| panic!("systemd-boot's entry of slot {slot}: {e:#}"));
    }
    let slot = t.trial().or(t.default).expect("no default slot");
    slots::verify_slot(&mut *s, slot).unwrap_or_else(|e| panic!("slot {slot}: {e:#}"));
    let id = &t.slots[&slot].manifest.build_id;
    let marker = markers
        .iter()
        .find(|(_, out)| {
            &xtask::build::manifest::Manifest::load(&out.join("manifest.json"))
                .unwrap()
                .build_id
                == id
        })
        .map(|(m, _)| m.clone())
        .expect("a build of ours");
    (slot, marker)
}

/// A deploy killed at every point where it changes the stick, on a stick whose slot b holds an earlier build
/// armed for a trial (the hardest case: the slot's entry, the armed trial and its files must all change):
/// each stop leaves a stick that boots a complete build, and a rerun finishes the deploy.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_deploy_killed_at_any_point_leaves_a_stick_that_boots() {
    let dir = common::tempdir();
    let d = dir.path();
    let (markers, b2, base) = stick_with_a_trial(d, "kill");

    let stick = d.join("stick.img");
    let efi_copy = d.join("efi.img");
    let mut n = 1;
    let mut seen = Vec::new();
    let mut efi_seen: Vec<(u32, Vec<String>, String)> = Vec::new();
    let args = deploy_args(&stick, &b2, &[]);
    loop {
        fs::copy(&base, &stick).unwrap();
        if !killed_at(d, &args, None, n) {
            break;
        }
        let (slot, marker) = bootable(&stick, &markers);
        // UEFI: booted (on a copy) at every point where the entries' names differ from the last one booted.
        let names = entry_names(&stick);
        if efi_seen.last().map(|(_, last, _)| last) != Some(&names) {
            fs::copy(&stick, &efi_copy).unwrap();
            let want = table(&stick).uefi.next_boot().unwrap().to_string();
            let line = boot_uefi(&efi_copy, d, &format!("killed-{n}-efi"));
            assert!(
                line.starts_with(&format!("ramnas: ready slot={want} build=kill-")),
                "killed at point {n}, entries {names:?}: {line}"
            );
            efi_seen.push((n, names, line));
        }
        let line = boot_bios(&stick, d, &format!("killed-{n}"));
        assert_eq!(
            line,
            format!("ramnas: ready slot={slot} build={marker}"),
            "killed at point {n}"
        );
        seen.push((n, slot, marker));
        // The rerun finishes the deploy.
        fs::copy(&base, &stick).unwrap();
        assert!(killed_at(d, &args, None, n));
        deploy(d, &stick, &b2, &[]);
        assert_eq!(bootable(&stick, &markers), (Slot::B, "kill-b2".to_string()));
        let t = table(&stick);
        assert_eq!((t.uefi.committed(), t.uefi.trial()), (Some("a"), Some("b")));
        n += 1;
    }
    eprintln!("kill points: {seen:?}");
    eprintln!("UEFI states booted: {efi_seen:#?}");
    // Under UEFI too: the earlier trial, then the committed slot (the new trial is armed by the very last
    // change, a rename, so no stop sees it; the finished deploy's UEFI boot below does).
    let efi_lines: Vec<&str> = efi_seen.iter().map(|(_, _, l)| l.as_str()).collect();
    assert_eq!(efi_lines[0], "ramnas: ready slot=b build=kill-b1");
    assert!(efi_lines[1..]
        .iter()
        .all(|l| *l == "ramnas: ready slot=a build=kill-a"));
    assert!(efi_seen.len() >= 4, "{efi_seen:?}");
    // Every point was reached: the whole deploy has at least the writes of five files and two configs, and
    // the stops saw all three builds come up (the earlier trial, the committed build, the new trial).
    assert!(n > 20, "only {} kill points", n - 1);
    for marker in ["kill-a", "kill-b1", "kill-b2"] {
        assert!(
            seen.iter().any(|(_, _, m)| m == marker),
            "{marker} never booted: {seen:?}"
        );
    }
    // The BIOS boot spends only the BIOS trial: UEFI boots the new trial once too.
    assert_boots_bios_then_uefi(&stick, d, "finished", "ramnas: ready slot=b build=kill-b2");
}

/// The same stops with --commit, checked on the stick (a complete default or trial, every file matching).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_committing_deploy_killed_at_any_point_leaves_a_complete_default() {
    let dir = common::tempdir();
    let d = dir.path();
    let (a, b, base) = builds_a_b_and_stick_of_a(d, "kc");
    let markers = [
        ("kc-a".to_string(), a.clone()),
        ("kc-b".to_string(), b.clone()),
    ];
    deploy(d, &base, &b, &["--commit"]);
    let stick = d.join("killed.img");
    // Slot b is committed: this deploy writes a again.
    let args = deploy_args(&stick, &a, &["--commit"]);
    let mut n = 1;
    loop {
        fs::copy(&base, &stick).unwrap();
        if !killed_at(d, &args, None, n) {
            break;
        }
        bootable(&stick, &markers);
        deploy(d, &stick, &a, &["--commit"]);
        let t = table(&stick);
        assert!(t.slots.len() == 2 && t.boot_once.is_none(), "point {n}");
        n += 1;
    }
    assert!(n > 20, "only {} kill points", n - 1);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_directory_target_works_like_the_image() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_, b, img) = builds_a_b_and_stick_of_a(d, "dir");
    let root = partition_copy(&img, &d.join("mounted"));
    assert!(root.join("syslinux/ldlinux.sys").is_file());

    let out = deploy(d, &root, &b, &[]);
    assert!(
        out.contains("~ ramnas-fixture dir-a-r0 → dir-b-r0"),
        "{out}"
    );
    assert!(status(d, &root).contains("slot b (armed for trial):"));
    for dir in ["slots/b", "parts"] {
        assert!(fs::read_dir(root.join(dir)).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
    // The NAS's own `ramnas-slot commit` (busybox sh), on a copy, after the trial boot it would run in.
    let nas = partition_copy(&root, &d.join("nas-copy"));
    fs::write(
        d.join("cmdline"),
        format!(
            "console=ttyS0 ramnas.slot=b ramnas.trial=1 ramnas.build={}\n",
            xtask::build::manifest::Manifest::load(&b.join("manifest.json"))
                .unwrap()
                .build_id
        ),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system/root/usr/sbin/ramnas-slot");
    let res = Command::new("busybox")
        .arg("sh")
        .arg(&script)
        .arg("commit")
        .env("RAMNAS_BOOT", &nas)
        .env("RAMNAS_CMDLINE", d.join("cmdline"))
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", common::text(&res));
    commit(d, &root);
    // Both wrote the same two configs, byte for byte.
    for cfg in ["syslinux.cfg", "syslinux/syslinux.cfg"] {
        assert_eq!(
            fs::read_to_string(nas.join(cfg)).unwrap(),
            fs::read_to_string(root.join(cfg)).unwrap(),
            "{cfg}"
        );
    }
    assert!(
        !nas.join("syslinux.cfg.tmp").exists() && !nas.join("syslinux/syslinux.cfg.tmp").exists()
    );
    let entries = |root: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join(xtask::boot::uefi::ENTRIES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(entries(&nas), ["ramnas-a.conf", "ramnas-default-2-b.conf"]);
    assert_eq!(entries(&nas), entries(&root));
    let st = status(d, &root);
    assert!(
        st.contains("slot b (default):") && st.contains("trial: none armed"),
        "{st}"
    );
    let cfg = fs::read_to_string(root.join("syslinux/syslinux.cfg")).unwrap();
    assert!(cfg.contains("DEFAULT b\n"), "{cfg}");
    assert_eq!(cfg, fs::read_to_string(root.join("syslinux.cfg")).unwrap());
    rollback(d, &root);
    assert!(status(d, &root).contains("slot a (default):"));
    // A trial armed and not booted yet: rollback disarms it, a stays the default.
    deploy(d, &root, &b, &[]);
    let out = rollback(d, &root);
    assert!(
        out.contains("the trial boot of slot b is disarmed; slot a stays the default"),
        "{out}"
    );
    let t = table(&root);
    assert_eq!((t.default, t.boot_once), (Some(Slot::A), None));
    let persist: Vec<_> = fs::read_dir(root.join("persist")).unwrap().collect();
    assert!(persist.is_empty());
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_block_device_target_works_like_the_image() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_, b, img) = builds_a_b_and_stick_of_a(d, "blk");
    let dev = common::Loop::attach(&img);
    let target = dev.dev.as_path();

    deploy(d, target, &b, &[]);
    let st = status(d, target);
    assert!(
        st.contains(dev.path()) && st.contains("slot b (armed for trial):"),
        "{st}"
    );
    commit(d, target);
    assert!(status(d, target).contains("slot b (default):"));
    assert_eq!(
        boot_bios(target, d, "loop"),
        "ramnas: ready slot=b build=blk-b"
    );
}

/// Starts sshd (`fixture::Sshd`) for a "NAS" whose stick is `boot`; returns it, the port and its ssh.
fn sshd(dir: &Path, boot: &Path, cmdline: &Path) -> (xtask::dev::fixture::Sshd, u16, PathBuf) {
    let server = xtask::dev::fixture::Sshd::start(dir, boot, cmdline).unwrap();
    let (port, ssh) = (server.port, server.ssh.clone());
    (server, port, ssh)
}

/// Runs `cargo xtask ARGS…` with `wrapper` as its ssh.
fn xtask_ssh(dir: &Path, wrapper: &Path, args: &[&str]) -> Output {
    common::xtask_command(dir, args)
        .env(xtask::stick::ssh::PROGRAM_ENV, wrapper)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn an_ssh_target_works_like_the_image() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_, b, img) = builds_a_b_and_stick_of_a(d, "ssh");
    let boot = partition_copy(&img, &d.join("media-boot"));
    let cmdline = d.join("proc-cmdline");
    fs::write(&cmdline, "console=ttyS0 panic=10 ramnas.slot=a\n").unwrap();
    let (_sshd, port, wrapper) = sshd(d, &boot, &cmdline);
    let target = format!("ssh://root@127.0.0.1:{port}");

    let st = common::ok(&xtask_ssh(d, &wrapper, &["status", &target]));
    assert!(st.contains("slot a (default, running):"), "{st}");
    assert!(st.contains("running: a\n"), "{st}");

    // (--keyless: the fixture's builds give root no ssh key; the test's sshd lets the test in without one.)
    let out = common::ok(&xtask_ssh(
        d,
        &wrapper,
        &["deploy", &target, "--keyless", "--out", b.to_str().unwrap()],
    ));
    assert!(
        out.contains("~ ramnas-fixture ssh-a-r0 → ssh-b-r0"),
        "{out}"
    );
    let st = common::ok(&xtask_ssh(d, &wrapper, &["status", &target]));
    assert!(st.contains("slot b (armed for trial):"), "{st}");
    // The files on the "NAS" match the build, and no temporary file is left.
    let manifest = xtask::build::manifest::Manifest::load(&b.join("manifest.json")).unwrap();
    for (name, a) in &manifest.artifacts {
        assert_eq!(
            fs::read(boot.join(slots::part_path(&a.sha256))).unwrap(),
            fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        fs::read(boot.join("slots/b/manifest.json")).unwrap(),
        fs::read(b.join("manifest.json")).unwrap()
    );
    for dir in ["slots/b", "parts"] {
        assert!(fs::read_dir(boot.join(dir)).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    // The NAS still runs a: nothing to commit over ssh until it has booted the trial.
    let err = common::failed(&xtask_ssh(d, &wrapper, &["commit", &target]));
    assert!(
        err.contains("armed for a trial boot the NAS has not made yet"),
        "{err}"
    );

    // The NAS reboots into the trial: ldlinux clears the boot-once, the command line says so.
    {
        let mut s = stick::Dir::open(&boot).unwrap();
        slots::set_boot_once(&mut s, None).unwrap();
    }
    fs::write(
        &cmdline,
        format!(
            "console=ttyS0 panic=10 ramnas.slot=b ramnas.trial=1 ramnas.build={}\n",
            manifest.build_id
        ),
    )
    .unwrap();
    let st = common::ok(&xtask_ssh(d, &wrapper, &["status", &target]));
    // (Its systemd-boot entry is still armed: only ldlinux spent the BIOS trial.)
    assert!(
        st.contains("slot b (armed for trial, running on trial):"),
        "{st}"
    );
    assert!(st.contains("running: b (trial boot)"), "{st}");
    let out = common::ok(&xtask_ssh(d, &wrapper, &["commit", &target]));
    assert!(out.contains("slot b (build "), "{out}");
    let st = common::ok(&xtask_ssh(d, &wrapper, &["status", &target]));
    assert!(st.contains("slot b (default, running on trial):"), "{st}");
    assert!(
        st.contains("uefi: default b, trial none, next boot b"),
        "{st}"
    );
    let cfg = fs::read_to_string(boot.join("syslinux/syslinux.cfg")).unwrap();
    assert!(cfg.contains("DEFAULT b\n"), "{cfg}");
    assert_eq!(cfg, fs::read_to_string(boot.join("syslinux.cfg")).unwrap());
    let err = common::failed(&xtask_ssh(d, &wrapper, &["commit", &target]));
    assert!(err.contains("already the default"), "{err}");

    // A target that is no NAS says so.
    let err = common::failed(&xtask_ssh(
        d,
        &wrapper,
        &[
            "status",
            &format!("ssh://root@127.0.0.1:{}", common::free_port()),
        ],
    ));
    assert!(err.contains("cannot connect"), "{err}");
}

/// Every file and directory under the stick's root, as `stick` sees it: path → contents (None: a directory).
fn snapshot(stick: &mut dyn stick::Stick) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut seen = std::collections::BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        for e in stick.list(&dir).unwrap() {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            assert_eq!(stick.entry(&path).unwrap().as_ref(), Some(&e), "{path}");
            if e.is_dir {
                todo.push(path.clone());
                seen.insert(path, None);
            } else {
                let data = stick.read(&path).unwrap();
                assert_eq!(data.len() as u64, e.size, "{path}");
                seen.insert(path, Some(data));
            }
        }
    }
    seen
}

/// The stick of a NAS (a directory holding syslinux.cfg, slot a running) behind the test sshd, opened as an
/// ssh stick: (its temp dir and the sshd, to keep while it is used; the directory; the stick).
fn nas_stick() -> (
    tempfile::TempDir,
    xtask::dev::fixture::Sshd,
    PathBuf,
    xtask::stick::ssh::Ssh,
) {
    let dir = common::tempdir();
    let d = dir.path();
    let boot = d.join("media-boot");
    fs::create_dir_all(boot.join("syslinux")).unwrap();
    fs::write(boot.join("syslinux/syslinux.cfg"), "DEFAULT a\n").unwrap();
    let cmdline = d.join("proc-cmdline");
    fs::write(&cmdline, "ramnas.slot=a\n").unwrap();
    let (sshd, port, wrapper) = sshd(d, &boot, &cmdline);
    let ssh = xtask::stick::ssh::Ssh::open_with(
        &format!("ssh://root@127.0.0.1:{port}"),
        wrapper.as_os_str(),
    )
    .unwrap();
    (dir, sshd, boot, ssh)
}

/// The ssh stick keeps what it has seen and updates it with each change of its own, so it must agree with
/// the stick itself after every kind of change, after a change that fails, and, once told to forget, after
/// a change made behind its back.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_ssh_stick_sees_what_the_stick_holds_after_each_change() {
    let (_dir, _sshd, boot, mut ssh) = nas_stick();
    let big: Vec<u8> = (0..(3 << 20) + 7)
        .map(|i: u32| (i * 7 % 251) as u8)
        .collect();
    let agree = |ssh: &mut xtask::stick::ssh::Ssh, step: &str| {
        let truth = snapshot(&mut stick::Dir::open(&boot).unwrap());
        assert!(
            snapshot(ssh) == truth,
            "after {step}: the ssh stick no longer agrees"
        );
    };
    use stick::Stick;
    agree(&mut ssh, "opening");
    ssh.create_dir_all("slots/a/deep").unwrap();
    agree(&mut ssh, "making new directories");
    ssh.create_dir_all("slots/a").unwrap();
    agree(&mut ssh, "making a directory that is there");
    ssh.write("slots/a/small.tmp", &mut &b"hello"[..]).unwrap();
    ssh.write("slots/a/big.tmp", &mut &big[..]).unwrap();
    agree(&mut ssh, "writing a small and a big file");
    ssh.rename("slots/a/small.tmp", "syslinux/syslinux.cfg")
        .unwrap();
    ssh.rename("slots/a/big.tmp", "slots/a/deep/big").unwrap();
    agree(&mut ssh, "renaming over a file and into another directory");
    ssh.patch("syslinux/syslinux.cfg", 1, b"EY").unwrap();
    agree(&mut ssh, "patching");
    assert!(ssh.patch("syslinux/syslinux.cfg", 4, b"xx").is_err());
    agree(&mut ssh, "a patch that fails");
    ssh.remove("slots/a/deep/big").unwrap();
    ssh.remove("slots/a/deep").unwrap();
    agree(&mut ssh, "removing a file and a directory");
    ssh.replace("slots/a/f", b"x").unwrap();
    assert_eq!(ssh.sha256("slots/a/f").unwrap().0, 1);
    agree(&mut ssh, "replacing");
    fs::write(boot.join("syslinux/syslinux.cfg"), "DEFAULT b\n").unwrap();
    fs::create_dir(boot.join("loader")).unwrap();
    ssh.forget();
    agree(&mut ssh, "forgetting what changed behind its back");
    Box::new(ssh).close().unwrap();
}

/// A big file's SHA-256 is computed on the NAS while the next files arrive, so it must still be the file's
/// whatever happened to it since: patched, renamed, written again, or changed behind the stick's back
/// (then forgotten).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_ssh_sticks_sha256_is_the_files_own_after_any_change() {
    use stick::Stick;
    let (_dir, _sshd, boot, mut ssh) = nas_stick();
    let big = |seed: u32| -> Vec<u8> {
        (0..(3 << 20) + 7)
            .map(|i: u32| (i.wrapping_mul(seed) % 251) as u8)
            .collect()
    };
    let agree = |ssh: &mut xtask::stick::ssh::Ssh, path: &str, step: &str| {
        let truth = stick::Dir::open(&boot).unwrap().sha256(path).unwrap();
        assert_eq!(ssh.sha256(path).unwrap(), truth, "after {step}");
    };
    // Asking for a hash the NAS started waits for every hash under way: after this, each one started
    // so far is of the file as it was before the change that follows.
    let settle = |ssh: &mut xtask::stick::ssh::Ssh| {
        ssh.write("slots/w", &mut &big(3)[..]).unwrap();
        agree(ssh, "slots/w", "writing a big file");
    };
    ssh.create_dir_all("slots/a").unwrap();
    ssh.write("slots/a/f.tmp", &mut &big(7)[..]).unwrap();
    agree(&mut ssh, "slots/a/f.tmp", "writing a big file");
    ssh.write("slots/a/f.tmp", &mut &big(11)[..]).unwrap();
    settle(&mut ssh);
    ssh.patch("slots/a/f.tmp", 5, b"patched").unwrap();
    agree(
        &mut ssh,
        "slots/a/f.tmp",
        "writing it again, then patching it",
    );
    ssh.write("slots/a/f.tmp", &mut &big(13)[..]).unwrap();
    settle(&mut ssh);
    ssh.write("slots/a/f.tmp", &mut &big(17)[..]).unwrap();
    agree(&mut ssh, "slots/a/f.tmp", "writing it twice");
    ssh.write("slots/a/f.tmp", &mut &big(19)[..]).unwrap();
    settle(&mut ssh);
    ssh.write("slots/a/f.tmp", &mut &b"small"[..]).unwrap();
    agree(
        &mut ssh,
        "slots/a/f.tmp",
        "writing a small file over a big one",
    );
    ssh.write("slots/a/g.tmp", &mut &big(23)[..]).unwrap();
    ssh.write("slots/a/f.tmp", &mut &big(19)[..]).unwrap();
    settle(&mut ssh);
    ssh.rename("slots/a/g.tmp", "slots/a/f.tmp").unwrap();
    agree(&mut ssh, "slots/a/f.tmp", "renaming a big file over it");
    ssh.write("slots/a/h.tmp", &mut &big(29)[..]).unwrap();
    settle(&mut ssh);
    ssh.rename("slots/a/h.tmp", "slots/a/h").unwrap();
    agree(&mut ssh, "slots/a/h", "renaming a big file just written");
    assert!(ssh.sha256("slots/a/h.tmp").is_err());
    ssh.write("slots/a/h", &mut &big(31)[..]).unwrap();
    settle(&mut ssh);
    fs::write(boot.join("slots/a/h"), big(37)).unwrap();
    ssh.forget();
    agree(&mut ssh, "slots/a/h", "a change behind its back, forgotten");
    Box::new(ssh).close().unwrap();
}

/// A block device any part of which is mounted is refused before anything is read or written: the kernel's
/// vfat driver owns it then (deploy to the mount point instead).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_mounted_block_device_is_refused() {
    let dir = common::tempdir();
    let d = dir.path();
    let file = d.join("mounted.img");
    fs::File::create(&file).unwrap().set_len(16 << 20).unwrap();
    common::run("mkfs.ext2", &["-q", "-F", file.to_str().unwrap()]);
    let dev = common::Loop::attach(&file);
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    common::run("mount", &[dev.path(), mnt.to_str().unwrap()]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let err = refused(d, "status", &dev.dev);
    assert!(
        err.contains("is mounted at") && err.contains(mnt.to_str().unwrap()),
        "{err}"
    );
}

/// Over ssh too: a deploy to the running NAS killed at every point where it changes the stick (the ssh client
/// dies with it, mid-stream for a write) leaves a stick whose every boot entry names a complete build that
/// matches its manifest, and a rerun finishes the deploy (tried after every fourth stop: each round trip
/// costs). The stick starts with a trial of an earlier build armed in slot b, as in the image-file case.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_deploy_over_ssh_killed_at_any_point_leaves_a_stick_that_boots() {
    let dir = common::tempdir();
    let d = dir.path();
    let (markers, b2, img) = stick_with_a_trial(d, "sshkill");
    let base = partition_copy(&img, &d.join("base"));
    let boot = d.join("media-boot");
    let cmdline = d.join("proc-cmdline");
    fs::write(&cmdline, "console=ttyS0 panic=10 ramnas.slot=a\n").unwrap();
    let (_sshd, port, wrapper) = sshd(d, &boot, &cmdline);
    let target = format!("ssh://root@127.0.0.1:{port}");
    let fresh = || {
        let _ = fs::remove_dir_all(&boot);
        partition_copy(&base, &boot);
    };
    // (--keyless: the fixture's builds give root no ssh key; the test's sshd lets the test in without one.)
    let args = [
        "deploy",
        &target,
        "--keyless",
        "--out",
        b2.to_str().unwrap(),
    ];
    let mut seen = Vec::new();
    let mut n = 1;
    loop {
        fresh();
        if !killed_at(d, &args, Some(&wrapper), n) {
            break;
        }
        seen.push((n, bootable(&boot, &markers)));
        if n % 4 == 1 {
            common::ok(&xtask_ssh(d, &wrapper, &args));
            assert_eq!(
                bootable(&boot, &markers),
                (Slot::B, "sshkill-b2".to_string()),
                "the rerun after point {n}"
            );
        }
        n += 1;
    }
    eprintln!("kill points: {seen:?}");
    assert!(n > 15, "only {} kill points", n - 1);
    for marker in ["sshkill-a", "sshkill-b1"] {
        assert!(
            seen.iter().any(|(_, (_, m))| m == marker),
            "{marker} never the next boot: {seen:?}"
        );
    }
    let t = table(&boot);
    assert_eq!((t.default, t.trial()), (Some(Slot::A), Some(Slot::B)));
    assert_eq!((t.uefi.committed(), t.uefi.trial()), (Some("a"), Some("b")));
}
