//! Every access of blkback to memory shared with the frontend, and its only `unsafe`: the ring
//! (attached to the frontend's mapped pages) and the granted I/O pages of a request (copied from
//! or into, never referenced). Peer memory is only touched through raw-pointer copies, so no
//! Rust reference to bytes the peer may change at any time ever exists.

use alloc::vec::Vec;
use core::mem::size_of;

use xen_platform::abi::{DomId, GrantRef, Pod, PAGE_SIZE};
use xen_platform::ring::BackRing;
use xen_platform::{GrantMapper, MultiMapping, Result, MAX_MULTI_MAP};

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
    pub fn map(p: &impl GrantMapper, domid: DomId, refs: &[GrantRef]) -> Result<SharedRing> {
        let map = p.map_multi(domid, refs, false)?;
        // SAFETY: `map` maps `map.pages` pages read-write at `map.addr`, shared with the
        // frontend only; the ring is dropped (in `unmap`, or before the mapping in `Drop`
        // order below) before the mapping is released, so the memory outlives the ring.
        let ring = unsafe { BlkBackRing::new(map.addr, map.pages * PAGE_SIZE) };
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

    /// Detach the ring, then unmap its pages. Idempotent.
    pub fn unmap(&mut self, p: &impl GrantMapper) {
        self.ring = None;
        if let Some(m) = self.map.take() {
            let _ = p.unmap_multi(m);
        }
    }

    /// Whether the pages are still mapped (a leak if so at drop).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
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
        p: &impl GrantMapper,
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
        Some(chunk.addr.as_ptr().wrapping_add(i * PAGE_SIZE + off))
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
    pub fn unmap(&mut self, p: &impl GrantMapper) {
        for m in self.chunks.drain(..) {
            let _ = p.unmap_multi(m);
        }
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
