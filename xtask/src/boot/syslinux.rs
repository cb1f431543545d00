//! syslinux: finding its files on the host, its config for a slot table, and the ADV (boot-once).
//!
//! The config and the ADV are pure functions here; reading and writing them on a stick is `slots`' job.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::boot::entry::BootEntry;

/// Where the bootloader lives on the stick's FAT partition (`syslinux --directory`).
pub const DIR: &str = "syslinux";
/// The config ldlinux reads, relative to the partition's root.
pub const CONFIG: &str = "syslinux/syslinux.cfg";
/// The same config again, where ldlinux looks when [`CONFIG`] is missing: ldlinux tries the install directory
/// (extlinux.conf, then syslinux.cfg), then /boot/syslinux, /syslinux and `/`. Updated before [`CONFIG`], so a
/// crash in the middle of replacing either leaves one complete config that ldlinux finds.
pub const FALLBACK_CONFIG: &str = "syslinux.cfg";
/// ldlinux's second stage; its last 1024 bytes are the ADV. Never moved, only patched in place.
pub const LDLINUX_SYS: &str = "syslinux/ldlinux.sys";
/// The com32 modules the config needs, besides ldlinux.c32 (which the installer writes itself).
pub const MODULES: &[&str] = &["menu.c32", "libutil.c32", "libcom32.c32"];
/// Overrides the search for syslinux's files: a directory holding mbr.bin and the BIOS modules.
pub const DIR_ENV: &str = "RAMNAS_SYSLINUX_DIR";

/// syslinux's files on the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// MBR boot code (440 bytes) for a DOS partition table.
    pub mbr: PathBuf,
    /// Directory of the BIOS com32 modules (menu.c32 …).
    pub modules: PathBuf,
    /// The mtools-based installer (`syslinux --install --offset`).
    pub installer: PathBuf,
    /// The dynamic loader to run the installer through, with the libraries beside it: a build's own
    /// installer (see `bootloaders`). None: run it as it is.
    pub loader: Option<PathBuf>,
    /// Whose it is, for people: `the build's (syslinux 6.04_pre1-r2)`, `this host's (/usr/share/syslinux)`.
    pub source: String,
}

/// The (mbr.bin directory, modules directory) pairs distributions install: Debian/Ubuntu, then
/// Alpine/Fedora/Arch.
pub fn known_places() -> Vec<(PathBuf, PathBuf)> {
    vec![
        (
            "/usr/lib/syslinux/mbr".into(),
            "/usr/lib/syslinux/modules/bios".into(),
        ),
        ("/usr/share/syslinux".into(), "/usr/share/syslinux".into()),
        (
            "/usr/lib/syslinux/bios".into(),
            "/usr/lib/syslinux/bios".into(),
        ),
    ]
}

const INSTALL_HINT: &str = "install syslinux (Debian/Ubuntu: apt-get install syslinux syslinux-common mtools; \
     Alpine: apk add syslinux mtools; Fedora: dnf install syslinux mtools; Arch: pacman -S syslinux mtools)";

/// The places [`find`] looks: `$RAMNAS_SYSLINUX_DIR` when set, else the known places.
fn places() -> Vec<(PathBuf, PathBuf)> {
    match std::env::var_os(DIR_ENV) {
        Some(dir) => vec![(PathBuf::from(&dir), PathBuf::from(dir))],
        None => known_places(),
    }
}

/// Whether [`find`] would find mbr.bin and the modules (the installer aside).
pub fn files_present() -> bool {
    find_in(&places(), PathBuf::new()).is_ok()
}

/// Finds syslinux on the host: `$RAMNAS_SYSLINUX_DIR` when set, else the known places.
pub fn find() -> Result<Host> {
    let places = places();
    let installer = which::which("syslinux")
        .map_err(|_| anyhow::anyhow!("the `syslinux` installer is not on PATH: {INSTALL_HINT}"))?;
    find_in(&places, installer)
}

/// The first of `places` that holds mbr.bin and every module the config needs.
pub fn find_in(places: &[(PathBuf, PathBuf)], installer: PathBuf) -> Result<Host> {
    let complete = |(mbr, modules): &(PathBuf, PathBuf)| {
        mbr.join("mbr.bin").is_file() && MODULES.iter().all(|m| modules.join(m).is_file())
    };
    match places.iter().find(|p| complete(p)) {
        Some((mbr, modules)) => Ok(Host {
            mbr: mbr.join("mbr.bin"),
            modules: modules.clone(),
            installer,
            loader: None,
            source: format!("this host's ({})", modules.display()),
        }),
        None => {
            let looked: Vec<String> = places
                .iter()
                .map(|(m, d)| {
                    if m == d {
                        m.display().to_string()
                    } else {
                        format!("{} + {}", m.display(), d.display())
                    }
                })
                .collect();
            bail!(
                "syslinux's mbr.bin and {} not found (looked in {}; set {DIR_ENV} to another directory): {INSTALL_HINT}",
                MODULES.join(", "),
                looked.join(", ")
            )
        }
    }
}

/// Reads the 440 bytes of MBR boot code.
pub fn mbr_code(host: &Host) -> Result<Vec<u8>> {
    let code =
        std::fs::read(&host.mbr).with_context(|| format!("reading {}", host.mbr.display()))?;
    if code.len() > 440 {
        bail!(
            "{}: {} bytes, but MBR boot code has at most 440",
            host.mbr.display(),
            code.len()
        );
    }
    Ok(code)
}

/// Seconds the menu waits before booting the default.
pub const TIMEOUT_SECS: u32 = 3;

/// syslinux.cfg for `entries`, booting `default` unless a person picks another at the console (serial
/// or VGA). Each entry appends `ramnas.slot=<label>`.
pub fn config(entries: &[BootEntry], default: &str) -> String {
    let mut cfg = format!(
        "# Written by cargo xtask; rewritten on every deploy, commit and rollback.\n\
         SERIAL 0 115200\n\
         CONSOLE 1\n\
         PATH /{DIR}/\n\
         UI /{DIR}/menu.c32\n\
         MENU TITLE ramnas\n\
         MENU WIDTH 78\n\
         MENU MARGIN 2\n\
         TIMEOUT {}\n\
         DEFAULT {default}\n",
        TIMEOUT_SECS * 10
    );
    for e in entries {
        let default_mark = if e.label == default { " (default)" } else { "" };
        cfg.push_str(&format!(
            "\nLABEL {label}\n  MENU LABEL slot {label}: {title}{default_mark}\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {cmdline}\n",
            label = e.label,
            title = e.title,
            kernel = e.kernel,
            initrd = e.initrds.join(","),
            cmdline = e.full_cmdline(),
        ));
    }
    cfg
}

/// The `DEFAULT` label of a syslinux.cfg.
pub fn default_label(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(w) if w.eq_ignore_ascii_case("DEFAULT") => words.next().map(str::to_string),
            _ => None,
        }
    })
}

/// The labels a syslinux.cfg defines, in order.
pub fn labels(cfg: &str) -> Vec<String> {
    cfg.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match words.next() {
                Some(w) if w.eq_ignore_ascii_case("LABEL") => words.next().map(str::to_string),
                _ => None,
            }
        })
        .collect()
}

/// The Auxiliary Data Vector at the end of ldlinux.sys: two copies of a checksummed 512-byte block.
///
/// Each copy is `u32 0x5a2d2fa5 | u32 checksum | 500 bytes data | u32 0xdd28bf64` (little endian), with
/// `checksum + sum(data as u32s) == 0xa3041767`. The data is records `tag u8, len u8, bytes`; tag 0 ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Adv {
    /// (tag, value) records in order.
    records: Vec<(u8, Vec<u8>)>,
}

impl Adv {
    /// Both copies.
    pub const SIZE: usize = 1024;
    const DATA: usize = 500;
    const MAGIC1: u32 = 0x5a2d2fa5;
    const MAGIC2: u32 = 0xa3041767;
    const MAGIC3: u32 = 0xdd28bf64;
    /// Tag of the boot-once command: a label, optionally followed by extra kernel arguments.
    pub const BOOT_ONCE: u8 = 1;
    /// Tag of menu.c32's saved default (MENU SAVE).
    pub const MENU_SAVE: u8 = 2;

    /// Parses the ADV from the last 1024 bytes of ldlinux.sys. Like ldlinux, it takes the first valid copy
    /// and treats an ADV with no valid copy as empty.
    pub fn parse(bytes: &[u8]) -> Result<Adv> {
        if bytes.len() != Self::SIZE {
            bail!("an ADV is {} bytes, got {}", Self::SIZE, bytes.len());
        }
        let copy = bytes
            .chunks_exact(512)
            .find(|c| Self::valid(c))
            .map(|c| &c[8..8 + Self::DATA]);
        let mut records = Vec::new();
        if let Some(data) = copy {
            let mut i = 0;
            while i + 2 <= data.len() && data[i] != 0 {
                let (tag, len) = (data[i], data[i + 1] as usize);
                let Some(value) = data.get(i + 2..i + 2 + len) else {
                    break;
                };
                records.push((tag, value.to_vec()));
                i += 2 + len;
            }
        }
        Ok(Adv { records })
    }

    fn valid(copy: &[u8]) -> bool {
        let word = |i: usize| u32::from_le_bytes(copy[i * 4..i * 4 + 4].try_into().unwrap());
        let sum = (1..127).fold(0u32, |s, i| s.wrapping_add(word(i)));
        word(0) == Self::MAGIC1 && word(127) == Self::MAGIC3 && sum == Self::MAGIC2
    }

    /// The two identical copies, ready to be written over the last 1024 bytes of ldlinux.sys.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut data = [0u8; Self::DATA];
        let mut i = 0;
        for (tag, value) in &self.records {
            data[i] = *tag;
            data[i + 1] = value.len() as u8;
            data[i + 2..i + 2 + value.len()].copy_from_slice(value);
            i += 2 + value.len();
        }
        let sum = data.chunks_exact(4).fold(0u32, |s, w| {
            s.wrapping_add(u32::from_le_bytes(w.try_into().unwrap()))
        });
        let mut copy = [0u8; 512];
        copy[0..4].copy_from_slice(&Self::MAGIC1.to_le_bytes());
        copy[4..8].copy_from_slice(&Self::MAGIC2.wrapping_sub(sum).to_le_bytes());
        copy[8..508].copy_from_slice(&data);
        copy[508..512].copy_from_slice(&Self::MAGIC3.to_le_bytes());
        let mut out = [0u8; Self::SIZE];
        out[..512].copy_from_slice(&copy);
        out[512..].copy_from_slice(&copy);
        out
    }

    pub fn get(&self, tag: u8) -> Option<&[u8]> {
        self.records
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets (or, with an empty value, removes) a record; fails when the records would not fit.
    pub fn set(&mut self, tag: u8, value: &[u8]) -> Result<()> {
        if tag == 0 {
            bail!("ADV tag 0 marks the end of the records");
        }
        if value.len() > 255 {
            bail!("ADV values are at most 255 bytes, got {}", value.len());
        }
        let mut records: Vec<_> = self
            .records
            .iter()
            .filter(|(t, _)| *t != tag)
            .cloned()
            .collect();
        if !value.is_empty() {
            records.push((tag, value.to_vec()));
        }
        let used: usize = records.iter().map(|(_, v)| 2 + v.len()).sum();
        if used > Self::DATA {
            bail!(
                "the ADV holds {} bytes of records, these need {used}",
                Self::DATA
            );
        }
        self.records = records;
        Ok(())
    }

    /// The boot-once command, such as `b ramnas.trial=1`.
    pub fn boot_once(&self) -> Option<String> {
        self.get(Self::BOOT_ONCE)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Arms (Some) or clears (None) the boot-once command; ldlinux clears it itself before booting it.
    pub fn set_boot_once(&mut self, command: Option<&str>) -> Result<()> {
        self.set(Self::BOOT_ONCE, command.unwrap_or("").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ADV as `syslinux --reset-adv` writes it: empty records, valid checksums.
    fn empty_adv_bytes() -> [u8; 1024] {
        let mut copy = [0u8; 512];
        copy[0..4].copy_from_slice(&0x5a2d2fa5u32.to_le_bytes());
        copy[4..8].copy_from_slice(&0xa3041767u32.to_le_bytes());
        copy[508..512].copy_from_slice(&0xdd28bf64u32.to_le_bytes());
        let mut out = [0u8; 1024];
        out[..512].copy_from_slice(&copy);
        out[512..].copy_from_slice(&copy);
        out
    }

    #[test]
    fn empty_adv_round_trips() {
        let adv = Adv::parse(&empty_adv_bytes()).unwrap();
        assert_eq!(adv, Adv::default());
        assert_eq!(adv.to_bytes(), empty_adv_bytes());
    }

    #[test]
    fn boot_once_is_set_read_and_cleared() {
        let mut adv = Adv::default();
        adv.set(Adv::MENU_SAVE, b"a").unwrap();
        adv.set_boot_once(Some("b ramnas.trial=1")).unwrap();
        let bytes = adv.to_bytes();
        // Record layout: tag, len, bytes, in order.
        assert_eq!(&bytes[8..13], &[2, 1, b'a', 1, 16]);
        assert_eq!(&bytes[13..29], b"b ramnas.trial=1");
        assert_eq!(&bytes[..512], &bytes[512..]);
        let parsed = Adv::parse(&bytes).unwrap();
        assert_eq!(parsed.boot_once().as_deref(), Some("b ramnas.trial=1"));
        assert_eq!(parsed.get(Adv::MENU_SAVE), Some(&b"a"[..]));
        let mut cleared = parsed.clone();
        cleared.set_boot_once(None).unwrap();
        assert_eq!(cleared.boot_once(), None);
        assert_eq!(cleared.get(Adv::MENU_SAVE), Some(&b"a"[..]));
    }

    #[test]
    fn checksum_matches_the_syslinux_rule() {
        let mut adv = Adv::default();
        adv.set_boot_once(Some("b")).unwrap();
        let bytes = adv.to_bytes();
        let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        let sum = (2..127).fold(word(1), |s, i| s.wrapping_add(word(i)));
        assert_eq!(sum, 0xa3041767);
    }

    #[test]
    fn a_damaged_first_copy_falls_back_to_the_second() {
        let mut adv = Adv::default();
        adv.set_boot_once(Some("b")).unwrap();
        let mut bytes = adv.to_bytes();
        bytes[10] ^= 0xff;
        assert_eq!(
            Adv::parse(&bytes).unwrap().boot_once().as_deref(),
            Some("b")
        );
        bytes[512 + 10] ^= 0xff;
        assert_eq!(Adv::parse(&bytes).unwrap(), Adv::default());
    }

    #[test]
    fn records_that_do_not_fit_are_refused() {
        let mut adv = Adv::default();
        adv.set(3, &[b'x'; 255]).unwrap();
        assert!(adv.set(4, &[b'y'; 255]).is_err());
        assert!(adv.set(5, &[b'z'; 256]).is_err());
        assert!(adv.set(0, b"x").is_err());
    }

    #[test]
    fn config_has_an_entry_per_slot_and_the_default() {
        let entries = [
            BootEntry::in_slot("a", "build 1", true, "console=ttyS0 panic=5\n"),
            BootEntry::in_slot("b", "build 2", false, "quiet"),
        ];
        let cfg = config(&entries, "b");
        assert_eq!(default_label(&cfg).as_deref(), Some("b"));
        assert_eq!(labels(&cfg), ["a", "b"]);
        assert!(cfg.contains(
            "  KERNEL /slots/a/vmlinuz\n  INITRD /slots/a/ucode.img,/slots/a/initramfs\n  APPEND console=ttyS0 panic=5 ramnas.slot=a\n"
        ), "{cfg}");
        assert!(cfg.contains("  INITRD /slots/b/initramfs\n  APPEND quiet ramnas.slot=b\n"));
        assert!(cfg.contains("SERIAL 0 115200\n"));
    }

    #[test]
    fn finder_names_the_package_when_nothing_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_in(
            &[(dir.path().to_path_buf(), dir.path().to_path_buf())],
            "syslinux".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("apt-get install syslinux"), "{err}");
        assert!(err.contains("apk add syslinux"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        for f in ["mbr.bin", "menu.c32", "libutil.c32", "libcom32.c32"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let host = find_in(
            &[
                ("/nonexistent".into(), "/nonexistent".into()),
                (dir.path().to_path_buf(), dir.path().to_path_buf()),
            ],
            "syslinux".into(),
        )
        .unwrap();
        assert_eq!(host.mbr, dir.path().join("mbr.bin"));
    }

    /// Property: any 1024 bytes at the end of ldlinux.sys (or fewer) read as an ADV or as an error; an ADV
    /// read is written back and read again the same.
    #[test]
    fn any_adv_bytes_read_as_an_adv_or_an_error() {
        let mut adv = Adv::default();
        adv.set_boot_once(Some("b ramnas.trial=1")).unwrap();
        let armed = adv.to_bytes();
        crate::fuzz::run(5000, &[&empty_adv_bytes(), &armed], |b| {
            if let Ok(adv) = Adv::parse(b) {
                let _ = adv.boot_once();
                assert_eq!(Adv::parse(&adv.to_bytes()).unwrap(), adv);
            }
        });
    }
}
