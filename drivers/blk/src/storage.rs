//! What blkback serves: the [`Storage`] trait, and [`MemDisk`], [`Slice`], [`ReadOnly`].
//!
//! # Shape: submit / poll, owned buffers
//! A storage has many requests in flight: [`Storage::submit`] hands it an [`Op`] with a tag and
//! returns at once (or [`Busy`] with the op given back, when its queue is full);
//! [`Storage::poll_completions`] reports finished ops, in any order, as [`Completion`]s. An image
//! has no threads, and a storage may itself be asynchronous (a file served by worker threads, a
//! disk this domain receives from another backend through blkfront), so nothing here blocks.
//!
//! Data moves in buffers the op *owns* (`Vec<u8>`), returned in the completion: a read's buffer
//! comes back filled, a write's comes back to be reused. The storage never sees the peer's
//! granted pages: blkback copies between those and the buffer (once per request, under its own
//! mappings), so no lifetime ties a storage to a mapping, a storage cannot scribble on a page
//! after blkback unmapped it, and a detach never waits for a storage to let go of a peer's page.
//!
//! # Units
//! Sectors are 512 bytes everywhere here, as in blkif (`sectors`, `sector_number`,
//! `first_sect`/`last_sect`): [`SECTOR`]. [`Storage::sector_size`] is the logical block size
//! published as `sector-size`; ops must be aligned to it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use xen_platform::abi::EvtchnPort;

pub use crate::block::{BlkError, SECTOR};

/// One operation on a storage: the shared [`crate::block::Op`] with an owned heap buffer.
pub type Op = crate::block::Op<Vec<u8>>;

/// A finished storage op: the shared [`crate::block::Completion`] with its heap buffer.
pub type Completion = crate::block::Completion<Vec<u8>>;

impl Op {
    /// The sector range `[sector, sector + count)` the op touches (`None` for a flush).
    /// `count` is `None` if a buffer is not a whole number of sectors.
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        match self {
            Op::Read { sector, buf } | Op::Write { sector, buf } => {
                let len = buf.len() as u64;
                Some((*sector, (len & (SECTOR - 1) == 0).then_some(len / SECTOR)))
            }
            Op::Discard { sector, count, .. } => Some((*sector, Some(*count))),
            Op::Flush => None,
        }
    }
}

/// [`Storage::submit`] had no room: the op is given back, to be submitted again after a
/// [`Storage::poll_completions`] reported something.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy(pub Op);

/// The optional ops a storage does (published as `feature-*` keys by blkback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// [`Op::Flush`] does something (a volatile cache exists). Without it blkback still accepts
    /// flushes when it offers them, and the storage completes them at once.
    pub flush: bool,
    /// [`Op::Discard`].
    pub discard: bool,
    /// [`Op::Discard`] with `secure`.
    pub secure_discard: bool,
    /// Discard granularity in bytes (0: the sector size).
    pub discard_granularity: u32,
}

/// A disk that blkback serves. See the module docs for the shape.
///
/// Contract: every op submitted successfully is reported exactly once by
/// [`poll_completions`](Self::poll_completions), with its tag, even if it failed (ops a storage
/// cannot do are completed with an error, never refused by `submit`). Tags are the caller's;
/// the storage only echoes them.
pub trait Storage {
    /// Logical block size in bytes (a power of two, 512..=4096): ops start and end on it.
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    /// Physical block size in bytes (defaults to the logical one).
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }
    /// Size in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Writes and discards fail with [`BlkError::ReadOnly`].
    fn read_only(&self) -> bool;
    /// Optional ops.
    fn features(&self) -> Features {
        Features::default()
    }
    /// Start `op`, identified by `tag`. Does not wait.
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy>;
    /// Report finished ops to `done`; returns how many. Does not wait.
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize;
    /// Ops submitted and not yet reported.
    fn in_flight(&self) -> usize;
    /// Event-channel ports whose events mean completions may be ready (an asynchronous storage
    /// over a ring); a storage completed by other threads or at once reports none, and an event
    /// loop then polls it again while [`in_flight`](Self::in_flight) is not zero.
    fn ports(&self, _out: &mut dyn FnMut(EvtchnPort)) {}
    /// Whether [`read_in_place`](Self::read_in_place) and
    /// [`write_in_place`](Self::write_in_place) are served (a storage whose bytes are in this
    /// domain's memory). Constant for a storage's life.
    fn in_place(&self) -> bool {
        false
    }
    /// Read `len` bytes at `sector` in place, at once: `f` is called with the storage's own
    /// bytes of the range, in order (one or more slices, `len` bytes in all), and copies them
    /// where they go before this returns — no buffer is allocated and nothing is queued.
    /// Checked as a [`Op::Read`] would be ([`check_op`]); `f` is not called on an error.
    /// Unsupported (the default): [`BlkError::Unsupported`].
    fn read_in_place(
        &mut self,
        _sector: u64,
        _len: usize,
        _f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        Err(BlkError::Unsupported)
    }
    /// Write `len` bytes at `sector` in place, at once: `f` fills the storage's own bytes of
    /// the range, in order. As [`read_in_place`](Self::read_in_place); an in-place write is
    /// as durable as a completed [`Op::Write`].
    fn write_in_place(
        &mut self,
        _sector: u64,
        _len: usize,
        _f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        Err(BlkError::Unsupported)
    }
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        (**self).physical_sector_size()
    }
    fn sectors(&self) -> u64 {
        (**self).sectors()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn features(&self) -> Features {
        (**self).features()
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        (**self).submit(tag, op)
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        (**self).poll_completions(done)
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
    fn ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        (**self).ports(out)
    }
    fn in_place(&self) -> bool {
        (**self).in_place()
    }
    fn read_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        (**self).read_in_place(sector, len, f)
    }
    fn write_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        (**self).write_in_place(sector, len, f)
    }
}

/// Checks an in-place access of `len` bytes at `sector` of `s` as [`check_op`] checks the
/// same [`Op::Read`] / [`Op::Write`]; `Ok` is the byte offset of `sector`.
pub fn check_in_place(
    s: &(impl Storage + ?Sized),
    sector: u64,
    len: usize,
    write: bool,
) -> Result<usize, BlkError> {
    if write && s.read_only() {
        return Err(BlkError::ReadOnly);
    }
    if len as u64 & (SECTOR - 1) != 0 {
        return Err(BlkError::Misaligned);
    }
    check_range(sector, len as u64 / SECTOR, s.sectors(), s.sector_size())?;
    usize::try_from(sector * SECTOR).map_err(|_| BlkError::OutOfRange)
}

/// `count` sectors at `sector`: inside `sectors`, aligned to `sector_size`.
fn check_range(sector: u64, count: u64, sectors: u64, sector_size: u32) -> Result<(), BlkError> {
    let end = sector.checked_add(count).ok_or(BlkError::OutOfRange)?;
    if end > sectors {
        return Err(BlkError::OutOfRange);
    }
    let per_block = u64::from(sector_size.max(SECTOR as u32)) / SECTOR;
    // per_block is a power of two (sector sizes are).
    if (sector | count) & (per_block - 1) != 0 {
        return Err(BlkError::Misaligned);
    }
    Ok(())
}

/// Checks `op` against a storage of `sectors` sectors, block size `sector_size`, read-only or
/// not, doing `features`: what every storage must refuse (`Ok`: the op may be carried out).
pub fn check_op(
    op: &Op,
    sectors: u64,
    sector_size: u32,
    read_only: bool,
    features: Features,
) -> Result<(), BlkError> {
    if read_only && op.is_write() {
        return Err(BlkError::ReadOnly);
    }
    if let Op::Discard { secure, .. } = op {
        if !features.discard || (*secure && !features.secure_discard) {
            return Err(BlkError::Unsupported);
        }
    }
    let Some((start, count)) = op.range() else {
        return Ok(());
    };
    let count = count.ok_or(BlkError::Misaligned)?;
    check_range(start, count, sectors, sector_size)
}

/// A disk in RAM. Every op completes at submit (reported by the next
/// [`poll_completions`](Storage::poll_completions), in submission order). Discard zeroes.
#[derive(Debug)]
pub struct MemDisk {
    data: PageAligned,
    read_only: bool,
    sector_size: u32,
    queue_limit: usize,
    done: VecDeque<Completion>,
}

impl MemDisk {
    /// A zeroed disk of `sectors` 512-byte sectors.
    pub fn new(sectors: u64) -> MemDisk {
        let mut d = MemDisk::from_bytes(Vec::new());
        d.data = PageAligned::zeroed((sectors * SECTOR) as usize);
        d
    }

    /// A disk holding `data`, cut down to a whole number of sectors.
    pub fn from_bytes(data: Vec<u8>) -> MemDisk {
        let len = data.len() / SECTOR as usize * SECTOR as usize;
        MemDisk {
            data: PageAligned::from(&data[..len]),
            read_only: false,
            sector_size: SECTOR as u32,
            queue_limit: usize::MAX,
            done: VecDeque::new(),
        }
    }

    /// Read-only (writes and discards fail).
    pub fn with_read_only(mut self, ro: bool) -> MemDisk {
        self.read_only = ro;
        self
    }

    /// A logical block size other than 512 (a power of two up to 4096).
    pub fn with_sector_size(mut self, size: u32) -> MemDisk {
        assert!(size.is_power_of_two() && (512..=4096).contains(&size));
        self.sector_size = size;
        self
    }

    /// At most `n` ops waiting to be reported; `submit` answers [`Busy`] beyond (to test callers'
    /// back-pressure).
    pub fn with_queue_limit(mut self, n: usize) -> MemDisk {
        self.queue_limit = n.max(1);
        self
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The contents, writable (test set-up).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.bytes_mut()
    }

    fn run(&mut self, op: &mut Op) -> Result<(), BlkError> {
        check_op(
            op,
            self.sectors(),
            self.sector_size,
            self.read_only,
            self.features(),
        )?;
        let at = |s: u64| (s * SECTOR) as usize;
        match op {
            Op::Read { sector, buf } => {
                let a = at(*sector);
                let n = buf.len();
                buf.copy_from_slice(&self.data.bytes()[a..a + n]);
            }
            Op::Write { sector, buf } => {
                let a = at(*sector);
                self.data.bytes_mut()[a..a + buf.len()].copy_from_slice(buf);
            }
            Op::Discard { sector, count, .. } => {
                self.data.bytes_mut()[at(*sector)..at(*sector + *count)].fill(0);
            }
            Op::Flush => {}
        }
        Ok(())
    }
}

impl Storage for MemDisk {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn sectors(&self) -> u64 {
        self.data.bytes().len() as u64 / SECTOR
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn features(&self) -> Features {
        Features {
            flush: false,
            discard: true,
            secure_discard: true,
            discard_granularity: self.sector_size,
        }
    }
    fn submit(&mut self, tag: u64, mut op: Op) -> Result<(), Busy> {
        if self.done.len() >= self.queue_limit {
            return Err(Busy(op));
        }
        let status = self.run(&mut op);
        self.done.push_back(Completion::of(tag, op, status));
        Ok(())
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            done(c);
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn in_place(&self) -> bool {
        true
    }
    fn read_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        let at = check_in_place(self, sector, len, false)?;
        f(&self.data.bytes()[at..at + len]);
        Ok(())
    }
    fn write_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        let at = check_in_place(self, sector, len, true)?;
        f(&mut self.data.bytes_mut()[at..at + len]);
        Ok(())
    }
}

/// What a wrapper storage (`Slice`, `ReadOnly`) reports: the ops it refused itself, then the
/// inner storage's completions; how many in all.
fn report_then(
    failed: &mut VecDeque<Completion>,
    inner: &mut dyn Storage,
    done: &mut dyn FnMut(Completion),
) -> usize {
    let n = failed.len();
    while let Some(c) = failed.pop_front() {
        done(c);
    }
    n + inner.poll_completions(done)
}

/// Bytes that start on a page boundary, as a RAM disk's do: a copy between them and page-aligned
/// I/O pages then has source and destination at the same offset in their pages. (A `Vec` from
/// the allocator starts 16 bytes into a page; copying 64 KiB from a page-aligned buffer into it
/// measured 0.7× the speed of the aligned copy on this machine — loads alias the stores just
/// made 16 bytes below them, "4K aliasing".) Safe code: a `Vec` one page longer, used from the
/// first page boundary in it.
struct PageAligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    fn from(bytes: &[u8]) -> PageAligned {
        let mut a = PageAligned::empty(bytes.len());
        a.buf.extend_from_slice(bytes);
        a
    }
    fn zeroed(len: usize) -> PageAligned {
        let mut a = PageAligned::empty(len);
        a.buf.resize(a.start + len, 0);
        a
    }
    /// Room for `len` bytes after the page boundary; the caller appends them.
    fn empty(len: usize) -> PageAligned {
        const PAGE: usize = 4096;
        let mut buf: Vec<u8> = Vec::with_capacity(len + PAGE);
        let start = buf.as_ptr().align_offset(PAGE).min(PAGE);
        buf.resize(start, 0);
        // Never grown beyond the capacity, so `start` stays the page boundary.
        PageAligned { buf, start, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl fmt::Debug for PageAligned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageAligned({} bytes)", self.len)
    }
}

/// The sectors `[start, start + len)` of another storage, as a disk of `len` sectors. Ops
/// beyond it fail with [`BlkError::OutOfRange`] without reaching the inner storage.
#[derive(Debug)]
pub struct Slice<S> {
    inner: S,
    start: u64,
    len: u64,
    failed: VecDeque<Completion>,
}

impl<S: Storage> Slice<S> {
    /// The window `[start, start + len)` of `inner`; `None` if it does not fit in `inner` or is
    /// not aligned to its block size.
    pub fn new(inner: S, start: u64, len: u64) -> Option<Slice<S>> {
        let per_block = u64::from(inner.sector_size()) / SECTOR;
        let fits = start
            .checked_add(len)
            .is_some_and(|end| end <= inner.sectors());
        (fits && (start | len) & (per_block - 1) == 0).then_some(Slice {
            inner,
            start,
            len,
            failed: VecDeque::new(),
        })
    }

    /// The storage sliced.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The storage sliced, mutable.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The first sector of the window in the inner storage.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl<S: Storage> Storage for Slice<S> {
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn sectors(&self) -> u64 {
        self.len
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        if let Err(e) = check_op(
            &op,
            self.len,
            self.sector_size(),
            self.read_only(),
            self.features(),
        ) {
            self.failed.push_back(Completion::of(tag, op, Err(e)));
            return Ok(());
        }
        // In range: start + sector + count <= start + len <= inner.sectors(), no overflow.
        let shifted = match op {
            Op::Read { sector, buf } => Op::Read {
                sector: sector + self.start,
                buf,
            },
            Op::Write { sector, buf } => Op::Write {
                sector: sector + self.start,
                buf,
            },
            Op::Discard {
                sector,
                count,
                secure,
            } => Op::Discard {
                sector: sector + self.start,
                count,
                secure,
            },
            Op::Flush => Op::Flush,
        };
        self.inner.submit(tag, shifted).map_err(|Busy(op)| {
            // Give the caller back the op in its own coordinates.
            Busy(match op {
                Op::Read { sector, buf } => Op::Read {
                    sector: sector - self.start,
                    buf,
                },
                Op::Write { sector, buf } => Op::Write {
                    sector: sector - self.start,
                    buf,
                },
                Op::Discard {
                    sector,
                    count,
                    secure,
                } => Op::Discard {
                    sector: sector - self.start,
                    count,
                    secure,
                },
                Op::Flush => Op::Flush,
            })
        })
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        report_then(&mut self.failed, &mut self.inner, done)
    }
    fn in_flight(&self) -> usize {
        self.failed.len() + self.inner.in_flight()
    }
    fn ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        self.inner.ports(out)
    }
    fn in_place(&self) -> bool {
        self.inner.in_place()
    }
    fn read_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        check_in_place(self, sector, len, false)?;
        // In range: start + sector + count <= start + len <= inner.sectors(), no overflow.
        self.inner.read_in_place(sector + self.start, len, f)
    }
    fn write_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        check_in_place(self, sector, len, true)?;
        self.inner.write_in_place(sector + self.start, len, f)
    }
}

/// Another storage, read-only: writes and discards fail with [`BlkError::ReadOnly`] without
/// reaching it.
#[derive(Debug)]
pub struct ReadOnly<S> {
    inner: S,
    failed: VecDeque<Completion>,
}

impl<S: Storage> ReadOnly<S> {
    /// `inner`, read-only.
    pub fn new(inner: S) -> ReadOnly<S> {
        ReadOnly {
            inner,
            failed: VecDeque::new(),
        }
    }

    /// The storage wrapped.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Storage> Storage for ReadOnly<S> {
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn sectors(&self) -> u64 {
        self.inner.sectors()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn features(&self) -> Features {
        Features {
            discard: false,
            secure_discard: false,
            ..self.inner.features()
        }
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        if op.is_write() {
            self.failed
                .push_back(Completion::of(tag, op, Err(BlkError::ReadOnly)));
            return Ok(());
        }
        self.inner.submit(tag, op)
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        report_then(&mut self.failed, &mut self.inner, done)
    }
    fn in_flight(&self) -> usize {
        self.failed.len() + self.inner.in_flight()
    }
    fn ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        self.inner.ports(out)
    }
    fn in_place(&self) -> bool {
        self.inner.in_place()
    }
    fn read_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        self.inner.read_in_place(sector, len, f)
    }
    fn write_in_place(
        &mut self,
        _sector: u64,
        _len: usize,
        _f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        Err(BlkError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A RAM disk's bytes start on a page boundary (copies to and from I/O pages then do not
    /// alias), whatever the allocator gave, and keep their contents.
    #[test]
    fn memdisk_bytes_are_page_aligned() {
        for sectors in [1u64, 8, 9, 4096] {
            let d = MemDisk::new(sectors);
            assert_eq!(d.bytes().as_ptr() as usize % 4096, 0);
            assert_eq!(d.bytes().len() as u64, sectors * SECTOR);
            assert!(d.bytes().iter().all(|&b| b == 0));
        }
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let d = MemDisk::from_bytes(data.clone());
        assert_eq!(d.bytes().as_ptr() as usize % 4096, 0);
        assert_eq!(
            d.bytes(),
            &data[..4608],
            "cut to whole sectors, contents kept"
        );
    }

    fn run(s: &mut dyn Storage, op: Op) -> Completion {
        s.submit(7, op).unwrap();
        let mut got = Vec::new();
        s.poll_completions(&mut |c| got.push(c));
        assert_eq!(got.len(), 1);
        assert_eq!(s.in_flight(), 0);
        got.pop().unwrap()
    }

    #[test]
    fn memdisk_read_write_discard_flush() {
        let mut d = MemDisk::new(8);
        let c = run(
            &mut d,
            Op::Write {
                sector: 2,
                buf: vec![0xab; 1024],
            },
        );
        assert_eq!((c.tag, c.result), (7, Ok(())));
        let c = run(
            &mut d,
            Op::Read {
                sector: 1,
                buf: vec![0; 2048],
            },
        );
        let b = c.buf.unwrap();
        assert!(b[..512].iter().all(|&x| x == 0));
        assert!(b[512..1536].iter().all(|&x| x == 0xab));
        assert!(b[1536..].iter().all(|&x| x == 0));
        let c = run(
            &mut d,
            Op::Discard {
                sector: 3,
                count: 1,
                secure: false,
            },
        );
        assert_eq!(c.result, Ok(()));
        assert!(d.bytes()[1024..1536].iter().all(|&x| x == 0xab));
        assert!(d.bytes()[1536..2048].iter().all(|&x| x == 0));
        assert_eq!(run(&mut d, Op::Flush).result, Ok(()));
    }

    #[test]
    fn memdisk_refuses_bad_ops() {
        let mut d = MemDisk::new(8);
        let read = |sector, len| Op::Read {
            sector,
            buf: vec![0; len],
        };
        assert_eq!(run(&mut d, read(7, 1024)).result, Err(BlkError::OutOfRange));
        assert_eq!(
            run(&mut d, read(u64::MAX, 512)).result,
            Err(BlkError::OutOfRange)
        );
        assert_eq!(run(&mut d, read(0, 100)).result, Err(BlkError::Misaligned));
        let discard = Op::Discard {
            sector: 4,
            count: u64::MAX,
            secure: false,
        };
        assert_eq!(run(&mut d, discard).result, Err(BlkError::OutOfRange));
        let mut ro = MemDisk::new(8).with_read_only(true);
        let w = Op::Write {
            sector: 0,
            buf: vec![1; 512],
        };
        let c = run(&mut ro, w);
        assert_eq!(c.result, Err(BlkError::ReadOnly));
        assert_eq!(c.buf, Some(vec![1; 512]), "the buffer comes back");
        assert!(ro.bytes().iter().all(|&x| x == 0));
        let mut big = MemDisk::new(16).with_sector_size(4096);
        assert_eq!(
            run(&mut big, read(1, 4096)).result,
            Err(BlkError::Misaligned)
        );
        assert_eq!(run(&mut big, read(8, 4096)).result, Ok(()));
    }

    #[test]
    fn memdisk_queue_limit_gives_the_op_back() {
        let mut d = MemDisk::new(8).with_queue_limit(1);
        d.submit(1, Op::Flush).unwrap();
        assert_eq!(d.submit(2, Op::Flush), Err(Busy(Op::Flush)));
        assert_eq!(d.poll_completions(&mut |c| assert_eq!(c.tag, 1)), 1);
        d.submit(2, Op::Flush).unwrap();
    }

    #[test]
    fn slice_shifts_and_bounds() {
        let mut base = MemDisk::new(16);
        base.bytes_mut()[4 * 512..5 * 512].fill(9);
        assert!(Slice::new(MemDisk::new(16), 10, 7).is_none());
        assert!(Slice::new(MemDisk::new(16), u64::MAX, 2).is_none());
        let mut s = Slice::new(base, 4, 8).unwrap();
        assert_eq!(s.sectors(), 8);
        let c = run(
            &mut s,
            Op::Read {
                sector: 0,
                buf: vec![0; 512],
            },
        );
        assert_eq!(c.buf.unwrap(), vec![9; 512]);
        let c = run(
            &mut s,
            Op::Write {
                sector: 7,
                buf: vec![5; 1024],
            },
        );
        assert_eq!(c.result, Err(BlkError::OutOfRange));
        let c = run(
            &mut s,
            Op::Write {
                sector: 7,
                buf: vec![5; 512],
            },
        );
        assert_eq!(c.result, Ok(()));
        assert_eq!(&s.inner().bytes()[11 * 512..12 * 512], &[5; 512][..]);
        assert!(s.inner().bytes()[12 * 512..].iter().all(|&x| x == 0));
        let d = Op::Discard {
            sector: 6,
            count: 3,
            secure: false,
        };
        assert_eq!(run(&mut s, d).result, Err(BlkError::OutOfRange));
    }

    #[test]
    fn slice_busy_gives_back_own_coordinates() {
        let mut s = Slice::new(MemDisk::new(16).with_queue_limit(1), 8, 8).unwrap();
        s.submit(1, Op::Flush).unwrap();
        let op = Op::Read {
            sector: 3,
            buf: vec![0; 512],
        };
        let Err(Busy(Op::Read { sector, .. })) = s.submit(2, op) else {
            panic!("not busy");
        };
        assert_eq!(sector, 3);
    }

    #[test]
    fn read_only_wrapper() {
        let mut base = MemDisk::new(8);
        base.bytes_mut().fill(3);
        let mut r = ReadOnly::new(base);
        assert!(r.read_only());
        assert!(!r.features().discard);
        let w = Op::Write {
            sector: 0,
            buf: vec![1; 512],
        };
        assert_eq!(run(&mut r, w).result, Err(BlkError::ReadOnly));
        let d = Op::Discard {
            sector: 0,
            count: 1,
            secure: false,
        };
        assert_eq!(run(&mut r, d).result, Err(BlkError::ReadOnly));
        let c = run(
            &mut r,
            Op::Read {
                sector: 0,
                buf: vec![0; 512],
            },
        );
        assert_eq!(c.buf.unwrap(), vec![3; 512]);
        assert!(r.inner().bytes().iter().all(|&x| x == 3));
    }

    #[test]
    fn boxed_dyn_storage() {
        let mut b: Box<dyn Storage> = Box::new(MemDisk::new(4));
        assert_eq!(b.sectors(), 4);
        assert_eq!(run(&mut b, Op::Flush).result, Ok(()));
    }
}
