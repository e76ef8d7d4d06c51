//! Event-channel rules.

use std::thread;
use std::time::{Duration, Instant};

use xen_platform::{Error, Events, EvtchnPort, Scheduler};
use xen_sim::{Config, Domain, Hypervisor};

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(10);

/// Connect `a` and `b`; returns (a's port, b's port) with no pending bits.
fn connect(a: &Domain, b: &Domain) -> (EvtchnPort, EvtchnPort) {
    let pa = a.alloc_unbound(b.id()).unwrap();
    let pb = b.bind_interdomain(a.id(), pa).unwrap();
    b.clear(pb);
    (pa, pb)
}

#[test]
fn port_zero_is_never_allocated() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let p = a.alloc_unbound(b.id()).unwrap();
    assert_eq!(p, 1);
    assert_eq!(a.notify(0), Err(Error::Invalid));
    assert_eq!(a.close(0), Err(Error::Invalid));
    assert_eq!(a.mask(0), Err(Error::Invalid));
    assert_eq!(b.bind_interdomain(a.id(), 0), Err(Error::Invalid));
    assert!(!a.is_pending(0));
    // Freed ports are reused lowest first, still never 0.
    a.close(p).unwrap();
    assert_eq!(a.alloc_unbound(b.id()), Ok(1));
}

#[test]
fn bind_needs_an_unbound_port_reserved_for_the_caller() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let c = hv.create_domain("c");
    let pa = a.alloc_unbound(b.id()).unwrap();
    // Reserved for b, not c.
    assert_eq!(c.bind_interdomain(a.id(), pa), Err(Error::PermissionDenied));
    // Not allocated / beyond the table / no such domain.
    assert_eq!(b.bind_interdomain(a.id(), 7), Err(Error::NotFound));
    assert_eq!(b.bind_interdomain(a.id(), 1 << 30), Err(Error::Invalid));
    assert_eq!(b.bind_interdomain(99, pa), Err(Error::NoSuchDomain));
    let pb = b.bind_interdomain(a.id(), pa).unwrap();
    // Already bound.
    assert_eq!(b.bind_interdomain(a.id(), pa), Err(Error::Invalid));
    assert_eq!(c.bind_interdomain(a.id(), pa), Err(Error::Invalid));
    // As on Xen, the new local port starts pending.
    assert!(b.is_pending(pb));
    assert!(b.clear(pb));
    assert!(!b.clear(pb));
    assert!(!a.is_pending(pa));
}

#[test]
fn notify_sets_the_peers_pending_bit_and_wait_returns_it() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    a.notify(pa).unwrap();
    assert!(b.is_pending(pb));
    assert!(!a.is_pending(pa));
    assert_eq!(b.wait(&[pb], Some(SHORT)), Ok(pb));
    // The bit stays set until cleared.
    assert_eq!(b.wait(&[pb], Some(Duration::ZERO)), Ok(pb));
    assert!(b.clear(pb));
    assert_eq!(b.wait(&[pb], Some(SHORT)), Err(Error::Timeout));
    b.notify(pb).unwrap();
    assert_eq!(a.wait(&[pa], None), Ok(pa));
}

#[test]
fn wait_returns_the_first_pending_port_in_order() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa1, pb1) = connect(&a, &b);
    let (pa2, pb2) = connect(&a, &b);
    a.notify(pa2).unwrap();
    assert_eq!(b.wait(&[pb1, pb2], Some(SHORT)), Ok(pb2));
    a.notify(pa1).unwrap();
    assert_eq!(b.wait(&[pb1, pb2], Some(SHORT)), Ok(pb1));
    assert_eq!(b.wait(&[pb2, pb1], Some(SHORT)), Ok(pb2));
}

#[test]
fn wait_times_out() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (_pa, pb) = connect(&a, &b);
    let t = Instant::now();
    assert_eq!(b.wait(&[pb], Some(SHORT)), Err(Error::Timeout));
    assert!(t.elapsed() >= SHORT);
    // An unbound port whose peer has not bound yet is not "gone": it just times out.
    let unbound = b.alloc_unbound(a.id()).unwrap();
    assert_eq!(b.wait(&[unbound], Some(SHORT)), Err(Error::Timeout));
    // No ports: sleeps for the timeout; with no timeout it would never end.
    assert_eq!(b.wait(&[], Some(SHORT)), Err(Error::Timeout));
    assert_eq!(b.wait(&[], None), Err(Error::Invalid));
    // A port that is not allocated.
    assert_eq!(b.wait(&[pb, 99], Some(SHORT)), Err(Error::NotFound));
}

#[test]
fn notify_wakes_a_waiter_in_another_thread() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    let waiter = {
        let b = b.clone();
        thread::spawn(move || {
            let t = Instant::now();
            (b.wait(&[pb], Some(LONG)), t.elapsed())
        })
    };
    thread::sleep(SHORT);
    a.notify(pa).unwrap();
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, Ok(pb));
    assert!(took < LONG);
}

#[test]
fn notify_on_an_unbound_port_is_dropped_and_on_a_free_port_is_an_error() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let unbound = a.alloc_unbound(b.id()).unwrap();
    // Xen's evtchn_send drops a send on an ECS_UNBOUND port silently: a front end may notify
    // before its back end has bound. Nothing becomes pending anywhere.
    assert_eq!(a.notify(unbound), Ok(()));
    assert!(!a.is_pending(unbound));
    let pb = b.bind_interdomain(a.id(), unbound).unwrap();
    b.clear(pb); // pending from the bind itself
    assert!(
        !b.is_pending(pb),
        "a dropped send must not surface after the bind"
    );
    assert_eq!(a.notify(42), Err(Error::NotFound));
    assert_eq!(a.notify(1 << 20), Err(Error::Invalid));
}

#[test]
fn masked_pending_does_not_wake_and_unmask_does() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    b.mask(pb).unwrap();
    a.notify(pa).unwrap();
    assert!(
        b.is_pending(pb),
        "a masked port still collects the pending bit"
    );
    assert_eq!(b.wait(&[pb], Some(SHORT)), Err(Error::Timeout));

    // A waiter in another thread is woken by the unmask of the pending port.
    let waiter = {
        let b = b.clone();
        thread::spawn(move || b.wait(&[pb], Some(LONG)))
    };
    thread::sleep(SHORT);
    let t = Instant::now();
    b.unmask(pb).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(pb));
    assert!(t.elapsed() < LONG);

    // block() also ignores masked events.
    b.clear(pb);
    b.mask(pb).unwrap();
    a.notify(pa).unwrap();
    let t = Instant::now();
    b.block(Some(SHORT));
    assert!(t.elapsed() >= SHORT);
    // Mask on a port not allocated.
    assert_eq!(b.mask(77), Err(Error::NotFound));
    assert_eq!(b.unmask(77), Err(Error::NotFound));
}

#[test]
fn close_leaves_the_peer_unbound_with_its_peer_gone() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    let (_pa2, pb2) = connect(&a, &b);
    // A waiter on the port that is about to lose its peer.
    let waiter = {
        let b = b.clone();
        thread::spawn(move || b.wait(&[pb], Some(LONG)))
    };
    thread::sleep(SHORT);
    a.close(pa).unwrap();
    assert_eq!(waiter.join().unwrap(), Err(Error::PeerGone));
    assert_eq!(b.notify(pb), Err(Error::PeerGone));
    assert_eq!(b.wait(&[pb], None), Err(Error::PeerGone));
    // With a live port in the set it is a normal wait.
    assert_eq!(b.wait(&[pb, pb2], Some(SHORT)), Err(Error::Timeout));
    // The closed port is gone; closing it again is NotFound.
    assert_eq!(a.notify(pa), Err(Error::NotFound));
    assert_eq!(a.close(pa), Err(Error::NotFound));
    // Closing our dead end works.
    b.close(pb).unwrap();
    assert_eq!(b.close(pb), Err(Error::NotFound));
}

#[test]
fn events_sent_before_the_close_are_still_delivered() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    a.notify(pa).unwrap();
    a.close(pa).unwrap();
    assert_eq!(b.wait(&[pb], None), Ok(pb));
    b.clear(pb);
    assert_eq!(b.wait(&[pb], None), Err(Error::PeerGone));
}

#[test]
fn loopback_channel_within_one_domain() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let p1 = a.alloc_unbound(xen_platform::abi::DOMID_SELF).unwrap();
    let p2 = a.bind_interdomain(a.id(), p1).unwrap();
    a.clear(p2);
    a.notify(p2).unwrap();
    assert_eq!(a.wait(&[p1, p2], Some(SHORT)), Ok(p1));
    a.close(p1).unwrap();
    assert_eq!(a.notify(p2), Err(Error::PeerGone));
}

#[test]
fn ports_run_out_with_no_space() {
    let hv = Hypervisor::with_config(Config {
        event_ports: 16,
        ..Config::default()
    });
    let a = hv.create_domain("a");
    let ports: Vec<_> = (0..15).map(|_| a.alloc_unbound(0).unwrap()).collect();
    assert_eq!(ports, (1..16).collect::<Vec<_>>());
    assert_eq!(a.alloc_unbound(0), Err(Error::NoSpace));
    a.close(5).unwrap();
    assert_eq!(a.alloc_unbound(0), Ok(5));
    assert_eq!(a.stats().unwrap().ports, 15);
}

#[test]
fn block_returns_on_event_or_timeout() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let (pa, pb) = connect(&a, &b);
    let t = Instant::now();
    b.block(Some(SHORT));
    assert!(t.elapsed() >= SHORT);
    let blocker = {
        let b = b.clone();
        thread::spawn(move || {
            let t = Instant::now();
            b.block(Some(LONG));
            t.elapsed()
        })
    };
    thread::sleep(SHORT);
    a.notify(pa).unwrap();
    assert!(blocker.join().unwrap() < LONG);
    // With an event pending it returns at once.
    assert!(b.is_pending(pb));
    b.block(None);
}
