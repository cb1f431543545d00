//! alpine-make-rootfs: fetch, verify, run — the only Alpine-specific seam.
//!
//! Two programs are pinned by version and SHA-256, downloaded once into the cache (`$XDG_CACHE_HOME/ramnas`,
//! else `~/.cache/ramnas`) and verified before every use: alpine-make-rootfs, and the static apk-tools it
//! runs (the same build on every host, Alpine or not). `$ALPINE_MAKE_ROOTFS` and `$RAMNAS_APK` name other
//! copies to run instead (unverified: the caller's choice; the tests use them).
//!
//! apk keeps every index and package it downloads in the package cache, `CACHE/apk/<branch>`; with
//! `--offline` it reads only that cache (and local repositories), and the build checks first that
//! everything the lock names is there.
//!
//! The tree lives in `OUT/rootfs` (root-owned: remove it with `sudo rm -rf OUT/rootfs`), next to
//! `OUT/rootfs.inputs`, the hash of everything the tree was made from. When that hash is unchanged the
//! tree is reused.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::build::config::System;
use crate::build::lock::{self, Lock};
use crate::build::manifest::{hex, APK_DB};

/// A program fetched once by URL and verified by SHA-256.
#[derive(Debug)]
pub struct Pin {
    pub name: &'static str,
    pub version: &'static str,
    pub url: &'static str,
    pub sha256: &'static str,
    /// Environment variable naming another copy to run instead.
    pub env: &'static str,
}

pub const ALPINE_MAKE_ROOTFS: Pin = Pin {
    name: "alpine-make-rootfs",
    version: "v0.8.1",
    url:
        "https://raw.githubusercontent.com/alpinelinux/alpine-make-rootfs/v0.8.1/alpine-make-rootfs",
    sha256: "b4cd8202fa04eae8b4abae22708638cf00ab5826d8b919bc86932fc0cb269f00",
    env: "ALPINE_MAKE_ROOTFS",
};

/// The static apk-tools alpine-make-rootfs v0.8.1 itself downloads when the host has no apk (its
/// APK_TOOLS_URI and APK_TOOLS_SHA256).
pub const APK: Pin = Pin {
    name: "apk.static",
    version: "v2.14.10",
    url: "https://gitlab.alpinelinux.org/api/v4/projects/5/packages/generic/v2.14.10/x86_64/apk.static",
    sha256: "34bb1a96f0258982377a289392d4ea9f3f4b767a4bb5806b1b87179b79ad8a1c",
    env: "RAMNAS_APK",
};

/// alpine-make-rootfs's base packages (its ALPINE_BASE_PKGS), asked for by the build itself so that the
/// lock holds them too.
pub const BASE_PACKAGES: &[&str] = &["alpine-baselayout", "busybox", "busybox-suid", "musl-utils"];

/// A pinned program ready to run.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    /// SHA-256 of the program: part of the tree's inputs.
    pub sha256: String,
}

/// The two programs a tree is made with.
#[derive(Debug, Clone)]
pub struct Tools {
    pub make_rootfs: Tool,
    pub apk: Tool,
}

impl Tools {
    /// Both pinned programs, downloaded when missing (with `offline`, missing is an error).
    pub fn get(offline: bool) -> anyhow::Result<Tools> {
        Ok(Tools {
            make_rootfs: ALPINE_MAKE_ROOTFS.get(offline)?,
            apk: APK.get(offline)?,
        })
    }
}

/// Where ramnas keeps downloads.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("ramnas"));
    }
    let home = std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/ramnas"))
}

/// apk's package cache for the system's branch: `CACHE/apk/<branch>`.
pub fn package_cache(system: &System) -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?
        .join("apk")
        .join(system.config.alpine.branch_dir()))
}

impl Pin {
    /// `$ENV`, or the pinned release from the cache (downloaded when missing, unless `offline`),
    /// verified against its SHA-256.
    pub fn get(&self, offline: bool) -> anyhow::Result<Tool> {
        if let Some(path) = std::env::var_os(self.env).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let sha256 =
                sha256_file(&path).with_context(|| format!("${}={}", self.env, path.display()))?;
            return Ok(Tool {
                path: fs::canonicalize(&path)?,
                sha256,
            });
        }
        let path = self.cached()?;
        if !path.exists() {
            if offline {
                bail!(
                    "--offline: {} {} is not in the cache ({}): build once without --offline",
                    self.name,
                    self.version,
                    path.display()
                );
            }
            self.download(&path)?;
        }
        let sha256 = sha256_file(&path)?;
        if sha256 != self.sha256 {
            bail!(
                "{}: SHA-256 is {sha256}, expected {} ({} {}); delete the file to download it again",
                path.display(),
                self.sha256,
                self.name,
                self.version
            );
        }
        Ok(Tool { path, sha256 })
    }

    /// Where the cache keeps it: `CACHE/<name>-<version>`.
    pub fn cached(&self) -> anyhow::Result<PathBuf> {
        Ok(cache_dir()?.join(format!("{}-{}", self.name, self.version)))
    }

    fn download(&self, dest: &Path) -> anyhow::Result<()> {
        let dir = dest.parent().expect("cache path has a parent");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!(
            "ramnas: downloading {} {} into {}",
            self.name,
            self.version,
            dir.display()
        );
        crate::host::atomic::replace(dest, |tmp| {
            let sh = Shell::new()?;
            let url = self.url;
            let result = if which::which("wget").is_ok() {
                cmd!(sh, "wget -q -O {tmp} {url}").run()
            } else {
                cmd!(sh, "curl -fsSL -o {tmp} {url}").run()
            };
            result.with_context(|| {
                format!("downloading {url} (needs wget or curl and internet access)")
            })?;
            let sha256 = sha256_file(tmp)?;
            if sha256 != self.sha256 {
                bail!(
                    "{url}: SHA-256 is {sha256}, expected {}; refusing to use it",
                    self.sha256
                );
            }
            Ok(fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))?)
        })
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    Ok(crate::build::manifest::Artifact::of(path)?.sha256)
}

/// Hash of everything the tree depends on: the two programs, the repositories (branch, mirror and the
/// extra ones), the keys, whether the default packages are in, the package list and its lock, setup.sh,
/// and the names, modes and contents of everything under root/.
pub fn inputs_hash(system: &System, tools: &Tools, source_date: u32) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(format!("tool {}\n", tools.make_rootfs.sha256));
    h.update(format!("apk {}\n", tools.apk.sha256));
    h.update(format!("source date day {}\n", source_date / 86400));
    for repo in system.repositories()? {
        h.update(format!("repository {repo}\n"));
        // A local repository changes without its name changing: its indexes say what it holds.
        if repo.starts_with('/') {
            for index in local_indexes(Path::new(&repo))? {
                h.update(format!("index {}\n", index.display()));
                h.update(Sha256::digest(
                    fs::read(&index).with_context(|| format!("reading {}", index.display()))?,
                ));
            }
        }
    }
    if let Some(keys) = system.keys_dir()? {
        h.update("keys\n");
        hash_tree(&keys, Path::new(""), &mut h)?;
    }
    h.update(format!(
        "default packages {}\n",
        system.config.alpine.default_packages
    ));
    for p in &system.packages {
        h.update(format!("package {p}\n"));
    }
    match fs::read(system.lock_path()) {
        Ok(lock) => h.update(lock),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => h.update("no lock\n"),
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", system.lock_path().display()))
        }
    }
    let script = system.setup_script();
    if script.exists() {
        let mode = fs::metadata(&script)?.mode();
        h.update(format!("setup.sh {mode:o}\n"));
        h.update(fs::read(&script).with_context(|| format!("reading {}", script.display()))?);
    }
    let skel = system.skel_dir();
    if skel.exists() {
        hash_tree(&skel, Path::new(""), &mut h)?;
    }
    Ok(hex(&h.finalize()))
}

/// `REPO/<arch>/APKINDEX.tar.gz` of a local repository, sorted.
fn local_indexes(repo: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = fs::read_dir(repo) else {
        return Ok(Vec::new());
    };
    let mut indexes: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("APKINDEX.tar.gz"))
        .filter(|p| p.is_file())
        .collect();
    indexes.sort();
    Ok(indexes)
}

fn hash_tree(root: &Path, rel: &Path, h: &mut Sha256) -> anyhow::Result<()> {
    let full = root.join(rel);
    let meta =
        fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
    h.update(format!("\n{:?} {:o}\n", rel, meta.mode()).as_bytes());
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.update(fs::read_link(&full)?.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        h.update(Sha256::digest(
            fs::read(&full).with_context(|| format!("reading {}", full.display()))?,
        ));
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&full)
            .with_context(|| format!("listing {}", full.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            hash_tree(root, &rel.join(name), h)?;
        }
    }
    Ok(())
}

/// How a tree is made.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Make it even when its inputs are unchanged.
    pub fresh: bool,
    /// Ignore the lock: resolve every package afresh (implies `fresh`).
    pub update: bool,
    /// Nothing from the network: only the package cache and local repositories.
    pub offline: bool,
    pub source_date: u32,
}

/// Makes `OUT/rootfs` unless it exists and was made from the same inputs (or `fresh`): the packages held
/// to system/packages.lock (unless `update`), the build dates the tools write into it clamped to
/// `source_date` ([`clamp_dates`]), and the lock rewritten from what it holds (with what changed
/// printed). Returns the tree's path. Must run as root.
pub fn ensure(
    system: &System,
    tools: &Tools,
    out: &Path,
    request: Request,
) -> anyhow::Result<PathBuf> {
    let tree = out.join("rootfs");
    let stamp = out.join("rootfs.inputs");
    let lock_path = system.lock_path();
    let old_lock = match Lock::load(&lock_path) {
        Err(err) if request.update => {
            eprintln!("    {err:#}: --update writes it afresh");
            None
        }
        loaded => loaded?,
    };
    let lock = if request.update {
        None
    } else {
        old_lock.clone()
    };
    let branch = system.config.alpine.branch_dir();
    let world = system.world();
    if let Some(lock) = &lock {
        if lock.branch != branch {
            bail!(
                "{}: resolved on Alpine {}, but {} says {branch}: `cargo xtask build --update` \
                 resolves the packages afresh",
                lock_path.display(),
                lock.branch,
                system.toml().display()
            );
        }
    }
    let inputs = inputs_hash(system, tools, request.source_date)?;
    let previous = fs::read_to_string(&stamp).unwrap_or_default();
    if !request.fresh && !request.update && tree.is_dir() && previous.trim() == inputs {
        eprintln!(
            "ramnas: the root tree is up to date ({}); --fresh rebuilds it",
            tree.display()
        );
        return Ok(tree);
    }
    if let Some(lock) = &lock {
        for why in lock.stale(&branch, &world) {
            eprintln!("    {}: {why}: updating the lock", lock_path.display());
        }
    }
    let cache = package_cache(system)?;
    if request.offline {
        check_offline(system, lock.as_ref(), &world, &cache)?;
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let new = out.join("rootfs.new");
    let made = make(system, tools, &new, lock.as_ref(), &world, &cache, request);
    give_to_invoking_user(cache.parent().unwrap_or(&cache))?;
    if let Err(err) = made {
        let _ = remove_tree(&new);
        return Err(err);
    }
    let _ = fs::remove_file(&stamp);
    remove_tree(&tree)?;
    fs::rename(&new, &tree)
        .with_context(|| format!("renaming {} to {}", new.display(), tree.display()))?;
    write_lock(system, &tree, old_lock.as_ref(), &world)?;
    let inputs = inputs_hash(system, tools, request.source_date)?;
    fs::write(&stamp, format!("{inputs}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(tree)
}

/// The tree at `dest`, held to `lock`: alpine-make-rootfs, once more without what only packages no longer
/// asked for needed, then apk's world as asked for and the dates clamped.
fn make(
    system: &System,
    tools: &Tools,
    dest: &Path,
    lock: Option<&Lock>,
    world: &[String],
    cache: &Path,
    request: Request,
) -> anyhow::Result<()> {
    let mut drop = BTreeSet::new();
    loop {
        let packages = match lock {
            Some(lock) => lock.pinned(world, &drop),
            None => world.to_vec(),
        };
        remove_tree(dest)?;
        run(system, tools, dest, &packages, cache, request.offline).map_err(|err| {
            let Some(_) = lock else { return err };
            let repos = system.repositories().unwrap_or_default().join(", ");
            err.context(format!(
                "installing the versions {} holds from {repos} (a branch's mirror keeps only the \
                 newest of each package; `cargo xtask build --update` resolves afresh)",
                system.lock_path().display()
            ))
        })?;
        let Some(lock) = lock.filter(|_| dest.join(APK_DB).exists()) else {
            lock::restore_world(dest, world, &packages)?;
            return clamp_dates(dest, request.source_date);
        };
        // Locked packages only the lock held, that nothing asked for needs any more: install again
        // without them.
        let asked: BTreeSet<&str> = world.iter().map(|e| lock::entry_name(e)).collect();
        let installed = lock::installed(dest)?;
        let unneeded: Vec<String> = lock::unneeded(dest, &installed, world, &packages)
            .into_iter()
            .filter(|n| lock.packages.contains_key(n) && !asked.contains(n.as_str()))
            .filter(|n| !drop.contains(n))
            .collect();
        if !unneeded.is_empty() {
            eprintln!(
                "    no longer needed: {}; installing again without them",
                unneeded.join(" ")
            );
            drop.extend(unneeded);
            continue;
        }
        let mismatches = lock.mismatches(&installed, &packages);
        if !mismatches.is_empty() {
            bail!(
                "the tree does not hold what {} says: {}; `cargo xtask build --update` accepts what the \
                 repositories have now",
                system.lock_path().display(),
                mismatches.join("; ")
            );
        }
        lock::restore_world(dest, world, &packages)?;
        return clamp_dates(dest, request.source_date);
    }
}

/// Writes system/packages.lock from the tree's apk database and prints what changed from `old`.
fn write_lock(
    system: &System,
    tree: &Path,
    old: Option<&Lock>,
    world: &[String],
) -> anyhow::Result<()> {
    let path = system.lock_path();
    if !tree.join(APK_DB).exists() {
        eprintln!(
            "ramnas: warning: {} has no apk database (/lib/apk/db/installed): {} not written \
             (alpine-make-rootfs removes the database from a tree without apk: apk-tools, or \
             alpine-base, in packages keeps it)",
            tree.display(),
            path.display()
        );
        return Ok(());
    }
    let new = Lock::of_tree(tree, &system.config.alpine.branch_dir(), world)?;
    if old == Some(&new) {
        return Ok(());
    }
    match old {
        Some(old) => {
            let diff = new.diff(old, &system.config.kernel.package());
            let rebuilt: Vec<String> = new
                .packages
                .iter()
                .filter(|(n, p)| {
                    old.packages
                        .get(*n)
                        .is_some_and(|o| o.version == p.version && o.checksum != p.checksum)
                })
                .map(|(n, p)| format!("~ {n} {} (rebuilt: another checksum)\n", p.version))
                .collect();
            let what = match (diff.is_empty(), rebuilt.is_empty()) {
                (true, true) => "the packages asked for\n".to_string(),
                (true, false) => rebuilt.concat(),
                (false, _) => format!("{diff}{}", rebuilt.concat()),
            };
            eprint!("    {}: updated:\n{what}", path.display());
        }
        None => eprintln!(
            "    {}: written ({} packages); commit it with the system",
            path.display(),
            new.packages.len()
        ),
    }
    crate::host::atomic::replace(&path, |tmp| {
        fs::write(tmp, new.to_text()).with_context(|| format!("writing {}", tmp.display()))?;
        give_to_invoking_user(tmp)
    })
}

/// With `--offline`: everything the build will install is at hand, or one error naming all that is not.
fn check_offline(
    system: &System,
    lock: Option<&Lock>,
    world: &[String],
    cache: &Path,
) -> anyhow::Result<()> {
    let Some(lock) = lock else {
        bail!(
            "--offline needs {}, which says what to install: build once without --offline",
            system.lock_path().display()
        );
    };
    let new: Vec<&String> = world
        .iter()
        .filter(|e| !lock.packages.contains_key(lock::entry_name(e)))
        .collect();
    if !new.is_empty() {
        bail!(
            "--offline: {} not in {}: build once without --offline to resolve and fetch them",
            new.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            system.lock_path().display()
        );
    }
    let cached: BTreeSet<String> = match fs::read_dir(cache) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    let mut local = BTreeSet::new();
    let mut missing = Vec::new();
    for repo in system.repositories()? {
        if repo.starts_with('/') {
            for index in local_indexes(Path::new(&repo))? {
                local.extend(index_packages(&index)?);
            }
        } else if !cached.contains(&cache_index_name(&repo)) {
            missing.push(format!("the index of {repo}"));
        }
    }
    for (name, p) in &lock.packages {
        let in_cache = cached.contains(&cache_package_name(name, &p.version, &p.checksum));
        if !in_cache && !local.contains(&(name.clone(), p.version.clone())) {
            missing.push(format!("{name} {}", p.version));
        }
    }
    if !missing.is_empty() {
        bail!(
            "--offline: not in the package cache {} nor in a local repository: {}; \
             build once without --offline to fetch them",
            cache.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The name apk gives a remote repository's index in its cache: `APKINDEX.<first 4 bytes of the SHA-1 of
/// the index's URL, `<repository>/x86_64/APKINDEX.tar.gz`, in hex>.tar.gz` (apk-tools 2.14's
/// `apk_repo_format_cache_index`; checked against a real cache).
fn cache_index_name(repo: &str) -> String {
    let sum = sha1::Sha1::digest(format!("{repo}/x86_64/APKINDEX.tar.gz").as_bytes());
    format!("APKINDEX.{}.tar.gz", hex(&sum[..4]))
}

/// The name apk gives a package in its cache: `<name>-<version>.<first 4 bytes of its checksum, in
/// hex>.apk`, the checksum being apk's `Q1` + base64 of a SHA-1 (checked against a real cache).
fn cache_package_name(name: &str, version: &str, checksum: &str) -> String {
    let sum = checksum
        .strip_prefix("Q1")
        .map(base64_decode)
        .unwrap_or_default();
    let head = if sum.len() >= 4 {
        hex(&sum[..4])
    } else {
        "?".to_string()
    };
    format!("{name}-{version}.{head}.apk")
}

/// Standard base64 (with `=` padding) to bytes; what is not base64 ends the data.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut n) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            break;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// (name, version) of every package a local APKINDEX.tar.gz lists.
fn index_packages(index: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let sh = Shell::new()?;
    let text = cmd!(sh, "tar -xzOf {index} APKINDEX")
        .quiet()
        .read()
        .with_context(|| {
            format!(
                "reading {} (an apk index: APKINDEX in a tar.gz)",
                index.display()
            )
        })?;
    Ok(crate::build::manifest::parse_apk_installed(&text)
        .into_iter()
        .collect())
}

/// The user (uid, gid) who ran this program through sudo, when it runs as root through sudo.
pub fn invoking_user() -> Option<(u32, u32)> {
    if !crate::host::is_root() {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// When run through sudo, gives `path` (and everything under it) back to the user who ran sudo.
pub fn give_to_invoking_user(path: &Path) -> anyhow::Result<()> {
    let Some((uid, gid)) = invoking_user() else {
        return Ok(());
    };
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to uid {uid}", path.display()))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            give_to_invoking_user(&entry?.path())?;
        }
    }
    Ok(())
}

/// Clamps the dates the tools write into the tree itself (not file times: the packer clamps those) to
/// `source_date`, so that a tree made on another day is the same: the day of the last password change in
/// `/etc/shadow` (`passwd -d root` writes today's). Day 0 would mean "change the password at the next
/// login", so with the default source date (1970) the field is emptied (no password ageing) instead.
pub fn clamp_dates(tree: &Path, source_date: u32) -> anyhow::Result<()> {
    let shadow = tree.join("etc/shadow");
    let text = match fs::read_to_string(&shadow) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", shadow.display())),
    };
    let clamped = clamp_shadow(&text, source_date / 86400);
    if clamped != text {
        fs::write(&shadow, clamped).with_context(|| format!("writing {}", shadow.display()))?;
    }
    Ok(())
}

/// /etc/shadow with every last-change day (the third field) after `day` set to `day`, or emptied when
/// `day` is 0.
fn clamp_shadow(text: &str, day: u32) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let mut fields: Vec<&str> = body.split(':').collect();
        let late = fields
            .get(2)
            .and_then(|f| f.parse::<u32>().ok())
            .is_some_and(|changed| changed > day);
        let clamped = if day == 0 {
            String::new()
        } else {
            day.to_string()
        };
        if late {
            fields[2] = &clamped;
        }
        out.push_str(&fields.join(":"));
        out.push_str(end);
    }
    out
}

fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// The variables alpine-make-rootfs v0.8.1 reads (its help, and INSTALL_HOST_PKGS): each is set from the
/// system definition or removed, so nothing of the caller's environment changes what it installs.
const TOOL_ENV: &[&str] = &[
    "ALPINE_BRANCH",
    "ALPINE_MIRROR",
    "APK",
    "APK_OPTS",
    "APK_TOOLS_URI",
    "APK_TOOLS_SHA256",
    "CLEANUP",
    "DEFAULT_PKGS",
    "FS_SKEL_CHOWN",
    "FS_SKEL_DIR",
    "INSTALL_HOST_PKGS",
    "KEYS_DIR",
    "PACKAGES",
    "REPOS_FILE",
    "SCRIPT_CHROOT",
    "TEMP_DIR",
    "TIMEZONE",
];

/// Runs alpine-make-rootfs into `dest`, its output streamed to the terminal: the pinned apk with the
/// package cache (and `--no-network` when `offline`), the repositories as a repositories file beside
/// `dest`, the keys directory, `packages` (the base packages among them: the build asks for those
/// itself), root/ and setup.sh, all from the system definition.
pub fn run(
    system: &System,
    tools: &Tools,
    dest: &Path,
    packages: &[String],
    cache: &Path,
    offline: bool,
) -> anyhow::Result<()> {
    // Installing a kernel package triggers mkinitfs; we make our own initramfs.
    let conf_dir = dest.join("etc/mkinitfs");
    fs::create_dir_all(&conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    let mut conf = fs::File::create(conf_dir.join("mkinitfs.conf"))?;
    conf.write_all(b"disable_trigger=yes\n")?;
    drop(conf);

    let dest = absolute(dest)?;
    let repos_file = dest.with_extension("repositories");
    let mut repos = system.repositories()?.join("\n");
    repos.push('\n');
    fs::write(&repos_file, repos).with_context(|| format!("writing {}", repos_file.display()))?;
    let sh = Shell::new()?;
    let tool_path = &tools.make_rootfs.path;
    let mut c = cmd!(sh, "{tool_path} {dest}");
    for var in TOOL_ENV {
        c = c.env_remove(var);
    }
    let cache = absolute(cache)?;
    if cache.to_string_lossy().contains(char::is_whitespace) {
        // alpine-make-rootfs splits APK_OPTS at spaces.
        bail!(
            "the package cache {} has a space in its path, which alpine-make-rootfs cannot pass to apk: \
             set XDG_CACHE_HOME to a directory without one",
            cache.display()
        );
    }
    let mut apk_opts = format!("--no-progress --cache-dir {}", cache.display());
    if offline {
        apk_opts.push_str(" --no-network");
    }
    c = c
        .env("ALPINE_BRANCH", system.config.alpine.branch_dir())
        .env("ALPINE_MIRROR", &system.config.alpine.mirror)
        .env("REPOS_FILE", &repos_file)
        .env("APK", &tools.apk.path)
        .env("APK_OPTS", apk_opts)
        .env("DEFAULT_PKGS", "no")
        .env("INSTALL_HOST_PKGS", "no")
        .env("PACKAGES", packages.join(" "));
    // Without keys of its own, alpine-make-rootfs would trust the host's /etc/apk/keys where it exists (an
    // Alpine host); a directory that does not exist makes it use the Alpine keys it carries, on any host.
    let keys = system
        .keys_dir()?
        .unwrap_or_else(|| dest.with_extension("no-keys"));
    c = c.env("KEYS_DIR", keys);
    let skel = absolute(&system.skel_dir())?;
    if skel.is_dir() {
        c = c.env("FS_SKEL_DIR", skel).env("FS_SKEL_CHOWN", "root:root");
    }
    let script = absolute(&system.setup_script())?;
    if script.is_file() {
        c = c.env("SCRIPT_CHROOT", "yes").arg(script);
    }
    let ran = c.run().with_context(|| {
        format!(
            "alpine-make-rootfs ({}) failed",
            tools.make_rootfs.path.display()
        )
    });
    let _ = fs::remove_file(&repos_file);
    ran
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cached_package_names_are_apks() {
        // musl as a real apk-tools 2.14 cached it (its C: is the SHA-1 of its control stream).
        assert_eq!(
            super::cache_package_name("musl", "1.2.5-r21", "Q10Fp17BPhp6i6tWznzT3Hm9cn5pg="),
            "musl-1.2.5-r21.d05a75ec.apk"
        );
    }

    #[test]
    fn cached_index_names_are_apks() {
        // As a real apk-tools 2.14 named them in its --cache-dir, for a mirror on 127.0.0.1:18123.
        assert_eq!(
            super::cache_index_name("http://127.0.0.1:18123/v3.23/main"),
            "APKINDEX.7854d7ee.tar.gz"
        );
        assert_eq!(
            super::cache_index_name("http://127.0.0.1:18123/v3.23/community"),
            "APKINDEX.97347c09.tar.gz"
        );
    }

    #[test]
    fn shadow_dates_are_clamped() {
        let shadow = "root::20788:0:::::\nshare:!:19000:0:99999:7:::\nodd line\n";
        assert_eq!(
            super::clamp_shadow(shadow, 0),
            "root:::0:::::\nshare:!::0:99999:7:::\nodd line\n"
        );
        assert_eq!(
            super::clamp_shadow(shadow, 19675),
            "root::19675:0:::::\nshare:!:19000:0:99999:7:::\nodd line\n"
        );
        assert_eq!(super::clamp_shadow("root:*::0:::::", 0), "root:*::0:::::");
    }
}
