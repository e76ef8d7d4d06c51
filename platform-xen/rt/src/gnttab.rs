//! Grant tables on real Xen: [`Grants`] and [`GrantMapper`] for [`Xen`] (grant table v1).
//!
//! * Setup: `GNTTABOP_query_size` gives the domain's `max_nr_frames`; we use a fixed
//!   [`GRANT_FRAMES`] (fewer if Xen allows fewer) — 32 frames, 16384 v1 entries — and never
//!   grow. 4 frames (2048 refs) were too few on real Xen: blkfront with persistent grants
//!   against Linux blkback (256 indirect segments) keeps 256 refs per 1 MiB buffer in flight,
//!   and 8 of them plus indirect pages ran out (`NoSpace`). Xen 4.17 allows a domU 64 frames
//!   by default (`gnttab_max_frames`, xl's `max_grant_frames`).
//!   PVH: each frame is placed with `XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx i)`
//!   (memory.h) at a guest frame of an unpopulated hole above RAM (`memory::pvh_hole`); the
//!   boot page tables map 0–4 GiB 1:1, so its physical address is its virtual one. PV:
//!   `GNTTABOP_setup_table` returns the frames' MFNs, mapped read-write with
//!   `update_va_mapping` into reserved pages of the bootstrap region's padding (Mini-OS
//!   `gnttab.c`/`gnttab_init` does the same with `map_frames`; Linux `arch_gnttab_map_shared`).
//! * Granting (grant_table.h, "Introducing a valid entry"): write `domid`, `frame`, a write
//!   barrier, then `flags` = `GTF_permit_access` (| `GTF_readonly`). Ending ("Invalidating an
//!   unused GTF_permit_access entry"): read `flags`; if `GTF_reading`/`GTF_writing` is set the
//!   grantee still uses it → `Busy` (the entry stays valid); otherwise `cmpxchg(flags, 0)`,
//!   retried if Xen changed the flags in between. Refs 0..`GNTTAB_NR_RESERVED_ENTRIES` (the
//!   toolstack's console and xenstore grants) are never handed out; the rest form a free list.
//! * Mapping: `GNTTABOP_map_grant_ref` with `GNTMAP_host_map` (| `GNTMAP_readonly`) at a slot
//!   of a fixed window of [`MAP_SLOTS`] = 1024 pages (4 MiB; [`MapWindow`]: a bitmap, first
//!   fit for `n` ≤ `MAX_MULTI_MAP` consecutive slots; `GrantMapper::map_slots` reports
//!   `(free, MAP_SLOTS)`). 32 pages were far too few for a storage domain: rings (up to 16
//!   pages per device) and persistent grants filled them, and then every request's
//!   short-lived mapping failed. PVH: `host_addr` is a guest-physical address in the same hole
//!   as the grant frames (not RAM, identity-mapped by the boot page tables), Xen puts the
//!   foreign frame in our p2m there. PV: `host_addr` is a virtual address in a range of its
//!   own right above the RAM xen-rt maps (below 1 GiB; `memory::pv_map_empty` gave it L1
//!   tables with no present entry — Xen needs the L1 table to exist); Xen writes the PTE, and
//!   `GNTTABOP_unmap_grant_ref` zaps it (not-present) — the window is used for nothing else,
//!   so nothing needs restoring. `map_multi` maps consecutive slots in one hypercall and, if
//!   any op fails, unmaps those that succeeded (all or nothing).
//! * Errors: a negative hypercall return is a Xen errno (`Error::from_xen_errno`), a negative
//!   per-op `status` a `GNTST_*` code (`Error::from_gntst`). Nothing here waits.

use core::sync::atomic::{fence, AtomicU16, Ordering};

use xen_platform::abi::grant_table::{
    GnttabCopy, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef,
    GrantEntryV1, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY,
    GNTST_OKAY, GNTTABOP_COPY, GNTTABOP_MAP_GRANT_REF, GNTTABOP_QUERY_SIZE, GNTTABOP_SETUP_TABLE,
    GNTTABOP_UNMAP_GRANT_REF, GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS, GTF_READING,
    GTF_READONLY, GTF_WRITING,
};
use xen_platform::abi::xen::{
    GuestHandle, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_UPDATE_VA_MAPPING,
};
use xen_platform::abi::{DomId, GrantHandle, GrantRef, XenPfn, DOMID_SELF, PAGE_SIZE};
use xen_platform::{
    CopyPtr, Error, GrantCopy, GrantMapper, Grants, Mapping, MultiMapping, Result, MAX_MULTI_MAP,
};

use crate::hypercall::{hypercall2, hypercall5};
use crate::sync::SpinLock;
use crate::xen::Xen;
use xen_platform::abi::memory::{XenAddToPhysmap, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};
use xen_platform::abi::xen::UVMF_INVLPG;

/// Grant-table frames we set up (v1: 512 entries per 4 KiB frame). Fixed: never grown.
pub const GRANT_FRAMES: usize = 32;
/// v1 entries per frame.
pub const ENTRIES_PER_FRAME: usize = PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();
/// Most grant refs (entries) we manage.
pub const NR_REFS: usize = GRANT_FRAMES * ENTRIES_PER_FRAME;
/// Pages of the mapping window: at most this many foreign pages mapped at once.
pub const MAP_SLOTS: usize = 1024;

const LINK_END: u32 = u32::MAX;
const LINK_IN_USE: u32 = u32::MAX - 1;
const LINK_RESERVED: u32 = u32::MAX - 2;

/// The bookkeeping of our grant table: where the entries are, which refs are free.
#[derive(Debug)]
pub struct GrantTable {
    /// Address of entry 0 (0: not set up).
    entries: usize,
    /// Usable refs (`frames * ENTRIES_PER_FRAME`).
    nr: usize,
    /// First free ref (`LINK_END`: none).
    head: u32,
    /// Per ref: the next free ref, `LINK_IN_USE` or `LINK_RESERVED`.
    link: [u32; NR_REFS],
    /// Refs granted.
    in_use: usize,
}

// SAFETY: `entries` points into grant-table frames shared with Xen, accessed only with
// volatile/atomic operations under the platform's lock.
unsafe impl Send for GrantTable {}

impl Default for GrantTable {
    fn default() -> Self {
        Self::new()
    }
}

impl GrantTable {
    /// Not set up: every grant fails with `Unsupported`.
    pub const fn new() -> Self {
        GrantTable {
            entries: 0,
            nr: 0,
            // Not LINK_END: an all-zero static lives in .bss, not in the image file (the 64 KiB
            // link array made every image 64 KiB larger). Unused until `setup` sets it: `grant`
            // and `end` refuse while `entries == 0` / `nr == 0`.
            head: 0,
            link: [0; NR_REFS],
            in_use: 0,
        }
    }

    /// Use `frames` grant frames at `entries`: refs from `GNTTAB_NR_RESERVED_ENTRIES` up are
    /// free.
    ///
    /// # Safety
    /// `entries` must map `frames` grant-table frames of this domain, read-write, for good.
    pub unsafe fn setup(&mut self, entries: usize, frames: usize) {
        self.entries = entries;
        self.nr = (frames * ENTRIES_PER_FRAME).min(NR_REFS);
        let first = GNTTAB_NR_RESERVED_ENTRIES as usize;
        for r in 0..self.nr {
            self.link[r] = if r < first {
                LINK_RESERVED
            } else if r + 1 < self.nr {
                r as u32 + 1
            } else {
                LINK_END
            };
        }
        self.head = if self.nr > first {
            first as u32
        } else {
            LINK_END
        };
        self.in_use = 0;
    }

    /// Grant frames in use (`usable refs / ENTRIES_PER_FRAME`, rounded up).
    fn frames(&self) -> usize {
        self.nr.div_ceil(ENTRIES_PER_FRAME)
    }

    /// Refs `(granted, usable)`.
    pub fn usage(&self) -> (usize, usize) {
        (self.in_use, self.nr)
    }

    fn flags(&self, r: usize) -> &AtomicU16 {
        debug_assert!(r < self.nr);
        // SAFETY: r < nr: inside the mapped frames (setup). `flags` is shared with Xen, which
        // sets GTF_reading/GTF_writing with locked operations: atomic access.
        unsafe { AtomicU16::from_ptr((self.entries + r * 8) as *mut u16) }
    }

    /// Grant `domid` access to `frame`.
    pub fn grant(&mut self, domid: DomId, frame: XenPfn, readonly: bool) -> Result<GrantRef> {
        if self.entries == 0 {
            return Err(Error::Unsupported);
        }
        let frame = u32::try_from(frame).map_err(|_| Error::Invalid)?; // v1: 32-bit frames
        if self.head == LINK_END {
            return Err(Error::NoSpace);
        }
        let r = self.head as usize;
        self.head = self.link[r];
        self.link[r] = LINK_IN_USE;
        self.in_use += 1;
        let e = (self.entries + r * 8) as *mut GrantEntryV1;
        // SAFETY: entry r of our table (r < nr). Its flags are 0 (free), so Xen does not use
        // it until the flags store below; domid/frame are written first (grant_table.h).
        unsafe {
            core::ptr::addr_of_mut!((*e).domid).write_volatile(domid);
            core::ptr::addr_of_mut!((*e).frame).write_volatile(frame);
        }
        fence(Ordering::SeqCst); // wmb: domid and frame before flags
        let ro = if readonly { GTF_READONLY } else { 0 };
        self.flags(r)
            .store(GTF_PERMIT_ACCESS | ro, Ordering::SeqCst);
        Ok(r as GrantRef)
    }

    /// End a grant: `Busy` while the grantee maps or copies it, `NotFound` if not granted.
    pub fn end(&mut self, gref: GrantRef) -> Result<()> {
        let r = gref as usize;
        if r >= self.nr || self.link[r] != LINK_IN_USE {
            return Err(Error::NotFound);
        }
        let flags = self.flags(r);
        let mut f = flags.load(Ordering::SeqCst);
        loop {
            if f & (GTF_READING | GTF_WRITING) != 0 {
                return Err(Error::Busy);
            }
            match flags.compare_exchange(f, 0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => f = now, // Xen changed the flags in between: look again
            }
        }
        self.link[r] = self.head;
        self.head = gref;
        self.in_use -= 1;
        Ok(())
    }

    /// Whether a granted entry's frame satisfies `pred`.
    pub fn any_granted(&self, mut pred: impl FnMut(u64) -> bool) -> bool {
        (0..self.nr).any(|r| {
            self.link[r] == LINK_IN_USE && {
                let e = (self.entries + r * 8) as *const GrantEntryV1;
                // SAFETY: entry r of our table; `frame` is written only by us.
                pred(unsafe { core::ptr::addr_of!((*e).frame).read_volatile() } as u64)
            }
        })
    }
}

/// A window of `MAP_SLOTS` pages at which foreign pages are mapped: a bitmap of its slots (set =
/// in use) and a first-fit search for `n` consecutive free slots.
#[derive(Debug)]
pub struct MapWindow {
    base: usize,
    used: [u64; MAP_WORDS],
}

/// Words of [`MapWindow`]'s bitmap.
const MAP_WORDS: usize = MAP_SLOTS / 64;
const _: () = assert!(MAP_SLOTS.is_multiple_of(64) && MAP_SLOTS >= MAX_MULTI_MAP);

impl MapWindow {
    /// No window: every map fails with `Unsupported`.
    pub const fn new() -> Self {
        MapWindow {
            base: 0,
            used: [0; MAP_WORDS],
        }
    }

    /// The window starts at `base` (`MAP_SLOTS` pages), all free.
    pub fn set(&mut self, base: usize) {
        self.base = base;
        self.used = [0; MAP_WORDS];
    }

    /// `n` consecutive free slots, the first such run: their address.
    pub fn take(&mut self, n: usize) -> Result<usize> {
        if self.base == 0 {
            return Err(Error::Unsupported);
        }
        if n == 0 || n > MAP_SLOTS {
            return Err(Error::Invalid);
        }
        // Walk runs, not bits: a word's free (or used) bits from slot i on are counted with one
        // trailing_zeros (trailing_ones), so a full or empty word costs one step.
        let (mut i, mut run) = (0, 0);
        while i < MAP_SLOTS {
            let (w, b) = (i / 64, i % 64);
            let bits = self.used[w] >> b; // slots i.. of this word; 0-filled from the top
            let left = 64 - b;
            let free = (bits.trailing_zeros() as usize).min(left);
            if free == 0 {
                run = 0;
                i += bits.trailing_ones() as usize; // ≥ 1: slot i is in use
                continue;
            }
            run += free;
            i += free;
            if run >= n {
                let first = i - run;
                self.mark(first, n, true);
                return Ok(self.base + first * PAGE_SIZE);
            }
        }
        Err(Error::NoSpace)
    }

    /// Give back `n` slots at `addr` (ignored unless they lie in the window).
    pub fn put(&mut self, addr: usize, n: usize) {
        if n == 0 || addr < self.base || !(addr - self.base).is_multiple_of(PAGE_SIZE) {
            return;
        }
        let i = (addr - self.base) / PAGE_SIZE;
        if i + n <= MAP_SLOTS {
            self.mark(i, n, false);
        }
    }

    /// `(free, total)` slots; `None` before [`set`](Self::set).
    pub fn slots(&self) -> Option<(usize, usize)> {
        if self.base == 0 {
            return None;
        }
        let used: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        Some((MAP_SLOTS - used as usize, MAP_SLOTS))
    }

    /// Set (`in_use`) or clear slots `first..first + n` (inside the window).
    fn mark(&mut self, first: usize, n: usize, in_use: bool) {
        let (mut i, end) = (first, first + n);
        while i < end {
            let (w, b) = (i / 64, i % 64);
            let k = (64 - b).min(end - i);
            let mask = if k == 64 {
                u64::MAX
            } else {
                ((1u64 << k) - 1) << b
            };
            if in_use {
                self.used[w] |= mask;
            } else {
                self.used[w] &= !mask;
            }
            i += k;
        }
    }
}

impl Default for MapWindow {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) static TABLE: SpinLock<GrantTable> = SpinLock::new(GrantTable::new());
static WINDOW: SpinLock<MapWindow> = SpinLock::new(MapWindow::new());

/// `HYPERVISOR_grant_table_op(cmd, ops, count)`.
///
/// # Safety
/// `ops` points to `count` argument structures of `cmd`'s type.
unsafe fn gnttab_op<T>(cmd: u32, ops: *mut T, count: usize) -> Result<()> {
    // SAFETY: (caller) the argument array matches the command (grant_table.h).
    let r = unsafe {
        hypercall5(
            HYPERVISOR_GRANT_TABLE_OP,
            cmd as u64,
            ops as u64,
            count as u64,
            0,
            0,
        )
    };
    if r < 0 {
        Err(Error::from_xen_errno(r as i32))
    } else {
        Ok(())
    }
}

/// PVH: grant frames `0..n` at guest frames `pfn..pfn + n` (`XENMEM_add_to_physmap`,
/// `XENMAPSPACE_grant_table`, memory.h).
///
/// # Safety
/// The `n` frames from `pfn` are ours for the grant table only: a hole (at boot), or the
/// table's own frames again (after a resume: the restore populated them as RAM, which this
/// replaces).
unsafe fn place_frames_pvh(pfn: u64, n: usize) -> Result<()> {
    for i in 0..n {
        let mut xatp = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: i as u64,
            gpfn: pfn + i as u64,
        };
        // SAFETY: XENMEM_add_to_physmap takes a xen_add_to_physmap (memory.h); the target
        // frame is the table's (caller).
        let r = unsafe {
            hypercall2(
                HYPERVISOR_MEMORY_OP,
                XENMEM_ADD_TO_PHYSMAP,
                &mut xatp as *mut _ as u64,
            )
        };
        if r < 0 {
            return Err(Error::from_xen_errno(r as i32));
        }
    }
    Ok(())
}

/// PV: `GNTTABOP_setup_table` for `n` frames and each one mapped read-write at
/// `va + i * PAGE_SIZE` (`update_va_mapping`, xen.h).
///
/// # Safety
/// The `n` pages from `va` are ours, for the grant table only (their L1 tables exist).
unsafe fn place_frames_pv(va: usize, n: usize) -> Result<()> {
    let mut mfns = [0 as XenPfn; GRANT_FRAMES];
    let n = n.min(GRANT_FRAMES);
    let mut st = GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: n as u32,
        frame_list: GuestHandle::new(mfns.as_mut_ptr()),
        ..Default::default()
    };
    // SAFETY: one gnttab_setup_table whose frame_list has room for n ≤ GRANT_FRAMES.
    unsafe { gnttab_op(GNTTABOP_SETUP_TABLE, &mut st, 1) }?;
    gntst(st.status)?;
    for (i, &mfn) in mfns[..n].iter().enumerate() {
        // PTE: machine address | present | writable | accessed | dirty.
        let pte = (mfn << 12) | 0x63;
        // SAFETY: update_va_mapping(va, pte, flags) (xen.h); the page is the table's
        // (caller) and becomes grant frame i.
        let r = unsafe {
            hypercall5(
                HYPERVISOR_UPDATE_VA_MAPPING,
                (va + i * PAGE_SIZE) as u64,
                pte,
                UVMF_INVLPG,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(Error::from_xen_errno(r as i32));
        }
    }
    Ok(())
}

fn gntst(status: i16) -> Result<()> {
    if status == GNTST_OKAY {
        Ok(())
    } else {
        Err(Error::from_gntst(status))
    }
}

impl Xen {
    /// `GNTTABOP_query_size`: `(nr_frames, max_nr_frames)` of our grant table.
    pub fn grant_table_size(&self) -> Result<(u32, u32)> {
        let mut q = GnttabQuerySize {
            dom: DOMID_SELF,
            ..Default::default()
        };
        // SAFETY: one gnttab_query_size, alive across the call.
        unsafe { gnttab_op(GNTTABOP_QUERY_SIZE, &mut q, 1) }?;
        gntst(q.status)?;
        Ok((q.nr_frames, q.max_nr_frames))
    }

    fn grant_frames_wanted(&self) -> Result<usize> {
        let (_, max) = self.grant_table_size()?;
        Ok(GRANT_FRAMES.min(max as usize))
    }

    /// PVH: put the grant table at guest frames `hole_pfn..+GRANT_FRAMES` and the mapping
    /// window right after it (`MAP_SLOTS` frames). Returns the number of grant frames.
    ///
    /// # Safety
    /// Once, at boot, in PVH. The `GRANT_FRAMES + MAP_SLOTS` frames from `hole_pfn` must be
    /// unpopulated (no RAM, nothing in the memory map) and identity-mapped.
    pub unsafe fn init_grants_pvh(&self, hole_pfn: u64) -> Result<usize> {
        let n = self.grant_frames_wanted()?;
        // SAFETY: (caller) the frames from hole_pfn are ours to fill and hold no RAM.
        unsafe { place_frames_pvh(hole_pfn, n) }?;
        let base = (hole_pfn as usize) << 12;
        // SAFETY: the n frames are now our grant table, identity-mapped (caller).
        TABLE.with(|t| unsafe { t.setup(base, n) });
        WINDOW.with(|w| w.set(base + GRANT_FRAMES * PAGE_SIZE));
        Ok(n)
    }

    /// PV: map the grant table at `table_va` (`GRANT_FRAMES` pages) and use `window_va`
    /// (`MAP_SLOTS` pages) for mappings. Returns the number of grant frames.
    ///
    /// # Safety
    /// Once, at boot, in PV. `table_va`: pages of the bootstrap region that nothing else
    /// uses, for good. `window_va`: a virtual range whose L1 tables exist (`pv_map_empty`)
    /// and that nothing else maps or uses, for good.
    pub unsafe fn init_grants_pv(&self, table_va: usize, window_va: usize) -> Result<usize> {
        let n = self.grant_frames_wanted()?;
        // SAFETY: (caller) the pages at table_va are ours, for the grant table only.
        unsafe { place_frames_pv(table_va, n) }?;
        // SAFETY: the n frames are mapped read-write at table_va.
        TABLE.with(|t| unsafe { t.setup(table_va, n) });
        WINDOW.with(|w| w.set(window_va));
        Ok(n)
    }

    /// After a real resume (`SCHEDOP_shutdown(SHUTDOWN_suspend)` returned 0: `xl restore`,
    /// the far end of a migration): the domain is a new one whose grant table has no frames
    /// yet. Put its frames where the old ones were (PVH: the same hole frames, which the
    /// restore populated as RAM — `XENMEM_add_to_physmap` replaces that; PV:
    /// `GNTTABOP_setup_table` gives new MFNs, mapped at the same addresses). The new table is
    /// empty: every grant made before the suspend is gone (a peer can no longer map or copy
    /// it), though the refs stay allocated until their owners end them — ending such a ref
    /// succeeds at once. Foreign pages mapped before the suspend are gone too. Linux does
    /// the same in `gnttab_resume`.
    pub(crate) fn resume_grants(&self, pv: bool) -> Result<usize> {
        let (entries, frames) = TABLE.with(|t| (t.entries, t.frames()));
        if entries == 0 {
            return Ok(0);
        }
        if pv {
            // SAFETY: `entries` is the table's own virtual range (init_grants_pv), for it only.
            unsafe { place_frames_pv(entries, frames) }?;
        } else {
            // SAFETY: the hole frames init_grants_pvh chose, used for nothing else.
            unsafe { place_frames_pvh((entries >> 12) as u64, frames) }?;
        }
        Ok(frames)
    }

    /// PV, before a suspend: take the grant frames out of our page tables (`update_va_mapping`
    /// to an empty PTE), as Linux's `gnttab_suspend` does. A save cannot describe a page-table
    /// entry pointing at a frame that is not the guest's RAM: libxc defers such a page table,
    /// never sends it, and the restored guest finds that whole L1 table empty (seen: a #PF
    /// fetching our own code right after the resume). [`resume_grants`](Self::resume_grants)
    /// maps them again, on either outcome.
    pub(crate) fn unmap_grant_frames_pv(&self) -> Result<()> {
        let (entries, frames) = TABLE.with(|t| (t.entries, t.frames()));
        for i in 0..frames {
            // SAFETY: update_va_mapping(va, 0, flags) (xen.h) empties the PTE of grant frame
            // i's virtual page; nothing touches the table until resume_grants maps it again
            // (the suspend runs on one vCPU with nothing else going on).
            let r = unsafe {
                hypercall5(
                    HYPERVISOR_UPDATE_VA_MAPPING,
                    (entries + i * PAGE_SIZE) as u64,
                    0,
                    UVMF_INVLPG,
                    0,
                    0,
                )
            };
            if r < 0 {
                return Err(Error::from_xen_errno(r as i32));
            }
        }
        Ok(())
    }

    /// Whether this domain still has the grant frames it set up (`GNTTABOP_query_size`):
    /// after a suspend, true means the domain is the same one (the suspend was cancelled),
    /// false a new one (a restore starts with a table of one or two frames). `None` without a
    /// grant table.
    pub(crate) fn grant_frames_kept(&self) -> Option<bool> {
        let frames = TABLE.with(|t| if t.entries == 0 { 0 } else { t.frames() });
        if frames == 0 {
            return None;
        }
        let (nr, _) = self.grant_table_size().ok()?;
        Some(nr as usize >= frames)
    }

    /// Grant refs `(granted, usable)`.
    pub fn grant_usage(&self) -> (usize, usize) {
        TABLE.with(|t| t.usage())
    }
}

impl Grants for Xen {
    fn grant(&self, domid: DomId, frame: XenPfn, readonly: bool) -> Result<GrantRef> {
        TABLE.with(|t| t.grant(domid, frame, readonly))
    }

    fn end(&self, gref: GrantRef) -> Result<()> {
        TABLE.with(|t| t.end(gref))
    }

    fn grant_refs(&self) -> Option<(usize, usize)> {
        // The reserved entries (the toolstack's) are never handed out.
        let (in_use, nr) = TABLE.with(|t| t.usage());
        let total = nr.saturating_sub(GNTTAB_NR_RESERVED_ENTRIES as usize);
        Some((total.saturating_sub(in_use), total))
    }

    fn end_batch(&self, refs: &[GrantRef], failed: &mut dyn FnMut(GrantRef, Error)) -> usize {
        // One pass under one lock; the callback runs after it (it may grant again).
        let mut bad = [(0 as GrantRef, Error::Invalid); 16];
        let mut total = 0;
        for chunk in refs.chunks(bad.len()) {
            let n = TABLE.with(|t| {
                let mut n = 0;
                for &r in chunk {
                    if let Err(e) = t.end(r) {
                        bad[n] = (r, e);
                        n += 1;
                    }
                }
                n
            });
            for &(r, e) in &bad[..n] {
                failed(r, e);
            }
            total += n;
        }
        total
    }
}

fn map_ops(
    base: usize,
    domid: DomId,
    refs: &[GrantRef],
    readonly: bool,
) -> [GnttabMapGrantRef; MAX_MULTI_MAP] {
    let mut ops = [GnttabMapGrantRef::default(); MAX_MULTI_MAP];
    for (i, &r) in refs.iter().enumerate() {
        ops[i] = GnttabMapGrantRef {
            host_addr: (base + i * PAGE_SIZE) as u64,
            flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
            ref_: r,
            dom: domid,
            ..Default::default()
        };
    }
    ops
}

/// Unmap `(addr, handle)` pairs in one hypercall; the first error, if any.
fn unmap_all(pages: &[(usize, GrantHandle)]) -> Result<()> {
    let mut ops = [GnttabUnmapGrantRef::default(); MAX_MULTI_MAP];
    for chunk in pages.chunks(MAX_MULTI_MAP) {
        for (i, &(addr, handle)) in chunk.iter().enumerate() {
            ops[i] = GnttabUnmapGrantRef {
                host_addr: addr as u64,
                dev_bus_addr: 0,
                handle,
                ..Default::default()
            };
        }
        // SAFETY: chunk.len() gnttab_unmap_grant_ref structures, alive across the call.
        unsafe { gnttab_op(GNTTABOP_UNMAP_GRANT_REF, ops.as_mut_ptr(), chunk.len()) }?;
        for op in &ops[..chunk.len()] {
            gntst(op.status)?;
        }
    }
    Ok(())
}

impl GrantMapper for Xen {
    fn map(&self, domid: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping> {
        let m = self.map_multi(domid, &[gref], readonly)?;
        Ok(Mapping {
            addr: m.addr,
            handle: m.handles[0],
            domid,
            gref,
            readonly,
        })
    }

    fn unmap(&self, mapping: Mapping) -> Result<()> {
        let addr = mapping.addr.as_ptr() as usize;
        unmap_all(&[(addr, mapping.handle)])?;
        WINDOW.with(|w| w.put(addr, 1));
        Ok(())
    }

    fn map_multi(&self, domid: DomId, refs: &[GrantRef], readonly: bool) -> Result<MultiMapping> {
        let n = refs.len();
        if n == 0 || n > MAX_MULTI_MAP {
            return Err(Error::Invalid);
        }
        let base = WINDOW.with(|w| w.take(n))?;
        let mut ops = map_ops(base, domid, refs, readonly);
        // SAFETY: n gnttab_map_grant_ref structures, alive across the call; their host
        // addresses are free slots of our window (PVH: hole frames; PV: reserved VAs).
        if let Err(e) = unsafe { gnttab_op(GNTTABOP_MAP_GRANT_REF, ops.as_mut_ptr(), n) } {
            WINDOW.with(|w| w.put(base, n));
            return Err(e);
        }
        let first_bad = ops[..n].iter().find(|o| o.status != GNTST_OKAY);
        if let Some(bad) = first_bad {
            let err = Error::from_gntst(bad.status);
            let mut done = [(0usize, 0 as GrantHandle); MAX_MULTI_MAP];
            let mut k = 0;
            for o in ops[..n].iter().filter(|o| o.status == GNTST_OKAY) {
                done[k] = (o.host_addr as usize, o.handle);
                k += 1;
            }
            // All or nothing: undo what succeeded. If that fails too, keep the slots.
            if unmap_all(&done[..k]).is_ok() {
                WINDOW.with(|w| w.put(base, n));
            }
            return Err(err);
        }
        let mut handles = [0 as GrantHandle; MAX_MULTI_MAP];
        for (h, o) in handles.iter_mut().zip(&ops[..n]) {
            *h = o.handle;
        }
        Ok(MultiMapping {
            addr: core::ptr::NonNull::new(base as *mut u8).ok_or(Error::Invalid)?,
            pages: n,
            handles,
            domid,
            readonly,
        })
    }

    fn unmap_multi(&self, mapping: MultiMapping) -> Result<()> {
        let base = mapping.addr.as_ptr() as usize;
        let n = mapping.pages.min(MAX_MULTI_MAP);
        let mut pages = [(0usize, 0 as GrantHandle); MAX_MULTI_MAP];
        for (i, p) in pages[..n].iter_mut().enumerate() {
            *p = (base + i * PAGE_SIZE, mapping.handles[i]);
        }
        unmap_all(&pages[..n])?;
        WINDOW.with(|w| w.put(base, n));
        Ok(())
    }

    fn copy(&self, ops: &[GrantCopy], status: &mut [Result<()>]) -> Result<()> {
        if status.len() < ops.len() {
            return Err(Error::Invalid);
        }
        const CHUNK: usize = 16;
        for (c, chunk) in ops.chunks(CHUNK).enumerate() {
            let mut raw = [GnttabCopy::default(); CHUNK];
            for (r, op) in raw.iter_mut().zip(chunk) {
                r.len = op.len;
                for (side, ptr, flag) in [
                    (&mut r.source, op.source, GNTCOPY_SOURCE_GREF),
                    (&mut r.dest, op.dest, GNTCOPY_DEST_GREF),
                ] {
                    match ptr {
                        CopyPtr::Foreign {
                            domid,
                            gref,
                            offset,
                        } => {
                            side.u.ref_ = gref;
                            side.domid = domid;
                            side.offset = offset;
                            r.flags |= flag;
                        }
                        CopyPtr::Local { frame, offset } => {
                            side.u.gmfn = frame;
                            side.domid = DOMID_SELF;
                            side.offset = offset;
                        }
                    }
                }
            }
            // SAFETY: chunk.len() gnttab_copy structures, alive across the call. Local
            // frames are the caller's own (Pages::frame); Xen checks every frame and ref.
            unsafe { gnttab_op(GNTTABOP_COPY, raw.as_mut_ptr(), chunk.len()) }?;
            for (i, r) in raw[..chunk.len()].iter().enumerate() {
                status[c * CHUNK + i] = gntst(r.status);
            }
        }
        Ok(())
    }

    fn map_slots(&self) -> Option<(usize, usize)> {
        WINDOW.with(|w| w.slots())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(frames: usize) -> (Box<GrantTable>, Vec<u64>) {
        let mut mem = vec![0u64; frames * ENTRIES_PER_FRAME];
        let mut t = Box::new(GrantTable::new());
        // SAFETY: test: `mem` stands in for the grant frames and outlives `t`'s use.
        unsafe { t.setup(mem.as_mut_ptr() as usize, frames) };
        (t, mem)
    }

    fn entry(mem: &[u64], r: GrantRef) -> (u16, u16, u32) {
        let w = mem[r as usize];
        (w as u16, (w >> 16) as u16, (w >> 32) as u32)
    }

    #[test]
    fn grants_write_the_v1_entry_and_skip_reserved_refs() {
        let (mut t, mem) = table(1);
        let r = t.grant(7, 0x1234, true).unwrap();
        assert_eq!(r, GNTTAB_NR_RESERVED_ENTRIES);
        assert_eq!(
            entry(&mem, r),
            (GTF_PERMIT_ACCESS | GTF_READONLY, 7, 0x1234)
        );
        let w = t.grant(8, 0x99, false).unwrap();
        assert_eq!(entry(&mem, w), (GTF_PERMIT_ACCESS, 8, 0x99));
        assert_eq!(t.grant(1, 1 << 32, false), Err(Error::Invalid));
        assert_eq!(t.end(r), Ok(()));
        assert_eq!(entry(&mem, r).0, 0);
        assert_eq!(t.end(r), Err(Error::NotFound));
        assert_eq!(t.end(0), Err(Error::NotFound), "reserved refs are not ours");
        assert_eq!(t.end(100_000), Err(Error::NotFound));
        assert_eq!(t.usage(), (1, ENTRIES_PER_FRAME));
    }

    #[test]
    fn end_fails_while_the_grantee_uses_the_entry() {
        let (mut t, mut mem) = table(1);
        let r = t.grant(3, 5, false).unwrap();
        mem[r as usize] |= GTF_WRITING as u64 | GTF_READING as u64; // as Xen does on map
        assert_eq!(t.end(r), Err(Error::Busy));
        assert!(t.any_granted(|f| f == 5));
        mem[r as usize] &= !((GTF_WRITING | GTF_READING) as u64); // unmapped
        assert_eq!(t.end(r), Ok(()));
        assert!(!t.any_granted(|f| f == 5));
    }

    #[test]
    fn runs_out_and_recycles() {
        let (mut t, _mem) = table(1);
        let n = ENTRIES_PER_FRAME - GNTTAB_NR_RESERVED_ENTRIES as usize;
        let refs: Vec<_> = (0..n)
            .map(|i| t.grant(1, i as u64, false).unwrap())
            .collect();
        assert_eq!(t.grant(1, 0, false), Err(Error::NoSpace));
        assert!(refs.iter().all(|&r| r >= GNTTAB_NR_RESERVED_ENTRIES));
        t.end(refs[10]).unwrap();
        assert_eq!(t.grant(1, 0, false), Ok(refs[10]));
        let unset = GrantTable::new();
        assert_eq!(unset.usage(), (0, 0));
    }

    #[test]
    fn window_slots() {
        let mut w = MapWindow::new();
        assert_eq!(w.take(1), Err(Error::Unsupported));
        assert_eq!(w.slots(), None);
        w.set(0x10_0000);
        assert_eq!(w.slots(), Some((MAP_SLOTS, MAP_SLOTS)));
        let a = w.take(1).unwrap();
        let b = w.take(16).unwrap();
        assert_eq!((a, b), (0x10_0000, 0x10_1000));
        assert_eq!(w.slots(), Some((MAP_SLOTS - 17, MAP_SLOTS)));
        w.put(a, 1);
        assert_eq!(w.take(2).unwrap(), 0x11_1000, "slot 0 alone is too small");
        assert_eq!(w.take(1).unwrap(), 0x10_0000, "first fit");
        assert_eq!(w.take(0), Err(Error::Invalid));
        assert_eq!(w.take(MAP_SLOTS + 1), Err(Error::Invalid));
        w.put(0x10_0800, 1); // not a slot address: ignored
        w.put(0x10_0000 + MAP_SLOTS * PAGE_SIZE, 1); // beyond: ignored
        assert_eq!(w.slots(), Some((MAP_SLOTS - 19, MAP_SLOTS)));
    }

    /// Slots in use as a sorted list of `(first, n)`, from the bitmap.
    fn runs(w: &MapWindow) -> Vec<(usize, usize)> {
        let bit = |i: usize| w.used[i / 64] >> (i % 64) & 1 == 1;
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in (0..MAP_SLOTS).filter(|&i| bit(i)) {
            match out.last_mut() {
                Some((f, n)) if *f + *n == i => *n += 1,
                _ => out.push((i, 1)),
            }
        }
        out
    }

    #[test]
    fn window_runs_cross_words_and_fill_up() {
        let mut w = MapWindow::new();
        w.set(0x4000_0000);
        let slot = |a: usize| (a - 0x4000_0000) / PAGE_SIZE;
        // 60 + 16: the second run straddles words 0 and 1.
        let a = w.take(60).unwrap();
        let b = w.take(16).unwrap();
        assert_eq!((slot(a), slot(b)), (0, 60));
        assert_eq!(runs(&w), [(0, 76)]);
        // Free 4 slots at 60..64 (end of word 0) and 64..66: a 3-run fits across the border.
        w.put(b, 6);
        assert_eq!(runs(&w), [(0, 60), (66, 10)]);
        assert_eq!(slot(w.take(3).unwrap()), 60);
        assert_eq!(slot(w.take(4).unwrap()), 76, "63..66 is only 3 long");
        assert_eq!(slot(w.take(3).unwrap()), 63);
        assert_eq!(runs(&w), [(0, 80)]);
        // Fill the window with 16-page runs, then single pages: exactly MAP_SLOTS in all.
        let mut n = 80;
        while let Ok(x) = w.take(16) {
            assert_eq!(slot(x), n);
            n += 16;
        }
        while w.take(1).is_ok() {
            n += 1;
        }
        assert_eq!(n, MAP_SLOTS);
        assert_eq!(w.slots(), Some((0, MAP_SLOTS)));
        assert_eq!(w.take(1), Err(Error::NoSpace));
        // A hole of 16 in the last word, one of 15 in the middle: the 16-run goes last.
        w.put(0x4000_0000 + 500 * PAGE_SIZE, 15);
        w.put(0x4000_0000 + (MAP_SLOTS - 16) * PAGE_SIZE, 16);
        assert_eq!(slot(w.take(16).unwrap()), MAP_SLOTS - 16);
        assert_eq!(slot(w.take(15).unwrap()), 500);
        assert_eq!(w.take(1), Err(Error::NoSpace));
        // All free again: the whole window is one run.
        for i in 0..MAP_SLOTS / 16 {
            w.put(0x4000_0000 + i * 16 * PAGE_SIZE, 16);
        }
        assert_eq!(w.slots(), Some((MAP_SLOTS, MAP_SLOTS)));
        assert_eq!(slot(w.take(MAP_SLOTS).unwrap()), 0);
    }

    #[test]
    fn window_take_matches_a_naive_first_fit() {
        // Random takes and puts against a bit-by-bit model (xorshift, fixed seed).
        let mut w = MapWindow::new();
        w.set(0x1000);
        let mut model = vec![false; MAP_SLOTS];
        let mut held: Vec<(usize, usize)> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        for _ in 0..20_000 {
            if held.is_empty() || rnd(3) != 0 {
                let n = 1 + rnd(MAX_MULTI_MAP);
                let want = (0..=MAP_SLOTS - n).find(|&i| model[i..i + n].iter().all(|u| !u));
                let got = w.take(n).ok().map(|a| (a - 0x1000) / PAGE_SIZE);
                assert_eq!(got, want, "take({n})");
                if let Some(i) = got {
                    model[i..i + n].iter_mut().for_each(|u| *u = true);
                    held.push((i, n));
                }
            } else {
                let (i, n) = held.swap_remove(rnd(held.len()));
                w.put(0x1000 + i * PAGE_SIZE, n);
                model[i..i + n].iter_mut().for_each(|u| *u = false);
            }
            let free = model.iter().filter(|u| !**u).count();
            assert_eq!(w.slots(), Some((free, MAP_SLOTS)));
        }
    }
}
