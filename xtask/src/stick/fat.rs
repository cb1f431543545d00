//! [`Fat`]: the FAT32 partition labelled `RAMNAS` of an image file or a whole-disk device, found through its
//! MBR and read and written with the `fatfs` crate (mtools only where fatfs cannot), nothing mounted.

use std::{
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{clean, copy, Entry, Stick};

/// The FAT volume label of a ramnas stick's boot partition.
pub const LABEL: &str = "RAMNAS";
/// SOURCE_DATE_EPOCH for mtools: 1980-01-01 00:00 UTC, the date [`FixedTime`] gives fatfs, so every
/// timestamp on the stick is the same.
pub const FIXED_EPOCH: &str = "315532800";

/// Every date fatfs writes: 1980-01-01 00:00 (its own default without chrono is the invalid 1980-00-00).
#[derive(Debug)]
pub struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new().time_provider(&FixedTime)
}

/// A byte range of a file or device, seen as a file of its own (the partition for `fatfs`).
pub struct Slice {
    file: fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice {
    pub fn new(file: fs::File, start: u64, len: u64) -> Slice {
        Slice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        let n = read_at(&self.file, &mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = std::os::unix::fs::FileExt::write_at(&self.file, &buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

fn read_at(file: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Makes a FAT32 file system labelled [`LABEL`] with volume serial `serial` in the `sectors` 512-byte sectors
/// of `image` from byte `start`, by `mkfs.vfat --offset`; the same bytes every time (`--invariant`).
pub fn format(image: &Path, start: u64, sectors: u64, serial: u32) -> Result<()> {
    let mkfs = crate::host::find("mkfs.vfat")?;
    let sh = xshell::Shell::new()?;
    let offset = (start / 512).to_string();
    let serial = format!("{serial:08x}");
    let blocks = (sectors / 2).to_string();
    // -i after --invariant: --invariant also fixes the serial, to its own constant.
    xshell::cmd!(
        sh,
        "{mkfs} -F 32 -n {LABEL} --invariant -i {serial} --offset {offset} {image} {blocks}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| format!("making the FAT32 file system in {}", image.display()))
}

/// Of `parts` (`file`'s MBR), the FAT partition labelled [`LABEL`], with its file system.
pub fn ramnas_partition(
    file: &fs::File,
    parts: &[crate::stick::mbr::Partition],
) -> Result<Option<(crate::stick::mbr::Partition, fatfs::FileSystem<Slice>)>> {
    for &part in parts.iter().filter(|p| p.is_fat()) {
        let slice = Slice::new(file.try_clone()?, part.start, part.len);
        let Ok(fs) = fatfs::FileSystem::new(slice, fs_options()) else {
            continue;
        };
        if fs.volume_label().trim_end() == LABEL {
            return Ok(Some((part, fs)));
        }
    }
    Ok(None)
}

/// The FAT partition labelled `RAMNAS` of an image file or whole-disk device.
pub struct Fat {
    /// Always Some, except while mtools works on the partition (see [`Fat::mmd`]).
    fs: Option<fatfs::FileSystem<Slice>>,
    /// Another handle on the same open file, to fsync it.
    file: fs::File,
    path: PathBuf,
    start: u64,
    len: u64,
    what: String,
}

impl Fat {
    /// Opens the partition labelled `RAMNAS` in the MBR of `path`.
    pub fn open(path: &Path) -> Result<Fat> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} for reading and writing", path.display()))?;
        let parts = crate::stick::mbr::read(&mut &file)
            .with_context(|| format!("reading {}", path.display()))?
            .with_context(|| {
                format!(
                    "{}: no MBR partition table (no 55aa signature, or a GPT disk)",
                    path.display()
                )
            })?;
        let found = ramnas_partition(&file, &parts)?;
        if let Some((part, fs)) = found {
            return Ok(Fat::with(fs, file, path, part.start, part.len));
        }
        bail!(
            "{}: no FAT partition labelled {LABEL} in its MBR partition table; is it a ramnas stick (made by `cargo xtask image` and `flash`)?",
            path.display()
        )
    }

    /// Opens the FAT file system at byte `start` (length `len`) of `path`, whatever its label.
    pub fn open_at(path: &Path, start: u64, len: u64) -> Result<Fat> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let slice = Slice::new(file.try_clone()?, start, len);
        let fs = fatfs::FileSystem::new(slice, fs_options())
            .with_context(|| format!("{}: no FAT file system at byte {start}", path.display()))?;
        Ok(Fat::with(fs, file, path, start, len))
    }

    /// The open file system `fs` at byte `start` (length `len`) of `file`, opened from `path`.
    fn with(
        fs: fatfs::FileSystem<Slice>,
        file: fs::File,
        path: &Path,
        start: u64,
        len: u64,
    ) -> Fat {
        Fat {
            fs: Some(fs),
            file,
            path: path.to_path_buf(),
            start,
            len,
            what: format!("{} (FAT at byte {start})", path.display()),
        }
    }

    fn fs(&self) -> &fatfs::FileSystem<Slice> {
        self.fs.as_ref().expect("the FAT file system is open")
    }

    /// Makes directories with mtools' `mmd`: fatfs 0.3 writes `.` and `..` entries that fsck.vfat rejects.
    /// The fatfs view is closed meanwhile, so the two never hold different ideas of the FAT.
    fn mmd(&mut self, dirs: &[String]) -> Result<()> {
        if let Some(fs) = self.fs.take() {
            fs.unmount()
                .with_context(|| format!("flushing the FAT file system on {}", self.what))?;
        }
        let sh = xshell::Shell::new()?;
        let mut image = self.path.clone().into_os_string();
        image.push(format!("@@{}", self.start));
        let targets: Vec<String> = dirs.iter().map(|d| format!("::/{d}")).collect();
        let made = xshell::cmd!(sh, "mmd -i {image} {targets...}")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", FIXED_EPOCH)
            .env("TZ", "UTC")
            .quiet()
            .run()
            .with_context(|| {
                format!(
                    "creating {} on {} with mtools' mmd (package mtools)",
                    dirs.join(", "),
                    self.what
                )
            });
        let slice = Slice::new(self.file.try_clone()?, self.start, self.len);
        self.fs = Some(
            fatfs::FileSystem::new(slice, fs_options())
                .with_context(|| format!("reopening the FAT file system on {}", self.what))?,
        );
        made
    }

    fn err(&self, what: &str, path: &str) -> String {
        format!("{what} {path} on {}", self.what)
    }
}

impl Stick for Fat {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let dir = clean(dir);
        let root = self.fs().root_dir();
        let d = if dir.is_empty() {
            root
        } else {
            root.open_dir(dir)
                .with_context(|| self.err("opening directory", dir))?
        };
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.with_context(|| self.err("listing", dir))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            out.push(Entry {
                name,
                is_dir: e.is_dir(),
                size: e.len(),
            });
        }
        Ok(out)
    }

    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let path = clean(path);
        let mut f = self
            .fs()
            .root_dir()
            .open_file(path)
            .with_context(|| self.err("opening", path))?;
        copy(&mut f, out).with_context(|| self.err("reading", path))
    }

    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64> {
        let path = clean(path);
        let mut f = self
            .fs()
            .root_dir()
            .create_file(path)
            .with_context(|| self.err("creating", path))?;
        f.truncate().with_context(|| self.err("truncating", path))?;
        let n = copy(data, &mut f).with_context(|| self.err("writing", path))?;
        f.flush().with_context(|| self.err("writing", path))?;
        Ok(n)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (clean(from), clean(to));
        if self.exists(to)? {
            self.remove(to)?;
        }
        let root = self.fs().root_dir();
        root.rename(from, &root, to)
            .with_context(|| self.err(&format!("renaming {from} to"), to))
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        let path = clean(path);
        self.fs()
            .root_dir()
            .remove(path)
            .with_context(|| self.err("removing", path))
    }

    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        let dir = clean(dir);
        let mut done = String::new();
        let mut missing = Vec::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            if !done.is_empty() {
                done.push('/');
            }
            done.push_str(part);
            match self.entry(&done)? {
                Some(e) if e.is_dir => {}
                Some(_) => bail!(
                    "{}: a file is in the way",
                    self.err("creating directory", &done)
                ),
                None => missing.push(done.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.mmd(&missing)
    }

    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let path = clean(path);
        let mut f = self
            .fs()
            .root_dir()
            .open_file(path)
            .with_context(|| self.err("opening", path))?;
        let size = f.seek(SeekFrom::End(0))?;
        if offset + bytes.len() as u64 > size {
            bail!(
                "{}: {} bytes at {offset} reach past its end ({size} bytes)",
                self.err("patching", path),
                bytes.len()
            );
        }
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(bytes)
            .and_then(|_| f.flush())
            .with_context(|| self.err("patching", path))
    }

    fn rename_is_atomic(&self) -> bool {
        false
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.what))
    }

    fn close(self: Box<Self>) -> Result<()> {
        let Fat { fs, file, what, .. } = *self;
        if let Some(fs) = fs {
            fs.unmount()
                .with_context(|| format!("finishing the FAT file system on {what}"))?;
        }
        file.sync_all().with_context(|| format!("syncing {what}"))
    }
}
