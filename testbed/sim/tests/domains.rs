//! Domain lifecycle: creation, destruction and what it revokes, console, clock, shutdown.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{peek, poke};
use xen_platform::{
    Clock, Console, CopyPtr, Error, Events, GrantCopy, GrantMapper, Grants, PageRun, Pages,
    Scheduler, ShutdownReason,
};
use xen_sim::Hypervisor;

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(10);

#[test]
fn domids_count_up_from_dom0_and_are_not_reused() {
    let hv = Hypervisor::new();
    let d0 = hv.create_domain("Domain-0");
    let d1 = hv.create_domain("guest");
    assert_eq!((d0.id(), d1.id()), (0, 1));
    assert!(d0.is_privileged());
    assert!(!d1.is_privileged());
    assert_eq!(d1.name(), "guest");
    assert_eq!(hv.domain(1).unwrap(), d1);
    assert_eq!(hv.domain_by_name("Domain-0").unwrap().id(), 0);
    assert!(hv.domain(2).is_none());
    hv.destroy_domain(1).unwrap();
    assert!(!d1.is_alive());
    assert!(hv.domain(1).is_none());
    assert_eq!(hv.destroy_domain(1), Err(Error::NoSuchDomain));
    assert_eq!(hv.destroy_domain(50), Err(Error::NoSuchDomain));
    assert_eq!(hv.create_domain("next").id(), 2);
    assert_eq!(hv.domains().len(), 2);
}

#[test]
fn the_domain_epoch_moves_on_create_destroy_and_shutdown() {
    let hv = Hypervisor::new();
    let e0 = hv.domain_epoch();
    let d = hv.create_domain("a");
    let e1 = hv.domain_epoch();
    assert_ne!(e0, e1, "create");
    let _ = d.console_output();
    assert_eq!(hv.domain_epoch(), e1, "nothing happened");
    d.shutdown(ShutdownReason::Poweroff).unwrap();
    let e2 = hv.domain_epoch();
    assert_ne!(e1, e2, "shutdown");
    d.destroy().unwrap();
    assert_ne!(e2, hv.domain_epoch(), "destroy");
}

#[test]
fn a_toolstack_may_choose_the_domid() {
    let hv = Hypervisor::new();
    let d0 = hv.create_domain("Domain-0");
    let d5 = hv.create_domain_with_id(5, "five").unwrap();
    assert_eq!((d0.id(), d5.id()), (0, 5));
    assert_eq!(hv.domain(5).unwrap(), d5);
    assert_eq!(
        hv.create_domain_with_id(5, "again").err(),
        Some(Error::Busy),
        "a live domid"
    );
    assert_eq!(
        hv.create_domain_with_id(0x7ff0, "reserved").err(),
        Some(Error::Invalid),
        "DOMID_FIRST_RESERVED"
    );
    // The sequential allocator skips the chosen domid, even after it died.
    let ids: Vec<u16> = (0..4).map(|_| hv.create_domain("seq").id()).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    d5.destroy().unwrap();
    assert_eq!(hv.create_domain("seq").id(), 6);
    // A chosen domid may be chosen again once its domain is gone, and so may one the
    // sequential allocator handed out.
    let again = hv.create_domain_with_id(5, "five again").unwrap();
    assert!(again.is_alive() && !d5.is_alive());
    hv.destroy_domain(2).unwrap();
    assert_eq!(hv.create_domain_with_id(2, "two again").unwrap().id(), 2);
    assert_eq!(hv.create_domain("seq").id(), 7);
}

#[test]
fn destroy_revokes_grants_but_peer_mappings_stay_readable() {
    let hv = Hypervisor::new();
    let back = hv.create_domain("back");
    let front = hv.create_domain("front");
    let run = front.alloc(2).unwrap();
    poke(run.page(0), 0, 0x77);
    let f0 = front.frame(run.page(0)).unwrap();
    let g0 = front.grant(back.id(), f0, false).unwrap();
    let g1 = front
        .grant(back.id(), front.frame(run.page(1)).unwrap(), false)
        .unwrap();
    let m = back.map(front.id(), g0, false).unwrap();
    let before = hv.frames_in_use();

    front.destroy().unwrap();

    // New maps (and copies) from the dead granter fail.
    assert_eq!(
        back.map(front.id(), g1, true).err(),
        Some(Error::NoSuchDomain)
    );
    assert_eq!(
        back.map(front.id(), g0, true).err(),
        Some(Error::NoSuchDomain)
    );
    let br = back.alloc(1).unwrap();
    let op = GrantCopy {
        source: CopyPtr::Foreign {
            domid: front.id(),
            gref: g1,
            offset: 0,
        },
        dest: CopyPtr::Local {
            frame: back.frame(br.addr).unwrap(),
            offset: 0,
        },
        len: 1,
    };
    let mut st = [Ok(())];
    back.copy(&[op], &mut st).unwrap();
    assert_eq!(st, [Err(Error::NoSuchDomain)]);

    // The live mapping still shows the page and keeps its frame alive ...
    assert_eq!(peek(m.addr, 0), 0x77);
    poke(m.addr, 1, 0x78);
    assert_eq!(peek(m.addr, 1), 0x78);
    // (front's other page was freed, back allocated one)
    assert_eq!(hv.frames_in_use(), before);
    // ... and the frame is recycled once nobody maps it.
    back.unmap(m).unwrap();
    assert_eq!(hv.frames_in_use(), before - 1);
    // The dead domain's own address range is still valid memory (zeros), not a hole.
    assert_eq!(peek(run.page(0), 0), 0);
    assert_eq!(front.free(run), Err(Error::NoSuchDomain));
}

/// `revoke_for_restore`: what a restored domain finds — its grants gone (a peer can no longer
/// map or copy them; a mapping it still holds stays readable; ending a grant succeeds even
/// while mapped), its ports closed (peers see them go) but the kept one, its memory as it was.
#[test]
fn revoke_for_restore_ends_grants_and_ports_but_keeps_memory() {
    let hv = Hypervisor::new();
    let back = hv.create_domain("back");
    let front = hv.create_domain("front");
    let run = front.alloc(2).unwrap();
    poke(run.page(0), 0, 0x55);
    let g0 = front
        .grant(back.id(), front.frame(run.page(0)).unwrap(), false)
        .unwrap();
    let g1 = front
        .grant(back.id(), front.frame(run.page(1)).unwrap(), false)
        .unwrap();
    let m = back.map(front.id(), g0, false).unwrap();
    let keep = front.alloc_unbound(back.id()).unwrap();
    let kb = back.bind_interdomain(front.id(), keep).unwrap();
    let gone = front.alloc_unbound(back.id()).unwrap();
    let gb = back.bind_interdomain(front.id(), gone).unwrap();

    front.revoke_for_restore(&[keep]).unwrap();

    assert_eq!(back.map(front.id(), g1, true).err(), Some(Error::NotFound));
    assert_eq!(peek(m.addr, 0), 0x55, "a mapping held stays readable");
    front.end(g0).unwrap();
    front.end(g1).unwrap();
    back.unmap(m).unwrap();
    assert_eq!(back.notify(gb), Err(Error::PeerGone));
    back.notify(kb).unwrap();
    assert_eq!(front.wait(&[keep], Some(SHORT)), Ok(keep));
    assert_eq!(peek(run.page(0), 0), 0x55, "memory as it was");
    front.free(run).unwrap();
}

#[test]
fn destroy_releases_the_dead_domains_mappings() {
    let hv = Hypervisor::new();
    let back = hv.create_domain("back");
    let front = hv.create_domain("front");
    let run = front.alloc(3).unwrap();
    let refs: Vec<_> = (0..3)
        .map(|i| {
            let f = front.frame(run.page(i)).unwrap();
            front.grant(back.id(), f, false).unwrap()
        })
        .collect();
    let m = back.map(front.id(), refs[0], false).unwrap();
    let mm = back.map_multi(front.id(), &refs[1..], true).unwrap();
    assert_eq!(front.end(refs[0]), Err(Error::Busy));
    back.destroy().unwrap();
    // The frontend can end its grants now that the backend is gone.
    for &r in &refs {
        front.end(r).unwrap();
    }
    front.free(run).unwrap();
    // The dead backend's handles: calls fail, nothing crashes.
    assert_eq!(back.unmap(m), Err(Error::NoSuchDomain));
    assert_eq!(back.unmap_multi(mm), Err(Error::NoSuchDomain));
}

#[test]
fn destroy_closes_ports_and_peers_see_peer_gone() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let pa = a.alloc_unbound(b.id()).unwrap();
    let pb = b.bind_interdomain(a.id(), pa).unwrap();
    b.clear(pb);
    b.destroy().unwrap();
    assert_eq!(a.notify(pa), Err(Error::PeerGone));
    assert_eq!(a.wait(&[pa], None), Err(Error::PeerGone));
    // A port reserved for the dead domain but never bound is left as it is.
    let reserved = a.alloc_unbound(b.id()).unwrap();
    assert_eq!(a.wait(&[reserved], Some(SHORT)), Err(Error::Timeout));
    a.close(pa).unwrap();
}

#[test]
fn a_waiter_wakes_with_peer_gone_when_the_peer_is_destroyed() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let pb = b.alloc_unbound(a.id()).unwrap();
    let pa = a.bind_interdomain(b.id(), pb).unwrap();
    a.clear(pa);
    let waiter = {
        let a = a.clone();
        thread::spawn(move || {
            let t = Instant::now();
            (a.wait(&[pa], Some(LONG)), t.elapsed())
        })
    };
    thread::sleep(SHORT);
    hv.destroy_domain(b.id()).unwrap();
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, Err(Error::PeerGone));
    assert!(took < LONG, "woken by the destroy, not the timeout");
}

#[test]
fn a_domain_waiting_when_destroyed_wakes_with_no_such_domain() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let pb = b.alloc_unbound(a.id()).unwrap();
    let waiter = {
        let b = b.clone();
        thread::spawn(move || (b.wait(&[pb], None), b.block(None)))
    };
    thread::sleep(SHORT);
    b.destroy().unwrap();
    let (r, ()) = waiter.join().unwrap();
    assert_eq!(r, Err(Error::NoSuchDomain));
}

#[test]
fn every_call_on_a_dead_domain_fails_cleanly() {
    let hv = Hypervisor::new();
    let peer = hv.create_domain("peer");
    let d = hv.create_domain("doomed");
    let run = d.alloc(1).unwrap();
    let f = d.frame(run.addr).unwrap();
    let g = d.grant(peer.id(), f, false).unwrap();
    let p = d.alloc_unbound(peer.id()).unwrap();
    d.write(b"before\n");
    d.destroy().unwrap();

    assert_eq!(d.alloc_unbound(peer.id()), Err(Error::NoSuchDomain));
    assert_eq!(d.bind_interdomain(peer.id(), 1), Err(Error::NoSuchDomain));
    assert_eq!(d.notify(p), Err(Error::NoSuchDomain));
    assert_eq!(d.close(p), Err(Error::NoSuchDomain));
    assert_eq!(d.mask(p), Err(Error::NoSuchDomain));
    assert_eq!(d.unmask(p), Err(Error::NoSuchDomain));
    assert!(!d.is_pending(p));
    assert!(!d.clear(p));
    assert_eq!(d.wait(&[p], None), Err(Error::NoSuchDomain));
    assert_eq!(d.grant(peer.id(), f, false), Err(Error::NoSuchDomain));
    assert_eq!(d.end(g), Err(Error::NoSuchDomain));
    let mut failed = Vec::new();
    assert_eq!(d.end_batch(&[g], &mut |r, e| failed.push((r, e))), 1);
    assert_eq!(failed, vec![(g, Error::NoSuchDomain)]);
    assert_eq!(d.map(peer.id(), 8, true).err(), Some(Error::NoSuchDomain));
    assert_eq!(
        d.map_multi(peer.id(), &[8], true).err(),
        Some(Error::NoSuchDomain)
    );
    let mut st = [Ok(())];
    assert_eq!(d.copy(&[], &mut st), Err(Error::NoSuchDomain));
    assert_eq!(d.alloc(1).err(), Some(Error::NoSuchDomain));
    assert_eq!(d.frame(run.addr), Err(Error::NoSuchDomain));
    let (addr, pages) = (run.addr, run.pages);
    assert_eq!(d.free(run), Err(Error::NoSuchDomain));
    assert_eq!(d.free(PageRun { addr, pages }), Err(Error::NoSuchDomain));
    assert_eq!(
        d.shutdown(ShutdownReason::Poweroff),
        Err(Error::NoSuchDomain)
    );
    assert_eq!(d.grant_reserved(1, 0, f, false), Err(Error::NoSuchDomain));
    d.write(b"after\n");
    assert_eq!(d.console_output(), "before\n");
    let t0 = d.now();
    d.yield_now();
    d.block(None);
    assert!(d.now() >= t0);
    assert!(d.stats().is_none());
    // The peer is unaffected.
    assert!(peer.alloc(1).is_ok());
}

#[test]
fn console_is_captured_per_domain() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    a.write(b"hello ");
    b.write(b"other");
    a.write(b"world\n");
    assert_eq!(a.console_output(), "hello world\n");
    assert_eq!(b.console_output(), "other");
}

#[test]
fn clock_is_monotonic_and_shared() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let t1 = a.now();
    thread::sleep(Duration::from_millis(2));
    let t2 = b.now();
    assert!(t2 > t1);
    assert!(hv.now() >= t2);
}

#[test]
fn shutdown_records_the_reason() {
    let hv = Hypervisor::new();
    let d = hv.create_domain("guest");
    assert_eq!(d.shutdown_reason(), None);
    assert_eq!(d.wait_shutdown(Some(SHORT)), None);
    let watcher = {
        let d = d.clone();
        thread::spawn(move || d.wait_shutdown(Some(LONG)))
    };
    thread::sleep(SHORT);
    assert_eq!(d.shutdown(ShutdownReason::Reboot), Ok(false));
    assert_eq!(watcher.join().unwrap(), Some(ShutdownReason::Reboot));
    assert_eq!(d.shutdown_reason(), Some(ShutdownReason::Reboot));
    // Still alive until the toolstack destroys it.
    assert!(d.is_alive());
    assert_eq!(d.shutdown(ShutdownReason::Suspend), Ok(false));
    assert_eq!(d.shutdown_reason(), Some(ShutdownReason::Suspend));
}

#[test]
fn wait_shutdown_returns_when_destroyed() {
    let hv = Hypervisor::new();
    let d = hv.create_domain("guest");
    let watcher = {
        let d = d.clone();
        thread::spawn(move || d.wait_shutdown(None))
    };
    thread::sleep(SHORT);
    d.destroy().unwrap();
    assert_eq!(watcher.join().unwrap(), None);
}

#[test]
fn hypervisor_drop_with_outstanding_memory_is_clean() {
    for _ in 0..50 {
        let hv = Hypervisor::new();
        let a = hv.create_domain("a");
        let b = hv.create_domain("b");
        let run = a.alloc(8).unwrap();
        let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
        let _m = b.map(a.id(), g, false).unwrap();
        let _mm = b.map_multi(a.id(), &[g, g], true).unwrap();
        b.destroy().unwrap();
    }
}

#[test]
fn hvm_params_are_per_domain() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    assert_eq!(a.hvm_param(1), None);
    a.set_hvm_param(1, 0x1234);
    a.set_hvm_param(2, 5);
    assert_eq!(a.hvm_param(1), Some(0x1234));
    assert_eq!(hv.domain(a.id()).unwrap().hvm_param(2), Some(5));
    assert_eq!(b.hvm_param(1), None);
}
