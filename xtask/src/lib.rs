//! ramnas's tool: one module per subcommand on top, shared primitives below them.
//!
//! Subcommands (`build`, `image`, `vm`, `flash`, `deploy`, `check`, `bench`, `test`) never import each
//! other; they meet only in the primitives and in the files a build writes to `out/`.

pub mod flags;

// Subcommands.
pub mod bench;
pub mod build;
pub mod check;
pub mod deploy;
pub mod flash;
pub mod image;
pub mod test;
pub mod vm;

// Primitives.
pub mod blockdev;
pub mod boot_entry;
pub mod bootloaders;
pub mod compress;
pub mod config;
pub mod fixture;
pub mod host;
pub mod initramfs;
pub mod keys;
pub mod lint;
pub mod lock;
pub mod manifest;
pub mod mbr;
pub mod progress;
pub mod qemu;
pub mod rootfs;
pub mod signals;
pub mod slots;
pub mod ssh;
pub mod stick;
pub mod syslinux;
pub mod uefi;

use flags::{Cmd, Xtask};

/// Runs one `cargo xtask` invocation.
pub fn run(flags: Xtask) -> anyhow::Result<()> {
    match flags.cmd {
        Cmd::Build(f) => build::run(f),
        Cmd::Image(f) => image::run(f),
        Cmd::Vm(f) => vm::run(f),
        Cmd::Flash(f) => flash::run(f),
        Cmd::Deploy(f) => deploy::deploy(f),
        Cmd::Commit(f) => deploy::commit(f),
        Cmd::Rollback(f) => deploy::rollback(f),
        Cmd::Status(f) => deploy::status(f),
        Cmd::Check(f) => check::run(f),
        Cmd::Bench(f) => bench::run(f),
        Cmd::Test(f) => test::run(f),
    }
}
