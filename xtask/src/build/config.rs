//! system/system.toml and system/packages: parsed, defaulted, validated.
//!
//! Every key of system.toml is optional; the defaults below are the documentation:
//!
//! ```toml
//! [alpine]
//! branch = "latest-stable"                          # or "v3.22", "edge"; "3.22" means "v3.22"
//! mirror = "https://dl-cdn.alpinelinux.org/alpine"  # a URL, or a local directory relative to system/
//! repositories = []                                 # more apk repositories after the mirror's main
//!                                                   # and community: URLs, or directories relative
//!                                                   # to system/
//! keys = "…"                                        # the directory of the *.pub keys apk trusts,
//!                                                   # relative to system/, instead of Alpine's own
//! default_packages = true                           # alpine-make-rootfs's base packages too
//!
//! # What gets installed is pinned by DIR/packages.lock (see `lock`), which the build writes.
//!
//! [kernel]
//! flavour = "lts"                                   # /boot/vmlinuz-<flavour> becomes OUT/vmlinuz
//! package = "linux-<flavour>"                       # the package installing it (not needed for a
//!                                                   # kernel in root/boot)
//! cmdline = "console=tty0 console=ttyS0,115200 panic=10"
//!
//! [initramfs]
//! compression = "zstd"                              # zstd, xz, gzip or none
//!
//! [access]
//! authorized_keys = "…"                             # root's ssh keys, relative to system/; unset:
//!                                                   # the building user's ~/.ssh/*.pub
//! ```
//!
//! An unknown key is an error naming it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::build::compress::Compression;

/// The whole system definition: system.toml plus the package list.
#[derive(Debug, Clone)]
pub struct System {
    pub dir: PathBuf,
    pub config: Config,
    pub packages: Vec<String>,
}

impl System {
    /// Reads `DIR/system.toml` (optional) and `DIR/packages` (required).
    pub fn load(dir: &Path) -> anyhow::Result<System> {
        if !dir.is_dir() {
            bail!(
                "{}: no such system directory (expected packages, setup.sh, root/, system.toml)",
                dir.display()
            );
        }
        let config = Config::load(&dir.join("system.toml"))?;
        let packages = load_packages(&dir.join("packages"))?;
        let system = System {
            dir: dir.to_path_buf(),
            config,
            packages,
        };
        system.repositories().with_context(|| {
            format!("{}: invalid [alpine] repositories", system.toml().display())
        })?;
        system.keys_dir()?;
        Ok(system)
    }

    /// `DIR/system.toml`.
    pub fn toml(&self) -> PathBuf {
        self.dir.join("system.toml")
    }

    /// apk's repositories, one a line as /etc/apk/repositories holds them: the mirror's main and community,
    /// then `alpine.repositories`, local ones (and a local mirror) resolved against the system directory. A
    /// repository that is neither an http(s) URL nor an existing directory is an error naming it.
    pub fn repositories(&self) -> anyhow::Result<Vec<String>> {
        let alpine = &self.config.alpine;
        let mirror = if alpine.mirror.contains("://") {
            alpine.mirror.trim_end_matches('/').to_string()
        } else {
            self.local_dir(
                &alpine.mirror,
                &format!("alpine.mirror {:?}", alpine.mirror),
                "a URL, or a local mirror: <branch>/main/<arch>/APKINDEX.tar.gz and the packages",
            )?
        };
        let mut list = vec![
            format!("{mirror}/{}/main", alpine.branch_dir()),
            format!("{mirror}/{}/community", alpine.branch_dir()),
        ];
        for repo in &alpine.repositories {
            if repo.starts_with("http://") || repo.starts_with("https://") {
                list.push(repo.clone());
                continue;
            }
            if repo.contains("://") || repo.is_empty() || repo.contains(char::is_whitespace) {
                bail!("{repo:?} is neither an http(s) URL nor a directory");
            }
            list.push(self.local_dir(
                repo,
                &format!("{repo:?}"),
                "a local repository: its <arch>/APKINDEX.tar.gz and packages",
            )?);
        }
        Ok(list)
    }

    /// `path` resolved against the system directory, as an absolute path; not a directory is an error
    /// naming `what` and saying what it should hold (`hint`).
    fn local_dir(&self, path: &str, what: &str, hint: &str) -> anyhow::Result<String> {
        let dir = self.dir.join(path);
        if path.is_empty() || !dir.is_dir() {
            bail!("{what}: {} is not a directory ({hint})", dir.display());
        }
        Ok(std::path::absolute(&dir)?.display().to_string())
    }

    /// The configured keys directory, resolved and checked to hold `*.pub` keys.
    pub fn keys_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        let Some(keys) = &self.config.alpine.keys else {
            return Ok(None);
        };
        let dir = self.dir.join(keys);
        let has_key = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".pub"))
            })
            .unwrap_or(false);
        if !has_key {
            bail!(
                "{}: alpine.keys = {:?}: {} holds no *.pub key (the public keys that sign your \
                 repositories, and Alpine's own when the mirror is Alpine's)",
                self.toml().display(),
                keys.display(),
                dir.display()
            );
        }
        Ok(Some(std::path::absolute(&dir)?))
    }

    /// Every default and no packages: for packing a `--base` tree without a system directory.
    pub fn defaults(dir: &Path) -> System {
        System {
            dir: dir.to_path_buf(),
            config: Config::default(),
            packages: Vec::new(),
        }
    }

    /// `DIR/packages.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(crate::build::lock::FILE_NAME)
    }

    /// What apk is asked to install: alpine-make-rootfs's base packages (unless
    /// `alpine.default_packages = false`), then `packages`.
    pub fn world(&self) -> Vec<String> {
        let mut world: Vec<String> = Vec::new();
        if self.config.alpine.default_packages {
            world.extend(
                crate::build::rootfs::BASE_PACKAGES
                    .iter()
                    .map(|p| p.to_string()),
            );
        }
        for p in &self.packages {
            if !world.contains(p) {
                world.push(p.clone());
            }
        }
        world
    }

    pub fn setup_script(&self) -> PathBuf {
        self.dir.join("setup.sh")
    }

    pub fn skel_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The configured authorized-keys file, resolved against the system directory.
    pub fn authorized_keys(&self) -> Option<PathBuf> {
        self.config
            .access
            .authorized_keys
            .as_ref()
            .map(|p| self.dir.join(p))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub alpine: Alpine,
    pub kernel: Kernel,
    pub initramfs: Initramfs,
    pub access: Access,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// File of ssh public keys for root, relative to the system directory; unset means the public keys
    /// of the user running the build (`~/.ssh/*.pub`).
    pub authorized_keys: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alpine {
    /// Alpine branch: `latest-stable`, `edge`, or `vX.Y`.
    pub branch: String,
    /// Base URL of the Alpine mirror, or a local directory laid out like one.
    pub mirror: String,
    /// More apk repositories, after the mirror's main and community: URLs, or directories relative to the
    /// system directory (the place for your own packages).
    pub repositories: Vec<String>,
    /// Directory of the public keys (`*.pub`) apk trusts, relative to the system directory, instead of
    /// Alpine's own (which alpine-make-rootfs carries): put Alpine's keys in it too when the mirror is
    /// Alpine's.
    pub keys: Option<PathBuf>,
    /// Also install alpine-make-rootfs's base packages (alpine-baselayout busybox busybox-suid musl-utils).
    pub default_packages: bool,
}

impl Default for Alpine {
    fn default() -> Self {
        Alpine {
            branch: "latest-stable".to_string(),
            mirror: "https://dl-cdn.alpinelinux.org/alpine".to_string(),
            repositories: Vec::new(),
            keys: None,
            default_packages: true,
        }
    }
}

impl Kernel {
    /// The kernel's package: `package`, or Alpine's `linux-<flavour>`.
    pub fn package(&self) -> String {
        self.package
            .clone()
            .unwrap_or_else(|| format!("linux-{}", self.flavour))
    }
}

impl Alpine {
    /// The branch as a directory of the mirror: `3.22` is `v3.22`, as alpine-make-rootfs reads it.
    pub fn branch_dir(&self) -> String {
        if self.branch.starts_with(|c: char| c.is_ascii_digit()) {
            format!("v{}", self.branch)
        } else {
            self.branch.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kernel {
    /// Kernel flavour: `/boot/vmlinuz-<flavour>` is the kernel (or the only `/boot/vmlinuz-*`).
    pub flavour: String,
    /// The package that installs the kernel, when it is not Alpine's `linux-<flavour>` (your own, from
    /// `alpine.repositories`). A kernel in `root/boot` needs none.
    pub package: Option<String>,
    /// Kernel command line, written to OUT/cmdline.
    pub cmdline: String,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            flavour: "lts".to_string(),
            package: None,
            cmdline: "console=tty0 console=ttyS0,115200 panic=10".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Initramfs {
    /// Compression of OUT/initramfs; `--compression` overrides it.
    pub compression: Compression,
}

impl Default for Initramfs {
    fn default() -> Self {
        Initramfs {
            compression: Compression::Zstd,
        }
    }
}

impl Config {
    /// Reads system.toml; a missing file means every default.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Config::parse(&text)
            .with_context(|| format!("{}: invalid system configuration", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        if config.kernel.flavour.is_empty() || config.kernel.flavour.contains('/') {
            bail!(
                "kernel.flavour {:?} must be a non-empty name such as \"lts\"",
                config.kernel.flavour
            );
        }
        if config.kernel.cmdline.chars().any(char::is_control) {
            bail!("kernel.cmdline must be one line of printable characters (no tabs or control characters)");
        }
        Ok(config)
    }
}

/// Reads a package list: one package per line, `#` starts a comment, blank lines are ignored.
pub fn load_packages(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_packages(&text).map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", path.display()))
}

/// Parses a package list; an error carries the 1-based line number.
pub fn parse_packages(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut packages = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().count() > 1 {
            return Err((i + 1, format!("{line:?}: one package per line")));
        }
        // apk names: letters, digits and `+-._`, optionally with a constraint such as `foo=1.2-r0`,
        // `foo>=1`, `foo~1.2` or a repository tag `foo@testing`.
        let name_end = line.find(['=', '<', '>', '~', '@']).unwrap_or(line.len());
        let name = &line[..name_end];
        let name_ok = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c));
        let rest_ok = line[name_end..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._=<>~@".contains(c));
        if !name_ok || !rest_ok {
            return Err((i + 1, format!("{line:?} is not an apk package name")));
        }
        packages.push(line.to_string());
    }
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_comments_and_blanks() {
        let text =
            "# base\nalpine-base\n\n  linux-lts   # kernel\nopenssh=9.9_p2-r0\nzfs@community\n";
        assert_eq!(
            parse_packages(text).unwrap(),
            vec![
                "alpine-base",
                "linux-lts",
                "openssh=9.9_p2-r0",
                "zfs@community"
            ]
        );
    }

    #[test]
    fn packages_malformed_lines() {
        assert_eq!(
            parse_packages("ok\nalpine-base linux-lts\n").unwrap_err().0,
            2
        );
        assert_eq!(parse_packages("a\nb\n$(reboot)\n").unwrap_err().0, 3);
        assert_eq!(parse_packages("-rf\n").unwrap_err().0, 1);
    }

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.initramfs.compression, Compression::Zstd);
        let config =
            Config::parse("[alpine]\nbranch = \"v3.22\"\n[initramfs]\ncompression = \"xz\"\n")
                .unwrap();
        assert_eq!(config.alpine.branch, "v3.22");
        assert_eq!(config.alpine.mirror, Alpine::default().mirror);
        assert_eq!(config.initramfs.compression, Compression::Xz);
        let err = format!(
            "{:#}",
            Config::parse("[kernel]\nflavor = \"lts\"\n").unwrap_err()
        );
        assert!(err.contains("flavor"), "{err}");
        let err = format!("{:#}", Config::parse("colour = 1\n").unwrap_err());
        assert!(err.contains("colour"), "{err}");
    }

    /// Property: any system.toml and packages file parses or gives an error (with a line number inside the
    /// file for the package list), never a panic.
    #[test]
    fn any_system_toml_and_package_list_parse_or_say_why_not() {
        let toml = include_str!("../../../system/system.toml");
        crate::fuzz::run_text(2000, &[toml], |t| {
            if let Err(err) = Config::parse(t) {
                assert!(!err.to_string().is_empty());
            }
        });
        let packages = include_str!("../../../system/packages");
        crate::fuzz::run_text(5000, &[packages], |t| {
            if let Err((line, msg)) = parse_packages(t) {
                assert!(line >= 1 && line <= t.lines().count(), "{line}: {msg}");
            }
        });
    }
}
