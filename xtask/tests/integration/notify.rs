//! The NAS's alerts, `system/root/etc/ramnas/notify`, run by busybox sh on this host with the real msmtp and
//! curl, against receivers the test runs on 127.0.0.1: a minimal SMTP server and an HTTP listener (the openrc
//! tests reach the same receivers from the VM as 10.0.2.2, through qemu's user network).

use crate::common;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// A mail the SMTP receiver took: the envelope and the message as sent (headers, blank line, body).
#[derive(Debug, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body, with the line ends as sent (CRLF).
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// A request the HTTP receiver took.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A receiver on 127.0.0.1 that hands each message it takes to the test.
pub struct Receiver<T> {
    pub port: u16,
    taken: mpsc::Receiver<T>,
}

impl<T> Receiver<T> {
    /// The next message, waiting up to `wait`.
    pub fn next(&self, wait: Duration) -> Option<T> {
        self.taken.recv_timeout(wait).ok()
    }

    /// The next message for which `wanted` holds (the others are passed over), waiting up to `wait` in all.
    pub fn next_where(&self, wait: Duration, wanted: impl Fn(&T) -> bool) -> Option<T> {
        let deadline = Instant::now() + wait;
        loop {
            let message = self.next(deadline.saturating_duration_since(Instant::now()))?;
            if wanted(&message) {
                return Some(message);
            }
        }
    }
}

/// Accepts connections on a thread of its own, one at a time, each served by `serve`.
fn receive<T: Send + 'static>(
    serve: fn(TcpStream, &mpsc::Sender<T>) -> std::io::Result<()>,
) -> Receiver<T> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, taken) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let _ = serve(stream, &tx);
        }
    });
    Receiver { port, taken }
}

/// An SMTP server that takes every mail (RFC 5321's few commands msmtp sends, no authentication).
pub fn smtp() -> Receiver<Mail> {
    receive(|stream, tx| {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        let mut mail = Mail::default();
        out.write_all(b"220 receiver ESMTP (ramnas test)\r\n")?;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let command = line.trim_end();
            let upper = command.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-receiver\r\n250 8BITMIME\r\n"
            } else if let Some(from) = upper.strip_prefix("MAIL FROM:") {
                mail.from = command[command.len() - from.len()..].trim().to_string();
                b"250 ok\r\n"
            } else if let Some(to) = upper.strip_prefix("RCPT TO:") {
                mail.to
                    .push(command[command.len() - to.len()..].trim().to_string());
                b"250 ok\r\n"
            } else if upper == "DATA" {
                out.write_all(b"354 go on\r\n")?;
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    // Dot-stuffing undone.
                    let text = line.strip_prefix('.').unwrap_or(&line);
                    mail.data.push_str(text);
                }
                let _ = tx.send(std::mem::take(&mut mail));
                b"250 taken\r\n"
            } else if upper == "QUIT" {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            } else if upper.starts_with("HELO") || upper == "RSET" || upper == "NOOP" {
                b"250 ok\r\n"
            } else {
                b"502 not here\r\n"
            };
            out.write_all(reply)?;
        }
    })
}

/// An HTTP server that takes every request and answers 200.
pub fn http() -> Receiver<Request> {
    receive(|stream, tx| {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = Request::default();
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        request.method = parts.next().unwrap_or("").to_string();
        request.path = parts.next().unwrap_or("").to_string();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                request
                    .headers
                    .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = request
            .headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = String::from_utf8_lossy(&body).into_owned();
        let _ = tx.send(request);
        let mut out = stream;
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    })
}

/// A port where connections are made (the kernel's backlog) and never answered: a channel that hangs.
fn silent() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// The settings of [`smtp`] and [`http`] receivers at `host`, as lines of /etc/conf.d/ramnas-notify.
pub fn settings(host: &str, smtp: u16, http: u16) -> String {
    format!(
        "mail_to=\"alice@example.org bob@example.org\"\nmail_from=\"nas@example.org\"\n\
         smtp_host=\"{host}\"\nsmtp_port=\"{smtp}\"\nsmtp_tls=\"off\"\n\
         http_url=\"http://{host}:{http}/ramnas-alerts\"\n"
    )
}

/// The example system's notify script and its settings file.
fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../system/root")
        .join(path)
}

/// A place to run notify: its settings (the example's, then `extra`), a stick directory holding
/// `persist/notify/` with `secrets`, and the console as a file.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(extra: &str, secrets: &[(&str, &str)]) -> Run {
        let dir = common::tempdir();
        let mut conf = fs::read_to_string(example("etc/conf.d/ramnas-notify")).unwrap();
        conf.push_str(extra);
        fs::write(dir.path().join("ramnas-notify"), conf).unwrap();
        let store = dir.path().join("boot/persist/notify");
        fs::create_dir_all(&store).unwrap();
        for (name, text) in secrets {
            fs::write(store.join(name), text).unwrap();
        }
        Run { dir }
    }

    /// `busybox sh notify ARGS…`; its output and how long it took.
    fn notify(&self, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = Command::new("busybox")
            .arg("sh")
            .arg(example("etc/ramnas/notify"))
            .args(args)
            .env("RAMNAS_NOTIFY_CONF", self.dir.path().join("ramnas-notify"))
            .env("RAMNAS_BOOT", self.dir.path().join("boot"))
            .env("RAMNAS_CONSOLE", self.dir.path().join("console"))
            .output()
            .unwrap();
        (out, started.elapsed())
    }

    fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console")).unwrap_or_default()
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// Both channels at once: the mail (subject, recipients, body) through the relay and the POST (the message
/// as the body, the subject as ntfy's Title header, the token's header line from the stick); then the same
/// alert as Gotify's form fields. The console says the alert.
#[test]
fn notify_mails_and_posts_each_alert() {
    let (mail, post) = (smtp(), http());
    let run = Run::new(
        &settings("127.0.0.1", mail.port, post.port),
        &[("http-headers", "Authorization: Bearer tk_secret\n")],
    );
    let message = "pool tank is DEGRADED\none disk is gone";
    let (out, _) = run.notify(&["zfs: pool tank", message]);
    assert!(out.status.success(), "{}", common::text(&out));

    let mail = mail.next(WAIT).expect("the mail reaches the relay");
    assert_eq!(mail.header("Subject"), Some("zfs: pool tank"), "{mail:?}");
    assert_eq!(
        mail.to,
        ["<alice@example.org>", "<bob@example.org>"],
        "{mail:?}"
    );
    assert_eq!(mail.from, "<nas@example.org>", "{mail:?}");
    assert_eq!(
        mail.header("To"),
        Some("alice@example.org, bob@example.org")
    );
    assert_eq!(mail.body(), "pool tank is DEGRADED\r\none disk is gone\r\n");

    let request = post.next(WAIT).expect("the POST reaches the listener");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/ramnas-alerts");
    assert_eq!(request.body, message);
    assert_eq!(request.headers["title"], "zfs: pool tank");
    assert_eq!(request.headers["authorization"], "Bearer tk_secret");
    assert!(
        run.console()
            .contains(&format!("ramnas: notify: zfs: pool tank: {message}")),
        "{}",
        run.console()
    );

    // Gotify's form fields instead.
    let conf = run.dir.path().join("ramnas-notify");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("http_format=\"form\"\nmail_to=\"\"\n");
    fs::write(&conf, text).unwrap();
    let (out, _) = run.notify(&["a & b", "50% = half"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let request = post.next(WAIT).expect("the form reaches the listener");
    assert_eq!(request.body, "title=a+%26+b&message=50%25+%3D+half");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

/// A relay and a web server that take the connection and never answer: notify gives each up after its
/// `timeout` (both at once), says so on the console, and succeeds, so no caller waits or fails. A login
/// whose password is missing from the stick is said and nothing is sent.
#[test]
fn notify_never_hangs_on_a_channel_that_does_not_answer() {
    let (mute_smtp, mute_http) = (silent(), silent());
    let ports = (
        mute_smtp.local_addr().unwrap().port(),
        mute_http.local_addr().unwrap().port(),
    );
    let run = Run::new(
        &format!("{}timeout=\"3\"\n", settings("127.0.0.1", ports.0, ports.1)),
        &[],
    );
    let (out, took) = run.notify(&["ramnas test", "nobody answers"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(took < Duration::from_secs(6), "notify took {took:?}");
    let console = run.console();
    assert!(
        console.contains("ramnas: notify: ramnas test: nobody answers"),
        "{console}"
    );
    let mail_to = "alice@example.org bob@example.org";
    assert!(
        console.contains(&format!("mail to {mail_to} did not finish within 3s")),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "post to http://127.0.0.1:{}/ramnas-alerts did not finish within 3s",
            ports.1
        )),
        "{console}"
    );

    let mail = smtp();
    let run = Run::new(
        &format!(
            "{}smtp_user=\"nas\"\nhttp_url=\"\"\n",
            settings("127.0.0.1", mail.port, 0)
        ),
        &[],
    );
    let (out, _) = run.notify(&["ramnas test", "no password"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        run.console().contains("smtp_user is set but ")
            && run
                .console()
                .contains("persist/notify/smtp-password is missing: not sent"),
        "{}",
        run.console()
    );
    assert!(mail.next(Duration::from_secs(1)).is_none());
}
