//! `cargo xtask deploy|commit|rollback|status`: A/B slots on a stick, whatever the target.

pub fn deploy(_flags: crate::flags::DeployFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub fn commit(_flags: crate::flags::TargetFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub fn rollback(_flags: crate::flags::TargetFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub fn status(_flags: crate::flags::TargetFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
