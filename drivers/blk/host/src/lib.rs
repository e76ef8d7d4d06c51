//! blkif storage on a host (std): [`FileDisk`], a file or block device that blkback serves
//! with many requests in flight.
//!
//! [`Pool`] runs a synchronous [`SyncDisk`] (`pread`/`pwrite`-style calls) on a few worker
//! threads and presents it as an asynchronous [`Storage`]: `submit` queues the op and returns,
//! workers take ops from one queue and run them concurrently, `poll_completions` drains what
//! they finished, in the order they finished it. [`FileDisk`] is a `Pool` over [`FileIo`]:
//! `read_exact_at`/`write_all_at`, flush = `fdatasync` (`File::sync_data`), discard = a hole
//! punched with `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` (as Linux's loop
//! driver does for `REQ_OP_DISCARD` on a file).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use xen_blk::storage::{check_op, BlkError, Busy, Completion, Features, Op, Storage, SECTOR};

/// A synchronous block device: each call does one op and returns when it is done. Called
/// from several worker threads at once.
pub trait SyncDisk: Send + Sync + 'static {
    /// Size in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Logical block size in bytes.
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    /// Writes and discards are refused.
    fn read_only(&self) -> bool;
    /// Optional ops.
    fn features(&self) -> Features;
    /// Do `op` (already checked against size, alignment and read-only by the pool).
    fn run(&self, op: &mut Op) -> Result<(), BlkError>;
}

struct Queue {
    jobs: VecDeque<(u64, Op)>,
    closed: bool,
}

struct Shared<B> {
    io: B,
    queue: Mutex<Queue>,
    ready: Condvar,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A [`SyncDisk`] on `workers` threads, as a [`Storage`] with up to `depth` ops in flight.
pub struct Pool<B: SyncDisk> {
    shared: Arc<Shared<B>>,
    done_rx: Receiver<Completion>,
    refused: VecDeque<Completion>,
    in_flight: usize,
    depth: usize,
    workers: Vec<JoinHandle<()>>,
    sectors: u64,
    sector_size: u32,
    read_only: bool,
    features: Features,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: SyncDisk> Pool<B> {
    /// Run `io` on `workers` threads (at least 1), accepting up to `depth` ops in flight.
    pub fn new(io: B, workers: usize, depth: usize) -> Pool<B> {
        let (sectors, sector_size, read_only, features) = (
            io.sectors(),
            io.sector_size(),
            io.read_only(),
            io.features(),
        );
        let shared = Arc::new(Shared {
            io,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let (tx, done_rx) = channel();
        let workers = (0..workers.max(1))
            .map(|i| {
                let (s, tx) = (shared.clone(), tx.clone());
                std::thread::Builder::new()
                    .name(format!("blk-io-{i}"))
                    .spawn(move || worker(&s, &tx))
                    .expect("spawning a storage worker")
            })
            .collect();
        Pool {
            shared,
            done_rx,
            refused: VecDeque::new(),
            in_flight: 0,
            depth: depth.max(1),
            workers,
            sectors,
            sector_size,
            read_only,
            features,
        }
    }

    /// The device.
    pub fn io(&self) -> &B {
        &self.shared.io
    }

    /// Most ops the workers ran at the same time so far.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// Wait (blocking this thread) until at least one op completes or none is in flight.
    pub fn wait_completion(&mut self) {
        if self.in_flight == 0 || !self.refused.is_empty() {
            return;
        }
        if let Ok(c) = self.done_rx.recv() {
            self.in_flight -= 1;
            self.refused.push_back(c);
        }
    }
}

fn worker<B: SyncDisk>(s: &Shared<B>, tx: &Sender<Completion>) {
    loop {
        let (tag, mut op) = {
            let mut q = lock(&s.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = s.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_active.fetch_max(now, Ordering::SeqCst);
        let status = s.io.run(&mut op);
        s.active.fetch_sub(1, Ordering::SeqCst);
        if tx.send(Completion::of(tag, op, status)).is_err() {
            return;
        }
    }
}

impl<B: SyncDisk> Storage for Pool<B> {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn features(&self) -> Features {
        self.features
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        if self.in_flight >= self.depth {
            return Err(Busy(op));
        }
        if let Err(e) = check_op(
            &op,
            self.sectors,
            self.sector_size,
            self.read_only,
            self.features,
        ) {
            self.refused.push_back(Completion::of(tag, op, Err(e)));
            return Ok(());
        }
        lock(&self.shared.queue).jobs.push_back((tag, op));
        self.in_flight += 1;
        self.shared.ready.notify_one();
        Ok(())
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.refused.pop_front() {
            done(c);
            n += 1;
        }
        while let Ok(c) = self.done_rx.try_recv() {
            self.in_flight -= 1;
            done(c);
            n += 1;
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.in_flight + self.refused.len()
    }
}

impl<B: SyncDisk> Drop for Pool<B> {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A file or block device, read and written at offsets (no shared file position), safe to
/// use from several threads at once.
#[derive(Debug)]
pub struct FileIo {
    file: File,
    sectors: u64,
    read_only: bool,
    discard: bool,
}

impl FileIo {
    /// Open `path` (read-only or read-write). Its size is taken once, by seeking to the end (a
    /// block device's metadata length is 0), rounded down to whole sectors.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileIo> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        let is_file = file.metadata()?.is_file();
        Ok(FileIo {
            file,
            sectors: len / SECTOR,
            read_only,
            // Holes are punched in regular files; a block device would need BLKDISCARD.
            discard: is_file && !read_only,
        })
    }
}

fn io_err(e: io::Error) -> BlkError {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => BlkError::Unsupported,
        Some(libc::EROFS) | Some(libc::EBADF) | Some(libc::EPERM) => BlkError::ReadOnly,
        _ => BlkError::Io,
    }
}

impl SyncDisk for FileIo {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn features(&self) -> Features {
        Features {
            flush: true,
            discard: self.discard,
            secure_discard: false,
            discard_granularity: 4096,
        }
    }
    fn run(&self, op: &mut Op) -> Result<(), BlkError> {
        match op {
            Op::Read { sector, buf } => self
                .file
                .read_exact_at(buf, *sector * SECTOR)
                .map_err(io_err),
            Op::Write { sector, buf } => self
                .file
                .write_all_at(buf, *sector * SECTOR)
                .map_err(io_err),
            Op::Flush => self.file.sync_data().map_err(io_err),
            Op::Discard { sector, count, .. } => {
                let (Ok(off), Ok(len)) = (
                    libc::off_t::try_from(*sector * SECTOR),
                    libc::off_t::try_from(*count * SECTOR),
                ) else {
                    return Err(BlkError::OutOfRange);
                };
                if len == 0 {
                    return Ok(());
                }
                // SAFETY: fallocate on a descriptor we own (kept open by `self.file` for the
                // whole call); it takes no pointers.
                let rc = unsafe {
                    libc::fallocate(
                        self.file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off,
                        len,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io_err(io::Error::last_os_error()))
                }
            }
        }
    }
}

/// A file or block device as a [`Storage`]: [`FileIo`] on a [`Pool`] of worker threads.
pub type FileDisk = Pool<FileIo>;

/// Worker threads of [`open`] (ops run concurrently, up to this many).
pub const DEFAULT_WORKERS: usize = 4;
/// Ops in flight [`open`] accepts before `submit` answers `Busy`.
pub const DEFAULT_DEPTH: usize = 128;

/// Open `path` as a [`FileDisk`] with [`DEFAULT_WORKERS`] threads and [`DEFAULT_DEPTH`].
pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileDisk> {
    Ok(Pool::new(
        FileIo::open(path, read_only)?,
        DEFAULT_WORKERS,
        DEFAULT_DEPTH,
    ))
}
