//! The NAS's storage, in the world of [`openrc`]: real OpenZFS (Debian's 2.3, its module built by dkms for the
//! fixture's kernel) run by its own init scripts as Alpine's zfs-openrc installs them, real udev naming the
//! data disks, which are attached as `cargo xtask vm` attaches them, and the example system's settings. The
//! pool is made as README says, once, over ssh.

use crate::{
    common, notify,
    openrc::{self, Nas},
};

use std::{path::PathBuf, process::Command, time::Duration};

use xtask::{
    dev::fixture::CREATE_POOL,
    host::qemu::{self, Drive, Machine, Running},
};

/// The NAS booted in qemu with ssh forwarded to 127.0.0.1:`port`.
pub(crate) struct Booted {
    pub(crate) vm: Running,
    pub(crate) port: u16,
    ssh: PathBuf,
    /// Its other forwarded ports: (host port, guest port).
    forward: Vec<(u16, u16)>,
}

impl Booted {
    pub(crate) fn start(nas: &Nas, stick: &std::path::Path, disks: &[Drive], name: &str) -> Booted {
        Booted::serving(nas, stick, disks, name, &[])
    }

    /// [`Booted::start`] with the guest's `ports` forwarded to free ports of the host too ([`Booted::port_of`]).
    pub(crate) fn serving(
        nas: &Nas,
        stick: &std::path::Path,
        disks: &[Drive],
        name: &str,
        ports: &[u16],
    ) -> Booted {
        let port = xtask::dev::fixture::free_port().unwrap();
        let mut m: Machine = openrc::bios_nas(stick);
        m.drives.extend(disks.iter().cloned());
        m.forward.push((port, 22));
        for guest in ports {
            m.forward
                .push((xtask::dev::fixture::free_port().unwrap(), *guest));
        }
        m.reboot = true;
        Booted {
            vm: common::start(&m, nas.path(), name),
            port,
            ssh: openrc::ssh_program(nas),
            forward: m.forward[1..].to_vec(),
        }
    }

    /// The host port forwarded to the guest's `guest` port.
    pub(crate) fn port_of(&self, guest: u16) -> u16 {
        self.forward
            .iter()
            .find(|(_, g)| *g == guest)
            .unwrap_or_else(|| panic!("port {guest} is not forwarded"))
            .0
    }

    pub(crate) fn target(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// `script` run by root's shell on the NAS, succeeding or not.
    pub(crate) fn try_sh(&self, script: &str) -> std::process::Output {
        Command::new(&self.ssh)
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", script])
            .output()
            .unwrap()
    }

    /// `script` run by root's shell on the NAS; its output, which must say it succeeded.
    pub(crate) fn sh(&self, script: &str) -> String {
        let out = self.try_sh(script);
        let text = common::text(&out);
        if !out.status.success() {
            let _ = std::fs::write("/tmp/last-storage.log", self.vm.output().join("\n"));
            panic!("on the NAS: {script}\n{text}\n(the console: /tmp/last-storage.log)");
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cargo xtask ARGS…` against this NAS over ssh; its output, which must say it succeeded.
    pub(crate) fn xtask(&self, nas: &Nas, args: &[&str]) -> String {
        common::ok(
            &common::xtask_command(nas.path(), args)
                .env("RAMNAS_SSH", &self.ssh)
                .output()
                .unwrap(),
        )
    }

    pub(crate) fn expect(&mut self, pattern: &str) -> String {
        openrc::expect(&mut self.vm, pattern)
    }

    /// Reboots the NAS (`/sbin/reboot` over ssh) and waits for the ready line `ready` of the next boot.
    pub(crate) fn reboot(&mut self, ready: &str) {
        self.sh("/sbin/reboot");
        self.expect(ready);
    }

    /// `cargo xtask deploy` of the build in `out` to this NAS over ssh, then [`Booted::reboot`] into it.
    pub(crate) fn deploy(&mut self, nas: &Nas, out: &std::path::Path, ready: &str) {
        self.xtask(
            nas,
            &["deploy", &self.target(), "--out", out.to_str().unwrap()],
        );
        self.reboot(ready);
    }
}

/// The pool is made once by id; every later boot imports it with no zpool.cache (none survives a boot) and
/// mounts it, and a file on it outlives a reboot, a deploy whose trial commits itself and a rollback. The
/// hourly snapshot job prunes to what it keeps, and a deleted file comes back from its snapshot. The
/// healthy boots record the pool on the stick, and `status` shows it. And a dead stick costs nothing: a new
/// one flashed from the same build takes /persist from the pool (the same host key; a deploy that knows only
/// the old key goes through).
#[test]
#[ignore = "needs root, qemu and OpenZFS: `cargo xtask test` runs it"]
fn a_pool_made_by_id_is_imported_at_every_boot_and_outlives_deploys_and_rollbacks() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", "", ""), "out-a");
    let b = nas.build(&nas.system("b", "", "touch /etc/b\n"), "out-b");
    let (id_a, id_b) = (openrc::build_id(&a), openrc::build_id(&b));
    let stick = common::make_stick(nas.path(), &a);
    let disks = qemu::data_disks(&nas.path().join("disks"), 2, "1G", false).unwrap();
    let ready_a = format!("^ramnas: ready slot=a build={id_a}$");
    let ready_b = format!("^ramnas: ready slot=b build={id_b}$");

    let mut nas_vm = Booted::start(&nas, &stick, &disks, "pool");
    nas_vm.expect(&ready_a);
    nas_vm.sh(CREATE_POOL);
    nas_vm.sh("echo kept >/tank/share/file && sync");
    // Snapshots are the periodic job's own: two hourly runs, keeping one, leave one; a deleted file comes back
    // from it.
    nas_vm.sh(
        "echo 'keep_hourly=\"1\"' >>/etc/conf.d/ramnas-snapshot && /etc/periodic/hourly/zfs-snapshot && \
         sleep 1 && /etc/periodic/hourly/zfs-snapshot",
    );
    let snapshots = nas_vm.sh("zfs list -H -t snapshot -o name -d 1 tank/share");
    assert_eq!(snapshots.lines().count(), 1, "{snapshots}");
    assert!(snapshots.starts_with("tank/share@hourly-"), "{snapshots}");
    nas_vm.sh("rm /tank/share/file");
    assert_eq!(
        nas_vm.sh("cat /tank/share/.zfs/snapshot/hourly-*/file"),
        "kept\n"
    );
    nas_vm.sh("cp /tank/share/.zfs/snapshot/hourly-*/file /tank/share/file && sync");

    nas_vm.reboot(&ready_a);
    let imported = |vm: &Booted| {
        assert_eq!(vm.sh("cat /tank/share/file"), "kept\n");
        assert_eq!(vm.sh("zpool list -H -o name,health"), "tank\tONLINE\n");
        // Imported by id (the build carries no zpool.cache: zfs-import scanned /dev/disk/by-id).
        let paths = vm.sh("zpool status -P tank");
        for disk in ["disk0", "disk1"] {
            assert!(
                paths.contains(&format!("/dev/disk/by-id/virtio-ramnas-{disk}")),
                "{paths}"
            );
        }
    };
    imported(&nas_vm);
    let host_key = nas_vm.sh("cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_eq!(nas_vm.sh("cat /media/boot/persist/pools"), "tank ONLINE\n");
    let status = nas_vm.xtask(&nas, &["status", &nas_vm.target()]);
    assert!(
        status.contains("pools: tank ONLINE (at the last healthy boot)"),
        "{status}"
    );

    nas_vm.deploy(&nas, &b, &ready_b);
    let lines = nas_vm.vm.output();
    let ready = lines.len()
        - 1
        - lines
            .iter()
            .rev()
            .position(|l| l.contains("ramnas: ready"))
            .unwrap();
    assert!(
        openrc::position(&lines, "ramnas-slot: slot b is now the default") < ready,
        "the trial commits itself: {lines:#?}"
    );
    imported(&nas_vm);

    nas_vm.xtask(&nas, &["rollback", &nas_vm.target()]);
    nas_vm.reboot(&ready_a);
    imported(&nas_vm);
    nas_vm.sh("/sbin/poweroff");
    nas_vm
        .vm
        .wait_exit(Duration::from_secs(120))
        .expect("/sbin/poweroff powers the machine off");

    // The stick dies. A new one from the same build, with the same disks: the NAS takes /persist from the
    // pool, so it has the same host key, and a deploy over ssh that knows only the old key goes through.
    let new_stick = nas.path().join("new-stick.img");
    nas.xtask(&[
        "image",
        "--out",
        a.to_str().unwrap(),
        "--size",
        "192M",
        "--output",
        new_stick.to_str().unwrap(),
    ]);
    let mut fresh = Booted::start(&nas, &new_stick, &disks, "new-stick");
    fresh.expect("^ramnas-persist: a new stick: took /persist from the pool");
    fresh.expect(&ready_a);
    assert_eq!(fresh.sh("cat /etc/ssh/ssh_host_ed25519_key.pub"), host_key);
    let known_hosts = nas.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {host_key}", fresh.port),
    )
    .unwrap();
    let strict = nas.path().join("ssh-strict");
    std::fs::write(
        &strict,
        format!(
            "#!/bin/sh\nexec ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile={} -o LogLevel=ERROR \"$@\"\n",
            nas.path().join(".ssh/id_ed25519").display(),
            known_hosts.display()
        ),
    )
    .unwrap();
    common::run("chmod", &["755", strict.to_str().unwrap()]);
    let deployed = common::xtask_command(
        nas.path(),
        &["deploy", &fresh.target(), "--out", b.to_str().unwrap()],
    )
    .env("RAMNAS_SSH", &strict)
    .output()
    .unwrap();
    let text = common::ok(&deployed);
    assert!(
        text.contains(&format!("deploying build {id_b} into slot b")),
        "{text}"
    );
}

/// Health knows the pools, and ZFS's events reach a person. After a healthy boot with the pool (recorded on
/// the stick), the monthly scrub runs and zed's report of it arrives at an HTTP receiver on the host (the
/// notify channel, through qemu's user network); a disk pulled out of the running mirror arrives the same
/// way, as it happens, and by mail too (an SMTP receiver on the host, the other channel), and so does the daily check's word that the hourly snapshots stopped. A trial that sees no disks (as a kernel that lost the controller's driver would) is
/// unhealthy, names the pool, alerts, and goes back by itself; the committed slot, booted with one disk of
/// the mirror, stays up with the pool DEGRADED, says so on the console and to the receiver, and `status`
/// shows it.
#[test]
#[ignore = "needs root, qemu and OpenZFS: `cargo xtask test` runs it"]
fn zfs_events_alert_a_trial_without_the_pool_goes_back_and_a_degraded_pool_stays_up() {
    let nas = Nas::new();
    let (mail, post) = (notify::smtp(), notify::http());
    let alerts = format!(
        "cat >>/etc/conf.d/ramnas-notify <<'EOF'\n{}EOF\n",
        notify::settings("10.0.2.2", mail.port, post.port)
    );
    let a = nas.build(&nas.system("a", "", &alerts), "out-a");
    let b = nas.build(
        &nas.system("b", "", &format!("{alerts}touch /etc/b\n")),
        "out-b",
    );
    // The next alert whose title has `what`, within a minute.
    let alert = |what: &str| {
        post.next_where(Duration::from_secs(60), |r| {
            r.headers["title"].contains(what)
        })
        .unwrap_or_else(|| panic!("no alert titled {what:?} reached the receiver"))
    };
    let (id_a, id_b) = (openrc::build_id(&a), openrc::build_id(&b));
    let stick = common::make_stick(nas.path(), &a);
    let disks = qemu::data_disks(&nas.path().join("disks"), 2, "1G", false).unwrap();
    let ready_a = format!("^ramnas: ready slot=a build={id_a}$");

    let mut nas_vm = Booted::start(&nas, &stick, &disks, "pool");
    nas_vm.expect(&ready_a);
    nas_vm.sh(CREATE_POOL);
    nas_vm.reboot(&ready_a);
    assert_eq!(nas_vm.sh("cat /media/boot/persist/pools"), "tank ONLINE\n");
    nas_vm.sh("/etc/periodic/monthly/zfs-scrub");
    let scrub = alert("ZFS scrub_finish event for tank");
    // No hourly snapshot yet, and a stale limit of 0 hours: the daily check says so.
    nas_vm.sh("echo 'stale_hours=\"0\"' >>/etc/conf.d/ramnas-snapshot && /etc/periodic/daily/zfs-snapshot-check");
    alert("snapshots: tank is stale");
    assert!(scrub.body.contains("scrub repaired 0B"), "{scrub:?}");
    // The drives: the stick, then the data disks.
    nas_vm.vm.unplug(2).unwrap();
    let fault = alert("ZFS device fault for pool tank");
    assert!(
        fault.body.contains("REMOVED") || fault.body.contains("UNAVAIL"),
        "{fault:?}"
    );
    // The same alert by mail: the subject names the pool, and so does the body, with the disk's state.
    let title = fault.headers["title"].as_str();
    let fault_mail = mail
        .next_where(Duration::from_secs(60), |m| {
            m.header("Subject") == Some(title)
        })
        .unwrap_or_else(|| panic!("no mail with the subject {title:?} reached the relay"));
    let body = fault_mail.body();
    assert!(
        body.contains("pool: tank") && (body.contains("REMOVED") || body.contains("UNAVAIL")),
        "{fault_mail:?}"
    );
    nas_vm.sh("/sbin/poweroff");
    nas_vm.vm.wait_exit(Duration::from_secs(120)).unwrap();

    nas.xtask(&[
        "deploy",
        stick.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]);
    let mut bare = Booted::start(&nas, &stick, &[], "no-disks");
    bare.expect("^ramnas: pool tank is not imported");
    bare.expect(&format!(
        "^ramnas: unhealthy slot=b build={id_b} failed=pool:tank$"
    ));
    bare.expect("rebooting into the committed slot");
    alert(&format!("trial of build {id_b} failed (pool:tank)"));
    // Slot a, committed, has no disks either: unhealthy, and it stays up (no reboot loop).
    bare.expect(&format!(
        "^ramnas: unhealthy slot=a build={id_a} failed=pool:tank$"
    ));
    let status = bare.xtask(&nas, &["status", &bare.target()]);
    assert!(status.contains("default: a\n"), "{status}");
    assert!(status.contains("failed=pool:tank"), "{status}");
    drop(bare);

    let mut degraded = Booted::start(&nas, &stick, &disks[..1], "degraded");
    degraded.expect("^ramnas: pool tank is DEGRADED");
    degraded.expect(&ready_a);
    alert("pool tank DEGRADED");
    let status = degraded.xtask(&nas, &["status", &degraded.target()]);
    assert!(
        status.contains("pools: tank DEGRADED (at the last healthy boot)"),
        "{status}"
    );
    assert_eq!(degraded.sh("zpool list -H -o health tank"), "DEGRADED\n");
}
