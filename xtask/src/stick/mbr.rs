//! The MBR partition table, read and written in one place: `image` writes it, `stick`, `flash` and the
//! tests read it.
//!
//! Sector 0: boot code, the disk id at byte 440, four 16-byte entries from byte 446, `55 aa` at 510. An
//! entry is the boot flag, CHS start, type, CHS end, then the first sector and the number of sectors
//! (little-endian LBA). A GPT disk's sector 0 is a "protective" MBR with one entry of type `ee`.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result};

/// Bytes per sector, as the MBR counts them.
pub const SECTOR: u64 = 512;

/// One used entry of the partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1 to 4, as the kernel numbers primary partitions.
    pub index: usize,
    /// The partition type (`0c`: FAT32 with LBA).
    pub kind: u8,
    pub bootable: bool,
    /// Bytes from the start of the disk.
    pub start: u64,
    pub len: u64,
}

impl Partition {
    /// Whether the type says FAT (12, 16 or 32, CHS or LBA, or the EFI system partition).
    pub fn is_fat(&self) -> bool {
        matches!(self.kind, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef)
    }
}

/// The used primary entries of the MBR in `sector`, or `None` when it holds no MBR partition table (no
/// `55 aa` signature, or the protective MBR of a GPT disk).
pub fn parse(sector: &[u8; 512]) -> Option<Vec<Partition>> {
    if sector[510..512] != [0x55, 0xaa] {
        return None;
    }
    let mut partitions = Vec::new();
    for index in 0..4 {
        let e = &sector[446 + 16 * index..446 + 16 * (index + 1)];
        let lba = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().unwrap()) as u64 * SECTOR;
        let (kind, start, len) = (e[4], lba(8), lba(12));
        if kind == 0xee {
            return None;
        }
        if kind != 0 && len != 0 {
            partitions.push(Partition {
                index: index + 1,
                kind,
                bootable: e[0] == 0x80,
                start,
                len,
            });
        }
    }
    Some(partitions)
}

/// [`parse`] of the first sector of `disk`.
pub fn read(disk: &mut (impl Read + Seek)) -> Result<Option<Vec<Partition>>> {
    let mut sector = [0u8; 512];
    disk.seek(SeekFrom::Start(0))
        .context("seeking to the partition table")?;
    disk.read_exact(&mut sector)
        .context("reading the partition table (sector 0)")?;
    Ok(parse(&sector))
}

/// Sector 0 of a disk with `code` (the boot loader's, at most 440 bytes), the disk id and one bootable
/// FAT32 (LBA) partition of `sectors` sectors from sector `start`.
pub fn sector_zero(code: &[u8], disk_id: u32, start: u32, sectors: u32) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[..code.len()].copy_from_slice(code);
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    mbr[446..462].copy_from_slice(&fat32_entry(start, sectors));
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// A bootable type-0c entry; CHS as fdisk writes it for 255 heads and 63 sectors per track.
fn fat32_entry(start: u32, sectors: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = 0x80;
    e[1..4].copy_from_slice(&chs(start));
    e[4] = 0x0c;
    e[5..8].copy_from_slice(&chs(start + sectors - 1));
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    e
}

fn chs(lba: u32) -> [u8; 3] {
    let (heads, per_track) = (255, 63);
    let cylinder = lba / (heads * per_track);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / per_track) % heads;
    let sector = lba % per_track + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let sector = sector_zero(b"\xeb\x3c", 0x1234_5678, 2048, 100_000);
        assert_eq!(&sector[440..444], &0x1234_5678u32.to_le_bytes());
        assert_eq!(
            parse(&sector),
            Some(vec![Partition {
                index: 1,
                kind: 0x0c,
                bootable: true,
                start: 2048 * 512,
                len: 100_000 * 512,
            }])
        );
        assert!(parse(&sector).unwrap()[0].is_fat());
        // CHS as fdisk writes it: sector 2048 is head 32, sector 33, cylinder 0.
        assert_eq!(&sector[447..450], &[32, 33, 0]);
        assert_eq!(chs(16 * 1024 * 1024), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn no_signature_and_gpt_are_no_mbr() {
        let mut sector = sector_zero(&[], 1, 2048, 10);
        sector[450] = 0xee;
        assert_eq!(parse(&sector), None);
        sector[510] = 0;
        assert_eq!(parse(&sector), None);
        assert_eq!(parse(&[0u8; 512]), None);
    }

    /// Property: any first sector (and any disk shorter than one) reads as partitions inside the disk's
    /// reach, as no MBR, or as an error; never a panic.
    #[test]
    fn any_first_sector_reads_without_a_panic() {
        let seed = sector_zero(b"\xeb\x3c", 0x1234_5678, 2048, 100_000);
        crate::fuzz::run(5000, &[&seed], |b| {
            let mut sector = [0u8; 512];
            let n = b.len().min(512);
            sector[..n].copy_from_slice(&b[..n]);
            for p in parse(&sector).unwrap_or_default() {
                assert!(p.start.checked_add(p.len).is_some());
                let _ = p.is_fat();
            }
            let _ = read(&mut std::io::Cursor::new(b));
        });
    }
}
