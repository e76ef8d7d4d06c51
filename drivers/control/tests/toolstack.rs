//! The control driver driven by the libxl-faithful toolstack (`xen-toolstack`): `xl shutdown`
//! and `xl reboot` as libxl does them (write `control/shutdown`, wait for the `""` ack, then
//! for the domain's shutdown with the right reason), the guest's main loop in a thread; and a
//! request the guest does not handle, which libxl reports as "guest didn't acknowledge".
//! Also the deferred shutdown (the bus closes its devices between the ack and the shutdown).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_control::{Control, Event, Ignored, Request};
use xen_platform::{Events, ShutdownReason};
use xen_store::client::{Store, Transport};
use xen_toolstack::{DomainConfig, Error, Timeouts, Toolstack};

const T: Duration = Duration::from_secs(10);

/// Start a guest's control driver (no suspend hook) in a thread polling as an image's main
/// loop does; every event it reports and every `before_shutdown` call go to `log`. The thread
/// ends after a shutdown, when `stop` is set, or after `T`.
fn run_guest(
    ts: &Toolstack,
    domid: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let guest = ts
        .create_domain(&format!("ctl{domid}"), DomainConfig::with_domid(domid))
        .unwrap();
    let dom = guest.domain().clone();
    let mut xs = guest.xs_client().unwrap();
    let hook = {
        let log = log.clone();
        move |r: Request| log.lock().unwrap().push(format!("before_shutdown {r}"))
    };
    let mut ctl = Control::new(hook);
    ctl.start(&mut xs).unwrap();
    std::thread::spawn(move || {
        let port = xs.transport().event_port().unwrap();
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < T {
            dom.clear(port);
            match ctl.poll(&mut xs, &dom).unwrap() {
                Some(ev) => {
                    let done = matches!(ev, Event::Shutdown { .. });
                    log.lock().unwrap().push(format!("{ev:?}"));
                    if done {
                        return;
                    }
                }
                None => {
                    let _ = dom.wait(&[port], Some(Duration::from_millis(20)));
                }
            }
        }
    })
}

#[test]
fn xl_shutdown_and_xl_reboot() {
    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(T));
    for (domid, reboot) in [(1u16, false), (2, true)] {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let guest = run_guest(&ts, domid, log.clone(), stop.clone());
        let features = ts.with_xs(|xs| {
            ["poweroff", "reboot", "suspend"].map(|f| {
                xs.try_read(&format!("/local/domain/{domid}/control/feature-{f}"))
                    .unwrap()
            })
        });
        // Written by the guest as Linux does; suspend left as libxl created it (no hook).
        assert_eq!(features[0].as_deref(), Some(&b"1"[..]));
        assert_eq!(features[1].as_deref(), Some(&b"1"[..]));
        assert_ne!(features[2].as_deref(), Some(&b"1"[..]));
        let (request, reason) = if reboot {
            ts.reboot(domid).unwrap();
            (Request::Reboot, ShutdownReason::Reboot)
        } else {
            ts.shutdown(domid).unwrap();
            (Request::Poweroff, ShutdownReason::Poweroff)
        };
        guest.join().unwrap();
        let dom = ts.hv().domain(domid).unwrap();
        assert_eq!(dom.shutdown_reason(), Some(reason));
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                format!("before_shutdown {request}"),
                format!("{:?}", Event::Shutdown { request, reason }),
            ]
        );
        ts.destroy(domid).unwrap();
    }
}

#[test]
fn a_request_the_guest_does_not_handle_is_not_acknowledged() {
    let ts = Toolstack::new().unwrap();
    // libxl waits 60 s; a short wait shows the same outcome.
    ts.set_timeouts(Timeouts::all(Duration::from_millis(500)));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let guest = run_guest(&ts, 3, log.clone(), stop.clone());
    // `xl save` without suspend support in the guest.
    match ts.pvcontrol(3, "suspend") {
        Err(Error::GuestDidntAcknowledge { domid: 3, cmd, .. }) => assert_eq!(cmd, "suspend"),
        other => panic!("{other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap();
    // Once per watch event that read it (the initial fire may have seen it too): ignored,
    // never acknowledged, nothing else.
    let log = log.lock().unwrap();
    assert!(!log.is_empty());
    for l in log.iter() {
        assert_eq!(
            *l,
            format!("{:?}", Event::Ignored(Ignored::SuspendUnsupported))
        );
    }
    assert_eq!(ts.hv().domain(3).unwrap().shutdown_reason(), None);
}

/// The deferred shutdown (what an image with a bus uses, see tests/bus_shutdown.rs):
/// `xl shutdown` is acknowledged and reported as pending, the domain keeps running until the
/// image calls `finish_shutdown`, which runs the hook and then `SCHEDOP_shutdown`.
#[test]
fn deferred_shutdown_waits_for_finish_shutdown() {
    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(T));
    let guest = ts.create_domain("ctl", DomainConfig::default()).unwrap();
    let (domid, dom) = (guest.domid(), guest.domain().clone());
    let mut xs = guest.xs_client().unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook = {
        let (log, dom) = (log.clone(), dom.clone());
        move |r: Request| {
            log.lock().unwrap().push(format!(
                "before_shutdown {r} (domain shut down: {:?})",
                dom.shutdown_reason()
            ))
        }
    };
    let mut ctl = Control::new(hook).with_deferred_shutdown();
    assert!(ctl.defers_shutdown());
    ctl.start(&mut xs).unwrap();
    assert_eq!(ctl.finish_shutdown(&dom).unwrap(), None, "nothing pending");
    std::thread::scope(|s| {
        let xl = s.spawn(|| ts.shutdown(domid));
        let port = xs.transport().event_port().unwrap();
        let end = Instant::now() + T;
        let ev = loop {
            assert!(Instant::now() < end, "no request seen");
            dom.clear(port);
            if let Some(ev) = ctl.poll(&mut xs, &dom).unwrap() {
                break ev;
            }
            let _ = dom.wait(&[port], Some(Duration::from_millis(20)));
        };
        let (request, reason) = (Request::Poweroff, ShutdownReason::Poweroff);
        assert_eq!(ev, Event::ShutdownPending { request, reason });
        assert_eq!(ctl.pending_shutdown(), Some(request));
        assert_eq!(ctl.shutting_down(), Some(request));
        // Acknowledged, not shut down, the hook not called yet.
        let ack = ts.with_xs(|x| {
            x.try_read(&format!("/local/domain/{domid}/control/shutdown"))
                .unwrap()
        });
        assert_eq!(ack.as_deref(), Some(&b""[..]));
        assert_eq!(dom.shutdown_reason(), None);
        assert!(log.lock().unwrap().is_empty());
        // Polling meanwhile does nothing more.
        assert_eq!(ctl.poll(&mut xs, &dom).unwrap(), None);
        assert_eq!(dom.shutdown_reason(), None);
        // The image closed its devices; now the shutdown.
        assert_eq!(
            ctl.finish_shutdown(&dom).unwrap(),
            Some(Event::Shutdown { request, reason })
        );
        assert_eq!(dom.shutdown_reason(), Some(reason));
        assert_eq!(ctl.pending_shutdown(), None);
        assert_eq!(ctl.finish_shutdown(&dom).unwrap(), None);
        xl.join().unwrap().unwrap();
    });
    assert_eq!(
        *log.lock().unwrap(),
        vec!["before_shutdown poweroff (domain shut down: None)".to_string()]
    );
}
