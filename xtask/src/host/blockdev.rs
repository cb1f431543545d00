//! What a block device is (whole disk? mounted? removable? size), from /sys and /proc, and whether it is
//! safe to overwrite.
//!
//! [`Host::read`] takes the machine-wide facts (mounts, swaps, the disks under the running `/`);
//! [`describe`] looks one device up in /sys against them; [`refusal`] is the pure safety decision over that
//! description, so tests can inject "this is the root disk" without going near the real one.

use std::{
    fmt, fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// A block device's identity: its major and minor numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }

    /// Parses `MAJOR:MINOR` as in /proc/self/mountinfo and /sys/…/dev.
    pub fn parse(s: &str) -> Option<DevNum> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// This device's directory under /sys/class/block (resolved), if the kernel knows it.
    fn sys_dir(self) -> Option<PathBuf> {
        fs::canonicalize(format!("/sys/dev/block/{}:{}", self.major, self.minor)).ok()
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A mounted filesystem, from /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct Mount {
    pub dev: DevNum,
    /// The mount source when it is a block device node (btrfs and others show an anonymous `0:N` as `dev`).
    pub source_dev: Option<DevNum>,
    pub mountpoint: PathBuf,
}

/// Machine-wide facts the safety decision needs.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub mounts: Vec<Mount>,
    /// Block devices in use as swap.
    pub swaps: Vec<DevNum>,
    /// The whole disks under the running `/` (through partitions, device-mapper and RAID slaves).
    pub root_disks: Vec<DevNum>,
}

impl Host {
    pub fn read() -> Result<Host> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mounts = parse_mountinfo(&mountinfo);
        let swaps = fs::read_to_string("/proc/swaps").context("reading /proc/swaps")?;
        let swaps = swaps
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|path| block_devnum(Path::new(&unescape_octal(path))))
            .collect();
        // The last mount on `/` is the one in effect.
        let root = mounts.iter().rev().find(|m| m.mountpoint == Path::new("/"));
        let root_disks = match root {
            Some(m) => {
                let mut disks = Vec::new();
                for dev in [Some(m.dev), m.source_dev].into_iter().flatten() {
                    disks_under(dev, &mut disks, 0);
                }
                disks
            }
            None => Vec::new(),
        };
        Ok(Host {
            mounts,
            swaps,
            root_disks,
        })
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dev = DevNum::parse(fields.get(2)?)?;
            let mountpoint = PathBuf::from(unescape_octal(fields.get(4)?));
            let dash = fields.iter().position(|f| *f == "-")?;
            let source = unescape_octal(fields.get(dash + 2)?);
            let source_dev = source
                .starts_with("/dev/")
                .then(|| block_devnum(Path::new(&source)))
                .flatten();
            Some(Mount {
                dev,
                source_dev,
                mountpoint,
            })
        })
        .collect()
}

/// /proc escapes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn block_devnum(path: &Path) -> Option<DevNum> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| DevNum::from_rdev(meta.rdev()))
}

/// Collects the whole disks a device sits on: a partition's disk, a dm/md device's slaves' disks.
fn disks_under(dev: DevNum, out: &mut Vec<DevNum>, depth: usize) {
    let Some(dir) = dev.sys_dir() else { return };
    if depth > 16 {
        return;
    }
    let disk_dir = if dir.join("partition").exists() {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    let Some(disk) = read_devnum(&disk_dir) else {
        return;
    };
    let slaves: Vec<PathBuf> = fs::read_dir(disk_dir.join("slaves"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if slaves.is_empty() && !out.contains(&disk) {
        out.push(disk);
    }
    for slave in slaves {
        if let Some(slave) = fs::canonicalize(slave).ok().and_then(|d| read_devnum(&d)) {
            disks_under(slave, out, depth + 1);
        }
    }
}

fn read_devnum(sys_dir: &Path) -> Option<DevNum> {
    DevNum::parse(&fs::read_to_string(sys_dir.join("dev")).ok()?)
}

/// A partition of a disk, as the kernel sees it.
#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    pub dev: DevNum,
    pub number: u32,
    pub size: u64,
    pub fs: Option<String>,
    pub label: Option<String>,
}

/// One block device, described.
#[derive(Debug, Clone)]
pub struct Device {
    /// The path the user gave.
    pub path: PathBuf,
    /// The kernel's name, such as `sdb` or `loop0`.
    pub name: String,
    pub dev: DevNum,
    /// When this is a partition: the kernel name of the disk it belongs to.
    pub partition_of: Option<String>,
    /// Bytes.
    pub size: u64,
    /// The smallest write the device accepts (bytes).
    pub logical_block_size: u64,
    pub model: Option<String>,
    /// usb, sata, nvme, virtio, mmc, loop, scsi, … or unknown.
    pub transport: String,
    /// The kernel's removable flag (/sys/block/X/removable).
    pub removable: bool,
    pub partitions: Vec<Partition>,
    /// The device or one of its partitions, mounted: (kernel name, mount point).
    pub mounted: Vec<(String, PathBuf)>,
    /// The device or one of its partitions, used as swap (kernel names).
    pub swap: Vec<String>,
    /// Devices stacked on this one or its partitions: (kernel name, holder's kernel name).
    pub holders: Vec<(String, String)>,
    /// This disk holds the running `/`.
    pub holds_root: bool,
    /// What blkid finds on the device itself.
    pub contents: Probe,
}

/// Describes `path` against the host's mounts, swaps and root. Fails when it is not a block device.
pub fn describe(path: &Path, host: &Host) -> Result<Device> {
    let dev = block_device(path)?;
    let dir = dev.sys_dir().with_context(|| {
        format!(
            "{}: block device {dev} is not in /sys/dev/block",
            path.display()
        )
    })?;
    let name = file_name(&dir);
    let partition_of = dir
        .join("partition")
        .exists()
        .then(|| dir.parent().map(file_name))
        .flatten();
    let size =
        read_u64(&dir.join("size")).with_context(|| format!("reading the size of {name}"))? * 512;
    let queue = if partition_of.is_some() {
        dir.parent().unwrap_or(&dir).join("queue")
    } else {
        dir.join("queue")
    };
    let logical_block_size = read_u64(&queue.join("logical_block_size"))
        .unwrap_or(512)
        .max(512);
    let model = ["vendor", "model"]
        .iter()
        .filter_map(|f| fs::read_to_string(dir.join("device").join(f)).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .reduce(|a, b| format!("{a} {b}"));
    let removable = read_u64(&dir.join("removable")).unwrap_or(0) == 1;
    let partitions = match partition_of {
        None => partitions(&dir)?,
        Some(_) => Vec::new(),
    };
    let members: Vec<(String, DevNum, PathBuf)> = std::iter::once((name.clone(), dev, dir.clone()))
        .chain(
            partitions
                .iter()
                .map(|p| (p.name.clone(), p.dev, dir.join(&p.name))),
        )
        .collect();
    let Uses {
        mounted,
        swap,
        holders,
    } = uses(host, &members);
    let whole = match &partition_of {
        Some(_) => dir.parent().and_then(read_devnum),
        None => Some(dev),
    };
    let holds_root = whole.is_some_and(|w| host.root_disks.contains(&w));

    Ok(Device {
        contents: probe(path),
        path: path.to_path_buf(),
        transport: transport(&name, &dir),
        name,
        dev,
        partition_of,
        size,
        logical_block_size,
        model,
        removable,
        partitions,
        mounted,
        swap,
        holders,
        holds_root,
    })
}

/// The device number of `path`, or an error saying what it is instead of a block device.
fn block_device(path: &Path) -> Result<DevNum> {
    let meta =
        fs::metadata(path).with_context(|| format!("{}: cannot look at it", path.display()))?;
    if !meta.file_type().is_block_device() {
        let kind = if meta.is_file() {
            "a regular file"
        } else if meta.is_dir() {
            "a directory"
        } else if meta.file_type().is_char_device() {
            "a character device"
        } else {
            "not a device"
        };
        bail!(
            "refusing {}: it is not a block device (it is {kind}); give a whole-disk device such as /dev/sdb",
            path.display()
        );
    }
    Ok(DevNum::from_rdev(meta.rdev()))
}

/// The partitions of the whole disk at `dir` (its /sys/dev/block directory), by number, each probed.
fn partitions(dir: &Path) -> Result<Vec<Partition>> {
    let mut partitions = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = entry?.path();
        if !p.join("partition").exists() {
            continue;
        }
        let Some(pdev) = read_devnum(&p) else {
            continue;
        };
        let pname = file_name(&p);
        let Probe { fs, label, .. } = probe(&Path::new("/dev").join(&pname));
        partitions.push(Partition {
            dev: pdev,
            number: read_u64(&p.join("partition")).unwrap_or(0) as u32,
            size: read_u64(&p.join("size")).unwrap_or(0) * 512,
            name: pname,
            fs,
            label,
        });
    }
    partitions.sort_by_key(|p| p.number);
    Ok(partitions)
}

/// What the host does with a device and its partitions ([`Device`]'s fields of the same names).
struct Uses {
    mounted: Vec<(String, PathBuf)>,
    swap: Vec<String>,
    holders: Vec<(String, String)>,
}

/// How the host uses each of `members` (kernel name, device number, /sys/dev/block directory).
fn uses(host: &Host, members: &[(String, DevNum, PathBuf)]) -> Uses {
    let mut uses = Uses {
        mounted: Vec::new(),
        swap: Vec::new(),
        holders: Vec::new(),
    };
    for (mname, mdev, mdir) in members {
        for m in &host.mounts {
            if m.dev == *mdev || m.source_dev == Some(*mdev) {
                uses.mounted.push((mname.clone(), m.mountpoint.clone()));
            }
        }
        if host.swaps.contains(mdev) {
            uses.swap.push(mname.clone());
        }
        if let Ok(rd) = fs::read_dir(mdir.join("holders")) {
            for h in rd.flatten() {
                uses.holders
                    .push((mname.clone(), h.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    uses
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_u64(p: &Path) -> Result<u64> {
    let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a number: {text:?}", p.display()))
}

/// The bus a disk hangs on, from its place in the /sys/devices tree.
fn transport(name: &str, sys_dir: &Path) -> String {
    let path = sys_dir.to_string_lossy();
    let t = if name.starts_with("loop") {
        loop_transport(sys_dir)
    } else if name.starts_with("dm-") {
        "device-mapper"
    } else if name.starts_with("md") {
        "md-raid"
    } else if name.starts_with("zram") || name.starts_with("ram") {
        "ram"
    } else if path.contains("/usb") {
        "usb"
    } else if name.starts_with("nvme") {
        "nvme"
    } else if name.starts_with("mmcblk") {
        "mmc"
    } else if path.contains("/virtio") {
        "virtio"
    } else if path.contains("/ata") {
        "sata"
    } else if path.contains("/host") {
        "scsi"
    } else {
        "unknown"
    };
    t.to_string()
}

/// `loop` for a loop device over a regular file, `loop over a device` when it stands for another block device
/// (so `--force` does not reach a disk through it).
fn loop_transport(sys_dir: &Path) -> &'static str {
    let backing = fs::read_to_string(sys_dir.join("loop/backing_file")).unwrap_or_default();
    match fs::metadata(backing.trim_end_matches('\n')) {
        Ok(meta) if meta.is_file() => "loop",
        _ => "loop over a device",
    }
}

/// Filesystem type and label of a device node, through `blkid -p` (probing the device, not a cache).
fn probe(node: &Path) -> Probe {
    if !node.exists() {
        return Probe::default();
    }
    let sh = match xshell::Shell::new() {
        Ok(sh) => sh,
        Err(_) => return Probe::default(),
    };
    let out = xshell::cmd!(sh, "blkid -p -o export {node}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    let get = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    Probe {
        fs: get("TYPE"),
        label: get("LABEL"),
        table: get("PTTYPE"),
    }
}

/// What `blkid` finds on a device node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// A filesystem type (vfat, ext4, swap, …).
    pub fs: Option<String>,
    pub label: Option<String>,
    /// A partition table type (dos, gpt).
    pub table: Option<String>,
}

impl Device {
    /// The device as the prompt shows it: model, size, transport, removable, table, partitions and labels.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "  device:    {}\n  model:     {}\n  size:      {} ({} bytes)\n  transport: {}\n  removable: {}\n",
            self.path.display(),
            self.model.as_deref().unwrap_or("(unknown)"),
            human(self.size),
            self.size,
            self.transport,
            if self.removable { "yes" } else { "no" },
        );
        let c = &self.contents;
        if let Some(table) = &c.table {
            s.push_str(&format!("  table:     {table}\n"));
        }
        if let Some(fs) = &c.fs {
            let label = c
                .label
                .as_deref()
                .map(|l| format!(" label {l:?}"))
                .unwrap_or_default();
            s.push_str(&format!("  contents:  {fs}{label}\n"));
        }
        if self.partitions.is_empty() {
            s.push_str("  partitions: none that the kernel shows\n");
        } else {
            s.push_str("  partitions:\n");
            for p in &self.partitions {
                s.push_str(&format!(
                    "    /dev/{:<12} {:>10}  {:<8} {}\n",
                    p.name,
                    human(p.size),
                    p.fs.as_deref().unwrap_or("-"),
                    p.label
                        .as_deref()
                        .map(|l| format!("label {l:?}"))
                        .unwrap_or_default(),
                ));
            }
        }
        s
    }
}

/// Bytes as `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Whether an image of `image_len` bytes may be written over `dev`: `Err` with the one reason it may not.
/// Only "not removable" yields to `force`, and only on USB (or a loop device over a file).
pub fn refusal(dev: &Device, image_len: u64, force: bool) -> Result<(), String> {
    let path = dev.path.display();
    if let Some(disk) = &dev.partition_of {
        return Err(format!(
            "refusing {path}: it is a partition of /dev/{disk}, not a whole disk; give the disk (/dev/{disk}) instead"
        ));
    }
    if dev.holds_root {
        return Err(format!(
            "refusing {path}: /dev/{} holds the running system's / (root filesystem)",
            dev.name
        ));
    }
    if let Some((of, holder)) = dev.holders.first() {
        return Err(format!(
            "refusing {path}: /dev/{of} is in use by {holder} (RAID, LVM or device-mapper); stop {holder} first"
        ));
    }
    if let Some((what, at)) = dev.mounted.first() {
        return Err(format!(
            "refusing {path}: /dev/{what} is mounted on {}; unmount it first",
            at.display()
        ));
    }
    if let Some(what) = dev.swap.first() {
        return Err(format!(
            "refusing {path}: /dev/{what} is in use as swap; swapoff it first"
        ));
    }
    if dev.size < image_len {
        return Err(format!(
            "refusing {path}: it is {} ({} bytes), smaller than the image ({}, {image_len} bytes)",
            human(dev.size),
            dev.size,
            human(image_len),
        ));
    }
    if let Some((what, kind)) = member_signature(dev) {
        return Err(format!(
            "refusing {path}: /dev/{what} holds a {kind} signature, a member of a RAID array, LVM volume group or \
             pool that is not running; if it really is a spare, erase its signatures first (wipefs --all {path})"
        ));
    }
    if !dev.removable && !force {
        return Err(format!(
            "refusing {path}: it is not a removable disk (transport {}, model {}); pass --force if you are sure it \
             is the stick",
            dev.transport,
            dev.model.as_deref().unwrap_or("unknown"),
        ));
    }
    if !dev.removable && !FORCIBLE.contains(&dev.transport.as_str()) {
        return Err(format!(
            "refusing {path}: it is not removable and not on USB (transport {}, model {}); --force only accepts a \
             USB stick that calls itself fixed",
            dev.transport,
            dev.model.as_deref().unwrap_or("unknown"),
        ));
    }
    Ok(())
}

/// Transports `--force` accepts for a disk that is not removable: USB (sticks that call themselves fixed)
/// and a loop device over a regular file (an image the user attached).
const FORCIBLE: &[&str] = &["usb", "loop"];

/// What blkid calls a member of a RAID array, LVM volume group, ZFS pool or bcache set.
fn is_member(fs: &str) -> bool {
    fs.ends_with("_raid_member")
        || matches!(
            fs,
            "LVM1_member" | "LVM2_member" | "zfs_member" | "bcache" | "drbd" | "ceph_bluestore"
        )
}

/// The first of the device and its partitions that holds a member signature: (kernel name, the signature).
fn member_signature(dev: &Device) -> Option<(String, String)> {
    std::iter::once((&dev.name, &dev.contents.fs))
        .chain(dev.partitions.iter().map(|p| (&p.name, &p.fs)))
        .find_map(|(name, fs)| {
            fs.as_deref()
                .filter(|fs| is_member(fs))
                .map(|fs| (name.clone(), fs.to_string()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stick() -> Device {
        Device {
            path: "/dev/sdz".into(),
            name: "sdz".into(),
            dev: DevNum {
                major: 8,
                minor: 208,
            },
            partition_of: None,
            size: 8 << 30,
            logical_block_size: 512,
            model: Some("Acme Stick".into()),
            transport: "usb".into(),
            removable: true,
            partitions: Vec::new(),
            mounted: Vec::new(),
            swap: Vec::new(),
            holders: Vec::new(),
            holds_root: false,
            contents: Probe::default(),
        }
    }

    #[test]
    fn a_free_removable_stick_is_accepted() {
        assert_eq!(refusal(&stick(), 1 << 30, false), Ok(()));
    }

    #[test]
    fn each_refusal_names_the_device_and_why() {
        let cases: Vec<(Device, &str)> = vec![
            (
                Device {
                    partition_of: Some("sdz".into()),
                    ..stick()
                },
                "partition of /dev/sdz",
            ),
            (
                Device {
                    holds_root: true,
                    ..stick()
                },
                "running system's /",
            ),
            (
                Device {
                    holders: vec![("sdz1".into(), "dm-0".into())],
                    ..stick()
                },
                "/dev/sdz1 is in use by dm-0",
            ),
            (
                Device {
                    mounted: vec![("sdz1".into(), "/media/x".into())],
                    ..stick()
                },
                "/dev/sdz1 is mounted on /media/x",
            ),
            (
                Device {
                    swap: vec!["sdz2".into()],
                    ..stick()
                },
                "/dev/sdz2 is in use as swap",
            ),
            (
                Device {
                    size: 1 << 20,
                    ..stick()
                },
                "smaller than the image",
            ),
            (
                Device {
                    removable: false,
                    ..stick()
                },
                "not a removable disk",
            ),
            (
                Device {
                    contents: Probe {
                        fs: Some("linux_raid_member".into()),
                        ..Probe::default()
                    },
                    ..stick()
                },
                "/dev/sdz holds a linux_raid_member signature",
            ),
        ];
        for (dev, why) in cases {
            let err = refusal(&dev, 1 << 30, false).unwrap_err();
            assert!(err.starts_with("refusing /dev/sdz:"), "{err}");
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }

    #[test]
    fn force_only_overrides_not_removable_on_usb_or_a_loop_file() {
        let fixed = Device {
            removable: false,
            ..stick()
        };
        assert_eq!(refusal(&fixed, 1 << 30, true), Ok(()));
        let on_a_file = Device {
            transport: "loop".into(),
            ..fixed.clone()
        };
        assert_eq!(refusal(&on_a_file, 1 << 30, true), Ok(()));
        for transport in [
            "sata",
            "nvme",
            "scsi",
            "virtio",
            "mmc",
            "unknown",
            "loop over a device",
        ] {
            let disk = Device {
                transport: transport.into(),
                ..fixed.clone()
            };
            let err = refusal(&disk, 1 << 30, true).unwrap_err();
            assert!(err.contains("not removable and not on USB"), "{err}");
            assert!(err.contains(&format!("transport {transport}")), "{err}");
        }
        let root = Device {
            removable: false,
            holds_root: true,
            ..stick()
        };
        assert!(refusal(&root, 1 << 30, true).is_err());
        let held = Device {
            holders: vec![("sdz".into(), "md0".into())],
            ..stick()
        };
        assert!(refusal(&held, 1 << 30, true).is_err());
    }

    /// An array, volume group or pool that is not running leaves no holder, only its signature: refused with
    /// or without --force, on the disk or on a partition, whatever the transport.
    #[test]
    fn inactive_raid_lvm_and_zfs_members_are_refused_even_with_force() {
        for kind in [
            "linux_raid_member",
            "LVM2_member",
            "zfs_member",
            "isw_raid_member",
        ] {
            let whole = Device {
                contents: Probe {
                    fs: Some(kind.into()),
                    ..Probe::default()
                },
                ..stick()
            };
            let in_partition = Device {
                removable: false,
                partitions: vec![Partition {
                    name: "sdz2".into(),
                    dev: DevNum {
                        major: 8,
                        minor: 210,
                    },
                    number: 2,
                    size: 1 << 30,
                    fs: Some(kind.into()),
                    label: None,
                }],
                ..stick()
            };
            for (dev, what) in [(whole, "sdz"), (in_partition, "sdz2")] {
                let err = refusal(&dev, 1 << 30, true).unwrap_err();
                assert!(
                    err.contains(&format!("/dev/{what} holds a {kind} signature")),
                    "{err}"
                );
                assert!(err.contains("wipefs --all /dev/sdz"), "{err}");
            }
        }
        let vfat = Device {
            contents: Probe {
                fs: Some("vfat".into()),
                ..Probe::default()
            },
            ..stick()
        };
        assert_eq!(refusal(&vfat, 1 << 30, true), Ok(()));
    }

    #[test]
    fn mountinfo_parses_devices_and_escaped_paths() {
        let text = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    40 22 0:33 / /mnt/with\\040space rw - btrfs /nonexistent/dev rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[0].dev,
            DevNum {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(mounts[1].mountpoint, Path::new("/mnt/with space"));
        assert_eq!(mounts[1].source_dev, None);
    }
}
