//! `cargo xtask vm`: boot the build in qemu with persistent data disks.

pub fn run(_flags: crate::flags::VmFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
