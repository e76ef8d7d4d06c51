//! The world of the blkback tests: dom0 as the toolstack (`xen-toolstack`, our xenstored), a
//! storage domain running `BlkBack` on its `Bus`, and guests whose frontends are written by
//! hand here ([`RawFront`]): they grant pages, build a ring with `FrontRing`, write the ring
//! keys and push raw requests — hostile ones included.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use xen_blk::abi::*;
use xen_blk::back::{BackOptions, BlkBack, DiskSpec};
use xen_blk::storage::{Busy, Completion, Features, MemDisk, Op, Storage};
use xen_bus::store::client::Store;
use xen_bus::{Bus, BusConfig, BusEvent, DomId};
use xen_platform::ring::FrontRing;
use xen_platform::{Events, GrantRef, Grants, PageRun, Pages, PAGE_SIZE};
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Guest, GuestClient, Timeouts, Toolstack, Vbd};

pub const LIMIT: Duration = Duration::from_secs(10);

/// Sectors of every test disk (1 MiB).
pub const DISK_SECTORS: u64 = 2048;

/// Shared view of a [`Gate`]'s state.
#[derive(Default)]
pub struct GateCtl {
    /// Completions are held until opened.
    pub closed: bool,
    /// Release held completions newest first.
    pub reverse: bool,
    /// Every op submitted, in order: (tag, kind, sector).
    pub log: Vec<(u64, &'static str, u64)>,
    /// Most ops held at once.
    pub max_held: usize,
    pub held: VecDeque<Completion>,
}

/// A storage that holds completions (to keep requests in flight, reorder them, and watch the
/// order ops reach the disk).
pub struct Gate {
    pub inner: MemDisk,
    pub ctl: Rc<RefCell<GateCtl>>,
}

impl Storage for Gate {
    fn sectors(&self) -> u64 {
        self.inner.sectors()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        let (kind, sector) = match &op {
            Op::Read { sector, .. } => ("read", *sector),
            Op::Write { sector, .. } => ("write", *sector),
            Op::Flush => ("flush", 0),
            Op::Discard { sector, .. } => ("discard", *sector),
        };
        self.ctl.borrow_mut().log.push((tag, kind, sector));
        self.inner.submit(tag, op)?;
        let mut ctl = self.ctl.borrow_mut();
        self.inner.poll_completions(&mut |c| ctl.held.push_back(c));
        ctl.max_held = ctl.max_held.max(ctl.held.len());
        Ok(())
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut ctl = self.ctl.borrow_mut();
        if ctl.closed {
            return 0;
        }
        let mut n = 0;
        while let Some(c) = if ctl.reverse {
            ctl.held.pop_back()
        } else {
            ctl.held.pop_front()
        } {
            done(c);
            n += 1;
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.ctl.borrow().held.len()
    }
}

/// Which storage a test disk gets.
#[derive(Clone)]
pub enum DiskKind {
    Mem,
    Gate(Rc<RefCell<GateCtl>>),
    /// Made by the test.
    Factory(MakeStorage),
}

/// A test's own storage factory.
pub type MakeStorage = Rc<dyn Fn(&DiskSpec) -> Box<dyn Storage>>;

pub struct World {
    pub ts: Toolstack,
    pub sd: Guest,
    pub bus: Bus<xen_store_host::OwnedRing<Domain>>,
    pub back: BlkBack<Rc<Domain>>,
    pub events: Vec<BusEvent>,
    pub t0: Instant,
    pub specs: Rc<RefCell<Vec<DiskSpec>>>,
}

impl World {
    pub fn new(opts: BackOptions, kind: DiskKind) -> World {
        let ts = Toolstack::new().unwrap();
        ts.set_timeouts(Timeouts::all(Duration::from_secs(5)));
        let sd = ts
            .create_domain("storage", DomainConfig::default().driver_domain())
            .unwrap();
        let specs: Rc<RefCell<Vec<DiskSpec>>> = Rc::default();
        let sp = specs.clone();
        let back = BlkBack::new(Rc::new(sd.domain().clone()), opts, move |spec| {
            sp.borrow_mut().push(spec.clone());
            let mut m = MemDisk::new(DISK_SECTORS);
            for (i, b) in m.bytes_mut().iter_mut().enumerate() {
                *b = (i / 512) as u8 ^ 0x5a;
            }
            let m = m.with_read_only(spec.params.ends_with(":ro-storage"));
            Ok(match &kind {
                DiskKind::Mem => Box::new(m) as Box<dyn Storage>,
                DiskKind::Gate(ctl) => Box::new(Gate {
                    inner: m,
                    ctl: ctl.clone(),
                }),
                DiskKind::Factory(f) => f(spec),
            })
        });
        let cfg = BusConfig {
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(3),
            resync_interval: Duration::from_millis(100),
            ..BusConfig::default()
        };
        let mut bus = Bus::with_config(sd.xs_client().unwrap(), sd.domid(), cfg);
        back.register(&mut bus).unwrap();
        World {
            ts,
            sd,
            bus,
            back,
            events: Vec::new(),
            t0: Instant::now(),
            specs,
        }
    }

    pub fn guest(&self, name: &str) -> Guest {
        self.ts
            .create_domain(name, DomainConfig::default())
            .unwrap()
    }

    pub fn poll(&mut self) {
        self.bus.poll(self.t0.elapsed()).unwrap();
        while let Some(e) = self.bus.take_event() {
            self.events.push(e);
        }
        let _ = self.back.poll();
    }

    #[track_caller]
    pub fn run_until(&mut self, what: &str, mut cond: impl FnMut(&mut World) -> bool) {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            self.poll();
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        panic!("{what}: not reached; events {:#?}", self.events);
    }

    pub fn read(&self, path: &str) -> Option<String> {
        self.ts
            .with_xs(|xs| xs.try_read(path).unwrap())
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn be_node(&self, fe: DomId) -> String {
        format!("backend/vbd/{fe}/51712")
    }

    pub fn be_path(&self, fe: DomId) -> String {
        format!("/local/domain/{}/backend/vbd/{fe}/51712", self.sd.domid())
    }

    pub fn add_disk(&mut self, g: &Guest, vbd: impl FnOnce(Vbd) -> Vbd) {
        let v = vbd(Vbd::new(g.domid(), self.sd.domid(), "xvda", "disk0"));
        self.ts.add_vbd(&v).unwrap();
    }

    pub fn backend_state(&self, fe: DomId) -> Option<String> {
        self.read(&format!("{}/state", self.be_path(fe)))
    }

    pub fn closed(&self, fe: DomId) -> bool {
        let n = self.be_node(fe);
        self.events
            .iter()
            .any(|e| matches!(e, BusEvent::Closed { nodename, .. } if *nodename == n))
    }
}

/// How a raw frontend sets up its ring.
#[derive(Clone, Copy, Debug)]
pub enum RingStyle {
    /// `ring-ref` (one page).
    Single,
    /// `ring-page-order` + `ring-ref0..N` (+ `num-ring-pages`, as negotiate writes it).
    Order(u32),
    /// Only the legacy `num-ring-pages` + `ring-ref0..N`.
    Legacy(u32),
    /// `multi-queue-num-queues` = N and N one-page rings under `queue-<i>/` (queue 0 is the
    /// front's own ring; the others are in [`RawFront::queues`]).
    Queues(usize),
}

/// Queue 1.. of a multi-queue [`RawFront`].
pub struct QueueRing {
    pub ring: FrontRing<BlkifRequest, BlkifResponse>,
    _run: PageRun,
    pub port: u32,
    pub responses: Vec<BlkifResponse>,
}

/// A frontend written by hand in the guest.
pub struct RawFront {
    pub dom: Domain,
    pub fe: DomId,
    pub be: DomId,
    pub xs: GuestClient,
    pub ring: FrontRing<BlkifRequest, BlkifResponse>,
    ring_pages: PageRun,
    pub port: u32,
    pub front_path: String,
    pub responses: Vec<BlkifResponse>,
    /// Queues 1.. ([`RingStyle::Queues`]).
    pub queues: Vec<QueueRing>,
}

impl RawFront {
    /// Grant the ring, write its keys (and the state `Initialised`). Does not wait for
    /// InitWait: call after it if the test wants the usual order.
    pub fn start(g: &Guest, be: DomId, style: RingStyle) -> RawFront {
        RawFront::start_with(g, g.xs_client().unwrap(), be, style)
    }

    /// [`start`](Self::start) with the guest's client (one per guest).
    pub fn start_with(g: &Guest, mut xs: GuestClient, be: DomId, style: RingStyle) -> RawFront {
        let dom = g.domain().clone();
        let pages = match style {
            RingStyle::Single | RingStyle::Queues(_) => 1,
            RingStyle::Order(o) | RingStyle::Legacy(o) => 1usize << o,
        };
        let run = dom.alloc(pages).unwrap();
        let mut refs = Vec::new();
        for i in 0..pages {
            let f = dom.frame(run.page(i)).unwrap();
            refs.push(dom.grant(be, f, false).unwrap());
        }
        // SAFETY: `run` is ours, zeroed, `pages` pages long, and lives as long as the ring
        // (both in this struct; the run is never freed while the ring is used).
        let ring = unsafe { FrontRing::new(run.addr, pages * PAGE_SIZE) }.unwrap();
        let port = dom.alloc_unbound(be).unwrap();
        let front_path = format!("/local/domain/{}/device/vbd/51712", g.domid());
        let mut w = |k: &str, v: String| {
            xs.write(&format!("{front_path}/{k}"), v.as_bytes())
                .unwrap()
        };
        match style {
            RingStyle::Single => w("ring-ref", refs[0].to_string()),
            RingStyle::Order(o) => {
                for (i, r) in refs.iter().enumerate() {
                    w(&format!("ring-ref{i}"), r.to_string());
                }
                w("ring-page-order", o.to_string());
            }
            RingStyle::Legacy(_) => {
                for (i, r) in refs.iter().enumerate() {
                    w(&format!("ring-ref{i}"), r.to_string());
                }
                w("num-ring-pages", pages.to_string());
            }
            RingStyle::Queues(_) => {}
        }
        let mut queues = Vec::new();
        if let RingStyle::Queues(n) = style {
            w("multi-queue-num-queues", n.to_string());
            w("queue-0/ring-ref", refs[0].to_string());
            w("queue-0/event-channel", port.to_string());
            for q in 1..n {
                let run = dom.alloc(1).unwrap();
                let f = dom.frame(run.addr).unwrap();
                let r = dom.grant(be, f, false).unwrap();
                // SAFETY: as above: our zeroed page, kept with the ring.
                let ring = unsafe { FrontRing::new(run.addr, PAGE_SIZE) }.unwrap();
                let qport = dom.alloc_unbound(be).unwrap();
                w(&format!("queue-{q}/ring-ref"), r.to_string());
                w(&format!("queue-{q}/event-channel"), qport.to_string());
                queues.push(QueueRing {
                    ring,
                    _run: run,
                    port: qport,
                    responses: Vec::new(),
                });
            }
        } else {
            w("event-channel", port.to_string());
        }
        w("protocol", "x86_64-abi".into());
        w("state", "3".into());
        RawFront {
            dom,
            fe: g.domid(),
            be,
            xs,
            ring,
            ring_pages: run,
            port,
            front_path,
            responses: Vec::new(),
            queues,
        }
    }

    /// Push requests on queue `q` (1..) and notify.
    pub fn push_q(&mut self, q: usize, reqs: &[BlkifRequest]) {
        let qr = &mut self.queues[q - 1];
        for r in reqs {
            qr.ring.push_request(*r).unwrap();
        }
        if qr.ring.push_requests_and_check_notify() {
            let _ = self.dom.notify(qr.port);
        }
    }

    /// The response to `id` on queue `q` (1..), if it came.
    pub fn response_q(&mut self, q: usize, id: u64) -> Option<BlkifResponse> {
        let qr = &mut self.queues[q - 1];
        while let Some(r) = qr.ring.take_response().unwrap() {
            qr.responses.push(r);
        }
        let i = qr.responses.iter().position(|r| r.id == id)?;
        Some(qr.responses.remove(i))
    }

    /// A data page of ours granted to the backend, filled with `fill`.
    pub fn page(&self, fill: u8, readonly: bool) -> (PageRun, GrantRef) {
        let run = self.dom.alloc(1).unwrap();
        self.write_page(&run, 0, &[fill; PAGE_SIZE]);
        let f = self.dom.frame(run.addr).unwrap();
        let r = self.dom.grant(self.be, f, readonly).unwrap();
        (run, r)
    }

    pub fn write_page(&self, run: &PageRun, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= run.len());
        // SAFETY: inside our own run; the backend only reads it while a request is in flight.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), run.addr.as_ptr().add(off), bytes.len())
        }
    }

    pub fn read_page(&self, run: &PageRun) -> Vec<u8> {
        let mut v = vec![0; run.len()];
        // SAFETY: as above; read after the response.
        unsafe {
            std::ptr::copy_nonoverlapping(run.addr.as_ptr().cast_const(), v.as_mut_ptr(), v.len())
        }
        v
    }

    /// Push requests (as raw entries) and notify.
    pub fn push(&mut self, reqs: &[BlkifRequest]) {
        for r in reqs {
            self.ring.push_request(*r).unwrap();
        }
        if self.ring.push_requests_and_check_notify() {
            let _ = self.dom.notify(self.port);
        }
    }

    /// Take every response there is.
    pub fn collect(&mut self) -> usize {
        let mut n = 0;
        while let Some(r) = self.ring.take_response().unwrap() {
            self.responses.push(r);
            n += 1;
        }
        n
    }

    /// The response to `id` (removed), if it came.
    pub fn response(&mut self, id: u64) -> Option<BlkifResponse> {
        self.collect();
        let i = self.responses.iter().position(|r| r.id == id)?;
        Some(self.responses.remove(i))
    }

    /// Write our state.
    pub fn set_state(&mut self, state: u32) {
        let p = format!("{}/state", self.front_path);
        self.xs.write(&p, state.to_string().as_bytes()).unwrap();
    }

    pub fn ring_pages(&self) -> &PageRun {
        &self.ring_pages
    }
}

/// A read or write request of one segment per page.
pub fn rw(op: u8, id: u64, sector: u64, segs: &[(GrantRef, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (i, &(gref, first, last)) in segs.iter().enumerate().take(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
        r.seg[i] = BlkifRequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad0: [0; 2],
        };
    }
    r
}

/// The bytes of a C union member as a `blkif_request` ring entry.
pub fn as_request<T: Copy>(v: &T) -> BlkifRequest {
    assert!(std::mem::size_of::<T>() <= std::mem::size_of::<BlkifRequest>());
    let mut r = BlkifRequest::default();
    // SAFETY: T fits in BlkifRequest (asserted), both are plain-data repr(C) blkif types.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (v as *const T).cast::<u8>(),
            (&mut r as *mut BlkifRequest).cast::<u8>(),
            std::mem::size_of::<T>(),
        )
    };
    r
}

/// The test disk's byte at `offset` (see `World::new`).
pub fn disk_byte(offset: usize) -> u8 {
    (offset / 512) as u8 ^ 0x5a
}

/// An indirect request of `nr` segments whose entries are in the pages `pages`.
pub fn indirect_req(op: u8, id: u64, sector: u64, nr: u16, pages: &[GrantRef]) -> BlkifRequest {
    let mut ind = BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        ..Default::default()
    };
    ind.indirect_grefs[..pages.len()].copy_from_slice(pages);
    as_request(&ind)
}

/// Segment entries as the bytes of an indirect page.
pub fn seg_bytes(segs: &[(GrantRef, u8, u8)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(g, a, b) in segs {
        v.extend_from_slice(&g.to_le_bytes());
        v.extend_from_slice(&[a, b, 0, 0]);
    }
    v
}
