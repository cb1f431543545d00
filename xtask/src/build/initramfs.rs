//! A root tree → a deterministic newc cpio stream, compressed on other threads.
//!
//! The archive holds every entry of the tree except the excluded top-level names (`boot`), in the order
//! of their paths compared component by component (so parents come before children), with:
//! - uid, gid and mode (setuid, setgid, sticky) as on disk; devices with their major/minor; FIFOs, sockets;
//! - hardlinks as in GNU cpio's newc: every link of a file shares one inode number and the link count,
//!   and only the last link carries the data (the kernel's init/initramfs.c links the earlier names,
//!   then writes the data through the last one);
//! - inode numbers counted from 1 in archive order, device numbers 0, mtimes clamped to the source date;
//! - `dev/console` (char 5:1) and `dev/null` (char 1:3) added when the tree lacks them.
//!
//! Packing streams: one thread reads the tree and writes the cpio stream in 1 MiB chunks, the calling
//! thread feeds them to the (multi-threaded) compressor. The archive is never held in memory.
//!
//! The initramfs is several such archives ([`split`]), each compressed on its own; the kernel unpacks
//! them one after another into one tree, as the boot loader loads them one after another. They are split
//! where content changes together: the configuration (`etc`, `root`, `lib/apk`), each package big enough
//! to be worth its own, and the rest. A deploy then writes only the archives that changed.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;

use anyhow::{bail, Context};
use cpio::newc;

use crate::build::compress::Compression;
use crate::build::compress::Compressor;

/// Top-level names kept out of the archive: the kernel and microcode are separate build products.
pub const EXCLUDED: &[&str] = &["boot"];

/// Biggest file newc can hold: sizes are 8 hex digits.
const MAX_FILE_SIZE: u64 = u32::MAX as u64;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// What was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Entries in the archive (without the trailer).
    pub entries: usize,
    /// Size of the uncompressed cpio stream.
    pub cpio_bytes: u64,
    /// Size of the compressed output.
    pub compressed_bytes: u64,
}

/// Paths whose files change with the system's configuration (and apk's database, with any package).
pub const CONFIG_DIRS: &[&str] = &["etc", "root", "lib/apk"];
/// The archive of everything no other archive holds: the first one.
pub const BASE: &str = "initramfs";
/// The archive of [`CONFIG_DIRS`]: the last one.
pub const CONFIG: &str = "config.img";
/// A package gets an archive of its own when its files (outside [`CONFIG_DIRS`]) take this many bytes.
pub const PACKAGE_MIN: u64 = 2 << 20;
/// At most this many packages get an archive of their own (the biggest): every archive is a path on the
/// boot loader's command line.
pub const MAX_PACKAGES: usize = 12;

/// One archive of the initramfs: its artifact name and its entries, in archive order.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub entries: Vec<Entry>,
}

/// The artifact name of package `name`'s archive.
pub fn package_segment(name: &str) -> String {
    format!("pkg-{name}.img")
}

/// Splits `entries` (from [`scan`]) into the archives the initramfs is made of, in load order: [`BASE`],
/// one per big package (owners read from the tree's apk database, named by [`package_segment`], sorted by
/// name), [`CONFIG`]. Each archive also holds the directories above its entries (the kernel creates no
/// parents; a directory met again is left as it is), and every link of a file sits in the archive of its
/// first link (the kernel pairs links within one archive).
pub fn split(root: &Path, entries: Vec<Entry>) -> anyhow::Result<Vec<Segment>> {
    let db = root.join(crate::build::manifest::APK_DB);
    let packages = match fs::read_to_string(&db) {
        Ok(text) => crate::build::manifest::parse_apk_db(&text),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", db.display())),
    };
    let mut owner: std::collections::HashMap<&str, &str> = Default::default();
    for p in &packages {
        for f in &p.files {
            owner.insert(f.as_str(), p.name.as_str());
        }
    }
    let is_config = |e: &Entry| CONFIG_DIRS.iter().any(|d| e.path.starts_with(d));
    let package_of = |e: &Entry| e.path.to_str().and_then(|p| owner.get(p).copied());
    // A file's bytes count once, for the owner of its first link (only its last link carries them).
    let is_link = |e: &Entry| e.nlink > 1 && e.mode & S_IFMT == S_IFREG;
    let mut link_bytes: std::collections::HashMap<u32, u64> = Default::default();
    for e in entries.iter().filter(|e| is_link(e)) {
        *link_bytes.entry(e.ino).or_default() += e.size as u64;
    }
    let mut bytes: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in entries.iter().filter(|e| !is_config(e)) {
        if let Some(p) = package_of(e) {
            let size = match is_link(e) {
                true => link_bytes.remove(&e.ino).unwrap_or(0),
                false => e.size as u64,
            };
            *bytes.entry(p).or_default() += size;
        }
    }
    let mut big: Vec<(&str, u64)> = bytes
        .into_iter()
        .filter(|(_, b)| *b >= PACKAGE_MIN)
        .collect();
    big.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    big.truncate(MAX_PACKAGES);
    let mut names: Vec<&str> = big.iter().map(|(n, _)| *n).collect();
    names.sort();
    let config = names.len() + 1;
    let segment_of = |e: &Entry| {
        if is_config(e) {
            config
        } else {
            package_of(e)
                .and_then(|p| names.iter().position(|n| *n == p))
                .map_or(0, |i| i + 1)
        }
    };

    let mut of: Vec<usize> = entries.iter().map(segment_of).collect();
    let mut first_link: std::collections::HashMap<u32, usize> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        if is_link(e) {
            of[i] = *first_link.entry(e.ino).or_insert(of[i]);
        }
    }
    let index: std::collections::HashMap<&Path, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.mode & S_IFMT == S_IFDIR)
        .map(|(i, e)| (e.path.as_path(), i))
        .collect();
    let mut member = vec![vec![false; entries.len()]; config + 1];
    for (i, e) in entries.iter().enumerate() {
        member[of[i]][i] = true;
        for dir in e.path.ancestors().skip(1) {
            match index.get(dir) {
                Some(&d) if !member[of[i]][d] => member[of[i]][d] = true,
                _ => break,
            }
        }
    }
    let seg_names = std::iter::once(BASE.to_string())
        .chain(names.iter().map(|n| package_segment(n)))
        .chain(std::iter::once(CONFIG.to_string()));
    Ok(seg_names
        .zip(member)
        .enumerate()
        .filter(|(s, (_, m))| *s == 0 || (0..entries.len()).any(|i| m[i] && of[i] == *s))
        .map(|(_, (name, m))| Segment {
            name,
            entries: entries
                .iter()
                .zip(&m)
                .filter(|(_, in_it)| **in_it)
                .map(|(e, _)| e.clone())
                .collect(),
        })
        .collect())
}

/// Joins archives (a build's initrds) into one file at `dest`, replaced whole, as a boot loader loads
/// them: the kernel unpacks one after another. For loaders that take one initrd (qemu's `-initrd`).
pub fn join(parts: &[PathBuf], dest: &Path) -> anyhow::Result<PathBuf> {
    crate::host::atomic::replace(dest, |tmp| {
        let mut output =
            File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for part in parts {
            let mut input =
                File::open(part).with_context(|| format!("opening {}", part.display()))?;
            io::copy(&mut input, &mut output)
                .with_context(|| format!("copying {} into {}", part.display(), tmp.display()))?;
        }
        Ok(())
    })?;
    Ok(dest.to_path_buf())
}

/// Checks that `/init` exists in the tree and resolves (following symlinks inside the tree) to an
/// executable regular file: the kernel runs it as PID 1 and panics when it cannot.
pub fn check_init(root: &Path) -> anyhow::Result<()> {
    let resolved = resolve_in_tree(root, Path::new("init"))
        .with_context(|| format!("resolving /init in {}", root.display()))?;
    let Some(rel) = resolved else {
        bail!(
            "{}: /init is missing or a dangling symlink; the kernel runs /init as the first process \
             (for OpenRC, let setup.sh run `ln -sf /sbin/openrc-init /init`)",
            root.display()
        );
    };
    let meta =
        fs::metadata(root.join(&rel)).with_context(|| format!("reading /{}", rel.display()))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        let via = if rel == Path::new("init") {
            String::new()
        } else {
            format!(" (→ /{})", rel.display())
        };
        bail!(
            "{}: /init{via} is not an executable file; the kernel cannot run it as the first process \
             (chmod 0755 it)",
            root.display()
        );
    }
    Ok(())
}

/// Resolves `path` (relative to the tree's root) like the kernel would inside the booted system:
/// absolute symlink targets start at the tree's root and `..` never leaves it. `None` when missing.
pub fn resolve_in_tree(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    enum Step {
        Up,
        Name(OsString),
    }
    fn push_reversed(todo: &mut Vec<Step>, path: &Path) {
        for c in path.components().rev() {
            match c {
                Component::ParentDir => todo.push(Step::Up),
                Component::Normal(name) => todo.push(Step::Name(name.to_owned())),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut todo = Vec::new();
    push_reversed(&mut todo, path);
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(step) = todo.pop() {
        match step {
            Step::Up => {
                cur.pop();
            }
            Step::Name(name) => {
                let next = cur.join(&name);
                let meta = match fs::symlink_metadata(root.join(&next)) {
                    Ok(meta) => meta,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
                    Err(err) => return Err(err),
                };
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > 40 {
                        return Err(io::Error::other(format!(
                            "/{}: too many levels of symlinks",
                            next.display()
                        )));
                    }
                    let target = fs::read_link(root.join(&next))?;
                    if target.is_absolute() {
                        cur = PathBuf::new();
                    }
                    push_reversed(&mut todo, &target);
                } else {
                    cur = next;
                }
            }
        }
    }
    Ok(Some(cur))
}

/// A digest of everything about the tree the build's products can depend on, without reading any file's
/// contents: for every entry (`/boot` included, where the kernel and microcode come from) its path, type
/// and mode, owner, size, mtime and ctime in nanoseconds, device and inode numbers (which also give the
/// hardlink groups), link count, device numbers and symlink target. Writing to a file changes its mtime
/// and ctime, and ctime cannot be set back: an unchanged digest means an unchanged tree.
pub fn metadata_digest(root: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    fn visit(root: &Path, rel: &Path, h: &mut Sha256) -> anyhow::Result<()> {
        let full = root.join(rel);
        let m =
            fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
        h.update(rel.as_os_str().as_bytes());
        h.update(b"\0");
        let fields = [
            m.mode() as i64,
            m.uid() as i64,
            m.gid() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.dev() as i64,
            m.ino() as i64,
            m.nlink() as i64,
            m.rdev() as i64,
        ];
        for f in fields {
            h.update(f.to_le_bytes());
        }
        if m.file_type().is_symlink() {
            let target =
                fs::read_link(&full).with_context(|| format!("reading {}", full.display()))?;
            h.update(target.as_os_str().as_bytes());
        }
        h.update(b"\0");
        if m.is_dir() {
            let mut names = Vec::new();
            for child in
                fs::read_dir(&full).with_context(|| format!("listing {}", full.display()))?
            {
                names.push(
                    child
                        .with_context(|| format!("listing {}", full.display()))?
                        .file_name(),
                );
            }
            names.sort();
            for name in names {
                visit(root, &rel.join(name), h)?;
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    visit(root, Path::new(""), &mut h)?;
    Ok(crate::build::manifest::hex(&h.finalize()))
}

/// One archive entry, decided before any byte is written.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the tree's root; empty for the root itself.
    pub path: PathBuf,
    /// Name in the archive: `.` for the root, else the relative path.
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub nlink: u32,
    pub ino: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Bytes of data in the archive: file contents (0 for all links of a file but the last), the
    /// symlink target, or 0.
    pub size: u32,
    /// The source of the data: read from the tree, or none (synthetic and data-less entries).
    synthetic: bool,
    /// (st_dev, st_ino) for regular files with more than one link on disk.
    link_key: Option<(u64, u64)>,
}

/// Lists the tree in archive order with every header field decided.
pub fn scan(root: &Path, source_date: u32) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let meta = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    walk(root, PathBuf::new(), meta, source_date, &mut entries)?;
    add_console_and_null(&mut entries, source_date);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    number_inodes(&mut entries);
    Ok(entries)
}

fn walk(
    root: &Path,
    rel: PathBuf,
    meta: fs::Metadata,
    source_date: u32,
    out: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    let full = root.join(&rel);
    let mode = meta.mode();
    let name = if rel.as_os_str().is_empty() {
        ".".to_string()
    } else {
        rel.to_str()
            .with_context(|| {
                format!(
                    "{}: the file name is not UTF-8, which the packer does not support",
                    full.display()
                )
            })?
            .to_string()
    };
    let size = match mode & S_IFMT {
        S_IFREG => {
            if meta.len() > MAX_FILE_SIZE {
                bail!(
                    "{}: {} bytes; the initramfs (newc cpio) cannot hold a file of 4 GiB or more",
                    full.display(),
                    meta.len()
                );
            }
            meta.len() as u32
        }
        S_IFLNK => fs::read_link(&full)
            .with_context(|| format!("reading {}", full.display()))?
            .as_os_str()
            .len() as u32,
        _ => 0,
    };
    let is_dir = mode & S_IFMT == S_IFDIR;
    let rdev = meta.rdev();
    out.push(Entry {
        path: rel.clone(),
        name,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime().clamp(0, source_date as i64) as u32,
        nlink: 1,
        ino: 0,
        rdev_major: libc::major(rdev),
        rdev_minor: libc::minor(rdev),
        size,
        synthetic: false,
        link_key: (mode & S_IFMT == S_IFREG && meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
    });
    if !is_dir {
        return Ok(());
    }
    let index = out.len() - 1;
    let mut subdirs = 0;
    let read_dir = fs::read_dir(&full).with_context(|| format!("listing {}", full.display()))?;
    for child in read_dir {
        let child = child.with_context(|| format!("listing {}", full.display()))?;
        let child_name = child.file_name();
        if rel.as_os_str().is_empty() && EXCLUDED.iter().any(|e| OsStr::new(e) == child_name) {
            continue;
        }
        let child_meta = child
            .metadata()
            .with_context(|| format!("reading {}", child.path().display()))?;
        if child_meta.is_dir() {
            subdirs += 1;
        }
        walk(root, rel.join(&child_name), child_meta, source_date, out)?;
    }
    out[index].nlink = 2 + subdirs;
    Ok(())
}

/// The kernel opens /dev/console for the first process's stdio before /init runs; without it, /init
/// starts with no console. /dev/null is needed by almost every init script.
fn add_console_and_null(entries: &mut Vec<Entry>, mtime: u32) {
    let has = |entries: &Vec<Entry>, p: &str| {
        entries
            .iter()
            .find(|e| e.path == Path::new(p))
            .map(|e| e.mode & S_IFMT)
    };
    match has(entries, "dev") {
        Some(S_IFDIR) => {}
        Some(_) => return, // /dev is something else (a symlink?): leave it as the tree has it.
        None => entries.push(synthetic("dev", S_IFDIR | 0o755, 0, 0, mtime)),
    }
    if has(entries, "dev/console").is_none() {
        entries.push(synthetic("dev/console", S_IFCHR | 0o600, 5, 1, mtime));
    }
    if has(entries, "dev/null").is_none() {
        entries.push(synthetic("dev/null", S_IFCHR | 0o666, 1, 3, mtime));
    }
}

fn synthetic(path: &str, mode: u32, major: u32, minor: u32, mtime: u32) -> Entry {
    Entry {
        path: PathBuf::from(path),
        name: path.to_string(),
        mode,
        uid: 0,
        gid: 0,
        mtime,
        nlink: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
        ino: 0,
        rdev_major: major,
        rdev_minor: minor,
        size: 0,
        synthetic: true,
        link_key: None,
    }
}

/// Inode numbers in archive order; links of one file share the first link's number and the link
/// count, and all but the last link carry no data.
fn number_inodes(entries: &mut [Entry]) {
    let mut groups: std::collections::HashMap<(u64, u64), Vec<usize>> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(key) = e.link_key {
            groups.entry(key).or_default().push(i);
        }
    }
    let mut next = 1;
    for i in 0..entries.len() {
        if let Some(key) = entries[i].link_key {
            let members = &groups[&key];
            if members[0] != i {
                continue; // numbered with its first link
            }
            for &m in members {
                entries[m].ino = next;
                entries[m].nlink = members.len() as u32;
            }
            for &m in &members[..members.len() - 1] {
                entries[m].size = 0;
            }
        } else {
            entries[i].ino = next;
        }
        next += 1;
    }
}

/// Writes the cpio stream of `entries` (from [`scan`]) to `out`, reading data from `root`.
pub fn write_cpio<W: Write>(root: &Path, entries: &[Entry], mut out: W) -> anyhow::Result<W> {
    let mut buf = vec![0u8; 256 * 1024];
    for e in entries {
        let header = newc::Builder::new(&e.name)
            .ino(e.ino)
            .mode(e.mode)
            .uid(e.uid)
            .gid(e.gid)
            .nlink(e.nlink)
            .mtime(e.mtime)
            .rdev_major(e.rdev_major)
            .rdev_minor(e.rdev_minor);
        let mut w = header.write(out, e.size);
        if e.size > 0 && !e.synthetic {
            let full = root.join(&e.path);
            if e.mode & S_IFMT == S_IFLNK {
                let target =
                    fs::read_link(&full).with_context(|| format!("reading {}", full.display()))?;
                if target.as_os_str().len() != e.size as usize {
                    bail!("{}: changed while packing", full.display());
                }
                w.write_all(target.as_os_str().as_bytes())?;
            } else {
                let mut file =
                    File::open(&full).with_context(|| format!("reading {}", full.display()))?;
                let mut left = e.size as usize;
                while left > 0 {
                    let want = left.min(buf.len());
                    let n = file
                        .read(&mut buf[..want])
                        .with_context(|| format!("reading {}", full.display()))?;
                    if n == 0 {
                        bail!("{}: changed while packing (shrank)", full.display());
                    }
                    w.write_all(&buf[..n]).context("writing the cpio stream")?;
                    left -= n;
                }
            }
        }
        out = w.finish().context("writing the cpio stream")?;
    }
    newc::trailer(out).context("writing the cpio stream")
}

/// Packs the tree at `root` into `out` as one archive, compressed with `format`.
pub fn pack(
    root: &Path,
    source_date: u32,
    format: Compression,
    out: File,
) -> anyhow::Result<Stats> {
    pack_entries(root, scan(root, source_date)?, format, out)
}

/// Packs `entries` (from [`scan`] or [`split`]) of the tree at `root` into `out`, compressed with `format`.
///
/// A thread reads the files and writes the cpio stream in chunks; this thread compresses them.
pub fn pack_entries(
    root: &Path,
    entries: Vec<Entry>,
    format: Compression,
    out: File,
) -> anyhow::Result<Stats> {
    let count = entries.len();
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
    let root_owned = root.to_path_buf();
    let packer = std::thread::Builder::new()
        .name("cpio".into())
        .spawn(move || -> anyhow::Result<u64> {
            let chunks = ChunkWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
                total: 0,
            };
            let mut chunks = write_cpio(&root_owned, &entries, chunks)?;
            chunks.send()?;
            Ok(chunks.total)
        })
        .context("starting the packer thread")?;

    let mut compressor = Compressor::new(
        format,
        CountingWriter {
            inner: io::BufWriter::new(out),
            count: 0,
        },
    )
    .context("starting the compressor")?;
    let mut write_err = None;
    for chunk in rx.iter() {
        if let Err(err) = compressor.write_all(&chunk) {
            write_err = Some(err);
            break; // dropping the receiver stops the packer
        }
    }
    drop(rx);
    let packed = packer
        .join()
        .map_err(|_| anyhow::anyhow!("the packer thread panicked"))?;
    if let Some(err) = write_err {
        return Err(err).context("compressing the initramfs");
    }
    let cpio_bytes = packed?;
    let mut counting = compressor.finish().context("compressing the initramfs")?;
    counting.inner.flush().context("writing the initramfs")?;
    // No fsync: OUT/ is rebuilt from its inputs; readers check the manifest's sums.
    drop(
        counting
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .context("writing the initramfs")?,
    );
    Ok(Stats {
        entries: count,
        cpio_bytes,
        compressed_bytes: counting.count,
    })
}

const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader and the compressor: enough to keep both busy, few enough to keep
/// the packer's memory small (the compressors buffer their own input).
const DEPTH: usize = 4;

/// Collects the cpio stream into chunks for the compressor thread. `flush` does nothing: the cpio crate
/// flushes after every entry, which must not cost a channel message each.
struct ChunkWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    total: u64,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("boot")).unwrap();
        fs::write(r.join("boot/vmlinuz-lts"), b"kernel").unwrap();
        fs::write(r.join("bin/busybox"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(r.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(r.join("bin/busybox"), r.join("bin/sh")).unwrap();
        symlink("/bin/busybox", r.join("init")).unwrap();
        dir
    }

    #[test]
    fn order_links_and_devices() {
        let dir = tree();
        let entries = scan(dir.path(), 1000).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".",
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "init"
            ]
        );
        let (bb, sh) = (&entries[2], &entries[3]);
        assert_eq!((bb.ino, bb.nlink, bb.size), (sh.ino, 2, 0));
        assert_eq!(sh.size, 10);
        assert_eq!((entries[5].rdev_major, entries[5].rdev_minor), (5, 1));
        let inos: Vec<_> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 3, 4, 5, 6, 7]);
        assert!(entries.iter().all(|e| e.mtime <= 1000));
    }

    #[test]
    fn the_initramfs_splits_into_base_big_packages_and_configuration() {
        let dir = tree();
        let r = dir.path();
        for d in [
            "usr/lib/big",
            "usr/bin",
            "etc/big",
            "usr/share",
            "lib/apk/db",
            "root/.ssh",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("usr/lib/big/data"), vec![7u8; PACKAGE_MIN as usize]).unwrap();
        fs::write(r.join("usr/bin/small"), b"small").unwrap();
        fs::write(r.join("usr/bin/mine"), b"no package's").unwrap();
        fs::write(r.join("etc/big/big.conf"), b"conf").unwrap();
        fs::write(r.join("root/.ssh/authorized_keys"), b"key").unwrap();
        // A link of a big package's file outside it goes where its first link is.
        fs::hard_link(r.join("usr/lib/big/data"), r.join("usr/share/zlink")).unwrap();
        fs::write(
            r.join(crate::build::manifest::APK_DB),
            "P:big\nV:1-r0\nF:usr/lib/big\nR:data\nF:etc/big\nR:big.conf\n\n\
             P:small\nV:1-r0\nF:usr/bin\nR:small\n\n",
        )
        .unwrap();
        let entries = scan(r, 1000).unwrap();
        let all = entries.len();
        let segments = split(r, entries).unwrap();
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [BASE, "pkg-big.img", CONFIG]);
        let paths = |i: usize| -> Vec<&str> {
            segments[i]
                .entries
                .iter()
                .map(|e| e.name.as_str())
                .collect()
        };
        assert_eq!(
            paths(1),
            [
                ".",
                "usr",
                "usr/lib",
                "usr/lib/big",
                "usr/lib/big/data",
                "usr/share",
                "usr/share/zlink"
            ]
        );
        assert_eq!(
            paths(2),
            [
                ".",
                "etc",
                "etc/big",
                "etc/big/big.conf",
                "lib",
                "lib/apk",
                "lib/apk/db",
                "lib/apk/db/installed",
                "root",
                "root/.ssh",
                "root/.ssh/authorized_keys"
            ]
        );
        for want in [
            "bin/busybox",
            "bin/sh",
            "dev/console",
            "init",
            "usr/bin/small",
            "usr/bin/mine",
        ] {
            assert!(paths(0).contains(&want), "{want} not in {:?}", paths(0));
        }
        // Every entry is in some archive, and nothing but a directory is in two.
        let mut paths: Vec<&Path> = segments
            .iter()
            .flat_map(|s| s.entries.iter().map(|e| e.path.as_path()))
            .collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), all);
        let mut seen = std::collections::HashSet::new();
        for e in segments.iter().flat_map(|s| &s.entries) {
            assert!(
                seen.insert(&e.name) || e.mode & S_IFMT == S_IFDIR,
                "{} twice",
                e.name
            );
        }
        // The link that carries the data is the last of its pair, in the same archive.
        let (data, zlink) = (&segments[1].entries[4], &segments[1].entries[6]);
        assert_eq!((data.ino, data.nlink, data.size), (zlink.ino, 2, 0));
        assert_eq!(zlink.size as u64, PACKAGE_MIN);

        // Without an apk database: the base and the configuration.
        fs::remove_file(r.join(crate::build::manifest::APK_DB)).unwrap();
        let segments = split(r, scan(r, 1000).unwrap()).unwrap();
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [BASE, CONFIG]);
    }

    #[test]
    fn init_resolution() {
        let dir = tree();
        check_init(dir.path()).unwrap();
        fs::set_permissions(
            dir.path().join("bin/busybox"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = format!("{:#}", check_init(dir.path()).unwrap_err());
        assert!(
            err.contains("/init (→ /bin/busybox) is not an executable"),
            "{err}"
        );
        fs::remove_file(dir.path().join("init")).unwrap();
        symlink("../../nowhere", dir.path().join("init")).unwrap();
        let err = format!("{:#}", check_init(dir.path()).unwrap_err());
        assert!(err.contains("/init is missing"), "{err}");
        // `..` never leaves the tree: /../../bin/sh is /bin/sh.
        fs::set_permissions(
            dir.path().join("bin/busybox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::remove_file(dir.path().join("init")).unwrap();
        symlink("../../bin/sh", dir.path().join("init")).unwrap();
        check_init(dir.path()).unwrap();
    }
}
