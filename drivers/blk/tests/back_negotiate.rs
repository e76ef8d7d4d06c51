//! The backend's side of negotiation through the simulator: frontends whose ring keys it must
//! refuse (the device fails: error published, Closed) and what it publishes for options.

mod back_common;

use back_common::*;
use xen_blk::back::BackOptions;
use xen_bus::store::client::Store;
use xen_bus::BusEvent;
use xen_platform::{Events, Grants, Pages};

/// A frontend that writes `keys` (a granted ring page's ref replaces "$REF", its unbound
/// port "$PORT") and Initialised; returns the published error of the backend's failure.
fn refused_with(keys: &[(&str, &str)]) -> String {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let g = w.guest("guest");
    w.add_disk(&g, |v| v);
    let fe = g.domid();
    w.run_until("InitWait", |w| w.backend_state(fe).as_deref() == Some("2"));
    let dom = g.domain();
    let run = dom.alloc(1).unwrap();
    let gref = dom
        .grant(w.sd.domid(), dom.frame(run.addr).unwrap(), false)
        .unwrap();
    let port = dom.alloc_unbound(w.sd.domid()).unwrap();
    let mut xs = g.xs_client().unwrap();
    let base = format!("/local/domain/{fe}/device/vbd/51712");
    for (k, v) in keys {
        let v = v
            .replace("$REF", &gref.to_string())
            .replace("$PORT", &port.to_string());
        xs.write(&format!("{base}/{k}"), v.as_bytes()).unwrap();
    }
    xs.write(&format!("{base}/state"), b"3").unwrap();
    let node = w.be_node(fe);
    w.run_until("backend failed", |w| {
        w.events.iter().any(
            |e| matches!(e, BusEvent::Closed { nodename, error: Some(_) } if *nodename == node),
        )
    });
    assert_eq!(w.backend_state(fe).as_deref(), Some("6"));
    assert!(!w.back.device(&node).is_some_and(|d| d.connected));
    w.read(&format!(
        "/local/domain/{}/error/backend/vbd/{fe}/51712/error",
        w.sd.domid()
    ))
    .expect("error published")
}

#[test]
fn ring_larger_than_offered_is_refused() {
    let e = refused_with(&[
        ("ring-page-order", "5"),
        ("ring-ref0", "$REF"),
        ("event-channel", "$PORT"),
    ]);
    assert!(e.starts_with("22 "), "{e}");
}

#[test]
fn foreign_protocol_is_refused() {
    let e = refused_with(&[
        ("ring-ref", "$REF"),
        ("event-channel", "$PORT"),
        ("protocol", "x86_32-abi"),
    ]);
    assert!(e.starts_with("38 "), "{e}");
}

#[test]
fn missing_event_channel_is_refused() {
    let e = refused_with(&[("ring-ref", "$REF")]);
    assert!(e.starts_with("2 "), "{e}");
}

#[test]
fn ring_ref_not_granted_is_refused() {
    let e = refused_with(&[("ring-ref", "4000"), ("event-channel", "$PORT")]);
    assert!(e.contains("mapping ring"), "{e}");
}

#[test]
fn port_not_offered_is_refused() {
    let e = refused_with(&[("ring-ref", "$REF"), ("event-channel", "77")]);
    assert!(e.contains("mapping ring"), "{e}");
}

#[test]
fn garbage_numbers_are_refused() {
    let e = refused_with(&[("ring-ref", "12abc"), ("event-channel", "$PORT")]);
    assert!(e.starts_with("22 "), "{e}");
}

#[test]
fn options_shape_what_is_published() {
    let opts = BackOptions {
        max_ring_page_order: 0,
        max_indirect_segments: 11,
        flush: false,
        barrier: false,
        discard: true,
        persistent: false,
        max_persistent_grants: None,
        max_queues: 1,
    };
    let mut w = World::new(opts, DiskKind::Mem);
    let g = w.guest("guest");
    w.add_disk(&g, |mut v| {
        v.discard = false;
        v
    });
    let fe = g.domid();
    w.run_until("InitWait", |w| w.backend_state(fe).as_deref() == Some("2"));
    let be = w.be_path(fe);
    let key = |w: &World, k: &str| w.read(&format!("{be}/{k}"));
    assert_eq!(key(&w, "max-ring-page-order").as_deref(), Some("0"));
    assert_eq!(key(&w, "max-ring-pages").as_deref(), Some("1"));
    assert_eq!(
        key(&w, "feature-max-indirect-segments"),
        None,
        "11 is no indirect"
    );
    assert_eq!(key(&w, "multi-queue-max-queues"), None, "one queue: no key");
    let _f = RawFront::start(&g, w.sd.domid(), RingStyle::Single);
    w.run_until("Connected", |w| w.backend_state(fe).as_deref() == Some("4"));
    assert_eq!(key(&w, "feature-flush-cache").as_deref(), Some("0"));
    assert_eq!(key(&w, "feature-barrier").as_deref(), Some("0"));
    assert_eq!(key(&w, "feature-persistent").as_deref(), Some("0"));
    assert_eq!(
        key(&w, "feature-discard").as_deref(),
        Some("0"),
        "discard-enable=0 from the toolstack wins"
    );
}
