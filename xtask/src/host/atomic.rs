//! A file is replaced whole or not at all: made under a temporary name beside it, then renamed over it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// The temporary name `path` is made under: `path.tmp`, in the same directory (so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Replaces `path` with what `make` writes to the temporary path it is given; if `make` fails, removes
/// what it left there, and `path` is as it was.
pub fn replace(path: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    if let Err(err) = make(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Replaces `path` with `data`.
pub fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    replace(path, |tmp| {
        fs::write(tmp, data).with_context(|| format!("writing {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_replacement_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        super::write(&path, "old").unwrap();
        let err = super::replace(&path, |tmp| {
            std::fs::write(tmp, "half")?;
            anyhow::bail!("broke off")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(!super::temp_path(&path).exists());
        super::write(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
