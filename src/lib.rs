//! xenolith: library-OS components for Xen guests.
//!
//! Pick components with Cargo features (`store`, `bus-front`, `bus-back`, `blkfront`, `blkback`,
//! `control`); the platform layer is always present. The simulator is a separate crate
//! (`xen-sim`) used by tests and host demos, never a feature, so `std` cannot leak into images.
#![no_std]
#![forbid(unsafe_code)]

pub use xen_platform as platform;

#[cfg(feature = "store")]
pub use xen_store as store;

#[cfg(any(feature = "bus-front", feature = "bus-back"))]
pub use xen_bus as bus;

#[cfg(any(feature = "blkfront", feature = "blkback"))]
pub use xen_blk as blk;

#[cfg(feature = "control")]
pub use xen_control as control;
