//! A real Alpine build, opt-in: the real alpine-make-rootfs and apk on real Alpine packages, booted in qemu.
//!
//! CI cannot reach Alpine's mirror, so this test runs only when `RAMNAS_TEST_ALPINE_MIRROR` names one (a
//! directory laid out like a mirror, or a URL); unset, it says it was skipped and why. It builds a small
//! system (this repository's `system/root`, a setup.sh of the services the openrc package itself ships, and
//! the packages below) through `cargo xtask build` as a user does, boots it to `ramnas: ready` with `cargo
//! xtask vm --check`, then builds it again `--offline` and compares the bytes. A mirror that is a directory
//! is served over http by the test itself, so the first build fills apk's cache as from a real mirror and
//! the offline one runs with the server gone.
//!
//! - `RAMNAS_TEST_ALPINE_MIRROR`: the mirror (path or URL).
//! - `RAMNAS_TEST_ALPINE_SETTINGS`: a system.toml for the test system, without `alpine.mirror` (default:
//!   `[alpine] branch = "v3.22"`), e.g. with more repositories, keys, `default_packages`, `kernel.package`.
//! - `RAMNAS_TEST_ALPINE_PACKAGES`: the packages, space-separated (default: `alpine-base linux-lts
//!   linux-firmware-none`).
//!
//! Without internet, also point `ALPINE_MAKE_ROOTFS` and `RAMNAS_APK` at copies of the two programs.

use crate::common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use xtask::{build::lock::Lock, build::manifest::Manifest};

const SETUP: &str = "#!/bin/sh\n\
set -eu\n\
ln -sfn /sbin/openrc-init /init\n\
for s in devfs dmesg; do rc-update add \"$s\" sysinit; done\n\
for s in modules hostname bootmisc; do rc-update add \"$s\" boot; done\n\
rc-update add ramnas-ready default\n\
for s in killprocs savecache mount-ro; do rc-update add \"$s\" shutdown; done\n\
passwd -d root >/dev/null\n";

#[test]
fn a_real_alpine_system_builds_boots_and_rebuilds_offline_to_the_same_bytes() {
    let Some(mirror) = std::env::var_os("RAMNAS_TEST_ALPINE_MIRROR").filter(|m| !m.is_empty())
    else {
        // Straight to stderr, past the test harness's capture, so that every run shows it.
        let _ = writeln!(
            std::io::stderr(),
            "tests/integration/alpine.rs: skipped: RAMNAS_TEST_ALPINE_MIRROR is not set (a real Alpine mirror, path or \
             URL; CI cannot reach one: see the test's doc comment)"
        );
        return;
    };
    let mirror = mirror.to_string_lossy().into_owned();
    let dir = common::tempdir();
    let system = dir.path().join("system");
    write_system(&system);

    let server = (!mirror.contains("://")).then(|| Server::start(Path::new(&mirror)));
    let url = match &server {
        Some(server) => server.url.clone(),
        None => mirror.clone(),
    };
    let mut settings: toml::Table = match std::env::var_os("RAMNAS_TEST_ALPINE_SETTINGS") {
        Some(path) => fs::read_to_string(&path).unwrap().parse().unwrap(),
        None => "[alpine]\nbranch = \"v3.22\"\n".parse().unwrap(),
    };
    settings
        .entry("alpine")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap()
        .insert("mirror".into(), url.into());
    fs::write(system.join("system.toml"), settings.to_string()).unwrap();

    let cache = dir.path().join("cache");
    let build = |out: &str, extra: &[&str]| -> (PathBuf, String) {
        let out = dir.path().join(out);
        let o = common::xtask_command(dir.path(), &["build", "--system"])
            .arg(&system)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env("XDG_CACHE_HOME", &cache)
            .env("SOURCE_DATE_EPOCH", "1764547200")
            .env_remove("SUDO_USER")
            .output()
            .unwrap();
        (out, common::ok(&o))
    };

    // Online: apk resolves, the cache fills, the lock is written.
    let (first, said) = build("out", &[]);
    eprintln!("{said}");
    let lock = Lock::load(&system.join("packages.lock"))
        .unwrap()
        .expect("a lock");
    let manifest = Manifest::load(&first.join("manifest.json")).unwrap();
    assert!(!manifest.packages.is_empty());
    for (name, version) in &manifest.packages {
        assert_eq!(
            lock.packages.get(name).map(|p| &p.version),
            Some(version),
            "{name}"
        );
    }
    // apk kept every package it fetched (local repositories it reads in place).
    let branch = lock.branch.clone();
    let cached = fs::read_dir(cache.join("ramnas/apk").join(&branch))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".apk"))
        })
        .count();
    assert!(cached > 0, "apk cached no package");

    // It boots to `ramnas: ready` under the real openrc-init.
    let vm = common::xtask_command(dir.path(), &["vm", "--out"])
        .arg(&first)
        .args(["--check", "--timeout", "900"])
        .env("RAMNAS_VM_DIR", dir.path().join("vm"))
        .output()
        .unwrap();
    let booted = common::ok(&vm);
    assert!(booted.contains("ramnas: ready"), "{booted}");
    for line in booted.lines().filter(|l| l.contains("ramnas:")) {
        eprintln!("booted: {line}");
    }

    // Offline, the server gone: the same bytes.
    drop(server);
    let (second, said) = build("out-offline", &["--offline", "--fresh"]);
    eprintln!("{said}");
    for name in ["vmlinuz", "initramfs", "manifest.json"] {
        assert!(
            fs::read(first.join(name)).unwrap() == fs::read(second.join(name)).unwrap(),
            "{name} differs between the online and the offline build"
        );
    }

    // A cold package cache (the two programs still at hand): --offline fails at once, naming what is
    // missing.
    let mut cold = common::xtask_command(dir.path(), &["build", "--system"]);
    cold.arg(&system)
        .args(["--out", "out-cold", "--offline"])
        .env("XDG_CACHE_HOME", dir.path().join("cold"));
    for pin in [
        &xtask::build::rootfs::ALPINE_MAKE_ROOTFS,
        &xtask::build::rootfs::APK,
    ] {
        if std::env::var_os(pin.env).is_none() {
            let cached = cache
                .join("ramnas")
                .join(format!("{}-{}", pin.name, pin.version));
            cold.env(pin.env, cached);
        }
    }
    let o = cold.output().unwrap();
    let err = common::failed(&o);
    assert!(err.contains("--offline: not in the package cache"), "{err}");
}

fn write_system(system: &Path) {
    fs::create_dir_all(system).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system/root");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&root)
        .arg(system.join("root"))
        .status()
        .unwrap();
    assert!(status.success());
    let packages = std::env::var("RAMNAS_TEST_ALPINE_PACKAGES")
        .unwrap_or_else(|_| "alpine-base linux-lts linux-firmware-none".to_string());
    let list: String = packages
        .split_whitespace()
        .map(|p| format!("{p}\n"))
        .collect();
    fs::write(system.join("packages"), list).unwrap();
    fs::write(system.join("setup.sh"), SETUP).unwrap();
    fs::set_permissions(system.join("setup.sh"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory served over http on 127.0.0.1 (GET only, one request per connection) until dropped.
struct Server {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(&root, stream),
                    Err(_) => thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        Server {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(root: &Path, stream: TcpStream) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let file = root.join(path.trim_start_matches('/'));
    let mut stream = stream;
    match (path.contains(".."), fs::read(&file)) {
        (false, Ok(body)) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
        _ => {
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
}
