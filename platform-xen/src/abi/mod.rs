//! `#[repr(C)]` mirrors of the Xen public headers (Xen 4.17, x86_64).
//!
//! Every type, field offset and constant here is compared with the installed C headers by
//! `ci/abi-oracle` (CI installs `libxen-dev`). Hand-written rather than taken from `xen-sys`:
//! see the workspace Cargo.toml for why.
//!
//! Submodules follow the headers: [`xen`] (xen.h, arch-x86), [`grant_table`], [`event_channel`],
//! [`sched`], [`hvm`] (PVH start info, hvm_op.h, params.h), [`memory`] (memory.h),
//! [`xs`] (io/xs_wire.h) and
//! [`console`] (io/console.h). Implicit C padding is spelled out as `_padN` fields so that the
//! `Pod` types have no padding bytes.

pub mod console;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod memory;
pub mod sched;
pub mod xen;
pub mod xs;

/// `domid_t` (xen.h).
pub type DomId = u16;
/// `grant_ref_t` (grant_table.h).
pub type GrantRef = u32;
/// `evtchn_port_t` (event_channel.h).
pub type EvtchnPort = u32;
/// `xen_pfn_t` (arch-x86/xen.h: `unsigned long`; 64 bits on x86_64).
pub type XenPfn = u64;
/// `grant_handle_t` (grant_table.h).
pub type GrantHandle = u32;

/// `XEN_PAGE_SIZE`: every shared page, grant and ring page is 4 KiB.
pub const PAGE_SIZE: usize = 4096;
/// `XEN_PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 12;

/// `DOMID_SELF` (xen.h).
pub const DOMID_SELF: DomId = 0x7FF0;
/// `DOMID_FIRST_RESERVED` (xen.h): domids at or above this are not real domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;

/// Plain old data: a `#[repr(C)]` type with no padding-dependent invariants, for which every
/// bit pattern is a valid value.
///
/// Shared-ring entries and other structures read from memory a peer can write must be `Pod`:
/// a hostile peer can put any bytes there, and reading them must never produce an invalid value.
///
/// # Safety
/// Implement only for types that are `Copy`, contain no references, pointers to owned data,
/// `bool`, `char`, enums or other types with invalid bit patterns, and are `#[repr(C)]` or
/// `#[repr(transparent)]`.
pub unsafe trait Pod: Copy + 'static {}

// SAFETY: integers accept every bit pattern.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: as above.
unsafe impl Pod for i16 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for i64 {}
// SAFETY: an array of Pod values is Pod.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}
