//! Every access of blkback to memory shared with the frontend, and its only `unsafe`: the ring
//! (attached to the frontend's mapped pages) and the granted I/O pages of a request (copied from
//! or into, never referenced). Peer memory is only touched through raw-pointer copies, so no
//! Rust reference to bytes the peer may change at any time ever exists.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use alloc::vec::Vec;
use core::mem::size_of;

use xen_platform::abi::{DomId, GrantRef, Pod, PAGE_SIZE};
use xen_platform::ring::BackRing;
use xen_platform::{Error, GrantMapper, MultiMapping, Result, MAX_MULTI_MAP};

use crate::abi::{BlkifRequest, BlkifResponse};

/// The blkif back ring.
pub type BlkBackRing = BackRing<BlkifRequest, BlkifResponse>;

/// The frontend's ring pages, mapped, with the back ring attached to them.
pub struct SharedRing {
    ring: Option<BlkBackRing>,
    map: Option<MultiMapping>,
}

impl SharedRing {
    /// Map `refs` (1..=16 pages) of `domid` writable and attach a back ring at index 0.
    pub fn map(
        p: &(impl GrantMapper + ?Sized),
        domid: DomId,
        refs: &[GrantRef],
    ) -> Result<SharedRing> {
        let map = p.map_multi(domid, refs, false)?;
        let ring = match map.pages.checked_mul(PAGE_SIZE) {
            // SAFETY: `map` maps `map.pages` pages read-write at `map.addr`, shared with the
            // frontend only; the ring is dropped (in `unmap`, or before the mapping in `Drop`
            // order below) before the mapping is released, so the memory outlives the ring.
            Some(len) => unsafe { BlkBackRing::new(map.addr, len) },
            None => Err(Error::Invalid),
        };
        match ring {
            Ok(ring) => Ok(SharedRing {
                ring: Some(ring),
                map: Some(map),
            }),
            Err(e) => {
                let _ = p.unmap_multi(map);
                Err(e)
            }
        }
    }

    /// The ring (`None` once unmapped).
    pub fn ring(&mut self) -> Option<&mut BlkBackRing> {
        self.ring.as_mut()
    }

    /// The ring, to look at (`None` once unmapped).
    pub fn ring_ref(&self) -> Option<&BlkBackRing> {
        self.ring.as_ref()
    }

    /// Detach the ring, then unmap its pages. Idempotent.
    pub fn unmap(&mut self, p: &(impl GrantMapper + ?Sized)) {
        self.ring = None;
        if let Some(m) = self.map.take() {
            let _ = p.unmap_multi(m);
        }
    }
}

/// Granted pages, mapped in chunks of up to 16 (one `map_multi` each, so grants are mapped
/// and unmapped in batches). Page `i` is page `i % 16` of chunk `i / 16`. The data path maps
/// at most 16 at a time, for the length of one copy.
pub struct SegPages {
    chunks: Vec<MultiMapping>,
    readonly: bool,
}

impl SegPages {
    /// Map `refs` of `domid` (read-only when the backend only reads them). All or nothing.
    pub fn map(
        p: &(impl GrantMapper + ?Sized),
        domid: DomId,
        refs: &[GrantRef],
        readonly: bool,
    ) -> Result<SegPages> {
        let mut chunks = Vec::with_capacity(refs.len().div_ceil(MAX_MULTI_MAP));
        for part in refs.chunks(MAX_MULTI_MAP) {
            match p.map_multi(domid, part, readonly) {
                Ok(m) => chunks.push(m),
                Err(e) => {
                    for m in chunks {
                        let _ = p.unmap_multi(m);
                    }
                    return Err(e);
                }
            }
        }
        Ok(SegPages { chunks, readonly })
    }

    fn page_ptr(&self, page: usize, off: usize, len: usize) -> Option<*mut u8> {
        let chunk = self.chunks.get(page / MAX_MULTI_MAP)?;
        let i = page % MAX_MULTI_MAP;
        if i >= chunk.pages || off.checked_add(len)? > PAGE_SIZE {
            return None;
        }
        let at = i.checked_mul(PAGE_SIZE)?.checked_add(off)?;
        Some(chunk.addr.as_ptr().wrapping_add(at))
    }

    /// Copy `dst.len()` bytes at `off` of page `page` into `dst`. `false` if out of bounds.
    pub fn read(&self, page: usize, off: usize, dst: &mut [u8]) -> bool {
        let Some(src) = self.page_ptr(page, off, dst.len()) else {
            return false;
        };
        // SAFETY: `page_ptr` checked that [src, src + len) lies inside one page of a live
        // mapping we own (readable); `dst` is our own buffer, so the two cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copy `src` to `off` of page `page`. `false` if out of bounds or mapped read-only.
    pub fn write(&self, page: usize, off: usize, src: &[u8]) -> bool {
        if self.readonly {
            return false;
        }
        let Some(dst) = self.page_ptr(page, off, src.len()) else {
            return false;
        };
        // SAFETY: as in `read`, and the mapping is writable (checked above).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }

    /// Unmap every chunk (one `unmap_multi` per chunk). Idempotent.
    pub fn unmap(&mut self, p: &(impl GrantMapper + ?Sized)) {
        for m in self.chunks.drain(..) {
            let _ = p.unmap_multi(m);
        }
    }
}

/// The frontend's persistent grants (`feature-persistent`, blkif.h): each page is mapped
/// read-write the first time a request names it and stays mapped until the connection ends,
/// so the data path maps nothing per request. The pages a request names for the first time
/// are mapped together (`map_multi`, up to 16 at consecutive addresses), so the segments of a
/// buffer the frontend reuses are copied as one run. At most `cap` are kept; a grant beyond
/// that (or one that cannot be mapped read-write, e.g. a frontend that granted it read-only
/// against blkif.h note 8) is left to the per-request path, as blkif.h allows ("fall back to
/// non persistent mode").
///
/// Lookups are one index: `slot[gref]` names the chunk and page, for grant references below
/// [`MAX_PERSISTENT_GREF`] (a v1 grant table of 64 frames — Linux's default
/// `gnttab_max_frames` — has 32768 entries); larger references always take the per-request path.
pub struct Persistent {
    chunks: Vec<MultiMapping>,
    /// `slot[gref]`: `(chunk << 4 | page) + 1`, 0 when `gref` is not mapped.
    slot: Vec<u32>,
    cap: usize,
}

/// Pages of a bounded mapping window (`GrantMapper::map_slots`) that persistent grants leave
/// free: two `map_multi` chunks for the per-request path, a 16-page ring of a device that
/// connects later.
pub const WINDOW_RESERVE: usize = 3 * MAX_MULTI_MAP;

/// Grant references at or above this are never kept mapped (the lookup table stays ≤ 256 KiB).
pub const MAX_PERSISTENT_GREF: GrantRef = 1 << 16;

impl Persistent {
    /// No grant mapped yet; at most `cap` will be.
    pub fn new(cap: usize) -> Persistent {
        Persistent {
            chunks: Vec::new(),
            slot: Vec::new(),
            cap,
        }
    }

    /// Grants mapped.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|m| m.pages).sum()
    }

    /// Page `gref`, if it is mapped.
    #[inline]
    pub fn page(&self, gref: GrantRef) -> Option<PeerPage> {
        let v = *self.slot.get(gref as usize)?;
        let v = v.checked_sub(1)?;
        let (chunk, page) = (v >> 4, v & 15);
        let m = self.chunks.get(chunk as usize)?;
        ((page as usize) < m.pages).then_some(PeerPage { chunk, page })
    }

    /// Map `grefs` of `domid` (distinct, none mapped yet) read-write, up to 16 at a time at
    /// consecutive addresses. False when they would pass the cap, a reference is past
    /// [`MAX_PERSISTENT_GREF`], or a map fails (what was mapped before the failure stays).
    pub fn map_new(
        &mut self,
        p: &(impl GrantMapper + ?Sized),
        domid: DomId,
        grefs: &[GrantRef],
    ) -> bool {
        let over_cap = self
            .len()
            .checked_add(grefs.len())
            .is_none_or(|n| n > self.cap);
        if over_cap || grefs.iter().any(|&g| g >= MAX_PERSISTENT_GREF) {
            return false;
        }
        // A bounded mapping window (a real guest's): keep room for the short-lived mappings
        // of the per-request path and for rings still to come, or every later request of
        // every device fails once persistent grants filled it (seen on real Xen with Linux).
        if let Some((free, _)) = p.map_slots() {
            if grefs
                .len()
                .checked_add(WINDOW_RESERVE)
                .is_none_or(|need| free < need)
            {
                return false;
            }
        }
        for part in grefs.chunks(MAX_MULTI_MAP) {
            let Ok(m) = p.map_multi(domid, part, false) else {
                return false;
            };
            let chunk = self.chunks.len() as u32;
            self.chunks.push(m);
            for (i, &g) in part.iter().enumerate() {
                // g < MAX_PERSISTENT_GREF and i < 16 (checked above): nothing is `None`.
                let g = g as usize;
                let (Some(v), Some(end)) =
                    ((chunk << 4 | i as u32).checked_add(1), g.checked_add(1))
                else {
                    return false;
                };
                if self.slot.len() < end {
                    self.slot.resize(end, 0);
                }
                let Some(slot) = self.slot.get_mut(g) else {
                    return false;
                };
                *slot = v;
            }
        }
        true
    }

    /// Unmap every grant (at disconnect). Idempotent.
    pub fn unmap_all(&mut self, p: &(impl GrantMapper + ?Sized)) {
        self.slot = Vec::new();
        for m in core::mem::take(&mut self.chunks) {
            let _ = p.unmap_multi(m);
        }
    }
}

/// A page of the frontend's, mapped read-write by [`Persistent`]: which mapping and which
/// page of it, no address. Bytes are reached only through a [`SegCursor`], which borrows the
/// `Persistent` and looks the mapping up again: once [`Persistent::unmap_all`] ran, a
/// `PeerPage` kept from before names nothing and copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct PeerPage {
    /// Which `map_multi` mapping holds it: runs are only merged inside one.
    chunk: u32,
    /// Its page in that mapping.
    page: u32,
}

/// Bytes of one or more consecutive pages of one [`Persistent`] chunk: segments of a request,
/// as an offset and a length inside the mapping (resolved at copy time, bounds-checked).
#[derive(Debug, Clone, Copy)]
pub struct PeerSeg {
    chunk: u32,
    /// Byte offset inside the chunk's mapping.
    start: usize,
    len: usize,
}

impl PeerSeg {
    /// Bytes `off..off + len` of `page`; `None` unless they lie inside the page.
    pub fn new(page: PeerPage, off: usize, len: usize) -> Option<PeerSeg> {
        if off.checked_add(len)? > PAGE_SIZE {
            return None;
        }
        Some(PeerSeg {
            start: (page.page as usize)
                .checked_mul(PAGE_SIZE)?
                .checked_add(off)?,
            len,
            chunk: page.chunk,
        })
    }

    /// Append `next` when it continues this run inside the same mapping (a whole-page
    /// segment after one that ends its page, on the next page of the chunk).
    pub fn extend(&mut self, next: &PeerSeg) -> bool {
        let joined = (next.chunk == self.chunk
            && self.start.checked_add(self.len) == Some(next.start))
        .then(|| self.len.checked_add(next.len))
        .flatten();
        match joined {
            Some(len) => {
                self.len = len;
                true
            }
            None => false,
        }
    }
}

/// Walks the segments of a request in order, copying between them and our own buffers. It
/// borrows the [`Persistent`] that maps them, so they cannot be unmapped while it copies.
pub struct SegCursor<'a> {
    pers: Option<&'a Persistent>,
    segs: &'a [PeerSeg],
    i: usize,
    off: usize,
}

impl<'a> SegCursor<'a> {
    /// At the first byte of `segs`, which `pers` mapped (with no `pers`, nothing is copied).
    pub fn new(pers: Option<&'a Persistent>, segs: &'a [PeerSeg]) -> SegCursor<'a> {
        SegCursor {
            pers,
            segs,
            i: 0,
            off: 0,
        }
    }

    /// Copy from the segments into `dst` (a write's data); returns the bytes copied (fewer than
    /// `dst.len()` only when the segments run out or one is no longer mapped).
    pub fn read_into(&mut self, dst: &mut [u8]) -> usize {
        self.walk(dst.len(), &mut |peer, at, n| {
            // SAFETY: `peer` points at `n` bytes inside one live `map_multi` mapping of the
            // `Persistent` this cursor borrows (`walk` bounds them by the mapping's pages), so
            // it cannot be unmapped meanwhile; `dst[at..at + n]` is our own memory (walk keeps
            // at + n <= dst.len()), so they do not overlap. The frontend may change the bytes
            // during the copy: they are copied as raw bytes, never referenced.
            unsafe { core::ptr::copy_nonoverlapping(peer, dst.as_mut_ptr().add(at), n) }
        })
    }

    /// Copy `src` into the segments (a read's data); returns the bytes copied.
    pub fn write_from(&mut self, src: &[u8]) -> usize {
        self.walk(src.len(), &mut |peer, at, n| {
            // SAFETY: as in `read_into`; the mapping is read-write (Persistent maps so).
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr().add(at), peer, n) }
        })
    }

    fn walk(&mut self, want: usize, copy: &mut dyn FnMut(*mut u8, usize, usize)) -> usize {
        let Some(pers) = self.pers else {
            return 0;
        };
        let mut done = 0usize;
        // Bytes still wanted (`want - done`).
        while let Some(room) = want.checked_sub(done).filter(|&r| r > 0) {
            let Some(seg) = self.segs.get(self.i) else {
                break;
            };
            let Some(m) = pers.chunks.get(seg.chunk as usize) else {
                break;
            };
            let in_map = seg
                .start
                .checked_add(seg.len)
                .zip(m.pages.checked_mul(PAGE_SIZE))
                .is_some_and(|(end, size)| end <= size);
            // `self.off < seg.len` and `n <= room`: none of these is `None`.
            let (true, Some(left), Some(at)) = (
                in_map,
                seg.len.checked_sub(self.off),
                seg.start.checked_add(self.off),
            ) else {
                break;
            };
            let n = left.min(room);
            let (Some(next_done), Some(next_off)) = (done.checked_add(n), self.off.checked_add(n))
            else {
                break;
            };
            copy(m.addr.as_ptr().wrapping_add(at), done, n);
            done = next_done;
            self.off = next_off;
            if self.off == seg.len {
                self.i = self.i.saturating_add(1);
                self.off = 0;
            }
        }
        done
    }
}

/// Reinterpret a ring entry as another blkif request layout (`blkif_request_discard`,
/// `blkif_request_indirect`), as the C union does: the bytes of our local copy, read once more.
pub fn cast<A: Pod, B: Pod>(a: &A) -> B {
    const { assert!(size_of::<B>() <= size_of::<A>()) };
    // SAFETY: `a` is a valid reference to at least size_of::<B>() bytes (asserted at compile
    // time); both are Pod (every byte pattern is a valid B, and A has no padding bytes), and
    // read_unaligned has no alignment requirement.
    unsafe { core::ptr::read_unaligned((a as *const A).cast::<B>()) }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used
    )]

    use super::*;
    use xen_platform::{Grants, Pages};

    /// Segments resolved before `unmap_all` reach no memory after it: the cursor looks the
    /// mapping up again in the `Persistent` it borrows (before, they held raw addresses that
    /// safe code could use after the unmap).
    #[test]
    fn segments_kept_past_unmap_all_copy_nothing() {
        let hv = xen_sim::Hypervisor::new();
        let back = hv.create_domain("back");
        let front = hv.create_domain("front");
        let run = front.alloc(2).unwrap();
        let mut grefs = Vec::new();
        for i in 0..2 {
            let frame = front.frame(run.page(i)).unwrap();
            grefs.push(front.grant(back.id(), frame, false).unwrap());
        }
        // SAFETY: the run is two writable pages the front owns; nothing else uses them yet.
        unsafe { run.addr.as_ptr().add(PAGE_SIZE + 8).write(0xa5) };
        let mut pers = Persistent::new(16);
        assert!(pers.map_new(&back, front.id(), &grefs));
        let seg = PeerSeg::new(pers.page(grefs[1]).unwrap(), 8, 512).unwrap();
        let mut buf = [0u8; 512];
        assert_eq!(SegCursor::new(Some(&pers), &[seg]).read_into(&mut buf), 512);
        assert_eq!(buf[0], 0xa5);
        pers.unmap_all(&back);
        assert!(pers.page(grefs[1]).is_none());
        let mut buf = [0u8; 512];
        assert_eq!(SegCursor::new(Some(&pers), &[seg]).read_into(&mut buf), 0);
        assert_eq!(SegCursor::new(Some(&pers), &[seg]).write_from(&buf), 0);
        assert_eq!(SegCursor::new(None, &[seg]).read_into(&mut buf), 0);
    }
}
