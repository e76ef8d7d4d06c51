//! The blkfront data path: the ring, the shadow table of request ids, grants, responses.
//!
//! Knows nothing of XenStore: the glue hands it a granted ring ([`RingSetup`]) and the
//! negotiated [`FrontConfig`].
//!
//! A backend is not trusted. Every response is checked before anything is done with it, as
//! Linux's `blkif_interrupt`/`blkif_get_final_status` do since "xen-blkfront: don't trust the
//! backend response data" (2021): the id must name a request in flight (else an unknown or
//! duplicate id), the operation must be that request's (its `indirect_op` for an indirect
//! request), the status one of `BLKIF_RSP_*`, and
//! the response producer may not claim more responses than requests are outstanding
//! (`RING_RESPONSE_PROD_OVERFLOW`, checked by `FrontRing::take_response`). Any violation fails
//! the device: every outstanding request completes with [`BlkError::Failed`], grants are
//! ended, nothing panics and nothing indexes outside a table.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::time::Duration;

use xen_platform::ring::FrontRing;
use xen_platform::{
    Clock, DomId, Error, Events, EvtchnPort, GrantRef, Grants, PageRun, Pages, PlatformRef,
    Scheduler, PAGE_SIZE,
};

use super::{BlkError, Buffer, Completion, Rejected, Request};
use crate::abi::{
    indirect_pages, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BlkifResponse, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use crate::negotiate::{FlushMode, FrontConfig, MAX_QUEUES};

/// blkif sector numbers, `first_sect` and `last_sect` are in 512-byte units (blkif.h: we do
/// not write `feature-large-sector-size`).
mod build;
mod complete;

const WIRE_SECTOR: usize = 512;

/// How blocking calls wait for responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin on the ring (lowest latency; the event channel is never waited on).
    Polled,
    /// Ask for a notification (`RING_FINAL_CHECK_FOR_RESPONSES`) and wait on the event channel
    /// with `Events::wait`.
    Event,
}

/// The ring pages the frontend granted and the port it allocated (before the backend's
/// Connected).
#[derive(Debug)]
pub(crate) struct RingSetup {
    pub run: PageRun,
    pub refs: Vec<GrantRef>,
    pub port: EvtchnPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush(u8),
    Discard { count512: u64, secure: bool },
}

#[derive(Debug)]
struct OpState {
    tag: u64,
    internal: bool,
    kind: Kind,
    buf: Option<Buffer>,
    sector512: u64,
    parts: u32,
    next_part: u32,
    in_flight: u32,
    result: Result<(), BlkError>,
    /// Grants of the buffer the backend did not let go of: the buffer is kept.
    stuck: Vec<GrantRef>,
}

#[derive(Debug, Default)]
struct Shadow {
    in_use: bool,
    op: usize,
    operation: u8,
    /// Every grant of this request: data pages, then indirect pages.
    refs: Vec<GrantRef>,
    /// Data grants (the first `data_refs` of `refs`).
    data_refs: usize,
    /// Each data segment: where its bytes are in the operation's buffer and which page
    /// carried them.
    segs: Vec<Seg>,
    /// The bounce pages holding this request's indirect descriptors, with their grants.
    indirect: Vec<(u32, GrantRef)>,
}

/// One data segment of a request in flight.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// The bounce page that carried it (index in [`BouncePool`]), or `None`: the
    /// application's own page, granted for this request only.
    bounce: Option<u32>,
    /// Byte offset of the segment in the operation's buffer.
    at: usize,
    /// Bytes (a multiple of 512, at most a page).
    len: usize,
    /// The grant the request names.
    gref: GrantRef,
}

/// Pages of ours that carry request data in place of the application's memory, so that no
/// page of the application's stays shared with a backend once its request completed
/// (XSA-396/403: a backend is not trusted with memory beyond the request). Used for every
/// segment with persistent grants (then each page is granted once, read-write, for the
/// connection: blkif.h note 8), for every segment when the toolstack marks the backend
/// untrusted (`trusted = 0`), and for a segment shorter than a page (the rest of the page is
/// never exposed). Linux blkfront does the same since XSA-403 ("bounce" with persistent grants
/// or an untrusted backend). Pages are reused last in, first out, so a backend's LRU of
/// persistent mappings keeps hitting the same ones (blkif.h, feature-persistent).
#[derive(Debug, Default)]
struct BouncePool {
    /// Index = page id; `None` once a page went to quarantine (a backend kept it mapped).
    pages: Vec<Option<BouncePage>>,
    /// Ids of allocated pages not carrying a segment now (last in, first out).
    free: Vec<u32>,
    /// Pages allocated (`Some` in `pages`).
    live: usize,
    /// Most pages allocated at once.
    cap: usize,
}

#[derive(Debug)]
struct BouncePage {
    run: PageRun,
    /// Its persistent grant (kept for the connection), with persistent grants.
    gref: Option<GrantRef>,
}

impl BouncePool {
    /// Pages that can be handed out now or allocated.
    fn available(&self) -> usize {
        self.free.len() + self.cap.saturating_sub(self.live)
    }
}

/// An operation finished (completion not yet handed out).
#[derive(Debug)]
pub(crate) struct Done {
    pub internal: bool,
    pub completion: Completion,
}

/// The most pages blkfront keeps granted persistently per device: Linux blkback's default
/// `max_persistent_grants` (drivers/block/xen-blkback/blkback.c, 1056).
pub const PERSISTENT_PAGES_MAX: usize = 1056;

/// One ring of a device (blkif.h multi-queue: queue `<N>` of `multi-queue-num-queues`; a
/// device without multi-queue has one), with its event channel and the request ids it owns.
struct Queue {
    ring: FrontRing<BlkifRequest, BlkifResponse>,
    run: Option<PageRun>,
    refs: Vec<GrantRef>,
    port: Option<EvtchnPort>,
    /// Shadow ids of this queue: `base .. base + slots` of the device's table. A response on
    /// this ring must name one of them.
    base: u32,
    free_ids: Vec<u32>,
}

/// The data path of one connected device.
pub(crate) struct DataPath<H: PlatformRef> {
    plat: H,
    backend: DomId,
    handle: u16,
    pub cfg: FrontConfig,
    pub mode: WaitMode,
    /// Its rings; emptied when the connection ends (their pages are gone).
    queues: Vec<Queue>,
    /// Shadow entries per queue (the ring's size, capped by `max-requests`).
    slots: u32,
    /// The queue the next request part goes to first (round robin).
    next_queue: usize,
    shadow: Vec<Shadow>,
    ops: Vec<Option<OpState>>,
    free_ops: Vec<usize>,
    queue: VecDeque<usize>,
    pub done: VecDeque<Done>,
    /// Memory a backend still maps: grants retried by every poll; pages freed once ended.
    quarantine: Vec<(Vec<GrantRef>, Option<PageRun>)>,
    /// Why the device failed (a misbehaving backend); `None` while healthy.
    pub failure: Option<&'static str>,
    pub connected: bool,
    /// The toolstack trusts the backend (`trusted`, default 1, as libxl writes it): the
    /// application's whole pages may be granted for the length of a request.
    trusted: bool,
    /// Pages that carry data instead of the application's (see [`BouncePool`]).
    bounce: BouncePool,
    /// Parked (see [`park`](Self::park)): operations wait for the next connection until this
    /// time of the platform's clock.
    parked_until: Option<Duration>,
    /// Operations issued again on this connection, and on the ones before it.
    reissued: u64,
}

/// Looks at the ring in a polled `wait` before yielding the CPU (a few microseconds).
const POLL_SPINS: u32 = 4096;

impl<H: PlatformRef> core::fmt::Debug for DataPath<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DataPath")
            .field("cfg", &self.cfg)
            .field("queues", &self.queues.len())
            .field("connected", &self.connected)
            .field("failure", &self.failure)
            .finish()
    }
}

/// Why building a ring request stopped.
enum BuildErr {
    /// Out of grant entries or pages for now: try again when requests complete.
    Later(Error),
    /// This operation cannot be issued.
    Op(BlkError),
}

impl<H: PlatformRef> DataPath<H> {
    /// A data path over `setups`, one ring per queue (all of one size, `cfg.queues` of them).
    pub fn new(
        plat: H,
        backend: DomId,
        handle: u16,
        setups: Vec<RingSetup>,
        mut cfg: FrontConfig,
        mode: WaitMode,
        trusted: bool,
    ) -> Result<Self, (BlkError, Vec<RingSetup>)> {
        let mut rings = Vec::with_capacity(setups.len());
        for setup in &setups {
            // SAFETY: the run is `len()` bytes of our own zeroed pages, granted to the
            // backend only, referenced by nothing else, and kept (in its `Queue`) until the
            // ring is dropped in `release_ring`, which empties `queues` first.
            match unsafe { FrontRing::new(setup.run.addr, setup.run.len()) } {
                Ok(r) => rings.push(r),
                Err(e) => return Err((BlkError::Platform(e), setups)),
            }
        }
        let Some(size) = rings.iter().map(FrontRing::size).min() else {
            return Err((BlkError::Platform(Error::Invalid), setups));
        };
        let slots = cfg.max_requests.min(size).max(1);
        cfg.queues = rings.len() as u32;
        let n = slots as usize * rings.len();
        let mut shadow = Vec::with_capacity(n);
        shadow.resize_with(n, Shadow::default);
        let queues = rings
            .into_iter()
            .zip(setups)
            .enumerate()
            .map(|(q, (ring, setup))| {
                let base = q as u32 * slots;
                Queue {
                    ring,
                    run: Some(setup.run),
                    refs: setup.refs,
                    port: Some(setup.port),
                    base,
                    free_ids: (base..base + slots).rev().collect(),
                }
            })
            .collect();
        let cap = bounce_cap(plat.get().grant_refs(), n, &cfg);
        Ok(DataPath {
            plat,
            backend,
            handle,
            cfg,
            mode,
            queues,
            slots,
            next_queue: 0,
            shadow,
            ops: Vec::new(),
            free_ops: Vec::new(),
            queue: VecDeque::new(),
            done: VecDeque::new(),
            quarantine: Vec::new(),
            failure: None,
            connected: true,
            trusted,
            bounce: BouncePool {
                cap,
                ..BouncePool::default()
            },
            parked_until: None,
            reissued: 0,
        })
    }

    /// Take over what a previous connection of the device left: completions the application
    /// has not taken yet, memory a backend still maps (kept in quarantine until it lets go,
    /// never dropped), and the operations it parked, issued again here in their order, split
    /// to this connection's request size. Each is checked against this disk as a new request
    /// is: one that no longer fits completes with that error. A disk that shrank, became
    /// read-only or changed its block size meanwhile is not the disk the operations were
    /// meant for: the device fails and so do they — a write is never issued to a disk that
    /// shrank below it.
    pub fn take_over(&mut self, mut old: DataPath<H>) {
        self.done.append(&mut old.done);
        self.quarantine.append(&mut old.quarantine);
        self.reissued += old.reissued;
        if !old.parked() {
            old.shutdown(BlkError::Failed);
            self.done.append(&mut old.done);
            return;
        }
        let (was, now) = (&old.cfg, &self.cfg);
        let changed = if now.sectors < was.sectors {
            Some("the disk shrank while the device reconnected")
        } else if now.readonly && !was.readonly {
            Some("the disk became read-only while the device reconnected")
        } else if now.sector_size != was.sector_size {
            Some("the disk's block size changed while the device reconnected")
        } else {
            None
        };
        if let Some(why) = changed {
            old.shutdown(BlkError::Failed);
            self.done.append(&mut old.done);
            self.fail(why);
            return;
        }
        old.parked_until = None;
        for opi in core::mem::take(&mut old.queue) {
            let Some(mut op) = old.ops.get_mut(opi).and_then(Option::take) else {
                continue;
            };
            let req = match op.kind {
                Kind::Read => Request::Read {
                    sector: op.sector512,
                    buf: op.buf.take().expect("a read has its buffer"),
                },
                Kind::Write => Request::Write {
                    sector: op.sector512,
                    buf: op.buf.take().expect("a write has its buffer"),
                },
                Kind::Flush(_) => Request::Flush,
                Kind::Discard { count512, secure } => Request::Discard {
                    sector: op.sector512,
                    count: count512,
                    secure,
                },
            };
            self.reissued += 1;
            if let Err(r) = self.admit(op.tag, req, op.internal, true) {
                self.done.push_back(Done {
                    internal: op.internal,
                    completion: Completion {
                        tag: op.tag,
                        result: Err(r.error),
                        buf: r.buf,
                    },
                });
            }
        }
    }

    /// Operations issued again from a previous connection, over the device's life.
    pub fn reissued(&self) -> u64 {
        self.reissued
    }

    /// The first queue's event channel.
    pub fn port(&self) -> Option<EvtchnPort> {
        self.queues.first().and_then(|q| q.port)
    }

    /// Every queue's event channel.
    pub fn ports(&self) -> impl Iterator<Item = EvtchnPort> + '_ {
        self.queues.iter().filter_map(|q| q.port)
    }

    /// The queue that owns shadow id `id`.
    fn queue_of(&self, id: u32) -> usize {
        (id / self.slots.max(1)) as usize
    }

    /// The queue for the next request part: round robin over those with a free id and ring
    /// slot. With `WRITE_BARRIER` everything goes to queue 0: a barrier orders the requests
    /// of its own ring only (blkif.h), so spreading them would lose the order it promises.
    fn pick_queue(&mut self) -> Option<usize> {
        let n = if self.cfg.flush == FlushMode::Barrier {
            self.queues.len().min(1)
        } else {
            self.queues.len()
        };
        for k in 0..n {
            let q = (self.next_queue + k) % n;
            let queue = &self.queues[q];
            if !queue.free_ids.is_empty() && !queue.ring.is_full() {
                self.next_queue = (q + 1) % n;
                return Some(q);
            }
        }
        None
    }

    /// Shadow ids not in use (every queue's).
    fn free_id_count(&self) -> usize {
        self.queues.iter().map(|q| q.free_ids.len()).sum()
    }

    fn p(&self) -> &H::P {
        self.plat.get()
    }

    /// Bytes per ring request.
    pub fn max_request_bytes(&self) -> usize {
        self.cfg.max_request_bytes()
    }

    /// Logical sector size.
    pub fn sector_size(&self) -> u32 {
        self.cfg.sector_size
    }

    /// Size in 512-byte sectors (blkif's `sectors`).
    pub fn sectors(&self) -> u64 {
        self.cfg.sectors
    }

    fn outstanding(&self) -> usize {
        self.ops.len() - self.free_ops.len()
    }

    /// Operations not yet handed out by `deliver` (queued, on the ring, or completed).
    pub fn in_flight(&self) -> usize {
        self.outstanding() + self.done.iter().filter(|d| !d.internal).count()
    }

    /// Queue a request (see [`super::BlockDevice::submit`]).
    pub fn submit(&mut self, tag: u64, req: Request, internal: bool) -> Result<(), Rejected> {
        self.admit(tag, req, internal, false)
    }

    /// Queue a request: a new one, or (`again`) one parked on a previous connection, which
    /// the ring's size does not limit.
    fn admit(
        &mut self,
        tag: u64,
        req: Request,
        internal: bool,
        again: bool,
    ) -> Result<(), Rejected> {
        let (kind, sector, buf) = match req {
            Request::Read { sector, buf } => (Kind::Read, sector, Some(buf)),
            Request::Write { sector, buf } => (Kind::Write, sector, Some(buf)),
            Request::Flush => match self.cfg.flush {
                FlushMode::FlushCache => (Kind::Flush(BLKIF_OP_FLUSH_DISKCACHE), 0, None),
                FlushMode::Barrier => (Kind::Flush(BLKIF_OP_WRITE_BARRIER), 0, None),
                FlushMode::None => (Kind::Flush(0), 0, None),
            },
            Request::Discard {
                sector,
                count,
                secure: s,
            } => (
                Kind::Discard {
                    count512: count,
                    secure: s,
                },
                sector,
                None,
            ),
        };
        let reject = |error, buf| Err(Rejected { error, buf });
        // While parked, requests queue for the next connection (checked again there).
        if !self.connected && self.parked_until.is_none() {
            let e = if self.failure.is_some() {
                BlkError::Failed
            } else {
                BlkError::NotConnected
            };
            return reject(e, buf);
        }
        if self.cfg.readonly && kind != Kind::Read {
            return reject(BlkError::ReadOnly, buf);
        }
        if !again && self.outstanding() >= self.shadow.len().max(1) * 2 {
            return reject(BlkError::Busy, buf);
        }
        let ss = self.cfg.sector_size as usize;
        let (count, parts) = match (kind, &buf) {
            (Kind::Read | Kind::Write, Some(b)) => {
                if b.is_empty() || !(b.addr().as_ptr() as usize).is_multiple_of(PAGE_SIZE) {
                    return reject(BlkError::BadBuffer, buf);
                }
                if !b.len().is_multiple_of(ss) {
                    return reject(BlkError::Misaligned, buf);
                }
                let per = self.max_request_bytes().max(PAGE_SIZE);
                ((b.len() / WIRE_SECTOR) as u64, b.len().div_ceil(per) as u32)
            }
            (Kind::Discard { count512, secure }, _) => {
                // BLKIF_DISCARD_SECURE only where the backend offers discard-secure.
                if self.cfg.discard.is_none_or(|d| secure && !d.secure) {
                    return reject(BlkError::Unsupported, buf);
                }
                (count512, 1)
            }
            (Kind::Flush(0), _) => {
                // Neither flush nor barrier: the backend writes through; nothing to do.
                self.done.push_back(Done {
                    internal,
                    completion: Completion {
                        tag,
                        result: Ok(()),
                        buf: None,
                    },
                });
                return Ok(());
            }
            _ => (0, 1),
        };
        // Range and alignment, in 512-byte sectors: whole logical blocks inside the disk.
        if !matches!(kind, Kind::Flush(_)) {
            let per_block = self.wire_per_sector();
            if count == 0 || (sector | count) & (per_block - 1) != 0 {
                return reject(BlkError::Misaligned, buf);
            }
            if sector
                .checked_add(count)
                .is_none_or(|e| e > self.cfg.sectors)
            {
                return reject(BlkError::OutOfRange, buf);
            }
        }
        let op = OpState {
            tag,
            internal,
            kind,
            buf,
            sector512: sector,
            parts,
            next_part: 0,
            in_flight: 0,
            result: Ok(()),
            stuck: Vec::new(),
        };
        let i = match self.free_ops.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        };
        self.queue.push_back(i);
        self.issue();
        Ok(())
    }

    fn wire_per_sector(&self) -> u64 {
        (u64::from(self.cfg.sector_size) / WIRE_SECTOR as u64).max(1)
    }

    /// Put queued parts on the rings while ids and slots last; notify each ring that says so.
    fn issue(&mut self) {
        let mut pushed = 0u32; // bit q: requests were pushed on queue q (at most 16 queues)
        while let Some(&opi) = self.queue.front() {
            if !self.connected {
                break;
            }
            let Some(q) = self.pick_queue() else { break };
            let Some(id) = self.queues[q].free_ids.pop() else {
                break;
            };
            match self.build(opi, id) {
                Ok(req) => {
                    // Cannot fail: the ring is not full (pick_queue).
                    let _ = self.queues[q].ring.push_request(req);
                    pushed |= 1 << q;
                    let op = self.ops[opi].as_mut().expect("queued op exists");
                    op.next_part += 1;
                    op.in_flight += 1;
                    if op.next_part >= op.parts {
                        self.queue.pop_front();
                    }
                }
                Err(BuildErr::Later(e)) => {
                    self.queues[q].free_ids.push(id);
                    if self.free_id_count() == self.shadow.len() {
                        // Nothing in flight will free anything: fail this operation.
                        self.queue.pop_front();
                        self.fail_op(opi, BlkError::Platform(e));
                        continue;
                    }
                    break;
                }
                Err(BuildErr::Op(e)) => {
                    self.queues[q].free_ids.push(id);
                    self.queue.pop_front();
                    self.fail_op(opi, e);
                }
            }
        }
        for q in 0..self.queues.len() {
            if pushed & (1 << q) != 0 && self.queues[q].ring.push_requests_and_check_notify() {
                self.notify(q);
            }
        }
    }

    fn notify(&mut self, q: usize) {
        if let Some(port) = self.queues.get(q).and_then(|q| q.port) {
            if self.p().notify(port) == Err(Error::PeerGone) {
                self.fail("the backend closed its event channel");
            }
        }
    }

    /// An op that never reached the ring (or whose remaining parts cannot be issued): record
    /// the error; complete it when nothing of it is in flight.
    fn fail_op(&mut self, opi: usize, e: BlkError) {
        if let Some(op) = self.ops[opi].as_mut() {
            op.result = Err(e);
            op.parts = op.next_part;
            if op.in_flight == 0 {
                self.finish(opi);
            }
        }
    }

    fn end_refs(&self, refs: &[GrantRef], failed: &mut Vec<GrantRef>) {
        if refs.is_empty() {
            return;
        }
        self.p().end_batch(refs, &mut |r, _| failed.push(r));
    }

    /// Wait for a response (see [`super::BlockDevice::wait`]).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), BlkError> {
        if self.parked_until.is_some() {
            // Nothing can arrive before the next connection; the bus brings it.
            self.p().block(Some(timeout.min(Duration::from_millis(10))));
            return Ok(());
        }
        if !self.connected {
            return Err(if self.failure.is_some() {
                BlkError::Failed
            } else {
                BlkError::NotConnected
            });
        }
        let mut ports = [0 as EvtchnPort; MAX_QUEUES as usize];
        let mut n = 0;
        for p in self.ports() {
            if let Some(slot) = ports.get_mut(n) {
                *slot = p;
                n += 1;
            }
        }
        match self.mode {
            WaitMode::Event if n > 0 => {
                // Every ring asks for a notification before we sleep (no `||`: each must).
                let mut ready = false;
                for q in &mut self.queues {
                    ready |= q.ring.final_check_for_responses();
                }
                if ready {
                    return Ok(());
                }
                match self.p().wait(&ports[..n], Some(timeout)) {
                    Ok(port) => {
                        self.p().clear(port);
                        Ok(())
                    }
                    Err(Error::Timeout) => Ok(()),
                    Err(Error::PeerGone) => {
                        self.fail("the backend closed its event channel");
                        Err(BlkError::Failed)
                    }
                    Err(e) => Err(BlkError::Platform(e)),
                }
            }
            _ => {
                // Polled: spin on the response producer (no hypercall, no syscall) for a
                // while, then give the CPU away once, so a backend sharing it runs.
                for _ in 0..POLL_SPINS {
                    if self
                        .queues
                        .iter()
                        .any(|q| q.ring.has_unconsumed_responses())
                    {
                        return Ok(());
                    }
                    core::hint::spin_loop();
                }
                self.p().yield_now();
                Ok(())
            }
        }
    }

    /// Run one request to completion (blocking helpers). `Ok(buffer)` on success.
    pub fn run(&mut self, req: Request, timeout: Duration) -> Result<Option<Buffer>, BlkError> {
        const TAG: u64 = u64::MAX;
        if let Err(r) = self.submit(TAG, req, true) {
            if let Some(b) = r.buf {
                let _ = self.free_buffer(b);
            }
            return Err(r.error);
        }
        let deadline = self.p().now().saturating_add(timeout);
        loop {
            self.progress();
            if let Some(i) = self.done.iter().position(|d| d.internal) {
                let d = self.done.remove(i).expect("index found");
                return match d.completion.result {
                    Ok(()) => Ok(d.completion.buf),
                    Err(e) => {
                        if let Some(b) = d.completion.buf {
                            let _ = self.free_buffer(b);
                        }
                        Err(e)
                    }
                };
            }
            let now = self.p().now();
            if now >= deadline {
                return Err(BlkError::Timeout);
            }
            self.wait((deadline - now).min(Duration::from_millis(100)))?;
        }
    }

    /// Hand out completions; internal ones (of a blocking call that timed out) are dropped.
    pub fn deliver(&mut self, f: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(d) = self.done.pop_front() {
            if d.internal {
                if let Some(b) = d.completion.buf {
                    let _ = self.free_buffer(b);
                }
                continue;
            }
            f(d.completion);
            n += 1;
        }
        n
    }

    /// A buffer of fresh pages of ours (zeroed by the platform).
    pub fn alloc_buffer(&mut self, bytes: usize) -> Result<Buffer, BlkError> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let run = self.p().alloc(pages).map_err(BlkError::Platform)?;
        Ok(Buffer::from_run(run, bytes))
    }

    /// Take back a buffer: its pages go back to the platform (no grant of them outlives a
    /// request, so none is live here).
    pub fn free_buffer(&mut self, buf: Buffer) -> Result<(), BlkError> {
        if let Some(run) = buf.into_run() {
            self.free_run(run);
        }
        Ok(())
    }
}

/// Most bounce pages (data and indirect descriptor pages) of one device: a request's worth per
/// ring slot (blkif.h note 9:
/// RING_SIZE × BLKIF_MAX_SEGMENTS_PER_REQUEST), but no more than Linux blkback keeps mapped
/// persistently ([`PERSISTENT_PAGES_MAX`]) — pages past that would only pin our memory — nor a
/// quarter of the grant references the platform has (`grant_refs`), so other devices and
/// rings still get theirs; and never fewer than one request of the most segments needs.
fn bounce_cap(grant_refs: Option<(usize, usize)>, slots: usize, cfg: &FrontConfig) -> usize {
    let mut cap = (slots * BLKIF_MAX_SEGMENTS_PER_REQUEST).min(PERSISTENT_PAGES_MAX);
    if let Some((_, total)) = grant_refs {
        cap = cap.min(total / 4);
    }
    let most = cfg.max_segments as usize;
    cap.max(
        most + if cfg.indirect {
            indirect_pages(most)
        } else {
            0
        },
    )
}

/// Grant `pages` fresh ring pages to `backend` and allocate an unbound port for it.
pub(crate) fn setup_ring<H: PlatformRef>(
    plat: &H,
    backend: DomId,
    order: u32,
) -> Result<RingSetup, Error> {
    let p = plat.get();
    let pages = 1usize << order;
    let run = p.alloc(pages)?;
    let mut refs = vec![];
    for i in 0..pages {
        let granted = p
            .frame(run.page(i))
            .and_then(|f| p.grant(backend, f, false));
        match granted {
            Ok(r) => refs.push(r),
            Err(e) => {
                p.end_batch(&refs, &mut |_, _| {});
                let _ = p.free(run);
                return Err(e);
            }
        }
    }
    match p.alloc_unbound(backend) {
        Ok(port) => Ok(RingSetup { run, refs, port }),
        Err(e) => {
            p.end_batch(&refs, &mut |_, _| {});
            let _ = p.free(run);
            Err(e)
        }
    }
}

/// `n` rings of `1 << order` pages each ([`setup_ring`]), one per queue; if one cannot be
/// granted, those already made are released and the error returned.
pub(crate) fn setup_rings<H: PlatformRef>(
    plat: &H,
    backend: DomId,
    order: u32,
    n: u32,
) -> Result<Vec<RingSetup>, Error> {
    let mut rings = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match setup_ring(plat, backend, order) {
            Ok(s) => rings.push(s),
            Err(e) => {
                release_rings(plat, rings);
                return Err(e);
            }
        }
    }
    Ok(rings)
}

/// [`release_ring`] of each.
pub(crate) fn release_rings<H: PlatformRef>(plat: &H, rings: Vec<RingSetup>) {
    for s in rings {
        release_ring(plat, s);
    }
}

/// Undo a [`setup_ring`] that never became a [`DataPath`].
/// [`release_ring`] after this domain resumed as a new one: the port is not ours any more
/// (not closed) and the grants are gone with the old grant table (ending them only frees
/// the refs).
pub(crate) fn release_ring_after_resume<H: PlatformRef>(plat: &H, s: RingSetup) {
    release(plat, s, false)
}

pub(crate) fn release_ring<H: PlatformRef>(plat: &H, s: RingSetup) {
    release(plat, s, true)
}

fn release<H: PlatformRef>(plat: &H, s: RingSetup, close_port: bool) {
    let p = plat.get();
    if close_port {
        let _ = p.close(s.port);
    }
    let mut failed = 0;
    p.end_batch(&s.refs, &mut |_, _| failed += 1);
    if failed == 0 {
        let _ = p.free(s.run);
    } else {
        let _leaked = s.run; // never freed: not ours to reuse
    }
}
