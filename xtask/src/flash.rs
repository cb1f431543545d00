//! `cargo xtask flash`: write the stick image to a whole-disk device, safely and verified.

pub fn run(_flags: crate::flags::FlashFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
