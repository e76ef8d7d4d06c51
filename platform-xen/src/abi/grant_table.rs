//! `grant_table.h`: grant entries, `GTF_*` flags, `GNTTABOP_*` operations and their argument
//! structures, `GNTMAP_*` flags and `GNTST_*` status codes.

use core::fmt;

use super::xen::GuestHandle;
use super::{DomId, GrantHandle, GrantRef, Pod, XenPfn};

/// `grant_status_t` (v2 status frames).
pub type GrantStatus = u16;

// ---------------------------------------------------------------------------------------------
// Grant entries.
// ---------------------------------------------------------------------------------------------

/// `struct grant_entry_v1`: one entry of a version-1 grant table, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: DomId,
    /// The frame `domid` may access (or transfer into, or that was transferred).
    pub frame: u32,
}

/// `struct grant_entry_header` (`grant_entry_header_t`): the first 4 bytes of a v2 entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantEntryHeader {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: DomId,
}

/// `grant_entry_v2.full_page`: a v1-style full-page grant.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantEntryV2FullPage {
    /// Type, flags and grantee.
    pub hdr: GrantEntryHeader,
    /// C `pad0`.
    pub pad0: u32,
    /// The granted frame.
    pub frame: u64,
}

/// `grant_entry_v2.sub_page`: bytes `[page_off, page_off + length)` of `frame`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantEntryV2SubPage {
    /// Type, flags and grantee.
    pub hdr: GrantEntryHeader,
    /// First byte granted.
    pub page_off: u16,
    /// Number of bytes granted.
    pub length: u16,
    /// The granted frame.
    pub frame: u64,
}

/// `grant_entry_v2.transitive`: grant `gref` of `trans_domid` passed on.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantEntryV2Transitive {
    /// Type, flags and grantee.
    pub hdr: GrantEntryHeader,
    /// The domain that granted `gref` to us.
    pub trans_domid: DomId,
    /// C `pad0`.
    pub pad0: u16,
    /// The grant reference in `trans_domid`'s table.
    pub gref: GrantRef,
}

/// `union grant_entry_v2`: one entry of a version-2 grant table, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union GrantEntryV2 {
    /// The common header.
    pub hdr: GrantEntryHeader,
    /// `GTF_permit_access` without `GTF_sub_page`, or `GTF_accept_transfer`.
    pub full_page: GrantEntryV2FullPage,
    /// `GTF_permit_access | GTF_sub_page`.
    pub sub_page: GrantEntryV2SubPage,
    /// `GTF_transitive`.
    pub transitive: GrantEntryV2Transitive,
    /// C `__spacer[4]`: pads the entry to 16 bytes.
    pub spacer: [u32; 4],
}

impl fmt::Debug for GrantEntryV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: every variant is Pod and `spacer` covers all 16 bytes.
        let w = unsafe { self.spacer };
        f.debug_tuple("GrantEntryV2").field(&w).finish()
    }
}

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries preserved across a grant table reset.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// `GNTTAB_RESERVED_CONSOLE`: the toolstack's grant of the console page.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// `GNTTAB_RESERVED_XENSTORE`: the toolstack's grant of the XenStore page.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

// ---------------------------------------------------------------------------------------------
// GTF_* (grant_entry.flags).
// ---------------------------------------------------------------------------------------------

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`: `domid` may map and access `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`: `domid` may transfer a frame into `frame`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive` (v2): `domid` may use another domain's grant.
pub const GTF_TRANSITIVE: u16 = 3;
/// `GTF_type_mask`.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: restrict to read-only mappings.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: Xen sets this while the grantee maps or reads the frame.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: Xen sets this while the grantee maps or writes the frame.
pub const GTF_WRITING: u16 = 1 << 4;
/// `GTF_PWT`: cache attribute (write-through).
pub const GTF_PWT: u16 = 1 << 5;
/// `GTF_PCD`: cache attribute (cache disable).
pub const GTF_PCD: u16 = 1 << 6;
/// `GTF_PAT`: cache attribute (PAT).
pub const GTF_PAT: u16 = 1 << 7;
/// `GTF_sub_page` (v2): the grant covers part of a page.
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// `GTF_transfer_committed`: Xen committed to a transfer.
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// `GTF_transfer_completed`: the transfer finished; `frame` holds the new frame.
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

// ---------------------------------------------------------------------------------------------
// GNTTABOP_* (grant_table_op commands).
// ---------------------------------------------------------------------------------------------

/// `GNTTABOP_map_grant_ref` → [`GnttabMapGrantRef`].
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref` → [`GnttabUnmapGrantRef`].
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table` → [`GnttabSetupTable`].
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_dump_table`.
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// `GNTTABOP_transfer`.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// `GNTTABOP_copy` → [`GnttabCopy`].
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size` → [`GnttabQuerySize`].
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_unmap_and_replace`.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// `GNTTABOP_set_version`.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_status_frames`.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// `GNTTABOP_swap_grant_ref`.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// `GNTTABOP_cache_flush`.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

// ---------------------------------------------------------------------------------------------
// Operation arguments.
// ---------------------------------------------------------------------------------------------

/// `struct gnttab_map_grant_ref` (`GNTTABOP_map_grant_ref`): 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (a virtual address, or a PTE machine address with
    /// `GNTMAP_contains_pte`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*` flags.
    pub flags: u32,
    /// IN: the grant reference (C `ref`).
    pub ref_: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: handle to pass to unmap.
    pub handle: GrantHandle,
    /// OUT: bus address for `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref` (`GNTTABOP_unmap_grant_ref`): 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GnttabUnmapGrantRef {
    /// IN: the address the page is mapped at (0: leave the host mapping).
    pub host_addr: u64,
    /// IN: the device mapping to remove (0: none).
    pub dev_bus_addr: u64,
    /// IN: the handle map returned.
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
}

/// `struct gnttab_setup_table` (`GNTTABOP_setup_table`): 24 bytes. Not `Pod` (guest handle).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabSetupTable {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: DomId,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
    /// IN: number of grant-table frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding, explicit here.
    pub _pad1: [u8; 6],
    /// OUT: receives `nr_frames` frame numbers (`XEN_GUEST_HANDLE(xen_pfn_t)`).
    pub frame_list: GuestHandle<XenPfn>,
}

/// `gnttab_copy_ptr.u`: a grant reference (`GNTCOPY_*_gref` set) or a local frame.
#[repr(C)]
#[derive(Clone, Copy)]
pub union GnttabCopyPtrU {
    /// C `ref`: a grant reference of `domid`.
    pub ref_: GrantRef,
    /// C `gmfn`: one of our own frames.
    pub gmfn: XenPfn,
}

impl Default for GnttabCopyPtrU {
    fn default() -> Self {
        Self { gmfn: 0 }
    }
}

impl fmt::Debug for GnttabCopyPtrU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: both variants are integers; `gmfn` covers all 8 bytes.
        let v = unsafe { self.gmfn };
        write!(f, "GnttabCopyPtrU({v:#x})")
    }
}

/// `struct gnttab_copy_ptr` (nested in `gnttab_copy`): 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabCopyPtr {
    /// The grant reference or frame.
    pub u: GnttabCopyPtrU,
    /// The domain owning the page (`DOMID_SELF` for a local frame).
    pub domid: DomId,
    /// Byte offset in the page.
    pub offset: u16,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
}

/// `GNTCOPY_source_gref`: `source.u` is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: `dest.u` is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `struct gnttab_copy` (`GNTTABOP_copy`): 40 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabCopy {
    /// IN: where the bytes come from.
    pub source: GnttabCopyPtr,
    /// IN: where they go.
    pub dest: GnttabCopyPtr,
    /// IN: number of bytes.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
}

/// `struct gnttab_query_size` (`GNTTABOP_query_size`): 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GnttabQuerySize {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: DomId,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
    /// OUT: current number of grant-table frames.
    pub nr_frames: u32,
    /// OUT: the most frames the domain may have.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding, explicit here.
    pub _pad1: [u8; 2],
}

// ---------------------------------------------------------------------------------------------
// GNTMAP_* (gnttab_map_grant_ref.flags).
// ---------------------------------------------------------------------------------------------

/// `GNTMAP_device_map`: map for access by I/O devices.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map`: map for access by host CPUs.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`: read-only access.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_application_map`: host mapping usable by applications too.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_contains_pte`: `host_addr` is the machine address of the PTE to update.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// `GNTMAP_guest_avail_mask`: bits 16..31 are free for guest use.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = !0u32 << 16;

// ---------------------------------------------------------------------------------------------
// GNTST_* (status of grant-table operations).
// ---------------------------------------------------------------------------------------------

/// `GNTST_okay`: normal return.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`: general undefined error.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`: unrecognised domain id.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`: unrecognised or inappropriate grant reference.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`: unrecognised or inappropriate handle.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// `GNTST_bad_virt_addr`: inappropriate virtual address to map.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// `GNTST_bad_dev_addr`: inappropriate device address to unmap.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// `GNTST_no_device_space`: out of space in the I/O MMU.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// `GNTST_permission_denied`: not enough privilege for the operation.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`: the page was invalid for the operation.
pub const GNTST_BAD_PAGE: i16 = -9;
/// `GNTST_bad_copy_arg`: copy arguments cross a page boundary.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// `GNTST_address_too_big`: transfer page address too large.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// `GNTST_eagain`: operation not done; try again.
pub const GNTST_EAGAIN: i16 = -12;
/// `GNTST_no_space`: out of space (handles etc.).
pub const GNTST_NO_SPACE: i16 = -13;

/// `GNTTABOP_error_msgs`: the message of `GNTST_x` is at index `-x`.
pub const GNTTABOP_ERROR_MSGS: [&str; 14] = [
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
];

/// The `GNTTABOP_error_msgs` text of a `GNTST_*` status, or `None` for an unknown status.
pub fn gntst_message(status: i16) -> Option<&'static str> {
    if status > 0 {
        return None;
    }
    GNTTABOP_ERROR_MSGS
        .get(status.unsigned_abs() as usize)
        .copied()
}

// SAFETY: repr(C), integers only, no padding bytes.
unsafe impl Pod for GrantEntryV1 {}
// SAFETY: as above.
unsafe impl Pod for GrantEntryHeader {}
// SAFETY: as above.
unsafe impl Pod for GrantEntryV2FullPage {}
// SAFETY: as above.
unsafe impl Pod for GrantEntryV2SubPage {}
// SAFETY: as above.
unsafe impl Pod for GrantEntryV2Transitive {}
// SAFETY: a union of Pod types; `spacer` spans all 16 bytes.
unsafe impl Pod for GrantEntryV2 {}
// SAFETY: repr(C), integers only, no padding bytes.
unsafe impl Pod for GnttabMapGrantRef {}
// SAFETY: as above (padding made explicit).
unsafe impl Pod for GnttabUnmapGrantRef {}
// SAFETY: a union of integers; `gmfn` spans all 8 bytes.
unsafe impl Pod for GnttabCopyPtrU {}
// SAFETY: repr(C), integers and a Pod union, padding made explicit.
unsafe impl Pod for GnttabCopyPtr {}
// SAFETY: as above.
unsafe impl Pod for GnttabCopy {}
// SAFETY: repr(C), integers only, padding made explicit.
unsafe impl Pod for GnttabQuerySize {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);
const _: () = assert!(core::mem::size_of::<GrantEntryV2>() == 16);
const _: () = assert!(core::mem::size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(core::mem::size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(core::mem::size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(core::mem::size_of::<GnttabCopy>() == 40);
const _: () = assert!(core::mem::size_of::<GnttabQuerySize>() == 16);
