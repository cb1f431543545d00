//! `cargo xtask image`: OUT/ → a bootable stick image with slots a and b.
//!
//! No root, no mount, no loop device: the MBR is written here, the FAT32 file system by `mkfs.vfat
//! --offset` ([`stick::format`]), syslinux by its mtools installer (`syslinux --install --offset`),
//! everything else through [`crate::stick`], including the UEFI path ([`crate::boot::uefi`]: systemd-boot
//! and slot a's entry as the committed slot).
//! The same build gives the same bytes: fixed disk id and volume serial, fixed timestamps. The image is
//! private to its owner (mode 0600), like any stick image that may hold a /persist.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    boot::bootloaders,
    boot::slots::{self, Build, Slot},
    boot::syslinux,
    boot::uefi,
    flags::ImageFlags,
    stick::{self, Stick},
};

const MIB: u64 = 1 << 20;
/// The partition starts 1 MiB into the disk.
pub const PART_START: u64 = MIB;
/// The MBR's disk identifier and the FAT volume serial: fixed, so images are reproducible.
pub const DISK_ID: u32 = 0x52414d4e;
/// Room kept free besides the slots: syslinux, /persist, FAT tables, cluster slack.
const HEADROOM: u64 = 16 * MIB;

pub fn run(flags: ImageFlags) -> Result<()> {
    let size = parse_size(&flags.size)?;
    let out = flags.out.out;
    let output = flags.output.unwrap_or_else(|| out.join("boot.img"));
    let build = Build::open(&out)?;
    let needed = needed_bytes(&build);
    if size < needed {
        bail!(
            "--size {}: too small for this build; the image needs at least {} MiB (--size {}M): two slots of {} MiB each, \
             room for a deploy's temporary copy of one more, and {} MiB for the bootloader and /persist",
            flags.size,
            needed / MIB,
            needed / MIB,
            build.slot_bytes().div_ceil(MIB),
            HEADROOM / MIB
        );
    }
    let host = bootloaders::syslinux_for(&build.dir, &build.manifest.bootloaders)?;
    crate::host::atomic::replace(&output, |tmp| make(tmp, size, &build, &host))?;
    eprintln!(
        "{}: {} MiB, build {} in slot a, slot b empty",
        output.display(),
        size / MIB,
        build.manifest.build_id
    );
    Ok(())
}

/// Image size from `512M`, `2G`, `1T`, `1048576` (bytes), `512MiB`; binary units, whole MiB.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, ' '),
    };
    let shift = match unit {
        ' ' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => bail!("--size {text}: unknown unit {unit:?}; use K, M, G or T, as in 512M or 2G"),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .with_context(|| format!("--size {text}: not a size such as 512M or 2G"))?;
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .with_context(|| format!("--size {text}: too large"))?;
    if bytes == 0 || bytes % MIB != 0 {
        bail!("--size {text}: must be a positive whole number of MiB, such as 512M or 2G");
    }
    if bytes / 512 > u32::MAX as u64 {
        bail!("--size {text}: an MBR partition table addresses at most 2 TiB");
    }
    Ok(bytes)
}

/// Bytes the image needs for this build: the 1 MiB before the partition, slots a and b, the temporary copy a
/// deploy writes before it removes a slot's old build, the headroom, and FAT's own share (its two tables and
/// cluster slack, at most 1/32 of the rest), rounded up to a MiB. (Both boot loaders boot a slot's files.)
pub fn needed_bytes(build: &Build) -> u64 {
    let data = 3 * build.slot_bytes() + HEADROOM;
    (PART_START + data + data / 32).div_ceil(MIB) * MIB
}

fn make(tmp: &Path, size: u64, build: &Build, host: &syslinux::Host) -> Result<()> {
    let file = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // Its /persist will hold a NAS's private keys once it is a stick, or a VM's if one boots it: never
    // readable by others.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", tmp.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", tmp.display()))?;
    drop(file);
    let sectors = (size - PART_START) / 512;
    write_mbr(tmp, &syslinux::mbr_code(host)?, size)?;
    stick::format(tmp, PART_START, sectors, DISK_ID)?;
    let mut fat = stick::Fat::open_at(tmp, PART_START, sectors * 512)?;
    for dir in [syslinux::DIR, "slots/a", "slots/b", slots::PARTS, "persist"]
        .iter()
        .chain(uefi::DIRS)
    {
        fat.create_dir_all(dir)?;
    }
    Box::new(fat).close()?;
    install_syslinux(tmp, host)?;
    copy_boot_sector_to_backup(tmp)?;
    let mut stick = stick::open(
        tmp.to_str()
            .with_context(|| format!("{}: not a UTF-8 path", tmp.display()))?,
    )?;
    for module in syslinux::MODULES {
        let src = host.modules.join(module);
        let mut f = fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        stick.write(&format!("{}/{module}", syslinux::DIR), &mut f)?;
    }
    slots::install(&mut *stick, Slot::A, build)?;
    slots::write_boot_config(&mut *stick, Slot::A)?;
    let uefi = install_uefi(&mut *stick, build)?;
    let record = format!("syslinux: {}\nsystemd-boot: {uefi}\n", host.source);
    stick.write(bootloaders::RECORD, &mut record.as_bytes())?;
    stick.close()
}

/// The UEFI boot path on the same partition: systemd-boot, and slot a's entry as the committed slot; returns
/// whose systemd-boot it is.
fn install_uefi(stick: &mut dyn Stick, build: &Build) -> Result<String> {
    let host = bootloaders::systemd_boot_for(&build.dir, &build.manifest.bootloaders)?;
    uefi::install_boot(stick, &host)?;
    let table = slots::Table::read(stick)?;
    let a = table
        .slots
        .get(&Slot::A)
        .context("slot a is not complete after writing it")?;
    uefi::install_entry(stick, &a.boot_entry(Slot::A))?;
    uefi::set_state(stick, Slot::A.name(), None)?;
    Ok(host.source)
}

/// The MBR: syslinux's boot code, the fixed disk id, one bootable FAT32 (LBA) partition from 1 MiB to the end.
fn write_mbr(image: &Path, code: &[u8], size: u64) -> Result<()> {
    let sectors = |bytes: u64| (bytes / crate::stick::mbr::SECTOR) as u32;
    let mbr = crate::stick::mbr::sector_zero(
        code,
        DISK_ID,
        sectors(PART_START),
        sectors(size - PART_START),
    );
    let f = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0)
        .with_context(|| format!("writing the MBR of {}", image.display()))
}

/// ldlinux.sys, ldlinux.c32 and the volume boot record, through mtools, with fixed timestamps.
fn install_syslinux(image: &Path, host: &syslinux::Host) -> Result<()> {
    let sh = Shell::new()?;
    let offset = PART_START.to_string();
    let dir = format!("/{}", syslinux::DIR);
    let installer = &host.installer;
    // The build's own installer runs through the loader it came with.
    let run = match &host.loader {
        Some(loader) => {
            let lib = loader.parent().expect("the loader is in a directory");
            cmd!(sh, "{loader} --library-path {lib} {installer}")
        }
        None => cmd!(sh, "{installer}"),
    };
    run.args(["--install", "--offset", &offset, "--directory", &dir])
        .arg(image)
        .env("SOURCE_DATE_EPOCH", stick::FIXED_EPOCH)
        .env("TZ", "UTC")
        .quiet()
        .run()
        .with_context(|| format!("installing syslinux into {}", image.display()))
}

/// syslinux rewrites the FAT32 boot sector but not its backup copy; fsck.vfat wants them equal.
fn copy_boot_sector_to_backup(image: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, PART_START)
        .with_context(|| format!("reading the boot sector of {}", image.display()))?;
    let backup = u16::from_le_bytes([boot[0x32], boot[0x33]]) as u64;
    if backup == 0 || backup == 0xffff {
        bail!("{}: the FAT32 boot sector names no backup", image.display());
    }
    f.write_all_at(&boot, PART_START + backup * 512)
        .with_context(|| format!("writing the backup boot sector of {}", image.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("2G").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("2GiB").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("1048576").unwrap(), MIB);
        assert_eq!(parse_size("4096k").unwrap(), 4 * MIB);
        for bad in [
            "",
            "M",
            "12X",
            "1.5G",
            "1000",
            "-1G",
            "3T",
            "99999999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
