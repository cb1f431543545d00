//! `cargo xtask image`: the fixture build in a stick image, booted by SeaBIOS through syslinux; the image's
//! partition table, file system and layout checked with sfdisk, fsck.vfat and mtools; reproducible bytes;
//! the size and syslinux errors; and the ADV's boot-once, written by our code, obeyed by a real ldlinux.

use crate::common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use xtask::{
    boot::slots::{self, Build, Slot, Table},
    boot::syslinux,
    dev::fixture::Fixture,
    stick,
};

/// The fixture with `marker`, built by `cargo xtask build --base` into DIR/out-<marker>.
fn build(dir: &Path, marker: &str) -> PathBuf {
    build_with(dir, Fixture::new(marker))
}

fn build_with(dir: &Path, fixture: Fixture) -> PathBuf {
    let name = format!("out-{}", fixture.build);
    common::build_fixture(dir, &fixture, &name, &[])
}

/// A manifest for hand-made build files (the fake builds of the error tests), in `build`'s format.
fn write_manifest(out: &Path, build_id: &str) {
    let mut artifacts = std::collections::BTreeMap::new();
    for name in ["vmlinuz", "initramfs", "cmdline", "ucode.img"] {
        if out.join(name).exists() {
            artifacts.insert(
                name.to_string(),
                xtask::build::manifest::Artifact::of(&out.join(name)).unwrap(),
            );
        }
    }
    let manifest = xtask::build::manifest::Manifest {
        build_id: build_id.to_string(),
        source_date: 0,
        git_commit: None,
        git_dirty: false,
        alpine_branch: "v3.22".into(),
        kernel_version: None,
        compression: xtask::build::compress::Compression::None,
        cmdline: fs::read_to_string(out.join("cmdline"))
            .unwrap()
            .trim()
            .to_string(),
        packages: Default::default(),
        artifacts,
        initrds: Vec::new(),
        bootloaders: Default::default(),
        root_ssh_keys: None,
        tests: None,
    };
    fs::write(out.join("manifest.json"), manifest.to_json()).unwrap();
}

/// A build of hand-made files DIR/small/{vmlinuz,initramfs,cmdline} and their manifest (build id `small`):
/// enough for `cargo xtask image`, never booted.
fn small_fake_build(dir: &Path) -> PathBuf {
    let out = dir.join("small");
    fs::create_dir_all(&out).unwrap();
    for name in ["vmlinuz", "initramfs", "cmdline"] {
        fs::write(out.join(name), name).unwrap();
    }
    write_manifest(&out, "small");
    out
}

/// Where the build's file `name` is on the stick: `/parts/<its SHA-256's first 16 hex digits>`.
fn part_of(out: &Path, name: &str) -> String {
    let m = Build::open(out).unwrap().manifest;
    format!("/{}", slots::part_path(&m.artifacts[name].sha256))
}

/// The syslinux INITRD value of the build in `out`: its initrds' parts, in load order.
fn initrd_line(out: &Path) -> String {
    let m = Build::open(out).unwrap().manifest;
    let parts: Vec<String> = m.initrds().iter().map(|n| part_of(out, n)).collect();
    parts.join(",")
}

/// The fixture builds `a` and `b`, and a stick made from `a` (slot a); returns the stick and build `b`.
fn stick_of_a_and_build_b(dir: &Path) -> (PathBuf, PathBuf) {
    let out_a = build(dir, "a");
    let out_b = build(dir, "b");
    (common::make_stick(dir, &out_a), out_b)
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn image_boots_slot_a_under_seabios() {
    let dir = common::tempdir();
    let mut fixture = Fixture::new("img-a");
    fixture.ucode = true;
    let out = build_with(dir.path(), fixture);
    assert!(out.join("ucode.img").exists());
    let img = common::make_stick(dir.path(), &out);
    let spec = format!("{}@@1M", img.display());
    let cfg = common::run("mtype", &["-i", &spec, "::/syslinux/syslinux.cfg"]);
    let initrd = initrd_line(&out);
    assert!(
        initrd.starts_with(&format!("{},", part_of(&out, "ucode.img"))),
        "microcode first: {initrd}"
    );
    assert!(cfg.contains(&format!("INITRD {initrd}\n")), "{cfg}");
    let (line, console) = common::boot_to_ready(&common::bios_machine(&img), dir.path(), "boot");
    assert_eq!(line, "ramnas: ready slot=a build=img-a");
    // The menu was on the serial console too, slot a marked as the default.
    let id = Build::open(&out).unwrap().manifest.build_id;
    let entry = format!("slot a: build {id}, kernel ");
    assert!(
        console
            .iter()
            .any(|l| l.contains(&entry) && l.contains(" (default)")),
        "{entry} not in {console:#?}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn image_layout_is_as_specified_and_reproducible() {
    let dir = common::tempdir();
    let out = build(dir.path(), "layout");
    let img = common::make_stick(dir.path(), &out);
    assert_eq!(fs::metadata(&img).unwrap().len(), 192 << 20);
    assert!(!out.join("boot.img.tmp").exists());

    let dump = common::run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(dump.contains("label: dos\n"), "{dump}");
    assert!(dump.contains("label-id: 0x52414d4e\n"), "{dump}");
    let parts: Vec<&str> = dump.lines().filter(|l| l.contains(" : start=")).collect();
    assert_eq!(parts.len(), 1, "{dump}");
    let fields: Vec<String> = parts[0]
        .split(':')
        .nth(1)
        .unwrap()
        .split(',')
        .map(|f| f.split_whitespace().collect::<Vec<_>>().join(""))
        .collect();
    assert_eq!(
        fields,
        [
            "start=2048",
            &format!("size={}", (192 << 11) - 2048),
            "type=c",
            "bootable"
        ],
        "{dump}"
    );

    // fsck.vfat on the partition, cut out of the image.
    let part = dir.path().join("part.img");
    common::run(
        "dd",
        &[
            &format!("if={}", img.display()),
            &format!("of={}", part.display()),
            "bs=1M",
            "skip=1",
            "status=none",
        ],
    );
    let fsck = Command::new("fsck.vfat")
        .args(["-n", part.to_str().unwrap()])
        .output()
        .unwrap();
    let report = common::text(&fsck);
    assert!(fsck.status.success(), "{report}");
    assert!(!report.contains("Dirty"), "{report}");
    // Its whole report: the version line and the summary line, nothing to fix.
    assert_eq!(report.lines().count(), 2, "{report}");

    let spec = format!("{}@@1M", img.display());
    let mdir = |path: &str| common::run("mdir", &["-a", "-b", "-i", &spec, path]);
    let root = mdir("::/");
    for d in ["::/syslinux/", "::/slots/", "::/parts/", "::/persist/"] {
        assert!(root.contains(d), "{d} missing from {root}");
    }
    let minfo = common::run("minfo", &["-i", &spec, "::"]);
    assert!(minfo.contains("serial number: 52414D4E"), "{minfo}");
    assert!(minfo.contains("disk type=\"FAT32   \""), "{minfo}");
    let syslinux = mdir("::/syslinux");
    for f in [
        "ldlinux.sys",
        "ldlinux.c32",
        "menu.c32",
        "libutil.c32",
        "libcom32.c32",
        "syslinux.cfg",
    ] {
        assert!(
            syslinux.contains(&format!("::/syslinux/{f}")),
            "{f} missing from {syslinux}"
        );
    }
    // Slot a holds its manifest; its files are in /parts by content, byte for byte the build's.
    assert_eq!(mdir("::/slots/a").trim(), "::/slots/a/manifest.json");
    let names: Vec<String> = Build::open(&out)
        .unwrap()
        .manifest
        .artifacts
        .into_keys()
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        let part = part_of(&out, name);
        assert_eq!(
            fs::read(out.join(name)).unwrap(),
            run_bytes("mtype", &["-i", &spec, &format!("::{part}")]),
            "{name} as {part}"
        );
    }
    assert_eq!(mdir("::/parts").lines().count(), names.len());
    assert_eq!(mdir("::/slots/b").trim(), "");
    // Every timestamp is 1980-01-01 00:00, whoever wrote the file.
    let listing = common::run("mdir", &["-/", "-a", "-i", &spec, "::"]);
    let date = regex::Regex::new(r" \d{4}-\d\d-\d\d ").unwrap();
    let dated: Vec<&str> = listing.lines().filter(|l| date.is_match(l)).collect();
    assert!(dated.len() > 10, "{listing}");
    for line in dated {
        assert!(line.contains(" 1980-01-01   0:00"), "{line}");
    }
    assert_eq!(mdir("::/persist").trim(), "");
    // The UEFI path on the same partition: systemd-boot, its config, slot a's entry as the committed slot,
    // naming the files syslinux boots with the same command line.
    let efi = mdir("::/EFI/BOOT") + &mdir("::/loader/entries") + &mdir("::/loader");
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/entries/ramnas-default-1-a.conf",
        "::/loader/loader.conf",
    ] {
        assert!(efi.contains(f), "{f} missing from {efi}");
    }
    let entry = common::run(
        "mtype",
        &["-i", &spec, "::/loader/entries/ramnas-default-1-a.conf"],
    );
    assert!(root.contains("::/syslinux.cfg"), "{root}");
    let cfg = common::run("mtype", &["-i", &spec, "::/syslinux/syslinux.cfg"]);
    assert_eq!(cfg, common::run("mtype", &["-i", &spec, "::/syslinux.cfg"]));
    assert!(cfg.contains("DEFAULT a\n"), "{cfg}");
    let cmdline = fs::read_to_string(out.join("cmdline")).unwrap();
    assert!(
        cfg.contains(&format!("APPEND {} ramnas.slot=a\n", cmdline.trim())),
        "{cfg}"
    );
    assert!(!cfg.contains("LABEL b"), "{cfg}");
    assert!(
        cfg.contains(&format!(
            "  KERNEL {}\n  INITRD {}\n",
            part_of(&out, "vmlinuz"),
            initrd_line(&out)
        )),
        "{cfg}"
    );
    // systemd-boot's entry names the same files, one initrd a line, and the same command line.
    let initrds: String = initrd_line(&out)
        .split(',')
        .map(|p| format!("initrd  {p}\n"))
        .collect();
    assert!(
        entry.contains(&format!(
            "linux   {}\n{initrds}options {} ramnas.slot=a\n",
            part_of(&out, "vmlinuz"),
            cmdline.trim()
        )),
        "{entry}"
    );

    // Our own reader agrees.
    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    assert_adv_is_ours(&mut *s);
    let table = Table::read(&mut *s).unwrap();
    assert_eq!(table.default, Some(Slot::A));
    assert_eq!(table.boot_once, None);
    assert_eq!(table.slots.keys().copied().collect::<Vec<_>>(), [Slot::A]);
    assert_eq!(
        table.slots[&Slot::A].manifest,
        Build::open(&out).unwrap().manifest
    );
    assert_eq!(
        table.slots[&Slot::A].manifest_json,
        fs::read(out.join("manifest.json")).unwrap()
    );
    drop(s);

    // A second run gives the same bytes.
    let again = out.join("again.img");
    common::xtask_ok(
        dir.path(),
        &[
            "image",
            "--out",
            out.to_str().unwrap(),
            "--size",
            "192M",
            "--output",
            again.to_str().unwrap(),
        ],
    );
    assert!(
        fs::read(&img).unwrap() == fs::read(&again).unwrap(),
        "two images of the same build differ"
    );
}

/// Opens the stick image `img`, runs `f` on it and closes it (writing back what `f` changed).
fn on_stick<T>(img: &Path, f: impl FnOnce(&mut dyn stick::Stick) -> T) -> T {
    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    let result = f(&mut *s);
    s.close().unwrap();
    result
}

/// The ADV at the end of ldlinux.sys, as syslinux wrote it, is exactly what our parser and writer make of
/// it (an ADV with a bad checksum would parse as empty and be written back differently).
fn assert_adv_is_ours(s: &mut dyn stick::Stick) {
    let ldlinux = s.read(syslinux::LDLINUX_SYS).unwrap();
    let raw = &ldlinux[ldlinux.len() - syslinux::Adv::SIZE..];
    let adv = slots::read_adv(s).unwrap();
    assert_eq!(&adv.to_bytes()[..], raw);
}

fn run_bytes(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}");
    out.stdout
}

/// A build whose files are sparse and large, for the size check; never booted.
fn big_fake_build(dir: &Path) -> PathBuf {
    let out = dir.join("big");
    fs::create_dir_all(&out).unwrap();
    fs::File::create(out.join("vmlinuz"))
        .unwrap()
        .set_len(10 << 20)
        .unwrap();
    fs::File::create(out.join("initramfs"))
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    fs::write(out.join("cmdline"), "console=ttyS0\n").unwrap();
    write_manifest(&out, "big");
    out
}

#[test]
fn too_small_says_how_much_is_needed_before_writing() {
    let dir = common::tempdir();
    let out = big_fake_build(dir.path());
    let text = common::failed(&common::xtask(
        dir.path(),
        &["image", "--out", out.to_str().unwrap(), "--size", "512M"],
    ));
    assert!(text.contains("too small"), "{text}");
    // 3 × 310 MiB (3 copies of the slot) + 16 MiB, plus 1/32, plus the MiB before the partition.
    let needed = Build::open(&out)
        .map(|b| xtask::cmd::image::needed_bytes(&b))
        .unwrap()
        >> 20;
    assert!((960..1000).contains(&needed), "{needed}");
    assert!(text.contains(&format!("--size {needed}M")), "{text}");
    assert!(!out.join("boot.img").exists());
    assert!(!out.join("boot.img.tmp").exists());
    let ok = needed.to_string() + "M";
    common::xtask_ok(
        dir.path(),
        &["image", "--out", out.to_str().unwrap(), "--size", &ok],
    );
}

#[test]
fn missing_syslinux_names_the_package() {
    let dir = common::tempdir();
    let out = small_fake_build(dir.path());
    let empty = dir.path().join("no-syslinux");
    fs::create_dir_all(&empty).unwrap();
    let res = common::xtask_command(
        dir.path(),
        &["image", "--out", out.to_str().unwrap(), "--size", "64M"],
    )
    .env("RAMNAS_SYSLINUX_DIR", &empty)
    .output()
    .unwrap();
    let text = common::failed(&res);
    assert!(text.contains("apt-get install syslinux"), "{text}");
    assert!(text.contains(&empty.display().to_string()), "{text}");
    assert!(!out.join("boot.img").exists());
    assert!(!out.join("boot.img.tmp").exists());
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boot_once_in_the_adv_boots_slot_b_once_then_slot_a() {
    let dir = common::tempdir();
    let (img, out_b) = stick_of_a_and_build_b(dir.path());
    on_stick(&img, |s| {
        slots::install(s, Slot::B, &Build::open(&out_b).unwrap()).unwrap();
        slots::write_boot_config(s, Slot::A).unwrap();
        slots::set_boot_once(s, Some("b")).unwrap();
        let table = Table::read(s).unwrap();
        assert_eq!(table.trial(), Some(Slot::B));
        assert_eq!(table.default, Some(Slot::A));
    });
    assert_eq!(
        common::boot_bios(&img, dir.path(), "first"),
        "ramnas: ready slot=b build=b"
    );
    // ldlinux cleared the boot-once command in its ADV; our reader sees that.
    on_stick(&img, |s| {
        assert_adv_is_ours(s);
        let table = Table::read(s).unwrap();
        assert_eq!(table.boot_once, None);
        assert_eq!(table.slots.len(), 2);
    });
    assert_eq!(
        common::boot_bios(&img, dir.path(), "second"),
        "ramnas: ready slot=a build=a"
    );
}

/// ldlinux reads /syslinux/syslinux.cfg, and the copy at the root when that one is gone (as after a crash
/// between removing it and renaming its replacement into place).
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn the_root_config_is_the_fallback() {
    let dir = common::tempdir();
    let (img, out_b) = stick_of_a_and_build_b(dir.path());
    let entries = on_stick(&img, |s| {
        slots::install(s, Slot::B, &Build::open(&out_b).unwrap()).unwrap();
        // Both copies say b; then the one in /syslinux goes back to a, as if a commit stopped halfway.
        slots::write_boot_config(s, Slot::B).unwrap();
        assert_eq!(
            s.read(syslinux::FALLBACK_CONFIG).unwrap(),
            s.read(syslinux::CONFIG).unwrap()
        );
        let cfg = String::from_utf8(s.read(syslinux::CONFIG).unwrap()).unwrap();
        let old = cfg.replace("DEFAULT b\n", "DEFAULT a\n");
        s.replace(syslinux::CONFIG, old.as_bytes()).unwrap();
        assert_eq!(Table::read(s).unwrap().default, Some(Slot::A));
        syslinux::labels(&cfg)
    });
    assert_eq!(entries, ["a", "b"]);
    assert_eq!(
        common::boot_bios(&img, dir.path(), "primary"),
        "ramnas: ready slot=a build=a"
    );
    on_stick(&img, |s| {
        s.remove(syslinux::CONFIG).unwrap();
        assert_eq!(Table::read(s).unwrap().default, Some(Slot::B));
    });
    assert_eq!(
        common::boot_bios(&img, dir.path(), "fallback"),
        "ramnas: ready slot=b build=b"
    );
}

/// The same stick through a whole-disk block device (a loop device over the image).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_block_device_opens_like_the_image() {
    let dir = common::tempdir();
    let out = small_fake_build(dir.path());
    let img = common::make_stick(dir.path(), &out);
    let dev = common::Loop::attach_partitioned(&img);
    let mut s = stick::open(dev.path()).unwrap();
    assert!(s.describe().contains(dev.path()), "{}", s.describe());
    let table = Table::read(&mut *s).unwrap();
    assert_eq!(table.default, Some(Slot::A));
    assert_eq!(table.slots[&Slot::A].manifest.build_id, "small");
    slots::set_boot_once(&mut *s, Some("a ramnas.trial=1")).unwrap();
    s.close().unwrap();
    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    assert_eq!(
        Table::read(&mut *s).unwrap().boot_once.as_deref(),
        Some("a ramnas.trial=1")
    );
}

/// An ordinary user makes the image: no root, no mount, no loop device.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn an_ordinary_user_makes_the_image() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = small_fake_build(dir.path());
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let res = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--reset-env",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--out", out.to_str().unwrap(), "--size", "64M"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", common::text(&res));
    let img = out.join("boot.img");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&img).unwrap().uid(), 65534);
    let mut s = stick::open(img.to_str().unwrap()).unwrap();
    assert_eq!(Table::read(&mut *s).unwrap().default, Some(Slot::A));
}
