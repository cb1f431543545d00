//! The running NAS as a [`Stick`]: its boot partition mounted at `/media/boot`, reached with the system's
//! OpenSSH client.
//!
//! One ssh session carries every operation: it runs a fixed POSIX sh loop on the NAS (busybox is enough)
//! that reads one request line at a time (`OP ARGS…`) and answers each with a header line `STATUS OUTLEN
//! ERRLEN` and that many bytes of the operation's stdout and stderr. A file to write follows its request as
//! chunks, each a line with its size and then exactly that many bytes (read with `dd iflag=fullblock`, which
//! never reads past them); a line `0` ends it, or `0 N` for a big file, whose SHA-256 the NAS then computes
//! as hash N while the next files arrive (a deploy asks for it next). The paths are checked here to be
//! plain relative names, and they travel as data, so nothing from the user becomes shell code on either
//! side. On the NAS, `RAMNAS_BOOT` overrides /media/boot and `RAMNAS_CMDLINE` /proc/cmdline (as for
//! ramnas-slot); on this machine `RAMNAS_SSH` names another ssh program.
//!
//! Nothing the NAS sends can hold or flood this machine: ssh's keep-alive ends a session whose NAS or network
//! is gone (about a minute), a watchdog ends one in which nothing moves for [`TIMEOUT_ENV`]'s seconds while
//! an answer is awaited (a hung shell on a NAS that still answers keep-alives), and every answer is bounded
//! ([`ANSWER_MAX`]; the greeting and the header lines too). What the NAS says is shown through
//! [`crate::stick::for_terminal`].

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::stick::{for_terminal, Entry, Stick};

/// Names an ssh program other than `ssh` on PATH (a wrapper adding `-F CONFIG`, say).
pub const PROGRAM_ENV: &str = "RAMNAS_SSH";

/// The ssh client: [`PROGRAM_ENV`], else `ssh` on PATH.
pub fn program() -> std::ffi::OsString {
    std::env::var_os(PROGRAM_ENV).unwrap_or_else(|| "ssh".into())
}

/// Seconds the NAS may stay silent while ramnas waits for it (an answer, or room to send) before the
/// session is ended with an error; [`TIMEOUT_DEFAULT`] when unset.
pub const TIMEOUT_ENV: &str = "RAMNAS_SSH_TIMEOUT";

/// Long enough for a `sync` of a whole build to a slow stick.
const TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);

/// ssh's own options: no prompt, and a NAS (or network) that is gone ends the session within about a
/// minute (a keep-alive every 15 s, four unanswered), a host that does not answer the connection in 30 s.
pub const SSH_OPTIONS: &[&str] = &[
    "-o",
    "BatchMode=yes",
    "-o",
    "ServerAliveInterval=15",
    "-o",
    "ServerAliveCountMax=4",
    "-o",
    "ConnectTimeout=30",
];

/// The most an answer may hold (stdout and stderr together): the biggest file ramnas reads from a NAS is
/// ldlinux.sys (~120 KiB), the biggest listing a few KiB. A bigger one is refused and the session ended.
pub const ANSWER_MAX: u64 = 16 << 20;

/// The most a header line may hold (`STATUS OUTLEN ERRLEN`).
const HEADER_MAX: u64 = 256;

/// The most a login may print before the loop's first line.
const GREETING_MAX: u64 = 1 << 20;

/// The loop the session runs on the NAS: `sh -c SCRIPT`. `stick OP ARGS…` is one operation, run in a
/// subshell with `set -e` and its stdin empty (or, for `patch`, the bytes that came with it); a failed
/// operation is answered and the loop goes on. A write or a read that breaks off ends the session, since
/// the stream would no longer be in step.
const SCRIPT: &str = r#"set -u
root=${RAMNAS_BOOT:-/media/boot}
tmp=$(mktemp -d) || exit 1
trap "rm -rf $tmp" EXIT
trap "exit 1" HUP INT TERM PIPE
stick() {
	op=$1
	shift
	case $op in
	check)
		[ -d "$root/syslinux" ] || { echo "no ramnas stick mounted at $root (no $root/syslinux)" >&2; exit 3; } ;;
	list)
		for f in "$root/$1"/* "$root/$1"/.[!.]*; do
			[ -e "$f" ] || continue
			if [ -d "$f" ]; then echo "d 0 ${f##*/}"; else echo "f $(stat -c %s "$f") ${f##*/}"; fi
		done ;;
	read) cat "$root/$1" ;;
	rename) mv -f "$root/$1" "$root/$2" ;;
	remove) if [ -d "$root/$1" ]; then rmdir "$root/$1"; else rm "$root/$1"; fi ;;
	mkdir) mkdir -p "$root/$1" ;;
	patch)
		size=$(stat -c %s "$root/$1")
		[ $(($2 + $3)) -le "$size" ] || { echo "$3 bytes at $2 reach past the end of $1 ($size bytes)" >&2; exit 1; }
		dd of="$root/$1" bs=1 seek="$2" count="$3" conv=notrunc 2>/dev/null ;;
	sha256)
		if [ -n "$2" ] && [ -s "$tmp/sum$2" ]; then
			read -r sum _ <"$tmp/sum$2"
			rm -f "$tmp/sum$2"
		else
			sum=$(sha256sum "$root/$1")
		fi
		echo "$(stat -c %s "$root/$1") ${sum%% *}" ;;
	sync) sync ;;
	cmdline) cat "${RAMNAS_CMDLINE:-/proc/cmdline}" ;;
	locked) if [ -x /usr/sbin/ramnas-unlock ]; then /usr/sbin/ramnas-unlock --list; else echo "-"; fi ;;
	*) echo "unknown operation $op" >&2; exit 2 ;;
	esac
}
receive() {
	dd bs=1048576 count="$1" iflag=count_bytes,fullblock status=none
}
# The answer goes out in one write: ssh sends a small second write only once the first is acknowledged,
# and the other end delays that acknowledgement (the Nagle algorithm against delayed ACKs: 40 ms each time).
answer() {
	{
		echo "$1" $(stat -c %s "$tmp/out" "$tmp/err")
		cat "$tmp/out" "$tmp/err"
	} >"$tmp/answer"
	dd if="$tmp/answer" bs=1048576 status=none
}
: >"$tmp/in"
# Whatever a login script printed ends here.
echo ramnas-stick-ready
# The arguments are checked stick paths and numbers: words without blanks.
while read -r op a b c; do
	case $op in
	write)
		{
			while read -r n h && [ "$n" -gt 0 ]; do
				receive "$n" || exit 1
			done
		} >"$root/$a" || exit 1
		# The end line of a big file names a hash to start: its SHA-256 is asked for next (a deploy
		# checks what it wrote), and is computed while the next files arrive.
		if [ -n "$h" ]; then
			sha256sum "$root/$a" >"$tmp/sum$h" 2>/dev/null &
		fi
		: >"$tmp/out"
		: >"$tmp/err"
		answer 0
		continue ;;
	sha256)
		# Waits for the hashes started by writes (see write).
		[ -z "$b" ] || wait ;;
	read)
		# A big file streams; a small one is answered like any operation, at once.
		if [ -f "$root/$a" ] && [ "$(stat -c %s "$root/$a")" -gt 1048576 ]; then
			echo "0 $(stat -c %s "$root/$a") 0"
			cat "$root/$a" || exit 1
			continue
		fi ;;
	patch)
		receive "$c" >"$tmp/in" || exit 1 ;;
	esac
	(set -e; stick "$op" "$a" "$b" "$c") <"$tmp/in" >"$tmp/out" 2>"$tmp/err"
	answer $?
	: >"$tmp/in"
done
"#;

/// A write is sent in chunks of this size.
const CHUNK: usize = 8 << 20;

/// A written file of at least this size is hashed on the NAS as soon as it is whole, while the next
/// ones arrive; [`Stick::sha256`] then waits for that hash.
const HASH_AHEAD_MIN: u64 = 1 << 20;

/// A running NAS's stick over ssh.
pub struct Ssh {
    target: String,
    session: Option<Session>,
    /// What the NAS answered, and what this connection changed since: listings and small files, so that
    /// looking again costs no round trip. Each change made here updates it; a change that fails, and
    /// [`Stick::forget`], empty it. `sha256` and `cmdline` always ask.
    seen: Seen,
    /// Changes made since the last `sync`: a `sync` with none asks nothing.
    unsynced: bool,
    /// The big files written since they last changed, with the number of the hash the NAS started of
    /// each ([`HASH_AHEAD_MIN`]).
    hashing: std::collections::HashMap<String, u32>,
    /// The number of the next write, which names its hash.
    writes: u32,
}

/// The ssh process running [`SCRIPT`].
struct Session {
    /// Shared with the [`Watch`]'s thread, which kills it when the NAS stays silent too long.
    child: Arc<Mutex<Child>>,
    input: Watched<ChildStdin>,
    output: BufReader<Watched<ChildStdout>>,
    /// ssh's own stderr (and the loop's, outside the operations), gathered by a thread so that the pipe
    /// never fills; kept to its first [`ANSWER_MAX`] bytes.
    stderr: Arc<Mutex<Vec<u8>>>,
    watch: Watch,
}

/// The watchdog of a [`Session`]: while ramnas waits on the NAS (a [`Waiting`] is held), a thread kills ssh
/// once nothing has moved either way for the timeout.
#[derive(Clone)]
struct Watch(Arc<WatchState>);

struct WatchState {
    start: Instant,
    timeout: Duration,
    /// Milliseconds after `start` of the last progress while waiting; [`IDLE`] when not waiting.
    since: AtomicU64,
    /// The watchdog killed ssh.
    fired: AtomicBool,
    /// The session has ended: the thread stops.
    ended: AtomicBool,
}

const IDLE: u64 = u64::MAX;

/// Held while ramnas waits on the NAS; the watchdog sleeps again when it is dropped.
struct Waiting(Watch);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0 .0.since.store(IDLE, Ordering::Relaxed);
    }
}

impl Watch {
    /// Starts the thread that kills `child` when a wait outlasts `timeout`.
    fn start(child: Arc<Mutex<Child>>, timeout: Duration) -> Watch {
        let watch = Watch(Arc::new(WatchState {
            start: Instant::now(),
            timeout,
            since: AtomicU64::new(IDLE),
            fired: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }));
        let state = watch.0.clone();
        let tick = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::spawn(move || {
            while !state.ended.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                let since = state.since.load(Ordering::Relaxed);
                if since != IDLE
                    && state.now().saturating_sub(since) > state.timeout.as_millis() as u64
                {
                    state.fired.store(true, Ordering::Relaxed);
                    // The lock keeps the child from being reaped meanwhile (its pid reused).
                    let _ = child.lock().unwrap().kill();
                    return;
                }
            }
        });
        watch
    }

    fn wait(&self) -> Waiting {
        self.0.since.store(self.0.now(), Ordering::Relaxed);
        Waiting(self.clone())
    }

    /// Bytes went one way or the other.
    fn moved(&self) {
        if self.0.since.load(Ordering::Relaxed) != IDLE {
            self.0.since.store(self.0.now(), Ordering::Relaxed);
        }
    }

    fn fired(&self) -> bool {
        self.0.fired.load(Ordering::Relaxed)
    }
}

impl WatchState {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// A pipe to or from ssh that tells the [`Watch`] of each step; writes go in pieces, so a big one shows
/// progress as the NAS takes it.
struct Watched<T> {
    inner: T,
    watch: Watch,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.watch.moved();
        Ok(n)
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(64 << 10)])?;
        self.watch.moved();
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The watchdog's timeout: [`TIMEOUT_ENV`] seconds, else [`TIMEOUT_DEFAULT`].
fn timeout() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(secs) => match secs.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => bail!("{TIMEOUT_ENV}={secs:?}: not a number of seconds"),
        },
        Err(_) => Ok(TIMEOUT_DEFAULT),
    }
}

/// The cache of [`Ssh::seen`], keyed by checked paths.
#[derive(Default)]
struct Seen {
    lists: std::collections::HashMap<String, Vec<Entry>>,
    files: std::collections::HashMap<String, Vec<u8>>,
}

/// A checked path's directory and name.
fn parent_and_name(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Seen {
    /// Puts `entry` into its directory's listing, if that is known.
    fn insert(&mut self, path: &str, mut entry: Entry) {
        let (dir, name) = parent_and_name(path);
        if let Some(list) = self.lists.get_mut(dir) {
            list.retain(|e| e.name != name);
            entry.name = name.to_string();
            list.push(entry);
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// Takes `path` out of its directory's listing; returns its entry if the listing is known.
    fn take(&mut self, path: &str) -> Option<Option<Entry>> {
        let (dir, name) = parent_and_name(path);
        let list = self.lists.get_mut(dir)?;
        let at = list.iter().position(|e| e.name == name);
        Some(at.map(|i| list.remove(i)))
    }

    /// `path` now holds `size` bytes: `data`, if they were kept.
    fn wrote(&mut self, path: &str, size: u64, data: Option<Vec<u8>>) {
        let entry = Entry {
            name: String::new(),
            is_dir: false,
            size,
        };
        self.insert(path, entry);
        match data {
            Some(data) => self.files.insert(path.to_string(), data),
            None => self.files.remove(path),
        };
    }

    fn renamed(&mut self, from: &str, to: &str) {
        match self.files.remove(from) {
            Some(data) => self.files.insert(to.to_string(), data),
            None => self.files.remove(to),
        };
        match self.take(from) {
            Some(Some(entry)) if !entry.is_dir => self.insert(to, entry),
            // Not a file we know the size of: the listing of its new directory is no longer known.
            _ => {
                self.lists.remove(parent_and_name(to).0);
            }
        }
    }

    fn removed(&mut self, path: &str) {
        self.files.remove(path);
        self.lists.remove(path);
        self.take(path);
    }

    /// `dir` and its parents exist now; those that did not are known to be empty.
    fn made(&mut self, dir: &str) {
        let mut at = 0;
        while at < dir.len() {
            at = dir[at..].find('/').map_or(dir.len(), |i| at + i);
            let path = &dir[..at];
            if let Some(None) = self.take(path) {
                self.lists.insert(path.to_string(), Vec::new());
            }
            let entry = Entry {
                name: String::new(),
                is_dir: true,
                size: 0,
            };
            self.insert(path, entry);
            at += 1;
        }
    }

    fn patched(&mut self, path: &str, offset: u64, bytes: &[u8]) {
        if let Some(data) = self.files.get_mut(path) {
            let start = offset as usize;
            match data.get_mut(start..start + bytes.len()) {
                Some(range) => range.copy_from_slice(bytes),
                None => {
                    self.files.remove(path);
                }
            }
        }
    }
}

/// Files up to this size are kept in [`Seen`] once read (the configs, manifests, ldlinux.sys).
const SEEN_FILE_MAX: usize = 1 << 20;

/// What a request sends after its line.
enum Body<'a> {
    None,
    /// A file's contents, in chunks; when they come to [`HASH_AHEAD_MIN`], the end line names this
    /// hash for the NAS to start.
    Chunks(&'a mut dyn Read, u32),
    /// Bytes whose length the request line gives.
    Exact(&'a [u8]),
}

impl Ssh {
    /// Connects to `ssh://[user@]host[:port]` with `ssh` (or [`PROGRAM_ENV`]) and checks that a ramnas stick
    /// is mounted there.
    pub fn open(target: &str) -> Result<Ssh> {
        Ssh::open_with(target, &program())
    }

    /// [`Ssh::open`] with `program` as the ssh client.
    pub fn open_with(target: &str, program: &std::ffi::OsStr) -> Result<Ssh> {
        let (dest, port) = parse_target(target)?;
        let timeout = timeout()?;
        let mut command = Command::new(program);
        command.args(SSH_OPTIONS);
        if let Some(port) = &port {
            command.args(["-p", port]);
        }
        command
            .arg(&dest)
            .arg("--")
            .arg(format!("sh -c {}", quote(SCRIPT)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| {
            format!(
                "running {program:?} (OpenSSH client: Debian/Ubuntu openssh-client, Alpine openssh-client)"
            )
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped");
        let gathered = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut kept = gathered.lock().unwrap();
                let room = (ANSWER_MAX as usize).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        });
        let (input, output) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
        );
        let child = Arc::new(Mutex::new(child));
        let watch = Watch::start(child.clone(), timeout);
        let mut session = Session {
            input: Watched {
                inner: input,
                watch: watch.clone(),
            },
            output: BufReader::new(Watched {
                inner: output,
                watch: watch.clone(),
            }),
            child,
            stderr,
            watch,
        };
        if let Err(err) = session.started() {
            let why = session.end();
            return Err(err.context(format!("{target}: cannot connect: {why}")));
        }
        let mut ssh = Ssh {
            target: target.to_string(),
            session: Some(session),
            seen: Seen::default(),
            unsynced: false,
            hashing: Default::default(),
            writes: 0,
        };
        match ssh.run("check", &[]) {
            Err(err) if ssh.session.is_none() => {
                Err(err.context(format!("{target}: cannot connect")))
            }
            Err(err) => Err(err),
            Ok(_) => Ok(ssh),
        }
    }

    /// Sends one request and reads its answer's header; returns the status and the lengths of stdout and
    /// stderr, which follow on the session's output. A broken session is ended and its error returned.
    fn request(&mut self, op: &str, args: &[&str], body: Body) -> Result<(i32, u64, u64)> {
        let Some(session) = &mut self.session else {
            bail!("{}: the ssh session has ended", self.target);
        };
        match session.request(op, args, body) {
            Ok((_, out, err)) if out.saturating_add(err) > ANSWER_MAX => {
                let why = self.session.take().map(Session::abort).unwrap_or_default();
                bail!(
                    "{}: the NAS answered `{op}` with {} bytes, more than ramnas ever takes ({} MiB): refused, \
                     and the session ended ({why}); is it a ramnas NAS?",
                    self.target,
                    out.saturating_add(err),
                    ANSWER_MAX >> 20
                )
            }
            Ok(header) => Ok(header),
            Err(err) => {
                let why = self.session.take().map(Session::end).unwrap_or_default();
                Err(err.context(format!("{}: the ssh session broke off: {why}", self.target)))
            }
        }
    }

    /// Runs an operation; returns its stdout, or an error naming it and quoting the NAS's stderr.
    fn run_with(&mut self, op: &str, args: &[&str], body: Body) -> Result<Vec<u8>> {
        let (status, out_len, err_len) = self.request(op, args, body)?;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read = self
            .session
            .as_mut()
            .expect("open")
            .read_answer(out_len, &mut out);
        let read = read.and_then(|_| {
            self.session
                .as_mut()
                .expect("open")
                .read_answer(err_len, &mut err)
        });
        if let Err(e) = read {
            let why = self.session.take().map(Session::end).unwrap_or_default();
            return Err(e.context(format!("{}: the ssh session broke off: {why}", self.target)));
        }
        if status != 0 {
            bail!(
                "{}: {op} {} failed: {}",
                self.describe(),
                args.join(" "),
                for_terminal(String::from_utf8_lossy(&err).trim())
            );
        }
        Ok(out)
    }

    fn run(&mut self, op: &str, args: &[&str]) -> Result<Vec<u8>> {
        self.run_with(op, args, Body::None)
    }

    fn run_text(&mut self, op: &str, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(op, args)?).into_owned())
    }

    /// Runs a change; on success `update` applies it to what was seen, on failure nothing seen is trusted.
    fn change(
        &mut self,
        op: &str,
        args: &[&str],
        body: Body,
        update: impl FnOnce(&mut Seen),
    ) -> Result<()> {
        self.unsynced = true;
        // A hash started before this change may no longer be the file's.
        self.hashing
            .retain(|path, _| !args.contains(&path.as_str()));
        match self.run_with(op, args, body) {
            Ok(_) => {
                update(&mut self.seen);
                Ok(())
            }
            Err(err) => {
                self.seen = Seen::default();
                self.hashing.clear();
                Err(err)
            }
        }
    }

    /// Streams the NAS's file at `path` (checked) into `out`.
    fn read_uncached(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let (status, out_len, err_len) = self.request("read", &[path], Body::None)?;
        if status != 0 {
            // A failed read is answered like any operation: nothing on stdout, the reason on stderr.
            let mut err = Vec::new();
            let session = self.session.as_mut().expect("open");
            session.read_answer(out_len, &mut std::io::sink())?;
            session.read_answer(err_len, &mut err)?;
            bail!(
                "{}: read {path} failed: {}",
                self.describe(),
                for_terminal(String::from_utf8_lossy(&err).trim())
            );
        }
        let session = self.session.as_mut().expect("open");
        match session
            .read_answer(out_len, out)
            .and_then(|()| session.read_answer(err_len, &mut std::io::sink()))
        {
            Ok(()) => Ok(out_len),
            Err(e) => {
                let why = self.session.take().map(Session::end).unwrap_or_default();
                Err(e.context(format!("reading {path} from {}: {why}", self.describe())))
            }
        }
    }
}

impl Session {
    /// Reads past whatever the remote login printed (up to [`GREETING_MAX`] bytes), up to the loop's first
    /// line.
    fn started(&mut self) -> Result<()> {
        let _waiting = self.watch.wait();
        let mut line = Vec::new();
        let mut greeting = 0;
        loop {
            line.clear();
            let n = (&mut self.output)
                .take(64 << 10)
                .read_until(b'\n', &mut line)
                .context("reading from ssh")?;
            if n == 0 {
                bail!("the session ended before it started");
            }
            greeting += n as u64;
            if greeting > GREETING_MAX {
                bail!(
                    "the login printed more than {} MiB without starting ramnas's loop",
                    GREETING_MAX >> 20
                );
            }
            if line == b"ramnas-stick-ready\n" {
                return Ok(());
            }
        }
    }

    fn request(&mut self, op: &str, args: &[&str], body: Body) -> Result<(i32, u64, u64)> {
        let _waiting = self.watch.wait();
        // Like the answers, each request goes out in as few writes as it can (see SCRIPT).
        let mut pending = op.to_string().into_bytes();
        for a in args {
            pending.push(b' ');
            pending.extend_from_slice(a.as_bytes());
        }
        pending.push(b'\n');
        match body {
            Body::None => {}
            Body::Exact(bytes) => pending.extend_from_slice(bytes),
            Body::Chunks(data, hash) => {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0;
                loop {
                    let n = fill(data, &mut buf).context("reading what to send")?;
                    total += n as u64;
                    if n > 0 {
                        pending.extend_from_slice(format!("{n}\n").as_bytes());
                        pending.extend_from_slice(&buf[..n]);
                    }
                    if n < CHUNK {
                        let end = if total >= HASH_AHEAD_MIN {
                            format!("0 {hash}\n")
                        } else {
                            "0\n".to_string()
                        };
                        pending.extend_from_slice(end.as_bytes());
                        break;
                    }
                    self.input.write_all(&pending).context("sending a file")?;
                    pending.clear();
                }
            }
        }
        self.input
            .write_all(&pending)
            .and_then(|()| self.input.flush())
            .context("sending a request")?;
        let mut header = Vec::new();
        (&mut self.output)
            .take(HEADER_MAX)
            .read_until(b'\n', &mut header)
            .context("reading an answer")?;
        parse_header(&header)
    }

    /// Copies exactly `len` bytes of the answer into `out`.
    fn read_answer(&mut self, len: u64, out: &mut dyn Write) -> Result<()> {
        let _waiting = self.watch.wait();
        let copied =
            std::io::copy(&mut (&mut self.output).take(len), out).context("reading an answer")?;
        if copied != len {
            bail!("the NAS closed the session after {copied} of {len} bytes");
        }
        Ok(())
    }

    /// Closes the session (ssh gets the timeout to finish, then is killed); returns what ssh said on
    /// stderr, or that the watchdog ended it.
    fn end(self) -> String {
        let grace = self.watch.0.timeout;
        self.close(grace)
    }

    /// Ends a session that is out of step at once.
    fn abort(self) -> String {
        let _ = self.child.lock().unwrap().kill();
        self.close(Duration::ZERO)
    }

    fn close(self, grace: Duration) -> String {
        let Session {
            child,
            input,
            output,
            stderr,
            watch,
        } = self;
        drop(input);
        drop(output);
        let deadline = Instant::now() + grace;
        loop {
            let mut child = child.lock().unwrap();
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                _ => break,
            }
            drop(child);
            std::thread::sleep(Duration::from_millis(20));
        }
        watch.0.ended.store(true, Ordering::Relaxed);
        if watch.fired() {
            return format!(
                "the NAS sent nothing for {} s, so the session was ended (set {TIMEOUT_ENV} to wait longer)",
                watch.0.timeout.as_secs_f64()
            );
        }
        let said = for_terminal(String::from_utf8_lossy(&stderr.lock().unwrap()).trim());
        if said.is_empty() {
            "ssh said nothing".to_string()
        } else {
            said
        }
    }
}

/// Reads into `buf` until it is full or `data` ends; returns how much it read.
fn fill(data: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match data.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.end();
        }
    }
}

/// `ssh://[user@]host[:port]` → (`[user@]host`, port).
pub fn parse_target(target: &str) -> Result<(String, Option<String>)> {
    let usage = || {
        format!("{target}: not an ssh target; write ssh://[user@]host[:port], such as ssh://root@nas.local")
    };
    let rest = target.strip_prefix("ssh://").with_context(usage)?;
    let (user, hostport) = match rest.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !user.is_none_or(name_ok) || !name_ok(host) {
        bail!(usage());
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            bail!("{target}: {p:?} is not a port number");
        }
    }
    let dest = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok((dest, port.map(str::to_string)))
}

/// Stick paths are relative names made of letters, digits, `.`, `_`, `-`, `+` and `/`, never `..`.
fn checked(path: &str) -> Result<&str> {
    let p = path.trim_matches('/');
    let ok = p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/'))
        && !p.split('/').any(|part| part == ".." || part == ".");
    if !ok {
        bail!("{path:?}: not a path on the stick");
    }
    Ok(p)
}

/// Quotes a word for a POSIX shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// An answer's header line, `STATUS OUTLEN ERRLEN` (empty: the session ended).
fn parse_header(header: &[u8]) -> Result<(i32, u64, u64)> {
    let header = String::from_utf8_lossy(header);
    let fields: Vec<&str> = header.split_whitespace().collect();
    let parsed = match fields[..] {
        [status, out, err] => status
            .parse()
            .ok()
            .zip(out.parse().ok())
            .zip(err.parse().ok())
            .map(|((s, o), e)| (s, o, e)),
        _ => None,
    };
    parsed.with_context(|| {
        if header.is_empty() {
            "the NAS closed the session".to_string()
        } else {
            format!("unexpected answer from the NAS: {header:?}")
        }
    })
}

/// The answer to `list`: a line `d 0 NAME` or `f SIZE NAME` per entry; sorted by name.
fn parse_list(text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        let name = fields.get(2).copied().unwrap_or_default();
        out.push(parse_entry(&fields, name, line)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The answer to `sha256`: `SIZE SUM`.
fn parse_sha256(text: &str) -> Result<(u64, String)> {
    let unexpected = || format!("unexpected sha256 line from the NAS: {text:?}");
    let (size, sum) = text.trim().split_once(' ').with_context(unexpected)?;
    Ok((size.parse().with_context(unexpected)?, sum.to_string()))
}

fn parse_entry(fields: &[&str], name: &str, line: &str) -> Result<Entry> {
    let (kind, size) = match fields {
        [kind, size, ..] => (*kind, *size),
        _ => bail!("unexpected line from the NAS: {line:?}"),
    };
    Ok(Entry {
        name: name.to_string(),
        is_dir: kind == "d",
        size: size
            .parse()
            .with_context(|| format!("unexpected line from the NAS: {line:?}"))?,
    })
}

impl Stick for Ssh {
    fn describe(&self) -> String {
        format!("{} (stick at /media/boot)", self.target)
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let dir = checked(dir)?;
        if let Some(seen) = self.seen.lists.get(dir) {
            return Ok(seen.clone());
        }
        let text = self.run_text("list", &[dir])?;
        let out = parse_list(&text)?;
        self.seen.lists.insert(dir.to_string(), out.clone());
        Ok(out)
    }

    /// From the listing of the parent directory (one round trip answers every entry of that directory; a
    /// missing directory lists as empty).
    fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        let path = checked(path)?;
        let (parent, name) = parent_and_name(path);
        Ok(self.list(parent)?.into_iter().find(|e| e.name == name))
    }

    fn read_into(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let path = checked(path)?;
        if let Some(seen) = self.seen.files.get(path) {
            out.write_all(seen)?;
            return Ok(seen.len() as u64);
        }
        // Kept as it streams past, unless it turns out bigger than SEEN_FILE_MAX.
        struct Keep<'a> {
            out: &'a mut dyn Write,
            kept: Option<Vec<u8>>,
        }
        impl Write for Keep<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.out.write(buf)?;
                if let Some(kept) = &mut self.kept {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > SEEN_FILE_MAX {
                        self.kept = None;
                    }
                }
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.out.flush()
            }
        }
        let mut keep = Keep {
            out,
            kept: Some(Vec::new()),
        };
        let len = self.read_uncached(path, &mut keep)?;
        if let Some(kept) = keep.kept {
            self.seen.files.insert(path.to_string(), kept);
        }
        Ok(len)
    }

    fn write(&mut self, path: &str, data: &mut dyn Read) -> Result<u64> {
        let path = checked(path)?;
        let mut sent = Sent {
            inner: data,
            count: 0,
            kept: Some(Vec::new()),
        };
        self.writes += 1;
        let hash = self.writes;
        self.change("write", &[path], Body::Chunks(&mut sent, hash), |_| {})?;
        let Sent { count, kept, .. } = sent;
        self.seen.wrote(path, count, kept);
        if count >= HASH_AHEAD_MIN {
            self.hashing.insert(path.to_string(), hash);
        }
        Ok(count)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (checked(from)?, checked(to)?);
        self.change("rename", &[from, to], Body::None, |seen| {
            seen.renamed(from, to)
        })
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        let path = checked(path)?;
        self.change("remove", &[path], Body::None, |seen| seen.removed(path))
    }

    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        let dir = checked(dir)?;
        self.change("mkdir", &[dir], Body::None, |seen| seen.made(dir))
    }

    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let path = checked(path)?;
        let (at, len) = (offset.to_string(), bytes.len().to_string());
        self.change("patch", &[path, &at, &len], Body::Exact(bytes), |seen| {
            seen.patched(path, offset, bytes)
        })
    }

    fn forget(&mut self) {
        self.seen = Seen::default();
        self.hashing.clear();
    }

    fn sync(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.unsynced) {
            return Ok(());
        }
        self.run("sync", &[]).map(drop)
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.sync()
    }

    fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
        let path = checked(path)?;
        let text = match self.hashing.remove(path) {
            Some(hash) => self.run_text("sha256", &[path, &hash.to_string()])?,
            None => self.run_text("sha256", &[path])?,
        };
        parse_sha256(&text)
    }

    fn running_cmdline(&mut self) -> Result<Option<String>> {
        Ok(Some(self.run_text("cmdline", &[])?.trim().to_string()))
    }

    /// `-` when the NAS has no ramnas-unlock (a build from before it).
    fn locked_datasets(&mut self) -> Result<Option<Vec<String>>> {
        let text = self.run_text("locked", &[])?;
        Ok((text.trim() != "-").then(|| text.lines().map(str::to_string).collect()))
    }
}

/// What a write sends: counted, and kept unless it turns out bigger than [`SEEN_FILE_MAX`].
struct Sent<'a> {
    inner: &'a mut dyn Read,
    count: u64,
    kept: Option<Vec<u8>>,
}

impl Read for Sent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > SEEN_FILE_MAX {
                self.kept = None;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_odd_ones_are_refused() {
        assert_eq!(
            parse_target("ssh://root@nas.local:2222").unwrap(),
            ("root@nas.local".to_string(), Some("2222".to_string()))
        );
        assert_eq!(
            parse_target("ssh://nas").unwrap(),
            ("nas".to_string(), None)
        );
        for bad in [
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://root@nas:0",
            "ssh://root@nas:x",
            "ssh://a b",
            "ssh://nas/path",
            "ssh://r;t@nas",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_and_quoting() {
        assert_eq!(
            checked("/slots/a/vmlinuz.tmp").unwrap(),
            "slots/a/vmlinuz.tmp"
        );
        for bad in ["slots/../x", "a b", "x;y", "$(x)", "a'b"] {
            assert!(checked(bad).is_err(), "{bad}");
        }
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert!(
            !SCRIPT.contains('\''),
            "the script is sent in single quotes"
        );
    }

    /// Property: any answer header, listing and sha256 line from a NAS parses or is an error, never a panic.
    #[test]
    fn any_answer_from_a_nas_parses_or_is_an_error() {
        crate::fuzz::run(5000, &[b"0 123 0\n", b"3 0 57\n"], |b| {
            let _ = parse_header(b);
        });
        let list = "d 0 slots\nf 12345 ldlinux.sys\nf 0 a file with blanks\n";
        crate::fuzz::run_text(5000, &[list], |t| {
            let _ = parse_list(t);
        });
        let sum = "1048576 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
        crate::fuzz::run_text(5000, &[sum], |t| {
            let _ = parse_sha256(t);
        });
    }

    /// A NAS that floods (a login that never ends, a header line that never ends, an answer bigger than
    /// ramnas takes) is refused with an error, quickly and without reading it all: the "ssh" here is a
    /// script that plays the NAS.
    #[test]
    fn a_flooding_nas_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, script, says) in [
            ("greeting", "exec yes", "the login printed more than 1 MiB"),
            (
                "header",
                "echo ramnas-stick-ready; exec tr -d '\\n' </dev/zero",
                "unexpected answer from the NAS",
            ),
            (
                "answer",
                "printf 'ramnas-stick-ready\\n0 9223372036854775807 0\\n'; exec cat /dev/zero",
                "answered `check` with 9223372036854775807 bytes, more than ramnas ever takes",
            ),
        ] {
            let program = dir.path().join(name);
            std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
            let start = std::time::Instant::now();
            let err = match Ssh::open_with("ssh://nas", program.as_os_str()) {
                Ok(_) => panic!("{name}: accepted"),
                Err(err) => format!("{err:#}"),
            };
            assert!(err.contains(says), "{name}: {err}");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: {:?}",
                start.elapsed()
            );
        }
    }
}
