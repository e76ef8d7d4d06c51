//! What a device class plugs into the bus: [`FrontDriver`] / [`BackDriver`], the
//! [`DeviceCtx`] they work through, and [`DriverError`].
//!
//! Every method is non-blocking: it does what it can now and returns
//! [`Progress::Pending`] if it must be called again later (on the next
//! [`Bus::poll`](crate::Bus::poll)), or [`Progress::Done`]. XenStore requests are round trips
//! to xenstored (bounded by the client's timeout); a driver never waits for its peer itself —
//! the bus does that, for all devices together.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use xen_store::client::{Store, XsClientError};

use crate::path::Role;
use crate::state::XenbusState;
use crate::DomId;

/// Linux errno numbers used in published errors (`error/<nodename>/error` = `<errno> <msg>`).
pub mod errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// I/O error.
    pub const EIO: i32 = 5;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Protocol error.
    pub const EPROTO: i32 = 71;
    /// Connection timed out.
    pub const ETIMEDOUT: i32 = 110;
}

/// Whether a driver step finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Finished: the bus moves the device on.
    Done,
    /// Not yet (e.g. waiting for a hotplug key or an I/O): call again on a later poll.
    Pending,
}

/// Why a device failed: published as `<errno> <message>` in `error/<nodename>/error`, as
/// Linux's `xenbus_dev_fatal()` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    /// A positive Linux errno.
    pub errno: i32,
    /// What went wrong.
    pub message: String,
}

impl DriverError {
    /// An error.
    pub fn new(errno: i32, message: impl Into<String>) -> DriverError {
        DriverError {
            errno,
            message: message.into(),
        }
    }

    /// A XenStore failure while doing `what`.
    pub fn xs(what: &str, e: &XsClientError) -> DriverError {
        let errno = match e {
            XsClientError::Xs(x) => x.errno(),
            XsClientError::Timeout => errno::ETIMEDOUT,
            XsClientError::BadValue(_) => errno::EINVAL,
            _ => errno::EIO,
        };
        DriverError::new(errno, format!("{what}: {e}"))
    }

    /// The value written to the error node: `"<errno> <message>"` (`"%i %s"` of
    /// `xenbus_va_dev_error()`, with the errno positive).
    pub fn published(&self) -> String {
        format!("{} {}", self.errno, self.message)
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl core::error::Error for DriverError {}

impl From<XsClientError> for DriverError {
    fn from(e: XsClientError) -> Self {
        DriverError::xs("xenstore", &e)
    }
}

/// A driver step's result.
pub type DriverResult = Result<Progress, DriverError>;

/// Who a device is and where its nodes are; fixed once the bus adopted it (its other end's
/// details were read and validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Which end this domain runs.
    pub role: Role,
    /// The device class (`vbd`, `vif`, `vdummy`, ...).
    pub class: String,
    /// The device id within the class (`51712`).
    pub id: String,
    /// The frontend's domid.
    pub frontend_id: DomId,
    /// The backend's domid.
    pub backend_id: DomId,
    /// Our node relative to our home (`device/vbd/51712`, `backend/vbd/1/51712`): Linux's
    /// `dev->nodename`.
    pub nodename: String,
    /// Our node, absolute.
    pub path: String,
    /// The other end's node, absolute (Linux's `dev->otherend`).
    pub otherend: String,
    /// The other end's domid (Linux's `dev->otherend_id`).
    pub otherend_id: DomId,
}

impl DeviceInfo {
    /// `<our node>/<key>`.
    pub fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.path)
    }

    /// `<other end>/<key>`.
    pub fn other_key(&self, key: &str) -> String {
        format!("{}/{key}", self.otherend)
    }
}

/// What a driver method works with: the device, XenStore, the time, and the other end's last
/// seen state.
pub struct DeviceCtx<'a> {
    /// The device.
    pub info: &'a DeviceInfo,
    /// XenStore (each call on its own, outside any transaction).
    pub store: &'a mut dyn Store,
    /// The time the bus was polled with.
    pub now: Duration,
    /// The other end's state as last read.
    pub other_state: Option<XenbusState>,
}

impl fmt::Debug for DeviceCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCtx")
            .field("info", self.info)
            .field("now", &self.now)
            .field("other_state", &self.other_state)
            .finish()
    }
}

impl DeviceCtx<'_> {
    /// Read our `key`; `None` if missing.
    pub fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let p = self.info.key(key);
        self.store
            .try_read(&p)
            .map_err(|e| DriverError::xs(&format!("reading {p}"), &e))
    }

    /// Write our `key`.
    pub fn write(&mut self, key: &str, value: &[u8]) -> Result<(), DriverError> {
        let p = self.info.key(key);
        self.store
            .write(&p, value)
            .map_err(|e| DriverError::xs(&format!("writing {p}"), &e))
    }

    /// Read the other end's `key`; `None` if missing.
    pub fn read_other(&mut self, key: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let p = self.info.other_key(key);
        self.store
            .try_read(&p)
            .map_err(|e| DriverError::xs(&format!("reading {p}"), &e))
    }

    /// Read the other end's `key` as a decimal `u32` that must be there.
    pub fn require_other_u32(&mut self, key: &str) -> Result<u32, DriverError> {
        let p = self.info.other_key(key);
        match self.store.read_u32(&p) {
            Ok(v) => Ok(v),
            Err(e) => Err(DriverError::xs(&format!("reading {p}"), &e)),
        }
    }

    /// A human-readable name for messages.
    pub fn name(&self) -> String {
        self.info.nodename.to_string()
    }
}

/// A frontend driver: one instance per device, made by the factory given to
/// `Bus::register_front` (feature `bus-front`). The bus calls, in order (blkif.h,
/// "STATE DIAGRAMS", Startup):
/// 1. [`probe`](Self::probe) in Initialising — query the virtual device's properties;
/// 2. once the backend is in InitWait (or at once if [`waits_for_init_wait`] is false),
///    [`initialise`](Self::initialise) — read the backend's features, set up the ring,
///    publish the transport parameters; then the bus writes Initialised;
/// 3. once the backend is Connected, [`attach`](Self::attach) — read the backend's device
///    properties; then the bus writes Connected.
///
/// [`other_end_changed`](Self::other_end_changed) sees every backend state the bus reads;
/// [`detach`](Self::detach) undoes whatever was set up (it must be idempotent: it may run
/// after a failure at any point, and more than once).
///
/// [`waits_for_init_wait`]: Self::waits_for_init_wait
pub trait FrontDriver {
    /// Initialising work. `Done` → step 2.
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult;
    /// Whether to wait for the backend's InitWait before [`initialise`](Self::initialise)
    /// (blkif.h lets a frontend without optional features skip it). Default: wait.
    fn waits_for_init_wait(&self) -> bool {
        true
    }
    /// Publish the transport parameters. `Done` → Initialised.
    fn initialise(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult;
    /// The backend is Connected: finish. `Done` → Connected.
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult;
    /// The backend's state changed (called before the bus acts on it). An error fails the
    /// device.
    fn other_end_changed(
        &mut self,
        _ctx: &mut DeviceCtx<'_>,
        _state: XenbusState,
    ) -> Result<(), DriverError> {
        Ok(())
    }
    /// Disconnect: release the ring, grants, ports. Idempotent.
    fn detach(&mut self, ctx: &mut DeviceCtx<'_>);
}

/// A backend driver: one instance per device, made by the factory given to
/// `Bus::register_back` (feature `bus-back`). The bus calls:
/// 1. [`probe`](Self::probe) in Initialising — open and validate the backend device, publish
///    the backend's features and transport parameters; then the bus writes InitWait;
/// 2. once the frontend is Initialised (or Connected), [`attach`](Self::attach) — read the
///    frontend's transport parameters, connect to the ring, publish the device's properties;
///    then the bus writes Connected. A frontend that did not wait for InitWait is fine: its
///    Initialised is seen whenever it comes.
///
/// [`other_end_changed`](Self::other_end_changed) and [`detach`](Self::detach) as for
/// [`FrontDriver`].
pub trait BackDriver {
    /// Initialising work. `Done` → InitWait.
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult;
    /// Connect to the frontend. `Done` → Connected.
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult;
    /// The frontend's state changed (called before the bus acts on it).
    fn other_end_changed(
        &mut self,
        _ctx: &mut DeviceCtx<'_>,
        _state: XenbusState,
    ) -> Result<(), DriverError> {
        Ok(())
    }
    /// Disconnect. Idempotent.
    fn detach(&mut self, ctx: &mut DeviceCtx<'_>);
}
