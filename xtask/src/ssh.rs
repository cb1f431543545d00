//! The running NAS as a [`Stick`]: its boot partition mounted at `/media/boot`, reached with the system's
//! OpenSSH client.
//!
//! One master connection (`ControlMaster`) carries every operation. Each operation runs one fixed POSIX sh
//! script on the NAS (busybox is enough) with the operation and the stick paths as its arguments; the paths
//! are checked here to be plain relative names, and every argument is quoted, so nothing from the user
//! becomes shell code on either side. On the NAS, `RAMNAS_BOOT` overrides /media/boot and `RAMNAS_CMDLINE`
//! /proc/cmdline (as for ramnas-slot); on this machine `RAMNAS_SSH` names another ssh program.

use std::{
    ffi::OsString,
    fs,
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

use crate::stick::{Entry, Stick};

/// Names an ssh program other than `ssh` on PATH (a wrapper adding `-F CONFIG`, say).
pub const PROGRAM_ENV: &str = "RAMNAS_SSH";

/// The one script every operation runs on the NAS: `sh -c SCRIPT ramnas-stick OP ARGS…`.
const SCRIPT: &str = r#"set -eu
root=${RAMNAS_BOOT:-/media/boot}
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
entry)
	if [ -d "$root/$1" ]; then echo "d 0"; elif [ -e "$root/$1" ]; then echo "f $(stat -c %s "$root/$1")"; fi ;;
read) cat "$root/$1" ;;
write) cat >"$root/$1" ;;
rename) mv -f "$root/$1" "$root/$2" ;;
remove) if [ -d "$root/$1" ]; then rmdir "$root/$1"; else rm "$root/$1"; fi ;;
mkdir) mkdir -p "$root/$1" ;;
patch)
	size=$(stat -c %s "$root/$1")
	[ $(($2 + $3)) -le "$size" ] || { echo "$3 bytes at $2 reach past the end of $1 ($size bytes)" >&2; exit 1; }
	dd of="$root/$1" bs=1 seek="$2" count="$3" conv=notrunc 2>/dev/null ;;
sha256)
	sum=$(sha256sum "$root/$1")
	echo "$(stat -c %s "$root/$1") ${sum%% *}" ;;
sync) sync ;;
cmdline) cat "${RAMNAS_CMDLINE:-/proc/cmdline}" ;;
*) echo "unknown operation $op" >&2; exit 2 ;;
esac
"#;

/// A running NAS's stick over ssh.
pub struct Ssh {
    target: String,
    program: OsString,
    /// `[user@]host`.
    dest: String,
    port: Option<String>,
    /// Holds the master connection's socket.
    control: PathBuf,
    open: bool,
    /// What the NAS answered since the last change made through this connection: listings and small
    /// files, so that looking again costs no round trip. Every change (write, rename, removal, mkdir,
    /// patch) empties it; `sha256` and `cmdline` always ask.
    seen: Seen,
    /// Changes made since the last `sync`: a `sync` with none asks nothing.
    unsynced: bool,
}

/// The cache of [`Ssh::seen`].
#[derive(Default)]
struct Seen {
    lists: std::collections::HashMap<String, Vec<Entry>>,
    files: std::collections::HashMap<String, Vec<u8>>,
}

/// Files up to this size are kept in [`Seen`] once read (the configs, manifests, ldlinux.sys).
const SEEN_FILE_MAX: usize = 1 << 20;

impl Ssh {
    /// Connects to `ssh://[user@]host[:port]` and checks that a ramnas stick is mounted there.
    pub fn open(target: &str) -> Result<Ssh> {
        let (dest, port) = parse_target(target)?;
        let program = std::env::var_os(PROGRAM_ENV).unwrap_or_else(|| "ssh".into());
        let control = std::env::temp_dir().join(format!("ramnas-ssh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&control);
        fs::create_dir(&control).with_context(|| format!("creating {}", control.display()))?;
        let mut ssh = Ssh {
            target: target.to_string(),
            program,
            dest,
            port,
            control,
            open: false,
            seen: Seen::default(),
            unsynced: false,
        };
        ssh.connect()?;
        ssh.run("check", &[])?;
        Ok(ssh)
    }

    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-o".into(), "BatchMode=yes".into()];
        if let Some(port) = &self.port {
            args.extend(["-p".into(), port.into()]);
        }
        let mut path = OsString::from("ControlPath=");
        path.push(self.control.join("master"));
        args.extend(["-o".into(), path]);
        args
    }

    /// Starts the master connection in the background. Its stderr goes to a file: a pipe would stay open
    /// as long as the master lives.
    fn connect(&mut self) -> Result<()> {
        let log = self.control.join("master.log");
        let mut args = self.base_args();
        args.extend(
            [
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=300",
                "-N",
                "-f",
            ]
            .map(OsString::from),
        );
        args.push(self.dest.clone().into());
        let done = duct::cmd(&self.program, args)
            .stdin_null()
            .stdout_null()
            .stderr_path(&log)
            .unchecked()
            .run()
            .with_context(|| {
                format!(
                    "running {:?} (OpenSSH client: Debian/Ubuntu openssh-client, Alpine openssh-client)",
                    self.program
                )
            })?;
        if !done.status.success() {
            let why = fs::read_to_string(&log).unwrap_or_default();
            bail!("{}: cannot connect: {}", self.target, why.trim());
        }
        self.open = true;
        Ok(())
    }

    /// The ssh invocation of one operation.
    fn expression(&self, op: &str, paths: &[&str]) -> Result<duct::Expression> {
        let mut remote = format!("sh -c {} ramnas-stick {op}", quote(SCRIPT));
        for p in paths {
            remote.push(' ');
            remote.push_str(&quote(p));
        }
        let mut args = self.base_args();
        args.extend(["-o".into(), "ControlMaster=no".into()]);
        args.push(self.dest.clone().into());
        args.push("--".into());
        args.push(remote.into());
        Ok(duct::cmd(&self.program, args))
    }

    /// Runs an operation with no input; returns its stdout.
    fn run(&self, op: &str, args: &[&str]) -> Result<Vec<u8>> {
        let out = self
            .expression(op, args)?
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("running {:?}", self.program))?;
        self.succeeded(op, args, &out)?;
        Ok(out.stdout)
    }

    /// An error naming the operation and quoting the remote stderr, unless `out` says it succeeded.
    fn succeeded(&self, op: &str, args: &[&str], out: &std::process::Output) -> Result<()> {
        if !out.status.success() {
            bail!(
                "{}: {op} {} failed: {}",
                self.describe(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn run_text(&self, op: &str, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(op, args)?).into_owned())
    }

    /// Runs an operation with `data` on its stdin.
    fn run_with_input(&self, op: &str, args: &[&str], data: &mut dyn Read) -> Result<u64> {
        let (reader, mut writer) = std::io::pipe().context("making a pipe")?;
        let handle = self
            .expression(op, args)?
            .stdin_file(reader)
            .stdout_null()
            .stderr_capture()
            .unchecked()
            .start()
            .with_context(|| format!("running {:?}", self.program))?;
        let copied = std::io::copy(data, &mut writer);
        drop(writer);
        let out = handle.wait().context("waiting for ssh")?;
        self.succeeded(op, args, out)?;
        copied.with_context(|| format!("sending {} to {}", args.join(" "), self.describe()))
    }

    /// Before every change: what was seen may no longer hold, and the next `sync` must ask.
    fn changing(&mut self) {
        self.seen = Seen::default();
        self.unsynced = true;
    }

    /// Streams the NAS's file at `path` (checked) into `out`.
    fn read_uncached(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let mut reader = self
            .expression("read", &[path])?
            .stdin_null()
            .stderr_capture()
            .reader()
            .with_context(|| format!("running {:?}", self.program))?;
        std::io::copy(&mut reader, out)
            .with_context(|| format!("reading {path} from {}", self.describe()))
    }

    fn disconnect(&mut self) {
        if std::mem::take(&mut self.open) {
            let mut args = self.base_args();
            args.extend(["-O".into(), "exit".into(), self.dest.clone().into()]);
            let _ = duct::cmd(&self.program, args)
                .stdin_null()
                .stdout_null()
                .stderr_null()
                .unchecked()
                .run();
        }
        let _ = fs::remove_dir_all(&self.control);
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        self.disconnect();
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
        if let Some(seen) = self.seen.lists.get(dir) {
            return Ok(seen.clone());
        }
        let text = self.run_text("list", &[checked(dir)?])?;
        let mut out = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.splitn(3, ' ').collect();
            let name = fields.get(2).copied().unwrap_or_default();
            out.push(parse_entry(&fields, name, line)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.seen.lists.insert(dir.to_string(), out.clone());
        Ok(out)
    }

    /// From the listing of the parent directory (one round trip answers every entry of that directory; a
    /// missing directory lists as empty).
    fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        let path = checked(path)?;
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
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
        self.changing();
        let path = checked(path)?;
        self.run_with_input("write", &[path], data)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.changing();
        self.run("rename", &[checked(from)?, checked(to)?])
            .map(drop)
    }

    fn remove(&mut self, path: &str) -> Result<()> {
        self.changing();
        self.run("remove", &[checked(path)?]).map(drop)
    }

    fn create_dir_all(&mut self, dir: &str) -> Result<()> {
        self.changing();
        self.run("mkdir", &[checked(dir)?]).map(drop)
    }

    fn patch(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        self.changing();
        let (offset, len) = (offset.to_string(), bytes.len().to_string());
        self.run_with_input("patch", &[checked(path)?, &offset, &len], &mut &bytes[..])
            .map(drop)
    }

    fn sync(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.unsynced) {
            return Ok(());
        }
        self.run("sync", &[]).map(drop)
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.sync()?;
        self.disconnect();
        Ok(())
    }

    fn sha256(&mut self, path: &str) -> Result<(u64, String)> {
        let text = self.run_text("sha256", &[checked(path)?])?;
        let (size, sum) = text
            .trim()
            .split_once(' ')
            .with_context(|| format!("unexpected sha256 line from the NAS: {text:?}"))?;
        Ok((
            size.parse()
                .with_context(|| format!("unexpected sha256 line from the NAS: {text:?}"))?,
            sum.to_string(),
        ))
    }

    fn running_cmdline(&mut self) -> Result<Option<String>> {
        Ok(Some(self.run_text("cmdline", &[])?.trim().to_string()))
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
}
