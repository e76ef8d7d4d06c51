//! FileDisk on a temporary file, and the worker pool's concurrency (observed, not timed).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use xen_blk::storage::{BlkError, Completion, Features, Op, Storage};
use xen_blk_host::{open, Pool, SyncDisk};

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, len: u64) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "xenolith-filedisk-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Submit and wait for the one completion.
fn run(s: &mut xen_blk_host::FileDisk, op: Op) -> Completion {
    s.submit(1, op).unwrap();
    loop {
        s.wait_completion();
        let mut got = None;
        s.poll_completions(&mut |c| got = Some(c));
        if let Some(c) = got {
            return c;
        }
    }
}

#[test]
fn read_write_flush_discard_on_a_file() {
    let t = TempFile::new("rw", 1 << 20);
    let mut d = open(&t.0, false).unwrap();
    assert_eq!(d.sectors(), 2048);
    assert!(!d.read_only());
    assert!(d.features().discard && d.features().flush);
    let c = run(
        &mut d,
        Op::Write {
            sector: 8,
            buf: vec![0xcd; 8192],
        },
    );
    assert_eq!(c.result, Ok(()));
    assert_eq!(run(&mut d, Op::Flush).result, Ok(()));
    let c = run(
        &mut d,
        Op::Read {
            sector: 8,
            buf: vec![0; 8192],
        },
    );
    assert_eq!(c.buf.unwrap(), vec![0xcd; 8192]);
    // Punch the first 4 KiB of it: reads as zeros, the file keeps its size, fewer blocks.
    let blocks = std::fs::metadata(&t.0).unwrap().blocks();
    let c = run(
        &mut d,
        Op::Discard {
            sector: 8,
            count: 8,
            secure: false,
        },
    );
    assert_eq!(c.result, Ok(()));
    let c = run(
        &mut d,
        Op::Read {
            sector: 8,
            buf: vec![1; 8192],
        },
    );
    let b = c.buf.unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0));
    assert!(b[4096..].iter().all(|&x| x == 0xcd));
    let m = std::fs::metadata(&t.0).unwrap();
    assert_eq!(m.len(), 1 << 20);
    assert!(m.blocks() < blocks, "a hole was punched");
    // Refusals: beyond the end, not whole sectors, secure discard (not offered).
    let c = run(
        &mut d,
        Op::Read {
            sector: 2047,
            buf: vec![0; 1024],
        },
    );
    assert_eq!(c.result, Err(BlkError::OutOfRange));
    let c = run(
        &mut d,
        Op::Write {
            sector: 0,
            buf: vec![0; 100],
        },
    );
    assert_eq!(c.result, Err(BlkError::Misaligned));
    let c = run(
        &mut d,
        Op::Discard {
            sector: 0,
            count: 1,
            secure: true,
        },
    );
    assert_eq!(c.result, Err(BlkError::Unsupported));
}

#[test]
fn read_only_file() {
    let t = TempFile::new("ro", 4096);
    let mut d = open(&t.0, true).unwrap();
    assert!(d.read_only());
    let c = run(
        &mut d,
        Op::Write {
            sector: 0,
            buf: vec![1; 512],
        },
    );
    assert_eq!(c.result, Err(BlkError::ReadOnly));
    assert_eq!(c.buf, Some(vec![1; 512]));
    assert!(std::fs::read(&t.0).unwrap().iter().all(|&x| x == 0));
}

/// A device whose reads each wait until `want` reads are running at the same time: it only
/// gets past that point if the pool really runs them concurrently.
struct Rendezvous {
    want: usize,
    inside: Mutex<usize>,
    cv: Condvar,
    met: AtomicUsize,
}

impl SyncDisk for Rendezvous {
    fn sectors(&self) -> u64 {
        64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn features(&self) -> Features {
        Features::default()
    }
    fn run(&self, _op: &mut Op) -> Result<(), BlkError> {
        let mut n = self.inside.lock().unwrap();
        *n += 1;
        self.cv.notify_all();
        // A guard against a hang if the pool were serial (then this fails, not waits forever).
        let (n, timeout) = self
            .cv
            .wait_timeout_while(n, Duration::from_secs(20), |n| *n < self.want)
            .unwrap();
        if timeout.timed_out() && *n < self.want {
            return Err(BlkError::Io);
        }
        self.met.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn ops_really_run_concurrently_in_the_pool() {
    let io = Rendezvous {
        want: 3,
        inside: Mutex::new(0),
        cv: Condvar::new(),
        met: AtomicUsize::new(0),
    };
    let mut p = Pool::new(io, 4, 16);
    for tag in 0..3 {
        p.submit(
            tag,
            Op::Read {
                sector: tag,
                buf: vec![0; 512],
            },
        )
        .unwrap();
    }
    assert_eq!(p.in_flight(), 3, "submit does not wait");
    let mut done = Vec::new();
    while done.len() < 3 {
        p.wait_completion();
        p.poll_completions(&mut |c| done.push(c));
    }
    assert!(done.iter().all(|c| c.result == Ok(())), "{done:?}");
    assert_eq!(p.io().met.load(Ordering::SeqCst), 3);
    assert!(p.max_concurrent() >= 3);
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [0, 1, 2]);
}

#[test]
fn busy_beyond_depth_gives_the_op_back() {
    let t = TempFile::new("busy", 4096);
    let mut p = Pool::new(xen_blk_host::FileIo::open(&t.0, false).unwrap(), 1, 2);
    p.submit(1, Op::Flush).unwrap();
    p.submit(2, Op::Flush).unwrap();
    assert_eq!(
        p.submit(3, Op::Flush),
        Err(xen_blk::storage::Busy(Op::Flush))
    );
    let mut n = 0;
    while n < 2 {
        p.wait_completion();
        n += p.poll_completions(&mut |_| {});
    }
    p.submit(3, Op::Flush).unwrap();
}
