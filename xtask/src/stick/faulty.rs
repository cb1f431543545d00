//! [`Faulty`]: any stick, counting the points where a deploy changes it, killed at the chosen one (the crash
//! tests).

use std::io::{self, Read, Write};

use anyhow::{Context, Result};

use super::{Entry, Stick};

/// Testing hook: `RAMNAS_DEPLOY_KILL_AT=N` makes the process SIGKILL itself at the N-th point where the stick
/// changes, so the crash tests can stop a deploy at every one in turn.
pub const KILL_AT_ENV: &str = "RAMNAS_DEPLOY_KILL_AT";

/// A stick that counts the points where it is about to change and kills the process at the chosen one:
/// before every write, rename, removal, directory creation and patch; during every write (after its first
/// chunk, or before its end is flushed); and, where a rename is a removal then a rename (FAT), between the
/// two. The one place those points are counted.
pub struct Faulty {
    inner: Box<dyn Stick>,
    points: Points,
}

struct Points {
    seen: u64,
    kill_at: u64,
}

impl Points {
    fn point(&mut self) {
        self.seen += 1;
        if self.seen == self.kill_at {
            eprintln!("{KILL_AT_ENV}={}: killing myself here", self.kill_at);
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        }
    }
}

impl Faulty {
    /// `stick` itself unless [`KILL_AT_ENV`] is set.
    pub fn wrap(stick: Box<dyn Stick>) -> Result<Box<dyn Stick>> {
        let Some(n) = std::env::var_os(KILL_AT_ENV) else {
            return Ok(stick);
        };
        let kill_at = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{KILL_AT_ENV}={n:?}: not a number"))?;
        Ok(Box::new(Faulty {
            inner: stick,
            points: Points { seen: 0, kill_at },
        }))
    }
}

/// Reads `inner`, passing a point on its second read (the first chunk has been written by then).
struct PointReader<'a> {
    inner: &'a mut dyn Read,
    points: &'a mut Points,
    reads: u32,
}

impl Read for PointReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads == 2 {
            self.points.point();
        }
        self.inner.read(buf)
    }
}

impl Stick for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        self.inner.list(dir)
    }
    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.inner.read_into(path, out)
    }
    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64> {
        self.points.point();
        let mut data = PointReader {
            inner: data,
            points: &mut self.points,
            reads: 0,
        };
        self.inner.write(path, &mut data)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.points.point();
        if !self.inner.rename_is_atomic() && self.inner.exists(to)? {
            // What the inner rename does anyway, with a point between its two steps.
            self.inner.remove(to)?;
            self.points.point();
        }
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<()> {
        self.points.point();
        self.inner.remove(path)
    }
    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        self.points.point();
        self.inner.create_dir_all(dir)
    }
    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        self.points.point();
        self.inner.patch(path, offset, bytes)
    }
    fn sync(&mut self) -> Result<()> {
        self.inner.sync()
    }
    fn close(self: Box<Self>) -> Result<()> {
        self.inner.close()
    }
    fn rename_is_atomic(&self) -> bool {
        self.inner.rename_is_atomic()
    }
    fn running_cmdline(&mut self) -> Result<Option<String>> {
        self.inner.running_cmdline()
    }
    fn locked_datasets(&mut self) -> Result<Option<Vec<String>>> {
        self.inner.locked_datasets()
    }
    fn forget(&mut self) {
        self.inner.forget()
    }
    fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        self.inner.entry(path)
    }
    fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
        self.inner.sha256(path)
    }
}
