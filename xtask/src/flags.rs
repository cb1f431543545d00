//! Every command-line flag of `cargo xtask`, in one place. The help text here is the user's manual.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::build::compress::Compression;

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
    /// Build `system/` into OUT/: vmlinuz, the initramfs archives, ucode.img, cmdline, manifest.json.
    ///
    /// OUT/ holds:
    ///   vmlinuz        the kernel, /boot/vmlinuz-<flavour> of the tree (or its only vmlinuz-*)
    ///   initramfs      the root tree (without /boot) as compressed newc cpio archives, loaded in the
    ///   pkg-*.img      order manifest.json gives: config.img (/etc, /root, /lib/apk: what a configuration
    ///   config.img     change touches), one pkg-<name>.img for each of the 12 biggest packages of 2 MiB or
    ///                  more, and initramfs for the rest; /init is PID 1
    ///   ucode.img      early microcode (intel-ucode.img + amd-ucode.img), when the tree has any
    ///   cmdline        the kernel command line from system.toml, plus ramnas.build=<build id>
    ///   manifest.json  build id, source date, git commit, Alpine branch, kernel, packages, SHA-256 sums
    ///
    /// The tree is made by alpine-make-rootfs v0.8.1 with the static apk-tools v2.14.10, both downloaded
    /// once into ~/.cache/ramnas and checked against their pinned SHA-256 before every use. It needs root:
    /// when you are not root the build runs itself again through sudo (what it writes to OUT/ stays yours,
    /// except the tree, OUT/rootfs/). The tree is made again only when packages, setup.sh, root/, the
    /// [alpine] settings, packages.lock, the day of SOURCE_DATE_EPOCH or the tools changed (--fresh forces
    /// it); a build where nothing changed rewrites nothing and says so. Before the long step the build runs
    /// the lint of `cargo xtask check`; after it, root's authorized_keys is written into the tree.
    ///
    /// The lock: system/packages.lock holds every package of the tree (name, version, apk's checksum). The
    /// first build writes it; commit it, and every later build installs exactly those versions. A packages
    /// edit updates it for what it touches (a new package resolved, a removed one dropped with what only it
    /// needed). A locked version the mirror no longer has, or one rebuilt under the same version, fails the
    /// build, naming it: then --update.
    ///
    /// The cache: apk keeps every index and package it downloads in ~/.cache/ramnas/apk/<branch>. With it
    /// warm, --offline builds with nothing from the network; with it cold it fails at once, naming what is
    /// missing.
    ///
    /// Builds are reproducible: the same commit and cache give the same bytes on another day and machine
    /// (mtimes clamped to SOURCE_DATE_EPOCH, default 0; inodes counted in archive order; the dates tools
    /// write into the tree clamped too).
    ///
    /// Local mirrors and your own packages ([alpine] in system.toml): `mirror` may be a local directory;
    /// `repositories` adds apk repositories (URLs, or directories relative to system/); `keys` names the
    /// *.pub keys apk trusts instead of Alpine's; `default_packages = false` leaves out alpine-make-rootfs's
    /// base packages. [kernel] `package` names your own kernel package; a kernel in root/boot needs none.
    ///
    /// Environment: ALPINE_MAKE_ROOTFS and RAMNAS_APK run another alpine-make-rootfs and apk (unverified);
    /// SOURCE_DATE_EPOCH as above. The variables alpine-make-rootfs reads come from system.toml only.
    #[command(verbatim_doc_comment)]
    Build(BuildFlags),
    /// Make a bootable stick image (OUT/boot.img) holding the build in slot a.
    ///
    /// One MBR partition, FAT32, labelled RAMNAS, bootable, from 1 MiB to the end:
    ///   syslinux/           the BIOS boot loader and syslinux.cfg (a copy at /syslinux.cfg)
    ///   EFI/BOOT/, loader/  systemd-boot for UEFI, and one boot loader spec entry per filled slot
    ///   slots/a/, slots/b/  each slot's manifest.json (b is empty until a deploy)
    ///   parts/              the builds' files, each named by 16 hex digits of its SHA-256, shared by the slots
    ///   persist/            empty: the running system's own (ssh host keys, RNG seed)
    ///
    /// At boot a menu on the serial and VGA console shows one entry per filled slot and boots the default
    /// after 3 seconds: pick the other slot there to go back to the previous build. The image must hold
    /// three times the build plus 16 MiB (two slots and what a deploy writes before it replaces one).
    ///
    /// Made without root and without mounting anything (mkfs.vfat, mtools, syslinux's mtools installer); the
    /// same build gives the same bytes. The boot loaders are the build's own when its tree has them (list
    /// Alpine's syslinux and systemd-boot in packages: the build copies them to OUT/bootloaders/), so one
    /// commit gives the same stick on any host; else they are looked for where Debian/Ubuntu, Alpine, Fedora
    /// and Arch install them (RAMNAS_SYSLINUX_DIR and RAMNAS_SYSTEMD_BOOT_DIR name other directories).
    /// systemd-boot is not signed: turn Secure Boot off on the NAS, or boot it in BIOS mode.
    #[command(verbatim_doc_comment)]
    Image(ImageFlags),
    /// Boot the build in qemu with persistent ZFS data disks from vm/disks/.
    ///
    ///   cargo xtask vm                 OUT/vmlinuz, ucode.img + initramfs, cmdline; the console here
    ///   cargo xtask vm --image         the stick through its boot loader under SeaBIOS
    ///   cargo xtask vm --image --uefi  the same under OVMF, with its own variable store in vm/
    ///   cargo xtask vm --check         headless: pass when the console says `ramnas: ready`
    ///   cargo xtask vm --test          the system's own tests (system/tests/) against the build
    ///
    /// The VM's stick is vm/stick.img, a copy of OUT/boot.img (private, mode 0600) made when it is missing or
    /// OUT/boot.img is newer (then it says so: the VM's /persist starts empty and it makes new ssh host keys).
    /// It is attached as a USB stick in every mode, so the system finds its RAMNAS partition and /persist as
    /// on hardware, and the VM's host keys never get into the image you flash. The data disks
    /// vm/disks/disk<i>.qcow2 are virtio disks with serials ramnas-disk<i>
    /// (/dev/disk/by-id/virtio-ramnas-disk<i>); they persist across runs, so a pool made in one session
    /// imports in the next (--fresh-disks recreates them).
    ///
    /// Interactive, the serial console is on your terminal (Ctrl-a x quits) and guest port 22 is forwarded
    /// to 127.0.0.1:--ssh-port. --check writes the console to vm/last-boot.log and exits 0 once --expect
    /// matches, non-zero on timeout, kernel panic or qemu exiting first, with the log's last lines; after the
    /// match it presses the power button and gives the NAS 90 s to shut down, so the stick is unmounted
    /// cleanly. qemu never outlives the command. VM state lives in vm/ at the repository root, or in
    /// $RAMNAS_VM_DIR.
    ///
    /// --test boots the build the way a deploy would: a fresh copy of OUT/boot.img (vm/test/stick.img) with
    /// the build deployed into its other slot on trial, the data disks, the network. Once the trial says
    /// `ramnas: ready … build=<this build>` (an unhealthy trial is an error, with why), it runs each test
    /// of system/tests/ with --test-timeout:
    ///   tests/nas/NAME   on the NAS, as root, by sh, over ssh
    ///   tests/host/NAME  an executable here, with the VM in its environment: RAMNAS_VM_SSH_CONFIG (an ssh
    ///                    config naming the VM `nas`: "$RAMNAS_SSH" -F "$RAMNAS_VM_SSH_CONFIG" nas CMD),
    ///                    RAMNAS_SSH (the ssh program), RAMNAS_VM_HOST (127.0.0.1) and RAMNAS_VM_PORT_<n>,
    ///                    the port here forwarded to the guest's port n, for n in 22 80 443 445 2049
    ///   tests/prepare    on the NAS, on empty data disks, in a boot of its own (the build committed, and
    ///                    healthy or not: it may need what prepare makes); the disks it leaves
    ///                    (vm/test/prepared/) are where every run starts, through copy-on-write overlays.
    ///                    It runs again only when it, the disk count or size changed
    /// A test passes by exiting 0 and is skipped by exiting 77. One line per test (pass, FAIL, skip; its
    /// time) and the output of each failed one; every output is kept in vm/test/logs/. It exits non-zero
    /// when a test failed. When every test passed it records the build as tested (OUT/tested.json, for
    /// this build id and these tests), which `deploy` asks for; each run removes it first. --keep leaves
    /// a VM whose tests failed running, with the ssh command to get in, until it powers off or Ctrl-C.
    #[command(verbatim_doc_comment)]
    Vm(VmFlags),
    /// Write the stick image to a whole-disk device, keeping the stick's /persist.
    ///
    /// Refuses, writing nothing, and says why: a path that is not a block device; a partition (it names the
    /// disk); a disk with a mounted or swap partition; a disk held by RAID, LVM or device-mapper, or holding
    /// the signature of a RAID, LVM or ZFS member that is not running (wipefs it first if it is a spare); the
    /// disk under the running /; a disk smaller than the image. A disk the kernel does not call removable
    /// needs --force, which accepts only a disk on USB (some USB sticks call themselves fixed) or a loop
    /// device over a file; the other refusals have no override.
    ///
    /// It shows the disk (model, size, transport, partitions and labels) and asks you to type its name
    /// (--yes skips that); the device it then opens for writing must be the one shown (same device number
    /// and size), or it stops, writing nothing. It writes only what matters: the image's data and the FAT's
    /// allocated clusters, and zeroes the first and last MiB of the disk and of the partition, so no old
    /// partition table or signature survives. It reads every written byte back from the device (not the
    /// page cache), compares, and has the kernel re-read the partition table. A stick that holds a ramnas
    /// image keeps its /persist (read before, written back after in place of the image's, compared);
    /// --wipe, or a disk that held no ramnas stick, starts it empty (whatever the image's /persist held).
    /// An old /persist with a name that is not a plain file name, nested deeper than 8 directories or over
    /// 64 MiB is refused (--wipe drops it). A flash that stops midway says where the old /persist was saved
    /// (a new private directory in $TMPDIR or /var/tmp); flash again.
    #[command(verbatim_doc_comment)]
    Flash(FlashFlags),
    /// Put the build into the slot not committed and arm it for one trial boot; sends only what is new.
    ///
    /// Prints what changes against the committed slot (packages, kernel, size), writes the files the stick
    /// lacks under temporary names, checks each one's SHA-256 read back from the stick, and only then puts
    /// the build in place (saying how much it wrote) and arms ONE trial boot of it on both boot loaders. On
    /// the NAS, ramnas-ready commits a trial that comes up healthy (every service started, reachable over
    /// ssh: README, "Trial boots"); one that comes up unhealthy, or has not come up by its deadline,
    /// disarms itself, leaves a record on the stick and reboots into the committed slot; one that panics
    /// or loses power is never committed, and the next boot is the committed slot.
    /// --commit makes the new slot the default at once. The committed build again, with no trial armed,
    /// changes nothing and says so. Of /persist, a deploy removes only the last trial's record.
    ///
    /// Over ssh it refuses to replace the slot the NAS runs on trial, not committed yet (commit it, or
    /// reboot into the committed slot, first), and a build whose root has no ssh key (--keyless).
    /// A build of a system with tests (system/tests/) is refused until it has passed them in the VM
    /// (`cargo xtask vm --test` records that in OUT/tested.json); --untested deploys it anyway and says so.
    ///
    /// TARGET is an image file, a whole-disk block device holding a ramnas stick (refused while mounted
    /// here: use its mount point), a directory where the stick's partition is mounted, or
    /// ssh://[user@]host[:port] for the running NAS (its stick at /media/boot; the system's OpenSSH client
    /// with your keys and ~/.ssh/config; RAMNAS_SSH names another ssh program). Over ssh, a NAS that is gone
    /// ends the command within about a minute (ssh's keep-alive), and one that stops answering after
    /// RAMNAS_SSH_TIMEOUT seconds of silence (default 300); an answer over 16 MiB is refused.
    ///
    /// Stop a deploy at any moment (Ctrl-C, a crash, a power cut) and the stick still boots a complete
    /// build: the committed one, or the new one on trial if the deploy had finished. Run it again to finish.
    ///
    /// Under UEFI the A/B state is in the names of the files in loader/entries/ (no EFI variables):
    ///   ramnas-default-4-a.conf  slot a is committed: it boots whenever no trial has tries left (4 counts
    ///                            commits: should two defaults be left, the higher count boots)
    ///   ramnas-trial-b+1-0.conf  slot b is on trial: it boots next (systemd-boot renames it +0-1)
    ///   ramnas-trial-b+0-1.conf  b's trial was tried and never committed: a boots again, by itself
    ///   ramnas-b.conf            b holds a build that boots only when picked in the menu
    #[command(verbatim_doc_comment)]
    Deploy(DeployFlags),
    /// Make the slot on trial the default.
    ///
    /// Over ssh it commits only the slot the NAS runs on trial, and only while that slot still holds the
    /// build that booted.
    Commit(TargetFlags),
    /// Make the other slot the default again.
    ///
    /// Checks every file of that slot first and refuses when it holds no complete build. With a trial armed
    /// and not booted yet, it disarms the trial instead.
    Rollback(TargetFlags),
    /// Show both slots, the default, any armed trial, and the NAS's record of its last unhealthy trial.
    ///
    /// Each slot's build id, date, kernel, git commit, size, boot loaders and root's ssh keys; the UEFI view
    /// (which entry is the default, on trial, booted next); the pools at the last healthy boot; over ssh
    /// which slot runs and which encrypted datasets are locked (`ramnas-unlock` opens them); and, until the
    /// next deploy, the last unhealthy trial (slot, build, the failed checks and the boot log's last lines).
    Status(TargetFlags),
    /// Lint system/ and check that the host has the tools each command needs.
    ///
    /// The lint: package lines, duplicates, the kernel and ZFS module of the configured flavour, a firmware
    /// provider, setup.sh (shellcheck), no keys or password hashes under root/, CRLF, config keys, and a
    /// packages.lock that does not match packages; a warning, which does not fail the check, for each user
    /// or group setup.sh makes without a fixed id (adduser -u, addgroup -g). Then the host tools missing
    /// for each command, with the install command; tools only the tests and the bench use are listed but
    /// do not fail the check.
    Check(CheckFlags),
    /// Measure packing, booting, flashing and deploying against the plain tools, and the NAS's boot to its
    /// pool mounted.
    ///
    /// The cases, their baselines and goals are in CONTRIBUTING.md; the table says how each is measured.
    Bench(BenchFlags),
    /// Install the host packages the tests need (apt-get), then run them all: `cargo test --workspace --
    /// --include-ignored` (most need root and qemu; a plain `cargo test` skips those, saying why).
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
    /// Boot the stick (vm/stick.img, a copy of OUT/boot.img) through its bootloader instead of the kernel
    /// directly.
    #[arg(long)]
    pub image: bool,
    /// With --image or --test: boot with UEFI firmware (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long)]
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
    #[arg(long, conflicts_with = "test")]
    pub check: bool,
    /// Run the system's own tests (SYSTEM/tests/) against the build, booted from its stick image on trial.
    #[arg(long, conflicts_with = "image")]
    pub test: bool,
    /// With --test: the system definition whose tests/ to run.
    #[arg(long, default_value = "system", value_name = "DIR", requires = "test")]
    pub system: PathBuf,
    /// With --test: seconds each test may run.
    #[arg(long, default_value_t = 120, value_name = "SECS", requires = "test")]
    pub test_timeout: u64,
    /// With --test: leave the VM running after a test failed, to look around over ssh.
    #[arg(long, requires = "test")]
    pub keep: bool,
    /// With --check and --test: seconds to wait for the boot to be ready.
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
    /// Allow a disk on USB that does not call itself removable.
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
    /// Deploy over ssh a build whose root has no ssh key (refused otherwise: once it runs, no deploy over ssh
    /// reaches the NAS again, and its trial is unhealthy unless health_reachable="no").
    #[arg(long)]
    pub keyless: bool,
    /// Deploy a build of a system with tests that has not passed them (`cargo xtask vm --test`).
    #[arg(long)]
    pub untested: bool,
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
    /// The NAS of `system/` under OpenRC with a ZFS pool: power-on to the pool mounted, and zfs-import's
    /// share of it.
    Storage,
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
