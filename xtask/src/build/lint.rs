//! The system/ lint: every problem `cargo xtask check` (and `build`, before its long step) finds in a
//! system definition, each with its file and line.
//!
//! Checks, in the order a build would trip over them: the package list (malformed lines, duplicates, the
//! kernel and ZFS module for the configured flavour, a `linux-firmware-*` provider), system.toml (parse
//! errors, unknown keys), setup.sh (present, executable, CRLF, `sh -n`, shellcheck), and root/ (no private
//! key, password hash or committed authorized_keys; its scripts free of CRLF, `sh -n` and shellcheck clean).
//!
//! Warnings are said but fail nothing: setup.sh making a user or group without a fixed id (`moving_ids`).

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
    /// Said, but fails neither `check` nor `build`.
    pub warning: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        let warning = if self.warning { "warning: " } else { "" };
        write!(f, ": {warning}{}", self.message)
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
    lint.tests(dir);
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
            warning: false,
        });
    }

    fn warn(&mut self, file: &Path, line: usize, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line: Some(line),
            message,
            warning: true,
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

    /// The system's own tests: laid out as `vm --test` reads them; the NAS's (sh) and the host's sh scripts
    /// go on to the script checks.
    fn tests(&mut self, system: &Path) {
        match crate::build::tests::Tests::read(system) {
            Err(err) => self.add(
                &system.join(crate::build::tests::DIR),
                None,
                format!("{err:#}"),
            ),
            Ok(None) => {}
            Ok(Some(tests)) => {
                self.scripts.extend(tests.prepare);
                for test in tests.tests {
                    let nas = test.side == crate::build::tests::Side::Nas;
                    if nas || fs::read(&test.path).is_ok_and(|b| is_script(&b)) {
                        self.scripts.push(test.path);
                    }
                }
            }
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
        if let Ok(text) = fs::read_to_string(path) {
            self.fixed_ids(path, &text);
        }
        self.scripts.push(path.to_path_buf());
    }

    /// Users and groups that setup.sh makes with whatever id is free: the tree is made afresh at every
    /// build, so such an id can move (a package update adds a user first), and files on the pool, which
    /// keep their numbers, would belong to someone else.
    fn fixed_ids(&mut self, path: &Path, script: &str) {
        for (line, moving) in moving_ids(script) {
            let (id, option) = match moving.option {
                'u' => ("uid", "-u UID"),
                _ => ("gid", "-g GID"),
            };
            let message = format!(
                "`{}` without a fixed {id}: the tree is made afresh at every build, and the next free {id} \
                 moves when a package update adds a user or group, handing the pool's files to someone \
                 else; add `{option}` (from 1000 up: Alpine's packages take ids below 1000)",
                moving.command
            );
            self.warn(path, line, message);
        }
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

/// A command that makes a user or a group and leaves its id to whatever is free.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MovingId {
    /// `adduser`, `addgroup` (busybox, as on Alpine), `useradd` or `groupadd` (shadow).
    command: &'static str,
    /// The option that would fix the id: `u` (uid) or `g` (gid).
    option: char,
}

/// Each command of `script` that makes a user or group without a fixed id, with the line it starts on.
fn moving_ids(script: &str) -> Vec<(usize, MovingId)> {
    sh_commands(script)
        .into_iter()
        .filter_map(|(line, words)| Some((line, moving_id(&words)?)))
        .collect()
}

/// Whether the simple command `words` makes a user or group whose id is the next free one.
///
/// Not when its id is given (`-u`/`--uid`, `-g`/`--gid`, in a cluster such as `-Su 1000` too), nor for the
/// busybox forms that add an existing user to a group (`adduser USER GROUP` with no option, `addgroup USER
/// GROUP`), nor without an operand. System users and groups (`-S`, `-r`) take a moving id as well.
fn moving_id(words: &[String]) -> Option<MovingId> {
    // Reserved words, assignments and the wrappers that run the next word as the command.
    let skip = [
        "if", "then", "else", "elif", "while", "until", "do", "!", "{", "busybox", "command",
        "exec",
    ];
    let mut words = words.iter().skip_while(|w| {
        skip.contains(&w.as_str()) || w.split_once('=').is_some_and(|(n, _)| is_name(n))
    });
    let name = words.next()?.rsplit('/').next()?;
    // The option fixing the id, and the short options that take a value (busybox's "h:g:s:G:DSHu:k:" and
    // "g:S"; shadow's useradd and groupadd).
    let (command, option, with_value) = match name {
        "adduser" => ("adduser", 'u', "hgsGuk"),
        "addgroup" => ("addgroup", 'g', "g"),
        "useradd" => ("useradd", 'u', "bcdefgGkKpusRPZ"),
        "groupadd" => ("groupadd", 'g', "gKpRP"),
        _ => return None,
    };
    let long = if option == 'u' { "uid" } else { "gid" };
    let (mut options, mut operands, mut fixed) = (0, 0, false);
    while let Some(word) = words.next() {
        if word == "--" {
            operands += words.by_ref().count();
        } else if let Some(name) = word.strip_prefix("--") {
            options += 1;
            if name == long {
                fixed = true;
                words.next();
            }
            fixed |= name.strip_prefix(long).is_some_and(|v| v.starts_with('='));
        } else if let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) {
            options += 1;
            for (i, c) in cluster.char_indices() {
                fixed |= c == option;
                if with_value.contains(c) {
                    if i + c.len_utf8() == cluster.len() {
                        words.next();
                    }
                    break;
                }
            }
        } else {
            operands += 1;
        }
    }
    let membership = match command {
        "adduser" => options == 0 && operands == 2,
        "addgroup" => operands == 2,
        _ => false,
    };
    (!fixed && operands > 0 && !membership).then_some(MovingId { command, option })
}

/// Whether `word` is a shell variable name (so `word=…` before a command is an assignment).
fn is_name(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The simple commands of a POSIX sh script: each one's words, quotes and backslashes taken off, with the
/// line it starts on. Just enough sh for a lint: quotes, backslash escapes and continued lines, comments,
/// and the operators between commands (newline `;` `&` `|` `(` `)`); a here-document's text is read as
/// commands.
fn sh_commands(script: &str) -> Vec<(usize, Vec<String>)> {
    let mut commands = Vec::new();
    let mut words: Vec<(usize, String)> = Vec::new();
    let mut word: Option<(usize, String)> = None;
    let mut line = 1;
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(escaped) => word
                    .get_or_insert_with(|| (line, String::new()))
                    .1
                    .push(escaped),
                None => {}
            },
            '\'' | '"' => {
                let text = &mut word.get_or_insert_with(|| (line, String::new())).1;
                while let Some(q) = chars.next() {
                    match q {
                        '\n' => line += 1,
                        _ if q == c => break,
                        '\\' if c == '"' => {
                            if let Some(next) = chars.next_if(|n| "$`\"\\\n".contains(*n)) {
                                if next == '\n' {
                                    line += 1;
                                    continue;
                                }
                                text.push(next);
                                continue;
                            }
                        }
                        _ => {}
                    }
                    text.push(q);
                }
            }
            '#' if word.is_none() => while chars.next_if(|&n| n != '\n').is_some() {},
            c if c.is_whitespace() || ";&|()".contains(c) => {
                words.extend(word.take());
                if (c == '\n' || !c.is_whitespace()) && !words.is_empty() {
                    let start = words[0].0;
                    commands.push((start, words.drain(..).map(|(_, w)| w).collect()));
                }
                if c == '\n' {
                    line += 1;
                }
            }
            c => word.get_or_insert_with(|| (line, String::new())).1.push(c),
        }
    }
    words.extend(word);
    if !words.is_empty() {
        commands.push((words[0].0, words.into_iter().map(|(_, w)| w).collect()));
    }
    commands
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

    /// The lines `moving_ids` warns about in `script`, with the command named.
    fn warned(script: &str) -> Vec<(usize, &'static str)> {
        moving_ids(script)
            .into_iter()
            .map(|(line, moving)| (line, moving.command))
            .collect()
    }

    #[test]
    fn users_and_groups_without_a_fixed_id_are_found() {
        assert_eq!(warned("adduser -D bob\n"), [(1, "adduser")]);
        assert_eq!(warned("addgroup share\n"), [(1, "addgroup")]);
        assert_eq!(warned("useradd -m bob\n"), [(1, "useradd")]);
        assert_eq!(warned("groupadd staff\n"), [(1, "groupadd")]);
        // System accounts get a moving id too; -G names the group, not the uid; busybox's -g is GECOS.
        assert_eq!(warned("adduser -S -D -H nas\n"), [(1, "adduser")]);
        assert_eq!(warned("addgroup -S nas\n"), [(1, "addgroup")]);
        assert_eq!(warned("adduser -D -G share bob\n"), [(1, "adduser")]);
        assert_eq!(warned("adduser -D -g 1000 bob\n"), [(1, "adduser")]);
        // shadow's useradd -g is the primary group, not the uid.
        assert_eq!(warned("useradd -g 1000 bob\n"), [(1, "useradd")]);
        // A value that looks like the option is not it.
        assert_eq!(warned("adduser -D -h -u bob\n"), [(1, "adduser")]);
        assert_eq!(warned("adduser -Dh/home/u bob\n"), [(1, "adduser")]);
        // Behind a path, busybox, a condition or an assignment; after `;` or `&&`; with its id only on
        // another command of the line.
        assert_eq!(warned("/usr/sbin/adduser -D bob\n"), [(1, "adduser")]);
        assert_eq!(warned("busybox adduser -D bob\n"), [(1, "adduser")]);
        assert_eq!(
            warned("if ! id bob; then adduser -D bob; fi\n"),
            [(1, "adduser")]
        );
        assert_eq!(warned("LC_ALL=C adduser -D bob\n"), [(1, "adduser")]);
        assert_eq!(
            warned("addgroup -g 1000 a && adduser -D bob\n"),
            [(1, "adduser")]
        );
    }

    #[test]
    fn fixed_ids_and_other_forms_are_not_warned() {
        let fine = [
            "adduser -D -u 1000 bob",
            "adduser -D -H -h /tank/share -s /sbin/nologin -G share -u 1000 share",
            "adduser -Du1000 bob",
            "adduser -DSu 1000 bob",
            "adduser --uid 1000 bob",
            "adduser --uid=1000 bob",
            "addgroup -g 1000 share",
            "addgroup -Sg 1000 share",
            "useradd -m -u 1000 bob",
            "useradd --uid=1000 bob",
            "groupadd -g 1000 staff",
            "groupadd --gid 1000 staff",
            // Adding an existing user to a group makes no id.
            "adduser bob share",
            "addgroup bob share",
            // Not run: a comment, a word in quotes, another command naming it, no user at all.
            "#adduser -D bob",
            "  # adduser -D bob",
            "echo adduser -D bob",
            "echo \"adduser -D bob\"",
            "command -v adduser",
            "adduser",
            "rc-update add samba default # then adduser -D bob",
        ];
        for line in fine {
            assert_eq!(warned(line), [], "{line}");
        }
    }

    #[test]
    fn commands_are_read_across_continued_lines_and_quotes() {
        // A continued line is one command: its id on the next line counts, and it is named by its first.
        assert_eq!(warned("adduser -D \\\n  -u 1000 bob\n"), []);
        assert_eq!(warned("true\nadduser -D \\\n  -H bob\n"), [(2, "adduser")]);
        // Quoted text spanning lines is one word; the line count goes on after it.
        assert_eq!(
            warned("echo 'a\nb # c'\n\nadduser -D bob\n"),
            [(4, "adduser")]
        );
        assert_eq!(
            warned("adduser -D -g \"Bob \\\"B\\\" Smith\" -u 1000 bob\n"),
            []
        );
        assert_eq!(
            sh_commands("a 'b c'\\ d; e \"f\"g # h\n\n i|j"),
            [
                (1, vec!["a".to_string(), "b c d".to_string()]),
                (1, vec!["e".to_string(), "fg".to_string()]),
                (3, vec!["i".to_string()]),
                (3, vec!["j".to_string()]),
            ]
        );
    }

    #[test]
    fn package_names_lose_their_constraints() {
        assert_eq!(package_name("zfs@community"), "zfs");
        assert_eq!(package_name("openssh=9.9_p2-r0"), "openssh");
        assert_eq!(package_name("linux-lts"), "linux-lts");
    }
}
