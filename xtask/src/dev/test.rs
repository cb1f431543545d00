//! `cargo xtask test`: install the host packages the tests need, then `cargo test --workspace`, the ignored
//! tests (those that need root and qemu) included.

use std::path::Path;

use anyhow::Context;
use xshell::{cmd, Shell};

use crate::host;

pub fn run(flags: crate::flags::TestFlags) -> anyhow::Result<()> {
    if !flags.no_install {
        install_missing()?;
    }
    let sh = Shell::new()?;
    sh.change_dir(workspace_root());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let args = with_ignored(&flags.cargo_args);
    cmd!(sh, "{cargo} test --workspace {args...}")
        .run()
        .context("the tests failed")?;
    Ok(())
}

/// `args` for `cargo test` with the test binary's `--include-ignored` added after their `--` (or a new one).
fn with_ignored(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    match args.iter().position(|a| a == "--") {
        Some(at) => args.insert(at + 1, "--include-ignored".to_string()),
        None => args.extend(["--".to_string(), "--include-ignored".to_string()]),
    }
    args
}

fn install_missing() -> anyhow::Result<()> {
    let packages = host::TEST_PACKAGES_DEBIAN;
    if !host::is_debian_like() {
        eprintln!(
            "ramnas: not a Debian/Ubuntu host; the tests need the equivalents of these Debian packages \
             (see CONTRIBUTING.md): {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing = host::missing_debian(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "ramnas: installing the host packages the tests need: {}",
        missing.join(" ")
    );
    host::apt_install(&missing)
}

pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ignored_tests_are_included_after_the_test_binaries_own_separator() {
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::with_ignored(&[]),
            strings(&["--", "--include-ignored"])
        );
        assert_eq!(
            super::with_ignored(&strings(&["--no-fail-fast", "--", "deploy"])),
            strings(&["--no-fail-fast", "--", "--include-ignored", "deploy"])
        );
    }
}
