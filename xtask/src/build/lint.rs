//! The system/ lint: every problem `cargo xtask check` (and `build`, before its long step) finds in a
//! system definition, each with its file and line.
//!
//! Checks, in the order a build would trip over them: the package list (malformed lines, duplicates, the
//! kernel and ZFS module for the configured flavour, a `linux-firmware-*` provider), system.toml (parse
//! errors, unknown keys), setup.sh (present, executable, CRLF, `sh -n`, shellcheck), and root/ (no private
//! key, password hash or committed authorized_keys; its scripts free of CRLF, `sh -n` and shellcheck clean).

use std::{
    collections::BTreeMap,
    fmt, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use regex::Regex;
use xshell::{cmd, Shell};

use crate::build::config;

/// One thing wrong, at a file and (when known) a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem in the system definition at `dir`; empty when it is fine.
pub fn system(dir: &Path) -> Vec<Problem> {
    let mut lint = Lint::default();
    if !dir.is_dir() {
        lint.add(dir, None, "no such system directory");
        return lint.problems;
    }
    let config = lint.config(&dir.join("system.toml"));
    lint.packages(&dir.join("packages"), config.as_ref());
    lint.setup_script(&dir.join("setup.sh"));
    lint.root(&dir.join("root"));
    lint.scripts();
    lint.problems
}

#[derive(Default)]
struct Lint {
    problems: Vec<Problem>,
    /// Shell scripts found on the way, checked together at the end.
    scripts: Vec<PathBuf>,
}

impl Lint {
    fn add(&mut self, file: &Path, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn config(&mut self, path: &Path) -> Option<config::Config> {
        match config::Config::load(path) {
            Ok(config) => Some(config),
            Err(err) => {
                let text = format!("{:#}", err.root_cause());
                let line = Regex::new(r"line (\d+)")
                    .unwrap()
                    .captures(&text)
                    .and_then(|c| c[1].parse().ok());
                // toml's message ends with the explanation, after the quoted source line.
                let reason = text
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "))
                    .unwrap_or(&text);
                let message = format!("invalid system configuration: {reason}");
                self.add(path, line, message);
                None
            }
        }
    }

    fn packages(&mut self, path: &Path, config: Option<&config::Config>) {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                return self.add(path, None, format!("cannot read the package list: {err}"))
            }
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            match config::parse_packages(line) {
                Err((_, message)) => self.add(path, Some(line_no), message),
                Ok(found) => {
                    for package in found {
                        let name = package_name(&package).to_string();
                        if let Some(first) = seen.get(&name) {
                            self.add(
                                path,
                                Some(line_no),
                                format!("{name} is listed twice (first on line {first})"),
                            );
                        } else {
                            seen.insert(name, line_no);
                        }
                    }
                }
            }
        }
        // Alpine's kernels (linux-<flavour>) pull in all of linux-firmware unless a provider is listed, and
        // its zfs needs the module package of the same flavour. The user's own kernel (kernel.package, or
        // one in root/boot) is theirs to know.
        let mut alpine_kernel = true;
        if let Some(config) = config {
            let flavour = &config.kernel.flavour;
            let kernel = config.kernel.package();
            let in_root = has_root_kernel(&path.with_file_name("root"));
            if !seen.contains_key(&kernel) && !in_root {
                self.add(
                    path,
                    None,
                    format!(
                        "no {kernel}: list it (kernel.package in system.toml; by default linux-<flavour>, \
                         the flavour being {flavour:?}), or put the kernel at root/boot/vmlinuz-{flavour}"
                    ),
                );
            }
            alpine_kernel =
                kernel == format!("linux-{flavour}") && (seen.contains_key(&kernel) || !in_root);
            let zfs_module = format!("zfs-{flavour}");
            if alpine_kernel && seen.contains_key("zfs") && !seen.contains_key(&zfs_module) {
                self.add(
                    path,
                    seen.get("zfs").copied(),
                    format!("zfs needs its kernel module for the {flavour:?} flavour: list {zfs_module}"),
                );
            }
        }
        if alpine_kernel && !seen.keys().any(|name| name.starts_with("linux-firmware")) {
            self.add(
                path,
                None,
                "no linux-firmware-* package: apk would install all of linux-firmware (hundreds of MB); \
                 list linux-firmware-none or the folders your hardware needs",
            );
        }
    }

    fn setup_script(&mut self, path: &Path) {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(_) => {
                return self.add(path, None, "missing: the build runs it inside the new tree")
            }
        };
        if meta.permissions().mode() & 0o111 == 0 {
            self.add(path, None, "not executable: chmod +x it");
        }
        self.scripts.push(path.to_path_buf());
    }

    fn root(&mut self, root: &Path) {
        if !root.is_dir() {
            return;
        }
        let mut files = Vec::new();
        walk(root, &mut files);
        let private_key = Regex::new(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----").unwrap();
        let hash = Regex::new(
            r"\$(1|2[abxy]|5|6|md5|sha1)\$[./A-Za-z0-9=]{1,32}\$[./A-Za-z0-9]{20,}|\$(y|gy|7)\$[./A-Za-z0-9$]{30,}",
        )
        .unwrap();
        for file in files {
            if file.file_name().is_some_and(|n| n == "authorized_keys") {
                self.add(
                    &file,
                    None,
                    "authorized_keys is added at build time from the configured keys; do not commit one",
                );
            }
            let Ok(bytes) = fs::read(&file) else {
                self.add(&file, None, "cannot read");
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                if private_key.is_match(line) {
                    self.add(
                        &file,
                        Some(i + 1),
                        "a private key: never put one under root/",
                    );
                }
                if hash.is_match(line) {
                    self.add(
                        &file,
                        Some(i + 1),
                        "a password hash: never put one under root/ (log in with ssh keys)",
                    );
                }
            }
            if is_script(&bytes) {
                self.scripts.push(file);
            }
        }
    }

    /// CRLF, `sh -n` (busybox's sh when present: the system runs busybox) and shellcheck, for every script.
    fn scripts(&mut self) {
        let mut scripts = std::mem::take(&mut self.scripts);
        let sh = Shell::new().expect("a shell context");
        let busybox = which::which("busybox").is_ok();
        let line_re = Regex::new(r"(?:line |:)\s*(\d+):").unwrap();
        let mut crlf = Vec::new();
        for script in &scripts {
            let Ok(bytes) = fs::read(script) else {
                continue;
            };
            if let Some(i) = bytes
                .split(|&b| b == b'\n')
                .position(|l| l.ends_with(b"\r"))
            {
                self.add(
                    script,
                    Some(i + 1),
                    "CRLF line endings: convert to LF (dos2unix)",
                );
                crlf.push(script.clone());
                continue;
            }
            let out = if busybox {
                cmd!(sh, "busybox sh -n {script}")
                    .quiet()
                    .ignore_status()
                    .output()
            } else {
                cmd!(sh, "sh -n {script}").quiet().ignore_status().output()
            };
            if let Ok(out) = out {
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    let line = line_re.captures(&err).and_then(|c| c[1].parse().ok());
                    self.add(script, line, format!("sh -n: {err}"));
                }
            }
        }
        // shellcheck only repeats the CRLF finding, line by line.
        scripts.retain(|s| !crlf.contains(s));
        if which::which("shellcheck").is_err() || scripts.is_empty() {
            return;
        }
        let out = cmd!(sh, "shellcheck --format=gcc --shell=sh {scripts...}")
            .quiet()
            .ignore_status()
            .output();
        let Ok(out) = out else { return };
        let gcc = Regex::new(r"^(.*):(\d+):\d+: (\w+): (.*)$").unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(c) = gcc.captures(line) {
                self.add(
                    Path::new(&c[1]),
                    c[2].parse().ok(),
                    format!("shellcheck {}: {}", &c[3], &c[4]),
                );
            }
        }
    }
}

/// Whether a system's `root/boot` carries a kernel (`vmlinuz-*`), which the build takes like a package's.
fn has_root_kernel(root: &Path) -> bool {
    fs::read_dir(root.join("boot")).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    })
}

/// The package name without a version constraint or repository tag.
fn package_name(package: &str) -> &str {
    let end = package
        .find(['=', '<', '>', '~', '@'])
        .unwrap_or(package.len());
    &package[..end]
}

/// A file starting with a `#!` line for a POSIX shell or openrc-run.
fn is_script(bytes: &[u8]) -> bool {
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = String::from_utf8_lossy(first);
    first.starts_with("#!")
        && ["/sh", "/ash", "/dash", "openrc-run", "env sh"]
            .iter()
            .any(|s| first.trim_end().ends_with(s) || first.contains(&format!("{s} ")))
}

/// Regular files under `dir`, sorted (symlinks are not followed).
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&entry.path(), files);
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_recognised_by_their_first_line() {
        assert!(is_script(b"#!/bin/sh\necho\n"));
        assert!(is_script(b"#!/sbin/openrc-run\n"));
        assert!(is_script(b"#!/bin/sh -e\n"));
        assert!(!is_script(b"#!/usr/bin/python3\n"));
        assert!(!is_script(b"PermitRootLogin no\n"));
    }

    #[test]
    fn package_names_lose_their_constraints() {
        assert_eq!(package_name("zfs@community"), "zfs");
        assert_eq!(package_name("openssh=9.9_p2-r0"), "openssh");
        assert_eq!(package_name("linux-lts"), "linux-lts");
    }
}
