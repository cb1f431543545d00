//! `cargo xtask test`: install the host packages the tests need, then `cargo test --workspace`.

pub fn run(_flags: crate::flags::TestFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
