//! The harness of the blkfront tests: the simulator, our xenstored and `xen-toolstack`
//! (libxl's nodes, `add_vbd`); the guest runs blkfront on its XenBus; the backend is a
//! hand-written raw blkback in a thread (dom0 or a storage domain) that maps the ring with
//! `GrantMapper::map_multi`, answers with `xen_platform::ring::BackRing` and keeps the disk
//! in a `Vec` — honest, or hostile in the ways [`Behaviour`] lists.
#![allow(dead_code)]

use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_blk::abi::*;
use xen_blk::back::channel::ChannelStats;
use xen_blk::back::{BackOptions, BlkBack, DeviceReport};
use xen_blk::front::{
    BlkDevice, Blkfront, BlockDevice, Completion, DeviceState, Request, WaitMode, DEFAULT_LIMITS,
};
use xen_blk::negotiate::{negotiate_back, BackendOffer, FrontLimits};
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::store::client::Store;
use xen_bus::{Bus, BusConfig, DriverError};
use xen_platform::ring::BackRing;
use xen_platform::{
    Clock, Console, CopyPtr, DomId, Error, Events, EvtchnPort, GrantCopy, GrantMapper, GrantRef,
    Grants, Mapping, MultiMapping, PageRun, Pages, Result as PResult, Scheduler, ShutdownReason,
    XenPfn, PAGE_SIZE,
};
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Guest, Timeouts, Toolstack, Vbd};

pub const XVDA: &str = "device/vbd/51712";
pub const LIMIT: Duration = Duration::from_secs(10);
/// blkfront's reconnect timeout in these tests.
pub const RECONNECT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// A platform that counts grant ends.

/// The guest's platform with counters around `Grants::end` / `end_batch`.
#[derive(Debug)]
pub struct Counting {
    pub dom: Domain,
    pub end_batch_calls: AtomicUsize,
    pub end_calls: AtomicUsize,
    pub grants: AtomicUsize,
    /// Grants made read-only (blkif.h note 8: none once persistent grants are negotiated).
    pub readonly_grants: AtomicUsize,
    /// Every frame the guest ever granted: what a backend could have read or written.
    pub granted_frames: Mutex<std::collections::BTreeSet<XenPfn>>,
}

impl Counting {
    pub fn new(dom: Domain) -> Rc<Counting> {
        Rc::new(Counting {
            dom,
            end_batch_calls: AtomicUsize::new(0),
            end_calls: AtomicUsize::new(0),
            grants: AtomicUsize::new(0),
            readonly_grants: AtomicUsize::new(0),
            granted_frames: Mutex::new(Default::default()),
        })
    }
    pub fn batches(&self) -> usize {
        self.end_batch_calls.load(Ordering::SeqCst)
    }
}

impl Events for Counting {
    fn alloc_unbound(&self, remote: DomId) -> PResult<EvtchnPort> {
        self.dom.alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, port: EvtchnPort) -> PResult<EvtchnPort> {
        self.dom.bind_interdomain(remote, port)
    }
    fn notify(&self, port: EvtchnPort) -> PResult<()> {
        self.dom.notify(port)
    }
    fn close(&self, port: EvtchnPort) -> PResult<()> {
        Events::close(&self.dom, port)
    }
    fn mask(&self, port: EvtchnPort) -> PResult<()> {
        self.dom.mask(port)
    }
    fn unmask(&self, port: EvtchnPort) -> PResult<()> {
        self.dom.unmask(port)
    }
    fn is_pending(&self, port: EvtchnPort) -> bool {
        self.dom.is_pending(port)
    }
    fn clear(&self, port: EvtchnPort) -> bool {
        self.dom.clear(port)
    }
    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> PResult<EvtchnPort> {
        self.dom.wait(ports, timeout)
    }
}

impl Grants for Counting {
    fn grant(&self, domid: DomId, frame: XenPfn, readonly: bool) -> PResult<GrantRef> {
        self.grants.fetch_add(1, Ordering::SeqCst);
        if readonly {
            self.readonly_grants.fetch_add(1, Ordering::SeqCst);
        }
        self.granted_frames.lock().unwrap().insert(frame);
        self.dom.grant(domid, frame, readonly)
    }
    fn end(&self, gref: GrantRef) -> PResult<()> {
        self.end_calls.fetch_add(1, Ordering::SeqCst);
        self.dom.end(gref)
    }
    fn end_batch(&self, refs: &[GrantRef], failed: &mut dyn FnMut(GrantRef, Error)) -> usize {
        self.end_batch_calls.fetch_add(1, Ordering::SeqCst);
        self.dom.end_batch(refs, failed)
    }
    fn grant_refs(&self) -> Option<(usize, usize)> {
        self.dom.grant_refs()
    }
}

impl GrantMapper for Counting {
    fn map(&self, domid: DomId, gref: GrantRef, readonly: bool) -> PResult<Mapping> {
        self.dom.map(domid, gref, readonly)
    }
    fn unmap(&self, m: Mapping) -> PResult<()> {
        self.dom.unmap(m)
    }
    fn map_multi(&self, domid: DomId, refs: &[GrantRef], ro: bool) -> PResult<MultiMapping> {
        self.dom.map_multi(domid, refs, ro)
    }
    fn unmap_multi(&self, m: MultiMapping) -> PResult<()> {
        self.dom.unmap_multi(m)
    }
    fn copy(&self, ops: &[GrantCopy], status: &mut [PResult<()>]) -> PResult<()> {
        let _: Option<CopyPtr> = None;
        self.dom.copy(ops, status)
    }
}

impl Pages for Counting {
    fn alloc(&self, pages: usize) -> PResult<PageRun> {
        self.dom.alloc(pages)
    }
    fn free(&self, run: PageRun) -> PResult<()> {
        self.dom.free(run)
    }
    fn frame(&self, addr: NonNull<u8>) -> PResult<XenPfn> {
        self.dom.frame(addr)
    }
}

impl Console for Counting {
    fn write(&self, bytes: &[u8]) {
        Console::write(&self.dom, bytes)
    }
}

impl Clock for Counting {
    fn now(&self) -> Duration {
        self.dom.now()
    }
}

impl Scheduler for Counting {
    fn yield_now(&self) {
        self.dom.yield_now()
    }
    fn block(&self, timeout: Option<Duration>) {
        self.dom.block(timeout)
    }
    fn shutdown(&self, reason: ShutdownReason) -> PResult<bool> {
        self.dom.shutdown(reason)
    }
}

// ---------------------------------------------------------------------------------------
// The raw backend.

/// How the test backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Correctly, each request as it comes.
    Honest,
    /// Correctly, but only once `n` requests are waiting: all `n` in one push.
    Batch(usize),
    /// Takes requests, never answers.
    Stall,
    /// Answers the first request with id 9999.
    UnknownId,
    /// Waits for two requests, answers the first one twice.
    DuplicateId,
    /// Answers with status 7.
    GarbageStatus,
    /// Moves `rsp_prod` 1000 ahead.
    ProdOverflow,
    /// Correctly, but keeps the first request's first data page mapped after answering
    /// (until the frontend closes).
    KeepDataMapped,
    /// Correctly, but keeps the first indirect request's first indirect page mapped after
    /// answering (until the frontend closes).
    KeepIndirectMapped,
    /// Correctly, but before serving each request writes 0xee over every data page it was
    /// ever given that it can still map (a backend abusing what it keeps mapped, XSA-396).
    Scribble,
}

/// What the backend saw of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub operation: u8,
    /// The data operation (= `operation` unless indirect).
    pub data_op: u8,
    pub segments: usize,
    pub sector: u64,
    pub bytes: usize,
}

/// The backend's XenStore keys: before InitWait and before Connected.
#[derive(Debug, Clone)]
pub struct BackKeys {
    pub ring: Vec<(String, String)>,
    pub connect: Vec<(String, String)>,
}

impl BackKeys {
    pub fn from_offer(o: &BackendOffer) -> BackKeys {
        let s = |v: Vec<(&'static str, String)>| {
            v.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Vec<_>>()
        };
        BackKeys {
            ring: s(o.ring_keys()),
            connect: s(o.connect_keys()),
        }
    }
    pub fn raw(ring: &[(&str, &str)], connect: &[(&str, &str)]) -> BackKeys {
        let s = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        BackKeys {
            ring: s(ring),
            connect: s(connect),
        }
    }
}

/// A modern backend's offer: 16-page ring, 256 indirect segments, flush, discard, 16 MiB.
pub fn modern_offer() -> BackendOffer {
    BackendOffer {
        max_ring_page_order: 4,
        max_indirect_segments: 256,
        flush_cache: true,
        barrier: false,
        discard: Some(xen_blk::negotiate::DiscardParams {
            granularity: 4096,
            alignment: 0,
            secure: false,
        }),
        persistent: false,
        sectors: 32768,
        sector_size: 512,
        physical_sector_size: 512,
        info: 0,
        max_requests: None,
        max_request_segments: None,
        max_request_size: None,
        max_queues: 1,
    }
}

pub struct Backend {
    pub stop: Arc<AtomicBool>,
    pub disk: Arc<Mutex<Vec<u8>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Pages the backend mapped the ring with.
    pub ring_pages: Arc<AtomicUsize>,
    /// Requests taken so far.
    pub taken: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Pages [`Behaviour::Scribble`] managed to write after their request was answered.
    pub scribbled: Arc<AtomicUsize>,
    pub handle: Option<JoinHandle<std::result::Result<(), String>>>,
}

impl Backend {
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn finish(&mut self) -> std::result::Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take() {
            Some(h) => h.join().unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn req_bytes(r: &BlkifRequest) -> [u8; 112] {
    let mut b = [0u8; 112];
    b[0] = r.operation;
    b[1] = r.nr_segments;
    b[2..4].copy_from_slice(&r.handle.to_le_bytes());
    b[8..16].copy_from_slice(&r.id.to_le_bytes());
    b[16..24].copy_from_slice(&r.sector_number.to_le_bytes());
    for (i, s) in r.seg.iter().enumerate() {
        let o = 24 + i * 8;
        b[o..o + 4].copy_from_slice(&s.gref.to_le_bytes());
        b[o + 4] = s.first_sect;
        b[o + 5] = s.last_sect;
    }
    b
}

/// The operation a response carries: an indirect request's `indirect_op` (Linux blkback).
fn rsp_op(r: &BlkifRequest) -> u8 {
    if r.operation == BLKIF_OP_INDIRECT {
        req_bytes(r)[1]
    } else {
        r.operation
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

struct Serve {
    dom: Domain,
    fe: DomId,
    /// Persistent grants in use (offered, and the frontend wrote feature-persistent=1): the
    /// frontend grants every page read-write (blkif.h note 8).
    persistent: bool,
    disk: Arc<Mutex<Vec<u8>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Every data grant a request named.
    grefs: std::cell::RefCell<std::collections::BTreeSet<GrantRef>>,
}

impl Serve {
    /// Write 0xee over every data page named before that can still be mapped writable;
    /// returns how many.
    fn scribble(&self) -> usize {
        let mut n = 0;
        for &g in self.grefs.borrow().iter() {
            if let Ok(m) = self.dom.map(self.fe, g, false) {
                // SAFETY: one mapped page of the frontend's, written as plain bytes (the
                // frontend must cope with whatever a backend writes there).
                unsafe { std::ptr::write_bytes(m.addr.as_ptr(), 0xee, PAGE_SIZE) };
                self.dom.unmap(m).unwrap();
                n += 1;
            }
        }
        n
    }

    /// Copy between a granted page and the disk.
    fn xfer(&self, gref: GrantRef, first: u8, last: u8, at: &mut usize, write: bool) -> bool {
        if first > last || last >= 8 {
            return false;
        }
        self.grefs.borrow_mut().insert(gref);
        let m = match self.dom.map(self.fe, gref, write) {
            Ok(m) => m,
            Err(_) => return false,
        };
        let off = first as usize * 512;
        let len = (last - first + 1) as usize * 512;
        let mut disk = self.disk.lock().unwrap();
        let ok = *at + len <= disk.len();
        if ok {
            // SAFETY: the mapping is one page, `off + len <= PAGE_SIZE`; the frontend does not
            // touch a buffer while it is granted for a request.
            let page = unsafe { std::slice::from_raw_parts_mut(m.addr.as_ptr(), PAGE_SIZE) };
            if write {
                disk[*at..*at + len].copy_from_slice(&page[off..off + len]);
            } else {
                page[off..off + len].copy_from_slice(&disk[*at..*at + len]);
            }
            *at += len;
        }
        drop(disk);
        self.dom.unmap(m).unwrap();
        ok
    }

    /// Carry out one request; returns its status.
    fn handle(&self, r: &BlkifRequest) -> i16 {
        let b = req_bytes(r);
        let mut seen = Seen {
            operation: r.operation,
            data_op: r.operation,
            segments: 0,
            sector: r.sector_number,
            bytes: 0,
        };
        let status = match r.operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let write = r.operation == BLKIF_OP_WRITE;
                let mut at = r.sector_number as usize * 512;
                let n = r.nr_segments as usize;
                seen.segments = n;
                let mut ok = n <= 11 && n > 0;
                for s in r.seg.iter().take(n.min(11)) {
                    ok &= self.xfer(s.gref, s.first_sect, s.last_sect, &mut at, write);
                }
                seen.bytes = at - r.sector_number as usize * 512;
                if ok {
                    BLKIF_RSP_OKAY
                } else {
                    BLKIF_RSP_ERROR
                }
            }
            BLKIF_OP_INDIRECT => {
                let op = b[1];
                let n = u16_at(&b, 2) as usize;
                let sector = u64_at(&b, 16);
                seen.data_op = op;
                seen.segments = n;
                seen.sector = sector;
                let pages = n.div_ceil(512);
                let mut segs = Vec::new();
                let mut ok = pages <= 8 && n > 0;
                for p in 0..pages.min(8) {
                    let gref = u32_at(&b, 28 + p * 4);
                    // Indirect pages are granted read-only (read-write with persistent
                    // grants): a writable map must fail.
                    if !self.persistent {
                        assert!(self.dom.map(self.fe, gref, false).is_err());
                    }
                    let m = match self.dom.map(self.fe, gref, true) {
                        Ok(m) => m,
                        Err(_) => {
                            ok = false;
                            continue;
                        }
                    };
                    // SAFETY: one mapped page, read only.
                    let page = unsafe { std::slice::from_raw_parts(m.addr.as_ptr(), PAGE_SIZE) };
                    for i in 0..(n - p * 512).min(512) {
                        let e = &page[i * 8..i * 8 + 8];
                        segs.push((u32_at(e, 0), e[4], e[5]));
                    }
                    self.dom.unmap(m).unwrap();
                }
                let write = op == BLKIF_OP_WRITE;
                let mut at = sector as usize * 512;
                for (g, f, l) in segs {
                    ok &= self.xfer(g, f, l, &mut at, write);
                }
                seen.bytes = at - sector as usize * 512;
                if ok {
                    BLKIF_RSP_OKAY
                } else {
                    BLKIF_RSP_ERROR
                }
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER => BLKIF_RSP_OKAY,
            BLKIF_OP_DISCARD => {
                let sector = u64_at(&b, 16);
                let count = u64_at(&b, 24);
                seen.sector = sector;
                seen.bytes = count as usize * 512;
                let mut disk = self.disk.lock().unwrap();
                let (s, e) = (sector as usize * 512, (sector + count) as usize * 512);
                if e <= disk.len() {
                    disk[s..e].fill(0);
                    BLKIF_RSP_OKAY
                } else {
                    BLKIF_RSP_ERROR
                }
            }
            _ => BLKIF_RSP_ERROR,
        };
        self.seen.lock().unwrap().push(seen);
        status
    }
}

/// Where the backend runs.
pub struct Setup {
    pub ts: Toolstack,
    pub guest: Guest,
    /// The backend domain (dom0 or a storage domain).
    pub back: Domain,
    pub storage: Option<Guest>,
    pub plat: Rc<Counting>,
    pub bus: Bus<xen_store_host::OwnedRing<Domain>>,
    pub front: Blkfront<Rc<Counting>>,
    pub t0: Instant,
    pub backend_path: String,
    pub frontend_path: String,
}

pub fn bus_cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(2),
        resync_interval: Duration::from_millis(50),
        ..BusConfig::default()
    }
}

impl Setup {
    /// A guest with blkfront (in `mode`), a vbd added by the toolstack, served by dom0
    /// (`storage_domain: false`) or by a storage domain.
    pub fn new(mode: WaitMode, storage_domain: bool, read_only: bool) -> Setup {
        Self::with_limits(mode, storage_domain, read_only, DEFAULT_LIMITS)
    }

    /// As [`Setup::new`], with blkfront's own limits.
    pub fn with_limits(
        mode: WaitMode,
        storage_domain: bool,
        read_only: bool,
        limits: FrontLimits,
    ) -> Setup {
        Self::with_vbd(mode, storage_domain, limits, |v| {
            if read_only {
                v.read_only()
            } else {
                v
            }
        })
    }

    /// As [`Setup::with_limits`], with the vbd as `vbd` makes it (read-only, untrusted, ...).
    pub fn with_vbd(
        mode: WaitMode,
        storage_domain: bool,
        limits: FrontLimits,
        vbd: impl FnOnce(Vbd) -> Vbd,
    ) -> Setup {
        Self::with_sim(
            xen_sim::Config::default(),
            mode,
            storage_domain,
            limits,
            vbd,
            RECONNECT,
        )
    }

    /// As [`Setup::with_vbd`], on a simulated hypervisor with limits `sim`.
    pub fn with_sim(
        sim: xen_sim::Config,
        mode: WaitMode,
        storage_domain: bool,
        limits: FrontLimits,
        vbd: impl FnOnce(Vbd) -> Vbd,
        reconnect_timeout: Duration,
    ) -> Setup {
        let ts = Toolstack::with_config(xen_toolstack::ToolstackConfig {
            sim,
            ..Default::default()
        })
        .unwrap();
        ts.set_timeouts(Timeouts::all(Duration::from_secs(5)));
        let guest = ts.create_domain("guest", DomainConfig::default()).unwrap();
        let storage = storage_domain.then(|| {
            ts.create_domain("storage", DomainConfig::default().driver_domain())
                .unwrap()
        });
        let back = match &storage {
            Some(s) => s.domain().clone(),
            None => ts.dom0().clone(),
        };
        let vbd = vbd(Vbd::new(guest.domid(), back.id(), "xvda", "/disk.img"));
        let dev = ts.add_vbd(&vbd).unwrap();
        let plat = Counting::new(guest.domain().clone());
        let mut bus = Bus::with_config(guest.xs_client().unwrap(), guest.domid(), bus_cfg());
        let front = Blkfront::new(plat.clone())
            .with_limits(limits)
            .with_mode(mode)
            .with_timeout(Duration::from_secs(5))
            .with_reconnect_timeout(reconnect_timeout);
        front.register(&mut bus).unwrap();
        Setup {
            backend_path: dev.backend_path(),
            frontend_path: dev.frontend_path(),
            ts,
            guest,
            back,
            storage,
            plat,
            bus,
            front,
            t0: Instant::now(),
        }
    }

    /// Start the raw backend thread.
    pub fn backend(&self, keys: BackKeys, disk_bytes: usize, b: Behaviour) -> Backend {
        self.backend_on(keys, Arc::new(Mutex::new(vec![0u8; disk_bytes])), b)
    }

    /// Start the raw backend thread on `disk` (a disk another backend served before).
    pub fn backend_on(&self, keys: BackKeys, disk: Arc<Mutex<Vec<u8>>>, b: Behaviour) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ring_pages = Arc::new(AtomicUsize::new(0));
        let taken = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(b));
        let scribbled = Arc::new(AtomicUsize::new(0));
        let scr2 = scribbled.clone();
        let mut xs = self.ts.dom0_client().unwrap();
        let dom = self.back.clone();
        let fe = self.guest.domid();
        let (bp, fp) = (self.backend_path.clone(), self.frontend_path.clone());
        let (stop2, disk2, seen2, rp2, taken2, beh2) = (
            stop.clone(),
            disk.clone(),
            seen.clone(),
            ring_pages.clone(),
            taken.clone(),
            behaviour.clone(),
        );
        let handle = std::thread::spawn(move || -> std::result::Result<(), String> {
            let e = |x: &dyn std::fmt::Debug| format!("{x:?}");
            for (k, v) in &keys.ring {
                xs.write(&format!("{bp}/{k}"), v.as_bytes())
                    .map_err(|x| e(&x))?;
            }
            xs.write(&format!("{bp}/state"), b"2").map_err(|x| e(&x))?;
            let end = Instant::now() + LIMIT;
            loop {
                if stop2.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let st = xs.try_read(&format!("{fp}/state")).map_err(|x| e(&x))?;
                if st.as_deref() == Some(b"3") {
                    break;
                }
                if Instant::now() > end {
                    return Err("frontend never Initialised".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut offer = modern_offer();
            offer.max_ring_page_order = 4;
            // A backend that offers several queues accepts them, but serves queue 0 only:
            // requests the frontend puts on the others are never answered.
            if let Some((_, v)) = keys
                .ring
                .iter()
                .find(|(k, _)| k == "multi-queue-max-queues")
            {
                offer.max_queues = v.parse().unwrap_or(1);
            }
            let cfg = negotiate_back(
                |k| {
                    xs.try_read(&format!("{fp}/{k}"))
                        .map_err(|x| DriverError::new(5, format!("{x}")))
                },
                &offer,
            )
            .map_err(|x| e(&x))?;
            let refs = cfg.ring.ring_refs.clone();
            rp2.store(refs.len(), Ordering::SeqCst);
            let map = dom.map_multi(fe, &refs, false).map_err(|x| e(&x))?;
            let port = dom
                .bind_interdomain(fe, cfg.ring.event_channel)
                .map_err(|x| e(&x))?;
            // SAFETY: `map` is `pages` mapped pages of the frontend's ring, used only here
            // until unmapped below.
            let mut ring: BackRing<BlkifRequest, BlkifResponse> =
                unsafe { BackRing::new(map.addr, map.pages * PAGE_SIZE) }.map_err(|x| e(&x))?;
            for (k, v) in &keys.connect {
                xs.write(&format!("{bp}/{k}"), v.as_bytes())
                    .map_err(|x| e(&x))?;
            }
            xs.write(&format!("{bp}/state"), b"4").map_err(|x| e(&x))?;
            let offered = keys
                .connect
                .iter()
                .any(|(k, v)| k == "feature-persistent" && v == "1");
            let serve = Serve {
                dom: dom.clone(),
                fe,
                persistent: offered && cfg.ring.persistent,
                disk: disk2,
                seen: seen2,
                grefs: Default::default(),
            };
            let mut pending: Vec<BlkifRequest> = Vec::new();
            let mut answered_once = false;
            // Pages a misbehaving backend keeps mapped after answering.
            let mut kept: Vec<xen_platform::Mapping> = Vec::new();
            let mut next_look = Instant::now();
            let result = loop {
                if stop2.load(Ordering::SeqCst) {
                    break Ok(());
                }
                // Linux blkback: the frontend Closing → disconnect, then Closed.
                if Instant::now() >= next_look {
                    next_look = Instant::now() + Duration::from_millis(5);
                    if let Ok(Some(st)) = xs.try_read(&format!("{fp}/state")) {
                        if st == b"5" || st == b"6" {
                            for m in kept.drain(..) {
                                let _ = dom.unmap(m);
                            }
                            let _ = Events::close(&dom, port);
                            let _ = dom.unmap_multi(map);
                            let _ = xs.write(&format!("{bp}/state"), b"6");
                            return Ok(());
                        }
                    }
                }
                match ring.take_request() {
                    Ok(Some(r)) => {
                        taken2.fetch_add(1, Ordering::SeqCst);
                        pending.push(r);
                        continue;
                    }
                    Ok(None) => {}
                    Err(x) => break Err(e(&x)),
                }
                let beh = *beh2.lock().unwrap();
                let mut responses = Vec::new();
                match beh {
                    Behaviour::Scribble => {
                        for r in pending.drain(..) {
                            scr2.fetch_add(serve.scribble(), Ordering::SeqCst);
                            let status = serve.handle(&r);
                            responses.push((r.id, rsp_op(&r), status));
                        }
                    }
                    Behaviour::Honest => {
                        for r in pending.drain(..) {
                            let status = serve.handle(&r);
                            responses.push((r.id, rsp_op(&r), status));
                        }
                    }
                    Behaviour::Batch(n) => {
                        if pending.len() >= n {
                            for r in pending.drain(..) {
                                let status = serve.handle(&r);
                                responses.push((r.id, rsp_op(&r), status));
                            }
                        }
                    }
                    Behaviour::KeepDataMapped | Behaviour::KeepIndirectMapped => {
                        for r in pending.drain(..) {
                            let status = serve.handle(&r);
                            let gref = match (beh, r.operation) {
                                (Behaviour::KeepDataMapped, BLKIF_OP_READ | BLKIF_OP_WRITE) => {
                                    Some(r.seg[0].gref)
                                }
                                (Behaviour::KeepIndirectMapped, BLKIF_OP_INDIRECT) => {
                                    Some(u32_at(&req_bytes(&r), 28))
                                }
                                _ => None,
                            };
                            if let (Some(g), true) = (gref, kept.is_empty()) {
                                if let Ok(m) = dom.map(fe, g, true) {
                                    kept.push(m);
                                }
                            }
                            responses.push((r.id, rsp_op(&r), status));
                        }
                    }
                    Behaviour::Stall => {}
                    Behaviour::UnknownId | Behaviour::GarbageStatus => {
                        if let Some(r) = pending.pop() {
                            if !answered_once {
                                answered_once = true;
                                let (id, st) = if beh == Behaviour::UnknownId {
                                    (9999, BLKIF_RSP_OKAY)
                                } else {
                                    (r.id, 7)
                                };
                                responses.push((id, rsp_op(&r), st));
                            }
                        }
                    }
                    Behaviour::DuplicateId => {
                        if pending.len() >= 2 && !answered_once {
                            answered_once = true;
                            let r = pending[0];
                            let status = serve.handle(&r);
                            responses.push((r.id, rsp_op(&r), status));
                            responses.push((r.id, rsp_op(&r), status));
                        }
                    }
                    Behaviour::ProdOverflow => {
                        if !pending.is_empty() && !answered_once {
                            answered_once = true;
                            // rsp_prod is the third u32 of the shared header.
                            // SAFETY: offset 8 of the mapped ring page is the aligned
                            // `rsp_prod` index, accessed atomically as the ring does.
                            let idx = unsafe { &*(map.addr.as_ptr().add(8) as *const AtomicU32) };
                            idx.fetch_add(1000, Ordering::SeqCst);
                            let _ = dom.notify(port);
                        }
                    }
                }
                if !responses.is_empty() {
                    for (id, operation, status) in responses {
                        let rsp = BlkifResponse {
                            id,
                            operation,
                            status,
                            ..BlkifResponse::default()
                        };
                        if ring.push_response(rsp).is_err() {
                            break;
                        }
                    }
                    if ring.push_responses_and_check_notify() {
                        let _ = dom.notify(port);
                    }
                    continue;
                }
                if !ring.final_check_for_requests() {
                    match dom.wait(&[port], Some(Duration::from_millis(2))) {
                        Ok(_) => {
                            dom.clear(port);
                        }
                        Err(Error::Timeout) => {}
                        Err(Error::PeerGone) => std::thread::sleep(Duration::from_millis(2)),
                        Err(x) => break Err(e(&x)),
                    }
                }
            };
            let _ = Events::close(&dom, port);
            let _ = dom.unmap_multi(map);
            result
        });
        Backend {
            stop,
            disk,
            seen,
            ring_pages,
            taken,
            behaviour,
            scribbled,
            handle: Some(handle),
        }
    }

    /// Poll the guest's bus (and blkfront's service) once.
    pub fn poll(&mut self) {
        let now = self.t0.elapsed();
        let _ = self.bus.poll(now);
        self.front.service(&mut self.bus);
    }

    /// Poll until `cond`, bounded.
    #[track_caller]
    /// Poll until `cond` holds (true) or the time limit passed (false).
    pub fn until_or_timeout(&mut self, mut cond: impl FnMut(&mut Setup) -> bool) -> bool {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            self.poll();
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub fn until(&mut self, what: &str, mut cond: impl FnMut(&mut Setup) -> bool) {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            self.poll();
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "{what}: not reached; device {:?}, state {:?}",
            self.bus.device(XVDA),
            self.front.state(XVDA)
        );
    }

    /// Poll until the device is connected; return it.
    pub fn connect(&mut self) -> BlkDevice<Rc<Counting>> {
        self.until("blkfront Connected", |s| s.front.device(XVDA).is_some());
        self.front.device(XVDA).unwrap()
    }

    pub fn read(&self, path: &str) -> Option<String> {
        self.ts
            .with_xs(|xs| xs.try_read(path).unwrap())
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn fe_key(&self, k: &str) -> Option<String> {
        self.read(&format!("{}/{k}", self.frontend_path))
    }

    /// The published error of the device, if any.
    pub fn error(&self) -> Option<String> {
        self.read(&format!(
            "{}/error/{XVDA}/error",
            xen_toolstack::dom_path(self.guest.domid())
        ))
    }

    pub fn state(&self) -> Option<DeviceState> {
        self.front.state(XVDA)
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Our blkback in the storage domain, in a thread.

/// Sectors of the disk [`Back`] serves (16 MiB).
pub const BACK_SECTORS: u64 = 32768;

/// `BlkBack` serving a `MemDisk` in the storage domain of a [`Setup`], polled by a thread
/// that publishes the device's report after every poll.
pub struct Back {
    stop: Arc<AtomicBool>,
    /// While set, the thread does not poll (blkback keeps every mapping as it is).
    pub pause: Arc<AtomicBool>,
    /// Polls done so far.
    seq: Arc<AtomicU64>,
    report: Arc<Mutex<Option<DeviceReport>>>,
    handle: Option<JoinHandle<()>>,
}

impl Back {
    pub fn start(s: &Setup, opts: BackOptions) -> Back {
        let storage = s.storage.as_ref().expect("a storage domain");
        let xs = storage.xs_client().unwrap();
        let dom = storage.domain().clone();
        let id = storage.domid();
        let node = format!("backend/vbd/{}/51712", s.guest.domid());
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let pause2 = pause.clone();
        let seq = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(None));
        let (stop2, seq2, report2) = (stop.clone(), seq.clone(), report.clone());
        let handle = std::thread::spawn(move || {
            let mut bus = Bus::with_config(xs, id, bus_cfg());
            let bb = BlkBack::new(Rc::new(dom.clone()), opts, |_| {
                Ok(Box::new(MemDisk::new(BACK_SECTORS)) as Box<dyn Storage>)
            });
            bb.register(&mut bus).unwrap();
            let t0 = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                if pause2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let _ = bus.poll(t0.elapsed());
                let p = bb.poll();
                *report2.lock().unwrap() = bb.device(&node);
                seq2.fetch_add(1, Ordering::SeqCst);
                if !p.busy && !p.ports.is_empty() {
                    if let Ok(port) = dom.wait(&p.ports, Some(Duration::from_millis(1))) {
                        dom.clear(port);
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Back {
            stop,
            pause,
            seq,
            report,
            handle: Some(handle),
        }
    }

    /// The device's report as of a whole backend poll that started after this call (so it
    /// counts every request answered before it).
    pub fn report(&self) -> Option<DeviceReport> {
        let s0 = self.seq.load(Ordering::SeqCst);
        let end = Instant::now() + LIMIT;
        while self.seq.load(Ordering::SeqCst) < s0 + 2 {
            assert!(Instant::now() < end, "the backend thread stopped polling");
            std::thread::sleep(Duration::from_micros(100));
        }
        self.report.lock().unwrap().clone()
    }

    pub fn stats(&self) -> ChannelStats {
        self.report().expect("blkback knows the device").stats
    }
}

impl Drop for Back {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A guest with blkfront (`limits`, event mode) and a storage domain with blkback (`opts`);
/// the vbd added by the toolstack. Not yet connected.
pub fn world(limits: FrontLimits, opts: BackOptions) -> (Setup, Back) {
    let s = Setup::with_limits(WaitMode::Event, true, false, limits);
    let back = Back::start(&s, opts);
    (s, back)
}

// ---------------------------------------------------------------------------------------
// I/O through a connected device.

/// A connected blkfront device of a [`Setup`].
pub type Dev = BlkDevice<Rc<Counting>>;

/// Submit every request, poll until all completed; the completions in tag order.
pub fn run_all(dev: &mut Dev, reqs: Vec<(Request, u64)>) -> Vec<Completion> {
    let n = reqs.len();
    for (r, tag) in reqs {
        dev.submit(tag, r).unwrap();
    }
    let mut done = Vec::new();
    let end = Instant::now() + LIMIT;
    while done.len() < n {
        assert!(Instant::now() < end, "{} of {n} completed", done.len());
        dev.poll(&mut |c| done.push(c)).unwrap();
        if done.len() < n {
            dev.wait(Duration::from_millis(5)).unwrap();
        }
    }
    done.sort_by_key(|c| c.tag);
    done
}

/// Sizes written and read back: one sector, one page, 11 pages (the most of a direct
/// request), 12 pages and 100½ pages (indirect), 1 MiB (256 segments, one indirect request)
/// and 1 MiB + 2 pages (split into two ring requests).
pub const SIZES: [usize; 7] = [
    512,
    PAGE_SIZE,
    11 * PAGE_SIZE,
    12 * PAGE_SIZE,
    100 * PAGE_SIZE + 1024,
    1 << 20,
    (1 << 20) + 2 * PAGE_SIZE,
];

/// Blocking writes and reads of every size in [`SIZES`], then 32 writes in flight (buffers of
/// 1, 3, 12 and 20 pages) read back with 32 reads in flight. Panics on any difference.
pub fn exercise(dev: &mut Dev, seed: u8) {
    let mut sector = 0;
    for (i, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, seed.wrapping_add(i as u8));
        dev.write(sector, &data).unwrap();
        let mut back = vec![0u8; len];
        dev.read(sector, &mut back).unwrap();
        assert!(back == data, "{len} bytes at sector {sector} differ");
        sector += (len as u64).div_ceil(512) + 8;
    }
    in_flight(dev, 8192, seed);
}

pub fn in_flight(dev: &mut Dev, base: u64, seed: u8) {
    let pages = [1usize, 3, 12, 20];
    let at = |i: usize| base + i as u64 * 20 * 8;
    let mut writes = Vec::new();
    for i in 0..32 {
        let len = pages[i % 4] * PAGE_SIZE;
        let mut b = dev.alloc_buffer(len).unwrap();
        b.as_mut_slice()
            .copy_from_slice(&pattern(len, seed.wrapping_add(100 + i as u8)));
        writes.push((
            Request::Write {
                sector: at(i),
                buf: b,
            },
            i as u64,
        ));
    }
    for c in run_all(dev, writes) {
        assert_eq!(c.result, Ok(()), "write {}", c.tag);
        dev.free_buffer(c.buf.unwrap()).unwrap();
    }
    let mut reads = Vec::new();
    for i in 0..32 {
        let b = dev.alloc_buffer(pages[i % 4] * PAGE_SIZE).unwrap();
        assert!(b.as_slice().iter().all(|&x| x == 0), "alloc_buffer zeroed");
        reads.push((
            Request::Read {
                sector: at(i),
                buf: b,
            },
            i as u64,
        ));
    }
    for c in run_all(dev, reads) {
        assert_eq!(c.result, Ok(()), "read {}", c.tag);
        let b = c.buf.unwrap();
        let i = c.tag as usize;
        assert!(
            b.as_slice() == pattern(pages[i % 4] * PAGE_SIZE, seed.wrapping_add(100 + i as u8)),
            "read {i} differs"
        );
        dev.free_buffer(b).unwrap();
    }
}

/// Poll the bus and the device until `n` completions, bounded.
pub fn collect<D: BlockDevice>(s: &mut Setup, dev: &mut D, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let end = Instant::now() + LIMIT;
    while out.len() < n {
        assert!(
            Instant::now() < end,
            "only {} of {n} completed; state {:?}",
            out.len(),
            s.state()
        );
        s.poll();
        let _ = dev.poll(&mut |c| out.push(c));
        let _ = dev.wait(Duration::from_millis(2));
    }
    out
}

/// [`collect`] one completion per tag of `tags`, then poll 100 ms more: exactly those tags, each
/// once (nothing completes twice, nothing is lost); the completions in tag order.
pub fn collect_once<D: BlockDevice>(s: &mut Setup, dev: &mut D, tags: &[u64]) -> Vec<Completion> {
    let mut done = collect(s, dev, tags.len());
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(100) {
        s.poll();
        dev.poll(&mut |c| done.push(c)).unwrap();
    }
    done.sort_by_key(|c| c.tag);
    let mut want = tags.to_vec();
    want.sort_unstable();
    assert_eq!(
        done.iter().map(|c| c.tag).collect::<Vec<_>>(),
        want,
        "each request completes exactly once"
    );
    done
}

/// The backend goes Closing on its own (as when it is restarted), then waits for the
/// frontend's Closed and goes Closed (the test backend does that when it sees our Closing).
pub fn backend_goes_away(s: &mut Setup, be: &mut Backend) {
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.write(&format!("{}/state", s.backend_path), b"5")
            .unwrap()
    });
    s.until("parked", |s| s.state() == Some(DeviceState::Reconnecting));
    be.finish().unwrap();
}
