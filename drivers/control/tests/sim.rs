//! The control driver in a simulated guest, against our xenstored, with dom0 playing libxl
//! (`xl shutdown`/`reboot`/`save`: write `control/shutdown`, wait for the `""` ack, then for
//! the domain's shutdown).
//!
//! * features advertised at start (`feature-suspend` only with a suspend hook);
//! * poweroff / halt / reboot / crash: acked with `""` promptly, `before_shutdown` called after
//!   the ack and before `SCHEDOP_shutdown`, the domain's shutdown reason as sched.h says;
//! * suspend with a hook: quiesce → suspend → resume in order, the driver keeps working after;
//!   a cancelled suspend, a failing quiesce; suspend without a hook: not advertised, not acked;
//! * unknown values and garbage (binary, very long): logged, not acked, no shutdown, no panic;
//! * a guest main loop in a thread while dom0 writes; two requests in quick succession;
//! * a second request written between the driver's read and its ack: the commit conflicts,
//!   the retry reads the new request, the first one is never acknowledged (none lost).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xen_control::{
    BeforeShutdown, Control, ControlError, Event, Ignored, Request, SuspendHook, SHUTDOWN_NODE,
};
use xen_platform::{Events, Scheduler, ShutdownReason};
use xen_sim::Domain;
use xen_store::client::{Client, Store, Transport, TransportError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::{DomId, EvtchnPort};
use xen_store_host::conformance::Limits;
use xen_store_host::ours::OurXenstored;
use xen_store_host::{OwnedRing, UnixTransport};

type Dom0 = Client<UnixTransport>;
type GuestXs = Client<OwnedRing<Domain>>;

/// Bound of every wait in these tests.
const T: Duration = Duration::from_secs(10);
/// "Promptly": libxl waits 60 s for the ack; we want it well within one poll round.
const PROMPT: Duration = Duration::from_secs(2);

fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect()).unwrap()
}

/// A simulator with dom0 and our xenstored, and a dom0 connection.
struct World {
    xs: OurXenstored,
    d0: Dom0,
}

impl World {
    fn new() -> World {
        let xs = OurXenstored::for_test(Limits::DEFAULT);
        let d0 = xs.dom0_client();
        World { xs, d0 }
    }

    /// `xl create`'s XenStore part for `domid` (XENSTORE-LAYOUT.md): the home `(n0,r<domid>)`,
    /// dom0's nodes, and the nodes created empty and owned by the guest, among them
    /// `control/shutdown` and `control/feature-{poweroff,reboot,suspend}`. Returns the guest's
    /// domain handle and its XenStore client over its ring.
    fn guest(&mut self, domid: DomId) -> (Domain, GuestXs) {
        let dom = self
            .xs
            .hypervisor()
            .create_domain_with_id(domid, &format!("guest{domid}"))
            .unwrap();
        let home = format!("/local/domain/{domid}");
        let d0 = &mut self.d0;
        let dom0_owned = perms(&[(Access::None, 0), (Access::Read, domid)]);
        d0.mkdir(&home).unwrap();
        d0.set_perms(&home, &dom0_owned).unwrap();
        d0.write(&format!("{home}/name"), format!("guest{domid}").as_bytes())
            .unwrap();
        d0.write(&format!("{home}/domid"), domid.to_string().as_bytes())
            .unwrap();
        d0.mkdir(&format!("{home}/control")).unwrap();
        d0.set_perms(&format!("{home}/control"), &dom0_owned)
            .unwrap();
        for k in [
            "control/platform-feature-multiprocessor-suspend",
            "control/platform-feature-xs_reset_watches",
        ] {
            d0.write(&format!("{home}/{k}"), b"1").unwrap();
            d0.set_perms(&format!("{home}/{k}"), &dom0_owned).unwrap();
        }
        for k in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "data",
        ] {
            let p = format!("{home}/{k}");
            d0.write(&p, b"").unwrap();
            d0.set_perms(&p, &perms(&[(Access::None, domid)])).unwrap();
        }
        let xs = self
            .xs
            .xenstored()
            .serve_domain(domid)
            .unwrap()
            .client()
            .unwrap();
        (dom, xs)
    }

    fn read(&mut self, domid: DomId, key: &str) -> Option<Vec<u8>> {
        self.d0
            .try_read(&format!("/local/domain/{domid}/{key}"))
            .unwrap()
    }

    /// What libxl's `libxl__domain_pvcontrol` does first: write the request.
    fn request(&mut self, domid: DomId, word: &[u8]) {
        self.d0
            .write(&format!("/local/domain/{domid}/{SHUTDOWN_NODE}"), word)
            .unwrap();
    }

    /// Wait (bounded) until the guest acknowledged: `control/shutdown` is `""` (and exists).
    /// Returns how long it took.
    #[track_caller]
    fn wait_ack(&mut self, domid: DomId, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            match self.read(domid, SHUTDOWN_NODE) {
                Some(v) if v.is_empty() => return start.elapsed(),
                None => panic!("control/shutdown removed instead of written \"\""),
                Some(_) => {}
            }
            assert!(
                start.elapsed() < within,
                "no acknowledgement within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Records the order of hook calls (and what the domain looked like at the time).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// `before_shutdown` hook: records the request and the domain's shutdown reason at the time
/// (must still be `None`: the hook runs before `SCHEDOP_shutdown`).
fn before_hook(log: &Log, dom: &Domain) -> impl BeforeShutdown + Send + 'static {
    let (log, dom) = (log.clone(), dom.clone());
    move |r: Request| log.push(format!("before_shutdown {r} {:?}", dom.shutdown_reason()))
}

/// A suspend hook that records its calls. `cancel`: `suspend` returns "cancelled" without the
/// hypercall; `fail_quiesce`: `quiesce` fails.
#[derive(Clone, Default)]
struct Recorder {
    log: Log,
    cancel: bool,
    fail_quiesce: bool,
}

impl SuspendHook for Recorder {
    fn quiesce(&mut self) -> xen_platform::Result<()> {
        self.log.push("quiesce");
        if self.fail_quiesce {
            return Err(xen_platform::Error::Busy);
        }
        Ok(())
    }
    fn suspend(&mut self, sched: &dyn Scheduler) -> xen_platform::Result<bool> {
        self.log.push("suspend");
        if self.cancel {
            return Ok(true);
        }
        sched.shutdown(ShutdownReason::Suspend)
    }
    fn resume(&mut self, cancelled: bool) -> xen_platform::Result<()> {
        self.log.push(format!("resume cancelled={cancelled}"));
        Ok(())
    }
}

fn port(xs: &GuestXs) -> EvtchnPort {
    xs.transport().event_port().unwrap()
}

/// The image's main loop, bounded: poll; if nothing happened, wait on the XenStore port (at
/// most 20 ms) and poll again, until an event or `within` passes.
fn poll_until<B: BeforeShutdown, S: SuspendHook>(
    ctl: &mut Control<B, S>,
    xs: &mut GuestXs,
    dom: &Domain,
    within: Duration,
) -> Option<Event> {
    let p = port(xs);
    let start = Instant::now();
    loop {
        dom.clear(p);
        if let Some(ev) = ctl.poll(xs, dom).unwrap() {
            return Some(ev);
        }
        if start.elapsed() >= within {
            return None;
        }
        let _ = dom.wait(&[p], Some(Duration::from_millis(20)));
    }
}

/// Poll until nothing more is queued (the initial watch fire, our own ack's echo).
fn settle<B: BeforeShutdown, S: SuspendHook>(
    ctl: &mut Control<B, S>,
    xs: &mut GuestXs,
    dom: &Domain,
) {
    // One round trip makes sure the events the server sent so far are in.
    xs.get_domain_path(0).unwrap();
    if let Some(ev) = ctl.poll(xs, dom).unwrap() {
        panic!("unexpected event {ev:?}");
    }
}

#[test]
fn features_advertised_without_and_with_suspend() {
    let mut w = World::new();
    let log = Log::default();

    let (dom, mut xs) = w.guest(1);
    let mut ctl = Control::new(before_hook(&log, &dom));
    assert!(!ctl.can_suspend());
    ctl.start(&mut xs).unwrap();
    assert_eq!(w.read(1, "control/feature-poweroff").unwrap(), b"1");
    assert_eq!(w.read(1, "control/feature-reboot").unwrap(), b"1");
    // Left as libxl created it: suspend is not supported.
    assert_eq!(w.read(1, "control/feature-suspend").unwrap(), b"");
    // Linux advertises no halt; crash is ours (FreeBSD) and not advertised either.
    assert_eq!(w.read(1, "control/feature-halt"), None);
    assert_eq!(w.read(1, "control/feature-crash"), None);
    // The initial watch fire reads "" and reports nothing.
    settle(&mut ctl, &mut xs, &dom);
    assert_eq!(ctl.stats().acknowledged, 0);
    assert!(ctl.stats().events >= 1);
    // Starting again on the same connection (EEXIST) is fine.
    ctl.start(&mut xs).unwrap();

    let (dom2, mut xs2) = w.guest(2);
    let mut ctl2 = Control::new(before_hook(&log, &dom2)).with_suspend(Recorder::default());
    assert!(ctl2.can_suspend());
    ctl2.start(&mut xs2).unwrap();
    for f in ["poweroff", "reboot", "suspend"] {
        assert_eq!(
            w.read(2, &format!("control/feature-{f}")).unwrap(),
            b"1",
            "{f}"
        );
    }
    settle(&mut ctl2, &mut xs2, &dom2);
    assert!(log.take().is_empty());
}

/// One shutdown-type request end to end, with the guest's main loop in a thread: dom0 writes
/// `word`, the ack comes promptly, the hook runs after the ack and before `SCHEDOP_shutdown`,
/// then the domain shuts down with `reason`.
fn shutdown_case(domid: DomId, word: &str, request: Request, reason: ShutdownReason) {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(domid);
    // The hook also checks, over a dom0 connection of its own, that the ack is already there.
    let seen = Arc::new(Mutex::new(w.xs.dom0_client()));
    let hook = {
        let (log, dom, seen) = (log.clone(), dom.clone(), seen.clone());
        move |r: Request| {
            let v = seen
                .lock()
                .unwrap()
                .try_read(&format!("/local/domain/{domid}/{SHUTDOWN_NODE}"))
                .unwrap();
            log.push(format!(
                "before_shutdown {r} {:?} node={:?}",
                dom.shutdown_reason(),
                v.map(|v| String::from_utf8_lossy(&v).into_owned())
            ));
        }
    };
    let mut ctl = Control::new(hook);
    ctl.start(&mut xs).unwrap();

    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (dom, stop) = (dom.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < T {
                if let Some(ev) = poll_until(&mut ctl, &mut xs, &dom, Duration::from_millis(50)) {
                    let done = matches!(ev, Event::Shutdown { .. });
                    tx.send(ev).unwrap();
                    if done {
                        break;
                    }
                }
            }
            ctl
        })
    };
    // Let the guest loop run a little first, as a booted guest idles.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(dom.shutdown_reason(), None);
    w.request(domid, word.as_bytes());
    let took = w.wait_ack(domid, PROMPT);
    assert_eq!(dom.wait_shutdown(Some(T)), Some(reason), "{word}");
    let ev = rx.recv_timeout(T).unwrap();
    assert_eq!(ev, Event::Shutdown { request, reason });
    stop.store(true, Ordering::Relaxed);
    let ctl = guest.join().unwrap();
    assert_eq!(ctl.shutting_down(), Some(request));
    assert_eq!(ctl.stats().acknowledged, 1);
    assert_eq!(
        log.take(),
        vec![format!("before_shutdown {word} None node=Some(\"\")")],
        "{word}"
    );
    assert!(took < PROMPT);
    // The node stays "" (written, not removed).
    assert_eq!(w.read(domid, SHUTDOWN_NODE).unwrap(), b"");
}

#[test]
fn poweroff() {
    shutdown_case(3, "poweroff", Request::Poweroff, ShutdownReason::Poweroff);
}

#[test]
fn reboot() {
    shutdown_case(4, "reboot", Request::Reboot, ShutdownReason::Reboot);
}

#[test]
fn halt_is_poweroff() {
    shutdown_case(5, "halt", Request::Halt, ShutdownReason::Poweroff);
}

#[test]
fn crash() {
    shutdown_case(6, "crash", Request::Crash, ShutdownReason::Crash);
}

#[test]
fn further_requests_ignored_once_shutting_down() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(7);
    let mut ctl = Control::new(before_hook(&log, &dom));
    ctl.start(&mut xs).unwrap();
    settle(&mut ctl, &mut xs, &dom);
    w.request(7, b"reboot");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Shutdown {
            request: Request::Reboot,
            reason: ShutdownReason::Reboot
        })
    );
    // Linux: "Ignore multiple shutdown requests" — not read, not acknowledged.
    w.request(7, b"poweroff");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, Duration::from_millis(200)),
        None
    );
    assert_eq!(w.read(7, SHUTDOWN_NODE).unwrap(), b"poweroff");
    assert_eq!(dom.shutdown_reason(), Some(ShutdownReason::Reboot));
    assert_eq!(log.take(), vec!["before_shutdown reboot None"]);
}

#[test]
fn suspend_with_hook_runs_quiesce_suspend_resume_and_keeps_working() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(8);
    let rec = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let mut ctl = Control::new(before_hook(&log, &dom)).with_suspend(rec);
    ctl.start(&mut xs).unwrap();
    settle(&mut ctl, &mut xs, &dom);

    w.request(8, b"suspend");
    let ev = poll_until(&mut ctl, &mut xs, &dom, T);
    assert_eq!(
        ev,
        Some(Event::Resumed {
            cancelled: false,
            error: None
        })
    );
    assert_eq!(w.read(8, SHUTDOWN_NODE).unwrap(), b"");
    assert_eq!(
        log.take(),
        vec!["quiesce", "suspend", "resume cancelled=false"]
    );
    // The simulator's SCHEDOP_shutdown(suspend) records the reason and returns "resumed".
    assert_eq!(dom.shutdown_reason(), Some(ShutdownReason::Suspend));
    assert_eq!(ctl.shutting_down(), None);
    // Features re-advertised, watch still there (re-registered: EEXIST accepted).
    assert_eq!(w.read(8, "control/feature-suspend").unwrap(), b"1");
    settle(&mut ctl, &mut xs, &dom);

    // A cancelled suspend: resume(true), nothing re-registered.
    ctl.suspend_hook().unwrap().cancel = true;
    w.request(8, b"suspend");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Resumed {
            cancelled: true,
            error: None
        })
    );
    assert_eq!(
        log.take(),
        vec!["quiesce", "suspend", "resume cancelled=true"]
    );
    settle(&mut ctl, &mut xs, &dom);

    // quiesce fails: acknowledged (the toolstack's wait ends), nothing else called.
    ctl.suspend_hook().unwrap().fail_quiesce = true;
    w.request(8, b"suspend");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::SuspendAborted(xen_platform::Error::Busy))
    );
    assert_eq!(log.take(), vec!["quiesce"]);
    assert_eq!(w.read(8, SHUTDOWN_NODE).unwrap(), b"");
    assert!(dom.console_output().contains("quiesce failed"));
    settle(&mut ctl, &mut xs, &dom);

    // Still listening: a reboot after all that.
    w.request(8, b"reboot");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Shutdown {
            request: Request::Reboot,
            reason: ShutdownReason::Reboot
        })
    );
    assert_eq!(dom.shutdown_reason(), Some(ShutdownReason::Reboot));
    assert_eq!(log.take(), vec!["before_shutdown reboot Some(Suspend)"]);
    assert_eq!(ctl.stats().acknowledged, 4);
}

#[test]
fn suspend_without_hook_is_ignored_and_not_acknowledged() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(9);
    let mut ctl = Control::new(before_hook(&log, &dom));
    ctl.start(&mut xs).unwrap();
    settle(&mut ctl, &mut xs, &dom);
    w.request(9, b"suspend");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Ignored(Ignored::SuspendUnsupported))
    );
    // Linux without CONFIG_HIBERNATE_CALLBACKS: unknown command, left for libxl to time out.
    assert_eq!(w.read(9, SHUTDOWN_NODE).unwrap(), b"suspend");
    assert_eq!(dom.shutdown_reason(), None);
    assert!(dom
        .console_output()
        .contains("ignoring shutdown request: suspend"));
    assert!(log.take().is_empty());
    assert_eq!(ctl.stats().ignored, 1);
    assert_eq!(ctl.stats().acknowledged, 0);
}

#[test]
fn unknown_and_garbage_values_are_logged_not_acknowledged_no_shutdown() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(10);
    let mut ctl = Control::new(before_hook(&log, &dom)).with_suspend(Recorder {
        log: log.clone(),
        ..Recorder::default()
    });
    ctl.start(&mut xs).unwrap();
    settle(&mut ctl, &mut xs, &dom);

    let long: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let cases: Vec<Vec<u8>> = vec![
        b"bogus".to_vec(),
        b"Poweroff".to_vec(),
        b"poweroff\n".to_vec(),
        b"reboot\0poweroff".to_vec(),
        b"sysrq".to_vec(),
        vec![0xff, 0x00, 0xfe, 0x1b, b'[', b'2', b'J', 0x80],
        long.clone(),
    ];
    for v in &cases {
        w.request(10, v);
        assert_eq!(
            poll_until(&mut ctl, &mut xs, &dom, T),
            Some(Event::Ignored(Ignored::Unknown(v.clone()))),
            "{v:?}"
        );
        // Not acknowledged (Linux: "Only acknowledge commands which we are prepared to handle").
        assert_eq!(&w.read(10, SHUTDOWN_NODE).unwrap(), v);
    }
    assert_eq!(dom.shutdown_reason(), None);
    assert!(log.take().is_empty());
    let console = dom.console_output();
    assert!(console.contains("xen-control: ignoring shutdown request: \"bogus\""));
    assert!(
        console.contains("\"\\xff\\x00\\xfe\\x1b[2J\\x80\""),
        "{console}"
    );
    assert!(console.contains("... (3000 bytes)"), "{console}");
    assert!(!console.contains(std::str::from_utf8(&long[..100]).unwrap()));
    assert_eq!(ctl.stats().ignored, cases.len() as u64);

    // After all that a real request still works.
    w.request(10, b"poweroff");
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Shutdown {
            request: Request::Poweroff,
            reason: ShutdownReason::Poweroff
        })
    );
}

#[test]
fn two_requests_in_quick_succession_none_lost() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(11);
    let rec = Recorder {
        log: log.clone(),
        cancel: true,
        ..Recorder::default()
    };
    let mut ctl = Control::new(before_hook(&log, &dom)).with_suspend(rec);
    ctl.start(&mut xs).unwrap();
    let (tx, rx) = mpsc::channel();
    let guest = {
        let dom = dom.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < T {
                if let Some(ev) = poll_until(&mut ctl, &mut xs, &dom, Duration::from_millis(50)) {
                    let done = matches!(ev, Event::Shutdown { .. });
                    tx.send(ev).unwrap();
                    if done {
                        break;
                    }
                }
            }
        })
    };
    // As libxl: each request written as soon as the previous one was acknowledged.
    for _ in 0..5 {
        w.request(11, b"suspend");
        w.wait_ack(11, PROMPT);
    }
    w.request(11, b"reboot");
    w.wait_ack(11, PROMPT);
    assert_eq!(dom.wait_shutdown(Some(T)), Some(ShutdownReason::Reboot));
    guest.join().unwrap();
    let evs: Vec<Event> = rx.try_iter().collect();
    let mut want = vec![
        Event::Resumed {
            cancelled: true,
            error: None
        };
        5
    ];
    want.push(Event::Shutdown {
        request: Request::Reboot,
        reason: ShutdownReason::Reboot,
    });
    assert_eq!(evs, want);
    let mut want_log = Vec::new();
    for _ in 0..5 {
        want_log.extend(["quiesce", "suspend", "resume cancelled=true"].map(String::from));
    }
    want_log.push("before_shutdown reboot None".into());
    assert_eq!(log.take(), want_log);
}

/// The guest's ring transport, with a hook run just before the first write sent inside a
/// transaction: there dom0 writes a second request, between the driver's read and its ack.
struct Racy {
    inner: OwnedRing<Domain>,
    before_tx_write: Option<Box<dyn FnMut()>>,
}

impl Transport for Racy {
    fn now(&self) -> Duration {
        self.inner.now()
    }
    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        // xs_wire.h header: type, req_id, tx_id, len.
        let is_tx_write =
            word(0) == Some(xen_store::MsgType::Write.as_u32()) && word(8).is_some_and(|t| t != 0);
        if is_tx_write {
            if let Some(mut f) = self.before_tx_write.take() {
                f();
            }
        }
        self.inner.send(bytes, timeout)
    }
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        self.inner.recv(buf, timeout)
    }
    fn event_port(&self) -> Option<EvtchnPort> {
        self.inner.event_port()
    }
}

#[test]
fn request_written_between_read_and_ack_is_not_lost() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, xs) = w.guest(12);
    let mut racer = w.xs.dom0_client();
    let mut xs = Client::with_config(
        Racy {
            inner: xs.into_transport(),
            before_tx_write: None,
        },
        xen_store::client::ClientConfig {
            timeout: T,
            ..Default::default()
        },
    );
    let rec = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let mut ctl = Control::new(before_hook(&log, &dom)).with_suspend(rec);
    ctl.start(&mut xs).unwrap();
    xs.get_domain_path(0).unwrap();
    assert_eq!(ctl.poll(&mut xs, &dom).unwrap(), None);

    xs.transport_mut().before_tx_write = Some(Box::new(move || {
        racer
            .write(&format!("/local/domain/12/{SHUTDOWN_NODE}"), b"reboot")
            .unwrap();
    }));
    w.request(12, b"suspend");
    let p = xs.transport().event_port().unwrap();
    let start = Instant::now();
    let ev = loop {
        dom.clear(p);
        if let Some(ev) = ctl.poll(&mut xs, &dom).unwrap() {
            break ev;
        }
        assert!(start.elapsed() < T, "no event");
        let _ = dom.wait(&[p], Some(Duration::from_millis(20)));
    };
    // The transaction that read "suspend" and wrote "" conflicted with dom0's "reboot"; the
    // retry read "reboot" and acknowledged that. "suspend" was overwritten by the toolstack
    // itself before any ack, so it was never acknowledged nor carried out.
    assert!(
        xs.transport().before_tx_write.is_none(),
        "the race did not run"
    );
    assert_eq!(
        ev,
        Event::Shutdown {
            request: Request::Reboot,
            reason: ShutdownReason::Reboot
        }
    );
    assert!(ctl.stats().retries >= 1, "{:?}", ctl.stats());
    assert_eq!(ctl.stats().acknowledged, 1);
    assert_eq!(log.take(), vec!["before_shutdown reboot None"]);
    assert_eq!(w.read(12, SHUTDOWN_NODE).unwrap(), b"");
    assert_eq!(dom.shutdown_reason(), Some(ShutdownReason::Reboot));
}

#[test]
fn request_written_before_start_is_handled_by_the_initial_watch_fire() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(13);
    // `xl shutdown` of a guest that has not started its control driver yet.
    w.request(13, b"poweroff");
    let mut ctl = Control::new(before_hook(&log, &dom));
    ctl.start(&mut xs).unwrap();
    assert_eq!(
        poll_until(&mut ctl, &mut xs, &dom, T),
        Some(Event::Shutdown {
            request: Request::Poweroff,
            reason: ShutdownReason::Poweroff
        })
    );
    assert_eq!(w.read(13, SHUTDOWN_NODE).unwrap(), b"");
}

#[test]
fn xenstore_failure_is_an_error_and_the_request_is_read_again() {
    let mut w = World::new();
    let log = Log::default();
    let (dom, mut xs) = w.guest(14);
    let mut ctl = Control::new(before_hook(&log, &dom));
    ctl.start(&mut xs).unwrap();
    settle(&mut ctl, &mut xs, &dom);
    // The guest loses write access to its node (a hostile or broken toolstack): the ack
    // fails, the driver reports it, and does not act on a request it could not acknowledge.
    w.d0.set_perms(
        "/local/domain/14/control/shutdown",
        &perms(&[(Access::None, 0), (Access::Read, 14)]),
    )
    .unwrap();
    w.request(14, b"poweroff");
    let p = port(&xs);
    let start = Instant::now();
    let err = loop {
        dom.clear(p);
        match ctl.poll(&mut xs, &dom) {
            Err(e) => break e,
            Ok(Some(ev)) => panic!("unexpected {ev:?}"),
            Ok(None) => {}
        }
        assert!(start.elapsed() < T);
        let _ = dom.wait(&[p], Some(Duration::from_millis(20)));
    };
    assert!(matches!(err, ControlError::Store(_)), "{err:?}");
    assert_eq!(dom.shutdown_reason(), None);
    assert!(log.take().is_empty());
    // The event is spent, but the next poll reads the node again by itself.
    let events = ctl.stats().events;
    assert!(matches!(
        ctl.poll(&mut xs, &dom),
        Err(ControlError::Store(_))
    ));
    assert_eq!(ctl.stats().events, events, "re-read without a watch event");
    // Access restored: the request still pending is carried out.
    w.d0.set_perms(
        "/local/domain/14/control/shutdown",
        &perms(&[(Access::None, 14)]),
    )
    .unwrap();
    let ev = loop {
        dom.clear(p);
        match ctl.poll(&mut xs, &dom) {
            Ok(Some(ev)) => break ev,
            Ok(None) | Err(ControlError::Store(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert!(start.elapsed() < T);
        let _ = dom.wait(&[p], Some(Duration::from_millis(20)));
    };
    assert_eq!(
        ev,
        Event::Shutdown {
            request: Request::Poweroff,
            reason: ShutdownReason::Poweroff
        }
    );
    assert_eq!(w.read(14, SHUTDOWN_NODE).unwrap(), b"");
    assert_eq!(log.take(), vec!["before_shutdown poweroff None"]);
}
