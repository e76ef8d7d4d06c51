//! `io/console.h`: the PV console ring page.

use super::Pod;

/// `XENCONS_RING_IDX`: free-running ring index.
pub type XenconsRingIdx = u32;

/// Bytes in `xencons_interface.in` (a power of two).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Bytes in `xencons_interface.out` (a power of two).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `struct xencons_interface`: the console ring page. 3088 bytes.
///
/// The indexes are shared with the peer: access them through atomics with Acquire/Release.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenconsInterface {
    /// Input from the console daemon (C `char in[1024]`).
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Output to the console daemon (C `char out[2048]`).
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Consumer index of `in` (advanced by the guest).
    pub in_cons: XenconsRingIdx,
    /// Producer index of `in` (advanced by the daemon).
    pub in_prod: XenconsRingIdx,
    /// Consumer index of `out` (advanced by the daemon).
    pub out_cons: XenconsRingIdx,
    /// Producer index of `out` (advanced by the guest).
    pub out_prod: XenconsRingIdx,
}

/// `MASK_XENCONS_IDX(idx, in)`: position of `idx` in the `in` ring.
pub const fn mask_xencons_in_idx(idx: XenconsRingIdx) -> usize {
    (idx as usize) & (XENCONS_IN_SIZE - 1)
}

/// `MASK_XENCONS_IDX(idx, out)`: position of `idx` in the `out` ring.
pub const fn mask_xencons_out_idx(idx: XenconsRingIdx) -> usize {
    (idx as usize) & (XENCONS_OUT_SIZE - 1)
}

// SAFETY: repr(C), integers and byte arrays only, no padding bytes.
unsafe impl Pod for XenconsInterface {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<XenconsInterface>() == 3088);
