//! UEFI boot: systemd-boot and one boot loader spec entry per slot, with A/B state in file names alone.
//!
//! The stick's FAT partition carries, next to syslinux, `EFI/BOOT/BOOTX64.EFI` (systemd-boot, the path
//! firmware boots from removable media), `loader/loader.conf`, and one type #1 entry per filled slot under
//! `loader/entries/`: a few lines naming the slot's kernel, its initrds (microcode first) and its command line
//! (`ramnas.slot=<s>` appended). The entry boots the very files syslinux boots, so a slot is on the stick once
//! for both firmwares. systemd-boot starts the kernel through its EFI stub and hands it the initrds.
//!
//! Which slot boots is said by the entries' file names, never by NVRAM:
//!
//! - `ramnas-default-<s>.conf`: the committed slot.
//! - `ramnas-trial-<s>+<left>-<done>.conf`: a deploy's trial. systemd-boot renames it to count a try
//!   (`+1-0` → `+0-1`) before booting it; with no tries left it is "bad".
//! - `ramnas-<s>.conf`: a filled slot that boots only when a person picks it in the menu.
//!
//! loader.conf never changes: `default ramnas-*`. systemd-boot boots the first entry of its sorted list
//! that matches; it sorts bad entries last and the others by file name, descending (our entries have no
//! `sort-key`). `trial` > `default` > `a`/`b`, so: a trial with tries left boots first; once its try is spent
//! (it never reported healthy) the committed slot boots again by itself; a spare slot never boots by itself.
//! Commit, rollback and arming a trial are renames ([`renames`]).
//!
//! An entry names files of its slot, so it exists only while they are complete: a deploy removes the target
//! slot's entry before it touches the slot's files and writes it again after ([`remove_entry`],
//! [`install_entry`]).
//!
//! The running system (stick mounted at /media/boot) knows it runs a trial when its slot's entry is
//! `loader/entries/ramnas-trial-<slot>+*.conf` (systemd-boot has already renamed it to `+0-1` by then; the
//! `LoaderBootCountPath` EFI variable names the same file). Committing is two renames inside
//! /media/boot/loader/entries, in this order: `ramnas-trial-<slot>+<l>-<d>.conf` → `ramnas-default-<slot>.conf`,
//! then `ramnas-default-<other>.conf` → `ramnas-<other>.conf`. A crash between them leaves two defaults; the
//! higher letter boots and the next commit or rollback settles it.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context, Result};

use crate::{boot::entry::BootEntry, stick::Stick};

/// systemd-boot, where UEFI firmware looks on removable media.
pub const BOOTLOADER: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's config.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Where the slots' entries live (systemd-boot reads every `*.conf` here).
pub const ENTRIES_DIR: &str = "loader/entries";
/// Where UKIs made by earlier versions of this tool live; a deploy removes ours ([`remove_old_ukis`]).
pub const OLD_UKI_DIR: &str = "EFI/Linux";
/// Overrides the search for systemd-boot: a directory holding [`SYSTEMD_BOOT`].
pub const DIR_ENV: &str = "RAMNAS_SYSTEMD_BOOT_DIR";
/// systemd-boot's x86-64 binary.
pub const SYSTEMD_BOOT: &str = "systemd-bootx64.efi";
/// Seconds systemd-boot shows its menu before booting the default.
pub const TIMEOUT_SECS: u32 = 3;
/// Tries a trial gets: one boot; if that boot never reports healthy, the committed slot is next.
pub const TRIAL_TRIES: u32 = 1;

const INSTALL_HINT: &str = "install systemd-boot (Debian/Ubuntu: apt-get install systemd-boot-efi; \
     Alpine: apk add systemd-boot; Fedora: dnf install systemd-boot-unsigned; Arch: pacman -S systemd)";

/// systemd-boot on the host, or in a build.
#[derive(Debug, Clone)]
pub struct Host {
    /// systemd-boot itself.
    pub boot: PathBuf,
    /// Whose it is, for people: `the build's (systemd-boot 257.9-r0)`, `this host's (/usr/lib/…)`.
    pub source: String,
}

/// Where distributions install them: Debian/Ubuntu, Alpine, Fedora and Arch all use the first.
pub fn known_places() -> Vec<PathBuf> {
    vec![
        "/usr/lib/systemd/boot/efi".into(),
        "/lib/systemd/boot/efi".into(),
    ]
}

/// Finds systemd-boot: in `$RAMNAS_SYSTEMD_BOOT_DIR` when set, else the known places.
pub fn find() -> Result<Host> {
    let places = match std::env::var_os(DIR_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => known_places(),
    };
    find_in(&places)
}

/// The first of `places` holding systemd-boot.
pub fn find_in(places: &[PathBuf]) -> Result<Host> {
    match places.iter().find(|d| d.join(SYSTEMD_BOOT).is_file()) {
        Some(dir) => Ok(Host {
            boot: dir.join(SYSTEMD_BOOT),
            source: format!("this host's ({})", dir.display()),
        }),
        None => {
            let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "{SYSTEMD_BOOT} not found (looked in {}; set {DIR_ENV} to another directory): {INSTALL_HINT}",
                looked.join(", ")
            )
        }
    }
}

/// loader.conf: the same for every state of the slots (see the module's doc).
pub fn loader_conf() -> String {
    format!(
        "# Written by cargo xtask; never changes. The slots' state is in the file names under /{ENTRIES_DIR}:\n\
         # ramnas-trial-<slot>+<tries left>-<tries done>.conf boots while it has tries left, then\n\
         # ramnas-default-<slot>.conf (the committed slot); ramnas-<slot>.conf only when picked here.\n\
         timeout {TIMEOUT_SECS}\n\
         default ramnas-*\n"
    )
}

/// The files systemd-boot needs besides the entries: (path on the partition, contents).
pub fn boot_files(host: &Host) -> Result<Vec<(String, Vec<u8>)>> {
    let boot =
        std::fs::read(&host.boot).with_context(|| format!("reading {}", host.boot.display()))?;
    Ok(vec![
        (BOOTLOADER.to_string(), boot),
        (LOADER_CONF.to_string(), loader_conf().into_bytes()),
    ])
}

/// What a slot's entry is to systemd-boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The committed slot: boots whenever no trial has tries left.
    Default,
    /// A deploy's trial: `left` tries left, `done` made. systemd-boot counts by renaming the file.
    Trial { left: u32, done: u32 },
    /// A filled slot that boots only when a person picks it in the menu.
    Spare,
}

/// The entry's file name under [`ENTRIES_DIR`] for slot `label` in `role`.
pub fn file_name(label: &str, role: Role) -> String {
    match role {
        Role::Default => format!("ramnas-default-{label}.conf"),
        Role::Trial { left, done } => format!("ramnas-trial-{label}+{left}-{done}.conf"),
        Role::Spare => format!("ramnas-{label}.conf"),
    }
}

/// The slot label and role a file name under [`ENTRIES_DIR`] says; None for files that are not ours.
pub fn parse_file_name(name: &str) -> Option<(String, Role)> {
    let stem = name.to_ascii_lowercase();
    let stem = stem.strip_suffix(".conf")?.strip_prefix("ramnas-")?;
    let valid = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase());
    if let Some(label) = stem.strip_prefix("default-") {
        return valid(label).then(|| (label.to_string(), Role::Default));
    }
    if let Some(rest) = stem.strip_prefix("trial-") {
        let (label, counter) = rest.split_once('+')?;
        let (left, done) = match counter.split_once('-') {
            Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
            None => (counter.parse().ok()?, 0),
        };
        return valid(label).then(|| (label.to_string(), Role::Trial { left, done }));
    }
    valid(stem).then(|| (stem.to_string(), Role::Spare))
}

/// The entries found under [`ENTRIES_DIR`]: slot label → (file name, role).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub entries: BTreeMap<String, (String, Role)>,
}

impl View {
    /// Reads the view from the file names of [`ENTRIES_DIR`]; other files are ignored. Two entries for one slot
    /// (left by an interrupted rename) are an error naming both.
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<View> {
        let mut entries: BTreeMap<String, (String, Role)> = BTreeMap::new();
        for name in names {
            let name = name.as_ref();
            let Some((label, role)) = parse_file_name(name) else {
                continue;
            };
            if let Some((other, _)) = entries.get(&label) {
                bail!(
                    "/{ENTRIES_DIR} holds two entries for slot {label}: {other} and {name}; remove the one that \
                     is not wanted, or rerun the deploy"
                );
            }
            entries.insert(label, (name.to_string(), role));
        }
        Ok(View { entries })
    }

    /// The committed slot.
    pub fn committed(&self) -> Option<&str> {
        self.with_role(|r| r == Role::Default)
    }

    /// The slot armed for a trial boot (tries left).
    pub fn trial(&self) -> Option<&str> {
        self.with_role(|r| matches!(r, Role::Trial { left, .. } if left > 0))
    }

    /// The slot whose trial spent its tries without being committed.
    pub fn failed_trial(&self) -> Option<&str> {
        self.with_role(|r| matches!(r, Role::Trial { left: 0, .. }))
    }

    /// The slot systemd-boot boots next without a person at the menu: its default pattern's first match in
    /// its sort order (entries with no tries left last, then file names descending).
    pub fn next_boot(&self) -> Option<&str> {
        let mut names: Vec<(&String, &(String, Role))> = self.entries.iter().collect();
        names.sort_by(|(_, (a, ra)), (_, (b, rb))| {
            let bad = |r: &Role| matches!(r, Role::Trial { left: 0, .. });
            bad(ra).cmp(&bad(rb)).then_with(|| b.cmp(a))
        });
        names.first().map(|(label, _)| label.as_str())
    }

    fn with_role(&self, want: impl Fn(Role) -> bool) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, (_, r))| want(*r))
            .map(|(l, _)| l.as_str())
    }
}

/// The renames (paths relative to the partition's root) that make `default` the committed slot, `trial`
/// (when given) a fresh trial with [`TRIAL_TRIES`], and every other slot a spare. Promotions come first, so
/// a crash part-way leaves each slot with exactly one entry and the old or the new default booting.
pub fn renames(view: &View, default: &str, trial: Option<&str>) -> Result<Vec<(String, String)>> {
    for want in std::iter::once(default).chain(trial) {
        if !view.entries.contains_key(want) {
            bail!("slot {want} has no entry under /{ENTRIES_DIR}; deploy a build into it first");
        }
    }
    if trial == Some(default) {
        bail!("slot {default} cannot be both the default and on trial");
    }
    let want = |label: &str| {
        if label == default {
            Role::Default
        } else if Some(label) == trial {
            Role::Trial {
                left: TRIAL_TRIES,
                done: 0,
            }
        } else {
            Role::Spare
        }
    };
    let mut promotions = Vec::new();
    let mut demotions = Vec::new();
    for (label, (name, _)) in &view.entries {
        let new = file_name(label, want(label));
        if &new == name {
            continue;
        }
        let pair = (
            format!("{ENTRIES_DIR}/{name}"),
            format!("{ENTRIES_DIR}/{new}"),
        );
        if want(label) == Role::Spare {
            demotions.push(pair);
        } else {
            promotions.push(pair);
        }
    }
    promotions.extend(demotions);
    Ok(promotions)
}

/// The entry file of `entry`: title, kernel, each initrd on its own line (systemd-boot loads them in order,
/// one after another), and the command line.
pub fn entry(entry: &BootEntry) -> String {
    let mut text = format!(
        "# Written by cargo xtask; its name says its role (see loader.conf).\n\
         title   ramnas slot {}: {}\n\
         linux   {}\n",
        entry.label,
        entry.title.replace('\n', " "),
        entry.kernel
    );
    for initrd in &entry.initrds {
        text.push_str(&format!("initrd  {initrd}\n"));
    }
    text.push_str(&format!("options {}\n", entry.full_cmdline()));
    text
}

/// The directories systemd-boot's files live in.
pub const DIRS: &[&str] = &["EFI/BOOT", "loader", ENTRIES_DIR];

/// Writes systemd-boot and loader.conf (each through a temporary name).
pub fn install_boot(stick: &mut dyn Stick, host: &Host) -> Result<()> {
    for dir in DIRS {
        stick.create_dir_all(dir)?;
    }
    for (path, contents) in boot_files(host)? {
        stick.replace(&path, &contents)?;
    }
    stick.sync()
}

/// The entries on a stick (an empty view when it has no /loader/entries).
pub fn read_view(stick: &mut dyn Stick) -> Result<View> {
    if !stick.exists(ENTRIES_DIR)? {
        return Ok(View::default());
    }
    let names = stick
        .list(ENTRIES_DIR)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name);
    View::from_names(names).with_context(|| format!("on {}", stick.describe()))
}

/// Puts slot `entry.label`'s entry on the stick as a spare, which never boots by itself: through a temporary
/// name (systemd-boot reads only `*.conf`) renamed over the old entry of the slot, whatever its role.
/// [`set_state`] then gives it its role. The slot's files must be complete: the entry names them.
pub fn install_entry(stick: &mut dyn Stick, entry: &BootEntry) -> Result<()> {
    if !stick.exists(ENTRIES_DIR)? {
        stick.create_dir_all(ENTRIES_DIR)?;
    }
    let spare = format!("{ENTRIES_DIR}/{}", file_name(&entry.label, Role::Spare));
    stick.replace(&spare, self::entry(entry).as_bytes())?;
    stick.sync()?;
    if let Some((old, _)) = read_view(stick)?.entries.get(&entry.label) {
        if *old != file_name(&entry.label, Role::Spare) {
            stick.remove(&format!("{ENTRIES_DIR}/{old}"))?;
            stick.sync()?;
        }
    }
    Ok(())
}

/// Removes slot `label`'s entry, so that systemd-boot cannot boot the slot while its files change.
pub fn remove_entry(stick: &mut dyn Stick, label: &str) -> Result<()> {
    if let Some((name, _)) = read_view(stick)?.entries.get(label) {
        stick.remove(&format!("{ENTRIES_DIR}/{name}"))?;
        stick.sync()?;
    }
    Ok(())
}

/// Renames the entries so that `default` is committed and `trial` (when given) armed for one try.
pub fn set_state(stick: &mut dyn Stick, default: &str, trial: Option<&str>) -> Result<()> {
    let view = read_view(stick)?;
    for (from, to) in renames(&view, default, trial)? {
        stick.rename(&from, &to)?;
        stick.sync()?;
    }
    Ok(())
}

/// Removes the UKIs (`EFI/Linux/ramnas-*.efi`) an earlier version of this tool booted UEFI from: they would
/// match loader.conf's `default ramnas-*` beside the entries. Call it once the committed slot has its entry.
/// Rewrites loader.conf when it differs from ours (its comment named the UKIs).
pub fn remove_old_ukis(stick: &mut dyn Stick) -> Result<()> {
    if stick.exists(OLD_UKI_DIR)? {
        for e in stick.list(OLD_UKI_DIR)? {
            let name = e.name.to_ascii_lowercase();
            if !e.is_dir && name.starts_with("ramnas-") && name.ends_with(".efi") {
                stick.remove(&format!("{OLD_UKI_DIR}/{}", e.name))?;
                stick.sync()?;
            }
        }
    }
    let conf = loader_conf();
    if !stick.exists(LOADER_CONF)? || stick.read(LOADER_CONF)? != conf.as_bytes() {
        stick.replace(LOADER_CONF, conf.as_bytes())?;
        stick.sync()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: any file names under loader/entries read as a view or as an error, never a panic.
    #[test]
    fn any_entry_names_read_as_a_view_or_an_error() {
        let names = "ramnas-default-a.conf\nramnas-trial-b+1-0.conf\nramnas-c.conf\nother.conf";
        crate::fuzz::run_text(5000, &[names], |t| {
            if let Ok(view) = View::from_names(t.lines()) {
                let _ = (view.committed(), view.trial(), view.next_boot());
            }
        });
    }
}
