//! [`Dir`]: a directory where the stick's partition is mounted, or a copy of its files.

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{clean, copy, Entry, Stick};

/// A directory where the stick's FAT partition is mounted (or a copy of its files).
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    pub fn open(root: &Path) -> Result<Dir> {
        if !root.is_dir() {
            bail!("{}: not a directory", root.display());
        }
        Ok(Dir {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(clean(path))
    }
}

impl Stick for Dir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let path = self.path(dir);
        let mut out = Vec::new();
        for e in fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            out.push(Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let path = self.path(path);
        let mut f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        copy(&mut f, out).with_context(|| format!("reading {}", path.display()))
    }

    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64> {
        let path = self.path(path);
        let mut f =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        copy(data, &mut f).with_context(|| format!("writing {}", path.display()))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        let path = self.path(path);
        if path.is_dir() {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))
    }

    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        let path = self.path(dir);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))
    }

    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let path = self.path(path);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = f.metadata()?.len();
        if offset + bytes.len() as u64 > size {
            bail!(
                "patching {}: {} bytes at {offset} reach past its end ({size} bytes)",
                path.display(),
                bytes.len()
            );
        }
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("patching {}", path.display()))
    }

    fn sync(&mut self) -> Result<()> {
        let d = fs::File::open(&self.root)?;
        rustix::fs::syncfs(&d)
            .map_err(io::Error::from)
            .with_context(|| format!("syncing {}", self.root.display()))
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.sync()
    }
}
