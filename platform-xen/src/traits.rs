//! The platform traits every driver programs against.
//!
//! All methods take `&self`: one platform object is shared by every driver in an image, so
//! implementations use interior mutability (a spin lock in images, a mutex in the simulator).
//! Nothing here blocks except [`Events::wait`] and [`Scheduler::block`].

use core::ops::Deref;
use core::ptr::NonNull;
use core::time::Duration;

use crate::abi::{DomId, EvtchnPort, GrantHandle, GrantRef, XenPfn, PAGE_SIZE};
use crate::error::Result;

/// Event channels (`event_channel.h`).
pub trait Events {
    /// `EVTCHNOP_alloc_unbound`: a fresh port that domain `remote` may bind to.
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort>;
    /// `EVTCHNOP_bind_interdomain`: bind a local port to `remote_port` of domain `remote`, which
    /// must be an unbound port allocated for us.
    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort>;
    /// `EVTCHNOP_send`: set the peer's pending bit (and wake it if it waits on the port).
    /// Fails with [`Error::PeerGone`](crate::Error::PeerGone) when the peer closed its end.
    fn notify(&self, port: EvtchnPort) -> Result<()>;
    /// `EVTCHNOP_close`. The peer's end becomes unbound; its waits on it end with `PeerGone`.
    fn close(&self, port: EvtchnPort) -> Result<()>;
    /// Set the mask bit: events still set the pending bit but do not wake waiters.
    fn mask(&self, port: EvtchnPort) -> Result<()>;
    /// `EVTCHNOP_unmask`: clear the mask bit (a pending event then wakes waiters).
    fn unmask(&self, port: EvtchnPort) -> Result<()>;
    /// Whether the port's pending bit is set.
    fn is_pending(&self, port: EvtchnPort) -> bool;
    /// Clear the port's pending bit; returns whether it was set.
    fn clear(&self, port: EvtchnPort) -> bool;
    /// Wait until one of `ports` is pending and unmasked, or `timeout` passes (`None`: no limit).
    ///
    /// Returns the first pending port (its pending bit is left set: the caller clears it after
    /// handling, as with `SCHEDOP_poll`). Returns [`Error::Timeout`](crate::Error::Timeout) on
    /// timeout and [`Error::PeerGone`](crate::Error::PeerGone) when every port's peer is gone.
    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> Result<EvtchnPort>;
}

/// The granting side of the grant table.
pub trait Grants {
    /// Grant domain `domid` access to our frame `frame` (read-only if `readonly`).
    fn grant(&self, domid: DomId, frame: XenPfn, readonly: bool) -> Result<GrantRef>;
    /// End a grant. Fails with [`Error::Busy`](crate::Error::Busy) while the grantee still maps
    /// it (the entry stays valid and the page must not be reused), `NotFound` for a ref not in use.
    fn end(&self, gref: GrantRef) -> Result<()>;
    /// End many grants under one lock (`gnttab_end_foreign_access_references`). Every ref that
    /// can be ended is; for each that cannot, `failed(ref, error)` is called and the ref stays
    /// granted. Returns the number that failed.
    fn end_batch(
        &self,
        refs: &[GrantRef],
        failed: &mut dyn FnMut(GrantRef, crate::Error),
    ) -> usize {
        let mut n = 0;
        for &r in refs {
            if let Err(e) = self.end(r) {
                failed(r, e);
                n += 1;
            }
        }
        n
    }
    /// `(free, total)` grant references this domain can hand out, when they are few enough to
    /// manage (a real guest's grant table has a fixed size); `None`: no bound worth managing.
    /// A frontend that keeps grants for a whole connection (persistent grants) caps what one
    /// device keeps by it, so other devices, and every request's short-lived grants, still get
    /// references.
    fn grant_refs(&self) -> Option<(usize, usize)> {
        None
    }
}

/// A foreign page mapped into our address space by [`GrantMapper::map`].
///
/// Not `Clone`: exactly one owner unmaps it.
#[must_use = "a Mapping holds a slot of the mapping window and the grantee's page: unmap it"]
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Where the page is mapped (`PAGE_SIZE` bytes, page-aligned).
    pub addr: NonNull<u8>,
    /// The handle `GNTTABOP_map_grant_ref` returned.
    pub handle: GrantHandle,
    /// The granting domain.
    pub domid: DomId,
    /// The grant reference.
    pub gref: GrantRef,
    /// Whether the mapping is read-only.
    pub readonly: bool,
}

/// Several foreign pages mapped at consecutive addresses (a multi-page shared ring).
#[must_use = "a MultiMapping holds mapping-window slots and the grantee's pages: unmap_multi it"]
#[derive(Debug, PartialEq, Eq)]
pub struct MultiMapping {
    /// Start of `pages * PAGE_SIZE` bytes.
    pub addr: NonNull<u8>,
    /// Number of pages.
    pub pages: usize,
    /// One handle per page, in order. Fixed capacity: rings have at most 16 pages
    /// (`max-ring-page-order` 4).
    pub handles: [GrantHandle; MAX_MULTI_MAP],
    /// The granting domain.
    pub domid: DomId,
    /// Whether the mapping is read-only.
    pub readonly: bool,
}

/// Most pages [`GrantMapper::map_multi`] maps at once.
pub const MAX_MULTI_MAP: usize = 16;

/// One side of a grant copy (`gnttab_copy.source`/`dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPtr {
    /// A page another domain granted to us.
    Foreign {
        /// The granting domain.
        domid: DomId,
        /// The grant reference.
        gref: GrantRef,
        /// Byte offset in that page.
        offset: u16,
    },
    /// One of our own frames.
    Local {
        /// Our frame.
        frame: XenPfn,
        /// Byte offset in that page.
        offset: u16,
    },
}

/// One `GNTTABOP_copy` operation. `len + offset` must stay inside the page on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCopy {
    /// Where the bytes come from.
    pub source: CopyPtr,
    /// Where they go.
    pub dest: CopyPtr,
    /// Number of bytes.
    pub len: u16,
}

/// The mapping side of the grant table.
///
/// # Implementation contract
/// Drivers' `unsafe` code relies on it: a [`Mapping`] or [`MultiMapping`] returned `Ok` is the
/// granting domain's page(s), live at `addr` (`PAGE_SIZE` bytes each, consecutive for a multi
/// mapping), readable, and writable unless `readonly`, until it is passed to `unmap` /
/// `unmap_multi`; nothing else of ours is mapped there meanwhile. The granter may write the
/// bytes at any time, so drivers copy them with raw-pointer copies and never make references.
pub trait GrantMapper {
    /// `GNTTABOP_map_grant_ref` of one page.
    fn map(&self, domid: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping>;
    /// `GNTTABOP_unmap_grant_ref`.
    fn unmap(&self, mapping: Mapping) -> Result<()>;
    /// Map `refs` (at most [`MAX_MULTI_MAP`]) of one domain at consecutive addresses, as a
    /// backend maps a multi-page ring. All or nothing: on error nothing stays mapped.
    fn map_multi(&self, domid: DomId, refs: &[GrantRef], readonly: bool) -> Result<MultiMapping>;
    /// Unmap a [`MultiMapping`].
    fn unmap_multi(&self, mapping: MultiMapping) -> Result<()>;
    /// `GNTTABOP_copy`: perform each copy; `status[i]` receives its result. `status` must be
    /// at least as long as `ops`.
    fn copy(&self, ops: &[GrantCopy], status: &mut [Result<()>]) -> Result<()>;
    /// `(free, total)` pages of the address range foreign pages are mapped into, when it is
    /// bounded (a real guest maps into a fixed window); `None`: no bound worth managing. A
    /// backend that keeps mappings (rings, persistent grants) uses it to leave room for the
    /// short-lived ones every request needs.
    fn map_slots(&self) -> Option<(usize, usize)> {
        None
    }
}

/// A run of page-aligned memory we own.
#[must_use = "a PageRun is memory of the domain's: give it back with Pages::free"]
#[derive(Debug, PartialEq, Eq)]
pub struct PageRun {
    /// Start of `pages * PAGE_SIZE` bytes, page-aligned, zeroed at allocation.
    pub addr: NonNull<u8>,
    /// Number of pages.
    pub pages: usize,
}

impl PageRun {
    /// Address of page `i` of the run.
    pub fn page(&self, i: usize) -> NonNull<u8> {
        assert!(i < self.pages, "page index out of run");
        // SAFETY: i < pages, so the offset stays inside the run this struct describes.
        unsafe { self.addr.add(i * PAGE_SIZE) }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }
    /// Whether the run is empty (never, for a run from [`Pages::alloc`]).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// Page allocation and address-to-frame translation.
///
/// # Implementation contract
/// Drivers' `unsafe` code relies on it (a safe trait, so an implementation that breaks it is a
/// bug of the platform, not of the driver): a [`PageRun`] from `alloc` is `pages * PAGE_SIZE`
/// bytes, page-aligned, zeroed, valid for reads and writes, used by nothing else and valid
/// until it is passed to `free`; `free` of a page still granted fails and keeps the memory
/// valid; `frame` of a page of ours is the frame a grant of it must name.
pub trait Pages {
    /// Allocate `pages` zeroed, virtually consecutive pages.
    fn alloc(&self, pages: usize) -> Result<PageRun>;
    /// Free a run. Fails with `Busy` (and keeps the memory) if a page is still granted.
    fn free(&self, run: PageRun) -> Result<()>;
    /// The frame to put in a grant for the page at `addr` (page-aligned, owned by this domain):
    /// the GFN on HVM/PVH, the MFN on PV. Consecutive pages need not have consecutive frames.
    fn frame(&self, addr: NonNull<u8>) -> Result<XenPfn>;
}

/// The guest console.
pub trait Console {
    /// Write bytes to the console (best effort; never blocks forever).
    fn write(&self, bytes: &[u8]);
}

/// A monotonic clock.
pub trait Clock {
    /// Time since an arbitrary fixed point (boot); never goes backwards.
    fn now(&self) -> Duration;
}

/// Why a domain shuts down (`SHUTDOWN_*` in sched.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`.
    Poweroff = 0,
    /// `SHUTDOWN_reboot`.
    Reboot = 1,
    /// `SHUTDOWN_suspend`.
    Suspend = 2,
    /// `SHUTDOWN_crash`.
    Crash = 3,
    /// `SHUTDOWN_watchdog`.
    Watchdog = 4,
    /// `SHUTDOWN_soft_reset`.
    SoftReset = 5,
}

/// Scheduling and domain lifetime (`sched.h`).
pub trait Scheduler {
    /// `SCHEDOP_yield`.
    fn yield_now(&self);
    /// Sleep until an event may have arrived or `timeout` passes. Prefer [`Events::wait`].
    fn block(&self, timeout: Option<Duration>);
    /// `SCHEDOP_shutdown`. On real Xen this returns only for `Suspend` (when the domain
    /// resumes, `Ok(true)` if the suspend was cancelled) or on error; in the simulator it marks
    /// the domain as shut down and returns.
    fn shutdown(&self, reason: ShutdownReason) -> Result<bool>;
}

/// Everything a domain's drivers need, in one bound.
pub trait Platform: Events + Grants + GrantMapper + Pages + Console + Clock + Scheduler {}

impl<T: Events + Grants + GrantMapper + Pages + Console + Clock + Scheduler> Platform for T {}

/// A handle to the platform: anything that derefs to one and can be cloned into every driver
/// and device that keeps it (`&'static Xen` in an image, `Rc<Domain>`/`Arc<Domain>` in the
/// simulator). Drivers that keep the platform (blkfront, blkback) are generic over it, so the
/// real platform, a `'static` reference that cannot be put in an `Rc`, works everywhere.
pub trait PlatformRef: Clone + 'static {
    /// The platform.
    type P: Platform + ?Sized;
    /// Borrow it.
    fn get(&self) -> &Self::P;
}

impl<H> PlatformRef for H
where
    H: Deref + Clone + 'static,
    H::Target: Platform,
{
    type P = H::Target;
    fn get(&self) -> &H::Target {
        self
    }
}
