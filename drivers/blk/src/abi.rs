//! The blkif wire format: `#[repr(C)]` mirrors of `xen/io/blkif.h` (x86_64) and the protocol
//! names of `xen/io/protocols.h`.
//!
//! Every size, field offset and constant is compared with the installed C headers by
//! `ci/abi-oracle`. Implicit C padding is spelled out as `_padN` fields so that the types have no
//! padding bytes and can be copied to and from shared rings as plain bytes.

use core::mem::size_of;

use xen_platform::abi::{GrantRef, Pod, PAGE_SIZE};
use xen_platform::ring::{entry_size, ring_size};

/// `blkif_vdev_t`: the virtual device handle.
pub type BlkifVdev = u16;
/// `blkif_sector_t`: a sector number (in 512-byte units unless `feature-large-sector-size`).
pub type BlkifSector = u64;

// ---------------------------------------------------------------------------------------------
// Operations.
// ---------------------------------------------------------------------------------------------

/// `BLKIF_OP_READ`: read into the granted segments.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`: write from the granted segments.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`: write after all earlier requests are done and durable
/// (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`: flush the disk cache (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: used by an old blktap; never valid.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`: discard sectors ([`BlkifRequestDiscard`], `feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`: segments in indirect pages ([`BlkifRequestIndirect`],
/// `feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: `indirect_grefs` in an indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;

/// Segments in one indirect page: `PAGE_SIZE / sizeof(struct blkif_request_segment)`, as the
/// `BLKIF_OP_INDIRECT` comment of blkif.h computes it (512). Not a macro of the public header.
pub const SEGS_PER_INDIRECT_FRAME: usize = PAGE_SIZE / size_of::<BlkifRequestSegment>();
/// Xen pages per indirect frame: guest pages are Xen pages here (4 KiB), so 1. Not a macro of
/// the public header.
pub const XEN_PAGES_PER_INDIRECT_FRAME: usize = 1;
/// The most segments one indirect request can describe (8 pages × 512 segments).
pub const BLKIF_MAX_INDIRECT_SEGMENTS: usize =
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGS_PER_INDIRECT_FRAME;

/// Indirect pages needed for `segments` segments:
/// `ceil(segments / (PAGE_SIZE / sizeof(struct blkif_request_segment)))` (blkif.h).
pub const fn indirect_pages(segments: usize) -> usize {
    segments.div_ceil(SEGS_PER_INDIRECT_FRAME)
}

// ---------------------------------------------------------------------------------------------
// Requests and responses.
// ---------------------------------------------------------------------------------------------

/// `struct blkif_request_segment`: one granted page and the sectors of it used. 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// Grant reference of the I/O buffer frame.
    pub gref: GrantRef,
    /// First sector in the frame to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector in the frame to transfer (inclusive).
    pub last_sect: u8,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
}

/// `struct blkif_request`: read, write, barrier and flush requests. 112 bytes on x86_64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// The virtual device (read/write requests only).
    pub handle: BlkifVdev,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk (read/write only).
    pub sector_number: BlkifSector,
    /// The segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `BLKIF_DISCARD_SECURE`: `blkif_request_discard.flag` for a secure discard.
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `struct blkif_request_discard`: a request with `operation == BLKIF_OP_DISCARD`. 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or zero.
    pub flag: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk.
    pub sector_number: BlkifSector,
    /// Number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect`: a request with `operation == BLKIF_OP_INDIRECT`. 64 bytes
/// on x86_64 (no i386 `pad`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Number of segments (in the indirect pages).
    pub nr_segments: u16,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk.
    pub sector_number: BlkifSector,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// Implicit C padding, explicit here.
    pub _pad1: [u8; 2],
    /// Grants of the pages holding `blkif_request_segment` arrays.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Implicit C tail padding, explicit here.
    pub _pad2: [u8; 4],
}

/// `struct blkif_response`. 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request.
    pub operation: u8,
    /// Implicit C padding, explicit here.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Implicit C tail padding, explicit here.
    pub _pad1: [u8; 4],
}

/// `BLKIF_RSP_EOPNOTSUPP`: operation not supported (only for barrier writes).
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`: the operation failed (-EIO).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`: the operation completed successfully.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// `VDISK_CDROM`: bit of the backend's `info` node.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE`: bit of the backend's `info` node.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY`: bit of the backend's `info` node.
pub const VDISK_READONLY: u32 = 0x4;

// ---------------------------------------------------------------------------------------------
// io/protocols.h: the frontend's `protocol` node.
// ---------------------------------------------------------------------------------------------

/// `XEN_IO_PROTO_ABI_X86_32`.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// `XEN_IO_PROTO_ABI_X86_64`.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// `XEN_IO_PROTO_ABI_ARM`.
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";
/// `XEN_IO_PROTO_ABI_NATIVE`: the layout of these types (x86_64).
pub const XEN_IO_PROTO_ABI_NATIVE: &str = XEN_IO_PROTO_ABI_X86_64;

// ---------------------------------------------------------------------------------------------
// The shared ring: DEFINE_RING_TYPES(blkif, struct blkif_request, struct blkif_response).
// ---------------------------------------------------------------------------------------------

/// Size of one `union blkif_sring_entry` (112 on x86_64).
pub const BLKIF_RING_ENTRY_SIZE: usize = entry_size::<BlkifRequest, BlkifResponse>();

/// Entries of a blkif ring of `pages` pages: `__CONST_RING_SIZE(blkif, PAGE_SIZE * pages)`
/// (32 for one page).
pub const fn blkif_ring_size(pages: usize) -> u32 {
    ring_size(pages * PAGE_SIZE, BLKIF_RING_ENTRY_SIZE)
}

// SAFETY: repr(C), integers and arrays of them only, padding made explicit.
unsafe impl Pod for BlkifRequestSegment {}
// SAFETY: as above.
unsafe impl Pod for BlkifRequest {}
// SAFETY: as above.
unsafe impl Pod for BlkifRequestDiscard {}
// SAFETY: as above.
unsafe impl Pod for BlkifRequestIndirect {}
// SAFETY: as above.
unsafe impl Pod for BlkifResponse {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(size_of::<BlkifRequest>() == 112);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, seg) == 24);
const _: () = assert!(size_of::<BlkifResponse>() == 16);
const _: () = assert!(size_of::<BlkifRequestDiscard>() <= size_of::<BlkifRequest>());
const _: () = assert!(size_of::<BlkifRequestIndirect>() <= size_of::<BlkifRequest>());
const _: () = assert!(blkif_ring_size(1) == 32);
