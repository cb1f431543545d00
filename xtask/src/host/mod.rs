//! The machine ramnas runs on: the host tools each command needs and the package that provides each per
//! distribution, whether we are root; below it qemu, block devices, signals and progress bars.

pub mod atomic;
pub mod blockdev;
pub mod progress;
pub mod qemu;
pub mod signals;

use anyhow::Context;
use xshell::{cmd, Shell};

/// A program ramnas runs on the host, and the package that has it on each distro family.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Command name (looked up in PATH), or what [`Tool::found`] looks for.
    pub program: &'static str,
    /// How the command that needs it finds it.
    pub found: Found,
    /// What needs it.
    pub used_by: &'static str,
    /// Only `cargo xtask test` and `cargo xtask bench` need it: `check` lists it but does not fail.
    pub tests_only: bool,
    pub debian: &'static str,
    pub fedora: &'static str,
    pub alpine: &'static str,
    pub arch: &'static str,
}

/// How a command finds a [`Tool`]: on PATH, or by a search of its own (the places each distribution
/// installs it, and its environment variable), which `check` runs as the command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `program` on PATH or in the sbin directories ([`find`]).
    OnPath,
    /// qemu's UEFI firmware, where `host::qemu::ovmf` looks.
    Ovmf,
    /// syslinux's mbr.bin and BIOS modules, where `boot::syslinux::find` looks.
    SyslinuxFiles,
    /// systemd-boot's EFI program, where `boot::uefi::find` looks.
    SystemdBoot,
}

/// The row of qemu's UEFI firmware (`qemu::ovmf` looks in each distribution's place).
pub const OVMF: &str = "OVMF (OVMF_CODE*.fd, UEFI firmware for qemu)";

/// Everything any command or test needs. `build` needs only the first group (and sudo when not root); the
/// rows marked `tests_only` only the tests and the bench.
pub const TOOLS: &[Tool] = &[
    // build: alpine-make-rootfs and its helpers
    Tool {
        program: "wget",
        found: Found::OnPath,
        used_by: "build (alpine-make-rootfs)",
        tests_only: false,
        debian: "wget",
        fedora: "wget",
        alpine: "wget",
        arch: "wget",
    },
    Tool {
        program: "getopt",
        found: Found::OnPath,
        used_by: "build (alpine-make-rootfs)",
        tests_only: false,
        debian: "util-linux",
        fedora: "util-linux",
        alpine: "util-linux-misc",
        arch: "util-linux",
    },
    Tool {
        program: "rsync",
        found: Found::OnPath,
        used_by: "build (alpine-make-rootfs)",
        tests_only: false,
        debian: "rsync",
        fedora: "rsync",
        alpine: "rsync",
        arch: "rsync",
    },
    Tool {
        program: "tar",
        found: Found::OnPath,
        used_by: "build (--base tarballs)",
        tests_only: false,
        debian: "tar",
        fedora: "tar",
        alpine: "tar",
        arch: "tar",
    },
    // tests, image, vm
    Tool {
        program: "qemu-system-x86_64",
        found: Found::OnPath,
        used_by: "vm, tests",
        tests_only: false,
        debian: "qemu-system-x86",
        fedora: "qemu-system-x86",
        alpine: "qemu-system-x86_64",
        arch: "qemu-system-x86",
    },
    Tool {
        program: "qemu-img",
        found: Found::OnPath,
        used_by: "vm, tests",
        tests_only: false,
        debian: "qemu-utils",
        fedora: "qemu-img",
        alpine: "qemu-img",
        arch: "qemu-img",
    },
    Tool {
        program: OVMF,
        found: Found::Ovmf,
        used_by: "vm --uefi, tests",
        tests_only: false,
        debian: "ovmf",
        fedora: "edk2-ovmf",
        alpine: "ovmf",
        arch: "edk2-ovmf",
    },
    Tool {
        program: "syslinux",
        found: Found::OnPath,
        used_by: "image",
        tests_only: false,
        debian: "syslinux",
        fedora: "syslinux",
        alpine: "syslinux",
        arch: "syslinux",
    },
    Tool {
        program: "syslinux's mbr.bin and BIOS modules",
        found: Found::SyslinuxFiles,
        used_by: "image",
        tests_only: false,
        debian: "syslinux-common",
        fedora: "syslinux",
        alpine: "syslinux",
        arch: "syslinux",
    },
    Tool {
        program: "mcopy",
        found: Found::OnPath,
        used_by: "image, flash",
        tests_only: false,
        debian: "mtools",
        fedora: "mtools",
        alpine: "mtools",
        arch: "mtools",
    },
    Tool {
        program: "mkfs.vfat",
        found: Found::OnPath,
        used_by: "image, flash",
        tests_only: false,
        debian: "dosfstools",
        fedora: "dosfstools",
        alpine: "dosfstools",
        arch: "dosfstools",
    },
    Tool {
        program: "sfdisk",
        found: Found::OnPath,
        used_by: "tests (the image's partition table)",
        tests_only: true,
        debian: "fdisk",
        fedora: "util-linux",
        alpine: "sfdisk",
        arch: "util-linux",
    },
    Tool {
        program: "systemd-boot",
        found: Found::SystemdBoot,
        used_by: "image (UEFI)",
        tests_only: false,
        debian: "systemd-boot-efi",
        fedora: "systemd-boot-unsigned",
        alpine: "systemd-boot",
        arch: "systemd",
    },
    Tool {
        program: "cpio",
        found: Found::OnPath,
        used_by: "tests",
        tests_only: true,
        debian: "cpio",
        fedora: "cpio",
        alpine: "cpio",
        arch: "cpio",
    },
    Tool {
        program: "busybox",
        found: Found::OnPath,
        used_by: "tests (fixture)",
        tests_only: true,
        debian: "busybox-static",
        fedora: "busybox",
        alpine: "busybox-static",
        arch: "busybox",
    },
    Tool {
        program: "shellcheck",
        found: Found::OnPath,
        used_by: "check, tests",
        tests_only: false,
        debian: "shellcheck",
        fedora: "ShellCheck",
        alpine: "shellcheck",
        arch: "shellcheck",
    },
    Tool {
        program: "blkid",
        found: Found::OnPath,
        used_by: "flash",
        tests_only: false,
        debian: "util-linux",
        fedora: "util-linux",
        alpine: "blkid",
        arch: "util-linux",
    },
    Tool {
        program: "partx",
        found: Found::OnPath,
        used_by: "flash",
        tests_only: false,
        debian: "util-linux",
        fedora: "util-linux",
        alpine: "partx",
        arch: "util-linux",
    },
    Tool {
        program: "losetup",
        found: Found::OnPath,
        used_by: "tests (flash)",
        tests_only: true,
        debian: "mount",
        fedora: "util-linux",
        alpine: "losetup",
        arch: "util-linux",
    },
    Tool {
        program: "mkfs.ext2",
        found: Found::OnPath,
        used_by: "tests (flash)",
        tests_only: true,
        debian: "e2fsprogs",
        fedora: "e2fsprogs",
        alpine: "e2fsprogs",
        arch: "e2fsprogs",
    },
    Tool {
        program: "ssh",
        found: Found::OnPath,
        used_by: "deploy, commit, rollback, status (ssh:// targets), vm --test",
        tests_only: false,
        debian: "openssh-client",
        fedora: "openssh-clients",
        alpine: "openssh-client",
        arch: "openssh",
    },
    Tool {
        program: "sshd",
        found: Found::OnPath,
        used_by: "tests (deploy to an ssh:// target on 127.0.0.1)",
        tests_only: true,
        debian: "openssh-server",
        fedora: "openssh-server",
        alpine: "openssh-server",
        arch: "openssh",
    },
    Tool {
        program: "/sbin/openrc-init",
        found: Found::OnPath,
        used_by: "tests (the NAS under real OpenRC)",
        tests_only: true,
        debian: "openrc",
        fedora: "openrc",
        alpine: "openrc-init",
        arch: "openrc",
    },
    Tool {
        program: "zpool",
        found: Found::OnPath,
        used_by: "tests (the NAS's pools, under real OpenRC)",
        tests_only: true,
        debian: "zfsutils-linux",
        fedora: "zfs",
        alpine: "zfs",
        arch: "zfs-utils",
    },
    Tool {
        program: "zed",
        found: Found::OnPath,
        used_by: "tests (the NAS's ZFS events, under real OpenRC)",
        tests_only: true,
        debian: "zfs-zed",
        fedora: "zfs",
        alpine: "zfs",
        arch: "zfs-utils",
    },
    Tool {
        program: "udevadm",
        found: Found::OnPath,
        used_by: "tests (the NAS's /dev/disk/by-id, under real OpenRC)",
        tests_only: true,
        debian: "udev",
        fedora: "systemd-udev",
        alpine: "eudev",
        arch: "systemd",
    },
    Tool {
        program: "smbd",
        found: Found::OnPath,
        used_by: "tests (the NAS's Samba share, under real OpenRC)",
        tests_only: true,
        debian: "samba",
        fedora: "samba",
        alpine: "samba",
        arch: "samba",
    },
    Tool {
        program: "smbclient",
        found: Found::OnPath,
        used_by:
            "tests, and the example's system/tests/host/share (a Samba client of the NAS's share)",
        tests_only: true,
        debian: "smbclient",
        fedora: "samba-client",
        alpine: "samba-client",
        arch: "smbclient",
    },
    Tool {
        program: "rpc.nfsd",
        found: Found::OnPath,
        used_by: "tests (the NAS's NFS export, under real OpenRC)",
        tests_only: true,
        debian: "nfs-kernel-server",
        fedora: "nfs-utils",
        alpine: "nfs-utils",
        arch: "nfs-utils",
    },
    Tool {
        program: "nfs-ls",
        found: Found::OnPath,
        used_by: "tests (an NFS client of the NAS's export, with no kernel mount)",
        tests_only: true,
        debian: "libnfs-utils",
        fedora: "libnfs-utils",
        alpine: "libnfs-tools",
        arch: "libnfs",
    },
    Tool {
        program: "msmtp",
        found: Found::OnPath,
        used_by: "tests (the NAS's alerts by mail, under real OpenRC)",
        tests_only: true,
        debian: "msmtp",
        fedora: "msmtp",
        alpine: "msmtp",
        arch: "msmtp",
    },
    Tool {
        program: "curl",
        found: Found::OnPath,
        used_by: "tests (the NAS's alerts by HTTP POST, under real OpenRC)",
        tests_only: true,
        debian: "curl",
        fedora: "curl",
        alpine: "curl",
        arch: "curl",
    },
    Tool {
        program: "faketime",
        found: Found::OnPath,
        used_by: "tests (a build on another day gives the same bytes)",
        tests_only: true,
        debian: "faketime",
        fedora: "libfaketime",
        alpine: "libfaketime",
        arch: "libfaketime",
    },
    Tool {
        program: "zstd",
        found: Found::OnPath,
        used_by: "bench",
        tests_only: true,
        debian: "zstd",
        fedora: "zstd",
        alpine: "zstd",
        arch: "zstd",
    },
    Tool {
        program: "xz",
        found: Found::OnPath,
        used_by: "bench",
        tests_only: true,
        debian: "xz-utils",
        fedora: "xz",
        alpine: "xz",
        arch: "xz",
    },
];

/// Debian packages `cargo test --workspace` needs (the fixture boots Debian's kernel and busybox).
pub const TEST_PACKAGES_DEBIAN: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "linux-image-amd64",
    "busybox-static",
    "syslinux",
    "syslinux-common",
    "mtools",
    "dosfstools",
    "fdisk",
    "cpio",
    "systemd-boot-efi",
    "shellcheck",
    "zstd",
    "xz-utils",
    "tar",
    // flash tests: losetup, mount (mount); mkswap, swapon, fallocate, blkid, partx (util-linux); mkfs.ext2.
    "mount",
    "util-linux",
    "e2fsprogs",
    // deploy tests: a real sshd on 127.0.0.1 for ssh:// targets, and the client.
    "openssh-server",
    "openssh-client",
    // the NAS under real OpenRC: openrc-init, openrc-run, rc-service, rc-update, openrc-shutdown.
    "openrc",
    // the NAS's storage under real OpenRC: OpenZFS built by dkms for the fixture's kernel (from Debian's
    // contrib: .ci/run adds it; the build takes minutes, once per machine), its tools and event daemon, and
    // udev for /dev/disk/by-id.
    "linux-headers-amd64",
    "zfs-dkms",
    "zfsutils-linux",
    "zfs-zed",
    "udev",
    // the NAS's shares under real OpenRC: Samba and the NFS server's daemons (copied into the NAS), and the
    // clients the tests use from the host: smbclient, and libnfs's nfs-ls/nfs-cat (no kernel mount).
    "samba",
    "smbclient",
    "nfs-kernel-server",
    "libnfs-utils",
    // the NAS's alerts (system/root/etc/ramnas/notify), also copied into the NAS under real OpenRC.
    "msmtp",
    "curl",
    // check tests: `check` on the example system also checks this host's build tools (alpine-make-rootfs's).
    "wget",
    "rsync",
    // build tests: the same build on another day.
    "faketime",
];

/// Whether `program` is on this host (a command in PATH, or an existing absolute path).
pub fn has(program: &str) -> bool {
    find(program).is_ok()
}

/// Where `program` is: an absolute path that exists, or a command in PATH or in the sbin directories an
/// ordinary user's PATH often lacks (mkfs.vfat, sfdisk). Missing → an error naming the package to install
/// on each distribution, from [`TOOLS`].
pub fn find(program: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::path::Path::new(program);
    if path.is_absolute() {
        if path.exists() {
            return Ok(path.to_path_buf());
        }
    } else if let Ok(found) = which::which(program) {
        return Ok(found);
    } else {
        for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
            let candidate = std::path::Path::new(dir).join(program);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!("{program} not found: {}", install_hint(program))
}

/// "install it (Debian/Ubuntu: apt-get install P; Alpine: apk add P; …)" for a program in [`TOOLS`].
pub fn install_hint(program: &str) -> String {
    match TOOLS.iter().find(|t| t.program == program) {
        Some(t) => format!(
            "install it (Debian/Ubuntu: apt-get install {}; Alpine: apk add {}; Fedora: dnf install {}; \
             Arch: pacman -S {})",
            t.debian, t.alpine, t.fedora, t.arch
        ),
        None => "install it with your distribution's package manager".to_string(),
    }
}

/// The distribution family of this host, which decides the package names and the install command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Debian,
    Fedora,
    Alpine,
    Arch,
    Unknown,
}

impl Family {
    /// From `/etc/os-release` (`ID` and `ID_LIKE`).
    pub fn detect() -> Family {
        let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        Family::from_os_release(&text)
    }

    pub fn from_os_release(text: &str) -> Family {
        let mut ids = Vec::new();
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("ID=")
                .or_else(|| line.strip_prefix("ID_LIKE="))
            {
                ids.extend(v.trim_matches('"').split_whitespace().map(str::to_string));
            }
        }
        let has = |names: &[&str]| ids.iter().any(|id| names.contains(&id.as_str()));
        if has(&["debian", "ubuntu"]) {
            Family::Debian
        } else if has(&["fedora", "rhel", "centos"]) {
            Family::Fedora
        } else if has(&["alpine"]) {
            Family::Alpine
        } else if has(&["arch"]) {
            Family::Arch
        } else {
            Family::Unknown
        }
    }

    /// The package that provides `tool` here.
    pub fn package(self, tool: &Tool) -> &'static str {
        match self {
            Family::Debian | Family::Unknown => tool.debian,
            Family::Fedora => tool.fedora,
            Family::Alpine => tool.alpine,
            Family::Arch => tool.arch,
        }
    }

    /// The command that installs `packages` (Debian names when the family is unknown).
    pub fn install_command(self, packages: &[&str]) -> String {
        let list = packages.join(" ");
        match self {
            Family::Debian => format!("sudo apt-get install {list}"),
            Family::Fedora => format!("sudo dnf install {list}"),
            Family::Alpine => format!("doas apk add {list}"),
            Family::Arch => format!("sudo pacman -S {list}"),
            Family::Unknown => format!("install (Debian names): {list}"),
        }
    }
}

/// Whether this host installs packages with apt-get (Debian, Ubuntu).
pub fn is_debian_like() -> bool {
    has("apt-get") && has("dpkg-query")
}

/// The Debian packages in `packages` that are not installed.
pub fn missing_debian(packages: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let sh = Shell::new()?;
    let mut missing = Vec::new();
    let format = "--showformat=${db:Status-Abbrev}";
    for &p in packages {
        let status = cmd!(sh, "dpkg-query --show {format} {p}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        if !status.starts_with("ii") {
            missing.push(p);
        }
    }
    Ok(missing)
}

/// Installs Debian packages with apt-get (through sudo when not root).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    sh.set_var("DEBIAN_FRONTEND", "noninteractive");
    let (program, args): (&str, &[&str]) = if crate::host::is_root() {
        ("apt-get", &[])
    } else {
        ("sudo", &["apt-get"])
    };
    cmd!(sh, "{program} {args...} update -q")
        .run()
        .context("apt-get update")?;
    cmd!(
        sh,
        "{program} {args...} install -y -q --no-install-recommends {packages...}"
    )
    .run()
    .context("apt-get install (Debian 12 with backported qemu-utils: see .ci/run)")?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> anyhow::Result<u16> {
    use anyhow::Context;
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port on 127.0.0.1")?
        .port())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_os_release() {
        assert_eq!(Family::from_os_release("ID=debian\n"), Family::Debian);
        assert_eq!(
            Family::from_os_release("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n"),
            Family::Debian
        );
        assert_eq!(Family::from_os_release("ID=fedora\n"), Family::Fedora);
        assert_eq!(
            Family::from_os_release("ID=endeavouros\nID_LIKE=arch\n"),
            Family::Arch
        );
        assert_eq!(Family::from_os_release("ID=alpine\n"), Family::Alpine);
        assert_eq!(Family::from_os_release("ID=gentoo\n"), Family::Unknown);
        assert!(install_hint("qemu-img").contains("Alpine: apk add qemu-img"));
        let ssh = TOOLS.iter().find(|t| t.program == "ssh").unwrap();
        assert_eq!(
            Family::Fedora.install_command(&[Family::Fedora.package(ssh)]),
            "sudo dnf install openssh-clients"
        );
    }

    #[test]
    fn the_test_packages_are_the_tools_of_every_command() {
        // The tests run every command, so they need every tool in the table.
        for t in TOOLS {
            assert!(
                TEST_PACKAGES_DEBIAN.contains(&t.debian),
                "{} ({}) is not a test package",
                t.debian,
                t.program
            );
        }
        // Every test package provides a tool in the table (so the per-distro names exist too).
        // The kernel's packages are found by the fixture (its kernel, headers and the zfs module for it).
        let kernel = ["linux-image-amd64", "linux-headers-amd64", "zfs-dkms"];
        for p in TEST_PACKAGES_DEBIAN.iter().filter(|p| !kernel.contains(p)) {
            assert!(
                TOOLS.iter().any(|t| t.debian == *p),
                "{p} has no row in TOOLS"
            );
        }
    }
}
