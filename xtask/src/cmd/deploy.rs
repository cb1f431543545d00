//! `cargo xtask deploy|commit|rollback|status`: A/B slots on a stick, whatever the target.
//!
//! Each command opens the target as a [`Stick`] and hands it to [`crate::boot::slots`], where the A/B logic and the
//! crash-safe order of writes live; here are only the words around it.

use anyhow::{bail, Result};

use crate::{
    boot::bootloaders,
    boot::slots::{self, Build, LastTrial, Running, Slot, Table},
    build::manifest::{self, Manifest},
    build::tests::{passed, Tested},
    flags::{DeployFlags, TargetFlags},
    stick::{self, for_terminal, Faulty, Stick},
};

pub fn deploy(flags: DeployFlags) -> Result<()> {
    let build = Build::open(&flags.out.out)?;
    let id = &build.manifest.build_id;
    if !passed(&flags.out.out, &build.manifest) {
        if !flags.untested {
            bail!(
                "build {id} has not passed its tests: its system has tests/, and {} records no pass of this \
                 build with them. Run them in the VM (`cargo xtask vm --test --out {}`), or deploy it untested \
                 with --untested. Nothing was written",
                flags.out.out.join(Tested::FILE_NAME).display(),
                flags.out.out.display()
            );
        }
        println!("note: deploying build {id} untested (--untested): it has not passed its system's tests");
    }
    let mut stick = Faulty::wrap(stick::open(&flags.target.target)?)?;
    if build.manifest.root_ssh_keys == Some(0)
        && stick.running_cmdline()?.is_some()
        && !flags.keyless
    {
        bail!(
            "build {} has no ssh key for root: once it runs, no deploy over ssh could reach {} again (and its \
             trial boot is unhealthy unless health_reachable=\"no\"). Put your public key in ~/.ssh or name a \
             file in system.toml's [access] authorized_keys and build again; or pass --keyless. Nothing was written",
            build.manifest.build_id,
            stick.describe()
        );
    }
    let table = Table::read(&mut *stick)?;
    let keep = slots::committed(&mut *stick, &table)?;
    let target = keep.other();
    let old = &table.slots[&keep].manifest;
    // The committed build again, with no trial armed: there is nothing to change.
    if old.build_id == build.manifest.build_id && slots::armed_trial(&table).is_none() {
        println!(
            "nothing changed: slot {keep} of {} is committed and already holds build {}; nothing written",
            stick.describe(),
            old.build_id
        );
        return stick.close();
    }
    println!(
        "deploying build {} into slot {target} of {}; slot {keep} keeps build {} (committed)",
        build.manifest.build_id,
        stick.describe(),
        old.build_id
    );
    println!("changes against slot {keep}:");
    let diff = manifest::diff(old, &build.manifest);
    if diff.kernel.is_none() {
        let kernel = build
            .manifest
            .kernel_version
            .as_deref()
            .unwrap_or("unknown");
        println!("  kernel: {kernel} (unchanged)");
    }
    for line in diff.to_string().lines() {
        println!("  {line}");
    }
    if let Some(running) = running(&mut *stick)? {
        if running.slot == Some(target) {
            if slots::running_trial(&table, &running).is_some() {
                let t = &flags.target.target;
                bail!(
                    "{}: the NAS runs build {} from slot {target} on trial, not committed yet; deploying would \
                     replace it under the running system. Commit it first (`cargo xtask commit {t}`), then \
                     deploy into slot {keep}; or reboot the NAS into the committed slot {keep} and deploy \
                     again. Nothing was written",
                    stick.describe(),
                    running.build.as_deref().unwrap_or("(unknown)")
                );
            }
            println!("note: the NAS runs slot {target} (from memory); its files on the stick are replaced");
        }
    }
    let (_, written) = slots::deploy(&mut *stick, &table, &build, flags.commit)?;
    LastTrial::forget(&mut *stick)?;
    stick.close()?;
    let size = slots::build_size(&build.manifest);
    println!(
        "wrote {:.1} MiB of the build's {:.1} MiB; the stick had the rest (files both builds share)",
        written as f64 / (1 << 20) as f64,
        size as f64 / (1 << 20) as f64
    );
    let t = &flags.target.target;
    if flags.commit {
        println!(
            "slot {target} is now the default: every boot runs build {}",
            build.manifest.build_id
        );
    } else {
        println!(
            "slot {target} is armed for one trial boot: the next boot runs build {}; when it comes up healthy \
             the NAS commits it (or run `cargo xtask commit {t}`); if it fails, the boot after returns to slot {keep}",
            build.manifest.build_id
        );
    }
    Ok(())
}

pub fn commit(flags: TargetFlags) -> Result<()> {
    let mut stick = stick::open(&flags.target)?;
    let table = Table::read(&mut *stick)?;
    let running = running(&mut *stick)?;
    let slot = slots::trial_to_commit(&mut *stick, &table, running.as_ref())?;
    slots::verify_slot(&mut *stick, slot)?;
    slots::make_default(&mut *stick, slot)?;
    stick.close()?;
    println!(
        "slot {slot} (build {}) is now the default",
        table.slots[&slot].manifest.build_id
    );
    Ok(())
}

pub fn rollback(flags: TargetFlags) -> Result<()> {
    let mut stick = stick::open(&flags.target)?;
    let table = Table::read(&mut *stick)?;
    let default = slots::committed(&mut *stick, &table)?;
    if let Some(armed) = slots::armed_trial(&table) {
        slots::make_default(&mut *stick, default)?;
        stick.close()?;
        println!("the trial boot of slot {armed} is disarmed; slot {default} stays the default");
        return Ok(());
    }
    if let Some(Running {
        slot: Some(slot),
        trial: true,
        ..
    }) = running(&mut *stick)?
    {
        if slot != default {
            bail!(
                "{}: the NAS runs a trial of slot {slot}, not committed; slot {default} stays the default: reboot the NAS to return to it",
                stick.describe()
            );
        }
    }
    let other = default.other();
    if !table.slots.contains_key(&other) {
        bail!(
            "{}: slot {other} holds no complete build; there is nothing to roll back to",
            stick.describe()
        );
    }
    slots::verify_slot(&mut *stick, other)?;
    slots::make_default(&mut *stick, other)?;
    stick.close()?;
    println!(
        "slot {other} (build {}) is the default again",
        table.slots[&other].manifest.build_id
    );
    Ok(())
}

pub fn status(flags: TargetFlags) -> Result<()> {
    let mut stick = stick::open(&flags.target)?;
    let table = Table::read(&mut *stick)?;
    let running = running(&mut *stick)?;
    println!("{}", stick.describe());
    if stick.exists(bootloaders::RECORD)? {
        let record = String::from_utf8_lossy(&stick.read(bootloaders::RECORD)?).into_owned();
        println!(
            "boot loaders: {}",
            for_terminal(&record.trim_end().replace('\n', "; "))
        );
    } else {
        println!("boot loaders: not recorded (the stick was made before ramnas recorded them)");
    }
    for slot in Slot::ALL {
        let mut marks = Vec::new();
        if table.default == Some(slot) {
            marks.push("default");
        }
        if slots::armed_trial(&table) == Some(slot) {
            marks.push("armed for trial");
        }
        if running.as_ref().and_then(|r| r.slot) == Some(slot) {
            marks.push(
                if running
                    .as_ref()
                    .is_some_and(|r| slots::running_trial(&table, r).is_some())
                {
                    "running on trial"
                } else {
                    "running"
                },
            );
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" ({})", marks.join(", "))
        };
        match table.slots.get(&slot) {
            Some(filled) => {
                println!("slot {slot}{marks}:");
                print!("{}", describe_build(&filled.manifest));
            }
            None => println!("slot {slot}{marks}: no complete build"),
        }
    }
    let show = |s: Option<Slot>| s.map_or("none".to_string(), |s| s.name().to_string());
    println!("default: {}", show(table.default));
    match (&table.boot_once, slots::armed_trial(&table)) {
        (Some(cmd), Some(slot)) if table.trial() == Some(slot) => {
            println!("trial: slot {slot} armed for the next boot ({cmd:?})")
        }
        (_, Some(slot)) => println!("trial: slot {slot} armed for the next UEFI boot"),
        (_, None) => println!("trial: none armed"),
    }
    if !table.uefi.entries.is_empty() {
        let entries: Vec<String> = table
            .uefi
            .entries
            .values()
            .map(|(name, _)| for_terminal(name))
            .collect();
        println!(
            "uefi: default {}, trial {}, next boot {} ({})",
            table.uefi.committed().unwrap_or("none"),
            table.uefi.trial().unwrap_or("none"),
            table.uefi.next_boot().unwrap_or("none"),
            entries.join(", ")
        );
    }
    if let Some(r) = &running {
        let trial = if slots::running_trial(&table, r).is_some() {
            " (trial boot)"
        } else {
            ""
        };
        println!("running: {}{trial}", show(r.slot));
    }
    if let Some(pools) = slots::recorded_pools(&mut *stick)? {
        let pools: Vec<String> = pools
            .iter()
            .map(|(name, health)| for_terminal(&format!("{name} {health}")))
            .collect();
        let pools = if pools.is_empty() {
            "none".to_string()
        } else {
            pools.join(", ")
        };
        println!("pools: {pools} (at the last healthy boot)");
    }
    if let Some(locked) = stick.locked_datasets()? {
        if locked.is_empty() {
            println!("locked: none");
        } else {
            println!(
                "locked: {} (to unlock: ssh -t root@NAS ramnas-unlock)",
                for_terminal(&locked.join(", "))
            );
        }
    }
    if let Some(record) = LastTrial::read(&mut *stick)? {
        println!("last trial: {}", for_terminal(&record.to_string()));
        for line in &record.log {
            println!("  | {}", for_terminal(line));
        }
    }
    stick.close()
}

/// What the running NAS says about itself; None unless the target is a running NAS.
fn running(stick: &mut dyn Stick) -> Result<Option<Running>> {
    Ok(stick.running_cmdline()?.map(|c| Running::from_cmdline(&c)))
}

/// A slot's build, for `status`: every field as the stick has it, made safe for a terminal.
fn describe_build(m: &Manifest) -> String {
    let git = match &m.git_commit {
        Some(c) if m.git_dirty => format!("{} (with uncommitted changes)", short(c)),
        Some(c) => short(c),
        None => "unknown".to_string(),
    };
    let boot = if m.bootloaders.is_empty() {
        "carries none (the host's are used)".to_string()
    } else {
        let carried: Vec<&str> = m.bootloaders.values().map(String::as_str).collect();
        format!("carries {}", carried.join(", "))
    };
    let keys = match m.root_ssh_keys {
        Some(0) => "none: reachable at its console only".to_string(),
        Some(n) => format!("{n} for root"),
        None => "not counted (built before ramnas counted them)".to_string(),
    };
    format!(
        "  build   {}\n  date    {}\n  kernel  {}\n  git     {}\n  size    {:.1} MiB\n  boot    {}\n  ssh     {keys}\n",
        for_terminal(&m.build_id),
        date(m.source_date),
        for_terminal(m.kernel_version.as_deref().unwrap_or("unknown")),
        for_terminal(&git),
        slots::build_size(m) as f64 / (1024.0 * 1024.0),
        for_terminal(&boot)
    )
}

/// A commit's first 12 characters.
fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// `2026-11-25 23:16 UTC` from seconds since 1970 (days to a civil date: Howard Hinnant's algorithm).
pub fn date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let (hour, min) = (secs % 86400 / 3600, secs % 3600 / 60);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{min:02} UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::date(315532800), "1980-01-01 00:00 UTC");
        assert_eq!(super::date(1709208000), "2024-02-29 12:00 UTC");
        assert_eq!(super::date(1795648560), "2026-11-25 23:16 UTC");
    }
}
