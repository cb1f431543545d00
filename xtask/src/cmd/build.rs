//! `cargo xtask build`: system/ → OUT/{vmlinuz,initramfs,ucode.img,cmdline,manifest.json}.
//!
//! Steps, in the order the work happens:
//! 1. read system/ (system.toml, packages);
//! 2. the root tree: `--base` (a directory, or a tarball extracted with owners and devices), or
//!    alpine-make-rootfs into OUT/rootfs unless its inputs are unchanged;
//! 3. the kernel and microcode out of the tree's /boot, and the boot loaders it holds (`bootloaders`);
//! 4. everything else packed into a compressed newc cpio;
//! 5. the manifest, then every product renamed into place — or nothing at all when nothing changed.
//!
//! A build that changes nothing stops after step 3 without packing: OUT/.inputs records what the last
//! build was made from (the tree's metadata digest, the settings, this program, the git state) and its
//! products as it left them (size, mtime, inode); when all of that is the same, nothing is rewritten.
//!
//! Products are written under temporary names (`OUT/.new.*`) and renamed only once all of them exist:
//! a failed build leaves OUT/ as it was. manifest.json is removed first and renamed last, so OUT/ holds a
//! complete build exactly when manifest.json exists and its sums match the files.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use xshell::{cmd, Shell};

use crate::boot::bootloaders;
use crate::build::compress::Compression;
use crate::build::config::System;
use crate::build::initramfs;
use crate::build::keys;
use crate::build::lint;
use crate::build::manifest::{self, Artifact, Manifest};
use crate::build::rootfs;
use crate::flags::BuildFlags;

/// mtimes in the archive are clamped to `SOURCE_DATE_EPOCH`, or to this when it is unset: the Unix epoch
/// (1970-01-01), so that the same tree always gives the same bytes.
pub const DEFAULT_SOURCE_DATE: u32 = 0;

const STEPS: usize = 5;

pub fn run(flags: BuildFlags) -> anyhow::Result<()> {
    let started = Instant::now();
    step(1, "reading the system definition");
    let system = read_system(&flags)?;
    let compression = flags
        .compression
        .unwrap_or(system.config.initramfs.compression);
    let source_date = source_date()?;
    eprintln!(
        "    {} packages, Alpine {}, kernel flavour {}, {} compression",
        system.packages.len(),
        system.config.alpine.branch,
        system.config.kernel.flavour,
        compression.name()
    );
    if let Some(why) = why_root(&flags) {
        if !crate::host::is_root() {
            return rerun_with_sudo(&flags, &system, &why);
        }
    }
    let out = &flags.out.out;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut temps = Temps::new(out);

    step(2, "the root tree");
    let (tree, _extracted) = root_tree(&flags, &system, out, source_date)?;

    step(3, "kernel, microcode and boot loaders from the tree");
    let kernel = find_kernel(&tree, &system.config.kernel.flavour)?;
    let kernel_version = kernel_version(&kernel, &tree);
    eprintln!(
        "    {} ({})",
        kernel.display(),
        kernel_version.as_deref().unwrap_or("version unknown")
    );
    let (git_commit, git_dirty) = git_state(&system.dir);
    let tests = crate::build::tests::Tests::read(&system.dir)?.map(|t| t.digest);
    let inputs = Inputs {
        tree: &tree,
        kernel: &kernel,
        compression,
        source_date,
        cmdline: &system.config.kernel.cmdline,
        alpine_branch: &system.config.alpine.branch,
        git_commit: git_commit.as_deref(),
        git_dirty,
        tests: tests.as_deref(),
    }
    .describe()?;
    if unchanged(out, &inputs, &out.join(Manifest::FILE_NAME)) {
        eprintln!(
            "ramnas: nothing changed since the last build (tree, settings and products as it left them); \
             {} left as it was",
            out.display()
        );
        return Ok(());
    }
    let tmp = temps.add("vmlinuz");
    fs::copy(&kernel, &tmp).with_context(|| format!("copying {}", kernel.display()))?;
    let packages = apk_packages(&tree)?;
    let boot_dir = temps.dir(bootloaders::DIR)?;
    let boot = bootloaders::copy_from_tree(&tree, &boot_dir, &packages)?;
    for (name, from) in &boot {
        eprintln!("    {name} from the tree ({from})");
    }
    let ucode = join_microcode(&tree, &mut temps)?;

    step(
        4,
        &format!("packing the initramfs ({})", compression.name()),
    );
    let mut initrds: Vec<String> = ucode.into_iter().collect();
    initrds.extend(pack(&tree, compression, source_date, &mut temps)?);

    step(5, "manifest");
    let cmdline = &system.config.kernel.cmdline;
    let (build_id, artifacts) = artifacts(&mut temps, cmdline)?;
    let new = Manifest {
        build_id,
        source_date: source_date as u64,
        git_commit,
        git_dirty,
        alpine_branch: system.config.alpine.branch.clone(),
        kernel_version,
        compression,
        cmdline: cmdline.clone(),
        packages,
        artifacts,
        initrds,
        bootloaders: boot,
        root_ssh_keys: Some(keys::count_in_tree(&tree)?),
        tests,
    };
    if !put_in_place(out, temps, &inputs, &new)? {
        eprintln!(
            "ramnas: nothing changed since the last build; {} left as it was",
            out.display()
        );
        return Ok(());
    }
    eprintln!(
        "ramnas: built {} (build {}) in {:.1} s",
        out.display(),
        new.build_id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// system/ as settings and packages, linted; with `--base` and no system/, the defaults.
fn read_system(flags: &BuildFlags) -> anyhow::Result<System> {
    if flags.base.is_some() && !flags.system.exists() {
        eprintln!(
            "    no {} directory: default settings for the --base tree",
            flags.system.display()
        );
        return Ok(System::defaults(&flags.system));
    }
    let system = System::load(&flags.system)?;
    if flags.base.is_none() {
        lint_system(&flags.system)?;
    }
    Ok(system)
}

/// The tree to pack: `--base` (a directory as it is, or a tarball extracted into OUT, removed when the
/// returned guard drops), else alpine-make-rootfs's in OUT/rootfs.
fn root_tree(
    flags: &BuildFlags,
    system: &System,
    out: &Path,
    source_date: u32,
) -> anyhow::Result<(PathBuf, Option<Extracted>)> {
    let (tree, extracted) = match &flags.base {
        Some(base) if base.is_dir() => {
            eprintln!("    using the finished tree {}", base.display());
            (base.clone(), None)
        }
        Some(base) => {
            let extracted = extract_tarball(base, out)?;
            (extracted.0.clone(), Some(extracted))
        }
        None => {
            let tools = rootfs::Tools::get(flags.offline)?;
            eprintln!(
                "    alpine-make-rootfs {} into {}",
                tools.make_rootfs.path.display(),
                out.join("rootfs").display()
            );
            let request = rootfs::Request {
                fresh: flags.fresh,
                update: flags.update,
                offline: flags.offline,
                source_date,
            };
            let tree = rootfs::ensure(system, &tools, out, request)?;
            install_authorized_keys(system, &tree)?;
            (tree, None)
        }
    };
    if fs::canonicalize(out)?.starts_with(fs::canonicalize(&tree)?) {
        bail!(
            "--out {} is inside the tree {}: the build would pack its own output; choose another --out",
            out.display(),
            tree.display()
        );
    }
    initramfs::check_init(&tree)?;
    Ok((tree, extracted))
}

/// The tree's Intel and AMD microcode joined into OUT/ucode.img, the first initrd; its name, if any.
fn join_microcode(tree: &Path, temps: &mut Temps) -> anyhow::Result<Option<String>> {
    let ucode = ["intel-ucode.img", "amd-ucode.img"].map(|n| tree.join("boot").join(n));
    let ucode: Vec<&PathBuf> = ucode.iter().filter(|p| p.is_file()).collect();
    if ucode.is_empty() {
        return Ok(None);
    }
    let tmp = temps.add("ucode.img");
    let mut dst = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for src in &ucode {
        eprintln!("    {}", src.display());
        let mut f = fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
        std::io::copy(&mut f, &mut dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(Some("ucode.img".to_string()))
}

/// Packs the tree (but /boot) as compressed newc archives, split where content changes together
/// ([`initramfs::split`]); returns their names in boot order.
fn pack(
    tree: &Path,
    compression: Compression,
    source_date: u32,
    temps: &mut Temps,
) -> anyhow::Result<Vec<String>> {
    let packing = Instant::now();
    let mut names = Vec::new();
    let (mut cpio_bytes, mut compressed_bytes) = (0, 0);
    let scanned = initramfs::scan(tree, source_date)?;
    let entries = scanned.len();
    for segment in initramfs::split(tree, scanned)? {
        let tmp = temps.add(&segment.name);
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let stats =
            initramfs::pack_entries(tree, segment.entries, compression, file).map_err(|err| {
                let denied = err.chain().any(|e| {
                    e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
                });
                if denied && !crate::host::is_root() {
                    err.context("the tree holds files only root can read: run the build with sudo")
                } else {
                    err
                }
            })?;
        eprintln!(
            "    {}: {:.1} MiB → {:.1} MiB",
            segment.name,
            mib(stats.cpio_bytes),
            mib(stats.compressed_bytes)
        );
        cpio_bytes += stats.cpio_bytes;
        compressed_bytes += stats.compressed_bytes;
        names.push(segment.name);
    }
    eprintln!(
        "    {entries} entries, {:.1} MiB → {:.1} MiB in {:.1} s",
        mib(cpio_bytes),
        mib(compressed_bytes),
        packing.elapsed().as_secs_f64()
    );
    Ok(names)
}

/// Every product made so far, by name with its size and SHA-256, and the cmdline file (which names the
/// build id they give); returns the build id and them.
fn artifacts(
    temps: &mut Temps,
    cmdline: &str,
) -> anyhow::Result<(String, std::collections::BTreeMap<String, Artifact>)> {
    let mut artifacts = std::collections::BTreeMap::new();
    for (name, path) in &temps.files {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
        artifacts.insert(name.clone(), Artifact::of(path)?);
    }
    let build_id = Manifest::compute_build_id(&artifacts, cmdline);
    let tmp = temps.add("cmdline");
    fs::write(&tmp, Manifest::cmdline_file(cmdline, &build_id))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    artifacts.insert("cmdline".to_string(), Artifact::of(&tmp)?);
    Ok((build_id, artifacts))
}

/// Renames the products into OUT with `new` as its manifest, the manifest last, and records the inputs;
/// returns false, and leaves OUT's products as they were, when they are `new` already.
fn put_in_place(
    out: &Path,
    mut temps: Temps,
    inputs: &str,
    new: &Manifest,
) -> anyhow::Result<bool> {
    let manifest_path = out.join(Manifest::FILE_NAME);
    let old = Manifest::load(&manifest_path).ok();
    if old.as_ref() == Some(new) && new.verify(out).is_ok() && bootloaders_present(out, new) {
        drop(temps);
        let recorded = record_inputs(out, inputs, new)?;
        give_to_invoking_user(out, &[recorded])?;
        return Ok(false);
    }
    if let Some(old) = &old {
        eprint!("{}", manifest::diff(old, new));
    }
    let tmp = temps.add(Manifest::FILE_NAME);
    fs::write(&tmp, new.to_json())?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    remove_if_exists(&out.join(INPUTS_FILE))?;
    let mut written = temps.commit()?;
    written.push(record_inputs(out, inputs, new)?);
    give_to_invoking_user(out, &written)?;
    Ok(true)
}

/// What the last build was made from, beside its products.
const INPUTS_FILE: &str = ".inputs";

/// Everything a build's products depend on besides the tree's contents.
struct Inputs<'a> {
    tree: &'a Path,
    kernel: &'a Path,
    compression: Compression,
    source_date: u32,
    cmdline: &'a str,
    alpine_branch: &'a str,
    git_commit: Option<&'a str>,
    git_dirty: bool,
    /// The digest of system/tests (not in the NAS: it changes the manifest, never the build id).
    tests: Option<&'a str>,
}

impl Inputs<'_> {
    /// The inputs as lines of text: cheap to make (metadata only), compared whole.
    fn describe(&self) -> anyhow::Result<String> {
        let exe = std::env::current_exe().context("finding this program")?;
        let tree = fs::canonicalize(self.tree)
            .with_context(|| format!("reading {}", self.tree.display()))?;
        Ok(format!(
            "ramnas build inputs\n\
             tool {} {}\n\
             tree {}\n\
             tree-metadata {}\n\
             kernel {}\n\
             compression {}\n\
             source-date {}\n\
             cmdline {}\n\
             alpine-branch {}\n\
             git {} {}\n\
             tests {}\n",
            exe.display(),
            stamp(&exe)?,
            tree.display(),
            initramfs::metadata_digest(&tree)?,
            self.kernel.display(),
            self.compression.name(),
            self.source_date,
            self.cmdline,
            self.alpine_branch,
            self.git_commit.unwrap_or("-"),
            if self.git_dirty { "dirty" } else { "clean" },
            self.tests.unwrap_or("-"),
        ))
    }
}

/// A file's size, mtime (ns) and inode: what changes when it is rewritten or replaced.
fn stamp(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "{} {}.{:09} {}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

/// `inputs` followed by a stamp of every product of the build in `manifest` and of the manifest itself.
fn inputs_record(out: &Path, inputs: &str, manifest: &Manifest) -> anyhow::Result<String> {
    let mut text = inputs.to_string();
    for name in manifest
        .artifacts
        .keys()
        .map(String::as_str)
        .chain([Manifest::FILE_NAME])
    {
        text.push_str(&format!("product {name} {}\n", stamp(&out.join(name))?));
    }
    Ok(text)
}

/// Whether OUT/.inputs says the build in OUT was made from `inputs` and its products are as it left them.
fn unchanged(out: &Path, inputs: &str, manifest_path: &Path) -> bool {
    let Ok(recorded) = fs::read_to_string(out.join(INPUTS_FILE)) else {
        return false;
    };
    let Ok(manifest) = Manifest::load(manifest_path) else {
        return false;
    };
    if !bootloaders_present(out, &manifest) {
        return false;
    }
    inputs_record(out, inputs, &manifest).is_ok_and(|now| now == recorded)
}

/// Whether OUT/bootloaders holds every boot loader `manifest` says the build carries.
fn bootloaders_present(out: &Path, manifest: &Manifest) -> bool {
    manifest
        .bootloaders
        .keys()
        .all(|name| out.join(bootloaders::DIR).join(name).is_dir())
}

/// Writes OUT/.inputs for the build in OUT (last, after every product is in place); returns its path.
fn record_inputs(out: &Path, inputs: &str, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let text = inputs_record(out, inputs, manifest)?;
    let path = out.join(INPUTS_FILE);
    crate::host::atomic::write(&path, text)?;
    Ok(path)
}

/// The same lint as `cargo xtask check`, before the long step: every problem at once, with file:line;
/// warnings are said and the build goes on.
fn lint_system(dir: &Path) -> anyhow::Result<()> {
    let (warnings, problems): (Vec<_>, Vec<_>) =
        lint::system(dir).into_iter().partition(|p| p.warning);
    for warning in &warnings {
        eprintln!("    {warning}");
    }
    if problems.is_empty() {
        return Ok(());
    }
    let list: String = problems.iter().map(|p| format!("\n  {p}")).collect();
    bail!(
        "{} has problems (`cargo xtask check` lists them too):{list}",
        dir.display()
    )
}

/// Root's authorized_keys in the tree: from the configured file or the building user's ~/.ssh/*.pub,
/// written on every build (keys are not an input of alpine-make-rootfs), removed when there are none.
fn install_authorized_keys(system: &System, tree: &Path) -> anyhow::Result<()> {
    let keys = keys::collect(
        system.authorized_keys().as_deref(),
        keys::build_user_home().as_deref(),
    )?;
    eprintln!("    {}", keys.report().replace('\n', "\n    "));
    if keys.keys.is_empty() {
        let stale = tree.join("root/.ssh/authorized_keys");
        if stale.exists() {
            fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
        }
        return Ok(());
    }
    keys.write_skel(tree)
}

fn step(n: usize, what: &str) {
    eprintln!("==> [{n}/{STEPS}] {what}");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `SOURCE_DATE_EPOCH`, or [`DEFAULT_SOURCE_DATE`].
fn source_date() -> anyhow::Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse::<u32>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970 (up to 4294967295)")
        }),
        _ => Ok(DEFAULT_SOURCE_DATE),
    }
}

/// Why this build needs root, if it does.
fn why_root(flags: &BuildFlags) -> Option<String> {
    match &flags.base {
        None => Some(
            "alpine-make-rootfs must run as root (it installs packages with their owners and chroots), \
             and the tree it makes holds files only root can read"
                .to_string(),
        ),
        Some(base) if !base.is_dir() => {
            Some(format!("extracting {} with its owners and device nodes needs root", base.display()))
        }
        Some(_) => None,
    }
}

/// Runs this same build again as root through sudo, after fetching the tools and making the package cache
/// as the user; products are handed back to the user (SUDO_UID).
fn rerun_with_sudo(flags: &BuildFlags, system: &System, why: &str) -> anyhow::Result<()> {
    if flags.base.is_none() {
        // Fetch and verify the programs, and make the package cache, as the user, so the cache stays the
        // user's.
        rootfs::Tools::get(flags.offline)?;
        let cache = rootfs::package_cache(system)?;
        fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    }
    eprintln!("ramnas: {why}.");
    eprintln!("ramnas: running this build as root through sudo; what it writes to the output directory stays yours.");
    let exe = std::env::current_exe().context("finding this program")?;
    let mut args: Vec<OsString> = vec!["--".into(), "env".into()];
    if let Ok(cache) = rootfs::cache_dir() {
        if let Some(parent) = cache.parent() {
            let mut v = OsString::from("XDG_CACHE_HOME=");
            v.push(parent);
            args.push(v);
        }
    }
    for var in [
        rootfs::ALPINE_MAKE_ROOTFS.env,
        rootfs::APK.env,
        "SOURCE_DATE_EPOCH",
    ] {
        if let Some(value) = std::env::var_os(var) {
            let mut v = OsString::from(format!("{var}="));
            v.push(value);
            args.push(v);
        }
    }
    args.push(exe.into());
    args.extend(std::env::args_os().skip(1));
    // std's Command, as sudo's own exit status is passed on (xshell gives none).
    let status = std::process::Command::new("sudo")
        .args(args)
        .status()
        .context("running sudo")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Removes temporary products unless committed.
struct Temps {
    out: PathBuf,
    files: Vec<(String, PathBuf)>,
    /// Directories (OUT/.new.NAME → OUT/NAME), renamed with the files; an empty one removes OUT/NAME.
    dirs: Vec<(String, PathBuf)>,
    committed: bool,
}

impl Temps {
    fn new(out: &Path) -> Temps {
        Temps {
            out: out.to_path_buf(),
            files: Vec::new(),
            dirs: Vec::new(),
            committed: false,
        }
    }

    fn add(&mut self, name: &str) -> PathBuf {
        let path = self.out.join(format!(".new.{name}"));
        let _ = fs::remove_file(&path);
        self.files.push((name.to_string(), path.clone()));
        path
    }

    /// A new, empty temporary directory for OUT/NAME.
    fn dir(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.out.join(format!(".new.{name}"));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        self.dirs.push((name.to_string(), path.clone()));
        Ok(path)
    }

    /// Renames every temporary product into place: manifest.json goes first and comes back last.
    fn commit(mut self) -> anyhow::Result<Vec<PathBuf>> {
        let manifest = self.out.join(Manifest::FILE_NAME);
        remove_if_exists(&manifest)?;
        let mut written = Vec::new();
        let names: Vec<&str> = self.files.iter().map(|(n, _)| n.as_str()).collect();
        if !names.contains(&"ucode.img") {
            remove_if_exists(&self.out.join("ucode.img"))?;
        }
        for (name, tmp) in &self.dirs {
            let dst = self.out.join(name);
            if dst.exists() {
                fs::remove_dir_all(&dst).with_context(|| format!("removing {}", dst.display()))?;
            }
            let empty = fs::read_dir(tmp)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if empty {
                fs::remove_dir(tmp).with_context(|| format!("removing {}", tmp.display()))?;
            } else {
                fs::rename(tmp, &dst)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
                written.push(dst);
            }
        }
        for (name, tmp) in &self.files {
            let dst = self.out.join(name);
            fs::rename(tmp, &dst)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
            written.push(dst);
        }
        self.committed = true;
        Ok(written)
    }
}

impl Drop for Temps {
    fn drop(&mut self) {
        if !self.committed {
            for (_, path) in &self.files {
                let _ = fs::remove_file(path);
            }
            for (_, path) in &self.dirs {
                let _ = fs::remove_dir_all(path);
            }
        }
    }
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// A `--base` tarball extracted into `OUT/.base`, removed again on drop.
struct Extracted(PathBuf);

impl Drop for Extracted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn extract_tarball(tarball: &Path, out: &Path) -> anyhow::Result<Extracted> {
    if !tarball.is_file() {
        bail!("--base {}: no such directory or tarball", tarball.display());
    }
    let dir = out.join(".base");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let extracted = Extracted(dir.clone());
    eprintln!("    extracting {}", tarball.display());
    let sh = Shell::new()?;
    cmd!(sh, "tar --extract --file {tarball} --directory {dir} --preserve-permissions --same-owner --numeric-owner")
        .quiet()
        .run()
        .with_context(|| format!("--base {}: not a tarball tar can extract", tarball.display()))?;
    Ok(extracted)
}

/// `/boot/vmlinuz-<flavour>`, or the only `/boot/vmlinuz-*`.
fn find_kernel(tree: &Path, flavour: &str) -> anyhow::Result<PathBuf> {
    let boot = tree.join("boot");
    let wanted = boot.join(format!("vmlinuz-{flavour}"));
    if wanted.is_file() {
        return Ok(wanted);
    }
    let mut found: Vec<PathBuf> = match fs::read_dir(&boot) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no kernel in {}: expected vmlinuz-{flavour} (is linux-{flavour} in the packages list?)",
            boot.display()
        ),
        _ => bail!(
            "{} holds several kernels and none is vmlinuz-{flavour}: {}; set kernel.flavour in system.toml",
            boot.display(),
            found.iter().map(|p| p.file_name().unwrap().to_string_lossy()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The version string in an x86 bzImage's setup header, else the only directory in /lib/modules.
fn kernel_version(kernel: &Path, tree: &Path) -> Option<String> {
    bzimage_version(kernel).or_else(|| {
        let mut dirs: Vec<String> = fs::read_dir(tree.join("lib/modules"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (dirs.len() == 1).then(|| dirs.remove(0))
    })
}

fn bzimage_version(kernel: &Path) -> Option<String> {
    let mut head = vec![0u8; 64 * 1024];
    let mut f = fs::File::open(kernel).ok()?;
    let n = f.read(&mut head).ok()?;
    head.truncate(n);
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let text = head.get(offset..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

/// Installed packages and versions from the tree's apk database (empty without one).
fn apk_packages(tree: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let db = tree.join(manifest::APK_DB);
    match fs::read_to_string(&db) {
        Ok(text) => Ok(manifest::parse_apk_installed(&text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "ramnas: warning: {} has no apk database (/lib/apk/db/installed): the manifest lists no \
                 packages, so `deploy` and `status` cannot say which packages a build changes",
                tree.display()
            );
            Ok(Default::default())
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", db.display())),
    }
}

/// The git commit of the work tree holding the system definition, and whether it has changes.
fn git_state(dir: &Path) -> (Option<String>, bool) {
    let Ok(sh) = Shell::new() else {
        return (None, false);
    };
    // Under sudo the work tree belongs to someone else; reading it is safe.
    let commit = cmd!(sh, "git -c safe.directory=* -C {dir} rev-parse HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok();
    let dirty = commit.is_some()
        && cmd!(sh, "git -c safe.directory=* -C {dir} status --porcelain")
            .quiet()
            .ignore_stderr()
            .read()
            .is_ok_and(|s| !s.trim().is_empty());
    (commit, dirty)
}

/// When run through sudo, gives the products (and OUT itself) back to the user who ran sudo.
fn give_to_invoking_user(out: &Path, written: &[PathBuf]) -> anyhow::Result<()> {
    let Some((uid, gid)) = rootfs::invoking_user() else {
        return Ok(());
    };
    let stamp = out.join("rootfs.inputs");
    std::os::unix::fs::chown(out, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to uid {uid}", out.display()))?;
    for path in written
        .iter()
        .map(PathBuf::as_path)
        .chain([stamp.as_path()])
    {
        rootfs::give_to_invoking_user(path)?;
    }
    Ok(())
}
