//! `cargo xtask check`: lint system/ and the host's tools.

pub fn run(_flags: crate::flags::CheckFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
