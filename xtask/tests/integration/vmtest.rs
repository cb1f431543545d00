//! `cargo xtask vm --test`: the example system's own tests (`system/tests/`, sharing on as README says, so
//! its share test logs in with smbclient) against its build, on the NAS of [`openrc`] booted from its stick
//! image on trial, with real OpenZFS, Samba and sshd. Three boots: `tests/prepare` makes the pool in one of
//! its own; a run with tests added that fail on each side and hang, kept (`--keep`) to be looked at over
//! ssh; and, those removed, a run that passes from the prepared disks. The deploy gate before and after.

use crate::{
    common,
    openrc::{self, Nas},
};

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// `cargo xtask vm --test ARGS…` for the build in `out`, with the VM's state in NAS/vm.
fn vm_test(nas: &Nas, system: &Path, out: &Path, args: &[&str]) -> Command {
    let mut all = vec![
        "vm",
        "--test",
        "--out",
        out.to_str().unwrap(),
        "--system",
        system.to_str().unwrap(),
    ];
    all.extend(args);
    let mut command = common::xtask_command(nas.path(), &all);
    command
        .env("RAMNAS_VM_DIR", nas.path().join("vm"))
        .env("RAMNAS_SSH", openrc::ssh_program(nas));
    command
}

fn write_test(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    common::run("chmod", &["755", path.to_str().unwrap()]);
}

/// `deploy` of the build in `out` into a new copy of its stick image.
fn deploy(nas: &Nas, out: &Path, extra: &[&str]) -> Output {
    let target = nas.path().join("target.img");
    fs::copy(out.join("boot.img"), &target).unwrap();
    let mut args = vec![
        "deploy",
        target.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    common::xtask(nas.path(), &args)
}

/// `nas.build` again of a system built before: the stand-in's packages carry no apk checksum, so the lock
/// the first build wrote is one the next cannot read; a real tree's always can.
fn rebuild(nas: &Nas, system: &Path) {
    fs::remove_file(system.join("packages.lock")).unwrap();
    nas.build(system, "out");
}

fn build_id(out: &Path) -> String {
    xtask::build::manifest::Manifest::load(&out.join("manifest.json"))
        .unwrap()
        .build_id
}

#[test]
#[ignore = "needs root, qemu and OpenZFS (minutes under TCG): `cargo xtask test` runs it"]
fn the_nas_tests_run_fail_hang_keep_pass_and_gate_the_deploy() {
    let nas = Nas::new();
    let system = crate::shares::sharing_system(&nas, "vmtest", "");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system/tests");
    common::run(
        "cp",
        &["-a", example.to_str().unwrap(), system.to_str().unwrap()],
    );
    // The stick image holds an older build, so the tests' boots are trials of the new one, as a deploy's.
    let out = nas.build(&system, "out");
    common::make_stick(nas.path(), &out);
    fs::write(system.join("root/etc/vmtest"), "the build under test\n").unwrap();
    let tests = system.join("tests");
    write_test(
        &tests.join("nas/fails"),
        "echo \"the NAS side says why\"\nexit 3\n",
    );
    write_test(
        &tests.join("host/fails"),
        "#!/bin/sh\necho \"the host side says why on $RAMNAS_VM_HOST:$RAMNAS_VM_PORT_22\" >&2\nexit 4\n",
    );
    write_test(
        &tests.join("host/hangs"),
        "#!/bin/sh\necho \"before the hang\"\nsleep 600\n",
    );
    rebuild(&nas, &system);
    let id = build_id(&out);

    let refused = common::failed(&deploy(&nas, &out, &[]));
    assert!(
        refused.contains(&format!("build {id} has not passed its tests"))
            && refused.contains("cargo xtask vm --test")
            && refused.contains("Nothing was written"),
        "{refused}"
    );

    // The failing run, kept: the VM stays up for ssh until it powers off.
    // The default timeout (120 s): host/reboot boots the NAS again under TCG.
    let args = ["--disks", "2", "--disk-size", "1G"];
    let mut command = vm_test(&nas, &system, &out, &args);
    command.arg("--keep");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1500);
    while !printed
        .iter()
        .any(|l: &String| l.contains("--keep: the VM is still running"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no --keep line:\n{}\n{}",
                    printed.join("\n"),
                    errors.join().unwrap()
                );
            }
        }
    }
    let config = nas.path().join("vm/test/ssh_config");
    let ssh = |script: &str| {
        Command::new(openrc::ssh_program(&nas))
            .arg("-F")
            .arg(&config)
            .args(["nas", script])
            .output()
            .unwrap()
    };
    let kept = ssh("cat /proc/cmdline /etc/vmtest");
    if !kept.status.success() {
        let _ = child.kill();
        let console =
            fs::read_to_string(nas.path().join("vm/test/console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        panic!(
            "ssh into the kept VM: {}\nprinted:\n{}\nthe console's last lines:\n{}",
            common::text(&kept),
            printed.join("\n"),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    let kept = String::from_utf8_lossy(&kept.stdout);
    assert!(
        kept.contains(&format!("ramnas.build={id}")) && kept.contains("the build under test"),
        "{kept}"
    );
    let _ = ssh("/sbin/poweroff");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the kept VM did not end after poweroff");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    printed.extend(rx.iter());
    let stdout = printed.join("\n");
    let stderr = errors.join().unwrap();
    println!("{stdout}\n{stderr}");
    assert!(!status.success(), "{status}");
    for want in [
        "pass  prepare  (",
        "FAIL  nas/fails  (exit 3, ",
        "      | the NAS side says why",
        "skip  nas/notify  (",
        ": no channel set in /etc/conf.d/ramnas-notify)",
        "pass  nas/pool  (",
        "pass  nas/snapshots  (",
        "FAIL  host/fails  (exit 4, ",
        "      | the host side says why on 127.0.0.1:",
        "FAIL  host/hangs  (timed out after 120 s)",
        "      | before the hang",
        "pass  host/reboot  (",
        "pass  host/share  (",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    for want in [
        "preparing the data disks: tests/prepare",
        &format!("booting build {id} on trial in slot b"),
        &format!("ramnas: ready slot=b build={id}"),
        "3 of 8 tests failed",
    ] {
        assert!(stderr.contains(want), "no {want:?} in:\n{stderr}");
    }
    assert!(!out.join("tested.json").exists());
    let refused = common::failed(&deploy(&nas, &out, &[]));
    assert!(refused.contains("has not passed its tests"), "{refused}");
    let untested = common::ok(&deploy(&nas, &out, &["--untested"]));
    assert!(
        untested.contains(&format!("deploying build {id} untested (--untested)")),
        "{untested}"
    );

    // The failing tests removed: the build must record the tests before they run; its id stays. The run
    // starts from the prepared disks (tests/prepare does not run again) and passes.
    for gone in ["nas/fails", "host/fails", "host/hangs"] {
        fs::remove_file(tests.join(gone)).unwrap();
    }
    let stale = common::failed(&vm_test(&nas, &system, &out, &args).output().unwrap());
    assert!(
        stale.contains("not the tests build") && stale.contains("build again"),
        "{stale}"
    );
    rebuild(&nas, &system);
    assert_eq!(build_id(&out), id, "the tests are not in the build");
    let passed = common::ok(&vm_test(&nas, &system, &out, &args).output().unwrap());
    println!("{passed}");
    for want in [
        "the data disks start as tests/prepare left them",
        "pass  nas/pool  (",
        "pass  host/reboot  (",
        "pass  host/share  (",
        "vm: 4 passed, 1 skipped: build",
        "the guest powered off",
    ] {
        assert!(passed.contains(want), "no {want:?} in:\n{passed}");
    }
    assert!(!passed.contains("pass  prepare"), "{passed}");
    let record = fs::read_to_string(out.join("tested.json")).unwrap();
    assert!(record.contains(&id), "{record}");
    let deployed = common::ok(&deploy(&nas, &out, &[]));
    assert!(
        deployed.contains(&format!("deploying build {id} into slot b"))
            && !deployed.contains("untested"),
        "{deployed}"
    );
}
