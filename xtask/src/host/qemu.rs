//! The one place that starts qemu, watches its serial console, and always reaps it.
//!
//! A [`Machine`] says what to boot (a kernel directly, or disks through SeaBIOS or OVMF) and what to attach.
//! [`Machine::start`] runs it headless with the serial console captured line by line into a log file (and
//! echoed when asked); [`Running`] waits for a console line, a kernel panic, qemu's exit, or a timeout, and
//! can press the machine's ACPI power button (QMP `system_powerdown`). qemu never outlives its [`Running`]:
//! it is killed on drop, and the kernel kills it if this process dies.

use std::{
    ffi::OsString,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::flags;

/// The line the kernel prints when it panics.
pub const PANIC: &str = "Kernel panic - not syncing";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `auto` means KVM when `/dev/kvm` can be opened for writing, else TCG.
    pub fn resolve(flag: flags::Accel) -> Accel {
        match flag {
            flags::Accel::Kvm => Accel::Kvm,
            flags::Accel::Tcg => Accel::Tcg,
            flags::Accel::Auto => {
                let usable = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if usable {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Firmware {
    /// SeaBIOS, qemu's default.
    Bios,
    /// OVMF: the read-only code and a writable copy of the variable store.
    Uefi { code: PathBuf, vars: PathBuf },
}

/// A kernel booted directly, without a bootloader.
#[derive(Debug, Clone)]
pub struct Direct {
    pub kernel: PathBuf,
    /// One file; qemu takes a single initrd, so concatenate microcode and initramfs first.
    pub initrd: PathBuf,
    pub append: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The first IDE disk: what SeaBIOS and OVMF boot from by default.
    Ide,
    /// A virtio disk; its serial shows as /dev/disk/by-id/virtio-<serial> in the guest.
    Virtio,
    /// A USB mass-storage device on an xhci controller, like the boot stick on a real machine.
    Usb,
}

#[derive(Debug, Clone)]
pub struct Drive {
    pub file: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
    pub bus: Bus,
    pub serial: Option<String>,
    /// Boot from this drive first (for USB sticks, which firmware does not try by default).
    pub boot: bool,
}

impl Drive {
    pub fn raw(file: impl Into<PathBuf>, bus: Bus) -> Drive {
        Drive {
            file: file.into(),
            format: "raw",
            bus,
            serial: None,
            boot: false,
        }
    }
}

/// `disks/disk<i>.qcow2` for i in 0..count, created sparse on first use, as virtio disks with serials
/// `ramnas-disk<i>`. When `fresh`, new disks are made first and only then replace all the old ones.
pub fn data_disks(disks: &Path, count: u32, size: &str, fresh: bool) -> Result<Vec<Drive>> {
    if count > 0 {
        fs::create_dir_all(disks).with_context(|| format!("creating {}", disks.display()))?;
    }
    let files: Vec<PathBuf> = (0..count).map(|i| disk_file(disks, i)).collect();
    let mut made = Vec::new();
    for file in &files {
        if fresh || !file.exists() {
            let tmp = file.with_extension("qcow2.tmp");
            eprintln!("vm: creating {} ({size}, sparse)", file.display());
            let created = Command::new(qemu_img()?)
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&tmp)
                .arg(size)
                .status()
                .context("running qemu-img")?;
            if !created.success() {
                bail!(
                    "qemu-img could not create {} of size {size:?}",
                    file.display()
                );
            }
            made.push((tmp, file));
        }
    }
    if fresh && disks.exists() {
        for entry in fs::read_dir(disks).with_context(|| format!("reading {}", disks.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("disk") && name.ends_with(".qcow2") {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    for (tmp, file) in made {
        fs::rename(&tmp, file).with_context(|| format!("renaming {}", tmp.display()))?;
    }
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, file)| Drive {
            file,
            format: "qcow2",
            bus: Bus::Virtio,
            serial: Some(format!("ramnas-disk{i}")),
            boot: false,
        })
        .collect())
}

/// Data disk `i` in `disks`.
pub fn disk_file(disks: &Path, i: u32) -> PathBuf {
    disks.join(format!("disk{i}.qcow2"))
}

/// New copy-on-write overlays `disks/disk<i>.qcow2` of the disks `bases` (from [`data_disks`]), with the
/// same serials: the guest writes to the overlays, the bases stay as they are.
pub fn overlay_disks(bases: &[Drive], disks: &Path) -> Result<Vec<Drive>> {
    fs::create_dir_all(disks).with_context(|| format!("creating {}", disks.display()))?;
    let mut overlays = Vec::new();
    for base in bases {
        let name = base.file.file_name().context("a disk has a file name")?;
        let file = disks.join(name);
        let backing = fs::canonicalize(&base.file)
            .with_context(|| format!("reading {}", base.file.display()))?;
        let _ = fs::remove_file(&file);
        let created = Command::new(qemu_img()?)
            .args(["create", "-q", "-f", "qcow2", "-F", base.format, "-b"])
            .arg(&backing)
            .arg(&file)
            .status()
            .context("running qemu-img")?;
        if !created.success() {
            bail!(
                "qemu-img could not create {} over {}",
                file.display(),
                backing.display()
            );
        }
        overlays.push(Drive {
            file,
            format: "qcow2",
            ..base.clone()
        });
    }
    Ok(overlays)
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub accel: Accel,
    pub mem: String,
    pub cpus: u32,
    pub firmware: Firmware,
    pub direct: Option<Direct>,
    pub drives: Vec<Drive>,
    /// Let the guest reboot (after a panic with `panic=N`, say); else qemu exits when the guest does.
    pub reboot: bool,
    /// User-mode networking (NAT, DHCP from qemu); `forward` implies it.
    pub net: bool,
    /// TCP ports forwarded from the host (on 127.0.0.1) to the guest: (host port, guest port).
    pub forward: Vec<(u16, u16)>,
}

impl Machine {
    pub fn new(accel: Accel) -> Machine {
        Machine {
            accel,
            mem: "1G".to_string(),
            cpus: 1,
            firmware: Firmware::Bios,
            direct: None,
            drives: Vec::new(),
            reboot: false,
            net: false,
            forward: Vec::new(),
        }
    }

    /// The qemu-system-x86_64 arguments, without the console ones.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg"]),
        }
        push(&[
            "-machine",
            "pc",
            "-m",
            &self.mem,
            "-smp",
            &self.cpus.to_string(),
        ]);
        if !self.reboot {
            push(&["-no-reboot"]);
        }
        if let Firmware::Uefi { code, vars } = &self.firmware {
            args.push("-drive".into());
            args.push(pflash("0,readonly=on", code));
            args.push("-drive".into());
            args.push(pflash("1", vars));
        }
        if let Some(direct) = &self.direct {
            args.extend(["-kernel".into(), direct.kernel.clone().into_os_string()]);
            args.extend(["-initrd".into(), direct.initrd.clone().into_os_string()]);
            args.extend(["-append".into(), OsString::from(&direct.append)]);
        }
        if self.drives.iter().any(|d| d.bus == Bus::Usb) {
            args.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
        }
        for (i, drive) in self.drives.iter().enumerate() {
            let mut spec = OsString::from(format!("format={},file=", drive.format));
            spec.push(escape_commas(&drive.file));
            match drive.bus {
                Bus::Ide => {
                    spec.push(",if=ide");
                    if let Some(serial) = &drive.serial {
                        spec.push(format!(",serial={serial}"));
                    }
                    args.extend(["-drive".into(), spec]);
                }
                Bus::Virtio | Bus::Usb => {
                    spec.push(format!(",if=none,id=drive{i}"));
                    args.extend(["-drive".into(), spec]);
                    let device = if drive.bus == Bus::Usb {
                        "usb-storage,bus=xhci.0"
                    } else {
                        "virtio-blk-pci"
                    };
                    let mut dev = format!("{device},drive=drive{i},id=device{i}");
                    if let Some(serial) = &drive.serial {
                        dev.push_str(&format!(",serial={serial}"));
                    }
                    if drive.boot {
                        dev.push_str(",bootindex=0");
                    }
                    args.extend(["-device".into(), dev.into()]);
                }
            }
        }
        if self.net || !self.forward.is_empty() {
            let mut netdev = "user,id=net0".to_string();
            for (host, guest) in &self.forward {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            args.extend(["-netdev".into(), netdev.into()]);
            args.extend(["-device".into(), "virtio-net-pci,netdev=net0".into()]);
        } else {
            args.extend(["-nic".into(), "none".into()]);
        }
        args
    }

    /// Starts the machine headless, its serial console captured into `log` (and echoed to stderr when
    /// `echo`).
    pub fn start(&self, log: &Path, echo: bool) -> Result<Running> {
        let qemu = qemu_binary()?;
        let qmp = Qmp::new();
        let mut command = Command::new(qemu);
        command
            .args(self.args())
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-qmp")
            .arg(qmp.spec())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().context("starting qemu-system-x86_64")?;
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(stdout, Some(file), lines.clone(), tx.clone(), echo);
        spawn_reader(stderr, None, lines.clone(), tx, echo);
        Ok(Running {
            child,
            rx,
            lines,
            log: log.to_path_buf(),
            reboots: self.reboot,
            done: None,
            qmp,
        })
    }

    /// Runs the machine on this terminal until it exits: the serial console and qemu's monitor share stdio
    /// (Ctrl-a x quits, Ctrl-a c switches to the monitor, Ctrl-C goes to the guest), and the console is also
    /// written to `log`.
    pub fn run_interactive(&self, log: &Path) -> Result<ExitStatus> {
        let mut chardev = OsString::from("stdio,id=console,mux=on,signal=off,logfile=");
        chardev.push(escape_commas(log));
        let mut command = Command::new(qemu_binary()?);
        command
            .args(self.args())
            .args(["-display", "none", "-chardev"])
            .arg(chardev)
            .args(["-serial", "chardev:console", "-mon", "chardev=console"]);
        die_with_parent(&mut command);
        let mut child = command.spawn().context("starting qemu-system-x86_64")?;
        child.wait().context("waiting for qemu")
    }
}

/// qemu's machine protocol on a Unix socket in the temporary directory, removed when dropped.
struct Qmp {
    socket: PathBuf,
}

impl Qmp {
    fn new() -> Qmp {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Qmp {
            socket: std::env::temp_dir()
                .join(format!("ramnas-qmp-{}-{n}.sock", std::process::id())),
        }
    }

    /// `-qmp unix:PATH,server=on,wait=off`.
    fn spec(&self) -> OsString {
        let mut spec = OsString::from("unix:");
        spec.push(escape_commas(&self.socket));
        spec.push(",server=on,wait=off");
        spec
    }

    /// Connects, leaves the greeting's capabilities negotiation, and runs `command` with `arguments` (a JSON
    /// object).
    fn execute(&self, command: &str, arguments: &str) -> Result<()> {
        let stream = UnixStream::connect(&self.socket).with_context(|| {
            format!("connecting to qemu's QMP socket {}", self.socket.display())
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut reply = |what: &str| -> Result<()> {
            let mut line = String::new();
            loop {
                line.clear();
                if reader
                    .read_line(&mut line)
                    .context("reading from qemu's QMP socket")?
                    == 0
                {
                    bail!("qemu closed its QMP socket before answering {what}");
                }
                if line.contains("\"return\"") || line.contains("\"QMP\"") {
                    return Ok(());
                }
                if line.contains("\"error\"") {
                    bail!("qemu refused {what}: {}", line.trim());
                }
            }
        };
        reply("the connection")?;
        for (what, arguments) in [("qmp_capabilities", "{}"), (command, arguments)] {
            writeln!(
                writer,
                "{{\"execute\": \"{what}\", \"arguments\": {arguments}}}"
            )?;
            reply(what)?;
        }
        Ok(())
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
    }
}

fn pflash(unit: &str, file: &Path) -> OsString {
    let mut spec = OsString::from(format!("if=pflash,format=raw,unit={unit},file="));
    spec.push(escape_commas(file));
    spec
}

/// qemu's option parser splits on commas; a comma in a path is written twice.
fn escape_commas(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// The kernel sends SIGKILL to qemu when the thread that started it dies, whatever the cause.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls are
    // allowed: it makes one prctl system call and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
}

/// `qemu-system-x86_64`, or an error naming the package to install.
pub fn qemu_binary() -> Result<PathBuf> {
    crate::host::find("qemu-system-x86_64")
}

/// `qemu-img`, or an error naming the package to install.
pub fn qemu_img() -> Result<PathBuf> {
    crate::host::find("qemu-img")
}

/// OVMF's code and variable-store template, from the places distributions install them.
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    const PAIRS: &[(&str, &str)] = &[
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
            "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2-ovmf/OVMF_CODE.fd",
            "/usr/share/edk2-ovmf/OVMF_VARS.fd",
        ),
        (
            "/usr/share/ovmf/x64/OVMF_CODE.fd",
            "/usr/share/ovmf/x64/OVMF_VARS.fd",
        ),
    ];
    PAIRS
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.exists() && v.exists())
        .with_context(|| {
            format!(
                "OVMF (UEFI firmware for qemu) not found: {}",
                crate::host::install_hint(crate::host::OVMF)
            )
        })
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    mut log: Option<fs::File>,
    lines: Arc<Mutex<Vec<String>>>,
    tx: mpsc::Sender<String>,
    echo: bool,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let mut rejoin = Rejoin::default();
        let mut deliver = |line: String| {
            if let Some(log) = &mut log {
                let _ = writeln!(log, "{line}");
            }
            if echo {
                eprintln!("{line}");
            }
            lines.lock().unwrap().push(line.clone());
            tx.send(line).is_ok()
        };
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            buf.clear();
            if !deliver(rejoin.push(line)) {
                return;
            }
        }
        if let Some(rest) = rejoin.held() {
            deliver(rest);
        }
    });
}

/// Puts back together the console lines the kernel cut. The kernel writes its messages straight to the
/// serial port, even in the middle of a line a program is writing: `ramnas: ready slot=a` can arrive as
/// `ramnas: rea[    2.166154] tsc: …`, more kernel lines, then `dy slot=a`. Every kernel message starts
/// with its timestamp (`printk.time`, on in Debian's and Alpine's kernels), so the text before a timestamp
/// in the middle of a line is held back, and joined to the next line that is not the kernel's. The kernel's
/// lines come first, whole.
#[derive(Default)]
struct Rejoin {
    held: String,
}

impl Rejoin {
    /// The line to pass on for the console line `line`: a kernel message as it is; the kernel message that
    /// cut a program's line, without the program's text (held); a program's line, joined to what was held.
    fn push(&mut self, line: String) -> String {
        match kernel_message_at(&line) {
            Some(0) => line,
            Some(at) => {
                // The cut can fall between the `\r` and `\n` that end the program's line.
                self.held.push_str(line[..at].trim_end_matches('\r'));
                line[at..].to_string()
            }
            None => std::mem::take(&mut self.held) + &line,
        }
    }

    /// What is still held back when the console closes.
    fn held(self) -> Option<String> {
        Some(self.held).filter(|h| !h.is_empty())
    }
}

/// Where the first kernel timestamp (`[    2.166154] `) in `line` starts.
fn kernel_message_at(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(at, _)| at).find(|&at| {
        let rest = &line[at + 1..];
        let Some((stamp, _)) = rest.split_once("] ") else {
            return false;
        };
        let Some((secs, micros)) = stamp.trim_start_matches(' ').split_once('.') else {
            return false;
        };
        !secs.is_empty()
            && micros.len() == 6
            && secs
                .bytes()
                .chain(micros.bytes())
                .all(|b| b.is_ascii_digit())
    })
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A console line matched; here it is.
    Matched(String),
    /// The kernel panicked (and qemu will not reboot it).
    Panic(String),
    /// qemu exited before the line came.
    Exited(Option<i32>),
    Timeout,
}

/// A running qemu. Dropping it kills qemu.
pub struct Running {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    reboots: bool,
    done: Option<ExitStatus>,
    qmp: Qmp,
}

impl Running {
    /// Waits until a console line matches `pattern`. A panic ends the wait only when the machine does not
    /// reboot; qemu's exit and the timeout always do.
    pub fn wait_for(&mut self, pattern: &Regex, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if pattern.is_match(&line) => return Outcome::Matched(line),
                Ok(line) if line.contains(PANIC) && !self.reboots => return Outcome::Panic(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Outcome::Exited(
                        self.wait_exit(Duration::from_secs(10))
                            .ok()
                            .and_then(|s| s.code()),
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if left.is_zero() {
                        return Outcome::Timeout;
                    }
                }
            }
        }
    }

    /// Like [`Running::wait_for`], but anything other than a match is an error that says what happened and
    /// shows the console's last lines.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let re = Regex::new(pattern).with_context(|| format!("bad pattern {pattern:?}"))?;
        match self.wait_for(&re, timeout) {
            Outcome::Matched(line) => Ok(line),
            other => bail!("{}\n{}", describe(&other, pattern, timeout), self.tail(25)),
        }
    }

    /// Waits for qemu to exit by itself (after the guest powered off, say).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.done {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for qemu")? {
                self.done = Some(status);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "qemu still running after {}s\n{}",
                    timeout.as_secs(),
                    self.tail(25)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every console line so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last `n` console lines, as one string, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        let mut out = format!("last console lines (full log: {}):\n", self.log.display());
        for line in &lines[start..] {
            out.push_str("  | ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Pulls the virtio or USB disk `drive` (its index in [`Machine::drives`]) out of the running machine, as
    /// a hot-unplug the guest's kernel completes.
    pub fn unplug(&mut self, drive: usize) -> Result<()> {
        self.qmp
            .execute("device_del", &format!("{{\"id\": \"device{drive}\"}}"))
    }

    /// Presses the machine's ACPI power button (QMP `system_powerdown`): a guest running acpid powers off
    /// cleanly, unmounting what it mounted. A machine that is gone already needs no press.
    pub fn press_power_button(&mut self) -> Result<()> {
        if self.exited() {
            return Ok(());
        }
        match self.qmp.execute("system_powerdown", "{}") {
            Err(_) if self.wait_exit(Duration::from_secs(1)).is_ok() => Ok(()),
            done => done,
        }
    }

    /// Whether qemu has exited.
    pub fn exited(&mut self) -> bool {
        if self.done.is_none() {
            self.done = self.child.try_wait().ok().flatten();
        }
        self.done.is_some()
    }

    /// Kills qemu and reaps it.
    pub fn kill(&mut self) {
        if self.done.is_none() {
            let _ = self.child.kill();
            self.done = self.child.wait().ok();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One sentence for an outcome that was not the awaited line.
pub fn describe(outcome: &Outcome, pattern: &str, timeout: Duration) -> String {
    match outcome {
        Outcome::Matched(line) => format!("matched: {line}"),
        Outcome::Panic(line) => format!("the kernel panicked before {pattern:?} appeared: {line}"),
        Outcome::Exited(code) => format!(
            "qemu exited (code {}) before {pattern:?} appeared",
            code.map_or("none".to_string(), |c| c.to_string())
        ),
        Outcome::Timeout => format!(
            "timed out after {}s waiting for {pattern:?}",
            timeout.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejoin(raw: &[&str]) -> Vec<String> {
        let mut rejoin = Rejoin::default();
        let mut out: Vec<String> = raw.iter().map(|l| rejoin.push(l.to_string())).collect();
        out.extend(rejoin.held());
        out
    }

    #[test]
    fn kernel_messages_cut_into_a_line_come_out_before_it_whole() {
        // As a CI run printed it: the echo's newline came after three kernel messages.
        assert_eq!(
            rejoin(&[
                "ramnas: fixture checks ok[    2.166154] tsc: Refined TSC clocksource calibration",
                "[    2.166691] clocksource: tsc: mask: 0xffffffffffffffff",
                "",
                "ramnas: disk sda serial=",
            ]),
            [
                "[    2.166154] tsc: Refined TSC clocksource calibration",
                "[    2.166691] clocksource: tsc: mask: 0xffffffffffffffff",
                "ramnas: fixture checks ok",
                "ramnas: disk sda serial=",
            ]
        );
        assert_eq!(
            rejoin(&[
                "ramnas: rea[  123.000001] sd 0:0:0:0: [sda] Attached",
                "dy slot=a"
            ]),
            [
                "[  123.000001] sd 0:0:0:0: [sda] Attached",
                "ramnas: ready slot=a"
            ]
        );
        assert_eq!(
            rejoin(&["ramnas: ok\r[    3.000000] usb 1-1: new device", ""]),
            ["[    3.000000] usb 1-1: new device", "ramnas: ok"]
        );
    }

    #[test]
    fn other_lines_pass_unchanged() {
        let lines = [
            "[    0.000000] Linux version 6.12",
            "SeaBIOS (version 1.16)",
            "\u{1b}[2J\u{1b}[01;01H boot: [a] [1.5] [ 1.123456]",
            "ramnas: ready slot=a build=x",
            "",
        ];
        assert_eq!(rejoin(&lines), lines);
    }

    #[test]
    fn a_line_cut_as_the_console_closes_is_kept() {
        assert_eq!(
            rejoin(&["ramnas: go[    9.000000] reboot: Power down"]),
            ["[    9.000000] reboot: Power down", "ramnas: go"]
        );
    }
}
