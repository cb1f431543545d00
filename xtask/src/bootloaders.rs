//! The boot loaders a build carries: Alpine's own syslinux and systemd-boot, taken from the tree.
//!
//! When the system lists Alpine's `syslinux` (or `systemd-boot` and `systemd-efistub`), the build copies
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

/// Under OUT.
pub const DIR: &str = "bootloaders";
pub const SYSLINUX: &str = "syslinux";
pub const SYSTEMD_BOOT: &str = "systemd-boot";

/// Where Alpine's syslinux package puts mbr.bin and the BIOS modules, and its mtools installer.
const TREE_SYSLINUX: &str = "usr/share/syslinux";
const TREE_SYSLINUX_INSTALLER: &str = "usr/bin/syslinux";
/// Where Alpine's systemd-boot and systemd-efistub put their files (as every distribution does).
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
        .chain(crate::syslinux::MODULES)
        .map(|f| sys.join(f))
        .collect();
    syslinux.push(tree.join(TREE_SYSLINUX_INSTALLER));
    if let Some(files) = complete(tree, "syslinux", &syslinux) {
        let dir = dest.join(SYSLINUX);
        fs::create_dir_all(dir.join(LIB)).with_context(|| format!("creating {}", dir.display()))?;
        for file in &files {
            copy(
                tree,
                file,
                &dir.join(file.file_name().expect("a file name")),
            )?;
        }
        copy_loader(tree, &tree.join(TREE_SYSLINUX_INSTALLER), &dir.join(LIB))?;
        found.insert(SYSLINUX.to_string(), from("syslinux"));
    }

    let efi = tree.join(TREE_SYSTEMD_BOOT);
    let uefi = [crate::uefi::STUB, crate::uefi::SYSTEMD_BOOT].map(|f| efi.join(f));
    if let Some(files) = complete(tree, "systemd-boot and systemd-efistub", &uefi) {
        let dir = dest.join(SYSTEMD_BOOT);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in &files {
            copy(
                tree,
                file,
                &dir.join(file.file_name().expect("a file name")),
            )?;
        }
        found.insert(SYSTEMD_BOOT.to_string(), from("systemd-boot"));
    }
    Ok(found)
}

/// `files` when all exist, None when none does; a warning naming the missing ones otherwise.
fn complete(tree: &Path, what: &str, files: &[PathBuf]) -> Option<Vec<PathBuf>> {
    let missing: Vec<String> = files
        .iter()
        .filter(|f| resolve(tree, f).is_none())
        .map(|f| f.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(files.to_vec());
    }
    if missing.len() < files.len() {
        eprintln!(
            "ramnas: warning: the tree holds only part of {what} (missing {}): the host's is used",
            missing.join(", ")
        );
    }
    None
}

/// `path` (inside `tree`) with symlinks followed as the tree sees them: an absolute target is inside
/// the tree. None when it is not a file.
fn resolve(tree: &Path, path: &Path) -> Option<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = fs::read_link(&path).ok()?;
        path = match target.strip_prefix("/") {
            Ok(inside) => tree.join(inside),
            Err(_) => path.parent()?.join(target),
        };
    }
    None
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
    let interp = elf.interp.with_context(|| {
        format!(
            "{}: no ELF interpreter (a static program?)",
            program.display()
        )
    })?;
    let interp_path = tree.join(interp.trim_start_matches('/'));
    let name = Path::new(&interp)
        .file_name()
        .expect("interpreter file name");
    copy(tree, &interp_path, &lib.join(name))?;
    let mut todo = elf.needed;
    let mut done = vec![name.to_string_lossy().into_owned()];
    while let Some(needed) = todo.pop() {
        if done.contains(&needed) {
            continue;
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

/// The syslinux of a build, when it carries one: (mbr.bin's directory and the modules' directory, the
/// installer, its loader).
pub fn syslinux(build: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let dir = build.join(DIR).join(SYSLINUX);
    let installer = dir.join(INSTALLER);
    let lib = dir.join(LIB);
    let loader = fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
        })?;
    (installer.is_file()).then_some((dir, installer, loader))
}

/// The systemd-boot directory of a build, when it carries one.
pub fn systemd_boot(build: &Path) -> Option<PathBuf> {
    let dir = build.join(DIR).join(SYSTEMD_BOOT);
    dir.is_dir().then_some(dir)
}

/// What the dynamic linker needs to know of an ELF program: its interpreter and DT_NEEDED libraries.
struct Elf {
    interp: Option<String>,
    needed: Vec<String>,
}

impl Elf {
    /// A 64-bit little-endian ELF file's PT_INTERP and DT_NEEDED entries.
    fn parse(b: &[u8]) -> Option<Elf> {
        if b.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let phoff = u64_at(0x20)? as usize;
        let phentsize = u16_at(0x36)? as usize;
        let phnum = u16_at(0x38)? as usize;
        let cstr = |o: usize| {
            let s = b.get(o..)?;
            let end = s.iter().position(|&c| c == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        let mut interp = None;
        let mut dynamic = None;
        let mut loads = Vec::new();
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let (kind, offset, vaddr, filesz) = (
                u32_at(ph)?,
                u64_at(ph + 8)?,
                u64_at(ph + 16)?,
                u64_at(ph + 32)?,
            );
            match kind {
                1 => loads.push((vaddr, offset, filesz)),
                2 => dynamic = Some((offset as usize, filesz as usize)),
                3 => interp = cstr(offset as usize),
                _ => {}
            }
        }
        let to_offset = |vaddr: u64| {
            loads
                .iter()
                .find(|(v, _, size)| (*v..v + size).contains(&vaddr))
                .map(|(v, off, _)| (vaddr - v + off) as usize)
        };
        let mut needed_at = Vec::new();
        let mut strtab = None;
        if let Some((offset, size)) = dynamic {
            for entry in (offset..offset + size).step_by(16) {
                match (u64_at(entry)?, u64_at(entry + 8)?) {
                    (0, _) => break,
                    (1, name) => needed_at.push(name as usize),
                    (5, addr) => strtab = to_offset(addr),
                    _ => {}
                }
            }
        }
        let needed = match strtab {
            Some(table) => needed_at.iter().filter_map(|&n| cstr(table + n)).collect(),
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
    }
}
