//! A/B slot logic over a stick: which slot, trial, commit, rollback, crash-safe order of writes.
//!
//! What the stick says is the only state: a slot is filled when `slots/<s>/manifest.json` is there and every
//! file it names is present with its size; the default (committed) slot is syslinux.cfg's `DEFAULT`; an armed
//! trial is the ADV's boot-once command. Nothing else records which slot is which, so nothing can disagree.
//!
//! A build's files live in `parts/`, each named by its content (the first 16 hex digits of its SHA-256), so
//! the two slots share what their builds share: a deploy writes only the files the stick lacks, and removes
//! the files no slot names any more ([`collect_garbage`]). `slots/<s>/` holds the manifest alone. (A slot
//! written by an earlier version holds its files itself; it is read as it is.)
//!
//! # The crash-safe order of writes
//!
//! Every boot, whenever a writer stops, finds a complete build. BIOS: ldlinux boots the ADV's boot-once if
//! armed, else `DEFAULT` of `/syslinux/syslinux.cfg`, or of `/syslinux.cfg` while the former is missing.
//! UEFI: systemd-boot boots a trial entry with tries left, else the default entry, of two the one with the
//! higher commit count ([`crate::boot::uefi`]). So:
//!
//! 1. A config is replaced root copy first, then `/syslinux`; each via `NAME.tmp` + rename, synced. While
//!    `/syslinux/syslinux.cfg` is missing (FAT's rename is remove-then-rename), the root copy is whole. The
//!    NAS's `ramnas-slot commit` writes the same two files in the same order, then the same entry renames,
//!    then clears a boot-once still armed by writing an empty ADV the same way.
//! 2. Neither config, boot-once nor any systemd-boot entry (a spare may be picked by hand) ever names a
//!    slot that is not complete.
//! 3. [`deploy`] into slot T (the one that is not the default), each step synced before the next:
//!    1. the files `parts/` lacks, each as `parts/<h>.tmp`, read back and its SHA-256 checked, then renamed
//!       to `parts/<h>` (no manifest names it yet: nothing boots it); the manifest as
//!       `slots/T/manifest.json.tmp` (stale `.tmp` files of a killed run are removed first);
//!    2. T is detached: a boot-once naming T is cleared, then the config is rewritten without T's entry;
//!       the committed slot's entry is made the UEFI default (written first on a stick that booted UKIs,
//!       whose UKIs then go), and T's entry is removed;
//!    3. T's old manifest is removed (T now counts as empty), then T's other files (an old-layout slot),
//!       then the new manifest is renamed in; then every part no manifest names goes ([`collect_garbage`]),
//!       so the stick never needs more than three builds' room: the committed build, T's old one and the
//!       new files;
//!    4. the config gets T's entry (DEFAULT stays, or is T with `--commit`), and systemd-boot gets
//!       `ramnas-T.conf` (through `.tmp`, which systemd-boot ignores);
//!    5. the ADV arms `T ramnas.trial=1`, then T's entry becomes `ramnas-trial-T+1-0.conf` (with
//!       `--commit`: the boot-once cleared, T's entry the default).
//! 4. `commit`/`rollback` ([`make_default`], per boot loader): the config with the new DEFAULT, the
//!    boot-once cleared, the entries renamed (a complete slot without one gets it first): the new default
//!    first, counted above the old one, which boots no more from that rename on; then the old default
//!    becomes a spare ([`uefi::renames`]). `rollback`
//!    checks the other slot's files against its manifest first; with a trial armed and not booted yet it
//!    disarms it instead.
//!
//! `RAMNAS_DEPLOY_KILL_AT=N` makes a deploy SIGKILL itself at the N-th point where it changes the stick
//! ([`stick::Faulty`], the one place they are counted); `tests/integration/deploy.rs` stops a deploy at
//! every point in turn, checks that the stick boots, and runs the deploy again.
//!
//! Known limits: a kill during a FAT write leaves lost clusters and the volume's dirty bit; `fsck.vfat -a`
//! reclaims them, and `ramnas-persist` runs it on the NAS before it mounts the stick. Each firmware spends
//! its own trial: one that comes up unhealthy disarms both (`ramnas-slot disarm`), but after one that
//! panicked or hung the other firmware's trial stays armed until the next deploy, commit or rollback. A
//! boot-once naming the default slot counts as no trial ([`armed_trial`]).

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{bail, Context, Result};

use crate::{
    boot::entry::BootEntry,
    boot::syslinux::{self, Adv},
    boot::uefi,
    build::manifest::Manifest,
    host::progress,
    stick::{self, Stick},
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
pub const MANIFEST: &str = Manifest::FILE_NAME;
/// Files a build must have to boot.
pub const REQUIRED: &[&str] = &["vmlinuz", "initramfs", "cmdline"];
/// Where the builds' files live on the stick, by content.
pub const PARTS: &str = "parts";

/// The name in [`PARTS`] of the file with this SHA-256: its first 16 hex digits (of a value that is no
/// SHA-256, as a manifest on a stick may hold, its first 16 characters at most).
fn part_name(sha256: &str) -> &str {
    let end = sha256
        .char_indices()
        .nth(16)
        .map_or(sha256.len(), |(i, _)| i);
    &sha256[..end]
}

/// Where the file with this SHA-256 lives on the stick: `parts/<`[`part_name`]`>`.
pub fn part_path(sha256: &str) -> String {
    format!("{PARTS}/{}", part_name(sha256))
}

/// Parses a build's manifest.json (`what` names it in errors) and checks that it names a bootable build whose
/// files can sit in a slot.
pub fn parse_manifest(json: &[u8], what: &str) -> Result<Manifest> {
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
    if let Some((name, _)) = m
        .artifacts
        .iter()
        .find(|(_, a)| a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("{what}: {name} has no SHA-256");
    }
    if let Some(bad) = m.initrds().iter().find(|n| !m.artifacts.contains_key(*n)) {
        bail!("{what}: initrd {bad:?} is no artifact of the build");
    }
    // Every later step prints these (status, a deploy's changes): an escape sequence must not reach a
    // terminal from a stick.
    let texts = [&m.build_id, &m.alpine_branch, &m.cmdline]
        .into_iter()
        .chain(&m.git_commit)
        .chain(&m.kernel_version)
        .chain(m.packages.iter().flat_map(|(k, v)| [k, v]))
        .chain(m.artifacts.keys())
        .chain(&m.initrds)
        .chain(m.bootloaders.iter().flat_map(|(k, v)| [k, v]));
    if let Some(bad) = texts.into_iter().find(|t| t.chars().any(char::is_control)) {
        bail!("{what}: {bad:?} holds control characters, which no ramnas build writes");
    }
    Ok(m)
}

/// A manifest with a field this ramnas does not know was written by a newer ramnas: the stick is fine, and
/// this ramnas must not change it (nor call its slot empty).
fn refuse_newer(json: &[u8], what: &str) -> Result<()> {
    if let Some(field) = crate::build::manifest::unknown_field(json) {
        let field = crate::stick::for_terminal(&field);
        bail!(
            "{what}: written by a newer ramnas ({field}); the stick is fine: update ramnas (`git pull` in \
             your ramnas checkout) and run the command again"
        );
    }
    Ok(())
}

/// Bytes of a build's files (without the manifest); sizes a manifest on a stick makes up stop at u64::MAX.
pub fn build_size(m: &Manifest) -> u64 {
    m.artifacts
        .values()
        .fold(0, |sum: u64, a| sum.saturating_add(a.size))
}

/// The line shown for a build in the boot menu.
pub fn title(m: &Manifest) -> String {
    match &m.kernel_version {
        Some(k) => format!("build {}, kernel {k}", m.build_id),
        None => format!("build {}", m.build_id),
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
        let manifest = parse_manifest(&json, &path.display().to_string())?;
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
        build_size(&self.manifest) + self.manifest_json.len() as u64
    }
}

/// A slot on the stick that holds a complete build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    pub manifest: Manifest,
    /// The slot's manifest.json as stored, for readers that want every field (`crate::build::manifest`).
    pub manifest_json: Vec<u8>,
    /// The build's kernel command line (its `cmdline` file).
    pub cmdline: String,
    /// Where each of the build's files is on the stick: in [`PARTS`], or in the slot's directory.
    pub files: BTreeMap<String, String>,
}

impl Filled {
    /// How a boot loader boots the slot `slot` holding this build.
    pub fn boot_entry(&self, slot: Slot) -> BootEntry {
        let at = |name: &str| format!("/{}", self.files[name]);
        BootEntry {
            label: slot.name().to_string(),
            title: title(&self.manifest),
            kernel: at("vmlinuz"),
            initrds: self.manifest.initrds().iter().map(|n| at(n)).collect(),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// What a stick holds: the filled slots, the default, the armed boot-once command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub slots: BTreeMap<Slot, Filled>,
    /// syslinux.cfg's DEFAULT (None without a config or with a label that is no slot).
    pub default: Option<Slot>,
    /// The ADV's boot-once command (`b ramnas.trial=1`), None when not armed.
    pub boot_once: Option<String>,
    /// The UEFI view: the entries under loader/entries and their roles (committed, trial, spare).
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

/// The files in a directory of the stick (none when it is missing): name → size.
fn sizes(stick: &mut dyn Stick, dir: &str) -> Result<BTreeMap<String, u64>> {
    if !stick.exists(dir)? {
        return Ok(BTreeMap::new());
    }
    Ok(stick
        .list(dir)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e.name, e.size))
        .collect())
}

/// Whether [`PARTS`] (as listed by [`sizes`]) holds the file with this SHA-256 and size.
fn has_part(parts: &BTreeMap<String, u64>, a: &crate::build::manifest::Artifact) -> bool {
    parts.get(part_name(&a.sha256)) == Some(&a.size)
}

/// Reads one slot; None unless it holds a complete build.
pub fn read_slot(stick: &mut dyn Stick, slot: Slot) -> Result<Option<Filled>> {
    let dir = slot.dir();
    let manifest_path = format!("{dir}/{MANIFEST}");
    if !stick.exists(&manifest_path)? {
        return Ok(None);
    }
    let manifest_json = stick.read(&manifest_path)?;
    let what = format!("{manifest_path} on {}", stick.describe());
    refuse_newer(&manifest_json, &what)?;
    let Ok(manifest) = parse_manifest(&manifest_json, &what) else {
        return Ok(None);
    };
    let parts = sizes(stick, PARTS)?;
    let own = sizes(stick, &dir)?;
    let mut files = BTreeMap::new();
    for (name, a) in &manifest.artifacts {
        let path = if has_part(&parts, a) {
            part_path(&a.sha256)
        } else if own.get(name) == Some(&a.size) {
            format!("{dir}/{name}")
        } else {
            return Ok(None);
        };
        files.insert(name.clone(), path);
    }
    let cmdline = String::from_utf8_lossy(&stick.read(&files["cmdline"])?)
        .trim()
        .to_string();
    Ok(Some(Filled {
        manifest,
        manifest_json,
        cmdline,
        files,
    }))
}

/// Puts the build into `slot` in two halves: [`write_temps`] (the files the stick lacks, each written under
/// a temporary name, read back and checked against the manifest's SHA-256, then renamed into [`PARTS`]; the
/// slot's old build untouched) and [`rename_temps`] (the slot's manifest replaced, then the files no slot
/// names removed). Does not touch the boot config or the other slot; [`deploy`] is the crash-safe whole.
pub fn install(stick: &mut dyn Stick, slot: Slot, build: &Build) -> Result<()> {
    write_temps(stick, slot, build)?;
    rename_temps(stick, slot)
}

/// Writes what the stick lacks of the build into [`PARTS`] (each file under a temporary name, after removing
/// any left by a killed run, read back and checked against the manifest, then renamed to its part name,
/// which nothing boots until a manifest names it), and the manifest as `slots/<s>/manifest.json.tmp`. The
/// slot's build stays as it was. Returns the bytes of the files written.
pub fn write_temps(stick: &mut dyn Stick, slot: Slot, build: &Build) -> Result<u64> {
    let dir = slot.dir();
    for d in [dir.as_str(), PARTS] {
        if !stick.exists(d)? {
            stick.create_dir_all(d)?;
        }
        for e in stick.list(d)? {
            if !e.is_dir && e.name.ends_with(".tmp") {
                stick.remove(&format!("{d}/{}", e.name))?;
            }
        }
    }
    let parts = sizes(stick, PARTS)?;
    // Part path → (the build's file name, what it must be); a file the build has twice is written once.
    let missing: BTreeMap<String, (&String, &crate::build::manifest::Artifact)> = build
        .manifest
        .artifacts
        .iter()
        .filter(|(_, a)| !has_part(&parts, a))
        .map(|(name, a)| (part_path(&a.sha256), (name, a)))
        .collect();
    let total = missing.values().map(|(_, a)| a.size).sum();
    let bar = progress::bar(true, total, &format!("slot {slot}"));
    // The biggest first: a stick that checks as it goes (ssh) hashes each while the next ones arrive.
    let mut order: Vec<_> = missing.iter().collect();
    order.sort_by_key(|(part, (_, a))| (std::cmp::Reverse(a.size), *part));
    for (part, (name, _)) in order {
        let src = build.dir.join(name);
        let file = fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        stick.write(&stick::temp_name(part), &mut bar.wrap_read(file))?;
    }
    bar.finish_and_clear();
    let manifest_tmp = stick::temp_name(&format!("{dir}/{MANIFEST}"));
    stick.write(&manifest_tmp, &mut &build.manifest_json[..])?;
    for (part, (name, want)) in &missing {
        let tmp = stick::temp_name(part);
        let (size, sha256) = stick.sha256(&tmp)?;
        if size != want.size || sha256 != want.sha256 {
            bail!(
                "{tmp} on {} reads back as {size} bytes sha256 {sha256}, the build's {MANIFEST} says {} bytes sha256 {} for {name}: the stick or {} is damaged",
                stick.describe(),
                want.size,
                want.sha256,
                build.dir.join(name).display()
            );
        }
    }
    if stick.read(&manifest_tmp)? != build.manifest_json {
        bail!(
            "{manifest_tmp} on {} does not read back as written: the stick is damaged",
            stick.describe()
        );
    }
    stick.sync()?;
    for part in missing.keys() {
        stick.rename(&stick::temp_name(part), part)?;
    }
    stick.sync()?;
    Ok(total)
}

/// Puts the manifest [`write_temps`] wrote into place: the old manifest goes first (from then on the slot
/// counts as empty), then the slot's other files (a slot of an earlier version held its files itself), then
/// the new manifest is renamed in; then the parts no slot names go ([`collect_garbage`]).
pub fn rename_temps(stick: &mut dyn Stick, slot: Slot) -> Result<()> {
    let dir = slot.dir();
    let manifest = format!("{dir}/{MANIFEST}");
    if stick.exists(&manifest)? {
        stick.remove(&manifest)?;
        stick.sync()?;
    }
    for e in stick.list(&dir)? {
        if !e.is_dir && !e.name.ends_with(".tmp") {
            stick.remove(&format!("{dir}/{}", e.name))?;
        }
    }
    stick.sync()?;
    stick.rename(&stick::temp_name(&manifest), &manifest)?;
    stick.sync()?;
    collect_garbage(stick)
}

/// Removes every file of [`PARTS`] that no slot's manifest names: what only a slot's old build used, what
/// a killed deploy left.
pub fn collect_garbage(stick: &mut dyn Stick) -> Result<()> {
    let mut named = std::collections::BTreeSet::new();
    for slot in Slot::ALL {
        let path = format!("{}/{MANIFEST}", slot.dir());
        if !stick.exists(&path)? {
            continue;
        }
        let json = stick.read(&path)?;
        refuse_newer(&json, &format!("{path} on {}", stick.describe()))?;
        let Ok(m) = serde_json::from_slice::<Manifest>(&json) else {
            continue;
        };
        named.extend(m.artifacts.values().map(|a| part_path(&a.sha256)));
    }
    let mut removed = false;
    for name in sizes(stick, PARTS)?.into_keys() {
        let path = format!("{PARTS}/{name}");
        if !named.contains(&path) {
            stick.remove(&path)?;
            removed = true;
        }
    }
    if removed {
        stick.sync()?;
    }
    Ok(())
}

/// Rewrites syslinux.cfg with an entry per filled slot and `default` as DEFAULT.
pub fn write_boot_config(stick: &mut dyn Stick, default: Slot) -> Result<()> {
    let table = Table::read(stick)?;
    write_config(stick, &table.slots, default)
}

/// Writes syslinux.cfg with an entry for each of `slots` and `default` as DEFAULT: first the fallback copy at
/// the root, then the one in /syslinux, each through a temporary name and synced, so ldlinux finds a
/// complete config whenever the writing stops (while /syslinux/syslinux.cfg is missing, the root copy is
/// already the new one).
fn write_config(
    stick: &mut dyn Stick,
    slots: &BTreeMap<Slot, Filled>,
    default: Slot,
) -> Result<()> {
    if !slots.contains_key(&default) {
        bail!(
            "slot {default} on {} holds no complete build; it cannot be the default",
            stick.describe()
        );
    }
    let entries: Vec<BootEntry> = slots.iter().map(|(slot, f)| f.boot_entry(*slot)).collect();
    let cfg = syslinux::config(&entries, default.name());
    for path in [syslinux::FALLBACK_CONFIG, syslinux::CONFIG] {
        if stick.exists(path)? && stick.read(path)? == cfg.as_bytes() {
            continue;
        }
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

/// Writes the ADV over the end of ldlinux.sys, in place (its clusters must not move): one copy, a sync, the
/// other copy, a sync. ldlinux reads the first valid copy, so a write stopped anywhere leaves one whole copy,
/// the old or the new.
pub fn write_adv(stick: &mut dyn Stick, adv: &Adv) -> Result<()> {
    let size = stick
        .entry(syslinux::LDLINUX_SYS)?
        .with_context(|| format!("no {} on {}", syslinux::LDLINUX_SYS, stick.describe()))?
        .size;
    if size < Adv::SIZE as u64 {
        bail!("{} is too short to hold an ADV", syslinux::LDLINUX_SYS);
    }
    let at = size - Adv::SIZE as u64;
    let bytes = adv.to_bytes();
    let half = Adv::SIZE / 2;
    stick.patch(syslinux::LDLINUX_SYS, at, &bytes[..half])?;
    stick.sync()?;
    stick.patch(syslinux::LDLINUX_SYS, at + half as u64, &bytes[half..])?;
    stick.sync()
}

/// Arms a one-time boot of `command` (a label, optionally followed by kernel arguments), or clears it.
pub fn set_boot_once(stick: &mut dyn Stick, command: Option<&str>) -> Result<()> {
    let mut adv = read_adv(stick)?;
    if adv.boot_once().as_deref() == command {
        return Ok(());
    }
    adv.set_boot_once(command)?;
    write_adv(stick, &adv)
}

/// The kernel argument that marks a trial boot; the NAS commits a healthy trial (ramnas-ready).
pub const TRIAL_ARG: &str = "ramnas.trial=1";

/// The boot-once command of a trial boot of `slot`: its label with [`TRIAL_ARG`] appended to its APPEND line.
pub fn trial_command(slot: Slot) -> String {
    format!("{} {TRIAL_ARG}", slot.name())
}

/// What the system running from the stick says about itself (over ssh): its kernel command line's
/// `ramnas.slot=`, `ramnas.trial=` and `ramnas.build=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// None when the system was not booted from a slot.
    pub slot: Option<Slot>,
    pub trial: bool,
    /// The build that booted; None when the command line does not say.
    pub build: Option<String>,
}

impl Running {
    pub fn from_cmdline(cmdline: &str) -> Running {
        let mut running = Running {
            slot: None,
            trial: false,
            build: None,
        };
        for arg in cmdline.split_whitespace() {
            if let Some(s) = arg.strip_prefix("ramnas.slot=") {
                running.slot = Slot::parse(s);
            } else if let Some(t) = arg.strip_prefix("ramnas.trial=") {
                running.trial = matches!(t, "1" | "yes");
            } else if let Some(b) = arg.strip_prefix("ramnas.build=") {
                running.build = Some(b.to_string());
            }
        }
        running
    }
}

/// The committed slot, which must hold a complete build: a deploy keeps it and writes the other one.
pub fn committed(stick: &mut dyn Stick, table: &Table) -> Result<Slot> {
    match table.default {
        Some(slot) if table.slots.contains_key(&slot) => Ok(slot),
        Some(slot) => bail!(
            "{}: the default slot {slot} holds no complete build; flash the stick again (`cargo xtask flash`)",
            stick.describe()
        ),
        None => bail!(
            "{}: syslinux.cfg names no slot a or b as DEFAULT; is it a ramnas stick (made by `cargo xtask image`)?",
            stick.describe()
        ),
    }
}

/// Puts `build` into the slot that is not committed and arms it for one trial boot (`commit`: makes it the
/// default instead). Returns that slot and the bytes of the build's files it wrote (the stick had the
/// rest already, in [`PARTS`]). The order of its writes is step 3 of the module's documentation: the
/// files, then each step once per boot loader ([`Loader`]: detach, install, arm the trial or commit).
///
/// `table` is the stick's [`Table::read`], taken just before.
pub fn deploy(
    stick: &mut dyn Stick,
    table: &Table,
    build: &Build,
    commit: bool,
) -> Result<(Slot, u64)> {
    let keep = committed(stick, table)?;
    let target = keep.other();
    let written = write_temps(stick, target, build)?;
    // A running NAS may have committed a trial meanwhile (ramnas-ready): then the target is the default now.
    stick.forget();
    let default = boot_config(stick)?.and_then(|c| syslinux::default_label(&c));
    if default.as_deref() != Some(keep.name()) {
        bail!(
            "{}: the default slot changed while the build was being written (to {}): did the NAS commit a \
             trial? Nothing was changed but temporary files; run the deploy again",
            stick.describe(),
            default.as_deref().unwrap_or("none")
        );
    }
    let loaders = loaders(stick)?;
    for loader in &loaders {
        loader.detach(stick, table, target, keep)?;
    }
    rename_temps(stick, target)?;
    let table = Table::read(stick)?;
    if !table.slots.contains_key(&target) {
        bail!(
            "slot {target} on {} is not complete after writing it",
            stick.describe()
        );
    }
    let default = if commit { target } else { keep };
    for loader in &loaders {
        loader.install(stick, &table, default)?;
    }
    for loader in &loaders {
        if commit {
            loader.commit(stick, target)?;
        } else {
            loader.arm_trial(stick, target, keep)?;
        }
    }
    Ok((target, written))
}

/// Whether the stick also boots UEFI (systemd-boot and an entry per slot).
pub fn has_uefi(stick: &mut dyn Stick) -> Result<bool> {
    stick.exists(uefi::BOOTLOADER)
}

/// A boot loader whose files say which slot boots. `slots` drives each one the stick has through the same
/// steps, in the order of this module's documentation, syslinux first: a third way to boot would be one
/// more implementation, not another thread through every step.
trait Loader {
    /// Nothing boots `slot` any more: a trial armed for it is disarmed and its entry removed, and `keep`
    /// (complete) is the default. `table` is the stick's: only temporary files changed since it was read.
    fn detach(&self, stick: &mut dyn Stick, table: &Table, slot: Slot, keep: Slot) -> Result<()>;
    /// Every complete slot of `table` has its entry, and `default` is the default; a trial stays as it is.
    fn install(&self, stick: &mut dyn Stick, table: &Table, default: Slot) -> Result<()>;
    /// Arms one trial boot of `slot` (installed), `keep` staying the default.
    fn arm_trial(&self, stick: &mut dyn Stick, slot: Slot, keep: Slot) -> Result<()>;
    /// Disarms any trial and makes `slot` the default for good (installed as the default).
    fn commit(&self, stick: &mut dyn Stick, slot: Slot) -> Result<()>;

    /// Makes `slot` the default and disarms any trial, every complete slot of `table` having its entry.
    fn make_default(&self, stick: &mut dyn Stick, table: &Table, slot: Slot) -> Result<()> {
        self.install(stick, table, slot)?;
        self.commit(stick, slot)
    }
}

/// The boot loaders on `stick`: syslinux (BIOS) always, systemd-boot (UEFI) where it is installed.
fn loaders(stick: &mut dyn Stick) -> Result<Vec<&'static dyn Loader>> {
    let mut loaders: Vec<&'static dyn Loader> = vec![&Syslinux];
    if has_uefi(stick)? {
        loaders.push(&SystemdBoot);
    }
    Ok(loaders)
}

/// syslinux: an entry per slot in syslinux.cfg (both copies), its DEFAULT, and the ADV's boot-once.
struct Syslinux;

impl Loader for Syslinux {
    /// Clears a boot-once naming `slot`, then drops its entry from syslinux.cfg.
    fn detach(&self, stick: &mut dyn Stick, table: &Table, slot: Slot, keep: Slot) -> Result<()> {
        if table.trial() == Some(slot) {
            set_boot_once(stick, None)?;
        }
        let mut stale = false;
        for path in [syslinux::FALLBACK_CONFIG, syslinux::CONFIG] {
            stale |= !stick.exists(path)?
                || syslinux::labels(&String::from_utf8_lossy(&stick.read(path)?))
                    .iter()
                    .any(|l| l == slot.name());
        }
        if stale {
            let mut rest = table.slots.clone();
            rest.remove(&slot);
            write_config(stick, &rest, keep)?;
        }
        Ok(())
    }

    fn install(&self, stick: &mut dyn Stick, table: &Table, default: Slot) -> Result<()> {
        write_config(stick, &table.slots, default)
    }

    fn arm_trial(&self, stick: &mut dyn Stick, slot: Slot, _keep: Slot) -> Result<()> {
        set_boot_once(stick, Some(&trial_command(slot)))
    }

    /// syslinux.cfg names `slot` as DEFAULT already: clears the boot-once.
    fn commit(&self, stick: &mut dyn Stick, _slot: Slot) -> Result<()> {
        set_boot_once(stick, None)
    }
}

/// systemd-boot: an entry file per slot, whose name says its role (default, trial with tries, spare).
struct SystemdBoot;

impl Loader for SystemdBoot {
    /// Makes the committed slot's entry the default (writing it first on a stick that booted UKIs, whose
    /// UKIs then go), and removes `slot`'s.
    fn detach(&self, stick: &mut dyn Stick, table: &Table, slot: Slot, keep: Slot) -> Result<()> {
        if !table.uefi.entries.contains_key(keep.name()) {
            uefi::install_entry(stick, &table.slots[&keep].boot_entry(keep))?;
        }
        uefi::set_state(stick, keep.name(), None)?;
        uefi::remove_entry(stick, slot.name())?;
        uefi::remove_old_ukis(stick)
    }

    /// Writes the entry of each complete slot that has none, as a spare; the default is set by
    /// [`Loader::arm_trial`] and [`Loader::commit`], which rename the entries.
    fn install(&self, stick: &mut dyn Stick, table: &Table, _default: Slot) -> Result<()> {
        for (s, filled) in &table.slots {
            if !table.uefi.entries.contains_key(s.name()) {
                uefi::install_entry(stick, &filled.boot_entry(*s))?;
            }
        }
        Ok(())
    }

    fn arm_trial(&self, stick: &mut dyn Stick, slot: Slot, keep: Slot) -> Result<()> {
        uefi::set_state(stick, keep.name(), Some(slot.name()))
    }

    fn commit(&self, stick: &mut dyn Stick, slot: Slot) -> Result<()> {
        uefi::set_state(stick, slot.name(), None)
    }

    /// As every loader's, then the UKIs of a stick that booted them go, every slot having its entry now (a
    /// deploy's [`Loader::detach`] removes them the same way).
    fn make_default(&self, stick: &mut dyn Stick, table: &Table, slot: Slot) -> Result<()> {
        self.install(stick, table, slot)?;
        self.commit(stick, slot)?;
        uefi::remove_old_ukis(stick)
    }
}

/// The slot a running NAS runs on trial: its command line says `ramnas.trial=1` (BIOS), or its entry is a
/// trial systemd-boot has counted a try of (UEFI: it renames `+1-0` to `+0-1` before it boots it). A UEFI
/// trial still armed says nothing: the NAS may run that slot picked by hand at the BIOS prompt.
pub fn running_trial(table: &Table, running: &Running) -> Option<Slot> {
    let slot = running.slot?;
    let uefi_trial = matches!(
        table.uefi.entries.get(slot.name()),
        Some((_, uefi::Role::Trial { done, .. })) if *done > 0
    );
    (running.trial || uefi_trial).then_some(slot)
}

/// The slot armed for a trial boot on either bootloader. A boot-once that names the default slot is no
/// trial: that slot is committed already (a NAS committed its trial under UEFI before it cleared the BIOS
/// boot-once, say), and booting it boots the default.
pub fn armed_trial(table: &Table) -> Option<Slot> {
    table
        .trial()
        .filter(|&slot| Some(slot) != table.default)
        .or_else(|| table.uefi.trial().and_then(Slot::parse))
}

/// Which slot `commit` makes the default, and why. On a running NAS only the build that booted: never one a
/// later deploy put into its slot.
pub fn trial_to_commit(
    stick: &mut dyn Stick,
    table: &Table,
    running: Option<&Running>,
) -> Result<Slot> {
    let default = table.default;
    match running {
        // A running NAS: its bootloader already spent the trial; the command line or the entry's name tells.
        Some(r) if running_trial(table, r).is_some_and(|s| Some(s) != default) => {
            let slot = r.slot.expect("a trial runs a slot");
            let held = table.slots.get(&slot).map(|f| f.manifest.build_id.as_str());
            if held.is_none() || held != r.build.as_deref() {
                bail!(
                    "{}: the NAS runs build {} on trial, but slot {slot} holds {} now (deployed since it booted): \
                     not committing a build that never booted; reboot the NAS to try it",
                    stick.describe(),
                    r.build.as_deref().unwrap_or("(unknown: no ramnas.build= on its command line)"),
                    held.map_or("no complete build".to_string(), |b| format!("build {b}"))
                );
            }
            Ok(slot)
        }
        Some(Running { slot, .. }) => {
            let runs = slot.map_or("no ramnas slot".to_string(), |s| format!("slot {s}"));
            if let Some(armed) = armed_trial(table) {
                bail!(
                    "{}: slot {armed} is armed for a trial boot the NAS has not made yet (it runs {runs}): reboot it; a healthy trial commits itself",
                    stick.describe()
                );
            }
            let why = if slot.is_some() && *slot == default {
                "already the default"
            } else {
                "not a trial boot"
            };
            bail!(
                "{}: the NAS runs {runs}, {why}; nothing to commit (deploy first, or `rollback` to switch slots)",
                stick.describe()
            )
        }
        None => armed_trial(table).with_context(|| {
            format!(
                "{}: no trial boot is armed; nothing to commit (deploy first, or `rollback` to switch slots)",
                stick.describe()
            )
        }),
    }
}

/// Makes `slot` the default on both bootloaders and disarms any trial: syslinux.cfg (both copies), the
/// boot-once cleared, then the systemd-boot entries renamed (the slot's to the default, the other's to a
/// spare; a complete slot without an entry, on a stick that booted UKIs, gets one first).
pub fn make_default(stick: &mut dyn Stick, slot: Slot) -> Result<()> {
    let table = Table::read(stick)?;
    for loader in loaders(stick)? {
        loader.make_default(stick, &table, slot)?;
    }
    Ok(())
}

/// Where the NAS leaves the record of a trial boot that came up unhealthy (`ramnas-ready`), until the next
/// deploy.
pub const LAST_TRIAL: &str = "persist/last-trial";

/// The NAS's record of its last unhealthy trial boot: `key=value` lines, then `log:` and the boot log's last
/// lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastTrial {
    pub slot: String,
    pub build: String,
    pub time: String,
    pub failed: String,
    pub log: Vec<String>,
}

impl LastTrial {
    pub fn parse(text: &str) -> LastTrial {
        let mut record = LastTrial::default();
        let mut lines = text.lines();
        for line in lines.by_ref() {
            if line == "log:" {
                break;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let field = match key {
                "slot" => &mut record.slot,
                "build" => &mut record.build,
                "time" => &mut record.time,
                "failed" => &mut record.failed,
                _ => continue,
            };
            *field = value.to_string();
        }
        record.log = lines.map(str::to_string).collect();
        record
    }

    /// Reads the record from the stick; None when there is none.
    pub fn read(stick: &mut dyn Stick) -> Result<Option<LastTrial>> {
        if !stick.exists(LAST_TRIAL)? {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&stick.read(LAST_TRIAL)?).into_owned();
        Ok(Some(LastTrial::parse(&text)))
    }

    /// Removes the record (a deploy: the next trial is of another build).
    pub fn forget(stick: &mut dyn Stick) -> Result<()> {
        if stick.exists(LAST_TRIAL)? {
            stick.remove(LAST_TRIAL)?;
            stick.sync()?;
        }
        Ok(())
    }
}

impl std::fmt::Display for LastTrial {
    /// `slot b, build …, failed: zfs-import (2026-12-01 22:40:00 UTC)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slot {}, build {}, failed: {} ({})",
            self.slot, self.build, self.failed, self.time
        )
    }
}

/// Where the NAS records the ZFS pools of its last healthy boot (`ramnas-ready`), one `NAME HEALTH` line each:
/// the pools the next boot must have imported.
pub const POOLS: &str = "persist/pools";

/// The pools of the NAS's last healthy boot as the stick records them: (name, health) pairs; None when the
/// stick has no record (no healthy boot yet, or no ZFS).
pub fn recorded_pools(stick: &mut dyn Stick) -> Result<Option<Vec<(String, String)>>> {
    if !stick.exists(POOLS)? {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&stick.read(POOLS)?).into_owned();
    Ok(Some(
        text.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((
                    words.next()?.to_string(),
                    words.next().unwrap_or("?").to_string(),
                ))
            })
            .collect(),
    ))
}

/// Checks every file of a filled slot against its manifest's SHA-256.
pub fn verify_slot(stick: &mut dyn Stick, slot: Slot) -> Result<()> {
    let filled = read_slot(stick, slot)?.with_context(|| {
        format!(
            "slot {slot} on {} holds no complete build",
            stick.describe()
        )
    })?;
    for (name, want) in &filled.manifest.artifacts {
        let path = &filled.files[name];
        let (size, sha256) = stick.sha256(path)?;
        if size != want.size || sha256 != want.sha256 {
            bail!(
                "{path} on {} does not match its {MANIFEST} (size {size} sha256 {sha256}, expected size {} sha256 {})",
                stick.describe(),
                want.size,
                want.sha256
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stick::Dir;
    use sha2::{Digest, Sha256};

    /// A manifest naming `artifacts`, as `cargo xtask build` writes it.
    pub(crate) fn manifest_json(
        id: &str,
        artifacts: BTreeMap<String, crate::build::manifest::Artifact>,
    ) -> String {
        Manifest {
            build_id: id.to_string(),
            source_date: 0,
            git_commit: None,
            git_dirty: false,
            alpine_branch: "v3.22".into(),
            kernel_version: None,
            compression: crate::build::compress::Compression::Zstd,
            cmdline: String::new(),
            packages: BTreeMap::new(),
            artifacts,
            initrds: Vec::new(),
            bootloaders: Default::default(),
            root_ssh_keys: None,
            tests: None,
        }
        .to_json()
    }

    /// A build directory with the given files and a manifest naming them.
    fn build(dir: &Path, id: &str, files: &[(&str, &str)]) -> Build {
        fs::create_dir_all(dir).unwrap();
        let mut artifacts = BTreeMap::new();
        for (name, data) in files {
            fs::write(dir.join(name), data).unwrap();
            artifacts.insert(
                name.to_string(),
                crate::build::manifest::Artifact {
                    size: data.len() as u64,
                    sha256: crate::build::manifest::hex(&Sha256::digest(data.as_bytes())),
                },
            );
        }
        fs::write(dir.join(MANIFEST), manifest_json(id, artifacts)).unwrap();
        Build::open(dir).unwrap()
    }

    /// Builds `one` (k1, i1, command line `c`) and `two` (k2, i2, `two_cmdline`) in `dir`.
    fn builds_one_and_two(dir: &Path, two_cmdline: &str) -> (Build, Build) {
        let one = build(
            &dir.join("one"),
            "one",
            &[("vmlinuz", "k1"), ("initramfs", "i1"), ("cmdline", "c\n")],
        );
        let two = build(
            &dir.join("two"),
            "two",
            &[
                ("vmlinuz", "k2"),
                ("initramfs", "i2"),
                ("cmdline", two_cmdline),
            ],
        );
        (one, two)
    }

    /// The part of `data` on the stick.
    fn part(data: &str) -> String {
        part_path(&crate::build::manifest::hex(&Sha256::digest(
            data.as_bytes(),
        )))
    }

    #[test]
    fn slots_share_their_builds_files_and_the_config_follows_the_slots() {
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
        // The same kernel, another initramfs and command line.
        let two = build(
            &tmp.path().join("two"),
            "two",
            &[
                ("vmlinuz", "k1"),
                ("initramfs", "i2"),
                ("cmdline", "quiet\n"),
            ],
        );
        install(&mut stick, Slot::A, &one).unwrap();
        assert_eq!(write_temps(&mut stick, Slot::B, &one).unwrap(), 0);
        rename_temps(&mut stick, Slot::B).unwrap();
        write_boot_config(&mut stick, Slot::B).unwrap();
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.default, Some(Slot::B));
        assert_eq!(table.slots.len(), 2);
        assert_eq!(sizes(&mut stick, PARTS).unwrap().len(), 4);

        // A stale temporary file from a killed run is cleaned up; only what the stick lacks is written;
        // what no slot names any more goes.
        fs::write(root.join("slots/b/junk.tmp"), "x").unwrap();
        fs::write(
            root.join("parts/0123456789abcdef"),
            "left by a killed deploy",
        )
        .unwrap();
        assert_eq!(write_temps(&mut stick, Slot::B, &two).unwrap(), 2 + 6);
        rename_temps(&mut stick, Slot::B).unwrap();
        assert_eq!(
            stick
                .list("slots/b")
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect::<Vec<_>>(),
            ["manifest.json"]
        );
        let mut parts: Vec<String> = sizes(&mut stick, PARTS)
            .unwrap()
            .into_keys()
            .map(|n| format!("{PARTS}/{n}"))
            .collect();
        parts.sort();
        let mut want: Vec<String> = ["k1", "i1", "console=ttyS0\n", "u1", "i2", "quiet\n"]
            .map(part)
            .to_vec();
        want.sort();
        assert_eq!(parts, want);
        write_boot_config(&mut stick, Slot::B).unwrap();
        let cfg = fs::read_to_string(root.join(syslinux::CONFIG)).unwrap();
        let (k1, u1, i1, i2) = (part("k1"), part("u1"), part("i1"), part("i2"));
        assert!(
            cfg.contains(&format!(
                "  KERNEL /{k1}\n  INITRD /{u1},/{i1}\n  APPEND console=ttyS0 ramnas.slot=a\n"
            )),
            "{cfg}"
        );
        assert!(
            cfg.contains(&format!(
                "  KERNEL /{k1}\n  INITRD /{i2}\n  APPEND quiet ramnas.slot=b\n"
            )),
            "{cfg}"
        );
        assert_eq!(
            cfg,
            fs::read_to_string(root.join(syslinux::FALLBACK_CONFIG)).unwrap()
        );
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.slots[&Slot::B].manifest.build_id, "two");
        assert_eq!(table.slots[&Slot::B].cmdline, "quiet");
        verify_slot(&mut stick, Slot::B).unwrap();

        // A slot missing a file is not filled, and cannot be made the default.
        fs::remove_file(root.join(&i2)).unwrap();
        assert!(read_slot(&mut stick, Slot::B).unwrap().is_none());
        let err = write_boot_config(&mut stick, Slot::B).unwrap_err();
        assert!(err.to_string().contains("slot b"), "{err}");

        // A slot of an earlier version holds its files itself: read, booted and verified where they are.
        for (name, data) in [
            ("vmlinuz", "k1"),
            ("initramfs", "i2"),
            ("cmdline", "quiet\n"),
        ] {
            fs::write(root.join("slots/b").join(name), data).unwrap();
        }
        let filled = read_slot(&mut stick, Slot::B).unwrap().unwrap();
        assert_eq!(filled.files["initramfs"], "slots/b/initramfs");
        assert_eq!(filled.files["vmlinuz"], k1);
        assert_eq!(filled.boot_entry(Slot::B).initrds, ["/slots/b/initramfs"]);
        verify_slot(&mut stick, Slot::B).unwrap();
    }

    #[test]
    fn a_file_that_does_not_match_its_manifest_leaves_the_slot_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(&root).unwrap();
        let mut stick = Dir::open(&root).unwrap();
        let (one, two) = builds_one_and_two(tmp.path(), "c\n");
        install(&mut stick, Slot::A, &one).unwrap();
        // Same size, other bytes: only the SHA-256 check can notice.
        fs::write(two.dir.join("initramfs"), "XX").unwrap();
        let err = install(&mut stick, Slot::A, &two).unwrap_err().to_string();
        assert!(err.contains(&format!("{}.tmp", part("i2"))), "{err}");
        assert!(
            err.contains("sha256") && err.contains("for initramfs"),
            "{err}"
        );
        let slot = read_slot(&mut stick, Slot::A).unwrap().unwrap();
        assert_eq!(slot.manifest.build_id, "one");
        assert_eq!(
            fs::read_to_string(root.join(&slot.files["initramfs"])).unwrap(),
            "i1"
        );
        // Nothing of build two was left under its part name.
        assert!(!root.join(part("i2")).exists() && !root.join(part("k2")).exists());
    }

    /// A directory stick on which "the NAS" commits slot b the first time a file is checked.
    struct Racing {
        inner: Dir,
        root: std::path::PathBuf,
        raced: bool,
    }

    impl Stick for Racing {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn list(&mut self, dir: &str) -> Result<Vec<stick::Entry>> {
            self.inner.list(dir)
        }
        fn read_into(&mut self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
            self.inner.read_into(path, out)
        }
        fn write(&mut self, path: &str, data: &mut dyn std::io::Read) -> Result<u64> {
            self.inner.write(path, data)
        }
        fn rename(&mut self, from: &str, to: &str) -> Result<()> {
            self.inner.rename(from, to)
        }
        fn remove(&mut self, path: &str) -> Result<()> {
            self.inner.remove(path)
        }
        fn create_dir_all(&mut self, dir: &str) -> Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
            self.inner.patch(path, offset, bytes)
        }
        fn sync(&mut self) -> Result<()> {
            self.inner.sync()
        }
        fn close(self: Box<Self>) -> Result<()> {
            Box::new(self.inner).close()
        }
        fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
            if !std::mem::replace(&mut self.raced, true) {
                for cfg in [syslinux::FALLBACK_CONFIG, syslinux::CONFIG] {
                    let cfg = self.root.join(cfg);
                    let text = fs::read_to_string(&cfg).unwrap();
                    fs::write(&cfg, text.replace("DEFAULT a\n", "DEFAULT b\n")).unwrap();
                }
            }
            self.inner.sha256(path)
        }
    }

    #[test]
    fn a_deploy_stops_before_touching_a_slot_the_nas_committed_meanwhile() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(root.join("syslinux")).unwrap();
        let (one, two) = builds_one_and_two(tmp.path(), "c\n");
        let mut stick = Racing {
            inner: Dir::open(&root).unwrap(),
            root: root.clone(),
            raced: true,
        };
        install(&mut stick, Slot::A, &one).unwrap();
        install(&mut stick, Slot::B, &one).unwrap();
        write_boot_config(&mut stick, Slot::A).unwrap();
        stick.raced = false;
        let table = Table::read(&mut stick).unwrap();
        let err = deploy(&mut stick, &table, &two, false).unwrap_err();
        assert!(err.to_string().contains("default slot changed"), "{err}");
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.default, Some(Slot::B));
        assert_eq!(table.slots[&Slot::B].manifest.build_id, "one");
        verify_slot(&mut stick, Slot::B).unwrap();
    }

    /// A NAS runs build one from slot b on trial, and build two went into slot b since (the deploy would
    /// refuse now; an older ramnas, or the stick moved to another host, did not): commit refuses, and
    /// commits slot b only while it holds the build that booted.
    #[test]
    fn commit_commits_only_the_build_that_booted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(root.join("syslinux")).unwrap();
        let (one, two) = builds_one_and_two(tmp.path(), "c\n");
        let mut stick = Dir::open(&root).unwrap();
        install(&mut stick, Slot::A, &one).unwrap();
        install(&mut stick, Slot::B, &two).unwrap();
        write_boot_config(&mut stick, Slot::A).unwrap();
        let table = Table::read(&mut stick).unwrap();
        let running =
            Running::from_cmdline("console=ttyS0 ramnas.build=one ramnas.slot=b ramnas.trial=1");
        assert_eq!(running.build.as_deref(), Some("one"));
        let err = trial_to_commit(&mut stick, &table, Some(&running))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runs build one on trial, but slot b holds build two now"),
            "{err}"
        );
        let running = Running::from_cmdline("ramnas.build=two ramnas.slot=b ramnas.trial=1");
        assert_eq!(
            trial_to_commit(&mut stick, &table, Some(&running)).unwrap(),
            Slot::B
        );
        let unknown = Running::from_cmdline("ramnas.slot=b ramnas.trial=1");
        assert!(trial_to_commit(&mut stick, &table, Some(&unknown)).is_err());
    }

    #[test]
    fn a_deploy_onto_a_stick_that_booted_ukis_leaves_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        for dir in ["syslinux", "EFI/BOOT", "EFI/Linux", "loader"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let mut ldlinux = vec![0u8; 4096];
        ldlinux.extend_from_slice(&Adv::default().to_bytes());
        fs::write(root.join(syslinux::LDLINUX_SYS), ldlinux).unwrap();
        fs::write(root.join(uefi::BOOTLOADER), "systemd-boot").unwrap();
        fs::write(root.join(uefi::LOADER_CONF), "default ramnas-*\n").unwrap();
        fs::write(root.join("EFI/Linux/ramnas-default-a.efi"), "uki").unwrap();
        fs::write(root.join("EFI/Linux/other.efi"), "not ours").unwrap();
        let (one, two) = builds_one_and_two(tmp.path(), "q\n");
        let mut stick = Dir::open(&root).unwrap();
        install(&mut stick, Slot::A, &one).unwrap();
        write_boot_config(&mut stick, Slot::A).unwrap();
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(
            deploy(&mut stick, &table, &two, false).unwrap(),
            (Slot::B, 6)
        );

        let mut names: Vec<String> = fs::read_dir(root.join(uefi::ENTRIES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["ramnas-default-1-a.conf", "ramnas-trial-b+1-0.conf"]
        );
        let entry =
            fs::read_to_string(root.join("loader/entries/ramnas-trial-b+1-0.conf")).unwrap();
        assert!(
            entry.contains(&format!(
                "linux   /{}\ninitrd  /{}\noptions q ramnas.slot=b\n",
                part("k2"),
                part("i2")
            )),
            "{entry}"
        );
        assert!(!root.join("EFI/Linux/ramnas-default-a.efi").exists());
        assert!(root.join("EFI/Linux/other.efi").exists());
        assert_eq!(
            fs::read_to_string(root.join(uefi::LOADER_CONF)).unwrap(),
            uefi::loader_conf()
        );
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(armed_trial(&table), Some(Slot::B));
        assert_eq!(table.uefi.next_boot(), Some("b"));

        // Commit: b's entry the default, a's a spare; rollback: the other way round.
        make_default(&mut stick, Slot::B).unwrap();
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(
            (table.uefi.committed(), table.uefi.trial()),
            (Some("b"), None)
        );
        assert_eq!(table.uefi.entries["a"].0, "ramnas-a.conf");
        make_default(&mut stick, Slot::A).unwrap();
        let table = Table::read(&mut stick).unwrap();
        assert_eq!(table.uefi.committed(), Some("a"));
        assert_eq!(table.default, Some(Slot::A));
    }

    #[test]
    fn the_record_of_an_unhealthy_trial() {
        let text =
            "slot=b\nbuild=abc\ntime=2026-12-01 22:40:00 UTC\nfailed=zfs-import,broken\nlog:\n\
                    * Starting broken ...\nslot=x is a log line\n";
        let record = LastTrial::parse(text);
        assert_eq!(
            record.to_string(),
            "slot b, build abc, failed: zfs-import,broken (2026-12-01 22:40:00 UTC)"
        );
        assert_eq!(
            record.log,
            ["* Starting broken ...", "slot=x is a log line"]
        );
    }

    #[test]
    fn a_build_without_a_kernel_is_refused() {
        let a = crate::build::manifest::Artifact {
            size: 1,
            sha256: "00".into(),
        };
        let json = manifest_json(
            "x",
            [
                ("initramfs".to_string(), a.clone()),
                ("cmdline".to_string(), a),
            ]
            .into(),
        );
        let err = parse_manifest(json.as_bytes(), "m.json").unwrap_err();
        assert!(err.to_string().contains("no vmlinuz"), "{err}");
    }

    /// A manifest on a stick whose texts hold control characters (an escape sequence for the terminal that
    /// prints it) is no build's.
    #[test]
    fn a_manifest_with_control_characters_is_refused() {
        let a = crate::build::manifest::Artifact {
            size: 1,
            sha256: "0".repeat(64),
        };
        let artifacts: BTreeMap<String, _> = ["vmlinuz", "initramfs", "cmdline"]
            .map(|n| (n.to_string(), a.clone()))
            .into();
        let json = manifest_json("ok", artifacts.clone());
        parse_manifest(json.as_bytes(), "m.json").unwrap();
        for (field, value) in [("build_id", "\"ok\""), ("alpine_branch", "\"v3.22\"")] {
            let bad = json.replace(value, "\"x\\u001b[2J\"");
            assert_ne!(bad, json, "{field}");
            let err = parse_manifest(bad.as_bytes(), "m.json").unwrap_err();
            assert!(
                err.to_string()
                    .contains("\"x\\u{1b}[2J\" holds control characters"),
                "{field}: {err}"
            );
        }
    }

    /// A manifest written by a newer ramnas (a field this one does not know) leaves the stick as it is and
    /// says to update ramnas, never to flash the stick (nor calls the slot empty); a `sha256` on the stick
    /// that is no SHA-256 (not even ASCII) is no panic when the parts are sorted out.
    #[test]
    fn a_newer_ramnas_stick_is_left_alone_and_odd_sums_are_no_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stick");
        fs::create_dir_all(root.join("syslinux")).unwrap();
        let mut stick = Dir::open(&root).unwrap();
        let (one, _) = builds_one_and_two(tmp.path(), "c2\n");
        install(&mut stick, Slot::A, &one).unwrap();
        let path = root.join("slots/a").join(MANIFEST);
        let json = fs::read_to_string(&path).unwrap();
        let newer = json.replacen('{', "{\n  \"sig\\u001b[2J\": 1,", 1);
        fs::write(&path, &newer).unwrap();
        for err in [
            Table::read(&mut stick).unwrap_err(),
            collect_garbage(&mut stick).unwrap_err(),
        ] {
            let err = format!("{err:#}");
            assert!(
                err.contains(r"written by a newer ramnas (unknown field `sig\u{1b}[2J`")
                    && err.contains("update ramnas")
                    && !err.contains("flash")
                    && !err.contains('\u{1b}'),
                "{err}"
            );
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), newer);
        assert_eq!(fs::read_dir(root.join(PARTS)).unwrap().count(), 3);

        let odd = json.replace(
            &one.manifest.artifacts["vmlinuz"].sha256,
            &format!("x{}", "é".repeat(31)),
        );
        fs::write(&path, odd).unwrap();
        collect_garbage(&mut stick).unwrap();
        assert!(Table::read(&mut stick).unwrap().slots.is_empty());
        assert_eq!(part_name("0123456789abcdef0123"), "0123456789abcdef");
        assert_eq!(
            part_name(&format!("x{}", "é".repeat(20))),
            format!("x{}", "é".repeat(15))
        );
    }

    /// Property: whatever bytes a stick's manifest.json holds, they read as a build or as an error naming
    /// the file (never a panic), and what is shown of a build can be computed; the same for the NAS's
    /// last-trial record and syslinux.cfg.
    #[test]
    fn any_manifest_or_record_on_a_stick_reads_without_a_panic() {
        let a = |s: &str| crate::build::manifest::Artifact {
            size: s.len() as u64,
            sha256: crate::build::manifest::hex(&Sha256::digest(s.as_bytes())),
        };
        let json = manifest_json(
            "0123456789abcdef",
            [
                ("vmlinuz".to_string(), a("k")),
                ("initramfs".to_string(), a("i")),
                ("cmdline".to_string(), a("c")),
            ]
            .into(),
        );
        let fed = crate::fuzz::run(3000, &[json.as_bytes()], |b| {
            let _ = crate::build::manifest::unknown_field(b);
            let _ = refuse_newer(b, "m.json");
            match parse_manifest(b, "m.json") {
                Ok(m) => {
                    let _ = (build_size(&m), title(&m), m.initramfs_size());
                    for a in m.artifacts.values() {
                        let _ = part_path(&a.sha256);
                    }
                }
                Err(err) => assert!(err.to_string().starts_with("m.json: "), "{err}"),
            }
        });
        assert_eq!(fed, 3000);
        let record = "slot=b\nbuild=abc\ntime=2026-12-01\nfailed=zfs-import\nlog:\n* Starting\n";
        crate::fuzz::run_text(3000, &[record], |t| {
            let _ = LastTrial::parse(t).to_string();
        });
        let cfg = syslinux::config(&[], "a") + "LABEL b\n  APPEND x\nDEFAULT b\n";
        crate::fuzz::run_text(3000, &[&cfg], |t| {
            let _ = (syslinux::default_label(t), syslinux::labels(t));
            if let Some(label) = syslinux::default_label(t) {
                let _ = Slot::parse(&label);
            }
            let _ = Running::from_cmdline(t);
        });
    }
}
