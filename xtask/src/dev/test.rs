//! `cargo xtask test`: install the host packages the tests need, then `cargo test --workspace`.

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
    let args = &flags.cargo_args;
    cmd!(sh, "{cargo} test --workspace {args...}")
        .run()
        .context("the tests failed")?;
    Ok(())
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

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}
