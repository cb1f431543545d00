//! One slot as a boot loader boots it: kernel, initrds in order, command line, menu title.
//!
//! syslinux (`syslinux::config`) and systemd-boot (`uefi::entry`) both render a [`BootEntry`], which
//! `slots::Filled::boot_entry` makes from where the slot's files are: both boot loaders boot the same files.

/// What a boot loader needs to boot one slot. Paths are absolute on the stick's FAT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The slot's label, `a` or `b`: the boot label, appended to the command line as `ramnas.slot=<label>`.
    pub label: String,
    /// Shown in the menu next to the label.
    pub title: String,
    /// The kernel (an EFI stub kernel: systemd-boot starts it as an EFI program).
    pub kernel: String,
    /// Loaded one after another into one initramfs: microcode (uncompressed) first.
    pub initrds: Vec<String>,
    /// The build's kernel command line, without `ramnas.slot=`.
    pub cmdline: String,
}

impl BootEntry {
    /// The entry of a build whose files sit in `/slots/<label>/` (`vmlinuz`, then `ucode.img` when `ucode`,
    /// and `initramfs`): the layout of earlier versions, and of the tests' hand-made sticks.
    pub fn in_slot(label: &str, title: &str, ucode: bool, cmdline: &str) -> BootEntry {
        let dir = format!("/slots/{label}");
        let mut initrds = Vec::new();
        if ucode {
            initrds.push(format!("{dir}/ucode.img"));
        }
        initrds.push(format!("{dir}/initramfs"));
        BootEntry {
            label: label.to_string(),
            title: title.to_string(),
            kernel: format!("{dir}/vmlinuz"),
            initrds,
            cmdline: cmdline.trim().to_string(),
        }
    }

    /// The command line the boot loader passes: the build's, then `ramnas.slot=<label>`.
    pub fn full_cmdline(&self) -> String {
        format!("{} ramnas.slot={}", self.cmdline, self.label)
            .trim()
            .to_string()
    }
}
