//! XenBus for xenolith: the device model of Xen's split drivers over XenStore.
//!
//! * [`XenbusState`] (`xen/io/xenbus.h`) with strict parsing of the `state` nodes.
//! * [`path`]: where devices live — frontends under `device/<class>/<id>` of the guest's
//!   home, backends under `backend/<class>/<fe-domid>/<id>` — and validation of the other
//!   end's details (`backend`/`backend-id`, `frontend`/`frontend-id`).
//! * [`FrontDriver`] / [`BackDriver`]: what a device class implements (probe, initialise /
//!   attach, other end changed, detach), all non-blocking.
//! * [`Bus`]: owns the XenStore client, watches the class directories of the registered
//!   drivers (front half behind feature `bus-front`, back half behind `bus-back`; both may be
//!   on), adopts devices in Initialising, and moves every device through the startup and
//!   shutdown diagrams of `xen/io/blkif.h` in [`Bus::poll`] — all devices together, so a
//!   slow or dead peer never stalls the others. A device whose peer does not answer within
//!   [`BusConfig::handshake_timeout`] fails.
//!
//! # Failure
//! As Linux's `xenbus_dev_fatal()` (`drivers/xen/xenbus/xenbus_client.c`): the error is
//! written as `<errno> <message>` to `error/<nodename>/error` in our own home, the device goes
//! Closing — and then Closed. Nodes are never removed by the bus: that is the toolstack's job
//! (libxl removes both directories after both ends are Closed). A peer that vanishes (its
//! `state` node gone, e.g. its domain destroyed), writes a state that does not parse, removes
//! our nodes or revokes our access makes the device fail that way; nothing panics or spins.
//!
//! # Reconnect
//! A backend that closed in order while its `online` node is 1 keeps watching its frontend and
//! goes back through probe → InitWait when the frontend writes Initialising again (Linux
//! blkback's "prepare for reconnect"); [`Bus::reconnect`] starts a closed frontend again (the
//! same driver instance is probed again after its `detach`). A device that failed stays Closed
//! until the toolstack removes and re-adds it.
//!
//! # Shutdown
//! On poweroff and reboot every attached device goes Closing → Closed before the domain
//! shuts down (as Linux's `xenbus_dev_shutdown()`): [`Bus::close_all`] starts an orderly
//! close of every device, front and back (non-blocking, idempotent; from then on nothing is
//! adopted or restarted), and [`Bus::shutdown`] drives it to the end, bounded — it polls until
//! every device is Closed, waiting between polls through a callback the image gives (the
//! platform's event wait, or a short sleep), and returns a [`ShutdownSummary`]. A silent or
//! vanished peer fails its device by the usual path ([`BusConfig::close_timeout`], error
//! published, Closed); an overall timeout fails whatever is left the same way.
//!
//! With the control driver (`xen-control`, which does not depend on this crate, nor this
//! crate on it): the image's main loop owns the bus and the driver side by side, the driver
//! using the bus's XenStore client ([`Bus::client`]; the bus takes only its own watch
//! tokens). The driver, built `with_deferred_shutdown`, reports `Event::ShutdownPending`
//! after acknowledging the request; the loop runs [`Bus::shutdown`] and then
//! `Control::finish_shutdown`, which runs the `before_shutdown` hook and `SCHEDOP_shutdown`.
//! The xen-control crate docs show that loop, and its `tests/bus_shutdown.rs` runs it against
//! `xl shutdown` / `xl reboot`.
//!
//!
//! # State changes
//! Written as Linux's `xenbus_switch_state()` does: in a transaction, only if the node still
//! exists (never resurrecting a directory the toolstack removed), and not at all when it holds
//! the value already.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub use xen_platform as platform;
pub use xen_platform::DomId;
pub use xen_store as store;

mod bus;
pub mod driver;
pub mod path;
pub mod state;

pub use bus::{
    BackFactory, Bus, BusConfig, BusEvent, BusPoll, DeviceStatus, FrontFactory, Phase,
    ShutdownSummary, TOKEN_BACK, TOKEN_FRONT, TOKEN_OTHEREND,
};
pub use driver::{
    errno, BackDriver, DeviceCtx, DeviceInfo, DriverError, DriverResult, FrontDriver, Progress,
};
pub use path::Role;
pub use state::{BadState, XenbusState};
