//! blkback: serves [`Storage`](crate::storage::Storage) to frontends over blkif.
//!
//! - [`channel`]: the data path (ring, event channel, grants, storage), no XenStore.
//! - [`shared`]: every access to memory shared with the frontend (the crate's only `unsafe`
//!   besides the `Pod` impls of the ABI).
//! - here: the XenBus glue. [`BlkBack`] is what an image keeps: it registers a [`BackDriver`]
//!   for class `vbd` on a [`Bus`] and serves every connected device in [`BlkBack::poll`]
//!   (several frontends at once, each with its own storage made by the image's factory).
//!
//! Driving: poll the bus and the `BlkBack` in one loop. *Polled mode*: call
//! [`BlkBack::poll`] (or [`BlkBack::poll_into`], which reuses its output) again at once.
//! *Event mode*: wait on [`BackPoll::ports`] (plus the bus's port), clear the port that fired,
//! and poll again; poll at once when [`BackPoll::busy`]. blkback itself never clears a port.

pub mod channel;
pub(crate) mod queues;
pub(crate) mod shared;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use xen_bus::store::client::XsClientError;
use xen_bus::store::transport::Transport;
use xen_bus::{errno, BackDriver, Bus, DeviceCtx, DriverError, DriverResult, Progress};
use xen_platform::abi::EvtchnPort;
use xen_platform::{DomId, GrantMapper, PlatformRef};

use crate::abi::{
    BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST, VDISK_CDROM, VDISK_READONLY,
    VDISK_REMOVABLE,
};
use crate::negotiate::{self, BackendOffer, DiscardParams, MAX_RING_PAGE_ORDER};
use crate::storage::Storage;
use channel::{Channel, ChannelStats, Limits};

/// Linux blkback's default limit of persistently mapped grants per ring
/// (`xen_blkif_max_pgrants`, drivers/block/xen-blkback/blkback.c).
const LINUX_MAX_PGRANTS: usize = 1056;

/// What the toolstack asked for, handed to the image's storage factory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The frontend domain.
    pub frontend_id: DomId,
    /// The device id (`51712`).
    pub devid: String,
    /// `params` (xl's `target=`): what to serve.
    pub params: String,
    /// `type` (`phy`, `file`, ...), if written.
    pub kind: Option<String>,
    /// `mode=r`.
    pub read_only: bool,
}

/// Makes the storage of a device. An error fails the device (published, Closed).
pub type StorageFactory = Box<dyn FnMut(&DiskSpec) -> Result<Box<dyn Storage>, DriverError>>;

/// What this backend offers, beyond what each storage can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOptions {
    /// `max-ring-page-order` (≤ 4).
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments` (0: no indirect requests; ≤ 4096).
    pub max_indirect_segments: u32,
    /// Offer `feature-flush-cache` (writable disks).
    pub flush: bool,
    /// Offer `feature-barrier` (writable disks).
    pub barrier: bool,
    /// Offer `feature-discard` where the storage discards and the toolstack's
    /// `discard-enable` is not 0.
    pub discard: bool,
    /// Offer `feature-persistent`: a frontend that writes it too has its grants mapped once
    /// and kept for the connection.
    pub persistent: bool,
    /// Most grants kept mapped per ring; `None`: blkif.h's "ideally RING_SIZE *
    /// BLKIF_MAX_SEGMENTS_PER_REQUEST", and at least Linux blkback's default of 1056
    /// (`xen_blkif_max_pgrants`).
    pub max_persistent_grants: Option<usize>,
    /// `multi-queue-max-queues`: rings a frontend may use per device (1: the key is not
    /// written; at most [`queues::MAX_QUEUES`]). Linux's blkfront uses one per vCPU up to it.
    pub max_queues: u32,
}

/// Queues offered by default (Linux blkback offers one per vCPU of its domain; a storage
/// domain of one vCPU still serves each ring in turn, and a guest spreads its I/O over them).
pub const DEFAULT_MAX_QUEUES: u32 = 4;

impl Default for BackOptions {
    /// What Linux's blkback publishes by default (`docs/XENSTORE-LAYOUT.md`): order 4, 256
    /// indirect segments, flush, barrier, discard, persistent grants.
    fn default() -> Self {
        BackOptions {
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            max_indirect_segments: 256,
            flush: true,
            barrier: true,
            discard: true,
            persistent: true,
            max_persistent_grants: None,
            max_queues: DEFAULT_MAX_QUEUES,
        }
    }
}

/// Most passes of one [`BlkBack::poll`] over the rings that are still backlogged (each pass
/// is one round of each of them).
pub const ROUNDS_PER_POLL: usize = 8;

/// What [`BlkBack::poll`] leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackPoll {
    /// Poll again soon even without an event (a storage without ports holds requests).
    pub busy: bool,
    /// The ports to wait on: every connected ring's, and the storages' own.
    pub ports: Vec<EvtchnPort>,
    /// Devices whose frontend broke the ring protocol (not served any more): close them with
    /// [`Bus::close`].
    pub broken: Vec<String>,
}

/// A device's state as [`BlkBack::device`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// Connected (a ring is mapped).
    pub connected: bool,
    /// Rings (queues) connected: 0 when not connected.
    pub queues: usize,
    /// The data path's counters (of the current or last connection), every queue's summed.
    pub stats: ChannelStats,
    /// Each connected queue's counters (queue 0 first); empty when not connected.
    pub per_queue: Vec<ChannelStats>,
    /// What was offered (after probe).
    pub offer: Option<BackendOffer>,
}

struct Slot<H: PlatformRef> {
    /// One per queue while connected (queue 0 first); empty otherwise.
    channels: Vec<Channel<H>>,
    last_stats: ChannelStats,
    offer: Option<BackendOffer>,
}

struct Hub<H: PlatformRef> {
    platform: H,
    options: BackOptions,
    factory: StorageFactory,
    devices: BTreeMap<String, Rc<RefCell<Slot<H>>>>,
    /// Polled mode: frontends are not asked for notifications.
    polled: bool,
    /// Responses written by connections that have ended.
    retired_responses: u64,
    /// The device `poll_into` serves first next time (round-robin).
    next_first: core::cell::Cell<usize>,
}

/// blkback for every `vbd` this domain serves, on the platform handle `H` (`&'static Xen` in
/// an image, `Rc<Domain>`/`Arc<Domain>` in the simulator). Cheap to clone (a shared handle).
pub struct BlkBack<H: PlatformRef> {
    hub: Rc<RefCell<Hub<H>>>,
}

impl<H: PlatformRef> Clone for BlkBack<H> {
    fn clone(&self) -> Self {
        BlkBack {
            hub: self.hub.clone(),
        }
    }
}

impl<H: PlatformRef> BlkBack<H> {
    /// A backend on `platform`, making each device's storage with `factory`.
    pub fn new(
        platform: H,
        options: BackOptions,
        factory: impl FnMut(&DiskSpec) -> Result<Box<dyn Storage>, DriverError> + 'static,
    ) -> BlkBack<H> {
        BlkBack {
            hub: Rc::new(RefCell::new(Hub {
                platform,
                options,
                factory: Box::new(factory),
                devices: BTreeMap::new(),
                polled: false,
                retired_responses: 0,
                next_first: core::cell::Cell::new(0),
            })),
        }
    }

    /// Polled mode (`true`): the loop calls [`poll`](Self::poll) again at once and never
    /// waits, so frontends are not asked to notify (each notification is a hypercall for
    /// them). Event mode (`false`, the default): a drained ring asks for one. Takes effect at
    /// the next poll; a frontend that was asked before may still notify once.
    pub fn set_polled(&self, polled: bool) {
        self.hub.borrow_mut().polled = polled;
    }

    /// Serve class `vbd` of `bus`.
    pub fn register<T: Transport>(&self, bus: &mut Bus<T>) -> Result<(), XsClientError> {
        let hub = self.hub.clone();
        bus.register_back("vbd", move |info| {
            let slot = Rc::new(RefCell::new(Slot {
                channels: Vec::new(),
                last_stats: ChannelStats::default(),
                offer: None,
            }));
            hub.borrow_mut()
                .devices
                .insert(info.nodename.clone(), slot.clone());
            Box::new(VbdBack {
                hub: hub.clone(),
                slot,
                storage: None,
                shared: None,
                offer: None,
                limits: None,
                next_tag: 0,
            })
        })
    }

    /// Serve every connected device as far as possible without waiting.
    pub fn poll(&self) -> BackPoll {
        let mut out = BackPoll::default();
        self.poll_into(&mut out);
        out
    }

    /// [`poll`](Self::poll) into `out` (cleared first), reusing its memory: a polled loop
    /// allocates nothing.
    pub fn poll_into(&self, out: &mut BackPoll) {
        out.busy = false;
        out.ports.clear();
        out.broken.clear();
        // Serving a ring never calls back into the hub (the bus is not polled from here), so
        // the hub stays borrowed for the walk: nothing is copied per poll.
        let hub = self.hub.borrow();
        // Round-robin: each call starts one device further on; each pass gives every ring
        // one budgeted round (Channel::poll), so no ring is always served first or for long.
        // Rings still backlogged get further passes, up to ROUNDS_PER_POLL: a lone busy ring
        // is not slowed by a trip through the image's loop per quantum, and the call stays
        // bounded.
        let n = hub.devices.len();
        let first = hub.next_first.get() % n.max(1);
        hub.next_first.set(first.wrapping_add(1));
        for pass in 0..ROUNDS_PER_POLL {
            let order = hub
                .devices
                .iter()
                .skip(first)
                .chain(hub.devices.iter().take(first));
            let mut again = false;
            for (name, slot) in order {
                let mut s = slot.borrow_mut();
                let mut broken = false;
                for (q, ch) in s.channels.iter_mut().enumerate() {
                    if pass > 0 && !ch.backlogged() {
                        continue;
                    }
                    ch.poll(!hub.polled);
                    again |= ch.backlogged() && ch.broken().is_none();
                    if pass == 0 {
                        out.ports.push(ch.port());
                        // The queues share one storage: its ports once.
                        if q == 0 {
                            ch.storage_ports(&mut |p| out.ports.push(p));
                        }
                        broken |= ch.broken().is_some();
                    }
                }
                if broken {
                    out.broken.push(name.clone());
                }
            }
            if !again {
                break;
            }
        }
        out.busy = hub
            .devices
            .values()
            .any(|s| s.borrow().channels.iter().any(Channel::busy));
    }

    /// Responses written since this backend was made, over every connection of every device
    /// (ended ones included).
    pub fn responses(&self) -> u64 {
        let hub = self.hub.borrow();
        let live: u64 = hub
            .devices
            .values()
            .map(|s| {
                s.borrow()
                    .channels
                    .iter()
                    .map(|c| c.stats().responses)
                    .sum::<u64>()
            })
            .sum();
        hub.retired_responses + live
    }

    /// A device's report by its nodename (`backend/vbd/<fe>/<id>`).
    pub fn device(&self, nodename: &str) -> Option<DeviceReport> {
        let hub = self.hub.borrow();
        let s = hub.devices.get(nodename)?.borrow();
        Some(DeviceReport {
            connected: !s.channels.is_empty(),
            queues: s.channels.len(),
            stats: if s.channels.is_empty() {
                s.last_stats
            } else {
                s.channels
                    .iter()
                    .fold(ChannelStats::default(), |a, c| a.merge(&c.stats()))
            },
            per_queue: s.channels.iter().map(Channel::stats).collect(),
            offer: s.offer.clone(),
        })
    }
}

/// The [`BackDriver`] of one `vbd`.
struct VbdBack<H: PlatformRef> {
    hub: Rc<RefCell<Hub<H>>>,
    slot: Rc<RefCell<Slot<H>>>,
    storage: Option<Box<dyn Storage>>,
    /// While several queues are connected: the storage they share.
    shared: Option<Rc<RefCell<queues::Shared>>>,
    offer: Option<BackendOffer>,
    limits: Option<Limits>,
    /// The first storage tag of the next connection (tags are never reused).
    next_tag: u64,
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8_lossy(&v)
        .trim_end_matches('\0')
        .to_string()
}

impl<H: PlatformRef> VbdBack<H> {
    fn open(&mut self, ctx: &mut DeviceCtx<'_>) -> Result<(), DriverError> {
        let params = ctx
            .read("params")?
            .map(text)
            .ok_or_else(|| DriverError::new(errno::ENOENT, "reading params: missing"))?;
        let mode = ctx
            .read(negotiate::keys::MODE)?
            .ok_or_else(|| DriverError::new(errno::ENOENT, "reading mode: missing"))?;
        let mode_ro = negotiate::parse_mode(&mode)?;
        let spec = DiskSpec {
            frontend_id: ctx.info.frontend_id,
            devid: ctx.info.id.clone(),
            params,
            kind: ctx.read("type")?.map(text),
            read_only: mode_ro,
        };
        let (opts, storage) = {
            let mut hub = self.hub.borrow_mut();
            let s = (hub.factory)(&spec)?;
            (hub.options, s)
        };
        let read_only = mode_ro || storage.read_only();
        let sector_size = storage.sector_size();
        if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
            return Err(DriverError::new(
                errno::EINVAL,
                format!("storage sector size {sector_size}"),
            ));
        }
        let feat = storage.features();
        let discard_enable = ctx
            .read("discard-enable")?
            .map(text)
            .is_none_or(|v| v != "0");
        let discard = (opts.discard && discard_enable && feat.discard && !read_only).then_some(
            DiscardParams {
                granularity: if feat.discard_granularity == 0 {
                    sector_size
                } else {
                    feat.discard_granularity
                },
                alignment: 0,
                secure: feat.secure_discard,
            },
        );
        let mut info = 0;
        if read_only {
            info |= VDISK_READONLY;
        }
        if ctx.read("device-type")?.map(text).as_deref() == Some("cdrom") {
            info |= VDISK_CDROM;
        }
        if ctx.read("removable")?.map(text).as_deref() == Some("1") {
            info |= VDISK_REMOVABLE;
        }
        let indirect = opts
            .max_indirect_segments
            .min(BLKIF_MAX_INDIRECT_SEGMENTS as u32);
        let offer = BackendOffer {
            max_ring_page_order: opts.max_ring_page_order.min(MAX_RING_PAGE_ORDER),
            // Only more than 11 is worth announcing (and blkif.h: a backend without
            // BLKIF_OP_INDIRECT must not write the key).
            max_indirect_segments: if indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST as u32 {
                indirect
            } else {
                0
            },
            flush_cache: opts.flush && !read_only,
            barrier: opts.barrier && !read_only,
            discard,
            persistent: opts.persistent,
            sectors: storage.sectors(),
            sector_size,
            physical_sector_size: storage.physical_sector_size().max(sector_size),
            info,
            max_requests: None,
            max_request_segments: None,
            max_request_size: None,
            max_queues: opts.max_queues.clamp(1, queues::MAX_QUEUES),
        };
        self.limits = Some(Limits {
            max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
            indirect: offer.max_indirect_segments > 0,
            flush: offer.flush_cache,
            barrier: offer.barrier,
            discard: offer.discard.is_some(),
            secure_discard: offer.discard.is_some_and(|d| d.secure),
            read_only,
            sectors: offer.sectors,
            sector_size,
            persistent_grants: 0,
        });
        self.storage = Some(storage);
        self.offer = Some(offer);
        Ok(())
    }
}

impl<H: PlatformRef> BackDriver for VbdBack<H> {
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        if self.offer.is_none() {
            self.open(ctx)?;
        }
        let offer = self.offer.clone().expect("opened");
        for (k, v) in offer.ring_keys() {
            ctx.write(k, v.as_bytes())?;
        }
        self.slot.borrow_mut().offer = Some(offer);
        Ok(Progress::Done)
    }

    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        // A reconnect after a detach: the previous channel is gone, the storage came back.
        let offer = self
            .offer
            .clone()
            .ok_or_else(|| DriverError::new(errno::EINVAL, "attach before probe"))?;
        let cfg = negotiate::negotiate_back(|k| ctx.read_other(k), &offer)?;
        let Some(storage) = self.storage.take() else {
            return Err(DriverError::new(errno::EIO, "storage already in use"));
        };
        let mut limits = self.limits.expect("opened");
        limits.max_segments = cfg.max_segments;
        if !limits.indirect {
            limits.max_segments = limits
                .max_segments
                .min(BLKIF_MAX_SEGMENTS_PER_REQUEST as u32);
        }
        limits.persistent_grants = if cfg.persistent(&offer) {
            let ideal = cfg.max_requests as usize * BLKIF_MAX_SEGMENTS_PER_REQUEST;
            let hub = self.hub.borrow();
            let cap = hub
                .options
                .max_persistent_grants
                .unwrap_or(ideal.max(LINUX_MAX_PGRANTS));
            // In a bounded mapping window (a real guest's) one device may keep a quarter of
            // it: the others, and every request's short-lived mappings, need the rest.
            match hub.platform.get().map_slots() {
                Some((_, total)) => cap.min(total / 4),
                None => cap,
            }
        } else {
            0
        };
        let p = self.hub.borrow().platform.clone();
        let fe = ctx.info.frontend_id;
        let rings: Vec<_> = cfg.queues().cloned().collect();
        // The persistent-grant budget is the device's: its queues share it.
        limits.persistent_grants /= rings.len().max(1);
        let mut storage = Some(storage);
        let shared = match storage.take() {
            Some(st) if rings.len() > 1 => Some(queues::Shared::new(st, rings.len())),
            st => {
                storage = st;
                None
            }
        };
        let mut channels = Vec::with_capacity(rings.len());
        for (q, ring) in rings.iter().enumerate() {
            // One queue: the storage itself, as before multi-queue; several: each its handle.
            let (st, first): (Box<dyn Storage>, u64) = match &shared {
                Some(sh) => (
                    Box::new(queues::QueueStorage::new(sh.clone(), q)),
                    queues::first_tag(q, self.next_tag),
                ),
                None => match storage.take() {
                    Some(st) => (st, self.next_tag),
                    None => return Err(DriverError::new(errno::EIO, "storage already in use")),
                },
            };
            match Channel::connect(
                p.clone(),
                fe,
                &ring.ring_refs,
                ring.event_channel,
                st,
                limits,
                first,
            ) {
                Ok(ch) => channels.push(ch),
                Err((e, st)) => {
                    // Undo: every queue connected so far lets go, the storage comes back.
                    for mut ch in channels {
                        let _ = ch.take_storage();
                    }
                    self.storage = match shared {
                        Some(sh) => {
                            drop(st);
                            queues::Shared::into_storage(sh)
                        }
                        None => Some(st),
                    };
                    let en = match e {
                        xen_platform::Error::NoSuchDomain => errno::ENODEV,
                        _ => errno::EINVAL,
                    };
                    return Err(DriverError::new(
                        en,
                        format!(
                            "mapping ring {:?} port {} (queue {q}): {e:?}",
                            ring.ring_refs, ring.event_channel
                        ),
                    ));
                }
            }
        }
        self.shared = shared;
        self.slot.borrow_mut().channels = channels;
        for (k, v) in offer.connect_keys() {
            if let Err(e) = ctx.write(k, v.as_bytes()) {
                self.detach(ctx);
                return Err(e);
            }
        }
        Ok(Progress::Done)
    }

    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        let mut slot = self.slot.borrow_mut();
        if slot.channels.is_empty() {
            return;
        }
        // Every request answered, every grant unmapped, every port closed; the storage kept
        // for a reconnect (the bus restarts a backend whose frontend comes back while
        // `online` is 1, with this same driver).
        let mut stats = ChannelStats::default();
        let mut next = self.next_tag;
        for mut ch in core::mem::take(&mut slot.channels) {
            let (storage, next_tag) = ch.take_storage();
            stats = stats.merge(&ch.stats());
            next = next.max(next_tag & ((1 << queues::QUEUE_SHIFT) - 1));
            if self.shared.is_none() {
                self.storage = Some(storage);
            }
        }
        if let Some(sh) = self.shared.take() {
            self.storage = queues::Shared::into_storage(sh);
        }
        slot.last_stats = stats;
        // Not borrowed here: the bus detaches outside of poll_into.
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            hub.retired_responses += stats.responses;
        }
        self.next_tag = next;
    }
}

impl<H: PlatformRef> Drop for VbdBack<H> {
    fn drop(&mut self) {
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            hub.devices.retain(|_, s| !Rc::ptr_eq(s, &self.slot));
        }
    }
}
