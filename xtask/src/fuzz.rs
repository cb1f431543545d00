//! The inputs of the property tests of every parser of bytes from outside (stick manifests, packages.lock,
//! apk's database, MBR, FAT, ADV, ELF, key files, ssh answers, system.toml): well-formed seeds cut short,
//! mutated (bytes changed, inserted, removed, runs repeated), or random bytes, fed through proptest's runner,
//! which turns a panic into a failure and shrinks it.

use proptest::{
    prelude::*,
    sample::{select, Index},
    test_runner::{Config, TestRunner},
};

/// One change to a seed.
#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    /// A character in UTF-8 (a text parser sees more than ASCII and U+FFFD).
    InsertChar(Index, char),
    Remove(Index),
    /// A run of the seed repeated at its place (long lines, deep nesting).
    Repeat(Index, Index, u8),
}

fn apply(mut bytes: Vec<u8>, edits: Vec<Edit>) -> Vec<u8> {
    for edit in edits {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match edit {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = at(&i, bytes.len());
                bytes[i] = b;
            }
            Edit::Insert(i, b) => {
                let i = at(&i, bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::InsertChar(i, c) => {
                let i = at(&i, bytes.len() + 1);
                let mut utf8 = [0u8; 4];
                bytes.splice(i..i, c.encode_utf8(&mut utf8).bytes());
            }
            Edit::Remove(i) if !bytes.is_empty() => {
                let i = at(&i, bytes.len());
                bytes.remove(i);
            }
            Edit::Repeat(i, n, times) if !bytes.is_empty() => {
                let start = at(&i, bytes.len());
                let end = start + at(&n, (bytes.len() - start).min(64)) + 1;
                let run = bytes[start..end].to_vec();
                for _ in 0..times % 16 {
                    bytes.splice(end..end, run.iter().copied());
                }
            }
            _ => {}
        }
    }
    bytes
}

/// Seeds cut short at any byte, seeds with 1–8 edits, and random bytes up to 4 KiB, in equal parts.
pub fn mangled(seeds: &[&[u8]]) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let edit = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), any::<char>()).prop_map(|(i, c)| Edit::InsertChar(i, c)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), any::<Index>(), any::<u8>()).prop_map(|(i, n, t)| Edit::Repeat(i, n, t)),
    ];
    prop_oneof![
        (select(seeds.clone()), any::<Index>())
            .prop_map(|(s, i)| s[..i.index(s.len() + 1)].to_vec()),
        (select(seeds), prop::collection::vec(edit, 1..8)).prop_map(|(s, e)| apply(s, e)),
        prop::collection::vec(any::<u8>(), 0..4096),
    ]
}

/// Feeds `check` `cases` inputs from [`mangled`]`(seeds)`; a panic in it fails the test with the smallest
/// input found. Returns how many inputs it fed.
pub fn run(cases: u32, seeds: &[&[u8]], check: impl Fn(&[u8])) -> u32 {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let fed = std::sync::atomic::AtomicU32::new(0);
    let result = TestRunner::new(config).run(&mangled(seeds), |bytes| {
        fed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(&bytes);
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let fed = fed.into_inner();
    eprintln!("fed {fed} inputs");
    fed
}

/// [`run`] for parsers of text: the bytes as UTF-8, invalid sequences replaced.
pub fn run_text(cases: u32, seeds: &[&str], check: impl Fn(&str)) -> u32 {
    let seeds: Vec<&[u8]> = seeds.iter().map(|s| s.as_bytes()).collect();
    run(cases, &seeds, |b| check(&String::from_utf8_lossy(b)))
}

#[test]
fn mangling_gives_truncated_mutated_and_random_inputs() {
    let seen = std::sync::Mutex::new((0, 0, 0));
    let seed = b"0123456789abcdef0123456789abcdef";
    assert_eq!(
        run(300, &[seed], |b| {
            let mut seen = seen.lock().unwrap();
            if b.len() < seed.len() && seed.starts_with(b) {
                seen.0 += 1;
            } else if b != seed && b.len().abs_diff(seed.len()) < 600 && b.starts_with(b"0") {
                seen.1 += 1;
            } else {
                seen.2 += 1;
            }
        }),
        300
    );
    let seen = seen.into_inner().unwrap();
    assert!(seen.0 > 30 && seen.1 > 30 && seen.2 > 30, "{seen:?}");
    let caught = std::panic::catch_unwind(|| run(50, &[seed], |b| assert!(b.len() < 8)));
    assert!(caught.is_err(), "a panic in the check fails the run");
}
