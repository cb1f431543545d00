//! `cargo xtask flash`: write the stick image to a whole-disk device, safely, fast and verified, keeping
//! the stick's `/persist`.
//!
//! The steps, in the order they happen:
//! 1. Open the device read-only and hold it to the end, [`blockdev::describe`] it and refuse it when
//!    [`blockdev::refusal`] says so (nothing opened for writing yet).
//! 2. Plan the writes: the image's data ranges (SEEK_DATA/SEEK_HOLE); for a FAT32 partition also its
//!    reserved sectors, FATs and every allocated cluster (so a hole inside a file reaches the device as
//!    zeros); and *guard* ranges written from the image even where it has holes (so as zeros): the first
//!    and last MiB of the device (MBR, GPT header and its backup at the very end, ISO9660, md/ZFS labels)
//!    and of every partition of the image (filesystem signatures: ext*, btrfs, LVM, md, bcache, ZFS, swap
//!    all lie within these). Old bytes elsewhere lie in space the new partition table and FAT leave unused.
//! 3. Show the device and ask for its name, unless `--yes`.
//! 4. Claim the device exclusively (O_EXCL: the kernel refuses it if mounted or held since step 1), and
//!    check that the claimed and the held device are still the one described (device number and size: a
//!    stick replugged during the prompt may have handed its name to another disk).
//! 5. Read the old stick's `/persist` (a FAT partition labelled RAMNAS), unless `--wipe`, refusing names
//!    that are not plain file names and bounding its depth and size, and save a copy in a new private
//!    directory (0700, unguessable name) in $TMPDIR or /var/tmp in case the flash is interrupted (removed
//!    once the new one is verified).
//! 6. Write the planned ranges with O_DIRECT in 4 MiB chunks (a reader thread fills the next buffer while
//!    the current one is written), then fsync.
//! 7. Drop the device's buffer cache, read every written range back with O_DIRECT and compare it byte for
//!    byte with the image (cheaper than hashing both sides, and stricter).
//! 8. Make `/persist` the old one, or empty: the image's own `/persist` (a VM booted from the image may have
//!    saved its host keys there) goes whole; flush, drop caches, read it back and compare.
//! 9. Ask the kernel to re-read the partition table (BLKRRPART, then `partx --update` if that did not
//!    show the image's partitions).
//!
//! Ctrl-C from step 4 on sets a flag checked between chunks; the command stops and says the stick is
//! incomplete.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, Seek, Write},
    os::unix::{
        fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    flags::FlashFlags,
    host::blockdev::{self, Device, Host},
    host::progress,
    stick::mbr::{self, Partition},
    stick::{self, Stick},
};

/// How much is written or read per system call.
const CHUNK: u64 = 4 << 20;
/// Guard size at the start and end of the device and of each partition.
const GUARD: u64 = 1 << 20;
/// Buffers in flight between the reader thread and the writer.
const DEPTH: usize = 3;

/// What [`write_image`] does besides writing.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept a disk that is not removable.
    pub force: bool,
    /// Do not keep the old stick's /persist.
    pub wipe: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// What a flash did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Bytes written from the image's data ranges and guard ranges (all of it read back and compared).
    pub written: u64,
    /// Of those, bytes that are holes in the image (written as zeros).
    pub zeroed: u64,
    pub ranges: usize,
    pub write_time: Duration,
    pub verify_time: Duration,
    /// Files of /persist carried over from the old stick (`None`: no ramnas stick there, or `--wipe`).
    pub persist_files: Option<usize>,
    /// Files the image held in /persist, which the stick does not get (the old stick's /persist, or an
    /// empty one, replaces the image's whole).
    pub image_persist_dropped: usize,
    /// Whether the kernel re-read the partition table.
    pub reread: bool,
}

pub fn run(flags: FlashFlags) -> Result<()> {
    let image = flags
        .image
        .unwrap_or_else(|| flags.out.out.join("boot.img"));
    let host = Host::read()?;
    let plan = plan(&host, &image, &flags.device, flags.force)?;
    eprint!(
        "This erases everything on {}:\n{}",
        flags.device.display(),
        plan.device.summary()
    );
    if plan.device.partitions.is_empty() {
        // The kernel may not parse the table (no partition scanning, no MBR support): read it ourselves.
        let table = File::open(&flags.device)
            .map_err(anyhow::Error::from)
            .and_then(|mut f| mbr::read(&mut f))
            .ok()
            .flatten()
            .unwrap_or_default();
        for p in table {
            eprintln!(
                "    MBR partition {}: {} at {}, type 0x{:02x}",
                p.index,
                blockdev::human(p.len),
                blockdev::human(p.start),
                p.kind
            );
        }
    }
    eprintln!(
        "  image:     {} ({} of data in {} ranges, {} written in all)",
        image.display(),
        blockdev::human(plan.data_bytes()),
        plan.ranges.len(),
        blockdev::human(plan.total()),
    );
    for dir in leftover_rescues() {
        eprintln!(
            "note: {} holds a /persist saved by a flash that did not finish; if that stick lost its /persist, \
             copy these files back into it",
            dir.display()
        );
    }
    if !flags.yes {
        confirm(&plan.device)?;
    }
    let opts = Options {
        force: flags.force,
        wipe: flags.wipe,
        progress: true,
    };
    let stats = execute(&plan, &opts)?;
    eprintln!(
        "flashed {} to {}: {} written in {:.1} s ({}/s), read back and verified in {:.1} s",
        image.display(),
        flags.device.display(),
        blockdev::human(stats.written),
        stats.write_time.as_secs_f64(),
        blockdev::human((stats.written as f64 / stats.write_time.as_secs_f64().max(1e-3)) as u64),
        stats.verify_time.as_secs_f64(),
    );
    if stats.image_persist_dropped > 0 {
        eprintln!(
            "note: {} held {} files in /persist (left by a VM booted from it?); the stick did not get them",
            image.display(),
            stats.image_persist_dropped
        );
    }
    match stats.persist_files {
        Some(n) => eprintln!("kept /persist ({n} files), verified"),
        None if flags.wipe => eprintln!("/persist starts empty (--wipe)"),
        None => eprintln!("no earlier ramnas stick there: /persist starts empty"),
    }
    if !stats.reread {
        eprintln!(
            "note: the kernel did not re-read the partition table; unplug and replug the stick before using it here"
        );
    }
    Ok(())
}

/// Flashes `image` to `device` without asking: the same safety checks, writes, verification and /persist
/// handling as `cargo xtask flash --yes`.
pub fn write_image(image: &Path, device: &Path, opts: &Options) -> Result<Stats> {
    write_image_on(&Host::read()?, image, device, opts)
}

/// [`write_image`] against the given host facts (tests inject which disk holds `/`).
pub fn write_image_on(host: &Host, image: &Path, device: &Path, opts: &Options) -> Result<Stats> {
    let plan = plan(host, image, device, opts.force)?;
    execute(&plan, opts)
}

/// A byte range of the device: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
}

/// Everything decided before the device is opened for writing.
struct Plan {
    device: Device,
    /// The device, open (read-only) since before it was described: while it is held, its device number
    /// cannot pass to another disk, and the claim must open the same one ([`same_device`]).
    held: File,
    image: PathBuf,
    image_len: u64,
    /// Sorted, disjoint, aligned to the device's block size.
    ranges: Vec<Range>,
    /// The image's own data ranges (for the statistics).
    data: Vec<Range>,
    /// The image's partition table, which the kernel should show after the flash.
    partitions: Vec<Partition>,
}

impl Plan {
    fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    fn data_bytes(&self) -> u64 {
        self.data.iter().map(|r| r.end - r.start).sum()
    }
}

fn plan(host: &Host, image: &Path, device: &Path, force: bool) -> Result<Plan> {
    let mut file = File::open(image).with_context(|| {
        format!(
            "opening the image {}; make it with `cargo xtask image`",
            image.display()
        )
    })?;
    let image_len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    let held = hold(device)?;
    let device = blockdev::describe(device, host)?;
    same_device(&held, &device, "was described")?;
    blockdev::refusal(&device, image_len, force).map_err(anyhow::Error::msg)?;
    let block = device.logical_block_size;
    if image_len == 0 || image_len % block != 0 {
        bail!(
            "{}: its size ({image_len} bytes) is not a whole number of {block}-byte sectors of {}",
            image.display(),
            device.path.display()
        );
    }
    let data = data_ranges(&file, image_len)
        .with_context(|| format!("finding the data in {}", image.display()))?;
    let partitions = mbr::read(&mut file)
        .with_context(|| format!("reading the partition table of {}", image.display()))?
        .unwrap_or_default();
    if stick::ramnas_partition(&file, &partitions)?.is_none() {
        bail!(
            "{}: not a ramnas image (no FAT partition labelled RAMNAS to hold /persist); make one with \
             `cargo xtask image`",
            image.display()
        );
    }
    let mut wanted = data.clone();
    for p in &partitions {
        wanted
            .extend(partition_used(&file, p, image_len).with_context(|| {
                format!("reading partition {} of {}", p.index, image.display())
            })?);
    }
    let ranges = write_ranges(
        &wanted,
        &partitions,
        image_len,
        device.size,
        block.max(4096),
    );
    Ok(Plan {
        device,
        held,
        image: image.to_path_buf(),
        image_len,
        ranges,
        data,
        partitions,
    })
}

/// The ranges of `file` that hold data, from SEEK_DATA/SEEK_HOLE (all of it when the filesystem cannot
/// tell).
fn data_ranges(file: &File, len: u64) -> Result<Vec<Range>> {
    use rustix::{fs::SeekFrom, io::Errno};
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(vec![Range { start: 0, end: len }]),
            Err(err) => return Err(io::Error::from(err)).context("lseek(SEEK_DATA)"),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))
            .map_err(io::Error::from)
            .context("lseek(SEEK_HOLE)")?;
        let end = end.min(len);
        ranges.push(Range { start, end });
        pos = end;
    }
    Ok(ranges)
}

/// The ranges of partition `p` whose contents matter: for FAT32 its reserved sectors, its FATs and every
/// allocated cluster (holes there must become zeros on the device: a copy of the image with zero blocks
/// turned into holes must not leave old bytes inside files); for anything else, all of it.
fn partition_used(file: &File, p: &Partition, image_len: u64) -> Result<Vec<Range>> {
    let end = (p.start + p.len).min(image_len);
    let whole = vec![Range {
        start: p.start,
        end,
    }];
    let mut boot = [0u8; 512];
    if p.start + 512 > image_len {
        return Ok(whole);
    }
    file.read_exact_at(&mut boot, p.start)
        .context("reading the boot sector")?;
    let u16_at = |o: usize| u16::from_le_bytes([boot[o], boot[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes(boot[o..o + 4].try_into().unwrap()) as u64;
    let (sector, per_cluster, reserved, fats) =
        (u16_at(11), boot[13] as u64, u16_at(14), boot[16] as u64);
    let (fat_sectors, total_sectors) = (u32_at(36), u32_at(32));
    let fat32 = &boot[82..90] == b"FAT32   " && u16_at(22) == 0 && boot[510..512] == [0x55, 0xaa];
    if !fat32 || sector < 512 || per_cluster == 0 || fat_sectors == 0 {
        return Ok(whole);
    }
    let fat_start = p.start + reserved * sector;
    let data_start = fat_start + fats * fat_sectors * sector;
    let cluster = per_cluster * sector;
    let clusters = (total_sectors.saturating_sub(reserved + fats * fat_sectors) / per_cluster)
        .min(fat_sectors * sector / 4 - 2);
    let mut fat = vec![0u8; ((clusters + 2) * 4) as usize];
    file.read_exact_at(&mut fat, fat_start)
        .context("reading the FAT")?;
    let mut used = vec![Range {
        start: p.start,
        end: data_start.min(end),
    }];
    for n in 2..clusters + 2 {
        let i = n as usize * 4;
        if u32::from_le_bytes(fat[i..i + 4].try_into().unwrap()) & 0x0fff_ffff == 0 {
            continue;
        }
        let start = data_start + (n - 2) * cluster;
        match used.last_mut() {
            Some(last) if last.end == start => last.end = start + cluster,
            _ => used.push(Range {
                start,
                end: start + cluster,
            }),
        }
    }
    for r in &mut used {
        r.end = r.end.min(end);
    }
    Ok(used)
}

/// Data ranges plus guards, aligned outward to `align`, clipped to the device, merged.
fn write_ranges(
    data: &[Range],
    partitions: &[Partition],
    image_len: u64,
    device_len: u64,
    align: u64,
) -> Vec<Range> {
    let mut all: Vec<Range> = data.to_vec();
    let mut guard = |start: u64, end: u64| all.push(Range { start, end });
    guard(0, GUARD);
    guard(device_len.saturating_sub(GUARD), device_len);
    for p in partitions {
        let end = (p.start + p.len).min(image_len);
        guard(p.start, (p.start + GUARD).min(end));
        guard(end.saturating_sub(GUARD).max(p.start), end);
    }
    let mut aligned: Vec<Range> = all
        .into_iter()
        .map(|r| Range {
            start: r.start / align * align,
            end: r.end.div_ceil(align).saturating_mul(align).min(device_len),
        })
        .filter(|r| r.start < r.end)
        .collect();
    aligned.sort_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::new();
    for r in aligned {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Splits ranges into chunks of at most [`CHUNK`] bytes: (offset, length).
fn chunks(ranges: &[Range]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for r in ranges {
        let mut off = r.start;
        while off < r.end {
            let len = (r.end - off).min(CHUNK);
            out.push((off, len as usize));
            off += len;
        }
    }
    out
}

/// Asks the user to type the device's name.
fn confirm(device: &Device) -> Result<()> {
    eprint!(
        "Type the device name ({}) to erase it, anything else to stop: ",
        device.path.display()
    );
    io::stderr().flush().ok();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    let answer = answer.trim();
    let accepted = [
        device.path.display().to_string(),
        format!("/dev/{}", device.name),
        device.name.clone(),
    ];
    if answer.is_empty() || !accepted.iter().any(|a| a == answer) {
        bail!(
            "not confirmed ({answer:?} is not {}): nothing was written",
            device.path.display()
        );
    }
    Ok(())
}

fn execute(plan: &Plan, opts: &Options) -> Result<Stats> {
    let sigint = crate::host::signals::Interrupts::catch(&[libc::SIGINT])?;
    let claim = claim(&plan.device.path)?;
    same_device(&claim, &plan.device, "was shown and confirmed")?;
    same_device(&plan.held, &plan.device, "was shown and confirmed")?;
    let persist = read_persist_unless_wiped(plan, opts)?;
    let saved = match &persist {
        Some(p) => Some(save_copy(p, &plan.device.name)?),
        None => None,
    };
    let run = Run {
        plan,
        claim: &claim,
        sigint: &sigint,
        saved: saved.as_deref(),
    };
    let mut stats = Stats {
        ranges: plan.ranges.len(),
        written: plan.total(),
        zeroed: plan
            .total()
            .saturating_sub(overlap(&plan.ranges, &plan.data)),
        ..Stats::default()
    };
    let image = File::open(&plan.image)
        .with_context(|| format!("opening the image {}", plan.image.display()))?;
    stats.write_time = run.write(&image, opts.progress)?;
    stats.verify_time = run.verify(&image, opts.progress)?;
    stats.image_persist_dropped = run.restore(persist.as_ref().unwrap_or(&Persist::default()))?;
    stats.persist_files = persist.as_ref().map(Persist::files);
    if let Some(dir) = &saved {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    stats.reread = reread_partitions(&claim, &plan.device, &plan.partitions);
    Ok(stats)
}

/// Opens the device read-only, to hold it from its description to the end.
fn hold(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// Fails unless `file` is the device `device` describes: the same device number and size. `when` says at
/// which step it was opened.
fn same_device(file: &File, device: &Device, when: &str) -> Result<()> {
    let path = device.path.display();
    let meta = file
        .metadata()
        .with_context(|| format!("looking at {path}"))?;
    let dev = blockdev::DevNum::from_rdev(meta.rdev());
    // A block device's size is where its end is.
    let size = (&*file)
        .seek(io::SeekFrom::End(0))
        .with_context(|| format!("reading the size of {path}"))?;
    if !meta.file_type().is_block_device() || dev != device.dev || size != device.size {
        bail!(
            "refusing {path}: it is no longer the device that {when} (then block device {} of {} bytes, now {} of \
             {size} bytes: was the stick unplugged or replaced?); nothing was written, run flash again",
            device.dev,
            device.size,
            if meta.file_type().is_block_device() { dev.to_string() } else { "not a block device".into() },
        );
    }
    Ok(())
}

/// Opens the device for writing, exclusively (no one may mount or claim it meanwhile) and bypassing the
/// page cache.
fn claim(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            let why = match e.kind() {
                io::ErrorKind::PermissionDenied => "run flash as root",
                io::ErrorKind::ResourceBusy => "something mounted or claimed it since the check",
                _ => "nothing was written",
            };
            anyhow::Error::new(e).context(format!("opening {} for writing ({why})", path.display()))
        })
}

/// The old stick's /persist, unless `--wipe`.
fn read_persist_unless_wiped(plan: &Plan, opts: &Options) -> Result<Option<Persist>> {
    if opts.wipe {
        return Ok(None);
    }
    let path = &plan.device.path;
    read_persist(path).with_context(|| {
        format!(
            "reading /persist from the ramnas stick on {} (nothing was written; --wipe flashes without keeping it)",
            path.display()
        )
    })
}

/// One flash under way: the device claimed, Ctrl-C caught, the old /persist saved on the host.
struct Run<'a> {
    plan: &'a Plan,
    claim: &'a File,
    sigint: &'a crate::host::signals::Interrupts,
    saved: Option<&'a Path>,
}

impl Run<'_> {
    /// The error for a stop after the first write: the stick will not boot, and where the old /persist is.
    fn incomplete(&self, what: &str) -> String {
        let mut msg = format!(
            "{what}: {} is INCOMPLETE and will not boot; run `cargo xtask flash` on it again",
            self.plan.device.path.display()
        );
        if let Some(dir) = self.saved {
            msg.push_str(&format!(
                ". Its old /persist is saved in {} (copy it back into /persist on the stick)",
                dir.display()
            ));
        }
        msg
    }

    /// Writes the plan's ranges from `image`, then flushes the device; returns how long it took.
    fn write(&self, image: &File, progress: bool) -> Result<Duration> {
        let (plan, path, total) = (self.plan, &self.plan.device.path, self.plan.total());
        if self.sigint.interrupted() {
            bail!(
                "interrupted by Ctrl-C: nothing was written to {}",
                path.display()
            );
        }
        if progress {
            eprintln!(
                "writing {} to {} (Ctrl-C stops, leaving the stick incomplete)",
                blockdev::human(total),
                path.display()
            );
        }
        let bar = progress::bar(progress, total, "writing  ");
        let started = Instant::now();
        let written = pipeline(
            &chunks(&plan.ranges),
            |off, buf| read_image(image, plan.image_len, off, buf),
            |_, off, buf, ()| {
                if self.sigint.interrupted() {
                    bail!(self.incomplete("interrupted by Ctrl-C while writing"));
                }
                self.claim
                    .write_all_at(buf, off)
                    .with_context(|| format!("writing {} at byte {off}", path.display()))?;
                bar.inc(buf.len() as u64);
                Ok(())
            },
        );
        bar.finish_and_clear();
        written.map_err(|e| {
            if self.sigint.interrupted() {
                e
            } else {
                e.context(self.incomplete("the write failed"))
            }
        })?;
        self.claim
            .sync_all()
            .with_context(|| self.incomplete(&format!("flushing {}", path.display())))?;
        Ok(started.elapsed())
    }

    /// Reads every range back from the device (not the page cache) and compares it with `image`.
    fn verify(&self, image: &File, progress: bool) -> Result<Duration> {
        let (plan, path) = (self.plan, &self.plan.device.path);
        drop_caches(self.claim);
        let bar = progress::bar(progress, plan.total(), "verifying");
        let mut expected = AlignedBuf::new(CHUNK as usize);
        let started = Instant::now();
        pipeline(
            &chunks(&plan.ranges),
            |off, buf| {
                self.claim
                    .read_exact_at(buf, off)
                    .with_context(|| format!("reading {} back at byte {off}", path.display()))
            },
            |_, off, buf, ()| {
                if self.sigint.interrupted() {
                    bail!(self.incomplete("interrupted by Ctrl-C while verifying"));
                }
                let want = &mut expected.as_mut()[..buf.len()];
                read_image(image, plan.image_len, off, want)?;
                if buf != want {
                    bail!(self.incomplete(&format!(
                        "verification failed: {} bytes at byte {off} of {} differ from the image (is the stick failing?)",
                        buf.len(),
                        path.display()
                    )));
                }
                bar.inc(buf.len() as u64);
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        Ok(started.elapsed())
    }

    /// Makes the new stick's /persist the old one (empty when there was none); returns how many of the
    /// image's files it dropped.
    fn restore(&self, persist: &Persist) -> Result<usize> {
        if self.sigint.interrupted() {
            bail!(self.incomplete("interrupted by Ctrl-C before /persist was restored"));
        }
        restore_persist(&self.plan.device.path, persist, self.claim)
            .with_context(|| self.incomplete("restoring /persist failed"))
    }
}

/// Bytes of `a` that are also in `b` (both sorted and disjoint).
fn overlap(a: &[Range], b: &[Range]) -> u64 {
    let mut sum = 0;
    for x in a {
        for y in b {
            let (s, e) = (x.start.max(y.start), x.end.min(y.end));
            if s < e {
                sum += e - s;
            }
        }
    }
    sum
}

/// Image bytes at `off` (zeros past its end).
fn read_image(image: &File, image_len: u64, off: u64, buf: &mut [u8]) -> Result<()> {
    let in_image = image_len.saturating_sub(off).min(buf.len() as u64) as usize;
    image
        .read_exact_at(&mut buf[..in_image], off)
        .with_context(|| format!("reading the image at byte {off}"))?;
    buf[in_image..].fill(0);
    Ok(())
}

/// Runs `fill` on a reader thread and `consume` on this one, over `chunks` in order, with [`DEPTH`]
/// page-aligned buffers in flight (O_DIRECT needs aligned memory).
fn pipeline<T: Send>(
    chunks: &[(u64, usize)],
    fill: impl Fn(u64, &mut [u8]) -> Result<T> + Sync,
    mut consume: impl FnMut(usize, u64, &[u8], T) -> Result<()>,
) -> Result<()> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<(usize, AlignedBuf, T)>>(DEPTH);
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..DEPTH + 1 {
        free_tx
            .send(AlignedBuf::new(CHUNK as usize))
            .expect("the receiver is here");
    }
    std::thread::scope(|scope| {
        let fill = &fill;
        scope.spawn(move || {
            for (i, &(off, len)) in chunks.iter().enumerate() {
                let Ok(mut buf) = free_rx.recv() else { return };
                let item = fill(off, &mut buf.as_mut()[..len]).map(|t| (i, buf, t));
                let failed = item.is_err();
                if full_tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut result = Ok(());
        for item in full_rx.iter() {
            let step = item.and_then(|(i, buf, t)| {
                let (off, len) = chunks[i];
                consume(i, off, &buf.as_ref()[..len], t)?;
                let _ = free_tx.send(buf);
                Ok(())
            });
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        drop(free_tx);
        drop(full_rx);
        result
    })
}

/// A zeroed heap buffer aligned to 4096 bytes.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, 4096).expect("a valid layout")
    }

    fn new(len: usize) -> AlignedBuf {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        let ptr = std::ptr::NonNull::new(ptr)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(len)));
        AlignedBuf { ptr, len }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// `_IO(0x12, 97)` and `_IO(0x12, 95)` from <linux/fs.h>.
const BLKFLSBUF: libc::c_ulong = 0x1261;
const BLKRRPART: libc::c_ulong = 0x125f;

/// Writes back and drops the device's buffer cache, so later reads come from the device.
fn drop_caches(dev: &File) {
    // SAFETY: BLKFLSBUF takes no argument and touches no memory of ours; the descriptor is open.
    unsafe {
        libc::ioctl(dev.as_raw_fd(), BLKFLSBUF as _, 0);
    }
    let _ = rustix::fs::fadvise(dev, 0, None, rustix::fs::Advice::DontNeed);
}

/// Tells the kernel about the new partition table: BLKRRPART, and when the kernel's own parse does not show
/// the image's partitions (a kernel without MBR support, say), `partx --update`, which parses the table
/// itself and adds the partitions one by one. False when neither made the kernel show them (a loop device
/// without partition scanning, say).
fn reread_partitions(claim: &File, dev: &Device, expected: &[Partition]) -> bool {
    // udev may be probing the old partitions for a moment (EBUSY): try a few times.
    for _ in 0..5 {
        // SAFETY: BLKRRPART takes no argument and touches no memory of ours; the descriptor is open.
        if unsafe { libc::ioctl(claim.as_raw_fd(), BLKRRPART as _, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if kernel_partitions(&dev.name) == table(expected) {
        return true;
    }
    let path = &dev.path;
    let updated = xshell::Shell::new().and_then(|sh| {
        xshell::cmd!(sh, "partx --update {path}")
            .quiet()
            .ignore_stderr()
            .run()
    });
    updated.is_ok() && kernel_partitions(&dev.name) == table(expected)
}

/// (number, start, length) of each partition, sorted.
fn table(entries: &[Partition]) -> Vec<(u64, u64, u64)> {
    let mut t: Vec<_> = entries
        .iter()
        .map(|e| (e.index as u64, e.start, e.len))
        .collect();
    t.sort();
    t
}

/// The partitions the kernel shows for disk `name` in /sys, as [`table`] does.
fn kernel_partitions(name: &str) -> Vec<(u64, u64, u64)> {
    let read = |p: &Path| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    let mut t: Vec<_> = fs::read_dir(Path::new("/sys/block").join(name))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let d = e.path();
                    Some((
                        read(&d.join("partition"))?,
                        read(&d.join("start"))? * 512,
                        read(&d.join("size"))? * 512,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

// ---- /persist ----------------------------------------------------------------------------------------

/// The contents of a stick's /persist: directories and files, paths relative to it, parents first. (FAT
/// keeps no owners or modes; timestamps are not carried over, the stick interface writes fixed ones.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Persist {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(String),
    File { path: String, data: Vec<u8> },
}

impl Persist {
    fn files(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::File { .. }))
            .count()
    }
}

/// Bounds on a /persist read from a stick (held in memory, saved on the host): a NAS keeps a few small
/// files there (ssh host keys, the RNG seed); a deeper or bigger one is a damaged or crafted FAT (a
/// directory entry pointing at an ancestor nests without end).
const PERSIST_DEPTH: usize = 8;
const PERSIST_ENTRIES: usize = 4096;
const PERSIST_BYTES: u64 = 64 << 20;

/// The RAMNAS FAT partition of the disk at `device`, if there is one.
fn ramnas_partition(device: &Path) -> Result<Option<Partition>> {
    let mut file = File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let parts = mbr::read(&mut file)?.unwrap_or_default();
    Ok(stick::ramnas_partition(&file, &parts)?.map(|(p, _)| p))
}

/// /persist of the ramnas stick on `device`, or `None` when there is no ramnas stick there.
fn read_persist(device: &Path) -> Result<Option<Persist>> {
    let Some(part) = ramnas_partition(device)? else {
        return Ok(None);
    };
    let mut fat = stick::Fat::open_at(device, part.start, part.len)?;
    Ok(Some(read_persist_of(&mut fat)?))
}

/// /persist of an open FAT (empty when it has none).
fn read_persist_of(fat: &mut stick::Fat) -> Result<Persist> {
    let mut persist = Persist::default();
    if fat.entry("persist")?.is_some_and(|e| e.is_dir) {
        walk(fat, "persist", 1, &mut persist, &mut 0)?;
    }
    Ok(persist)
}

/// Adds what `dir` holds to `out`, refusing bad names and anything past the bounds; `bytes` counts the
/// files' bytes so far.
fn walk(
    fat: &mut stick::Fat,
    dir: &str,
    depth: usize,
    out: &mut Persist,
    bytes: &mut u64,
) -> Result<()> {
    if depth > PERSIST_DEPTH {
        bail!(
            "/{dir}: nested deeper than {PERSIST_DEPTH} directories (a damaged FAT: a directory pointing at one \
             of its parents?)"
        );
    }
    let mut entries = fat.list(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        check_name(dir, &e.name)?;
        if out.nodes.len() >= PERSIST_ENTRIES {
            bail!("/persist holds more than {PERSIST_ENTRIES} files and directories");
        }
        let on_stick = format!("{dir}/{}", e.name);
        let path = on_stick["persist/".len()..].to_string();
        if e.is_dir {
            out.nodes.push(Node::Dir(path));
            walk(fat, &on_stick, depth + 1, out, bytes)?;
            continue;
        }
        *bytes += e.size;
        if *bytes > PERSIST_BYTES {
            bail!(
                "/persist holds more than {} (at /{on_stick})",
                blockdev::human(PERSIST_BYTES)
            );
        }
        let data = fat.read(&on_stick)?;
        out.nodes.push(Node::File { path, data });
    }
    Ok(())
}

/// Refuses a name in `dir` that is not one plain file name: empty, `.`, `..`, or holding `/`, `\`, NUL or
/// another control character (a FAT's long names are UTF-16 and fatfs takes them as they are).
fn check_name(dir: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        bail!("/{dir} holds an entry named {name:?}, which is not a plain file name (a damaged or crafted FAT)");
    }
    Ok(())
}

/// Where copies of /persist wait while a flash runs: $TMPDIR, else /var/tmp (kept across reboots).
fn rescue_root() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
        _ => std::env::temp_dir(),
    }
}

const RESCUE_PREFIX: &str = "ramnas-persist-";

/// Copies of /persist left by flashes of ours that did not finish: our own directories, not links.
fn leftover_rescues() -> Vec<PathBuf> {
    let me = rustix::process::geteuid().as_raw();
    let mut found: Vec<PathBuf> = fs::read_dir(rescue_root())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(RESCUE_PREFIX))
                .filter(|e| {
                    fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Saves a copy of `persist` in a new private directory (mode 0700, a name no one can guess beforehand),
/// for the user should the flash not finish.
fn save_copy(persist: &Persist, device_name: &str) -> Result<PathBuf> {
    let root = rescue_root();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{RESCUE_PREFIX}{device_name}-"))
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&root)
        .with_context(|| {
            format!(
                "creating a directory in {} to save /persist",
                root.display()
            )
        })?
        .keep();
    for node in &persist.nodes {
        match node {
            Node::Dir(p) => fs::create_dir(dir.join(p)),
            Node::File { path, data } => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(path))
                .and_then(|mut f| f.write_all(data)),
        }
        .with_context(|| format!("saving /persist to {}", dir.display()))?;
    }
    Ok(dir)
}

/// Makes the freshly written stick's /persist exactly `persist`: what the image held there goes (a VM
/// booted from the image may have left its host keys), then `persist` is written and read back from the
/// device. Returns how many of the image's files were dropped; writes nothing when it is already so.
fn restore_persist(device: &Path, persist: &Persist, claim: &File) -> Result<usize> {
    let part = ramnas_partition(device)?.with_context(|| {
        format!(
            "the image has no FAT partition labelled {} to hold /persist",
            stick::LABEL
        )
    })?;
    let mut fat = stick::Fat::open_at(device, part.start, part.len)?;
    let image = read_persist_of(&mut fat).context("reading the image's /persist")?;
    if image == *persist {
        return Ok(0);
    }
    for node in image.nodes.iter().rev() {
        let (Node::Dir(p) | Node::File { path: p, .. }) = node;
        fat.remove(&format!("persist/{p}"))?;
    }
    fat.create_dir_all("persist")?;
    let dirs: Vec<&str> = persist
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Dir(p) => Some(p.as_str()),
            Node::File { .. } => None,
        })
        .collect();
    for d in dirs {
        fat.create_dir_all(&format!("persist/{d}"))?;
    }
    for node in &persist.nodes {
        if let Node::File { path, data } = node {
            fat.write(&format!("persist/{path}"), &mut &data[..])?;
        }
    }
    Box::new(fat).close()?;
    drop_caches(claim);
    let back =
        read_persist(device)?.context("the RAMNAS partition vanished after writing /persist")?;
    if back != *persist {
        bail!(
            "/persist read back from {} differs from what was written",
            device.display()
        );
    }
    Ok(image.files())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Range {
        Range { start, end }
    }

    #[test]
    fn guards_cover_device_ends_and_partition_edges() {
        const M: u64 = 1 << 20;
        let data = [r(0, 512), r(M, M + 8192), r(40 * M, 40 * M + 100)];
        let part = Partition {
            index: 1,
            kind: 0x0c,
            bootable: true,
            start: M,
            len: 63 * M,
        };
        let got = write_ranges(&data, &[part], 64 * M, 100 * M, 4096);
        assert_eq!(
            got,
            vec![
                r(0, 2 * M),
                r(40 * M, 40 * M + 4096),
                r(63 * M, 64 * M),
                r(99 * M, 100 * M)
            ]
        );
    }

    #[test]
    fn ranges_are_clipped_to_the_device_and_merged() {
        let got = write_ranges(
            &[r(4096, 10_000), r(9000, 20_000)],
            &[],
            1 << 21,
            1 << 21,
            4096,
        );
        assert_eq!(got, vec![r(0, 1 << 21)]);
    }

    #[test]
    fn chunks_split_ranges() {
        let got = chunks(&[r(0, CHUNK + 4096), r(3 * CHUNK, 3 * CHUNK + 512)]);
        assert_eq!(
            got,
            vec![(0, CHUNK as usize), (CHUNK, 4096), (3 * CHUNK, 512)]
        );
    }
}
