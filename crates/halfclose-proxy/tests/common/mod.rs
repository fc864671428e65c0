//! The `halfclose-proxy` binary as a child process, shared by the test files.
#![allow(dead_code, unreachable_pub)]

use std::process::Stdio;

use e2e_tests::{read_response, status_of, within};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_halfclose-proxy");

pub struct Proxy {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub addr: std::net::SocketAddr,
}

impl Proxy {
    /// Starts the binary on a free loopback port with `args`.
    pub async fn start(args: &[&str]) -> Proxy {
        let child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .args(["--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn halfclose-proxy");
        Proxy::started(child).await
    }

    /// Starts the binary with `args` and at most `nofile` open files
    /// (`ulimit -n`, soft and hard, so it cannot raise it), logging at INFO;
    /// its log lines come through the returned [`Logs`].
    pub async fn start_with_fd_limit(nofile: u32, args: &[&str]) -> (Proxy, Logs) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .args(["--log-level", "info"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn halfclose-proxy under ulimit -n");
        let logs = Logs::of(child.stderr.take().unwrap());
        (Proxy::started(child).await, logs)
    }

    /// Starts the binary with `--config FILE` and `args`, logging at INFO;
    /// its log lines come through the returned [`Logs`]. `addr` is the
    /// first listener's.
    pub async fn with_config(file: &std::path::Path, args: &[&str]) -> (Proxy, Logs) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(file)
            .args(args)
            .args(["--log-level", "info"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn halfclose-proxy --config");
        let logs = Logs::of(child.stderr.take().unwrap());
        (Proxy::started(child).await, logs)
    }

    /// Waits for the first stdout line of `child`, which says its address.
    async fn started(mut child: Child) -> Proxy {
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within("first stdout line", stdout.next_line())
            .await
            .unwrap()
            .expect("a first line");
        let addr = first
            .strip_prefix("listening on http://")
            .or_else(|| first.strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("first line is {first:?}"))
            .parse()
            .expect("an address");
        Proxy {
            child,
            stdout,
            addr,
        }
    }

    pub async fn line_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = within("a stdout line", self.stdout.next_line())
                .await
                .unwrap();
            match line {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => continue,
                None => panic!("stdout ended before a line starting with {prefix:?}"),
            }
        }
    }

    /// Starts the binary in front of `upstream`, with `args`.
    pub async fn in_front_of(upstream: std::net::SocketAddr, args: &[&str]) -> Proxy {
        let upstream = format!("http://{upstream}");
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        Proxy::start(&all).await
    }

    /// SIGTERM, and the process must exit 0.
    pub async fn stop(mut self) {
        self.terminate();
        let status = within("exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "exit status {status}");
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends `signal` (`HUP`, `TERM`...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The admin listener's address, from the proxy's stdout.
pub async fn admin_addr(proxy: &mut Proxy) -> String {
    let line = proxy.line_starting("admin on http://").await;
    line.strip_prefix("admin on http://")
        .and_then(|l| l.split_whitespace().next())
        .expect("an address")
        .to_owned()
}

/// Fetches `path` from the admin listener: (status, body).
pub async fn admin_get(addr: &str, path: &str) -> (u16, String) {
    let mut cli = TcpStream::connect(addr).await.unwrap();
    cli.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut cli).await;
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Runs `halfclose-proxy probe ARGS`: (success, stdout).
pub async fn probe(args: &[&str]) -> (bool, String) {
    let out = within("probe", Command::new(BIN).arg("probe").args(args).output())
        .await
        .expect("run probe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs the binary with `args` and checks that it refuses them the way bad
/// input is refused: a non-zero exit and one line on stderr, no panic.
pub async fn refuses(args: &[&str]) {
    let out = within("exit", Command::new(BIN).args(args).output())
        .await
        .expect("run the binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("halfclose-proxy: error: "),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

/// The log lines (stderr) of a process, as they come.
pub struct Logs {
    rx: mpsc::UnboundedReceiver<String>,
    /// Every line received so far.
    pub lines: Vec<String>,
}

impl Logs {
    fn of(stderr: tokio::process::ChildStderr) -> Logs {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Logs {
            rx,
            lines: Vec::new(),
        }
    }

    /// Waits for a line that contains every one of `parts`.
    pub async fn wait_for(&mut self, parts: &[&str]) -> String {
        if let Some(line) = self.find(parts) {
            return line;
        }
        let what = format!("a log line with {parts:?}");
        within(&what, async {
            loop {
                let line = self.rx.recv().await;
                let line = line.unwrap_or_else(|| panic!("stderr ended before {what}"));
                self.lines.push(line);
                if let Some(line) = self.find(parts) {
                    return line;
                }
            }
        })
        .await
    }

    fn find(&self, parts: &[&str]) -> Option<String> {
        self.lines
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
    }

    /// Every line, once the process has exited (stderr closed).
    pub async fn all(mut self) -> Vec<String> {
        while let Some(line) = within("stderr to close", self.rx.recv()).await {
            self.lines.push(line);
        }
        self.lines
    }
}

/// The WARN lines among `lines`.
pub fn warnings(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(" WARN ")).collect()
}
