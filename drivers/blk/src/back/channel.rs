//! blkback's data path: one connected ring, its event channel and its storage. Knows nothing
//! of XenStore.
//!
//! Every request is copied out of the ring once ([`BackRing::take_request`]), validated in
//! full, and either answered at once (`BLKIF_RSP_ERROR` / `BLKIF_RSP_EOPNOTSUPP`) or handed to
//! the storage without waiting. Requests complete in any order and are answered as they
//! complete; responses are published with push-and-check-notify.
//!
//! [`BackRing::take_request`]: xen_platform::ring::BackRing::take_request

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;

use xen_platform::abi::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use xen_platform::{Error, Events, GrantMapper, PlatformRef, MAX_MULTI_MAP};

use super::shared::{cast, PeerSeg, Persistent, SegCursor, SegPages, SharedRing};
use crate::abi::*;
use crate::storage::{BlkError, Busy, Completion, Op, Storage, SECTOR};

/// Sectors in one page: `last_sect` is at most `SECTORS_PER_PAGE - 1`.
mod decode;

use decode::scatter;

const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / SECTOR as usize) as u8;

/// What a channel enforces (from negotiation and the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Segments per request (11, or the indirect count offered).
    pub max_segments: u32,
    /// `BLKIF_OP_INDIRECT` accepted (`feature-max-indirect-segments` published).
    pub indirect: bool,
    /// `BLKIF_OP_FLUSH_DISKCACHE` offered.
    pub flush: bool,
    /// `BLKIF_OP_WRITE_BARRIER` offered.
    pub barrier: bool,
    /// `BLKIF_OP_DISCARD` offered.
    pub discard: bool,
    /// `discard-secure` offered.
    pub secure_discard: bool,
    /// The disk is read-only (`mode=r` or the storage's own flag).
    pub read_only: bool,
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes.
    pub sector_size: u32,
    /// Persistent grants negotiated (both ends wrote `feature-persistent = 1`): at most this
    /// many of the frontend's grants stay mapped; 0 when not negotiated.
    pub persistent_grants: usize,
}

/// Counters of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// Requests taken from the ring.
    pub requests: u64,
    /// Responses written.
    pub responses: u64,
    /// Requests refused at validation (ERROR or EOPNOTSUPP without reaching the storage).
    pub refused: u64,
    /// Ops handed to the storage (each part of a split request is one).
    pub submitted: u64,
    /// Most requests held by the storage at once.
    pub max_in_flight: usize,
    /// Reads and writes served in place (through persistent grants into an in-place storage:
    /// no buffer, no mapping, answered at once); each part of a split request counts.
    pub in_place: u64,
    /// Requests larger than [`PART_BYTES`], split into parts.
    pub split: u64,
    /// The parts those were split into.
    pub parts: u64,
    /// The frontend's grants mapped persistently now.
    pub persistent_maps: usize,
}

impl ChannelStats {
    /// The counters of several rings of one device as one: sums, and the largest
    /// `max_in_flight`.
    pub fn merge(&self, o: &ChannelStats) -> ChannelStats {
        ChannelStats {
            requests: self.requests.saturating_add(o.requests),
            responses: self.responses.saturating_add(o.responses),
            refused: self.refused.saturating_add(o.refused),
            submitted: self.submitted.saturating_add(o.submitted),
            max_in_flight: self.max_in_flight.max(o.max_in_flight),
            in_place: self.in_place.saturating_add(o.in_place),
            split: self.split.saturating_add(o.split),
            parts: self.parts.saturating_add(o.parts),
            persistent_maps: self.persistent_maps.saturating_add(o.persistent_maps),
        }
    }
}

/// One granted segment: page `gref`, bytes `off..off + len` of it — sectors `first..=last`,
/// checked at construction ([`Seg::new`]): `0 < len`, `off + len <= PAGE_SIZE`.
#[derive(Debug, Clone, Copy)]
struct Seg {
    gref: GrantRef,
    off: u32,
    len: u32,
}

/// [`SECTOR`] in the type of a [`Seg`]'s bounds.
const SECTOR_BYTES: u32 = SECTOR as u32;

impl Seg {
    /// Sectors `first..=last` of page `gref`; `None` unless `first <= last < SECTORS_PER_PAGE`.
    fn new(gref: GrantRef, first: u8, last: u8) -> Option<Seg> {
        if last >= SECTORS_PER_PAGE {
            return None;
        }
        let sectors = u32::from(last.checked_sub(first)?).checked_add(1)?;
        Some(Seg {
            gref,
            off: u32::from(first).checked_mul(SECTOR_BYTES)?,
            len: sectors.checked_mul(SECTOR_BYTES)?,
        })
    }
    /// All of page `gref` (an indirect page).
    const fn page(gref: GrantRef) -> Seg {
        Seg {
            gref,
            off: 0,
            len: PAGE_SIZE as u32,
        }
    }
    fn bytes(&self) -> usize {
        self.len as usize
    }
    fn sectors(&self) -> u64 {
        u64::from(self.len) / SECTOR
    }
    fn offset(&self) -> usize {
        self.off as usize
    }
}

/// A request handed to the storage.
struct Pending {
    id: u64,
    rsp_op: u8,
    /// A read's segments, written at completion (no mapping is held while the storage works).
    segs: Vec<Seg>,
    /// The data op is done (or there was none): what is left is the flush.
    flush_after: bool,
    /// Read: copy the buffer back into the pages at completion.
    is_read: bool,
    /// A barrier: nothing after it starts before it completes.
    barrier: bool,
    /// Bytes of buffer the request holds (counted in [`Channel::buffered`]).
    bytes: usize,
    /// A part of a large request: its [`Parent`] is answered, not `id` alone.
    parent: Option<u64>,
}

/// A part of a large read or write: up to [`PART_BYTES`] of its segments, started on its own
/// when its ring has the credit, so that no ring's request is copied in one long piece.
struct Part {
    parent: u64,
    read: bool,
    /// First sector of the part.
    sector: u64,
    segs: Vec<Seg>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.segs.iter().map(Seg::bytes).sum()
    }
}

/// A request split into parts: answered once, when its last part is done, with the first
/// error any part had (a part that fails makes the parts not yet started end at once).
struct Parent {
    id: u64,
    rsp_op: u8,
    /// Parts queued or in flight.
    left: usize,
    status: i16,
}

/// A validated request waiting: for the ring to drain (barrier) or for room in the storage.
struct Stalled {
    tag: u64,
    op: Op,
    /// Waits until nothing is in flight (a barrier).
    drain: bool,
}

/// Why a request is refused.
type Refusal = i16;

/// A connected blkif ring.
pub struct Channel<H: PlatformRef> {
    p: H,
    fe: DomId,
    port: EvtchnPort,
    ring: SharedRing,
    storage: Box<dyn Storage>,
    limits: Limits,
    pending: BTreeMap<u64, Pending>,
    stalled: Option<Stalled>,
    next_tag: u64,
    barrier_in_flight: bool,
    /// Bytes of data buffers held by requests in flight.
    buffered: usize,
    notify: bool,
    broken: Option<Error>,
    stats: ChannelStats,
    /// The frontend's grants kept mapped (`feature-persistent`), `None` when not negotiated.
    persistent: Option<Persistent>,
    /// The segments of the request being served (reused: no allocation per request).
    segs: Vec<PeerSeg>,
    /// Scratch of `resolve`: grants a request names that are not mapped yet.
    missing: Vec<GrantRef>,
    /// Bytes served in place since responses were last published.
    unpublished: usize,
    /// Scratch of `rw`: the request's segments, checked.
    local: Vec<Seg>,
    /// Scratch of `indirect`: the indirect pages' bytes, and the segments read from them.
    raw: Vec<u8>,
    wire: Vec<BlkifRequestSegment>,
    /// Requests taken in the current [`Channel::poll`] (a round).
    round_requests: usize,
    /// Deficit round robin: bytes this ring may still move before its next round.
    deficit: usize,
    /// A request taken from the ring (its one read) that waits for deficit to start.
    held: Option<BlkifRequest>,
    /// Parts of large requests not started yet, in order (served before new requests).
    parts: VecDeque<Part>,
    /// The requests those parts (and parts in flight) belong to, by key.
    parents: BTreeMap<u64, Parent>,
    next_parent: u64,
    /// What the last poll returned.
    busy: bool,
}

impl<H: PlatformRef> Channel<H> {
    /// Map the frontend's ring pages and bind its event channel. Tags given to the storage
    /// start at `first_tag`: a storage reused after a [`take_storage`](Self::take_storage) may
    /// still report ops of the previous connection, and their tags must not be reused.
    pub fn connect(
        p: H,
        fe: DomId,
        refs: &[GrantRef],
        fe_port: EvtchnPort,
        storage: Box<dyn Storage>,
        limits: Limits,
        first_tag: u64,
    ) -> Result<Channel<H>, (Error, Box<dyn Storage>)> {
        let mut ring = match SharedRing::map(p.get(), fe, refs) {
            Ok(r) => r,
            Err(e) => return Err((e, storage)),
        };
        let port = match p.get().bind_interdomain(fe, fe_port) {
            Ok(port) => port,
            Err(e) => {
                ring.unmap(p.get());
                return Err((e, storage));
            }
        };
        Ok(Channel {
            p,
            fe,
            port,
            ring,
            storage,
            limits,
            pending: BTreeMap::new(),
            stalled: None,
            next_tag: first_tag,
            barrier_in_flight: false,
            buffered: 0,
            notify: false,
            broken: None,
            stats: ChannelStats::default(),
            persistent: (limits.persistent_grants > 0)
                .then(|| Persistent::new(limits.persistent_grants)),
            segs: Vec::new(),
            missing: Vec::new(),
            unpublished: 0,
            local: Vec::new(),
            raw: Vec::new(),
            wire: Vec::new(),
            round_requests: 0,
            deficit: 0,
            held: None,
            parts: VecDeque::new(),
            parents: BTreeMap::new(),
            next_parent: 0,
            busy: false,
        })
    }

    /// Our end of the event channel.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        ChannelStats {
            persistent_maps: self.persistent.as_ref().map_or(0, Persistent::len),
            ..self.stats
        }
    }

    /// Why the ring stopped being served (a frontend that overflowed it), if it did.
    pub fn broken(&self) -> Option<Error> {
        self.broken
    }

    /// Requests held by the storage (or waiting for it).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The storage's event ports (for an event loop).
    pub fn storage_ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        self.storage.ports(out)
    }

    /// Do everything possible now: take completions, answer them, take and start new requests.
    /// Returns whether work remains that no event will announce (the storage holds requests
    /// and has no ports of its own): poll again soon.
    ///
    /// The port's pending bit is left alone: the event loop that waited clears the port that
    /// fired before it polls (so a polled loop pays no event-channel operation at all).
    ///
    /// `events`: when the ring is drained, ask the frontend for a notification
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). A polled loop passes false: the frontend then never
    /// notifies, and the idle loop only reads the ring.
    ///
    /// One call is one round of this ring: at most [`RING_BUDGET`] requests and
    /// [`RING_PASSES`] passes, and requests are started by deficit round robin (Shreedhar and
    /// Varghese, 1995): each round of a backlogged ring adds [`QUANTUM`] bytes of credit, and
    /// a request starts only when the credit covers what it can move ([`cost`]). So a
    /// frontend that keeps its ring full of the largest requests, or that moves `req_prod`
    /// back and forth so the final check keeps firing, gets its share of the backend and no
    /// more: the other rings, the bus and its own close are served between its rounds. A
    /// ring left with work reports it (`true`) and is served again in the next round.
    pub fn poll(&mut self, events: bool) -> bool {
        self.round_requests = 0;
        if self.backlogged() {
            // Capped: a ring blocked for other reasons (a full storage, its buffer limit)
            // does not bank credit for a burst later.
            self.deficit = self.deficit.saturating_add(QUANTUM).min(MAX_COST + QUANTUM);
        }
        let mut passes = 0usize;
        let mut more = false;
        loop {
            passes = passes.saturating_add(1);
            let mut progress = self.take_completions();
            progress |= self.retry_stalled();
            progress |= self.take_requests();
            self.flush_responses();
            if self.budget_spent() || passes >= RING_PASSES {
                // Answer what the storage finished of this round (bounded by the requests
                // held); requests may be left on the ring: no notification is asked for
                // (the frontend need not send one), the next round takes them.
                if self.take_completions() {
                    self.flush_responses();
                }
                more = true;
                break;
            }
            if progress {
                continue;
            }
            // Idle as far as the ring goes: ask for a notification, and look once more (only
            // when requests would be taken: otherwise a completion moves things on).
            if events && self.may_take() {
                if let Some(r) = self.ring.ring() {
                    if r.final_check_for_requests() {
                        continue;
                    }
                }
            }
            break;
        }
        if !self.backlogged() {
            // DRR: an idle ring keeps no credit.
            self.deficit = 0;
        }
        let mut has_ports = false;
        self.storage.ports(&mut |_| has_ports = true);
        self.busy = more || (!self.pending.is_empty() && !has_ports);
        self.busy
    }

    /// What the last [`poll`](Self::poll) returned.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Whether this round is over: its requests taken, or a request or part waits for credit.
    fn budget_spent(&self) -> bool {
        self.round_requests >= RING_BUDGET
            || self.held.is_some()
            || self.parts.front().is_some_and(|p| p.bytes() > self.deficit)
    }

    /// Whether requests wait: parts not started, one held for credit, or some on the ring.
    pub fn backlogged(&self) -> bool {
        !self.parts.is_empty()
            || self.held.is_some()
            || self
                .ring
                .ring_ref()
                .is_some_and(|r| r.has_unconsumed_requests())
    }

    fn take_completions(&mut self) -> bool {
        let mut done = Vec::new();
        self.storage.poll_completions(&mut |c| done.push(c));
        let any = !done.is_empty();
        for c in done {
            self.complete(c);
        }
        any
    }

    fn complete(&mut self, c: Completion) {
        let Some(mut pend) = self.pending.remove(&c.tag) else {
            return; // Not ours (cannot happen: tags are unique per channel).
        };
        let status = match c.result {
            Ok(()) => {
                if pend.is_read {
                    let buf = c.buf.unwrap_or_default();
                    let copied = if self.resolve(&pend.segs) {
                        SegCursor::new(self.persistent.as_ref(), &self.segs).write_from(&buf)
                            == buf.len()
                    } else {
                        scatter(self.p.get(), self.fe, &pend.segs, &buf)
                    };
                    if !copied {
                        self.finish(pend, BLKIF_RSP_ERROR);
                        return;
                    }
                }
                if pend.flush_after {
                    // The data is written; now make it durable under the same tag.
                    pend.flush_after = false;
                    pend.is_read = false;
                    let tag = c.tag;
                    self.pending.insert(tag, pend);
                    self.start(tag, Op::Flush, false);
                    return;
                }
                BLKIF_RSP_OKAY
            }
            Err(BlkError::Unsupported) => BLKIF_RSP_EOPNOTSUPP,
            Err(_) => BLKIF_RSP_ERROR,
        };
        self.finish(pend, status);
    }

    fn finish(&mut self, pend: Pending, status: i16) {
        // Never saturates: every pending request's bytes were added to `buffered`.
        self.buffered = self.buffered.saturating_sub(pend.bytes);
        if pend.barrier {
            self.barrier_in_flight = false;
        }
        self.answer(pend.id, pend.rsp_op, status, pend.parent);
    }

    /// Answer request `id`, or count a part of `parent` done (answering the parent after its
    /// last part).
    pub(super) fn answer(&mut self, id: u64, rsp_op: u8, status: i16, parent: Option<u64>) {
        let Some(key) = parent else {
            return self.respond(id, rsp_op, status);
        };
        let Some(p) = self.parents.get_mut(&key) else {
            return;
        };
        // Never saturates: a parent is removed when its last part is answered.
        p.left = p.left.saturating_sub(1);
        if status != BLKIF_RSP_OKAY && p.status == BLKIF_RSP_OKAY {
            p.status = status;
        }
        if p.left == 0 {
            if let Some(p) = self.parents.remove(&key) {
                self.respond(p.id, p.rsp_op, p.status);
            }
        }
    }

    /// Start a part of a large request (or end it at once if another part failed).
    fn start_part(&mut self, part: Part) {
        let Some(parent) = self.parents.get(&part.parent) else {
            return;
        };
        let (id, rsp_op) = (parent.id, parent.rsp_op);
        if parent.status != BLKIF_RSP_OKAY {
            let status = parent.status;
            return self.answer(id, rsp_op, status, Some(part.parent));
        }
        let len = part.bytes();
        self.local = part.segs;
        self.rw_local(
            id,
            rsp_op,
            part.read,
            part.sector,
            len,
            0,
            Some(part.parent),
        );
    }

    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        let Some(r) = self.ring.ring() else {
            return;
        };
        let rsp = BlkifResponse {
            id,
            operation,
            status,
            ..Default::default()
        };
        if r.push_response(rsp).is_ok() {
            self.stats.responses = self.stats.responses.wrapping_add(1);
            self.notify = true;
        }
    }

    fn flush_responses(&mut self) {
        self.unpublished = 0;
        if !core::mem::take(&mut self.notify) {
            return;
        }
        if let Some(r) = self.ring.ring() {
            if r.push_responses_and_check_notify() {
                // A dead peer shows up in XenStore; nothing to do about it here.
                let _ = self.p.get().notify(self.port);
            }
        }
    }

    /// Hand `op` to the storage (or keep it stalled when the storage is busy).
    fn start(&mut self, tag: u64, op: Op, drain: bool) {
        if drain && !self.pending.is_empty_except(tag) {
            self.stalled = Some(Stalled { tag, op, drain });
            return;
        }
        match self.storage.submit(tag, op) {
            Ok(()) => {
                self.stats.submitted = self.stats.submitted.wrapping_add(1);
                self.stats.max_in_flight = self.stats.max_in_flight.max(self.storage.in_flight());
            }
            Err(Busy(op)) => {
                self.stalled = Some(Stalled {
                    tag,
                    op,
                    drain: false,
                })
            }
        }
    }

    fn retry_stalled(&mut self) -> bool {
        let Some(s) = self.stalled.take() else {
            return false;
        };
        if s.drain && !self.pending.is_empty_except(s.tag) {
            self.stalled = Some(s);
            return false;
        }
        let before = self.stats.submitted;
        self.start(s.tag, s.op, false);
        self.stats.submitted != before
    }

    /// Whether new requests are taken from the ring now: not while one waits for the storage
    /// or a barrier is in flight, never again after an overflow, and not while
    /// [`MAX_BUFFERED`] bytes are held — buffers are ours (copy-once), so a frontend could
    /// otherwise make us hold ring size × 1 MiB; its requests wait on the ring instead (each
    /// is at most 1 MiB, so one always fits when nothing is in flight).
    fn may_take(&self) -> bool {
        self.stalled.is_none()
            && !self.barrier_in_flight
            && self.broken.is_none()
            && (self.buffered < MAX_BUFFERED || self.pending.is_empty())
    }

    fn take_requests(&mut self) -> bool {
        let mut any = false;
        while self.may_take() && self.round_requests < RING_BUDGET {
            // Parts of a large request first, in order, each when the credit covers it.
            if let Some(c) = self.parts.front().map(Part::bytes) {
                let Some(left) = self.deficit.checked_sub(c) else {
                    break;
                };
                let Some(part) = self.parts.pop_front() else {
                    break;
                };
                self.deficit = left;
                any = true;
                self.round_requests = self.round_requests.saturating_add(1);
                self.start_part(part);
                continue;
            }
            let req = match self.held.take() {
                Some(req) => req,
                None => {
                    let Some(r) = self.ring.ring() else { break };
                    match r.take_request() {
                        Ok(Some(req)) => req,
                        Ok(None) => break,
                        Err(e) => {
                            // RING_REQUEST_PROD_OVERFLOW: a frontend that claims more requests
                            // than the ring holds is not served any more (Linux: "Frontend
                            // provided bogus ring requests", blkback.c `__do_block_io_op`).
                            self.broken = Some(e);
                            break;
                        }
                    }
                }
            };
            let Some(left) = self.deficit.checked_sub(cost(&req)) else {
                // Read once already: it waits here, not on the ring, for the next rounds.
                self.held = Some(req);
                break;
            };
            self.deficit = left;
            any = true;
            self.stats.requests = self.stats.requests.wrapping_add(1);
            self.round_requests = self.round_requests.saturating_add(1);
            self.dispatch(&req);
            // Requests served at once (in place) are answered as we go once a batch has
            // moved PUBLISH_BYTES: the frontend refills the ring while we copy the rest, instead
            // of finding every response — and an empty ring behind them — at the end.
            if self.unpublished >= PUBLISH_BYTES {
                self.flush_responses();
            }
        }
        any
    }

    fn refuse(&mut self, id: u64, op: u8, status: Refusal) {
        self.stats.refused = self.stats.refused.wrapping_add(1);
        self.respond(id, op, status);
    }

    /// Stop: take what the storage finished, answer every other request with
    /// `BLKIF_RSP_ERROR` (the storage only holds its own buffers, so it may finish them later
    /// without touching the frontend's memory), publish, unmap every grant, close the port.
    /// Idempotent.
    pub fn disconnect(&mut self) {
        self.take_completions();
        self.stalled = None;
        if let Some(req) = self.held.take() {
            let op = if req.operation == BLKIF_OP_INDIRECT {
                cast::<BlkifRequest, BlkifRequestIndirect>(&req).indirect_op
            } else {
                req.operation
            };
            self.respond(req.id, op, BLKIF_RSP_ERROR);
        }
        let tags: Vec<u64> = self.pending.keys().copied().collect();
        for t in tags {
            if let Some(p) = self.pending.remove(&t) {
                self.finish(p, BLKIF_RSP_ERROR);
            }
        }
        // Large requests with parts not started: answered now, once.
        self.parts.clear();
        for (_, p) in core::mem::take(&mut self.parents) {
            self.respond(p.id, p.rsp_op, BLKIF_RSP_ERROR);
        }
        self.flush_responses();
        if let Some(pers) = self.persistent.as_mut() {
            pers.unmap_all(self.p.get());
        }
        self.ring.unmap(self.p.get());
        if self.port != 0 {
            let _ = self.p.get().close(self.port);
            self.port = 0;
        }
    }
}

/// What a channel holds after [`Channel::take_storage`]: nothing.
struct Detached;

impl Storage for Detached {
    fn sectors(&self) -> u64 {
        0
    }
    fn read_only(&self) -> bool {
        true
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        let _ = tag;
        Err(Busy(op))
    }
    fn poll_completions(&mut self, _done: &mut dyn FnMut(Completion)) -> usize {
        0
    }
    fn in_flight(&self) -> usize {
        0
    }
}

impl<H: PlatformRef> Channel<H> {
    /// After [`disconnect`](Self::disconnect): the storage back (for a reconnect) and the
    /// first tag the next connection must use.
    pub fn take_storage(&mut self) -> (Box<dyn Storage>, u64) {
        self.disconnect();
        let s = core::mem::replace(&mut self.storage, Box::new(Detached));
        (s, self.next_tag)
    }
}

impl<H: PlatformRef> Drop for Channel<H> {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// Most requests one ring has taken per [`Channel::poll`] (a round); then the other rings are
/// served. A round of a full 1-page ring (32 slots) fits, twice.
pub const RING_BUDGET: usize = 64;

/// Deficit round robin: the bytes of credit each round adds to a backlogged ring. A request
/// of 4 KiB starts in the round it arrives; one of 1 MiB (256 indirect segments) every 16th
/// round of its ring, so a ring of small requests beside it is served 16 times meanwhile.
pub const QUANTUM: usize = 64 << 10;

/// The most bytes of a part: a read or write larger than this is split into parts of at most
/// this many bytes (whole segments, ending on a logical block), each started on its own.
pub const PART_BYTES: usize = QUANTUM;

/// The most a request costs (the largest indirect request): a discard of a whole disk (a
/// memset of a RAM disk) waits as long as the largest read or write, not longer.
pub const MAX_COST: usize = 1 << 20;

/// What a request costs in the deficit: the bytes it can move, from its local copy's header
/// alone (an indirect request's pages are not read here), between one sector and
/// [`MAX_COST`]. Flushes and requests that will be refused cost one sector.
pub fn cost(req: &BlkifRequest) -> usize {
    let segs = |n: usize| n.saturating_mul(PAGE_SIZE);
    let bytes = match req.operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
            let n = usize::from(req.nr_segments).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
            // At most 11 × 256 sectors of 512 bytes: nothing saturates.
            req.seg
                .iter()
                .take(n)
                .map(|s| {
                    usize::from(s.last_sect.saturating_sub(s.first_sect))
                        .saturating_add(1)
                        .saturating_mul(512)
                })
                .fold(0, usize::saturating_add)
        }
        BLKIF_OP_INDIRECT => segs(usize::from(
            cast::<BlkifRequest, BlkifRequestIndirect>(req).nr_segments,
        )),
        BLKIF_OP_DISCARD => {
            let d = cast::<BlkifRequest, BlkifRequestDiscard>(req);
            usize::try_from(d.nr_sectors.saturating_mul(SECTOR)).unwrap_or(usize::MAX)
        }
        _ => 0,
    };
    let split = matches!(
        req.operation,
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_INDIRECT
    ) && bytes > PART_BYTES;
    if split {
        // Its parts are charged as they start.
        return SECTOR as usize;
    }
    bytes.clamp(SECTOR as usize, MAX_COST)
}

/// Most passes of one [`Channel::poll`] (take completions, take requests, final check).
const RING_PASSES: usize = 2 * RING_BUDGET;

/// Most bytes of data buffers a channel holds for requests in flight (8 MiB: 8 of the largest
/// indirect requests, 256 segments of a page each).
pub const MAX_BUFFERED: usize = 8 << 20;

/// Responses of in-place requests are published once this many bytes were served since the
/// last publication (and always when the ring is drained).
const PUBLISH_BYTES: usize = 64 << 10;

const DRAIN: u8 = 1;
const FLUSH_AFTER: u8 = 2;

trait EmptyExcept {
    fn is_empty_except(&self, tag: u64) -> bool;
}

impl<V> EmptyExcept for BTreeMap<u64, V> {
    fn is_empty_except(&self, tag: u64) -> bool {
        self.keys().all(|&k| k == tag)
    }
}
