//! `cargo xtask check`: lint system/ and check that the host has the tools each command needs.
//!
//! Prints every problem (system/ ones as file:line, then missing host tools with the command that installs
//! them on this distribution) and fails when there is any. The lint's warnings and the tools only the tests
//! and the bench use are listed too, but do not fail the check.

use anyhow::bail;

use crate::{
    boot::{syslinux, uefi},
    build::config::System,
    build::lint,
    build::lock::Lock,
    flags::CheckFlags,
    host::{self, qemu, Family, Found, Tool},
};

pub fn run(flags: CheckFlags) -> anyhow::Result<()> {
    let found = lint::system(&flags.system);
    for problem in &found {
        println!("{problem}");
    }
    let warnings = found.iter().filter(|p| p.warning).count();
    let mut problems: Vec<String> = found
        .iter()
        .filter(|p| !p.warning)
        .map(ToString::to_string)
        .collect();
    let lock = lock_problems(&flags.system);
    for problem in &lock {
        println!("{problem}");
    }
    problems.extend(lock);
    let (for_tests, missing): (Vec<Tool>, Vec<Tool>) =
        missing_tools().into_iter().partition(|t| t.tests_only);
    let family = Family::detect();
    report(&missing, family, "host", "to install them");
    report(
        &for_tests,
        family,
        "host (tests and bench only)",
        "to run `cargo xtask test` and `cargo xtask bench`, also install",
    );
    let total = problems.len() + missing.len();
    if total > 0 {
        bail!(
            "{total} problem(s): {} in {}, {} on this host",
            problems.len(),
            flags.system.display(),
            missing.len()
        );
    }
    let warned = match warnings {
        0 => String::new(),
        n => format!(" ({n} warning(s) above)"),
    };
    println!(
        "{}: ok{warned}; host: every tool the commands need is present",
        flags.system.display()
    );
    Ok(())
}

/// How system/packages.lock falls short of the system: each a line naming the lock. No lock is no problem
/// (the first build writes it), only said.
fn lock_problems(dir: &std::path::Path) -> Vec<String> {
    let Ok(system) = System::load(dir) else {
        return Vec::new(); // the lint has said why
    };
    let path = system.lock_path();
    match Lock::load(&path) {
        Err(err) => vec![format!("{err:#}")],
        Ok(None) => {
            println!(
                "{}: none yet; the next `cargo xtask build` writes it (commit it with the system)",
                path.display()
            );
            Vec::new()
        }
        Ok(Some(lock)) => {
            let branch = system.config.alpine.branch_dir();
            // Another branch needs everything resolved afresh; a `packages` edit only what it touches.
            let fix = if lock.branch != branch {
                "`cargo xtask build --update` resolves the packages afresh"
            } else {
                "`cargo xtask build` updates the lock (`--update` resolves everything afresh)"
            };
            lock.stale(&branch, &system.world())
                .into_iter()
                .map(|why| format!("{}: {why}: {fix}", path.display()))
                .collect()
        }
    }
}

/// One line per missing tool, then the command that installs them all.
fn report(missing: &[Tool], family: Family, prefix: &str, install: &str) {
    for tool in missing {
        println!(
            "{prefix}: {} not found (needed by {}; package {})",
            tool.program,
            tool.used_by,
            family.package(tool)
        );
    }
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|t| family.package(t)).collect();
        packages.sort();
        packages.dedup();
        println!("{prefix}: {install}: {}", family.install_command(&packages));
    }
}

/// Whether the host has `tool`, found the way the command that needs it finds it.
fn is_present(tool: &Tool) -> bool {
    match tool.found {
        Found::OnPath => host::has(tool.program),
        Found::Ovmf => qemu::ovmf().is_ok(),
        Found::SyslinuxFiles => syslinux::files_present(),
        Found::SystemdBoot => uefi::find().is_ok(),
    }
}

/// The tools of the host table that are not here, plus sudo when the build would need it.
fn missing_tools() -> Vec<Tool> {
    let mut missing: Vec<Tool> = host::TOOLS
        .iter()
        .filter(|t| !is_present(t))
        .copied()
        .collect();
    if !crate::host::is_root() && !host::has("sudo") {
        missing.push(Tool {
            program: "sudo",
            found: Found::OnPath,
            used_by: "build (alpine-make-rootfs runs as root)",
            tests_only: false,
            debian: "sudo",
            fedora: "sudo",
            alpine: "sudo",
            arch: "sudo",
        });
    }
    missing
}
