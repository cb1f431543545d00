//! ramnas's tool, `cargo xtask`. Each folder is a layer and imports only from those declared before it
//! (ARCHITECTURE.md has the map); the subcommands in `cmd` never import each other, they meet in the
//! layers below and in the files a build writes to `out/`.

/// Every flag and the manual (`--help`): data, read by any layer that takes a flag.
pub mod flags;

/// The machine we run on, its tools and devices.
pub mod host;

/// The build path, `system/` to `out/`.
pub mod build {
    pub mod compress;
    pub mod config;
    pub mod initramfs;
    pub mod keys;
    pub mod lint;
    pub mod lock;
    pub mod manifest;
    pub mod rootfs;
    pub mod tests;
}

/// The boot partition of a stick, whatever holds it.
pub mod stick;

/// What a stick's boot partition holds, and the A/B slots written once over any [`stick::Stick`].
pub mod boot {
    pub mod bootloaders;
    pub mod entry;
    pub mod slots;
    pub mod syslinux;
    pub mod uefi;
}

/// The product's subcommands, one file each. They never import each other.
pub mod cmd {
    pub mod build;
    pub mod check;
    pub mod deploy;
    pub mod flash;
    pub mod image;
    pub mod vm;
}

/// Development only: the test and bench subcommands, and the fixture system they boot.
pub mod dev {
    pub mod bench;
    pub mod fixture;
    pub mod test;
}

/// The property tests' inputs: bytes from outside, truncated, mutated and random.
#[cfg(test)]
mod fuzz;

use flags::{Cmd, Xtask};

/// Runs one `cargo xtask` invocation.
pub fn run(flags: Xtask) -> anyhow::Result<()> {
    match flags.cmd {
        Cmd::Build(f) => cmd::build::run(f),
        Cmd::Image(f) => cmd::image::run(f),
        Cmd::Vm(f) => cmd::vm::run(f),
        Cmd::Flash(f) => cmd::flash::run(f),
        Cmd::Deploy(f) => cmd::deploy::deploy(f),
        Cmd::Commit(f) => cmd::deploy::commit(f),
        Cmd::Rollback(f) => cmd::deploy::rollback(f),
        Cmd::Status(f) => cmd::deploy::status(f),
        Cmd::Check(f) => cmd::check::run(f),
        Cmd::Bench(f) => dev::bench::run(f),
        Cmd::Test(f) => dev::test::run(f),
    }
}
