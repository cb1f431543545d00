//! The system's own tests, `system/tests/`: which they are, the digest a build records of them
//! (`manifest.json`'s `tests`), and `OUT/tested.json`, the record that a build passed them in the VM
//! (`vm --test` writes it, `deploy` reads it). The tests never go into the NAS: they change no build id.
//!
//!   tests/nas/NAME    runs on the NAS, as root, by `sh`, over ssh, once it is ready
//!   tests/host/NAME   an executable run here, against the VM (its ports in the environment)
//!   tests/prepare     runs on the NAS like a nas/ test, once, on empty data disks; the disks it leaves
//!                     are where every later run starts (a pool, say)

use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The tests' folder in a system definition.
pub const DIR: &str = "tests";

/// The script that prepares the data disks.
pub const PREPARE: &str = "prepare";

/// Where a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// On the NAS, by its `sh`, over ssh.
    Nas,
    /// On this machine, against the VM.
    Host,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Nas, Side::Host];

    /// The folder of `tests/` holding this side's tests.
    pub fn dir(self) -> &'static str {
        match self {
            Side::Nas => "nas",
            Side::Host => "host",
        }
    }
}

/// One test: `nas/pool`, say.
#[derive(Debug, Clone)]
pub struct Test {
    pub side: Side,
    pub name: String,
    pub path: PathBuf,
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.side.dir(), self.name)
    }
}

/// A system's tests, NAS side first, each side in name order.
#[derive(Debug)]
pub struct Tests {
    pub dir: PathBuf,
    pub prepare: Option<PathBuf>,
    pub tests: Vec<Test>,
    /// SHA-256 over every file's name, mode and content: [`Tests::prepare`]'s too.
    pub digest: String,
}

impl Tests {
    /// Reads `SYSTEM/tests/`; None when the system has no test (no such folder, or no test in it). Anything
    /// there that is not a test is an error naming it, as is a host test that is not executable.
    pub fn read(system: &Path) -> Result<Option<Tests>> {
        let dir = system.join(DIR);
        if !dir.exists() {
            return Ok(None);
        }
        let mut hasher = Sha256::new();
        let mut prepare = None;
        let mut tests = Vec::new();
        for (name, path) in entries(&dir)? {
            match name.as_str() {
                PREPARE if path.is_file() => {
                    hash_file(&mut hasher, PREPARE, &path)?;
                    prepare = Some(path);
                }
                "nas" | "host" if path.is_dir() => {}
                _ => bail!(
                    "{}: not a test: tests/ holds nas/ (tests run on the NAS), host/ (tests run here against \
                     the VM) and prepare (readies the data disks); move it elsewhere",
                    path.display()
                ),
            }
        }
        for side in Side::ALL {
            let folder = dir.join(side.dir());
            if !folder.exists() {
                continue;
            }
            for (name, path) in entries(&folder)? {
                if !path.is_file() {
                    bail!(
                        "{}: not a file: each test is one script in {}",
                        path.display(),
                        folder.display()
                    );
                }
                let mode = fs::metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .permissions()
                    .mode();
                if side == Side::Host && mode & 0o111 == 0 {
                    bail!(
                        "{}: not executable: a host test runs as a program (chmod +x it, with a #! line)",
                        path.display()
                    );
                }
                hash_file(&mut hasher, &format!("{}/{name}", side.dir()), &path)?;
                tests.push(Test { side, name, path });
            }
        }
        if tests.is_empty() && prepare.is_none() {
            return Ok(None);
        }
        Ok(Some(Tests {
            dir,
            prepare,
            tests,
            digest: crate::build::manifest::hex(&hasher.finalize()),
        }))
    }
}

/// A folder's entries by name, sorted; hidden ones (an editor's swap files) left out.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn hash_file(hasher: &mut Sha256, name: &str, path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    hasher.update(format!("{name}\0{:o}\0{}\0", mode & 0o111, bytes.len()));
    hasher.update(&bytes);
    Ok(())
}

/// OUT/tested.json: the build that passed its tests in the VM, and which tests they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tested {
    pub build_id: String,
    pub tests: String,
}

impl Tested {
    pub const FILE_NAME: &'static str = "tested.json";

    /// The record in `out`, if any (one that cannot be read counts as none).
    pub fn load(out: &Path) -> Option<Tested> {
        let text = fs::read(out.join(Tested::FILE_NAME)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records that the build `build_id` passed the tests `tests` (a digest).
    pub fn record(out: &Path, build_id: &str, tests: &str) -> Result<()> {
        let record = Tested {
            build_id: build_id.to_string(),
            tests: tests.to_string(),
        };
        let json = serde_json::to_string_pretty(&record).expect("a record serializes");
        crate::host::atomic::replace(&out.join(Tested::FILE_NAME), |tmp| {
            fs::write(tmp, format!("{json}\n"))
                .with_context(|| format!("writing {}", tmp.display()))
        })
    }

    /// Removes the record: the build in `out` has not passed its tests (now).
    pub fn forget(out: &Path) -> Result<()> {
        let path = out.join(Tested::FILE_NAME);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Whether the build in `out`, whose manifest is `manifest`, may be deployed: its system has no tests, or
/// OUT/tested.json says this build passed the tests it was built with.
pub fn passed(out: &Path, manifest: &crate::build::manifest::Manifest) -> bool {
    match &manifest.tests {
        None => true,
        Some(digest) => {
            Tested::load(out).is_some_and(|t| t.build_id == manifest.build_id && &t.tests == digest)
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn write(path: &Path, text: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_both_sides_in_order_and_digests_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path();
        assert!(Tests::read(system).unwrap().is_none());
        fs::create_dir_all(system.join("tests/nas")).unwrap();
        assert!(Tests::read(system).unwrap().is_none(), "an empty tests/");
        write(&system.join("tests/host/b"), "#!/bin/sh\n", 0o755);
        write(&system.join("tests/nas/z"), "true\n", 0o644);
        write(&system.join("tests/nas/a"), "true\n", 0o644);
        write(&system.join("tests/nas/.a.swp"), "junk", 0o644);
        let tests = Tests::read(system).unwrap().unwrap();
        let names: Vec<String> = tests.tests.iter().map(Test::to_string).collect();
        assert_eq!(names, ["nas/a", "nas/z", "host/b"]);
        assert!(tests.prepare.is_none());

        write(&system.join("tests/nas/a"), "false\n", 0o644);
        let edited = Tests::read(system).unwrap().unwrap();
        assert_ne!(edited.digest, tests.digest, "a test's content");
        write(&system.join("tests/prepare"), "zpool create\n", 0o644);
        let prepared = Tests::read(system).unwrap().unwrap();
        assert_ne!(prepared.digest, edited.digest, "prepare");
        assert!(prepared.prepare.is_some());
        fs::rename(system.join("tests/nas/a"), system.join("tests/nas/c")).unwrap();
        assert_ne!(
            Tests::read(system).unwrap().unwrap().digest,
            prepared.digest,
            "a test's name"
        );
    }

    #[test]
    fn refuses_what_is_not_a_test() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path();
        write(&system.join("tests/host/smb"), "#!/bin/sh\n", 0o644);
        let err = Tests::read(system).unwrap_err().to_string();
        assert!(err.contains("tests/host/smb: not executable"), "{err}");
        write(&system.join("tests/host/smb"), "#!/bin/sh\n", 0o755);
        write(&system.join("tests/pool"), "zpool list\n", 0o644);
        let err = Tests::read(system).unwrap_err().to_string();
        assert!(err.contains("tests/pool: not a test"), "{err}");
    }

    #[test]
    fn a_build_passed_only_with_its_own_id_and_tests() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut manifest: crate::build::manifest::Manifest = serde_json::from_str(
            r#"{"build_id": "b1", "source_date": 0, "git_dirty": false, "alpine_branch": "v3.22",
                "compression": "zstd", "cmdline": "", "packages": {}, "artifacts": {}}"#,
        )
        .unwrap();
        manifest.tests = None;
        assert!(passed(out, &manifest), "a system without tests");
        manifest.tests = Some("t1".into());
        assert!(!passed(out, &manifest), "no record");
        Tested::record(out, &manifest.build_id, "t1").unwrap();
        assert!(passed(out, &manifest));
        manifest.tests = Some("t2".into());
        assert!(!passed(out, &manifest), "other tests");
        manifest.tests = Some("t1".into());
        manifest.build_id = "another".into();
        assert!(!passed(out, &manifest), "another build");
        Tested::forget(out).unwrap();
        Tested::forget(out).unwrap();
        assert!(Tested::load(out).is_none());
    }
}
