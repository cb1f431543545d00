//! alpine-make-rootfs: fetch, verify, run — the only Alpine-specific seam.
//!
//! The tool is pinned by version and SHA-256, downloaded once into the cache
//! (`$XDG_CACHE_HOME/ramnas`, else `~/.cache/ramnas`) and verified before every use. `$ALPINE_MAKE_ROOTFS`
//! names another copy to run instead (unverified: it is the caller's choice; the tests use it).
//!
//! The tree lives in `OUT/rootfs` (root-owned: remove it with `sudo rm -rf OUT/rootfs`), next to
//! `OUT/rootfs.inputs`, the hash of everything the tree was made from. When that hash is unchanged the
//! tree is reused.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::config::System;
use crate::manifest::hex;

pub const VERSION: &str = "v0.8.1";
pub const SHA256: &str = "b4cd8202fa04eae8b4abae22708638cf00ab5826d8b919bc86932fc0cb269f00";
const URL: &str =
    "https://raw.githubusercontent.com/alpinelinux/alpine-make-rootfs/v0.8.1/alpine-make-rootfs";
/// Environment variable naming an alpine-make-rootfs to run instead of the pinned one.
pub const ENV_OVERRIDE: &str = "ALPINE_MAKE_ROOTFS";

/// An alpine-make-rootfs ready to run.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    /// SHA-256 of the script: part of the tree's inputs.
    pub sha256: String,
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

/// The tool to run: `$ALPINE_MAKE_ROOTFS`, or the pinned release from the cache (downloaded when
/// missing), verified against its SHA-256.
pub fn tool() -> anyhow::Result<Tool> {
    if let Some(path) = std::env::var_os(ENV_OVERRIDE).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let sha256 =
            sha256_file(&path).with_context(|| format!("${ENV_OVERRIDE}={}", path.display()))?;
        return Ok(Tool {
            path: fs::canonicalize(&path)?,
            sha256,
        });
    }
    let path = cache_dir()?.join(format!("alpine-make-rootfs-{VERSION}"));
    if !path.exists() {
        download(&path)?;
    }
    let sha256 = sha256_file(&path)?;
    if sha256 != SHA256 {
        bail!(
            "{}: SHA-256 is {sha256}, expected {SHA256} (alpine-make-rootfs {VERSION}); \
             delete the file to download it again",
            path.display()
        );
    }
    Ok(Tool { path, sha256 })
}

fn download(dest: &Path) -> anyhow::Result<()> {
    let dir = dest.parent().expect("cache path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".download");
    let tmp = PathBuf::from(tmp);
    eprintln!(
        "ramnas: downloading alpine-make-rootfs {VERSION} into {}",
        dir.display()
    );
    let sh = Shell::new()?;
    let result = if which::which("wget").is_ok() {
        cmd!(sh, "wget -q -O {tmp} {URL}").run()
    } else {
        cmd!(sh, "curl -fsSL -o {tmp} {URL}").run()
    };
    result
        .with_context(|| format!("downloading {URL} (needs wget or curl and internet access)"))?;
    let sha256 = sha256_file(&tmp)?;
    if sha256 != SHA256 {
        let _ = fs::remove_file(&tmp);
        bail!("{URL}: SHA-256 is {sha256}, expected {SHA256}; refusing to use it");
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// Hash of everything the tree depends on: the tool, the repositories (branch, mirror and the extra ones),
/// the keys, whether the default packages are in, the package list, setup.sh, and the names, modes and
/// contents of everything under root/.
pub fn inputs_hash(system: &System, tool: &Tool, source_date: u32) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(format!("tool {}\n", tool.sha256));
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

/// Makes `OUT/rootfs` unless it exists and was made from the same inputs (or `fresh`), with the build
/// dates the tools write into it clamped to `source_date` ([`clamp_dates`]). Returns the tree's path. Must
/// run as root.
pub fn ensure(
    system: &System,
    tool: &Tool,
    out: &Path,
    fresh: bool,
    source_date: u32,
) -> anyhow::Result<PathBuf> {
    let tree = out.join("rootfs");
    let stamp = out.join("rootfs.inputs");
    let inputs = inputs_hash(system, tool, source_date)?;
    let previous = fs::read_to_string(&stamp).unwrap_or_default();
    if !fresh && tree.is_dir() && previous.trim() == inputs {
        eprintln!(
            "ramnas: the root tree is up to date ({}); --fresh rebuilds it",
            tree.display()
        );
        return Ok(tree);
    }
    let new = out.join("rootfs.new");
    remove_tree(&new)?;
    if let Err(err) = run(system, tool, &new).and_then(|()| clamp_dates(&new, source_date)) {
        let _ = remove_tree(&new);
        return Err(err);
    }
    let _ = fs::remove_file(&stamp);
    remove_tree(&tree)?;
    fs::rename(&new, &tree)
        .with_context(|| format!("renaming {} to {}", new.display(), tree.display()))?;
    fs::write(&stamp, format!("{inputs}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(tree)
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

/// Runs alpine-make-rootfs into `dest`, its output streamed to the terminal: the repositories as a
/// repositories file beside `dest`, the keys directory, the default packages, the packages, root/ and
/// setup.sh, all from the system definition.
pub fn run(system: &System, tool: &Tool, dest: &Path) -> anyhow::Result<()> {
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
    let tool_path = &tool.path;
    let mut c = cmd!(sh, "{tool_path} {dest}");
    for var in TOOL_ENV {
        c = c.env_remove(var);
    }
    c = c
        .env("ALPINE_BRANCH", system.config.alpine.branch_dir())
        .env("ALPINE_MIRROR", &system.config.alpine.mirror)
        .env("REPOS_FILE", &repos_file)
        .env("PACKAGES", system.packages.join(" "));
    // Without keys of its own, alpine-make-rootfs would trust the host's /etc/apk/keys where it exists (an
    // Alpine host); a directory that does not exist makes it use the Alpine keys it carries, on any host.
    let keys = system
        .keys_dir()?
        .unwrap_or_else(|| dest.with_extension("no-keys"));
    c = c.env("KEYS_DIR", keys);
    if !system.config.alpine.default_packages {
        c = c.env("DEFAULT_PKGS", "no");
    }
    let skel = absolute(&system.skel_dir())?;
    if skel.is_dir() {
        c = c.env("FS_SKEL_DIR", skel).env("FS_SKEL_CHOWN", "root:root");
    }
    let script = absolute(&system.setup_script())?;
    if script.is_file() {
        c = c.env("SCRIPT_CHROOT", "yes").arg(script);
    }
    let ran = c
        .run()
        .with_context(|| format!("alpine-make-rootfs ({}) failed", tool.path.display()));
    let _ = fs::remove_file(&repos_file);
    ran
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

#[cfg(test)]
mod tests {
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
