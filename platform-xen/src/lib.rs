//! The contract between xenolith and the hypervisor.
//!
//! * [`abi`]: `#[repr(C)]` mirrors of the Xen public headers (checked against the real headers by
//!   `ci/abi-oracle`).
//! * [`traits`]: what every driver programs against — [`Events`], [`Grants`], [`GrantMapper`],
//!   [`Pages`], [`Console`], [`Clock`], [`Scheduler`]. Implemented by the real platform (images)
//!   and by the simulator (`xen-sim`, host tests).
//! * [`ring`]: `FrontRing`/`BackRing` with the semantics of `xen/io/ring.h`.
#![no_std]

pub mod abi;
pub mod error;
pub mod ring;
pub mod traits;
pub mod xs_ring;

pub use abi::{DomId, EvtchnPort, GrantRef, XenPfn, PAGE_SIZE};
pub use error::{Error, Result};
pub use traits::*;
