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

    /// A watch event under one of our class directories.
    fn route_own(&mut self, abs: &str) {
        let Some(rel) = abs
            .strip_prefix(self.home.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let (role, class, dev) = match parts.as_slice() {
            ["device", class, rest @ ..] => (
                Role::Front,
                *class,
                rest.first().map(|id| front_key(class, id)),
            ),
            ["backend", class, rest @ ..] => (
                Role::Back,
                *class,
                match rest {
                    [fe, id, ..] => Some(format!("backend/{class}/{fe}/{id}")),
                    _ => None,
                },
            ),
            _ => return,
        };
        let registered = match role {
            Role::Front => self.front.contains_key(class),
            Role::Back => self.back.contains_key(class),
        };
        if !registered {
            return;
        }
        match dev.and_then(|k| self.devices.get_mut(&k)) {
            Some(d) if d.phase != Phase::Closed => d.dirty = true,
            // A device we do not have yet, a closed one (removed or started again by the
            // toolstack), or a change above the devices: look again.
            _ => {
                self.rescan.insert((role, class.to_string()));
            }
        }
    }

    /// Enumerate `class`, adopting devices in Initialising and forgetting closed ones whose
    /// nodes the toolstack removed.
    fn scan(&mut self, role: Role, class: &str, now: Duration) -> Result<(), XsClientError> {
        let mut found: Vec<(String, Option<DomId>, String)> = Vec::new();
        match role {
            Role::Front => {
                for id in self.list(&format!("{}/device/{class}", self.home))? {
                    found.push((front_key(class, &id), None, id));
                }
            }
            Role::Back => {
                for fe in self.list(&format!("{}/backend/{class}", self.home))? {
                    let Some(fe_id) = path::parse_domid(fe.as_bytes()) else {
                        continue;
                    };
                    for id in self.list(&format!("{}/backend/{class}/{fe}", self.home))? {
                        found.push((path::back_nodename(class, fe_id, &id), Some(fe_id), id));
                    }
                }
            }
        }
        // Devices of this class that are no longer listed: a closed one is forgotten, a live
        // one finds out on its next step (its own node is gone).
        let listed: BTreeSet<&str> = found.iter().map(|(k, _, _)| k.as_str()).collect();
        let gone: Vec<String> = self
            .devices
            .iter()
            .filter(|(k, d)| {
                d.info.role == role && d.info.class == class && !listed.contains(k.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let closed = self
                .devices
                .get(&k)
                .is_some_and(|d| d.phase == Phase::Closed);
            if closed {
                if let Some(mut d) = self.devices.remove(&k) {
                    self.unwatch(&mut d);
                }
            } else if let Some(d) = self.devices.get_mut(&k) {
                d.dirty = true;
            }
        }
        for (key, fe, id) in found {
            self.consider(role, class, fe, &id, key, now)?;
        }
        Ok(())
    }

    /// `XS_DIRECTORY`, nothing if the node is missing or unreadable.
    fn list(&mut self, p: &str) -> Result<Vec<String>, XsClientError> {
        match self.xs.directory(p) {
            Ok(v) => Ok(v),
            Err(e) if e.is_fatal() => Err(e),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// A device node seen by enumeration: adopt it if it is new and in Initialising (as
    /// Linux's `xenbus_probe_node()` probes only devices in `XenbusStateInitialising`).
    fn consider(
        &mut self,
        role: Role,
        class: &str,
        fe: Option<DomId>,
        id: &str,
        key: String,
        now: Duration,
    ) -> Result<(), XsClientError> {
        if !path::is_valid_name(id) {
            return Ok(());
        }
        let abs = format!("{}/{key}", self.home);
        if let Some(d) = self.devices.get_mut(&key) {
            if d.phase != Phase::Closed {
                d.dirty = true;
                return Ok(());
            }
            // A closed backend the toolstack is removing (`online` = 0): remove its
            // directory, as `xl devd` does in a driver domain.
            if d.info.role == Role::Back && d.remove_at.is_none() {
                let mut d = self.devices.remove(&key).expect("just found");
                self.schedule_removal(&mut d, now);
                self.devices.insert(key.clone(), d);
            }
            // A closed device whose toolstack started it again: begin afresh.
            match read_state(&mut self.xs, &abs) {
                Ok(Some(XenbusState::Initialising)) if !self.closing_all => {
                    self.devices.remove(&key);
                }
                _ => return Ok(()),
            }
        }
        if self.closing_all {
            // Shutting down: nothing new is started.
            return Ok(());
        }
        match read_state(&mut self.xs, &abs) {
            Ok(Some(XenbusState::Initialising)) => {}
            _ => {
                if let Some(e) = self.xs.failure() {
                    return Err(e.clone());
                }
                return Ok(());
            }
        }
        let mut info = DeviceInfo {
            role,
            class: class.to_string(),
            id: id.to_string(),
            frontend_id: fe.unwrap_or(self.domid),
            backend_id: if role == Role::Back { self.domid } else { 0 },
            nodename: key.clone(),
            path: abs.clone(),
            otherend: String::new(),
            otherend_id: 0,
        };
        let details = self.read_details(&mut info);
        let mut dev = Device {
            info,
            drv: None,
            phase: Phase::Probe,
            state: XenbusState::Initialising,
            other: None,
            deadline: None,
            dirty: true,
            next_resync: now,
            error: None,
            watching: false,
            detached: false,
            close_requested: false,
            toolstack_closing: false,
            pending: false,
            reconnectable: false,
            remove_at: None,
            restarted: false,
        };
        dev.set_phase(Phase::Probe, now, &self.cfg);
        self.events.push_back(BusEvent::Adopted {
            nodename: key.clone(),
        });
        match details {
            Err(e) => {
                dev.detached = true; // no driver was made
                self.fail(&mut dev, e, now);
            }
            Ok(()) => {
                dev.drv = match role {
                    Role::Front => self.front.get_mut(class).map(|f| Drv::Front(f(&dev.info))),
                    Role::Back => self.back.get_mut(class).map(|f| Drv::Back(f(&dev.info))),
                };
                match self.xs.watch(&dev.info.otherend, TOKEN_OTHEREND) {
                    Ok(()) => dev.watching = true,
                    Err(e) if e.is_fatal() => return Err(e),
                    // Without the watch the periodic resync still sees the other end.
                    Err(_) => {}
                }
            }
        }
        self.devices.insert(key, dev);
        Ok(())
    }

    /// Read and check the other end's details (Linux `xenbus_read_otherend_details()`,
    /// plus the path check of [`path`]).
    fn read_details(&mut self, info: &mut DeviceInfo) -> Result<(), DriverError> {
        let (pk, ik) = match info.role {
            Role::Front => ("backend", "backend-id"),
            Role::Back => ("frontend", "frontend-id"),
        };
        let mut get = |k: &str| -> Result<Vec<u8>, DriverError> {
            let p = info.key(k);
            match self.xs.try_read(&p) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(DriverError::new(
                    errno::ENOENT,
                    format!("reading other end details: {p} missing"),
                )),
                Err(e) => Err(DriverError::xs(&format!("reading {p}"), &e)),
            }
        };
        let oe = get(pk)?;
        let oe_id = get(ik)?;
        let bad = |e: path::DetailsError| {
            DriverError::new(
                errno::EINVAL,
                format!(
                    "other end {:?} (id {:?}) rejected: {e}",
                    String::from_utf8_lossy(&oe),
                    String::from_utf8_lossy(&oe_id)
                ),
            )
        };
        match info.role {
            Role::Front => {
                let be =
                    path::check_backend_details(self.domid, &info.id, &oe, &oe_id).map_err(bad)?;
                info.backend_id = be;
                info.otherend_id = be;
            }
            Role::Back => {
                path::check_frontend_details(info.frontend_id, &info.class, &info.id, &oe, &oe_id)
                    .map_err(bad)?;
                info.otherend_id = info.frontend_id;
            }
        }
        info.otherend = String::from_utf8_lossy(&oe).into_owned();
        Ok(())
    }

    fn step(&mut self, dev: &mut Device, now: Duration) {
        dev.pending = false;
        if dev.phase == Phase::Closed {
            if dev.remove_at.is_some_and(|t| now >= t) {
                self.remove_backend_dir(dev);
                return;
            }
            if !(dev.reconnectable && dev.dirty) || self.closing_all {
                return;
            }
            dev.dirty = false;
            match read_state(&mut self.xs, &dev.info.otherend) {
                Ok(Some(XenbusState::Initialising)) => self.restart(dev, now),
                _ => return,
            }
        }
        for _ in 0..STEPS_PER_POLL {
            match self.step_once(dev, now) {
                Ok(true) => {}
                Ok(false) => break,
                // The XenStore connection itself died: not the device's fault; `poll`
                // reports it and the device stays as it is.
                Err(_) if self.xs.failure().is_some() => break,
                Err(e) => {
                    self.fail(dev, e, now);
                    break;
                }
            }
            if dev.phase == Phase::Closed {
                break;
            }
        }
    }

    /// Re-read our own and the other end's state.
    fn refresh(&mut self, dev: &mut Device) -> Result<(), DriverError> {
        match read_state(&mut self.xs, &dev.info.path)? {
            None => {
                return Err(DriverError::new(
                    errno::ENODEV,
                    format!("{}/state was removed", dev.info.path),
                ))
            }
            Some(s) if s != dev.state => {
                // Someone else wrote our state: the toolstack closing a backend (libxl's
                // detach writes backend `online` = 0 and `state` = 5).
                if dev.info.role == Role::Back && s.is_closing() {
                    dev.toolstack_closing = true;
                } else {
                    return Err(DriverError::new(
                        errno::EINVAL,
                        format!(
                            "{}/state changed under us to {} (we wrote {})",
                            dev.info.path,
                            s.name(),
                            dev.state.name()
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
        match read_state(&mut self.xs, &dev.info.otherend)? {
            None if matches!(dev.phase, Phase::Closing) => dev.other = None,
            None => {
                return Err(DriverError::new(
                    errno::ENODEV,
                    format!("other end {} vanished", dev.info.otherend),
                ))
            }
            Some(s) => {
                if dev.other != Some(s) {
                    dev.other = Some(s);
                    dev.drive(&mut self.xs, Duration::ZERO, |d, ctx| match d {
                        Drv::Front(d) => d.other_end_changed(ctx, s).map(|()| Progress::Done),
                        Drv::Back(d) => d.other_end_changed(ctx, s).map(|()| Progress::Done),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// One step; `Ok(true)` if the device moved (another step may follow at once).
    fn step_once(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        if dev.dirty || now >= dev.next_resync {
            dev.dirty = false;
            let every = if dev.phase == Phase::Connected && dev.watching {
                self.cfg.connected_resync_interval
            } else {
                self.cfg.resync_interval
            };
            dev.next_resync = now.saturating_add(every);
            self.refresh(dev)?;
        }
        let cfg = self.cfg;
        let role = dev.info.role;
        if dev.toolstack_closing {
            dev.toolstack_closing = false;
            dev.detach(&mut self.xs, now);
            // The toolstack wrote our state; take it as ours.
            if let Ok(Some(s)) = read_state(&mut self.xs, &dev.info.path) {
                dev.state = s;
            }
            if dev.state == XenbusState::Closed {
                return self.closed(dev, now);
            }
            dev.set_phase(Phase::Closing, now, &cfg);
            return Ok(true);
        }
        if dev.close_requested && !matches!(dev.phase, Phase::Closing | Phase::Closed) {
            dev.close_requested = false;
            switch_state(&mut self.xs, dev, XenbusState::Closing)?;
            dev.set_phase(Phase::Closing, now, &cfg);
            return Ok(true);
        }
        let other = dev.other;
        if dev.restarted && other.is_some_and(|s| !s.is_closing()) {
            dev.restarted = false;
        }
        // A restarted device waits (bounded by the handshake timeout) for its peer to leave
        // the previous session's Closed.
        let stale = dev.restarted && other == Some(XenbusState::Closed);
        let peer_closing = !stale && other.is_some_and(XenbusState::is_closing);
        match dev.phase {
            Phase::Closed => Ok(false),
            Phase::Probe => {
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.probe(ctx),
                    Drv::Back(d) => d.probe(ctx),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        let next = match &dev.drv {
                            Some(Drv::Front(d)) if !d.waits_for_init_wait() => Phase::Initialise,
                            Some(Drv::Front(_)) => Phase::AwaitPeer,
                            _ => {
                                switch_state(&mut self.xs, dev, XenbusState::InitWait)?;
                                Phase::AwaitPeer
                            }
                        };
                        dev.set_phase(next, now, &cfg);
                        Ok(true)
                    }
                }
            }
            _ if peer_closing && dev.phase != Phase::Closing => self.peer_closed(dev, now),
            Phase::AwaitPeer => {
                let go = match (role, dev.state) {
                    (Role::Front, XenbusState::Initialising) => matches!(
                        other,
                        Some(
                            XenbusState::InitWait
                                | XenbusState::Initialised
                                | XenbusState::Connected
                        )
                    )
                    .then_some(Phase::Initialise),
                    (Role::Front, _) => {
                        (other == Some(XenbusState::Connected)).then_some(Phase::Attach)
                    }
                    (Role::Back, _) => matches!(
                        other,
                        Some(XenbusState::Initialised | XenbusState::Connected)
                    )
                    .then_some(Phase::Attach),
                };
                match go {
                    Some(p) => {
                        dev.set_phase(p, now, &cfg);
                        Ok(true)
                    }
                    None => self.wait(dev, now),
                }
            }
            Phase::Initialise => {
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.initialise(ctx),
                    Drv::Back(_) => Ok(Progress::Done),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        switch_state(&mut self.xs, dev, XenbusState::Initialised)?;
                        dev.set_phase(Phase::AwaitPeer, now, &cfg);
                        Ok(true)
                    }
                }
            }
            Phase::Attach => {
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.attach(ctx),
                    Drv::Back(d) => d.attach(ctx),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        switch_state(&mut self.xs, dev, XenbusState::Connected)?;
                        dev.set_phase(Phase::Connected, now, &cfg);
                        self.events.push_back(BusEvent::Connected {
                            nodename: dev.info.nodename.clone(),
                        });
                        Ok(true)
                    }
                }
            }
            Phase::Connected => Ok(false),
            Phase::Closing => {
                let done = match role {
                    // A front waits for the backend to close (or go); a stale Closed will do.
                    Role::Front => other.is_none_or(XenbusState::is_closing),
                    // A back waits for the frontend to be Closed (or gone).
                    Role::Back => other.is_none() || other == Some(XenbusState::Closed),
                };
                if done {
                    dev.detach(&mut self.xs, now);
                    switch_state(&mut self.xs, dev, XenbusState::Closed)?;
                    self.closed(dev, now)
                } else {
                    dev.timed_out(now)?;
                    Ok(false)
                }
            }
        }
    }

    /// Waiting: fail if the phase's deadline passed.
    fn wait(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        dev.pending = matches!(dev.phase, Phase::Probe | Phase::Initialise | Phase::Attach);
        dev.timed_out(now)?;
        Ok(false)
    }

    /// The other end is Closing or Closed while we are not closing.
    fn peer_closed(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        dev.detach(&mut self.xs, now);
        match (dev.info.role, dev.other) {
            // A frontend whose backend closes goes Closed (Linux `xenbus_frontend_closed()`).
            (Role::Front, _) | (Role::Back, Some(XenbusState::Closed)) => {
                switch_state(&mut self.xs, dev, XenbusState::Closed)?;
                self.closed(dev, now)
            }
            // A backend whose frontend is Closing follows to Closing and waits for Closed
            // (Linux blkback `frontend_changed()`).
            _ => {
                switch_state(&mut self.xs, dev, XenbusState::Closing)?;
                dev.set_phase(Phase::Closing, now, &self.cfg);
                Ok(true)
            }
        }
    }

    fn closed(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        dev.set_phase(Phase::Closed, now, &self.cfg);
        dev.reconnectable = dev.info.role == Role::Back
            && matches!(self.xs.try_read(&dev.info.key("online")), Ok(Some(v)) if v == b"1");
        if !dev.reconnectable {
            self.unwatch(dev);
        }
        self.events.push_back(BusEvent::Closed {
            nodename: dev.info.nodename.clone(),
            error: None,
        });
        self.schedule_removal(dev, now);
        Ok(false)
    }

    /// A backend in Closed whose `online` is 0: the toolstack is removing the device, and in
    /// a driver domain the backend directory is ours to remove. libxl in dom0 removes only
    /// the frontend's and its own nodes and waits `LIBXL_DESTROY_TIMEOUT` (10 s) for the
    /// backend path to go ("timed out while waiting for ... to be removed" otherwise); `xl
    /// devd` removes it on backend state 6 with `online` = 0, with its parents as far as they
    /// are empty and ours to remove (libxl_device.c `backend_watch_callback`,
    /// `libxl__device_destroy`: "The driver domain is in charge of removing what it can from
    /// the backend path"). In dom0 libxl removes it itself (and may create the next device
    /// at the same path at once), so a dom0 backend leaves it.
    ///
    /// Here: note the time; [`remove_backend_dir`](Self::remove_backend_dir) runs
    /// [`BACKEND_REMOVE_DELAY`] later.
    fn schedule_removal(&mut self, dev: &mut Device, now: Duration) {
        if dev.info.role == Role::Back
            && self.domid != 0
            && dev.phase == Phase::Closed
            && matches!(self.xs.try_read(&dev.info.key("online")), Ok(Some(v)) if v == b"0")
        {
            self.unwatch(dev);
            dev.remove_at = Some(now.saturating_add(BACKEND_REMOVE_DELAY));
        }
    }

    /// Remove a closed backend's directory ([`schedule_removal`](Self::schedule_removal)),
    /// with the parents that became empty and are ours to remove.
    fn remove_backend_dir(&mut self, dev: &mut Device) {
        dev.remove_at = None;
        // Still the directory of this removal (a new device there would have `online` = 1).
        if dev.info.role != Role::Back
            || dev.phase != Phase::Closed
            || !matches!(self.xs.try_read(&dev.info.key("online")), Ok(Some(v)) if v == b"0")
        {
            return;
        }
        if self.xs.rm(&dev.info.path).is_err() {
            return;
        }
        // The parents up to (not including) our `backend` directory, while empty; libxl
        // owns them in a driver domain (`(n0,r<us>)`), so this usually stops at the first.
        let stop = format!("{}/backend", self.home);
        let mut p = dev.info.path.clone();
        while let Some(i) = p.rfind('/') {
            p.truncate(i);
            if p.len() <= stop.len() {
                break;
            }
            match self.xs.directory(&p) {
                Ok(children) if children.is_empty() => {}
                _ => break,
            }
            if self.xs.rm(&p).is_err() {
                break;
            }
        }
    }

    /// Start a closed device's handshake again with the same driver (its `detach` ran).
    fn restart(&mut self, dev: &mut Device, now: Duration) {
        dev.reconnectable = false;
        dev.restarted = true;
        dev.detached = false;
        dev.error = None;
        dev.other = None;
        dev.dirty = true;
        dev.set_phase(Phase::Probe, now, &self.cfg);
        if !dev.watching && self.xs.watch(&dev.info.otherend, TOKEN_OTHEREND).is_ok() {
            dev.watching = true;
        }
    }

    /// Start a frontend that closed in order again: write Initialising and run the
    /// handshake anew with the same driver (a backend closed in order with `online` = 1
    /// follows, as Linux blkback's "prepare for reconnect"). Returns whether it did: the
    /// device must be a frontend in Closed without an error, and the bus not shutting down
    /// ([`close_all`](Self::close_all)).
    pub fn reconnect(&mut self, nodename: &str, now: Duration) -> bool {
        let Some(mut dev) = self.devices.remove(nodename) else {
            return false;
        };
        let ok = !self.closing_all
            && dev.info.role == Role::Front
            && dev.phase == Phase::Closed
            && dev.error.is_none()
            && switch_state(&mut self.xs, &mut dev, XenbusState::Initialising).is_ok();
        if ok {
            self.restart(&mut dev, now);
        }
        self.devices.insert(nodename.to_string(), dev);
        ok
    }

    fn unwatch(&mut self, dev: &mut Device) {
        if dev.watching {
            dev.watching = false;
            let _ = self.xs.unwatch(&dev.info.otherend, TOKEN_OTHEREND);
        }
    }

    /// Linux's `xenbus_dev_fatal()`: publish `<errno> <message>` in
    /// `error/<nodename>/error` of our home, move to Closing; then (unlike Linux, which leaves
    /// the rest to the other end's reaction) disconnect and move on to Closed, so that a dead
    /// peer cannot keep the device half-closed. Writes that fail (our nodes gone, permissions
    /// revoked) are skipped; the device ends Closed on our side in any case.
    fn fail(&mut self, dev: &mut Device, e: DriverError, now: Duration) {
        if dev.phase == Phase::Closed {
            return;
        }
        let node = path::error_node(&self.home, &dev.info.nodename);
        let _ = self.xs.write(&node, e.published().as_bytes());
        dev.error = Some(e.clone());
        let _ = switch_state(&mut self.xs, dev, XenbusState::Closing);
        dev.detach(&mut self.xs, now);
        let _ = switch_state(&mut self.xs, dev, XenbusState::Closed);
        dev.set_phase(Phase::Closed, now, &self.cfg);
        self.unwatch(dev);
        self.events.push_back(BusEvent::Closed {
            nodename: dev.info.nodename.clone(),
            error: Some(e),
        });
        self.schedule_removal(dev, now);
    }
}

fn front_key(class: &str, id: &str) -> String {
    path::front_nodename(class, id)
}

/// `path` is `base` or below it.
fn is_under(path: &str, base: &str) -> bool {
    path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}
