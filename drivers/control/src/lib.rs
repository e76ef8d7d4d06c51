//! The control driver: `control/shutdown` requests from the toolstack — poweroff, halt,
//! reboot, crash, suspend — acknowledged and acted upon, and the `control/feature-*` flags
//! that tell the toolstack which of them this guest handles.
//!
//! # Protocol (facts from Linux `drivers/xen/manage.c`, FreeBSD `sys/dev/xen/control/control.c`
//! and what libxl 4.17 does, `docs/XENSTORE-LAYOUT.md`)
//!
//! * The toolstack (`xl shutdown`, `xl reboot`, the suspend half of `xl save`/`migrate`) writes
//!   a word into `control/shutdown` of the guest's home `/local/domain/<domid>`: `poweroff`,
//!   `halt`, `reboot`, `crash` or `suspend`. libxl then waits for the guest to *acknowledge*
//!   by writing `""` to the node — not by removing it — and gives up after 60 s
//!   ("guest didn't acknowledge control request: -9").
//! * The guest reads the node and writes the acknowledgement in **one transaction**, retried on
//!   `EAGAIN` (Linux `shutdown_handler`): a second request written between the read and the ack
//!   makes the commit fail, the retry reads the new request, and nothing the guest did not read
//!   is ever cleared.
//! * A missing or empty node is no request (Linux: "Ignore read errors and empty reads"; our
//!   own ack fires the watch again and reads `""`).
//! * **Only known requests are acknowledged** (Linux: "Only acknowledge commands which we are
//!   prepared to handle"; an unknown one is logged, "Ignoring shutdown request: %s", and left in
//!   place, so libxl times out and reports it). We follow that: an unknown value, `suspend`
//!   without a [`SuspendHook`] (Linux without `CONFIG_HIBERNATE_CALLBACKS` has no `suspend`
//!   entry) and any garbage are logged on the console and left unacknowledged.
//! * The requests map to handlers through a table ([`REQUESTS`]), as FreeBSD's
//!   `xctrl_shutdown_reasons[]`: `poweroff` and `halt` → `SHUTDOWN_poweroff` (Linux: "HALT is
//!   the same as POWEROFF, as far as we're concerned"), `reboot` → `SHUTDOWN_reboot`, `crash` →
//!   `SHUTDOWN_crash` (FreeBSD `xctrl_crash`; Linux has no `crash` entry), `suspend` → the
//!   platform's suspend.
//! * At start the guest watches `control/shutdown` and writes `control/feature-poweroff`,
//!   `control/feature-reboot` and (if it can suspend) `control/feature-suspend` = `"1"` (Linux
//!   `setup_shutdown_watcher`: the entries whose `flag` is set; `halt` is not advertised).
//!   `control/sysrq` is not handled (Linux's separate `sysrq_handler`): out of scope.
//! * Once a shutdown is under way further requests are ignored, unread and unacknowledged
//!   (Linux: `shutting_down != SHUTDOWN_INVALID` → return). On real Xen `SCHEDOP_shutdown` for
//!   anything but suspend does not return; in the simulator it does, and the driver stays in
//!   that state.
//!
//! # Driving
//! One address space, no threads ([`DESIGN.md`, "Driving model"]): the image's main loop calls
//! [`Control::poll`] with its XenStore client, which reads what the ring holds *now*
//! ([`Client::poll_watch_events`]), takes this driver's watch events and acts on at most one
//! request per call. `poll` never waits for an event; the XenStore requests it makes (the
//! read+ack transaction, feature writes) are round trips bounded by the client's timeout. The
//! port to wait on is the client's ([`Transport::event_port`]). Several drivers share one
//! client: each uses a watch token of its own ([`DEFAULT_TOKEN`] here).
//!
//! ```
//! use xen_control::{Control, ControlError, Event, Request};
//! use xen_platform::{Console, Scheduler};
//! use xen_store::client::{Client, Transport};
//!
//! fn main_loop<T: Transport, P: Scheduler + Console>(
//!     xs: &mut Client<T>,
//!     platform: &P,
//! ) -> Result<(), ControlError> {
//!     // An image with devices defers the shutdown to close them first (see "Shutdown").
//!     let mut ctl = Control::new(|_request: Request| {});
//!     ctl.start(xs)?;
//!     loop {
//!         while let Some(ev) = ctl.poll(xs, platform)? {
//!             if let Event::Shutdown { .. } = ev {
//!                 return Ok(()); // only in the simulator: on Xen the domain is gone
//!             }
//!         }
//!         // ... poll the other drivers, then wait on their ports and the XenStore port.
//! #       return Ok(());
//!     }
//! }
//! ```
//!
//! # Shutdown
//! The [`BeforeShutdown`] hook runs after the acknowledgement and before `SCHEDOP_shutdown`.
//! Every attached device must go Closing → Closed in between (XenBus issue, item 6), which
//! needs the bus — and in a single-threaded image the main loop owns both the bus and this
//! driver, the driver polling on the bus's XenStore client (`xen_bus::Bus::client`), so a
//! hook stored in the driver cannot reach the bus. Hence the deferred mode: a driver built
//! [`with_deferred_shutdown`](Control::with_deferred_shutdown) acknowledges the request and
//! reports [`Event::ShutdownPending`] without shutting down; the loop then closes its devices
//! (`xen_bus::Bus::shutdown`, bounded) and calls [`Control::finish_shutdown`], which runs the
//! hook and `SCHEDOP_shutdown`. Meanwhile further requests are ignored, as during any
//! shutdown. This crate does not depend on `xen-bus` (nor it on this one); the loop, with the
//! bus (`tests/bus_shutdown.rs` runs it against `xl shutdown`/`xl reboot`):
//!
//! ```no_run
//! use core::time::Duration;
//! use xen_bus::Bus;
//! use xen_bus::platform::{Clock, Console, Events, Scheduler};
//! use xen_bus::store::client::Transport;
//! use xen_control::{Control, Event, Request};
//!
//! fn main_loop<T: Transport, P: Clock + Console + Events + Scheduler>(
//!     bus: &mut Bus<T>,
//!     platform: &P,
//! ) {
//!     let mut ctl = Control::new(|_: Request| {}).with_deferred_shutdown();
//!     ctl.start(bus.client()).unwrap();
//!     loop {
//!         let p = bus.poll_clock(platform).unwrap();
//!         while let Some(ev) = ctl.poll(bus.client(), platform).unwrap() {
//!             if let Event::ShutdownPending { .. } = ev {
//!                 let closed = bus.shutdown(platform, Duration::from_secs(15), |p| {
//!                     let left = p.next_deadline.unwrap().saturating_sub(platform.now());
//!                     if let Some(port) = p.port.filter(|_| !p.busy) {
//!                         let _ = platform.wait(&[port], Some(left));
//!                         platform.clear(port);
//!                     }
//!                 });
//!                 let _ = closed; // Err: XenStore is gone; shut down anyway
//!                 ctl.finish_shutdown(platform).unwrap(); // does not return on Xen
//!                 return;
//!             }
//!         }
//!         // ... wait on p.port until p.next_deadline, as for any poll.
//! #       let _ = p;
//!     }
//! }
//! ```
//!
//! Without the deferred mode the hook is called from [`Control::poll`] as before (an image
//! without devices, or one whose hook owns what it closes).
//!
//! ```
//! use xen_control::{Control, ControlError, Event, Request};
//! use xen_platform::{Console, Scheduler};
//! use xen_store::client::{Client, Transport};
//!
//! /// `close_devices` stands for `bus.shutdown(..)`.
//! fn on_request<T: Transport, P: Scheduler + Console>(
//!     xs: &mut Client<T>,
//!     platform: &P,
//!     mut close_devices: impl FnMut(),
//! ) -> Result<(), ControlError> {
//!     let mut ctl = Control::new(|_request: Request| {}).with_deferred_shutdown();
//!     ctl.start(xs)?;
//!     while let Some(ev) = ctl.poll(xs, platform)? {
//!         if let Event::ShutdownPending { .. } = ev {
//!             close_devices();
//!             ctl.finish_shutdown(platform)?; // SCHEDOP_shutdown: does not return on Xen
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//!
//! Suspend: the acknowledgement, then [`SuspendHook::quiesce`], [`SuspendHook::suspend`]
//! (by default `SCHEDOP_shutdown(SHUTDOWN_suspend)`, which returns on resume with "cancelled"),
//! [`SuspendHook::resume`], and the driver registers its watch and features again. What the
//! hooks do for real — quiescing devices, re-initialising grants, event channels and the
//! XenStore connection after a real resume, reconnecting frontends, the simulator's
//! "migration" — is later work (see the crate's issue); here they are the image's to supply.
//!
//! [`DESIGN.md`, "Driving model"]: ../../DESIGN.md

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

pub use xen_platform as platform;
pub use xen_store as store;

use xen_platform::{Console, Scheduler, ShutdownReason};
use xen_store::client::{Client, Store, Transport, XsClientError};
use xen_store::XsError;

/// The node the toolstack writes requests into, relative to the domain's home.
pub const SHUTDOWN_NODE: &str = "control/shutdown";

/// The watch token [`Control::start`] uses unless told otherwise.
pub const DEFAULT_TOKEN: &str = "control";

/// The longest part of an ignored value copied into the console log (bytes).
pub const LOG_VALUE_MAX: usize = 64;

/// A request the toolstack can write into `control/shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// `poweroff` (`xl shutdown`).
    Poweroff,
    /// `halt`: the same as poweroff for the guest (Linux manage.c).
    Halt,
    /// `reboot` (`xl reboot`).
    Reboot,
    /// `crash`: report a crash (FreeBSD `xctrl_crash`).
    Crash,
    /// `suspend` (`xl save`, `xl migrate`).
    Suspend,
}

/// What a request makes the driver do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `before_shutdown`, then `SCHEDOP_shutdown(reason)`.
    Shutdown(ShutdownReason),
    /// The [`SuspendHook`] sequence.
    Suspend,
}

/// The request table (FreeBSD `xctrl_shutdown_reasons[]`): the exact value in
/// `control/shutdown`, the request, its action, and whether `control/feature-<name>` is
/// advertised for it (Linux `shutdown_handlers[].flag`; `suspend` only with a hook).
pub const REQUESTS: &[(&str, Request, Action, bool)] = &[
    (
        "poweroff",
        Request::Poweroff,
        Action::Shutdown(ShutdownReason::Poweroff),
        true,
    ),
    (
        "halt",
        Request::Halt,
        Action::Shutdown(ShutdownReason::Poweroff),
        false,
    ),
    (
        "reboot",
        Request::Reboot,
        Action::Shutdown(ShutdownReason::Reboot),
        true,
    ),
    (
        "crash",
        Request::Crash,
        Action::Shutdown(ShutdownReason::Crash),
        false,
    ),
    ("suspend", Request::Suspend, Action::Suspend, true),
];

impl Request {
    /// The request whose word is exactly `value` (byte for byte: no trailing newline or NUL,
    /// case-sensitive — Linux compares with `strcmp`, which would also stop at an embedded NUL;
    /// we are stricter).
    pub fn parse(value: &[u8]) -> Option<Request> {
        REQUESTS
            .iter()
            .find(|(name, ..)| name.as_bytes() == value)
            .map(|&(_, r, ..)| r)
    }

    /// The word the toolstack writes.
    pub fn as_str(self) -> &'static str {
        self.entry().0
    }

    /// What the driver does for it.
    pub fn action(self) -> Action {
        self.entry().2
    }

    fn entry(self) -> &'static (&'static str, Request, Action, bool) {
        match REQUESTS.iter().find(|(_, r, ..)| *r == self) {
            Some(e) => e,
            // Every variant has an entry (tested).
            None => &REQUESTS[0],
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called after a poweroff/halt/reboot/crash request was acknowledged and before
/// `SCHEDOP_shutdown`: the place to flush what must be flushed. Every attached device goes
/// Closing → Closed before it too; an image whose main loop owns the bus uses
/// [`Control::with_deferred_shutdown`] for that (crate docs, "Shutdown"), and the hook then
/// runs from [`Control::finish_shutdown`]. Closures `FnMut(Request)` are hooks.
pub trait BeforeShutdown {
    /// Prepare for `request` (its [`Request::action`] says which shutdown reason follows).
    fn before_shutdown(&mut self, request: Request);
}

impl<F: FnMut(Request)> BeforeShutdown for F {
    fn before_shutdown(&mut self, request: Request) {
        self(request)
    }
}

/// The platform's suspend, in three steps (Linux `do_suspend`, FreeBSD `xctrl_suspend`).
///
/// The real implementations — device quiesce and reconnect, grant table / event channel /
/// XenStore re-initialisation after a real resume, and the simulator's "migration" that
/// revokes everything — are later work; tests supply recording hooks.
pub trait SuspendHook {
    /// Stop every device (no new I/O, in-flight requests drained, frontends told). On error
    /// the suspend is abandoned: nothing else is called, so `quiesce` must undo what it did.
    fn quiesce(&mut self) -> xen_platform::Result<()>;

    /// Suspend the domain: `SCHEDOP_shutdown(SHUTDOWN_suspend)`, which returns when the domain
    /// runs again; `Ok(true)` if the suspend was cancelled (the domain resumed where it was,
    /// its connections intact), `Ok(false)` after a real resume (possibly on another host).
    fn suspend(&mut self, sched: &dyn Scheduler) -> xen_platform::Result<bool> {
        sched.shutdown(ShutdownReason::Suspend)
    }

    /// Bring devices back. `cancelled` as returned by [`suspend`](Self::suspend) (`true` also
    /// when `suspend` failed, as Linux treats a failed `stop_machine`).
    fn resume(&mut self, cancelled: bool) -> xen_platform::Result<()>;
}

/// Suspend support for an image whose only state a suspend touches is the platform's (which
/// the runtime re-establishes inside the suspend hypercall: xen-rt's `Scheduler::shutdown`) and
/// its XenStore connection (which it re-establishes on [`Event::Resumed`]): nothing to quiesce,
/// nothing to bring back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NothingToQuiesce;

impl SuspendHook for NothingToQuiesce {
    fn quiesce(&mut self) -> xen_platform::Result<()> {
        Ok(())
    }
    fn resume(&mut self, _cancelled: bool) -> xen_platform::Result<()> {
        Ok(())
    }
}

/// No suspend support: `suspend` is neither advertised nor acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSuspend {}

impl SuspendHook for NoSuspend {
    fn quiesce(&mut self) -> xen_platform::Result<()> {
        match *self {}
    }
    fn resume(&mut self, _cancelled: bool) -> xen_platform::Result<()> {
        match *self {}
    }
}

/// Why a value in `control/shutdown` was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Not a request in the table (raw value, whatever bytes it holds).
    Unknown(Vec<u8>),
    /// `suspend`, but the image has no [`SuspendHook`].
    SuspendUnsupported,
}

/// What one [`Control::poll`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Only with [`Control::with_deferred_shutdown`]: the request was acknowledged and the
    /// driver is shutting down, but nothing else was done yet. The image closes its devices
    /// (`xen_bus::Bus::shutdown`) and then calls [`Control::finish_shutdown`], which runs
    /// `before_shutdown` and `SCHEDOP_shutdown(reason)`.
    ShutdownPending {
        /// The request.
        request: Request,
        /// The reason [`Control::finish_shutdown`] will give to the hypervisor.
        reason: ShutdownReason,
    },
    /// The request was acknowledged, `before_shutdown` ran and `SCHEDOP_shutdown(reason)`
    /// returned (only in the simulator; on real Xen it does not return).
    Shutdown {
        /// The request.
        request: Request,
        /// The reason given to the hypervisor.
        reason: ShutdownReason,
    },
    /// `suspend` was acknowledged and the domain runs again: `cancelled` as the hypervisor
    /// said (`true` also when the suspend hypercall failed: `error`). After a real resume
    /// (`cancelled` false) the image re-establishes its XenStore connection before the next
    /// [`Control::poll`], which then registers the watch and the features again.
    Resumed {
        /// Whether the suspend was cancelled.
        cancelled: bool,
        /// The error of [`SuspendHook::suspend`], if it failed.
        error: Option<xen_platform::Error>,
    },
    /// `suspend` was acknowledged but [`SuspendHook::quiesce`] failed: nothing suspended.
    SuspendAborted(xen_platform::Error),
    /// A value that is not a request we handle: logged, not acknowledged.
    Ignored(Ignored),
}

/// Why [`Control::start`] or [`Control::poll`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// A XenStore request failed. A failed read+ack left the request unacknowledged and not
    /// acted upon; the next [`Control::poll`] reads it again (without waiting for an event).
    /// A failure to watch again after a resume is retried by the next poll too.
    Store(XsClientError),
    /// `SCHEDOP_shutdown` failed after the request was acknowledged; the driver accepts new
    /// requests again.
    Shutdown(Request, xen_platform::Error),
    /// [`SuspendHook::resume`] failed: devices may be left quiesced.
    Resume(xen_platform::Error),
}

impl From<XsClientError> for ControlError {
    fn from(e: XsClientError) -> Self {
        ControlError::Store(e)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Store(e) => write!(f, "xenstore: {e}"),
            ControlError::Shutdown(r, e) => write!(f, "SCHEDOP_shutdown for {r}: {e:?}"),
            ControlError::Resume(e) => write!(f, "resume after suspend: {e:?}"),
        }
    }
}

impl core::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ControlError::Store(e) => Some(e),
            ControlError::Shutdown(_, e) | ControlError::Resume(e) => Some(e),
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Watch events taken.
    pub events: u64,
    /// Requests acknowledged.
    pub acknowledged: u64,
    /// Values ignored (unknown, unsupported).
    pub ignored: u64,
    /// Transactions retried after `EAGAIN` (the node changed under the read+ack).
    pub retries: u64,
}

/// The control driver. See the [crate docs](crate).
#[derive(Debug)]
pub struct Control<B: BeforeShutdown, S: SuspendHook = NoSuspend> {
    token: String,
    before: B,
    suspend: Option<S>,
    shutting_down: Option<Request>,
    /// The last read+ack failed: read again at the next poll, event or not (the event that
    /// announced the request is gone, and libxl waits only 60 s).
    reread: bool,
    /// Registering the watch again after a resume failed: retry at the next poll.
    restart: bool,
    /// Report [`Event::ShutdownPending`] instead of shutting down in `poll`.
    defer: bool,
    /// Acknowledged, reported as pending, not yet finished.
    pending: Option<(Request, ShutdownReason)>,
    stats: ControlStats,
}

impl<B: BeforeShutdown> Control<B, NoSuspend> {
    /// A driver without suspend support, with its `before_shutdown` hook. Call
    /// [`start`](Self::start) next.
    pub fn new(before: B) -> Self {
        Control {
            token: String::from(DEFAULT_TOKEN),
            before,
            suspend: None,
            shutting_down: None,
            reread: false,
            restart: false,
            defer: false,
            pending: None,
            stats: ControlStats::default(),
        }
    }

    /// The same driver with suspend support (`feature-suspend` is advertised and `suspend`
    /// requests acknowledged).
    pub fn with_suspend<S: SuspendHook>(self, hook: S) -> Control<B, S> {
        Control {
            token: self.token,
            before: self.before,
            suspend: Some(hook),
            shutting_down: self.shutting_down,
            reread: self.reread,
            restart: self.restart,
            defer: self.defer,
            pending: self.pending,
            stats: self.stats,
        }
    }
}

impl<B: BeforeShutdown, S: SuspendHook> Control<B, S> {
    /// Use `token` for the watch instead of [`DEFAULT_TOKEN`] (before [`start`](Self::start)).
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = String::from(token);
        self
    }

    /// Defer the shutdown to the image: after acknowledging a poweroff/halt/reboot/crash
    /// request [`poll`](Self::poll) reports [`Event::ShutdownPending`] and returns; the image,
    /// which owns its bus and this driver side by side in its main loop, closes every device
    /// (`xen_bus::Bus::shutdown`, on the same XenStore client) and then calls
    /// [`finish_shutdown`](Self::finish_shutdown). See the crate docs, "Shutdown".
    pub fn with_deferred_shutdown(mut self) -> Self {
        self.defer = true;
        self
    }

    /// Whether the shutdown is deferred ([`with_deferred_shutdown`](Self::with_deferred_shutdown)).
    pub fn defers_shutdown(&self) -> bool {
        self.defer
    }

    /// The acknowledged request waiting for [`finish_shutdown`](Self::finish_shutdown).
    pub fn pending_shutdown(&self) -> Option<Request> {
        self.pending.map(|(r, _)| r)
    }

    /// Finish a deferred shutdown: `before_shutdown`, then `SCHEDOP_shutdown(reason)` (which
    /// does not return on real Xen). `Ok(None)` if no shutdown is pending; `Ok(Some(`
    /// [`Event::Shutdown`]`))` in the simulator. If the hypercall fails the driver accepts new
    /// requests again, as for an undeferred shutdown.
    pub fn finish_shutdown<P>(&mut self, platform: &P) -> Result<Option<Event>, ControlError>
    where
        P: Scheduler + ?Sized,
    {
        let Some((request, reason)) = self.pending.take() else {
            return Ok(None);
        };
        self.shut_down(request, reason, platform).map(Some)
    }

    fn shut_down<P>(
        &mut self,
        request: Request,
        reason: ShutdownReason,
        platform: &P,
    ) -> Result<Event, ControlError>
    where
        P: Scheduler + ?Sized,
    {
        self.before.before_shutdown(request);
        if let Err(e) = platform.shutdown(reason) {
            self.shutting_down = None;
            return Err(ControlError::Shutdown(request, e));
        }
        Ok(Event::Shutdown { request, reason })
    }

    /// The watch token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether suspend is supported.
    pub fn can_suspend(&self) -> bool {
        self.suspend.is_some()
    }

    /// The request being carried out, once a shutdown has started.
    pub fn shutting_down(&self) -> Option<Request> {
        self.shutting_down
    }

    /// Counters.
    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// The `before_shutdown` hook.
    pub fn before_shutdown_hook(&mut self) -> &mut B {
        &mut self.before
    }

    /// The suspend hook, if any.
    pub fn suspend_hook(&mut self) -> Option<&mut S> {
        self.suspend.as_mut()
    }

    /// Watch `control/shutdown` and advertise the features (Linux `setup_shutdown_watcher`:
    /// the watch first, then `control/feature-<name>` = `"1"` for `poweroff`, `reboot`, and
    /// `suspend` with a hook). The watch fires once at once; the first [`poll`](Self::poll)
    /// then handles a request written before the guest started. Registering again on a
    /// connection that still has the watch is fine (`EEXIST` is accepted).
    pub fn start<T: Transport>(&mut self, xs: &mut Client<T>) -> Result<(), ControlError> {
        match xs.watch(SHUTDOWN_NODE, &self.token) {
            Ok(()) | Err(XsClientError::Xs(XsError::Eexist)) => {}
            Err(e) => return Err(e.into()),
        }
        for &(name, request, _, advertised) in REQUESTS {
            if !advertised || (request == Request::Suspend && self.suspend.is_none()) {
                continue;
            }
            let mut node = String::from("control/feature-");
            node.push_str(name);
            xs.write(&node, b"1")?;
        }
        Ok(())
    }

    /// Remove the watch (the features stay, as Linux leaves them).
    pub fn stop<T: Transport>(&mut self, xs: &mut Client<T>) -> Result<(), ControlError> {
        xs.unwatch(SHUTDOWN_NODE, &self.token)?;
        Ok(())
    }

    /// Do what can be done now (see [Driving](crate#driving)): read what the XenStore ring
    /// holds without waiting, then for each of this driver's watch events read
    /// `control/shutdown` until one yields something to report. `Ok(None)`: nothing happened
    /// (no event, or only empty reads). Call again until it returns `None`: at most one
    /// request is handled per call, and later events stay queued.
    ///
    /// `platform` gives `SCHEDOP_shutdown` and the console ignored values are logged on.
    pub fn poll<T, P>(
        &mut self,
        xs: &mut Client<T>,
        platform: &P,
    ) -> Result<Option<Event>, ControlError>
    where
        T: Transport,
        P: Scheduler + Console + ?Sized,
    {
        if self.restart {
            self.start(xs)?;
            self.restart = false;
        }
        xs.poll_watch_events()?;
        loop {
            if self.reread {
                self.reread = false;
            } else if xs.take_watch_event(Some(&self.token)).is_some() {
                self.stats.events += 1;
            } else {
                return Ok(None);
            }
            if self.shutting_down.is_some() {
                // Linux shutdown_handler: "Ignore multiple shutdown requests".
                continue;
            }
            if let Some(ev) = self.handle(xs, platform)? {
                return Ok(Some(ev));
            }
        }
    }

    /// Read `control/shutdown` and, for a request we handle, acknowledge it in the same
    /// transaction (retried on `EAGAIN` by [`Client::transact`]); then act on it.
    fn handle<T, P>(
        &mut self,
        xs: &mut Client<T>,
        platform: &P,
    ) -> Result<Option<Event>, ControlError>
    where
        T: Transport,
        P: Scheduler + Console + ?Sized,
    {
        let can_suspend = self.suspend.is_some();
        let mut attempts = 0u64;
        let read = xs.transact(|tx| {
            attempts += 1;
            let value = match tx.try_read(SHUTDOWN_NODE)? {
                None => return Ok(None),
                Some(v) if v.is_empty() => return Ok(None),
                Some(v) => v,
            };
            let outcome = match Request::parse(&value) {
                Some(Request::Suspend) if !can_suspend => Err(Ignored::SuspendUnsupported),
                Some(r) => Ok(r),
                None => Err(Ignored::Unknown(value)),
            };
            if outcome.is_ok() {
                // The acknowledgement: "" written, not the node removed (libxl waits for "").
                tx.write(SHUTDOWN_NODE, b"")?;
            }
            Ok(Some(outcome))
        });
        self.stats.retries += attempts.saturating_sub(1);
        if read.is_err() {
            self.reread = true;
        }
        let request = match read? {
            None => return Ok(None),
            Some(Err(ignored)) => {
                self.stats.ignored += 1;
                log_ignored(platform, &ignored);
                return Ok(Some(Event::Ignored(ignored)));
            }
            Some(Ok(r)) => r,
        };
        self.stats.acknowledged += 1;
        match request.action() {
            Action::Shutdown(reason) => {
                self.shutting_down = Some(request);
                if self.defer {
                    self.pending = Some((request, reason));
                    return Ok(Some(Event::ShutdownPending { request, reason }));
                }
                self.shut_down(request, reason, platform).map(Some)
            }
            Action::Suspend => self.do_suspend(platform).map(Some),
        }
    }

    /// quiesce → suspend → resume, then watch and advertise again after a real resume (the
    /// XenStore connection may be a new one that knows no watch).
    fn do_suspend<P>(&mut self, platform: &P) -> Result<Event, ControlError>
    where
        P: Scheduler + Console + ?Sized,
    {
        let Some(hook) = self.suspend.as_mut() else {
            // Unreachable: `handle` acknowledges `suspend` only with a hook.
            return Ok(Event::Ignored(Ignored::SuspendUnsupported));
        };
        if let Err(e) = hook.quiesce() {
            log(platform, format_args!("suspend: quiesce failed: {e:?}"));
            return Ok(Event::SuspendAborted(e));
        }
        let sched = SchedRef(platform);
        let (cancelled, error) = match hook.suspend(&sched) {
            Ok(c) => (c, None),
            Err(e) => {
                log(platform, format_args!("suspend: hypercall failed: {e:?}"));
                (true, Some(e))
            }
        };
        hook.resume(cancelled).map_err(ControlError::Resume)?;
        if !cancelled {
            // A real resume: the XenStore connection is a new one (xenstored knows no watch of
            // ours, and on real Xen the event channel is new too). The image re-establishes it
            // when it sees `Resumed` (`RingTransport::resumed`, `Client::reset`); the next
            // poll watches and advertises again.
            self.restart = true;
        }
        Ok(Event::Resumed { cancelled, error })
    }
}

/// `&P` as a `&dyn Scheduler` even for unsized `P`.
struct SchedRef<'a, P: Scheduler + ?Sized>(&'a P);

impl<P: Scheduler + ?Sized> Scheduler for SchedRef<'_, P> {
    fn yield_now(&self) {
        self.0.yield_now()
    }
    fn block(&self, timeout: Option<core::time::Duration>) {
        self.0.block(timeout)
    }
    fn shutdown(&self, reason: ShutdownReason) -> xen_platform::Result<bool> {
        self.0.shutdown(reason)
    }
}

/// One console line, `xen-control: <msg>\n`.
fn log<C: Console + ?Sized>(console: &C, args: fmt::Arguments<'_>) {
    let mut line = String::from("xen-control: ");
    let _ = line.write_fmt(args);
    line.push('\n');
    console.write(line.as_bytes());
}

fn log_ignored<C: Console + ?Sized>(console: &C, ignored: &Ignored) {
    match ignored {
        Ignored::SuspendUnsupported => log(
            console,
            format_args!("ignoring shutdown request: suspend (not supported)"),
        ),
        Ignored::Unknown(v) => log(
            console,
            format_args!("ignoring shutdown request: \"{}\"", Escaped(v)),
        ),
    }
}

/// A value from the store as printable ASCII: at most [`LOG_VALUE_MAX`] bytes, anything else
/// as `\xNN`, and the length if it was cut.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.get(..LOG_VALUE_MAX).unwrap_or(self.0);
        for &b in shown {
            if (b.is_ascii_graphic() && b != b'\\' && b != b'"') || b == b' ' {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if shown.len() < self.0.len() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::format;

    #[test]
    fn table_is_complete_and_exact() {
        for r in [
            Request::Poweroff,
            Request::Halt,
            Request::Reboot,
            Request::Crash,
            Request::Suspend,
        ] {
            assert_eq!(Request::parse(r.as_str().as_bytes()), Some(r));
        }
        assert_eq!(
            Request::Halt.action(),
            Action::Shutdown(ShutdownReason::Poweroff)
        );
        assert_eq!(
            Request::Crash.action(),
            Action::Shutdown(ShutdownReason::Crash)
        );
        assert_eq!(Request::Suspend.action(), Action::Suspend);
        for bad in [
            &b""[..],
            b"Poweroff",
            b"poweroff\n",
            b"poweroff\0",
            b" reboot",
            b"sysrq",
            b"\xff\xfe",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn escaped_is_bounded_and_printable() {
        assert_eq!(
            format!("{}", Escaped(b"a\"b\\\x00\n")),
            "a\\x22b\\x5c\\x00\\x0a"
        );
        let long = [b'x'; 1000];
        let s = format!("{}", Escaped(&long));
        assert!(s.ends_with("... (1000 bytes)"));
        assert!(s.len() < LOG_VALUE_MAX + 20);
    }
}
