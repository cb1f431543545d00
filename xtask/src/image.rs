//! `cargo xtask image`: OUT/ → a bootable stick image with slots a and b.

pub fn run(_flags: crate::flags::ImageFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
