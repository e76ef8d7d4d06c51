//! blkfront's XenBus glue: a [`FrontDriver`] for class `vbd`, and [`Blkfront`], the registry
//! an application gets its connected devices ([`BlkDevice`]) from.
//!
//! The handshake (blkif.h, "Startup"; Linux `talk_to_blkback`/`blkback_changed`):
//! - probe: the request `handle` is the device id (Linux: `simple_strtoul` of the nodename's
//!   last part);
//! - at the backend's InitWait, `initialise`: read the ring order the backend offers
//!   ([`BackendOffer::read_ring_order`]), take the lesser of it and ours
//!   ([`front_ring_order`]), allocate and grant the ring pages, allocate an unbound port, and
//!   write [`FrontRing::keys`]; the bus then writes Initialised;
//! - at the backend's Connected, `attach`: read everything it published
//!   ([`BackendOffer::read`]), [`negotiate_front`], start the data path; the bus writes
//!   Connected and the device is usable;
//! - the backend Closing/Closed, a failure or a detach: every outstanding request completes
//!   with [`BlkError::Failed`] (a write that was not answered is reported failed, never
//!   dropped), grants end, the port closes, the ring is freed. Idempotent.
//!
//! The keys are written one by one, not in a XenStore transaction: `DeviceCtx` offers no
//! transaction, and the backend reads them only after our Initialised, which the bus writes
//! after all of them.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::time::Duration;

use xen_bus::driver::errno;
use xen_bus::store::client::{Store, Transport, XsClientError};
use xen_bus::{Bus, DeviceCtx, DeviceInfo, DriverError, DriverResult, FrontDriver, Progress};
use xen_bus::{DomId, XenbusState};
use xen_platform::{Clock, EvtchnPort, Pages, PlatformRef};

use super::ring::{
    release_ring_after_resume, release_rings, setup_rings, DataPath, RingSetup, WaitMode,
};
use super::{chunked, BlkError, BlockDevice, Buffer, Completion, Rejected, Request};
use crate::negotiate::{
    front_keys, front_queues, front_ring_order, negotiate_front, BackendOffer, FrontConfig,
    FrontLimits, FrontRing, MAX_RING_PAGE_ORDER,
};

/// Where a device is, as its application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// Handshake in progress.
    Connecting,
    /// Usable.
    Connected,
    /// The backend went away in order; requests not yet completed wait for it to come back
    /// (and new ones queue) until the reconnect timeout.
    Reconnecting,
    /// Closed in order (or not yet started again).
    Closed,
    /// Failed: the backend misbehaved or vanished.
    Failed(&'static str),
}

struct Inner<H: PlatformRef> {
    plat: H,
    limits: FrontLimits,
    mode: WaitMode,
    timeout: Duration,
    /// How long requests wait for a backend that went away (0: they fail at once).
    reconnect_timeout: Duration,
    /// The backend moved to Closing on its own (not because we closed).
    backend_closing: bool,
    backend: DomId,
    handle: u16,
    order: u32,
    /// The rings granted at InitWait (one per queue), until the backend's Connected.
    setup: Vec<RingSetup>,
    /// The keys the last handshake wrote (a new one removes those it does not write).
    written: Vec<String>,
    dp: Option<DataPath<H>>,
    bounce: Option<Buffer>,
    /// Owned buffers the application dropped instead of freeing (`Buffer`'s `Drop`).
    returns: super::Returns,
    error_published: bool,
    /// The bus detached the device (failed or closed before or after connecting).
    detached: bool,
}

impl<H: PlatformRef> Inner<H> {
    /// Give back the owned buffers the application dropped (`Buffer`'s `Drop` queued them).
    fn reclaim(&mut self) {
        let dropped = core::mem::take(&mut *self.returns.borrow_mut());
        for b in dropped {
            let _ = self.free_one(b);
        }
    }

    fn free_one(&mut self, mut buf: Buffer) -> Result<(), BlkError> {
        buf.home = None;
        if let Some(dp) = self.dp.as_mut() {
            return dp.free_buffer(buf);
        }
        match buf.into_run() {
            Some(run) => self.plat.get().free(run).map_err(BlkError::Platform),
            None => Ok(()),
        }
    }

    fn disconnect(&mut self, err: BlkError) {
        release_rings(&self.plat, core::mem::take(&mut self.setup));
        let bounce = self.bounce.take();
        if let Some(dp) = self.dp.as_mut() {
            if let Some(b) = bounce {
                let _ = dp.free_buffer(b);
            }
            dp.shutdown(err);
        } else if let Some(run) = bounce.and_then(Buffer::into_run) {
            let _ = self.plat.get().free(run);
        }
    }

    /// The backend is going in order: keep what is not answered for the next connection
    /// (or fail it at once with a zero reconnect timeout).
    fn park(&mut self) {
        release_rings(&self.plat, core::mem::take(&mut self.setup));
        if self.reconnect_timeout.is_zero() {
            self.disconnect(BlkError::Failed);
            return;
        }
        let until = self.plat.get().now().saturating_add(self.reconnect_timeout);
        if let Some(dp) = self.dp.as_mut() {
            dp.park(until);
        }
    }

    fn parked(&self) -> bool {
        self.dp.as_ref().is_some_and(DataPath::parked)
    }

    /// This domain resumed as a new one: its event channels, grants and mappings are gone
    /// (their numbers may belong to new channels: nothing is closed). Keep every request
    /// not yet answered for the next connection, as when a backend departs in order.
    fn suspended(&mut self) {
        for s in core::mem::take(&mut self.setup) {
            release_ring_after_resume(&self.plat, s);
        }
        let connected = match self.dp.as_mut() {
            Some(dp) => {
                dp.forget_port();
                dp.connected
            }
            None => false,
        };
        if connected {
            self.backend_closing = true;
            self.park();
        }
    }

    fn state(&self) -> DeviceState {
        match &self.dp {
            Some(dp) if dp.connected => DeviceState::Connected,
            Some(dp) if dp.parked() => DeviceState::Reconnecting,
            Some(dp) => match dp.failure {
                Some(why) => DeviceState::Failed(why),
                None => DeviceState::Closed,
            },
            None if self.detached => DeviceState::Closed,
            None => DeviceState::Connecting,
        }
    }
}

type Shared<H> = Rc<RefCell<Inner<H>>>;

/// blkfront for a [`Bus`]: register it once ([`register`](Self::register)), then take each
/// connected device with [`device`](Self::device). Cheap to clone (shared registry).
pub struct Blkfront<H: PlatformRef> {
    plat: H,
    limits: FrontLimits,
    mode: WaitMode,
    timeout: Duration,
    reconnect_timeout: Duration,
    devices: Rc<RefCell<BTreeMap<String, Shared<H>>>>,
}

impl<H: PlatformRef> Clone for Blkfront<H> {
    fn clone(&self) -> Self {
        Blkfront {
            plat: self.plat.clone(),
            limits: self.limits,
            mode: self.mode,
            timeout: self.timeout,
            reconnect_timeout: self.reconnect_timeout,
            devices: self.devices.clone(),
        }
    }
}

impl<H: PlatformRef> core::fmt::Debug for Blkfront<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Blkfront")
            .field("limits", &self.limits)
            .field("mode", &self.mode)
            .field("devices", &self.devices.borrow().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// xenolith blkfront's own limits: a 16-page ring, 256 indirect segments (1 MiB requests,
/// Linux blkfront's default `max_indirect_segments` is 32; 256 is what Linux blkback offers),
/// as many requests as the ring holds.
/// How long requests wait for a backend that went away before they fail (Linux blkfront waits
/// without bound; a bound lets an application learn that its disk is gone).
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

pub const DEFAULT_LIMITS: FrontLimits = FrontLimits {
    max_ring_page_order: MAX_RING_PAGE_ORDER,
    max_indirect_segments: 256,
    max_requests: 1024,
    persistent: true,
    max_queues: 1,
};

impl<H: PlatformRef> Blkfront<H> {
    /// blkfront with [`DEFAULT_LIMITS`], event mode, 30 s blocking timeout.
    pub fn new(plat: H) -> Self {
        Blkfront {
            plat,
            limits: DEFAULT_LIMITS,
            mode: WaitMode::Event,
            timeout: Duration::from_secs(30),
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            devices: Rc::default(),
        }
    }

    /// How long requests of devices adopted from now on wait for a backend that went away
    /// (closed in order: restarted, or the domain resumed) before they fail; zero: they fail
    /// at once, as before re-issue existed.
    pub fn with_reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Use `limits` for devices adopted from now on.
    pub fn with_limits(mut self, limits: FrontLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Wait mode of the blocking calls of devices adopted from now on.
    pub fn with_mode(mut self, mode: WaitMode) -> Self {
        self.mode = mode;
        self
    }

    /// Timeout of the blocking calls of devices adopted from now on.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a real resume of this domain (`xen_control::Event::Resumed` with `cancelled`
    /// false), before `Bus::resumed`: every device lets go of its ring and event channel
    /// without closing anything (the numbers are no longer ours) and parks what is not
    /// answered; the bus then runs each handshake again and the new connections issue the
    /// parked requests again (Linux `blkfront_resume` + `blkif_recover`). Requests wait at
    /// most the reconnect timeout.
    pub fn suspended(&self) {
        for d in self.devices.borrow().values() {
            d.borrow_mut().suspended();
        }
    }

    /// Drive the `vbd` frontends of `bus` with blkfront.
    pub fn register<T: Transport>(&self, bus: &mut Bus<T>) -> Result<(), XsClientError> {
        let me = self.clone();
        bus.register_front("vbd", move |info: &DeviceInfo| {
            let inner = Rc::new(RefCell::new(Inner {
                plat: me.plat.clone(),
                limits: me.limits,
                mode: me.mode,
                timeout: me.timeout,
                reconnect_timeout: me.reconnect_timeout,
                backend_closing: false,
                backend: info.backend_id,
                handle: 0,
                order: 0,
                setup: Vec::new(),
                written: Vec::new(),
                dp: None,
                bounce: None,
                returns: Rc::default(),
                error_published: false,
                detached: false,
            }));
            me.devices
                .borrow_mut()
                .insert(info.nodename.clone(), inner.clone());
            alloc::boxed::Box::new(Driver { inner })
        })
    }

    /// The device at `nodename` (`device/vbd/51712`) if it is connected.
    pub fn device(&self, nodename: &str) -> Option<BlkDevice<H>> {
        let inner = self.devices.borrow().get(nodename)?.clone();
        let ok = inner.borrow().state() == DeviceState::Connected;
        ok.then(|| BlkDevice {
            inner,
            nodename: nodename.to_string(),
        })
    }

    /// A device's state (`None`: never adopted).
    pub fn state(&self, nodename: &str) -> Option<DeviceState> {
        Some(self.devices.borrow().get(nodename)?.borrow().state())
    }

    /// Nodenames of the connected devices.
    pub fn connected(&self) -> Vec<String> {
        self.devices
            .borrow()
            .iter()
            .filter(|(_, d)| d.borrow().state() == DeviceState::Connected)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Polls `bus` (and [`service`](Self::service)) until a disk is connected, and returns
    /// the first one (by nodename); [`BlkError::Timeout`] after `timeout` of the platform's
    /// clock. `idle` runs between polls: wait on the XenStore port, or sleep a little.
    pub fn first_disk<T: Transport>(
        &self,
        bus: &mut Bus<T>,
        timeout: Duration,
        idle: &mut dyn FnMut(),
    ) -> Result<BlkDevice<H>, BlkError> {
        let start = self.plat.get().now();
        loop {
            let _ = bus.poll(self.plat.get().now());
            self.service(bus);
            if let Some(dev) = self.connected().first().and_then(|n| self.device(n)) {
                return Ok(dev);
            }
            if self.plat.get().now().saturating_sub(start) > timeout {
                return Err(BlkError::Timeout);
            }
            idle();
        }
    }

    /// Call after every [`Bus::poll`]: a device whose data path failed (a misbehaving
    /// backend) gets its error published in `error/<nodename>/error` (as `xenbus_dev_fatal`)
    /// and is closed through the bus (Closing, then Closed once the backend closes or the
    /// close timeout passes); a disconnected device frees the pages its backend kept mapped
    /// once it lets go. Returns how many devices it closed.
    pub fn service<T: Transport>(&self, bus: &mut Bus<T>) -> usize {
        let mut n = 0;
        for (name, d) in self.devices.borrow().iter() {
            let mut d = d.borrow_mut();
            if let Some(dp) = d.dp.as_mut().filter(|dp| dp.parked()) {
                dp.expire();
            }
            // Parked requests: once our side is Closed (in order), start the handshake again
            // (Initialising); the backend follows when it is back (blkif.h: a backend closed
            // with `online` = 1 prepares for a reconnect).
            let closed = bus
                .device(name)
                .is_some_and(|st| st.phase == xen_bus::Phase::Closed && st.error.is_none());
            if d.parked() && closed {
                let now = self.plat.get().now();
                bus.reconnect(name, now);
            }
            // Parked requests of a device the bus failed (its nodes are gone or changed
            // after a resume): nothing will take them over.
            let failed = bus
                .device(name)
                .is_some_and(|st| st.phase == xen_bus::Phase::Closed && st.error.is_some());
            if d.parked() && failed {
                d.disconnect(BlkError::Failed);
            }
            if let Some(dp) = d.dp.as_mut().filter(|dp| !dp.connected) {
                // Pages the backend still mapped when we disconnected (Linux blkfront defers
                // their release the same way): freed once it lets go.
                dp.retry_quarantine();
            }
            // Buffers the application dropped go back even when it makes no further call on
            // the device (a failed device's last completions).
            d.reclaim();
            let why = match &d.dp {
                Some(dp) => dp.failure,
                None => None,
            };
            if let (Some(why), false) = (why, d.error_published) {
                d.error_published = true;
                let e = DriverError::new(errno::EPROTO, why);
                let node = xen_bus::path::error_node(bus.home(), name);
                let _ = bus.client().write(&node, e.published().as_bytes());
                bus.close(name);
                n += 1;
            }
        }
        n
    }
}

struct Driver<H: PlatformRef> {
    inner: Shared<H>,
}

fn plat_err(what: &str, e: xen_platform::Error) -> DriverError {
    DriverError::new(-e.xen_errno(), alloc::format!("{what}: {e:?}"))
}

impl<H: PlatformRef> FrontDriver for Driver<H> {
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        let mut i = self.inner.borrow_mut();
        // Linux blkfront: `info->handle = simple_strtoul(strrchr(nodename, '/') + 1)`.
        i.handle = ctx.info.id.parse::<u32>().map_or(0, |v| v as u16);
        i.backend = ctx.info.backend_id;
        i.detached = false;
        Ok(Progress::Done)
    }

    fn initialise(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        let mut i = self.inner.borrow_mut();
        i.backend_closing = false;
        // A previous session (a reconnect): make sure it is down — unless it parked its
        // requests for this one. Its data path stays until the new one starts, so
        // completions the application has not taken yet are kept.
        if !i.parked() {
            i.disconnect(BlkError::Failed);
        }
        let offered = BackendOffer::read_ring_order(|k| ctx.read_other(k))?;
        let order = front_ring_order(offered, &i.limits);
        // Linux blkfront reads `multi-queue-max-queues` here too (talk_to_blkback): the
        // queues are part of what the frontend writes before Initialised.
        let queues = front_queues(
            BackendOffer::read_max_queues(|k| ctx.read_other(k))?,
            &i.limits,
        );
        let rings = setup_rings(&i.plat, i.backend, order, queues)
            .map_err(|e| plat_err("granting the ring", e))?;
        let persistent = i.limits.persistent;
        let described: Vec<FrontRing> = rings
            .iter()
            .map(|s| FrontRing {
                ring_refs: s.refs.clone(),
                event_channel: s.port,
                persistent,
            })
            .collect();
        let keys = front_keys(&described);
        i.order = order;
        i.setup = rings;
        // A session before this one wrote its keys: remove those this one does not write, or
        // a backend would read a stale `ring-page-order`, `ring-ref<N>` or queue layout
        // (blkif.h: the keys select the ring layout by their presence). A whole `queue-<N>`
        // directory goes when none of its keys is written again.
        let old = core::mem::take(&mut i.written);
        let mut stale: Vec<&str> = Vec::new();
        for k in &old {
            if keys.iter().any(|(w, _)| w == k) {
                continue;
            }
            let node = match k.split_once('/') {
                Some((dir, _)) if !keys.iter().any(|(w, _)| w.starts_with(dir)) => dir,
                _ => k.as_str(),
            };
            if !stale.contains(&node) {
                stale.push(node);
            }
        }
        for node in stale {
            let _ = ctx.store.rm(&ctx.info.key(node));
        }
        i.written = keys.iter().map(|(k, _)| k.clone()).collect();
        drop(i);
        for (k, v) in keys {
            ctx.write(&k, v.as_bytes())?;
        }
        Ok(Progress::Done)
    }

    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        let mut i = self.inner.borrow_mut();
        let offer = BackendOffer::read(|k| ctx.read_other(k))?;
        let cfg: FrontConfig = negotiate_front(&offer, i.order, &i.limits);
        let setup = core::mem::take(&mut i.setup);
        if setup.is_empty() {
            return Err(DriverError::new(errno::EINVAL, "attach without a ring"));
        }
        // libxl writes `trusted` (1 or 0, `disk.trusted`) in the frontend's directory; Linux
        // blkfront reads it there, absent meaning trusted, and bounces everything through its
        // own pages when it is 0 (XSA-403).
        let trusted = ctx.read("trusted")?.is_none_or(|v| v.as_slice() != b"0");
        let (plat, backend, handle, mode) = (i.plat.clone(), i.backend, i.handle, i.mode);
        match DataPath::new(plat, backend, handle, setup, cfg, mode, trusted) {
            Ok(mut dp) => {
                if let Some(old) = i.dp.take() {
                    dp.take_over(old);
                }
                i.dp = Some(dp);
                i.error_published = false;
                Ok(Progress::Done)
            }
            Err((e, setup)) => {
                release_rings(&i.plat, setup);
                Err(DriverError::new(
                    errno::EINVAL,
                    alloc::format!("starting the ring: {e}"),
                ))
            }
        }
    }

    fn other_end_changed(
        &mut self,
        ctx: &mut DeviceCtx<'_>,
        state: XenbusState,
    ) -> Result<(), DriverError> {
        if !state.is_closing() {
            return Ok(());
        }
        // Closing on its own, not following us (our state is not Closing or Closed), and
        // staying `online` (the toolstack writes `online` = 0 when it removes the device, as
        // `xl block-detach` does; Linux blkback prepares for a reconnect only while it is 1):
        // the backend is going in order and coming back, so its requests wait for the next
        // connection (the bus detaches next; `Blkfront::service` starts the handshake
        // again). Otherwise fail what is in flight now.
        let ours = ctx.read("state")?;
        let we_close = matches!(ours.as_deref(), Some(b"5") | Some(b"6"));
        let removed = ctx.read_other("online")?.as_deref() == Some(b"0");
        let mut i = self.inner.borrow_mut();
        if !we_close && !removed && i.dp.as_ref().is_some_and(|dp| dp.connected) {
            i.backend_closing = true;
            i.park();
        } else if !i.parked() {
            i.disconnect(BlkError::Failed);
        }
        Ok(())
    }

    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        let mut i = self.inner.borrow_mut();
        // Parked requests outlive a close the backend started; any other detach (we close,
        // the device failed, the bus shuts down) fails them.
        if !(i.backend_closing && i.parked()) {
            i.disconnect(BlkError::Failed);
        }
        i.detached = true;
    }
}

/// A connected blkfront device (a handle: clones share the device). Everything fails with
/// [`BlkError::NotConnected`]/[`BlkError::Failed`] once the device is gone.
pub struct BlkDevice<H: PlatformRef> {
    inner: Shared<H>,
    nodename: String,
}

impl<H: PlatformRef> Clone for BlkDevice<H> {
    fn clone(&self) -> Self {
        BlkDevice {
            inner: self.inner.clone(),
            nodename: self.nodename.clone(),
        }
    }
}

impl<H: PlatformRef> core::fmt::Debug for BlkDevice<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkDevice")
            .field("nodename", &self.nodename)
            .finish()
    }
}

impl<H: PlatformRef> BlkDevice<H> {
    /// Its node relative to our home.
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// The negotiated configuration.
    pub fn config(&self) -> Option<FrontConfig> {
        self.inner.borrow().dp.as_ref().map(|d| d.cfg.clone())
    }

    /// The state.
    pub fn state(&self) -> DeviceState {
        self.inner.borrow().state()
    }

    /// The first queue's event channel.
    pub fn port(&self) -> Option<EvtchnPort> {
        self.inner.borrow().dp.as_ref().and_then(DataPath::port)
    }

    /// Every queue's event channel (for an image's main loop that waits on every port).
    pub fn ports(&self) -> Vec<EvtchnPort> {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .map_or_else(Vec::new, |d| d.ports().collect())
    }

    /// Requests issued again after a backend came back (over the device's life).
    pub fn reissued(&self) -> u64 {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .map_or(0, DataPath::reissued)
    }

    /// Requests submitted and not yet reported by [`BlockDevice::poll`].
    pub fn in_flight(&self) -> usize {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .map_or(0, DataPath::in_flight)
    }

    /// Change how blocking calls wait.
    pub fn set_mode(&self, mode: WaitMode) {
        let mut i = self.inner.borrow_mut();
        i.mode = mode;
        if let Some(dp) = i.dp.as_mut() {
            dp.mode = mode;
        }
    }

    /// Change the blocking calls' timeout.
    pub fn set_timeout(&self, timeout: Duration) {
        self.inner.borrow_mut().timeout = timeout;
    }

    /// Give back the owned buffers the application dropped (`Buffer`'s `Drop` queued them).
    fn reclaim(&mut self) {
        self.inner.borrow_mut().reclaim();
    }

    fn free_one(&mut self, buf: Buffer) -> Result<(), BlkError> {
        self.inner.borrow_mut().free_one(buf)
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut DataPath<H>) -> Result<R, BlkError>,
    ) -> Result<R, BlkError> {
        let mut i = self.inner.borrow_mut();
        match i.dp.as_mut() {
            Some(dp) => f(dp),
            None => Err(BlkError::NotConnected),
        }
    }

    /// Read or write `len` bytes through the device's bounce buffer (kept for its life),
    /// in chunks of at least 64 KiB: the provided [`chunked`] loop on a cached buffer.
    fn bounce(
        &mut self,
        write: bool,
        sector: u64,
        len: usize,
        copy: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), BlkError> {
        let ss = self.sector_size() as usize;
        if ss == 0 || !len.is_multiple_of(ss) {
            return Err(BlkError::Misaligned);
        }
        let cached = {
            let mut i = self.inner.borrow_mut();
            if i.dp.is_none() {
                return Err(BlkError::NotConnected);
            }
            i.bounce.take()
        };
        let b = match cached {
            Some(b) => b,
            None => {
                let chunk = self.max_request_bytes().max(ss).max(64 * 1024) / ss * ss;
                self.alloc_buffer(chunk)?
            }
        };
        let b = chunked(self, write, sector, len, b, copy)?;
        self.inner.borrow_mut().bounce = Some(b);
        Ok(())
    }
}

impl<H: PlatformRef> BlockDevice for BlkDevice<H> {
    fn sector_size(&self) -> u32 {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .map_or(512, DataPath::sector_size)
    }

    fn sectors(&self) -> u64 {
        self.inner.borrow().dp.as_ref().map_or(0, DataPath::sectors)
    }

    fn read_only(&self) -> bool {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .is_some_and(|d| d.cfg.readonly)
    }

    fn max_request_bytes(&self) -> usize {
        self.inner
            .borrow()
            .dp
            .as_ref()
            .map_or(0, DataPath::max_request_bytes)
    }

    fn alloc_buffer(&mut self, bytes: usize) -> Result<Buffer, BlkError> {
        self.reclaim();
        let mut i = self.inner.borrow_mut();
        let mut b = if let Some(dp) = i.dp.as_mut() {
            dp.alloc_buffer(bytes)?
        } else {
            let pages = bytes.div_ceil(xen_platform::PAGE_SIZE).max(1);
            let run = i.plat.get().alloc(pages).map_err(BlkError::Platform)?;
            Buffer::from_run(run, bytes)
        };
        b.home = Some(i.returns.clone());
        Ok(b)
    }

    fn free_buffer(&mut self, buf: Buffer) -> Result<(), BlkError> {
        self.reclaim();
        self.free_one(buf)
    }

    fn submit(&mut self, tag: u64, req: Request) -> Result<(), Rejected> {
        let mut i = self.inner.borrow_mut();
        match i.dp.as_mut() {
            Some(dp) => dp.submit(tag, req, false),
            None => Err(Rejected {
                error: BlkError::NotConnected,
                buf: match req {
                    Request::Read { buf, .. } | Request::Write { buf, .. } => Some(buf),
                    _ => None,
                },
            }),
        }
    }

    fn poll(&mut self, f: &mut dyn FnMut(Completion)) -> Result<usize, BlkError> {
        self.reclaim();
        self.with(|dp| {
            dp.progress();
            Ok(dp.deliver(f))
        })
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), BlkError> {
        self.with(|dp| dp.wait(timeout))
    }

    // read and write keep one bounce buffer for the device's life (the provided ones allocate
    // pages per call).
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let len = buf.len();
        self.bounce(false, sector, len, &mut |at, b| {
            buf[at..at + b.len()].copy_from_slice(b)
        })
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        self.bounce(true, sector, data.len(), &mut |at, b| {
            let n = b.len();
            b.copy_from_slice(&data[at..at + n])
        })
    }

    fn run(&mut self, req: Request) -> Result<Option<Buffer>, BlkError> {
        let timeout = self.inner.borrow().timeout;
        self.with(|dp| dp.run(req, timeout))
    }
}
