//! A/B slot logic over a stick: which slot, trial, commit, rollback, crash-safe order of writes.
//!
//! What the stick says is the only state: a slot is filled when `slots/<s>/manifest.json` is there and every
//! file it names is present with its size; the default (committed) slot is syslinux.cfg's `DEFAULT`; an armed
//! trial is the ADV's boot-once command. Nothing else records which slot is which, so nothing can disagree.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{
    stick::{self, Stick},
    syslinux::{self, Adv},
    uefi,
};

/// One of the two boot slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`: the directory name under /slots, the boot label, the `ramnas.slot=` value.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn parse(name: &str) -> Option<Slot> {
        match name {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// `slots/<s>` on the stick.
    pub fn dir(self) -> String {
        format!("slots/{}", self.name())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a build's manifest, in OUT/ and in each slot.
pub const MANIFEST: &str = "manifest.json";
/// Files a build must have to boot.
pub const REQUIRED: &[&str] = &["vmlinuz", "initramfs", "cmdline"];

/// The part of a build's manifest.json that slots need, read tolerantly (other fields are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub build_id: String,
    #[serde(default)]
    pub kernel_version: Option<String>,
    /// Every file of the build by name: vmlinuz, initramfs, cmdline, ucode.img when present.
    pub artifacts: BTreeMap<String, Artifact>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// Parses manifest.json; `what` names it in errors.
    pub fn parse(json: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(json)
            .with_context(|| format!("{what}: not a ramnas build manifest"))?;
        for name in REQUIRED {
            if !m.artifacts.contains_key(*name) {
                bail!("{what}: the build has no {name}");
            }
        }
        if let Some(bad) = m
            .artifacts
            .keys()
            .find(|n| n.contains('/') || n.as_str() == MANIFEST || n.ends_with(".tmp"))
        {
            bail!("{what}: artifact name {bad:?} cannot be a file in a slot");
        }
        Ok(m)
    }

    /// Bytes of the build's files (without the manifest).
    pub fn size(&self) -> u64 {
        self.artifacts.values().map(|a| a.size).sum()
    }

    /// The line shown for this build in the boot menu.
    pub fn title(&self) -> String {
        match &self.kernel_version {
            Some(k) => format!("build {}, kernel {k}", self.build_id),
            None => format!("build {}", self.build_id),
        }
    }
}

/// A build directory on this machine (OUT/), checked against its manifest's sizes.
#[derive(Debug, Clone)]
pub struct Build {
    pub dir: std::path::PathBuf,
    pub manifest: Manifest,
    /// manifest.json as written by `build`, copied byte for byte into the slot.
    pub manifest_json: Vec<u8>,
}

impl Build {
    pub fn open(dir: &Path) -> Result<Build> {
        let path = dir.join(MANIFEST);
        let json = fs::read(&path).with_context(|| {
            format!(
                "reading {}: is {} a build? Run `cargo xtask build --out {}` first",
                path.display(),
                dir.display(),
                dir.display()
            )
        })?;
        let manifest = Manifest::parse(&json, &path.display().to_string())?;
        for (name, a) in &manifest.artifacts {
            let file = dir.join(name);
            let size = fs::metadata(&file)
                .with_context(|| format!("{}: missing, but {MANIFEST} names it", file.display()))?
                .len();
            if size != a.size {
                bail!(
                    "{}: {size} bytes, {MANIFEST} says {}; rebuild with `cargo xtask build`",
                    file.display(),
                    a.size
                );
            }
        }
        Ok(Build {
            dir: dir.to_path_buf(),
            manifest,
            manifest_json: json,
        })
    }

    /// Bytes one slot of this build takes on the stick (its files and the manifest).
    pub fn slot_bytes(&self) -> u64 {
        self.manifest.size() + self.manifest_json.len() as u64
    }
}

/// A slot on the stick that holds a complete build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    pub manifest: Manifest,
    /// The slot's manifest.json as stored, for readers that want every field (`crate::manifest`).
    pub manifest_json: Vec<u8>,
    /// The build's kernel command line (slots/<s>/cmdline).
    pub cmdline: String,
    /// slots/<s>/ucode.img exists and is loaded before the initramfs.
    pub ucode: bool,
}

/// What a stick holds: the filled slots, the default, the armed boot-once command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub slots: BTreeMap<Slot, Filled>,
    /// syslinux.cfg's DEFAULT (None without a config or with a label that is no slot).
    pub default: Option<Slot>,
    /// The ADV's boot-once command (`b ramnas.trial=1`), None when not armed.
    pub boot_once: Option<String>,
    /// The UEFI view: the UKIs under EFI/Linux and their roles (committed, trial, spare).
    pub uefi: uefi::View,
}

impl Table {
    pub fn read(stick: &mut dyn Stick) -> Result<Table> {
        let mut slots = BTreeMap::new();
        for slot in Slot::ALL {
            if let Some(filled) = read_slot(stick, slot)? {
                slots.insert(slot, filled);
            }
        }
        let default = match boot_config(stick)? {
            Some(cfg) => syslinux::default_label(&cfg).and_then(|l| Slot::parse(&l)),
            None => None,
        };
        let boot_once = if stick.exists(syslinux::LDLINUX_SYS)? {
            read_adv(stick)?.boot_once()
        } else {
            None
        };
        let uefi = uefi::read_view(stick)?;
        Ok(Table {
            slots,
            default,
            boot_once,
            uefi,
        })
    }

    /// The slot the boot-once command boots, if one is armed.
    pub fn trial(&self) -> Option<Slot> {
        self.boot_once
            .as_deref()
            .and_then(|c| c.split_whitespace().next())
            .and_then(Slot::parse)
    }
}

/// The syslinux config ldlinux will read: the one in /syslinux, else the fallback at the root.
pub fn boot_config(stick: &mut dyn Stick) -> Result<Option<String>> {
    for path in [syslinux::CONFIG, syslinux::FALLBACK_CONFIG] {
        if stick.exists(path)? {
            return Ok(Some(
                String::from_utf8_lossy(&stick.read(path)?).into_owned(),
            ));
        }
    }
    Ok(None)
}

/// Reads one slot; None unless it holds a complete build.
pub fn read_slot(stick: &mut dyn Stick, slot: Slot) -> Result<Option<Filled>> {
    let dir = slot.dir();
    let manifest_path = format!("{dir}/{MANIFEST}");
    if !stick.exists(&manifest_path)? {
        return Ok(None);
    }
    let manifest_json = stick.read(&manifest_path)?;
    let Ok(manifest) = Manifest::parse(
        &manifest_json,
        &format!("{manifest_path} on {}", stick.describe()),
    ) else {
        return Ok(None);
    };
    let present: BTreeMap<String, u64> = stick
        .list(&dir)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e.name, e.size))
        .collect();
    if manifest
        .artifacts
        .iter()
        .any(|(name, a)| present.get(name) != Some(&a.size))
    {
        return Ok(None);
    }
    let cmdline = String::from_utf8_lossy(&stick.read(&format!("{dir}/cmdline"))?)
        .trim()
        .to_string();
    let ucode = manifest.artifacts.contains_key("ucode.img");
    Ok(Some(Filled {
        manifest,
        manifest_json,
        cmdline,
        ucode,
    }))
}

/// Puts the build into `slot`: every file under a temporary name, each read back and checked against the
/// manifest's SHA-256, then renamed into place with manifest.json last. Until the renames start the slot's
/// old build is untouched; from then on the slot counts as empty (its manifest is gone) until the new
/// manifest lands. Does not touch the boot config or the other slot.
pub fn install(stick: &mut dyn Stick, slot: Slot, build: &Build) -> Result<()> {
    let dir = slot.dir();
    stick.create_dir_all(&dir)?;
    for e in stick.list(&dir)? {
        if !e.is_dir && e.name.ends_with(".tmp") {
            stick.remove(&format!("{dir}/{}", e.name))?;
        }
    }
    for name in build.manifest.artifacts.keys() {
        let src = build.dir.join(name);
        let mut file =
            fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        stick.write(&stick::temp_name(&format!("{dir}/{name}")), &mut file)?;
    }
    stick.write(
        &stick::temp_name(&format!("{dir}/{MANIFEST}")),
        &mut &build.manifest_json[..],
    )?;
    for (name, want) in &build.manifest.artifacts {
        let tmp = stick::temp_name(&format!("{dir}/{name}"));
        let (size, sha256) = stick.sha256(&tmp)?;
        if size != want.size || sha256 != want.sha256 {
            bail!(
                "{tmp} on {} reads back as {size} bytes sha256 {sha256}, the build's {MANIFEST} says {} bytes sha256 {}: the stick or {} is damaged",
                stick.describe(),
                want.size,
                want.sha256,
                build.dir.join(name).display()
            );
        }
    }
    stick.sync()?;
    let manifest = format!("{dir}/{MANIFEST}");
    if stick.exists(&manifest)? {
        stick.remove(&manifest)?;
        stick.sync()?;
    }
    for e in stick.list(&dir)? {
        if !e.is_dir && !e.name.ends_with(".tmp") && !build.manifest.artifacts.contains_key(&e.name)
        {
            stick.remove(&format!("{dir}/{}", e.name))?;
        }
    }
    for name in build.manifest.artifacts.keys() {
        let path = format!("{dir}/{name}");
        stick.rename(&stick::temp_name(&path), &path)?;
    }
    stick.sync()?;
    stick.rename(&stick::temp_name(&manifest), &manifest)?;
    stick.sync()
}

/// Rewrites syslinux.cfg with an entry per filled slot and `default` as DEFAULT: first the fallback copy,
/// then the one in /syslinux, each through a temporary name, so ldlinux finds a complete config whenever
/// the writing stops.
pub fn write_boot_config(stick: &mut dyn Stick, default: Slot) -> Result<()> {
    let table = Table::read(stick)?;
    if !table.slots.contains_key(&default) {
        bail!(
            "slot {default} on {} holds no complete build; it cannot be the default",
            stick.describe()
        );
    }
    let entries: Vec<syslinux::Entry> = table
        .slots
        .iter()
        .map(|(slot, f)| syslinux::Entry {
            label: slot.name().to_string(),
            title: f.manifest.title(),
            ucode: f.ucode,
            cmdline: f.cmdline.clone(),
        })
        .collect();
    let cfg = syslinux::config(&entries, default.name());
    for path in [syslinux::FALLBACK_CONFIG, syslinux::CONFIG] {
        stick.replace(path, cfg.as_bytes())?;
        stick.sync()?;
    }
    Ok(())
}

/// The ADV from the end of ldlinux.sys.
pub fn read_adv(stick: &mut dyn Stick) -> Result<Adv> {
    let ldlinux = stick.read(syslinux::LDLINUX_SYS)?;
    if ldlinux.len() < Adv::SIZE {
        bail!(
            "{} on {} is too short to hold an ADV",
            syslinux::LDLINUX_SYS,
            stick.describe()
        );
    }
    Adv::parse(&ldlinux[ldlinux.len() - Adv::SIZE..])
}

/// Writes the ADV over the end of ldlinux.sys, in place (its clusters must not move).
pub fn write_adv(stick: &mut dyn Stick, adv: &Adv) -> Result<()> {
    let size = stick
        .entry(syslinux::LDLINUX_SYS)?
        .with_context(|| format!("no {} on {}", syslinux::LDLINUX_SYS, stick.describe()))?
        .size;
    if size < Adv::SIZE as u64 {
        bail!("{} is too short to hold an ADV", syslinux::LDLINUX_SYS);
    }
    stick.patch(
        syslinux::LDLINUX_SYS,
        size - Adv::SIZE as u64,
        &adv.to_bytes(),
    )?;
    stick.sync()
}

/// Arms a one-time boot of `command` (a label, optionally followed by kernel arguments), or clears it.
pub fn set_boot_once(stick: &mut dyn Stick, command: Option<&str>) -> Result<()> {
    let mut adv = read_adv(stick)?;
    adv.set_boot_once(command)?;
    write_adv(stick, &adv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stick::Dir;
    use sha2::{Digest, Sha256};

    /// A build directory with the given files and a manifest naming them.
    fn build(dir: &Path, id: &str, files: &[(&str, &str)]) -> Build {
        fs::create_dir_all(dir).unwrap();
        let mut artifacts = serde_json::Map::new();
        for (name, data) in files {
            fs::write(dir.join(name), data).unwrap();
            artifacts.insert(
                name.to_string(),
                serde_json::json!({
                    "size": data.len(),
                    "sha256": stick::hex(&Sha256::digest(data.as_bytes())),
                }),
            );
        }
        let json = serde_json::json!({ "build_id": id, "artifacts": artifacts, "extra": 1 });
        fs::write(dir.join(MANIFEST), json.to_string()).unwrap();
        Build::open(dir).unwrap()
    }

    #[test]
    fn install_replaces_a_slot_and_the_config_follows_the_slots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(root.join("syslinux")).unwrap();
        let mut stick = Dir::open(&root).unwrap();
        let one = build(
            &tmp.path().join("one"),
            "one",
            &[
                ("vmlinuz", "k1"),
                ("initramfs", "i1"),
                ("cmdline", "console=ttyS0\n"),
                ("ucode.img", "u1"),
            ],
        );
        let two = build(
            &tmp.path().join("two"),
            "two",
            &[
                ("vmlinuz", "k2"),
                ("initramfs", "i2"),
                ("cmdline", "quiet\n"),
            ],
        );
        install(&mut stick, Slot::A, &one).unwrap();
        install(&mut stick, Slot::B, &one).unwrap();
        write_boot_config(&mut stick, Slot::B).unwrap();
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.default, Some(Slot::B));
        assert_eq!(table.slots.len(), 2);
        assert!(table.slots[&Slot::A].ucode);

        // A stale temporary file from a killed run is cleaned up; ucode.img, not in build two, goes.
        fs::write(root.join("slots/b/junk.tmp"), "x").unwrap();
        install(&mut stick, Slot::B, &two).unwrap();
        let mut names: Vec<String> = stick
            .list("slots/b")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        assert_eq!(names, ["cmdline", "initramfs", "manifest.json", "vmlinuz"]);
        write_boot_config(&mut stick, Slot::B).unwrap();
        let cfg = fs::read_to_string(root.join(syslinux::CONFIG)).unwrap();
        assert!(
            cfg.contains("INITRD /slots/a/ucode.img,/slots/a/initramfs\n"),
            "{cfg}"
        );
        assert!(
            cfg.contains("INITRD /slots/b/initramfs\n  APPEND quiet ramnas.slot=b\n"),
            "{cfg}"
        );
        assert_eq!(
            cfg,
            fs::read_to_string(root.join(syslinux::FALLBACK_CONFIG)).unwrap()
        );
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.slots[&Slot::B].manifest.build_id, "two");
        assert_eq!(table.slots[&Slot::B].cmdline, "quiet");

        // A slot missing a file is not filled, and cannot be made the default.
        fs::remove_file(root.join("slots/b/initramfs")).unwrap();
        assert!(read_slot(&mut stick, Slot::B).unwrap().is_none());
        let err = write_boot_config(&mut stick, Slot::B).unwrap_err();
        assert!(err.to_string().contains("slot b"), "{err}");
    }

    #[test]
    fn a_file_that_does_not_match_its_manifest_leaves_the_slot_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(&root).unwrap();
        let mut stick = Dir::open(&root).unwrap();
        let files = [("vmlinuz", "k1"), ("initramfs", "i1"), ("cmdline", "c\n")];
        let one = build(&tmp.path().join("one"), "one", &files);
        install(&mut stick, Slot::A, &one).unwrap();
        let two = build(
            &tmp.path().join("two"),
            "two",
            &[("vmlinuz", "k2"), ("initramfs", "i2"), ("cmdline", "c\n")],
        );
        // Same size, other bytes: only the SHA-256 check can notice.
        fs::write(two.dir.join("initramfs"), "XX").unwrap();
        let err = install(&mut stick, Slot::A, &two).unwrap_err().to_string();
        assert!(err.contains("slots/a/initramfs.tmp"), "{err}");
        assert!(err.contains("sha256"), "{err}");
        let slot = read_slot(&mut stick, Slot::A).unwrap().unwrap();
        assert_eq!(slot.manifest.build_id, "one");
        assert_eq!(
            fs::read_to_string(root.join("slots/a/initramfs")).unwrap(),
            "i1"
        );
    }

    #[test]
    fn a_build_without_a_kernel_is_refused() {
        let err = Manifest::parse(
            br#"{"build_id": "x", "artifacts": {"initramfs": {"size": 1, "sha256": "00"}, "cmdline": {"size": 1, "sha256": "00"}}}"#,
            "m.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no vmlinuz"), "{err}");
    }
}
