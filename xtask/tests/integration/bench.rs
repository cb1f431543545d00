//! `cargo xtask bench` runs end to end on a tiny fixture and prints a row for every case, so the command
//! does not rot. Nothing here measures speed: only the bench itself does. The storage group (six boots of
//! the NAS with its pool under TCG) is left to `cargo xtask bench --only storage`: the NAS's boots with ZFS
//! and its tests are proven by `storage.rs` and `vmtest.rs`, and CI's time goes there.

use crate::common;

use common::{text, xtask_ok};
use xtask::dev::fixture::Fixture;

const CASES: &[&str] = &[
    "pack → zstd",
    "packer peak memory (zstd)",
    "pack → gzip",
    "packer peak memory (gzip)",
    "pack → xz",
    "packer peak memory (xz)",
    "no-change rebuild",
    "boot: the kernel unpacking the archive (TCG)",
    "boot to `ramnas: ready` (TCG, for comparison)",
    "boot, uncompressed archive: unpacking (TCG, for comparison)",
    "boot, uncompressed archive: to `ramnas: ready` (TCG, for comparison)",
    "flash 1 GiB image (300 MiB data) to a loop device",
    "deploy A again (over ssh)",
    "deploy, one file in /etc changed",
    "deploy, one package (4 MiB) upgraded",
    "deploy, a new kernel and modules",
    "deploy time, new kernel, against copying the build",
];

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn bench_prints_every_case() {
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    Fixture::new("bench-test").write(&tree).unwrap();
    let markdown = dir.path().join("results/bench.md");
    let out = xtask_ok(
        dir.path(),
        &[
            "bench",
            "--runs",
            "1",
            "--tree",
            tree.to_str().unwrap(),
            "--markdown",
            markdown.to_str().unwrap(),
            "--only",
            "pack,rebuild,boot,flash,deploy",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), CASES.len() + 1, "{}", text(&out));
    for (row, case) in rows[1..].iter().zip(CASES) {
        let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
        assert_eq!(cells[0].trim_start_matches("| "), *case, "{row}");
        let holds = cells[5];
        if case.starts_with("flash") && holds == "skipped" {
            // Not root, no loop device, or no flash command in this build: the reason is given.
            assert!(cells[6].len() > 10, "a skipped case says why: {row}");
            continue;
        }
        if case.ends_with("for comparison)") || case.ends_with("for the record)") {
            assert_eq!((cells[4], holds), ("—", "—"), "no goal: {row}");
        } else {
            assert!(
                holds == "yes" || holds == "no",
                "{case} was not measured: {row}"
            );
        }
        assert!(cells[1].ends_with(')'), "median (min–max): {row}");
        let bytes_only = case.starts_with("deploy") && !case.starts_with("deploy time");
        let alone = case.starts_with("packer") || case.starts_with("no-change") || bytes_only;
        if !alone {
            assert!(cells[3].ends_with('×'), "a ratio to the baseline: {row}");
        }
    }
    let written = std::fs::read_to_string(&markdown).unwrap();
    for row in &rows {
        assert!(
            written.contains(row),
            "{row} missing from the markdown file"
        );
    }
}
