//! FileDisk when the file fails: errno values, short and interrupted transfers, a file that
//! shrank, failed flushes — injected below `FileIo` with a [`Faulty`] file, so std's
//! `read_exact_at`/`write_all_at` loops, the errno mapping and the worker pool are the real
//! ones. Each failed op is answered with its error; the ops around it and after it succeed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use xen_blk::storage::{BlkError, Completion, Op, Storage};
use xen_blk_host::{Call, Fault, Faults, Faulty, FileIo, Pool, Rule};

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, len: u64) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "xenolith-faults-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        TempFile(p)
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type FaultyDisk = Pool<FileIo<Faulty<std::fs::File>>>;

/// A 1 MiB file served by a pool of 4 workers over a faulty file.
fn faulty(name: &str) -> (TempFile, FaultyDisk, Faults) {
    let t = TempFile::new(name, 1 << 20);
    let faults = Faults::new();
    let io = FileIo::open(&t.0, false)
        .unwrap()
        .wrap(|f| Faulty::new(f, &faults));
    (t, Pool::new(io, 4, 64), faults)
}

/// Submit and wait for the one completion.
fn run(s: &mut FaultyDisk, op: Op) -> Completion {
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

fn write(s: &mut FaultyDisk, sector: u64, fill: u8, len: usize) -> Result<(), BlkError> {
    let c = run(
        s,
        Op::Write {
            sector,
            buf: vec![fill; len],
        },
    );
    assert_eq!(
        c.buf.as_deref(),
        Some(&vec![fill; len][..]),
        "buffer given back"
    );
    c.result
}

fn read(s: &mut FaultyDisk, sector: u64, len: usize) -> Result<Vec<u8>, BlkError> {
    let c = run(
        s,
        Op::Read {
            sector,
            buf: vec![0xee; len],
        },
    );
    c.result.map(|()| c.buf.unwrap())
}

#[test]
fn errno_of_a_write_is_that_writes_error_and_the_disk_goes_on() {
    let (t, mut d, faults) = faulty("errno");
    let cases = [
        (libc::EIO, BlkError::Io),
        (libc::ENOSPC, BlkError::Io),
        (libc::EDQUOT, BlkError::Io),
        (libc::EFBIG, BlkError::Io),
        (libc::EROFS, BlkError::ReadOnly),
    ];
    for (i, (e, want)) in cases.into_iter().enumerate() {
        let sector = i as u64 * 8;
        faults.add(Rule::new(Call::Write, Fault::Errno(e)).sectors(sector..sector + 8));
        assert_eq!(write(&mut d, sector, 0x11, 4096), Err(want), "errno {e}");
        // The fault was one call: the same write again, and a read of it, succeed.
        assert_eq!(write(&mut d, sector, i as u8 + 1, 4096), Ok(()));
        assert_eq!(read(&mut d, sector, 4096), Ok(vec![i as u8 + 1; 4096]));
    }
    assert_eq!(faults.injected(), cases.len() as u64);
    // A read error, and a discard the file system refuses (EOPNOTSUPP: not supported).
    faults.add(Rule::new(Call::Read, Fault::Errno(libc::EIO)));
    assert_eq!(read(&mut d, 0, 512), Err(BlkError::Io));
    faults.add(Rule::new(Call::Punch, Fault::Errno(libc::EOPNOTSUPP)));
    let c = run(
        &mut d,
        Op::Discard {
            sector: 0,
            count: 8,
            secure: false,
        },
    );
    assert_eq!(c.result, Err(BlkError::Unsupported));
    assert_eq!(read(&mut d, 0, 512), Ok(vec![1; 512]));
    let bytes = t.bytes();
    for i in 0..cases.len() {
        assert!(bytes[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&x| x == i as u8 + 1));
    }
}

#[test]
fn short_and_interrupted_transfers_are_continued() {
    let (t, mut d, faults) = faulty("short");
    // Three pwrites of 512 bytes, two EINTRs, then the rest: one whole write.
    faults.add(Rule::new(Call::Write, Fault::Short(512)).times(3));
    faults.add(
        Rule::new(Call::Write, Fault::Errno(libc::EINTR))
            .after(3)
            .times(2),
    );
    assert_eq!(write(&mut d, 16, 0x42, 8192), Ok(()));
    assert_eq!(faults.injected(), 5);
    assert!(t.bytes()[16 * 512..16 * 512 + 8192]
        .iter()
        .all(|&x| x == 0x42));
    // Reads the same way: short preads of 100 bytes, an EINTR.
    faults.clear();
    faults.add(Rule::new(Call::Read, Fault::Short(100)).times(4));
    faults.add(
        Rule::new(Call::Read, Fault::Errno(libc::EINTR))
            .after(4)
            .times(1),
    );
    assert_eq!(read(&mut d, 16, 8192), Ok(vec![0x42; 8192]));
    assert_eq!(faults.injected(), 10);
    // An interrupted fdatasync and hole punch are retried too.
    faults.add(Rule::new(Call::Sync, Fault::Errno(libc::EINTR)).times(2));
    assert_eq!(run(&mut d, Op::Flush).result, Ok(()));
    faults.add(Rule::new(Call::Punch, Fault::Errno(libc::EINTR)));
    let c = run(
        &mut d,
        Op::Discard {
            sector: 16,
            count: 8,
            secure: false,
        },
    );
    assert_eq!(c.result, Ok(()));
    assert_eq!(faults.injected(), 13);
    assert_eq!(read(&mut d, 16, 4096), Ok(vec![0; 4096]));
}

#[test]
fn a_transfer_that_moves_nothing_is_an_error() {
    let (t, mut d, faults) = faulty("zero");
    // pwrite returning 0 after part of the write: WriteZero, not a loop for ever.
    faults.add(Rule::new(Call::Write, Fault::Short(1024)));
    faults.add(Rule::new(Call::Write, Fault::Short(0)).after(1));
    assert_eq!(write(&mut d, 0, 0x33, 4096), Err(BlkError::Io));
    // A partial write, then the file system is full: the write fails (its sectors hold what
    // they hold: blkif leaves them undefined), the next write succeeds.
    faults.clear();
    faults.add(Rule::new(Call::Write, Fault::Short(1536)));
    faults.add(Rule::new(Call::Write, Fault::Errno(libc::ENOSPC)).after(1));
    assert_eq!(write(&mut d, 8, 0x44, 4096), Err(BlkError::Io));
    assert_eq!(write(&mut d, 16, 0x55, 4096), Ok(()));
    // pread returning 0 (end of file) in the middle of a read.
    faults.clear();
    faults.add(Rule::new(Call::Read, Fault::Short(512)));
    faults.add(Rule::new(Call::Read, Fault::Short(0)).after(1));
    assert_eq!(read(&mut d, 16, 4096), Err(BlkError::Io));
    assert_eq!(read(&mut d, 16, 4096), Ok(vec![0x55; 4096]));
    // For real: the file shrinks under the disk (its size was taken at open). A read that
    // meets the new end is an error, one before it is served.
    faults.clear();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(64 * 512 + 1000)
        .unwrap();
    assert_eq!(d.sectors(), 2048);
    assert_eq!(read(&mut d, 64, 4096), Err(BlkError::Io));
    assert_eq!(read(&mut d, 1000, 512), Err(BlkError::Io));
    assert_eq!(read(&mut d, 16, 4096), Ok(vec![0x55; 4096]));
}

#[test]
fn the_nth_op_and_a_sector_range() {
    let (_t, mut d, faults) = faulty("nth");
    // The third write anywhere, and every write touching sectors 100..101.
    faults.add(Rule::new(Call::Write, Fault::Errno(libc::EIO)).after(2));
    faults.add(
        Rule::new(Call::Write, Fault::Errno(libc::EIO))
            .sectors(100..101)
            .always(),
    );
    assert_eq!(write(&mut d, 0, 1, 512), Ok(()));
    assert_eq!(write(&mut d, 1, 1, 512), Ok(()));
    assert_eq!(write(&mut d, 2, 1, 512), Err(BlkError::Io));
    assert_eq!(write(&mut d, 3, 1, 512), Ok(()));
    for _ in 0..3 {
        // Overlapping the range at its start, or at its end: both touch sector 100.
        assert_eq!(write(&mut d, 96, 1, 4096), Err(BlkError::Io));
        assert_eq!(write(&mut d, 100, 1, 512), Err(BlkError::Io));
        assert_eq!(write(&mut d, 101, 1, 512), Ok(()));
        assert_eq!(write(&mut d, 92, 1, 4096), Ok(()));
    }
    assert_eq!(faults.injected(), 7);
}

#[test]
fn after_a_failed_flush_every_flush_fails_but_io_goes_on() {
    let (t, mut d, faults) = faulty("flush");
    assert_eq!(write(&mut d, 0, 0x61, 4096), Ok(()));
    faults.add(Rule::new(Call::Sync, Fault::Errno(libc::EIO)));
    assert_eq!(run(&mut d, Op::Flush).result, Err(BlkError::Io));
    // The fault was one fdatasync, and the next one would succeed: Linux reports a writeback
    // error once, so it would — while the pages it could not write may be gone. Not acked.
    assert_eq!(faults.injected(), 1);
    for _ in 0..3 {
        assert_eq!(run(&mut d, Op::Flush).result, Err(BlkError::Io));
    }
    assert_eq!(faults.injected(), 1, "no fdatasync after the failed one");
    // Reads and writes go on.
    assert_eq!(write(&mut d, 8, 0x62, 4096), Ok(()));
    assert_eq!(read(&mut d, 0, 8192).unwrap()[..4096], [0x61; 4096]);
    drop(d);
    // The file opened anew flushes again.
    let mut d = Pool::new(
        FileIo::open(&t.0, false)
            .unwrap()
            .wrap(|f| Faulty::new(f, &faults)),
        1,
        4,
    );
    assert_eq!(run(&mut d, Op::Flush).result, Ok(()));
}

#[test]
fn ops_around_a_failing_one_succeed() {
    // 32 writes in flight on 4 workers; writes to two blocks fail, two are slow.
    let (t, mut d, faults) = faulty("around");
    faults.add(Rule::new(Call::Write, Fault::Errno(libc::EIO)).sectors(40..48));
    faults.add(Rule::new(Call::Write, Fault::Errno(libc::ENOSPC)).sectors(80..88));
    faults.add(
        Rule::new(Call::Write, Fault::Delay(Duration::from_millis(50)))
            .sectors(0..16)
            .times(2),
    );
    for i in 0..32u64 {
        d.submit(
            i,
            Op::Write {
                sector: i * 8,
                buf: vec![i as u8 + 1; 4096],
            },
        )
        .unwrap();
    }
    let mut done = Vec::new();
    while done.len() < 32 {
        d.wait_completion();
        d.poll_completions(&mut |c| done.push((c.tag, c.result)));
    }
    done.sort_by_key(|&(tag, _)| tag);
    assert_eq!(done.len(), 32);
    for (tag, r) in done {
        let want = if tag == 5 || tag == 10 {
            Err(BlkError::Io)
        } else {
            Ok(())
        };
        assert_eq!(r, want, "write {tag}");
    }
    assert_eq!(run(&mut d, Op::Flush).result, Ok(()));
    let bytes = t.bytes();
    for i in 0..32usize {
        let want = if i == 5 || i == 10 { 0 } else { i as u8 + 1 };
        assert!(
            bytes[i * 4096..(i + 1) * 4096].iter().all(|&x| x == want),
            "block {i}"
        );
    }
}
