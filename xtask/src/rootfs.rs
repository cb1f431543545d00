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

/// Hash of everything the tree depends on: the tool, the Alpine branch and mirror, the package list,
/// setup.sh, and the names, modes and contents of everything under root/.
pub fn inputs_hash(system: &System, tool: &Tool) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(format!("tool {}\n", tool.sha256));
    h.update(format!(
        "branch {}\nmirror {}\n",
        system.config.alpine.branch, system.config.alpine.mirror
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

/// Makes `OUT/rootfs` unless it exists and was made from the same inputs (or `fresh`).
/// Returns the tree's path. Must run as root.
pub fn ensure(system: &System, tool: &Tool, out: &Path, fresh: bool) -> anyhow::Result<PathBuf> {
    let tree = out.join("rootfs");
    let stamp = out.join("rootfs.inputs");
    let inputs = inputs_hash(system, tool)?;
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
    if let Err(err) = run(system, tool, &new) {
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

fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs alpine-make-rootfs into `dest`, its output streamed to the terminal.
pub fn run(system: &System, tool: &Tool, dest: &Path) -> anyhow::Result<()> {
    // Installing a kernel package triggers mkinitfs; we make our own initramfs.
    let conf_dir = dest.join("etc/mkinitfs");
    fs::create_dir_all(&conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    let mut conf = fs::File::create(conf_dir.join("mkinitfs.conf"))?;
    conf.write_all(b"disable_trigger=yes\n")?;
    drop(conf);

    let dest = absolute(dest)?;
    let sh = Shell::new()?;
    let tool_path = &tool.path;
    let mut c = cmd!(sh, "{tool_path} {dest}")
        .env("ALPINE_BRANCH", &system.config.alpine.branch)
        .env("ALPINE_MIRROR", &system.config.alpine.mirror)
        .env("PACKAGES", system.packages.join(" "));
    let skel = absolute(&system.skel_dir())?;
    if skel.is_dir() {
        c = c.env("FS_SKEL_DIR", skel).env("FS_SKEL_CHOWN", "root:root");
    }
    let script = absolute(&system.setup_script())?;
    if script.is_file() {
        c = c.env("SCRIPT_CHROOT", "yes").arg(script);
    }
    c.run()
        .with_context(|| format!("alpine-make-rootfs ({}) failed", tool.path.display()))?;
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
