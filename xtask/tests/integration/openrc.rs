//! The NAS of `system/` under a real openrc-init (Debian's OpenRC), built by `cargo xtask build` as a user
//! builds it: a stand-in alpine-make-rootfs (Alpine's mirror is out of reach here) installs the openrc fixture
//! tree in place of Alpine's packages, then does what the real tool does: copies `system/root` over it and
//! runs `system/setup.sh` in a chroot of it. So the runlevels are setup.sh's, the services are root/'s, and
//! PID 1, openrc-run, rc-service, rc-update and openrc-shutdown are OpenRC's. The builds go onto a stick
//! (`cargo xtask image`, `deploy`) that boots under SeaBIOS and OVMF, and the stick is read back with
//! `cargo xtask status`/`rollback`, as on a real NAS.

use crate::{common, notify};

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use xtask::{
    dev::fixture::{self, Fixture, StandIns},
    host::qemu::{Machine, Running},
};

/// A default-runlevel service whose name sorts before ramnas-ready and one whose name sorts after it: the
/// health check must wait for both.
const EARLY_AND_LATE: &[&str] = &["aaa-early", "zzz-late"];

/// A service that starts and says so.
fn service(name: &str) -> String {
    format!(
        "#!/sbin/openrc-run\n\
         # shellcheck shell=sh disable=SC2034\n\
         description=\"test service {name}\"\n\
         start() {{\n\techo \"test: {name} started\"\n}}\n"
    )
}

/// A service that fails to start.
const BROKEN: &str = "#!/sbin/openrc-run\n\
    # shellcheck shell=sh disable=SC2034\n\
    description=\"a service that fails\"\n\
    start() {\n\techo \"test: broken fails on purpose\"\n\treturn 1\n}\n";

/// A service that never finishes starting, as a `zfs-import` on a dying disk might (after the disks' drivers
/// are loaded, as zfs-import is).
const HANG: &str = "#!/sbin/openrc-run\n\
    # shellcheck shell=sh disable=SC2034\n\
    description=\"a service that never finishes starting\"\n\
    depend() {\n\tafter modules\n}\n\
    start() {\n\techo \"test: hang starts and never returns\"\n\twhile :; do sleep 60; done\n}\n";

/// The test's own hand on the machine: once ramnas-ready has finished (started or failed), it runs
/// /etc/test-then, whatever that test put there.
const THEN: &str = r#"#!/sbin/openrc-run
# shellcheck shell=sh disable=SC2034,SC2016
description="runs /etc/test-then once ramnas-ready has finished"
start() {
	setsid sh -c 'while [ ! -e /run/openrc/started/ramnas-ready ] && [ ! -e /run/openrc/failed/ramnas-ready ]; do
		sleep 1
	done
	sleep 1
	. /etc/test-then' </dev/null >/dev/console 2>&1 &
}
"#;

/// Every healthy boot reboots once per stick (from a non-login shell with an empty environment, as a cron
/// job or an ssh command would), then powers off.
const REBOOT_ONCE_THEN_POWEROFF: &str = r#"
if [ -e /run/openrc/started/ramnas-ready ]; then
	if [ -e /media/boot/persist/test-rebooted ]; then
		echo "test: /sbin/poweroff"
		/sbin/poweroff
	else
		: >/media/boot/persist/test-rebooted
		sync
		echo "test: env -i /sbin/reboot"
		env -i /sbin/reboot
	fi
fi
"#;

/// Every healthy boot powers off.
const POWEROFF: &str = r#"
if [ -e /run/openrc/started/ramnas-ready ]; then
	echo "test: /sbin/poweroff"
	/sbin/poweroff
fi
"#;

/// The openrc fixture tree (the packages), written once per run of the tests and shared by every [`Nas`]:
/// the stand-in alpine-make-rootfs only copies from it, and writing it takes most of a minute.
fn packages() -> &'static Path {
    static TREE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let tree = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openrc-packages");
        let _ = fs::remove_dir_all(&tree);
        Fixture::openrc("openrc").write(&tree).unwrap();
        tree
    })
}

/// A test's world: the openrc fixture tree (the packages) and the stand-in tool, and a home whose
/// `.ssh/id_ed25519.pub` the builds make root's key (`ssh` logs in with it).
pub(crate) struct Nas {
    dir: tempfile::TempDir,
    tree: PathBuf,
    stand_ins: StandIns,
}

impl Nas {
    pub(crate) fn new() -> Nas {
        let dir = common::tempdir();
        fixture::ssh_keygen(&dir.path().join(".ssh/id_ed25519")).unwrap();
        let stand_ins = StandIns::write(dir.path()).unwrap();
        Nas {
            dir,
            tree: packages().to_path_buf(),
            stand_ins,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of the example `system/` named NAME, without its tests/, with the test's services, `then` as /etc/test-then, and
    /// `setup` appended to setup.sh.
    pub(crate) fn system(&self, name: &str, then: &str, setup: &str) -> PathBuf {
        let system = self.path().join(format!("system-{name}"));
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system");
        common::run(
            "cp",
            &["-a", example.to_str().unwrap(), system.to_str().unwrap()],
        );
        // The example's own tests would gate every deploy of it (`vm.rs` runs them).
        fs::remove_dir_all(system.join("tests")).unwrap();
        let init_d = system.join("root/etc/init.d");
        for name in EARLY_AND_LATE {
            write_script(&init_d.join(name), &service(name));
        }
        write_script(&init_d.join("broken"), BROKEN);
        write_script(&init_d.join("hang"), HANG);
        write_script(&init_d.join("test-then"), THEN);
        fs::write(system.join("root/etc/test-then"), then).unwrap();
        // Short waits: the test need not sit out the NAS's defaults.
        let conf = system.join("root/etc/conf.d/ramnas-ready");
        let text = fs::read_to_string(&conf).unwrap();
        fs::write(
            &conf,
            text.replace("reboot_delay=\"10\"", "reboot_delay=\"2\"")
                .replace("health_wait=\"60\"", "health_wait=\"20\""),
        )
        .unwrap();
        let mut script = fs::read_to_string(system.join("setup.sh")).unwrap();
        script.push_str("\n# The test's services.\n");
        for name in EARLY_AND_LATE.iter().chain(&["test-then"]) {
            script.push_str(&format!("rc-update add {name} default\n"));
        }
        script.push_str(setup);
        fs::write(system.join("setup.sh"), script).unwrap();
        system
    }

    /// `cargo xtask build --system SYSTEM --out OUT` through the stand-in tool; returns OUT.
    pub(crate) fn build(&self, system: &Path, out: &str) -> PathBuf {
        self.build_from(system, out, self.path())
    }

    /// The same as built by a user whose HOME is `home` (root's keys are `home/.ssh/*.pub`).
    fn build_from(&self, system: &Path, out: &str, home: &Path) -> PathBuf {
        let out = self.path().join(out);
        let built = common::system_build_command(self.path(), system, &out)
            .envs(self.stand_ins.env(&self.tree))
            .env("HOME", home)
            .env_remove("SUDO_USER")
            .output()
            .unwrap();
        common::ok(&built);
        out
    }

    /// `cargo xtask ARGS…` in the test's directory; its output, which must say it succeeded.
    pub(crate) fn xtask(&self, args: &[&str]) -> String {
        common::ok(&common::xtask(self.path(), args))
    }
}

fn write_script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A stick with build `a` committed in slot a and build `b` deployed into slot b on trial.
fn stick_with_trial(nas: &Nas, a: &Path, b: &Path) -> PathBuf {
    assert_ne!(
        build_id(a),
        build_id(b),
        "a trial needs another build than the committed one"
    );
    let stick = common::make_stick(nas.path(), a);
    nas.xtask(&[
        "deploy",
        stick.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]);
    stick
}

pub(crate) fn build_id(out: &Path) -> String {
    xtask::build::manifest::Manifest::load(&out.join("manifest.json"))
        .unwrap()
        .build_id
}

/// The NAS on a network (qemu's user network: its DHCP gives the address), booting `stick` under SeaBIOS:
/// a trial is healthy only when reachable.
pub(crate) fn bios_nas(stick: &Path) -> Machine {
    let mut m = common::bios_machine(stick);
    m.net = true;
    m
}

/// [`bios_nas`] under OVMF, its NVRAM in `dir`.
fn uefi_nas(stick: &Path, dir: &Path) -> Machine {
    let mut m = common::uefi_machine(stick, dir);
    m.net = true;
    m
}

/// Waits for the console line matching `pattern`.
pub(crate) fn expect(vm: &mut Running, pattern: &str) -> String {
    vm.expect(pattern, common::BOOT_TIMEOUT)
        .unwrap_or_else(|e| {
            let _ = fs::write("/tmp/last-openrc.log", vm.output().join("\n"));
            panic!("{e:#}")
        })
}

pub(crate) fn position(lines: &[String], what: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in {lines:#?}"))
}

/// Builds `a` (healthy) and `b` (`setup` appended to setup.sh), deploys b on trial to a stick, writes
/// `stick_files` (path on the stick, contents) onto it as a user would, and boots it in `machine(stick)`, which may reboot: b comes up unhealthy naming `failed`, says it reboots, and slot a comes
/// up ready. Returns the running machine, the stick and b's build id.
fn unhealthy_trial_goes_back(
    nas: &Nas,
    setup: &str,
    failed: &str,
    machine: impl Fn(&Path) -> Machine,
    stick_files: &[(&str, &str)],
) -> (Running, PathBuf, String) {
    let a = nas.build(&nas.system("a", POWEROFF, ""), "out-a");
    let b = nas.build(&nas.system("b", POWEROFF, setup), "out-b");
    let (id_a, id_b) = (build_id(&a), build_id(&b));
    let stick = stick_with_trial(nas, &a, &b);
    let mut opened = xtask::stick::open(stick.to_str().unwrap()).unwrap();
    for (path, contents) in stick_files {
        opened
            .create_dir_all(Path::new(path).parent().unwrap().to_str().unwrap())
            .unwrap();
        opened.replace(path, contents.as_bytes()).unwrap();
    }
    opened.close().unwrap();
    let mut m = machine(&stick);
    m.reboot = true;
    let mut vm = common::start(&m, nas.path(), "trial");
    expect(
        &mut vm,
        &format!("^ramnas: unhealthy slot=b build={id_b} failed={failed}$"),
    );
    expect(&mut vm, "rebooting into the committed slot in 2s");
    expect(&mut vm, &format!("^ramnas: ready slot=a build={id_a}$"));
    (vm, stick, id_b)
}

/// A healthy trial of slot b under SeaBIOS, with services before and after ramnas-ready in the default
/// runlevel and none providing `dev` (no udev): every service has started before the health check, the
/// stick is mounted, the trial commits itself, `env -i /sbin/reboot` reboots into slot b as the default,
/// and `/sbin/poweroff` powers the machine off.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_healthy_trial_under_openrc_commits_and_reboot_and_poweroff_work() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", REBOOT_ONCE_THEN_POWEROFF, ""), "out-a");
    // As if eudev and udev-init-scripts were not listed: nothing provides `dev`.
    let without_udev =
        "for s in udev-trigger udev-settle udev; do rc-update del \"$s\" sysinit; done\n\
                        rc-update del udev-postmount default\n\
                        cd /etc/init.d && rm udev udev-trigger udev-settle udev-postmount\n";
    let b = nas.build(
        &nas.system("b", REBOOT_ONCE_THEN_POWEROFF, without_udev),
        "out-b",
    );
    let id = build_id(&b);
    let stick = stick_with_trial(&nas, &a, &b);

    let mut m = bios_nas(&stick);
    m.reboot = true;
    let mut vm = common::start(&m, nas.path(), "trial");
    expect(&mut vm, &format!("^ramnas: ready slot=b build={id}$"));
    expect(&mut vm, "^test: env -i /sbin/reboot$");
    // The second boot: slot b again, now the default and no trial.
    expect(&mut vm, &format!("^ramnas: ready slot=b build={id}$"));
    expect(&mut vm, "^test: /sbin/poweroff$");
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
    let lines = vm.output();

    let ready = position(&lines, "ramnas: ready slot=b");
    // No udev: nothing provides `dev`, and the stick is mounted all the same; the host keys are made and kept.
    assert!(
        position(&lines, "ramnas-persist: created ") < ready,
        "{lines:#?}"
    );
    for late in ["test: aaa-early started", "test: zzz-late started"] {
        assert!(position(&lines, late) < ready, "{late}: {lines:#?}");
    }
    assert!(
        position(&lines, "ramnas-persist: mounted") < ready,
        "{lines:#?}"
    );
    assert!(
        position(&lines, "ramnas-slot: slot b is now the default") < ready,
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("unhealthy")), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("System halted")),
        "{lines:#?}"
    );
    let status = nas.xtask(&["status", stick.to_str().unwrap()]);
    assert!(status.contains("default: b\n"), "{status}");
    assert!(status.contains("trial: none armed\n"), "{status}");
}

/// A trial whose boot-runlevel service fails is not committed: it says which, leaves its record on the stick,
/// alerts by mail and by HTTP POST (receivers on the host, reached as 10.0.2.2; the POST's token from the
/// stick's persist/notify/), and reboots by itself into the committed slot a; `status` shows the record.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn an_unhealthy_trial_under_openrc_alerts_and_goes_back_by_itself() {
    let nas = Nas::new();
    let (mail, post) = (notify::smtp(), notify::http());
    let setup = format!(
        "rc-update add broken boot\ncat >>/etc/conf.d/ramnas-notify <<'EOF'\n{}EOF\n",
        notify::settings("10.0.2.2", mail.port, post.port)
    );
    let token = (
        "persist/notify/http-headers",
        "Authorization: Bearer tk_nas\n",
    );
    let (mut vm, stick, id_b) =
        unhealthy_trial_goes_back(&nas, &setup, "broken", bios_nas, &[token]);
    let subject = format!("ramnas ramnas: trial of build {id_b} failed (broken)");
    let said = format!("The trial boot of build {id_b} in slot b on ramnas failed: broken.");
    let mail = mail
        .next(Duration::from_secs(10))
        .expect("the failed trial's mail reaches the relay");
    assert_eq!(mail.header("Subject"), Some(subject.as_str()), "{mail:?}");
    assert!(mail.body().starts_with(&said), "{mail:?}");
    let request = post
        .next(Duration::from_secs(10))
        .expect("the failed trial's POST reaches the listener");
    assert_eq!(request.headers["title"], subject, "{request:?}");
    assert_eq!(request.headers["authorization"], "Bearer tk_nas");
    assert!(request.body.starts_with(&said), "{request:?}");
    expect(&mut vm, "^test: /sbin/poweroff$");
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
    let lines = vm.output();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("slot b is now the default")),
        "{lines:#?}"
    );

    let status = nas.xtask(&["status", stick.to_str().unwrap()]);
    assert!(status.contains("default: a\n"), "{status}");
    assert!(status.contains("trial: none armed\n"), "{status}");
    assert!(
        status.contains(&format!("last trial: slot b, build {id_b}, failed: broken")),
        "{status}"
    );
    assert!(status.contains("broken fails on purpose"), "{status}");
}

/// A trial committed by the NAS under UEFI leaves no BIOS trial armed: `status` says slot b is the default
/// with nothing armed, and `rollback` goes back to slot a.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_trial_committed_under_uefi_leaves_nothing_armed() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", POWEROFF, ""), "out-a");
    // Another build (the committed one again would change nothing).
    let b = nas.build(&nas.system("b", POWEROFF, "touch /etc/build-b\n"), "out-b");
    let id = build_id(&b);
    let stick = stick_with_trial(&nas, &a, &b);

    let m = uefi_nas(&stick, nas.path());
    let mut vm = common::start(&m, nas.path(), "uefi-trial");
    expect(&mut vm, &format!("^ramnas: ready slot=b build={id}$"));
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
    let lines = vm.output();
    assert!(
        lines
            .iter()
            .any(|l| l == "ramnas-slot: the BIOS trial boot is disarmed"),
        "{lines:#?}"
    );

    let stick = stick.to_str().unwrap();
    // The NAS cleared the boot-once itself: ldlinux.sys ends in an empty ADV, byte for byte the one
    // xtask writes (two valid copies, no record).
    let mut opened = xtask::stick::open(stick).unwrap();
    let ldlinux = opened.read(xtask::boot::syslinux::LDLINUX_SYS).unwrap();
    let empty = xtask::boot::syslinux::Adv::default().to_bytes();
    assert_eq!(&ldlinux[ldlinux.len() - empty.len()..], &empty[..]);
    opened.close().unwrap();
    let status = nas.xtask(&["status", stick]);
    assert!(status.contains("default: b\n"), "{status}");
    assert!(status.contains("trial: none armed\n"), "{status}");
    let rollback = nas.xtask(&["rollback", stick]);
    assert!(rollback.contains("slot a (build"), "{rollback}");
    let status = nas.xtask(&["status", stick]);
    assert!(status.contains("default: a\n"), "{status}");
}

/// A UEFI trial whose build cannot even mount the stick (so no UKI name is there to read) still knows it is a
/// trial, from systemd-boot's LoaderBootCountPath variable: unhealthy, it reboots into the committed slot.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn an_unhealthy_uefi_trial_without_its_stick_goes_back_by_itself() {
    let nas = Nas::new();
    let lost = "sed -i -e 's/RAMNAS_LABEL:-RAMNAS/RAMNAS_LABEL:-NOSUCHLABEL/' \
                -e 's/RAMNAS_WAIT:-10/RAMNAS_WAIT:-1/' /usr/sbin/ramnas-persist\n";
    let (mut vm, _, _) = unhealthy_trial_goes_back(
        &nas,
        lost,
        "ramnas-persist",
        |stick| uefi_nas(stick, nas.path()),
        &[],
    );
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
}

/// `cargo xtask vm --image --check`, twice: once the NAS is ready the check presses the power button, the
/// NAS shuts down (acpid, /sbin/poweroff) and unmounts the stick, so the second boot finds its FAT clean.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn vm_check_shuts_the_nas_down_and_leaves_the_stick_clean() {
    let nas = Nas::new();
    let out = nas.build(&nas.system("a", "", ""), "out");
    common::make_stick(nas.path(), &out);
    let vm_dir = nas.path().join("vm");
    let check = || {
        let ran = common::xtask_command(
            nas.path(),
            &[
                "vm",
                "--out",
                out.to_str().unwrap(),
                "--image",
                "--check",
                "--disks",
                "0",
            ],
        )
        .env("RAMNAS_VM_DIR", &vm_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
        let text = common::ok(&ran);
        assert!(text.contains("vm: the guest powered off"), "{text}");
        fs::read_to_string(vm_dir.join("last-boot.log")).unwrap()
    };
    let first = check();
    assert!(first.contains("ramnas-persist: mounted"), "{first}");
    let second = check();
    assert!(second.contains("ramnas-persist: mounted"), "{second}");
    assert!(!second.contains("repaired the FAT"), "{second}");
    assert!(!second.contains("not properly unmounted"), "{second}");
}

/// An ssh program (for `RAMNAS_SSH`) that logs in to the test's NAS with the key its builds hold.
pub(crate) fn ssh_program(nas: &Nas) -> PathBuf {
    let ssh = nas.path().join("ssh");
    fixture::write_ssh_program(&ssh, &nas.path().join(".ssh/id_ed25519")).unwrap();
    ssh
}

/// Boots `stick`, whose slot b holds `id_b` on trial, and waits for that trial to fail `failed` and slot a
/// (`id_a`) to come up after it; then for the power-off of that healthy boot.
fn trial_fails_then_a_is_ready(
    nas: &Nas,
    stick: &Path,
    name: &str,
    id_a: &str,
    id_b: &str,
    failed: &str,
) {
    let mut m = bios_nas(stick);
    m.reboot = true;
    let mut vm = common::start(&m, nas.path(), name);
    expect(
        &mut vm,
        &format!("^ramnas: unhealthy slot=b build={id_b} failed={failed}$"),
    );
    expect(&mut vm, "rebooting into the committed slot in 2s");
    expect(&mut vm, &format!("^ramnas: ready slot=a build={id_a}$"));
    expect(&mut vm, "^test: /sbin/poweroff$");
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
    let status = nas.xtask(&["status", stick.to_str().unwrap()]);
    assert!(status.contains("default: a\n"), "{status}");
    assert!(
        status.contains(&format!(
            "last trial: slot b, build {id_b}, failed: {failed}"
        )),
        "{status}"
    );
}

/// Trials that boot and start every service but could not be reached the way a deploy reaches the NAS are
/// not committed: a build without root's ssh key, then one whose kernel lost its network card's driver
/// (only lo comes up, and Alpine's `networking` counts that as started). Each goes back to slot a by itself.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_trial_that_cannot_be_reached_goes_back_by_itself() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", POWEROFF, ""), "out-a");
    let home = nas.path().join("home-without-keys");
    fs::create_dir_all(&home).unwrap();
    let keyless = nas.build_from(&nas.system("keyless", POWEROFF, ""), "out-keyless", &home);
    let no_nic = "sed -i '/virtio_net/d' /lib/modules/*/fixture.load\n";
    let nicless = nas.build(&nas.system("nicless", POWEROFF, no_nic), "out-nicless");
    let id_a = build_id(&a);

    let stick = stick_with_trial(&nas, &a, &keyless);
    trial_fails_then_a_is_ready(
        &nas,
        &stick,
        "keyless",
        &id_a,
        &build_id(&keyless),
        "ssh-keys",
    );

    nas.xtask(&[
        "deploy",
        stick.to_str().unwrap(),
        "--out",
        nicless.to_str().unwrap(),
    ]);
    trial_fails_then_a_is_ready(
        &nas,
        &stick,
        "nicless",
        &id_a,
        &build_id(&nicless),
        "network",
    );
}

/// A trial whose boot-runlevel service never finishes starting never reaches the health check: at its
/// deadline it is recorded as failed and the NAS reboots into the committed slot by itself.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_trial_that_hangs_goes_back_at_its_deadline() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", POWEROFF, ""), "out-a");
    let hang = "rc-update add hang boot\n\
                sed -i 's/^trial_deadline=.*/trial_deadline=\"60\"/' /etc/conf.d/ramnas-ready\n";
    let b = nas.build(&nas.system("b", POWEROFF, hang), "out-b");
    let (id_a, id_b) = (build_id(&a), build_id(&b));
    let stick = stick_with_trial(&nas, &a, &b);
    let mut m = bios_nas(&stick);
    m.reboot = true;
    let mut vm = common::start(&m, nas.path(), "hang");
    expect(&mut vm, "^test: hang starts and never returns$");
    expect(
        &mut vm,
        &format!("^ramnas: unhealthy slot=b build={id_b} failed=deadline "),
    );
    expect(
        &mut vm,
        "missed its deadline: rebooting into the committed slot",
    );
    expect(&mut vm, &format!("^ramnas: ready slot=a build={id_a}$"));
    expect(&mut vm, "^test: /sbin/poweroff$");
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
    let console = vm.output().join("\n");
    let status = nas.xtask(&["status", stick.to_str().unwrap()]);
    assert!(status.contains("default: a\n"), "{status}");
    // Disarmed on both boot loaders, the UEFI trial included.
    assert!(
        status.contains("trial: none armed\n"),
        "{status}\n{console}"
    );
    assert!(
        status.contains(&format!(
            "last trial: slot b, build {id_b}, failed: deadline"
        )),
        "{status}"
    );
}

/// The NAS runs build b on trial, healthy but not committed yet (commit_trial=no). Over ssh, a deploy of
/// another build would replace slot b under it: refused, nothing written. `commit` commits slot b, the
/// build that booted; then the deploy goes into slot a. A deploy of a build without root's ssh key is
/// refused over ssh (it could never be deployed to again) unless --keyless.
#[test]
#[ignore = "needs root and qemu: `cargo xtask test` runs it"]
fn a_deploy_over_ssh_never_replaces_a_running_trial() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", "", ""), "out-a");
    let no_commit = "sed -i 's/^commit_trial=.*/commit_trial=\"no\"/' /etc/conf.d/ramnas-ready\n";
    let b = nas.build(&nas.system("b", "", no_commit), "out-b");
    let b2 = nas.build(&nas.system("b2", "", "touch /etc/b2\n"), "out-b2");
    let home = nas.path().join("home-without-keys");
    fs::create_dir_all(&home).unwrap();
    let keyless = nas.build_from(&nas.system("keyless", "", ""), "out-keyless", &home);
    let (id_b, id_b2) = (build_id(&b), build_id(&b2));
    let stick = stick_with_trial(&nas, &a, &b);
    let port = xtask::dev::fixture::free_port().unwrap();
    let mut m = bios_nas(&stick);
    m.forward.push((port, 22));
    let mut vm = common::start(&m, nas.path(), "running-trial");
    expect(
        &mut vm,
        "trial of slot b healthy; not committed \\(commit_trial=no\\)",
    );
    expect(&mut vm, &format!("^ramnas: ready slot=b build={id_b}$"));

    let target = format!("ssh://root@127.0.0.1:{port}");
    let ssh = ssh_program(&nas);
    let xtask = |args: &[&str]| {
        common::xtask_command(nas.path(), args)
            .env("RAMNAS_SSH", &ssh)
            .output()
            .unwrap()
    };
    let refused = xtask(&["deploy", &target, "--out", b2.to_str().unwrap()]);
    let text = common::text(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "the NAS runs build {id_b} from slot b on trial, not committed yet"
        )),
        "{text}"
    );
    assert!(text.contains("Nothing was written"), "{text}");
    let status = common::ok(&xtask(&["status", &target]));
    assert!(
        status.contains("slot b (armed for trial, running on trial)")
            || status.contains("slot b (running on trial)"),
        "{status}"
    );
    assert!(status.contains(&format!("build   {id_b}")), "{status}");
    assert!(status.contains("  ssh     1 for root\n"), "{status}");

    let committed = common::ok(&xtask(&["commit", &target]));
    assert!(
        committed.contains(&format!("slot b (build {id_b}) is now the default")),
        "{committed}"
    );
    let keyless_refused = xtask(&["deploy", &target, "--out", keyless.to_str().unwrap()]);
    let text = common::text(&keyless_refused);
    assert!(!keyless_refused.status.success(), "{text}");
    assert!(text.contains("has no ssh key for root"), "{text}");
    let deployed = common::ok(&xtask(&["deploy", &target, "--out", b2.to_str().unwrap()]));
    assert!(
        deployed.contains(&format!("deploying build {id_b2} into slot a")),
        "{deployed}"
    );

    let off = std::process::Command::new(&ssh)
        .args(["-p", &port.to_string(), "root@127.0.0.1", "/sbin/poweroff"])
        .status()
        .unwrap();
    assert!(off.success());
    vm.wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");
}
