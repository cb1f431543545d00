//! system/packages.lock: every package of the tree, exactly, as the build installed it.
//!
//! The build writes it from the tree's apk database after every new tree, and the next build installs
//! exactly those versions (`name=version` for apk) — so the same commit gives the same packages next year.
//! It is plain text, one fact a line, so that `git diff` shows what an update changed:
//!
//! ```text
//! branch v3.22                     # the Alpine branch it was resolved on
//! world alpine-base                # each package asked for (the base packages, then system/packages)
//! package musl 1.2.5-r10 Q1…=      # each package installed: name, version, apk's checksum
//! ```
//!
//! A package asked for that the lock does not hold yet is resolved afresh (with everything locked held
//! where it is); one no longer asked for is dropped with whatever only it needed. After the install, every
//! locked package the tree holds must be the locked version with the locked checksum (a package rebuilt
//! under the same version is refused). `build --update` ignores the lock and resolves everything afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context};

use crate::build::manifest::{parse_apk_db, ApkPackage, Diff, APK_DB};

pub const FILE_NAME: &str = "packages.lock";

const HEADER: &str = "\
# packages.lock: every package of this system's tree, exactly (name, version, apk's checksum), as
# `cargo xtask build` installed it. Commit it with the system: the next build installs these versions.
# `cargo xtask build --update` resolves everything afresh and rewrites this file.
";

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub version: String,
    /// apk's checksum of the package (`C:` in its database, `Q1` + base64 SHA-1).
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lock {
    /// The Alpine branch directory (`v3.22`, `edge`) the packages were resolved on.
    pub branch: String,
    /// The packages asked for, as written (the base packages, then system/packages).
    pub world: Vec<String>,
    pub packages: BTreeMap<String, Locked>,
}

impl Lock {
    /// Reads a lock; `None` when there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Lock>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Lock::parse(&text).map(Some).map_err(|(line, msg)| {
            anyhow::anyhow!(
                "{}:{line}: {msg} (the build writes this file; `cargo xtask build --update` writes it afresh)",
                path.display()
            )
        })
    }

    pub fn parse(text: &str) -> Result<Lock, (usize, String)> {
        let mut lock = Lock::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => {}
                ["branch", branch] => lock.branch = branch.to_string(),
                ["world", entry] => lock.world.push(entry.to_string()),
                ["package", name, version, checksum] => {
                    let locked = Locked {
                        version: version.to_string(),
                        checksum: checksum.to_string(),
                    };
                    if lock.packages.insert(name.to_string(), locked).is_some() {
                        return Err((i + 1, format!("{name} is locked twice")));
                    }
                }
                _ => {
                    return Err((
                        i + 1,
                        format!(
                            "{line:?}: expected `branch B`, `world NAME` or `package NAME VERSION CHECKSUM`"
                        ),
                    ))
                }
            }
        }
        if lock.branch.is_empty() {
            return Err((1, "no `branch` line".to_string()));
        }
        Ok(lock)
    }

    pub fn to_text(&self) -> String {
        let mut text = format!("{HEADER}branch {}\n", self.branch);
        for entry in &self.world {
            text.push_str(&format!("world {entry}\n"));
        }
        for (name, p) in &self.packages {
            text.push_str(&format!("package {name} {} {}\n", p.version, p.checksum));
        }
        text
    }

    /// The lock of a finished tree: its apk database (`lib/apk/db/installed`).
    pub fn of_tree(tree: &Path, branch: &str, world: &[String]) -> anyhow::Result<Lock> {
        let mut packages = BTreeMap::new();
        for p in installed(tree)? {
            packages.insert(
                p.name,
                Locked {
                    version: p.version,
                    checksum: p.checksum,
                },
            );
        }
        if packages.is_empty() {
            bail!(
                "{}: no packages: nothing to lock",
                tree.join(APK_DB).display()
            );
        }
        Ok(Lock {
            branch: branch.to_string(),
            world: world.to_vec(),
            packages,
        })
    }

    /// How this lock falls short of `world` on `branch`: one line each, empty when it matches.
    pub fn stale(&self, branch: &str, world: &[String]) -> Vec<String> {
        let mut why = Vec::new();
        if self.branch != branch {
            why.push(format!(
                "resolved on Alpine {}, system.toml says {branch}",
                self.branch
            ));
            return why;
        }
        for entry in world {
            if !self.world.contains(entry) {
                why.push(format!("{entry} is asked for but not locked"));
            }
        }
        for entry in &self.world {
            if !world.contains(entry) {
                why.push(format!("{entry} is locked but no longer asked for"));
            }
        }
        why
    }

    /// apk's package list for a build held to this lock: `world` as written, then every other locked
    /// package pinned (`name=version`) but those in `drop` (what the last install showed nothing needs any
    /// more). An entry of `world` without a version constraint is pinned too.
    pub fn pinned(&self, world: &[String], drop: &BTreeSet<String>) -> Vec<String> {
        let asked: BTreeSet<&str> = world.iter().map(|e| entry_name(e)).collect();
        let mut list: Vec<String> = world
            .iter()
            .map(|entry| match self.packages.get(entry.as_str()) {
                // Only a bare name is pinned: `foo>=1`, `foo@testing` stay as written.
                Some(p) if entry_name(entry) == entry => format!("{entry}={}", p.version),
                _ => entry.clone(),
            })
            .collect();
        for (name, p) in &self.packages {
            if asked.contains(name.as_str()) || drop.contains(name) {
                continue;
            }
            list.push(format!("{name}={}", p.version));
        }
        list
    }

    /// What changed from `old` to this lock, as `deploy` shows a build's changes; the kernel is the
    /// version of `kernel_package`.
    pub fn diff(&self, old: &Lock, kernel_package: &str) -> Diff {
        let versions = |l: &Lock| -> BTreeMap<String, String> {
            l.packages
                .iter()
                .map(|(n, p)| (n.clone(), p.version.clone()))
                .collect()
        };
        let mut diff = crate::build::manifest::diff_packages(&versions(old), &versions(self));
        let kernel = |l: &Lock| l.packages.get(kernel_package).map(|p| p.version.clone());
        if kernel(old) != kernel(self) {
            diff.kernel = Some((kernel(old), kernel(self)));
        }
        diff
    }
}

impl Lock {
    /// How a tree's packages (`installed`) differ from this lock in what `pinned` held: each locked
    /// package it holds at another version or with another checksum, one line each (empty when it holds
    /// exactly the lock).
    pub fn mismatches(&self, installed: &[ApkPackage], pinned: &[String]) -> Vec<String> {
        let mut why = Vec::new();
        for p in installed {
            let Some(locked) = self.packages.get(&p.name) else {
                continue;
            };
            if !pinned.contains(&format!("{}={}", p.name, locked.version)) {
                continue; // asked for with a constraint of its own
            }
            if p.version != locked.version {
                why.push(format!(
                    "{} is {}, the lock says {}",
                    p.name, p.version, locked.version
                ));
            } else if p.checksum != locked.checksum {
                why.push(format!(
                    "{} {} has checksum {}, the lock says {} (rebuilt under the same version)",
                    p.name, p.version, p.checksum, locked.checksum
                ));
            }
        }
        why
    }
}

/// The package name of a `packages` entry: `foo` of `foo=1.2-r0`, `foo>=1`, `foo@testing`.
pub fn entry_name(entry: &str) -> &str {
    let end = entry.find(['=', '<', '>', '~', '@']).unwrap_or(entry.len());
    &entry[..end]
}

/// The packages of the tree at `tree`: its apk database, parsed.
pub fn installed(tree: &Path) -> anyhow::Result<Vec<ApkPackage>> {
    let db = tree.join(APK_DB);
    let text = fs::read_to_string(&db).with_context(|| format!("reading {}", db.display()))?;
    Ok(parse_apk_db(&text))
}

/// The packages of the tree at `tree` (`installed`) that nothing in `world` needs: not asked for, not a
/// dependency of one that is (through names and what packages provide), not installed with one
/// (install_if). What the tree's own apk world holds besides `pinned` (added by setup.sh, or by
/// alpine-make-rootfs itself) counts as asked for too.
pub fn unneeded(
    tree: &Path,
    installed: &[ApkPackage],
    world: &[String],
    pinned: &[String],
) -> BTreeSet<String> {
    let mut roots = world.to_vec();
    if let Ok(tree_world) = fs::read_to_string(tree.join("etc/apk/world")) {
        roots.extend(
            tree_world
                .lines()
                .filter(|l| !l.is_empty() && !pinned.iter().any(|p| p == l))
                .map(str::to_string),
        );
    }
    unneeded_in(installed, &roots)
}

fn unneeded_in(installed: &[ApkPackage], world: &[String]) -> BTreeSet<String> {
    // Which packages provide each name.
    let mut providers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in installed.iter().enumerate() {
        providers.entry(p.name.as_str()).or_default().push(i);
        for name in &p.provides {
            providers.entry(entry_name(name)).or_default().push(i);
        }
    }
    let mut needed = vec![false; installed.len()];
    let mut todo: Vec<&str> = world.iter().map(|e| entry_name(e)).collect();
    loop {
        while let Some(name) = todo.pop() {
            for &i in providers.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                if !needed[i] {
                    needed[i] = true;
                    todo.extend(
                        installed[i]
                            .depends
                            .iter()
                            .filter(|d| !d.starts_with('!'))
                            .map(|d| entry_name(d)),
                    );
                }
            }
        }
        // install_if: a package comes with the packages it names, once all of them are needed.
        let provided = |name: &str| {
            providers
                .get(entry_name(name))
                .is_some_and(|ps| ps.iter().any(|&i| needed[i]))
        };
        // `!name` in install_if: only while name is not needed.
        let holds = |cond: &String| match cond.strip_prefix('!') {
            Some(name) => !provided(name),
            None => provided(cond),
        };
        let more: Vec<usize> = (0..installed.len())
            .filter(|&i| {
                !needed[i]
                    && !installed[i].install_if.is_empty()
                    && installed[i].install_if.iter().all(holds)
            })
            .collect();
        if more.is_empty() {
            break;
        }
        for i in more {
            todo.push(installed[i].name.as_str());
        }
    }
    installed
        .iter()
        .zip(needed)
        .filter(|(_, needed)| !needed)
        .map(|(p, _)| p.name.clone())
        .collect()
}

/// `etc/apk/world` of a tree made with [`Lock::pinned`]'s list, as if `world` had been asked for
/// alone: its entries as written, the pins of everything else gone (what setup.sh added stays).
pub fn restore_world(tree: &Path, world: &[String], pinned: &[String]) -> anyhow::Result<()> {
    let path = tree.join("etc/apk/world");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let asked: BTreeMap<&str, &String> = world.iter().map(|e| (entry_name(e), e)).collect();
    let mut lines = BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        match asked.get(entry_name(line)) {
            Some(entry) => lines.insert(entry.to_string()),
            None if pinned.iter().any(|p| p == line) => false,
            None => lines.insert(line.to_string()),
        };
    }
    let mut new: String = lines.into_iter().map(|l| l + "\n").collect();
    if new.is_empty() {
        new.push('\n');
    }
    if new != text {
        fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, depends: &str, provides: &str, install_if: &str) -> ApkPackage {
        let w = |s: &str| s.split_whitespace().map(str::to_string).collect();
        ApkPackage {
            name: name.to_string(),
            version: "1-r0".to_string(),
            checksum: "Q1x=".to_string(),
            depends: w(depends),
            provides: w(provides),
            install_if: w(install_if),
            files: Vec::new(),
        }
    }

    #[test]
    fn unneeded_follows_names_provides_and_install_if() {
        let db = [
            pkg("musl", "", "so:libc.musl-x86_64.so.1=1", ""),
            pkg("busybox", "so:libc.musl-x86_64.so.1", "cmd:sh=1", ""),
            pkg("openrc", "so:libc.musl-x86_64.so.1 !sysvinit", "", ""),
            pkg("busybox-openrc", "", "", "busybox=1 openrc"),
            pkg("openrc-nosamba", "", "", "openrc !samba"),
            pkg("samba", "libtalloc>=2", "", ""),
            pkg("libtalloc", "so:libc.musl-x86_64.so.1", "", ""),
        ];
        let world = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unneeded_in(&db, &world(&["busybox", "openrc", "samba"])),
            BTreeSet::from(["openrc-nosamba".to_string()])
        );
        assert_eq!(
            unneeded_in(&db, &world(&["busybox", "openrc=0.63-r1"])),
            BTreeSet::from(["libtalloc".to_string(), "samba".to_string()])
        );
        assert_eq!(
            unneeded_in(&db, &world(&["busybox"])),
            [
                "busybox-openrc",
                "libtalloc",
                "openrc",
                "openrc-nosamba",
                "samba"
            ]
            .map(String::from)
            .into()
        );
    }

    #[test]
    fn pins_hold_all_but_what_is_dropped() {
        let lock = Lock::parse(
            "# c\nbranch v3.22\nworld busybox\nworld samba\n\
             package busybox 1.37-r1 Q1a=\npackage musl 1.2-r2 Q1b=\n\
             package samba 4.20-r0 Q1c=\npackage libtalloc 2.4-r0 Q1d=\n",
        )
        .unwrap();
        assert_eq!(Lock::parse(&lock.to_text()).unwrap(), lock);
        let world: Vec<String> = ["busybox", "nfs-utils"].map(String::from).into();
        assert_eq!(
            lock.pinned(&world, &BTreeSet::from(["libtalloc".to_string()])),
            [
                "busybox=1.37-r1",
                "nfs-utils",
                "musl=1.2-r2",
                "samba=4.20-r0"
            ]
        );
        assert_eq!(
            lock.stale("v3.22", &world),
            [
                "nfs-utils is asked for but not locked",
                "samba is locked but no longer asked for"
            ]
        );
        assert_eq!(
            lock.stale("v3.23", &world),
            ["resolved on Alpine v3.22, system.toml says v3.23"]
        );
        assert!(Lock::parse("branch v3.22\npackage musl 1.2\n")
            .unwrap_err()
            .1
            .contains("expected"));
        assert_eq!(
            Lock::parse("package a 1 Q=\n").unwrap_err(),
            (1, "no `branch` line".to_string())
        );
    }

    /// Property: any packages.lock parses or gives an error with a line number inside the file.
    #[test]
    fn any_lock_file_parses_or_names_its_bad_line() {
        let text = "# packages.lock\nbranch v3.22\nworld alpine-base\nworld zfs\n\
                    package musl 1.2.5-r9 Q1abc=\npackage busybox 1.37.0-r12 Q1def=\n";
        crate::fuzz::run_text(5000, &[text], |t| {
            if let Err((line, msg)) = Lock::parse(t) {
                assert!(
                    line >= 1 && line <= t.lines().count().max(1),
                    "{line}: {msg}"
                );
                assert!(!msg.is_empty());
            }
        });
    }
}
