//! The contract between xenolith and the hypervisor.
//!
//! * [`abi`]: `#[repr(C)]` mirrors of the Xen public headers (checked against the real headers by
//!   `ci/abi-oracle`).
//! * [`traits`]: what every driver programs against — [`Events`], [`Grants`], [`GrantMapper`],
//!   [`Pages`], [`Console`], [`Clock`], [`Scheduler`]. Implemented by the real platform (images)
//!   and by the simulator (`xen-sim`, host tests).
//! * [`ring`]: `FrontRing`/`BackRing` with the semantics of `xen/io/ring.h`.
//!
//! A driver is written once against the traits and runs on either platform. The round trip
//! every ring driver makes — tell the peer, then wait, bounded, for its answer:
//!
//! ```
//! use core::time::Duration;
//! use xen_platform::{Clock, Error, Events, EvtchnPort};
//!
//! fn round_trip<P: Events + Clock + ?Sized>(p: &P, port: EvtchnPort) -> Result<Duration, Error> {
//!     let t0 = p.now();
//!     p.notify(port)?; // EVTCHNOP_send on Xen
//!     // SCHEDOP_poll on Xen: returns the port that fired, or Error::Timeout.
//!     let fired = p.wait(&[port], Some(Duration::from_secs(1)))?;
//!     p.clear(fired); // else the next wait returns at once
//!     Ok(p.now().saturating_sub(t0))
//! }
//! ```
//!
//! An image gets its platform as `&'static xen_rt::Xen`, a host test as a simulated
//! `xen_sim::Domain`; drivers that keep the platform take any [`PlatformRef`] (both work).
#![no_std]

pub mod abi;
pub mod error;
pub mod ring;
pub mod traits;
pub mod xs_ring;

pub use abi::{DomId, EvtchnPort, GrantRef, XenPfn, PAGE_SIZE};
pub use error::{Error, Result};
pub use traits::*;
