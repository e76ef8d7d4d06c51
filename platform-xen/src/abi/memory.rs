//! Mirrors of `xen/memory.h`: placing frames in our physical address space.

use super::{DomId, XenPfn};

/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `XENMAPSPACE_shared_info`: the `shared_info` page.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`: a grant-table frame (`idx`, with `XENMAPIDX_grant_table_status`
/// clear for v1).
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;

/// `struct xen_add_to_physmap`: `domid_t domid; uint16_t size; unsigned int space; xen_ulong_t
/// idx; xen_pfn_t gpfn;` — 24 bytes on x86_64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    /// The domain (`DOMID_SELF`).
    pub domid: DomId,
    /// Pages (gmfn_range only).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: u64,
    /// Where it appears in our physical address space.
    pub gpfn: XenPfn,
}
