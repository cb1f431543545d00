//! `cargo xtask build`: system/ → OUT/{vmlinuz,initramfs,ucode.img,cmdline,manifest.json}.

pub fn run(_flags: crate::flags::BuildFlags) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
