//! blkfront: the [`BlockDevice`] API, its data path over a blkif ring, and the XenBus glue.
//!
//! - [`BlockDevice`]: what an application (or a blkfront-backed storage) uses — sizes,
//!   non-blocking [`submit`](BlockDevice::submit) + [`poll`](BlockDevice::poll) with many
//!   requests in flight, and blocking [`read`](BlockDevice::read) / [`write`](BlockDevice::write)
//!   / [`flush`](BlockDevice::flush) / [`discard`](BlockDevice::discard) built on them.
//! - [`Buffer`]: page-aligned I/O memory the frontend can grant (from
//!   [`BlockDevice::alloc_buffer`], or caller memory through [`Buffer::from_raw`]).
//! - `ring` (private): the data path — shadow table of request ids, direct and indirect
//!   requests, grants ended in batches, response validation.
//! - [`Blkfront`]: the XenBus glue ([`xen_bus::FrontDriver`] for class `vbd`) and the registry
//!   an application gets its connected devices from ([`Blkfront::device`]).
//! - [`io::BlockIo`]: an `embedded-io` `Read`/`Write`/`Seek` adapter over any [`BlockDevice`].
//! - [`StorageDevice`]: a [`Storage`](crate::storage::Storage) of this domain (a `MemDisk`) as a
//!   [`BlockDevice`].
//!
//! # Example
//! An application's disk code is written against [`BlockDevice`], so it runs the same on a
//! disk from a backend (in an image: `Blkfront::new(xen)`, `register` on the bus, then
//! [`Blkfront::first_disk`]) and on a RAM disk, as here:
//!
//! ```
//! use core::time::Duration;
//! use xen_blk::front::{BlkError, BlockDevice, Request, StorageDevice};
//! use xen_blk::storage::MemDisk;
//!
//! fn stamp(dev: &mut dyn BlockDevice) -> Result<(), BlkError> {
//!     // Whole blocks, addressed in 512-byte sectors (blkif's unit) whatever the block size.
//!     let mut block = vec![0u8; dev.sector_size() as usize];
//!     block[..5].copy_from_slice(b"hello");
//!     dev.write(8, &block)?;
//!     dev.flush()?;
//!     // Many requests in flight: submit with a tag, then poll for completions.
//!     let buf = dev.alloc_buffer(block.len())?;
//!     dev.submit(7, Request::Read { sector: 8, buf }).map_err(|r| r.error)?;
//!     let mut done = None;
//!     while done.is_none() {
//!         dev.poll(&mut |c| done = Some(c))?;
//!         dev.wait(Duration::from_millis(10))?;
//!     }
//!     let c = done.unwrap();
//!     assert_eq!((c.tag, c.result), (7, Ok(())));
//!     let buf = c.buf.unwrap();
//!     assert_eq!(&buf.as_slice()[..5], b"hello");
//!     dev.free_buffer(buf)
//! }
//!
//! stamp(&mut StorageDevice::new(MemDisk::new(2048))).unwrap();
//! stamp(&mut StorageDevice::new(MemDisk::new(2048).with_sector_size(4096))).unwrap();
//! ```

use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

use xen_platform::{PageRun, PAGE_SIZE};

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod glue;
pub mod io;
mod ring;
pub mod storage_device;

pub use glue::{BlkDevice, Blkfront, DeviceState, DEFAULT_LIMITS, DEFAULT_RECONNECT_TIMEOUT};
pub use ring::{WaitMode, PERSISTENT_PAGES_MAX};
pub use storage_device::StorageDevice;
/// The platform handle blkfront keeps (moved to `xen-platform`; re-exported here so that
/// `xen_blk::front::PlatformRef` keeps working).
pub use xen_platform::PlatformRef;

pub use crate::block::{BlkError, SECTOR};

/// One operation for [`BlockDevice::submit`]: the shared [`crate::block::Op`] on a grantable
/// [`Buffer`]. Sector numbers and counts are in 512-byte units (blkif's), aligned to
/// [`BlockDevice::sector_size`]. A flush is `BLKIF_OP_FLUSH_DISKCACHE` or
/// `BLKIF_OP_WRITE_BARRIER` as negotiated (and completes at once when the backend offers
/// neither: it writes through); a discard is `BLKIF_OP_DISCARD` when the backend offers it.
pub type Request = crate::block::Op<Buffer>;

/// A completed request, handed to the callback of [`BlockDevice::poll`]: the shared
/// [`crate::block::Completion`] with the request's [`Buffer`].
pub type Completion = crate::block::Completion<Buffer>;

/// A request [`BlockDevice::submit`] refused, with its buffer given back.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: BlkError,
    /// The request's buffer, if it had one.
    pub buf: Option<Buffer>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused: {}", self.error)
    }
}

impl core::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A block device with requests in flight.
///
/// Non-blocking core: [`submit`](Self::submit) queues a request (split into ring requests of
/// at most [`max_request_bytes`](Self::max_request_bytes)), [`poll`](Self::poll) reports the
/// requests that completed. The blocking helpers ([`read`](Self::read), [`write`](Self::write),
/// [`flush`](Self::flush), [`discard`](Self::discard)) are provided over [`run`](Self::run)
/// (one request, waited for); completions of other requests that arrive meanwhile are kept
/// for the next `poll`. An implementation may override them (blkfront keeps a bounce buffer).
///
/// Implemented by [`BlkDevice`] (a disk from a backend) and by [`StorageDevice`] (any
/// [`Storage`](crate::storage::Storage) in this domain, e.g. a `MemDisk`, so an application
/// runs, and is tested, without a backend).
pub trait BlockDevice {
    /// Logical block size in bytes (512 unless the backend says otherwise): what requests
    /// must be aligned to.
    fn sector_size(&self) -> u32;
    /// Size of the device in 512-byte sectors ([`SECTOR`]), as blkif's `sectors` key.
    fn sectors(&self) -> u64;
    /// Writes, flushes and discards are refused.
    fn read_only(&self) -> bool;
    /// The most bytes one ring request carries (larger requests are split).
    fn max_request_bytes(&self) -> usize;
    /// Page-aligned zeroed memory of at least `bytes` (rounded up to pages), `len() == bytes`.
    fn alloc_buffer(&mut self, bytes: usize) -> Result<Buffer, BlkError>;
    /// Give back a buffer from [`alloc_buffer`](Self::alloc_buffer).
    fn free_buffer(&mut self, buf: Buffer) -> Result<(), BlkError>;
    /// Queue `req`; its completion is reported by [`poll`](Self::poll) with `tag`.
    fn submit(&mut self, tag: u64, req: Request) -> Result<(), Rejected>;
    /// Take responses from the ring and report every completed request to `f`. Returns how
    /// many were reported. Never blocks.
    fn poll(&mut self, f: &mut dyn FnMut(Completion)) -> Result<usize, BlkError>;
    /// Wait until a response may have arrived or `timeout` passes: spins once in polled mode,
    /// waits on the event channel in event mode.
    fn wait(&mut self, timeout: Duration) -> Result<(), BlkError>;
    /// Submit `req` and wait until it completes (within the device's own bound, else
    /// [`BlkError::Timeout`]); gives its buffer back. Completions of other requests that arrive
    /// meanwhile are kept for the next [`poll`](Self::poll).
    fn run(&mut self, req: Request) -> Result<Option<Buffer>, BlkError>;
    /// Read `buf.len()` bytes (whole blocks) at 512-byte sector `sector`. Blocks.
    ///
    /// Provided: chunks of [`max_request_bytes`](Self::max_request_bytes) through one buffer
    /// from [`alloc_buffer`](Self::alloc_buffer), each a [`run`](Self::run).
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let b = chunk_buffer(self, buf.len())?;
        let b = chunked(self, false, sector, buf.len(), b, &mut |at, b| {
            buf[at..at + b.len()].copy_from_slice(b)
        })?;
        self.free_buffer(b)
    }
    /// Write `data` (whole blocks) at 512-byte sector `sector`. Blocks. Provided as
    /// [`read`](Self::read).
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        let b = chunk_buffer(self, data.len())?;
        let b = chunked(self, true, sector, data.len(), b, &mut |at, b| {
            let n = b.len();
            b.copy_from_slice(&data[at..at + n])
        })?;
        self.free_buffer(b)
    }
    /// Make completed writes durable. Blocks.
    fn flush(&mut self) -> Result<(), BlkError> {
        self.run(Request::Flush).map(|_| ())
    }
    /// Discard `count` 512-byte sectors at `sector`. Blocks.
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), BlkError> {
        let secure = false;
        self.run(Request::Discard {
            sector,
            count,
            secure,
        })
        .map(|_| ())
    }
}

/// A buffer for [`chunked`] to move `len` bytes through: one request's worth at most
/// ([`BlockDevice::max_request_bytes`], whole blocks), less for a short transfer.
/// [`BlkError::Misaligned`] (before allocating) unless `len` is whole blocks.
fn chunk_buffer<D: BlockDevice + ?Sized>(dev: &mut D, len: usize) -> Result<Buffer, BlkError> {
    let ss = dev.sector_size().max(1) as usize;
    if !len.is_multiple_of(ss) {
        return Err(BlkError::Misaligned);
    }
    dev.alloc_buffer((dev.max_request_bytes().max(ss) / ss * ss).min(len).max(ss))
}

/// Blocking read/write: `len` bytes (whole blocks: the callers check) at `sector`, in chunks
/// of `b`'s capacity (whole blocks), each a [`BlockDevice::run`]; `copy(at, chunk)` moves the
/// chunk's bytes (into the buffer for a write, out of it for a read). Gives `b` back for
/// reuse (or to be freed).
pub(crate) fn chunked<D: BlockDevice + ?Sized>(
    dev: &mut D,
    write: bool,
    sector: u64,
    len: usize,
    mut b: Buffer,
    copy: &mut dyn FnMut(usize, &mut [u8]),
) -> Result<Buffer, BlkError> {
    let ss = dev.sector_size().max(1) as usize;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(b.capacity() / ss * ss);
        b.set_len(n)?;
        if write {
            copy(done, b.as_mut_slice());
        }
        let at = sector + done as u64 / SECTOR;
        let req = if write {
            Request::Write { sector: at, buf: b }
        } else {
            Request::Read { sector: at, buf: b }
        };
        b = dev.run(req)?.ok_or(BlkError::Failed)?;
        if !write {
            copy(done, b.as_mut_slice());
        }
        done += n;
    }
    Ok(b)
}

/// Page-aligned I/O memory for requests.
///
/// A `Buffer` is moved into [`BlockDevice::submit`] and comes back in its [`Completion`], so
/// the application does not touch the memory while a request runs on it.
///
/// No backend keeps access to a buffer once its request completed (XSA-396/403): blkfront
/// grants a buffer's whole pages for the length of one request and ends the grants before the
/// completion hands the buffer back, and carries everything else through pages of its own
/// (bounce pages, copied): every segment with persistent grants (the backend maps those pages
/// for the whole connection) or when the toolstack marks the backend untrusted (`trusted =
/// 0`), and a segment shorter than a page (the rest of the page is never shown). A backend that
/// keeps a buffer page mapped after answering fails the device, and the buffer is never given
/// back (it stays in quarantine).
///
/// Give a buffer back with [`BlockDevice::free_buffer`]. One that is dropped instead is not
/// lost: an owned buffer (from `alloc_buffer`) goes to its device's return list, and the
/// device frees its pages at its next call (`alloc_buffer`, `free_buffer`, `poll`).
#[must_use = "a Buffer holds pages (and maybe grants): give it back with free_buffer"]
pub struct Buffer {
    addr: NonNull<u8>,
    cap: usize,
    len: usize,
    run: Option<PageRun>,
    /// Heap pages of a buffer that is never granted ([`storage_device::StorageDevice`]).
    heap: Option<alloc::boxed::Box<[HeapPage]>>,
    /// Where a dropped owned buffer goes: its device's return list.
    pub(crate) home: Option<Returns>,
}

/// One page of heap memory, page aligned.
#[derive(Clone)]
#[repr(C, align(4096))]
pub(crate) struct HeapPage([u8; PAGE_SIZE]);

/// A device's list of owned buffers dropped by the application, reclaimed at its next call.
pub(crate) type Returns = alloc::rc::Rc<core::cell::RefCell<alloc::vec::Vec<Buffer>>>;

impl Drop for Buffer {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        if self.run.is_none() {
            return;
        }
        let b = Buffer {
            addr: self.addr,
            cap: self.cap,
            len: self.len,
            run: self.run.take(),
            heap: None,
            home: None,
        };
        // Never panics in drop: if the list is being drained right now, the buffer's pages
        // are given up (the only case that still leaks).
        match home.try_borrow_mut() {
            Ok(mut list) => list.push(b),
            Err(_) => core::mem::forget(b),
        };
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("addr", &self.addr)
            .field("cap", &self.cap)
            .field("len", &self.len)
            .field("owned", &self.run.is_some())
            .field("heap", &self.heap.is_some())
            .finish()
    }
}

impl Buffer {
    /// A buffer over caller memory.
    ///
    /// Fails with [`BlkError::BadBuffer`] unless `addr` is page aligned and `cap` a non-zero
    /// multiple of `PAGE_SIZE`.
    ///
    /// # Safety
    /// `addr..addr + cap` must be valid for reads and writes, owned by this domain (the
    /// platform's `Pages::frame` translates each page), not accessed through any other
    /// reference while this `Buffer` exists, and stay valid until the `Buffer` is dropped
    /// (a buffer a misbehaving backend keeps mapped is never given back, and never dropped).
    pub unsafe fn from_raw(addr: NonNull<u8>, cap: usize) -> Result<Buffer, BlkError> {
        if !(addr.as_ptr() as usize).is_multiple_of(PAGE_SIZE)
            || cap == 0
            || !cap.is_multiple_of(PAGE_SIZE)
        {
            return Err(BlkError::BadBuffer);
        }
        Ok(Buffer {
            addr,
            cap,
            len: cap,
            run: None,
            heap: None,
            home: None,
        })
    }

    pub(crate) fn from_run(run: PageRun, len: usize) -> Buffer {
        Buffer {
            addr: run.addr,
            cap: run.len(),
            len,
            run: Some(run),
            heap: None,
            home: None,
        }
    }

    /// `len` bytes of zeroed heap pages (at least one page): memory for a device that grants
    /// nothing.
    pub(crate) fn heap(len: usize) -> Buffer {
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let mut mem = alloc::vec![HeapPage([0; PAGE_SIZE]); pages].into_boxed_slice();
        let addr = NonNull::from(&mut mem[0]).cast::<u8>();
        Buffer {
            addr,
            cap: pages * PAGE_SIZE,
            len,
            run: None,
            heap: Some(mem),
            home: None,
        }
    }

    pub(crate) fn into_run(mut self) -> Option<PageRun> {
        self.home = None;
        self.run.take()
    }

    /// Start of the memory (page aligned).
    pub fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Bytes of memory.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes a request transfers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `len()` is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set the bytes a request transfers (at most the capacity).
    pub fn set_len(&mut self, len: usize) -> Result<(), BlkError> {
        if len > self.cap {
            return Err(BlkError::BadBuffer);
        }
        self.len = len;
        Ok(())
    }

    /// The first `len()` bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer owns `cap >= len` valid bytes (from_raw's contract, a PageRun of
        // ours, or its own heap pages, which moving the Buffer does not move). No grant of
        // them is live while the application holds the buffer: blkfront grants a buffer's
        // pages only while a request runs on it (the buffer is moved into the request) and
        // ends the grants before a completion gives it back; one the backend keeps mapped is
        // never given back (type docs).
        unsafe { core::slice::from_raw_parts(self.addr.as_ptr(), self.len) }
    }

    /// The first `len()` bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; `&mut self` makes the borrow exclusive on our side.
        unsafe { core::slice::from_raw_parts_mut(self.addr.as_ptr(), self.len) }
    }
}
