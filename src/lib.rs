//! xenolith: library-OS components for Xen guests.
//!
//! Pick components with Cargo features (`store`, `bus-front`, `bus-back`, `blkfront`, `blkback`,
//! `control`, and `image` for a bootable image's runtime, `rt`); the platform layer is always
//! present. An image's `Cargo.toml` names this crate once:
//!
//! ```toml
//! [dependencies]
//! xenolith = { version = "0.1", features = ["image", "blkfront", "control"] }
//! ```
//!
//! and its code reaches every layer through it: `xenolith::rt::Xen::get()`,
//! `xenolith::blk::front::Blkfront`, `xenolith::control::Control`, ... (examples/hello). The simulator is a separate crate
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

// Not in this crate's own test build (`cargo build --all-targets` makes one even with
// `test = false`): linking the runtime's #[panic_handler] there would clash with std's.
#[cfg(all(feature = "image", not(test)))]
pub use xen_rt as rt;
