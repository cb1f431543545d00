//! The stick's boot partition as an interface: FAT at an offset in a file or device, a directory, or ssh.
//!
//! Paths are `/`-separated and relative to the partition's root (`slots/a/vmlinuz`). Everything above this
//! (slots, trial, commit, rollback) is written once against [`Stick`], whatever the target is.
//!
//! Implementations: [`Fat`] (the FAT32 partition labelled `RAMNAS` found through the MBR of an image file or a
//! whole-disk block device, read and written with the `fatfs` crate, nothing mounted) and [`Dir`] (a directory
//! where the stick's partition is mounted); [`crate::stick::ssh::Ssh`] is the running NAS, its stick at `/media/boot`.
//! [`Faulty`] wraps any of them for the crash tests.

pub mod mbr;
pub mod ssh;

use std::{
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

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

/// A directory entry on the stick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// The boot partition of a stick.
pub trait Stick {
    /// The target, for messages: `boot.img (FAT at byte 1048576)`.
    fn describe(&self) -> String;
    /// The entries of a directory (`""` is the root), without `.` and `..`.
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>>;
    /// Streams a file's contents into `out`; returns its size.
    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64>;
    /// Creates or truncates a file and fills it from `data`. Not atomic: write a temporary name, then
    /// [`Stick::rename`] it.
    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64>;
    /// Renames a file, replacing `to` if it exists. Atomic on a directory target; on FAT it is a removal of
    /// `to` followed by a rename, so a crash in between leaves `from` and no `to`.
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;
    /// Removes a file or an empty directory.
    fn remove(&mut self, path: &str) -> Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&mut self, dir: &str) -> Result<()>;
    /// Overwrites bytes inside an existing file without changing its size or moving its clusters (the ADV
    /// inside ldlinux.sys).
    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()>;
    /// Pushes every write so far to the device (the order of writes matters for crash safety).
    fn sync(&mut self) -> Result<()>;
    /// Finishes with the stick: flushes, marks a FAT volume clean, syncs.
    fn close(self: Box<Self>) -> Result<()>;

    /// Whether [`Stick::rename`] over an existing file is one step (false on FAT through fatfs: a removal, then
    /// a rename).
    fn rename_is_atomic(&self) -> bool {
        true
    }

    /// Forgets what was read so far: the next reads ask the stick itself. For a stick that another hand may
    /// change meanwhile (a running NAS commits its own trial).
    fn forget(&mut self) {}

    /// The kernel command line of the system running from this stick, when the target is a running NAS.
    fn running_cmdline(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// The entry at `path`, if there is one.
    fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        let path = clean(path);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty() {
            return Ok(Some(Entry {
                name: String::new(),
                is_dir: true,
                size: 0,
            }));
        }
        if !dir.is_empty() && !self.entry(dir)?.is_some_and(|e| e.is_dir) {
            return Ok(None);
        }
        Ok(self
            .list(dir)?
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(name)))
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.entry(path)?.is_some())
    }

    /// A whole file.
    fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(path, &mut out)?;
        Ok(out)
    }

    /// Writes `data` to `path` through a temporary name, so readers see the old or the new contents.
    fn replace(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let tmp = temp_name(path);
        self.write(&tmp, &mut &data[..])?;
        self.rename(&tmp, path)
    }

    /// Size and SHA-256 (lowercase hex) of a file, read back from the stick.
    fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
        let mut hasher = HashWriter(Sha256::new());
        let size = self.read_into(path, &mut hasher)?;
        Ok((size, crate::build::manifest::hex(&hasher.0.finalize())))
    }
}

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_name(path: &str) -> String {
    format!("{path}.tmp")
}

/// Copies every file from one stick to another (an image's partition into a directory, say), directories
/// made as met.
pub fn copy_all(from: &mut dyn Stick, to: &mut dyn Stick) -> Result<()> {
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        for e in from.list(&dir)? {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if e.is_dir {
                to.create_dir_all(&path)?;
                todo.push(path);
            } else {
                let data = from.read(&path)?;
                to.write(&path, &mut &data[..])?;
            }
        }
    }
    to.sync()
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn clean(path: &str) -> &str {
    path.trim_matches('/')
}

/// Opens TARGET: `ssh://…`, a directory (the mounted partition), a whole-disk block device or an image file
/// (the `RAMNAS` partition in its MBR).
pub fn open(target: &str) -> Result<Box<dyn Stick>> {
    if target.starts_with("ssh://") {
        return Ok(Box::new(crate::stick::ssh::Ssh::open(target)?));
    }
    let path = Path::new(target);
    let meta = fs::metadata(path)
        .with_context(|| format!("{target}: no such file, directory or device"))?;
    if meta.is_dir() {
        return Ok(Box::new(Dir::open(path)?));
    }
    if meta.file_type().is_block_device() {
        refuse_device_in_use(path)?;
    } else if !meta.is_file() {
        bail!("{target}: not an image file, block device or directory");
    }
    Ok(Box::new(Fat::open(path)?))
}

/// A block device must be the whole disk (the MBR is there, not on `/dev/sdb1`), and none of it may be
/// mounted: writing the FAT under the kernel's own vfat driver would corrupt it.
fn refuse_device_in_use(dev: &Path) -> Result<()> {
    let device = crate::host::blockdev::describe(dev, &crate::host::blockdev::Host::read()?)?;
    if let Some(disk) = &device.partition_of {
        bail!(
            "{}: a partition; give the whole disk (/dev/{disk}, not {})",
            dev.display(),
            dev.display()
        );
    }
    if let Some((name, mountpoint)) = device.mounted.first() {
        bail!(
            "{}: {name} is mounted at {}; use that directory as the target instead, or unmount it first",
            dev.display(),
            mountpoint.display()
        );
    }
    Ok(())
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

fn copy(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

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
        use std::os::fd::AsRawFd;
        let d = fs::File::open(&self.root)?;
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("syncing {}", self.root.display()));
        }
        Ok(())
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.sync()
    }
}

/// Testing hook: `RAMNAS_DEPLOY_KILL_AT=N` makes the process SIGKILL itself at the N-th point where the stick
/// changes, so the crash tests can stop a deploy at every one in turn.
pub const KILL_AT_ENV: &str = "RAMNAS_DEPLOY_KILL_AT";

/// A stick that counts the points where it is about to change and kills the process at the chosen one:
/// before every write, rename, removal, directory creation and patch; during every write (after its first
/// chunk, or before its end is flushed); and, where a rename is a removal then a rename (FAT), between the
/// two. The one place those points are counted.
pub struct Faulty {
    inner: Box<dyn Stick>,
    points: Points,
}

struct Points {
    seen: u64,
    kill_at: u64,
}

impl Points {
    fn point(&mut self) {
        self.seen += 1;
        if self.seen == self.kill_at {
            eprintln!("{KILL_AT_ENV}={}: killing myself here", self.kill_at);
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

impl Faulty {
    /// `stick` itself unless [`KILL_AT_ENV`] is set.
    pub fn wrap(stick: Box<dyn Stick>) -> Result<Box<dyn Stick>> {
        let Some(n) = std::env::var_os(KILL_AT_ENV) else {
            return Ok(stick);
        };
        let kill_at = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{KILL_AT_ENV}={n:?}: not a number"))?;
        Ok(Box::new(Faulty {
            inner: stick,
            points: Points { seen: 0, kill_at },
        }))
    }
}

/// Reads `inner`, passing a point on its second read (the first chunk has been written by then).
struct PointReader<'a> {
    inner: &'a mut dyn Read,
    points: &'a mut Points,
    reads: u32,
}

impl Read for PointReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads == 2 {
            self.points.point();
        }
        self.inner.read(buf)
    }
}

impl Stick for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        self.inner.list(dir)
    }
    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.inner.read_into(path, out)
    }
    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64> {
        self.points.point();
        let mut data = PointReader {
            inner: data,
            points: &mut self.points,
            reads: 0,
        };
        self.inner.write(path, &mut data)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.points.point();
        if !self.inner.rename_is_atomic() && self.inner.exists(to)? {
            // What the inner rename does anyway, with a point between its two steps.
            self.inner.remove(to)?;
            self.points.point();
        }
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<()> {
        self.points.point();
        self.inner.remove(path)
    }
    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        self.points.point();
        self.inner.create_dir_all(dir)
    }
    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        self.points.point();
        self.inner.patch(path, offset, bytes)
    }
    fn sync(&mut self) -> Result<()> {
        self.inner.sync()
    }
    fn close(self: Box<Self>) -> Result<()> {
        self.inner.close()
    }
    fn rename_is_atomic(&self) -> bool {
        self.inner.rename_is_atomic()
    }
    fn running_cmdline(&mut self) -> Result<Option<String>> {
        self.inner.running_cmdline()
    }
    fn forget(&mut self) {
        self.inner.forget()
    }
    fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        self.inner.entry(path)
    }
    fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
        self.inner.sha256(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation, the same way on both implementations.
    fn exercise(stick: &mut dyn Stick) {
        stick.create_dir_all("slots/a").unwrap();
        stick.create_dir_all("slots/a").unwrap();
        stick
            .write("slots/a/f.tmp", &mut &b"hello world"[..])
            .unwrap();
        stick.rename("slots/a/f.tmp", "slots/a/file").unwrap();
        assert!(!stick.exists("slots/a/f.tmp").unwrap());
        assert_eq!(stick.read("slots/a/file").unwrap(), b"hello world");
        stick.replace("slots/a/file", b"HELLO").unwrap();
        assert_eq!(stick.read("slots/a/file").unwrap(), b"HELLO");
        stick.patch("slots/a/file", 1, b"ey").unwrap();
        assert_eq!(stick.read("slots/a/file").unwrap(), b"HeyLO");
        assert!(stick.patch("slots/a/file", 4, b"xx").is_err());
        assert_eq!(
            stick.entry("slots/a/file").unwrap(),
            Some(Entry {
                name: "file".into(),
                is_dir: false,
                size: 5
            })
        );
        assert!(stick.entry("slots/b/file").unwrap().is_none());
        assert_eq!(
            stick.sha256("slots/a/file").unwrap(),
            (5, crate::build::manifest::hex(&Sha256::digest(b"HeyLO")))
        );
        let names: Vec<String> = stick
            .list("slots")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a"]);
        stick.remove("slots/a/file").unwrap();
        assert!(stick.list("slots/a").unwrap().is_empty());
        stick.sync().unwrap();
    }

    #[test]
    fn dir_stick_does_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut stick = Dir::open(dir.path()).unwrap();
        exercise(&mut stick);
        Box::new(stick).close().unwrap();
    }

    #[test]
    fn fat_stick_does_everything() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        let f = fs::File::create(&img).unwrap();
        f.set_len(40 << 20).unwrap();
        let slice = Slice::new(f.try_clone().unwrap(), 1 << 20, 32 << 20);
        fatfs::format_volume(
            slice,
            fatfs::FormatVolumeOptions::new().volume_label(*b"RAMNAS     "),
        )
        .unwrap();
        let mbr = crate::stick::mbr::sector_zero(&[], 1, 2048, 32 << 11);
        std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0).unwrap();
        let mut stick = open(img.to_str().unwrap()).unwrap();
        exercise(&mut *stick);
        stick.close().unwrap();
        // Reopened, the root still holds the directories.
        let mut stick = open(img.to_str().unwrap()).unwrap();
        assert!(stick.entry("slots/a").unwrap().unwrap().is_dir);
    }

    #[test]
    fn an_image_without_a_ramnas_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("blank.img");
        fs::write(&img, vec![0u8; 4096]).unwrap();
        let err = open(img.to_str().unwrap()).err().unwrap();
        assert!(
            format!("{err:#}").contains("no MBR partition table"),
            "{err:#}"
        );
    }
}
