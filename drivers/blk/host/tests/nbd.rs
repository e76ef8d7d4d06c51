//! `NbdDisk` against real NBD servers on this machine (issue "xenolith-blkd", item 3): nbdkit
//! (the memory plugin; the delay filter to keep requests in flight) and qemu-nbd (a file
//! export), both installed by `ci/test` (ci/packages). Each server listens on a Unix socket of
//! its own in a temporary directory and is killed when its test ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xen_blk::storage::{BlkError, Completion, Op, Storage};
use xen_blk_host::nbd::{NbdDisk, NbdTarget};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(20);

/// A server process, killed on drop.
struct Server {
    child: Child,
    sock: PathBuf,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "xenolith-nbd-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed: ci/test installs it (ci/packages), or apt-get install {}",
        if tool == "qemu-nbd" {
            "qemu-utils"
        } else {
            tool
        }
    );
}

fn wait_for_socket(sock: &Path, child: &mut Child) {
    let end = Instant::now() + LIMIT;
    while !sock.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "the NBD server exited ({st}) before listening on {}",
                sock.display()
            );
        }
        assert!(Instant::now() < end, "no socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nbdkit serving `args` (a plugin and its parameters, filters first) on a Unix socket.
fn nbdkit(tag: &str, filters: &[&str], args: &[&str]) -> Server {
    need("nbdkit");
    let dir = TempDir::new(tag);
    let sock = dir.0.join("nbd.sock");
    nbdkit_at(&sock, filters, args, dir)
}

fn nbdkit_at(sock: &Path, filters: &[&str], args: &[&str], dir: TempDir) -> Server {
    let mut cmd = Command::new("nbdkit");
    cmd.args(["--foreground", "--exit-with-parent", "--unix"])
        .arg(sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for f in filters {
        cmd.arg(format!("--filter={f}"));
    }
    cmd.args(args);
    let mut child = cmd.spawn().expect("run nbdkit");
    wait_for_socket(sock, &mut child);
    Server {
        child,
        sock: sock.to_path_buf(),
        _dir: dir,
    }
}

/// qemu-nbd exporting `file` (raw) as `export` on a Unix socket, read-only if asked.
fn qemu_nbd(tag: &str, file: &Path, export: &str, read_only: bool) -> Server {
    need("qemu-nbd");
    let dir = TempDir::new(tag);
    let sock = dir.0.join("nbd.sock");
    let mut cmd = Command::new("qemu-nbd");
    cmd.arg("--format=raw")
        .arg("--persistent")
        .arg("--shared=4")
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--export-name={export}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if read_only {
        cmd.arg("--read-only");
    }
    cmd.arg(file);
    let mut child = cmd.spawn().expect("run qemu-nbd");
    wait_for_socket(&sock, &mut child);
    Server {
        child,
        sock,
        _dir: dir,
    }
}

fn target(s: &Server, export: &str) -> NbdTarget {
    NbdTarget::parse(&format!("nbd+unix:{}:{export}", s.sock.display())).unwrap()
}

/// Bytes of block `i` of a test: its number, the seed, then a pattern.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(131).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// Submit every op (tag = index), then poll until all completed; completions by tag.
fn run(d: &mut NbdDisk, ops: Vec<Op>) -> BTreeMap<u64, Completion> {
    let n = ops.len();
    let mut out = BTreeMap::new();
    let mut queue: Vec<(u64, Op)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, o)| (i as u64, o))
        .collect();
    queue.reverse();
    let end = Instant::now() + LIMIT;
    while out.len() < n {
        while let Some((tag, op)) = queue.pop() {
            if let Err(busy) = d.submit(tag, op) {
                queue.push((tag, busy.0));
                break;
            }
        }
        d.poll_completions(&mut |c| {
            assert!(
                out.insert(c.tag, c).is_none(),
                "a completion reported twice"
            );
        });
        assert!(Instant::now() < end, "{} of {n} completed", out.len());
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(d.in_flight(), 0);
    out
}

/// 64 writes of 64 KiB in flight at scattered offsets, a flush, 64 reads back: every byte.
fn write_flush_verify(d: &mut NbdDisk) {
    let at = |i: u64| (i * 37 % 200) * 128 + 2048; // 512-byte sectors, 64 KiB apart
    let writes: Vec<Op> = (0..64)
        .map(|i| Op::Write {
            sector: at(i),
            buf: pattern(64 << 10, i),
        })
        .collect();
    for (tag, c) in run(d, writes) {
        assert_eq!(c.result, Ok(()), "write {tag}");
    }
    let f = run(d, vec![Op::Flush]);
    assert_eq!(f[&0].result, Ok(()), "flush");
    let reads: Vec<Op> = (0..64)
        .map(|i| Op::Read {
            sector: at(i),
            buf: vec![0; 64 << 10],
        })
        .collect();
    for (tag, c) in run(d, reads) {
        assert_eq!(c.result, Ok(()), "read {tag}");
        assert!(
            c.buf.unwrap() == pattern(64 << 10, tag),
            "read {tag} differs from what was written"
        );
    }
}

#[test]
fn target_syntax() {
    assert_eq!(
        NbdTarget::parse("nbd:host.example:10809:disk1").unwrap(),
        NbdTarget::Tcp {
            host: "host.example".into(),
            port: 10809,
            export: "disk1".into()
        }
    );
    assert_eq!(
        NbdTarget::parse("nbd:[::1]:10809").unwrap(),
        NbdTarget::Tcp {
            host: "::1".into(),
            port: 10809,
            export: String::new()
        }
    );
    assert_eq!(
        NbdTarget::parse("nbd+unix:/run/nbd.sock:a:b").unwrap(),
        NbdTarget::Unix {
            path: "/run/nbd.sock".into(),
            export: "a:b".into()
        }
    );
    for bad in [
        "nbd:host",
        "nbd:host:port",
        "nbd::10809",
        "nbd+unix:",
        "file:/x",
        "nbd:[::1:10809",
    ] {
        assert!(NbdTarget::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn nbdkit_memory_export_reads_writes_flushes_and_trims() {
    let s = nbdkit("mem", &[], &["memory", "64M"]);
    let mut d = NbdDisk::open(target(&s, "")).unwrap();
    assert_eq!(d.sectors(), (64 * MIB / 512) as u64);
    assert!(!d.read_only());
    let f = d.features();
    assert!(f.flush && f.discard, "{f:?}");
    write_flush_verify(&mut d);
    // Trim the first write's range: the memory plugin gives zeros back.
    let sector = 2048;
    let t = run(
        &mut d,
        vec![Op::Discard {
            sector,
            count: 128,
            secure: false,
        }],
    );
    assert_eq!(t[&0].result, Ok(()));
    let r = run(
        &mut d,
        vec![Op::Read {
            sector,
            buf: vec![0xff; 64 << 10],
        }],
    );
    assert!(r[&0].buf.as_ref().unwrap().iter().all(|&b| b == 0));
    // Past the end: refused before it reaches the server.
    let end = d.sectors();
    let e = run(
        &mut d,
        vec![Op::Read {
            sector: end,
            buf: vec![0; 512],
        }],
    );
    assert_eq!(e[&0].result, Err(BlkError::OutOfRange));
    assert_eq!(d.connects(), 1);
}

#[test]
fn qemu_nbd_file_export_holds_what_was_written() {
    let dir = TempDir::new("qemu-file");
    let file = dir.0.join("disk.img");
    std::fs::write(&file, vec![0u8; 32 * MIB]).unwrap();
    let s = qemu_nbd("qemu", &file, "disk", false);
    let mut d = NbdDisk::open(target(&s, "disk")).unwrap();
    assert_eq!(d.sectors(), (32 * MIB / 512) as u64);
    write_flush_verify(&mut d);
    // After the flush, the file holds the data.
    let bytes = std::fs::read(&file).unwrap();
    let at = 2048 * 512;
    assert!(bytes[at..at + (64 << 10)] == pattern(64 << 10, 0)[..]);
    drop(d);
}

#[test]
fn a_read_only_export_is_served_read_only_and_an_unknown_export_is_refused() {
    let dir = TempDir::new("qemu-ro");
    let file = dir.0.join("disk.img");
    let mut content = vec![0u8; 8 * MIB];
    content[4096..8192].copy_from_slice(&pattern(4096, 9));
    std::fs::write(&file, &content).unwrap();
    let s = qemu_nbd("ro", &file, "ro", true);
    let err = NbdDisk::open(target(&s, "no-such-export")).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    let mut d = NbdDisk::open(target(&s, "ro")).unwrap();
    assert!(d.read_only());
    let c = run(
        &mut d,
        vec![
            Op::Read {
                sector: 8,
                buf: vec![0; 4096],
            },
            Op::Write {
                sector: 8,
                buf: vec![1; 4096],
            },
        ],
    );
    assert_eq!(c[&0].result, Ok(()));
    assert!(c[&0].buf.as_ref().unwrap()[..] == pattern(4096, 9)[..]);
    assert_eq!(c[&1].result, Err(BlkError::ReadOnly));
    assert!(
        std::fs::read(&file).unwrap() == content,
        "the file is unchanged"
    );
}

/// Requests in flight when the server is killed complete with an error, each once; the
/// next request connects again (a new server on the same socket) and is served.
#[test]
fn a_server_killed_mid_io_fails_what_was_in_flight_and_the_disk_reconnects() {
    let mut s = nbdkit("kill", &["delay"], &["memory", "16M", "delay-read=2"]);
    let t = target(&s, "");
    let mut d = NbdDisk::open(t).unwrap();
    for i in 0..16u64 {
        d.submit(
            i,
            Op::Read {
                sector: i * 8,
                buf: vec![0; 4096],
            },
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.in_flight(), 16);
    let _ = s.child.kill();
    let _ = s.child.wait();
    let mut done = BTreeMap::new();
    let end = Instant::now() + LIMIT;
    while done.len() < 16 {
        d.poll_completions(&mut |c| {
            assert!(done.insert(c.tag, c.result).is_none(), "reported twice");
        });
        assert!(Instant::now() < end, "{} of 16 completed", done.len());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(done.values().all(|r| *r == Err(BlkError::Io)), "{done:?}");
    assert_eq!(d.in_flight(), 0);
    // A new server on the same socket (the same size): the next requests connect again.
    let sock = s.sock.clone();
    let _ = std::fs::remove_file(&sock);
    let dir = std::mem::replace(&mut s._dir, TempDir::new("kill-spare"));
    let _s2 = nbdkit_at(&sock, &[], &["memory", "16M"], dir);
    std::thread::sleep(Duration::from_millis(1100)); // past the one-second retry spacing
    let c = run(
        &mut d,
        vec![
            Op::Write {
                sector: 0,
                buf: pattern(4096, 3),
            },
            Op::Read {
                sector: 8,
                buf: vec![0; 4096],
            },
        ],
    );
    assert_eq!(c[&0].result, Ok(()));
    assert_eq!(c[&1].result, Ok(()));
    assert_eq!(d.connects(), 2);
}
