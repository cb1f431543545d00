//! `cargo xtask bench`: measure packing, booting and flashing against the shell pipeline.

pub fn run(_flags: crate::flags::BenchFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
