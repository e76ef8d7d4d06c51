//! Fuzz target `hostile_store`: xen-bus facing a hostile toolstack / peer domain that writes,
//! rewrites and removes XenStore nodes between bus polls.
//!
//! The world: the in-memory xenstored (`xen_store::server::Store`, with libxl's layout and
//! permissions) served synchronously in-process; domains 1 and 2 each run a real [`Bus`]
//! (front and back `vdummy` drivers registered on both, each bus on its own XenStore
//! [`Client`]); dom0 is the toolstack, whose writes the input chooses. Devices may be
//! front 1 / back 2, front 2 / back 1, or front 1 / back 0 (a backend nobody serves). The input
//! is a sequence of operations: add a device as libxl does; write `state` with anything
//! (numbers out of range, blanks, signs, non-digits, raw bytes); point `backend` / `frontend` /
//! `backend-id` / `frontend-id` anywhere (the right place, another device, the device itself,
//! another domain, another class, relative, empty, very long, raw bytes); remove nodes (a
//! `state`, the other-end keys, a device directory, a class directory); flip `online`; write
//! the keys the drivers read; revoke permissions; poll a bus; move the clock (small ticks and
//! jumps past every timeout); close, reconnect, close-all. Nodes therefore change and vanish
//! between watch events.
//!
//! Checked after every poll (and in the drivers as they are called):
//! * no panic; every poll returns `Ok` (xenstored is well-behaved here) within a bounded number
//!   of XenStore requests;
//! * a driver is never attached twice to one device: the factory is only called for a device
//!   whose earlier driver instances are all detached; `probe` only on a fresh or detached
//!   instance; `initialise`/`attach` only once per probe, in order; `detach` once per probe;
//! * every device not Closed has other-end details that pass `xen_bus::path`'s checks, and a
//!   device that failed (error set) is Closed — a device whose other end is garbage is failed
//!   (Closed) or never adopted;
//! * every write, mkdir, set-perms or rm a bus sends stays inside its own home: under the
//!   directory of one of its devices, that device's error node `error/<nodename>/error`, or
//!   (rm only) the emptied parents of a backend directory below `backend/`;
//! * at the end, after quiet rounds and jumps past every timeout, every device is Connected or
//!   Closed (nothing is left half-way).
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xen_bus::path::{check_backend_details, check_frontend_details};
use xen_bus::store::client::{Client, ClientConfig, Store as _, Transport, TransportError};
use xen_bus::store::server::{ConnId, Quotas, Store};
use xen_bus::store::{Access, Framer, Perm, Perms, Request};
use xen_bus::{
    BackDriver, Bus, BusConfig, DeviceCtx, DeviceInfo, DomId, DriverError, DriverResult,
    FrontDriver, Phase, Progress, Role, XenbusState,
};

// ---------------------------------------------------------------------------------------------
// The in-process xenstored.

/// What a bus sent that changes the store: (request type name, absolute path).
type WriteLog = Vec<(&'static str, String)>;

struct Endpoint {
    conn: ConnId,
    domid: DomId,
    framer: Framer,
    rx: VecDeque<u8>,
    /// Changing requests, recorded for the buses (not for the toolstack).
    log: Option<WriteLog>,
}

struct World {
    store: Store,
    now: Duration,
    eps: Vec<Endpoint>,
}

impl World {
    fn flush(&mut self) {
        for ep in &mut self.eps {
            for m in self.store.take_output(ep.conn) {
                ep.rx
                    .extend(m.encode().expect("the store queues valid messages"));
            }
        }
    }
}

/// A [`Transport`] to the in-process store: `send` hands every framed request to the store at
/// once and queues the output of every connection (replies and watch events).
struct InProc {
    w: Rc<RefCell<World>>,
    ep: usize,
}

impl Transport for InProc {
    fn now(&self) -> Duration {
        self.w.borrow().now
    }

    fn send(&mut self, bytes: &[u8], _timeout: Duration) -> Result<(), TransportError> {
        let mut w = self.w.borrow_mut();
        let w = &mut *w;
        let mut msgs = Vec::new();
        {
            let ep = &mut w.eps[self.ep];
            for item in ep.framer.feed(bytes) {
                msgs.push(item.map_err(|_| TransportError::Io(-1))?);
            }
        }
        for m in msgs {
            let ep = &mut w.eps[self.ep];
            if let Some(log) = &mut ep.log {
                if let Ok(req) = Request::from_message(&m) {
                    let changed = match &req {
                        Request::Write { path, .. } => Some(("write", path)),
                        Request::Mkdir(path) => Some(("mkdir", path)),
                        Request::Rm(path) => Some(("rm", path)),
                        Request::SetPerms { path, .. } => Some(("set-perms", path)),
                        _ => None,
                    };
                    if let Some((what, path)) = changed {
                        log.push((what, path.resolve(ep.domid).as_str().to_string()));
                    }
                }
            }
            let conn = ep.conn;
            w.store.handle(conn, &m);
            w.flush();
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        let mut w = self.w.borrow_mut();
        let rx = &mut w.eps[self.ep].rx;
        if rx.is_empty() {
            // Nothing will come: the wait runs out.
            w.now += timeout;
            return Ok(0);
        }
        let n = buf.len().min(rx.len());
        for (b, v) in buf.iter_mut().zip(rx.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The vdummy drivers, checking how the bus calls them.

#[derive(Debug, Default)]
struct Instance {
    probed: bool,
    initialised: bool,
    attached: bool,
    detached: bool,
}

/// Driver instances per (bus domid, nodename).
type Tracker = Rc<RefCell<BTreeMap<(DomId, String), Vec<Instance>>>>;

struct Drv {
    tracker: Tracker,
    key: (DomId, String),
    idx: usize,
    role: Role,
}

impl Drv {
    fn make(tracker: &Tracker, domid: DomId, info: &DeviceInfo, role: Role) -> Drv {
        let key = (domid, info.nodename.clone());
        let mut t = tracker.borrow_mut();
        let v = t.entry(key.clone()).or_default();
        assert!(
            v.iter().all(|i| i.detached),
            "dom{domid}: a second driver for {} while one is live: {v:?}",
            info.nodename
        );
        assert_eq!(info.role, role);
        v.push(Instance::default());
        let idx = v.len() - 1;
        drop(t);
        Drv {
            tracker: tracker.clone(),
            key,
            idx,
            role,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Instance) -> R) -> R {
        let mut t = self.tracker.borrow_mut();
        f(&mut t.get_mut(&self.key).unwrap()[self.idx])
    }

    fn probe(&self) {
        let key = &self.key;
        self.with(|i| {
            assert!(!i.probed || i.detached, "{key:?}: probed twice: {i:?}");
            *i = Instance {
                probed: true,
                ..Instance::default()
            };
        });
    }

    fn initialise(&self) {
        let key = &self.key;
        self.with(|i| {
            assert!(
                i.probed && !i.detached && !i.initialised && !i.attached,
                "{key:?}: initialise out of order: {i:?}"
            );
        });
    }

    fn initialised(&self) {
        self.with(|i| i.initialised = true);
    }

    fn attach(&self) {
        let key = &self.key;
        let role = self.role;
        self.with(|i| {
            let ready = i.probed && !i.detached && !i.attached;
            let ready = ready && (role == Role::Back || i.initialised);
            assert!(ready, "{key:?}: attach out of order: {i:?}");
        });
    }

    fn attached(&self) {
        self.with(|i| i.attached = true);
    }

    fn detach(&self) {
        let key = &self.key;
        self.with(|i| {
            assert!(!i.detached, "{key:?}: detached twice: {i:?}");
            i.detached = true;
        });
    }
}

/// The vdummy frontend (as in bus/tests/common/dummy.rs): publishes `ring-ref` and
/// `event-channel` (+ `feature-dummy` if offered), reads `sectors` on attach.
struct Front {
    d: Drv,
    skip_init_wait: bool,
}

impl FrontDriver for Front {
    fn probe(&mut self, _ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.d.probe();
        Ok(Progress::Done)
    }
    fn waits_for_init_wait(&self) -> bool {
        !self.skip_init_wait
    }
    fn initialise(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.d.initialise();
        let offered = ctx.read_other("feature-dummy")?.as_deref() == Some(b"1");
        ctx.write("ring-ref", b"8")?;
        ctx.write("event-channel", b"3")?;
        if offered {
            ctx.write("feature-dummy", b"1")?;
        }
        self.d.initialised();
        Ok(Progress::Done)
    }
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.d.attach();
        ctx.require_other_u32("sectors")?;
        self.d.attached();
        Ok(Progress::Done)
    }
    fn other_end_changed(
        &mut self,
        _ctx: &mut DeviceCtx<'_>,
        _state: XenbusState,
    ) -> Result<(), DriverError> {
        Ok(())
    }
    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        self.d.detach();
    }
}

/// The vdummy backend: `feature-dummy` at probe; reads `ring-ref` and `event-channel`, writes
/// `sectors` on attach.
struct Back {
    d: Drv,
}

impl BackDriver for Back {
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.d.probe();
        ctx.write("feature-dummy", b"1")?;
        Ok(Progress::Done)
    }
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.d.attach();
        ctx.require_other_u32("ring-ref")?;
        ctx.require_other_u32("event-channel")?;
        ctx.write("sectors", b"1024")?;
        self.d.attached();
        Ok(Progress::Done)
    }
    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        self.d.detach();
    }
}

// ---------------------------------------------------------------------------------------------
// The input.

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u8()) % (max + 1);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        self.data[start..end].to_vec()
    }
}

/// The device slots: (frontend domid, backend domid, id).
const PAIRS: [(DomId, DomId); 3] = [(1, 2), (2, 1), (1, 0)];
const IDS: [&str; 3] = ["0", "1", "51712"];
const SLOTS: usize = PAIRS.len() * IDS.len();

fn slot(b: u8) -> (DomId, DomId, &'static str) {
    let s = usize::from(b) % SLOTS;
    let (fe, be) = PAIRS[s / IDS.len()];
    (fe, be, IDS[s % IDS.len()])
}

fn fdir(fe: DomId, id: &str) -> String {
    format!("/local/domain/{fe}/device/vdummy/{id}")
}

fn bdir(fe: DomId, be: DomId, id: &str) -> String {
    format!("/local/domain/{be}/backend/vdummy/{fe}/{id}")
}

const STATES: [&[u8]; 24] = [
    b"0",
    b"1",
    b"2",
    b"3",
    b"4",
    b"5",
    b"6",
    b"7",
    b"8",
    b"9",
    b"10",
    b"-1",
    b"+4",
    b"4294967300",
    b"99999999999999999999",
    b"",
    b"4\n",
    b" 4",
    b"4 ",
    b"04",
    b"0x4",
    b"four",
    b"4\0",
    b"\xff",
];

const KEYS: [&str; 6] = [
    "ring-ref",
    "event-channel",
    "sectors",
    "feature-dummy",
    "online",
    "hotplug-status",
];

const VALUES: [&[u8]; 8] = [b"0", b"1", b"8", b"1024", b"-1", b"", b"4294967296", b"x"];

/// A value for another end's path (`backend` of a front in `fe`, or `frontend` of a back).
fn other_path(inp: &mut Input<'_>, front: bool, fe: DomId, be: DomId, id: &str) -> Vec<u8> {
    let (ofe, obe, oid) = slot(inp.u8());
    let s = match inp.u8() % 12 {
        0 if front => bdir(fe, be, id),
        0 => fdir(fe, id),
        1 => bdir(ofe, obe, oid),
        2 => fdir(ofe, oid),
        // The device itself.
        3 if front => fdir(fe, id),
        3 => bdir(fe, be, id),
        4 => return inp.bytes(48),
        // Very long, starting right.
        5 => {
            let base = if front {
                bdir(fe, be, id)
            } else {
                fdir(fe, id)
            };
            let n = usize::from(inp.u8()) * 8;
            format!("{base}/{}", "a".repeat(n))
        }
        // The right shape in the wrong domain (ourselves, dom0, another).
        6 => {
            let d = inp.u8() % 4;
            if front {
                bdir(fe, DomId::from(d), id)
            } else {
                fdir(DomId::from(d), id)
            }
        }
        // Another class (fine for a backend path: libxl uses qdisk, vbd3).
        7 if front => format!("/local/domain/{be}/backend/qdisk/{fe}/{id}"),
        7 => format!("/local/domain/{fe}/device/vbd/{id}"),
        8 if front => format!("backend/vdummy/{fe}/{id}"),
        8 => format!("device/vdummy/{id}"),
        9 => String::new(),
        10 if front => format!("{}/", bdir(fe, be, id)),
        10 => format!("/local/domain/{fe}/device/vdummy/{id}/../{id}"),
        _ => "/local/domain/0".to_string(),
    };
    s.into_bytes()
}

fn other_id(inp: &mut Input<'_>, right: DomId) -> Vec<u8> {
    match inp.u8() % 8 {
        0..=2 => right.to_string().into_bytes(),
        3 => b"0".to_vec(),
        4 => b"1".to_vec(),
        5 => b"2".to_vec(),
        6 => b"65536".to_vec(),
        _ => inp.bytes(8),
    }
}

fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The harness.

const CFG: BusConfig = BusConfig {
    handshake_timeout: Duration::from_secs(2),
    close_timeout: Duration::from_secs(2),
    resync_interval: Duration::from_millis(200),
    connected_resync_interval: Duration::from_secs(5),
};

/// The most XenStore requests one poll may send (a hang, otherwise).
const POLL_REQUESTS_MAX: u64 = 20_000;

struct Harness {
    w: Rc<RefCell<World>>,
    ts: Client<InProc>,
    buses: Vec<(DomId, usize, Bus<InProc>)>,
}

impl Harness {
    fn new(tracker: &Tracker, skip_init_wait: bool) -> Harness {
        let mut store = Store::new(Quotas::DEFAULT);
        let mut eps = Vec::new();
        for domid in [0, 1, 2] {
            let conn = store.connect(domid);
            eps.push(Endpoint {
                conn,
                domid,
                framer: Framer::new(),
                rx: VecDeque::new(),
                log: (domid != 0).then(Vec::new),
            });
        }
        let w = Rc::new(RefCell::new(World {
            store,
            now: Duration::ZERO,
            eps,
        }));
        let cfg = ClientConfig {
            timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        };
        let mut ts = Client::with_config(
            InProc {
                w: w.clone(),
                ep: 0,
            },
            cfg,
        );
        for domid in [1u16, 2] {
            let home = format!("/local/domain/{domid}");
            ts.transact(|tx| {
                let r = perms(&[(Access::None, 0), (Access::Read, domid)]);
                tx.mkdir(&home)?;
                tx.set_perms(&home, &r)?;
                tx.write(&format!("{home}/domid"), domid.to_string().as_bytes())?;
                tx.set_perms(&format!("{home}/domid"), &r)?;
                tx.mkdir(&format!("{home}/device"))?;
                tx.set_perms(&format!("{home}/device"), &r)?;
                tx.mkdir(&format!("{home}/error"))?;
                tx.set_perms(&format!("{home}/error"), &perms(&[(Access::None, domid)]))?;
                Ok(())
            })
            .expect("toolstack setup");
        }
        let mut buses = Vec::new();
        for (ep, domid) in [(1usize, 1u16), (2, 2)] {
            let c = Client::with_config(InProc { w: w.clone(), ep }, cfg);
            let mut bus = Bus::with_config(c, domid, CFG);
            let t = tracker.clone();
            bus.register_front("vdummy", move |info| {
                Box::new(Front {
                    d: Drv::make(&t, domid, info, Role::Front),
                    skip_init_wait,
                })
            })
            .expect("register front");
            let t = tracker.clone();
            bus.register_back("vdummy", move |info| {
                Box::new(Back {
                    d: Drv::make(&t, domid, info, Role::Back),
                })
            })
            .expect("register back");
            buses.push((domid, ep, bus));
        }
        Harness { w, ts, buses }
    }

    fn now(&self) -> Duration {
        self.w.borrow().now
    }

    fn advance(&mut self, d: Duration) {
        self.w.borrow_mut().now += d;
    }

    /// The device directories exactly as libxl writes them (bus/tests/common `add_device`).
    fn add_device(&mut self, fe: DomId, be: DomId, id: &str) {
        let fd = fdir(fe, id);
        let bd = bdir(fe, be, id);
        let fperm = perms(&[(Access::None, fe), (Access::Read, be)]);
        let bperm = perms(&[(Access::None, be), (Access::Read, fe)]);
        let _ = self.ts.transact(|tx| {
            let fclass = format!("/local/domain/{fe}/device/vdummy");
            if !tx.exists(&fclass)? {
                tx.mkdir(&fclass)?;
                tx.set_perms(&fclass, &perms(&[(Access::None, 0), (Access::Read, fe)]))?;
            }
            for p in [
                format!("/local/domain/{be}/backend"),
                format!("/local/domain/{be}/backend/vdummy"),
                format!("/local/domain/{be}/backend/vdummy/{fe}"),
            ] {
                if !tx.exists(&p)? {
                    tx.mkdir(&p)?;
                    tx.set_perms(&p, &perms(&[(Access::None, 0), (Access::Read, be)]))?;
                }
            }
            tx.mkdir(&fd)?;
            tx.set_perms(&fd, &fperm)?;
            for (k, v) in [
                ("backend", bd.clone()),
                ("backend-id", be.to_string()),
                ("state", "1".into()),
            ] {
                tx.write(&format!("{fd}/{k}"), v.as_bytes())?;
                tx.set_perms(&format!("{fd}/{k}"), &fperm)?;
            }
            tx.mkdir(&bd)?;
            tx.set_perms(&bd, &bperm)?;
            for (k, v) in [
                ("frontend", fd.clone()),
                ("frontend-id", fe.to_string()),
                ("online", "1".into()),
                ("state", "1".into()),
            ] {
                tx.write(&format!("{bd}/{k}"), v.as_bytes())?;
                tx.set_perms(&format!("{bd}/{k}"), &bperm)?;
            }
            Ok(())
        });
    }

    fn poll(&mut self, which: usize) {
        let now = self.now();
        let (domid, ep, bus) = &mut self.buses[which];
        let domid = *domid;
        let before: BTreeSet<String> = bus.devices().into_iter().map(|d| d.info.nodename).collect();
        let sent = bus.client().stats().requests_sent;
        if let Err(e) = bus.poll(now) {
            panic!("dom{domid}: poll failed against a well-behaved xenstored: {e}");
        }
        while bus.take_event().is_some() {}
        let cost = bus.client().stats().requests_sent - sent;
        assert!(
            cost <= POLL_REQUESTS_MAX,
            "dom{domid}: one poll sent {cost} requests"
        );
        let devices = bus.devices();
        let mut known = before;
        known.extend(devices.iter().map(|d| d.info.nodename.clone()));
        let log = std::mem::take(self.w.borrow_mut().eps[*ep].log.as_mut().unwrap());
        check_writes(domid, &known, &log);
        for d in &devices {
            check_device(domid, d);
        }
    }

    fn round(&mut self) {
        for i in 0..self.buses.len() {
            self.poll(i);
        }
    }
}

/// Every change a bus asked for is inside its own device directories.
fn check_writes(domid: DomId, known: &BTreeSet<String>, log: &WriteLog) {
    let home = format!("/local/domain/{domid}");
    for (what, path) in log {
        let rel = path
            .strip_prefix(&home)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or_else(|| panic!("dom{domid}: {what} {path}: outside its home"));
        let in_device = known.iter().any(|n| {
            rel == n
                || rel
                    .strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        let error_node = known.iter().any(|n| rel == format!("error/{n}/error"));
        // The emptied parents of a removed backend directory, below `backend/`.
        let parent = *what == "rm"
            && rel.starts_with("backend/")
            && known
                .iter()
                .any(|n| n.strip_prefix(rel).is_some_and(|r| r.starts_with('/')));
        assert!(
            in_device || error_node || parent,
            "dom{domid}: {what} {path}: not in one of its device directories {known:?}"
        );
    }
}

/// A live device has valid other-end details; a failed device is Closed.
fn check_device(domid: DomId, d: &xen_bus::DeviceStatus) {
    let i = &d.info;
    if d.error.is_some() {
        assert_eq!(d.phase, Phase::Closed, "dom{domid}: failed but {d:?}");
    }
    if d.phase == Phase::Closed {
        return;
    }
    let oe_id = i.otherend_id.to_string();
    let ok = match i.role {
        Role::Front => {
            i.frontend_id == domid
                && check_backend_details(domid, &i.id, i.otherend.as_bytes(), oe_id.as_bytes())
                    == Ok(i.otherend_id)
                && i.backend_id == i.otherend_id
        }
        Role::Back => {
            i.backend_id == domid
                && i.otherend_id == i.frontend_id
                && check_frontend_details(
                    i.frontend_id,
                    &i.class,
                    &i.id,
                    i.otherend.as_bytes(),
                    oe_id.as_bytes(),
                )
                .is_ok()
        }
    };
    assert!(ok, "dom{domid}: live device with bad other end: {d:?}");
    assert_eq!(i.path, format!("/local/domain/{domid}/{}", i.nodename));
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data, pos: 0 };
    let tracker: Tracker = Rc::default();
    let flags = inp.u8();
    let mut h = Harness::new(&tracker, flags & 1 == 1);
    let mut ops = 0;
    while !inp.done() && ops < 400 {
        ops += 1;
        let op = inp.u8();
        match op % 16 {
            0 => {
                let (fe, be, id) = slot(inp.u8());
                h.add_device(fe, be, id);
            }
            1 => {
                let (fe, be, id) = slot(inp.u8());
                let sel = inp.u8();
                let dir = if sel & 1 == 0 {
                    fdir(fe, id)
                } else {
                    bdir(fe, be, id)
                };
                let v = match sel >> 1 {
                    0..=100 => STATES[usize::from(sel >> 1) % STATES.len()].to_vec(),
                    _ => inp.bytes(16),
                };
                let _ = h.ts.write(&format!("{dir}/state"), &v);
            }
            2 => {
                let (fe, be, id) = slot(inp.u8());
                let front = inp.u8() & 1 == 0;
                let v = other_path(&mut inp, front, fe, be, id);
                let p = if front {
                    format!("{}/backend", fdir(fe, id))
                } else {
                    format!("{}/frontend", bdir(fe, be, id))
                };
                let _ = h.ts.write(&p, &v);
            }
            3 => {
                let (fe, be, id) = slot(inp.u8());
                let front = inp.u8() & 1 == 0;
                let (p, right) = if front {
                    (format!("{}/backend-id", fdir(fe, id)), be)
                } else {
                    (format!("{}/frontend-id", bdir(fe, be, id)), fe)
                };
                let v = other_id(&mut inp, right);
                let _ = h.ts.write(&p, &v);
            }
            4 => {
                let (fe, be, id) = slot(inp.u8());
                let p = match inp.u8() % 10 {
                    0 => format!("{}/state", fdir(fe, id)),
                    1 => format!("{}/state", bdir(fe, be, id)),
                    2 => format!("{}/backend", fdir(fe, id)),
                    3 => format!("{}/frontend-id", bdir(fe, be, id)),
                    4 => fdir(fe, id),
                    5 => bdir(fe, be, id),
                    6 => format!("/local/domain/{fe}/device/vdummy"),
                    7 => format!("/local/domain/{be}/backend/vdummy/{fe}"),
                    8 => format!("/local/domain/{be}/backend"),
                    _ => format!("{}/online", bdir(fe, be, id)),
                };
                let _ = h.ts.rm(&p);
            }
            5 => {
                let (fe, be, id) = slot(inp.u8());
                let v: &[u8] = if inp.u8() & 1 == 0 { b"0" } else { b"1" };
                let _ = h.ts.write(&format!("{}/online", bdir(fe, be, id)), v);
            }
            6 => {
                let (fe, be, id) = slot(inp.u8());
                let sel = inp.u8();
                let dir = if sel & 1 == 0 {
                    fdir(fe, id)
                } else {
                    bdir(fe, be, id)
                };
                let key = KEYS[usize::from(sel >> 1) % KEYS.len()];
                let v = match inp.u8() {
                    b @ 0..=200 => VALUES[usize::from(b) % VALUES.len()].to_vec(),
                    _ => inp.bytes(16),
                };
                let _ = h.ts.write(&format!("{dir}/{key}"), &v);
            }
            7 => {
                let (fe, be, id) = slot(inp.u8());
                let sel = inp.u8();
                let p = match sel % 4 {
                    0 => fdir(fe, id),
                    1 => bdir(fe, be, id),
                    2 => format!("{}/state", fdir(fe, id)),
                    _ => format!("{}/state", bdir(fe, be, id)),
                };
                let pm = match (sel >> 2) % 3 {
                    // Nobody but dom0.
                    0 => perms(&[(Access::None, 0)]),
                    // Read-only for both ends.
                    1 => perms(&[(Access::None, 0), (Access::Read, fe), (Access::Read, be)]),
                    // Owned by the other domain.
                    _ => perms(&[(Access::None, if sel & 1 == 0 { be } else { fe })]),
                };
                let _ = h.ts.set_perms(&p, &pm);
            }
            8 | 9 => {
                let which = usize::from(op % 16 - 8);
                h.poll(which);
                h.advance(Duration::from_millis(10));
            }
            10 | 11 => {
                let n = 1 + inp.u8() % 4;
                for _ in 0..n {
                    h.round();
                    h.advance(Duration::from_millis(10));
                }
            }
            12 => {
                let d = match inp.u8() % 6 {
                    0 => Duration::from_millis(1),
                    1 => Duration::from_millis(100),
                    2 => Duration::from_millis(250),
                    3 => Duration::from_millis(2100),
                    4 => Duration::from_secs(4),
                    _ => Duration::from_secs(31),
                };
                h.advance(d);
            }
            13 => {
                let which = usize::from(inp.u8() % 2);
                let sel = inp.u8();
                let now = h.now();
                let bus = &mut h.buses[which].2;
                let names: Vec<String> =
                    bus.devices().into_iter().map(|d| d.info.nodename).collect();
                if !names.is_empty() {
                    let n = &names[usize::from(sel >> 2) % names.len()];
                    match sel % 4 {
                        0 | 1 => {
                            bus.close(n);
                        }
                        2 => {
                            bus.reconnect(n, now);
                        }
                        _ => {}
                    }
                }
            }
            14 => {
                // A node that appears and vanishes between two watch events.
                let (fe, be, id) = slot(inp.u8());
                let sel = inp.u8();
                let dir = if sel & 1 == 0 {
                    fdir(fe, id)
                } else {
                    bdir(fe, be, id)
                };
                let v = STATES[usize::from(sel >> 1) % STATES.len()];
                let _ = h.ts.write(&format!("{dir}/state"), v);
                if sel & 2 == 0 {
                    let _ = h.ts.rm(&format!("{dir}/state"));
                } else {
                    let _ = h.ts.rm(&dir);
                }
            }
            _ => {
                if inp.u8() == 0xa5 {
                    let which = usize::from(inp.u8() % 2);
                    h.buses[which].2.close_all();
                }
            }
        }
    }
    // Quiet: let the handshakes finish, then jump past every timeout.
    for _ in 0..10 {
        h.round();
        h.advance(Duration::from_millis(10));
    }
    for _ in 0..3 {
        h.advance(Duration::from_secs(31));
        h.round();
        h.advance(Duration::from_millis(10));
        h.round();
    }
    for (domid, _, bus) in &h.buses {
        for d in bus.devices() {
            assert!(
                matches!(d.phase, Phase::Connected | Phase::Closed),
                "dom{domid}: left half-way after every timeout: {d:?}"
            );
        }
    }
});
