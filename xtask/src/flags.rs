//! Every command-line flag of `cargo xtask`, in one place. The help text here is the user's manual.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ramnas: a home NAS defined by plain files in `system/`, built into one initramfs and booted from a
/// USB stick with two boot slots (A/B).
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about, long_about = None)]
pub struct Xtask {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build `system/` into OUT/: vmlinuz, initramfs, ucode.img, cmdline, manifest.json.
    ///
    /// Runs alpine-make-rootfs (as root, through sudo when needed) to make the root tree, unless nothing it
    /// depends on changed since the last build or `--base` names a finished tree; then packs the tree into a
    /// compressed newc cpio archive. The tree holds exactly the versions in system/packages.lock, which the
    /// build writes (and updates for a `packages` edit; `--update` resolves afresh).
    Build(BuildFlags),
    /// Make a bootable stick image (OUT/boot.img) holding the build in slot a.
    ///
    /// One MBR partition (FAT32, labelled RAMNAS, from 1 MiB) with syslinux in /syslinux, the build in
    /// /slots/a, an empty /slots/b and /persist. Made without root: mkfs.vfat, syslinux's mtools installer,
    /// mtools. The same build gives the same bytes. The boot loaders are the build's own when it carries
    /// them (Alpine's syslinux and systemd-boot, from its tree: OUT/bootloaders); else syslinux's mbr.bin and
    /// modules are looked for where Debian/Ubuntu, Alpine, Fedora and Arch install them
    /// (RAMNAS_SYSLINUX_DIR names another directory), systemd-boot's likewise (RAMNAS_SYSTEMD_BOOT_DIR).
    Image(ImageFlags),
    /// Boot the build in qemu with persistent ZFS data disks from vm/disks/.
    ///
    /// Boots OUT/vmlinuz with OUT/ucode.img + OUT/initramfs and OUT/cmdline (or, with --image, OUT/boot.img
    /// through its bootloader), with OUT/boot.img attached as a USB stick when it exists and N virtio data
    /// disks with serials ramnas-disk<i> (/dev/disk/by-id/virtio-ramnas-disk<i>). The serial console is on the
    /// terminal (Ctrl-a x quits) and guest port 22 is forwarded to 127.0.0.1:--ssh-port; --check instead runs
    /// headless until the console matches --expect, then presses the ACPI power button and waits up to 90 s
    /// for the guest to shut down (so the stick is unmounted cleanly).
    ///
    /// VM state (data disks, the UEFI variable store, last-boot.log) lives in vm/ at the repository root, or
    /// in $RAMNAS_VM_DIR when set.
    Vm(VmFlags),
    /// Write the stick image to a whole-disk device, keeping the stick's /persist.
    ///
    /// Refuses, writing nothing: a partition, a disk with a mounted or swap partition or a RAID/LVM/dm
    /// holder, the disk under the running /, a disk smaller than the image; a disk that is not removable
    /// needs --force. Shows the disk and asks for its name (unless --yes), writes only the image's data and
    /// what must be zeroed so old partition tables and signatures cannot survive, reads everything back
    /// from the device and compares, and carries /persist over from a ramnas stick (unless --wipe).
    Flash(FlashFlags),
    /// Put the build into the slot that is not committed and arm it for one trial boot (and forget the
    /// record of the last unhealthy trial). The committed build again, with no trial armed, changes nothing.
    Deploy(DeployFlags),
    /// Make the slot on trial the default.
    Commit(TargetFlags),
    /// Make the other slot the default again.
    Rollback(TargetFlags),
    /// Show both slots, the default, any armed trial, and the NAS's record of its last unhealthy trial.
    Status(TargetFlags),
    /// Lint system/ and check that the host has the tools each command needs.
    Check(CheckFlags),
    /// Measure packing, booting and flashing against the plain shell pipeline.
    Bench(BenchFlags),
    /// Install the host packages the tests need (apt-get), then run `cargo test --workspace`.
    Test(TestFlags),
}

/// Where the build products live; every command that reads or writes a build takes it.
#[derive(Args, Debug, Clone)]
pub struct OutFlags {
    /// Build output directory.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BuildFlags {
    /// The system definition: packages, setup.sh, root/, system.toml.
    #[arg(long, default_value = "system", value_name = "DIR")]
    pub system: PathBuf,
    #[command(flatten)]
    pub out: OutFlags,
    /// A finished root filesystem (directory or tarball) to pack instead of running alpine-make-rootfs.
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Initramfs compression; overrides `compression` in system.toml.
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Run alpine-make-rootfs even when nothing it depends on changed.
    #[arg(long)]
    pub fresh: bool,
    /// Resolve every package afresh instead of installing the versions in system/packages.lock; rewrite
    /// the lock and print what changed.
    #[arg(long)]
    pub update: bool,
    /// Use nothing from the network: the programs and packages must be in the cache already (or in
    /// local repositories). Fails at once, naming what is missing.
    #[arg(long, conflicts_with = "update")]
    pub offline: bool,
}

#[derive(ValueEnum, serde::Deserialize, serde::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
    Gzip,
    None,
}

#[derive(Args, Debug)]
pub struct ImageFlags {
    #[command(flatten)]
    pub out: OutFlags,
    /// Image size, such as 512M or 2G: at least three times the build plus 16 MiB (slots a and b, and the
    /// temporary copy a deploy writes before it replaces a slot).
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub size: String,
    /// Where to write the image [default: OUT/boot.img].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Args, Debug)]
pub struct VmFlags {
    #[command(flatten)]
    pub out: OutFlags,
    /// Boot OUT/boot.img through its bootloader instead of the kernel directly.
    #[arg(long)]
    pub image: bool,
    /// With --image: boot with UEFI firmware (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long, requires = "image")]
    pub uefi: bool,
    /// Number of data disks (vm/disks/disk<i>.qcow2).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub disks: u32,
    /// Size of each data disk when it is created.
    #[arg(long, default_value = "8G", value_name = "SIZE")]
    pub disk_size: String,
    /// Guest memory.
    #[arg(long, default_value = "2G", value_name = "SIZE")]
    pub mem: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus: u32,
    /// Acceleration; `auto` uses KVM when /dev/kvm is usable. RAMNAS_ACCEL overrides.
    #[arg(long, value_enum, default_value = "auto", env = "RAMNAS_ACCEL")]
    pub accel: Accel,
    /// Host port forwarded to the guest's ssh port.
    #[arg(long, default_value_t = 2222, value_name = "PORT")]
    pub ssh_port: u16,
    /// Headless pass/fail run: wait for --expect on the console, then press the power button.
    #[arg(long)]
    pub check: bool,
    /// With --check: seconds to wait for --expect.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
    /// With --check: the console line to wait for (a regular expression).
    #[arg(long, default_value = "ramnas: ready", value_name = "REGEX")]
    pub expect: String,
    /// Delete and recreate the data disks first.
    #[arg(long)]
    pub fresh_disks: bool,
}

#[derive(Args, Debug)]
pub struct FlashFlags {
    /// A whole-disk block device, such as /dev/sdb.
    pub device: PathBuf,
    #[command(flatten)]
    pub out: OutFlags,
    /// The image to write [default: OUT/boot.img].
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Allow a disk that is not removable.
    #[arg(long)]
    pub force: bool,
    /// Do not keep the stick's /persist.
    #[arg(long)]
    pub wipe: bool,
}

/// The stick to act on: an image file, a whole-disk device, a directory where the stick's FAT partition is
/// mounted, or ssh://[user@]host[:port] for the running NAS.
#[derive(Args, Debug)]
pub struct TargetFlags {
    /// Image file, block device, mounted directory, or ssh://[user@]host[:port].
    pub target: String,
}

#[derive(Args, Debug)]
pub struct DeployFlags {
    #[command(flatten)]
    pub target: TargetFlags,
    #[command(flatten)]
    pub out: OutFlags,
    /// Make the new slot the default right away instead of arming a trial boot.
    #[arg(long)]
    pub commit: bool,
}

#[derive(Args, Debug)]
pub struct CheckFlags {
    /// The system definition to lint.
    #[arg(long, default_value = "system", value_name = "DIR")]
    pub system: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchFlags {
    /// Root tree to pack [default: a fixture with a full kernel module directory].
    #[arg(long, value_name = "PATH")]
    pub tree: Option<PathBuf>,
    /// Measured runs of each case (after one warm-up).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub runs: u32,
    /// Also write the results table to this Markdown file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Run only these groups of cases (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CASES")]
    pub only: Vec<BenchCases>,
}

/// The groups of `bench` cases, in the order they run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchCases {
    /// pack → zstd, gzip, xz against the cpio pipeline, and the packer's memory.
    Pack,
    /// The no-change rebuild.
    Rebuild,
    /// Boot to ready under TCG.
    Boot,
    /// Flash to a loop device against dd.
    Flash,
    /// Deploys over ssh: the bytes sent, and the time.
    Deploy,
}

#[derive(Args, Debug)]
pub struct TestFlags {
    /// Do not install missing host packages.
    #[arg(long)]
    pub no_install: bool,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}
