//! OUT/manifest.json: what a build is, and the difference between two builds.
//!
//! The manifest is written last (after every artifact it names), so a reader that finds the sizes and
//! SHA-256 sums in it matching the files knows they belong together.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identifies the build: the first 16 hex digits of the SHA-256 over the artifacts' names and sums,
    /// so the same inputs give the same id.
    pub build_id: String,
    /// SOURCE_DATE_EPOCH the archive's mtimes were clamped to.
    pub source_date: u64,
    /// Git commit of the system definition, when it lives in a git work tree.
    pub git_commit: Option<String>,
    /// Whether that work tree had uncommitted changes.
    pub git_dirty: bool,
    /// Alpine branch from system.toml (also for `--base` builds, where it is only what was configured).
    pub alpine_branch: String,
    /// Version of the kernel in OUT/vmlinuz, such as `6.12.13-0-lts`.
    pub kernel_version: Option<String>,
    /// Compression of OUT/initramfs.
    pub compression: crate::build::compress::Compression,
    /// Kernel command line (also in OUT/cmdline).
    pub cmdline: String,
    /// Installed Alpine packages and their versions, from /lib/apk/db/installed (empty without one).
    pub packages: BTreeMap<String, String>,
    /// Every artifact in OUT/ by file name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// The artifacts the boot loader loads as initrds, in order: microcode first, then the initramfs'
    /// archives ([`Manifest::initrds`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrds: Vec<String>,
    /// The boot loaders the build carries in OUT/bootloaders (`syslinux`, `systemd-boot`), each with the
    /// package it came from; the host's are used for the ones it does not name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bootloaders: BTreeMap<String, String>,
    /// How many ssh keys root's `authorized_keys` in the tree holds: with none, a deploy over ssh could never
    /// reach the NAS again. None for builds made before ramnas counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ssh_keys: Option<u32>,
    /// The digest of the system's own tests (`system/tests/`, [`crate::build::tests`]) the build was made
    /// with: a build with tests is deployed only once it has passed them in the VM. None without tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub size: u64,
    pub sha256: String,
}

/// When `json` is a manifest but for a field this ramnas does not know (a newer ramnas wrote it), serde's
/// words for it (`unknown field `x`, expected one of …`, the field as the file has it).
pub fn unknown_field(json: &[u8]) -> Option<String> {
    let text = serde_json::from_slice::<Manifest>(json).err()?.to_string();
    text.starts_with("unknown field ").then_some(text)
}

impl Manifest {
    pub const FILE_NAME: &'static str = "manifest.json";

    /// The initrds in load order; a build made before the initramfs was split has `ucode.img` (when there
    /// is microcode) and `initramfs`.
    pub fn initrds(&self) -> Vec<String> {
        if !self.initrds.is_empty() {
            return self.initrds.clone();
        }
        ["ucode.img", "initramfs"]
            .into_iter()
            .filter(|n| self.artifacts.contains_key(*n))
            .map(str::to_string)
            .collect()
    }

    /// Bytes of the initramfs: every initrd but the microcode.
    pub fn initramfs_size(&self) -> u64 {
        self.initrds()
            .iter()
            .filter(|n| n.as_str() != "ucode.img")
            .filter_map(|n| self.artifacts.get(n))
            .fold(0, |sum: u64, a| sum.saturating_add(a.size))
    }

    /// Reads a manifest, e.g. `OUT/manifest.json`.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a ramnas build manifest", path.display()))
    }

    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        json.push('\n');
        json
    }

    /// Computes the build id from the artifacts.
    pub fn compute_build_id(artifacts: &BTreeMap<String, Artifact>, cmdline: &str) -> String {
        let mut h = Sha256::new();
        for (name, a) in artifacts.iter().filter(|(name, _)| *name != "cmdline") {
            h.update(format!("{name} {} {}\n", a.size, a.sha256));
        }
        h.update(format!("cmdline {cmdline}\n"));
        hex(&h.finalize())[..16].to_string()
    }

    /// OUT/cmdline: the configured command line plus `ramnas.build=<id>`, so the running system (and its
    /// readiness line) knows which build it is.
    pub fn cmdline_file(cmdline: &str, build_id: &str) -> String {
        format!("{} ramnas.build={build_id}\n", cmdline.trim())
    }

    /// Checks that every artifact named in the manifest is in `dir` with its size and SHA-256.
    pub fn verify(&self, dir: &Path) -> anyhow::Result<()> {
        for (name, want) in &self.artifacts {
            let got = Artifact::of(&dir.join(name))?;
            if &got != want {
                anyhow::bail!(
                    "{}: does not match {} (size {} sha256 {}, expected size {} sha256 {})",
                    dir.join(name).display(),
                    Self::FILE_NAME,
                    got.size,
                    got.sha256,
                    want.size,
                    want.sha256
                );
            }
        }
        Ok(())
    }
}

impl Artifact {
    /// Size and SHA-256 of a file, read in 1 MiB pieces: the one place a file is hashed.
    pub fn of(path: &Path) -> anyhow::Result<Artifact> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Artifact {
            size,
            sha256: hex(&h.finalize()),
        })
    }
}

/// Lowercase hexadecimal, as SHA-256 sums are written everywhere (manifests, part names, the lock).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// apk's installed database, inside a root tree.
pub const APK_DB: &str = "lib/apk/db/installed";

/// One stanza of apk's installed database (or of an APKINDEX, which has the same form), with the fields
/// ramnas reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApkPackage {
    /// `P:`
    pub name: String,
    /// `V:`
    pub version: String,
    /// `C:`: apk's checksum (`Q1` + base64 of a SHA-1).
    pub checksum: String,
    /// `D:`: what it depends on (names, `so:…`, `cmd:…`, `/bin/sh`; `!name` is a conflict).
    pub depends: Vec<String>,
    /// `p:`: what else it provides.
    pub provides: Vec<String>,
    /// `i:`: it is installed with these (apk's install_if).
    pub install_if: Vec<String>,
    /// `F:` directories and `R:` files (each under the `F:` before it): the paths it installed, relative
    /// to the root.
    pub files: Vec<String>,
}

/// Parses apk's installed database: stanzas of `X:value` lines separated by blank lines.
pub fn parse_apk_db(text: &str) -> Vec<ApkPackage> {
    let mut all = Vec::new();
    let mut cur = ApkPackage::default();
    let words = |v: &str| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut dir = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            dir.clear();
            if !cur.name.is_empty() {
                all.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "P" => cur.name = value.to_string(),
            "V" => cur.version = value.to_string(),
            "C" => cur.checksum = value.to_string(),
            "D" => cur.depends = words(value),
            "p" => cur.provides = words(value),
            "i" => cur.install_if = words(value),
            "F" => {
                dir = value.to_string();
                cur.files.push(dir.clone());
            }
            "R" if dir.is_empty() => cur.files.push(value.to_string()),
            "R" => cur.files.push(format!("{dir}/{value}")),
            _ => {}
        }
    }
    all
}

/// The packages of apk's installed database (or an APKINDEX) that have a version: name → version.
pub fn parse_apk_installed(text: &str) -> BTreeMap<String, String> {
    parse_apk_db(text)
        .into_iter()
        .filter(|p| !p.version.is_empty())
        .map(|p| (p.name, p.version))
        .collect()
}

/// What changed from one build to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Packages only in the new build, with their versions.
    pub added: BTreeMap<String, String>,
    /// Packages only in the old build, with their versions.
    pub removed: BTreeMap<String, String>,
    /// Packages in both with another version: (old, new).
    pub changed: BTreeMap<String, (String, String)>,
    /// Kernel version (old, new) when it changed.
    pub kernel: Option<(Option<String>, Option<String>)>,
    /// Initramfs size in bytes (old, new) when it changed.
    pub initramfs_size: Option<(u64, u64)>,
    /// The builds whose manifest lists no packages (`"old"`, `"new"`): their tree had no apk database, so
    /// the package lines above cannot be trusted.
    pub unlisted: Vec<&'static str>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self == &Diff::default()
    }

    /// Adds the kernel and initramfs changes from `old` to `new`.
    fn with_sizes(mut self, old: &Manifest, new: &Manifest) -> Diff {
        if old.kernel_version != new.kernel_version {
            self.kernel = Some((old.kernel_version.clone(), new.kernel_version.clone()));
        }
        let size = |m: &Manifest| m.initramfs_size();
        if size(old) != size(new) {
            self.initramfs_size = Some((size(old), size(new)));
        }
        self
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no change in packages, kernel or initramfs size");
        }
        if let Some((old, new)) = &self.kernel {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_string());
            writeln!(f, "kernel: {} → {}", show(old), show(new))?;
        }
        if let Some((old, new)) = self.initramfs_size {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            writeln!(f, "initramfs: {:.1} MiB → {:.1} MiB", mib(old), mib(new))?;
        }
        for (name, version) in &self.added {
            writeln!(f, "+ {name} {version}")?;
        }
        for (name, version) in &self.removed {
            writeln!(f, "- {name} {version}")?;
        }
        for (name, (old, new)) in &self.changed {
            writeln!(f, "~ {name} {old} → {new}")?;
        }
        for which in &self.unlisted {
            writeln!(
                f,
                "packages: not compared: the {which} build's manifest lists none (its tree had no apk \
                 database, /lib/apk/db/installed)"
            )?;
        }
        Ok(())
    }
}

/// The difference from build `old` to build `new`.
pub fn diff(old: &Manifest, new: &Manifest) -> Diff {
    let mut unlisted = Vec::new();
    for (which, m) in [("old", old), ("new", new)] {
        if m.packages.is_empty() {
            unlisted.push(which);
        }
    }
    let d = if unlisted.is_empty() {
        diff_packages(&old.packages, &new.packages)
    } else {
        Diff {
            unlisted,
            ..Diff::default()
        }
    };
    d.with_sizes(old, new)
}

/// The packages added, removed and changed from `old` to `new` (name → version).
pub fn diff_packages(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Diff {
    let mut d = Diff::default();
    for (name, version) in new {
        match old.get(name) {
            None => {
                d.added.insert(name.clone(), version.clone());
            }
            Some(v) if v != version => {
                d.changed.insert(name.clone(), (v.clone(), version.clone()));
            }
            Some(_) => {}
        }
    }
    for (name, version) in old {
        if !new.contains_key(name) {
            d.removed.insert(name.clone(), version.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(packages: &[(&str, &str)], kernel: &str, initramfs: u64) -> Manifest {
        let mut artifacts = BTreeMap::new();
        artifacts.insert(
            "initramfs".to_string(),
            Artifact {
                size: initramfs,
                sha256: "00".repeat(32),
            },
        );
        Manifest {
            build_id: Manifest::compute_build_id(&artifacts, "console=ttyS0"),
            source_date: 0,
            git_commit: None,
            git_dirty: false,
            alpine_branch: "v3.22".into(),
            kernel_version: Some(kernel.into()),
            compression: crate::build::compress::Compression::Zstd,
            cmdline: "console=ttyS0".into(),
            packages: packages
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            artifacts,
            initrds: Vec::new(),
            bootloaders: Default::default(),
            root_ssh_keys: None,
            tests: None,
        }
    }

    #[test]
    fn diff_packages_kernel_size() {
        let old = manifest(
            &[
                ("busybox", "1.37.0-r12"),
                ("linux-lts", "6.12.1-r0"),
                ("nano", "8.0-r0"),
            ],
            "6.12.1-0-lts",
            100,
        );
        let new = manifest(
            &[
                ("busybox", "1.37.0-r12"),
                ("linux-lts", "6.12.9-r0"),
                ("zfs", "2.3.0-r0"),
            ],
            "6.12.9-0-lts",
            120,
        );
        let d = diff(&old, &new);
        assert_eq!(d.added.keys().collect::<Vec<_>>(), ["zfs"]);
        assert_eq!(d.removed.keys().collect::<Vec<_>>(), ["nano"]);
        assert_eq!(
            d.changed["linux-lts"],
            ("6.12.1-r0".to_string(), "6.12.9-r0".to_string())
        );
        assert_eq!(d.changed.len(), 1);
        assert_eq!(
            d.kernel,
            Some((Some("6.12.1-0-lts".into()), Some("6.12.9-0-lts".into())))
        );
        assert_eq!(d.initramfs_size, Some((100, 120)));
        let text = d.to_string();
        assert!(
            text.contains("+ zfs 2.3.0-r0") && text.contains("~ linux-lts 6.12.1-r0 → 6.12.9-r0"),
            "{text}"
        );
        assert!(diff(&new, &new).is_empty());
        assert_eq!(diff(&new, &old).added.keys().collect::<Vec<_>>(), ["nano"]);
    }

    #[test]
    fn a_build_that_lists_no_packages_is_not_compared_silently() {
        let listed = manifest(&[("busybox", "1.37.0-r12")], "6.12.1-0-lts", 100);
        let unlisted = manifest(&[], "6.12.1-0-lts", 120);
        let d = diff(&listed, &unlisted);
        assert!(d.removed.is_empty(), "{d:?}");
        assert_eq!(d.unlisted, ["new"]);
        let text = d.to_string();
        assert!(
            text.contains("packages: not compared: the new build's manifest lists none"),
            "{text}"
        );
        assert!(text.contains("initramfs: 0.0 MiB → 0.0 MiB"), "{text}");
        assert_eq!(diff(&unlisted, &unlisted).unlisted, ["old", "new"]);
    }

    #[test]
    fn json_round_trip() {
        let m = manifest(&[("musl", "1.2.5-r9")], "6.12.1-0-lts", 7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, m.to_json()).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);
    }

    #[test]
    fn apk_installed_db() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.5-r9\nA:x86_64\n\nC:Q1def=\nP:busybox\nV:1.37.0-r12\nF:bin\nR:busybox\n";
        let p = parse_apk_installed(db);
        assert_eq!(p.len(), 2);
        assert_eq!(p["musl"], "1.2.5-r9");
        assert_eq!(p["busybox"], "1.37.0-r12");
    }

    /// Property: any apk database parses into stanzas without a panic.
    #[test]
    fn any_apk_database_parses() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.5-r9\nA:x86_64\nD:so:libc.musl-x86_64.so.1\np:cmd:ldd\n\n\
                  C:Q1def=\nP:busybox\nV:1.37.0-r12\ni:busybox=1.37\nF:bin\nR:busybox\nR:sh\nF:etc\nR:x\n";
        crate::fuzz::run_text(5000, &[db], |t| {
            let packages = parse_apk_db(t);
            assert!(packages.iter().all(|p| !p.name.is_empty()));
            let _ = parse_apk_installed(t);
        });
    }
}
