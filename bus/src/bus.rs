//! The [`Bus`]: enumeration, the per-device state machines, and polling them together.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use xen_platform::Clock;
use xen_store::client::{Client, Store, Transport, XsClientError};
use xen_store::EvtchnPort;

use crate::driver::{
    errno, BackDriver, DeviceCtx, DeviceInfo, DriverError, DriverResult, FrontDriver, Progress,
};
use crate::path::{self, Role};
use crate::state::XenbusState;
use crate::DomId;

/// The watch token of the frontend class directories (`device/<class>`).
pub const TOKEN_FRONT: &str = "xenbus-front";
/// The watch token of the backend class directories (`backend/<class>`).
pub const TOKEN_BACK: &str = "xenbus-back";
/// The watch token of the other ends' directories.
pub const TOKEN_OTHEREND: &str = "xenbus-otherend";

/// How many state-machine steps one device may take in one [`Bus::poll`].
mod enumerate;
mod lifecycle;

const STEPS_PER_POLL: usize = 8;

/// How long a backend closed for removal (`online` = 0) waits before it removes its
/// directory. libxl in dom0 first waits for the backend's `state` to read 6 (Closed) and
/// treats a `state` node that is already gone as a failure ("unable to remove device");
/// only then does it wait, `LIBXL_DESTROY_TIMEOUT` (10 s), for the directory to go. Under
/// the lab's emulation dom0 takes seconds to react to a watch, so: 3 s, well inside 10 s.
pub const BACKEND_REMOVE_DELAY: Duration = Duration::from_secs(3);

/// Tunables of a [`Bus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusConfig {
    /// The longest a device may stay in one phase of the startup handshake (probing, waiting
    /// for the other end, a driver step that stays [`Progress::Pending`]) before it fails
    /// with `ETIMEDOUT` (error published, Closing, Closed). Default 30 s.
    pub handshake_timeout: Duration,
    /// The longest a closing device waits for its other end to close. Default 10 s.
    pub close_timeout: Duration,
    /// Every device still moving re-reads its own and its other end's `state` at least this
    /// often, even without a watch event (events can be lost: a full queue, permissions that
    /// hide a change). Default 1 s.
    pub resync_interval: Duration,
    /// The same for a Connected device that watches its other end: it relies on the watch
    /// and re-reads only this often, as a safety net. Default 30 s. (At 1 s, three connected
    /// devices cost an idle storage domain six XenStore round trips a second: 5 % of a
    /// vCPU under the lab's emulation.)
    pub connected_resync_interval: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            handshake_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_secs(1),
            connected_resync_interval: Duration::from_secs(30),
        }
    }
}

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The driver's `probe` runs.
    Probe,
    /// Waiting for the other end: a front for InitWait (in Initialising) or Connected (in
    /// Initialised), a back for Initialised (in InitWait).
    AwaitPeer,
    /// A front's driver publishes its transport parameters (`initialise`).
    Initialise,
    /// The driver's `attach` runs.
    Attach,
    /// Connected.
    Connected,
    /// Closing, waiting for the other end to close.
    Closing,
    /// Closed: nothing more happens until the toolstack removes the nodes (and maybe adds
    /// the device again, which starts afresh).
    Closed,
}

/// What happened to a device, for the image (queued; see [`Bus::take_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A device in Initialising was found and its driver made.
    Adopted {
        /// Its node relative to our home.
        nodename: String,
    },
    /// The device reached Connected.
    Connected {
        /// Its node relative to our home.
        nodename: String,
    },
    /// The device reached Closed: orderly (`error: None`) or failed (the published error).
    Closed {
        /// Its node relative to our home.
        nodename: String,
        /// Why it failed, if it did.
        error: Option<DriverError>,
    },
}

/// A device's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The device.
    pub info: DeviceInfo,
    /// Our state as we last wrote (or read) it.
    pub state: XenbusState,
    /// The other end's state as last read.
    pub other_state: Option<XenbusState>,
    /// The phase.
    pub phase: Phase,
    /// The error it failed with, if any.
    pub error: Option<DriverError>,
}

/// What [`Bus::poll`] leaves to do: the image waits on `port` until `next_deadline` (or
/// polls again at once if `busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BusPoll {
    /// A driver step is pending (or a device moved): poll again soon.
    pub busy: bool,
    /// The earliest time a device needs a poll even if nothing arrives (a timeout or resync).
    pub next_deadline: Option<Duration>,
    /// The XenStore event channel, if the transport has one.
    pub port: Option<EvtchnPort>,
}

/// What [`Bus::shutdown`] did: how every device that was not yet Closed when it started
/// ended. Every one of them is Closed on our side when it returns `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownSummary {
    /// Devices (nodenames) that went Closing → Closed in order, their other end answering.
    pub closed: Vec<String>,
    /// Devices that ended Closed with an error, published in `error/<nodename>/error` (their
    /// other end vanished or did not close within [`BusConfig::close_timeout`], or the overall
    /// timeout of [`Bus::shutdown`] ran out).
    pub failed: Vec<(String, DriverError)>,
    /// The overall timeout ran out and the devices still open were failed with `ETIMEDOUT`.
    pub timed_out: bool,
    /// How long it took, by the clock given.
    pub elapsed: Duration,
}

impl ShutdownSummary {
    /// Every device closed in order.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && !self.timed_out
    }
}

/// Makes a frontend driver for a device.
pub type FrontFactory = Box<dyn FnMut(&DeviceInfo) -> Box<dyn FrontDriver>>;
/// Makes a backend driver for a device.
pub type BackFactory = Box<dyn FnMut(&DeviceInfo) -> Box<dyn BackDriver>>;

enum Drv {
    Front(Box<dyn FrontDriver>),
    Back(Box<dyn BackDriver>),
}

struct Device {
    info: DeviceInfo,
    drv: Option<Drv>,
    phase: Phase,
    state: XenbusState,
    other: Option<XenbusState>,
    deadline: Option<Duration>,
    dirty: bool,
    next_resync: Duration,
    error: Option<DriverError>,
    watching: bool,
    detached: bool,
    close_requested: bool,
    toolstack_closing: bool,
    pending: bool,
    /// A backend closed in order while `online` = 1: it goes back to InitWait if the
    /// frontend starts again (Linux blkback `frontend_changed()`, "prepare for reconnect").
    reconnectable: bool,
    /// When to remove our backend directory (closed with `online` = 0:
    /// [`BACKEND_REMOVE_DELAY`] after noticing).
    remove_at: Option<Duration>,
    /// Started again after an orderly close: the other end's Closed is the previous
    /// session's until it is seen starting again (not the peer closing this one).
    restarted: bool,
}

impl Device {
    fn status(&self) -> DeviceStatus {
        DeviceStatus {
            info: self.info.clone(),
            state: self.state,
            other_state: self.other,
            phase: self.phase,
            error: self.error.clone(),
        }
    }

    fn set_phase(&mut self, phase: Phase, now: Duration, cfg: &BusConfig) {
        self.phase = phase;
        self.deadline = match phase {
            Phase::Probe | Phase::AwaitPeer | Phase::Initialise | Phase::Attach => {
                Some(now.saturating_add(cfg.handshake_timeout))
            }
            Phase::Closing => Some(now.saturating_add(cfg.close_timeout)),
            Phase::Connected | Phase::Closed => None,
        };
    }

    fn ctx<'a>(&'a self, store: &'a mut dyn Store, now: Duration) -> DeviceCtx<'a> {
        DeviceCtx {
            info: &self.info,
            store,
            now,
            other_state: self.other,
        }
    }

    fn detach(&mut self, store: &mut dyn Store, now: Duration) {
        if self.detached {
            return;
        }
        self.detached = true;
        let mut drv = self.drv.take();
        {
            let mut ctx = self.ctx(store, now);
            match &mut drv {
                Some(Drv::Front(d)) => d.detach(&mut ctx),
                Some(Drv::Back(d)) => d.detach(&mut ctx),
                None => {}
            }
        }
        self.drv = drv;
    }

    /// Run one driver method (the driver is taken out of `self` while it runs).
    fn drive(
        &mut self,
        store: &mut dyn Store,
        now: Duration,
        f: impl FnOnce(&mut Drv, &mut DeviceCtx<'_>) -> DriverResult,
    ) -> DriverResult {
        let mut drv = self
            .drv
            .take()
            .ok_or_else(|| DriverError::new(errno::ENODEV, "no driver"))?;
        let r = {
            let mut ctx = self.ctx(store, now);
            f(&mut drv, &mut ctx)
        };
        self.drv = Some(drv);
        r
    }

    fn timed_out(&self, now: Duration) -> Result<(), DriverError> {
        match self.deadline {
            Some(d) if now >= d => Err(DriverError::new(
                errno::ETIMEDOUT,
                format!(
                    "timed out in {:?} (own state {}, other end {})",
                    self.phase,
                    self.state.name(),
                    self.other.map_or("unknown", XenbusState::name)
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Write `state` as Linux's `xenbus_switch_state()` does (`drivers/xen/xenbus/xenbus_client.c`):
/// in a transaction, only if the `state` node still exists ("if the node has gone, we don't
/// write to it, as the device will be tearing down, and we don't want to resurrect that
/// directory"), and not at all if it already holds that value (no watch fires for nothing).
fn switch_state<T: Transport>(
    xs: &mut Client<T>,
    dev: &mut Device,
    state: XenbusState,
) -> Result<(), DriverError> {
    if dev.state == state {
        return Ok(());
    }
    let p = dev.info.key("state");
    let r = xs.transact(|tx| match tx.try_read(&p)? {
        None => Ok(false),
        Some(cur) if cur == state.as_str().as_bytes() => Ok(true),
        Some(_) => tx.write(&p, state.as_str().as_bytes()).map(|()| true),
    });
    match r {
        Ok(true) => {
            dev.state = state;
            Ok(())
        }
        Ok(false) => Err(DriverError::new(
            errno::ENODEV,
            format!("{p} vanished; not writing state {}", state.name()),
        )),
        Err(e) => Err(DriverError::xs(
            &format!("switching {p} to {}", state.name()),
            &e,
        )),
    }
}

/// Read a `state` node: `Ok(None)` if it does not exist.
fn read_state<T: Transport>(
    xs: &mut Client<T>,
    node: &str,
) -> Result<Option<XenbusState>, DriverError> {
    let p = format!("{node}/state");
    match xs.try_read(&p) {
        Ok(None) => Ok(None),
        Ok(Some(v)) => XenbusState::parse(&v).map(Some).map_err(|_| {
            DriverError::new(
                errno::EINVAL,
                format!("{p} holds {:?}, not a state", String::from_utf8_lossy(&v)),
            )
        }),
        Err(e) => Err(DriverError::xs(&format!("reading {p}"), &e)),
    }
}

/// The XenBus of one domain: the devices of the registered classes, front and/or back,
/// each a state machine, all polled together by [`poll`](Self::poll). See the crate docs.
pub struct Bus<T: Transport> {
    xs: Client<T>,
    domid: DomId,
    home: String,
    cfg: BusConfig,
    front: BTreeMap<String, FrontFactory>,
    back: BTreeMap<String, BackFactory>,
    devices: BTreeMap<String, Device>,
    rescan: BTreeSet<(Role, String)>,
    events: VecDeque<BusEvent>,
    overflowed: u64,
    /// [`Bus::close_all`] was called: no device is adopted or restarted any more.
    closing_all: bool,
}

impl<T: Transport> core::fmt::Debug for Bus<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bus")
            .field("domid", &self.domid)
            .field("front", &self.front.keys().collect::<Vec<_>>())
            .field("back", &self.back.keys().collect::<Vec<_>>())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T: Transport> Bus<T> {
    /// A bus for domain `domid` over its XenStore client, with the default [`BusConfig`].
    /// Every path it uses is absolute (`/local/domain/<domid>/...`), so a dom0 socket client
    /// works as well as a guest's ring.
    pub fn new(xs: Client<T>, domid: DomId) -> Self {
        Self::with_config(xs, domid, BusConfig::default())
    }

    /// A bus with `cfg`.
    pub fn with_config(xs: Client<T>, domid: DomId, cfg: BusConfig) -> Self {
        Bus {
            xs,
            domid,
            home: path::home(domid),
            cfg,
            front: BTreeMap::new(),
            back: BTreeMap::new(),
            devices: BTreeMap::new(),
            rescan: BTreeSet::new(),
            events: VecDeque::new(),
            overflowed: 0,
            closing_all: false,
        }
    }

    /// Our domid.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// `/local/domain/<domid>`.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The configuration.
    pub fn config(&self) -> &BusConfig {
        &self.cfg
    }

    /// The XenStore client.
    pub fn client(&mut self) -> &mut Client<T> {
        &mut self.xs
    }

    /// Give the client back.
    pub fn into_client(self) -> Client<T> {
        self.xs
    }

    /// Drive the frontends of `class` (`device/<class>/<id>`) with drivers made by
    /// `factory`: watches `device/<class>` (the initial fire enumerates what exists).
    #[cfg(feature = "bus-front")]
    pub fn register_front(
        &mut self,
        class: &str,
        factory: impl FnMut(&DeviceInfo) -> Box<dyn FrontDriver> + 'static,
    ) -> Result<(), XsClientError> {
        if !path::is_valid_name(class) {
            return Err(XsClientError::BadValue(class.to_string()));
        }
        self.xs
            .watch(&format!("{}/device/{class}", self.home), TOKEN_FRONT)?;
        self.front.insert(class.to_string(), Box::new(factory));
        self.rescan.insert((Role::Front, class.to_string()));
        Ok(())
    }

    /// Drive the backends of `class` (`backend/<class>/<fe>/<id>`) with drivers made by
    /// `factory`: watches `backend/<class>`.
    #[cfg(feature = "bus-back")]
    pub fn register_back(
        &mut self,
        class: &str,
        factory: impl FnMut(&DeviceInfo) -> Box<dyn BackDriver> + 'static,
    ) -> Result<(), XsClientError> {
        if !path::is_valid_name(class) {
            return Err(XsClientError::BadValue(class.to_string()));
        }
        self.xs
            .watch(&format!("{}/backend/{class}", self.home), TOKEN_BACK)?;
        self.back.insert(class.to_string(), Box::new(factory));
        self.rescan.insert((Role::Back, class.to_string()));
        Ok(())
    }

    /// After the XenStore connection was reset — a ring reconnection (then
    /// [`Client::reset`]), `XS_RESET_WATCHES`, a restarted daemon — the daemon has forgotten
    /// every watch and events may be lost: register the class watches and each device's
    /// other-end watch again, and re-read every class directory and device on the next poll
    /// (Linux's xenbus re-registers its watches the same way when xenstored comes back).
    pub fn store_reset(&mut self) -> Result<(), XsClientError> {
        for class in self.front.keys() {
            self.xs
                .watch(&format!("{}/device/{class}", self.home), TOKEN_FRONT)?;
            self.rescan.insert((Role::Front, class.clone()));
        }
        for class in self.back.keys() {
            self.xs
                .watch(&format!("{}/backend/{class}", self.home), TOKEN_BACK)?;
            self.rescan.insert((Role::Back, class.clone()));
        }
        for dev in self.devices.values_mut() {
            if dev.watching {
                self.xs.watch(&dev.info.otherend, TOKEN_OTHEREND)?;
            }
            dev.dirty = true;
        }
        Ok(())
    }

    /// The oldest queued [`BusEvent`].
    pub fn take_event(&mut self) -> Option<BusEvent> {
        self.events.pop_front()
    }

    /// A device's status by its node relative to our home (`device/vbd/51712`).
    pub fn device(&self, nodename: &str) -> Option<DeviceStatus> {
        self.devices.get(nodename).map(Device::status)
    }

    /// Every device's status.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        self.devices.values().map(Device::status).collect()
    }

    /// Close a device from this end (a front: Closing, then Closed once the backend closes;
    /// a back: Closing, then Closed once the frontend is Closed). Returns whether the device
    /// exists. Closing a closed device does nothing.
    pub fn close(&mut self, nodename: &str) -> bool {
        match self.devices.get_mut(nodename) {
            Some(d) => {
                d.close_requested = true;
                true
            }
            None => false,
        }
    }

    /// Start an orderly close of every device, front and back, as [`close`](Self::close)
    /// does for one (a front: Closing, then Closed once its backend closes; a back: Closing,
    /// then Closed once its frontend is Closed); [`poll`](Self::poll) carries it out, and a
    /// peer that does not answer within [`BusConfig::close_timeout`] fails the device (error
    /// published, Closed). Non-blocking and idempotent: returns how many devices are not
    /// Closed yet.
    ///
    /// From then on the bus is shutting down: it adopts no new device, a closed backend does
    /// not go back to InitWait when its frontend starts again, and [`reconnect`](Self::reconnect)
    /// refuses. This is the poweroff/reboot path (XenBus issue, item 6: every attached device
    /// goes Closing → Closed before the domain shuts down); [`shutdown`](Self::shutdown)
    /// drives it to the end.
    pub fn close_all(&mut self) -> usize {
        self.closing_all = true;
        let mut open = 0;
        for d in self.devices.values_mut() {
            if d.phase != Phase::Closed {
                d.close_requested = true;
                d.dirty = true;
                open += 1;
            }
        }
        open
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub fn is_closing_all(&self) -> bool {
        self.closing_all
    }

    /// Whether every device is Closed (true with no devices).
    pub fn all_closed(&self) -> bool {
        self.devices.values().all(|d| d.phase == Phase::Closed)
    }

    /// Close every device and wait, bounded, until all are Closed: the blocking helper for
    /// the poweroff/reboot path (run it between the control driver's acknowledgement and
    /// `SCHEDOP_shutdown`; see the crate docs, "Shutdown").
    ///
    /// [`close_all`](Self::close_all), then [`poll`](Self::poll) at `clock`'s time until
    /// every device is Closed. Between polls it calls `wait` with what the last poll left to
    /// do, its `next_deadline` capped at the overall deadline (always `Some`): `wait` sleeps
    /// on `port` until then (the platform's [`Events::wait`](xen_platform::Events::wait) or a
    /// short sleep; it may return early, and it is a good place to poll other drivers). It must
    /// let `clock` move on.
    ///
    /// A device whose peer answers goes Closing → Closed in order. One whose peer is gone
    /// or silent fails by the bus's usual path ([`BusConfig::close_timeout`]: error published
    /// in `error/<nodename>/error`, Closed). `timeout` bounds the whole: once it passes, every
    /// device still open is failed with `ETIMEDOUT` the same way, so this never hangs (give
    /// `timeout` ≥ `close_timeout` to let the per-device timeout act first).
    ///
    /// `Err`: the XenStore connection itself failed; the devices cannot be closed (nothing
    /// can be written) and the caller goes on with its shutdown.
    pub fn shutdown<C: Clock + ?Sized>(
        &mut self,
        clock: &C,
        timeout: Duration,
        mut wait: impl FnMut(BusPoll),
    ) -> Result<ShutdownSummary, XsClientError> {
        let start = clock.now();
        let deadline = start.saturating_add(timeout);
        let open: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.phase != Phase::Closed)
            .map(|(k, _)| k.clone())
            .collect();
        self.close_all();
        let mut timed_out = false;
        loop {
            let now = clock.now();
            let p = self.poll(now)?;
            if self.all_closed() {
                break;
            }
            if now >= deadline {
                timed_out = true;
                let names: Vec<String> = self.devices.keys().cloned().collect();
                for n in names {
                    let Some(mut dev) = self.devices.remove(&n) else {
                        continue;
                    };
                    if dev.phase != Phase::Closed {
                        let e = DriverError::new(
                            errno::ETIMEDOUT,
                            format!(
                                "not closed within {timeout:?} of shutdown \
                                 (own state {}, other end {})",
                                dev.state.name(),
                                dev.other.map_or("unknown", XenbusState::name)
                            ),
                        );
                        self.fail(&mut dev, e, now);
                    }
                    self.devices.insert(n, dev);
                }
                if let Some(e) = self.xs.failure() {
                    return Err(e.clone());
                }
                break;
            }
            let until = p.next_deadline.map_or(deadline, |d| d.min(deadline));
            wait(BusPoll {
                next_deadline: Some(until),
                ..p
            });
        }
        let mut summary = ShutdownSummary {
            timed_out,
            elapsed: clock.now().saturating_sub(start),
            ..ShutdownSummary::default()
        };
        for n in open {
            match self.devices.get(&n).and_then(|d| d.error.clone()) {
                Some(e) => summary.failed.push((n, e)),
                None => summary.closed.push(n),
            }
        }
        Ok(summary)
    }

    /// [`poll`](Self::poll) at the time of `clock`.
    pub fn poll_clock<C: Clock + ?Sized>(&mut self, clock: &C) -> Result<BusPoll, XsClientError> {
        self.poll(clock.now())
    }

    /// [`poll`](Self::poll) at the transport's time.
    pub fn poll_now(&mut self) -> Result<BusPoll, XsClientError> {
        let now = self.xs.transport().now();
        self.poll(now)
    }

    /// Do what can be done now: take the watch events that arrived, find new devices, and
    /// move every device as far as it goes without waiting for its peer. Never waits for a
    /// peer; XenStore requests are bounded by the client's timeout. An error means the
    /// XenStore connection itself failed (devices are left as they are).
    pub fn poll(&mut self, now: Duration) -> Result<BusPoll, XsClientError> {
        self.xs.poll_watch_events()?;
        let mut moved = false;
        // Only our own tokens: other drivers sharing the client (the control driver's
        // `control/shutdown` watch) keep their events.
        while let Some(ev) = [TOKEN_FRONT, TOKEN_BACK, TOKEN_OTHEREND]
            .iter()
            .find_map(|t| self.xs.take_watch_event(Some(t)))
        {
            moved = true;
            let p = ev.path.as_str();
            let abs = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("{}/{p}", self.home)
            };
            match ev.token.as_str() {
                TOKEN_FRONT | TOKEN_BACK => self.route_own(&abs),
                TOKEN_OTHEREND => {
                    for d in self.devices.values_mut() {
                        let oe = d.info.otherend.as_str();
                        if !oe.is_empty() && (is_under(&abs, oe) || is_under(oe, &abs)) {
                            d.dirty = true;
                        }
                    }
                }
                _ => {}
            }
        }
        // Lost events: look at everything again.
        let overflowed = self.xs.stats().events_overflowed;
        if overflowed != self.overflowed {
            self.overflowed = overflowed;
            for c in self.front.keys() {
                self.rescan.insert((Role::Front, c.clone()));
            }
            for c in self.back.keys() {
                self.rescan.insert((Role::Back, c.clone()));
            }
            for d in self.devices.values_mut() {
                d.dirty = true;
            }
        }
        let rescan = core::mem::take(&mut self.rescan);
        for (role, class) in rescan {
            self.scan(role, &class, now)?;
        }
        let names: Vec<String> = self.devices.keys().cloned().collect();
        let mut poll = BusPoll {
            busy: moved,
            next_deadline: None,
            port: self.xs.event_port(),
        };
        for n in names {
            let Some(mut dev) = self.devices.remove(&n) else {
                continue;
            };
            self.step(&mut dev, now);
            if let Some(e) = self.xs.failure() {
                let e = e.clone();
                self.devices.insert(n, dev);
                return Err(e);
            }
            poll.busy |= dev.pending;
            let t = if dev.phase != Phase::Closed {
                Some(match dev.deadline {
                    Some(d) => d.min(dev.next_resync),
                    None => dev.next_resync,
                })
            } else {
                dev.remove_at
            };
            if let Some(t) = t {
                poll.next_deadline = Some(poll.next_deadline.map_or(t, |x| x.min(t)));
            }
            self.devices.insert(n, dev);
        }
        Ok(poll)
    }
}

fn front_key(class: &str, id: &str) -> String {
    path::front_nodename(class, id)
}

/// `path` is `base` or below it.
fn is_under(path: &str, base: &str) -> bool {
    path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}
