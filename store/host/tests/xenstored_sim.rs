//! Our xenstored end to end on the simulator: dom0 tools on the Unix socket, guests on their
//! ring pages and event channels, through the real client, ring and Store code.
//!
//! * two guests and dom0: a guest writes in its home, dom0 reads it, the other guest is
//!   refused; watches fire across domains (and only for what a domain may read);
//! * a guest destroyed in the middle of a transaction: its nodes go, `@releaseDomain` fires,
//!   its ring is unmapped, and the other guest keeps being served;
//! * misbehaving guests (corrupt ring indexes, an oversized message) get the ring's `error`
//!   field set and are no longer served, while everyone else is; a guest may reset its ring;
//! * a guest that shuts down fires `@releaseDomain` once, and keeps its nodes until it dies;
//! * a guest that sends many requests without reading the replies gets them all, in order,
//!   while the others are served;
//! * the service thread sleeps when there is nothing to do.

use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xen_platform::abi::xs::{
    XenstoreDomainInterface, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
};
use xen_platform::Events;
use xen_store::client::{Client, Store, Transport, XsClientError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::wire::{Header, MsgType};
use xen_store::{DomId, XsError};
use xen_store_host::conformance::Limits;
use xen_store_host::ours::OurXenstored;
use xen_store_host::xenstored::SimGuest;
use xen_store_host::{OwnedRing, UnixTransport};

type Guest = Client<OwnedRing<xen_sim::Domain>>;
type Dom0 = Client<UnixTransport>;

const T: Duration = Duration::from_secs(5);

fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect()).unwrap()
}

/// The toolstack: create domain `domid` in the simulator, lay out its home as libxl does —
/// `/local/domain/N` owned by dom0 and readable by the guest, `data` owned by the guest —
/// and let the daemon serve it. Returns the guest's build (for fault injection).
fn guest_build(xs: &OurXenstored, d0: &mut Dom0, domid: DomId) -> SimGuest {
    xs.hypervisor()
        .create_domain_with_id(domid, &format!("guest{domid}"))
        .unwrap();
    let home = format!("/local/domain/{domid}");
    d0.mkdir(&home).unwrap();
    d0.set_perms(&home, &perms(&[(Access::None, 0), (Access::Read, domid)]))
        .unwrap();
    d0.mkdir(&format!("{home}/data")).unwrap();
    d0.set_perms(&format!("{home}/data"), &perms(&[(Access::None, domid)]))
        .unwrap();
    xs.xenstored().serve_domain(domid).unwrap()
}

fn guest(xs: &OurXenstored, d0: &mut Dom0, domid: DomId) -> Guest {
    guest_build(xs, d0, domid).client().unwrap()
}

#[track_caller]
fn event<Tr: Transport>(c: &mut Client<Tr>, token: &str) -> String {
    match c.next_watch_event(Some(token), T) {
        Ok(Some(ev)) => ev.path.as_str().to_string(),
        other => panic!("no event for {token}: {other:?}"),
    }
}

/// Every event queued for `c` once a round trip has been made.
#[track_caller]
fn no_events<Tr: Transport>(c: &mut Client<Tr>, what: &str) {
    c.get_domain_path(0).unwrap();
    let mut v = Vec::new();
    while let Some(ev) = c.take_watch_event(None) {
        v.push(format!("{} {}", ev.token, ev.path));
    }
    assert!(v.is_empty(), "{what}: unexpected events {v:?}");
}

#[track_caller]
fn denied<R: std::fmt::Debug>(r: Result<R, XsClientError>, what: &str) {
    match r {
        Err(XsClientError::Xs(XsError::Eacces)) => {}
        other => panic!("{what}: expected EACCES, got {other:?}"),
    }
}

/// Wait (bounded) until the daemon has stopped serving `domid`'s ring.
#[track_caller]
fn wait_stopped(xs: &OurXenstored, domid: DomId) {
    let deadline = Instant::now() + T;
    loop {
        if xs.xenstored().rings().contains(&(domid, false)) {
            return;
        }
        assert!(Instant::now() < deadline, "dom{domid}'s ring still served");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A field of a guest's ring page, as the guest sees it.
fn field(g: &SimGuest, offset: usize) -> &AtomicU32 {
    // SAFETY: `offset` is that of a u32 field of xenstore_domain_interface, so the address is
    // 4-aligned and inside the guest's page, which stays mapped while the hypervisor lives
    // (longer than `g`, which the reference borrows). The page is shared with the daemon,
    // which accesses these fields only atomically as well.
    unsafe { AtomicU32::from_ptr(g.page().as_ptr().add(offset).cast::<u32>()) }
}

#[test]
fn guests_and_dom0_share_the_store_within_their_permissions() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    d0.watch("@introduceDomain", "intro").unwrap();
    assert_eq!(event(&mut d0, "intro"), "@introduceDomain");
    let mut a = guest(&xs, &mut d0, 1);
    assert_eq!(
        event(&mut d0, "intro"),
        "@introduceDomain",
        "dom1 introduced"
    );
    let mut b = guest(&xs, &mut d0, 2);
    assert_eq!(
        event(&mut d0, "intro"),
        "@introduceDomain",
        "dom2 introduced"
    );
    assert!(d0.is_domain_introduced(1).unwrap() && d0.is_domain_introduced(2).unwrap());

    // A writes in its home; dom0 reads it; B may neither read nor write there.
    a.write("data/x", b"from A").unwrap();
    assert_eq!(d0.read("/local/domain/1/data/x").unwrap(), b"from A");
    assert_eq!(a.read("/local/domain/1/data/x").unwrap(), b"from A");
    denied(b.read("/local/domain/1/data/x"), "B reads A's node");
    denied(
        b.write("/local/domain/1/data/y", b"B"),
        "B writes in A's home",
    );
    denied(b.directory("/local/domain/1"), "B lists A's home");
    denied(a.read("/local/domain/0"), "A reads dom0's home");

    // Watches across domains: dom0 hears A's writes.
    d0.watch("/local/domain/1/data", "a-data").unwrap();
    assert_eq!(event(&mut d0, "a-data"), "/local/domain/1/data");
    a.write("data/x", b"2").unwrap();
    assert_eq!(event(&mut d0, "a-data"), "/local/domain/1/data/x");

    // B watches a node of A: the initial event only, until A lets B read it.
    b.watch("/local/domain/1/data/shared", "shared").unwrap();
    assert_eq!(event(&mut b, "shared"), "/local/domain/1/data/shared");
    a.write("data/shared", b"1").unwrap();
    assert_eq!(event(&mut d0, "a-data"), "/local/domain/1/data/shared");
    no_events(&mut b, "A's node, not readable by B");
    a.set_perms(
        "data/shared",
        &perms(&[(Access::None, 1), (Access::Read, 2)]),
    )
    .unwrap();
    assert_eq!(event(&mut b, "shared"), "/local/domain/1/data/shared");
    a.write("data/shared", b"2").unwrap();
    assert_eq!(event(&mut b, "shared"), "/local/domain/1/data/shared");
    assert_eq!(b.read("/local/domain/1/data/shared").unwrap(), b"2");

    // A guest's relative watch hears dom0 (relative paths), and not B's home.
    a.watch("data", "own").unwrap();
    assert_eq!(event(&mut a, "own"), "data");
    d0.write("/local/domain/1/data/from0", b"0").unwrap();
    assert_eq!(event(&mut a, "own"), "data/from0");
    b.write("data/b", b"b").unwrap();
    assert_eq!(d0.read("/local/domain/2/data/b").unwrap(), b"b");
    no_events(&mut a, "B's write");

    // The toolstack reads what the guests published, over the socket.
    let mut dir = d0.directory("/local/domain").unwrap();
    dir.sort();
    assert_eq!(dir, ["1", "2"]);
}

#[test]
fn a_guest_destroyed_mid_transaction_is_released_and_the_others_are_still_served() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    let mut a = guest(&xs, &mut d0, 1);
    let mut b = guest(&xs, &mut d0, 2);
    a.write("data/x", b"1").unwrap();
    b.write("data/y", b"1").unwrap();
    d0.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(event(&mut d0, "rel"), "@releaseDomain");
    d0.watch("/local/domain/1", "home").unwrap();
    assert_eq!(event(&mut d0, "home"), "/local/domain/1");
    b.watch("data", "b").unwrap();
    assert_eq!(event(&mut b, "b"), "data");
    let dom0 = xs.hypervisor().domain(0).unwrap();
    assert_eq!(dom0.stats().unwrap().mappings, 2, "two rings mapped");

    // B has a transaction open too, across A's death.
    let mut btx = b.transaction_start().unwrap();
    btx.write("data/tx", b"B").unwrap();
    {
        let mut tx = a.transaction_start().unwrap();
        tx.write("data/t", b"never").unwrap();
        assert_eq!(tx.read("data/x").unwrap(), b"1");
        xs.xenstored().destroy_domain(1).unwrap();
        // The guest is gone: its handle can do nothing more.
        assert!(tx.commit().is_err(), "commit from a destroyed domain");
    }
    // The nodes A owned were removed (watches fire as for XS_RM), then @releaseDomain.
    assert_eq!(event(&mut d0, "home"), "/local/domain/1/data");
    assert_eq!(event(&mut d0, "rel"), "@releaseDomain");
    no_events(&mut d0, "nothing else");
    assert_eq!(
        d0.read("/local/domain/1/data/t").err(),
        Some(XsClientError::Xs(XsError::Enoent)),
        "the transaction never committed"
    );
    assert_eq!(
        d0.read("/local/domain/1/data").err(),
        Some(XsClientError::Xs(XsError::Enoent)),
        "A's nodes are gone"
    );
    assert_eq!(
        d0.read("/local/domain/1").unwrap(),
        b"",
        "dom0's node stays"
    );
    assert!(!d0.is_domain_introduced(1).unwrap());
    assert_eq!(
        xs.xenstored().rings(),
        [(2, true)],
        "only B's ring is served"
    );
    assert_eq!(
        dom0.stats().unwrap().mappings,
        1,
        "A's ring page was unmapped"
    );
    drop(a);

    // B keeps being served: its transaction commits, its watch fires.
    btx.commit().unwrap();
    assert_eq!(event(&mut b, "b"), "data/tx");
    assert_eq!(d0.read("/local/domain/2/data/tx").unwrap(), b"B");
    d0.write("/local/domain/2/data/z", b"0").unwrap();
    assert_eq!(event(&mut b, "b"), "data/z");
    b.write("data/y", b"2").unwrap();
    assert_eq!(d0.read("/local/domain/2/data/y").unwrap(), b"2");

    // A domid may come back as a new domain, with a fresh connection.
    let mut a2 = guest(&xs, &mut d0, 1);
    a2.write("data/x", b"new").unwrap();
    assert_eq!(d0.read("/local/domain/1/data/x").unwrap(), b"new");
}

#[test]
fn misbehaving_guests_get_the_error_field_and_the_others_go_on() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    let mut a = guest(&xs, &mut d0, 1);

    // Guest 3 corrupts its request producer index (more than 1024 bytes "in flight").
    let g3 = guest_build(&xs, &mut d0, 3);
    let (dom3, port3) = (g3.domain().clone(), g3.port());
    let req_prod = field(&g3, offset_of!(XenstoreDomainInterface, req_prod));
    let req_cons = field(&g3, offset_of!(XenstoreDomainInterface, req_cons));
    req_prod.store(
        req_cons.load(Ordering::Acquire).wrapping_add(5000),
        Ordering::Release,
    );
    dom3.notify(port3).unwrap();
    wait_stopped(&xs, 3);
    assert_eq!(
        field(&g3, offset_of!(XenstoreDomainInterface, error)).load(Ordering::Acquire),
        XENSTORE_ERROR_RINGIDX
    );

    // Guest 4 sends a header claiming 5000 bytes of payload.
    let g4 = guest_build(&xs, &mut d0, 4);
    let err4 = field(&g4, offset_of!(XenstoreDomainInterface, error)) as *const AtomicU32;
    let mut t4 = g4.transport().unwrap();
    let hdr = Header {
        ty: MsgType::Read.as_u32(),
        req_id: 1,
        tx_id: 0,
        len: 5000,
    };
    t4.send(&hdr.encode(), T).unwrap();
    wait_stopped(&xs, 4);
    // SAFETY: the page stays mapped while the hypervisor lives (see `field`).
    let err4 = unsafe { &*err4 };
    assert_eq!(err4.load(Ordering::Acquire), XENSTORE_ERROR_PROTO);
    let mut c4 = Client::new(t4);
    match c4.read("data") {
        Err(XsClientError::ServerError(e)) => assert_eq!(e, XENSTORE_ERROR_PROTO),
        other => panic!("dom4 after its error: {other:?}"),
    }

    // Everybody else is still served; the stopped domains are still introduced until they
    // are released or die.
    a.write("data/x", b"1").unwrap();
    assert_eq!(d0.read("/local/domain/1/data/x").unwrap(), b"1");
    assert!(d0.is_domain_introduced(3).unwrap());
    d0.release(3).unwrap();
    xs.xenstored().destroy_domain(4).unwrap();
    let rings = xs.xenstored().rings();
    assert_eq!(rings, [(1, true)], "3 released, 4 destroyed");
    let dom0 = xs.hypervisor().domain(0).unwrap();
    assert_eq!(
        dom0.stats().unwrap().mappings,
        1,
        "their pages were unmapped"
    );

    // A guest that resets its ring (XENSTORE_RECONNECT) loses its watches and goes on.
    let mut e = guest(&xs, &mut d0, 5);
    e.watch("data", "w").unwrap();
    assert_eq!(event(&mut e, "w"), "data");
    e.transport_mut().reconnect(T).unwrap();
    e.reset();
    d0.write("/local/domain/5/data/after", b"1").unwrap();
    no_events(&mut e, "the watch went with the reset");
    assert_eq!(e.read("data/after").unwrap(), b"1");
    e.watch("data", "w").unwrap();
    assert_eq!(event(&mut e, "w"), "data");
    d0.write("/local/domain/5/data/again", b"1").unwrap();
    assert_eq!(event(&mut e, "w"), "data/again");
}

#[test]
fn a_guest_that_shuts_down_fires_release_domain_once_and_keeps_its_nodes() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    let mut a = guest(&xs, &mut d0, 1);
    a.write("data/x", b"1").unwrap();
    d0.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(event(&mut d0, "rel"), "@releaseDomain");
    let dom1 = xs.hypervisor().domain(1).unwrap();
    xen_platform::Scheduler::shutdown(&dom1, xen_platform::ShutdownReason::Poweroff).unwrap();
    xs.xenstored().sync();
    // As xenstored's domain_cleanup(): "shutdown" fires once; only "dying" removes anything.
    assert_eq!(event(&mut d0, "rel"), "@releaseDomain", "shutdown");
    xs.xenstored().sync();
    no_events(&mut d0, "once");
    assert!(d0.is_domain_introduced(1).unwrap());
    assert_eq!(d0.read("/local/domain/1/data/x").unwrap(), b"1");
    xs.xenstored().destroy_domain(1).unwrap();
    assert_eq!(event(&mut d0, "rel"), "@releaseDomain", "death");
    assert!(!d0.is_domain_introduced(1).unwrap());
}

#[test]
fn a_guest_that_does_not_read_its_replies_does_not_hold_up_the_daemon() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    let mut a = guest(&xs, &mut d0, 1);
    let mut t = guest_build(&xs, &mut d0, 6).transport().unwrap();
    // 1000 requests (18 KB) without reading a reply: far more than the 1024-byte rings hold.
    // The daemon keeps reading them, buffering the replies, and serves everyone meanwhile.
    const N: u32 = 1000;
    let req = |id: u32| {
        xen_store::Request::GetDomainPath(6)
            .to_message(id, 0)
            .unwrap()
            .encode()
            .unwrap()
    };
    for id in 1..=N {
        t.send(&req(id), T).unwrap();
        if id % 250 == 0 {
            a.write("data/x", id.to_string().as_bytes()).unwrap();
            assert_eq!(
                d0.read("/local/domain/1/data/x").unwrap(),
                id.to_string().as_bytes()
            );
        }
    }
    assert_eq!(xs.xenstored().rings(), [(1, true), (6, true)]);
    // Now every reply arrives, in order.
    let mut framer = xen_store::Framer::new();
    let mut buf = [0u8; 4096];
    let mut next = 1u32;
    while next <= N {
        let n = t.recv(&mut buf, T).unwrap();
        assert!(n > 0, "reply {next} did not come");
        let mut input = &buf[..n];
        while !input.is_empty() {
            let (used, m) = framer.push(input).unwrap();
            input = &input[used..];
            if let Some(m) = m {
                assert_eq!(m.header.req_id, next, "replies in request order");
                assert_eq!(m.payload, b"/local/domain/6\0");
                next += 1;
            }
        }
    }
}

/// CPU time (user + system, in clock ticks) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after "(comm)": state is 3rd overall; utime and stime are 14th and 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

#[test]
fn the_service_thread_sleeps_when_idle_and_answers_at_once() {
    let xs = OurXenstored::for_test(Limits::DEFAULT);
    let mut d0 = xs.dom0_client();
    let mut a = guest(&xs, &mut d0, 1);
    let name = xs.xenstored().service_thread_name().to_string();
    let before = thread_ticks(&name);
    std::thread::sleep(Duration::from_millis(600));
    let used = thread_ticks(&name) - before;
    // A busy loop would use ~60 ticks (100 Hz) in 600 ms; waking every TICK uses ~0.
    assert!(used <= 6, "{name} used {used} ticks while idle");
    // ... and requests are answered without waiting for the tick.
    let t0 = Instant::now();
    for i in 0..50 {
        a.write("data/x", format!("{i}").as_bytes()).unwrap();
        d0.read("/local/domain/1/data/x").unwrap();
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "100 round trips took {:?}",
        t0.elapsed()
    );
}
