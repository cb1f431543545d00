//! `cargo xtask vm`: boot the build in qemu — the kernel directly, or the stick image through its firmware —
//! with the stick on USB and persistent virtio data disks, on the terminal or as a headless pass/fail check.
//! The stick is the VM's own copy of the image (`vm/stick.img`), so nothing of the VM gets into the image.
//! `--test` (in `test`) runs the system's own tests against the build.

use std::{
    env, fs,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use regex::Regex;
use xshell::{cmd, Shell};

use crate::{
    flags::VmFlags,
    host::qemu::{self, Accel, Bus, Direct, Drive, Firmware, Machine, Outcome, Running},
};

/// Overrides where VM state lives (default: `vm/` at the repository root).
pub const VM_DIR_ENV: &str = "RAMNAS_VM_DIR";

mod test;

pub fn run(flags: VmFlags) -> Result<()> {
    let expect =
        Regex::new(&flags.expect).with_context(|| format!("--expect {:?}", flags.expect))?;
    if flags.uefi && !flags.image && !flags.test {
        bail!("--uefi boots the stick through OVMF: add --image (or --test)");
    }
    let ovmf = check_host_tools(flags.uefi)?;
    let out = &flags.out.out;
    let dir = vm_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let accel = Accel::resolve(flags.accel);
    let mut machine = Machine::new(accel);
    machine.mem = flags.mem.clone();
    machine.cpus = flags.cpus;
    if flags.test {
        return test::run(&flags, machine, &dir, ovmf);
    }
    let stick = vm_stick(&out.join("boot.img"), &dir)?;
    if flags.image {
        if stick.is_none() {
            return Err(no_image(out));
        }
        if let Some((code, template)) = ovmf {
            machine.firmware = Firmware::Uefi {
                code,
                vars: uefi_vars(&dir, &template)?,
            };
        }
    } else {
        machine.direct = Some(direct_boot(out, &dir)?);
    }
    if let Some(stick) = &stick {
        let mut drive = Drive::raw(stick, Bus::Usb);
        drive.boot = flags.image;
        machine.drives.push(drive);
    }
    machine.drives.extend(qemu::data_disks(
        &dir.join("disks"),
        flags.disks,
        &flags.disk_size,
        flags.fresh_disks,
    )?);
    describe_machine(
        &machine,
        flags.image,
        stick.as_deref().unwrap_or(Path::new("")),
    );

    let log = dir.join("last-boot.log");
    if flags.check {
        machine.net = true;
        check(&machine, &log, &expect, Duration::from_secs(flags.timeout))
    } else {
        machine.forward.push((flags.ssh_port, 22));
        machine.reboot = true;
        interactive(&machine, &log, flags.ssh_port)
    }
}

/// `$RAMNAS_VM_DIR`, else `vm/` at the root of the workspace this tool was built from.
fn vm_dir() -> PathBuf {
    match env::var_os(VM_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits inside the workspace")
            .join("vm"),
    }
}

/// OUT/boot.img is missing: the error that says how to make it.
fn no_image(out: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} not found: make it with `cargo xtask image --out {}`",
        out.join("boot.img").display(),
        out.display()
    )
}

/// The VM's own stick, `DIR/stick.img`: a copy of `image` (OUT/boot.img), made when it is missing or older
/// than `image`, so the VM's /persist (its ssh host keys, its RNG seed) never gets into the image a user
/// flashes. Mode 0600. `None` when there is neither.
fn vm_stick(image: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    let copy = dir.join("stick.img");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(image_time) = modified(image) else {
        return Ok(copy.exists().then_some(copy));
    };
    match modified(&copy) {
        None => eprintln!(
            "vm: the VM's stick is {}, a copy of {}: the VM writes its /persist there, never into the image",
            copy.display(),
            image.display()
        ),
        Some(copy_time) if copy_time < image_time => eprintln!(
            "vm: {} is newer than {}: replacing the VM's stick with a copy; its /persist starts empty, so the VM \
             gets new ssh host keys",
            image.display(),
            copy.display()
        ),
        Some(_) => return Ok(Some(copy)),
    }
    crate::host::atomic::replace(&copy, |tmp| copy_sparse(image, tmp))?;
    Ok(Some(copy))
}

/// Copies the raw image `from` to `to`, keeping its holes, as a file only its owner can read.
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    let len = fs::metadata(from)
        .with_context(|| format!("reading the size of {}", from.display()))?
        .len();
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", to.display()))?;
    file.set_len(len)
        .with_context(|| format!("sizing {}", to.display()))?;
    let qemu_img = qemu::qemu_img()?;
    let sh = Shell::new()?;
    cmd!(sh, "{qemu_img} convert -n -f raw -O raw {from} {to}")
        .quiet()
        .run()
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Every host tool this run needs, before anything is written: one error naming what to install. Returns
/// OVMF's code and variable-store template when booting UEFI.
fn check_host_tools(uefi: bool) -> Result<Option<(PathBuf, PathBuf)>> {
    qemu::qemu_binary()?;
    qemu::qemu_img()?;
    uefi.then(qemu::ovmf).transpose()
}

/// Direct kernel boot: qemu takes one initrd, so the build's initrds (microcode first, then the
/// initramfs' archives) are joined into `vm/initrd` when there are several.
fn direct_boot(out: &Path, dir: &Path) -> Result<Direct> {
    let kernel = out.join("vmlinuz");
    let manifest_path = out.join(crate::build::manifest::Manifest::FILE_NAME);
    for file in [&kernel, &manifest_path] {
        if !file.exists() {
            bail!(
                "{} not found: build first with `cargo xtask build --out {}`",
                file.display(),
                out.display()
            );
        }
    }
    let manifest = crate::build::manifest::Manifest::load(&manifest_path)?;
    let initrds: Vec<PathBuf> = manifest.initrds().iter().map(|n| out.join(n)).collect();
    for file in &initrds {
        if !file.exists() {
            bail!(
                "{} not found: build first with `cargo xtask build --out {}`",
                file.display(),
                out.display()
            );
        }
    }
    let cmdline_file = out.join("cmdline");
    let cmdline = fs::read_to_string(&cmdline_file)
        .with_context(|| format!("reading {}", cmdline_file.display()))?;
    let initrd = match &initrds[..] {
        [one] => one.clone(),
        all => crate::build::initramfs::join(all, &dir.join("initrd"))?,
    };
    Ok(Direct {
        kernel,
        initrd,
        append: format!("{} console=ttyS0", cmdline.trim()),
    })
}

/// The writable UEFI variable store: a copy of OVMF's template, made once and kept like a machine's NVRAM.
fn uefi_vars(dir: &Path, template: &Path) -> Result<PathBuf> {
    let vars = dir.join(
        template
            .file_name()
            .context("OVMF vars template has no name")?,
    );
    if !vars.exists() {
        crate::host::atomic::replace(&vars, |tmp| {
            fs::copy(template, tmp)
                .with_context(|| format!("copying {} to {}", template.display(), tmp.display()))?;
            Ok(())
        })?;
    }
    Ok(vars)
}

/// One short paragraph on what is about to boot.
fn describe_machine(machine: &Machine, image: bool, stick: &Path) {
    let firmware = match machine.firmware {
        Firmware::Bios => "SeaBIOS",
        Firmware::Uefi { .. } => "OVMF (UEFI)",
    };
    match &machine.direct {
        Some(direct) => eprintln!(
            "vm: booting {} directly, initrd {}, command line {:?}",
            direct.kernel.display(),
            direct.initrd.display(),
            direct.append
        ),
        None => eprintln!("vm: booting {} through {firmware}", stick.display()),
    }
    let accel = match machine.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    eprintln!(
        "vm: accel {accel}, {} memory, {} cpus",
        machine.mem, machine.cpus
    );
    for drive in &machine.drives {
        match (&drive.serial, drive.bus) {
            (Some(serial), _) => eprintln!("vm: disk {} (serial {serial})", drive.file.display()),
            (None, Bus::Usb) if !image => {
                eprintln!("vm: stick {} on USB", drive.file.display())
            }
            _ => {}
        }
    }
}

/// Headless: wait for `expect` on the console, then stop qemu. Anything else — timeout, panic, qemu exiting,
/// or an interrupt — is an error naming it, with the console's last lines.
fn check(machine: &Machine, log: &Path, pattern: &Regex, timeout: Duration) -> Result<()> {
    // Ctrl-C, SIGTERM and SIGHUP set a flag the wait loop checks, so qemu is killed and reaped before we exit.
    let signals = catch_interrupts()?;
    let mut vm = machine.start(log, true)?;
    let line = wait_for(&mut vm, pattern, timeout, &signals)?;
    eprintln!(
        "vm: check passed: {line:?} matched {:?}; pressing the power button",
        pattern.as_str()
    );
    power_off(&mut vm, log, &signals)
}

/// Ctrl-C, SIGTERM and SIGHUP as a flag: the waits below check it, so qemu is killed and reaped before the
/// command exits.
fn catch_interrupts() -> Result<crate::host::signals::Interrupts> {
    crate::host::signals::Interrupts::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
}

/// Waits up to `timeout` for a console line matching `pattern` and returns it; a timeout, a panic, qemu
/// exiting or an interrupt (qemu is killed) is an error naming it, with the console's last lines.
fn wait_for(
    vm: &mut Running,
    pattern: &Regex,
    timeout: Duration,
    signals: &crate::host::signals::Interrupts,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left.min(Duration::from_millis(500));
        let outcome = vm.wait_for(pattern, step);
        if signals.interrupted() {
            vm.kill();
            bail!("interrupted: qemu stopped\n{}", vm.tail(10));
        }
        if outcome != Outcome::Timeout || step == left {
            break outcome;
        }
    };
    match outcome {
        Outcome::Matched(line) => Ok(line),
        other => bail!(
            "vm check failed: {}\n{}",
            qemu::describe(&other, pattern.as_str(), timeout),
            vm.tail(25)
        ),
    }
}

/// Presses the power button and gives the guest [`POWER_OFF_TIMEOUT`] to shut down (its services stop, the
/// stick is unmounted cleanly); then qemu is stopped, with a warning, if it still runs.
fn power_off(
    vm: &mut Running,
    log: &Path,
    signals: &crate::host::signals::Interrupts,
) -> Result<()> {
    let why_not = match vm.press_power_button() {
        Err(err) => format!("the power button could not be pressed: {err:#}"),
        Ok(()) => {
            let deadline = Instant::now() + POWER_OFF_TIMEOUT;
            while !vm.exited() && Instant::now() < deadline {
                if signals.interrupted() {
                    vm.kill();
                    bail!(
                        "interrupted while the guest shut down: qemu stopped\n{}",
                        vm.tail(10)
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            format!(
                "the guest did not power off within {}s of the ACPI power button (is acpid running?)",
                POWER_OFF_TIMEOUT.as_secs()
            )
        }
    };
    if vm.exited() {
        eprintln!("vm: the guest powered off (log: {})", log.display());
    } else {
        vm.kill();
        eprintln!(
            "vm: warning: {why_not}: qemu stopped, and the stick was not unmounted cleanly (log: {})",
            log.display()
        );
    }
    Ok(())
}

/// How long `--check` gives the guest to shut down after the power button: its services stop and the stick
/// is unmounted, so that the next boot finds a clean FAT.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(90);

/// On this terminal: the serial console (and a copy in `log`), ssh forwarded, until the guest powers off or
/// the user quits.
fn interactive(machine: &Machine, log: &Path, ssh_port: u16) -> Result<()> {
    eprintln!("vm: ssh -p {ssh_port} -o NoHostAuthenticationForLocalhost=yes root@localhost");
    eprintln!(
        "vm: serial console follows (copy in {}); quit with Ctrl-a x, Ctrl-a h for help",
        log.display()
    );
    let status = machine.run_interactive(log)?;
    if !status.success() {
        bail!("qemu exited with {status} (its message is above)");
    }
    Ok(())
}
