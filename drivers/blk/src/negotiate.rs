//! blkif negotiation: XenStore keys in, a negotiated configuration out. Pure code, no I/O.
//!
//! The rules are those of `xen/io/blkif.h` ("Feature and Parameter Negotiation"): the backend
//! publishes what it can do, the frontend takes the lesser of its own limits and the backend's
//! and falls back to the original protocol (one ring page, 11 segments per request, no flush,
//! no discard) for every key that is missing. Keys from FreeBSD's older multi-page protocol
//! (`max-ring-pages`/`num-ring-pages`, `max-requests`, `max-request-segments`,
//! `max-request-size`) are still read from old peers: the first two as ring sizes, the last
//! three as caps.
//!
//! The glue reads XenStore through a closure `get(key) -> Result<Option<Vec<u8>>, DriverError>`
//! (what `DeviceCtx::read`/`read_other` return), so every function here is table-tested
//! without a XenStore (tests at the bottom, vectors from `docs/XENSTORE-LAYOUT.md`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use xen_bus::DriverError;
use xen_platform::abi::{EvtchnPort, GrantRef, PAGE_SIZE};

use crate::abi::{
    blkif_ring_size, BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST, VDISK_READONLY,
    XEN_IO_PROTO_ABI_NATIVE,
};

/// XenStore key names of blkif.h (and FreeBSD blkfront's legacy ones).
pub mod keys {
    // Backend → frontend: ring and request size (published before InitWait).
    /// Largest ring a backend maps, as log2 of pages.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Deprecated: the same as a page count (FreeBSD's older protocol).
    pub const MAX_RING_PAGES: &str = "max-ring-pages";
    /// Segments per indirect request the backend accepts (absent: no indirect).
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Seed cap: requests in flight.
    pub const MAX_REQUESTS: &str = "max-requests";
    /// Seed cap: segments per request.
    pub const MAX_REQUEST_SEGMENTS: &str = "max-request-segments";
    /// Seed cap: bytes per request.
    pub const MAX_REQUEST_SIZE: &str = "max-request-size";
    // Backend → frontend: the disk (published before Connected).
    /// `BLKIF_OP_FLUSH_DISKCACHE` supported.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// `BLKIF_OP_WRITE_BARRIER` supported.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// `BLKIF_OP_DISCARD` supported.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Discard granularity in bytes.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Discard alignment offset in bytes.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// `BLKIF_DISCARD_SECURE` honoured.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// Persistent grants (never offered by xenolith; read so it is not misread).
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Disk size in 512-byte sectors.
    pub const SECTORS: &str = "sectors";
    /// `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// Logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Physical sector size in bytes.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Written by the toolstack in the backend directory: "r" or "w".
    pub const MODE: &str = "mode";
    // Frontend → backend.
    /// Grant of a one-page ring.
    pub const RING_REF: &str = "ring-ref";
    /// log2 of the ring pages (multi-page ring; refs in `ring-ref0..N-1`).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Deprecated: ring pages as a count (FreeBSD's older protocol).
    pub const NUM_RING_PAGES: &str = "num-ring-pages";
    /// The frontend's event-channel port.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// The frontend's ABI (`x86_64-abi`; absent: native).
    pub const PROTOCOL: &str = "protocol";
    /// Backend: most queues (rings) it serves per device (blkif.h "Multiple hardware
    /// queues/rings"; absent: 1).
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Frontend: queues it uses (absent: 1); with two or more, each queue's `ring-ref*` and
    /// `event-channel` are under `queue-<N>/`.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
}

/// Largest ring xenolith maps or grants: 2^4 = 16 pages (Linux's `XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Discard parameters a backend publishes with `feature-discard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscardParams {
    /// `discard-granularity` in bytes (0: the sector size).
    pub granularity: u32,
    /// `discard-alignment` in bytes.
    pub alignment: u32,
    /// `discard-secure`.
    pub secure: bool,
}

/// How the frontend makes writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Neither flush nor barrier offered: the backend writes through (blkif.h's default).
    None,
    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    FlushCache,
    /// `BLKIF_OP_WRITE_BARRIER` (used when flush is not offered).
    Barrier,
}

/// What a backend offers: published in its directory, read by the frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOffer {
    /// `max-ring-page-order` (or log2 of legacy `max-ring-pages`); 0 when absent.
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments`; 0 when absent (no indirect requests).
    pub max_indirect_segments: u32,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` and its parameters.
    pub discard: Option<DiscardParams>,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `sectors`: size in 512-byte units.
    pub sectors: u64,
    /// `sector-size`.
    pub sector_size: u32,
    /// `physical-sector-size` (defaults to `sector-size`).
    pub physical_sector_size: u32,
    /// `info`: `VDISK_*`.
    pub info: u32,
    /// Seed cap `max-requests`.
    pub max_requests: Option<u32>,
    /// Seed cap `max-request-segments`.
    pub max_request_segments: Option<u32>,
    /// Seed cap `max-request-size` (bytes).
    pub max_request_size: Option<u32>,
    /// `multi-queue-max-queues` (1 when absent: one ring per device).
    pub max_queues: u32,
}

/// A frontend's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontLimits {
    /// Largest ring it will grant, as log2 of pages (≤ [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// Segments per indirect request it can build (0: direct requests only).
    pub max_indirect_segments: u32,
    /// Requests in flight it keeps shadows for.
    pub max_requests: u32,
    /// Writes `feature-persistent = 1`: its data pages stay granted (read-write, blkif.h note
    /// 8) for the whole connection, so a backend that offers the feature maps each once.
    pub persistent: bool,
    /// Most queues (rings, each with its own event channel) it uses per device when the
    /// backend offers `multi-queue-max-queues`; 1: the single-queue keys only.
    pub max_queues: u32,
}

/// The frontend's result of negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontConfig {
    /// log2 of the ring pages.
    pub ring_page_order: u32,
    /// Requests in flight: the ring's entries, capped by both ends' `max-requests`.
    pub max_requests: u32,
    /// Segments per request: 11, or the negotiated indirect count; capped by
    /// `max-request-segments` and `max-request-size`.
    pub max_segments: u32,
    /// Requests carry more than 11 segments through `BLKIF_OP_INDIRECT`.
    pub indirect: bool,
    /// Flush or barrier.
    pub flush: FlushMode,
    /// Discard, when offered.
    pub discard: Option<DiscardParams>,
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// `info` has `VDISK_READONLY`: writes, flushes and discards are refused locally.
    pub readonly: bool,
    /// The raw `info` bits.
    pub info: u32,
    /// Both ends wrote `feature-persistent = 1`: data pages are granted once, read-write,
    /// and reused for every request of the connection.
    pub persistent: bool,
    /// Queues (rings) of the device: 1, or the `multi-queue-num-queues` the frontend wrote
    /// ([`front_queues`]). `max_requests` is per queue.
    pub queues: u32,
}

impl FrontConfig {
    /// Ring pages: `1 << ring_page_order`.
    pub fn ring_pages(&self) -> usize {
        1 << self.ring_page_order
    }

    /// Bytes one request can carry.
    pub fn max_request_bytes(&self) -> usize {
        (self.max_segments as usize).saturating_mul(PAGE_SIZE)
    }
}

/// What a frontend writes for the backend (its ring, event channel and ABI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontRing {
    /// One grant per ring page; 1, 2, 4, 8 or 16 of them.
    pub ring_refs: Vec<GrantRef>,
    /// The frontend's port (the backend binds to it).
    pub event_channel: EvtchnPort,
    /// `feature-persistent` (blkif.h, frontend features): the frontend reuses its grants.
    pub persistent: bool,
}

impl FrontRing {
    /// log2 of the ring pages.
    pub fn page_order(&self) -> u32 {
        self.ring_refs.len().trailing_zeros()
    }

    /// The keys the frontend writes (blkif.h): `ring-ref` for a one-page ring; otherwise
    /// `ring-ref0..N-1`, `ring-page-order` and the legacy `num-ring-pages` (for FreeBSD's older
    /// backends); then `event-channel` and `protocol`.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut out = self.ring_keys();
        out.extend(self.feature_keys());
        out
    }

    /// The ring's keys: `ring-ref` or `ring-ref0..N-1` + `ring-page-order` + `num-ring-pages`,
    /// and `event-channel`.
    fn ring_keys(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let [only] = self.ring_refs.as_slice() {
            out.push((keys::RING_REF.to_string(), only.to_string()));
        } else {
            for (i, r) in self.ring_refs.iter().enumerate() {
                out.push((format!("{}{}", keys::RING_REF, i), r.to_string()));
            }
            out.push((
                keys::RING_PAGE_ORDER.to_string(),
                self.page_order().to_string(),
            ));
            out.push((
                keys::NUM_RING_PAGES.to_string(),
                self.ring_refs.len().to_string(),
            ));
        }
        out.push((
            keys::EVENT_CHANNEL.to_string(),
            self.event_channel.to_string(),
        ));
        out
    }

    /// `protocol` and `feature-persistent`.
    fn feature_keys(&self) -> Vec<(String, String)> {
        alloc::vec![
            (
                keys::PROTOCOL.to_string(),
                XEN_IO_PROTO_ABI_NATIVE.to_string(),
            ),
            (
                keys::FEATURE_PERSISTENT.to_string(),
                u32::from(self.persistent).to_string(),
            ),
        ]
    }
}

/// What a backend enforces once the frontend's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackConfig {
    /// The frontend's ring and port: its only one, or queue 0's.
    pub ring: FrontRing,
    /// Queues 1.. of a frontend that uses several (`multi-queue-num-queues`), in order; the
    /// same ring size as queue 0 (`ring-page-order` is shared).
    pub more_queues: Vec<FrontRing>,
    /// Segments per request accepted: 11 direct, or up to the indirect count offered; capped by
    /// the frontend's `max-request-segments` when it wrote one.
    pub max_segments: u32,
    /// Ring entries (requests in flight), capped by the frontend's `max-requests`.
    pub max_requests: u32,
}

impl BackConfig {
    /// Every queue's ring, queue 0 first.
    pub fn queues(&self) -> impl Iterator<Item = &FrontRing> {
        core::iter::once(&self.ring).chain(self.more_queues.iter())
    }

    /// Both ends use persistent grants: the backend offered them and the frontend wrote
    /// `feature-persistent = 1` (as Linux's `connect_ring` decides).
    pub fn persistent(&self, offer: &BackendOffer) -> bool {
        offer.persistent && self.ring.persistent
    }
}

const EINVAL: i32 = 22;
const ENOENT: i32 = 2;
const ENOSYS: i32 = 38;

type Get<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, DriverError> + 'a;

/// Reads `key` as a decimal unsigned number; `None` when absent. A present but malformed value
/// is an error (a peer that writes garbage is not silently taken for an old peer).
fn read_num(get: &mut Get<'_>, key: &str) -> Result<Option<u64>, DriverError> {
    let Some(raw) = get(key)? else {
        return Ok(None);
    };
    parse_num(&raw)
        .map(Some)
        .ok_or_else(|| DriverError::new(EINVAL, format!("reading {key}: not a number")))
}

fn parse_num(raw: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(raw).ok()?.trim_end_matches('\0');
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn read_u32(get: &mut Get<'_>, key: &str) -> Result<Option<u32>, DriverError> {
    match read_num(get, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| DriverError::new(EINVAL, format!("reading {key}: out of range"))),
    }
}

/// A boolean feature key: absent or "0" is false, any other number true (as Linux's
/// `xenbus_read_unsigned(..., 0)`).
fn read_flag(get: &mut Get<'_>, key: &str) -> Result<bool, DriverError> {
    Ok(read_num(get, key)?.unwrap_or(0) != 0)
}

/// log2 of a legacy page count; only powers of two are valid rings.
fn order_of_pages(pages: u64) -> Option<u32> {
    (pages.is_power_of_two()).then(|| pages.trailing_zeros())
}

/// The ring order a backend offers: `max-ring-page-order`, else legacy `max-ring-pages`, else 0.
fn read_offered_order(get: &mut Get<'_>) -> Result<u32, DriverError> {
    if let Some(order) = read_u32(get, keys::MAX_RING_PAGE_ORDER)? {
        return Ok(order);
    }
    match read_num(get, keys::MAX_RING_PAGES)? {
        None | Some(0) => Ok(0),
        // A count that is not a power of two: use the largest power of two below it.
        Some(n) => Ok(n.ilog2()),
    }
}

impl BackendOffer {
    /// The keys a backend writes before InitWait: ring size (new and legacy form), indirect
    /// segments, and the caps FreeBSD's older frontend sets.
    pub fn ring_keys(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_queues > 1 {
            out.push((keys::MULTI_QUEUE_MAX_QUEUES, self.max_queues.to_string()));
        }
        out.push((
            keys::MAX_RING_PAGE_ORDER,
            self.max_ring_page_order.to_string(),
        ));
        out.push((
            keys::MAX_RING_PAGES,
            (1u32 << self.max_ring_page_order).to_string(),
        ));
        if self.max_indirect_segments > 0 {
            out.push((
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                self.max_indirect_segments.to_string(),
            ));
        }
        if let Some(v) = self.max_requests {
            out.push((keys::MAX_REQUESTS, v.to_string()));
        }
        if let Some(v) = self.max_request_segments {
            out.push((keys::MAX_REQUEST_SEGMENTS, v.to_string()));
        }
        if let Some(v) = self.max_request_size {
            out.push((keys::MAX_REQUEST_SIZE, v.to_string()));
        }
        out
    }

    /// The keys a backend writes before Connected: features and the disk.
    pub fn connect_keys(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        out.push((
            keys::FEATURE_FLUSH_CACHE,
            u32::from(self.flush_cache).to_string(),
        ));
        out.push((keys::FEATURE_BARRIER, u32::from(self.barrier).to_string()));
        out.push((
            keys::FEATURE_PERSISTENT,
            u32::from(self.persistent).to_string(),
        ));
        if let Some(d) = self.discard {
            out.push((keys::DISCARD_GRANULARITY, d.granularity.to_string()));
            out.push((keys::DISCARD_ALIGNMENT, d.alignment.to_string()));
            out.push((keys::DISCARD_SECURE, u32::from(d.secure).to_string()));
            out.push((keys::FEATURE_DISCARD, "1".to_string()));
        } else {
            out.push((keys::FEATURE_DISCARD, "0".to_string()));
        }
        out.push((keys::SECTORS, self.sectors.to_string()));
        out.push((keys::INFO, self.info.to_string()));
        out.push((keys::SECTOR_SIZE, self.sector_size.to_string()));
        out.push((
            keys::PHYSICAL_SECTOR_SIZE,
            self.physical_sector_size.to_string(),
        ));
        out
    }

    /// Reads the ring part of a backend's offer (at the backend's InitWait): the ring order it
    /// maps, from `max-ring-page-order` or the legacy `max-ring-pages`; 0 when neither.
    pub fn read_ring_order(
        mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>, DriverError>,
    ) -> Result<u32, DriverError> {
        read_offered_order(&mut get)
    }

    /// Reads the queues a backend serves (at its InitWait): `multi-queue-max-queues`, 1 when
    /// absent or 0.
    pub fn read_max_queues(
        mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>, DriverError>,
    ) -> Result<u32, DriverError> {
        Ok(read_u32(&mut get, keys::MULTI_QUEUE_MAX_QUEUES)?
            .unwrap_or(1)
            .max(1))
    }

    /// Reads everything a backend published (at its Connected). `sectors` is required (as
    /// Linux's blkfront requires it); every other key falls back to the original protocol.
    pub fn read(
        mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>, DriverError>,
    ) -> Result<BackendOffer, DriverError> {
        let get: &mut Get<'_> = &mut get;
        let max_ring_page_order = read_offered_order(get)?;
        let max_indirect_segments =
            read_u32(get, keys::FEATURE_MAX_INDIRECT_SEGMENTS)?.unwrap_or(0);
        let flush_cache = read_flag(get, keys::FEATURE_FLUSH_CACHE)?;
        let barrier = read_flag(get, keys::FEATURE_BARRIER)?;
        let discard = if read_flag(get, keys::FEATURE_DISCARD)? {
            Some(DiscardParams {
                granularity: read_u32(get, keys::DISCARD_GRANULARITY)?.unwrap_or(0),
                alignment: read_u32(get, keys::DISCARD_ALIGNMENT)?.unwrap_or(0),
                secure: read_flag(get, keys::DISCARD_SECURE)?,
            })
        } else {
            None
        };
        let persistent = read_flag(get, keys::FEATURE_PERSISTENT)?;
        let sectors = read_num(get, keys::SECTORS)?
            .ok_or_else(|| DriverError::new(ENOENT, "reading backend fields: sectors missing"))?;
        // A size in bytes must fit in a u64 (sectors × 512 everywhere above): a backend that
        // claims more is refused here rather than overflowing an application's arithmetic.
        if sectors > u64::MAX / 512 {
            return Err(DriverError::new(EINVAL, format!("bad sectors {sectors}")));
        }
        let sector_size = read_u32(get, keys::SECTOR_SIZE)?.unwrap_or(512);
        if sector_size < 512 || !sector_size.is_power_of_two() || sector_size as usize > PAGE_SIZE {
            return Err(DriverError::new(
                EINVAL,
                format!("bad sector-size {sector_size}"),
            ));
        }
        let physical_sector_size =
            read_u32(get, keys::PHYSICAL_SECTOR_SIZE)?.unwrap_or(sector_size);
        let info = read_u32(get, keys::INFO)?.unwrap_or(0);
        Ok(BackendOffer {
            max_ring_page_order,
            max_indirect_segments,
            flush_cache,
            barrier,
            discard,
            persistent,
            sectors,
            sector_size,
            physical_sector_size,
            info,
            max_requests: read_u32(get, keys::MAX_REQUESTS)?,
            max_request_segments: read_u32(get, keys::MAX_REQUEST_SEGMENTS)?,
            max_request_size: read_u32(get, keys::MAX_REQUEST_SIZE)?,
            max_queues: read_u32(get, keys::MULTI_QUEUE_MAX_QUEUES)?
                .unwrap_or(1)
                .max(1),
        })
    }
}

/// The ring order a frontend grants: the lesser of its limit, the backend's offer and
/// [`MAX_RING_PAGE_ORDER`].
pub fn front_ring_order(offered: u32, limits: &FrontLimits) -> u32 {
    offered
        .min(limits.max_ring_page_order)
        .min(MAX_RING_PAGE_ORDER)
}

/// The frontend's configuration from the backend's offer (read at its Connected) and the ring
/// order it granted. Every cap is applied; the result never exceeds what either end can do.
pub fn negotiate_front(
    offer: &BackendOffer,
    ring_page_order: u32,
    limits: &FrontLimits,
) -> FrontConfig {
    let mut max_requests = blkif_ring_size(1 << ring_page_order).min(limits.max_requests.max(1));
    if let Some(cap) = offer.max_requests {
        max_requests = max_requests.min(cap.max(1));
    }
    let indirect_segs = offer
        .max_indirect_segments
        .min(limits.max_indirect_segments)
        .min(BLKIF_MAX_INDIRECT_SEGMENTS as u32);
    let direct = BLKIF_MAX_SEGMENTS_PER_REQUEST as u32;
    let mut max_segments = indirect_segs.max(direct);
    if let Some(cap) = offer.max_request_segments {
        max_segments = max_segments.min(cap.max(1));
    }
    if let Some(cap) = offer.max_request_size {
        max_segments = max_segments.min(cap.checked_div(PAGE_SIZE as u32).unwrap_or(0).max(1));
    }
    let readonly = offer.info & VDISK_READONLY != 0;
    let flush = if offer.flush_cache {
        FlushMode::FlushCache
    } else if offer.barrier {
        FlushMode::Barrier
    } else {
        FlushMode::None
    };
    FrontConfig {
        ring_page_order,
        max_requests,
        max_segments,
        indirect: max_segments > direct,
        flush,
        discard: offer.discard,
        sectors: offer.sectors,
        sector_size: offer.sector_size,
        physical_sector_size: offer.physical_sector_size,
        readonly,
        info: offer.info,
        persistent: offer.persistent && limits.persistent,
        queues: front_queues(offer.max_queues, limits),
    }
}

/// The queues a frontend uses: the lesser of the backend's `multi-queue-max-queues` (1 when
/// absent), its own limit and [`MAX_QUEUES`]; at least 1.
pub fn front_queues(offered: u32, limits: &FrontLimits) -> u32 {
    offered.min(limits.max_queues).clamp(1, MAX_QUEUES)
}

/// Most queues xenolith uses or serves per device (Linux blkfront caps its `max_queues`
/// parameter at the CPUs; a frontend of ours has no reason for more than this).
pub const MAX_QUEUES: u32 = 16;

/// The keys a frontend writes for its queues (blkif.h "Multiple hardware queues/rings"): one
/// queue writes exactly [`FrontRing::keys`] (a peer without multi-queue sees nothing new);
/// two or more write `multi-queue-num-queues`, the ring order (when multi-page) at the top,
/// and each queue's `ring-ref*` and `event-channel` under `queue-<N>/` — never the toplevel
/// ones. `protocol` and `feature-persistent` are the first queue's, at the top.
pub fn front_keys(queues: &[FrontRing]) -> Vec<(String, String)> {
    let [first, ..] = queues else {
        return Vec::new();
    };
    if queues.len() == 1 {
        return first.keys();
    }
    let mut out = alloc::vec![(
        keys::MULTI_QUEUE_NUM_QUEUES.to_string(),
        queues.len().to_string(),
    )];
    for (q, ring) in queues.iter().enumerate() {
        for (k, v) in ring.ring_keys() {
            if k == keys::RING_PAGE_ORDER || k == keys::NUM_RING_PAGES {
                if q == 0 {
                    out.push((k, v));
                }
            } else {
                out.push((format!("queue-{q}/{k}"), v));
            }
        }
    }
    out.extend(first.feature_keys());
    out
}

/// The backend reads the frontend's keys (at the frontend's Initialised): the ring —
/// `ring-page-order` (or legacy `num-ring-pages`) with `ring-ref0..N-1`, or a single `ring-ref`
/// — the `event-channel`, and the `protocol`, which must be the native one (absent: native).
/// A ring larger than `offer.max_ring_page_order` is refused. Seed caps `max-requests` and
/// `max-request-segments` written by the frontend are applied. With `multi-queue-num-queues`
/// of two or more (at most `offer.max_queues`), each queue's `ring-ref*` and `event-channel`
/// are read under `queue-<N>/` and the toplevel ones are not looked at (blkif.h); one queue
/// keeps the toplevel keys.
pub fn negotiate_back(
    mut get: impl FnMut(&str) -> Result<Option<Vec<u8>>, DriverError>,
    offer: &BackendOffer,
) -> Result<BackConfig, DriverError> {
    let get: &mut Get<'_> = &mut get;
    let order = match read_u32(get, keys::RING_PAGE_ORDER)? {
        Some(o) => Some(o),
        None => match read_num(get, keys::NUM_RING_PAGES)? {
            None => None,
            Some(n) => Some(order_of_pages(n).ok_or_else(|| {
                DriverError::new(EINVAL, format!("num-ring-pages {n} is not a power of two"))
            })?),
        },
    };
    let limit = offer.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
    if let Some(o) = order.filter(|&o| o > limit) {
        return Err(DriverError::new(
            EINVAL,
            format!("ring-page-order {o} exceeds the offered {limit}"),
        ));
    }
    let queues = read_u32(get, keys::MULTI_QUEUE_NUM_QUEUES)?.unwrap_or(1);
    let most = offer.max_queues.max(1);
    if queues == 0 || queues > most {
        return Err(DriverError::new(
            EINVAL,
            format!("multi-queue-num-queues {queues}: must be 1..={most}"),
        ));
    }
    let persistent = read_flag(get, keys::FEATURE_PERSISTENT)?;
    let mut rings = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        let dir = if queues == 1 {
            String::new()
        } else {
            format!("queue-{q}/")
        };
        rings.push(read_queue(get, &dir, order, persistent)?);
    }
    if let Some(p) = get(keys::PROTOCOL)? {
        let p = core::str::from_utf8(&p)
            .unwrap_or("?")
            .trim_end_matches('\0');
        if p != XEN_IO_PROTO_ABI_NATIVE {
            return Err(DriverError::new(
                ENOSYS,
                format!("unsupported protocol {p}"),
            ));
        }
    }
    let mut rings = rings.into_iter();
    let ring = rings
        .next()
        .ok_or_else(|| DriverError::new(EINVAL, "no queue"))?;
    let pages = ring.ring_refs.len();
    let mut max_requests = blkif_ring_size(pages);
    if let Some(cap) = read_u32(get, keys::MAX_REQUESTS)? {
        max_requests = max_requests.min(cap.max(1));
    }
    let mut max_segments = offer
        .max_indirect_segments
        .min(BLKIF_MAX_INDIRECT_SEGMENTS as u32)
        .max(BLKIF_MAX_SEGMENTS_PER_REQUEST as u32);
    if let Some(cap) = read_u32(get, keys::MAX_REQUEST_SEGMENTS)? {
        max_segments = max_segments.min(cap.max(1));
    }
    Ok(BackConfig {
        ring,
        more_queues: rings.collect(),
        max_segments,
        max_requests,
    })
}

/// One queue's ring under `dir` (`""` or `queue-<N>/`): `order` pages (`None`: the single
/// page's `ring-ref`, or `ring-ref0` when that is absent) and its `event-channel`.
fn read_queue(
    get: &mut Get<'_>,
    dir: &str,
    order: Option<u32>,
    persistent: bool,
) -> Result<FrontRing, DriverError> {
    let ring_refs = match order {
        // No order key: a one-page ring under `ring-ref` (a multi-page-aware frontend may also
        // write `ring-ref0` with order 0; accept it when `ring-ref` is absent).
        None | Some(0) => {
            let single = format!("{dir}{}", keys::RING_REF);
            let r = match read_u32(get, &single)? {
                Some(r) => r,
                None => read_u32(get, &format!("{dir}ring-ref0"))?.ok_or_else(|| {
                    DriverError::new(ENOENT, format!("reading {single}: missing"))
                })?,
            };
            alloc::vec![r]
        }
        Some(o) => {
            let mut refs = Vec::with_capacity(1 << o);
            for i in 0..(1u32 << o) {
                let key = format!("{dir}{}{}", keys::RING_REF, i);
                let r = read_u32(get, &key)?
                    .ok_or_else(|| DriverError::new(ENOENT, format!("reading {key}: missing")))?;
                refs.push(r);
            }
            refs
        }
    };
    let key = format!("{dir}{}", keys::EVENT_CHANNEL);
    let event_channel = read_u32(get, &key)?
        .ok_or_else(|| DriverError::new(ENOENT, format!("reading {key}: missing")))?;
    Ok(FrontRing {
        ring_refs,
        event_channel,
        persistent,
    })
}

/// `mode` as the toolstack writes it: "r" (read-only) or "w"; anything else is refused.
pub fn parse_mode(raw: &[u8]) -> Result<bool, DriverError> {
    match core::str::from_utf8(raw)
        .unwrap_or("")
        .trim_end_matches('\0')
    {
        "r" | "ro" => Ok(true),
        "w" | "rw" | "w!" => Ok(false),
        other => Err(DriverError::new(EINVAL, format!("bad mode {other:?}"))),
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]
mod tests;
