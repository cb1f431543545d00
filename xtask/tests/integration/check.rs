//! `cargo xtask check` passes on the repository's system/ and catches each kind of problem in a copy of it
//! with one defect, naming the file and line.

use crate::common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use xtask::build::lint::{self, Problem};

fn example() -> PathBuf {
    fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../system")).unwrap()
}

/// A copy of system/ in a temp dir (modes kept), changed by `defect`; returns the lint's problems.
fn lint_with(defect: impl FnOnce(&Path)) -> (tempfile::TempDir, Vec<Problem>) {
    let dir = common::tempdir();
    let copy = dir.path().join("system");
    let status = Command::new("cp")
        .arg("-a")
        .arg(example())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    defect(&copy);
    let problems = lint::system(&copy);
    (dir, problems)
}

/// Asserts that exactly one problem was found, in `file` (relative to the copy) at `line`, saying `says`.
fn assert_one(problems: &[Problem], file: &str, line: Option<usize>, says: &str) {
    let listing: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{listing:#?}");
    let p = &problems[0];
    assert!(
        p.file.ends_with(file),
        "wrong file: {listing:#?}, want {file}"
    );
    assert_eq!(p.line, line, "{listing:#?}");
    assert!(p.message.contains(says), "{listing:#?}, want {says:?}");
}

fn append(path: &Path, text: &str) {
    let mut old = fs::read_to_string(path).unwrap();
    old.push_str(text);
    fs::write(path, old).unwrap();
}

fn line_count(path: &Path) -> usize {
    fs::read_to_string(path).unwrap().lines().count()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_example_system_passes() {
    let problems = lint::system(&example());
    assert!(problems.is_empty(), "{problems:#?}");
    let out = common::xtask(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["check", "--system", example().to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains(": ok"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn malformed_package_line() {
    let (dir, problems) = lint_with(|s| append(&s.join("packages"), "zfs-utils; reboot\n"));
    let n = line_count(&dir.path().join("system/packages"));
    assert_one(&problems, "packages", Some(n), "one package per line");
}

#[test]
fn duplicate_package() {
    let (dir, problems) = lint_with(|s| append(&s.join("packages"), "chrony=4.6-r0\n"));
    let n = line_count(&dir.path().join("system/packages"));
    assert_one(&problems, "packages", Some(n), "chrony is listed twice");
}

#[test]
fn kernel_flavour_not_listed() {
    let (_dir, problems) = lint_with(|s| {
        let toml = fs::read_to_string(s.join("system.toml")).unwrap();
        fs::write(
            s.join("system.toml"),
            toml.replace("flavour = \"lts\"", "flavour = \"virt\""),
        )
        .unwrap();
    });
    let listing: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{listing:#?}");
    assert!(
        problems[0].message.contains("no linux-virt"),
        "{listing:#?}"
    );
    assert!(
        problems[1].message.contains("list zfs-virt"),
        "{listing:#?}"
    );
}

/// The example without Alpine's kernel (linux-lts, zfs-lts, the firmware provider) and without ZFS.
fn without_alpines_kernel(system: &Path) {
    let text = fs::read_to_string(system.join("packages")).unwrap();
    let text = ["linux-lts\n", "zfs-lts\n", "zfs\n", "linux-firmware-none\n"]
        .iter()
        .fold(text, |t, p| t.replace(p, ""));
    fs::write(system.join("packages"), text).unwrap();
}

#[test]
fn a_kernel_from_your_own_package_or_from_root_boot() {
    // Neither: a problem naming both ways (and, for Alpine's kernel, the firmware provider it would need).
    let (_dir, problems) = lint_with(without_alpines_kernel);
    let listing: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{listing:#?}");
    assert!(
        problems[0].message.contains(
            "no linux-lts: list it (kernel.package in system.toml; by default linux-<flavour>, the \
             flavour being \"lts\"), or put the kernel at root/boot/vmlinuz-lts"
        ),
        "{listing:#?}"
    );
    assert!(
        problems[1].message.contains("no linux-firmware-* package"),
        "{listing:#?}"
    );
    // Your own package, from your own repository: no firmware provider asked for.
    let (_dir, problems) = lint_with(|s| {
        without_alpines_kernel(s);
        append(&s.join("packages"), "my-kernel\n");
        let toml = fs::read_to_string(s.join("system.toml")).unwrap();
        let toml = toml.replace(
            "flavour = \"lts\"",
            "flavour = \"lts\"\npackage = \"my-kernel\"",
        );
        fs::write(s.join("system.toml"), toml).unwrap();
    });
    assert!(problems.is_empty(), "{problems:#?}");
    // A kernel in root/boot.
    let (_dir, problems) = lint_with(|s| {
        without_alpines_kernel(s);
        fs::create_dir_all(s.join("root/boot")).unwrap();
        fs::write(s.join("root/boot/vmlinuz-lts"), "a kernel").unwrap();
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn zfs_without_its_module() {
    let (_dir, problems) = lint_with(|s| {
        let text = fs::read_to_string(s.join("packages")).unwrap();
        fs::write(s.join("packages"), text.replace("zfs-lts\n", "")).unwrap();
    });
    assert!(
        problems.len() == 1 && problems[0].message.contains("list zfs-lts"),
        "{problems:#?}"
    );
}

#[test]
fn no_firmware_provider() {
    let (_dir, problems) = lint_with(|s| {
        let text = fs::read_to_string(s.join("packages")).unwrap();
        fs::write(
            s.join("packages"),
            text.replace("linux-firmware-none\n", ""),
        )
        .unwrap();
    });
    assert_one(&problems, "packages", None, "no linux-firmware-* package");
}

#[test]
fn unknown_config_key() {
    let (_dir, problems) = lint_with(|s| append(&s.join("system.toml"), "colour = \"blue\"\n"));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].file.ends_with("system.toml"));
    assert!(problems[0].line.is_some(), "{problems:#?}");
    assert!(problems[0].message.contains("colour"), "{problems:#?}");
}

#[test]
fn setup_script_not_executable() {
    let (_dir, problems) = lint_with(|s| {
        fs::set_permissions(s.join("setup.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    });
    assert_one(&problems, "setup.sh", None, "not executable");
}

#[test]
fn setup_script_syntax_error() {
    let (dir, problems) = lint_with(|s| append(&s.join("setup.sh"), "if true; then\n"));
    let n = line_count(&dir.path().join("system/setup.sh"));
    let listing: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let sh_n = problems
        .iter()
        .find(|p| p.message.starts_with("sh -n"))
        .unwrap_or_else(|| panic!("{listing:#?}"));
    assert!(sh_n.file.ends_with("setup.sh"), "{listing:#?}");
    assert!(
        sh_n.line.is_some_and(|l| l >= n - 1),
        "{listing:#?} (file has {n} lines)"
    );
}

#[test]
fn shellcheck_finding_in_a_root_script() {
    let (_dir, problems) = lint_with(|s| {
        fs::write(
            s.join("root/usr/sbin/ramnas-extra"),
            "#!/bin/sh\nrm -rf $1/cache\n",
        )
        .unwrap();
    });
    assert_one(
        &problems,
        "root/usr/sbin/ramnas-extra",
        Some(2),
        "shellcheck",
    );
    assert!(problems[0].message.contains("SC2086"), "{problems:#?}");
}

#[test]
fn crlf_in_a_script() {
    let (_dir, problems) = lint_with(|s| {
        let path = s.join("root/usr/sbin/ramnas-slot");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace('\n', "\r\n")).unwrap();
    });
    assert_one(
        &problems,
        "root/usr/sbin/ramnas-slot",
        Some(1),
        "CRLF line endings",
    );
}

#[test]
fn private_key_under_root() {
    let (_dir, problems) = lint_with(|s| {
        fs::write(
            s.join("root/etc/ssh/ssh_host_ed25519_key"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
    });
    assert_one(
        &problems,
        "root/etc/ssh/ssh_host_ed25519_key",
        Some(1),
        "a private key",
    );
}

#[test]
fn password_hash_under_root() {
    let (_dir, problems) = lint_with(|s| {
        fs::write(
            s.join("root/etc/shadow"),
            "bin:!::0:::::\nroot:$6$5ZqH2mAl$Kx7J1oVq0mW9yE3cT8pN2rL4uB6sD1fG0hJ5kZ9xQ2wE7rT3yU8iO1pA4sD6fG8hJ0kL2zX4cV6bN8mQ1wE3r:19700:0:::::\n",
        )
        .unwrap();
    });
    assert_one(&problems, "root/etc/shadow", Some(2), "a password hash");
}

#[test]
fn committed_authorized_keys() {
    let (_dir, problems) = lint_with(|s| {
        fs::create_dir_all(s.join("root/root/.ssh")).unwrap();
        fs::write(
            s.join("root/root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7yc0rk6ZcB4sUJ0m4l2xvH3lW0a9zXf3k2QmQeZxYq me\n",
        )
        .unwrap();
    });
    assert_one(
        &problems,
        "root/root/.ssh/authorized_keys",
        None,
        "added at build time",
    );
}

/// A user made without a fixed uid in setup.sh is a warning at its file:line, saying what to add; the
/// example's own sharing lines, uncommented as the sharing example asks, fix their ids and pass clean.
#[test]
fn a_user_without_a_fixed_id_is_a_warning() {
    let (dir, problems) = lint_with(|s| append(&s.join("setup.sh"), "adduser -D bob\n"));
    let n = line_count(&dir.path().join("system/setup.sh"));
    assert_one(
        &problems,
        "setup.sh",
        Some(n),
        "`adduser` without a fixed uid",
    );
    assert!(problems[0].warning, "{problems:#?}");
    assert!(
        problems[0].message.contains("add `-u UID`"),
        "{problems:#?}"
    );

    let (_dir, problems) = lint_with(|s| append(&s.join("setup.sh"), "adduser -D -u 1001 bob\n"));
    assert!(problems.is_empty(), "{problems:#?}");

    let (_dir, problems) = lint_with(|s| {
        let text = fs::read_to_string(s.join("setup.sh")).unwrap();
        let uncommented = text
            .replace("\n#addgroup ", "\naddgroup ")
            .replace("\n#adduser ", "\nadduser ");
        assert_ne!(
            text, uncommented,
            "the example makes its sharing user in setup.sh"
        );
        fs::write(s.join("setup.sh"), uncommented).unwrap();
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `check` prints the warning with file:line and still passes, saying there was one.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_binary_warns_and_passes() {
    let (dir, _) = lint_with(|s| append(&s.join("setup.sh"), "adduser -D bob\n"));
    let system = dir.path().join("system");
    let out = common::xtask(dir.path(), &["check", "--system", system.to_str().unwrap()]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let n = line_count(&system.join("setup.sh"));
    assert!(
        text.contains(&format!(
            "{}:{n}: warning: `adduser` without a fixed uid",
            system.join("setup.sh").display()
        )),
        "{text}"
    );
    assert!(text.contains(": ok (1 warning(s) above)"), "{text}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_binary_lists_every_problem_and_fails() {
    let (dir, _) = lint_with(|s| {
        append(&s.join("packages"), "chrony\n");
        fs::set_permissions(s.join("setup.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    });
    let system = dir.path().join("system");
    let out = common::xtask(dir.path(), &["check", "--system", system.to_str().unwrap()]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    let n = line_count(&system.join("packages"));
    assert!(
        text.contains(&format!(
            "{}:{n}: chrony is listed twice",
            system.join("packages").display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}: not executable",
            system.join("setup.sh").display()
        )),
        "{text}"
    );
    assert!(text.contains("2 problem(s)"), "{text}");
}

/// With every tool the commands need on PATH but none of the test-only ones, `check` passes and still
/// lists what `cargo xtask test` would need; take one command's tool away and it fails naming it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tools_only_the_tests_use_do_not_fail_the_check() {
    let dir = common::tempdir();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let link = |program: &str| {
        let found = xtask::host::find(program).unwrap();
        std::os::unix::fs::symlink(found, bin.join(program)).unwrap();
    };
    link("sh");
    let commands = xtask::host::TOOLS
        .iter()
        .filter(|t| !t.tests_only && t.found == xtask::host::Found::OnPath);
    for tool in commands {
        link(tool.program);
    }
    let check = || {
        common::xtask_command(dir.path(), &["check", "--system"])
            .arg(example())
            .env("PATH", &bin)
            .output()
            .unwrap()
    };
    let out = check();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    // cpio and busybox live in /bin, which is not on this PATH (sbin directories are searched anyway).
    for program in ["cpio", "busybox"] {
        let line = format!("host (tests and bench only): {program} not found");
        assert!(text.contains(&line), "{text}");
    }
    assert!(
        text.contains("every tool the commands need is present"),
        "{text}"
    );

    fs::remove_file(bin.join("mcopy")).unwrap();
    let out = check();
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("host: mcopy not found (needed by image, flash; package mtools)"),
        "{text}"
    );
    assert!(text.contains("1 problem(s): 0 in"), "{text}");
}
