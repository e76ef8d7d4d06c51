//! The domain's memory: [`Pages`] for [`Xen`], the page allocator behind it and behind the
//! heap, and finding an unpopulated hole for the grant table (PVH).
//!
//! * PVH: the page allocator gets the RAM region holding the image (from `hvm_start_info`'s
//!   memory map), after the image and the start info. A frame to grant is the GFN, `addr >> 12`
//!   (identity mapping).
//! * PV: Xen maps only the bootstrap region (xen.h "Start-of-day memory layout"): the image,
//!   start info, p2m list, page tables, stack, then padding up to a 4 MiB boundary (at least
//!   512 KiB). [`pv_map_ram`] maps the domain's other pages (up to `nr_pages`, below 1 GiB) at
//!   virtual = pseudo-physical address, as the bootstrap region is, 2 MiB at a time: it fills
//!   an L1 table in a page of ours, makes that page read-only (`update_va_mapping`) and points
//!   the bootstrap L2 entry at it (`mmu_update`, `MMU_NORMAL_PT_UPDATE`; xen.h: page-table
//!   pages must be mapped read-only, Xen validates the L1 when the L2 entry is written). The
//!   first L1 is the padding's last page, the others are consecutive pages at the start of
//!   the first chunk mapped (so the rest of RAM stays contiguous); they are reserved in the
//!   page allocator, which gets the padding (minus the grant table's pages) and all the mapped
//!   RAM. [`pv_map_empty`] gives the grant mapping window (`gnttab::MAP_SLOTS` pages) its own
//!   virtual range right above that RAM, with L1 tables (in padding pages, reserved too) that
//!   map nothing: Xen writes and zaps the window's PTEs itself. A frame to grant is the MFN,
//!   `mfn_list[addr >> 12]` (the p2m list of start_info).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use xen_platform::abi::{XenPfn, PAGE_SIZE};
use xen_platform::{Error, PageRun, Pages, Result};

use crate::gnttab::TABLE;
use crate::hypercall::{self, Mode};
use crate::pages::PageAlloc;
use crate::xen::Xen;
use xen_platform::abi::xen::{MmuUpdate, MACH2PHYS_VIRT_START, MMU_NORMAL_PT_UPDATE, UVMF_INVLPG};

/// The page allocator of the image.
pub static PAGES: PageAlloc = PageAlloc::new();

/// PV: virtual address of the p2m list (`start_info.mfn_list`) and its length (`nr_pages`).
static P2M: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicUsize = AtomicUsize::new(0);
/// Lowest address `Pages::frame` accepts (the image's start).
static FRAME_LOW: AtomicUsize = AtomicUsize::new(0x10_0000);

/// PV: remember the p2m list (called by the PV entry, `image.rs`).
#[cfg(all(feature = "image", not(test)))]
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
    // (xen.h start of day); Xen wrote it, and only a restore rewrites it (with the new
    // machine frames, while this domain is not running; no ballooning here).
    Some(unsafe { (list as *const u64).add(pfn).read_volatile() })
}

/// PV: the p2m list's virtual address and its number of entries (`(0, 0)` in PVH).
pub(crate) fn p2m_list() -> (usize, usize) {
    (
        P2M.load(Ordering::Relaxed),
        NR_PAGES.load(Ordering::Relaxed),
    )
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

/// Release function of the image's heap: whole free pages back to the page allocator (they
/// came from it through [`heap_grow`]). Only the page allocator's lock is taken: the heap may
/// free while any other lock is held.
pub fn heap_release(addr: usize, pages: usize) -> bool {
    PAGES.free(addr, pages)
}

const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PTE_PRESENT: u64 = 1;
/// PV mappings of RAM: present | writable | accessed | dirty (Xen adds `_PAGE_USER` for a
/// 64-bit PV kernel, which runs in ring 3).
const PTE_RW: u64 = 0x63;
/// Present | accessed: a page-table page's own mapping.
const PTE_RO: u64 = 0x21;
/// An L2 entry: present | writable | user | accessed | dirty.
const PDE: u64 = 0x67;
const M2: usize = 2 << 20;
/// [`pv_map_ram`] maps below this (one L2 table: L4[0], L3[0]).
pub const PV_MAP_LIMIT: usize = 1 << 30;

/// The virtual address of the page-table page an entry points to (PV: through the M2P; page
/// tables live in the bootstrap region, mapped at virtual = pseudo-physical address).
fn table_va(entry: u64) -> usize {
    (mfn_to_pfn((entry & PTE_ADDR) >> 12) as usize) << 12
}

/// PV: the bootstrap L2 table (mapped read-only) and its machine frame.
///
/// # Safety
/// PV; `pt_base` is `start_info.pt_base`; the p2m list is set ([`set_p2m`]).
unsafe fn bootstrap_l2(pt_base: usize) -> Result<(*const u64, u64)> {
    // SAFETY: (caller) the bootstrap page tables are mapped read-only in the bootstrap region
    // (xen.h start of day, item 6); L4[0] and L3[0] cover the region, so they are present.
    let l2 = unsafe {
        let l3 = table_va((pt_base as *const u64).read_volatile());
        table_va((l3 as *const u64).read_volatile())
    } as *const u64;
    let mfn = pfn_to_mfn(l2 as usize >> 12).ok_or(Error::Invalid)?;
    Ok((l2, mfn))
}

/// PV: make `l1` (a page of ours, filled with the L1 table) read-only and point entry `idx`
/// of the bootstrap L2 table (machine frame `l2_mfn`) at it.
///
/// # Safety
/// PV; `l1` is a mapped page of ours that nothing else uses, for good; its PTEs map only
/// frames of ours (or are not present); entry `idx` is not present.
unsafe fn install_l1(l2_mfn: u64, idx: usize, l1: usize) -> Result<()> {
    let l1_mfn = pfn_to_mfn(l1 >> 12).ok_or(Error::Invalid)?;
    // SAFETY: update_va_mapping(va, pte, flags) of our own page: read-only from now on, as
    // Xen requires of a page-table page.
    let r = unsafe {
        hypercall::hypercall5(
            xen_platform::abi::xen::HYPERVISOR_UPDATE_VA_MAPPING,
            l1 as u64,
            (l1_mfn << 12) | PTE_RO,
            UVMF_INVLPG,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(Error::from_xen_errno(r as i32));
    }
    let mut req = MmuUpdate {
        ptr: ((l2_mfn << 12) + idx as u64 * 8) | MMU_NORMAL_PT_UPDATE,
        val: (l1_mfn << 12) | PDE,
    };
    // SAFETY: mmu_update(reqs, count, done, foreigndom) (xen.h): one request, alive across the
    // call; Xen validates the new L1 table before installing it.
    let r = unsafe {
        hypercall::hypercall5(
            xen_platform::abi::xen::HYPERVISOR_MMU_UPDATE,
            &mut req as *mut _ as u64,
            1,
            0,
            xen_platform::abi::DOMID_SELF as u64,
            0,
        )
    };
    if r < 0 {
        return Err(Error::from_xen_errno(r as i32));
    }
    Ok(())
}

/// PV: map the pseudo-physical frames from `from` (2 MiB-aligned) up to `nr_pages` (at most
/// [`PV_MAP_LIMIT`]) at virtual = pseudo-physical address, skipping 2 MiB chunks that are
/// mapped already (the bootstrap region). `spare_l1` is a free, mapped page of ours for the
/// first L1 table; the addresses of the L1 pages used go to `l1s`. Returns the end of the
/// mapped RAM and the number of L1 pages, and the error that stopped it early, if any.
///
/// # Safety
/// Once, at boot, in PV; `pt_base` is `start_info.pt_base`; `spare_l1` and the frames from
/// `from` are ours and unused; the p2m list is set ([`set_p2m`]).
pub unsafe fn pv_map_ram(
    pt_base: usize,
    from: usize,
    nr_pages: usize,
    spare_l1: usize,
    l1s: &mut [usize],
) -> (usize, usize, Option<Error>) {
    let top = (nr_pages * PAGE_SIZE).min(PV_MAP_LIMIT);
    // SAFETY: (caller) PV, pt_base from start_info, p2m list set.
    let (l2, l2_mfn) = match unsafe { bootstrap_l2(pt_base) } {
        Ok(x) => x,
        Err(e) => return (from, 0, Some(e)),
    };
    let (mut mapped, mut n, mut next_l1) = (from, 0, spare_l1);
    let mut first_chunk: Option<usize> = None;
    let mut va = from;
    while va < top {
        let idx = va / M2;
        // SAFETY: entry idx < 512 of the (read-only mapped) L2 table.
        if unsafe { l2.add(idx).read_volatile() } & PTE_PRESENT != 0 {
            va += M2; // bootstrap region: mapped already
            mapped = va.min(top);
            continue;
        }
        if n == l1s.len() {
            return (mapped, n, Some(Error::NoSpace));
        }
        for i in 0..512 {
            let pfn = va / PAGE_SIZE + i;
            let pte = pfn_to_mfn(pfn).map_or(0, |m| (m << 12) | PTE_RW);
            // SAFETY: next_l1 is a mapped, writable page of ours that nothing else uses.
            unsafe { (next_l1 as *mut u64).add(i).write_volatile(pte) };
        }
        // SAFETY: next_l1 is ours, filled with PTEs of our own frames; entry idx is not
        // present (checked above).
        if let Err(e) = unsafe { install_l1(l2_mfn, idx, next_l1) } {
            return (mapped, n, Some(e));
        }
        l1s[n] = next_l1;
        n += 1;
        // The other L1 tables: consecutive pages from the start of the first chunk mapped
        // (mapped now; at most 511 more chunks below 1 GiB), so the rest stays contiguous.
        let base = *first_chunk.get_or_insert(va);
        next_l1 = base + (n - 1) * PAGE_SIZE;
        va += M2;
        mapped = va.min(top);
    }
    (mapped, n, None)
}

/// PV: give the virtual range from `va` (2 MiB-aligned, `l1s.len()` × 2 MiB, below
/// [`PV_MAP_LIMIT`], mapped by nothing) L1 page tables without a present entry, in the pages
/// `l1s` — a window for grant mappings: `GNTTABOP_map_grant_ref` with `GNTMAP_host_map` (no
/// `GNTMAP_contains_pte`) writes the PTE of `host_addr` into the existing L1 table, and
/// `GNTTABOP_unmap_grant_ref` zaps it again.
///
/// # Safety
/// Once per range, at boot, in PV; `pt_base` is `start_info.pt_base`; the `l1s` pages are
/// mapped pages of ours that nothing else uses, for good; the p2m list is set ([`set_p2m`]).
pub unsafe fn pv_map_empty(pt_base: usize, va: usize, l1s: &[usize]) -> Result<()> {
    if !va.is_multiple_of(M2) || va + l1s.len() * M2 > PV_MAP_LIMIT {
        return Err(Error::Invalid);
    }
    // SAFETY: (caller) PV, pt_base from start_info, p2m list set.
    let (l2, l2_mfn) = unsafe { bootstrap_l2(pt_base) }?;
    for (k, &l1) in l1s.iter().enumerate() {
        let idx = va / M2 + k;
        // SAFETY: entry idx < 512 of the (read-only mapped) L2 table.
        if unsafe { l2.add(idx).read_volatile() } & PTE_PRESENT != 0 {
            return Err(Error::Busy);
        }
        // SAFETY: (caller) l1 is a mapped, writable page of ours that nothing else uses.
        unsafe { core::ptr::write_bytes(l1 as *mut u8, 0, PAGE_SIZE) };
        // SAFETY: l1 is ours and holds no present PTE; entry idx is not present.
        unsafe { install_l1(l2_mfn, idx, l1) }?;
    }
    Ok(())
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
