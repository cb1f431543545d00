//! UEFI boot: systemd-boot and one unified kernel image (UKI) per slot, with A/B state in file names alone.
//!
//! The stick's FAT partition carries, next to syslinux, `EFI/BOOT/BOOTX64.EFI` (systemd-boot, the path
//! firmware boots from removable media), `loader/loader.conf`, and one UKI per filled slot under
//! `EFI/Linux/` (boot loader spec type #2 entries, found by systemd-boot without any config). A UKI is
//! systemd's EFI stub with the slot's kernel, microcode + initramfs, command line (`ramnas.slot=<s>` appended)
//! and an os-release added as PE sections, so it boots alone.
//!
//! Which slot boots is said by the UKIs' file names, never by NVRAM:
//!
//! - `ramnas-default-<s>.efi`: the committed slot.
//! - `ramnas-trial-<s>+<left>-<done>.efi`: a deploy's trial. systemd-boot renames it to count a try
//!   (`+1-0` → `+0-1`) before booting it; with no tries left it is "bad".
//! - `ramnas-<s>.efi`: a filled slot that boots only when a person picks it in the menu.
//!
//! loader.conf never changes: `default ramnas-*`. systemd-boot boots the first entry of its sorted list
//! that matches; it sorts bad entries last and the others by file name, descending (our os-releases have no
//! `ID`, so no sort key). `trial` > `default` > `a`/`b`, so: a trial with tries left boots first; once its
//! try is spent (it never reported healthy) the committed slot boots again by itself; a spare slot never
//! boots by itself. Commit, rollback and arming a trial are renames ([`renames`]).
//!
//! The running system (stick mounted at /media/boot) knows it runs a trial when its slot's UKI is
//! `EFI/Linux/ramnas-trial-<slot>+*.efi` (systemd-boot has already renamed it to `+0-1` by then; the
//! `LoaderBootCountPath` EFI variable names the same file). Committing is two renames inside
//! /media/boot/EFI/Linux, in this order: `ramnas-trial-<slot>+<l>-<d>.efi` → `ramnas-default-<slot>.efi`, then
//! `ramnas-default-<other>.efi` → `ramnas-<other>.efi`. A crash between them leaves two defaults; the
//! higher letter boots and the next commit or rollback settles it.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::stick::{self, Stick};

/// systemd-boot, where UEFI firmware looks on removable media.
pub const BOOTLOADER: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's config.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Where the UKIs live (systemd-boot finds type #2 entries here).
pub const LINUX_DIR: &str = "EFI/Linux";
/// Overrides the search for systemd-boot's files: a directory holding both of [`STUB`] and [`SYSTEMD_BOOT`].
pub const DIR_ENV: &str = "RAMNAS_SYSTEMD_BOOT_DIR";
/// systemd's EFI stub, the start of every UKI.
pub const STUB: &str = "linuxx64.efi.stub";
/// systemd-boot's x86-64 binary.
pub const SYSTEMD_BOOT: &str = "systemd-bootx64.efi";
/// Seconds systemd-boot shows its menu before booting the default.
pub const TIMEOUT_SECS: u32 = 3;
/// Tries a trial gets: one boot; if that boot never reports healthy, the committed slot is next.
pub const TRIAL_TRIES: u32 = 1;

const INSTALL_HINT: &str =
    "install systemd's EFI stub and boot loader (Debian/Ubuntu: apt-get install \
     systemd-boot-efi; Alpine: apk add systemd-boot systemd-efistub; Fedora: dnf install \
     systemd-boot-unsigned; Arch: pacman -S systemd)";

/// systemd-boot's files on the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The EFI stub UKIs are made from.
    pub stub: PathBuf,
    /// systemd-boot itself.
    pub boot: PathBuf,
    /// Whose they are, for people: `the build's (systemd-boot 257.9-r0)`, `this host's (/usr/lib/…)`.
    pub source: String,
}

/// Where distributions install them: Debian/Ubuntu, Alpine, Fedora and Arch all use the first.
pub fn known_places() -> Vec<PathBuf> {
    vec![
        "/usr/lib/systemd/boot/efi".into(),
        "/lib/systemd/boot/efi".into(),
    ]
}

/// The stub and systemd-boot the build in `build` carries (see `bootloaders`; `carried` is its manifest's
/// list), else the host's ([`find`]); says which.
pub fn find_for(
    build: &std::path::Path,
    carried: &std::collections::BTreeMap<String, String>,
) -> Result<Host> {
    let host = match crate::bootloaders::systemd_boot(build) {
        Some(dir) => Host {
            source: format!(
                "the build's ({})",
                carried
                    .get(crate::bootloaders::SYSTEMD_BOOT)
                    .map_or("from its tree", String::as_str)
            ),
            ..find_in(&[dir])?
        },
        None => find()?,
    };
    eprintln!("systemd-boot: {}", host.source);
    Ok(host)
}

/// Finds the stub and systemd-boot: in `$RAMNAS_SYSTEMD_BOOT_DIR` when set, else the known places.
pub fn find() -> Result<Host> {
    let places = match std::env::var_os(DIR_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => known_places(),
    };
    find_in(&places)
}

/// The first of `places` holding both files.
pub fn find_in(places: &[PathBuf]) -> Result<Host> {
    match places
        .iter()
        .find(|d| d.join(STUB).is_file() && d.join(SYSTEMD_BOOT).is_file())
    {
        Some(dir) => Ok(Host {
            stub: dir.join(STUB),
            boot: dir.join(SYSTEMD_BOOT),
            source: format!("this host's ({})", dir.display()),
        }),
        None => {
            let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "{STUB} and {SYSTEMD_BOOT} not found (looked in {}; set {DIR_ENV} to another directory): {INSTALL_HINT}",
                looked.join(", ")
            )
        }
    }
}

/// loader.conf: the same for every state of the slots (see the module's doc).
pub fn loader_conf() -> String {
    format!(
        "# Written by cargo xtask; never changes. The slots' state is in the file names under /{LINUX_DIR}:\n\
         # ramnas-trial-<slot>+<tries left>-<tries done>.efi boots while it has tries left, then\n\
         # ramnas-default-<slot>.efi (the committed slot); ramnas-<slot>.efi only when picked here.\n\
         timeout {TIMEOUT_SECS}\n\
         default ramnas-*\n"
    )
}

/// The files systemd-boot needs besides the UKIs: (path on the partition, contents).
pub fn boot_files(host: &Host) -> Result<Vec<(String, Vec<u8>)>> {
    let boot = fs::read(&host.boot).with_context(|| format!("reading {}", host.boot.display()))?;
    Ok(vec![
        (BOOTLOADER.to_string(), boot),
        (LOADER_CONF.to_string(), loader_conf().into_bytes()),
    ])
}

/// What a slot's UKI is to systemd-boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The committed slot: boots whenever no trial has tries left.
    Default,
    /// A deploy's trial: `left` tries left, `done` made. systemd-boot counts by renaming the file.
    Trial { left: u32, done: u32 },
    /// A filled slot that boots only when a person picks it in the menu.
    Spare,
}

/// The UKI's file name under [`LINUX_DIR`] for slot `label` in `role`.
pub fn file_name(label: &str, role: Role) -> String {
    match role {
        Role::Default => format!("ramnas-default-{label}.efi"),
        Role::Trial { left, done } => format!("ramnas-trial-{label}+{left}-{done}.efi"),
        Role::Spare => format!("ramnas-{label}.efi"),
    }
}

/// The slot label and role a file name under [`LINUX_DIR`] says; None for files that are not ours.
pub fn parse_file_name(name: &str) -> Option<(String, Role)> {
    let stem = name.to_ascii_lowercase();
    let stem = stem.strip_suffix(".efi")?.strip_prefix("ramnas-")?;
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

/// The UKIs found under [`LINUX_DIR`]: slot label → (file name, role).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub ukis: BTreeMap<String, (String, Role)>,
}

impl View {
    /// Reads the view from the file names of [`LINUX_DIR`]; other files are ignored. Two UKIs for one slot
    /// (left by an interrupted rename) are an error naming both.
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<View> {
        let mut ukis: BTreeMap<String, (String, Role)> = BTreeMap::new();
        for name in names {
            let name = name.as_ref();
            let Some((label, role)) = parse_file_name(name) else {
                continue;
            };
            if let Some((other, _)) = ukis.get(&label) {
                bail!(
                    "/{LINUX_DIR} holds two UKIs for slot {label}: {other} and {name}; remove the one that \
                     is not wanted, or rerun the deploy"
                );
            }
            ukis.insert(label, (name.to_string(), role));
        }
        Ok(View { ukis })
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
        let mut names: Vec<(&String, &(String, Role))> = self.ukis.iter().collect();
        names.sort_by(|(_, (a, ra)), (_, (b, rb))| {
            let bad = |r: &Role| matches!(r, Role::Trial { left: 0, .. });
            bad(ra).cmp(&bad(rb)).then_with(|| b.cmp(a))
        });
        names.first().map(|(label, _)| label.as_str())
    }

    fn with_role(&self, want: impl Fn(Role) -> bool) -> Option<&str> {
        self.ukis
            .iter()
            .find(|(_, (_, r))| want(*r))
            .map(|(l, _)| l.as_str())
    }
}

/// The renames (paths relative to the partition's root) that make `default` the committed slot, `trial`
/// (when given) a fresh trial with [`TRIAL_TRIES`], and every other slot a spare. Promotions come first, so
/// a crash part-way leaves each slot with exactly one UKI and the old or the new default booting.
pub fn renames(view: &View, default: &str, trial: Option<&str>) -> Result<Vec<(String, String)>> {
    for want in std::iter::once(default).chain(trial) {
        if !view.ukis.contains_key(want) {
            bail!("slot {want} has no UKI under /{LINUX_DIR}; deploy a build into it first");
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
    for (label, (name, _)) in &view.ukis {
        let new = file_name(label, want(label));
        if &new == name {
            continue;
        }
        let pair = (format!("{LINUX_DIR}/{name}"), format!("{LINUX_DIR}/{new}"));
        if want(label) == Role::Spare {
            demotions.push(pair);
        } else {
            promotions.push(pair);
        }
    }
    promotions.extend(demotions);
    Ok(promotions)
}

/// One UKI to build.
#[derive(Debug, Clone)]
pub struct Uki {
    /// The slot, `a` or `b`: appended to the command line as `ramnas.slot=<label>`.
    pub label: String,
    /// The menu's line for it (os-release `PRETTY_NAME`).
    pub title: String,
    /// The build's kernel command line.
    pub cmdline: String,
    pub kernel: PathBuf,
    /// Concatenated in this order into the `.initrd` section: microcode first, then the initramfs.
    pub initrds: Vec<PathBuf>,
}

impl Uki {
    /// The UKI of the build in `dir` (OUT/ or a slot's directory: vmlinuz, initramfs, cmdline, ucode.img when
    /// present) for slot `label`.
    pub fn for_build(dir: &Path, label: &str, title: &str) -> Result<Uki> {
        let cmdline = dir.join("cmdline");
        let cmdline = fs::read_to_string(&cmdline)
            .with_context(|| format!("reading {}", cmdline.display()))?;
        let ucode = dir.join("ucode.img");
        let initrds = if ucode.is_file() {
            vec![ucode, dir.join("initramfs")]
        } else {
            vec![dir.join("initramfs")]
        };
        Ok(Uki {
            label: label.to_string(),
            title: title.to_string(),
            cmdline: cmdline.trim().to_string(),
            kernel: dir.join("vmlinuz"),
            initrds,
        })
    }

    /// The full kernel command line baked into the UKI.
    pub fn full_cmdline(&self) -> String {
        format!("{} ramnas.slot={}", self.cmdline.trim(), self.label)
            .trim()
            .to_string()
    }

    /// The embedded os-release. No `ID`/`IMAGE_ID`: systemd-boot then orders entries by file name alone.
    pub fn os_release(&self) -> String {
        let quote = |s: &str| s.replace(['"', '\\', '\n'], " ");
        format!(
            "NAME=\"ramnas\"\nPRETTY_NAME=\"ramnas slot {}: {}\"\n",
            quote(&self.label),
            quote(&self.title)
        )
    }
}

/// Builds `uki` from the stub into `out` (through `out.tmp`): sections `.osrel`, `.cmdline`, `.initrd`,
/// `.linux` added by objcopy, each placed after the stub's last section. Same inputs, same bytes.
pub fn build_uki(host: &Host, uki: &Uki, out: &Path) -> Result<()> {
    let parts = path_with_suffix(out, ".parts");
    let _ = fs::remove_dir_all(&parts);
    fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
    let result = build_uki_in(host, uki, out, &parts);
    let _ = fs::remove_dir_all(&parts);
    result
}

fn build_uki_in(host: &Host, uki: &Uki, out: &Path, parts: &Path) -> Result<()> {
    let stub = fs::read(&host.stub).with_context(|| format!("reading {}", host.stub.display()))?;
    let pe =
        Pe::parse(&stub).with_context(|| format!("{}: not a PE image", host.stub.display()))?;
    let osrel = parts.join("osrel");
    fs::write(&osrel, uki.os_release())?;
    let cmdline = parts.join("cmdline");
    fs::write(&cmdline, uki.full_cmdline())?;
    let initrd = parts.join("initrd");
    concatenate(&uki.initrds, &initrd)?;
    let sections = [
        (".osrel", osrel),
        (".cmdline", cmdline),
        (".initrd", initrd),
        (".linux", uki.kernel.clone()),
    ];
    let mut args: Vec<String> = Vec::new();
    let mut next = pe.end_rva();
    for (name, file) in &sections {
        let size = fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        args.push("--add-section".into());
        args.push(format!("{name}={}", file.display()));
        args.push("--change-section-vma".into());
        args.push(format!("{name}={:#x}", pe.image_base + next));
        next = align(next + size.max(1), pe.section_alignment);
    }
    let objcopy = which::which("objcopy").map_err(|_| {
        anyhow::anyhow!(
            "objcopy not found: install binutils (Debian/Ubuntu: apt-get install binutils; Alpine: apk add \
             binutils; Fedora: dnf install binutils; Arch: pacman -S binutils)"
        )
    })?;
    let tmp = path_with_suffix(out, ".tmp");
    let sh = Shell::new()?;
    let stub_path = &host.stub;
    cmd!(sh, "{objcopy} {args...} {stub_path} {tmp}")
        .quiet()
        .run()
        .with_context(|| format!("building the UKI {} with objcopy", out.display()))?;
    zero_timestamp(&tmp)?;
    fs::rename(&tmp, out).with_context(|| format!("renaming {} into place", tmp.display()))
}

fn path_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn concatenate(inputs: &[PathBuf], out: &Path) -> Result<()> {
    let mut w = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for input in inputs {
        let mut r =
            fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        std::io::copy(&mut r, &mut w).with_context(|| format!("reading {}", input.display()))?;
    }
    w.flush()?;
    Ok(())
}

fn align(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// objcopy stamps PE output with the time of day: set the stamp to 0 and recompute the header checksum
/// over the result, so the same inputs give the same bytes.
fn zero_timestamp(path: &Path) -> Result<()> {
    use std::io::{BufReader, Seek, SeekFrom};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 0x40];
    f.read_exact(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let pe = u32::from_le_bytes(head[0x3c..0x40].try_into().unwrap()) as u64;
    // COFF header: TimeDateStamp at +8 from the signature; optional header at +24, CheckSum at its +64.
    let (stamp, checksum) = (pe + 8, pe + 24 + 64);
    f.seek(SeekFrom::Start(stamp))?;
    f.write_all(&[0; 4])?;
    f.seek(SeekFrom::Start(0))?;
    let len = f.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &mut f);
    let mut sum: u64 = 0;
    let mut offset: u64 = 0;
    let mut word = [0u8; 2];
    while offset < len {
        let n = reader.read(&mut word)?;
        if n == 0 {
            break;
        }
        if n == 1 && offset + 1 < len {
            reader.read_exact(&mut word[1..])?;
        } else if n == 1 {
            word[1] = 0;
        }
        if offset < checksum || offset >= checksum + 4 {
            sum += u16::from_le_bytes(word) as u64;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        offset += 2;
    }
    drop(reader);
    let sum = ((sum & 0xffff) + (sum >> 16)) as u32;
    f.seek(SeekFrom::Start(checksum))?;
    f.write_all(&(sum.wrapping_add(len as u32)).to_le_bytes())?;
    Ok(())
}

/// The few PE header fields UKI building needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pe {
    pub image_base: u64,
    pub section_alignment: u64,
    /// (name, virtual address, virtual size) of each section, in header order.
    pub sections: Vec<(String, u64, u64)>,
}

impl Pe {
    pub fn parse(bytes: &[u8]) -> Result<Pe> {
        let u16_at = |o: usize| -> Result<u64> {
            Ok(u16::from_le_bytes(bytes.get(o..o + 2).context("truncated")?.try_into()?) as u64)
        };
        let u32_at = |o: usize| -> Result<u64> {
            Ok(u32::from_le_bytes(bytes.get(o..o + 4).context("truncated")?.try_into()?) as u64)
        };
        if bytes.get(..2) != Some(b"MZ") {
            bail!("no MZ header");
        }
        let pe = u32_at(0x3c)? as usize;
        if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
            bail!("no PE signature");
        }
        let coff = pe + 4;
        let count = u16_at(coff + 2)? as usize;
        let opt_size = u16_at(coff + 16)? as usize;
        let opt = coff + 20;
        if u16_at(opt)? != 0x20b {
            bail!("not a PE32+ (64-bit) image");
        }
        let image_base = u32_at(opt + 24)? | (u32_at(opt + 28)? << 32);
        let section_alignment = u32_at(opt + 32)?;
        let mut sections = Vec::new();
        for i in 0..count {
            let s = opt + opt_size + 40 * i;
            let name = bytes.get(s..s + 8).context("truncated")?;
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            sections.push((name, u32_at(s + 12)?, u32_at(s + 8)?));
        }
        Ok(Pe {
            image_base,
            section_alignment,
            sections,
        })
    }

    /// The first section-aligned address after every section.
    pub fn end_rva(&self) -> u64 {
        let end = self
            .sections
            .iter()
            .map(|(_, va, size)| va + size)
            .max()
            .unwrap_or(0);
        align(end, self.section_alignment.max(1))
    }
}

/// The directories systemd-boot's files live in.
pub const DIRS: &[&str] = &["EFI/BOOT", LINUX_DIR, "loader"];

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

/// The UKIs on a stick (an empty view when it has no /EFI/Linux).
pub fn read_view(stick: &mut dyn Stick) -> Result<View> {
    if !stick.exists(LINUX_DIR)? {
        return Ok(View::default());
    }
    let names = stick
        .list(LINUX_DIR)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name);
    View::from_names(names).with_context(|| format!("on {}", stick.describe()))
}

/// Puts slot `label`'s UKI (built on this machine at `uki`) on the stick as a spare, which never boots by
/// itself: written under a temporary name and read back against the local file's SHA-256, then the slot's
/// old UKI removed and the new one renamed into place. [`set_state`] then gives it its role.
pub fn install_uki(stick: &mut dyn Stick, label: &str, uki: &Path) -> Result<()> {
    let spare = format!("{LINUX_DIR}/{}", file_name(label, Role::Spare));
    let tmp = stick::temp_name(&spare);
    let file = fs::File::open(uki).with_context(|| format!("opening {}", uki.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = crate::progress::bar(true, len, &format!("UKI {label}"));
    let size = stick.write(&tmp, &mut bar.wrap_read(file))?;
    bar.finish_and_clear();
    let want = sha256_file(uki)?;
    let (got_size, got) = stick.sha256(&tmp)?;
    if got_size != size || got != want {
        bail!(
            "{tmp} on {} reads back as {got_size} bytes sha256 {got}, {} has sha256 {want}: the stick is damaged",
            stick.describe(),
            uki.display()
        );
    }
    stick.sync()?;
    if let Some((old, _)) = read_view(stick)?.ukis.get(label) {
        stick.remove(&format!("{LINUX_DIR}/{old}"))?;
        stick.sync()?;
    }
    stick.rename(&tmp, &spare)?;
    stick.sync()
}

/// Renames the UKIs so that `default` is committed and `trial` (when given) armed for one try.
pub fn set_state(stick: &mut dyn Stick, default: &str, trial: Option<&str>) -> Result<()> {
    let view = read_view(stick)?;
    for (from, to) in renames(&view, default, trial)? {
        stick.rename(&from, &to)?;
        stick.sync()?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(stick::hex(&h.finalize()))
}
