//! Test fixtures: a small bootable root tree made from Debian's busybox-static and kernel packages.
//!
//! Alpine's mirror is out of reach where the tests run, so the tests (and `cargo xtask bench`) pack this tree
//! instead of an Alpine one. It is a real system all the same: the host's Debian kernel in `/boot`, the kernel
//! modules it needs (decompressed, loaded by `/init` in dependency order), busybox, and a set of files of every
//! kind the packer must carry (owners, modes, a setuid bit, a hardlink pair, a symlink, a device node, a FIFO).
//! Its `/init` checks those from inside the booted system, runs any `/etc/fixture.d/*.sh` hooks, prints
//! `ramnas: ready slot=<ramnas.slot> build=<marker>` and powers off. Host programs busybox lacks (fsck.vfat)
//! can be copied in with the shared libraries they load.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// What the fixture's `/init` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Check the tree, run the hooks, print the ready line, power off.
    Ready,
    /// Exit at once, so the kernel panics ("Attempted to kill init").
    Panic,
    /// Never print the ready line; sleep forever.
    Silent,
    /// PID 1 is a real openrc-init: the host's OpenRC (Debian's `openrc` package) with the libraries it
    /// loads, busybox's applet links, stand-ins for the init scripts Alpine's packages install
    /// ([`STAND_INS`]; the sharing ones start the real Samba and NFS daemons), and OpenZFS's own (with
    /// zpool, zfs, zed, udev and the zfs module). No checks and no ready line of its own: the tree is meant
    /// to be finished by a system's `root/` and `setup.sh`, as alpine-make-rootfs finishes an Alpine tree.
    Openrc,
}

/// A fixture root tree to write with [`Fixture::write`].
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The build marker printed in the ready line (`build=<marker>`), also `/etc/ramnas-build`.
    pub build: String,
    pub init: Init,
    /// Copy every kernel module (decompressed, ~400 MB), as a full system would carry; else only the few
    /// the fixture loads.
    pub all_modules: bool,
    /// Write `/lib/apk/db/installed` with these (name, version) pairs, as apk would.
    pub packages: Vec<(String, String)>,
    /// Write `/boot/intel-ucode.img` and `/boot/amd-ucode.img` (uncompressed cpio archives holding a
    /// microcode blob that matches no CPU), as Alpine's microcode packages do.
    pub ucode: bool,
    /// Extra files: (path inside the tree, contents, mode). `/etc/fixture.d/NAME.sh` files are run by /init
    /// before the ready line.
    pub files: Vec<(String, String, u32)>,
    /// Host programs (names looked up on PATH, or paths) copied to the same path in the tree, with the shared
    /// libraries and dynamic loader `ldd` lists for them.
    pub host_programs: Vec<String>,
    /// Host files copied into the tree: (host path, path inside the tree).
    pub copies: Vec<(PathBuf, String)>,
}

/// Modules the fixture loads at boot: virtio disks, a USB stick on xhci, an IDE disk, FAT to read it, and
/// qemu's virtio network card.
pub const MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "xhci-pci",
    "usb-storage",
    "ata_piix",
    "sd_mod",
    "vfat",
    "nls_cp437",
    "nls_iso8859-1",
    "nls_ascii",
    "button",
    "evdev",
    "efivarfs",
];

impl Fixture {
    pub fn new(build: &str) -> Fixture {
        Fixture {
            build: build.to_string(),
            init: Init::Ready,
            all_modules: false,
            packages: vec![
                ("busybox".to_string(), "1.36.1-r0".to_string()),
                ("ramnas-fixture".to_string(), format!("{build}-r0")),
            ],
            ucode: false,
            files: Vec::new(),
            host_programs: Vec::new(),
            copies: Vec::new(),
        }
    }

    /// The packages of the NAS of `system/`, for a build through [`StandIns`]: [`Init::Openrc`], and
    /// dosfstools as the NAS lists it (the host's fsck.vfat and the glibc it loads).
    pub fn openrc(build: &str) -> Fixture {
        let mut fixture = Fixture::new(build);
        fixture.init = Init::Openrc;
        fixture.host_programs.push("fsck.vfat".into());
        fixture
    }

    /// Writes the tree into `dir` (created if missing; must be empty). Needs root for owners and devices.
    pub fn write(&self, dir: &Path) -> Result<()> {
        if !crate::host::is_root() {
            bail!(
                "the test fixture sets file owners and makes device nodes: run the tests as root"
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let kernel = HostKernel::find()?;
        write_busybox(dir)?;
        let on_demand: &[(&str, &str)] = match self.init {
            Init::Openrc => ON_DEMAND_MODULES,
            _ => &[],
        };
        write_kernel(dir, &kernel, self.all_modules, on_demand)?;
        write_special_files(dir)?;
        write_file(dir, "etc/ramnas-build", &format!("{}\n", self.build), 0o644)?;
        write_file(dir, "etc/hostname", "fixture\n", 0o644)?;
        match self.init {
            Init::Openrc => write_openrc(dir)?,
            init => write_file(dir, "init", &init_script(init), 0o755)?,
        }
        if !self.packages.is_empty() {
            write_file(
                dir,
                "lib/apk/db/installed",
                &apk_installed(&self.packages),
                0o644,
            )?;
        }
        if self.ucode {
            write_ucode(dir)?;
        }
        for (path, contents, mode) in &self.files {
            write_file(dir, path, contents, *mode)?;
        }
        for program in &self.host_programs {
            write_host_program(dir, program)?;
        }
        for (from, to) in &self.copies {
            let dest = dir.join(to);
            fs::create_dir_all(dest.parent().expect("a path in the tree"))?;
            fs::copy(from, &dest)
                .with_context(|| format!("copying {} into the fixture", from.display()))?;
        }
        Ok(())
    }
}

/// The Debian kernel installed on the host: `/boot/vmlinuz-<version>` and `/lib/modules/<version>`.
#[derive(Debug, Clone)]
pub struct HostKernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

impl HostKernel {
    /// The newest kernel that has both an image and a module directory.
    pub fn find() -> Result<HostKernel> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/boot").context("reading /boot")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            let modules = Path::new("/lib/modules").join(version);
            if modules.join("modules.dep").exists() {
                found.push(HostKernel {
                    version: version.to_string(),
                    vmlinuz: Path::new("/boot").join(&name),
                    modules,
                });
            }
        }
        found.sort_by(|a, b| a.version.cmp(&b.version));
        found.pop().context(
            "no kernel in /boot with modules in /lib/modules: install Debian's linux-image-amd64",
        )
    }

    /// Whether `modules.dep` lists the module `name` (`zfs`: Debian's zfs-dkms built it for this kernel).
    pub fn has_module(&self, name: &str) -> Result<bool> {
        let deps = fs::read_to_string(self.modules.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", self.modules.display()))?;
        Ok(dep_line(&deps, name).is_some())
    }
}

fn write_file(root: &Path, path: &str, contents: &str, mode: u32) -> Result<()> {
    let dest = root.join(path.trim_start_matches('/'));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&dest, contents).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

/// A host program and what `ldd` says it loads, each copied to the same absolute path under `root`.
fn write_host_program(root: &Path, program: &str) -> Result<()> {
    let path = which::which(program).with_context(|| format!("no {program} on this host"))?;
    let sh = Shell::new()?;
    let out = cmd!(sh, "ldd {path}").quiet().ignore_status().output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let libraries = if out.status.success() {
        shared_libraries(&listing).with_context(|| format!("ldd {}", path.display()))?
    } else if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
        Vec::new()
    } else {
        bail!(
            "ldd {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for file in std::iter::once(path).chain(libraries) {
        let dest = root.join(file.strip_prefix("/").unwrap_or(&file));
        fs::create_dir_all(dest.parent().unwrap())?;
        // fs::copy follows symlinks (/lib64/ld-linux-x86-64.so.2, fsck.vfat -> fsck.fat) and keeps the mode.
        fs::copy(&file, &dest)
            .with_context(|| format!("copying {} into the fixture", file.display()))?;
    }
    Ok(())
}

/// The files in an `ldd` listing: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2
/// (0x…)`; the vDSO has no file.
fn shared_libraries(listing: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for line in listing.lines() {
        let line = line.trim();
        let file = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.split_whitespace().next().unwrap_or("");
                if !target.starts_with('/') {
                    bail!("{} not found", name.trim());
                }
                target
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if file.starts_with('/') {
            files.push(PathBuf::from(file));
        }
    }
    Ok(files)
}

/// The host's busybox (Debian's busybox-static).
fn host_busybox() -> Result<&'static Path> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("no /bin/busybox on the host: install Debian's busybox-static")
}

/// `/bin/busybox` from busybox-static, with the applet links `/init` needs before `--install` runs.
fn write_busybox(root: &Path) -> Result<()> {
    let busybox = host_busybox()?;
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(busybox, root.join("bin/busybox")).context("copying busybox")?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    symlink("busybox", root.join("bin/sh")).context("linking /bin/sh")?;
    Ok(())
}

/// Modules the openrc fixture carries but does not load at boot: the services load them with `modprobe`, as
/// on Alpine (`zfs-import` loads `zfs`, and with it `spl`; `nfs` loads `nfsd`), each with what to do when the
/// host has no such module. Debian's zfs-dkms builds zfs for the fixture's kernel (`updates/dkms/`).
pub const ON_DEMAND_MODULES: &[(&str, &str)] = &[
    (
        "zfs",
        "install zfs-dkms and linux-headers-amd64 (Debian's contrib), which build it for this kernel: \
         `cargo xtask test` does",
    ),
    ("nfsd", "the host's kernel package has no NFS server module"),
];

/// The kernel image into `/boot`, and its modules (decompressed, so busybox's insmod can load them): those
/// of [`MODULES`], loaded at boot in `fixture.load`'s order, and `on_demand` (all of them when `all`), with a
/// `modules.dep` for busybox's modprobe.
fn write_kernel(
    root: &Path,
    kernel: &HostKernel,
    all: bool,
    on_demand: &[(&str, &str)],
) -> Result<()> {
    fs::create_dir_all(root.join("boot"))?;
    fs::copy(
        &kernel.vmlinuz,
        root.join("boot")
            .join(format!("vmlinuz-{}", kernel.version)),
    )
    .with_context(|| format!("copying {}", kernel.vmlinuz.display()))?;
    let deps = fs::read_to_string(kernel.modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", kernel.modules.display()))?;
    let dest = root.join("lib/modules").join(&kernel.version);
    // modules.dep: `path: dep dep …`, each dependency list ordered so that the last loads first. A module
    // and what it needs, ordered so that the needed ones load first.
    let with_deps = |wanted: &str| -> Result<Vec<String>> {
        let line = dep_line(&deps, wanted).with_context(|| {
            format!(
                "module {wanted} not in {}/modules.dep",
                kernel.modules.display()
            )
        })?;
        let (module, rest) = line.split_once(':').unwrap_or((line, ""));
        Ok(rest
            .split_whitespace()
            .rev()
            .chain([module])
            .map(str::to_string)
            .collect())
    };
    let mut load_order: Vec<String> = Vec::new();
    for wanted in MODULES {
        for path in with_deps(wanted)? {
            if !load_order.contains(&path) {
                load_order.push(path);
            }
        }
    }
    let mut copy: BTreeSet<String> = load_order.iter().cloned().collect();
    for (wanted, hint) in on_demand {
        copy.extend(with_deps(wanted).with_context(|| hint.to_string())?);
    }
    if all {
        copy.extend(
            deps.lines()
                .filter_map(|l| l.split(':').next())
                .map(str::to_string),
        );
    }
    for path in &copy {
        copy_module(
            &kernel.modules.join(path),
            &dest.join(strip_compression(path)),
        )?;
    }
    // modules.dep of the copied modules, by their decompressed names.
    let dep: String = deps
        .lines()
        .filter_map(|l| {
            let (module, rest) = l.split_once(':')?;
            copy.contains(module).then(|| {
                let needs: Vec<&str> = rest.split_whitespace().map(strip_compression).collect();
                format!("{}: {}\n", strip_compression(module), needs.join(" "))
            })
        })
        .collect();
    write_file(
        root,
        &format!("lib/modules/{}/modules.dep", kernel.version),
        &dep,
        0o644,
    )?;
    let list: String = load_order
        .iter()
        .map(|p| format!("{}\n", strip_compression(p)))
        .collect();
    write_file(
        root,
        &format!("lib/modules/{}/fixture.load", kernel.version),
        &list,
        0o644,
    )
}

/// The line of `modules.dep` (its text: `deps`) whose module is `name`.
fn dep_line<'a>(deps: &'a str, name: &str) -> Option<&'a str> {
    deps.lines().find(|l| {
        l.split(':')
            .next()
            .is_some_and(|path| module_name(path) == name)
    })
}

fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

fn strip_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

fn copy_module(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().unwrap())?;
    let input = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut output =
        fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let name = src.to_string_lossy();
    if name.ends_with(".xz") {
        std::io::copy(&mut xz2::read::XzDecoder::new(input), &mut output)
    } else if name.ends_with(".zst") {
        std::io::copy(&mut zstd::Decoder::new(input)?, &mut output)
    } else if name.ends_with(".gz") {
        std::io::copy(&mut flate2::read::GzDecoder::new(input), &mut output)
    } else {
        std::io::copy(&mut std::io::BufReader::new(input), &mut output)
    }
    .with_context(|| format!("decompressing {}", src.display()))?;
    Ok(())
}

/// One file of each kind the packer must carry, with owners and modes `/init` checks after boot.
fn write_special_files(root: &Path) -> Result<()> {
    let dir = root.join("fixture");
    fs::create_dir_all(&dir)?;
    write_file(root, "fixture/owned", "owned by 1234:5678\n", 0o640)?;
    std::os::unix::fs::chown(dir.join("owned"), Some(1234), Some(5678)).context("chown")?;
    write_file(root, "fixture/setuid", "setuid\n", 0o4755)?;
    write_file(root, "fixture/sticky/.keep", "", 0o644)?;
    fs::set_permissions(dir.join("sticky"), fs::Permissions::from_mode(0o1777))?;
    write_file(root, "fixture/hard1", "hardlinked data\n", 0o644)?;
    fs::hard_link(dir.join("hard1"), dir.join("hard2")).context("hard link")?;
    symlink("hard1", dir.join("link")).context("symlink")?;
    use rustix::fs::{makedev, FileType};
    mknod(
        &dir.join("null"),
        FileType::CharacterDevice,
        0o666,
        makedev(1, 3),
    )?;
    mknod(&dir.join("fifo"), FileType::Fifo, 0o600, 0)?;
    Ok(())
}

fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, dev: rustix::fs::Dev) -> Result<()> {
    let mode = rustix::fs::Mode::from_raw_mode(mode);
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, dev)
        .map_err(std::io::Error::from)
        .with_context(|| format!("mknod {}", path.display()))
}

fn apk_installed(packages: &[(String, String)]) -> String {
    packages
        .iter()
        .map(|(name, version)| format!("P:{name}\nV:{version}\nA:x86_64\n\n"))
        .collect()
}

/// Early-microcode archives in the form Alpine's intel-ucode and amd-ucode install them.
fn write_ucode(root: &Path) -> Result<()> {
    for (file, blob) in [
        ("intel-ucode.img", "GenuineIntel.bin"),
        ("amd-ucode.img", "AuthenticAMD.bin"),
    ] {
        let mut out = fs::File::create(root.join("boot").join(file))?;
        let mut ino = 1;
        for dir in ["kernel", "kernel/x86", "kernel/x86/microcode"] {
            cpio::newc::Builder::new(dir)
                .ino(ino)
                .mode(0o40755)
                .nlink(2)
                .write(&mut out, 0)
                .finish()?;
            ino += 1;
        }
        let data = b"not microcode for any cpu\n";
        let name = format!("kernel/x86/microcode/{blob}");
        let mut w = cpio::newc::Builder::new(&name)
            .ino(ino)
            .mode(0o100644)
            .nlink(1)
            .write(&mut out, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        cpio::newc::trailer(&mut out)?;
    }
    Ok(())
}

/// OpenRC's programs, which the openrc fixture copies from the host with the libraries they load.
const OPENRC_PROGRAMS: &[&str] = &[
    "/sbin/openrc-init",
    "/sbin/openrc",
    "/sbin/openrc-run",
    "/sbin/openrc-shutdown",
    "/sbin/rc-service",
    "/sbin/rc-update",
    "/sbin/supervise-daemon",
    "/bin/rc-status",
];

/// OpenSSH's server, which the openrc fixture runs for real (the `sshd` service): Debian's, with the
/// programs it starts per connection and `ssh-keygen` (ramnas-persist makes the host keys with it).
const OPENSSH_PROGRAMS: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/bin/ssh-keygen",
];

/// The NAS's alert channels (`/etc/ramnas/notify`), which the openrc fixture runs for real as Alpine's `msmtp`
/// and `curl` packages install them: Debian's, with the libraries they load.
const NOTIFY_PROGRAMS: &[&str] = &["/usr/bin/msmtp", "/usr/bin/curl"];

/// The NAS's file sharing, which the openrc fixture runs for real as Alpine's `samba` and `nfs-utils` (with
/// `rpcbind`) install it: Debian's Samba (smbd, nmbd, and `smbpasswd`, which sets a user's password) and
/// kernel NFS server's helpers.
const SHARING_PROGRAMS: &[&str] = &[
    "/usr/sbin/smbd",
    "/usr/sbin/nmbd",
    "/usr/bin/smbpasswd",
    "/usr/sbin/exportfs",
    "/usr/sbin/rpc.mountd",
    "/usr/sbin/rpc.nfsd",
    "/usr/sbin/rpc.statd",
    "/usr/sbin/rpcbind",
];

/// OpenZFS's programs, which the openrc fixture runs for real: Debian's zfsutils-linux and zfs-zed, where
/// its init scripts look for them.
const ZFS_PROGRAMS: &[&str] = &[
    "/sbin/zpool",
    "/sbin/zfs",
    "/sbin/mount.zfs",
    "/usr/sbin/zed",
];

/// OpenZFS's own OpenRC services, as Alpine's `zfs-openrc` installs them from upstream's `etc/init.d`:
/// the openrc fixture takes Debian's build of the same scripts and configures them as Alpine's build does
/// ([`alpine_zfs_script`]).
const ZFS_SERVICES: &[&str] = &["zfs-import", "zfs-mount", "zfs-zed"];

/// The directories of ZED's scripts and settings (`/etc/zfs/zed.d` links into the second).
const ZED_DIRS: &[&str] = &["/etc/zfs/zed.d", "/usr/lib/zfs-linux/zed.d"];

/// The udev daemon the openrc fixture runs for eudev (Alpine's udev): Debian's (`udevadm`, which is
/// `systemd-udevd` by that name), with only the rules that name disks (`/dev/disk/by-id`).
const UDEVADM: &str = "/bin/udevadm";
const UDEV_RULES: &[&str] = &["/lib/udev/rules.d/60-persistent-storage.rules"];

/// What Alpine's `networking` does (aports main/openrc/networking.initd): `ifup` each `auto` interface of
/// /etc/network/interfaces, and succeed when any one came up, so `lo` alone counts as started.
const NETWORKING: &str = r#"ret=1
	for iface in $(awk '$1 == "auto" {for (i = 2; i <= NF; i++) printf("%s ", $i)}' /etc/network/interfaces); do
		if ifup "$iface" >/dev/null 2>&1; then ret=0; else ifdown "$iface" >/dev/null 2>&1; fi
	done
	eend $ret
	return $ret"#;

/// The udhcpc script busybox's `ifup` runs for `inet dhcp` (Alpine's busybox ships one; Debian's busybox looks
/// for it here): the lease's address and default route on the interface.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Stand-in for the udhcpc script Alpine's busybox installs (ramnas test fixture).
case "$1" in
deconfig)
	ip addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -z "$router" ] || ip route add default via "${router%% *}" dev "$interface"
	;;
esac
exit 0
"#;

/// Alpine's busybox has `addgroup` and `adduser` (setup.sh makes the share's owner with them); Debian's
/// busybox-static has neither. Stand-ins for the options setup.sh uses, refusing a name or id in use, as
/// busybox's do.
const ACCOUNT_APPLETS: &[(&str, &str)] = &[
    (
        "usr/sbin/addgroup",
        r#"#!/bin/sh
# Stand-in for Alpine's busybox addgroup (ramnas test fixture): addgroup [-g GID] [-S] GROUP
set -eu
gid=
while getopts g:S opt; do
	case $opt in
	g) gid=$OPTARG ;;
	S) ;;
	*) exit 1 ;;
	esac
done
shift $((OPTIND - 1))
name=$1
[ -n "$gid" ] || gid=$(awk -F: 'BEGIN {g = 1000} $3 >= g && $3 < 60000 {g = $3 + 1} END {print g}' /etc/group)
if awk -F: -v n="$name" -v g="$gid" '$1 == n || $3 == g {found = 1} END {exit !found}' /etc/group; then
	echo "addgroup: group '$name' or gid $gid in use" >&2
	exit 1
fi
echo "$name:x:$gid:" >>/etc/group
"#,
    ),
    (
        "usr/sbin/adduser",
        r#"#!/bin/sh
# Stand-in for Alpine's busybox adduser (ramnas test fixture):
# adduser [-h HOME] [-g GECOS] [-s SHELL] [-G GROUP] [-S] [-D] [-H] [-u UID] USER
set -eu
home= gecos= shell=/bin/sh group= uid=
while getopts h:g:s:G:SDHu: opt; do
	case $opt in
	h) home=$OPTARG ;;
	g) gecos=$OPTARG ;;
	s) shell=$OPTARG ;;
	G) group=$OPTARG ;;
	u) uid=$OPTARG ;;
	S | D | H) ;;
	*) exit 1 ;;
	esac
done
shift $((OPTIND - 1))
name=$1
[ -n "$home" ] || home=/home/$name
[ -n "$uid" ] || uid=$(awk -F: 'BEGIN {u = 1000} $3 >= u && $3 < 60000 {u = $3 + 1} END {print u}' /etc/passwd)
if awk -F: -v n="$name" -v u="$uid" '$1 == n || $3 == u {found = 1} END {exit !found}' /etc/passwd; then
	echo "adduser: user '$name' or uid $uid in use" >&2
	exit 1
fi
[ -n "$group" ] || { group=$name; addgroup -g "$uid" "$name"; }
gid=$(awk -F: -v n="$group" '$1 == n {print $3}' /etc/group)
[ -n "$gid" ] || { echo "adduser: unknown group $group" >&2; exit 1; }
echo "$name:x:$uid:$gid:$gecos:$home:$shell" >>/etc/passwd
echo "$name:!::0:::::" >>/etc/shadow
"#,
    ),
];

/// Stand-ins for the init scripts Alpine's packages install (alpine-base, openrc, busybox-openrc,
/// udev-init-scripts, zfs-openrc, agetty-openrc, openssh, chrony, smartmontools, samba, nfs-utils): what
/// `system/setup.sh` enables must exist for `rc-update add` to accept it. Each starts and stops and says so
/// (`* Starting NAME (stand-in)`); the few a booting fixture depends on do their job: `sysfs` and `devfs`
/// mount /sys and /dev, `modules` loads the fixture's kernel modules (Alpine's kernel loads them through
/// udev) and mounts efivarfs (openrc's `sysfs` does), `hostname` sets the host name, `acpid` runs busybox's
/// acpid (the power button), `networking` brings up /etc/network/interfaces as Alpine's does, and `sshd` runs
/// the real OpenSSH server after `ssh-keygen -A`, as Alpine's does (the host keys are ramnas-persist's when
/// it restored them); `udev`, `udev-trigger` and `udev-settle` run the udev daemon and make it name the disks,
/// as udev-init-scripts does, `udev-trigger` loading the fixture's modules first (as udev loads Alpine's, by
/// their aliases, before the boot runlevel: `zfs-import` finds the disks there). The sharing services start the
/// real daemons ([`SHARING_PROGRAMS`]) as Alpine's scripts do: `samba` smbd and nmbd (its `daemon_list`),
/// `rpcbind` (which provides `portmap`), `rpc.statd`, and `nfs` loads nfsd, mounts its filesystem, exports
/// /etc/exports and starts rpc.mountd and 8 nfsd threads. OpenZFS's services are the real ones
/// ([`ZFS_SERVICES`]). (name, depend() body, start() body.)
pub const STAND_INS: &[(&str, &str, &str)] = &[
    (
        "sysfs",
        "",
        "mountinfo -q /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys",
    ),
    (
        "devfs",
        "provide dev-mount; need sysfs; before dev",
        "mountinfo -q /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev\n\
         \tmkdir -p /dev/pts /dev/shm\n\
         \tmountinfo -q /dev/pts || mount -t devpts -o gid=5,mode=0620 devpts /dev/pts",
    ),
    ("dmesg", "before dev", ""),
    (
        "udev",
        "provide dev; need sysfs dev-mount",
        "/lib/systemd/systemd-udevd --daemon",
    ),
    (
        "udev-trigger",
        "need udev",
        "while read -r module; do insmod \"/lib/modules/$(uname -r)/$module\" 2>/dev/null; done \
         <\"/lib/modules/$(uname -r)/fixture.load\"\n\
         \tudevadm trigger --type=subsystems --action=add\n\
         \tudevadm trigger --type=devices --action=add",
    ),
    (
        "udev-settle",
        "need udev; after udev-trigger",
        "udevadm settle --timeout=60",
    ),
    ("udev-postmount", "after udev", ""),
    ("hwdrivers", "", ""),
    (
        "modules",
        "after dev-mount",
        "while read -r module; do insmod \"/lib/modules/$(uname -r)/$module\" 2>/dev/null; done \
         <\"/lib/modules/$(uname -r)/fixture.load\"\n\tsleep 2\n\
         \t! [ -d /sys/firmware/efi/efivars ] || mountinfo -q /sys/firmware/efi/efivars || \
         mount -t efivarfs efivarfs /sys/firmware/efi/efivars",
    ),
    ("sysctl", "", ""),
    ("hostname", "", "hostname -F /etc/hostname"),
    ("bootmisc", "", ""),
    ("hwclock", "", ""),
    ("syslog", "", ""),
    ("networking", "provide net; after modules", NETWORKING),
    ("seedrng", "", ""),
    ("chronyd", "", ""),
    (
        "sshd",
        "after net",
        "ssh-keygen -A && mkdir -p /run/sshd && chmod 0755 /run/sshd && /usr/sbin/sshd || { eend 1; return 1; }",
    ),
    ("crond", "", ""),
    ("smartd", "", ""),
    ("agetty", "", ""),
    ("acpid", "", "acpid"),
    ("killprocs", "", ""),
    ("mount-ro", "", "sync"),
    (
        "samba",
        "need net; after firewall",
        "mkdir -p /run/samba /var/lib/samba /var/cache/samba /var/log/samba && smbd -D && nmbd -D \
         || { eend 1; return 1; }",
    ),
    ("rpcbind", "provide portmap; use net", "rpcbind || { eend 1; return 1; }"),
    (
        "rpc.statd",
        "need portmap; use net",
        "mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak && chown nobody:root /var/lib/nfs/sm /var/lib/nfs/sm.bak \
         && chmod 700 /var/lib/nfs/sm /var/lib/nfs/sm.bak && rpc.statd || { eend 1; return 1; }",
    ),
    (
        "nfs",
        "need portmap rpc.statd; use net",
        "modprobe -q nfsd\n\
         \tmountinfo -q /proc/fs/nfsd || mount -t nfsd -o nodev,noexec,nosuid nfsd /proc/fs/nfsd\n\
         \tmkdir -p /var/lib/nfs/v4recovery /var/lib/nfs/v4root\n\
         \texportfs -r && rpc.mountd && rpc.nfsd 8 || { eend 1; return 1; }",
    ),
];

/// The host's OpenRC as the tree's init (`/init` → `/sbin/openrc-init`), busybox's applet links (Alpine's
/// busybox installs them too), the stand-in init scripts, the runlevel directories, and the few files
/// Alpine's base packages own that setup.sh and OpenRC read (users, `/etc/conf.d/zfs`).
fn write_openrc(root: &Path) -> Result<()> {
    for program in OPENRC_PROGRAMS
        .iter()
        .chain(OPENSSH_PROGRAMS)
        .chain(NOTIFY_PROGRAMS)
        .chain(ZFS_PROGRAMS)
        .chain(SHARING_PROGRAMS)
        .chain([&UDEVADM])
    {
        write_host_program(root, program)?;
    }
    write_udev(root)?;
    write_zfs_services(root)?;
    let sh = Shell::new()?;
    let lib_rc = Path::new("/lib/rc");
    for entry in walk(lib_rc)? {
        let dest = root.join(entry.strip_prefix("/").unwrap());
        if entry.is_dir() {
            fs::create_dir_all(&dest)?;
        } else {
            fs::copy(&entry, &dest)
                .with_context(|| format!("copying {} into the fixture", entry.display()))?;
        }
    }
    // OpenRC's settings and one of its scripts; the RPC transports, programs and ports the NFS daemons read
    // (Alpine's libtirpc-conf and alpine-baselayout-data have them too).
    for file in [
        "/etc/rc.conf",
        "/etc/init.d/savecache",
        "/etc/netconfig",
        "/etc/rpc",
        "/etc/services",
    ] {
        let dest = root.join(file.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap())?;
        fs::copy(file, &dest).with_context(|| format!("copying the host's {file}"))?;
    }
    let applets = cmd!(sh, "{root}/bin/busybox --list-full")
        .quiet()
        .read()
        .context("busybox --list-full")?;
    for applet in applets.lines().filter(|l| !l.is_empty()) {
        let dest = root.join(applet);
        if dest.symlink_metadata().is_ok() {
            continue;
        }
        fs::create_dir_all(dest.parent().unwrap())?;
        symlink("/bin/busybox", &dest).with_context(|| format!("linking /{applet}"))?;
    }
    for (name, depend, start) in STAND_INS {
        let script = format!(
            "#!/sbin/openrc-run\n\
             # Stand-in for Alpine's {name} init script (ramnas test fixture).\n\
             description=\"stand-in for {name}\"\n\
             depend() {{\n\t{depend}\n\t:\n}}\n\
             start() {{\n\tebegin \"Starting $RC_SVCNAME (stand-in)\"\n\t{start}\n\teend 0\n}}\n\
             stop() {{\n\tebegin \"Stopping $RC_SVCNAME (stand-in)\"\n\teend 0\n}}\n"
        );
        write_file(root, &format!("etc/init.d/{name}"), &script, 0o755)?;
    }
    for level in ["sysinit", "boot", "default", "shutdown", "nonetwork"] {
        fs::create_dir_all(root.join("etc/runlevels").join(level))?;
    }
    for dir in ["run", "var/log", "var/lib", "media", "mnt", "etc/conf.d"] {
        fs::create_dir_all(root.join(dir))?;
    }
    // Alpine's busybox: the power button powers off (busybox acpid runs this for it).
    write_file(
        root,
        "etc/acpi/PWRF/00000080",
        "#!/bin/sh\npoweroff\n",
        0o755,
    )?;
    // Debian's OpenRC reads LSB dependency names from insserv's configuration.
    write_file(root, "etc/insserv.conf", "", 0o644)?;
    fs::create_dir_all(root.join("etc/insserv.conf.d"))?;
    // busybox ifup: its state file, the hook directories it runs, and the udhcpc script.
    symlink("../run", root.join("var/run")).context("linking /var/run")?;
    for hooks in ["if-pre-up.d", "if-up.d", "if-down.d", "if-post-down.d"] {
        fs::create_dir_all(root.join("etc/network").join(hooks))?;
    }
    write_file(root, "etc/udhcpc/default.script", UDHCPC_SCRIPT, 0o755)?;
    // Alpine's base users, sshd's privilege separation user (openssh adds it) and rpcbind's (Debian's build
    // runs as `_rpc`).
    write_file(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:22:22:sshd:/run/sshd:/sbin/nologin\n\
         _rpc:x:100:65534::/run/rpcbind:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
        0o644,
    )?;
    write_file(root, "etc/shadow", "root:*::0:::::\n", 0o640)?;
    write_file(
        root,
        "etc/group",
        "root:x:0:root\ntty:x:5:\nuucp:x:14:\nsshd:x:22:\nnogroup:x:65533:\nnobody:x:65534:\n",
        0o644,
    )?;
    for (applet, script) in ACCOUNT_APPLETS {
        if root.join(applet).symlink_metadata().is_err() {
            write_file(root, applet, script, 0o755)?;
        }
    }
    symlink("/sbin/openrc-init", root.join("init")).context("linking /init")?;
    Ok(())
}

/// The udev daemon (`/lib/systemd/systemd-udevd`, `/sbin/udevadm`: links to udevadm) and its disk rules.
fn write_udev(root: &Path) -> Result<()> {
    for link in ["lib/systemd/systemd-udevd", "sbin/udevadm"] {
        let dest = root.join(link);
        fs::create_dir_all(dest.parent().unwrap())?;
        if dest.symlink_metadata().is_err() {
            symlink(UDEVADM, &dest).with_context(|| format!("linking /{link}"))?;
        }
    }
    for rules in UDEV_RULES {
        let dest = root.join(rules.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap())?;
        fs::copy(rules, &dest)
            .with_context(|| format!("copying {rules} (Debian's udev) into the fixture"))?;
    }
    Ok(())
}

/// OpenZFS's services ([`ZFS_SERVICES`]), their shared functions, ZED's scripts, and their settings, from
/// Debian's build as Alpine's would have them: settings in `/etc/conf.d/zfs` (Debian's `/etc/default/zfs`,
/// unchanged).
fn write_zfs_services(root: &Path) -> Result<()> {
    let read = |path: &str| {
        fs::read_to_string(path).with_context(|| {
            format!("reading {path}: install zfsutils-linux and zfs-zed (`cargo xtask test` does)")
        })
    };
    for name in ZFS_SERVICES {
        let script = read(&format!("/etc/init.d/{name}"))?;
        write_file(
            root,
            &format!("etc/init.d/{name}"),
            &alpine_zfs_script(&script)?,
            0o755,
        )?;
    }
    let functions = read("/etc/zfs/zfs-functions")?;
    write_file(
        root,
        "etc/zfs/zfs-functions",
        &functions.replace("/etc/default/zfs", "/etc/conf.d/zfs"),
        0o644,
    )?;
    write_file(root, "etc/conf.d/zfs", &read("/etc/default/zfs")?, 0o644)?;
    for dir in ZED_DIRS {
        for entry in walk(Path::new(dir))? {
            let dest = root.join(entry.strip_prefix("/").unwrap());
            if let Ok(target) = fs::read_link(&entry) {
                symlink(&target, &dest)
            } else if entry.is_dir() {
                fs::create_dir_all(&dest)
            } else {
                fs::copy(&entry, &dest).map(drop)
            }
            .with_context(|| format!("copying {} into the fixture", entry.display()))?;
        }
    }
    Ok(())
}

/// One of Debian's OpenZFS init scripts as upstream's configure writes it for Alpine (VENDOR alpine:
/// `#!/sbin/openrc-run`, and the test for OpenRC that Debian's build replaces with `if true`), so OpenRC runs
/// its depend() and start(). Its LSB header goes too: Alpine's OpenRC ignores it, but Debian's, which the
/// fixture runs, takes a script that has one for a sysv script and never calls its start().
fn alpine_zfs_script(debian: &str) -> Result<String> {
    let body = debian
        .split_once('\n')
        .map(|(_, rest)| rest)
        .context("an empty init script")?;
    if !body.contains("\nif true\n") {
        bail!(
            "Debian's OpenZFS init script no longer says `if true` where upstream tests for OpenRC"
        );
    }
    let mut in_header = false;
    let lines: Vec<&str> = body
        .lines()
        .filter(|line| {
            let header = in_header || line.starts_with("### BEGIN INIT INFO");
            in_header = header && !line.starts_with("### END INIT INFO");
            !header
        })
        .collect();
    Ok(format!(
        "#!/sbin/openrc-run\n{}\n",
        lines
            .join("\n")
            .replace("\nif true\n", "\nif [ ! -e /sbin/openrc-run ]\n")
    ))
}

/// `dir` and everything below it, parents before children.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {} (is Debian's openrc installed?)", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(walk(&entry)?);
        } else {
            out.push(entry);
        }
    }
    Ok(out)
}

fn init_script(init: Init) -> String {
    let body = match init {
        Init::Ready => READY,
        Init::Panic => "echo 'ramnas: fixture init exits on purpose'\nexit 1\n",
        Init::Silent => "echo 'ramnas: fixture stays silent'\nwhile :; do sleep 3600; done\n",
        Init::Openrc => unreachable!("openrc-init is the openrc fixture's /init"),
    };
    format!("{PRELUDE}{body}")
}

const PRELUDE: &str = r#"#!/bin/sh
# ramnas test fixture /init (written by xtask::dev::fixture).
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s
"#;

const READY: &str = r#"failed=0
fail() { echo "ramnas: FAIL $*"; failed=1; }
check() { want=$1; shift; got=$("$@" 2>&1); [ "$got" = "$want" ] || fail "$* gave '$got', want '$want'"; }
check "1234:5678:640" stat -c '%u:%g:%a' /fixture/owned
check "4755" stat -c '%a' /fixture/setuid
check "1777" stat -c '%a' /fixture/sticky
check "$(stat -c %i /fixture/hard1)" stat -c %i /fixture/hard2
check "2" stat -c %h /fixture/hard1
check "hardlinked data" cat /fixture/hard2
check "hard1" readlink /fixture/link
check "character special file 1:3" stat -c '%F %t:%T' /fixture/null
check "fifo 600" stat -c '%F %a' /fixture/fifo
[ "$failed" = 0 ] && echo "ramnas: fixture checks ok"
kver=$(uname -r)
while read -r module; do
    insmod "/lib/modules/$kver/$module" 2>/dev/null
done < "/lib/modules/$kver/fixture.load"
mdev -s 2>/dev/null
sleep 1
for dev in /sys/block/*; do
    case "${dev##*/}" in loop*|ram*) continue ;; esac
    echo "ramnas: disk ${dev##*/} serial=$(cat "$dev/serial" 2>/dev/null || cat "$dev/device/serial" 2>/dev/null)"
done
slot=none
for arg in $(cat /proc/cmdline); do
    case "$arg" in ramnas.slot=*) slot=${arg#ramnas.slot=} ;; esac
done
for hook in /etc/fixture.d/*.sh; do
    [ -f "$hook" ] && . "$hook"
done
echo "ramnas: ready slot=$slot build=$(cat /etc/ramnas-build)"
sync
poweroff -f
"#;

/// alpine-make-rootfs as far as ramnas uses it, on a tree made beforehand (`FAKE_TREE`): "install the
/// packages" (copy the tree), copy FS_SKEL_DIR over it (replacing links, as its rsync does), then run the
/// script in a chroot with its directory bound at /mnt and /mnt as the working directory.
pub const FAKE_ALPINE_MAKE_ROOTFS: &str = r#"#!/bin/sh
set -eu
dest=$1
script=${2:-}
cp -a "$FAKE_TREE"/. "$dest"/
if [ -n "${FS_SKEL_DIR:-}" ]; then
    cp -a --remove-destination "$FS_SKEL_DIR"/. "$dest"/
    chown -R "${FS_SKEL_CHOWN:-root:root}" "$dest"
fi
if [ -n "$script" ]; then
    mkdir -p "$dest/mnt"
    mount --bind "$(dirname "$script")" "$dest/mnt"
    rc=0
    chroot "$dest" /bin/sh -c "cd /mnt && ./$(basename "$script")" || rc=$?
    umount "$dest/mnt"
    [ "$rc" = 0 ] || { echo "fake alpine-make-rootfs: the script failed ($rc)" >&2; exit "$rc"; }
fi
"#;

/// The pinned apk's stand-in: [`FAKE_ALPINE_MAKE_ROOTFS`] never runs it, and it fails if anything does.
const FAKE_APK: &str = "#!/bin/sh\necho \"fake apk: not to be run\" >&2\nexit 1\n";

/// The stand-ins for a build's two pinned programs (`build::rootfs`), so that `cargo xtask build --system`
/// makes its tree from a fixture tree instead of Alpine's mirror (tests and `bench`).
#[derive(Debug, Clone)]
pub struct StandIns {
    /// [`FAKE_ALPINE_MAKE_ROOTFS`].
    pub make_rootfs: PathBuf,
    /// An apk that fails if run.
    pub apk: PathBuf,
}

impl StandIns {
    /// Writes both into `dir`: `alpine-make-rootfs` and `fake-apk`.
    pub fn write(dir: &Path) -> Result<StandIns> {
        write_file(dir, "alpine-make-rootfs", FAKE_ALPINE_MAKE_ROOTFS, 0o755)?;
        write_file(dir, "fake-apk", FAKE_APK, 0o755)?;
        Ok(StandIns {
            make_rootfs: dir.join("alpine-make-rootfs"),
            apk: dir.join("fake-apk"),
        })
    }

    /// The environment of a build through them that installs the fixture tree `tree` as its packages.
    pub fn env(&self, tree: &Path) -> [(&'static str, PathBuf); 3] {
        [
            (
                crate::build::rootfs::ALPINE_MAKE_ROOTFS.env,
                self.make_rootfs.clone(),
            ),
            (crate::build::rootfs::APK.env, self.apk.clone()),
            ("FAKE_TREE", tree.to_path_buf()),
        ]
    }
}

/// README's pool: a mirror of the two data disks (as `cargo xtask vm` and [`crate::host::qemu::data_disks`]
/// name them), by id, and what the sharing example uses: the dataset, and the directory of Samba's
/// passwords. Run on the NAS, over ssh.
pub const CREATE_POOL: &str = "zpool create -o ashift=12 -O compression=lz4 -O atime=off -m /tank tank mirror \
     /dev/disk/by-id/virtio-ramnas-disk0 /dev/disk/by-id/virtio-ramnas-disk1 && zfs create tank/share && \
     mkdir -m 700 /tank/.samba";

/// `ssh-keygen`: a new ed25519 key without a passphrase at `key` (and `key.pub`), replacing any.
pub fn ssh_keygen(key: &Path) -> Result<()> {
    if let Some(dir) = key.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = fs::remove_file(key);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(key)
        .status()
        .context("running ssh-keygen (install openssh-client)")?;
    if !made.success() {
        bail!("ssh-keygen could not make {}", key.display());
    }
    Ok(())
}

/// Writes `path`: an ssh program (for `RAMNAS_SSH`) that logs in with `key` alone and trusts any host key
/// (the NAS in qemu makes new ones).
pub fn write_ssh_program(path: &Path, key: &Path) -> Result<()> {
    let text = format!(
        "#!/bin/sh\nexec ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \"$@\"\n",
        key.display()
    );
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

pub use crate::host::free_port;

/// An OpenSSH server on 127.0.0.1 standing in for the running NAS (tests and `bench`): its sessions get
/// `RAMNAS_BOOT` (a directory holding the stick's files) and `RAMNAS_CMDLINE` (a file saying which slot
/// "runs"), which the NAS side of `ssh.rs` reads instead of /media/boot and /proc/cmdline. Killed when
/// dropped.
pub struct Sshd {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
    /// An ssh program (for `RAMNAS_SSH`) that logs in with a key of its own and trusts this server.
    pub ssh: PathBuf,
}

impl Sshd {
    /// Starts sshd with its keys and configuration in `dir/ssh`.
    pub fn start(dir: &Path, boot: &Path, cmdline: &Path) -> Result<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            bail!("{} not found: install openssh-server", sshd.display());
        }
        let keys = dir.join("ssh");
        fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        let (host_key, id) = (keys.join("host_key"), keys.join("id"));
        for key in [&host_key, &id] {
            ssh_keygen(key)?;
        }
        fs::copy(keys.join("id.pub"), keys.join("authorized_keys"))?;
        // The NAS runs busybox: its applets are the only programs on the sessions' PATH.
        let bin = keys.join("nas-bin");
        let _ = fs::remove_dir_all(&bin);
        fs::create_dir_all(&bin)?;
        let busybox = host_busybox()?;
        let list = std::process::Command::new(busybox)
            .arg("--list")
            .output()
            .with_context(|| format!("running {} --list", busybox.display()))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            symlink(busybox, bin.join(applet))?;
        }
        let port = free_port()?;
        let config = keys.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nSetEnv RAMNAS_BOOT={} RAMNAS_CMDLINE={} PATH={}\n",
                host_key.display(),
                keys.join("authorized_keys").display(),
                keys.join("sshd.pid").display(),
                boot.display(),
                cmdline.display(),
                bin.display()
            ),
        )?;
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let log = keys.join("sshd.log");
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", sshd.display()))?;
        let client_config = keys.join("ssh_config");
        fs::write(
            &client_config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking no\n  LogLevel ERROR\n",
                id.display()
            ),
        )?;
        let ssh = keys.join("ssh");
        fs::write(
            &ssh,
            format!(
                "#!/bin/sh\nexec ssh -F {} \"$@\"\n",
                client_config.display()
            ),
        )?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755))?;
        let server = Sshd { child, port, ssh };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "sshd did not start: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on 127.0.0.1 to another local port that counts the bytes it carries both ways: what crosses
/// the wire of an ssh connection through it (`bench`). Its threads end with the connections.
pub struct CountingRelay {
    /// The port to connect to instead.
    pub port: u16,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingRelay {
    pub fn start(to: u16) -> Result<CountingRelay> {
        use std::sync::{atomic::AtomicU64, Arc};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                // A wire adds no delay: without this, each hop's Nagle algorithm holds a small write until
                // the last one is acknowledged, a stall a direct connection does not have.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (mut from, mut into) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            use std::io::Read;
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    counter
                                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Ok(CountingRelay { port, bytes })
    }

    /// Bytes carried so far, both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_listing() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n";
        assert_eq!(
            shared_libraries(listing).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert_eq!(
            shared_libraries(missing).unwrap_err().to_string(),
            "libfoo.so.1 not found"
        );
    }
}
