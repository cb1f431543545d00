//! `cargo xtask vm --test`: the system's own tests ([`crate::build::tests`]) against the build, booted the
//! way a deploy boots it. Steps, in the order the work happens:
//!
//! 1. the tests, and the build made with them (a build made before the tests changed is refused);
//! 2. the data disks: new empty ones, or copy-on-write overlays of the disks `tests/prepare` left, which
//!    it makes first, in a boot of its own (the build committed, healthy or not), when it (or the disks
//!    asked for) changed;
//! 3. the stick: a fresh copy of OUT/boot.img with the build deployed into its other slot on trial;
//! 4. the boot, until the trial says `ramnas: ready … build=<this build>` (an unhealthy one is an error
//!    saying why);
//! 5. each test in turn, with its timeout: one line each, the output of the failed ones;
//! 6. OUT/tested.json written when every test passed, removed otherwise; the power button, or with
//!    `--keep` after a failure the VM left running until it powers off or Ctrl-C.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::{
    boot::slots::{self, Build, Table},
    build::tests::{Side, Test, Tested, Tests},
    flags::VmFlags,
    host::{
        qemu::{self, Bus, Drive, Firmware, Machine, Running},
        signals::Interrupts,
    },
    stick::{self, for_terminal},
};

/// The guest's ports forwarded to free ports here, for the host tests: ssh, HTTP, HTTPS, SMB, NFS.
const FORWARDED: [u16; 5] = [22, 80, 443, 445, 2049];

/// The exit status of a skipped test (automake's and meson's).
const SKIP: i32 = 77;

/// The remote command that runs a NAS test sent on stdin: saved to a file first, so a command in the test
/// that reads stdin cannot eat the rest of it. Fixed text: of the test, only its bytes reach the NAS.
const ON_NAS: &str =
    "f=$(mktemp) && cat >\"$f\" && sh \"$f\" </dev/null; s=$?; rm -f \"$f\"; exit $s";

/// The most lines of a failed test's output printed (all of it is in its log).
const SHOWN_LINES: usize = 60;

pub(super) fn run(
    flags: &VmFlags,
    mut machine: Machine,
    vm_dir: &Path,
    ovmf: Option<(PathBuf, PathBuf)>,
) -> Result<()> {
    let out = &flags.out.out;
    // 1. The tests and their build.
    let tests = Tests::read(&flags.system)?.with_context(|| {
        format!(
            "{}: no tests: put scripts in nas/ (run on the NAS) or host/ (run here against the VM); \
             README, \"Testing the NAS\"",
            flags.system.join(crate::build::tests::DIR).display()
        )
    })?;
    let build = Build::open(out)?;
    let id = build.manifest.build_id.clone();
    if build.manifest.tests.as_deref() != Some(tests.digest.as_str()) {
        bail!(
            "{}: not the tests build {id} in {} was made with (they changed since, or it was built from \
             another system): build again (`cargo xtask build --out {}`), then test",
            tests.dir.display(),
            out.display(),
            out.display()
        );
    }
    let image = out.join("boot.img");
    if !image.exists() {
        return Err(super::no_image(out));
    }
    // Whatever passed before, this run's result is the one that counts.
    Tested::forget(out)?;
    let dir = vm_dir.join("test");
    let logs = dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    machine.net = true;
    machine.reboot = true;
    if let Some((code, template)) = ovmf {
        machine.firmware = Firmware::Uefi {
            code,
            vars: super::uefi_vars(&dir, &template)?,
        };
    }
    let runner = Runner {
        flags,
        machine,
        image,
        build,
        program: stick::ssh::program(),
        signals: super::catch_interrupts()?,
        dir,
        logs,
    };

    // 2. The data disks.
    let disks = runner.disks(&tests)?;

    // 3 and 4. The stick, and the boot.
    let mut nas = runner.boot(disks, "console.log", false)?;

    // 5. The tests.
    let (mut passed, mut skipped, mut failed) = (0, 0, 0);
    for test in &tests.tests {
        let log = runner
            .logs
            .join(format!("{}-{}.log", test.side.dir(), test.name));
        let command = match test.side {
            Side::Nas => nas.on_nas(&runner.program, &test.path)?,
            Side::Host => nas.on_host(&runner.program, test, &tests.dir),
        };
        let timeout = Duration::from_secs(flags.test_timeout);
        let (ended, took) = runner.run_one(command, &log, timeout, &mut nas.vm)?;
        match report(&test.to_string(), ended, took, &log) {
            Verdict::Pass => passed += 1,
            Verdict::Skip => skipped += 1,
            Verdict::Fail => failed += 1,
        }
    }

    // 6. The record, and the VM's end.
    let count = tests.tests.len();
    if failed == 0 {
        Tested::record(out, &id, &tests.digest)?;
        println!(
            "vm: {passed} passed, {skipped} skipped: build {id} is recorded as tested ({}); `deploy` takes it",
            out.join(Tested::FILE_NAME).display()
        );
        return super::power_off(&mut nas.vm, &nas.log, &runner.signals);
    }
    if flags.keep {
        runner.keep(&mut nas)?;
    } else {
        super::power_off(&mut nas.vm, &nas.log, &runner.signals)?;
    }
    bail!(
        "{failed} of {count} tests failed (above; every test's whole output is in {}/)",
        runner.logs.display()
    )
}

/// Everything a boot of the test VM needs.
struct Runner<'a> {
    flags: &'a VmFlags,
    machine: Machine,
    image: PathBuf,
    build: Build,
    program: OsString,
    signals: Interrupts,
    /// vm/test/
    dir: PathBuf,
    /// vm/test/logs/
    logs: PathBuf,
}

/// The test VM, booted and ready.
struct Booted {
    vm: Running,
    log: PathBuf,
    /// An ssh config naming the VM `nas`.
    config: PathBuf,
    /// (port here, guest port)
    forward: Vec<(u16, u16)>,
}

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Exit(i32),
    Signal,
    TimedOut,
}

impl Runner<'_> {
    /// The data disks of a run: new empty ones, or overlays of the disks `tests/prepare` left.
    fn disks(&self, tests: &Tests) -> Result<Vec<Drive>> {
        let (count, size) = (self.flags.disks, &self.flags.disk_size);
        let Some(prepare) = &tests.prepare else {
            return qemu::data_disks(&self.dir.join("disks"), count, size, true);
        };
        let prepared = self.dir.join("prepared");
        let record = prepared.join("prepared-by");
        let script = fs::read(prepare).with_context(|| format!("reading {}", prepare.display()))?;
        let want = format!(
            "tests/prepare {}\ndisks {count}\nsize {size}\n",
            crate::build::manifest::hex(&Sha256::digest(&script))
        );
        let kept = fs::read_to_string(&record).ok().as_deref() == Some(want.as_str())
            && (0..count).all(|i| qemu::disk_file(&prepared, i).exists());
        let bases = if kept {
            eprintln!(
                "vm: the data disks start as tests/prepare left them ({})",
                prepared.display()
            );
            qemu::data_disks(&prepared, count, size, false)?
        } else {
            let _ = fs::remove_file(&record);
            let bases = qemu::data_disks(&prepared, count, size, true)?;
            eprintln!("vm: preparing the data disks: tests/prepare, in a boot of its own");
            let mut nas = self.boot(bases.clone(), "prepare-console.log", true)?;
            let log = self.logs.join("prepare.log");
            let timeout = Duration::from_secs(self.flags.timeout);
            let command = nas.on_nas(&self.program, prepare)?;
            let (ended, took) = self.run_one(command, &log, timeout, &mut nas.vm)?;
            if report("prepare", ended, took, &log) != Verdict::Pass {
                bail!(
                    "{} failed (above): the data disks will be prepared again at the next run",
                    prepare.display()
                );
            }
            super::power_off(&mut nas.vm, &nas.log, &self.signals)?;
            crate::host::atomic::write(&record, &want)?;
            bases
        };
        qemu::overlay_disks(&bases, &self.dir.join("disks"))
    }

    /// Boots a fresh stick holding the build on trial, with `disks`, and waits for the trial to be ready.
    /// For `tests/prepare` (`prepare`) the build is committed instead, and an unhealthy boot will do: the
    /// NAS may well need what prepare makes (a share's dataset on the pool) to come up healthy.
    fn boot(&self, disks: Vec<Drive>, console: &str, prepare: bool) -> Result<Booted> {
        let id = &self.build.manifest.build_id;
        let stick = self.dir.join("stick.img");
        super::copy_sparse(&self.image, &stick)?;
        let how = match self.put_on_stick(&stick, prepare)? {
            Some(slot) if prepare => format!("committed in slot {slot}"),
            Some(slot) => format!("on trial in slot {slot}"),
            None => "committed (the image holds it already)".to_string(),
        };
        let mut machine = self.machine.clone();
        let mut drive = Drive::raw(&stick, Bus::Usb);
        drive.boot = true;
        machine.drives.push(drive);
        machine.drives.extend(disks);
        for guest in FORWARDED {
            machine.forward.push((crate::host::free_port()?, guest));
        }
        let ssh_port = machine.forward[0].0;
        let config = self.dir.join("ssh_config");
        crate::host::atomic::write(&config, ssh_config(ssh_port))?;
        let log = self.dir.join(console);
        eprintln!(
            "vm: booting build {id} {how} from {} (the console: {})",
            stick.display(),
            log.display()
        );
        let mut vm = machine.start(&log, false)?;
        let decided = Regex::new("ramnas: (ready|unhealthy) ").expect("a valid pattern");
        let timeout = Duration::from_secs(self.flags.timeout);
        let line = super::wait_for(&mut vm, &decided, timeout, &self.signals)?;
        let line = line.trim();
        let healthy = line.contains("ramnas: ready ");
        if !line.contains(&format!("build={id}")) || !(healthy || prepare) {
            bail!(
                "the trial boot of build {id} did not come up healthy: {line:?}; on the NAS it would go back \
                 to the committed build. `cargo xtask status {}` shows the NAS's record; the console is in {}",
                stick.display(),
                log.display()
            );
        }
        eprintln!("vm: {line}");
        Ok(Booted {
            vm,
            log,
            config,
            forward: machine.forward,
        })
    }

    /// Deploys the build into the stick image `path` on trial, as `deploy` would (committed, with
    /// `commit`), unless the image holds it committed already; the slot it went into.
    fn put_on_stick(&self, path: &Path, commit: bool) -> Result<Option<slots::Slot>> {
        let target = path
            .to_str()
            .with_context(|| format!("{}: not a UTF-8 path", path.display()))?;
        let mut stick = stick::open(target)?;
        let table = Table::read(&mut *stick)?;
        let committed = slots::committed(&mut *stick, &table)?;
        let trial = if table.slots[&committed].manifest.build_id != self.build.manifest.build_id {
            Some(slots::deploy(&mut *stick, &table, &self.build, commit)?.0)
        } else {
            None
        };
        stick.close()?;
        Ok(trial)
    }

    /// Runs `command` with its output (both streams) in `log`, for at most `timeout`; kills what it started
    /// on a timeout. Ctrl-C kills it and qemu.
    fn run_one(
        &self,
        mut command: Command,
        log: &Path,
        timeout: Duration,
        vm: &mut Running,
    ) -> Result<(Ended, Duration)> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        command.stdout(file).stderr(err).process_group(0);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("running {:?}", command.get_program()))?;
        let group = child.id() as libc::pid_t;
        let kill = |child: &mut std::process::Child| {
            // SAFETY: a signal to the process group the child leads (process_group(0) above).
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
        };
        loop {
            if let Some(status) = child.try_wait().context("waiting for a test")? {
                let ended = status.code().map_or(Ended::Signal, Ended::Exit);
                // What it left running in its group goes with it.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                return Ok((ended, started.elapsed()));
            }
            if self.signals.interrupted() {
                kill(&mut child);
                vm.kill();
                bail!("interrupted: the test and qemu stopped");
            }
            if started.elapsed() >= timeout {
                kill(&mut child);
                return Ok((Ended::TimedOut, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--keep`: says how to get in, then waits for the VM to power off or for Ctrl-C.
    fn keep(&self, nas: &mut Booted) -> Result<()> {
        println!(
            "vm: --keep: the VM is still running; get in with\n    {} -F {} nas\n\
             vm: power it off there (poweroff), or press Ctrl-C here",
            self.program.to_string_lossy(),
            nas.config.display()
        );
        while !nas.vm.exited() {
            if self.signals.interrupted() {
                nas.vm.kill();
                eprintln!("vm: interrupted: qemu stopped");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Booted {
    /// The ssh client running the NAS test `script` on the NAS, as root, by its `sh`.
    fn on_nas(&self, program: &OsString, script: &Path) -> Result<Command> {
        let input =
            fs::File::open(script).with_context(|| format!("reading {}", script.display()))?;
        let mut command = Command::new(program);
        command
            .arg("-F")
            .arg(&self.config)
            .args(["nas", ON_NAS])
            .stdin(input);
        Ok(command)
    }

    /// The host test `test`, run in `dir` (system/tests) with the VM in its environment.
    fn on_host(&self, program: &OsString, test: &Test, dir: &Path) -> Command {
        let mut command = Command::new(&test.path);
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .env("RAMNAS_VM_SSH_CONFIG", &self.config)
            .env(stick::ssh::PROGRAM_ENV, program)
            .env("RAMNAS_VM_HOST", "127.0.0.1");
        for (here, guest) in &self.forward {
            command.env(format!("RAMNAS_VM_PORT_{guest}"), here.to_string());
        }
        command
    }
}

/// An ssh config naming the VM `nas`: root at 127.0.0.1:`port`, whatever host key it made this boot (a
/// fresh stick makes new ones), and the options every ssh session of ramnas's has (no prompt, and a VM that
/// stops answering ends the session).
fn ssh_config(port: u16) -> String {
    let mut config = format!(
        "# Written by `cargo xtask vm --test` for the VM of its last run.\n\
         Host nas\n\
         \x20   HostName 127.0.0.1\n\
         \x20   Port {port}\n\
         \x20   User root\n\
         \x20   StrictHostKeyChecking no\n\
         \x20   UserKnownHostsFile /dev/null\n\
         \x20   LogLevel ERROR\n"
    );
    for option in stick::ssh::SSH_OPTIONS.iter().filter(|o| **o != "-o") {
        config.push_str(&format!("    {}\n", option.replacen('=', " ", 1)));
    }
    config
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Skip,
    Fail,
}

/// Prints the test's line (and the output of a failed one) and says what it was.
fn report(test: &str, ended: Ended, took: Duration, log: &Path) -> Verdict {
    let output = fs::read_to_string(log).unwrap_or_default();
    let secs = took.as_secs_f64();
    let (verdict, why) = match ended {
        Ended::Exit(0) => (Verdict::Pass, format!("{secs:.1} s")),
        Ended::Exit(SKIP) => {
            let reason = output.lines().rev().find(|l| !l.trim().is_empty());
            let reason = reason.map_or(String::new(), |r| format!(": {}", for_terminal(r.trim())));
            (Verdict::Skip, format!("{secs:.1} s{reason}"))
        }
        Ended::Exit(code) => (Verdict::Fail, format!("exit {code}, {secs:.1} s")),
        Ended::Signal => (Verdict::Fail, format!("killed by a signal, {secs:.1} s")),
        Ended::TimedOut => (Verdict::Fail, format!("timed out after {:.0} s", secs)),
    };
    let word = match verdict {
        Verdict::Pass => "pass",
        Verdict::Skip => "skip",
        Verdict::Fail => "FAIL",
    };
    println!("{word}  {test}  ({why})");
    if verdict != Verdict::Fail {
        return verdict;
    }
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(SHOWN_LINES);
    if start > 0 {
        println!(
            "      | … {start} lines before these (all in {})",
            log.display()
        );
    }
    for line in &lines[start..] {
        println!("      | {}", for_terminal(line));
    }
    if lines.is_empty() {
        println!("      | (no output)");
    }
    verdict
}

#[cfg(test)]
mod unit {
    #[test]
    fn the_ssh_config_has_ramnas_ssh_options() {
        let config = super::ssh_config(2222);
        for line in [
            "Host nas",
            "    Port 2222",
            "    BatchMode yes",
            "    ServerAliveInterval 15",
            "    ServerAliveCountMax 4",
            "    ConnectTimeout 30",
        ] {
            assert!(config.lines().any(|l| l == line), "{line:?} in:\n{config}");
        }
    }
}
