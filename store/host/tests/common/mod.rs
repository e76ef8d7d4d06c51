//! Running command-line tools against a xenstored socket, every wait bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use xen_store_host::real::skip_or_fail;

/// Longest a one-shot tool may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether Debian's xenstore-utils are installed; if not, fail the test (or, with
/// `XENOLITH_SKIP_REAL_XENSTORED=1`, skip it loudly) and return false.
pub fn require_xenstore_utils(test: &str) -> bool {
    let found = Command::new("sh")
        .args([
            "-c",
            "command -v xenstore-read && command -v xenstore-watch",
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip_or_fail(
            test,
            "Debian's xenstore-utils are not installed (apt-get install -y xenstore-utils)",
        );
    }
    found
}

/// Run `cmd args` with `XENSTORED_PATH=socket`, killing it after `TOOL_TIMEOUT`.
pub fn run(cmd: &str, args: &[&str], socket: &Path) -> Output {
    let child = Command::new(cmd)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    wait_bounded(child, cmd, TOOL_TIMEOUT)
}

/// Wait for `child` at most `timeout`, then kill it (and fail).
pub fn wait_bounded(mut child: Child, what: &str, timeout: Duration) -> Output {
    // Read both pipes in threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("wait for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// A long-running tool whose stdout lines arrive on a channel.
pub struct Lines {
    child: Child,
    rx: Receiver<String>,
    what: String,
}

impl Lines {
    /// Start `cmd args` with `XENSTORED_PATH=socket`.
    pub fn spawn(cmd: &str, args: &[&str], socket: &Path) -> Lines {
        let mut child = Command::new(cmd)
            .args(args)
            .env("XENSTORED_PATH", socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Lines {
            child,
            rx,
            what: format!("{cmd} {}", args.join(" ")),
        }
    }

    /// The next line, or a failure after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> String {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                panic!("{}: no output line within {timeout:?} ({e})", self.what);
            }
        }
    }

    /// Wait for the tool to exit by itself (bounded), returning its exit status.
    pub fn finish(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("{} did not exit within {timeout:?}", self.what);
                }
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // Only our own child; a no-op once it exited.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Our `xenstored` binary on a socket in a fresh temporary directory; killed (our own child,
/// by its handle) and cleaned up on drop.
pub struct OurDaemon {
    child: Child,
    dir: std::path::PathBuf,
}

impl OurDaemon {
    /// Start it and wait (bounded) until it listens.
    pub fn start() -> OurDaemon {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("oxsb-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the daemon's directory");
        let socket = dir.join("socket");
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenstored"))
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn our xenstored");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut d = OurDaemon { child, dir };
        match rx.recv_timeout(TOOL_TIMEOUT) {
            Ok(l) if l.starts_with("listening on") => d,
            other => {
                d.stop();
                panic!("our xenstored did not start: {other:?}");
            }
        }
    }

    /// Its socket.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.join("socket")
    }

    /// Whether it still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for OurDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
