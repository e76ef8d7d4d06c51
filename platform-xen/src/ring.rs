//! Shared I/O rings with the semantics of `xen/io/ring.h`.
//!
//! Layout: `DEFINE_RING_TYPES(name, req, rsp)` produces a shared ring of a 64-byte header
//! ([`SringHeader`]) followed by `nr_ents` entries, each a `union { req; rsp; }`.

use core::mem::{align_of, size_of};

/// `RING_IDX`.
pub type RingIdx = u32;

/// The header of `struct name##_sring` exactly as `DEFINE_RING_TYPES` lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SringHeader {
    /// Requests produced by the front end.
    pub req_prod: RingIdx,
    /// The back end wants a notification when `req_prod` passes this.
    pub req_event: RingIdx,
    /// Responses produced by the back end.
    pub rsp_prod: RingIdx,
    /// The front end wants a notification when `rsp_prod` passes this.
    pub rsp_event: RingIdx,
    /// `union { netif; tapif_user; uint8_t pvt_pad[4]; } pvt`.
    pub pvt: [u8; 4],
    /// `uint8_t __pad[44]`.
    pub pad: [u8; 44],
}

/// Size of [`SringHeader`]: the offset of `ring[0]`.
pub const SRING_HEADER_SIZE: usize = 64;
const _: () = assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);

/// Size of one ring entry, `sizeof(union { Req req; Rsp rsp; })`: the larger of the two,
/// rounded up to the stricter alignment.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() { size_of::<Req>() } else { size_of::<Rsp>() };
    let align = if align_of::<Req>() > align_of::<Rsp>() { align_of::<Req>() } else { align_of::<Rsp>() };
    size.div_ceil(align) * align
}

/// `__RING_SIZE`: how many entries of `entry_size` bytes fit in a shared ring of `bytes` bytes,
/// rounded down to a power of two (`__RD32`). Zero if not even one fits.
pub const fn ring_size(bytes: usize, entry_size: usize) -> u32 {
    if bytes <= SRING_HEADER_SIZE || entry_size == 0 {
        return 0;
    }
    let n = (bytes - SRING_HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    let n = if n > u32::MAX as usize { u32::MAX } else { n as u32 };
    1 << (31 - n.leading_zeros())
}
