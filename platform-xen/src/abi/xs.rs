//! `io/xs_wire.h`: the XenStore ring page (`xenstore_domain_interface`), its constants and the
//! message header (`xsd_sockmsg`).
//!
//! The message types and error table are the store codec's business (crate `xen-store`).

use super::Pod;

/// `XENSTORE_RING_SIZE`: bytes in each of the `req` and `rsp` rings (a power of two).
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `XENSTORE_RING_IDX`: free-running ring index; the position is [`mask_xenstore_idx`].
pub type XenstoreRingIdx = u32;

/// `MASK_XENSTORE_IDX(idx)`: the byte position of free-running index `idx` in a ring.
pub const fn mask_xenstore_idx(idx: XenstoreRingIdx) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// `struct xenstore_domain_interface`: the XenStore ring page. 2076 bytes.
///
/// The indexes are shared with the peer: access them through atomics with Acquire/Release.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenstoreDomainInterface {
    /// Requests to the XenStore daemon (C `char req[XENSTORE_RING_SIZE]`).
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events (C `char rsp[XENSTORE_RING_SIZE]`).
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Consumer index of `req` (advanced by the daemon).
    pub req_cons: XenstoreRingIdx,
    /// Producer index of `req` (advanced by the guest).
    pub req_prod: XenstoreRingIdx,
    /// Consumer index of `rsp` (advanced by the guest).
    pub rsp_cons: XenstoreRingIdx,
    /// Producer index of `rsp` (advanced by the daemon).
    pub rsp_prod: XenstoreRingIdx,
    /// `XENSTORE_SERVER_FEATURE_*` bitmap, written by the daemon.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`, written by the daemon.
    pub error: u32,
}

/// `XENSTORE_PAYLOAD_MAX`: largest message payload.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`: the daemon can reconnect a ring.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field is present.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `XENSTORE_CONNECTED`: the steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`: a reconnect is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `XENSTORE_ERROR_NONE`.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `struct xsd_sockmsg`: the header of every XenStore message. 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XsdSockmsg {
    /// `XS_*` message type.
    pub type_: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

// SAFETY: repr(C), integers and byte arrays only, no padding bytes.
unsafe impl Pod for XenstoreDomainInterface {}
// SAFETY: as above.
unsafe impl Pod for XsdSockmsg {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<XenstoreDomainInterface>() == 2076);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, req_cons) == 2048);
