//! The bus against `xen-toolstack` (libxl's nodes, permissions and commands, as `xl` does
//! them): devices added by `add_vbd`, `xl block-detach` while both ends run, a driver
//! domain, `xl destroy` of a peer. The buses are polled on the test thread (real time); the
//! toolstack's blocking commands run on a scoped thread meanwhile. Every wait is bounded.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{AnyBus, DummyBack, DummyFront, FrontOpts, Log};
use xen_bus::store::client::Store;
use xen_bus::{Bus, BusConfig, BusEvent, DomId};
use xen_toolstack::{Device, DomainConfig, Timeouts, Toolstack, Vbd};

const XVDA: &str = "device/vbd/51712";
const LIMIT: Duration = Duration::from_secs(10);

struct World {
    ts: Toolstack,
    buses: Vec<(String, Box<dyn AnyBus>)>,
    events: Vec<(String, BusEvent)>,
    logs: Rc<RefCell<BTreeMap<String, Log>>>,
    t0: Instant,
}

impl World {
    fn new() -> World {
        let ts = Toolstack::new().unwrap();
        ts.set_timeouts(Timeouts::all(Duration::from_secs(5)));
        World {
            ts,
            buses: Vec::new(),
            events: Vec::new(),
            logs: Rc::default(),
            t0: Instant::now(),
        }
    }

    fn add_bus<T: xen_bus::store::client::Transport + 'static>(
        &mut self,
        name: &str,
        mut b: Bus<T>,
        front: bool,
        back: bool,
    ) {
        if front {
            let (logs, n) = (self.logs.clone(), name.to_string());
            b.register_front("vbd", move |info| {
                let l = logs
                    .borrow_mut()
                    .entry(format!("{n}:{}", info.nodename))
                    .or_default()
                    .clone();
                Box::new(DummyFront::new(l, FrontOpts::default()))
            })
            .unwrap();
        }
        if back {
            let (logs, n) = (self.logs.clone(), name.to_string());
            b.register_back("vbd", move |info| {
                let l = logs
                    .borrow_mut()
                    .entry(format!("{n}:{}", info.nodename))
                    .or_default()
                    .clone();
                Box::new(DummyBack::new(l))
            })
            .unwrap();
        }
        self.buses.push((name.to_string(), Box::new(b)));
    }

    fn dom0_bus(&mut self) {
        let b = Bus::new(self.ts.dom0_client().unwrap(), 0);
        self.add_bus("dom0", b, false, true);
    }

    fn guest_bus(&mut self, name: &str, g: &xen_toolstack::Guest, front: bool, back: bool) {
        let b = Bus::with_config(g.xs_client().unwrap(), g.domid(), cfg());
        self.add_bus(name, b, front, back);
    }

    fn poll_all(
        buses: &mut [(String, Box<dyn AnyBus>)],
        events: &mut Vec<(String, BusEvent)>,
        now: Duration,
    ) {
        for (n, b) in buses.iter_mut() {
            b.poll(now);
            events.extend(b.take_events().into_iter().map(|e| (n.clone(), e)));
        }
    }

    #[track_caller]
    fn run_until(&mut self, what: &str, mut cond: impl FnMut(&World) -> bool) {
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            Self::poll_all(&mut self.buses, &mut self.events, self.t0.elapsed());
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("{what}: not reached; events {:#?}", self.events);
    }

    fn connected(&self, bus: &str, node: &str) -> bool {
        self.events.iter().any(|(b, e)| {
            b == bus && matches!(e, BusEvent::Connected { nodename } if nodename == node)
        })
    }

    fn closed(&self, bus: &str, node: &str) -> Option<Option<xen_bus::DriverError>> {
        self.events.iter().find_map(|(b, e)| match e {
            BusEvent::Closed { nodename, error } if b == bus && nodename == node => {
                Some(error.clone())
            }
            _ => None,
        })
    }

    fn read(&self, path: &str) -> Option<String> {
        self.ts
            .with_xs(|xs| xs.try_read(path).unwrap())
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// `xl block-detach fe vdev` on a thread (it blocks until both ends close) while this
    /// thread polls every bus; it must succeed within [`LIMIT`].
    fn block_detach_while_polling(&mut self, fe: DomId, vdev: &str) {
        let World {
            ts,
            buses,
            events,
            t0,
            ..
        } = self;
        std::thread::scope(|s| {
            let detach = s.spawn(|| ts.block_detach(fe, vdev));
            let end = Instant::now() + LIMIT;
            while !detach.is_finished() {
                assert!(Instant::now() < end, "block-detach did not return");
                World::poll_all(buses, events, t0.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            detach.join().unwrap().unwrap();
        });
    }

    /// A storage (driver) domain and a guest, each with its bus, and the guest's xvda served by
    /// the storage domain, both ends Connected. Returns (storage domid, guest domid, device).
    fn served_by_driver_domain(&mut self) -> (DomId, DomId, Device) {
        let sd = self
            .ts
            .create_domain("storage", DomainConfig::default().driver_domain())
            .unwrap();
        let g = self
            .ts
            .create_domain("guest", DomainConfig::default())
            .unwrap();
        let (sdid, fe) = (sd.domid(), g.domid());
        self.guest_bus("storage", &sd, false, true);
        self.guest_bus("guest", &g, true, false);
        let dev = self
            .ts
            .add_vbd(&Vbd::new(fe, sdid, "xvda", "/root/disk.img"))
            .unwrap();
        self.run_until("both Connected", |w| {
            w.connected("guest", XVDA) && w.connected("storage", &be(fe))
        });
        (sdid, fe, dev)
    }
}

fn cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(3),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    }
}

fn be(fe: DomId) -> String {
    format!("backend/vbd/{fe}/51712")
}

#[test]
fn xl_create_connect_and_block_detach() {
    let mut w = World::new();
    let g =
        w.ts.create_domain("guest", DomainConfig::default())
            .unwrap();
    let fe = g.domid();
    w.dom0_bus();
    w.guest_bus("guest", &g, true, false);
    let dev =
        w.ts.add_vbd(&Vbd::new(fe, 0, "xvda", "/root/disk.img"))
            .unwrap();
    w.run_until("both Connected", |w| {
        w.connected("guest", XVDA) && w.connected("dom0", &be(fe))
    });
    assert_eq!(
        w.read(&format!("{}/state", dev.frontend_path())).as_deref(),
        Some("4")
    );
    assert_eq!(
        w.read(&format!("{}/state", dev.backend_path())).as_deref(),
        Some("4")
    );
    // xl block-detach blocks until both ends are Closed, then removes the nodes.
    w.block_detach_while_polling(fe, "xvda");
    assert_eq!(w.closed("guest", XVDA), Some(None));
    assert_eq!(w.closed("dom0", &be(fe)), Some(None));
    assert_eq!(w.read(&dev.frontend_path()), None);
    assert_eq!(w.read(&dev.backend_path()), None);
    w.run_until("devices forgotten", |w| {
        w.buses
            .iter()
            .all(|(_, b)| b.status(XVDA).is_none() && b.status(&be(fe)).is_none())
    });
    // Attached again: connects again.
    w.ts.add_vbd(&Vbd::new(fe, 0, "xvda", "/root/disk.img"))
        .unwrap();
    w.run_until("Connected again", |w| {
        w.events
            .iter()
            .filter(|(_, e)| matches!(e, BusEvent::Connected { .. }))
            .count()
            == 4
    });
}

/// `xl block-detach` of a device served by a driver domain: libxl in dom0 waits for the
/// driver domain to remove its backend directory (what `xl devd` does), and our bus does.
#[test]
fn block_detach_from_a_driver_domain_removes_its_backend_directory() {
    let mut w = World::new();
    let (sdid, fe, dev) = w.served_by_driver_domain();
    w.block_detach_while_polling(fe, "xvda");
    assert_eq!(w.closed("storage", &be(fe)), Some(None));
    assert_eq!(w.read(&dev.backend_path()), None);
    assert_eq!(w.read(&dev.frontend_path()), None);
    // The parent libxl made (`(n0,r<sd>)`) is not ours to remove.
    assert!(w
        .read(&format!("/local/domain/{sdid}/backend/vbd/{fe}"))
        .is_some());
    w.run_until("device forgotten", |w| {
        w.buses.iter().all(|(_, b)| b.status(&be(fe)).is_none())
    });
}

#[test]
fn driver_domain_backend_then_destroyed() {
    let mut w = World::new();
    let (sdid, fe, dev) = w.served_by_driver_domain();
    assert_eq!(
        w.read(&format!("{}/state", dev.backend_path())).as_deref(),
        Some("4")
    );
    // xl destroy of the storage domain: the frontend is left Closed, its error published.
    w.buses.retain(|(n, _)| n != "storage");
    w.ts.destroy(sdid).unwrap();
    w.run_until("frontend Closed", |w| w.closed("guest", XVDA).is_some());
    assert!(w.closed("guest", XVDA).unwrap().is_some());
    let err = w
        .read(&format!("/local/domain/{fe}/error/device/vbd/51712/error"))
        .expect("error published");
    assert!(err.starts_with("19 ") || err.starts_with("13 "), "{err}");
    assert_eq!(
        w.read(&format!("{}/state", dev.frontend_path())).as_deref(),
        Some("6")
    );
}

#[test]
fn xl_destroy_of_the_frontend_mid_handshake() {
    let mut w = World::new();
    let g =
        w.ts.create_domain("guest", DomainConfig::default())
            .unwrap();
    let fe = g.domid();
    w.dom0_bus();
    let dev =
        w.ts.add_vbd(&Vbd::new(fe, 0, "xvda", "/root/disk.img"))
            .unwrap();
    let bstate = format!("{}/state", dev.backend_path());
    w.run_until("backend InitWait", |w| {
        w.read(&bstate).as_deref() == Some("2")
    });
    // The guest never starts its frontend; xl destroy removes the device nodes (the backend
    // directory included) and the domain.
    w.ts.destroy(fe).unwrap();
    w.run_until("backend Closed", |w| w.closed("dom0", &be(fe)).is_some());
    let err = w.closed("dom0", &be(fe)).unwrap().expect("a failure");
    assert_eq!(err.errno, xen_bus::errno::ENODEV);
    assert!(w
        .read(&format!(
            "/local/domain/0/error/backend/vbd/{fe}/51712/error"
        ))
        .is_some_and(|v| v.starts_with("19 ")));
    // Its state was not resurrected in the removed directory.
    assert_eq!(w.read(&dev.backend_path()), None);
}
