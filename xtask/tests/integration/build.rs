//! `cargo xtask build`: the fixture packed by our packer boots for every compression; GNU cpio reads back
//! what the tree holds; builds are reproducible; the alpine-make-rootfs seam gets what it must; every
//! error is clear and leaves OUT/ as it was.

use crate::common;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{symlink, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{build_command, text, xtask};
use sha2::{Digest, Sha256};
use xtask::{
    build::lock::Lock, build::manifest::Manifest, dev::fixture::Fixture, host::qemu::Outcome,
};

// ---------------------------------------------------------------------------------------------------
// Boots: every compression format, proven by the Debian kernel unpacking it.

fn boot_with(compression: &str) {
    let dir = common::tempdir();
    let marker = format!("packed-{compression}");
    let mut fixture = Fixture::new(&marker);
    // 40 MiB more than the fixture: several zstd frames' worth of jobs and several xz blocks (24 MiB
    // each at preset 6), so the kernel must handle a multi-block stream. Zeros keep it fast.
    fixture
        .files
        .push(("var/filler".into(), "\0".repeat(40 << 20), 0o644));
    let out = common::build_fixture(dir.path(), &fixture, "out", &["--compression", compression]);
    let manifest = Manifest::load(&out.join("manifest.json")).unwrap();
    assert_eq!(
        format!("{:?}", manifest.compression).to_lowercase(),
        compression
    );
    manifest.verify(&out).unwrap();
    let machine = common::direct_machine(&out, "panic=-1");
    let mut vm = common::start(&machine, dir.path(), "boot");
    let want = format!("ramnas: ready slot=none build={marker}");
    let outcome = vm.wait_for(
        &regex::Regex::new("ramnas: ready.*").unwrap(),
        common::BOOT_TIMEOUT,
    );
    let lines = vm.output();
    assert_eq!(outcome, Outcome::Matched(want), "{lines:#?}");
    common::assert_fixture_passed(&lines);
    // The kernel got OUT/cmdline, which names the build for the running system.
    let build = format!("ramnas.build={}", manifest.build_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Command line:") && l.contains(&build)),
        "{build} not on the kernel's command line: {lines:#?}"
    );
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boots_zstd() {
    boot_with("zstd");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boots_xz() {
    boot_with("xz");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boots_gzip() {
    boot_with("gzip");
}

#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boots_none() {
    boot_with("none");
}

/// The bootloader loads ucode.img and the initramfs one after the other; the kernel must accept that.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn boots_with_microcode_in_front() {
    let dir = common::tempdir();
    let mut fixture = Fixture::new("ucode");
    fixture.ucode = true;
    let out = common::build_fixture(dir.path(), &fixture, "out", &[]);
    let ucode = fs::read(out.join("ucode.img")).unwrap();
    let intel = fs::read(dir.path().join("tree-out/boot/intel-ucode.img")).unwrap();
    let amd = fs::read(dir.path().join("tree-out/boot/amd-ucode.img")).unwrap();
    assert_eq!(
        ucode,
        [intel, amd].concat(),
        "ucode.img is intel-ucode.img then amd-ucode.img"
    );
    assert_eq!(
        common::initrds(&out)[0],
        out.join("ucode.img"),
        "microcode first"
    );
    let machine = common::direct_machine(&out, "panic=-1 ramnas.slot=a");
    let mut vm = common::start(&machine, dir.path(), "boot");
    vm.expect("^ramnas: ready slot=a build=ucode$", common::BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{:#?}", vm.output()));
}

// ---------------------------------------------------------------------------------------------------
// GNU cpio reads back the tree.

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: (u32, u32),
    content: String,
}

/// Every path under `root` with what the archive must preserve; `(dev, ino)` of regular files too.
fn describe(root: &Path) -> (BTreeMap<PathBuf, Node>, BTreeMap<PathBuf, (u64, u64)>) {
    let mut nodes = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full).unwrap();
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&full).unwrap().to_string_lossy().into_owned(),
            )
        } else if ft.is_file() {
            inodes.insert(rel.clone(), (meta.dev(), meta.ino()));
            (
                "file",
                format!("{:x}", Sha256::digest(fs::read(&full).unwrap())),
            )
        } else {
            ("special", String::new())
        };
        let rdev = meta.rdev();
        nodes.insert(
            rel,
            Node {
                kind,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                rdev: (libc::major(rdev), libc::minor(rdev)),
                content,
            },
        );
    }
    (nodes, inodes)
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn gnu_cpio_extracts_the_tree() {
    let dir = common::tempdir();
    let out = common::build_fixture(
        dir.path(),
        &Fixture::new("cpio"),
        "out",
        &["--compression", "none"],
    );
    let tree = dir.path().join("tree-out");
    // The manifest knows the kernel (from the bzImage header) and the packages (from apk's database).
    let manifest = Manifest::load(&out.join("manifest.json")).unwrap();
    let kernel = xtask::dev::fixture::HostKernel::find().unwrap();
    assert_eq!(
        manifest.kernel_version.as_deref(),
        Some(kernel.version.as_str())
    );
    assert_eq!(manifest.packages["ramnas-fixture"], "cpio-r0");
    assert_eq!(manifest.artifacts["vmlinuz"].sha256, sha(&kernel.vmlinuz));
    let extracted = dir.path().join("extracted");
    fs::create_dir(&extracted).unwrap();
    // Each archive in turn, as the kernel unpacks them: a directory met again is left as it is.
    common::cpio_each(
        &out,
        &extracted,
        &[
            "--quiet",
            "-i",
            "--make-directories",
            "--no-absolute-filenames",
        ],
    );
    assert!(
        common::archives(&out).len() >= 2,
        "the configuration's own archive"
    );

    let (mut want, want_inodes) = describe(&tree);
    let (mut got, got_inodes) = describe(&extracted);
    // /boot stays out; /dev/console and /dev/null come in.
    want.retain(|p, _| !p.starts_with("boot"));
    for (path, mode, rdev) in [
        ("dev/console", 0o20600, (5, 1)),
        ("dev/null", 0o20666, (1, 3)),
    ] {
        let node = got
            .remove(Path::new(path))
            .unwrap_or_else(|| panic!("{path} not in the archive"));
        assert_eq!(
            (node.kind, node.mode, node.rdev),
            ("special", mode, rdev),
            "{path}"
        );
    }
    // The extraction directory itself is ours; the archive's "." only sets its mode.
    want.remove(Path::new(""));
    got.remove(Path::new(""));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, node) in &want {
        assert_eq!(&got[path], node, "{}", path.display());
    }
    // Spot checks of what the fixture promises, so this test cannot pass on an empty tree.
    assert_eq!(got[Path::new("fixture/setuid")].mode, 0o104755);
    assert_eq!(got[Path::new("fixture/sticky")].mode, 0o41777);
    assert_eq!(
        (
            got[Path::new("fixture/owned")].uid,
            got[Path::new("fixture/owned")].gid
        ),
        (1234, 5678)
    );
    assert_eq!(got[Path::new("fixture/fifo")].mode, 0o10600);
    assert_eq!(got[Path::new("fixture/null")].rdev, (1, 3));
    assert_eq!(got[Path::new("fixture/link")].content, "hard1");
    assert_eq!(
        want_inodes[Path::new("fixture/hard1")],
        want_inodes[Path::new("fixture/hard2")]
    );
    assert_eq!(
        got_inodes[Path::new("fixture/hard1")],
        got_inodes[Path::new("fixture/hard2")],
        "hardlink kept"
    );

    // One data copy: the listing shows the pair with one inode number, and the archive holds the
    // data once.
    let archive: Vec<u8> = common::archives(&out)
        .iter()
        .flat_map(|a| fs::read(a).unwrap())
        .collect();
    let needle = b"hardlinked data\n";
    assert_eq!(
        archive
            .windows(needle.len())
            .filter(|w| w == needle)
            .count(),
        1
    );
    let listing = common::cpio_each(&out, dir.path(), &["--quiet", "-t", "-v"]);
    let hard: Vec<_> = listing
        .lines()
        .filter(|l| l.ends_with("fixture/hard1") || l.ends_with("fixture/hard2"))
        .collect();
    assert_eq!(hard.len(), 2, "{listing}");
    assert!(
        hard.iter()
            .all(|l| l.split_whitespace().nth(1) == Some("2")),
        "link count 2: {hard:?}"
    );
    // Parents before children, names sorted: the order is the sorted order of the paths.
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .filter(|n| !n.contains("->"))
        .collect();
    let first: Vec<&str> = names.iter().copied().take(3).collect();
    assert_eq!(first, [".", "bin", "bin/busybox"], "{listing}");
}

// ---------------------------------------------------------------------------------------------------
// Reproducibility and no-change builds.

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(fs::read(path).unwrap()))
}

/// Runs `cargo xtask build --base BASE --out OUT EXTRA…` in `dir`, which must succeed; returns its output.
fn build_ok(dir: &Path, base: &Path, out: &Path, extra: &[&str]) -> String {
    common::ok(&build_command(dir, base, out, extra).output().unwrap())
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn same_tree_gives_the_same_bytes() {
    let dir = common::tempdir();
    let out1 = common::build_fixture(dir.path(), &Fixture::new("same"), "one", &[]);
    // A copy of the tree has other inode numbers, other directory order on disk, other mtimes.
    let copy = dir.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("tree-one"))
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    fs::write(copy.join("etc/touched"), "").unwrap();
    fs::remove_file(copy.join("etc/touched")).unwrap();
    let out2 = dir.path().join("two");
    build_ok(dir.path(), &copy, &out2, &[]);
    for name in ["initramfs", "vmlinuz", "cmdline", "manifest.json"] {
        assert_eq!(
            sha(&out1.join(name)),
            sha(&out2.join(name)),
            "{name} differs"
        );
    }
    // xz too (multi-threaded, so block boundaries must not depend on timing).
    let out3 = dir.path().join("three");
    let out4 = dir.path().join("four");
    for out in [&out3, &out4] {
        build_ok(dir.path(), &copy, out, &["--compression", "xz"]);
    }
    assert_eq!(sha(&out3.join("initramfs")), sha(&out4.join("initramfs")));
    assert_ne!(sha(&out3.join("initramfs")), sha(&out1.join("initramfs")));
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let out = dir.path().join("out");
    let run = |sde: &str| {
        let o = build_command(dir.path(), &tree, &out, &["--compression", "none"])
            .env("SOURCE_DATE_EPOCH", sde)
            .output()
            .unwrap();
        common::ok(&o);
        common::cpio_each(&out, dir.path(), &["--quiet", "-t", "-v"])
    };
    let listing = run("86400"); // 1970-01-02
    assert!(
        listing.lines().all(|l| l.contains("Jan  2  1970")),
        "{listing}"
    );
    assert_eq!(
        Manifest::load(&out.join("manifest.json"))
            .unwrap()
            .source_date,
        86400
    );
    let o = build_command(dir.path(), &tree, &out, &[])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    let err = common::failed(&o);
    assert!(err.contains("SOURCE_DATE_EPOCH=\"yesterday\""), "{err}");
}

#[test]
fn unchanged_build_rewrites_nothing() {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let out = dir.path().join("out");
    let first = build_ok(dir.path(), &tree, &out, &[]);
    assert!(!first.contains("nothing changed"), "{first}");
    let before = snapshot(&out);
    let inodes: Vec<u64> = ["vmlinuz", "initramfs", "manifest.json"]
        .iter()
        .map(|n| fs::metadata(out.join(n)).unwrap().ino())
        .collect();
    let second = build_ok(dir.path(), &tree, &out, &[]);
    assert!(
        second.contains("nothing changed since the last build"),
        "{second}"
    );
    assert_eq!(snapshot(&out), before);
    let after: Vec<u64> = ["vmlinuz", "initramfs", "manifest.json"]
        .iter()
        .map(|n| fs::metadata(out.join(n)).unwrap().ino())
        .collect();
    assert_eq!(inodes, after, "files were rewritten");
    // A change is built, and the diff is shown.
    fs::write(tree.join("etc/motd"), "changed\n").unwrap();
    let third = build_ok(dir.path(), &tree, &out, &[]);
    assert!(third.contains("initramfs:"), "{third}");
    assert_ne!(snapshot(&out), before);
}

/// An unchanged tree is not even packed (OUT/.inputs records the tree's metadata and the products);
/// a touched file, another setting or a product changed behind the build's back make it pack again.
#[test]
fn unchanged_tree_is_not_repacked() {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let out = dir.path().join("out");
    let build = |extra: &[&str]| build_ok(dir.path(), &tree, &out, extra);
    let packs = |t: &str| t.contains("packing the initramfs");
    assert!(packs(&build(&[])));
    let before = snapshot(&out);
    let second = build(&[]);
    assert!(!packs(&second), "{second}");
    assert!(second.contains("nothing changed"), "{second}");
    assert_eq!(snapshot(&out), before);

    // Same contents, new mtime: packed again, and then the products turn out the same.
    let hostname = tree.join("etc/hostname");
    let later =
        fs::metadata(&hostname).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&hostname)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let touched = build(&[]);
    assert!(packs(&touched), "{touched}");
    assert!(
        touched.contains("nothing changed since the last build"),
        "{touched}"
    );
    assert_eq!(snapshot(&out).get("initramfs"), before.get("initramfs"));
    assert!(!packs(&build(&[])), "the touch was recorded");

    // Another compression: packed.
    let gzip = build(&["--compression", "gzip"]);
    assert!(packs(&gzip), "{gzip}");
    assert!(!packs(&build(&["--compression", "gzip"])));

    // A product changed behind the build's back: packed and put right.
    fs::write(out.join("initramfs"), "garbage").unwrap();
    let repaired = build(&["--compression", "gzip"]);
    assert!(packs(&repaired), "{repaired}");
    Manifest::load(&out.join("manifest.json"))
        .unwrap()
        .verify(&out)
        .unwrap();

    // A new file: packed.
    fs::write(tree.join("etc/motd"), "hello\n").unwrap();
    assert!(packs(&build(&["--compression", "gzip"])));
}

// ---------------------------------------------------------------------------------------------------
// The alpine-make-rootfs seam.

/// A stand-in for alpine-make-rootfs: records its arguments, environment and what it found in <dest>,
/// then copies $FAKE_TREE into <dest>; fails when $FAKE_FAIL is set.
const FAKE_TOOL: &str = r#"#!/bin/sh
set -e
{
    echo "run"
    for a in "$@"; do echo "arg=$a"; done
    for v in ALPINE_BRANCH ALPINE_MIRROR PACKAGES FS_SKEL_DIR FS_SKEL_CHOWN SCRIPT_CHROOT KEYS_DIR DEFAULT_PKGS APK APK_OPTS INSTALL_HOST_PKGS; do
        eval "echo \"env $v=\${$v-<unset>}\""
    done
    sed 's/^/repository /' "$REPOS_FILE"
    echo "mkinitfs=$(cat "$1/etc/mkinitfs/mkinitfs.conf")"
} >> "$FAKE_RECORD"
if [ -n "$FAKE_FAIL" ]; then echo "fake alpine-make-rootfs: failing on purpose" >&2; exit 3; fi
cp -a "$FAKE_TREE"/. "$1"/
"#;

struct Seam {
    dir: tempfile::TempDir,
    system: PathBuf,
    out: PathBuf,
    tool: PathBuf,
    record: PathBuf,
    tree: PathBuf,
}

impl Seam {
    fn new() -> Seam {
        Seam::with_tool(FAKE_TOOL)
    }

    /// A seam whose alpine-make-rootfs is the shell script `tool`.
    fn with_tool(tool_script: &str) -> Seam {
        let dir = common::tempdir();
        let system = dir.path().join("system");
        write_system(
            &system,
            "# the base\nalpine-base\nlinux-lts   # kernel\nlinux-firmware-none\n\nopenrc-init\n",
            "[alpine]\nbranch = \"v3.22\"\nmirror = \"http://mirror.example/alpine\"\n",
        );
        let tool = dir.path().join("fake-alpine-make-rootfs");
        fs::write(&tool, tool_script).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let tree = mini_tree(dir.path());
        Seam {
            out: dir.path().join("out"),
            record: dir.path().join("record"),
            system,
            tool,
            tree,
            dir,
        }
    }

    /// `cargo xtask build --system SYSTEM --out OUT` through the fake tool, HOME being the temp dir (no
    /// ~/.ssh keys) and no SUDO_USER.
    fn command(&self, system: &Path) -> Command {
        let mut command = common::system_build_command(self.dir.path(), system, &self.out);
        command
            .env("ALPINE_MAKE_ROOTFS", &self.tool)
            .env("FAKE_RECORD", &self.record)
            .env("FAKE_TREE", &self.tree)
            .env("FAKE_FAIL", "")
            .env("HOME", self.dir.path())
            // alpine-make-rootfs reads these too; only system.toml may set them.
            .env("APK", "/nowhere/apk")
            .env("KEYS_DIR", "/nowhere/keys")
            .env_remove("SUDO_USER");
        command
    }

    /// Builds this seam's system/ with `extra` flags.
    fn build(&self, extra: &[&str]) -> Output {
        self.command(&self.system).args(extra).output().unwrap()
    }

    /// Like [`Seam::build`], with a fake tool that fails.
    fn build_with_failing_tool(&self, extra: &[&str]) -> Output {
        self.command(&self.system)
            .args(extra)
            .env("FAKE_FAIL", "1")
            .output()
            .unwrap()
    }

    /// Builds with `home` as the building user's home (for ~/.ssh/*.pub).
    fn build_as(&self, home: &Path) -> Output {
        self.command(&self.system)
            .env("HOME", home)
            .output()
            .unwrap()
    }

    /// Writes `contents` into system/NAME.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        fs::write(self.system.join(name), contents).unwrap();
    }

    /// Builds (which must succeed); returns how often the tool has run so far.
    fn build_and_count_runs(&self) -> usize {
        common::ok(&self.build(&[]));
        self.runs()
    }

    /// How often the apk-like stand-in has run so far.
    fn runs_of_any(&self) -> usize {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("run"))
            .count()
    }

    /// The apk-like stand-in's last record line.
    fn last_run(&self) -> String {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// How often the tool has run so far.
    fn runs(&self) -> usize {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "run")
            .count()
    }
}

/// A package list the system lint accepts.
const PACKAGES: &str = "alpine-base\nlinux-lts\nlinux-firmware-none\n";

fn write_system(dir: &Path, packages: &str, toml: &str) {
    fs::create_dir_all(dir.join("root/etc")).unwrap();
    fs::write(dir.join("packages"), packages).unwrap();
    fs::write(dir.join("system.toml"), toml).unwrap();
    fs::write(
        dir.join("setup.sh"),
        "#!/bin/sh\nln -sf /sbin/openrc-init /init\n",
    )
    .unwrap();
    fs::set_permissions(dir.join("setup.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("root/etc/hostname"), "nas\n").unwrap();
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn alpine_make_rootfs_contract() {
    let s = Seam::new();
    let first = common::ok(&s.build(&[]));
    assert!(first.contains("==> [2/5] the root tree"), "{first}");
    // The fake tool's tree has no apk database: the build says the manifest cannot list packages.
    assert!(
        first.contains(
            "has no apk database (/lib/apk/db/installed): the manifest lists no packages"
        ),
        "{first}"
    );
    let record = fs::read_to_string(&s.record).unwrap();
    let system = &s.system;
    let want = format!(
        "run\narg={}\narg={}\nenv ALPINE_BRANCH=v3.22\nenv ALPINE_MIRROR=http://mirror.example/alpine\n\
         env PACKAGES=alpine-baselayout busybox busybox-suid musl-utils alpine-base linux-lts linux-firmware-none openrc-init\n\
         env FS_SKEL_DIR={}\nenv FS_SKEL_CHOWN=root:root\n\
         env SCRIPT_CHROOT=yes\nenv KEYS_DIR={}\nenv DEFAULT_PKGS=no\nenv APK={}\n\
         env APK_OPTS=--no-progress --cache-dir {}\nenv INSTALL_HOST_PKGS=no\n\
         repository http://mirror.example/alpine/v3.22/main\nrepository http://mirror.example/alpine/v3.22/community\n\
         mkinitfs=disable_trigger=yes\n",
        s.out.join("rootfs.new").display(),
        system.join("setup.sh").display(),
        system.join("root").display(),
        s.out.join("rootfs.no-keys").display(),
        s.dir.path().join("fake-apk").display(),
        s.dir.path().join(".cache/ramnas/apk/v3.22").display(),
    );
    assert_eq!(record, want);
    assert!(first.contains("packages.lock not written"), "{first}");
    assert!(!s.system.join("packages.lock").exists());
    assert!(!s.out.join("rootfs.no-keys").exists());
    // The build finished: every product, from the tree the tool made.
    for name in ["vmlinuz", "initramfs", "cmdline", "manifest.json"] {
        assert!(s.out.join(name).is_file(), "{name}");
    }
    assert!(s.out.join("rootfs/etc/mkinitfs/mkinitfs.conf").is_file());
    assert!(!s.out.join("rootfs.new").exists());
    assert!(!s.out.join("rootfs.repositories").exists());
    // passwd wrote the day it ran; the tree holds no date past SOURCE_DATE_EPOCH (1970: no ageing at all).
    assert_eq!(
        fs::read_to_string(s.out.join("rootfs/etc/shadow")).unwrap(),
        "root:::0:::::\nshare:!::0:99999:7:::\n"
    );
    // The configured command line, plus the build's id for the running system's readiness line.
    let manifest = Manifest::load(&s.out.join("manifest.json")).unwrap();
    assert_eq!(
        fs::read_to_string(s.out.join("cmdline")).unwrap(),
        format!(
            "console=tty0 console=ttyS0,115200 panic=10 ramnas.build={}\n",
            manifest.build_id
        )
    );

    // Nothing changed: the tool does not run, nothing is rewritten.
    let again = common::ok(&s.build(&[]));
    assert_eq!(s.runs(), 1, "{again}");
    assert!(again.contains("the root tree is up to date"), "{again}");
    assert!(
        again.contains("nothing changed since the last build"),
        "{again}"
    );

    // Comments in packages are not inputs; a mode change in root/ is.
    s.write(
        "packages",
        "alpine-base # still\nlinux-lts\nlinux-firmware-none\nopenrc-init\n",
    );
    assert_eq!(s.build_and_count_runs(), 1);
    fs::set_permissions(
        s.system.join("root/etc/hostname"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(s.build_and_count_runs(), 2);
    s.write(
        "setup.sh",
        "#!/bin/sh\nln -sf /sbin/openrc-init /init\nrc-update add sshd\n",
    );
    assert_eq!(s.build_and_count_runs(), 3);
    s.write("system.toml", "[alpine]\nbranch = \"edge\"\n");
    assert_eq!(s.build_and_count_runs(), 4);
    // A compression change repacks but does not remake the tree.
    common::ok(&s.build(&["--compression", "gzip"]));
    assert_eq!(s.runs(), 4);
    // --fresh always remakes it.
    common::ok(&s.build(&["--fresh"]));
    assert_eq!(s.runs(), 5);

    // A failing tool: a clear error, the previous build and tree untouched, no half-made tree.
    let before = snapshot(&s.out);
    let err = common::failed(&s.build_with_failing_tool(&["--fresh"]));
    assert!(err.contains("alpine-make-rootfs"), "{err}");
    assert!(err.contains("failing on purpose"), "{err}");
    assert_eq!(snapshot(&s.out), before);
    assert!(!s.out.join("rootfs.new").exists());
}

/// `[alpine]`'s repositories, keys and default packages reach alpine-make-rootfs, each is an input of the
/// tree, and a bad value is one error naming the file and the key, before anything runs.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn alpine_settings_for_local_mirrors_and_repositories() {
    let s = Seam::new();
    fs::create_dir_all(s.system.join("repo/x86_64")).unwrap();
    fs::create_dir_all(s.system.join("mirror/v3.22/main/x86_64")).unwrap();
    fs::create_dir_all(s.system.join("keys")).unwrap();
    fs::write(s.system.join("keys/me-1234.rsa.pub"), "a key\n").unwrap();
    s.write(
        "system.toml",
        "[alpine]\nbranch = \"3.22\"\nmirror = \"mirror\"\n\
         repositories = [\"repo\", \"https://example.org/ramnas\"]\nkeys = \"keys\"\ndefault_packages = false\n",
    );
    assert_eq!(s.build_and_count_runs(), 1);
    let record = fs::read_to_string(&s.record).unwrap();
    for want in [
        "env ALPINE_BRANCH=v3.22\n".to_string(),
        format!("env KEYS_DIR={}\n", s.system.join("keys").display()),
        // Without the base packages: only system/packages.
        "env PACKAGES=alpine-base linux-lts linux-firmware-none openrc-init\n".to_string(),
        format!(
            "repository {m}/v3.22/main\nrepository {m}/v3.22/community\n",
            m = s.system.join("mirror").display()
        ),
        format!("repository {}\n", s.system.join("repo").display()),
        "repository https://example.org/ramnas\n".to_string(),
    ] {
        assert!(record.contains(&want), "{want:?} in {record}");
    }
    // Each is an input: a new key, a local repository's or the local mirror's new index, or the default
    // packages back, remakes the tree.
    fs::write(s.system.join("keys/other-5678.rsa.pub"), "another\n").unwrap();
    assert_eq!(s.build_and_count_runs(), 2);
    fs::write(s.system.join("repo/x86_64/APKINDEX.tar.gz"), "an index").unwrap();
    assert_eq!(s.build_and_count_runs(), 3);
    fs::write(
        s.system.join("mirror/v3.22/main/x86_64/APKINDEX.tar.gz"),
        "one",
    )
    .unwrap();
    assert_eq!(s.build_and_count_runs(), 4);
    s.write(
        "system.toml",
        "[alpine]\nbranch = \"3.22\"\nmirror = \"mirror\"\n\
         repositories = [\"repo\", \"https://example.org/ramnas\"]\nkeys = \"keys\"\n",
    );
    assert_eq!(s.build_and_count_runs(), 5);

    let toml = s.system.join("system.toml");
    for (settings, want) in [
        (
            "mirror = \"nowhere\"",
            format!(
                "{}: invalid [alpine] repositories: alpine.mirror \"nowhere\": {} is not a directory",
                toml.display(),
                s.system.join("nowhere").display()
            ),
        ),
        (
            "repositories = [\"missing\"]",
            format!(
                "{}: invalid [alpine] repositories: \"missing\": {} is not a directory",
                toml.display(),
                s.system.join("missing").display()
            ),
        ),
        (
            "repositories = [\"ftp://example.org/x\"]",
            "\"ftp://example.org/x\" is neither an http(s) URL nor a directory".to_string(),
        ),
        (
            "keys = \"repo\"",
            format!(
                "{}: alpine.keys = \"repo\": {} holds no *.pub key",
                toml.display(),
                s.system.join("repo").display()
            ),
        ),
        ("default_packages = \"no\"", "default_packages".to_string()),
    ] {
        s.write("system.toml", format!("[alpine]\n{settings}\n"));
        let err = common::failed(&s.build(&[]));
        assert!(err.contains(&want), "{settings}: {want:?} in {err}");
        assert_eq!(s.runs(), 5, "{settings}: the tool must not run");
    }
}

// ---------------------------------------------------------------------------------------------------
// The lock, the package cache and --offline, through a stand-in that resolves packages as apk does.

/// alpine-make-rootfs with apk as far as the lock and the cache need it. The repository is
/// `$FAKE_REPO/<name>/<version>`, a file holding the names the package depends on. Each entry of PACKAGES
/// (`name` or `name=version`) is installed with its dependencies: a version pinned in PACKAGES, else the
/// newest. Its checksum is `Q1` + base64 of the file's SHA-1. With `--cache-dir` every package is kept
/// there as `<name>-<version>.<first 4 bytes of that SHA-1>.apk` and each http repository's index as
/// `APKINDEX.<first 4 bytes of SHA-1 of the index's URL>.tar.gz`, as apk names them; with `--no-network`
/// both must be there already, and packages are installed from the cache alone. Writes apk's database
/// (P, V, C, D) and world; `passwd` writes today's day into /etc/shadow. Records `run PACKAGES [offline]`
/// in $FAKE_RECORD, and the day it saw in $FAKE_RECORD.days.
const FAKE_APK_TOOL: &str = r#"#!/bin/sh
set -eu
dest=$1
cache= offline=
set -- $APK_OPTS
while [ $# -gt 0 ]; do
    case $1 in --cache-dir) cache=$2; shift;; --no-network) offline=yes;; esac
    shift
done
echo "run $PACKAGES${offline:+ offline}" >> "$FAKE_RECORD"
die() { echo "ERROR: $*" >&2; exit 1; }
while read -r repo; do
    case $repo in http*) ;; *) continue;; esac
    index="$cache/APKINDEX.$(printf %s "$repo/x86_64/APKINDEX.tar.gz" | sha1sum | cut -c1-8).tar.gz"
    if [ -n "$offline" ]; then
        [ -e "$index" ] || die "$repo: index not in the cache (network disabled)"
    else
        echo "$repo" > "$index"
    fi
done < "$REPOS_FILE"
echo "day $(( $(date +%s) / 86400 ))" >> "$FAKE_RECORD.days"
state=$(mktemp -d)
version_of() {
    for p in $PACKAGES; do case $p in "$1="*) echo "${p#*=}"; return;; esac; done
    if [ -n "$offline" ]; then
        ls "$cache" | sed -n "s/^$1-\([0-9][^-]*-r[0-9]*\)\.[0-9a-f]*\.apk$/\1/p" | sort -V | tail -n 1
    else
        ls "$FAKE_REPO/$1" 2>/dev/null | sort -V | tail -n 1
    fi
}
source_of() {
    if [ -n "$offline" ]; then ls "$cache/$1-$2".*.apk 2>/dev/null | head -n 1; else echo "$FAKE_REPO/$1/$2"; fi
}
install() {
    local name=$1 version dep src sum
    [ -e "$state/$name" ] && return 0
    version=$(version_of "$name")
    src=$(source_of "$name" "$version")
    if [ -n "$offline" ]; then
        [ -n "$src" ] || die "$name-$version: not in the cache (network disabled)"
    else
        [ -n "$version" ] && [ -e "$src" ] || die "unable to select packages: $name-$version (no such package)"
        sum=$(sha1sum < "$src" | cut -c1-8)
        cp "$src" "$cache/$name-$version.$sum.apk"
    fi
    printf '%s %s\n' "$version" "$src" > "$state/$name"
    for dep in $(cat "$src"); do install "$dep"; done
}
for p in $PACKAGES; do install "${p%%=*}"; done
# What alpine-make-rootfs (alpine-release) or setup.sh asks apk for besides PACKAGES.
for p in ${FAKE_EXTRA:-}; do install "$p"; done
cp -a "$FAKE_TREE"/. "$dest"/
mkdir -p "$dest/lib/apk/db" "$dest/etc/apk"
for f in $(ls "$state" | sort); do
    read -r v src < "$state/$f"
    sum=$(sha1sum < "$src" | cut -c1-40 | perl -ne 'chomp; print pack("H*", $_)' | base64)
    printf 'P:%s\nV:%s\nC:Q1%s\nD:%s\n\n' "$f" "$v" "$sum" "$(cat "$src")"
done > "$dest/lib/apk/db/installed"
printf '%s\n' $PACKAGES ${FAKE_EXTRA:-} | sort -u > "$dest/etc/apk/world"
rm -r "$state"
echo "root::$(( $(date +%s) / 86400 )):0:::::" > "$dest/etc/shadow"
"#;

/// `cp -a FROM TO`, TO's parent made first.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Adds package NAME VERSION depending on `deps` to the stand-in's repository.
fn publish(repo: &Path, name: &str, version: &str, deps: &str) {
    fs::create_dir_all(repo.join(name)).unwrap();
    fs::write(repo.join(name).join(version), format!("{deps}\n")).unwrap();
}

/// The lock: written by the first build, held by the next ones while the mirror moves on, updated for a
/// `packages` edit (an added package resolved, a removed one dropped with what only it needed), noticed
/// by `check` when stale, and resolved afresh by `--update`, which prints what changed.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn packages_lock_holds_versions_and_follows_edits() {
    let s = Seam::with_tool(FAKE_APK_TOOL);
    let repo = s.dir.path().join("repo");
    publish(&repo, "musl", "1.2.5-r0", "");
    publish(&repo, "busybox", "1.36.1-r0", "musl");
    publish(&repo, "linux-lts", "6.12.1-r0", "");
    publish(&repo, "linux-firmware-none", "20250101-r0", "");
    publish(&repo, "samba", "4.20.1-r0", "libtalloc musl");
    publish(&repo, "libtalloc", "2.4.2-r0", "musl");
    publish(&repo, "nfs-utils", "2.6.4-r0", "libtirpc");
    publish(&repo, "libtirpc", "1.3.4-r0", "musl");
    s.write(
        "system.toml",
        "[alpine]\nbranch = \"v3.22\"\nmirror = \"http://mirror.example/alpine\"\ndefault_packages = false\n",
    );
    s.write(
        "packages",
        "busybox\nsamba\nlinux-lts\nlinux-firmware-none\n",
    );
    let build_with = |extra: &[&str], env: &[(&str, &str)]| {
        let o = s
            .command(&s.system)
            .args(extra)
            .env("FAKE_REPO", &repo)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        common::ok(&o)
    };
    let build = |extra: &[&str]| build_with(extra, &[]);
    let lock_path = s.system.join("packages.lock");
    let lock = || Lock::load(&lock_path).unwrap().expect("a lock");
    let version = |name: &str| lock().packages.get(name).map(|p| p.version.clone());
    let runs = || -> Vec<String> {
        fs::read_to_string(&s.record)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };

    // The first build resolves afresh and writes the lock: every package of the tree, exactly.
    let first = build(&[]);
    assert!(
        first.contains("packages.lock: written (6 packages)"),
        "{first}"
    );
    assert_eq!(runs(), ["run busybox samba linux-lts linux-firmware-none"]);
    let locked = fs::read_to_string(&lock_path).unwrap();
    assert!(
        locked.contains("\nbranch v3.22\nworld busybox\nworld samba\n"),
        "{locked}"
    );
    assert!(
        locked.contains("\npackage libtalloc 2.4.2-r0 Q1"),
        "{locked}"
    );
    assert_eq!(lock().packages.len(), 6);
    let manifest = Manifest::load(&s.out.join("manifest.json")).unwrap();
    assert_eq!(manifest.packages.get("busybox").unwrap(), "1.36.1-r0");

    // The mirror moves on; a rebuild installs exactly the locked versions, and leaves world as asked.
    publish(&repo, "busybox", "1.37.0-r0", "musl");
    publish(&repo, "libtalloc", "2.4.3-r0", "musl");
    build(&["--fresh"]);
    assert_eq!(
        runs()[1],
        "run busybox=1.36.1-r0 samba=4.20.1-r0 linux-lts=6.12.1-r0 linux-firmware-none=20250101-r0 \
         libtalloc=2.4.2-r0 musl=1.2.5-r0"
    );
    assert_eq!(
        fs::read_to_string(&lock_path).unwrap(),
        locked,
        "the lock is unchanged"
    );
    assert_eq!(
        fs::read_to_string(s.out.join("rootfs/etc/apk/world")).unwrap(),
        "busybox\nlinux-firmware-none\nlinux-lts\nsamba\n"
    );
    // The lock is an input: the tree it made is up to date.
    assert!(build(&[]).contains("the root tree is up to date"));

    // An edit: nfs-utils in, samba out. `check` notices the stale lock; the build updates it for what
    // the edit touched: nfs-utils resolved, samba and what only it needed (libtalloc) dropped, the rest
    // held (busybox stays 1.36).
    s.write(
        "packages",
        "busybox\nnfs-utils\nlinux-lts\nlinux-firmware-none\n",
    );
    let check = common::xtask(
        s.dir.path(),
        &["check", "--system", s.system.to_str().unwrap()],
    );
    let said = text(&check);
    for want in [
        format!(
            "{}: nfs-utils is asked for but not locked",
            lock_path.display()
        ),
        format!(
            "{}: samba is locked but no longer asked for",
            lock_path.display()
        ),
    ] {
        assert!(said.contains(&want), "{want:?} in {said}");
    }
    assert!(!check.status.success(), "{said}");
    let edited = build(&[]);
    assert_eq!(
        runs()[2..],
        [
            "run busybox=1.36.1-r0 nfs-utils linux-lts=6.12.1-r0 linux-firmware-none=20250101-r0 \
             libtalloc=2.4.2-r0 musl=1.2.5-r0 samba=4.20.1-r0",
            "run busybox=1.36.1-r0 nfs-utils linux-lts=6.12.1-r0 linux-firmware-none=20250101-r0 \
             musl=1.2.5-r0",
        ]
    );
    for want in [
        "+ libtirpc 1.3.4-r0",
        "+ nfs-utils 2.6.4-r0",
        "- libtalloc 2.4.2-r0",
        "- samba 4.20.1-r0",
    ] {
        assert!(edited.contains(want), "{want:?} in {edited}");
    }
    assert!(!edited.contains("busybox 1.37"), "{edited}");
    assert_eq!(version("busybox").as_deref(), Some("1.36.1-r0"));
    assert_eq!(version("samba"), None);
    assert_eq!(
        fs::read_to_string(s.out.join("rootfs/etc/apk/world")).unwrap(),
        "busybox\nlinux-firmware-none\nlinux-lts\nnfs-utils\n"
    );
    let check = common::xtask(
        s.dir.path(),
        &["check", "--system", s.system.to_str().unwrap()],
    );
    assert!(!text(&check).contains("packages.lock:"), "{}", text(&check));

    // --update resolves afresh, rewrites the lock and prints what changed as `deploy` does.
    publish(&repo, "linux-lts", "6.12.9-r0", "");
    let updated = build(&["--update"]);
    assert_eq!(
        runs().last().unwrap(),
        "run busybox nfs-utils linux-lts linux-firmware-none"
    );
    for want in [
        "kernel: 6.12.1-r0 → 6.12.9-r0",
        "~ busybox 1.36.1-r0 → 1.37.0-r0",
        "~ linux-lts 6.12.1-r0 → 6.12.9-r0",
    ] {
        assert!(updated.contains(want), "{want:?} in {updated}");
    }
    assert_eq!(version("busybox").as_deref(), Some("1.37.0-r0"));

    // An entry removed from `packages` that another still needs stays at its locked version, in one run.
    s.write(
        "packages",
        "busybox\nmusl\nnfs-utils\nlinux-lts\nlinux-firmware-none\n",
    );
    build(&[]);
    publish(&repo, "musl", "1.2.6-r0", "");
    s.write(
        "packages",
        "busybox\nnfs-utils\nlinux-lts\nlinux-firmware-none\n",
    );
    let before = runs().len();
    build(&[]);
    assert_eq!(runs().len(), before + 1, "nothing to drop: one run");
    assert_eq!(version("musl").as_deref(), Some("1.2.5-r0"));

    // What alpine-make-rootfs or setup.sh asks apk for besides `packages` is locked too, in one run.
    publish(&repo, "alpine-release", "3.22.1-r0", "");
    let extra = [("FAKE_EXTRA", "alpine-release")];
    build_with(&["--fresh"], &extra);
    build_with(&["--fresh"], &extra);
    assert_eq!(runs().len(), before + 3, "{:?}", runs());
    assert_eq!(version("alpine-release").as_deref(), Some("3.22.1-r0"));

    // A package rebuilt under its locked version: refused, naming it.
    publish(&repo, "busybox", "1.37.0-r0", "musl ");
    let o = s
        .command(&s.system)
        .args(["--fresh"])
        .env("FAKE_REPO", &repo)
        .output()
        .unwrap();
    let err = common::failed(&o);
    assert!(
        err.contains("busybox 1.37.0-r0 has checksum")
            && err.contains("rebuilt under the same version"),
        "{err}"
    );
    publish(&repo, "busybox", "1.37.0-r0", "musl");

    // A locked version the repositories no longer have: one error naming it, the lock and where it looked.
    fs::remove_file(repo.join("busybox/1.37.0-r0")).unwrap();
    let o = s
        .command(&s.system)
        .arg("--fresh")
        .env("FAKE_REPO", &repo)
        .output()
        .unwrap();
    let err = common::failed(&o);
    for want in [
        "busybox-1.37.0-r0 (no such package)",
        &format!("installing the versions {} holds", lock_path.display()),
        "from http://mirror.example/alpine/v3.22/main, http://mirror.example/alpine/v3.22/community",
        "`cargo xtask build --update` resolves afresh",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }

    // A lock that is not one: file:line, and the tool does not run.
    let before = runs().len();
    fs::write(&lock_path, "branch v3.22\npackage busybox 1.37.0-r0\n").unwrap();
    let err = common::failed(&s.build(&[]));
    assert!(
        err.contains(&format!(
            "{}:2: \"package busybox 1.37.0-r0\": expected",
            lock_path.display()
        )),
        "{err}"
    );
    // One resolved on another branch: --update, says the error.
    fs::write(&lock_path, locked.replace("branch v3.22", "branch v3.21")).unwrap();
    let err = common::failed(&s.build(&[]));
    let want = format!(
        "resolved on Alpine v3.21, but {} says v3.22",
        s.system.join("system.toml").display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(runs().len(), before, "the tool must not run");
    // --update writes a broken lock afresh.
    fs::write(&lock_path, "garbage\n").unwrap();
    let updated = build(&["--update"]);
    assert!(updated.contains("--update writes it afresh"), "{updated}");
    assert_eq!(version("busybox").as_deref(), Some("1.36.1-r0"));
}

/// With the cache warm, `--offline` needs nothing from the network and gives the same bytes on another
/// day, from another checkout; with it cold, it fails at once naming everything missing.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn offline_builds_from_the_cache_give_the_same_bytes_on_another_day() {
    let s = Seam::with_tool(FAKE_APK_TOOL);
    let repo = s.dir.path().join("repo");
    for (name, deps) in [
        ("musl", ""),
        ("busybox", "musl"),
        ("linux-lts", ""),
        ("linux-firmware-none", ""),
        ("alpine-base", "busybox"),
        ("openrc-init", "musl"),
        ("alpine-baselayout", ""),
        ("busybox-suid", "busybox"),
        ("musl-utils", "musl"),
    ] {
        publish(&repo, name, "1.0-r0", deps);
    }
    let build = |system: &Path, cache: &Path, day: &str, extra: &[&str]| {
        let mut command = Command::new("faketime");
        let inner = s.command(system);
        command
            .arg(day)
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(extra)
            .current_dir(inner.get_current_dir().unwrap());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        // Offline, the stand-in has the cache alone to install from.
        if extra.contains(&"--offline") {
            command.env_remove("FAKE_REPO");
        } else {
            command.env("FAKE_REPO", &repo);
        }
        command
            .env("XDG_CACHE_HOME", cache)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap()
    };
    let products =
        || ["initramfs", "vmlinuz", "manifest.json"].map(|n| fs::read(s.out.join(n)).unwrap());
    let cache = s.dir.path().join("cache");
    // Offline before anything is cached or locked: at once, and says why.
    let err = common::failed(&build(
        &s.system,
        &cache,
        "2027-01-01 12:00:00",
        &["--offline"],
    ));
    assert!(err.contains("--offline needs"), "{err}");
    assert!(err.contains("packages.lock"), "{err}");
    assert_eq!(s.runs_of_any(), 0);

    // Online once: the cache fills and the lock is written.
    common::ok(&build(&s.system, &cache, "2027-01-01 12:00:00", &[]));
    let cached: Vec<String> = fs::read_dir(cache.join("ramnas/apk/v3.22"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached
            .iter()
            .any(|f| f.starts_with("busybox-1.0-r0.") && f.ends_with(".apk")),
        "{cached:?}"
    );

    // Offline, on another day: nothing from the network, the same bytes.
    let online = products();
    let first = common::ok(&build(
        &s.system,
        &cache,
        "2027-03-01 08:00:00",
        &["--offline", "--fresh"],
    ));
    assert!(s.last_run().ends_with(" offline"), "{first}");
    assert_eq!(
        products(),
        online,
        "an offline build on another day differs"
    );
    // The tree's own dates are clamped too: passwd wrote 2027-03-01, the tree says SOURCE_DATE_EPOCH's day.
    assert_eq!(
        fs::read_to_string(s.out.join("rootfs/etc/shadow")).unwrap(),
        format!("root::{}:0:::::\n", 1700000000 / 86400)
    );

    // Another checkout, on another machine's cache, on another day: the same bytes.
    let other = s.dir.path().join("elsewhere/system");
    copy_tree(&s.system, &other);
    let other_cache = s.dir.path().join("other-cache");
    copy_tree(&cache, &other_cache);
    fs::remove_dir_all(&s.out).ok();
    common::ok(&build(
        &other,
        &other_cache,
        "2028-07-04 23:59:00",
        &["--offline"],
    ));
    assert_eq!(
        products(),
        online,
        "another checkout and cache give other bytes"
    );
    // The stand-in saw three days: the clock really was another each time.
    let days = fs::read_to_string(s.dir.path().join("record.days")).unwrap();
    let days: std::collections::BTreeSet<&str> = days.lines().collect();
    assert_eq!(days.len(), 3, "{days:?}");

    // A cold cache: at once, naming every package and index that is missing; the tool does not run.
    let runs = s.runs_of_any();
    let cold = s.dir.path().join("cold");
    let err = common::failed(&build(
        &s.system,
        &cold,
        "2027-01-02",
        &["--offline", "--fresh"],
    ));
    for want in [
        "--offline: not in the package cache",
        "the index of http://mirror.example/alpine/v3.22/main",
        "busybox 1.0-r0",
        "musl-utils 1.0-r0",
        "build once without --offline",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    assert_eq!(s.runs_of_any(), runs, "the tool must not run");
    // --offline and --update contradict each other.
    let err = common::failed(&s.build(&["--offline", "--update"]));
    assert!(err.contains("cannot be used with"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Errors: one clear message each, OUT/ as it was.

/// A tiny tree: an executable /init, a "kernel", a file or two. Packs in milliseconds.
fn mini_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("mini");
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("sbin")).unwrap();
    fs::write(tree.join("boot/vmlinuz-lts"), "not really a kernel\n").unwrap();
    fs::write(tree.join("sbin/openrc-init"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        tree.join("sbin/openrc-init"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("/sbin/openrc-init", tree.join("init")).unwrap();
    fs::write(tree.join("etc/hostname"), "mini\n").unwrap();
    fs::write(
        tree.join("etc/shadow"),
        "root::20788:0:::::\nshare:!:20788:0:99999:7:::\n",
    )
    .unwrap();
    tree
}

/// Every file under `dir` (except the root-owned tree) with its contents' hash.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_file() {
            files.insert(name, sha(&e.path()));
        } else {
            files.insert(name, "dir".into());
        }
    }
    files
}

/// Builds `tree` once successfully, breaks it with `breakage`, builds again: the error must contain
/// `message` and OUT/ must be as the good build left it.
fn fails_cleanly(breakage: impl FnOnce(&Path, &Path), message: &str) {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let system = dir.path().join("system");
    write_system(&system, PACKAGES, "");
    let out = dir.path().join("out");
    let with_system = ["--system", system.to_str().unwrap()];
    build_ok(dir.path(), &tree, &out, &with_system);
    let before = snapshot(&out);
    breakage(&tree, &system);
    let o = build_command(dir.path(), &tree, &out, &with_system)
        .output()
        .unwrap();
    common::failed(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(message), "want {message:?} in:\n{stderr}");
    assert_eq!(snapshot(&out), before, "OUT/ changed:\n{stderr}");
}

#[test]
fn error_malformed_package_line() {
    fails_cleanly(
        |_, system| fs::write(system.join("packages"), "alpine-base\n\nopenssh sshd\n").unwrap(),
        "packages:3: \"openssh sshd\": one package per line",
    );
}

#[test]
fn error_unknown_toml_key() {
    fails_cleanly(
        |_, system| fs::write(system.join("system.toml"), "[kernel]\nflavor = \"lts\"\n").unwrap(),
        "unknown field `flavor`",
    );
}

#[test]
fn error_no_kernel() {
    fails_cleanly(
        |tree, _| fs::remove_file(tree.join("boot/vmlinuz-lts")).unwrap(),
        "no kernel in",
    );
}

#[test]
fn error_no_init() {
    fails_cleanly(
        |tree, _| fs::remove_file(tree.join("init")).unwrap(),
        "/init is missing",
    );
}

#[test]
fn error_init_not_executable() {
    fails_cleanly(
        |tree, _| {
            fs::set_permissions(
                tree.join("sbin/openrc-init"),
                fs::Permissions::from_mode(0o644),
            )
            .unwrap()
        },
        "/init (→ /sbin/openrc-init) is not an executable file",
    );
}

#[test]
fn error_file_of_4_gib() {
    fails_cleanly(
        |tree, _| {
            fs::File::create(tree.join("etc/huge"))
                .unwrap()
                .set_len(4 << 30)
                .unwrap()
        },
        "etc/huge: 4294967296 bytes; the initramfs (newc cpio) cannot hold a file of 4 GiB or more",
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn error_missing_base() {
    fails_cleanly(
        |tree, _| fs::remove_dir_all(tree).unwrap(),
        "no such directory or tarball",
    );
}

#[test]
fn error_out_inside_the_tree() {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let err = common::failed(&xtask(
        dir.path(),
        &["build", "--base", "mini", "--out", "mini/out"],
    ));
    assert!(err.contains("the build would pack its own output"), "{err}");
    assert_eq!(
        fs::read_dir(tree.join("out")).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn base_tarball_keeps_owners_and_devices() {
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    Fixture::new("tar").write(&tree).unwrap();
    let tarball = dir.path().join("tree.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let from_dir = dir.path().join("from-dir");
    let from_tar = dir.path().join("from-tar");
    build_ok(dir.path(), &tree, &from_dir, &[]);
    build_ok(dir.path(), &tarball, &from_tar, &[]);
    assert_eq!(
        sha(&from_dir.join("initramfs")),
        sha(&from_tar.join("initramfs"))
    );
    assert!(
        !from_tar.join(".base").exists(),
        "the extracted tree is removed"
    );
}

/// The example system/ of this repository parses and goes through the seam as written.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn example_system_builds_through_the_seam() {
    let s = Seam::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system");
    let example = fs::canonicalize(example).unwrap();
    common::ok(&s.command(&example).output().unwrap());
    let record = fs::read_to_string(&s.record).unwrap();
    let packages = record
        .lines()
        .find_map(|l| l.strip_prefix("env PACKAGES="))
        .unwrap();
    let packages: Vec<&str> = packages.split(' ').collect();
    for p in [
        "alpine-base",
        "openrc-init",
        "linux-lts",
        "linux-firmware-none",
        "openssh-server",
        "zfs-lts",
    ] {
        assert!(packages.contains(&p), "{p} not in {packages:?}");
    }
    assert!(record.contains("env ALPINE_BRANCH=v3.22\n"), "{record}");
    assert!(
        record.contains(&format!("arg={}\n", example.join("setup.sh").display())),
        "{record}"
    );
    let manifest = Manifest::load(&s.out.join("manifest.json")).unwrap();
    assert!(
        manifest.git_commit.is_some(),
        "the example lives in git: {manifest:?}"
    );
    let status = Command::new("shellcheck")
        .arg(example.join("setup.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "shellcheck system/setup.sh");
}

/// Through sudo, the products belong to the user who ran it (SUDO_UID/SUDO_GID).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn products_belong_to_the_sudo_user() {
    let dir = common::tempdir();
    let tree = mini_tree(dir.path());
    let out = dir.path().join("out");
    let o = build_command(dir.path(), &tree, &out, &[])
        .env("SUDO_UID", "4321")
        .env("SUDO_GID", "8765")
        .output()
        .unwrap();
    common::ok(&o);
    for name in ["", "vmlinuz", "initramfs", "cmdline", "manifest.json"] {
        let meta = fs::metadata(out.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4321, 8765), "{name}");
    }
}

/// A user who is not root gets told why, and the same build runs again through sudo with the
/// environment it needs.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn not_root_reruns_through_sudo() {
    let dir = common::tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let system = dir.path().join("system");
    write_system(&system, PACKAGES, "");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let record = dir.path().join("sudo-args");
    fs::write(
        bin.join("sudo"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {}\nexit 7\n",
            record.display()
        ),
    )
    .unwrap();
    fs::set_permissions(bin.join("sudo"), fs::Permissions::from_mode(0o755)).unwrap();
    let tool = dir.path().join("tool");
    fs::write(&tool, "#!/bin/sh\nexit 1\n").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["build", "--system", "system", "--out", "out"])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", dir.path())
        .env_remove("XDG_CACHE_HOME")
        .env("ALPINE_MAKE_ROOTFS", &tool)
        .env("RAMNAS_APK", &tool)
        .env("SOURCE_DATE_EPOCH", "86400")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "sudo's exit status is the build's: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("alpine-make-rootfs must run as root"),
        "{}",
        text(&o)
    );
    let args = fs::read_to_string(&record).unwrap();
    let want = format!(
        "--\nenv\nXDG_CACHE_HOME={}/.cache\nALPINE_MAKE_ROOTFS={}\nRAMNAS_APK={}\nSOURCE_DATE_EPOCH=86400\n{}\nbuild\n--system\nsystem\n--out\nout\n",
        dir.path().display(),
        tool.display(),
        tool.display(),
        env!("CARGO_BIN_EXE_xtask"),
    );
    assert_eq!(args, want);
    assert!(
        !dir.path().join("out").exists(),
        "nothing written before sudo"
    );
}

/// A cached alpine-make-rootfs or apk.static that does not match its pinned SHA-256 is refused, never run.
#[test]
fn tampered_cached_tool_is_refused() {
    for pin in [
        &xtask::build::rootfs::ALPINE_MAKE_ROOTFS,
        &xtask::build::rootfs::APK,
    ] {
        let dir = common::tempdir();
        let system = dir.path().join("system");
        write_system(&system, PACKAGES, "");
        let cache = dir.path().join("cache/ramnas");
        fs::create_dir_all(&cache).unwrap();
        let ran = dir.path().join("ran");
        let cached = cache.join(format!("{}-{}", pin.name, pin.version));
        fs::write(&cached, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        fs::set_permissions(&cached, fs::Permissions::from_mode(0o755)).unwrap();
        let stand_in = dir.path().join("stand-in");
        fs::write(&stand_in, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755)).unwrap();
        let mut command =
            common::xtask_command(dir.path(), &["build", "--system", "system", "--out", "out"]);
        command.env("XDG_CACHE_HOME", dir.path().join("cache"));
        // The other one is a stand-in, so that only this one's pin decides.
        for other in [
            &xtask::build::rootfs::ALPINE_MAKE_ROOTFS,
            &xtask::build::rootfs::APK,
        ] {
            if other.name == pin.name {
                command.env_remove(other.env);
            } else {
                command.env(other.env, &stand_in);
            }
        }
        let err = common::failed(&command.output().unwrap());
        let want = format!("expected {} ({} {})", pin.sha256, pin.name, pin.version);
        assert!(err.contains(&want), "{want:?} in {err}");
        assert!(!ran.exists(), "{}: the tampered program ran", pin.name);
        assert!(!dir.path().join("out/rootfs").exists());
    }
}

/// The system lint runs before alpine-make-rootfs: a broken system/ fails at once, naming file:line, and
/// the tool never runs.
#[test]
fn lint_problems_stop_the_build_before_the_tool_runs() {
    let s = Seam::new();
    s.write(
        "packages",
        "alpine-base\nlinux-lts\nopenrc-init\nalpine-base\n",
    );
    let err = common::failed(&s.build(&[]));
    assert!(err.contains("packages:4:"), "the duplicate, by line: {err}");
    assert!(
        err.contains("linux-firmware"),
        "the missing firmware provider: {err}"
    );
    assert_eq!(
        s.runs(),
        0,
        "alpine-make-rootfs ran despite the lint: {err}"
    );
    assert!(!s.out.join("manifest.json").exists());
}

/// A lint warning (setup.sh making a user without a fixed uid) is said, with its file:line, and the build
/// goes on.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn lint_warnings_do_not_stop_the_build() {
    let s = Seam::new();
    s.write(
        "setup.sh",
        "#!/bin/sh\nln -sf /sbin/openrc-init /init\nadduser -D bob\n",
    );
    let text = common::ok(&s.build(&[]));
    assert!(
        text.contains("setup.sh:3: warning: `adduser` without a fixed uid"),
        "{text}"
    );
    assert_eq!(s.runs(), 1, "{text}");
    assert!(s.out.join("manifest.json").exists(), "{text}");
}

/// Root's authorized_keys come from the building user's ~/.ssh/*.pub, or from the file system.toml
/// names; they land in the initramfs as /root/.ssh/authorized_keys, 0600, and go away with the keys.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn authorized_keys_from_the_user_or_the_config() {
    let s = Seam::new();
    let home = s.dir.path().join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    let user_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ2bm9ZYXJxYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5 me@laptop";
    fs::write(home.join(".ssh/id_ed25519.pub"), format!("{user_key}\n")).unwrap();
    let keys_in_archive = |s: &Seam| -> Option<(String, u32)> {
        let dir = s.dir.path().join("extracted");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        common::cpio_each(
            &s.out,
            &dir,
            &[
                "--quiet",
                "-i",
                "--make-directories",
                "root/.ssh/authorized_keys",
            ],
        );
        let path = dir.join("root/.ssh/authorized_keys");
        let mode = fs::metadata(&path).ok()?.permissions().mode() & 0o777;
        Some((fs::read_to_string(&path).unwrap(), mode))
    };

    let built = common::ok(&s.build_as(&home));
    assert!(
        built.contains("id_ed25519.pub"),
        "the build lists where keys came from: {built}"
    );
    assert_eq!(keys_in_archive(&s), Some((format!("{user_key}\n"), 0o600)));

    let config_key = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 nas-admin";
    s.write("admin.pub", format!("{config_key}\n"));
    let toml = fs::read_to_string(s.system.join("system.toml")).unwrap();
    s.write(
        "system.toml",
        format!("{toml}[access]\nauthorized_keys = \"admin.pub\"\n"),
    );
    common::ok(&s.build_as(&home));
    assert_eq!(
        keys_in_archive(&s),
        Some((format!("{config_key}\n"), 0o600))
    );

    s.write("system.toml", toml);
    let empty_home = s.dir.path().join("nobody");
    let built = common::ok(&s.build_as(&empty_home));
    assert!(
        built.contains("console only"),
        "a warning when there is no key: {built}"
    );
    assert_eq!(keys_in_archive(&s), None);
}
