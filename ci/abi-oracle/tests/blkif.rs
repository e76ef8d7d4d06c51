//! `xen_blk::abi` (io/blkif.h, io/protocols.h) and `xen_platform::ring` (io/ring.h) against the
//! Xen public headers.

use abi_oracle::{
    c_usize, check_consts, check_field, check_scalar, check_strs, check_struct, Checker,
};
use xen_blk::abi::*;
use xen_platform::ring::{entry_size, ring_size, RingIdx, SringHeader, SRING_HEADER_SIZE};

#[test]
fn blkif_h() {
    let c = &mut Checker::new("io/blkif.h + io/protocols.h");
    check_scalar!(c, BlkifVdev = blkif_vdev_t);
    check_scalar!(c, BlkifSector = blkif_sector_t);
    check_struct!(c, BlkifRequestSegment = blkif_request_segment {
        gref, first_sect, last_sect,
    } pad { _pad0 });
    check_struct!(c, BlkifRequest = blkif_request {
        operation, nr_segments, handle, id, sector_number, seg,
    } pad { _pad0 });
    check_struct!(c, BlkifRequestDiscard = blkif_request_discard {
        operation, flag, handle, id, sector_number, nr_sectors,
    } pad { _pad0 });
    check_struct!(c, BlkifRequestIndirect = blkif_request_indirect {
        operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs,
    } pad { _pad0, _pad1, _pad2 });
    check_struct!(c, BlkifResponse = blkif_response { id, operation, status } pad { _pad0, _pad1 });

    check_consts!(c, {
        BLKIF_OP_READ = BLKIF_OP_READ,
        BLKIF_OP_WRITE = BLKIF_OP_WRITE,
        BLKIF_OP_WRITE_BARRIER = BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE = BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_RESERVED_1 = BLKIF_OP_RESERVED_1,
        BLKIF_OP_DISCARD = BLKIF_OP_DISCARD,
        BLKIF_OP_INDIRECT = BLKIF_OP_INDIRECT,
        BLKIF_MAX_SEGMENTS_PER_REQUEST = BLKIF_MAX_SEGMENTS_PER_REQUEST,
        BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
        BLKIF_DISCARD_SECURE = BLKIF_DISCARD_SECURE,
        BLKIF_RSP_EOPNOTSUPP = BLKIF_RSP_EOPNOTSUPP,
        BLKIF_RSP_ERROR = BLKIF_RSP_ERROR,
        BLKIF_RSP_OKAY = BLKIF_RSP_OKAY,
        VDISK_CDROM = VDISK_CDROM,
        VDISK_REMOVABLE = VDISK_REMOVABLE,
        VDISK_READONLY = VDISK_READONLY,
        SEGS_PER_INDIRECT_FRAME = SEGS_PER_INDIRECT_FRAME,
        BLKIF_MAX_INDIRECT_SEGMENTS = BLKIF_MAX_INDIRECT_SEGMENTS,
    });
    check_strs!(c, {
        XEN_IO_PROTO_ABI_X86_32 = XEN_IO_PROTO_ABI_X86_32,
        XEN_IO_PROTO_ABI_X86_64 = XEN_IO_PROTO_ABI_X86_64,
        XEN_IO_PROTO_ABI_ARM = XEN_IO_PROTO_ABI_ARM,
        XEN_IO_PROTO_ABI_NATIVE = XEN_IO_PROTO_ABI_NATIVE,
    });
    c.finish();
}

#[test]
fn blkif_ring() {
    let c = &mut Checker::new("io/ring.h (blkif ring)");
    check_scalar!(c, RingIdx = RING_IDX);

    // The sring header: SringHeader's fields at the offsets of struct blkif_sring, and the
    // entries starting right after it.
    // (No C type is just the header, so no sizeof/alignment check of SringHeader itself.)
    let covered = check_field!(c, SringHeader = blkif_sring, req_prod)
        + check_field!(c, SringHeader = blkif_sring, req_event)
        + check_field!(c, SringHeader = blkif_sring, rsp_prod)
        + check_field!(c, SringHeader = blkif_sring, rsp_event)
        + check_field!(c, SringHeader = blkif_sring, pvt)
        + check_field!(c, SringHeader = blkif_sring, pad => __pad);
    c.eq(
        "blkif_sring header: bytes of checked fields == size_of::<SringHeader>()",
        covered as i128,
        core::mem::size_of::<SringHeader>() as i128,
    );
    let ring_off = c_usize!("xo_off_blkif_sring__ring");
    c.eq(
        "offsetof(struct blkif_sring, ring) vs SRING_HEADER_SIZE",
        SRING_HEADER_SIZE as i128,
        ring_off as i128,
    );
    c.eq(
        "offsetof(struct blkif_sring, ring) vs size_of::<SringHeader>()",
        core::mem::size_of::<SringHeader>() as i128,
        ring_off as i128,
    );

    // One ring entry: union blkif_sring_entry { blkif_request req; blkif_response rsp; }.
    let entry = c_usize!("xo_blkif_sring_entry_size");
    c.eq(
        "sizeof(union blkif_sring_entry) vs entry_size::<BlkifRequest, BlkifResponse>()",
        entry_size::<BlkifRequest, BlkifResponse>() as i128,
        entry as i128,
    );
    c.eq(
        "sizeof(union blkif_sring_entry) vs BLKIF_RING_ENTRY_SIZE",
        BLKIF_RING_ENTRY_SIZE as i128,
        entry as i128,
    );
    c.eq(
        "sizeof(struct blkif_sring ring[0]) vs sizeof(union blkif_sring_entry)",
        c_usize!("xo_fsize_blkif_sring__ring") as i128,
        entry as i128,
    );

    // __CONST_RING_SIZE(blkif, 4096 * pages).
    let sizes: [(usize, usize); 5] = [
        (1, c_usize!("xo_blkif_ring_size_1")),
        (2, c_usize!("xo_blkif_ring_size_2")),
        (4, c_usize!("xo_blkif_ring_size_4")),
        (8, c_usize!("xo_blkif_ring_size_8")),
        (16, c_usize!("xo_blkif_ring_size_16")),
    ];
    for (pages, want) in sizes {
        c.eq(
            format!("__CONST_RING_SIZE(blkif, 4096 * {pages}) vs blkif_ring_size({pages})"),
            blkif_ring_size(pages) as i128,
            want as i128,
        );
        c.eq(
            format!("__CONST_RING_SIZE(blkif, 4096 * {pages}) vs ring_size(4096 * {pages}, entry)"),
            ring_size(4096 * pages, entry) as i128,
            want as i128,
        );
    }
    c.finish();
}
