//! Shared I/O rings with the semantics of `xen/io/ring.h`.
//!
//! Layout: `DEFINE_RING_TYPES(name, req, rsp)` produces a shared ring of a 64-byte header
//! ([`SringHeader`]) followed by `nr_ents` entries, each a `union { req; rsp; }`.
//!
//! [`FrontRing`] is the requesting end (`name##_front_ring`: private `req_prod_pvt`, `rsp_cons`),
//! [`BackRing`] the answering end (`name##_back_ring`: private `rsp_prod_pvt`, `req_cons`). Each
//! macro of ring.h has a method with the same arithmetic (wrapping `u32`):
//!
//! | ring.h                                   | here                                              |
//! |------------------------------------------|---------------------------------------------------|
//! | `SHARED_RING_INIT` + `FRONT_RING_INIT`   | [`FrontRing::new`] (`XEN_FRONT_RING_INIT`)        |
//! | `FRONT_RING_ATTACH`                      | [`FrontRing::attach`]                             |
//! | `BACK_RING_INIT` / `BACK_RING_ATTACH`    | [`BackRing::new`] / [`BackRing::attach`]          |
//! | `RING_SIZE`                              | [`FrontRing::size`], [`BackRing::size`]           |
//! | `RING_FREE_REQUESTS` / `RING_FULL`       | [`FrontRing::free_requests`] / [`FrontRing::is_full`] |
//! | `RING_GET_REQUEST` + fill                | [`FrontRing::push_request`]                       |
//! | `RING_PUSH_REQUESTS[_AND_CHECK_NOTIFY]`  | [`FrontRing::push_requests`], [`FrontRing::push_requests_and_check_notify`] |
//! | `RING_COPY_RESPONSE`                     | [`FrontRing::take_response`]                      |
//! | `RING_HAS_UNCONSUMED_RESPONSES`          | [`FrontRing::unconsumed_responses`]               |
//! | `RING_FINAL_CHECK_FOR_RESPONSES`         | [`FrontRing::final_check_for_responses`]          |
//! | `RING_RESPONSE_PROD_OVERFLOW`            | checked by [`FrontRing::take_response`]           |
//! | `RING_COPY_REQUEST`                      | [`BackRing::take_request`], [`BackRing::take_request_with`] |
//! | `RING_HAS_UNCONSUMED_REQUESTS`           | [`BackRing::unconsumed_requests`]                 |
//! | `RING_REQUEST_PROD_OVERFLOW` / `_CONS_OVERFLOW` | checked by [`BackRing::take_request`]      |
//! | `RING_GET_RESPONSE` + fill               | [`BackRing::push_response`]                       |
//! | `RING_PUSH_RESPONSES[_AND_CHECK_NOTIFY]` | [`BackRing::push_responses`], [`BackRing::push_responses_and_check_notify`] |
//! | `RING_FINAL_CHECK_FOR_REQUESTS`          | [`BackRing::final_check_for_requests`]            |
//!
//! # Memory ordering
//! The four shared indexes are only accessed as [`AtomicU32`]s. `xen_wmb(); prod = pvt;` is a
//! `Release` store of the producer index (every entry written before it is visible to a peer
//! that sees the new index); `prod = sring->prod; xen_rmb();` is an `Acquire` load of the peer's
//! producer index before its entries are read; `xen_mb()` in the check-notify and final-check
//! macros is a `SeqCst` fence (the store-then-load of the event protocol needs a full barrier on
//! both sides, or a wakeup can be lost). On x86_64 these compile to what Linux's barriers do:
//! plain moves for the index accesses and a `lock or` for the fence.
//!
//! # A peer is not trusted
//! Entries are `Pod`, so any bytes a peer writes are a valid value. Each entry is copied out of
//! shared memory exactly once, as a whole, with volatile loads of aligned words
//! (`RING_COPY_REQUEST`/`RING_COPY_RESPONSE`), and the copy is what the caller gets: the peer
//! cannot change it afterwards, and the compiler cannot re-read shared memory for it. Entries we
//! produce are written with one plain `ptr::write` each into a slot that is ours until the
//! `Release` store that publishes it. Slot numbers are always `idx & (nr_ents - 1)`, so no index
//! a peer writes can point outside the ring. A producer index that claims more entries than the
//! ring can hold is reported as [`Error::RingOverflow`] instead of being consumed.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, offset_of, size_of, MaybeUninit};
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::abi::{Pod, PAGE_SIZE};
use crate::error::{Error, Result};

/// `RING_IDX`.
pub type RingIdx = u32;

/// The header of `struct name##_sring` exactly as `DEFINE_RING_TYPES` lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SringHeader {
    /// Requests produced by the front end.
    pub req_prod: RingIdx,
    /// The back end wants a notification when `req_prod` passes this.
    pub req_event: RingIdx,
    /// Responses produced by the back end.
    pub rsp_prod: RingIdx,
    /// The front end wants a notification when `rsp_prod` passes this.
    pub rsp_event: RingIdx,
    /// `union { netif; tapif_user; uint8_t pvt_pad[4]; } pvt`.
    pub pvt: [u8; 4],
    /// `uint8_t __pad[44]`.
    pub pad: [u8; 44],
}

/// Size of [`SringHeader`]: the offset of `ring[0]`.
pub const SRING_HEADER_SIZE: usize = 64;
const _: () = assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);

/// Size of one ring entry, `sizeof(union { Req req; Rsp rsp; })`: the larger of the two,
/// rounded up to the stricter alignment.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.next_multiple_of(align)
}

/// `__RING_SIZE`: how many entries of `entry_size` bytes fit in a shared ring of `bytes` bytes,
/// rounded down to a power of two (`__RD32`). Zero if not even one fits.
pub const fn ring_size(bytes: usize, entry_size: usize) -> u32 {
    // Whole entries after the header; none when there is no room or `entry_size` is 0.
    let n = match bytes.checked_sub(SRING_HEADER_SIZE) {
        Some(room) if room > 0 => match room.checked_div(entry_size) {
            Some(n) => n,
            None => 0,
        },
        _ => 0,
    };
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    match n.checked_ilog2() {
        Some(log) => 1 << log,
        None => 0,
    }
}

/// Most pages a shared ring may span: 16, blkif's largest `max-ring-page-order` (4), which is
/// also Linux's `XENBUS_MAX_RING_GRANT_ORDER` and [`MAX_MULTI_MAP`](crate::MAX_MULTI_MAP).
pub const MAX_RING_PAGES: usize = 16;
/// Most bytes a shared ring may span ([`MAX_RING_PAGES`] pages).
pub const MAX_RING_BYTES: usize = MAX_RING_PAGES * PAGE_SIZE;

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);
const PVT: usize = offset_of!(SringHeader, pvt);

/// `RING_PUSH_*_AND_CHECK_NOTIFY`'s decision: does moving the producer from `old` to `new`
/// pass the peer's event index `event`?
#[inline(always)]
const fn crosses_event(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The alignment every entry slot has: the ring starts page aligned and entries start after the
/// 64-byte header, so slot `i` (at `64 + i * entry_size`) is aligned to the largest power of two
/// dividing `entry_size`, capped at 64.
const fn slot_align(entry_size: usize) -> usize {
    if entry_size == 0 {
        return 1;
    }
    let a = 1usize << entry_size.trailing_zeros();
    if a > SRING_HEADER_SIZE {
        SRING_HEADER_SIZE
    } else {
        a
    }
}

/// `RING_COPY_REQUEST`/`RING_COPY_RESPONSE`: copy a `T` out of shared memory with volatile loads
/// of the widest words `align` allows, so every byte is read exactly once and the copy is a
/// local value the peer cannot change (the compiler may not re-read shared memory for it).
///
/// # Safety
/// `src` must be valid for reading `size_of::<T>()` bytes and aligned to `align`, a power of two
/// not smaller than `align_of::<T>()`.
#[inline(always)]
unsafe fn copy_out<T: Pod>(src: *const u8, align: usize) -> T {
    let mut out = MaybeUninit::<T>::uninit();
    // SAFETY: the caller's contract.
    unsafe { copy_out_into(src, align, &mut out) };
    // SAFETY: all bytes were written, and T is Pod: every bit pattern is a valid T.
    unsafe { out.assume_init() }
}

/// [`copy_out`] into `out`, which it fully initialises.
///
/// # Safety
/// As for [`copy_out`].
#[inline(always)]
unsafe fn copy_out_into<T: Pod>(src: *const u8, align: usize, out: &mut MaybeUninit<T>) {
    let dst = out.as_mut_ptr().cast::<u8>();
    let size = size_of::<T>();
    let mut off = 0;
    // Widest words first; each width only while `off` stays a multiple of it (true: every
    // wider width is a multiple of the narrower ones) and `width <= align`.
    // x86_64 always has SSE2: one 16-byte load per 16 aligned bytes.
    #[cfg(target_arch = "x86_64")]
    if align >= 16 {
        // SAFETY: `align` is the caller's guaranteed alignment of `src`, so words of at most
        // `align` bytes at multiples of their width are aligned; `copy_words` stays below
        // `size`, and `out` is `size` bytes.
        unsafe { copy_words::<core::arch::x86_64::__m128i>(src, dst, &mut off, size) };
    }
    if align >= 8 {
        // SAFETY: as for the 16-byte words.
        unsafe { copy_words::<u64>(src, dst, &mut off, size) };
    }
    if align >= 4 {
        // SAFETY: as for the 16-byte words.
        unsafe { copy_words::<u32>(src, dst, &mut off, size) };
    }
    if align >= 2 {
        // SAFETY: as for the 16-byte words.
        unsafe { copy_words::<u16>(src, dst, &mut off, size) };
    }
    // SAFETY: as for the 16-byte words (single bytes are always aligned).
    unsafe { copy_words::<u8>(src, dst, &mut off, size) };
}

/// Copy `W`-sized words from `src + off` to `dst + off` (volatile loads, unaligned stores)
/// while a whole word fits below `size`, advancing `off`.
///
/// # Safety
/// `src` and `dst` valid for `size` bytes; `src + off` aligned for `W` for every `off` reached
/// (`off` a multiple of `size_of::<W>()` on entry and `src` aligned to it).
#[inline(always)]
unsafe fn copy_words<W: Copy>(src: *const u8, dst: *mut u8, off: &mut usize, size: usize) {
    let width = size_of::<W>();
    // The last offset a whole word fits at (none: not even one fits).
    let Some(last) = size.checked_sub(width) else {
        return;
    };
    while *off <= last {
        // SAFETY: `off + width <= size` keeps both sides in bounds; alignment per the contract.
        unsafe {
            let w = src.add(*off).cast::<W>().read_volatile();
            dst.add(*off).cast::<W>().write_unaligned(w);
        }
        // bounded: off + width <= size (off <= last = size - width).
        #[allow(clippy::arithmetic_side_effects)]
        let next = *off + width;
        *off = next;
    }
}

/// The shared part both ends see: where the `sring` is and its geometry.
struct Sring {
    /// Start of the `sring` (the header), page aligned.
    base: NonNull<u8>,
    /// `RING_SIZE`: a power of two, at least 1.
    nr_ents: u32,
    /// `nr_ents - 1`: slot of an index.
    mask: u32,
    /// `sizeof(ring[0])`.
    entry_size: usize,
}

impl Sring {
    /// Check the arguments every constructor gets and compute the geometry.
    fn new<Req, Rsp>(mem: NonNull<u8>, bytes: usize) -> Result<Self> {
        const {
            assert!(
                align_of::<Req>() <= SRING_HEADER_SIZE && align_of::<Rsp>() <= SRING_HEADER_SIZE,
                "ring entries must not need more than 64-byte alignment"
            )
        };
        if mem.as_ptr().addr() & (PAGE_SIZE - 1) != 0 || bytes > MAX_RING_BYTES {
            return Err(Error::Invalid);
        }
        let entry_size = entry_size::<Req, Rsp>();
        let nr_ents = ring_size(bytes, entry_size);
        // `None`: not even one entry fits.
        let Some(mask) = nr_ents.checked_sub(1) else {
            return Err(Error::Invalid);
        };
        Ok(Sring {
            base: mem,
            nr_ents,
            mask,
            entry_size,
        })
    }

    /// One of the four shared indexes (`offset` is a field offset of [`SringHeader`]).
    #[inline(always)]
    fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset <= RSP_EVENT && offset & 3 == 0);
        // SAFETY: by the constructors' contract `base` is page aligned and the first `bytes`
        // (> SRING_HEADER_SIZE) bytes are valid for reads and writes for the ring's lifetime,
        // which outlives `&self`; `offset` is 0, 4, 8 or 12, so the pointer is 4-byte aligned and
        // in bounds. Every access to the indexes in this module is atomic; the peer's plain
        // 32-bit accesses (another domain) are single aligned instructions.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// `RING_PUSH_REQUESTS` / `RING_PUSH_RESPONSES`: `xen_wmb(); *prod = new`.
    #[inline(always)]
    fn publish(&self, prod: usize, new: RingIdx) {
        self.index(prod).store(new, Ordering::Release);
    }

    /// `RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY`: publish `new` in the producer index
    /// `prod` and return whether the move from the old value passed the peer's event index
    /// `event` (the peer asked to be notified).
    #[inline(always)]
    fn publish_and_check_notify(&self, prod: usize, event: usize, new: RingIdx) -> bool {
        let prod = self.index(prod);
        let old = prod.load(Ordering::Relaxed);
        prod.store(new, Ordering::Release); // xen_wmb(); prod = new
        fence(Ordering::SeqCst); // xen_mb()
        let event = self.index(event).load(Ordering::Relaxed);
        crosses_event(old, new, event)
    }

    /// The first half of `RING_FINAL_CHECK_FOR_{REQUESTS,RESPONSES}`: ask the peer for a
    /// notification once its producer passes `cons` (`*event = cons + 1; xen_mb()`).
    #[inline(always)]
    fn request_notification(&self, event: usize, cons: RingIdx) {
        self.index(event)
            .store(cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst); // xen_mb()
    }

    /// The entry for ring index `idx` (`&ring[idx & (RING_SIZE - 1)]`), never out of bounds.
    #[inline(always)]
    fn slot(&self, idx: RingIdx) -> *mut u8 {
        let i = (idx & self.mask) as usize;
        // bounded: i < nr_ents and SRING_HEADER_SIZE + nr_ents * entry_size <= bytes <=
        // MAX_RING_BYTES (ring_size, Sring::new).
        #[allow(clippy::arithmetic_side_effects)]
        let off = SRING_HEADER_SIZE + i * self.entry_size;
        // SAFETY: i < nr_ents and SRING_HEADER_SIZE + nr_ents * entry_size <= bytes
        // (ring_size), so the offset stays inside the memory the constructor was given.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// `SHARED_RING_INIT`.
    fn init(&self) {
        self.index(REQ_PROD).store(0, Ordering::Relaxed);
        self.index(RSP_PROD).store(0, Ordering::Relaxed);
        self.index(REQ_EVENT).store(1, Ordering::Relaxed);
        self.index(RSP_EVENT).store(1, Ordering::Relaxed);
        // SAFETY: bytes PVT..SRING_HEADER_SIZE (pvt and __pad) are inside the header, which the
        // constructor's contract makes valid for writes.
        unsafe {
            self.base
                .as_ptr()
                .add(PVT)
                .write_bytes(0, SRING_HEADER_SIZE - PVT)
        };
    }
}

impl fmt::Debug for Sring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sring")
            .field("base", &self.base)
            .field("nr_ents", &self.nr_ents)
            .field("req_prod", &self.index(REQ_PROD).load(Ordering::Relaxed))
            .field("req_event", &self.index(REQ_EVENT).load(Ordering::Relaxed))
            .field("rsp_prod", &self.index(RSP_PROD).load(Ordering::Relaxed))
            .field("rsp_event", &self.index(RSP_EVENT).load(Ordering::Relaxed))
            .finish()
    }
}

/// The front (requesting) end of a shared ring: `name##_front_ring`.
///
/// Pushes requests of type `Req` and takes responses of type `Rsp`. Requests written with
/// [`push_request`](Self::push_request) become visible to the back end at the next
/// [`push_requests`](Self::push_requests) or
/// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
pub struct FrontRing<Req: Pod, Rsp: Pod> {
    /// `req_prod_pvt`: requests written, published or not.
    req_prod_pvt: RingIdx,
    /// `rsp_cons`: responses consumed.
    rsp_cons: RingIdx,
    /// The last `rsp_prod` read (and checked); responses up to it may be read without
    /// another load of the shared index.
    rsp_prod_seen: RingIdx,
    sring: Sring,
    _entries: PhantomData<(Req, Rsp)>,
}

// SAFETY: the ring is the only user of its private indexes; the shared memory is accessed only
// through atomics and volatile copies of `Send` values, from whichever thread owns the ring.
unsafe impl<Req: Pod + Send, Rsp: Pod + Send> Send for FrontRing<Req, Rsp> {}

impl<Req: Pod, Rsp: Pod> FrontRing<Req, Rsp> {
    /// `XEN_FRONT_RING_INIT`: initialise the shared ring (`SHARED_RING_INIT`: producers 0,
    /// event indexes 1, padding zeroed) and attach the front end at index 0.
    ///
    /// Fails with [`Error::Invalid`] if `mem` is not page aligned, `bytes` exceeds
    /// [`MAX_RING_BYTES`], or not one entry fits.
    ///
    /// # Safety
    /// `mem` must point to `bytes` bytes of memory that are valid for reads and writes, shared
    /// with the back end only (no other Rust reference to them exists), and stay valid for as
    /// long as the returned ring (or anything using it) lives. `mem` is normally one or more
    /// consecutive pages granted to the back end.
    pub unsafe fn new(mem: NonNull<u8>, bytes: usize) -> Result<Self> {
        let sring = Sring::new::<Req, Rsp>(mem, bytes)?;
        sring.init();
        Ok(Self::with(sring, 0))
    }

    /// `FRONT_RING_ATTACH`: attach to a shared ring that is already initialised, with
    /// `req_prod_pvt = rsp_cons = start` (e.g. on reconnect, where `start` is the shared
    /// `rsp_prod` after every outstanding response was consumed). The shared ring is not touched.
    ///
    /// Fails as [`new`](Self::new) does.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    pub unsafe fn attach(mem: NonNull<u8>, bytes: usize, start: RingIdx) -> Result<Self> {
        Ok(Self::with(Sring::new::<Req, Rsp>(mem, bytes)?, start))
    }

    fn with(sring: Sring, start: RingIdx) -> Self {
        FrontRing {
            req_prod_pvt: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            sring,
            _entries: PhantomData,
        }
    }

    /// `RING_SIZE`: number of entries (a power of two).
    #[inline]
    pub fn size(&self) -> u32 {
        self.sring.nr_ents
    }

    /// `req_prod_pvt`: index of the next request to be written.
    #[inline]
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// `rsp_cons`: index of the next response to be consumed.
    #[inline]
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// The start of the shared ring this end was attached to.
    pub fn shared(&self) -> NonNull<u8> {
        self.sring.base
    }

    /// `RING_FREE_REQUESTS`: `RING_SIZE - (req_prod_pvt - rsp_cons)`.
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.sring
            .nr_ents
            .wrapping_sub(self.req_prod_pvt.wrapping_sub(self.rsp_cons))
    }

    /// `RING_FULL`: no request can be written until a response is consumed.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// `RING_GET_REQUEST(r, r->req_prod_pvt++)` filled with `req` (one volatile copy of the whole
    /// entry). Not visible to the back end until [`push_requests`](Self::push_requests) or
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    ///
    /// Returns `Err(req)` if the ring is full ([`is_full`](Self::is_full)).
    #[inline]
    pub fn push_request(&mut self, req: Req) -> core::result::Result<(), Req> {
        if self.is_full() {
            return Err(req);
        }
        let slot = self.sring.slot(self.req_prod_pvt).cast::<Req>();
        // SAFETY: `slot` is an in-bounds entry (Sring::slot), aligned for Req (page-aligned
        // base, 64-byte header, entry_size a multiple of Req's alignment <= 64). The slot is
        // ours until the Release store of req_prod publishes it, which orders this write before
        // it; a plain write lets the compiler fill the entry as C fills RING_GET_REQUEST's.
        unsafe { slot.write(req) };
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`: publish every request written so far (`xen_wmb();
    /// req_prod = req_prod_pvt`).
    #[inline]
    pub fn push_requests(&mut self) {
        self.sring.publish(REQ_PROD, self.req_prod_pvt);
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publish every request written so far and return
    /// whether the back end must be notified (the new `req_prod` passed its `req_event`).
    #[inline]
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        self.sring
            .publish_and_check_notify(REQ_PROD, REQ_EVENT, self.req_prod_pvt)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES` (`XEN_RING_NR_UNCONSUMED_RESPONSES`):
    /// `rsp_prod - rsp_cons`, as the back end claims it (not checked for overflow).
    #[inline]
    pub fn unconsumed_responses(&self) -> u32 {
        self.sring
            .index(RSP_PROD)
            .load(Ordering::Acquire)
            .wrapping_sub(self.rsp_cons)
    }

    /// Whether [`unconsumed_responses`](Self::unconsumed_responses) is not zero.
    #[inline]
    pub fn has_unconsumed_responses(&self) -> bool {
        self.unconsumed_responses() != 0
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: if no response is waiting, set `rsp_event = rsp_cons + 1`
    /// (ask for a notification on the next response), then check again. `true` means there
    /// is work: do not go to sleep.
    #[inline]
    pub fn final_check_for_responses(&mut self) -> bool {
        if self.has_unconsumed_responses() {
            return true;
        }
        self.sring.request_notification(RSP_EVENT, self.rsp_cons);
        self.has_unconsumed_responses()
    }

    /// `RING_COPY_RESPONSE(r, r->rsp_cons++, &rsp)`: take the next response, if the back end
    /// has published one.
    ///
    /// Fails with [`Error::RingOverflow`] if the back end claims more responses than there are
    /// requests outstanding — which includes `RING_RESPONSE_PROD_OVERFLOW` (`rsp_prod - rsp_cons
    /// > RING_SIZE`) and a `rsp_prod` that went backwards. Nothing is consumed then.
    #[inline]
    pub fn take_response(&mut self) -> Result<Option<Rsp>> {
        let cons = self.rsp_cons;
        if cons == self.rsp_prod_seen {
            let prod = self.sring.index(RSP_PROD).load(Ordering::Acquire); // xen_rmb()
            let claimed = prod.wrapping_sub(cons);
            if claimed > self.sring.nr_ents // RING_RESPONSE_PROD_OVERFLOW
                || claimed > self.req_prod_pvt.wrapping_sub(cons)
            {
                return Err(Error::RingOverflow);
            }
            if claimed == 0 {
                return Ok(None);
            }
            self.rsp_prod_seen = prod;
        }
        let slot = self.sring.slot(cons);
        // SAFETY: in-bounds entry of entry_size >= size_of::<Rsp>() bytes, aligned to
        // slot_align (>= Rsp's alignment); the back end published it with a Release store of
        // rsp_prod that the Acquire load above (now or earlier) observed. Copied out once.
        let rsp = unsafe { copy_out::<Rsp>(slot, slot_align(entry_size::<Req, Rsp>())) };
        self.rsp_cons = cons.wrapping_add(1);
        Ok(Some(rsp))
    }
}

impl<Req: Pod, Rsp: Pod> fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .field("sring", &self.sring)
            .finish()
    }
}

/// The back (answering) end of a shared ring: `name##_back_ring`.
///
/// Takes requests of type `Req` and pushes responses of type `Rsp`.
pub struct BackRing<Req: Pod, Rsp: Pod> {
    /// `rsp_prod_pvt`: responses written, published or not.
    rsp_prod_pvt: RingIdx,
    /// `req_cons`: requests consumed.
    req_cons: RingIdx,
    /// The last `req_prod` read (and checked); requests up to it may be read without another
    /// load of the shared index.
    req_prod_seen: RingIdx,
    sring: Sring,
    _entries: PhantomData<(Req, Rsp)>,
}

// SAFETY: as for FrontRing.
unsafe impl<Req: Pod + Send, Rsp: Pod + Send> Send for BackRing<Req, Rsp> {}

impl<Req: Pod, Rsp: Pod> BackRing<Req, Rsp> {
    /// `BACK_RING_INIT`: attach the back end at index 0 to a ring the front end initialised.
    /// The shared ring is not touched.
    ///
    /// Fails with [`Error::Invalid`] if `mem` is not page aligned, `bytes` exceeds
    /// [`MAX_RING_BYTES`], or not one entry fits.
    ///
    /// # Safety
    /// `mem` must point to `bytes` bytes of memory that are valid for reads and writes, shared
    /// with the front end only (no other Rust reference to them exists), and stay valid for as
    /// long as the returned ring (or anything using it) lives. `mem` is normally the front end's
    /// granted pages, mapped consecutively.
    pub unsafe fn new(mem: NonNull<u8>, bytes: usize) -> Result<Self> {
        // SAFETY: the caller upholds the same contract.
        unsafe { Self::attach(mem, bytes, 0) }
    }

    /// `BACK_RING_ATTACH`: attach with `rsp_prod_pvt = req_cons = start` (e.g. on reconnect).
    /// The shared ring is not touched.
    ///
    /// Fails as [`new`](Self::new) does.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    pub unsafe fn attach(mem: NonNull<u8>, bytes: usize, start: RingIdx) -> Result<Self> {
        let sring = Sring::new::<Req, Rsp>(mem, bytes)?;
        Ok(BackRing {
            rsp_prod_pvt: start,
            req_cons: start,
            req_prod_seen: start,
            sring,
            _entries: PhantomData,
        })
    }

    /// `RING_SIZE`: number of entries (a power of two).
    #[inline]
    pub fn size(&self) -> u32 {
        self.sring.nr_ents
    }

    /// `req_cons`: index of the next request to be consumed.
    #[inline]
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// `rsp_prod_pvt`: index of the next response to be written.
    #[inline]
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// The start of the shared ring this end was attached to.
    pub fn shared(&self) -> NonNull<u8> {
        self.sring.base
    }

    /// Requests consumed but not yet answered (`req_cons - rsp_prod_pvt`).
    #[inline]
    pub fn requests_in_progress(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS` (`XEN_RING_NR_UNCONSUMED_REQUESTS`):
    /// `min(req_prod - req_cons, RING_SIZE - (req_cons - rsp_prod_pvt))`.
    #[inline]
    pub fn unconsumed_requests(&self) -> u32 {
        let req = self
            .sring
            .index(REQ_PROD)
            .load(Ordering::Acquire)
            .wrapping_sub(self.req_cons);
        let rsp = self.sring.nr_ents.wrapping_sub(self.requests_in_progress());
        req.min(rsp)
    }

    /// Whether [`unconsumed_requests`](Self::unconsumed_requests) is not zero.
    #[inline]
    pub fn has_unconsumed_requests(&self) -> bool {
        self.unconsumed_requests() != 0
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: if no request is waiting, set `req_event = req_cons + 1`
    /// (ask for a notification on the next request), then check again. `true` means there is
    /// work: do not go to sleep.
    #[inline]
    pub fn final_check_for_requests(&mut self) -> bool {
        if self.has_unconsumed_requests() {
            return true;
        }
        self.sring.request_notification(REQ_EVENT, self.req_cons);
        self.has_unconsumed_requests()
    }

    /// `RING_COPY_REQUEST(r, r->req_cons++, &req)`: take the next request, if the front end has
    /// published one and the ring has room for its response.
    ///
    /// Returns `Ok(None)` when there is no request, and also when `RING_REQUEST_CONS_OVERFLOW`
    /// holds (`RING_SIZE` requests are consumed but unanswered: push responses first).
    ///
    /// Fails with [`Error::RingOverflow`] when the front end claims more requests than the ring
    /// can hold: `RING_REQUEST_PROD_OVERFLOW` (`req_prod - rsp_prod_pvt > RING_SIZE`), or
    /// `req_prod - req_cons > RING_SIZE` (a `req_prod` that went backwards). Nothing is
    /// consumed then.
    #[inline]
    pub fn take_request(&mut self) -> Result<Option<Req>> {
        Ok(self.next_request()?.map(|slot| {
            // SAFETY: `next_request` returns a published, in-bounds slot of entry_size >=
            // size_of::<Req>() bytes, aligned to slot_align (>= Req's alignment). Req is Pod,
            // so any bytes are a valid value; it is copied out once and never read again.
            unsafe { copy_out::<Req>(slot, slot_align(entry_size::<Req, Rsp>())) }
        }))
    }

    /// [`take_request`](Self::take_request), handing `f` a reference to the local copy instead
    /// of moving it out: the same single volatile copy, into a buffer on this stack frame, which
    /// `f` reads (or passes on) in place. For large entries that `f` hands to other code, this
    /// saves the compiler a move of the whole request.
    #[inline]
    pub fn take_request_with<R>(&mut self, f: impl FnOnce(&Req) -> R) -> Result<Option<R>> {
        let Some(slot) = self.next_request()? else {
            return Ok(None);
        };
        let mut copy = MaybeUninit::<Req>::uninit();
        // SAFETY: as in take_request.
        unsafe { copy_out_into::<Req>(slot, slot_align(entry_size::<Req, Rsp>()), &mut copy) };
        // SAFETY: copy_out_into initialised every byte, and Req is Pod.
        Ok(Some(f(unsafe { copy.assume_init_ref() })))
    }

    /// The checks of [`take_request`](Self::take_request): the slot of the next request to copy
    /// out (and `req_cons` advanced past it), `None`, or the overflow error.
    #[inline(always)]
    fn next_request(&mut self) -> Result<Option<*const u8>> {
        let cons = self.req_cons;
        if cons == self.req_prod_seen {
            let prod = self.sring.index(REQ_PROD).load(Ordering::Acquire); // xen_rmb()
            let n = self.sring.nr_ents;
            if prod.wrapping_sub(self.rsp_prod_pvt) > n // RING_REQUEST_PROD_OVERFLOW
                || prod.wrapping_sub(cons) > n
            {
                return Err(Error::RingOverflow);
            }
            if prod == cons || cons.wrapping_sub(self.rsp_prod_pvt) >= n {
                // Nothing new, or RING_REQUEST_CONS_OVERFLOW. The latter cannot hold once the
                // checks above passed (req_cons <= req_prod_seen <= rsp_prod_pvt + RING_SIZE,
                // and rsp_prod_pvt only grows), so every request handed out below also
                // satisfies it; it is tested here, once per load of req_prod, as a backstop.
                return Ok(None);
            }
            self.req_prod_seen = prod;
        }
        // Published: the Acquire load above (now or earlier) observed the front end's Release
        // store of a req_prod past `cons`. The slot stays the front end's to reuse only after
        // our response for it, so advancing req_cons before the copy is safe.
        self.req_cons = cons.wrapping_add(1);
        Ok(Some(self.sring.slot(cons).cast_const()))
    }

    /// `RING_GET_RESPONSE(r, r->rsp_prod_pvt++)` filled with `rsp` (one volatile copy of the
    /// whole entry). Not visible to the front end until [`push_responses`](Self::push_responses)
    /// or [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    ///
    /// Returns `Err(rsp)` if every consumed request has been answered already
    /// (`rsp_prod_pvt == req_cons`): in the one-response-per-request protocols ring.h serves,
    /// that slot may still hold a request the back end has not consumed.
    #[inline]
    pub fn push_response(&mut self, rsp: Rsp) -> core::result::Result<(), Rsp> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(rsp);
        }
        let slot = self.sring.slot(self.rsp_prod_pvt).cast::<Rsp>();
        // SAFETY: in-bounds entry, aligned for Rsp (see FrontRing::push_request); its request
        // was already copied out, and the front end reads it only after the Release store of
        // rsp_prod, which orders this write before it.
        unsafe { slot.write(rsp) };
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`: publish every response written so far (`xen_wmb();
    /// rsp_prod = rsp_prod_pvt`).
    #[inline]
    pub fn push_responses(&mut self) {
        self.sring.publish(RSP_PROD, self.rsp_prod_pvt);
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publish every response written so far and return
    /// whether the front end must be notified (the new `rsp_prod` passed its `rsp_event`).
    #[inline]
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        self.sring
            .publish_and_check_notify(RSP_PROD, RSP_EVENT, self.rsp_prod_pvt)
    }
}

impl<Req: Pod, Rsp: Pod> fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("req_cons", &self.req_cons)
            .field("sring", &self.sring)
            .finish()
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]
mod tests;
