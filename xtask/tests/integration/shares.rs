//! The NAS's shares, used from the host by clients nobody here wrote: Samba's own `smbclient` and libnfs's
//! `nfs-ls`/`nfs-cat` (a userspace NFS client: no kernel mount on the host), over ports qemu forwards, to the
//! real smbd and kernel NFS server running the example system's own configuration, in the world of
//! [`storage`] (real OpenZFS, the pool made as README says). Sharing is turned on as README says: the
//! commented lines of setup.sh uncommented, and the NFS export's network named. And an encrypted dataset,
//! locked at every boot until `ramnas-unlock` is given its passphrase over ssh.

use crate::{
    common,
    openrc::{self, Nas},
    storage::Booted,
};

use std::{fs, path::Path, process::Output};

use xtask::{dev::fixture::CREATE_POOL, host::qemu};

/// The Samba password the test sets for the example's user `share`, and the passphrase of tank/private.
const PASSWORD: &str = "pw-of-share";
const PASSPHRASE: &str = "passphrase-of-private";

/// The example's NFS network, as shipped; the test names qemu's user network in its place.
const EXAMPLE_NETWORK: &str = "192.168.1.0/24";
const QEMU_NETWORK: &str = "10.0.2.0/24";

/// A copy of the example system with sharing on, as README says: setup.sh's commented sharing lines (the
/// share's owner, the two services) uncommented, and /etc/exports naming the network the clients are on.
pub(crate) fn sharing_system(nas: &Nas, name: &str, setup: &str) -> std::path::PathBuf {
    let system = nas.system(name, "", setup);
    let path = system.join("setup.sh");
    let mut text = fs::read_to_string(&path).unwrap();
    for line in [
        "#addgroup -g 1000 share",
        "#adduser ",
        "#rc-update add samba default",
        "#rc-update add nfs default",
    ] {
        let at = format!("\n{line}");
        assert!(text.contains(&at), "setup.sh has no {line:?} line");
        text = text.replace(&at, &format!("\n{}", &line[1..]));
    }
    fs::write(&path, text).unwrap();
    let exports = system.join("root/etc/exports");
    let text = fs::read_to_string(&exports).unwrap();
    assert!(text.contains(EXAMPLE_NETWORK), "{text}");
    fs::write(&exports, text.replace(EXAMPLE_NETWORK, QEMU_NETWORK)).unwrap();
    // A service that needs tank/private: in no runlevel, started by ramnas-unlock.
    let service = system.join("root/etc/init.d/needs-private");
    fs::write(&service, NEEDS_PRIVATE).unwrap();
    common::run("chmod", &["755", service.to_str().unwrap()]);
    let conf = system.join("root/etc/conf.d/ramnas-unlock");
    let text = fs::read_to_string(&conf).unwrap();
    assert!(text.contains("\nunlock_services=\"\"\n"), "{text}");
    fs::write(
        &conf,
        text.replace(
            "\nunlock_services=\"\"\n",
            "\nunlock_services=\"needs-private\"\n",
        ),
    )
    .unwrap();
    system
}

/// A service that reads the encrypted dataset and says what it read (on the terminal that started it).
const NEEDS_PRIVATE: &str = "#!/sbin/openrc-run\n\
    # shellcheck shell=sh disable=SC2034\n\
    description=\"needs tank/private\"\n\
    start() {\n\techo \"test: needs-private read $(cat /tank/private/plans.txt)\"\n}\n";

/// `smbclient //127.0.0.1/SHARE` on the forwarded port, logged in as `user` (`user%password`, or `-N` for a
/// guest), running `commands`.
fn smbclient(vm: &Booted, share: &str, user: Option<&str>, commands: &str) -> Output {
    let port = vm.port_of(445).to_string();
    let service = format!("//127.0.0.1/{share}");
    let mut args = vec![service.as_str(), "-p", &port, "-c", commands];
    match user {
        Some(user) => args.extend(["-U", user]),
        None => args.push("-N"),
    }
    std::process::Command::new("smbclient")
        .args(&args)
        .output()
        .unwrap()
}

/// libnfs's `tool` (nfs-ls, nfs-cat) on `path` of the NAS over NFSv4, on the forwarded port; `query` adds
/// URL arguments (`&uid=1000`).
fn nfs(vm: &Booted, tool: &str, path: &str, query: &str) -> Output {
    let url = format!(
        "nfs://127.0.0.1{path}?version=4&nfsport={}{query}",
        vm.port_of(2049)
    );
    std::process::Command::new(tool).arg(url).output().unwrap()
}

/// Sharing and encryption as README says, end to end. The pool is made first, with the encrypted dataset
/// `tank/private` (its passphrase typed once, and never stored); then a deploy turns sharing on, and its
/// trial, booted with `tank/private` locked, is healthy and commits itself, with smbd and the NFS server
/// running. The share's owner and Samba password are set once on the NAS. `smbclient` logs in as `share`,
/// writes a file, lists it and reads it back, and the file on the pool is `share`'s; a wrong password and a
/// guest are refused. `nfs-ls` lists the export and `nfs-cat` reads the file; root on the client is nobody
/// on the NAS (root squashed: a file only `share` may read is refused to root and read as uid 1000). While
/// locked, `[private]` is refused and `status` names tank/private; `ramnas-unlock` with a wrong passphrase
/// says so and mounts nothing, then with the right one `smbclient` reads the file in it, and a service that
/// needs it (in no runlevel, named in /etc/conf.d/ramnas-unlock) starts. After another deploy,
/// committed, tank/private is locked again, and the file and the password of `[share]` still work, since both
/// live on the pool. And the export is for the network named only: named another, the same client is refused.
#[test]
#[ignore = "needs root, qemu, OpenZFS, Samba and an NFS server module: `cargo xtask test` runs it"]
fn shares_serve_real_clients_and_an_encrypted_dataset_waits_for_its_passphrase() {
    let nas = Nas::new();
    let a = nas.build(&nas.system("a", "", ""), "out-a");
    let b = nas.build(&sharing_system(&nas, "b", ""), "out-b");
    let c = nas.build(&sharing_system(&nas, "c", "touch /etc/c\n"), "out-c");
    let ready = |out: &Path, slot: &str| {
        format!(
            "^ramnas: ready slot={slot} build={}$",
            openrc::build_id(out)
        )
    };
    let stick = common::make_stick(nas.path(), &a);
    let disks = qemu::data_disks(&nas.path().join("disks"), 2, "1G", false).unwrap();
    let mut vm = Booted::serving(&nas, &stick, &disks, "shares", &[445, 2049]);
    vm.expect(&ready(&a, "a"));
    vm.sh(CREATE_POOL);
    // README's encrypted dataset (zfs reads the passphrase from stdin when it has no terminal).
    vm.sh(&format!(
        "echo {PASSPHRASE} | zfs create -o encryption=on -o keyformat=passphrase tank/private && \
         echo secret >/tank/private/plans.txt && chown -R 1000:1000 /tank/private && sync"
    ));
    let locked = |vm: &Booted| {
        let status = vm.xtask(&nas, &["status", &vm.target()]);
        status
            .lines()
            .find(|l| l.starts_with("locked: "))
            .unwrap_or_else(|| panic!("status names no locked datasets: {status}"))
            .to_string()
    };
    let assert_locked = |vm: &Booted| {
        let line = locked(vm);
        assert!(line.starts_with("locked: tank/private "), "{line}");
    };

    vm.deploy(&nas, &b, &ready(&b, "b"));
    assert_locked(&vm);
    vm.sh(&format!(
        "chown share:share /tank/share && printf '%s\\n%s\\n' {PASSWORD} {PASSWORD} | smbpasswd -s -a share"
    ));

    // Samba: write, list, read back as `share`.
    let sent = nas.path().join("sent.txt");
    fs::write(&sent, "from the laptop\n").unwrap();
    let got = nas.path().join("got.txt");
    let user = format!("share%{PASSWORD}");
    let out = smbclient(
        &vm,
        "share",
        Some(&user),
        &format!(
            "put {} notes.txt; ls; get notes.txt {}",
            sent.display(),
            got.display()
        ),
    );
    let text = common::ok(&out);
    assert!(text.contains("notes.txt"), "{text}");
    assert_eq!(fs::read_to_string(&got).unwrap(), "from the laptop\n");
    assert_eq!(
        vm.sh("stat -c '%U:%G' /tank/share/notes.txt && cat /tank/share/notes.txt"),
        "share:share\nfrom the laptop\n"
    );
    // Refused: a wrong password, a guest.
    let wrong = smbclient(&vm, "share", Some("share%not-the-password"), "ls");
    let text = common::failed(&wrong);
    assert!(text.contains("NT_STATUS_LOGON_FAILURE"), "{text}");
    let guest = smbclient(&vm, "share", None, "ls");
    let text = common::failed(&guest);
    assert!(
        text.contains("NT_STATUS_ACCESS_DENIED") || text.contains("NT_STATUS_LOGON_FAILURE"),
        "{text}"
    );

    // NFS: list and read the export; root on the client is squashed.
    let listing = common::ok(&nfs(&vm, "nfs-ls", "/tank/share", ""));
    assert!(listing.contains("notes.txt"), "{listing}");
    // For 90 s after nfsd starts (its grace period) NFSv4 refuses to open files: the kernel's client waits
    // that out, libnfs's tools do not, so the test does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    loop {
        let read = nfs(&vm, "nfs-cat", "/tank/share/notes.txt", "");
        if read.stdout == b"from the laptop\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nfs-cat: {}",
            common::text(&read)
        );
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    vm.sh(
        "echo only share >/tank/share/private && chown share:share /tank/share/private && \
         chmod 600 /tank/share/private",
    );
    let squashed = nfs(&vm, "nfs-cat", "/tank/share/private", "");
    let text = common::text(&squashed);
    assert!(
        !text.contains("only share") && text.contains("NFS4ERR_ACCESS"),
        "root on the client is not refused a file only share may read: {text}"
    );
    let as_share = nfs(&vm, "nfs-cat", "/tank/share/private", "&uid=1000&gid=1000");
    assert_eq!(String::from_utf8_lossy(&as_share.stdout), "only share\n");

    // The encrypted dataset: refused while locked; a wrong passphrase mounts nothing; the right one opens it.
    let plans = nas.path().join("plans.txt");
    let get_plans = format!("get plans.txt {}", plans.display());
    let waiting = vm.try_sh("test -e /run/openrc/started/needs-private");
    assert_eq!(waiting.status.code(), Some(1), "needs-private waits");
    let refused = smbclient(&vm, "private", Some(&user), &get_plans);
    let text = common::failed(&refused);
    assert!(text.contains("tree connect failed"), "{text}");
    let wrong = vm.try_sh("echo not-the-passphrase | ramnas-unlock");
    let text = common::failed(&wrong);
    assert!(
        text.contains("tank/private stays locked (a wrong passphrase?)"),
        "{text}"
    );
    assert_eq!(
        vm.sh("zfs get -H -o value keystatus,mounted tank/private"),
        "unavailable\nno\n"
    );
    let text = vm.sh(&format!("echo {PASSPHRASE} | ramnas-unlock"));
    assert!(
        text.contains("tank/private is unlocked and mounted at /tank/private")
            && text.contains("test: needs-private read secret"),
        "{text}"
    );
    common::ok(&smbclient(&vm, "private", Some(&user), &get_plans));
    assert_eq!(fs::read_to_string(&plans).unwrap(), "secret\n");
    assert_eq!(locked(&vm), "locked: none");

    // Another deploy, committed: tank/private is locked again; the file and the password are the pool's.
    vm.deploy(&nas, &c, &ready(&c, "a"));
    assert_locked(&vm);
    common::failed(&smbclient(&vm, "private", Some(&user), &get_plans));
    let again = nas.path().join("again.txt");
    common::ok(&smbclient(
        &vm,
        "share",
        Some(&user),
        &format!("get notes.txt {}", again.display()),
    ));
    assert_eq!(fs::read_to_string(&again).unwrap(), "from the laptop\n");

    // Exported to the network named only: named another, this client is refused.
    vm.sh(&format!(
        "sed -i 's|{QEMU_NETWORK}|{EXAMPLE_NETWORK}|' /etc/exports && exportfs -r"
    ));
    common::failed(&nfs(&vm, "nfs-ls", "/tank/share", ""));
}
