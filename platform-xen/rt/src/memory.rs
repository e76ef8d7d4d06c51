//! The domain's memory: [`Pages`] for [`Xen`], the page allocator behind it and behind the
//! heap, and finding an unpopulated hole for the grant table (PVH).
//!
//! * PVH: the page allocator gets the RAM region holding the image (from `hvm_start_info`'s
//!   memory map), after the image and the start info. A frame to grant is the GFN, `addr >> 12`
//!   (identity mapping).
//! * PV: Xen maps only the bootstrap region (xen.h "Start-of-day memory layout"): the image,
//!   start info, p2m list, page tables, stack, then padding up to a 4 MiB boundary (at least
//!   512 KiB). The page allocator gets that padding, minus the grant table's and the mapping
//!   window's pages; the domain's other pages (up to `nr_pages`) are not mapped and not used
//!   (mapping them needs new L1 page tables: not done). A frame to grant is the MFN,
//!   `mfn_list[addr >> 12]` (the p2m list of start_info).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use xen_platform::abi::{XenPfn, PAGE_SIZE};
use xen_platform::{Error, PageRun, Pages, Result};

use crate::gnttab::TABLE;
use crate::hypercall::{self, Mode};
use crate::pages::PageAlloc;
use crate::xen::{Xen, MACH2PHYS_VIRT_START};

/// The page allocator of the image.
pub static PAGES: PageAlloc = PageAlloc::new();

/// PV: virtual address of the p2m list (`start_info.mfn_list`) and its length (`nr_pages`).
static P2M: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicUsize = AtomicUsize::new(0);
/// Lowest address `Pages::frame` accepts (the image's start).
static FRAME_LOW: AtomicUsize = AtomicUsize::new(0x10_0000);

/// PV: remember the p2m list (called by `Xen::init_pv`).
pub(crate) fn set_p2m(mfn_list: usize, nr_pages: usize) {
    P2M.store(mfn_list, Ordering::Relaxed);
    NR_PAGES.store(nr_pages, Ordering::Relaxed);
}

/// PV: the machine frame of pseudo-physical frame `pfn`.
pub fn pfn_to_mfn(pfn: usize) -> Option<u64> {
    let list = P2M.load(Ordering::Relaxed);
    if list == 0 || pfn >= NR_PAGES.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: start_info.mfn_list is mapped for `nr_pages` entries in the bootstrap region
    // (xen.h start of day); Xen wrote it and nobody changes it (no ballooning here).
    Some(unsafe { (list as *const u64).add(pfn).read_volatile() })
}

/// PV: the pseudo-physical frame of machine frame `mfn` (the read-only M2P table).
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: the M2P table is mapped read-only for every PV guest at MACH2PHYS_VIRT_START
    // (arch-x86/xen-x86_64.h); `mfn` is a frame Xen gave us.
    unsafe { ((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)).read_volatile() }
}

/// Grow function of the image's heap: at least `bytes`, in runs of 16 pages or more.
pub fn heap_grow(bytes: usize) -> Option<(usize, usize)> {
    let n = bytes.div_ceil(PAGE_SIZE);
    let a = PAGES
        .alloc(n.max(16))
        .map(|a| (a, n.max(16)))
        .or_else(|| PAGES.alloc(n).map(|a| (a, n)))?;
    Some((a.0, a.0 + a.1 * PAGE_SIZE))
}

/// A memory-map entry: `(addr, size, type)`.
pub type MemmapEntry = (u64, u64, u32);

/// PVH: the first guest frame of `pages` unpopulated frames above RAM: 2 MiB-aligned, after
/// the highest entry of the memory map that ends below `limit`, overlapping no entry, and
/// ending below `limit` (the boot page tables map 0–4 GiB; leave the region just below 4 GiB
/// with the special pages, the LAPIC and the IO-APIC alone: `limit` = 0xF000_0000 at boot).
pub fn pvh_hole(memmap: &[MemmapEntry], ram_end: u64, pages: u64, limit: u64) -> Option<u64> {
    const M2: u64 = 2 << 20;
    let need = pages * PAGE_SIZE as u64;
    let mut at = memmap
        .iter()
        .map(|&(a, s, _)| a + s)
        .filter(|&e| e <= limit)
        .max()
        .unwrap_or(0)
        .max(ram_end);
    for _ in 0..=memmap.len() {
        at = at.div_ceil(M2) * M2;
        if at + need > limit {
            return None;
        }
        match memmap
            .iter()
            .find(|&&(a, s, _)| a < at + need && at < a + s)
        {
            Some(&(a, s, _)) => at = a + s,
            None => return Some(at >> 12),
        }
    }
    None
}

impl Xen {
    /// Set where `Pages::frame` accepts addresses from (the image start).
    pub fn set_frame_low(&self, low: usize) {
        FRAME_LOW.store(low, Ordering::Relaxed);
    }

    /// Pages of the page allocator `(in use, managed)`.
    pub fn page_usage(&self) -> (usize, usize) {
        PAGES.usage()
    }
}

impl Pages for Xen {
    fn alloc(&self, pages: usize) -> Result<PageRun> {
        if pages == 0 {
            return Err(Error::Invalid);
        }
        let a = PAGES.alloc(pages).ok_or(Error::NoSpace)?;
        // SAFETY: the allocator handed us these pages (RAM of ours, mapped read-write).
        unsafe { core::ptr::write_bytes(a as *mut u8, 0, pages * PAGE_SIZE) };
        Ok(PageRun {
            addr: NonNull::new(a as *mut u8).ok_or(Error::NoSpace)?,
            pages,
        })
    }

    fn free(&self, run: PageRun) -> Result<()> {
        let a = run.addr.as_ptr() as usize;
        if !PAGES.contains(a) {
            return Err(Error::Invalid);
        }
        let (first, n) = ((a / PAGE_SIZE) as u64, run.pages as u64);
        let pv = hypercall::mode() == Mode::Pv;
        let granted = TABLE.with(|t| {
            t.any_granted(|frame| {
                let pfn = if pv { mfn_to_pfn(frame) } else { frame };
                (first..first + n).contains(&pfn)
            })
        });
        if granted {
            return Err(Error::Busy);
        }
        if PAGES.free(a, run.pages) {
            Ok(())
        } else {
            Err(Error::Invalid)
        }
    }

    fn frame(&self, addr: NonNull<u8>) -> Result<XenPfn> {
        let a = addr.as_ptr() as usize;
        if !a.is_multiple_of(PAGE_SIZE) || a < FRAME_LOW.load(Ordering::Relaxed) {
            return Err(Error::Invalid);
        }
        let (_, end) = PAGES.range();
        if a >= end {
            return Err(Error::Invalid);
        }
        match hypercall::mode() {
            Mode::Pv => pfn_to_mfn(a / PAGE_SIZE).ok_or(Error::Invalid),
            Mode::Pvh => Ok((a / PAGE_SIZE) as XenPfn),
            Mode::None => Err(Error::Unsupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u32 = 1;
    const RES: u32 = 2;

    #[test]
    fn hole_above_ram_avoids_the_memory_map() {
        // As seen for a 32 MiB PVH guest: RAM 0..32 MiB, special pages just under 4 GiB.
        let map = [(0, 32 << 20, RAM), (0xfeff_8000, 0x8000, RES)];
        assert_eq!(pvh_hole(&map, 0, 36, 0xf000_0000), Some((32 << 20) >> 12));
        // RAM not 2 MiB-aligned, and an entry right above it.
        let map = [(0, (31 << 20) + 4096, RAM), (32 << 20, 1 << 20, RES)];
        assert_eq!(pvh_hole(&map, 0, 36, 0xf000_0000), Some((34 << 20) >> 12));
        // No memory map: above ram_end.
        assert_eq!(
            pvh_hole(&[], 5 << 20, 1, 0xf000_0000),
            Some((6 << 20) >> 12)
        );
        // RAM up to the limit: no hole.
        let map = [(0, 0xf000_0000, RAM)];
        assert_eq!(pvh_hole(&map, 0, 1, 0xf000_0000), None);
    }

    #[test]
    fn uninitialised_pages_fail_cleanly() {
        let x = Xen::get();
        assert_eq!(x.alloc(1), Err(Error::NoSpace));
        assert_eq!(x.alloc(0), Err(Error::Invalid));
        assert_eq!(
            x.frame(NonNull::new(0x20_0000 as *mut u8).unwrap()),
            Err(Error::Invalid)
        );
    }
}
