//! The XenStore ring page (`struct xenstore_domain_interface`, `io/xs_wire.h`) as two byte
//! streams, with the rules of `docs/misc/xenstore-ring.txt`.
//!
//! The page holds two 1024-byte circular buffers — `req` (guest → daemon) and `rsp` (daemon →
//! guest) — each with a free-running producer and consumer index (`u32`, wrapping). The byte at
//! stream offset `x` is stored at `req[x % 1024]` / `rsp[x % 1024]`
//! ([`mask_xenstore_idx`]). A message may therefore be split across the end of the buffer, and
//! a message longer than the free space is written in several pieces: the XenStore protocol
//! (`xsd_sockmsg` + payload) is layered on top of the streams and is the business of the
//! `xen-store` crate.
//!
//! * [`XsGuestRing`] is the guest (client) side: it produces into `req` and consumes `rsp`.
//! * [`XsServerRing`] is the daemon (xenstored) side: it consumes `req` and produces into `rsp`,
//!   and owns the signalling fields (`server_features`, `connection` reset to connected,
//!   `error`).
//!
//! Neither side notifies: after any call that moved an index (`Ok(n)` with `n > 0`) the caller
//! signals the event channel ("Whenever the ring structure is updated the event channel must be
//! signalled", xenstore-ring.txt).
//!
//! # Memory ordering
//! The six `u32` fields after the buffers are only accessed as [`AtomicU32`]s. A producer
//! loads the peer's consumer index with `Acquire` before writing data (the data it overwrites
//! was consumed; Linux's `xb_write` has a full barrier there, of which only this load→store
//! order matters), copies the bytes, then publishes its producer index with a `Release` store
//! (`virt_wmb(); prod += n`). A consumer loads the peer's producer index with `Acquire` before
//! reading data (`virt_rmb()`), copies the bytes out, then publishes its consumer index with a
//! `Release` store, which orders the reads of the data before it ("Other side must not see free
//! space until we've copied out", `xb_read`). After publishing an index there is a `SeqCst`
//! fence (Linux's `virt_mb()` / the barrier implied by the notify hypercall), so that anything
//! the caller reads next — the peer's index, to decide whether to sleep — is ordered after the
//! store.
//!
//! # A peer is not trusted
//! Every data byte is read with a volatile load and copied into the caller's buffer once; the
//! caller never sees shared memory. Positions are always masked, so no index can point outside a
//! buffer. An index pair that claims more than 1024 bytes in flight (`prod - cons > 1024`,
//! wrapping arithmetic; this includes a producer index that went backwards) is corrupt and is
//! reported as [`Error::RingOverflow`] — nothing is read, written or published then. (Linux's
//! `check_indexes()` makes the same test and then resets the ring; we leave that decision to the
//! caller.) Indexes need not start at zero ("guests must not assume that producer or consumer
//! pointers start at zero"): each side works from the values it finds in the page.

use core::fmt;
use core::mem::{align_of, offset_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::abi::xs::{
    mask_xenstore_idx, XenstoreDomainInterface, XenstoreRingIdx, XENSTORE_CONNECTED,
    XENSTORE_RECONNECT, XENSTORE_RING_SIZE,
};
use crate::error::{Error, Result};

/// `XENSTORE_RING_SIZE` as a ring-index quantity.
const RING: u32 = XENSTORE_RING_SIZE as u32;

const REQ: usize = offset_of!(XenstoreDomainInterface, req);
const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);

/// One of the four ring indexes of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XsIndex {
    /// `req_cons`: advanced by the daemon.
    ReqCons,
    /// `req_prod`: advanced by the guest.
    ReqProd,
    /// `rsp_cons`: advanced by the guest.
    RspCons,
    /// `rsp_prod`: advanced by the daemon.
    RspProd,
}

impl XsIndex {
    const fn offset(self) -> usize {
        match self {
            XsIndex::ReqCons => offset_of!(XenstoreDomainInterface, req_cons),
            XsIndex::ReqProd => offset_of!(XenstoreDomainInterface, req_prod),
            XsIndex::RspCons => offset_of!(XenstoreDomainInterface, rsp_cons),
            XsIndex::RspProd => offset_of!(XenstoreDomainInterface, rsp_prod),
        }
    }
}

const SERVER_FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
const ERROR: usize = offset_of!(XenstoreDomainInterface, error);

/// A snapshot of the four indexes (for diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsRingIndexes {
    /// `req_cons`.
    pub req_cons: XenstoreRingIdx,
    /// `req_prod`.
    pub req_prod: XenstoreRingIdx,
    /// `rsp_cons`.
    pub rsp_cons: XenstoreRingIdx,
    /// `rsp_prod`.
    pub rsp_prod: XenstoreRingIdx,
}

/// The page, as both sides see it: a pointer and the raw accessors. Every access to shared
/// memory in this module goes through here.
struct Page {
    base: NonNull<u8>,
}

impl Page {
    /// # Safety
    /// See [`XsGuestRing::new`].
    unsafe fn new(page: NonNull<u8>) -> Result<Page> {
        if page.as_ptr().addr() & (align_of::<XenstoreDomainInterface>() - 1) != 0 {
            return Err(Error::Invalid);
        }
        Ok(Page { base: page })
    }

    /// One of the seven `u32` fields after the buffers (`offset` is a field offset).
    #[inline(always)]
    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!((2 * XENSTORE_RING_SIZE..=ERROR).contains(&offset) && offset & 3 == 0);
        // SAFETY: by the constructors' contract `base` is 4-byte aligned and the
        // size_of::<XenstoreDomainInterface>() bytes behind it are valid for reads and writes
        // for as long as `self` lives; `offset` is one of the field offsets 2048..=2072, so the
        // pointer is in bounds and 4-byte aligned. Every access this module makes to these
        // fields is atomic; the peer (another domain) accesses them with single aligned 32-bit
        // instructions.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    #[inline(always)]
    fn index(&self, which: XsIndex) -> &AtomicU32 {
        self.word(which.offset())
    }

    fn indexes(&self) -> XsRingIndexes {
        XsRingIndexes {
            req_cons: self.index(XsIndex::ReqCons).load(Ordering::Acquire),
            req_prod: self.index(XsIndex::ReqProd).load(Ordering::Acquire),
            rsp_cons: self.index(XsIndex::RspCons).load(Ordering::Acquire),
            rsp_prod: self.index(XsIndex::RspProd).load(Ordering::Acquire),
        }
    }

    /// Copy `src` into the buffer at `buf` (`REQ` or `RSP`) starting at byte `pos`;
    /// `pos + src.len() <= XENSTORE_RING_SIZE`.
    fn copy_in(&self, buf: usize, pos: usize, src: &[u8]) {
        assert!(pos <= XENSTORE_RING_SIZE && src.len() <= XENSTORE_RING_SIZE - pos);
        // SAFETY: buf is REQ (0) or RSP (1024) and pos + len <= 1024, so the range lies inside
        // the page the constructor was given.
        let dst = unsafe { self.base.as_ptr().add(buf + pos) };
        // SAFETY: `dst` is valid for `src.len()` bytes (above) and cannot overlap `src`, a
        // Rust slice the caller owns (the page is not referenced by any Rust reference).
        unsafe { volatile_copy_to(dst, src) };
    }

    /// Copy `dst.len()` bytes out of the buffer at `buf` starting at byte `pos`;
    /// `pos + dst.len() <= XENSTORE_RING_SIZE`.
    fn copy_out(&self, buf: usize, pos: usize, dst: &mut [u8]) {
        assert!(pos <= XENSTORE_RING_SIZE && dst.len() <= XENSTORE_RING_SIZE - pos);
        // SAFETY: as in copy_in.
        let src = unsafe { self.base.as_ptr().add(buf + pos) };
        // SAFETY: `src` is valid for `dst.len()` bytes and does not overlap `dst`.
        unsafe { volatile_copy_from(src, dst) };
    }

    /// Produce up to `bytes.len()` bytes into buffer `buf` whose producer index is ours and
    /// whose consumer index the peer advances. Returns how many were written and published.
    fn produce(
        &self,
        buf: usize,
        prod_ix: XsIndex,
        cons_ix: XsIndex,
        bytes: &[u8],
    ) -> Result<usize> {
        let cons = self.index(cons_ix).load(Ordering::Acquire);
        let prod = self.index(prod_ix).load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > RING {
            return Err(Error::RingOverflow);
        }
        let n = ((RING - used) as usize).min(bytes.len());
        if n == 0 {
            return Ok(0);
        }
        let start = mask_xenstore_idx(prod);
        let first = n.min(XENSTORE_RING_SIZE - start);
        let (a, b) = bytes[..n].split_at(first);
        self.copy_in(buf, start, a);
        self.copy_in(buf, 0, b);
        // n <= 1024, so the cast is exact.
        self.index(prod_ix)
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(n)
    }

    /// Consume up to `out.len()` bytes from buffer `buf` whose producer index the peer advances
    /// and whose consumer index is ours.
    fn consume(
        &self,
        buf: usize,
        prod_ix: XsIndex,
        cons_ix: XsIndex,
        out: &mut [u8],
    ) -> Result<usize> {
        let prod = self.index(prod_ix).load(Ordering::Acquire);
        let cons = self.index(cons_ix).load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons);
        if avail > RING {
            return Err(Error::RingOverflow);
        }
        let n = (avail as usize).min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let start = mask_xenstore_idx(cons);
        let first = n.min(XENSTORE_RING_SIZE - start);
        let (a, b) = out[..n].split_at_mut(first);
        self.copy_out(buf, start, a);
        self.copy_out(buf, 0, b);
        self.index(cons_ix)
            .store(cons.wrapping_add(n as u32), Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(n)
    }

    /// Bytes waiting to be consumed (`prod - cons`), or `RingOverflow`.
    fn pending(&self, prod_ix: XsIndex, cons_ix: XsIndex) -> Result<usize> {
        let prod = self.index(prod_ix).load(Ordering::Acquire);
        let cons = self.index(cons_ix).load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons);
        if n > RING {
            return Err(Error::RingOverflow);
        }
        Ok(n as usize)
    }
}

/// Copy `src` to shared memory at `dst` with volatile stores (8 bytes at a time where `dst` is
/// 8-byte aligned).
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[inline]
unsafe fn volatile_copy_to(dst: *mut u8, src: &[u8]) {
    let mut i = 0;
    while i < src.len() && (dst.addr() + i) & 7 != 0 {
        // SAFETY: i < len: in bounds.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while i + 8 <= src.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&src[i..i + 8]);
        // SAFETY: i + 8 <= len: in bounds; dst + i is 8-byte aligned (loop above).
        unsafe {
            dst.add(i)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(w))
        };
        i += 8;
    }
    while i < src.len() {
        // SAFETY: i < len: in bounds.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

/// Copy shared memory at `src` into `dst` with volatile loads (8 bytes at a time where `src` is
/// 8-byte aligned). Every byte is read exactly once.
///
/// # Safety
/// `src` must be valid for reads of `dst.len()` bytes and not overlap `dst`.
#[inline]
unsafe fn volatile_copy_from(src: *const u8, dst: &mut [u8]) {
    let mut i = 0;
    while i < dst.len() && (src.addr() + i) & 7 != 0 {
        // SAFETY: i < len: in bounds.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + 8 <= dst.len() {
        // SAFETY: i + 8 <= len: in bounds; src + i is 8-byte aligned (loop above).
        let w = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < dst.len() {
        // SAFETY: i < len: in bounds.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// The guest (client) side of a XenStore ring page: writes requests into `req`, reads replies
/// and watch events from `rsp`. See the [module docs](self).
pub struct XsGuestRing {
    page: Page,
}

// SAFETY: the wrapper is a pointer to shared memory that is only accessed through atomics and
// volatile copies; moving it to another thread does not change who else accesses the page (the
// peer, always). It is not Sync: the producer/consumer logic assumes one guest-side user.
unsafe impl Send for XsGuestRing {}

impl XsGuestRing {
    /// Attach to the ring page at `page`, as it is (indexes are not reset).
    ///
    /// Fails with [`Error::Invalid`] if `page` is not 4-byte aligned (a real ring page is page
    /// aligned).
    ///
    /// # Safety
    /// `page` must point to at least `size_of::<XenstoreDomainInterface>()` (2076) bytes that
    /// are valid for reads and writes for as long as the returned value lives — normally the
    /// guest's xenstore page (`HVM_PARAM_STORE_PFN` / `start_info.store_mfn`) or a page it
    /// granted. The memory may be written by the daemon (another domain, or another thread
    /// through an [`XsServerRing`]) at any time, but no Rust reference to it may exist, and no
    /// other `XsGuestRing` may be used on the same page at the same time.
    pub unsafe fn new(page: NonNull<u8>) -> Result<Self> {
        // SAFETY: the caller upholds Page::new's contract, which is this one.
        let page = unsafe { Page::new(page)? };
        Ok(XsGuestRing { page })
    }

    /// Where the page is.
    pub fn page(&self) -> NonNull<u8> {
        self.page.base
    }

    /// Write as many of `bytes` into `req` as fit and publish them (`req_prod += n`). Returns
    /// `n`, possibly 0 (the ring is full). Notify the daemon if `n > 0`.
    ///
    /// Fails with [`Error::RingOverflow`] if `req_prod - req_cons > 1024` (corrupt indexes);
    /// nothing is written then.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize> {
        self.page
            .produce(REQ, XsIndex::ReqProd, XsIndex::ReqCons, bytes)
    }

    /// Read up to `buf.len()` bytes from `rsp` and release their space (`rsp_cons += n`).
    /// Returns `n`, possibly 0 (nothing available). Notify the daemon if `n > 0`.
    ///
    /// Fails with [`Error::RingOverflow`] if `rsp_prod - rsp_cons > 1024` (corrupt indexes,
    /// e.g. a daemon claiming more bytes than the buffer holds); nothing is consumed then.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.page
            .consume(RSP, XsIndex::RspProd, XsIndex::RspCons, buf)
    }

    /// Bytes the daemon has produced that we have not read yet (`rsp_prod - rsp_cons`).
    pub fn rsp_available(&self) -> Result<usize> {
        self.page.pending(XsIndex::RspProd, XsIndex::RspCons)
    }

    /// Free space in `req` (`1024 - (req_prod - req_cons)`).
    pub fn req_space(&self) -> Result<usize> {
        Ok(XENSTORE_RING_SIZE - self.page.pending(XsIndex::ReqProd, XsIndex::ReqCons)?)
    }

    /// The `XENSTORE_SERVER_FEATURE_*` bitmap. Bits are only ever added by the daemon.
    pub fn server_features(&self) -> u32 {
        self.page.word(SERVER_FEATURES).load(Ordering::Acquire)
    }

    /// The `connection` field (`XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`). Meaningful only if
    /// the daemon advertises `XENSTORE_SERVER_FEATURE_RECONNECTION`.
    pub fn connection(&self) -> u32 {
        self.page.word(CONNECTION).load(Ordering::Acquire)
    }

    /// The `error` field (`XENSTORE_ERROR_*`; non-zero: the daemon stopped serving this ring).
    /// Meaningful only if the daemon advertises `XENSTORE_SERVER_FEATURE_ERROR`.
    pub fn error(&self) -> u32 {
        self.page.word(ERROR).load(Ordering::Acquire)
    }

    /// Ask the daemon to reset the ring: set `connection = XENSTORE_RECONNECT`. Then notify the
    /// daemon and wait until [`connection`](Self::connection) reads `XENSTORE_CONNECTED`,
    /// ignoring every other field meanwhile. Only valid if the daemon advertises
    /// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
    pub fn request_reconnect(&mut self) {
        self.page
            .word(CONNECTION)
            .store(XENSTORE_RECONNECT, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// The four indexes as they are now.
    pub fn indexes(&self) -> XsRingIndexes {
        self.page.indexes()
    }
}

impl fmt::Debug for XsGuestRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsGuestRing")
            .field("page", &self.page.base)
            .field("indexes", &self.page.indexes())
            .finish()
    }
}

/// The daemon (xenstored) side of a XenStore ring page: reads requests from `req`, writes replies
/// and watch events into `rsp`, and owns the signalling fields. See the [module docs](self).
///
/// What a daemon built on it must do (xenstore-ring.txt):
/// * advertise features with [`add_server_features`](Self::add_server_features) before
///   producing or consuming any data, and never clear them;
/// * notify the guest after every call that moved an index;
/// * on [`Error::RingOverflow`] (the guest's indexes are corrupt), stop serving the ring and,
///   if it advertises `XENSTORE_SERVER_FEATURE_ERROR`, set
///   [`set_error`](Self::set_error)`(XENSTORE_ERROR_RINGIDX)` and notify; likewise
///   `XENSTORE_ERROR_PROTO` for a payload over 4096 bytes;
/// * when [`connection`](Self::connection) reads `XENSTORE_RECONNECT` (and it advertises
///   `XENSTORE_SERVER_FEATURE_RECONNECTION`): drop partial packets, in-flight requests,
///   watches and transactions of the connection, [`reset`](Self::reset) the queues, then
///   [`set_connected`](Self::set_connected) and notify.
pub struct XsServerRing {
    page: Page,
}

// SAFETY: as for XsGuestRing.
unsafe impl Send for XsServerRing {}

impl XsServerRing {
    /// Attach to a guest's ring page mapped at `page`, as it is.
    ///
    /// Fails with [`Error::Invalid`] if `page` is not 4-byte aligned.
    ///
    /// # Safety
    /// As for [`XsGuestRing::new`], with the roles swapped: `page` is normally the guest's page
    /// mapped by grant (or foreign mapping), the guest may write it at any time, and no other
    /// `XsServerRing` may be used on the same page at the same time.
    pub unsafe fn new(page: NonNull<u8>) -> Result<Self> {
        // SAFETY: the caller upholds Page::new's contract, which is this one.
        let page = unsafe { Page::new(page)? };
        Ok(XsServerRing { page })
    }

    /// Where the page is.
    pub fn page(&self) -> NonNull<u8> {
        self.page.base
    }

    /// Read up to `buf.len()` request bytes from `req` and release their space
    /// (`req_cons += n`). Returns `n`, possibly 0. Notify the guest if `n > 0`.
    ///
    /// Fails with [`Error::RingOverflow`] if `req_prod - req_cons > 1024`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.page
            .consume(REQ, XsIndex::ReqProd, XsIndex::ReqCons, buf)
    }

    /// Write as many of `bytes` into `rsp` as fit and publish them (`rsp_prod += n`). Returns
    /// `n`, possibly 0 (the guest has not consumed earlier output). Notify the guest if `n > 0`.
    ///
    /// Fails with [`Error::RingOverflow`] if `rsp_prod - rsp_cons > 1024`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize> {
        self.page
            .produce(RSP, XsIndex::RspProd, XsIndex::RspCons, bytes)
    }

    /// Request bytes waiting (`req_prod - req_cons`).
    pub fn req_available(&self) -> Result<usize> {
        self.page.pending(XsIndex::ReqProd, XsIndex::ReqCons)
    }

    /// Free space in `rsp`.
    pub fn rsp_space(&self) -> Result<usize> {
        Ok(XENSTORE_RING_SIZE - self.page.pending(XsIndex::RspProd, XsIndex::RspCons)?)
    }

    /// The feature bitmap as it is now.
    pub fn server_features(&self) -> u32 {
        self.page.word(SERVER_FEATURES).load(Ordering::Acquire)
    }

    /// Advertise `XENSTORE_SERVER_FEATURE_*` bits (or-ed in: features are never withdrawn).
    pub fn add_server_features(&mut self, bits: u32) {
        self.page
            .word(SERVER_FEATURES)
            .fetch_or(bits, Ordering::AcqRel);
    }

    /// The `connection` field; `XENSTORE_RECONNECT` means the guest asks for a reset.
    pub fn connection(&self) -> u32 {
        self.page.word(CONNECTION).load(Ordering::Acquire)
    }

    /// Set `connection = XENSTORE_CONNECTED` (after a [`reset`](Self::reset)); notify the guest
    /// afterwards. Only the daemon may do this.
    pub fn set_connected(&mut self) {
        self.page
            .word(CONNECTION)
            .store(XENSTORE_CONNECTED, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// The `error` field.
    pub fn error(&self) -> u32 {
        self.page.word(ERROR).load(Ordering::Acquire)
    }

    /// Set the `error` field (`XENSTORE_ERROR_*`; 0 clears it); notify the guest afterwards.
    pub fn set_error(&mut self, error: u32) {
        self.page.word(ERROR).store(error, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Empty both queues: set all four indexes to `start` (C xenstored uses 0; any value is
    /// valid, guests must not assume zero). For a new connection or a reconnect only, while
    /// the guest does not use the ring.
    pub fn reset(&mut self, start: XenstoreRingIdx) {
        for ix in [
            XsIndex::ReqCons,
            XsIndex::ReqProd,
            XsIndex::RspCons,
            XsIndex::RspProd,
        ] {
            self.page.index(ix).store(start, Ordering::Release);
        }
        fence(Ordering::SeqCst);
    }

    /// Store `value` into an index as is, with no checks — for fault-injection tests (e.g. a
    /// corrupt `rsp_prod`). A real daemon has no use for it beyond [`reset`](Self::reset).
    pub fn store_index_unchecked(&mut self, which: XsIndex, value: XenstoreRingIdx) {
        self.page.index(which).store(value, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// The four indexes as they are now.
    pub fn indexes(&self) -> XsRingIndexes {
        self.page.indexes()
    }
}

impl fmt::Debug for XsServerRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsServerRing")
            .field("page", &self.page.base)
            .field("indexes", &self.page.indexes())
            .finish()
    }
}

const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2076);
const _: () = assert!(REQ == 0 && RSP == XENSTORE_RING_SIZE);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::abi::PAGE_SIZE;
    use std::alloc::{alloc, dealloc, Layout};
    use std::vec::Vec;

    /// A page-aligned page standing in for the xenstore page, filled with garbage (the
    /// protocol promises nothing about unused bytes).
    struct Shm {
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl Shm {
        fn new() -> Shm {
            Self::at(0)
        }
        /// With every index at `start`.
        fn at(start: u32) -> Shm {
            let layout = Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: non-zero size.
            let ptr = NonNull::new(unsafe { alloc(layout) }).expect("out of memory");
            // SAFETY: freshly allocated, PAGE_SIZE bytes.
            unsafe { ptr.as_ptr().write_bytes(0xA5, PAGE_SIZE) };
            let shm = Shm { ptr, layout };
            for off in [2048, 2052, 2056, 2060] {
                shm.set(off, start);
            }
            for off in [SERVER_FEATURES, CONNECTION, ERROR] {
                shm.set(off, 0);
            }
            shm
        }
        fn word(&self, off: usize) -> &AtomicU32 {
            // SAFETY: a 4-aligned field offset inside the page.
            unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
        }
        fn set(&self, off: usize, v: u32) {
            self.word(off).store(v, Ordering::SeqCst)
        }
        fn get(&self, off: usize) -> u32 {
            self.word(off).load(Ordering::SeqCst)
        }
        fn byte(&self, off: usize) -> u8 {
            // SAFETY: off < PAGE_SIZE.
            unsafe { self.ptr.as_ptr().add(off).read_volatile() }
        }
        fn pair(&self) -> (XsGuestRing, XsServerRing) {
            // SAFETY: the page outlives both wrappers (dropped at the end of each test, after
            // them); one of each side.
            unsafe {
                (
                    XsGuestRing::new(self.ptr).unwrap(),
                    XsServerRing::new(self.ptr).unwrap(),
                )
            }
        }
    }

    impl Drop for Shm {
        fn drop(&mut self) {
            // SAFETY: allocated in `at` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn misaligned_page_is_invalid() {
        let shm = Shm::new();
        // SAFETY: never used (construction fails before any access).
        let p = unsafe { NonNull::new_unchecked(shm.ptr.as_ptr().add(2)) };
        // SAFETY: as above.
        unsafe {
            assert_eq!(XsGuestRing::new(p).unwrap_err(), Error::Invalid);
            assert_eq!(XsServerRing::new(p).unwrap_err(), Error::Invalid);
        }
    }

    #[test]
    fn request_bytes_reach_the_daemon() {
        let shm = Shm::new();
        let (mut g, mut s) = shm.pair();
        assert_eq!(g.req_space(), Ok(1024));
        assert_eq!(s.req_available(), Ok(0));
        assert_eq!(g.write(b"hello"), Ok(5));
        assert_eq!(shm.get(2052), 5, "req_prod published");
        assert_eq!(&[shm.byte(0), shm.byte(4)], b"ho");
        assert_eq!(s.req_available(), Ok(5));
        let mut buf = [0u8; 3];
        assert_eq!(s.read(&mut buf), Ok(3));
        assert_eq!(&buf, b"hel");
        assert_eq!(shm.get(2048), 3, "req_cons published");
        assert_eq!(s.read(&mut buf), Ok(2));
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(s.read(&mut buf), Ok(0));
        assert_eq!(g.req_space(), Ok(1024));
    }

    #[test]
    fn reply_bytes_reach_the_guest() {
        let shm = Shm::new();
        let (mut g, mut s) = shm.pair();
        assert_eq!(s.rsp_space(), Ok(1024));
        assert_eq!(s.write(b"OK\0"), Ok(3));
        assert_eq!(shm.get(2060), 3);
        assert_eq!(shm.byte(1024), b'O');
        assert_eq!(g.rsp_available(), Ok(3));
        let mut buf = [0u8; 16];
        assert_eq!(g.read(&mut buf), Ok(3));
        assert_eq!(&buf[..3], b"OK\0");
        assert_eq!(shm.get(2056), 3);
        assert_eq!(g.read(&mut buf), Ok(0));
    }

    #[test]
    fn write_stops_at_full_and_resumes() {
        let shm = Shm::new();
        let (mut g, mut s) = shm.pair();
        let data = pattern(3000, 7);
        assert_eq!(g.write(&data), Ok(1024));
        assert_eq!(g.req_space(), Ok(0));
        assert_eq!(g.write(&data[1024..]), Ok(0), "full");
        let mut got = Vec::new();
        let mut buf = [0u8; 700];
        let n = s.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        assert_eq!(g.write(&data[1024..]), Ok(700));
        let mut sent = 1724;
        while got.len() < data.len() {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            sent += g.write(&data[sent..]).unwrap();
        }
        assert_eq!(got, data);
        assert_eq!(s.req_available(), Ok(0));
    }

    /// Every start index modulo a few, every chunk size: bytes come out in order across the
    /// buffer wrap and the u32 wrap.
    #[test]
    fn streams_across_both_wraps() {
        // Under Miri (ci/miri) 1500 bytes per stream (still past the buffer's end from every
        // start, and past the u32 wrap from u32::MAX - 700) and no 1-byte chunks (the 7-byte
        // ones take the same byte-wise paths of the volatile copies): the full set takes four
        // minutes there, this one 20 s.
        let len = if cfg!(miri) { 1500 } else { 5000 };
        let chunks: &[usize] = if cfg!(miri) {
            &[7, 16, 333, 1024, 1500]
        } else {
            &[1, 7, 16, 333, 1024, 1500]
        };
        for start in [0, 1000, 1023, u32::MAX - 700, u32::MAX - 1, u32::MAX] {
            for &chunk in chunks {
                let shm = Shm::at(start);
                let (mut g, mut s) = shm.pair();
                let data = pattern(len, chunk as u8);
                let (mut sent, mut served) = (0, Vec::new());
                let (mut echoed, mut back) = (0, Vec::new());
                let mut buf = std::vec![0u8; chunk];
                while back.len() < data.len() {
                    let end = (sent + chunk).min(data.len());
                    sent += g.write(&data[sent..end]).unwrap();
                    let n = s.read(&mut buf).unwrap();
                    served.extend_from_slice(&buf[..n]);
                    echoed += s.write(&served[echoed..]).unwrap();
                    let n = g.read(&mut buf).unwrap();
                    back.extend_from_slice(&buf[..n]);
                }
                assert_eq!(served, data, "start {start} chunk {chunk}");
                assert_eq!(back, data, "start {start} chunk {chunk}");
                let i = g.indexes();
                assert_eq!(i.req_prod, start.wrapping_add(len as u32));
                assert_eq!(i, s.indexes());
                assert_eq!(
                    (i.req_cons, i.rsp_cons, i.rsp_prod),
                    (i.req_prod, i.req_prod, i.req_prod)
                );
            }
        }
    }

    /// Data lands at `idx % 1024` in the buffer, split across the end.
    #[test]
    fn split_write_positions() {
        let shm = Shm::at(1020);
        let (mut g, _s) = shm.pair();
        assert_eq!(g.write(b"abcdefgh"), Ok(8));
        let at = |i| shm.byte(i);
        assert_eq!([at(1020), at(1021), at(1022), at(1023)], *b"abcd");
        assert_eq!([at(0), at(1), at(2), at(3)], *b"efgh");
        assert_eq!(shm.get(2052), 1028);
    }

    #[test]
    fn corrupt_indexes_are_an_overflow() {
        for start in [0u32, 5, u32::MAX - 3] {
            for bad in [1025u32, 5000, 0x8000_0000, u32::MAX] {
                let shm = Shm::at(start);
                let (mut g, mut s) = shm.pair();
                let mut buf = [0u8; 64];
                // rsp_prod beyond rsp_cons + 1024: guest refuses to read.
                shm.set(2060, start.wrapping_add(bad));
                assert_eq!(g.read(&mut buf), Err(Error::RingOverflow));
                assert_eq!(g.rsp_available(), Err(Error::RingOverflow));
                assert_eq!(s.write(b"x"), Err(Error::RingOverflow));
                assert_eq!(s.rsp_space(), Err(Error::RingOverflow));
                assert_eq!(shm.get(2056), start, "nothing consumed");
                // req_cons moved past req_prod (or too far back): guest refuses to write.
                shm.set(2048, start.wrapping_sub(bad));
                assert_eq!(g.write(b"x"), Err(Error::RingOverflow));
                assert_eq!(g.req_space(), Err(Error::RingOverflow));
                assert_eq!(s.read(&mut buf), Err(Error::RingOverflow));
                assert_eq!(shm.get(2052), start, "nothing produced");
            }
            // Exactly a full buffer is legal.
            let shm = Shm::at(start);
            let (mut g, s) = shm.pair();
            shm.set(2060, start.wrapping_add(1024));
            let mut buf = [0u8; 2048];
            assert_eq!(g.read(&mut buf), Ok(1024));
            assert_eq!(s.rsp_space(), Ok(1024));
        }
    }

    #[test]
    fn signalling_fields() {
        use crate::abi::xs::*;
        let shm = Shm::new();
        let (mut g, mut s) = shm.pair();
        assert_eq!(g.server_features(), 0);
        s.add_server_features(XENSTORE_SERVER_FEATURE_RECONNECTION);
        s.add_server_features(XENSTORE_SERVER_FEATURE_ERROR);
        assert_eq!(g.server_features(), 3);
        assert_eq!(shm.get(SERVER_FEATURES), 3);
        g.request_reconnect();
        assert_eq!(s.connection(), XENSTORE_RECONNECT);
        assert_eq!(shm.get(2068), 1);
        // The daemon empties the queues, at any index, and reconnects.
        g.write(b"partial").unwrap();
        s.reset(77);
        s.set_connected();
        assert_eq!(g.connection(), XENSTORE_CONNECTED);
        assert_eq!(
            g.indexes(),
            XsRingIndexes {
                req_cons: 77,
                req_prod: 77,
                rsp_cons: 77,
                rsp_prod: 77
            }
        );
        s.set_error(XENSTORE_ERROR_PROTO);
        assert_eq!(g.error(), 3);
        assert_eq!(shm.get(2072), 3);
        s.store_index_unchecked(XsIndex::RspProd, 77 + 5000);
        assert_eq!(g.rsp_available(), Err(Error::RingOverflow));
        assert!(std::format!("{g:?} {s:?}").contains("rsp_prod: 5077"));
    }

    /// Two threads streaming 1 MiB through the page, both directions, at a start index close
    /// to the u32 wrap: nothing is lost, duplicated or reordered.
    #[test]
    fn two_threads() {
        let shm = Shm::at(u32::MAX - 4000);
        let (mut g, mut s) = shm.pair();
        // Under Miri (ci/miri), whose data-race detector checks every access of both threads,
        // 12 KiB: still past the u32 wrap (4000) and many times round the 1 KiB buffers.
        const N: usize = if cfg!(miri) { 12 << 10 } else { 1 << 20 };
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut pending = Vec::new();
            let mut total = 0;
            while total < N {
                let n = s.read(&mut buf).unwrap();
                pending.extend_from_slice(&buf[..n]);
                let w = s.write(&pending).unwrap();
                pending.drain(..w);
                total += w;
                if n == 0 && w == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let data = pattern(N, 3);
        let (mut sent, mut back) = (0, Vec::with_capacity(N));
        let mut buf = [0u8; 777];
        while back.len() < N {
            let end = (sent + 900).min(N);
            sent += g.write(&data[sent..end]).unwrap();
            let n = g.read(&mut buf).unwrap();
            back.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        server.join().unwrap();
        assert!(back == data);
    }
}
