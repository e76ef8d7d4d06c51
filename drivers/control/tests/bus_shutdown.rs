//! XenBus issue, item 6: on poweroff (and reboot) every attached device goes Closing →
//! Closed before the domain shuts down. End to end on the simulator with `xen-toolstack`:
//! `xl shutdown -w` / `xl reboot -w` run on a scoped thread; the test thread is the guest's
//! main loop — the control driver (deferred shutdown) and the guest's bus on one XenStore
//! client — and also polls the backends' buses (from `Bus::shutdown`'s wait callback while
//! the guest closes its devices), so the order of what happens is deterministic. Every wait
//! is bounded.
//!
//! * `xl shutdown` / `xl reboot` with two vbds backed by dom0: ack `""` → both fronts Closing
//!   → Closed (backends Closing between, Closed after) → `SCHEDOP_shutdown`;
//! * a third vbd from a driver domain that hangs: it fails after the guest's close timeout
//!   (`ETIMEDOUT` published, Closed) and the poweroff is late by that only;
//! * `Bus::shutdown`'s own bound when the close timeout is longer; `close_all` idempotent,
//!   nothing adopted or reconnected after it.

// The bus tests' vdummy drivers, by path: this test lives with the control driver (the layer
// above the bus) so that xen-bus needs no dev-dependency on xen-control.
#[path = "../../../bus/tests/common/dummy.rs"]
mod dummy;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dummy::{DummyBack, DummyFront, FrontOpts, Log};
use xen_bus::platform::{Clock, Events, ShutdownReason};
use xen_bus::store::client::{Store, Transport};
use xen_bus::{errno, Bus, BusConfig, BusEvent, BusPoll, Phase, XenbusState};
use xen_control::{Control, Event, Request};
use xen_toolstack::{Device, DomainConfig, Timeouts, Toolstack, Vbd};

/// Bound of every wait.
const LIMIT: Duration = Duration::from_secs(10);
/// The guest's close timeout (a silent backend fails after this).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound given to `Bus::shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

type Logs = Rc<RefCell<BTreeMap<String, Log>>>;

fn guest_cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(5),
        close_timeout: CLOSE_TIMEOUT,
        resync_interval: Duration::from_millis(50),
        ..BusConfig::default()
    }
}

fn register_back<T: Transport>(b: &mut Bus<T>, logs: &Logs, name: &str) {
    let (logs, n) = (logs.clone(), name.to_string());
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

fn register_front<T: Transport>(b: &mut Bus<T>, logs: &Logs) {
    let logs = logs.clone();
    b.register_front("vbd", move |info| {
        let l = logs
            .borrow_mut()
            .entry(format!("guest:{}", info.nodename))
            .or_default()
            .clone();
        Box::new(DummyFront::new(l, FrontOpts::default()))
    })
    .unwrap();
}

fn state(xs: &mut impl Store, path: &str) -> Option<String> {
    xs.try_read(&format!("{path}/state"))
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// The order of what happened, as seen from dom0 (the toolstack's view of XenStore), one
/// line per change: `ack`, `front <devid> <state>`, `back <devid> <state>`, `shutdown
/// <reason>`.
#[derive(Default)]
struct Order {
    lines: Vec<String>,
    last: BTreeMap<String, Option<String>>,
}

impl Order {
    fn sample(&mut self, xs: &mut impl Store, devs: &[Device]) {
        for d in devs {
            for (end, path) in [("front", d.frontend_path()), ("back", d.backend_path())] {
                let s = state(xs, &path);
                let key = format!("{end} {}", d.devid);
                if self.last.get(&key) != Some(&s) {
                    self.lines
                        .push(format!("{key} {}", s.clone().unwrap_or("-".into())));
                    self.last.insert(key, s);
                }
            }
        }
    }

    fn index(&self, line: &str) -> usize {
        self.lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} not in {:#?}", self.lines))
    }
}

/// A guest with `n_dom0` vbds backed by dom0 and, if `dead_backend`, one more backed by a
/// driver domain whose bus stops answering once it is Connected. The toolstack runs
/// `xl shutdown` (or `xl reboot`); returns the order of events.
fn run(reboot: bool, dead_backend: bool) {
    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(LIMIT));
    let logs: Logs = Rc::default();

    let storage = dead_backend.then(|| {
        ts.create_domain("storage", DomainConfig::default().driver_domain())
            .unwrap()
    });
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let (fe, dom) = (g.domid(), g.domain().clone());

    let mut dom0 = Bus::new(ts.dom0_client().unwrap(), 0);
    register_back(&mut dom0, &logs, "dom0");
    let mut sd = storage.as_ref().map(|s| {
        let mut b = Bus::with_config(s.xs_client().unwrap(), s.domid(), guest_cfg());
        register_back(&mut b, &logs, "storage");
        b
    });
    // The guest: one XenStore client, owned by its bus; the control driver uses it through
    // `Bus::client`.
    let mut bus: Bus<_> = Bus::with_config(g.xs_client().unwrap(), fe, guest_cfg());
    register_front(&mut bus, &logs);
    let mut ctl = Control::new(|_: Request| {}).with_deferred_shutdown();
    ctl.start(bus.client()).unwrap();

    let mut devs = vec![
        ts.add_vbd(&Vbd::new(fe, 0, "xvda", "/root/a.img")).unwrap(),
        ts.add_vbd(&Vbd::new(fe, 0, "xvdb", "/root/b.img")).unwrap(),
    ];
    if let Some(s) = &storage {
        devs.push(
            ts.add_vbd(&Vbd::new(fe, s.domid(), "xvdc", "/root/c.img"))
                .unwrap(),
        );
    }
    let front_node = |d: &Device| format!("device/vbd/{}", d.devid);
    let back_node = |d: &Device| format!("backend/vbd/{fe}/{}", d.devid);

    // Everything Connected.
    let end = Instant::now() + LIMIT;
    loop {
        let now = dom.now();
        dom0.poll(now).unwrap();
        if let Some(b) = sd.as_mut() {
            b.poll(now).unwrap();
        }
        bus.poll(now).unwrap();
        let all = devs.iter().all(|d| {
            bus.device(&front_node(d))
                .is_some_and(|s| s.phase == Phase::Connected)
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < end,
            "not all Connected: {:#?}",
            bus.devices()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for d in &devs {
        let mut xs = ts.dom0_client().unwrap();
        assert_eq!(state(&mut xs, &d.frontend_path()).as_deref(), Some("4"));
        assert_eq!(state(&mut xs, &d.backend_path()).as_deref(), Some("4"));
    }
    // The driver domain hangs: its bus is never polled again (its nodes stay Connected).
    let _hung = sd.take();
    while bus.take_event().is_some() {}
    while dom0.take_event().is_some() {}

    let (request, reason) = if reboot {
        (Request::Reboot, ShutdownReason::Reboot)
    } else {
        (Request::Poweroff, ShutdownReason::Poweroff)
    };
    let mut order = Order::default();
    let mut watcher = ts.dom0_client().unwrap();
    std::thread::scope(|s| {
        let xl = s.spawn(|| {
            if reboot {
                ts.reboot(fe)
            } else {
                ts.shutdown(fe)
            }
        });

        // The guest's main loop: control, bus, (and dom0's bus, for the test).
        let port = bus.client().event_port().unwrap();
        let end = Instant::now() + LIMIT;
        let pending = loop {
            assert!(Instant::now() < end, "no shutdown request seen");
            dom.clear(port);
            dom0.poll(dom.now()).unwrap();
            bus.poll(dom.now()).unwrap();
            order.sample(&mut watcher, &devs);
            match ctl.poll(bus.client(), &dom).unwrap() {
                Some(ev) => break ev,
                None => {
                    let _ = dom.wait(&[port], Some(Duration::from_millis(5)));
                }
            }
        };
        assert_eq!(pending, Event::ShutdownPending { request, reason });
        // Acknowledged ("" written, libxl sees it), nothing closed yet, still running.
        assert_eq!(
            watcher
                .try_read(&format!("/local/domain/{fe}/control/shutdown"))
                .unwrap()
                .as_deref(),
            Some(&b""[..])
        );
        assert_eq!(dom.shutdown_reason(), None);
        order.sample(&mut watcher, &devs);
        order.lines.push("ack".into());

        // Close every device, bounded; the wait polls dom0's backends meanwhile.
        let summary = bus
            .shutdown(&dom, SHUTDOWN_TIMEOUT, |p: BusPoll| {
                assert_eq!(dom.shutdown_reason(), None, "shut down before the devices");
                dom0.poll(dom.now()).unwrap();
                order.sample(&mut watcher, &devs);
                let left = p
                    .next_deadline
                    .unwrap()
                    .saturating_sub(dom.now())
                    .min(Duration::from_millis(2));
                if !p.busy {
                    let _ = dom.wait(&[p.port.unwrap()], Some(left));
                    dom.clear(p.port.unwrap());
                }
            })
            .unwrap();
        order.sample(&mut watcher, &devs);
        assert!(bus.all_closed(), "{:#?}", bus.devices());
        for d in &devs {
            let st = bus.device(&front_node(d)).unwrap();
            assert_eq!(st.phase, Phase::Closed);
            assert_eq!(st.state, XenbusState::Closed);
        }
        assert_eq!(dom.shutdown_reason(), None);

        // Then SCHEDOP_shutdown.
        let done = ctl.finish_shutdown(&dom).unwrap();
        assert_eq!(done, Some(Event::Shutdown { request, reason }));
        assert_eq!(dom.shutdown_reason(), Some(reason));
        order.lines.push(format!("shutdown {reason:?}"));
        // By the time the domain is shut down, every frontend is Closed (6).
        for d in &devs {
            assert_eq!(
                state(&mut watcher, &d.frontend_path()).as_deref(),
                Some("6"),
                "{}",
                d.devid
            );
        }
        xl.join().unwrap().unwrap();

        // Summary: the dom0-backed devices closed in order; the one behind the hung driver
        // domain failed after the close timeout, not later.
        let n0 = if dead_backend { 2 } else { devs.len() };
        let mut clean: Vec<String> = devs[..n0].iter().map(front_node).collect();
        clean.sort();
        assert_eq!(summary.closed, clean);
        assert!(!summary.timed_out);
        if dead_backend {
            let dead = front_node(&devs[2]);
            assert_eq!(summary.failed.len(), 1);
            assert_eq!(summary.failed[0].0, dead);
            assert_eq!(summary.failed[0].1.errno, errno::ETIMEDOUT);
            assert!(summary.elapsed >= CLOSE_TIMEOUT, "{summary:?}");
            assert!(
                summary.elapsed < CLOSE_TIMEOUT + Duration::from_secs(2),
                "{summary:?}"
            );
            let err = watcher
                .try_read(&format!("/local/domain/{fe}/error/{dead}/error"))
                .unwrap()
                .map(|v| String::from_utf8(v).unwrap())
                .expect("error published");
            assert!(err.starts_with("110 "), "{err}");
        } else {
            assert!(summary.is_clean(), "{summary:?}");
            assert!(summary.elapsed < CLOSE_TIMEOUT, "{summary:?}");
        }
    });

    // dom0's backends follow to Closed once they see the frontend's Closed (possibly only
    // after the guest is gone, as with Linux blkback).
    let end = Instant::now() + LIMIT;
    loop {
        dom0.poll(dom.now()).unwrap();
        order.sample(&mut watcher, &devs);
        let closed = devs[..2].iter().all(|d| {
            dom0.device(&back_node(d))
                .is_some_and(|s| s.phase == Phase::Closed)
        });
        if closed {
            break;
        }
        assert!(
            Instant::now() < end,
            "backends not Closed: {:#?}",
            dom0.devices()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for d in &devs[..2] {
        assert_eq!(state(&mut watcher, &d.backend_path()).as_deref(), Some("6"));
        assert_eq!(
            dom0.device(&back_node(d)).unwrap().error,
            None,
            "{}",
            d.devid
        );
    }
    let events: Vec<BusEvent> = std::iter::from_fn(|| bus.take_event()).collect();
    for d in &devs {
        assert!(events
            .iter()
            .any(|e| matches!(e, BusEvent::Closed { nodename, .. } if *nodename == front_node(d))));
    }

    // The order: ack → every front Closing → Closed → the domain's shutdown; each backend
    // Closing after its front's Closing, Closed after its front's Closed.
    let ack = order.index("ack");
    let down = order.index(&format!("shutdown {reason:?}"));
    for d in &devs {
        let closing = order.index(&format!("front {} 5", d.devid));
        let closed = order.index(&format!("front {} 6", d.devid));
        assert!(
            ack < closing && closing < closed && closed < down,
            "{:#?}",
            order.lines
        );
    }
    for d in &devs[..2] {
        let f5 = order.index(&format!("front {} 5", d.devid));
        let f6 = order.index(&format!("front {} 6", d.devid));
        let b5 = order.index(&format!("back {} 5", d.devid));
        let b6 = order.index(&format!("back {} 6", d.devid));
        assert!(f5 < b5 && b5 < f6 && f6 < b6, "{:#?}", order.lines);
    }
    if dead_backend {
        // The hung backend never moved.
        assert!(!order
            .lines
            .iter()
            .any(|l| l.starts_with(&format!("back {} ", devs[2].devid)) && !l.ends_with(" 4")));
    }
    // The frontend drivers detached.
    for d in &devs {
        let log = logs.borrow()[&format!("guest:{}", front_node(d))].clone();
        assert!(log.borrow().contains(&"detach".to_string()), "{log:?}");
    }
}

#[test]
fn xl_shutdown_closes_every_device_before_poweroff() {
    run(false, false);
}

#[test]
fn xl_reboot_closes_every_device_before_reboot() {
    run(true, false);
}

#[test]
fn a_hung_backend_delays_poweroff_by_the_close_timeout_only() {
    run(false, true);
}

/// The overall bound of `Bus::shutdown`: a silent backend with a close timeout longer than
/// it is failed (`ETIMEDOUT`, published, Closed) when it runs out. `close_all` is idempotent,
/// and once it was called nothing new is adopted.
#[test]
fn the_shutdown_timeout_bounds_a_long_close_timeout() {
    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(LIMIT));
    let logs: Logs = Rc::default();
    let sd = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .unwrap();
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let (fe, dom) = (g.domid(), g.domain().clone());
    let mut back = Bus::with_config(sd.xs_client().unwrap(), sd.domid(), guest_cfg());
    register_back(&mut back, &logs, "storage");
    let cfg = BusConfig {
        close_timeout: Duration::from_secs(30),
        ..guest_cfg()
    };
    let mut bus = Bus::with_config(g.xs_client().unwrap(), fe, cfg);
    register_front(&mut bus, &logs);
    let dev = ts
        .add_vbd(&Vbd::new(fe, sd.domid(), "xvda", "/root/a.img"))
        .unwrap();
    let node = format!("device/vbd/{}", dev.devid);
    let end = Instant::now() + LIMIT;
    while !bus
        .device(&node)
        .is_some_and(|s| s.phase == Phase::Connected)
    {
        assert!(Instant::now() < end, "not Connected");
        back.poll(dom.now()).unwrap();
        bus.poll(dom.now()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    // The storage domain hangs from here on.
    assert!(!bus.is_closing_all());
    assert_eq!(bus.close_all(), 1);
    assert_eq!(bus.close_all(), 1, "idempotent");
    let t = Duration::from_millis(300);
    let summary = bus
        .shutdown(&dom, t, |_| std::thread::sleep(Duration::from_millis(2)))
        .unwrap();
    assert!(summary.timed_out, "{summary:?}");
    assert!(summary.closed.is_empty());
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].0, node);
    assert_eq!(summary.failed[0].1.errno, errno::ETIMEDOUT);
    assert!(summary.elapsed >= t && summary.elapsed < t + Duration::from_secs(2));
    let st = bus.device(&node).unwrap();
    assert_eq!((st.phase, st.state), (Phase::Closed, XenbusState::Closed));
    let mut xs = ts.dom0_client().unwrap();
    assert_eq!(state(&mut xs, &dev.frontend_path()).as_deref(), Some("6"));
    let err = xs
        .try_read(&format!("/local/domain/{fe}/error/{node}/error"))
        .unwrap()
        .expect("error published");
    assert!(
        err.starts_with(b"110 "),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(bus.close_all(), 0);
    // Shutting down: a device added now is not adopted.
    let late = ts
        .add_vbd(&Vbd::new(fe, sd.domid(), "xvdb", "/root/b.img"))
        .unwrap();
    for _ in 0..20 {
        bus.poll(dom.now()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(bus.device(&format!("device/vbd/{}", late.devid)).is_none());
    assert_eq!(state(&mut xs, &late.frontend_path()).as_deref(), Some("1"));
    assert!(!bus.reconnect(&node, dom.now()));
}
