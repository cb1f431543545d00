//! The boot loaders a build carries: Alpine's own syslinux and systemd-boot, taken from the tree.
//!
//! When the system lists Alpine's `syslinux` (or `systemd-boot`), the build copies
//! their files out of the tree into `OUT/bootloaders/`, and `image` and `deploy` use those instead of the
//! host's: the same commit then gives the same stick on Debian and on Fedora, and the boot loaders are
//! locked with every other package. Without them, the host's copies are used, as before. The manifest's
//! `bootloaders` says which builds carry which (name → the package they came from).
//!
//! syslinux's installer is a program of the tree (musl, on Alpine): it runs on the host through the
//! tree's own dynamic loader, copied with the libraries it needs into `OUT/bootloaders/syslinux/lib/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::boot::{syslinux, uefi};

/// Under OUT.
pub const DIR: &str = "bootloaders";
/// On the stick: whose boot loaders `image` installed (`status` shows it).
pub const RECORD: &str = "bootloaders.txt";
pub const SYSLINUX: &str = "syslinux";
pub const SYSTEMD_BOOT: &str = "systemd-boot";

/// Where Alpine's syslinux package puts mbr.bin and the BIOS modules, and its mtools installer.
const TREE_SYSLINUX: &str = "usr/share/syslinux";
const TREE_SYSLINUX_INSTALLER: &str = "usr/bin/syslinux";
/// Where Alpine's systemd-boot puts its files (as every distribution does).
const TREE_SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi";
/// The installer's name under `OUT/bootloaders/syslinux/`, and the directory of its loader and libraries.
pub const INSTALLER: &str = "syslinux";
pub const LIB: &str = "lib";
/// Where a tree's libraries are looked for.
const LIB_DIRS: &[&str] = &[
    "lib",
    "usr/lib",
    "lib64",
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
];

/// Copies the boot loaders `tree` holds into `dest` (`OUT/.new.bootloaders`); returns what it copied,
/// name → the package it came from (from `packages`, the tree's apk database), as the manifest records it.
/// A boot loader with only some of its files is a warning, and the host's is used.
pub fn copy_from_tree(
    tree: &Path,
    dest: &Path,
    packages: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    let from = |package: &str| match packages.get(package) {
        Some(version) => format!("{package} {version}"),
        None => "the tree".to_string(),
    };

    let sys = tree.join(TREE_SYSLINUX);
    let mut syslinux: Vec<PathBuf> = ["mbr.bin"]
        .iter()
        .chain(syslinux::MODULES)
        .map(|f| sys.join(f))
        .collect();
    syslinux.push(tree.join(TREE_SYSLINUX_INSTALLER));
    if complete(tree, "syslinux", &syslinux) {
        let dir = dest.join(SYSLINUX);
        copy_into(tree, &syslinux, &dir)?;
        let installer = tree.join(TREE_SYSLINUX_INSTALLER);
        match copy_loader(tree, &installer, &dir.join(LIB)) {
            Ok(()) => {
                found.insert(SYSLINUX.to_string(), from("syslinux"));
            }
            Err(err) => {
                eprintln!(
                    "ramnas: warning: the tree's syslinux cannot be run here ({err:#}): the host's is used"
                );
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
    }

    let efi = tree.join(TREE_SYSTEMD_BOOT);
    let boot = [efi.join(uefi::SYSTEMD_BOOT)];
    if complete(tree, "systemd-boot", &boot) {
        copy_into(tree, &boot, &dest.join(SYSTEMD_BOOT))?;
        found.insert(SYSTEMD_BOOT.to_string(), from("systemd-boot"));
    }
    Ok(found)
}

/// Copies `files` of `tree` into the new directory `dir`, each under its own name.
fn copy_into(tree: &Path, files: &[PathBuf], dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in files {
        copy(
            tree,
            file,
            &dir.join(file.file_name().expect("a file name")),
        )?;
    }
    Ok(())
}

/// Whether all of `files` exist; when only some do, a warning naming the missing ones.
fn complete(tree: &Path, what: &str, files: &[PathBuf]) -> bool {
    let missing: Vec<String> = files
        .iter()
        .filter(|f| resolve(tree, f).is_none())
        .map(|f| f.display().to_string())
        .collect();
    if !missing.is_empty() && missing.len() < files.len() {
        eprintln!(
            "ramnas: warning: the tree holds only part of {what} (missing {}): the host's is used",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// `path` (inside `tree`) with every symlink on the way followed as the tree sees it: an absolute target
/// starts again at the tree's root, and `..` stops there. None when it is not a file.
fn resolve(tree: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let push_all = |todo: &mut Vec<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    let mut todo = Vec::new();
    push_all(&mut todo, path.strip_prefix(tree).ok()?);
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let here = at
            .iter()
            .fold(tree.to_path_buf(), |p, n| p.join(n))
            .join(&name);
        let meta = fs::symlink_metadata(&here).ok()?;
        if !meta.file_type().is_symlink() {
            at.push(name);
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = fs::read_link(&here).ok()?;
        if target.is_absolute() {
            at.clear();
        }
        push_all(&mut todo, &target);
    }
    let full = at.iter().fold(tree.to_path_buf(), |p, n| p.join(n));
    full.is_file().then_some(full)
}

fn copy(tree: &Path, from: &Path, to: &Path) -> Result<()> {
    let real = resolve(tree, from).with_context(|| format!("{}: not a file", from.display()))?;
    fs::copy(&real, to)
        .with_context(|| format!("copying {} to {}", real.display(), to.display()))?;
    Ok(())
}

/// Copies the ELF interpreter of `program` and the libraries it needs (and they need) from `tree` into
/// `lib`, each under the name it is asked for by.
fn copy_loader(tree: &Path, program: &Path, lib: &Path) -> Result<()> {
    let bytes = fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    let elf = Elf::parse(&bytes)
        .with_context(|| format!("{}: not an x86-64 ELF program", program.display()))?;
    fs::create_dir_all(lib).with_context(|| format!("creating {}", lib.display()))?;
    let Some(interp) = elf.interp else {
        return Ok(()); // static: it runs as it is
    };
    let interp_path = tree.join(interp.trim_start_matches('/'));
    let name = Path::new(&interp)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| plain_name(n))
        .with_context(|| {
            format!(
                "{}: its ELF interpreter {interp:?} names no file",
                program.display()
            )
        })?;
    copy(tree, &interp_path, &lib.join(name))?;
    let mut todo = elf.needed;
    let mut done = vec![name.to_string()];
    while let Some(needed) = todo.pop() {
        if done.contains(&needed) {
            continue;
        }
        if !plain_name(&needed) {
            bail!(
                "{}: needs a library named {needed:?}, which is no file name",
                program.display()
            );
        }
        done.push(needed.clone());
        let Some(found) = LIB_DIRS
            .iter()
            .map(|d| tree.join(d).join(&needed))
            .find(|p| resolve(tree, p).is_some())
        else {
            // musl's libc is its loader: libc.musl-x86_64.so.1 links to ld-musl-x86_64.so.1.
            if needed.starts_with("libc.musl") {
                continue;
            }
            bail!(
                "{}: needs {needed}, which the tree does not hold",
                program.display()
            );
        };
        copy(tree, &found, &lib.join(&needed))?;
        let lib_bytes = fs::read(lib.join(&needed))?;
        if let Some(more) = Elf::parse(&lib_bytes) {
            todo.extend(more.needed);
        }
    }
    Ok(())
}

/// Whether `name` is a file name of its own: not empty, no `/`, not `.` or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// The syslinux the build in `build` carries (`carried` is its manifest's list), else the host's
/// ([`syslinux::find`]); says which.
pub fn syslinux_for(build: &Path, carried: &BTreeMap<String, String>) -> Result<syslinux::Host> {
    let host = match carried_syslinux(build) {
        Some((dir, installer, loader)) => syslinux::Host {
            mbr: dir.join("mbr.bin"),
            modules: dir,
            installer,
            loader,
            source: format!(
                "the build's ({})",
                carried
                    .get(SYSLINUX)
                    .map_or("from its tree", String::as_str)
            ),
        },
        None => syslinux::find()?,
    };
    eprintln!("syslinux: {}", host.source);
    Ok(host)
}

/// The systemd-boot the build in `build` carries (`carried` is its manifest's list), else the host's
/// ([`uefi::find`]); says which.
pub fn systemd_boot_for(build: &Path, carried: &BTreeMap<String, String>) -> Result<uefi::Host> {
    let dir = build.join(DIR).join(SYSTEMD_BOOT);
    let host = if dir.is_dir() {
        uefi::Host {
            source: format!(
                "the build's ({})",
                carried
                    .get(SYSTEMD_BOOT)
                    .map_or("from its tree", String::as_str)
            ),
            ..uefi::find_in(&[dir])?
        }
    } else {
        uefi::find()?
    };
    eprintln!("systemd-boot: {}", host.source);
    Ok(host)
}

/// The syslinux of a build, when it carries one: (mbr.bin's and the modules' directory, the installer, the
/// loader to run it through: the one its ELF header names, None for a static one).
fn carried_syslinux(build: &Path) -> Option<(PathBuf, PathBuf, Option<PathBuf>)> {
    let dir = build.join(DIR).join(SYSLINUX);
    let installer = dir.join(INSTALLER);
    let elf = Elf::parse(&fs::read(&installer).ok()?)?;
    let loader = match elf.interp {
        Some(interp) => Some(dir.join(LIB).join(Path::new(&interp).file_name()?)),
        None => None,
    };
    Some((dir, installer, loader))
}

/// What the dynamic linker needs to know of an ELF program: its interpreter and DT_NEEDED libraries.
struct Elf {
    interp: Option<String>,
    needed: Vec<String>,
}

impl Elf {
    /// A 64-bit little-endian x86-64 ELF file's PT_INTERP and DT_NEEDED entries; None for anything else,
    /// or when an offset in it points outside the file.
    fn parse(b: &[u8]) -> Option<Elf> {
        if b.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let at = |o: u64, n: usize| -> Option<&[u8]> {
            let o = usize::try_from(o).ok()?;
            b.get(o..o.checked_add(n)?)
        };
        let u16_at = |o: u64| Some(u16::from_le_bytes(at(o, 2)?.try_into().ok()?));
        let u32_at = |o: u64| Some(u32::from_le_bytes(at(o, 4)?.try_into().ok()?));
        let u64_at = |o: u64| Some(u64::from_le_bytes(at(o, 8)?.try_into().ok()?));
        let cstr = |o: u64| {
            let s = b.get(usize::try_from(o).ok()?..)?;
            let end = s.iter().position(|&c| c == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        const X86_64: u16 = 0x3e;
        if u16_at(0x12)? != X86_64 {
            return None;
        }
        let phoff = u64_at(0x20)?;
        let phentsize = u64::from(u16_at(0x36)?);
        let phnum = u64::from(u16_at(0x38)?);
        let mut interp = None;
        let mut dynamic = None;
        let mut loads = Vec::new();
        for i in 0..phnum {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            let kind = u32_at(ph)?;
            let offset = u64_at(ph.checked_add(8)?)?;
            let vaddr = u64_at(ph.checked_add(16)?)?;
            let filesz = u64_at(ph.checked_add(32)?)?;
            match kind {
                1 => loads.push((vaddr, offset, filesz)),
                2 => dynamic = Some((offset, filesz)),
                3 => interp = Some(cstr(offset)?),
                _ => {}
            }
        }
        let to_offset = |vaddr: u64| {
            let (v, off, _) = loads
                .iter()
                .find(|(v, _, size)| vaddr >= *v && vaddr - v < *size)?;
            (vaddr - v).checked_add(*off)
        };
        let mut needed_at = Vec::new();
        let mut strtab = None;
        if let Some((offset, size)) = dynamic {
            let end = offset.checked_add(size)?;
            let mut entry = offset;
            while entry < end {
                match (u64_at(entry)?, u64_at(entry.checked_add(8)?)?) {
                    (0, _) => break,
                    (1, name) => needed_at.push(name),
                    (5, addr) => strtab = Some(to_offset(addr)?),
                    _ => {}
                }
                entry = entry.checked_add(16)?;
            }
        }
        let needed = match strtab {
            Some(table) => needed_at
                .iter()
                .map(|&n| cstr(table.checked_add(n)?))
                .collect::<Option<Vec<_>>>()?,
            None => Vec::new(),
        };
        Some(Elf { interp, needed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_program_names_its_loader_and_libraries() {
        let bytes = fs::read("/bin/sh")
            .or_else(|_| fs::read("/usr/bin/env"))
            .unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let interp = elf.interp.unwrap();
        assert!(interp.contains("ld-"), "{interp}");
        assert!(
            elf.needed.iter().any(|n| n.starts_with("libc.")),
            "{:?}",
            elf.needed
        );
        assert!(Elf::parse(b"#!/bin/sh\n").is_none());
        // Cut short or with offsets past its end: None, no panic.
        for len in [0, 20, 64, 100, 1000] {
            assert!(
                Elf::parse(&bytes[..len.min(bytes.len())]).is_none(),
                "{len}"
            );
        }
        let mut bad = bytes.clone();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Elf::parse(&bad).is_none());
    }

    /// An x86-64 ELF program with the interpreter `interp` and the DT_NEEDED libraries `needed`: one
    /// PT_LOAD over the whole file, PT_INTERP, PT_DYNAMIC and its string table.
    pub(crate) fn elf(interp: &str, needed: &[&str]) -> Vec<u8> {
        let dynamic = 64 + 3 * 56;
        let strtab = dynamic + 16 * (needed.len() + 2);
        let mut strings = vec![0u8];
        let mut offsets = Vec::new();
        for n in needed {
            offsets.push(strings.len() as u64);
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
        }
        let interp_at = strtab + strings.len();
        let len = interp_at + interp.len() + 1;
        let mut b = vec![0u8; len];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let headers = [
            (1u32, 0u64, len as u64),
            (3, interp_at as u64, interp.len() as u64 + 1),
            (2, dynamic as u64, 16 * (needed.len() as u64 + 2)),
        ];
        for (i, (kind, offset, size)) in headers.into_iter().enumerate() {
            let ph = 64 + i * 56;
            b[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            b[ph + 16..ph + 24].copy_from_slice(&offset.to_le_bytes());
            b[ph + 32..ph + 40].copy_from_slice(&size.to_le_bytes());
        }
        let mut at = dynamic;
        for (tag, value) in offsets
            .iter()
            .map(|&o| (1u64, o))
            .chain([(5, strtab as u64), (0, 0)])
        {
            b[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
            at += 16;
        }
        b[strtab..strtab + strings.len()].copy_from_slice(&strings);
        b[interp_at..interp_at + interp.len()].copy_from_slice(interp.as_bytes());
        b
    }

    /// A tree's program whose interpreter names no file, or that needs a library by a path, is refused
    /// with an error (no panic), and nothing is copied outside the directory of libraries.
    #[test]
    fn a_program_naming_odd_files_is_refused_and_nothing_lands_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("lib")).unwrap();
        fs::write(tree.join("lib/ld.so"), "loader").unwrap();
        fs::write(tree.join("lib/libok.so"), "lib").unwrap();
        fs::write(tree.join("x"), "not a library").unwrap();
        let program = tree.join("prog");
        let lib = tmp.path().join("out/bootloaders/syslinux/lib");

        let parsed = Elf::parse(&elf("/lib/ld.so", &["libok.so"])).unwrap();
        assert_eq!(
            (parsed.interp.as_deref(), &parsed.needed[..]),
            (Some("/lib/ld.so"), &["libok.so".to_string()][..])
        );
        fs::write(&program, elf("/lib/ld.so", &["libok.so"])).unwrap();
        copy_loader(&tree, &program, &lib).unwrap();
        assert!(lib.join("libok.so").is_file());

        for (interp, needed, says) in [
            ("", "libok.so", "names no file"),
            ("/", "libok.so", "names no file"),
            ("..", "libok.so", "names no file"),
            ("/lib/..", "libok.so", "names no file"),
            ("/lib/ld.so", "../../x", "which is no file name"),
            ("/lib/ld.so", "..", "which is no file name"),
        ] {
            fs::write(&program, elf(interp, &[needed])).unwrap();
            let err = format!("{:#}", copy_loader(&tree, &program, &lib).unwrap_err());
            assert!(err.contains(says), "{interp:?} {needed:?}: {err}");
        }
        assert!(!tmp.path().join("out/bootloaders/x").exists());
    }

    /// Property: any program bytes parse as an ELF or as nothing, and copying a tree's loader for any of
    /// them copies into lib/ only, or fails with an error.
    #[test]
    fn any_program_bytes_parse_and_copy_only_into_lib() {
        let seed = elf("/lib/ld.so", &["libok.so", "libc.musl-x86_64.so.1"]);
        let host = fs::read("/bin/sh").unwrap();
        crate::fuzz::run(5000, &[&seed, &host[..host.len().min(16 << 10)]], |b| {
            let _ = Elf::parse(b);
        });
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("lib")).unwrap();
        fs::write(tree.join("lib/ld.so"), "loader").unwrap();
        fs::write(tree.join("lib/libok.so"), &seed).unwrap();
        let program = tree.join("prog");
        let out = tmp.path().join("out");
        let lib = out.join("syslinux/lib");
        crate::fuzz::run(500, &[&seed], |b| {
            fs::write(&program, b).unwrap();
            let _ = fs::remove_dir_all(&out);
            let _ = copy_loader(&tree, &program, &lib);
            for entry in fs::read_dir(&out).into_iter().flatten() {
                assert_eq!(entry.unwrap().file_name(), "syslinux");
            }
        });
    }
}
