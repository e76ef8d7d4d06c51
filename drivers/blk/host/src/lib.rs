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
//!
//! [`Faulty`] wraps the file and makes chosen calls fail (an errno, a short transfer, a delay)
//! to test what a frontend sees when the host's storage fails.
//!
//! [`nbd::NbdDisk`] serves an NBD export (a client of the NBD protocol: many requests in flight
//! on one connection, flush and trim, reconnection with bounded retries).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use xen_blk::storage::{check_op, BlkError, Busy, Completion, Features, Op, Storage, SECTOR};

pub mod nbd;

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

/// The file under a [`FileIo`]: positioned reads and writes ([`FileExt`]: `FileIo` calls its
/// `read_exact_at` and `write_all_at`, std's loops over `pread`/`pwrite`), `fdatasync` and hole
/// punching. A [`File`]; or a wrapper of one, such as [`Faulty`], that changes what the calls
/// return — the transfer loops, the errno mapping and the pool above it stay the real ones.
pub trait Backing: FileExt + Send + Sync + 'static {
    /// `fdatasync`: the data written so far (and the metadata needed to read it) is durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Deallocate `len` bytes at `offset` (reading as zeros after), keeping the size.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}

impl Backing for File {
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate on a descriptor we own (kept open by `self` for the whole call);
        // it takes no pointers.
        let rc = unsafe {
            libc::fallocate(
                self.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A file or block device, read and written at offsets (no shared file position), safe to
/// use from several threads at once.
///
/// Errors: each op that fails is answered with its error and the device goes on serving.
/// A short `pread`/`pwrite` is continued and `EINTR` retried (std's `read_exact_at` and
/// `write_all_at`); a read that meets the end of the file (it shrank since it was opened) or a
/// write that moves nothing is [`BlkError::Io`]; so are `EIO`, `ENOSPC`, `EDQUOT` and `EFBIG`;
/// `EOPNOTSUPP` is [`BlkError::Unsupported`], `EROFS`/`EBADF`/`EPERM` [`BlkError::ReadOnly`].
///
/// Flushes run one at a time, and once one fails every later flush fails too: after a failed
/// `fdatasync` Linux may have dropped the dirty pages it could not write (marking them clean)
/// and reports the error to each open file once, so a later `fdatasync` can succeed although
/// data written before it is lost; acknowledging that flush would be a lie. Reads and writes
/// go on; a flush succeeds again only on the file opened anew.
#[derive(Debug)]
pub struct FileIo<F = File> {
    file: F,
    sectors: u64,
    read_only: bool,
    discard: bool,
    /// The first failed flush's error, returned by every flush after it.
    sync_failed: Mutex<Option<BlkError>>,
}

impl FileIo<File> {
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
            sync_failed: Mutex::new(None),
        })
    }
}

impl<F: Backing> FileIo<F> {
    /// The same device over `wrap(file)` (a [`Faulty`] file, say).
    pub fn wrap<G: Backing>(self, wrap: impl FnOnce(F) -> G) -> FileIo<G> {
        FileIo {
            file: wrap(self.file),
            sectors: self.sectors,
            read_only: self.read_only,
            discard: self.discard,
            sync_failed: self.sync_failed,
        }
    }

    /// The file.
    pub fn file(&self) -> &F {
        &self.file
    }

    fn flush(&self) -> Result<(), BlkError> {
        // Held across the fdatasync: a flush that runs beside a failing one cannot succeed on
        // an error the other consumed.
        let mut failed = lock(&self.sync_failed);
        if let Some(e) = *failed {
            return Err(e);
        }
        let e = loop {
            match self.file.sync_data() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break io_err(e),
            }
        };
        *failed = Some(e);
        Err(e)
    }
}

/// An errno (or a std error without one) as the op's error: `EOPNOTSUPP` is
/// [`BlkError::Unsupported`] (`BLKIF_RSP_EOPNOTSUPP`: a file system that cannot punch holes);
/// `EROFS`, `EBADF` and `EPERM` are [`BlkError::ReadOnly`]; anything else — `EIO`, `ENOSPC`,
/// `EDQUOT`, `EFBIG`, an unexpected end of file, a write of zero bytes — is [`BlkError::Io`].
/// All but `Unsupported` reach the frontend as `BLKIF_RSP_ERROR` for that request alone.
fn io_err(e: io::Error) -> BlkError {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => BlkError::Unsupported,
        Some(libc::EROFS) | Some(libc::EBADF) | Some(libc::EPERM) => BlkError::ReadOnly,
        // EIO, ENOSPC, EDQUOT, EFBIG, ... and errors without an errno.
        _ => BlkError::Io,
    }
}

impl<F: Backing> SyncDisk for FileIo<F> {
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
            Op::Flush => self.flush(),
            Op::Discard { sector, count, .. } => {
                let (off, len) = (*sector * SECTOR, *count * SECTOR);
                if len == 0 {
                    return Ok(());
                }
                loop {
                    match self.file.punch_hole(off, len) {
                        Ok(()) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(io_err(e)),
                    }
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

/// A call a [`Faulty`] file makes, as a [`Rule`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `pread` (each call of `read_exact_at`'s loop).
    Read,
    /// `pwrite` (each call of `write_all_at`'s loop).
    Write,
    /// `fdatasync`.
    Sync,
    /// `fallocate(PUNCH_HOLE)`.
    Punch,
}

/// What a [`Rule`] does to a call it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail with this errno (`libc::EIO`, `ENOSPC`, `EINTR`, ...); nothing is transferred.
    Errno(i32),
    /// Transfer at most this many bytes (a short `pread`/`pwrite`; 0: end of file, or a write
    /// that wrote nothing). No effect on `Sync` and `Punch`.
    Short(usize),
    /// Sleep this long, then make the call (an op kept in flight).
    Delay(Duration),
}

/// Which calls of a [`Faulty`] file fail, and how: the calls of kind `call` whose bytes
/// overlap the rule's range, the first `after` of them let through, the next `times` given
/// the fault.
#[derive(Clone, Debug)]
pub struct Rule {
    call: Call,
    fault: Fault,
    bytes: Range<u64>,
    after: u64,
    times: u64,
    matched: u64,
}

impl Rule {
    /// The next call of kind `call` gets `fault`.
    pub fn new(call: Call, fault: Fault) -> Rule {
        Rule {
            call,
            fault,
            bytes: 0..u64::MAX,
            after: 0,
            times: 1,
            matched: 0,
        }
    }
    /// Only calls that touch these 512-byte sectors (`Sync` touches every sector).
    pub fn sectors(mut self, sectors: Range<u64>) -> Rule {
        self.bytes = sectors.start.saturating_mul(SECTOR)..sectors.end.saturating_mul(SECTOR);
        self
    }
    /// Let the first `n` matching calls through.
    pub fn after(mut self, n: u64) -> Rule {
        self.after = n;
        self
    }
    /// Give the fault to `n` matching calls (1 unless told).
    pub fn times(mut self, n: u64) -> Rule {
        self.times = n;
        self
    }
    /// Give the fault to every matching call (after the first [`after`](Self::after)).
    pub fn always(self) -> Rule {
        self.times(u64::MAX)
    }
    fn matches(&mut self, call: Call, offset: u64, len: u64) -> Option<Fault> {
        let touches = call == Call::Sync
            || (offset < self.bytes.end && offset.saturating_add(len.max(1)) > self.bytes.start);
        if call != self.call || !touches {
            return None;
        }
        self.matched += 1;
        (self.matched > self.after && self.matched - self.after <= self.times).then_some(self.fault)
    }
}

#[derive(Debug, Default)]
struct Plan {
    rules: Vec<Rule>,
    injected: u64,
}

/// The fault plan of one or more [`Faulty`] files: shared (a clone is the same plan) and
/// changed while the files are in use, from any thread.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    /// No faults yet.
    pub fn new() -> Faults {
        Faults::default()
    }
    /// Add a rule (the first rule that gives a call a fault decides it).
    pub fn add(&self, rule: Rule) {
        lock(&self.0).rules.push(rule);
    }
    /// Remove every rule.
    pub fn clear(&self) {
        lock(&self.0).rules.clear();
    }
    /// Faults given so far.
    pub fn injected(&self) -> u64 {
        lock(&self.0).injected
    }
    fn take(&self, call: Call, offset: u64, len: usize) -> Option<Fault> {
        let mut plan = lock(&self.0);
        // Every matching rule counts the call, so each rule's `after` counts its own calls.
        let mut fault = None;
        for r in &mut plan.rules {
            let f = r.matches(call, offset, len as u64);
            fault = fault.or(f);
        }
        plan.injected += u64::from(fault.is_some());
        fault
    }
}

/// A [`Backing`] file whose calls fail as a [`Faults`] plan says, for testing what errors of
/// the host's storage become: `FileIo::open(path, false)?.wrap(|f| Faulty::new(f, &faults))`.
#[derive(Debug)]
pub struct Faulty<F> {
    inner: F,
    faults: Faults,
}

impl<F: Backing> Faulty<F> {
    /// `inner` with the faults of `faults` (shared).
    pub fn new(inner: F, faults: &Faults) -> Faulty<F> {
        Faulty {
            inner,
            faults: faults.clone(),
        }
    }
    /// The file wrapped.
    pub fn inner(&self) -> &F {
        &self.inner
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl<F: Backing> FileExt for Faulty<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self.faults.take(Call::Read, offset, buf.len()) {
            None => self.inner.read_at(buf, offset),
            Some(Fault::Errno(e)) => Err(errno(e)),
            Some(Fault::Short(0)) => Ok(0),
            Some(Fault::Short(n)) => {
                let n = n.min(buf.len());
                self.inner.read_at(&mut buf[..n], offset)
            }
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.read_at(buf, offset)
            }
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        match self.faults.take(Call::Write, offset, buf.len()) {
            None => self.inner.write_at(buf, offset),
            Some(Fault::Errno(e)) => Err(errno(e)),
            Some(Fault::Short(0)) => Ok(0),
            Some(Fault::Short(n)) => self.inner.write_at(&buf[..n.min(buf.len())], offset),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.write_at(buf, offset)
            }
        }
    }
}

impl<F: Backing> Backing for Faulty<F> {
    fn sync_data(&self) -> io::Result<()> {
        match self.faults.take(Call::Sync, 0, 0) {
            Some(Fault::Errno(e)) => Err(errno(e)),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.sync_data()
            }
            None | Some(Fault::Short(_)) => self.inner.sync_data(),
        }
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        match self.faults.take(Call::Punch, offset, n) {
            Some(Fault::Errno(e)) => Err(errno(e)),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.punch_hole(offset, len)
            }
            None | Some(Fault::Short(_)) => self.inner.punch_hole(offset, len),
        }
    }
}
