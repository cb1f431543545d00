//! UEFI boot: systemd-boot entries naming each slot's files, and A/B by file name, proven on OVMF (TCG).
//!
//! The stick here is a FAT32 partition made with sfdisk, mkfs.vfat and mtools, holding what `uefi` says
//! it should: systemd-boot as EFI/BOOT/BOOTX64.EFI, loader/loader.conf, and per slot the host's Debian kernel,
//! the fixture's microcode archive and a fixture initramfs packed by GNU cpio under /slots/<s>/, with one
//! entry in loader/entries. Two tests take `cargo xtask image`'s stick instead and boot it under both
//! SeaBIOS and OVMF. The last ones cut the NAS's own `ramnas-slot commit` after its first rename (on a
//! directory standing for the stick) and boot the entries it left.

use crate::common;

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xtask::{
    boot::entry::BootEntry,
    boot::syslinux,
    boot::uefi::{self, Role, View},
    dev::fixture::{Fixture, HostKernel, Init},
    host::qemu,
};

/// The FAT partition starts 1 MiB into the image.
const OFFSET: u64 = 1 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        common::text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fixture build for slot `label` (kernel, microcode, GNU-cpio initramfs) in `dir/<build>/`; returns its
/// entry.
fn fixture_slot(
    dir: &Path,
    label: &str,
    build: &str,
    init: Init,
    cmdline: &str,
) -> (PathBuf, BootEntry) {
    let tree = dir.join(format!("tree-{build}"));
    let mut fixture = Fixture::new(build);
    fixture.init = init;
    fixture.ucode = true;
    fixture.write(&tree).unwrap();
    let files = dir.join(build);
    fs::create_dir_all(&files).unwrap();
    common::gnu_cpio(&tree, &files.join("initramfs"));
    fs::copy(tree.join("boot/intel-ucode.img"), files.join("ucode.img")).unwrap();
    fs::copy(HostKernel::find().unwrap().vmlinuz, files.join("vmlinuz")).unwrap();
    let entry = BootEntry::in_slot(label, &format!("build {build}"), true, cmdline);
    (files, entry)
}

/// A raw disk image with one FAT32 partition (type 0x0c, bootable) at [`OFFSET`], edited with mtools.
struct Stick {
    image: PathBuf,
}

impl Stick {
    fn create(dir: &Path) -> Stick {
        let image = dir.join("stick.img");
        let size: u64 = 160 << 20;
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        let mut sfdisk = Command::new("sfdisk");
        sfdisk
            .args(["--quiet", image.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = sfdisk.spawn().expect("sfdisk");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, type=c, bootable\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        run(Command::new("mkfs.vfat").args([
            "-F",
            "32",
            "-n",
            "RAMNAS",
            "--offset",
            "2048",
            image.to_str().unwrap(),
            &((size - OFFSET) / 1024).to_string(),
        ]));
        let stick = Stick { image };
        for dir in [
            "EFI",
            "EFI/BOOT",
            "loader",
            "loader/entries",
            "slots",
            "slots/a",
            "slots/b",
        ] {
            run(stick.mtool("mmd").arg(format!("::/{dir}")));
        }
        for (path, contents) in uefi::boot_files(&uefi::find().unwrap()).unwrap() {
            let src = dir.join("boot-file");
            fs::write(&src, contents).unwrap();
            stick.put(&src, &path);
        }
        stick
    }

    fn mtool(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{OFFSET}", self.image.display()));
        c
    }

    fn put(&self, src: &Path, path: &str) {
        run(self
            .mtool("mcopy")
            .arg("-o")
            .arg(src)
            .arg(format!("::/{path}")));
    }

    /// The file names under loader/entries.
    fn entry_names(&self) -> Vec<String> {
        run(self
            .mtool("mdir")
            .args(["-b", &format!("::/{}", uefi::ENTRIES_DIR)]))
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
    }

    fn view(&self) -> View {
        View::from_names(self.entry_names()).unwrap()
    }

    /// Applies `uefi::renames` for this state, as deploy/commit/rollback and the NAS do.
    fn set(&self, default: &str, trial: Option<&str>) {
        for (from, to) in uefi::renames(&self.view(), default, trial).unwrap() {
            let to_name = to.rsplit('/').next().unwrap();
            run(self.mtool("mren").arg(format!("::/{from}")).arg(to_name));
        }
        assert_eq!(self.view().committed(), Some(default));
        assert_eq!(self.view().trial(), trial);
    }

    /// Copies the slot's files (from `files`) into /slots/<label>, and its entry into loader/entries under the
    /// file name of its slot in `role`.
    fn put_slot(&self, dir: &Path, slot: &(PathBuf, BootEntry), role: Role) {
        self.put_slot_named(dir, slot, &uefi::file_name(&slot.1.label, role));
    }

    /// The same, the entry's file named `name`.
    fn put_slot_named(&self, dir: &Path, (files, entry): &(PathBuf, BootEntry), name: &str) {
        for name in ["vmlinuz", "ucode.img", "initramfs"] {
            self.put(&files.join(name), &format!("slots/{}/{name}", entry.label));
        }
        let text = dir.join("entry.conf");
        fs::write(&text, uefi::entry(entry)).unwrap();
        self.put(&text, &format!("{}/{name}", uefi::ENTRIES_DIR));
    }
}

/// A stick (in `dir`) holding fixture build-a as slot a, the default, and build-b, whose /init does `b_init`,
/// as slot b, a spare; both with `panic=1`.
fn stick_with_slots_a_and_b(dir: &Path, b_init: Init) -> Stick {
    let stick = Stick::create(dir);
    let a = fixture_slot(dir, "a", "build-a", Init::Ready, "console=ttyS0 panic=1");
    let b = fixture_slot(dir, "b", "build-b", b_init, "console=ttyS0 panic=1");
    stick.put_slot(dir, &a, Role::Default { generation: 1 });
    stick.put_slot(dir, &b, Role::Spare);
    stick
}

#[test]
fn an_entry_names_the_kernel_the_initrds_in_order_and_the_command_line() {
    let entry = BootEntry::in_slot("b", "build x", true, "console=ttyS0 panic=1\n");
    assert_eq!(
        uefi::entry(&entry),
        "# Written by cargo xtask; its name says its role (see loader.conf).\n\
         title   ramnas slot b: build x\n\
         linux   /slots/b/vmlinuz\n\
         initrd  /slots/b/ucode.img\n\
         initrd  /slots/b/initramfs\n\
         options console=ttyS0 panic=1 ramnas.slot=b\n"
    );
    // syslinux boots the same files with the same command line.
    let cfg = syslinux::config(&[entry], "b");
    assert!(
        cfg.contains(
            "  KERNEL /slots/b/vmlinuz\n  INITRD /slots/b/ucode.img,/slots/b/initramfs\n  \
             APPEND console=ttyS0 panic=1 ramnas.slot=b\n"
        ),
        "{cfg}"
    );
}

#[test]
fn missing_systemd_boot_names_the_packages() {
    let dir = common::tempdir();
    let err = uefi::find_in(&[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    for want in [
        "systemd-bootx64.efi",
        dir.path().to_str().unwrap(),
        "apt-get install systemd-boot-efi",
        "apk add systemd-boot;",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

#[test]
fn file_names_sort_the_way_systemd_boot_must_boot_them() {
    let names = |v: &[(&str, Role)]| -> View {
        View::from_names(v.iter().map(|(l, r)| uefi::file_name(l, *r))).unwrap()
    };
    let trial = Role::Trial { left: 1, done: 0 };
    let spent = Role::Trial { left: 0, done: 1 };
    let default = Role::Default { generation: 1 };
    for (d, o) in [("a", "b"), ("b", "a")] {
        assert_eq!(
            names(&[(d, default), (o, Role::Spare)]).next_boot(),
            Some(d)
        );
        assert_eq!(names(&[(d, default), (o, trial)]).next_boot(), Some(o));
        assert_eq!(names(&[(d, default), (o, spent)]).next_boot(), Some(d));
        let v = names(&[(d, default), (o, spent)]);
        assert_eq!(v.failed_trial(), Some(o));
        assert_eq!(v.trial(), None);
    }
    assert_eq!(
        uefi::parse_file_name("ramnas-trial-b+0-1.conf"),
        Some(("b".into(), Role::Trial { left: 0, done: 1 }))
    );
    assert_eq!(
        uefi::parse_file_name("ramnas-trial-b+3.conf"),
        Some(("b".into(), Role::Trial { left: 3, done: 0 }))
    );
    assert_eq!(uefi::parse_file_name("ramnas-b.conf.tmp"), None);
    assert_eq!(uefi::parse_file_name("other.efi"), None);
    let err = View::from_names(["ramnas-a.conf", "ramnas-default-a.conf"]).unwrap_err();
    assert!(err.to_string().contains("two entries for slot a"), "{err}");
    // Commit: the trial is promoted before the old default steps down.
    let v = names(&[("a", default), ("b", spent)]);
    assert_eq!(
        uefi::renames(&v, "b", None).unwrap(),
        [
            (
                "loader/entries/ramnas-trial-b+0-1.conf".to_string(),
                "loader/entries/ramnas-default-2-b.conf".to_string()
            ),
            (
                "loader/entries/ramnas-default-1-a.conf".to_string(),
                "loader/entries/ramnas-a.conf".to_string()
            ),
        ]
    );
    assert!(uefi::renames(&names(&[("a", default)]), "b", None).is_err());
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn ovmf_boots_the_committed_slot_then_a_trial_once_then_commit_and_rollback() {
    let dir = common::tempdir();
    let dir = dir.path();
    let stick = stick_with_slots_a_and_b(dir, Init::Ready);
    let boot = |name: &str| common::boot_uefi(&stick.image, dir, name);

    assert_eq!(boot("1-committed-a"), "ramnas: ready slot=a build=build-a");

    stick.set("a", Some("b"));
    assert_eq!(boot("2-trial-b"), "ramnas: ready slot=b build=build-b");
    // systemd-boot counted the try by renaming the file.
    assert!(
        stick
            .entry_names()
            .contains(&"ramnas-trial-b+0-1.conf".to_string()),
        "{:?}",
        stick.entry_names()
    );
    assert_eq!(
        boot("3-uncommitted-trial-falls-back"),
        "ramnas: ready slot=a build=build-a"
    );

    stick.set("b", None);
    assert_eq!(boot("4-committed-b"), "ramnas: ready slot=b build=build-b");

    stick.set("a", None);
    assert_eq!(
        boot("5-rolled-back-a"),
        "ramnas: ready slot=a build=build-a"
    );
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn ovmf_panicking_trial_falls_back_to_the_committed_slot_by_itself() {
    let dir = common::tempdir();
    let dir = dir.path();
    let stick = stick_with_slots_a_and_b(dir, Init::Panic);
    stick.set("a", Some("b"));
    let mut m = common::uefi_machine(&stick.image, dir);
    m.reboot = true;
    let mut vm = common::start(&m, dir, "trial-panics");
    vm.expect(
        r"Kernel command line: .*ramnas\.slot=b",
        common::BOOT_TIMEOUT,
    )
    .unwrap();
    vm.expect(qemu::PANIC, common::BOOT_TIMEOUT).unwrap();
    let line = vm
        .expect("^ramnas: ready slot=", common::BOOT_TIMEOUT)
        .unwrap();
    assert_eq!(line, "ramnas: ready slot=a build=build-a");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let view = stick.view();
    assert_eq!(view.failed_trial(), Some("b"), "{view:?}");
    assert_eq!(view.committed(), Some("a"));
}

/// The fixture built by the real `cargo xtask build --base` (its full manifest: slots read it whole).
fn fixture_build(dir: &Path, marker: &str) -> PathBuf {
    common::build_fixture(dir, &Fixture::new(marker), &format!("out-{marker}"), &[])
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn the_image_boots_under_seabios_and_ovmf() {
    let dir = common::tempdir();
    let dir = dir.path();
    let out = fixture_build(dir, "hybrid");
    let img = common::make_stick(dir, &out);
    let mut st = xtask::stick::open(img.to_str().unwrap()).unwrap();
    let view = uefi::read_view(&mut *st).unwrap();
    assert_eq!(view.committed(), Some("a"), "{view:?}");
    assert_eq!(view.next_boot(), Some("a"));
    assert_eq!(
        st.read(uefi::LOADER_CONF).unwrap(),
        uefi::loader_conf().into_bytes()
    );
    assert_eq!(
        st.read(uefi::BOOTLOADER).unwrap(),
        fs::read(uefi::find().unwrap().boot).unwrap()
    );
    st.close().unwrap();

    common::assert_boots_bios_then_uefi(&img, dir, "hybrid", "ramnas: ready slot=a build=hybrid");
}

/// A build whose tree holds Alpine's syslinux and systemd-boot (here the host's files, at the paths
/// Alpine's packages use, with a changed MBR so the stick shows whose it got) carries them: the manifest
/// and `status` say so, and `image` makes a stick from them alone — the host's out of reach — that boots
/// under SeaBIOS and OVMF. The same build without them cannot be made into a stick that way.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boot_loaders_from_the_tree_make_the_stick() {
    let dir = common::tempdir();
    let dir = dir.path();
    let host_syslinux = syslinux::find().unwrap();
    let host_uefi = uefi::find().unwrap();
    // The MBR code with its error message changed: harmless, and unlike the host's.
    let mut mbr = fs::read(&host_syslinux.mbr).unwrap();
    let at = mbr
        .windows(7)
        .position(|w| w == b"Missing")
        .expect("the MBR's message");
    mbr[at] = b'm';
    let own_mbr = dir.join("mbr.bin");
    fs::write(&own_mbr, &mbr).unwrap();

    let mut fixture = Fixture::new("own-boot");
    fixture
        .copies
        .push((own_mbr, "usr/share/syslinux/mbr.bin".into()));
    for module in syslinux::MODULES {
        fixture.copies.push((
            host_syslinux.modules.join(module),
            format!("usr/share/syslinux/{module}"),
        ));
    }
    fixture
        .host_programs
        .push(host_syslinux.installer.display().to_string());
    fixture
        .copies
        .push((host_syslinux.installer.clone(), "usr/bin/syslinux".into()));
    fixture.copies.push((
        host_uefi.boot.clone(),
        format!("usr/lib/systemd/boot/efi/{}", uefi::SYSTEMD_BOOT),
    ));
    fixture
        .packages
        .push(("syslinux".into(), "6.04_pre1-r2".into()));
    fixture
        .packages
        .push(("systemd-boot".into(), "257.9-r0".into()));
    let out = common::build_fixture(dir, &fixture, "out-own", &[]);
    let manifest = xtask::boot::slots::Build::open(&out).unwrap().manifest;
    assert_eq!(
        manifest.bootloaders,
        [
            ("syslinux".to_string(), "syslinux 6.04_pre1-r2".to_string()),
            (
                "systemd-boot".to_string(),
                "systemd-boot 257.9-r0".to_string()
            ),
        ]
        .into()
    );
    assert!(out.join("bootloaders/syslinux/lib/libc.so.6").is_file());

    // The host's boot loaders out of reach: only the build's can make the stick.
    let nowhere = dir.join("nowhere");
    let image = |out: &Path| {
        common::xtask_command(
            dir,
            &["image", "--out", out.to_str().unwrap(), "--size", "192M"],
        )
        .env(syslinux::DIR_ENV, &nowhere)
        .env(uefi::DIR_ENV, &nowhere)
        .output()
        .unwrap()
    };
    let made = common::ok(&image(&out));
    assert!(made.contains("syslinux: the build's"), "{made}");
    assert!(made.contains("systemd-boot: the build's"), "{made}");
    let img = out.join("boot.img");
    assert_eq!(
        fs::read(&img).unwrap()[..mbr.len()],
        mbr[..],
        "the tree's MBR"
    );
    let mut st = xtask::stick::open(img.to_str().unwrap()).unwrap();
    assert_eq!(
        st.read(uefi::BOOTLOADER).unwrap(),
        fs::read(&host_uefi.boot).unwrap()
    );
    st.close().unwrap();
    let status = common::ok(&common::xtask(dir, &["status", img.to_str().unwrap()]));
    for want in [
        "boot loaders: syslinux: the build's (syslinux 6.04_pre1-r2); systemd-boot: the build's \
         (systemd-boot 257.9-r0)",
        "  boot    carries syslinux 6.04_pre1-r2, systemd-boot 257.9-r0\n",
    ] {
        assert!(status.contains(want), "{want:?} in {status}");
    }
    common::assert_boots_bios_then_uefi(
        &img,
        dir,
        "own-boot",
        "ramnas: ready slot=a build=own-boot",
    );

    // A build without them: no stick without the host's; with the host's, the stick says so.
    let plain = fixture_build(dir, "plain");
    let err = common::failed(&image(&plain));
    assert!(err.contains(&nowhere.display().to_string()), "{err}");
    let plain_img = common::make_stick(dir, &plain);
    let status = common::ok(&common::xtask(
        dir,
        &["status", plain_img.to_str().unwrap()],
    ));
    for want in [
        format!(
            "boot loaders: syslinux: this host's ({}); systemd-boot: this host's ({})",
            host_syslinux.modules.display(),
            host_uefi.boot.parent().unwrap().display()
        ),
        "  boot    carries none (the host's are used)\n".to_string(),
    ] {
        assert!(status.contains(&want), "{want:?} in {status}");
    }
}

/// A `mv` that kills the script calling it right after its first rename of a systemd-boot entry: a power cut
/// between the renames of a commit.
const CUT_MV: &str = r#"#!/bin/sh
/bin/mv "$@" || exit
for a; do case "$a" in */loader/entries/*) kill -KILL "$PPID" ;; esac; done
"#;

/// The names under `boot`/loader/entries, sorted.
fn names_in(boot: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(boot.join(uefi::ENTRIES_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `boot` (a directory standing for the stick) with the entries `names` and a syslinux.cfg whose DEFAULT is
/// the slot that is not `running`.
fn nas_stick(boot: &Path, names: &[String], running: &str) {
    let _ = fs::remove_dir_all(boot);
    fs::create_dir_all(boot.join(uefi::ENTRIES_DIR)).unwrap();
    fs::create_dir_all(boot.join("syslinux")).unwrap();
    let other = if running == "a" { "b" } else { "a" };
    let entry = |s: &str| BootEntry::in_slot(s, "build", true, "console=ttyS0");
    fs::write(
        boot.join(syslinux::CONFIG),
        syslinux::config(&[entry("a"), entry("b")], other),
    )
    .unwrap();
    for name in names {
        fs::write(boot.join(uefi::ENTRIES_DIR).join(name), "title x\n").unwrap();
    }
}

/// The NAS's own `ramnas-slot commit` on `boot`, running slot `running`; with `cut`, killed right after its
/// first entry rename ([`CUT_MV`]). Under dash: busybox's sh runs its own `mv` whatever PATH says (the
/// script is POSIX sh; system.rs runs it under busybox in the VM). Returns the entry names it left.
fn nas_commit(dir: &Path, boot: &Path, running: &str, cut: bool) -> Vec<String> {
    let bin = dir.join("cut-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("mv"), CUT_MV).unwrap();
    fs::set_permissions(bin.join("mv"), fs::Permissions::from_mode(0o755)).unwrap();
    let cmdline = dir.join("cmdline");
    fs::write(
        &cmdline,
        format!("console=ttyS0 ramnas.build=build-{running} ramnas.slot={running}\n"),
    )
    .unwrap();
    // The slot holds the build that booted: the NAS commits nothing else.
    let slot_dir = boot.join("slots").join(running);
    fs::create_dir_all(&slot_dir).unwrap();
    fs::write(
        slot_dir.join("manifest.json"),
        format!("{{\n  \"build_id\": \"build-{running}\"\n}}\n"),
    )
    .unwrap();
    let mut cmd = Command::new("dash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../system/root/usr/sbin/ramnas-slot"))
        .arg("commit")
        .env("RAMNAS_BOOT", boot)
        .env("RAMNAS_CMDLINE", &cmdline)
        .env("RAMNAS_EFI", boot);
    if cut {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
    }
    let out = cmd.output().unwrap();
    if cut {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "not cut: {}",
            common::text(&out)
        );
    } else {
        assert!(out.status.success(), "{}", common::text(&out));
    }
    names_in(boot)
}

/// `names` after `renames`' first `n` renames: where the host's commit stops when cut.
fn host_commit(names: &[String], slot: &str, n: usize) -> Vec<String> {
    let view = View::from_names(names).unwrap();
    let mut names = names.to_vec();
    for (from, to) in uefi::renames(&view, slot, None)
        .unwrap()
        .into_iter()
        .take(n)
    {
        let at = names
            .iter()
            .position(|x| *x == from.rsplit('/').next().unwrap());
        names[at.unwrap()] = to.rsplit('/').next().unwrap().to_string();
    }
    names.sort();
    names
}

/// The NAS commits its trial, and the power goes right after the first rename: the slot it commits boots
/// (today's names, `ramnas-default-<s>.conf`, included), whichever slot it is; run again, it finishes the
/// commit. At each step its entries are the host's after as many renames.
#[test]
fn a_nas_commit_cut_after_its_first_rename_boots_the_slot_it_commits() {
    let dir = common::tempdir();
    let dir = dir.path();
    let boot = dir.join("boot");
    for (running, start) in [
        ("a", ["ramnas-default-b.conf", "ramnas-trial-a+0-1.conf"]),
        ("a", ["ramnas-default-1-b.conf", "ramnas-trial-a+0-1.conf"]),
        ("b", ["ramnas-default-9-a.conf", "ramnas-trial-b+0-1.conf"]),
        ("a", ["ramnas-a.conf", "ramnas-default-10-b.conf"]),
    ] {
        let start: Vec<String> = start.map(String::from).into();
        nas_stick(&boot, &start, running);
        let cut = nas_commit(dir, &boot, running, true);
        assert_eq!(
            View::from_names(&cut).unwrap().next_boot(),
            Some(running),
            "committing {running} from {start:?}, cut: {cut:?}"
        );
        assert_eq!(cut, host_commit(&start, running, 1), "from {start:?}");
        let done = nas_commit(dir, &boot, running, false);
        assert_eq!(
            done,
            host_commit(&start, running, usize::MAX),
            "from {start:?}"
        );
        let view = View::from_names(&done).unwrap();
        assert_eq!((view.committed(), view.trial()), (Some(running), None));
        assert_eq!(view.entries.len(), 2, "{done:?}");
    }
}

/// The same cut on a stick of today's names (`ramnas-default-b.conf`, a's trial spent): the real
/// systemd-boot boots slot a.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn ovmf_boots_the_slot_a_nas_commit_cut_after_its_first_rename_commits() {
    let dir = common::tempdir();
    let dir = dir.path();
    let stick = Stick::create(dir);
    let a = fixture_slot(dir, "a", "build-a", Init::Ready, "console=ttyS0 panic=1");
    let b = fixture_slot(dir, "b", "build-b", Init::Ready, "console=ttyS0 panic=1");
    stick.put_slot_named(dir, &a, "ramnas-trial-a+0-1.conf");
    stick.put_slot_named(dir, &b, "ramnas-default-b.conf");
    let mut start = stick.entry_names();
    start.sort();
    let boot = dir.join("nas");
    nas_stick(&boot, &start, "a");
    let cut = nas_commit(dir, &boot, "a", true);
    let from: Vec<&String> = start.iter().filter(|n| !cut.contains(n)).collect();
    let to: Vec<&String> = cut.iter().filter(|n| !start.contains(n)).collect();
    assert_eq!((from.len(), to.len()), (1, 1), "{start:?} → {cut:?}");
    run(stick
        .mtool("mren")
        .arg(format!("::/{}/{}", uefi::ENTRIES_DIR, from[0]))
        .arg(to[0]));
    let mut names = stick.entry_names();
    names.sort();
    assert_eq!(names, cut);
    assert_eq!(
        common::boot_uefi(&stick.image, dir, "cut-commit"),
        "ramnas: ready slot=a build=build-a"
    );
}
