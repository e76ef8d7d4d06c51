//! The harness of the bus tests: our xenstored on the simulator, dom0 playing the toolstack
//! (it lays out homes and devices with libxl's permissions, XENSTORE-LAYOUT.md), buses of
//! several domains polled in one thread on a fake clock (deterministic: every request
//! completes before the next), and the `vdummy` device class.
//!
//! `xen-toolstack` (testbed/toolstack) was not committed when these were written;
//! the helper below writes the same nodes with the same permissions.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use xen_bus::store::client::{Client, Store, Transport};
use xen_bus::store::perms::{Access, Perm, Perms};
use xen_bus::{Bus, BusConfig, BusEvent, DeviceInfo, DeviceStatus, DriverError};
use xen_store_host::conformance::Limits;
use xen_store_host::ours::OurXenstored;
use xen_store_host::UnixTransport;

pub use xen_bus::DomId;

// The vdummy drivers, shared with xen-control's bus shutdown test.
mod dummy;
pub use dummy::{DummyBack, DummyFront, FrontOpts, Log};

/// How far the fake clock moves per round.
pub const TICK: Duration = Duration::from_millis(10);

pub type Dom0 = Client<UnixTransport>;

pub fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect()).unwrap()
}

/// A bus under test, type-erased.
pub trait AnyBus {
    fn poll(&mut self, now: Duration);
    fn status(&self, nodename: &str) -> Option<DeviceStatus>;
    fn close(&mut self, nodename: &str) -> bool;
    fn reconnect(&mut self, nodename: &str, now: Duration) -> bool;
    fn take_events(&mut self) -> Vec<BusEvent>;
    /// XenStore requests this bus's client has sent.
    fn requests_sent(&mut self) -> u64;
}

impl<T: Transport> AnyBus for Bus<T> {
    fn poll(&mut self, now: Duration) {
        Bus::poll(self, now).expect("bus poll");
    }
    fn requests_sent(&mut self) -> u64 {
        self.client().stats().requests_sent
    }
    fn status(&self, nodename: &str) -> Option<DeviceStatus> {
        self.device(nodename)
    }
    fn close(&mut self, nodename: &str) -> bool {
        Bus::close(self, nodename)
    }
    fn reconnect(&mut self, nodename: &str, now: Duration) -> bool {
        Bus::reconnect(self, nodename, now)
    }
    fn take_events(&mut self) -> Vec<BusEvent> {
        std::iter::from_fn(|| self.take_event()).collect()
    }
}

/// Logs per (bus, nodename) of the vdummy drivers.
pub type Logs = Rc<RefCell<BTreeMap<String, Log>>>;

fn log_for(logs: &Logs, bus: &str, info: &DeviceInfo) -> Log {
    logs.borrow_mut()
        .entry(format!("{bus}:{}", info.nodename))
        .or_default()
        .clone()
}

/// The world: a simulator with our xenstored, dom0's toolstack connection, buses.
pub struct Sim {
    pub xs: OurXenstored,
    pub d0: Dom0,
    pub buses: BTreeMap<String, Box<dyn AnyBus>>,
    pub now: Duration,
    /// Every bus event, as (bus, event).
    pub events: Vec<(String, BusEvent)>,
    pub logs: Logs,
    pub front_opts: Rc<RefCell<BTreeMap<String, FrontOpts>>>,
    /// Guests' clients, made when the domain is created (xenstored knows every domain it
    /// serves: its nodes go when it dies), taken by [`add_bus`](Self::add_bus).
    pub clients: BTreeMap<DomId, Guest>,
}

pub type Guest = Client<xen_store_host::OwnedRing<xen_sim::Domain>>;

impl Sim {
    pub fn new() -> Sim {
        let xs = OurXenstored::for_test(Limits::DEFAULT);
        let d0 = xs.dom0_client();
        Sim {
            xs,
            d0,
            buses: BTreeMap::new(),
            now: Duration::ZERO,
            events: Vec::new(),
            logs: Rc::default(),
            front_opts: Rc::default(),
            clients: BTreeMap::new(),
        }
    }

    /// Create domain `domid` and its home as libxl does: `/local/domain/N` `(n0,rN)`, `name`,
    /// `domid`, and the guest-owned `error` and `device` (the latter `(n0,rN)` as its home).
    pub fn create_domain(&mut self, domid: DomId) {
        self.xs
            .hypervisor()
            .create_domain_with_id(domid, &format!("guest{domid}"))
            .unwrap();
        // Let the daemon see the new domain before permissions name it.
        self.xs.xenstored().sync();
        let home = format!("/local/domain/{domid}");
        let d0 = &mut self.d0;
        d0.transact(|tx| {
            let r = perms(&[(Access::None, 0), (Access::Read, domid)]);
            tx.mkdir(&home)?;
            tx.set_perms(&home, &r)?;
            for (k, v) in [
                ("name", format!("guest{domid}")),
                ("domid", domid.to_string()),
            ] {
                tx.write(&format!("{home}/{k}"), v.as_bytes())?;
                tx.set_perms(&format!("{home}/{k}"), &r)?;
            }
            tx.mkdir(&format!("{home}/device"))?;
            tx.set_perms(&format!("{home}/device"), &r)?;
            tx.mkdir(&format!("{home}/error"))?;
            tx.set_perms(&format!("{home}/error"), &perms(&[(Access::None, domid)]))?;
            Ok(())
        })
        .unwrap();
        let c = self.guest_client(domid);
        self.clients.insert(domid, c);
    }

    /// A guest's XenStore client over its ring.
    fn guest_client(&self, domid: DomId) -> Guest {
        self.xs
            .xenstored()
            .serve_domain(domid)
            .unwrap()
            .client()
            .unwrap()
    }

    /// Add a bus named `name` for `domid` (0: over a dom0 socket), with vdummy front and/or
    /// back drivers.
    pub fn add_bus(&mut self, name: &str, domid: DomId, front: bool, back: bool, cfg: BusConfig) {
        let bus: Box<dyn AnyBus> = if domid == 0 {
            let mut b = Bus::with_config(self.xs.dom0_client(), 0, cfg);
            self.register(&mut b, name, front, back);
            Box::new(b)
        } else {
            let c = self.clients.remove(&domid).expect("create_domain first");
            let mut b = Bus::with_config(c, domid, cfg);
            self.register(&mut b, name, front, back);
            Box::new(b)
        };
        self.buses.insert(name.to_string(), bus);
    }

    fn register<T: Transport>(&self, b: &mut Bus<T>, name: &str, front: bool, back: bool) {
        if front {
            let (logs, opts, n) = (self.logs.clone(), self.front_opts.clone(), name.to_string());
            b.register_front("vdummy", move |info| {
                let o = opts
                    .borrow()
                    .get(&info.nodename)
                    .copied()
                    .unwrap_or_default();
                Box::new(DummyFront::new(log_for(&logs, &n, info), o))
            })
            .unwrap();
        }
        if back {
            let (logs, n) = (self.logs.clone(), name.to_string());
            b.register_back("vdummy", move |info| {
                Box::new(DummyBack::new(log_for(&logs, &n, info)))
            })
            .unwrap();
        }
    }

    /// Add device `vdummy/<id>` of frontend `fe` served by backend `be` as libxl does, in one
    /// transaction: frontend dir and keys `(n<fe>,r<be>)` with `backend`, `backend-id`,
    /// `state` = 1; backend dir and keys `(n<be>,r<fe>)` with `frontend`, `frontend-id`,
    /// `online` = 1, `state` = 1; the backend's parents `(n0,r<be>)`.
    pub fn add_device(&mut self, fe: DomId, be: DomId, id: &str) {
        let fdir = format!("/local/domain/{fe}/device/vdummy/{id}");
        let bdir = format!("/local/domain/{be}/backend/vdummy/{fe}/{id}");
        let fperm = perms(&[(Access::None, fe), (Access::Read, be)]);
        let bperm = perms(&[(Access::None, be), (Access::Read, fe)]);
        self.d0
            .transact(|tx| {
                let fclass = format!("/local/domain/{fe}/device/vdummy");
                tx.mkdir(&fclass)?;
                tx.set_perms(&fclass, &perms(&[(Access::None, 0), (Access::Read, fe)]))?;
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
                tx.mkdir(&fdir)?;
                tx.set_perms(&fdir, &fperm)?;
                for (k, v) in [
                    ("backend", bdir.clone()),
                    ("backend-id", be.to_string()),
                    ("state", "1".into()),
                ] {
                    tx.write(&format!("{fdir}/{k}"), v.as_bytes())?;
                    tx.set_perms(&format!("{fdir}/{k}"), &fperm)?;
                }
                tx.mkdir(&bdir)?;
                tx.set_perms(&bdir, &bperm)?;
                for (k, v) in [
                    ("frontend", fdir.clone()),
                    ("frontend-id", fe.to_string()),
                    ("online", "1".into()),
                    ("state", "1".into()),
                ] {
                    tx.write(&format!("{bdir}/{k}"), v.as_bytes())?;
                    tx.set_perms(&format!("{bdir}/{k}"), &bperm)?;
                }
                Ok(())
            })
            .unwrap();
    }

    pub fn front_dir(fe: DomId, id: &str) -> String {
        format!("/local/domain/{fe}/device/vdummy/{id}")
    }

    pub fn back_dir(fe: DomId, be: DomId, id: &str) -> String {
        format!("/local/domain/{be}/backend/vdummy/{fe}/{id}")
    }

    /// Read a node as dom0 (`None` if missing).
    pub fn read(&mut self, path: &str) -> Option<String> {
        self.d0
            .try_read(path)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn state(&mut self, dir: &str) -> Option<String> {
        self.read(&format!("{dir}/state"))
    }

    /// One round: every bus polled once (in name order), then the clock moves by [`TICK`].
    pub fn round(&mut self) {
        for (name, b) in self.buses.iter_mut() {
            b.poll(self.now);
            for e in b.take_events() {
                self.events.push((name.clone(), e));
            }
        }
        self.now += TICK;
        std::thread::sleep(Duration::from_millis(1));
    }

    /// Rounds until `cond` holds; panics after `max` rounds.
    #[track_caller]
    pub fn run_until(&mut self, what: &str, max: usize, mut cond: impl FnMut(&mut Sim) -> bool) {
        for _ in 0..max {
            self.round();
            if cond(self) {
                return;
            }
        }
        panic!(
            "{what}: not reached after {max} rounds; events {:#?}; logs {:#?}",
            self.events,
            self.logs.borrow()
        );
    }

    /// `n` rounds.
    pub fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round();
        }
    }

    pub fn status(&self, bus: &str, nodename: &str) -> Option<DeviceStatus> {
        self.buses.get(bus).and_then(|b| b.status(nodename))
    }

    pub fn reconnect(&mut self, bus: &str, nodename: &str) -> bool {
        let now = self.now;
        self.buses.get_mut(bus).unwrap().reconnect(nodename, now)
    }

    pub fn close(&mut self, bus: &str, nodename: &str) -> bool {
        self.buses.get_mut(bus).unwrap().close(nodename)
    }

    /// Whether `bus` has reported device `nodename` Connected.
    pub fn connected(&self, bus: &str, nodename: &str) -> bool {
        self.events.iter().any(|(b, e)| {
            b == bus && matches!(e, BusEvent::Connected { nodename: n } if n == nodename)
        })
    }

    /// The Closed event of `bus`'s device, if reported: `Some(error)`.
    pub fn closed(&self, bus: &str, nodename: &str) -> Option<Option<DriverError>> {
        self.events.iter().find_map(|(b, e)| match e {
            BusEvent::Closed { nodename: n, error } if b == bus && n == nodename => {
                Some(error.clone())
            }
            _ => None,
        })
    }

    pub fn log(&self, bus: &str, nodename: &str) -> Vec<String> {
        self.logs
            .borrow()
            .get(&format!("{bus}:{nodename}"))
            .map(|l| l.borrow().clone())
            .unwrap_or_default()
    }

    pub fn set_front_opts(&self, nodename: &str, o: FrontOpts) {
        self.front_opts.borrow_mut().insert(nodename.into(), o);
    }
}

/// A test config: short timeouts on the fake clock.
pub fn cfg(handshake_ms: u64) -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_millis(handshake_ms),
        close_timeout: Duration::from_millis(handshake_ms),
        resync_interval: Duration::from_millis(200),
        ..BusConfig::default()
    }
}
