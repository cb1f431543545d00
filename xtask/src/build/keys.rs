//! Root's ssh `authorized_keys` for the built system: collected at build time, never committed.
//!
//! The keys come from the file the configuration names, or else from the public keys of the user running
//! the build (`~/.ssh/*.pub`; under sudo, the invoking user's home). [`collect`] reads and checks them,
//! [`AuthorizedKeys::report`] says what was found (or warns that only the console can log in), and
//! [`AuthorizedKeys::write_skel`] puts them into a skeleton overlay (`root/.ssh/authorized_keys`, 0600)
//! that the build copies into the tree after `system/root/`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The public keys found, and the files they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedKeys {
    /// One key per line, as in an `authorized_keys` file.
    pub keys: Vec<String>,
    /// Every file that was read, in order.
    pub sources: Vec<PathBuf>,
}

/// Reads the keys from `configured` when given (a missing file is an error), else from `home/.ssh/*.pub`.
pub fn collect(configured: Option<&Path>, home: Option<&Path>) -> Result<AuthorizedKeys> {
    let files = match configured {
        Some(path) => {
            if !path.is_file() {
                bail!(
                    "{}: the authorized keys file named in the configuration does not exist",
                    path.display()
                );
            }
            vec![path.to_path_buf()]
        }
        None => match home {
            Some(home) => public_key_files(&home.join(".ssh"))?,
            None => Vec::new(),
        },
    };
    let mut found = AuthorizedKeys::default();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains("PRIVATE KEY") {
                bail!(
                    "{}:{}: this is a private key; name a public key file (.pub) instead",
                    file.display(),
                    i + 1
                );
            }
            if !is_public_key(line) {
                bail!(
                    "{}:{}: not an ssh public key line (expected e.g. `ssh-ed25519 AAAA… comment`)",
                    file.display(),
                    i + 1
                );
            }
            if !found.keys.iter().any(|k| k == line) {
                found.keys.push(line.to_string());
            }
        }
        found.sources.push(file);
    }
    Ok(found)
}

/// The home directory of the user running the build: under sudo, the invoking user's, else `$HOME`.
pub fn build_user_home() -> Option<PathBuf> {
    if crate::host::is_root() {
        if let Ok(user) = std::env::var("SUDO_USER") {
            if let Some(home) = home_of(&user) {
                return Some(home);
            }
        }
    }
    std::env::var_os("HOME").map(PathBuf::from)
}

impl AuthorizedKeys {
    /// What the build prints: the files and keys used, or a warning when there are none.
    pub fn report(&self) -> String {
        if self.keys.is_empty() {
            return "warning: no ssh public key found (set the authorized keys file in system.toml, or create \
                    ~/.ssh/id_ed25519.pub): root can log in on the console only"
                .to_string();
        }
        let mut out = format!("root's authorized_keys: {} key(s) from", self.keys.len());
        for source in &self.sources {
            out.push_str(&format!(" {}", source.display()));
        }
        for key in &self.keys {
            out.push_str(&format!("\n  {}", summary(key)));
        }
        out
    }

    /// Writes `skel/root/.ssh/authorized_keys` (0600, directory 0700); writes nothing when there are no keys.
    pub fn write_skel(&self, skel: &Path) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let dir = skel.join("root/.ssh");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(skel.join("root"), fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let path = dir.join("authorized_keys");
        let text: String = self.keys.iter().map(|k| format!("{k}\n")).collect();
        // Already there as it would be written: leave it, so that an unchanged build finds the tree
        // unchanged (a rewrite would give the file a new inode and ctime).
        let same = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == 0o600)
            && fs::read(&path).is_ok_and(|old| old == text.as_bytes());
        if same {
            return Ok(());
        }
        crate::host::atomic::replace(&path, |tmp| {
            fs::write(tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
            Ok(fs::set_permissions(tmp, fs::Permissions::from_mode(0o600))?)
        })
    }
}

/// Where root's keys live in a tree.
pub const IN_TREE: &str = "root/.ssh/authorized_keys";

/// How many keys root's `authorized_keys` in `tree` holds (0 when there is no such file): a build with none
/// can be reached at its console only.
pub fn count_in_tree(tree: &Path) -> Result<u32> {
    let path = tree.join(IN_TREE);
    let text = match fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text.lines().filter(|l| is_public_key(l)).count() as u32)
}

/// `DIR/*.pub`, sorted; none when DIR does not exist.
fn public_key_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// An `authorized_keys` line: optional options, then a key type, then base64.
fn is_public_key(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.windows(2).any(|w| {
        let kind = w[0];
        let known = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-sha2-")
            || kind.starts_with("sk-ssh-")
            || kind.starts_with("sk-ecdsa-");
        known && w[1].starts_with("AAAA")
    })
}

/// `type …last 12 chars of the key… comment`, for the build output.
fn summary(key: &str) -> String {
    let fields: Vec<&str> = key.split_whitespace().collect();
    let at = fields
        .iter()
        .position(|f| f.starts_with("AAAA"))
        .unwrap_or(0);
    let kind = at.checked_sub(1).map_or("?", |i| fields[i]);
    let blob = fields.get(at).copied().unwrap_or("");
    let tail: String = blob
        .chars()
        .skip(blob.chars().count().saturating_sub(12))
        .collect();
    let comment = fields
        .get(at + 1..)
        .map(|c| c.join(" "))
        .unwrap_or_default();
    format!("{kind} …{tail} {comment}").trim_end().to_string()
}

fn home_of(user: &str) -> Option<PathBuf> {
    use std::ffi::{CStr, CString};
    let name = CString::new(user).ok()?;
    // SAFETY: `name` is a valid C string; getpwnam's result points into libc's static buffer, read at once
    // below (the build asks for one user, from one thread).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: a non-null passwd entry's pw_dir is a valid C string.
    let dir = unsafe { CStr::from_ptr((*pw).pw_dir) };
    Some(PathBuf::from(dir.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7yc0rk6ZcB4sUJ0m4l2xvH3lW0a9zXf3k2QmQeZxYq me@laptop";

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ramnas-keys-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A key line whose blob is not ASCII is summed up without a panic: its last 12 characters.
    #[test]
    fn a_key_blob_of_any_text_is_summed_up() {
        let key = format!("ssh-ed25519 AAAA{}z me", "é".repeat(14));
        assert_eq!(
            summary(&key),
            format!("ssh-ed25519 …{}z me", "é".repeat(11))
        );
    }

    #[test]
    fn home_pub_files_are_collected_and_written() {
        let home = tempdir();
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::write(home.join(".ssh/id_ed25519.pub"), format!("{ED}\n")).unwrap();
        fs::write(
            home.join(".ssh/id_ed25519"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let keys = collect(None, Some(&home)).unwrap();
        assert_eq!(keys.keys, vec![ED.to_string()]);
        assert_eq!(keys.sources, vec![home.join(".ssh/id_ed25519.pub")]);
        assert!(keys.report().contains("ssh-ed25519 …"), "{}", keys.report());
        let skel = home.join("skel");
        keys.write_skel(&skel).unwrap();
        let written = skel.join("root/.ssh/authorized_keys");
        assert_eq!(fs::read_to_string(&written).unwrap(), format!("{ED}\n"));
        assert_eq!(
            fs::metadata(&written).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn none_found_warns_and_writes_nothing() {
        let home = tempdir();
        let keys = collect(None, Some(&home)).unwrap();
        assert!(keys.keys.is_empty());
        assert!(keys.report().contains("console only"));
        keys.write_skel(&home.join("skel")).unwrap();
        assert!(!home.join("skel").exists());
        fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn configured_file_is_checked() {
        let dir = tempdir();
        let missing = collect(Some(&dir.join("nope")), None).unwrap_err();
        assert!(format!("{missing:#}").contains("does not exist"));
        let private = dir.join("key");
        fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").unwrap();
        let err = format!("{:#}", collect(Some(&private), None).unwrap_err());
        assert!(err.contains("key:1: this is a private key"), "{err}");
        let junk = dir.join("junk");
        fs::write(&junk, format!("# mine\n{ED}\nhello world\n")).unwrap();
        let err = format!("{:#}", collect(Some(&junk), None).unwrap_err());
        assert!(err.contains("junk:3: not an ssh public key"), "{err}");
        let ok = dir.join("ok");
        fs::write(&ok, format!("from=\"10.0.0.0/8\" {ED}\n{ED}\n")).unwrap();
        assert_eq!(collect(Some(&ok), None).unwrap().keys.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Property: any authorized keys file is read into keys (each summed up without a panic) or refused with
    /// its file and line.
    #[test]
    fn any_key_file_reads_or_names_its_bad_line() {
        let dir = tempdir();
        let file = dir.join("keys.pub");
        let seed = format!("# mine\n{ED}\ncommand=\"x\" {ED}\necdsa-sha2-nistp256 AAAAE2Vj x@y\n");
        crate::fuzz::run(3000, &[seed.as_bytes()], |b| {
            fs::write(&file, b).unwrap();
            match collect(Some(&file), None) {
                Ok(found) => {
                    let _ = found.report();
                }
                Err(err) => {
                    let err = format!("{err:#}");
                    assert!(err.contains("keys.pub"), "{err}");
                }
            }
        });
    }
}
