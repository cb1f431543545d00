//! The stick's boot partition as an interface: FAT at an offset in a file or device, a directory, or ssh.
//!
//! Paths are `/`-separated and relative to the partition's root (`slots/a/vmlinuz`). Everything above this
//! (slots, trial, commit, rollback) is written once against [`Stick`], whatever the target is.
//!
//! Implementations: [`Fat`] (the FAT32 partition labelled `RAMNAS` found through the MBR of an image file or a
//! whole-disk block device, read and written with the `fatfs` crate, nothing mounted) and [`Dir`] (a directory
//! where the stick's partition is mounted); [`ssh::Ssh`] is the running NAS, its stick at `/media/boot`.
//! [`Faulty`] wraps any of them for the crash tests. [`mbr`] is the partition table, read and written.

mod dir;
mod fat;
mod faulty;
pub mod mbr;
pub mod ssh;

pub use dir::Dir;
pub use fat::{format, ramnas_partition, Fat, FixedTime, Slice, FIXED_EPOCH, LABEL};
pub use faulty::{Faulty, KILL_AT_ENV};

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::FileTypeExt,
    path::Path,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

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

    /// The encrypted datasets the running NAS has not unlocked yet (`ramnas-unlock --list`), when the target
    /// is a running NAS that has the command.
    fn locked_datasets(&mut self) -> Result<Option<Vec<String>>> {
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

/// Text read from a stick or a NAS, made safe to print on a terminal: control characters (escape sequences,
/// carriage returns, C1 codes) and the marks that reorder text are shown escaped (`\u{1b}`), the rest as it
/// is.
pub fn for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || reorders {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_for_a_terminal_shows_control_characters_escaped() {
        assert_eq!(
            for_terminal("ok \u{1b}[2J\u{1b}]0;title\u{7}\r\u{9b}31m\u{202e}x é"),
            "ok \\u{1b}[2J\\u{1b}]0;title\\u{7}\\r\\u{9b}31m\\u{202e}x é"
        );
        assert_eq!(for_terminal("plain text: 1.2-r0"), "plain text: 1.2-r0");
    }

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

    /// DIR/fat.img: a 40 MiB image with an MBR and one 32 MiB FAT partition labelled RAMNAS at 1 MiB.
    fn fat_image(dir: &Path) -> (std::path::PathBuf, fs::File) {
        let img = dir.join("fat.img");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&img)
            .unwrap();
        f.set_len(40 << 20).unwrap();
        let slice = Slice::new(f.try_clone().unwrap(), 1 << 20, 32 << 20);
        fatfs::format_volume(
            slice,
            fatfs::FormatVolumeOptions::new().volume_label(*b"RAMNAS     "),
        )
        .unwrap();
        let mbr = crate::stick::mbr::sector_zero(&[], 1, 2048, 32 << 11);
        std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0).unwrap();
        (img, f)
    }

    #[test]
    fn fat_stick_does_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (img, _) = fat_image(dir.path());
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

    /// Property: a stick image whose boot sector, FATs and root directory hold any bytes (or that is cut
    /// short) opens as a stick or is refused with an error; what opens lists and reads without a panic.
    #[test]
    fn any_fat_image_opens_or_is_refused() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let (img, f) = fat_image(dir.path());
        let mut stick = open(img.to_str().unwrap()).unwrap();
        exercise(&mut *stick);
        stick.create_dir_all("persist").unwrap();
        stick.write("persist/seed", &mut &[7u8; 5000][..]).unwrap();
        stick.close().unwrap();
        // The partition's first 256 KiB (boot sector, FATs, root directory), and its first 4 KiB alone, so
        // that edits land in the boot sector often.
        let mut head = vec![0u8; 256 << 10];
        f.read_exact_at(&mut head, 1 << 20).unwrap();
        /// Takes at most 1 MiB of a file.
        struct Bounded(usize);
        impl Write for Bounded {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0 += buf.len();
                if self.0 > 1 << 20 {
                    return Err(io::Error::other("more than 1 MiB"));
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let walk = |stick: &mut dyn Stick| {
            let mut todo = vec![(String::new(), 0)];
            while let Some((dir, depth)) = todo.pop() {
                let Ok(entries) = stick.list(&dir) else {
                    continue;
                };
                for e in entries.into_iter().take(64) {
                    let path = format!("{dir}/{}", e.name);
                    if e.is_dir && depth < 3 && e.name != "." && e.name != ".." {
                        todo.push((path, depth + 1));
                    } else if !e.is_dir {
                        let _ = stick.read_into(&path, &mut Bounded(0));
                    }
                }
            }
        };
        let opened = std::cell::Cell::new((0, 0));
        crate::fuzz::run(1000, &[&head[..4096], &head], |b| {
            f.write_all_at(&head, 1 << 20).unwrap();
            f.write_all_at(&b[..b.len().min(head.len())], 1 << 20)
                .unwrap();
            let (yes, no) = opened.get();
            match Fat::open(&img) {
                Ok(mut stick) => {
                    walk(&mut stick);
                    opened.set((yes + 1, no));
                }
                Err(_) => opened.set((yes, no + 1)),
            }
        });
        let (yes, no) = opened.get();
        assert!(yes > 50 && no > 50, "opened {yes}, refused {no}");
        for len in [
            0,
            100,
            512,
            1 << 20,
            (1 << 20) + 512,
            (1 << 20) + (64 << 10),
            20 << 20,
        ] {
            let short = dir.path().join("short.img");
            let mut data = vec![0u8; len];
            f.read_exact_at(&mut data, 0).unwrap();
            fs::write(&short, &data).unwrap();
            match Fat::open(&short) {
                Ok(mut stick) => walk(&mut stick),
                Err(err) => assert!(err.to_string().contains("short.img"), "{len}: {err:#}"),
            }
        }
    }
}
