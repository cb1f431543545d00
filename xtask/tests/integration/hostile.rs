//! Nothing a stick or a NAS sends can hurt the host: a NAS that stops answering fails in bounded time, an
//! answer too big is refused at once, and `status` shows what a stick holds with its control characters
//! escaped.

use crate::common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use xtask::build::manifest::{Artifact, Manifest};

/// Runs `cargo xtask ARGS…` with `ssh` as its ssh and `RAMNAS_SSH_TIMEOUT` at `timeout` seconds; panics if it
/// is still running after `limit`. Returns its output and how long it took.
fn xtask_ssh_within(
    dir: &Path,
    ssh: &Path,
    timeout: &str,
    limit: Duration,
    args: &[&str],
) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = common::xtask_command(dir, args)
        .env(xtask::stick::ssh::PROGRAM_ENV, ssh)
        .env(xtask::stick::ssh::TIMEOUT_ENV, timeout)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "xtask {args:?} still ran after {limit:?}:\n{}",
                common::text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed())
}

/// A NAS's stick (`DIR/media-boot` holding syslinux/) behind the test sshd, slot a running: (the sshd, to
/// keep while it is used; the stick's directory; the target; the ssh program).
fn nas(d: &Path) -> (xtask::dev::fixture::Sshd, PathBuf, String, PathBuf) {
    let boot = d.join("media-boot");
    fs::create_dir_all(boot.join("syslinux")).unwrap();
    let cmdline = d.join("proc-cmdline");
    fs::write(&cmdline, "ramnas.slot=a\n").unwrap();
    let sshd = xtask::dev::fixture::Sshd::start(d, &boot, &cmdline).unwrap();
    let target = format!("ssh://root@127.0.0.1:{}", sshd.port);
    let ssh = sshd.ssh.clone();
    (sshd, boot, target, ssh)
}

/// A NAS whose stick stops answering mid-request (its syslinux.cfg is a FIFO nobody writes: `cat` blocks, as
/// on a dying stick; sshd still answers keep-alives) ends the session after the timeout, with a message
/// that says so, instead of waiting for ever.
#[test]
#[ignore = "needs root (sshd logs in as root): `cargo xtask test` runs it"]
fn a_nas_that_stops_answering_fails_within_the_timeout() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_sshd, boot, target, ssh) = nas(d);
    let fifo = boot.join("syslinux/syslinux.cfg");
    common::run("mkfifo", &[fifo.to_str().unwrap()]);
    let (out, took) = xtask_ssh_within(d, &ssh, "2", Duration::from_secs(60), &["status", &target]);
    let err = common::failed(&out);
    assert!(
        err.contains("the NAS sent nothing for 2 s") && err.contains("RAMNAS_SSH_TIMEOUT"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A NAS that answers with more than ramnas ever takes (a manifest of 64 MiB) is refused as soon as the
/// answer's header says so: nothing of it is read into memory, and the session ends.
#[test]
#[ignore = "needs root (sshd logs in as root): `cargo xtask test` runs it"]
fn a_nas_answer_too_big_is_refused_at_once() {
    let dir = common::tempdir();
    let d = dir.path();
    let (_sshd, boot, target, ssh) = nas(d);
    fs::write(boot.join("syslinux/syslinux.cfg"), "DEFAULT a\n").unwrap();
    fs::create_dir_all(boot.join("slots/a")).unwrap();
    fs::File::create(boot.join("slots/a/manifest.json"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (out, took) =
        xtask_ssh_within(d, &ssh, "30", Duration::from_secs(60), &["status", &target]);
    let err = common::failed(&out);
    assert!(
        err.contains("answered `read` with 67108864 bytes, more than ramnas ever takes (16 MiB)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Escape sequences on a stick reach no terminal: `status` shows the NAS's last-trial record and the boot
/// loaders' record escaped, and takes a manifest with control characters in its fields for no build's; it
/// prints no control character but its own newlines.
#[test]
fn status_shows_what_a_stick_holds_with_control_characters_escaped() {
    let dir = common::tempdir();
    let d = dir.path();
    let stick = d.join("stick");
    for sub in ["syslinux", "slots/a", "persist"] {
        fs::create_dir_all(stick.join(sub)).unwrap();
    }
    fs::write(stick.join("syslinux/syslinux.cfg"), "DEFAULT a\n").unwrap();
    let mut artifacts = std::collections::BTreeMap::new();
    for (name, data) in [
        ("vmlinuz", &b"kernel"[..]),
        ("initramfs", b"archive"),
        ("cmdline", b"console=ttyS0\n"),
    ] {
        fs::write(stick.join("slots/a").join(name), data).unwrap();
        let sha256 = xtask::build::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(data));
        let size = data.len() as u64;
        artifacts.insert(name.to_string(), Artifact { size, sha256 });
    }
    let manifest = Manifest {
        build_id: "evil\u{1b}[2J".into(),
        source_date: 0,
        git_commit: Some("\u{1b}]0;title\u{7}abcdef".into()),
        git_dirty: false,
        alpine_branch: "v3.22".into(),
        kernel_version: Some("6.1\u{9b}31m\r".into()),
        compression: xtask::build::compress::Compression::Zstd,
        cmdline: "console=ttyS0".into(),
        packages: Default::default(),
        artifacts,
        initrds: Vec::new(),
        bootloaders: [("syslinux".to_string(), "syslinux\u{1b}[8m".to_string())].into(),
        root_ssh_keys: None,
        tests: None,
    };
    fs::write(stick.join("slots/a/manifest.json"), manifest.to_json()).unwrap();
    fs::write(
        stick.join("bootloaders.txt"),
        "syslinux: the host's\u{1b}[1A\n",
    )
    .unwrap();
    fs::write(
        stick.join("persist/last-trial"),
        "slot=b\nbuild=\u{1b}[2Jb1\ntime=now\nfailed=sshd\u{1b}]0;x\u{7}\nlog:\nline \u{1b}[31mred\rover\n",
    )
    .unwrap();
    let st = common::ok(&common::xtask(d, &["status", stick.to_str().unwrap()]));
    assert!(
        !st.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal:\n{st:?}"
    );
    for shown in [
        "slot a (default): no complete build",
        r"boot loaders: syslinux: the host's\u{1b}[1A",
        r"last trial: slot b, build \u{1b}[2Jb1, failed: sshd\u{1b}]0;x\u{7} (now)",
        r"  | line \u{1b}[31mred\rover",
    ] {
        assert!(st.contains(shown), "{shown} not in:\n{st}");
    }
}
