//! `cargo xtask bench`: measure packing, booting and flashing against the plain shell pipeline.
//!
//! Each case runs once to warm up, then `--runs` times, alternating with its baseline so that both see
//! the same machine load; the table gives the median, the spread (min–max), the ratio of the medians and
//! whether the goal of issue 9 holds (the storage rows, issue 24's, have no goal). Speed is claimed only
//! from here, never from a timed test.
//!
//! What runs, in order:
//! 1. the tree: `--tree`, or a fixture with the Debian kernel's whole module directory (~500 MB);
//! 2. pack → zstd, gzip, xz: our packer in a child process (this binary with [`PACK_CHILD`] set, so its
//!    wall time and peak memory are its own) against `find . | cpio -o -H newc | <compressor>` run with
//!    the tree as the working directory (`/boot` pruned from `find`, as our packer leaves it out too);
//!    without `--tree` also on the same tree with the kernel's modules as packaged (`.ko.xz`);
//! 3. packer peak memory: the child's `ru_maxrss` from `wait4`, per format;
//! 4. no-change rebuild: `cargo xtask build --base TREE` a second time;
//! 5. boot under TCG: the default build against the seed's gzip archive of the same tree (with
//!    `/dev/console` and `/dev/null` in a small archive in front, which the seed's tree needs for a
//!    console), timed twice per boot: the kernel's unpacking of the archive (by its own log timestamps,
//!    the goal) and the whole boot to `ramnas: ready`; then the build packed uncompressed against the
//!    same seed archive, with no goal: the floor of both;
//! 6. flash a 1 GiB image holding 300 MiB of data to a loop device: `cargo xtask flash` against
//!    `dd bs=4M conv=fsync` (needs root and a free loop device; skipped with the reason otherwise);
//! 7. deploys over ssh (sshd on 127.0.0.1, the bytes counted on its TCP connection) onto a stick holding
//!    build A of a fixture of its own (with the kernel's whole module directory, unless `--tree` is given): A again, one file of /etc changed, one
//!    4 MiB package upgraded, a new kernel and modules (each against its goal in bytes); and the new
//!    kernel's deploy timed against a full copy of that build over one ssh session, checked on the NAS
//!    (`tar`, `sha256sum`, `sync`; needs root).
//! 8. storage: the NAS of `system/` under OpenRC with real OpenZFS (the storage tests' world: the openrc
//!    fixture through the stand-in alpine-make-rootfs, two data disks), its pool made once over ssh as README
//!    makes it; then each boot (TCG) timed from qemu's start to zfs-mount's word that the pool is mounted,
//!    and zfs-import's own time within it by the kernel's clock (probes in the copy's `/etc/conf.d`); no
//!    goal, for the record (needs root and the zfs module; skipped with the reason otherwise).
//!
//! `--only` picks groups of cases (`pack,rebuild,boot,flash,deploy,storage`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::compress::Compression;
use crate::flags::{BenchCases, BenchFlags};
use crate::{build::initramfs, dev::fixture, host::qemu};

/// Set (to `FORMAT OUTPUT`) in the environment of the child that packs `--tree`: the hidden entry point
/// that lets the packer run in a process of its own.
pub const PACK_CHILD: &str = "RAMNAS_BENCH_PACK";

/// The source date the packer children use (the build's default).
const SOURCE_DATE: u32 = 0;

/// How long a benchmark boot may take before the case fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The flash case's image: its size, and how much of it holds data.
const FLASH_IMAGE: u64 = 1 << 30;
const FLASH_DATA: u64 = 300 << 20;

pub fn run(flags: BenchFlags) -> Result<()> {
    if let Some(spec) = std::env::var_os(PACK_CHILD) {
        return pack_child(&flags, &spec.to_string_lossy());
    }
    if flags.runs == 0 {
        bail!("--runs 0: nothing to measure; give at least 1");
    }
    let work = Work::new()?;
    let wanted = |c: BenchCases| flags.only.is_empty() || flags.only.contains(&c);
    // Flash and deploy make their own data; only the other cases pack the tree.
    let packs = [BenchCases::Pack, BenchCases::Rebuild, BenchCases::Boot]
        .into_iter()
        .any(wanted);
    let tree = match &flags.tree {
        _ if !packs => work.0.clone(),
        Some(tree) => {
            if !tree.is_dir() {
                bail!("--tree {}: not a directory", tree.display());
            }
            fs::canonicalize(tree).with_context(|| format!("reading {}", tree.display()))?
        }
        None => default_tree(&work.0)?,
    };
    let exe = std::env::current_exe().context("finding this program")?;
    let load_before = loadavg();
    eprintln!(
        "ramnas bench: {} ({} entries), {} runs after one warm-up, {} CPUs, load average {load_before}",
        tree.display(),
        initramfs::scan(&tree, SOURCE_DATE)?.len(),
        flags.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let bench = Bench {
        exe,
        tree,
        full_size: flags.tree.is_none(),
        work: work.0.clone(),
        runs: flags.runs,
    };

    let mut rows = Vec::new();
    if wanted(BenchCases::Pack) {
        let mut trees = vec![(Tree::Given, bench.tree.clone())];
        if flags.tree.is_none() {
            trees = vec![(Tree::Decompressed, bench.tree.clone())];
            match packaged_tree(&bench.tree, &work.0) {
                Ok(packaged) => trees.push((Tree::Packaged, packaged)),
                Err(err) => rows.push(Row::failed("pack, modules as packaged", &err)),
            }
        }
        for (kind, tree) in &trees {
            for format in [Compression::Zstd, Compression::Gzip, Compression::Xz] {
                rows.extend(bench.pack(*kind, tree, format));
            }
        }
    }
    if wanted(BenchCases::Rebuild) {
        rows.push(bench.rebuild());
    }
    if wanted(BenchCases::Boot) {
        rows.extend(bench.boot());
    }
    if wanted(BenchCases::Flash) {
        rows.push(bench.flash());
    }
    if wanted(BenchCases::Deploy) {
        rows.extend(bench.deploys());
    }
    if wanted(BenchCases::Storage) {
        rows.extend(bench.storage());
    }

    let load_after = loadavg();
    let table = table(&rows);
    println!("{table}");
    if let Some(path) = &flags.markdown {
        let text = format!(
            "# `cargo xtask bench`\n\n\
             Tree: {} ({} runs after one warm-up). Machine: {} CPUs, load average {load_before} before, \
             {load_after} after.\n\n{table}\n{}\n",
            if flags.tree.is_some() {
                bench.tree.display().to_string()
            } else {
                "the fixture with the Debian kernel's whole module directory".to_string()
            },
            flags.runs,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            NOTES,
        );
        write_atomically(path, text.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.result, Outcome::Failed(_)))
        .map(|r| r.case.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("cases failed: {}", failed.join(", "));
    }
    Ok(())
}

const NOTES: &str = "\
- Times are wall-clock seconds: median (min–max). Ratio: our median / the baseline's median.
- pack: our packer (`initramfs::pack`: the whole tree as one archive; `cargo xtask build` packs the same \
entries as several, `initramfs::split`) in a process of its own, against \
`find . | cpio -o -H newc | <compressor>` in the tree (`/boot` pruned, as the packer leaves it out). \
Without `--tree`, on two trees: the fixture with every kernel module decompressed (484 MiB), and the same \
with the module directory as Debian's package ships it (`.ko.xz`, as Alpine's linux-lts ships `.ko.gz`), \
“modules as packaged”. gzip and xz run no warm-up: zstd has just read the same tree.
- memory: the packer process's peak resident set (`ru_maxrss`); xz's goal is what liblzma says its \
encoder needs on the threads it gets (as `xz -vv` reports it) + 16 MiB.
- sizes: our output against the baseline's.
- boot: qemu (TCG, 1 CPU, 2 GiB) booting `cargo xtask build`'s default format, against the seed's gzip \
archive of the same tree (the sizes are the two archives). Unpacking: from `Trying to unpack rootfs image \
as initramfs` to `Freeing initrd memory` by the kernel's own timestamps, the part of a boot a format \
changes; the whole boot to the `ramnas: ready` line is shown for comparison. The uncompressed rows boot \
the same tree packed with `--compression none`: no decompression at all, the floor for any format under \
TCG (on a real machine its size is read from the stick first).
- deploy: `cargo xtask deploy ssh://…` to an sshd on 127.0.0.1 whose stick (a directory) holds build A \
committed; bytes: what crossed the TCP connection (both ways, ssh's own included; counted by a relay \
that forwards each read at once, as a wire would), goals: A again ≤ 1 MiB, \
one file in /etc ≤ 2 % of the build, one package ≤ 1.5 × its archive + 1 MiB, a new kernel ≤ 1.1 × the build. \
The package is synthetic (4 MiB that do not compress, `bench-data`), and the new kernel is the same kernel \
and modules with every file changed: each build's files differ where a real one's would. Time: the new \
kernel's deploy against a full copy of that build as checked as a deploy's: `tar` of its files through one ssh \
session, unpacked on the NAS, each file's `sha256sum` read back there, then `sync`.
- storage: the NAS of `system/` under OpenRC (the tests' openrc fixture: Debian's OpenRC, OpenZFS 2.3 and \
udev, through the stand-in alpine-make-rootfs) in qemu (TCG, 1 CPU, 1 GiB, the stick on IDE under SeaBIOS, two \
1 GiB virtio data disks) holding README's pool (a mirror, made once over ssh). Power-on to the pool mounted: \
from qemu's start to zfs-mount's `start_post`, which finds /tank in /proc/mounts and says so on the kernel's \
log (a probe in the bench's copy of `/etc/conf.d/zfs-mount`); each boot then goes on to `ramnas: ready` and is \
powered off. zfs-import's part: from its `start_pre` to its `start_post` (probes in `/etc/conf.d/zfs-import`), \
by the kernel's timestamps: loading the zfs module and importing the pool; the share is each boot's part over \
its whole. No goal: a measurement for the record.
- flash: `cargo xtask flash --yes --force --wipe` (writes the data ranges, then reads every one back and \
compares) against `dd bs=4M conv=fsync` of the whole image, to the same loop device (direct I/O when the \
file system allows it; `sync` before each run).";

/// The hidden entry point: packs `--tree` into OUTPUT with FORMAT, as `cargo xtask build` would.
fn pack_child(flags: &BenchFlags, spec: &str) -> Result<()> {
    let (format, output) = spec
        .split_once(' ')
        .with_context(|| format!("{PACK_CHILD}={spec:?}: expected `FORMAT OUTPUT`"))?;
    let format = <Compression as clap::ValueEnum>::from_str(format, false)
        .map_err(|e| anyhow::anyhow!("{PACK_CHILD}: {e}"))?;
    let tree = flags
        .tree
        .as_deref()
        .context("the packer child needs --tree")?;
    let out = fs::File::create(output).with_context(|| format!("creating {output}"))?;
    initramfs::pack(tree, SOURCE_DATE, format, out)?;
    Ok(())
}

struct Bench {
    exe: PathBuf,
    tree: PathBuf,
    /// No `--tree`: the deploy cases' fixture carries every kernel module too.
    full_size: bool,
    work: PathBuf,
    runs: u32,
}

impl Bench {
    /// Runs `ours` and `baseline` alternately: a warm-up of each, then `runs` measured pairs.
    fn pairs<A, B>(
        &self,
        what: &str,
        ours: impl FnMut() -> Result<A>,
        baseline: impl FnMut() -> Result<B>,
    ) -> Result<(Vec<A>, Vec<B>)> {
        self.pairs_from(0, what, ours, baseline)
    }

    /// [`Bench::pairs`] from run `first`: 0 is the warm-up, 1 skips it (for a case that reads only what an
    /// earlier one has just read, so the page cache is warm already).
    fn pairs_from<A, B>(
        &self,
        first: u32,
        what: &str,
        mut ours: impl FnMut() -> Result<A>,
        mut baseline: impl FnMut() -> Result<B>,
    ) -> Result<(Vec<A>, Vec<B>)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for run in first..=self.runs {
            let label = if run == 0 {
                "warm-up".to_string()
            } else {
                format!("run {run}/{}", self.runs)
            };
            eprintln!("  {what}: {label}");
            let x = baseline()?;
            let y = ours()?;
            if run > 0 {
                b.push(x);
                a.push(y);
            }
        }
        Ok((a, b))
    }

    /// pack → FORMAT of `tree` against the cpio pipeline, and the packer's peak memory.
    fn pack(&self, kind: Tree, tree: &Path, format: Compression) -> Vec<Row> {
        let name = format.name();
        let case = format!("pack → {name}{}", kind.suffix());
        let ours_out = self.work.join(format!("pack.{name}"));
        let base_out = self.work.join(format!("baseline.{name}"));
        // zstd runs first on each tree and warms it up for gzip and xz (xz's warm-up alone took 3 minutes).
        let first = u32::from(format != Compression::Zstd);
        let measured = self.pairs_from(
            first,
            &case,
            || self.pack_in_child(tree, format, &ours_out),
            || timed(|| baseline_pack(tree, format, &base_out)).map(|(t, ())| t),
        );
        let (ours, base) = match measured {
            Ok(m) => m,
            Err(err) => {
                return vec![
                    Row::failed(&case, &err),
                    Row::failed(&format!("packer peak memory ({name})"), &err),
                ]
            }
        };
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let (ours_size, base_size) = (size(&ours_out), size(&base_out));
        let _ = fs::remove_file(&ours_out);
        let _ = fs::remove_file(&base_out);
        let (goal, size_goal) = match (format, kind) {
            (Compression::Zstd, Tree::Packaged) => (0.7, Some(1.0)),
            (Compression::Zstd, _) => (0.6, Some(1.0)),
            (Compression::Gzip, _) => (0.5, None),
            _ => (1.0, Some(1.01)),
        };
        let mut time_row = Row::compare(
            &case,
            ours.iter().map(|(t, _)| *t).collect(),
            base,
            Goal::Ratio(goal),
        );
        time_row.sizes = Some((ours_size, base_size));
        time_row.size_goal = size_goal;
        // xz needs what liblzma says its threads need; our own part is the 16 MiB on top.
        let memory_goal = match format {
            Compression::Xz => crate::build::compress::xz_memory() + (16 << 20),
            _ => 64 << 20,
        };
        let memory = Row::alone(
            &format!("packer peak memory ({name}){}", kind.suffix()),
            Samples::bytes(ours.iter().map(|(_, rss)| *rss).collect()),
            Goal::Bytes(memory_goal),
        );
        vec![time_row, memory]
    }

    /// Runs this program as the packer child; returns its wall time and peak resident set in bytes.
    fn pack_in_child(&self, tree: &Path, format: Compression, output: &Path) -> Result<(f64, f64)> {
        let mut command = Command::new(&self.exe);
        command
            .args(["bench", "--tree"])
            .arg(tree)
            .env(
                PACK_CHILD,
                format!("{} {}", format.name(), output.display()),
            )
            .stdin(std::process::Stdio::null());
        let started = Instant::now();
        let (ok, rss) = run_with_rusage(command)?;
        let elapsed = started.elapsed().as_secs_f64();
        if !ok {
            bail!("the packer failed on {}", tree.display());
        }
        Ok((elapsed, rss as f64))
    }

    /// `cargo xtask build --base TREE` once, then again with nothing changed.
    fn rebuild(&self) -> Row {
        let case = "no-change rebuild";
        let out = self.work.join("rebuild-out");
        let result = (|| -> Result<Vec<f64>> {
            eprintln!("  {case}: first build");
            self.build(&out, &[])?;
            let mut samples = Vec::new();
            for run in 0..=self.runs {
                eprintln!("  {case}: run {run}/{}", self.runs);
                let (t, text) = timed(|| self.build(&out, &[]))?;
                if !text.contains("nothing changed") {
                    bail!("the second build did not find the tree unchanged:\n{text}");
                }
                if run > 0 {
                    samples.push(t);
                }
            }
            Ok(samples)
        })();
        let _ = fs::remove_dir_all(&out);
        match result {
            Ok(samples) => Row::alone(case, Samples::seconds(samples), Goal::Seconds(1.0)),
            Err(err) => Row::failed(case, &err),
        }
    }

    /// `cargo xtask build --base TREE --out OUT EXTRA…` in the work directory (no system/ there: defaults);
    /// returns its output.
    fn build(&self, out: &Path, extra: &[&str]) -> Result<String> {
        self.build_tree(&self.tree, out, extra)
    }

    /// [`Bench::build`] of another tree.
    fn build_tree(&self, tree: &Path, out: &Path, extra: &[&str]) -> Result<String> {
        let output = Command::new(&self.exe)
            .arg("build")
            .arg("--base")
            .arg(tree)
            .arg("--out")
            .arg(out)
            .args(extra)
            .current_dir(&self.work)
            .output()
            .context("running cargo xtask build")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!(
                "cargo xtask build --base {} failed:\n{text}",
                tree.display()
            );
        }
        Ok(text)
    }

    /// `cargo xtask image --out OUT --output IMAGE --size SIZE`.
    fn image(&self, out: &Path, image: &Path, size: &str) -> Result<()> {
        let made = Command::new(&self.exe)
            .args(["image", "--out"])
            .arg(out)
            .arg("--output")
            .arg(image)
            .args(["--size", size])
            .current_dir(&self.work)
            .output()
            .context("running cargo xtask image")?;
        if !made.status.success() {
            bail!(
                "cargo xtask image failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        Ok(())
    }

    /// The rows of `cases` made by `rows` in the work directory `name` (removed after); each case fails with
    /// the error when `rows` does.
    fn rows_in(
        &self,
        name: &str,
        cases: &[&str],
        rows: impl FnOnce(&Path) -> Result<Vec<Row>>,
    ) -> Vec<Row> {
        let dir = self.work.join(name);
        let result = rows(&dir);
        let _ = fs::remove_dir_all(&dir);
        result.unwrap_or_else(|err| cases.iter().map(|c| Row::failed(c, &err)).collect())
    }

    /// Boot to `ramnas: ready` under TCG: the default build against the seed's gzip archive; then, for
    /// comparison (no goal), the same tree packed uncompressed: the floor no compressed format can beat.
    fn boot(&self) -> Vec<Row> {
        let cases = [
            "boot: the kernel unpacking the archive (TCG)",
            "boot to `ramnas: ready` (TCG, for comparison)",
        ];
        let floor = [
            "boot, uncompressed archive: unpacking (TCG, for comparison)",
            "boot, uncompressed archive: to `ramnas: ready` (TCG, for comparison)",
        ];
        let seed = self.work.join("seed-initramfs.gz");
        if let Err(err) = seed_archive(&self.tree, &self.work, &seed) {
            return cases
                .iter()
                .chain(&floor)
                .map(|c| Row::failed(c, &err))
                .collect();
        }
        let mut rows = self.boot_build(cases, &[], &seed, Goal::Ratio(0.6), Some(0.85));
        rows.extend(self.boot_build(floor, &["--compression", "none"], &seed, Goal::None, None));
        let _ = fs::remove_file(&seed);
        rows
    }

    /// Builds the tree with `cargo xtask build EXTRA…` and boots it against the seed's archive: a row for
    /// the kernel's unpacking (against `goal`, the archive's size against `size_goal`) and one for the
    /// whole boot (no goal).
    fn boot_build(
        &self,
        [unpack_case, case]: [&str; 2],
        extra: &[&str],
        seed: &Path,
        goal: Goal,
        size_goal: Option<f64>,
    ) -> Vec<Row> {
        let out = self.work.join("boot-out");
        let result = (|| -> Result<Vec<Row>> {
            eprintln!("  {case}: building");
            self.build(&out, extra)?;
            let kernel = out.join("vmlinuz");
            // The initramfs' archives joined, as the boot loader loads them (no microcode: the seed has none).
            let manifest = crate::build::manifest::Manifest::load(
                &out.join(crate::build::manifest::Manifest::FILE_NAME),
            )?;
            let archives: Vec<PathBuf> = manifest
                .initrds()
                .iter()
                .filter(|n| n.as_str() != "ucode.img")
                .map(|n| out.join(n))
                .collect();
            let initramfs = initramfs::join(&archives, &out.join("initramfs.joined"))?;
            let (ours, base) = self.pairs(
                case,
                || self.boot_once(&kernel, &initramfs, "ours"),
                || self.boot_once(&kernel, seed, "seed"),
            )?;
            let sizes = Some((fs::metadata(&initramfs)?.len(), fs::metadata(seed)?.len()));
            let unpacking = |b: &[(f64, f64)]| b.iter().map(|(_, u)| *u).collect();
            let whole = |b: &[(f64, f64)]| b.iter().map(|(t, _)| *t).collect();
            let mut unpack = Row::compare(unpack_case, unpacking(&ours), unpacking(&base), goal);
            unpack.sizes = sizes;
            unpack.size_goal = size_goal;
            let mut row = Row::compare(case, whole(&ours), whole(&base), Goal::None);
            row.sizes = sizes;
            Ok(vec![unpack, row])
        })();
        let _ = fs::remove_dir_all(&out);
        result.unwrap_or_else(|err| vec![Row::failed(unpack_case, &err), Row::failed(case, &err)])
    }

    /// One boot: (seconds to the ready line, seconds the kernel spent unpacking the initramfs by its own
    /// clock).
    fn boot_once(&self, kernel: &Path, initrd: &Path, name: &str) -> Result<(f64, f64)> {
        let mut machine = qemu::Machine::new(qemu::Accel::Tcg);
        // The unpacked tree, the archive and the kernel all live in RAM.
        machine.mem = "2G".to_string();
        machine.direct = Some(qemu::Direct {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            append: "console=ttyS0 panic=-1 printk.time=1".to_string(),
        });
        let log = self.work.join(format!("boot-{name}.log"));
        let started = Instant::now();
        let mut vm = machine.start(&log, false)?;
        vm.expect("ramnas: ready", BOOT_TIMEOUT)
            .with_context(|| format!("booting {}", initrd.display()))?;
        let whole = started.elapsed().as_secs_f64();
        drop(vm);
        let text =
            fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let unpack = unpack_seconds(&text).with_context(|| {
            format!("{}: the kernel's unpacking of the initramfs", log.display())
        })?;
        Ok((whole, unpack))
    }

    /// Flash a 1 GiB image with 300 MiB of data to a loop device, against dd.
    fn flash(&self) -> Row {
        let case = "flash 1 GiB image (300 MiB data) to a loop device";
        if !crate::host::is_root() {
            return Row::skipped(case, "needs root (loop devices); run the bench as root");
        }
        if which::which("losetup").is_err() {
            return Row::skipped(case, "no losetup on this machine");
        }
        let image = self.work.join("flash.img");
        let backing = self.work.join("flash-device.img");
        let row = (|| -> Result<Row> {
            write_sparse_image(&image)?;
            let file = fs::File::create(&backing)
                .with_context(|| format!("creating {}", backing.display()))?;
            file.set_len(FLASH_IMAGE)?;
            let device = match Loop::attach(&backing) {
                Ok(device) => device,
                Err(err) => {
                    return Ok(Row::skipped(case, &format!("no free loop device: {err:#}")))
                }
            };
            let mut unavailable = None;
            let measured = self.pairs(
                case,
                || {
                    settle();
                    let (t, res) = timed(|| flash_child(&self.exe, &image, &device.0))?;
                    if let Err(why) = res {
                        unavailable = Some(why);
                        bail!("flash not available");
                    }
                    Ok(t)
                },
                || {
                    settle();
                    timed(|| dd(&image, &device.0)).map(|(t, ())| t)
                },
            );
            Ok(match (measured, unavailable) {
                (_, Some(why)) => Row::skipped(case, &why),
                (Ok((ours, base)), None) => Row::compare(case, ours, base, Goal::Ratio(0.5)),
                (Err(err), None) => Row::failed(case, &err),
            })
        })()
        .unwrap_or_else(|err| Row::failed(case, &err));
        let _ = fs::remove_file(&image);
        let _ = fs::remove_file(&backing);
        row
    }
}

/// The default tree: the fixture with every kernel module, written into the work directory.
fn default_tree(work: &Path) -> Result<PathBuf> {
    let tree = work.join("tree");
    eprintln!(
        "ramnas bench: writing the fixture tree (the Debian kernel's whole module directory) to {}",
        tree.display()
    );
    let mut f = fixture::Fixture::new("bench");
    f.all_modules = true;
    f.write(&tree).context("writing the bench fixture")?;
    Ok(tree)
}

/// From a boot's kernel log: the time from `Trying to unpack rootfs image as initramfs` to `Freeing initrd
/// memory`, by the kernel's own timestamps.
fn unpack_seconds(log: &str) -> Result<f64> {
    kernel_seconds(
        log,
        "Trying to unpack rootfs image as initramfs",
        "Freeing initrd memory",
    )
}

/// From a boot's kernel log: the time from the first line containing `from` to the first containing `to`,
/// by the kernel's own timestamps.
fn kernel_seconds(log: &str, from: &str, to: &str) -> Result<f64> {
    let stamp = |what: &str| -> Result<f64> {
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .with_context(|| format!("no {what:?} line"))?;
        let inside = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(t, _)| t.trim())
            .with_context(|| format!("no kernel timestamp on {line:?}"))?;
        inside
            .parse()
            .with_context(|| format!("no kernel timestamp on {line:?}"))
    };
    Ok(stamp(to)? - stamp(from)?)
}

/// Which tree a pack case packs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tree {
    /// `--tree`.
    Given,
    /// The fixture with every kernel module decompressed (as the fixture boots them).
    Decompressed,
    /// The same with the module directory as the kernel package ships it (`.ko.xz`, as Alpine's linux-lts
    /// ships `.ko.gz`): what a real system carries.
    Packaged,
}

impl Tree {
    fn suffix(self) -> &'static str {
        match self {
            Tree::Given | Tree::Decompressed => "",
            Tree::Packaged => ", modules as packaged",
        }
    }
}

/// The fixture tree with its module directory replaced by the host kernel's as packaged.
fn packaged_tree(tree: &Path, work: &Path) -> Result<PathBuf> {
    let kernel = fixture::HostKernel::find()?;
    let packaged = work.join("tree-packaged");
    eprintln!(
        "ramnas bench: copying the tree with {} as packaged to {}",
        kernel.modules.display(),
        packaged.display()
    );
    copy_dir(tree, &packaged)?;
    let modules = packaged.join("lib/modules").join(&kernel.version);
    fs::remove_dir_all(&modules).with_context(|| format!("removing {}", modules.display()))?;
    copy_dir(&kernel.modules, &modules)?;
    Ok(packaged)
}

/// `find . | cpio -o -H newc | <compressor>` in the tree, into `out`.
fn baseline_pack(tree: &Path, format: Compression, out: &Path) -> Result<()> {
    let find = duct::cmd!("find", ".", "-path", "./boot", "-prune", "-o", "-print").dir(tree);
    let cpio = duct::cmd!("cpio", "-o", "-H", "newc", "--quiet").dir(tree);
    let compress = match format {
        Compression::Zstd => duct::cmd!("zstd", "-q", "-T0"),
        Compression::Gzip => duct::cmd!("gzip"),
        Compression::Xz => duct::cmd!("xz", "-T0", "--check=crc32"),
        Compression::None => duct::cmd!("cat"),
    };
    find.pipe(cpio)
        .pipe(compress)
        .stdout_path(out)
        .run()
        .with_context(|| {
            format!(
                "running find | cpio -o -H newc | {} in {}",
                format.name(),
                tree.display()
            )
        })?;
    Ok(())
}

/// The seed's boot archive: `find . | cpio -o -H newc | gzip` of the tree, after a small gzip'd archive
/// holding `/dev/console` and `/dev/null` (the kernel opens the console before /init; a tree made by
/// alpine-make-rootfs has an empty /dev). The kernel unpacks concatenated archives one after the other.
fn seed_archive(tree: &Path, work: &Path, out: &Path) -> Result<()> {
    let empty = work.join("empty-tree");
    fs::create_dir_all(&empty)?;
    let nodes = work.join("dev-nodes.gz");
    let file = fs::File::create(&nodes)?;
    initramfs::pack(&empty, SOURCE_DATE, Compression::Gzip, file)?;
    let body = work.join("seed-body.gz");
    baseline_pack(tree, Compression::Gzip, &body)?;
    let mut dst = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for part in [&nodes, &body] {
        std::io::copy(&mut fs::File::open(part)?, &mut dst)?;
        fs::remove_file(part)?;
    }
    fs::remove_dir(&empty)?;
    Ok(())
}

/// A sparse image of [`FLASH_IMAGE`] bytes laid out as a stick (an MBR, one FAT32 partition labelled
/// RAMNAS from 1 MiB to the end, for /persist) holding [`FLASH_DATA`] bytes of incompressible data in 4 MiB
/// extents spread over the partition's free clusters, so `flash` writes the data ranges, the file system's
/// used parts and its guard ranges, nothing else.
fn write_sparse_image(path: &Path) -> Result<()> {
    const MIB: u64 = 1 << 20;
    // The MBR's disk id and the FAT volume serial ("benc").
    const ID: u32 = 0x6265_6e63;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(FLASH_IMAGE)?;
    let extent = 4 * MIB;
    // Past the boot sector, FATs and root directory mkfs.vfat writes at the partition's start.
    let first = 8 * MIB;
    let count = FLASH_DATA / extent;
    let stride = ((FLASH_IMAGE - first) / count) & !(MIB - 1);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; extent as usize];
    for i in 0..count {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64: cheap bytes no compressor or deduplication could shortcut.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all_at(&buf, first + i * stride)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let sectors = (FLASH_IMAGE - MIB) / 512;
    let mbr = crate::stick::mbr::sector_zero(&[], ID, (MIB / 512) as u32, sectors as u32);
    file.write_all_at(&mbr, 0)?;
    file.sync_all()?;
    drop(file);
    crate::stick::format(path, MIB, sectors, ID)
}

/// `cargo xtask flash DEVICE --image IMAGE --yes --force --wipe`: `Err(why)` when this build has no
/// working flash command.
fn flash_child(exe: &Path, image: &Path, device: &Path) -> Result<std::result::Result<(), String>> {
    let output = Command::new(exe)
        .arg("flash")
        .arg(device)
        .arg("--image")
        .arg(image)
        .args(["--yes", "--force", "--wipe"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running cargo xtask flash")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return Ok(Ok(()));
    }
    if stderr.contains("not implemented") {
        return Ok(Err(format!(
            "flash not available in this build (`cargo xtask flash`: {})",
            stderr.trim()
        )));
    }
    bail!("cargo xtask flash {} failed:\n{stderr}", device.display())
}

fn dd(image: &Path, device: &Path) -> Result<()> {
    let mut input = std::ffi::OsString::from("if=");
    input.push(image);
    let mut output = std::ffi::OsString::from("of=");
    output.push(device);
    let sh = xshell::Shell::new()?;
    xshell::cmd!(sh, "dd {input} {output} bs=4M conv=fsync status=none")
        .run()
        .context("running dd")?;
    Ok(())
}

/// Writes back every dirty page before a timed flash or dd, so that neither pays for the other's
/// writeback.
fn settle() {
    rustix::fs::sync();
}

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    /// In direct-I/O mode when the file system allows it: writes then reach the disk as they would a
    /// stick's, instead of stopping in the host's page cache.
    fn attach(file: &Path) -> Result<Loop> {
        let sh = xshell::Shell::new()?;
        let direct = xshell::cmd!(sh, "losetup --find --show --direct-io=on {file}")
            .quiet()
            .ignore_stderr()
            .read();
        let dev = match direct {
            Ok(dev) => dev,
            Err(_) => xshell::cmd!(sh, "losetup --find --show {file}")
                .quiet()
                .read()
                .context("losetup --find --show")?,
        };
        Ok(Loop(PathBuf::from(dev.trim())))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Ok(sh) = xshell::Shell::new() {
            let dev = &self.0;
            let _ = xshell::cmd!(sh, "losetup -d {dev}").quiet().run();
        }
    }
}

/// Runs `command` and reaps it with wait4: (exited successfully, peak resident set in bytes).
fn run_with_rusage(mut command: Command) -> Result<(bool, u64)> {
    let child = command.spawn().context("starting the packer child")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the packer child");
        }
    }
    // The child is reaped: forget the handle so nothing waits for it again.
    std::mem::forget(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, usage.ru_maxrss as u64 * 1024))
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let started = Instant::now();
    let value = f()?;
    Ok((started.elapsed().as_secs_f64(), value))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let parts: Vec<&str> = s.split_whitespace().take(3).collect();
            (parts.len() == 3).then(|| parts.join(" "))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::host::atomic::write(path, data)
}

/// The bench's scratch directory under $TMPDIR, removed on drop.
struct Work(PathBuf);

impl Work {
    fn new() -> Result<Work> {
        let dir = std::env::temp_dir().join(format!("ramnas-bench-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Work(dir))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------------
// Results.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Seconds,
    Bytes,
}

#[derive(Debug, Clone)]
struct Samples {
    values: Vec<f64>,
    unit: Unit,
}

impl Samples {
    fn seconds(values: Vec<f64>) -> Samples {
        Samples {
            values,
            unit: Unit::Seconds,
        }
    }

    fn bytes(values: Vec<f64>) -> Samples {
        Samples {
            values,
            unit: Unit::Bytes,
        }
    }

    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    fn number(&self, v: f64) -> String {
        match self.unit {
            Unit::Seconds => format!("{v:.2}"),
            Unit::Bytes => format!("{:.1}", v / (1024.0 * 1024.0)),
        }
    }

    /// `median unit (min–max unit)`.
    fn summary(&self) -> String {
        let unit = match self.unit {
            Unit::Seconds => "s",
            Unit::Bytes => "MiB",
        };
        format!(
            "{} {unit} ({}–{} {unit})",
            self.number(self.median()),
            self.number(self.min()),
            self.number(self.max())
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Our median at most this times the baseline's.
    Ratio(f64),
    /// Our median at most this many seconds.
    Seconds(f64),
    /// Our median at most this many bytes.
    Bytes(u64),
    /// Measured for comparison only.
    None,
}

impl Goal {
    fn show(&self) -> String {
        match self {
            Goal::Ratio(r) => format!("≤ {r:.2}×"),
            Goal::Seconds(s) => format!("≤ {s} s"),
            Goal::Bytes(b) => format!("≤ {} MB", b >> 20),
            Goal::None => "—".to_string(),
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Measured {
        ours: Samples,
        baseline: Option<Samples>,
    },
    Skipped(String),
    Failed(String),
}

#[derive(Debug)]
struct Row {
    case: String,
    goal: Goal,
    result: Outcome,
    /// Output sizes: ours and the baseline's.
    sizes: Option<(u64, u64)>,
    /// Our size at most this times the baseline's.
    size_goal: Option<f64>,
    /// What the notes column says besides the sizes.
    note: Option<String>,
}

impl Row {
    fn compare(case: &str, ours: Vec<f64>, baseline: Vec<f64>, goal: Goal) -> Row {
        Row {
            case: case.to_string(),
            goal,
            result: Outcome::Measured {
                ours: Samples::seconds(ours),
                baseline: Some(Samples::seconds(baseline)),
            },
            sizes: None,
            size_goal: None,
            note: None,
        }
    }

    fn alone(case: &str, ours: Samples, goal: Goal) -> Row {
        Row {
            case: case.to_string(),
            goal,
            result: Outcome::Measured {
                ours,
                baseline: None,
            },
            sizes: None,
            size_goal: None,
            note: None,
        }
    }

    fn skipped(case: &str, why: &str) -> Row {
        eprintln!("  {case}: skipped: {why}");
        Row {
            case: case.to_string(),
            goal: Goal::Ratio(f64::NAN),
            result: Outcome::Skipped(why.to_string()),
            sizes: None,
            size_goal: None,
            note: None,
        }
    }

    fn failed(case: &str, err: &anyhow::Error) -> Row {
        eprintln!("  {case}: FAILED: {err:#}");
        Row {
            case: case.to_string(),
            goal: Goal::Ratio(f64::NAN),
            result: Outcome::Failed(format!("{err:#}")),
            sizes: None,
            size_goal: None,
            note: None,
        }
    }

    /// The ratio to the baseline (for comparisons), and whether the goal holds.
    fn verdict(&self) -> (Option<f64>, bool) {
        let Outcome::Measured { ours, baseline } = &self.result else {
            return (None, false);
        };
        let ratio = baseline.as_ref().map(|b| ours.median() / b.median());
        let time_ok = match self.goal {
            Goal::Ratio(max) => ratio.is_some_and(|r| r <= max),
            Goal::Seconds(max) => ours.median() <= max,
            Goal::Bytes(max) => ours.median() <= max as f64,
            Goal::None => true,
        };
        let size_ok = match (self.size_goal, self.sizes) {
            (Some(max), Some((o, b))) => b > 0 && o as f64 / b as f64 <= max,
            _ => true,
        };
        (ratio, time_ok && size_ok)
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | ours: median (min–max) | baseline: median (min–max) | ratio | goal | holds | notes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let line = match &row.result {
            Outcome::Skipped(why) => format!("| {} | — | — | — | — | skipped | {why} |", row.case),
            Outcome::Failed(why) => {
                let first = why.lines().next().unwrap_or("");
                format!("| {} | — | — | — | — | FAILED | {first} |", row.case)
            }
            Outcome::Measured { ours, baseline } => {
                let (ratio, holds) = row.verdict();
                let mut goal = row.goal.show();
                let mut notes = String::new();
                if let Some((o, b)) = row.sizes {
                    let mib = |x: u64| x as f64 / (1024.0 * 1024.0);
                    notes = format!(
                        "size {:.1} MiB vs {:.1} MiB ({:.3}×)",
                        mib(o),
                        mib(b),
                        o as f64 / b.max(1) as f64
                    );
                }
                if let Some(note) = &row.note {
                    if !notes.is_empty() {
                        notes.push_str("; ");
                    }
                    notes.push_str(note);
                }
                if let Some(max) = row.size_goal {
                    goal.push_str(&format!(", size ≤ {max:.2}×"));
                }
                format!(
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    row.case,
                    ours.summary(),
                    baseline.as_ref().map_or("—".to_string(), |b| b.summary()),
                    ratio.map_or("—".to_string(), |r| format!("{r:.2}×")),
                    goal,
                    match (row.goal, holds) {
                        (Goal::None, _) => "—",
                        (_, true) => "yes",
                        (_, false) => "no",
                    },
                    notes
                )
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The deploy cases' synthetic package: `usr/share/bench-data/`, this many bytes that do not compress.
const BENCH_DATA: usize = 4 << 20;

impl Bench {
    /// Deploys over ssh to a "NAS" on this machine (sshd on 127.0.0.1, its stick a directory) whose stick holds
    /// build A committed: of A again, of A with one file in /etc changed, with one package upgraded, with a
    /// new kernel and modules. The bytes are counted on the TCP connection itself (a relay in front of sshd):
    /// what would cross the network. The new kernel's deploy is timed against copying the whole build over
    /// the same ssh with `cat`.
    fn deploys(&self) -> Vec<Row> {
        let cases = [
            "deploy A again (over ssh)",
            "deploy, one file in /etc changed",
            "deploy, one package (4 MiB) upgraded",
            "deploy, a new kernel and modules",
            "deploy time, new kernel, against copying the build",
        ];
        if !crate::host::is_root() {
            let why = "needs root (sshd logs in as root); run the bench as root";
            return cases.iter().map(|c| Row::skipped(c, why)).collect();
        }
        self.rows_in("deploy", &cases, |dir| self.deploy_rows(dir, &cases))
    }

    fn deploy_rows(&self, dir: &Path, cases: &[&str; 5]) -> Result<Vec<Row>> {
        eprintln!("  deploy: writing the tree and four builds of it");
        let tree = dir.join("tree");
        let mut f = fixture::Fixture::new("deploy");
        // The kernel's whole module directory, as the default tree has, unless `--tree` asks for another size.
        f.all_modules = self.full_size;
        f.write(&tree).context("writing the deploy fixture")?;
        let kernel = fixture::HostKernel::find()?;
        let conf = tree.join("etc/bench.conf");
        let build = |name: &str| -> Result<PathBuf> {
            let out = dir.join(name);
            self.build_tree(&tree, &out, &[])?;
            Ok(out)
        };
        write_bench_packages(&tree, &kernel.version, 1, 1)?;
        fs::write(&conf, "setting = 1\n")?;
        let a = build("a")?;
        fs::write(&conf, "setting = 2\n")?;
        let etc = build("etc")?;
        fs::write(&conf, "setting = 1\n")?;
        write_bench_packages(&tree, &kernel.version, 2, 1)?;
        let package = build("package")?;
        write_bench_packages(&tree, &kernel.version, 1, 2)?;
        new_kernel(&tree, &kernel.version)?;
        let new_kernel = build("kernel")?;

        // The stick of build A, as a directory: the NAS's /media/boot.
        let a_build = crate::boot::slots::Build::open(&a)?;
        let size_mib = (4 * a_build.slot_bytes() + (64 << 20)) >> 20;
        let image = dir.join("a.img");
        self.image(&a, &image, &format!("{size_mib}M"))?;
        let base = dir.join("stick-a");
        fs::create_dir_all(&base)?;
        {
            let mut from = crate::stick::open(&image.display().to_string())?;
            let mut to = crate::stick::Dir::open(&base)?;
            crate::stick::copy_all(&mut *from, &mut to)?;
        }
        let boot = dir.join("nas-boot");
        let cmdline = dir.join("nas-cmdline");
        fs::write(&cmdline, "console=ttyS0 ramnas.slot=a\n")?;
        let sshd = fixture::Sshd::start(dir, &boot, &cmdline)?;
        let relay = fixture::CountingRelay::start(sshd.port)?;
        let target = format!("ssh://root@127.0.0.1:{}", relay.port);

        // The NAS's stick as build A left it.
        let reset = || -> Result<()> {
            let _ = fs::remove_dir_all(&boot);
            copy_dir(&base, &boot)
        };
        // One deploy onto a fresh copy of the stick: (seconds, bytes over the wire, its output).
        let deploy = |out: &Path| -> Result<(f64, f64, String)> {
            reset()?;
            let before = relay.bytes();
            let (t, output) = timed(|| {
                // The fixture's builds give root no ssh key (this sshd lets the bench in without one).
                Command::new(&self.exe)
                    .args(["deploy", &target, "--keyless", "--out"])
                    .arg(out)
                    .env(crate::stick::ssh::PROGRAM_ENV, &sshd.ssh)
                    .current_dir(&self.work)
                    .output()
                    .context("running cargo xtask deploy")
            })?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                bail!(
                    "cargo xtask deploy {target} --out {} failed:\n{text}",
                    out.display()
                );
            }
            Ok((t, (relay.bytes() - before) as f64, text))
        };
        // The bytes of a warm-up and `runs` deploys of `out`; the first is not counted.
        let measure = |out: &Path, case: &str| -> Result<Vec<f64>> {
            let mut bytes = Vec::new();
            for run in 0..=self.runs {
                eprintln!("  {case}: run {run}/{}", self.runs);
                let (_, b, text) = deploy(out)?;
                if out == a && !text.contains("nothing changed") {
                    bail!("the deploy of the committed build did not say nothing changed:\n{text}");
                }
                if run > 0 {
                    bytes.push(b);
                }
            }
            Ok(bytes)
        };
        let build_size = crate::boot::slots::build_size(&a_build.manifest);
        let share = fs::metadata(package.join(initramfs::package_segment("bench-data")))
            .context("the upgraded package's own archive")?
            .len();
        let mib = 1u64 << 20;
        let mut rows = Vec::new();
        for (case, out, limit) in [
            (cases[0], &a, mib),
            (cases[1], &etc, build_size / 50),
            (cases[2], &package, share * 3 / 2 + mib),
            (cases[3], &new_kernel, build_size * 11 / 10),
        ] {
            let row = match measure(out, case) {
                Ok(bytes) => Row::alone(case, Samples::bytes(bytes), Goal::Bytes(limit)),
                Err(err) => Row::failed(case, &err),
            };
            rows.push(row);
        }
        // Time: the new kernel's deploy against a full copy of that build, as checked as a deploy's: tar of its
        // files through one ssh session, unpacked into the NAS's stick, each file's SHA-256 read back there,
        // then sync.
        let names: Vec<String> = crate::boot::slots::Build::open(&new_kernel)?
            .manifest
            .artifacts
            .into_keys()
            .collect();
        let copy = || -> Result<f64> {
            reset()?;
            timed(|| {
                let mut tar = Command::new("tar")
                    .arg("-c")
                    .arg("-C")
                    .arg(&new_kernel)
                    .args(&names)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("running tar")?;
                let status = Command::new(&sshd.ssh)
                    .args(["-p", &relay.port.to_string(), "root@127.0.0.1"])
                    .arg(
                        "mkdir \"$RAMNAS_BOOT/copy\" && cd \"$RAMNAS_BOOT/copy\" && tar -x && \
                         sha256sum * >/dev/null && sync",
                    )
                    .stdin(tar.stdout.take().expect("piped"))
                    .status()
                    .context("running ssh")?;
                if !tar.wait().context("waiting for tar")?.success() || !status.success() {
                    bail!("copying {} over ssh failed", new_kernel.display());
                }
                Ok(())
            })
            .map(|(t, ())| t)
        };
        let row = match self.pairs(cases[4], || deploy(&new_kernel).map(|r| r.0), copy) {
            Ok((ours, base)) => Row::compare(cases[4], ours, base, Goal::Ratio(1.1)),
            Err(err) => Row::failed(cases[4], &err),
        };
        rows.push(row);
        drop(sshd);
        Ok(rows)
    }
}

/// The storage case's probes in its copy of `system/`: OpenRC runs a service's `start_pre` and `start_post`
/// from its `/etc/conf.d` file, before and after the service's own `start`, and these write to the kernel's
/// log, so the console shows each with the kernel's timestamp. zfs-import's start and end, and whether
/// zfs-mount has mounted the pool when it is done.
const STORAGE_PROBES: &[(&str, &str)] = &[
    (
        "zfs-import",
        "# ramnas bench: marks zfs-import's start and end on the kernel's log.\n\
         start_pre() {\n\techo \"ramnas-bench: zfs-import starts\" >/dev/kmsg\n}\n\
         start_post() {\n\techo \"ramnas-bench: zfs-import done\" >/dev/kmsg\n}\n",
    ),
    (
        "zfs-mount",
        "# ramnas bench: says on the kernel's log whether the pool is mounted.\n\
         start_post() {\n\
         \tif grep -q '^tank /tank zfs ' /proc/mounts; then\n\
         \t\techo \"ramnas-bench: tank mounted\" >/dev/kmsg\n\
         \telse\n\
         \t\techo \"ramnas-bench: tank not mounted\" >/dev/kmsg\n\
         \tfi\n}\n",
    ),
];

impl Bench {
    /// The NAS of `system/` under OpenRC (the test's openrc fixture, built through the stand-in
    /// alpine-make-rootfs, as the storage tests build it) with two data disks: the pool made once over ssh
    /// as README makes it, then a warm-up and `runs` boots, each timed from qemu's start to zfs-mount's word
    /// that the pool is mounted, with zfs-import's own time by the kernel's clock; each boot goes on to
    /// `ramnas: ready` (so the pool passed the health check) and is powered off with the power button.
    fn storage(&self) -> Vec<Row> {
        let cases = [
            "storage: power-on to the pool mounted (TCG, for the record)",
            "storage: zfs-import's part of it (TCG, kernel clock, for the record)",
            "storage: the example's tests, `vm --test` start to end (TCG, for the record)",
        ];
        if !crate::host::is_root() {
            let why = "needs root (the fixture's owners and devices, the build's chroot); run the bench as root";
            return cases.iter().map(|c| Row::skipped(c, why)).collect();
        }
        let zfs = fixture::HostKernel::find().and_then(|k| {
            let has = k.has_module("zfs")?;
            Ok((k, has))
        });
        match zfs {
            Ok((_, true)) => {}
            Ok((kernel, false)) => {
                let why = format!(
                    "no zfs module for the fixture's kernel {}: install zfs-dkms and linux-headers-amd64 \
                     (Debian's contrib; `cargo xtask test` does)",
                    kernel.version
                );
                return cases.iter().map(|c| Row::skipped(c, &why)).collect();
            }
            Err(err) => return cases.iter().map(|c| Row::failed(c, &err)).collect(),
        }
        self.rows_in("storage", &cases, |dir| self.storage_rows(dir, &cases))
    }

    fn storage_rows(&self, dir: &Path, cases: &[&str; 3]) -> Result<Vec<Row>> {
        eprintln!("  storage: writing the openrc fixture and building system/ on it");
        let home = dir.join("home");
        let key = home.join(".ssh/id_ed25519");
        fixture::ssh_keygen(&key)?;
        let tree = dir.join("packages");
        fixture::Fixture::openrc("storage")
            .write(&tree)
            .context("writing the openrc fixture")?;
        let stand_ins = fixture::StandIns::write(dir)?;
        // A copy: the build writes packages.lock beside the system.
        let system = dir.join("system");
        copy_dir(&crate::dev::test::workspace_root().join("system"), &system)?;
        for (service, probe) in STORAGE_PROBES {
            let conf = system.join("root/etc/conf.d").join(service);
            if conf.exists() {
                bail!(
                    "{} exists: the bench's probe would replace it",
                    conf.display()
                );
            }
            fs::write(&conf, probe).with_context(|| format!("writing {}", conf.display()))?;
        }
        let out = dir.join("out");
        let built = Command::new(&self.exe)
            .arg("build")
            .arg("--system")
            .arg(&system)
            .arg("--out")
            .arg(&out)
            .envs(stand_ins.env(&tree))
            // Root's key is HOME's (the build reads `~/.ssh/*.pub`, under sudo the invoking user's).
            .env("HOME", &home)
            .env_remove("SUDO_USER")
            .current_dir(dir)
            .output()
            .context("running cargo xtask build --system")?;
        if !built.status.success() {
            bail!(
                "cargo xtask build --system {} failed:\n{}{}",
                system.display(),
                String::from_utf8_lossy(&built.stdout),
                String::from_utf8_lossy(&built.stderr)
            );
        }
        let stick = dir.join("stick.img");
        self.image(&out, &stick, "192M")?;
        let port = fixture::free_port()?;
        let mut machine = qemu::Machine::new(qemu::Accel::Tcg);
        machine
            .drives
            .push(qemu::Drive::raw(&stick, qemu::Bus::Ide));
        machine
            .drives
            .extend(qemu::data_disks(&dir.join("disks"), 2, "1G", false)?);
        machine.forward.push((port, 22));
        let ssh = dir.join("ssh");
        fixture::write_ssh_program(&ssh, &key)?;
        let ready = regex::Regex::new("^ramnas: (ready|unhealthy) ").expect("a valid pattern");

        eprintln!("  storage: the first boot, making the pool");
        let mut vm = machine.start(&dir.join("boot-storage-first.log"), false)?;
        let line = vm.expect(ready.as_str(), BOOT_TIMEOUT)?;
        if !line.starts_with("ramnas: ready") {
            bail!("the first boot: {line}\n{}", vm.tail(25));
        }
        let on_nas = |script: &str| -> Result<()> {
            let done = Command::new(&ssh)
                .args(["-p", &port.to_string(), "root@127.0.0.1", script])
                .output()
                .context("running ssh")?;
            if !done.status.success() {
                bail!(
                    "on the NAS: {script}\n{}",
                    String::from_utf8_lossy(&done.stderr)
                );
            }
            Ok(())
        };
        on_nas(fixture::CREATE_POOL)?;
        on_nas("/sbin/poweroff")?;
        vm.wait_exit(Duration::from_secs(120))?;

        let (mut whole, mut import) = (Vec::new(), Vec::new());
        for run in 0..=self.runs {
            eprintln!("  {}: run {run}/{}", cases[0], self.runs);
            let log = dir.join("boot-storage.log");
            let started = Instant::now();
            let mut vm = machine.start(&log, false)?;
            let line = vm.expect(
                "ramnas-bench: tank (not )?mounted|^ramnas: (ready|unhealthy) ",
                BOOT_TIMEOUT,
            )?;
            let elapsed = started.elapsed().as_secs_f64();
            if !line.ends_with("ramnas-bench: tank mounted") {
                bail!("the pool was not mounted: {line}\n{}", vm.tail(25));
            }
            match vm.wait_for(&ready, BOOT_TIMEOUT) {
                qemu::Outcome::Matched(line) if line.starts_with("ramnas: ready") => {}
                other => bail!(
                    "{}\n{}",
                    qemu::describe(&other, "ramnas: ready", BOOT_TIMEOUT),
                    vm.tail(25)
                ),
            }
            vm.press_power_button()?;
            vm.wait_exit(Duration::from_secs(120))?;
            let text =
                fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
            let part = kernel_seconds(
                &text,
                "ramnas-bench: zfs-import starts",
                "ramnas-bench: zfs-import done",
            )
            .with_context(|| format!("{}: zfs-import's start and end", log.display()))?;
            if run > 0 {
                whole.push(elapsed);
                import.push(part);
            }
        }
        let shares: Vec<f64> = import.iter().zip(&whole).map(|(i, w)| i / w).collect();
        let share = Samples::seconds(shares);
        let mut part = Row::alone(cases[1], Samples::seconds(import), Goal::None);
        part.note = Some(format!(
            "{:.0} % of power-on to the pool mounted ({:.0}–{:.0} %)",
            100.0 * share.median(),
            100.0 * share.min(),
            100.0 * share.max()
        ));

        // system/tests/ as a user runs them: the build on trial from its stick image, a fresh copy each run,
        // the disks overlays of what tests/prepare left (it runs in the warm-up, in a boot of its own).
        self.image(&out, &out.join("boot.img"), "192M")?;
        let mut tests = Vec::new();
        for run in 0..=self.runs {
            eprintln!("  {}: run {run}/{}", cases[2], self.runs);
            let (took, done) = timed(|| {
                Command::new(&self.exe)
                    .args(["vm", "--test", "--disks", "2", "--disk-size", "1G", "--out"])
                    .arg(&out)
                    .arg("--system")
                    .arg(&system)
                    .env(crate::cmd::vm::VM_DIR_ENV, dir.join("vm"))
                    .env("RAMNAS_ACCEL", "tcg")
                    .env(crate::stick::ssh::PROGRAM_ENV, &ssh)
                    .current_dir(dir)
                    .output()
                    .context("running cargo xtask vm --test")
            })?;
            if !done.status.success() {
                bail!(
                    "cargo xtask vm --test failed:\n{}{}",
                    String::from_utf8_lossy(&done.stdout),
                    String::from_utf8_lossy(&done.stderr)
                );
            }
            if run > 0 {
                tests.push(took);
            }
        }
        let mut example = Row::alone(cases[2], Samples::seconds(tests), Goal::None);
        example.note =
            Some("one boot to ready, then each test: host/reboot boots again, host/share skips (sharing off)".into());
        Ok(vec![
            Row::alone(cases[0], Samples::seconds(whole), Goal::None),
            part,
            example,
        ])
    }
}

/// The deploy fixture's packages in its apk database, as apk records them: `linux-lts` (the kernel's
/// modules, version `kernel`) and `bench-data` (version `data`: [`BENCH_DATA`] bytes of its own, which no
/// compressor shrinks, under usr/share/bench-data).
fn write_bench_packages(tree: &Path, version: &str, data: u32, kernel: u32) -> Result<()> {
    let share = tree.join("usr/share/bench-data");
    fs::create_dir_all(&share)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ data as u64;
    let bytes: Vec<u8> = (0..BENCH_DATA)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(share.join("data"), bytes)?;
    let modules = Path::new("lib/modules").join(version);
    let mut files = String::new();
    let mut todo = vec![modules];
    while let Some(dir) = todo.pop() {
        files.push_str(&format!("F:{}\n", dir.display()));
        let mut names: Vec<_> = fs::read_dir(tree.join(&dir))?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            if e.file_type()?.is_dir() {
                todo.push(dir.join(e.file_name()));
            } else {
                files.push_str(&format!("R:{}\n", e.file_name().to_string_lossy()));
            }
        }
    }
    let db = tree.join(crate::build::manifest::APK_DB);
    let text = fs::read_to_string(&db).with_context(|| format!("reading {}", db.display()))?;
    let own = text.split("\n\n").filter(|s| {
        !s.starts_with("P:linux-lts\n") && !s.starts_with("P:bench-data\n") && !s.trim().is_empty()
    });
    let mut out: Vec<String> = own.map(|s| s.trim_end().to_string()).collect();
    out.push(format!(
        "P:linux-lts\nV:{version}-r{kernel}\n{}",
        files.trim_end()
    ));
    out.push(format!(
        "P:bench-data\nV:{data}-r0\nF:usr/share/bench-data\nR:data"
    ));
    fs::write(&db, out.join("\n\n") + "\n\n")?;
    Ok(())
}

/// A new kernel, for the bytes a deploy sends: the image grows by 4 KiB and every module by a byte (what the
/// deploy sees of a new kernel: every file different). Never booted.
fn new_kernel(tree: &Path, version: &str) -> Result<()> {
    let vmlinuz = tree.join(format!("boot/vmlinuz-{version}"));
    let mut f = fs::OpenOptions::new().append(true).open(&vmlinuz)?;
    f.write_all(&[0u8; 4096])?;
    let mut todo = vec![tree.join("lib/modules").join(version)];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "ko") {
                fs::OpenOptions::new()
                    .append(true)
                    .open(e.path())?
                    .write_all(&[0])?;
            }
        }
    }
    Ok(())
}

/// `cp -a FROM TO`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unpacking_is_timed_by_the_kernel_clock() {
        let log = "[    1.216752] Trying to unpack rootfs image as initramfs...\n\
                   [    1.300000] other\n[    1.544804] Freeing initrd memory: 3964K\n";
        assert!((unpack_seconds(log).unwrap() - 0.328052).abs() < 1e-9);
        let err =
            unpack_seconds("[ 1.0] Trying to unpack rootfs image as initramfs...\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("Freeing initrd memory"),
            "{err:#}"
        );
    }

    #[test]
    fn median_and_spread() {
        let s = Samples::seconds(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median(), 2.5);
        assert_eq!((s.min(), s.max()), (1.0, 10.0));
        assert_eq!(s.summary(), "2.50 s (1.00–10.00 s)");
    }

    #[test]
    fn verdicts() {
        let row = Row::compare(
            "x",
            vec![1.0, 1.2, 1.1],
            vec![2.0, 2.0, 2.0],
            Goal::Ratio(0.6),
        );
        assert_eq!(row.verdict(), (Some(0.55), true));
        let row = Row::compare("x", vec![1.3], vec![2.0], Goal::Ratio(0.6));
        assert!(!row.verdict().1);
        let mut xz = Row::compare("xz", vec![1.0], vec![1.0], Goal::Ratio(1.0));
        xz.size_goal = Some(1.01);
        xz.sizes = Some((102, 100));
        assert!(!xz.verdict().1, "a size 2% over the baseline fails");
        xz.sizes = Some((100, 100));
        assert!(xz.verdict().1);
        let mem = Row::alone(
            "m",
            Samples::bytes(vec![70.0 * 1048576.0]),
            Goal::Bytes(64 << 20),
        );
        assert!(!mem.verdict().1);
    }
}
