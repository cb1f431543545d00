//! `cargo xtask flash` on real loop devices (as root): the written bytes, the partition the kernel finds,
//! a SeaBIOS boot from the flashed device, every refusal with the device left untouched, /persist carried
//! over a re-flash, and Ctrl-C.

use crate::common;

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use common::Loop;
use sha2::{Digest, Sha256};
use xtask::{
    cmd::flash,
    dev::fixture::Fixture,
    host::blockdev::{self, Host},
};

const MIB: u64 = 1 << 20;
/// The test images' size: what `cargo xtask image` accepts for the fixture build, with room to spare.
const IMAGE: u64 = 160 * MIB;

fn require_root() {
    assert!(
        xtask::host::is_root(),
        "the flash tests need root (loop devices, mount, swapon)"
    );
}

/// Undoes a mount or swapon on drop.
struct Undo(&'static str, String);

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = Command::new(self.0).arg(&self.1).status();
    }
}

fn sha256_of(path: &Path) -> [u8; 32] {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// A device of `size` bytes that looks used: old bytes everywhere, a GPT (primary and backup) with an ext2
/// partition at 1 MiB, and an ISO9660 signature at 32 KiB (a stick that once held a dd'ed installer), so the
/// flash has old data and signatures to get rid of.
fn old_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let file = dir.join(name);
    let f = file.to_str().unwrap();
    fs::write(&file, vec![0xa5u8; size as usize]).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--wipe", "never", f])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let part_sectors = size / 512 - 2048 - 2048;
    let script = format!("label: gpt\nstart=2048, size={part_sectors}, type=linux\n");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let blocks = (part_sectors / 2).to_string();
    common::run(
        "mkfs.ext2",
        &[
            "-q",
            "-F",
            "-E",
            &format!("nodiscard,offset={MIB}"),
            f,
            &blocks,
        ],
    );
    let dev = fs::OpenOptions::new().write(true).open(&file).unwrap();
    dev.write_all_at(b"\x01CD001\x01", 32768).unwrap();
    file
}

/// The signatures `wipefs` finds on a device (types, such as `dos`, `gpt`, `PMBR`, `ext2`, `iso9660`).
fn signatures(dev: &str) -> Vec<String> {
    common::run(
        "wipefs",
        &["--no-act", "--noheadings", "--output", "TYPE", dev],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The fixture built once per test run with `cargo xtask build --base` (shared by every test here).
fn fixture_build() -> &'static Path {
    static BUILD: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BUILD
        .get_or_init(|| {
            let dir = common::tempdir();
            let out = common::build_fixture(dir.path(), &Fixture::new("flash"), "out", &[]);
            (dir, out)
        })
        .1
}

/// A stick image of `size` bytes made by `cargo xtask image` from the fixture build (boots slot a), plus
/// `filler` bytes of patterned files and a 4 MiB file of zeros, with every zero block turned into a hole
/// (as a sparse copy of an image would have them; also inside /zeros), so the image has several data
/// ranges and holes inside allocated clusters.
fn stick_image(dir: &Path, size: u64, filler: u64) -> PathBuf {
    let img = dir.join("stick.img");
    let s = img.to_str().unwrap();
    let out = fixture_build().to_str().unwrap();
    let size_arg = format!("{}M", size / MIB);
    common::xtask_ok(
        dir,
        &["image", "--out", out, "--size", &size_arg, "--output", s],
    );
    let pattern: Vec<u8> = (0..filler / 2).map(|i| (i * 7 % 251) as u8 + 1).collect();
    fs::write(dir.join("filler1"), &pattern).unwrap();
    fs::write(dir.join("filler2"), &pattern).unwrap();
    fs::write(dir.join("zeros"), vec![0u8; 4 * MIB as usize]).unwrap();
    let at = format!("{s}@@{MIB}");
    for f in ["filler1", "zeros", "filler2"] {
        let from = dir.join(f);
        common::run(
            "mcopy",
            &["-i", &at, from.to_str().unwrap(), &format!("::/{f}")],
        );
    }
    common::run("fallocate", &["--dig-holes", s]);
    img
}

/// The data ranges of a sparse file, by SEEK_DATA/SEEK_HOLE.
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(start) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) else {
            break;
        };
        let end = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(start)).unwrap();
        out.push((start, end));
        pos = end;
    }
    out
}

fn read_at(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, off)
        .unwrap();
    buf
}

/// `blkid -p -o export DEV` as KEY=VALUE lines (empty when it finds nothing).
fn blkid(dev: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask flash TARGET --image IMG EXTRA…`, to run.
fn flash_command(target: &str, img: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["flash", target, "--image", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    common::xtask_command(Path::new("/"), &args)
}

fn flash_cli(target: &str, img: &Path, extra: &[&str]) -> Output {
    flash_command(target, img, extra).output().unwrap()
}

fn flash_ok(dev: &Loop, img: &Path, extra: &[&str]) -> String {
    common::ok(&flash_cli(dev.path(), img, extra))
}

/// The library's options for a disk that is not removable (as a loop device is not).
fn forced() -> flash::Options {
    flash::Options {
        force: true,
        ..Default::default()
    }
}

/// A file of `size` zero bytes (sparse), to put a loop device over.
fn blank_disk(dir: &Path, size: u64) -> PathBuf {
    let disk = dir.join("disk");
    File::create(&disk).unwrap().set_len(size).unwrap();
    disk
}

/// A temp dir with a stick image from [`stick_image`] and a loop device over an [`old_disk`] of `size` bytes.
fn stick_and_old_disk(size: u64) -> (tempfile::TempDir, PathBuf, Loop) {
    let dir = common::tempdir();
    let img = stick_image(dir.path(), IMAGE, MIB);
    let dev = Loop::attach(&old_disk(dir.path(), "disk", size));
    (dir, img, dev)
}

/// A stick image from [`stick_image`] and a loop device, with its partitions, over a copy of it.
fn stick_on_a_loop_device(dir: &Path) -> (PathBuf, Loop) {
    let img = stick_image(dir, IMAGE, MIB);
    let disk = dir.join("disk");
    fs::copy(&img, &disk).unwrap();
    (img, Loop::attach_partitioned(&disk))
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn flashes_data_ranges_rereads_the_table_and_boots() {
    require_root();
    let dir = common::tempdir();
    let img = stick_image(dir.path(), IMAGE, 3 * MIB);
    let disk = old_disk(dir.path(), "disk", IMAGE + 32 * MIB);
    let dev = Loop::attach_partitioned(&disk);
    let old = signatures(dev.path());
    assert!(old.contains(&"gpt".to_string()), "{old:?}");
    assert!(
        blkid(&format!("{}p1", dev.path())).contains("TYPE=ext2"),
        "the old disk should look used"
    );

    let log = flash_ok(&dev, &img, &["--yes", "--force"]);
    assert!(log.contains("verified"), "{log}");

    // Every data range of the image is on the device, byte for byte.
    let ranges = data_ranges(&img);
    assert!(
        ranges.len() >= 3,
        "the test image should have holes: {ranges:?}"
    );
    let data: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    assert!(
        data < IMAGE / 2,
        "the test image should be sparse ({data} bytes of data)"
    );
    for (start, end) in ranges {
        assert!(
            read_at(&img, start, end - start) == read_at(&dev.dev, start, end - start),
            "bytes {start}..{end} differ"
        );
    }
    // The old signatures are gone: the last MiB (GPT backup) is zero, blkid sees only the new table.
    assert!(read_at(&dev.dev, IMAGE + 31 * MIB, MIB)
        .iter()
        .all(|b| *b == 0));
    let whole = blkid(dev.path());
    assert!(whole.contains("PTTYPE=dos"), "{whole}");
    assert_eq!(signatures(dev.path()), ["dos"]);
    // The kernel re-read the table: the partition is there, a clean FAT32 labelled RAMNAS.
    let part = format!("{}p1", dev.path());
    assert!(Path::new(&format!("/sys/block/{}/{}p1", dev.name(), dev.name())).exists());
    let probe = blkid(&part);
    assert!(
        probe.contains("TYPE=vfat") && probe.contains("LABEL=RAMNAS"),
        "{probe}"
    );
    common::run("fsck.vfat", &["-n", &part]);
    // /zeros is all holes in the image, yet reads as zeros from the device, not as the old 0xa5 bytes.
    let zeros = dir.path().join("zeros.back");
    common::run("mcopy", &["-i", &part, "::/zeros", zeros.to_str().unwrap()]);
    assert!(fs::read(&zeros).unwrap().iter().all(|b| *b == 0));

    // SeaBIOS boots the flashed device.
    assert_eq!(
        common::boot_bios(&dev.dev, dir.path(), "boot"),
        "ramnas: ready slot=a build=flash"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_library_call_flashes_without_asking() {
    require_root();
    let (_dir, img, dev) = stick_and_old_disk(IMAGE);
    let stats = flash::write_image(&img, &dev.dev, &forced()).unwrap();
    assert!(
        stats.written >= 2 * MIB && stats.written < IMAGE / 2,
        "{stats:?}"
    );
    let p1 = format!("/sys/block/{}/{}p1", dev.name(), dev.name());
    assert_eq!(stats.reread, Path::new(&p1).exists(), "{stats:?}");
    assert_eq!(stats.persist_files, None);
    for (start, end) in data_ranges(&img) {
        assert!(read_at(&img, start, end - start) == read_at(&dev.dev, start, end - start));
    }
}

/// Asserts `out` failed with a message containing `why`, and the device's bytes did not change.
fn assert_refused(out: Output, why: &str, dev: &Path, before: [u8; 32]) {
    let text = common::text(&out);
    assert!(!out.status.success(), "should have refused:\n{text}");
    assert!(text.contains(why), "message should say {why:?}:\n{text}");
    assert_eq!(sha256_of(dev), before, "the device changed");
}

/// Flashes `img` onto `target` with `--yes --force` and asserts [`assert_refused`] of `dev`, the whole device.
fn assert_forced_flash_refused(target: &str, img: &Path, why: &str, dev: &Loop) {
    let before = sha256_of(&dev.dev);
    let out = flash_cli(target, img, &["--yes", "--force"]);
    assert_refused(out, why, &dev.dev, before);
}

#[test]
fn refuses_what_is_not_a_block_device() {
    let dir = common::tempdir();
    let img = dir.path().join("img");
    File::create(&img).unwrap().set_len(4 * MIB).unwrap();
    let target = dir.path().join("target");
    fs::write(&target, b"precious").unwrap();
    let text = common::failed(&flash_cli(
        target.to_str().unwrap(),
        &img,
        &["--yes", "--force"],
    ));
    assert!(
        text.contains("not a block device (it is a regular file)"),
        "{text}"
    );
    assert!(text.contains(target.to_str().unwrap()), "{text}");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_partition_naming_its_disk() {
    require_root();
    let dir = common::tempdir();
    let (img, dev) = stick_on_a_loop_device(dir.path());
    let part = format!("{}p1", dev.path());
    assert_forced_flash_refused(
        &part,
        &img,
        &format!("it is a partition of {}", dev.path()),
        &dev,
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_disk_with_a_mounted_partition() {
    require_root();
    let dir = common::tempdir();
    let (img, dev) = stick_on_a_loop_device(dir.path());
    let part = format!("{}p1", dev.path());
    common::run("mkfs.ext2", &["-q", &part]);
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    common::run("mount", &[&part, mnt.to_str().unwrap()]);
    let _unmount = Undo("umount", mnt.to_str().unwrap().to_string());
    assert_forced_flash_refused(
        dev.path(),
        &img,
        &format!("{part} is mounted on {}", mnt.display()),
        &dev,
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_disk_used_as_swap() {
    require_root();
    let dir = common::tempdir();
    let img = stick_image(dir.path(), IMAGE, MIB);
    let dev = Loop::attach(&blank_disk(dir.path(), 64 * MIB));
    common::run("mkswap", &[dev.path()]);
    common::run("swapon", &[dev.path()]);
    let _swapoff = Undo("swapoff", dev.path().to_string());
    assert_forced_flash_refused(
        dev.path(),
        &img,
        &format!("{} is in use as swap", dev.path()),
        &dev,
    );
}

/// device-mapper (dmsetup) and md are not available in this workplace's kernel, so the holder is injected
/// into the description of a real loop device.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_disk_with_holders() {
    require_root();
    let dir = common::tempdir();
    let dev = Loop::attach(&blank_disk(dir.path(), 64 * MIB));
    let mut desc = blockdev::describe(&dev.dev, &Host::read().unwrap()).unwrap();
    assert!(desc.holders.is_empty());
    assert_eq!(blockdev::refusal(&desc, 32 * MIB, true), Ok(()));
    desc.holders.push((dev.name(), "dm-7".into()));
    let err = blockdev::refusal(&desc, 32 * MIB, true).unwrap_err();
    assert!(
        err.contains(&format!("{} is in use by dm-7", dev.path())),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_the_root_disk() {
    require_root();
    let (_dir, img, dev) = stick_and_old_disk(64 * MIB);
    let mut host = Host::read().unwrap();
    let desc = blockdev::describe(&dev.dev, &host).unwrap();
    assert!(
        !host.root_disks.is_empty(),
        "this machine's / should sit on some disk"
    );
    assert!(!host.root_disks.contains(&desc.dev));
    // Pretend the loop device holds `/`.
    host.root_disks = vec![desc.dev];
    let before = sha256_of(&dev.dev);
    let err = flash::write_image_on(&host, &img, &dev.dev, &forced()).unwrap_err();
    assert!(
        format!("{err:#}").contains("holds the running system's /"),
        "{err:#}"
    );
    assert_eq!(sha256_of(&dev.dev), before);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_disk_smaller_than_the_image() {
    require_root();
    let (_dir, img, dev) = stick_and_old_disk(40 * MIB);
    assert_forced_flash_refused(dev.path(), &img, "smaller than the image", &dev);
}

/// An image `image` did not make (no RAMNAS partition for /persist) is refused before anything is written,
/// not found out after writing it and reported as an incomplete stick.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_an_image_without_a_ramnas_partition() {
    require_root();
    let dir = common::tempdir();
    let img = dir.path().join("not-ramnas.img");
    fs::write(&img, vec![0x5au8; 8 * MIB as usize]).unwrap();
    let disk = old_disk(dir.path(), "old.img", IMAGE);
    let dev = Loop::attach(&disk);
    assert_forced_flash_refused(dev.path(), &img, "not a ramnas image", &dev);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn refuses_a_fixed_disk_without_force_and_asks_for_its_name() {
    require_root();
    let (_dir, img, dev) = stick_and_old_disk(IMAGE);
    let before = sha256_of(&dev.dev);
    let out = flash_cli(dev.path(), &img, &["--yes"]);
    assert_refused(out, "not a removable disk", &dev.dev, before);

    // Without --yes, it asks: a wrong answer stops it, the device's name goes ahead.
    let answer = |text: &str| {
        let mut child = flash_command(dev.path(), &img, &["--force"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = answer("/dev/sda\n");
    assert!(common::text(&out).contains("This erases everything on"));
    assert_refused(out, "not confirmed", &dev.dev, before);
    let out = answer(&format!("{}\n", dev.path()));
    assert!(out.status.success(), "{}", common::text(&out));
    assert_ne!(sha256_of(&dev.dev), before);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn reflash_keeps_persist_and_wipe_drops_it() {
    require_root();
    let dir = common::tempdir();
    let img = stick_image(dir.path(), IMAGE, MIB);
    let disk = old_disk(dir.path(), "disk", IMAGE + 16 * MIB);
    let dev = Loop::attach_partitioned(&disk);
    flash_ok(&dev, &img, &["--yes", "--force"]);

    // The running NAS wrote its state.
    let key: Vec<u8> = (0..9000u32).map(|i| (i * 31 % 256) as u8).collect();
    let key_file = dir.path().join("ssh_host_ed25519_key");
    fs::write(&key_file, &key).unwrap();
    let at = format!("{}@@{MIB}", dev.path());
    common::run("mmd", &["-i", &at, "::/persist/ssh"]);
    common::run(
        "mcopy",
        &["-i", &at, key_file.to_str().unwrap(), "::/persist/ssh/"],
    );
    common::run(
        "mcopy",
        &["-i", &at, key_file.to_str().unwrap(), "::/persist/seed"],
    );

    let log = flash_ok(&dev, &img, &["--yes", "--force"]);
    assert!(log.contains("kept /persist (2 files)"), "{log}");
    let back = dir.path().join("back");
    common::run(
        "mcopy",
        &[
            "-i",
            &at,
            "::/persist/ssh/ssh_host_ed25519_key",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(&back).unwrap(), key);
    common::run("fsck.vfat", &["-n", &format!("{}p1", dev.path())]);

    let log = flash_ok(&dev, &img, &["--yes", "--force", "--wipe"]);
    assert!(log.contains("--wipe"), "{log}");
    let listing = common::run("mdir", &["-i", &at, "-b", "::/persist"]);
    assert!(
        !listing.contains("ssh") && !listing.contains("seed"),
        "{listing}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ctrl_c_says_the_stick_is_incomplete() {
    require_root();
    let dir = common::tempdir();
    let img = stick_image(dir.path(), 400 * MIB, 300 * MIB);
    let dev = Loop::attach(&blank_disk(dir.path(), 400 * MIB));
    // A ramnas stick with state in /persist.
    flash::write_image(&img, &dev.dev, &forced()).unwrap();
    let seed = dir.path().join("seed");
    fs::write(&seed, b"random seed bytes").unwrap();
    let at = format!("{}@@{MIB}", dev.path());
    common::run(
        "mcopy",
        &["-i", &at, seed.to_str().unwrap(), "::/persist/seed"],
    );

    let rescue = dir.path().join("rescue");
    fs::create_dir(&rescue).unwrap();
    let mut child = flash_command(dev.path(), &img, &["--yes", "--force"])
        .env("TMPDIR", &rescue)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("xtask ended before writing:\n{seen}");
        }
        seen.push_str(&line);
        if line.starts_with("writing") {
            break;
        }
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    stderr.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{seen}");
    assert!(
        seen.contains("interrupted by Ctrl-C") && seen.contains("INCOMPLETE"),
        "{seen}"
    );
    // The old /persist waits on the host, and the message says where.
    let saved: Vec<PathBuf> = fs::read_dir(&rescue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(seen.contains(saved[0].to_str().unwrap()), "{seen}");
    // Private, and named so that no one could have made it (or a link there) beforehand.
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(&saved[0]).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let predictable = format!("ramnas-persist-{}-{}", dev.name(), child.id());
    assert_ne!(saved[0].file_name().unwrap(), predictable.as_str());
    assert_eq!(
        fs::read(saved[0].join("seed")).unwrap(),
        b"random seed bytes"
    );
}

/// A file of `size` zero bytes (sparse) named `name` in `dir`.
fn blank_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let file = dir.join(name);
    File::create(&file).unwrap().set_len(size).unwrap();
    file
}

/// Runs `cargo xtask flash TARGET --image IMG --force`, waits for its prompt, runs `meanwhile`, then types
/// TARGET; returns the exit status and everything it printed.
fn confirm_after(
    target: &Path,
    img: &Path,
    meanwhile: impl FnOnce(),
) -> (std::process::ExitStatus, String) {
    let mut child = flash_command(target.to_str().unwrap(), img, &["--force"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).ends_with("anything else to stop: ") {
        let n = stderr.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "xtask ended before asking:\n{}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    meanwhile();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", target.display()).unwrap();
    drop(stdin);
    stderr.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    (status, String::from_utf8_lossy(&seen).into_owned())
}

/// Whether the first MiB of `dev` (where a flash writes the partition table) is still all zeros.
fn untouched(dev: &Loop) -> bool {
    read_at(&dev.dev, 0, MIB).iter().all(|b| *b == 0)
}

/// The device confirmed is the device written: a name that leads to another device once confirmed (a stick
/// replugged during the prompt hands its name on; here a link such as /dev/disk/by-id/… re-pointed), or a
/// device whose size changed meanwhile, is refused, and nothing is written to either device.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_device_that_changed_during_the_prompt_is_not_written() {
    require_root();
    let dir = common::tempdir();
    let img = stick_image(dir.path(), IMAGE, MIB);
    let first_file = blank_file(dir.path(), "first", IMAGE + 16 * MIB);
    let first = Loop::attach(&first_file);
    let second = Loop::attach(&blank_file(dir.path(), "second", IMAGE + 16 * MIB));
    let link = dir.path().join("stick");
    std::os::unix::fs::symlink(&first.dev, &link).unwrap();

    let (status, text) = confirm_after(&link, &img, || {
        let new = dir.path().join("stick.new");
        std::os::unix::fs::symlink(&second.dev, &new).unwrap();
        fs::rename(&new, &link).unwrap();
    });
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("it is no longer the device that was shown and confirmed"),
        "{text}"
    );
    assert!(text.contains("nothing was written"), "{text}");
    assert!(untouched(&first) && untouched(&second), "{text}");

    // The same device, grown while the user typed.
    let (status, text) = confirm_after(&first.dev, &img, || {
        File::options()
            .write(true)
            .open(&first_file)
            .unwrap()
            .set_len(IMAGE + 32 * MIB)
            .unwrap();
        common::run("losetup", &["-c", first.path()]);
    });
    assert!(!status.success(), "{text}");
    assert!(text.contains("no longer the device"), "{text}");
    assert!(
        text.contains(&format!("{} bytes", IMAGE + 32 * MIB)),
        "{text}"
    );
    assert!(untouched(&first), "{text}");
}

/// A loop device holding a ramnas stick flashed from [`stick_image`], and that image.
fn ramnas_stick(dir: &Path) -> (PathBuf, Loop) {
    let img = stick_image(dir, IMAGE, MIB);
    let dev = Loop::attach(&blank_disk(dir, IMAGE));
    flash::write_image(&img, &dev.dev, &forced()).unwrap();
    (img, dev)
}

/// Overwrites the first occurrence of `find` on `dev` with `put` (the same length or shorter).
fn patch_device(dev: &Loop, find: &[u8], put: &[u8]) {
    let bytes = fs::read(&dev.dev).unwrap();
    let at = bytes
        .windows(find.len())
        .position(|w| w == find)
        .unwrap_or_else(|| panic!("{find:?} is not on {}", dev.path()));
    let f = fs::OpenOptions::new().write(true).open(&dev.dev).unwrap();
    f.write_all_at(put, at as u64).unwrap();
    f.sync_all().unwrap();
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Flashes `img` onto `dev`, which must be refused for `why` with nothing written, nothing saved in the
/// rescue directory (TMPDIR) and nothing written beside it.
fn assert_persist_refused(dir: &Path, dev: &Loop, img: &Path, why: &str) {
    let rescue = dir.join("rescue");
    fs::create_dir(&rescue).unwrap();
    let before = sha256_of(&dev.dev);
    let out = flash_command(dev.path(), img, &["--yes", "--force"])
        .env("TMPDIR", &rescue)
        .output()
        .unwrap();
    assert_refused(out, why, &dev.dev, before);
    let left: Vec<_> = fs::read_dir(&rescue).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.join("syslinux.cfg").exists());
}

/// An old stick's /persist holding a name with `/` (fatfs takes a long name's UTF-16 as it is): with it,
/// `persist/../syslinux.cfg` would be read from the stick's root and written beside the rescue directory,
/// then onto the new stick. It is refused by name, nothing written.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_persist_name_with_a_slash_is_refused() {
    require_root();
    let dir = common::tempdir();
    let (img, dev) = ramnas_stick(dir.path());
    let file = dir.path().join("ab.syslinux.cfg");
    fs::write(&file, b"state").unwrap();
    let at = format!("{}@@{MIB}", dev.path());
    common::run("mcopy", &["-i", &at, file.to_str().unwrap(), "::/persist/"]);
    // The first long-name slot holds its first five characters together: make "ab." "../".
    patch_device(&dev, &utf16("ab.sy"), &utf16("../"));
    assert_persist_refused(
        dir.path(),
        &dev,
        &img,
        "/persist holds an entry named \"../syslinux.cfg\", which is not a plain file name",
    );
}

/// An old stick's /persist holding a directory whose entry points at /persist itself nests without end: the
/// read stops at the depth bound with one error, nothing written.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_persist_directory_pointing_at_its_parent_is_refused() {
    require_root();
    let dir = common::tempdir();
    let (img, dev) = ramnas_stick(dir.path());
    let at = format!("{}@@{MIB}", dev.path());
    common::run("mmd", &["-i", &at, "::/persist/loopdir"]);
    // Short directory entries: name (11 bytes), attributes (0x10: directory), …, cluster high at 20, low at
    // 26. LOOPDIR gets PERSIST's cluster.
    let bytes = fs::read(&dev.dev).unwrap();
    let entry = |name: &[u8; 11]| {
        let mut key = name.to_vec();
        key.push(0x10);
        bytes
            .windows(12)
            .position(|w| w == key)
            .unwrap_or_else(|| panic!("no entry {name:?}"))
    };
    let (persist, loopdir) = (entry(b"PERSIST    "), entry(b"LOOPDIR    "));
    let f = fs::OpenOptions::new().write(true).open(&dev.dev).unwrap();
    for off in [20, 26] {
        f.write_all_at(
            &bytes[persist + off..persist + off + 2],
            (loopdir + off) as u64,
        )
        .unwrap();
    }
    f.sync_all().unwrap();
    drop(bytes);
    assert_persist_refused(dir.path(), &dev, &img, "nested deeper than 8 directories");
}

/// The kept /persist replaces the image's whole: an image whose /persist holds files (a VM booted from it,
/// say) flashed over a stick with its own state leaves exactly the stick's state, and the read-back agrees;
/// flashed onto a new disk, the stick starts with an empty /persist, as flash says.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_kept_persist_replaces_the_images_whole() {
    require_root();
    let dir = common::tempdir();
    let (img, dev) = ramnas_stick(dir.path());
    let seed = dir.path().join("seed");
    fs::write(&seed, b"the stick's own seed").unwrap();
    let at = format!("{}@@{MIB}", dev.path());
    common::run("mcopy", &["-i", &at, seed.to_str().unwrap(), "::/persist/"]);
    // The image's /persist: a VM's key, and a seed of its own.
    let key = dir.path().join("ssh_host_ed25519_key");
    fs::write(&key, b"the VM's key").unwrap();
    fs::write(&seed, b"the VM's seed").unwrap();
    let img_at = format!("{}@@{MIB}", img.display());
    common::run("mmd", &["-i", &img_at, "::/persist/ssh"]);
    common::run(
        "mcopy",
        &["-i", &img_at, key.to_str().unwrap(), "::/persist/ssh/"],
    );
    common::run(
        "mcopy",
        &["-i", &img_at, seed.to_str().unwrap(), "::/persist/"],
    );

    let log = flash_ok(&dev, &img, &["--yes", "--force"]);
    assert!(log.contains("kept /persist (1 files), verified"), "{log}");
    assert!(log.contains("held 2 files in /persist"), "{log}");
    let listing = common::run("mdir", &["-i", &at, "-b", "/persist"]);
    assert_eq!(listing.trim(), "::/persist/seed", "{listing}");
    let back = dir.path().join("back");
    common::run(
        "mcopy",
        &["-i", &at, "::/persist/seed", back.to_str().unwrap()],
    );
    assert_eq!(fs::read(&back).unwrap(), b"the stick's own seed");

    let fresh = Loop::attach(&blank_file(dir.path(), "fresh", IMAGE));
    let log = flash_ok(&fresh, &img, &["--yes", "--force"]);
    assert!(
        log.contains("no earlier ramnas stick there: /persist starts empty"),
        "{log}"
    );
    let at = format!("{}@@{MIB}", fresh.path());
    let listing = common::run("mdir", &["-i", &at, "-b", "/persist"]);
    assert_eq!(listing.trim(), "", "{listing}");
}
