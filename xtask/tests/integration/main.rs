//! The integration tests, one binary. Most build a fixture system and boot it in qemu, which needs root (the
//! fixture's owners and device nodes, loop devices, an sshd that logs in as root) and minutes under TCG:
//! those are `#[ignore]`d with the reason, so a plain `cargo test` runs the fast ones and lists the rest;
//! `cargo xtask test` (and so CI) runs them all.

mod common;

mod alpine;
mod bench;
mod build;
mod check;
mod deploy;
mod fixture;
mod flash;
mod hostile;
mod image;
mod notify;
mod openrc;
mod shares;
mod storage;
mod system;
mod uefi;
mod vm;
mod vmtest;
mod walkthrough;
