//! blkif: the block-device protocol of `xen/io/blkif.h`.
//!
//! - [`abi`]: the wire structs and constants (checked against the C headers by `ci/abi-oracle`).
//! - [`block`]: the vocabulary both ends share — `Op`, `Completion`, `BlkError`, 512-byte
//!   sectors.
//! - [`negotiate`]: pure code that turns XenStore keys into a negotiated configuration, for both ends.
//! - [`storage`]: the `Storage` trait blkback serves, with `MemDisk` and `Slice`.
//! - [`back`] (feature `back`): blkback — data path and XenBus glue.
//! - [`front`] (feature `front`): blkfront — `BlockDevice`, data path and XenBus glue.
//! - [`reexport`] (feature `front`): a blkfront device as a `Storage`, so a storage domain can
//!   serve a disk it received.
#![no_std]

extern crate alloc;

pub mod abi;
pub mod block;
pub mod negotiate;
pub mod storage;

#[cfg(feature = "back")]
pub mod back;
#[cfg(feature = "front")]
pub mod front;
#[cfg(feature = "front")]
pub mod reexport;

pub use xen_platform as platform;
