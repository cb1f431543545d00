//! syslinux: finding its files, its config for a slot table, and the ADV (boot-once).
