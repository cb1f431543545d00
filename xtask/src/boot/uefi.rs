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
//! - `ramnas-default-<n>-<s>.conf`: the committed slot; `n` counts commits (a name from before the count,
//!   `ramnas-default-<s>.conf`, reads as 0).
//! - `ramnas-trial-<s>+<left>-<done>.conf`: a deploy's trial. systemd-boot renames it to count a try
//!   (`+1-0` → `+0-1`) before booting it; with no tries left it is "bad".
//! - `ramnas-<s>.conf`: a filled slot that boots only when a person picks it in the menu.
//!
//! loader.conf never changes: `default ramnas-*`. systemd-boot boots the first entry of its sorted list
//! that matches; it sorts bad entries last and the others by file name compared as versions, newest first
//! (our entries have no `sort-key`; [`boot_order`] mirrors it). `trial` > `default` > `a`/`b`, and of two
//! defaults the higher `n`: so a trial with tries left boots first; once its try is spent (it never reported
//! healthy) the committed slot boots again by itself; a spare slot never boots by itself.
//! Commit, rollback and arming a trial are renames ([`renames`]).
//!
//! An entry names files of its slot, so it exists only while they are complete: a deploy removes the target
//! slot's entry before it touches the slot's files and writes it again after ([`remove_entry`],
//! [`install_entry`]).
//!
//! The running system (stick mounted at /media/boot) knows it runs a trial when its slot's entry is
//! `loader/entries/ramnas-trial-<slot>+*.conf` (systemd-boot has already renamed it to `+0-1` by then; the
//! `LoaderBootCountPath` EFI variable names the same file).
//!
//! # One rename commits
//!
//! Committing slot X is two renames inside /media/boot/loader/entries, in this order: X's entry (trial,
//! spare, or an older default) → `ramnas-default-<n+1>-X.conf`, `n` the highest count among the defaults;
//! then every other default → `ramnas-<slot>.conf`. The first rename decides: the new name sorts above every
//! other default, so a power cut before it boots the old default and after it slot X, even with both
//! defaults on the stick (without the count, `ramnas-default-b.conf` would beat `ramnas-default-a.conf`).
//! Demoting first would not do: a spent trial is "bad", and the spare of the old slot would boot. The NAS's
//! `ramnas-slot commit` makes the same renames in the same order. A default already first keeps its name,
//! so deploys and repeated commits do not count up.

use std::{cmp::Ordering, collections::BTreeMap, path::PathBuf};

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
         # ramnas-default-<n>-<slot>.conf (the committed slot: of two, the higher n); ramnas-<slot>.conf\n\
         # only when picked here.\n\
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
    /// The committed slot: boots whenever no trial has tries left. `generation` counts commits: of two
    /// defaults (a commit cut short), the higher one boots.
    Default { generation: u64 },
    /// A deploy's trial: `left` tries left, `done` made. systemd-boot counts by renaming the file.
    Trial { left: u32, done: u32 },
    /// A filled slot that boots only when a person picks it in the menu.
    Spare,
}

/// The entry's file name under [`ENTRIES_DIR`] for slot `label` in `role`.
pub fn file_name(label: &str, role: Role) -> String {
    match role {
        Role::Default { generation } => format!("ramnas-default-{generation}-{label}.conf"),
        Role::Trial { left, done } => format!("ramnas-trial-{label}+{left}-{done}.conf"),
        Role::Spare => format!("ramnas-{label}.conf"),
    }
}

/// The slot label and role a file name under [`ENTRIES_DIR`] says; None for files that are not ours.
pub fn parse_file_name(name: &str) -> Option<(String, Role)> {
    let stem = name.to_ascii_lowercase();
    let stem = stem.strip_suffix(".conf")?.strip_prefix("ramnas-")?;
    let valid = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase());
    if let Some(rest) = stem.strip_prefix("default-") {
        let (generation, label) = match rest.split_once('-') {
            Some((n, label)) if n.bytes().all(|c| c.is_ascii_digit()) => (n.parse().ok()?, label),
            Some(_) => return None,
            // Written before defaults were counted.
            None => (0, rest),
        };
        return valid(label).then(|| (label.to_string(), Role::Default { generation }));
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

    /// The committed slot: the default systemd-boot sorts first (of two, left by a commit cut short, the
    /// newer).
    pub fn committed(&self) -> Option<&str> {
        self.in_boot_order()
            .find(|(_, r)| matches!(r, Role::Default { .. }))
            .map(|(label, _)| label)
    }

    /// The slot armed for a trial boot (tries left).
    pub fn trial(&self) -> Option<&str> {
        self.with_role(|r| matches!(r, Role::Trial { left, .. } if left > 0))
    }

    /// The slot whose trial spent its tries without being committed.
    pub fn failed_trial(&self) -> Option<&str> {
        self.with_role(|r| matches!(r, Role::Trial { left: 0, .. }))
    }

    /// The slot systemd-boot boots next without a person at the menu: the first entry in its order
    /// ([`boot_order`]; loader.conf's `default ramnas-*` matches every entry of ours).
    pub fn next_boot(&self) -> Option<&str> {
        self.in_boot_order().next().map(|(label, _)| label)
    }

    /// The highest commit count among the defaults (0 when there is none).
    fn top_generation(&self) -> u64 {
        self.entries
            .values()
            .filter_map(|(_, r)| match r {
                Role::Default { generation } => Some(*generation),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// (slot label, role), in systemd-boot's order.
    fn in_boot_order(&self) -> impl Iterator<Item = (&str, Role)> {
        let mut entries: Vec<(&String, &(String, Role))> = self.entries.iter().collect();
        entries.sort_by(|(_, (a, ra)), (_, (b, rb))| boot_order((a, *ra), (b, *rb)));
        entries.into_iter().map(|(l, (_, r))| (l.as_str(), *r))
    }

    fn with_role(&self, want: impl Fn(Role) -> bool) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, (_, r))| want(*r))
            .map(|(l, _)| l.as_str())
    }
}

/// systemd-boot's order of two entries (file name, role), the one it boots first being `Less`. It follows
/// `config_entry_compare()` in src/boot/efi/boot.c of systemd v254 (Debian 12's systemd-boot-efi;
/// `boot_entry_compare()` in src/boot/boot.c since): entries with no tries left go last
/// (`CMP(a->tries_left == 0, b->tries_left == 0)`); entries without `sort-key` (ours) then by id, newest
/// first (`-strverscmp_improved(a->id, b->id)`). The id is the file name, lower-cased (`strtolower16`);
/// later versions (systemd PR #38897) drop its `+<left>-<done>` counter, which never decides between names
/// of ours: their roles differ before it. Equal ids, never ours, are left out. The default entry is then the
/// first that matches loader.conf's pattern (`config_entry_find()`, `efi_fnmatch`).
pub fn boot_order((a, ra): (&str, Role), (b, rb): (&str, Role)) -> Ordering {
    let bad = |r: Role| matches!(r, Role::Trial { left: 0, .. });
    bad(ra)
        .cmp(&bad(rb))
        .then_with(|| strverscmp_improved(&b.to_ascii_lowercase(), &a.to_ascii_lowercase()))
}

/// systemd's `strverscmp_improved()` (src/fundamental/string-util-fundamental.c, the same from v254 to
/// v256 at least), step by step: segments of digits or letters, each maybe after one of `~` (oldest), `-`,
/// `^`, `.`; other characters separate segments. Digits beat letters, longer numbers (after leading zeros)
/// win, letters compare as bytes then by length, and the string with more segments is newer.
pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let at = |s: &[u8]| s.first().copied().unwrap_or(0);
    let valid = |c: u8| c.is_ascii_alphanumeric() || b"~-^.".contains(&c);
    loop {
        while !a.is_empty() && !valid(a[0]) {
            a = &a[1..];
        }
        while !b.is_empty() && !valid(b[0]) {
            b = &b[1..];
        }
        if at(a) == b'~' || at(b) == b'~' {
            match (at(a) != b'~').cmp(&(at(b) != b'~')) {
                Ordering::Equal => (a, b) = (&a[1..], &b[1..]),
                other => return other,
            }
        }
        if a.is_empty() || b.is_empty() {
            return at(a).cmp(&at(b));
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a) == sep || at(b) == sep {
                match (at(a) != sep).cmp(&(at(b) != sep)) {
                    Ordering::Equal => (a, b) = (&a[1..], &b[1..]),
                    other => return other,
                }
            }
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let letters = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let (na, nb);
        if at(a).is_ascii_digit() || at(b).is_ascii_digit() {
            (na, nb) = (digits(a), digits(b));
            let zeros = |s: &[u8], n: usize| s[..n].iter().take_while(|&&c| c == b'0').count();
            let (da, db) = (&a[zeros(a, na)..na], &b[zeros(b, nb)..nb]);
            let order = (na > 0)
                .cmp(&(nb > 0))
                .then(da.len().cmp(&db.len()))
                .then(da.cmp(db));
            if order != Ordering::Equal {
                return order;
            }
        } else {
            (na, nb) = (letters(a), letters(b));
            let n = na.min(nb);
            let order = a[..n].cmp(&b[..n]).then(na.cmp(&nb));
            if order != Ordering::Equal {
                return order;
            }
        }
        (a, b) = (&a[na..], &b[nb..]);
    }
}

/// The renames (paths relative to the partition's root) that make `default` the committed slot, `trial`
/// (when given) a fresh trial with [`TRIAL_TRIES`], and every other slot a spare. `default`'s entry comes
/// first, as a default counted above every other unless it is the committed one already: from that rename
/// on it boots (or the trial, armed next); the demotions follow. So a crash part-way leaves each slot with
/// exactly one entry, and the old default booting or the new state (module doc, "One rename commits").
pub fn renames(view: &View, default: &str, trial: Option<&str>) -> Result<Vec<(String, String)>> {
    for want in std::iter::once(default).chain(trial) {
        if !view.entries.contains_key(want) {
            bail!("slot {want} has no entry under /{ENTRIES_DIR}; deploy a build into it first");
        }
    }
    if trial == Some(default) {
        bail!("slot {default} cannot be both the default and on trial");
    }
    let promoted = match view.committed() {
        Some(c) if c == default => None,
        _ => Some(Role::Default {
            generation: view.top_generation().checked_add(1).with_context(|| {
                format!(
                    "/{ENTRIES_DIR} counts {} commits: rename its defaults",
                    u64::MAX
                )
            })?,
        }),
    };
    let mut labels: Vec<&String> = view.entries.keys().collect();
    labels.sort_by_key(|l| (l.as_str() != default, Some(l.as_str()) != trial));
    let mut renames = Vec::new();
    for label in labels {
        let name = &view.entries[label].0;
        let want = if label == default {
            match promoted {
                Some(role) => role,
                // Committed already: its name stays, even one from before the count.
                None => continue,
            }
        } else if Some(label.as_str()) == trial {
            Role::Trial {
                left: TRIAL_TRIES,
                done: 0,
            }
        } else {
            Role::Spare
        };
        let new = file_name(label, want);
        if &new != name {
            renames.push((
                format!("{ENTRIES_DIR}/{name}"),
                format!("{ENTRIES_DIR}/{new}"),
            ));
        }
    }
    Ok(renames)
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

    /// The order systemd's own comment on `strverscmp_improved()` gives, oldest first, then names of ours:
    /// a counted default above one from before the count, a higher count above a lower one.
    #[test]
    fn versions_compare_as_systemd_compares_them() {
        let older_to_newer = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        let ours = [
            "ramnas-a.conf",
            "ramnas-b.conf",
            "ramnas-default-a.conf",
            "ramnas-default-b.conf",
            "ramnas-default-1-b.conf",
            "ramnas-default-2-a.conf",
            "ramnas-default-10-b.conf",
            "ramnas-trial-a+1-0.conf",
            "ramnas-trial-b+0-1.conf",
        ];
        for list in [&older_to_newer[..], &ours[..]] {
            for (i, a) in list.iter().enumerate() {
                for (j, b) in list.iter().enumerate() {
                    assert_eq!(strverscmp_improved(a, b), i.cmp(&j), "{a} vs {b}");
                }
            }
        }
        assert_eq!(strverscmp_improved("00123", "123"), Ordering::Equal);
        assert_eq!(strverscmp_improved("123_a", "123a"), Ordering::Equal);
    }

    /// Names written by this version and by earlier ones (a default without its count).
    fn names_of(label: &str) -> Vec<Option<String>> {
        let mut names = vec![None, Some(format!("ramnas-default-{label}.conf"))];
        for role in [
            Role::Default { generation: 1 },
            Role::Default { generation: 2 },
            Role::Trial { left: 1, done: 0 },
            Role::Trial { left: 0, done: 1 },
            Role::Spare,
        ] {
            names.push(Some(file_name(label, role)));
        }
        names
    }

    /// Every state of two slots, committing either (a rollback is the same renames): after each write of
    /// the commit, systemd-boot boots the slot being committed, and before the first the old one.
    #[test]
    fn every_write_of_a_commit_boots_the_old_default_or_the_new_one() {
        let mut checked = 0;
        for a in names_of("a") {
            for b in names_of("b") {
                let start: Vec<String> = [a.clone(), b.clone()].into_iter().flatten().collect();
                if start.iter().all(|n| n.starts_with("ramnas-trial-")) && start.len() == 2 {
                    continue; // never on a stick: arming a trial makes the other slot the default
                }
                let view = View::from_names(&start).unwrap();
                for slot in ["a", "b"] {
                    if !view.entries.contains_key(slot) {
                        assert!(renames(&view, slot, None).is_err());
                        continue;
                    }
                    // The other slot's trial, armed, boots until it is disarmed: no write can put the
                    // committed slot first while it is there.
                    let armed_other = view.trial().filter(|t| *t != slot);
                    let writes = renames(&view, slot, None).unwrap();
                    let mut names = start.clone();
                    for (n, (from, to)) in writes.iter().enumerate() {
                        let from = from.strip_prefix("loader/entries/").unwrap();
                        let to = to.strip_prefix("loader/entries/").unwrap();
                        let at = names.iter().position(|x| x == from).unwrap();
                        assert!(!names.iter().any(|x| x == to), "{to} over {names:?}");
                        names[at] = to.to_string();
                        let cut = View::from_names(&names).unwrap();
                        assert!(
                            cut.next_boot() == Some(slot) || cut.next_boot() == armed_other,
                            "committing {slot} from {start:?}, cut after write {}: {names:?}",
                            n + 1
                        );
                        checked += 1;
                    }
                    let done = View::from_names(&names).unwrap();
                    assert_eq!((done.committed(), done.trial()), (Some(slot), None));
                    assert!(done
                        .entries
                        .iter()
                        .all(|(l, (_, r))| l == slot || *r == Role::Spare));
                    // Done is done: committing again writes nothing.
                    assert_eq!(renames(&done, slot, None).unwrap(), []);
                }
            }
        }
        assert!(checked > 60, "{checked}");
    }

    #[test]
    fn a_default_from_before_the_count_reads_as_count_zero() {
        assert_eq!(
            parse_file_name("ramnas-default-b.conf"),
            Some(("b".into(), Role::Default { generation: 0 }))
        );
        assert_eq!(
            parse_file_name("ramnas-default-12-a.conf"),
            Some(("a".into(), Role::Default { generation: 12 }))
        );
        for bad in [
            "ramnas-default--a.conf",
            "ramnas-default-+1-a.conf",
            "ramnas-default-x1-a.conf",
            "ramnas-default-1-.conf",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        // A committed default keeps its name: deploys do not count up.
        let v = View::from_names(["ramnas-default-a.conf", "ramnas-b.conf"]).unwrap();
        assert_eq!(
            renames(&v, "a", Some("b")).unwrap(),
            [(
                "loader/entries/ramnas-b.conf".to_string(),
                "loader/entries/ramnas-trial-b+1-0.conf".to_string()
            )]
        );
    }

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
