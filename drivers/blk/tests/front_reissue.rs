//! blkfront when its backend goes away in order and comes back (issue "suspend/resume",
//! item 1; Linux `blkif_recover`): requests not yet answered wait, parked, and are issued
//! again on the new connection — split to what the new backend offers — each completed
//! exactly once; a disk that changed meanwhile fails the device instead.

mod front_common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use front_common::*;
use xen_blk::abi::BLKIF_OP_INDIRECT;
use xen_blk::front::{BlkError, BlockDevice, DeviceState, Request, WaitMode};

const DISK: usize = 4 << 20;

/// Keys of a backend with a one-page ring and no indirect segments (11 per request).
fn small_offer() -> BackKeys {
    let mut o = modern_offer();
    o.max_ring_page_order = 0;
    o.max_indirect_segments = 0;
    BackKeys::from_offer(&o)
}

#[test]
fn unanswered_requests_are_issued_again_on_the_new_backend_split_to_its_size() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let disk = be.disk.clone();
    let mut dev = s.connect();
    assert!(dev.config().unwrap().indirect);
    dev.write(0, &pattern(4096, 1)).unwrap();
    // In flight, never answered by this backend: three 4 KiB writes, a 1 MiB write (one
    // indirect request here), a flush and a read of what was acknowledged.
    be.set(Behaviour::Stall);
    let mib = 1 << 20;
    let mut expect: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
    for (tag, sector, len) in [
        (1u64, 64u64, 4096usize),
        (2, 72, 4096),
        (3, 80, 4096),
        (4, 2048, mib),
    ] {
        let data = pattern(len, 10 + tag as u8);
        let mut b = dev.alloc_buffer(len).unwrap();
        b.as_mut_slice().copy_from_slice(&data);
        dev.submit(tag, Request::Write { sector, buf: b }).unwrap();
        expect.insert(tag, (sector, data));
    }
    dev.submit(5, Request::Flush).unwrap();
    let rb = dev.alloc_buffer(4096).unwrap();
    dev.submit(6, Request::Read { sector: 0, buf: rb }).unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 7 {
        assert!(Instant::now() < end, "the backend took {:?}", be.taken);
        std::thread::sleep(Duration::from_millis(1));
    }
    backend_goes_away(&mut s, &mut be);
    // Queued while the backend is away.
    let data7 = pattern(4096, 17);
    let mut b = dev.alloc_buffer(4096).unwrap();
    b.as_mut_slice().copy_from_slice(&data7);
    dev.submit(7, Request::Write { sector: 96, buf: b })
        .unwrap();
    expect.insert(7, (96, data7));
    // A new backend on the same disk, offering less (no indirect segments: its key goes).
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.rm(&format!("{}/feature-max-indirect-segments", s.backend_path))
            .unwrap()
    });
    let be2 = s.backend_on(small_offer(), disk.clone(), Behaviour::Honest);
    let done = collect_once(&mut s, &mut dev, &[1, 2, 3, 4, 5, 6, 7]);
    for c in &done {
        assert_eq!(c.result, Ok(()), "request {}", c.tag);
    }
    let read = done[5].buf.as_ref().unwrap();
    assert!(
        read.as_slice() == pattern(4096, 1).as_slice(),
        "the re-issued read"
    );
    assert_eq!(dev.state(), DeviceState::Connected);
    let cfg = dev.config().unwrap();
    assert!(!cfg.indirect && cfg.ring_page_order == 0, "{cfg:?}");
    assert_eq!(dev.reissued(), 7, "six parked and one queued while away");
    // The new backend got only direct requests: the 1 MiB write went as 24 parts.
    let seen = be2.seen();
    assert!(seen
        .iter()
        .all(|r| r.operation != BLKIF_OP_INDIRECT && r.segments <= 11));
    let big: Vec<_> = seen
        .iter()
        .filter(|r| r.sector >= 2048 && r.sector < 4096)
        .collect();
    assert_eq!(big.len(), mib.div_ceil(11 * 4096));
    let d = disk.lock().unwrap();
    assert_eq!(&d[..4096], &pattern(4096, 1)[..]);
    for (tag, (sector, data)) in &expect {
        let at = *sector as usize * 512;
        assert!(
            d[at..at + data.len()] == data[..],
            "write {tag} on the disk"
        );
    }
}

#[test]
fn a_disk_that_shrank_while_away_fails_the_device_and_gets_no_write() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Stall,
    );
    let disk = be.disk.clone();
    let mut dev = s.connect();
    let mut b = dev.alloc_buffer(4096).unwrap();
    b.as_mut_slice().fill(7);
    dev.submit(1, Request::Write { sector: 16, buf: b })
        .unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    backend_goes_away(&mut s, &mut be);
    let mut o = modern_offer();
    o.sectors /= 2;
    let be2 = s.backend_on(BackKeys::from_offer(&o), disk, Behaviour::Honest);
    let done = collect(&mut s, &mut dev, 1);
    assert_eq!(done[0].result, Err(BlkError::Failed));
    match s.state() {
        Some(DeviceState::Failed(w)) => assert!(w.contains("shrank"), "{w}"),
        other => panic!("not failed: {other:?}"),
    }
    s.until("error published", |s| s.error().is_some());
    assert!(be2.seen().is_empty(), "nothing issued to the changed disk");
}

/// What a restore does to the guest's XenStore (libxl writes its devices anew): the old
/// device directories go, a new frontend directory (Initialising) and backend directory come.
fn restore_rewrites_the_device(s: &mut Setup) {
    let vbd = xen_toolstack::Vbd::new(s.guest.domid(), s.back.id(), "xvda", "/disk.img");
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.rm(&s.backend_path).unwrap();
        xs.rm(&s.frontend_path).unwrap();
    });
    s.ts.add_vbd(&vbd).unwrap();
}

/// A real resume (`xl restore`): the domain comes back as a new one — its grants and event
/// channels revoked (`revoke_for_restore`), its device nodes written anew — with writes and a
/// flush in flight that the old backend never answered. `Blkfront::suspended` parks them,
/// `Bus::resumed` runs the handshake again against the backend the new nodes name, and the
/// parked requests complete, once each, with their data on the disk.
#[test]
fn after_a_resume_the_requests_in_flight_are_issued_again() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let disk = be.disk.clone();
    let mut dev = s.connect();
    dev.write(0, &pattern(4096, 1)).unwrap();
    be.set(Behaviour::Stall);
    let mut expect = BTreeMap::new();
    for (tag, sector) in [(1u64, 64u64), (2, 72), (3, 80)] {
        let data = pattern(4096, 20 + tag as u8);
        let mut b = dev.alloc_buffer(4096).unwrap();
        b.as_mut_slice().copy_from_slice(&data);
        dev.submit(tag, Request::Write { sector, buf: b }).unwrap();
        expect.insert(tag, (sector, data));
    }
    dev.submit(4, Request::Flush).unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < end, "the backend took {:?}", be.taken);
        std::thread::sleep(Duration::from_millis(1));
    }
    // Saved: the old backend goes with the old domain, without a word to the frontend.
    be.finish().unwrap();
    // Restored: every grant and event channel of the guest is gone (its XenStore channel
    // aside: the simulator keeps that connection), and libxl writes the device anew.
    let before = s.guest.domain().stats().unwrap();
    s.guest
        .domain()
        .revoke_for_restore(&[s.guest.store_port()])
        .unwrap();
    restore_rewrites_the_device(&mut s);
    // Resumed: the guest lets go of what the old domain had, then its bus starts again.
    s.front.suspended();
    assert_eq!(s.state(), Some(DeviceState::Reconnecting));
    let now = s.t0.elapsed();
    s.bus.resumed(s.guest.domid(), now).unwrap();
    let _be2 = s.backend_on(
        BackKeys::from_offer(&modern_offer()),
        disk.clone(),
        Behaviour::Honest,
    );
    let done = collect_once(&mut s, &mut dev, &[1, 2, 3, 4]);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert!(dev.reissued() >= 4, "re-issued {}", dev.reissued());
    assert_eq!(s.state(), Some(DeviceState::Connected));
    // The old connection's grants were ended (revoked ones end at once), not leaked: the
    // guest holds no more than it did with one connection up.
    let after = s.guest.domain().stats().unwrap();
    assert!(after.grants <= before.grants, "{before:?} -> {after:?}");
    let d = disk.lock().unwrap();
    for (sector, data) in expect.values() {
        let at = *sector as usize * 512;
        assert_eq!(&d[at..at + data.len()], &data[..], "sector {sector}");
    }
}

/// A restored domain whose disk is gone (its nodes not written again): the device fails with
/// an error published, and the requests it had parked fail at once instead of waiting for
/// the reconnect timeout.
#[test]
fn after_a_resume_a_device_that_is_gone_fails_its_parked_requests() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    be.set(Behaviour::Stall);
    let b = dev.alloc_buffer(4096).unwrap();
    dev.submit(1, Request::Write { sector: 8, buf: b }).unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    be.finish().unwrap();
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.rm(&s.backend_path).unwrap();
        xs.rm(&s.frontend_path).unwrap();
    });
    s.front.suspended();
    let now = s.t0.elapsed();
    s.bus.resumed(s.guest.domid(), now).unwrap();
    let t = Instant::now();
    let done = collect(&mut s, &mut dev, 1);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(done[0].result, Err(BlkError::Failed));
    assert!(matches!(
        s.state(),
        Some(DeviceState::Failed(_) | DeviceState::Closed)
    ));
    // xenbus_dev_fatal's node: why the device failed.
    let err = s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.try_read(&format!("{}/error/{XVDA}/error", s.guest.dom_path()))
            .unwrap()
    });
    let err = String::from_utf8(err.expect("error published")).unwrap();
    assert!(err.contains("missing"), "{err}");
}

/// The storage domain is destroyed and created again (a new domid) while the guest is saved;
/// the guest is restored with its disk on the new one (xl resolves `backend=<name>` again at
/// `xl restore`). The writes and the flush the old storage domain never answered are issued
/// to the new one, once each, with their data on the disk both served.
#[test]
fn after_a_resume_onto_a_re_created_storage_domain_the_requests_are_issued_again() {
    let mut s = Setup::new(WaitMode::Event, true, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let disk = be.disk.clone();
    let mut dev = s.connect();
    be.set(Behaviour::Stall);
    let mut expect = BTreeMap::new();
    for (tag, sector) in [(1u64, 8u64), (2, 16)] {
        let data = pattern(4096, 30 + tag as u8);
        let mut b = dev.alloc_buffer(4096).unwrap();
        b.as_mut_slice().copy_from_slice(&data);
        dev.submit(tag, Request::Write { sector, buf: b }).unwrap();
        expect.insert(tag, (sector, data));
    }
    dev.submit(3, Request::Flush).unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < end, "the backend took {:?}", be.taken);
        std::thread::sleep(Duration::from_millis(1));
    }
    be.finish().unwrap();
    // Saved; the storage domain destroyed (its backend directory goes with it) and created
    // again under a new domid.
    let old = s.storage.take().unwrap();
    s.ts.destroy(old.domid()).unwrap();
    let sd =
        s.ts.create_domain(
            "storage",
            xen_toolstack::DomainConfig::default().driver_domain(),
        )
        .unwrap();
    assert_ne!(sd.domid(), old.domid());
    // Restored: a new domain's grants and channels; the device written anew, on the new
    // storage domain.
    s.guest
        .domain()
        .revoke_for_restore(&[s.guest.store_port()])
        .unwrap();
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        let _ = xs.rm(&s.backend_path);
        xs.rm(&s.frontend_path).unwrap();
    });
    let vbd = xen_toolstack::Vbd::new(s.guest.domid(), sd.domid(), "xvda", "/disk.img");
    s.backend_path = s.ts.add_vbd(&vbd).unwrap().backend_path();
    s.back = sd.domain().clone();
    s.storage = Some(sd);
    s.front.suspended();
    let now = s.t0.elapsed();
    s.bus.resumed(s.guest.domid(), now).unwrap();
    let _be2 = s.backend_on(
        BackKeys::from_offer(&modern_offer()),
        disk.clone(),
        Behaviour::Honest,
    );
    let done = collect_once(&mut s, &mut dev, &[1, 2, 3]);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(s.state(), Some(DeviceState::Connected));
    let backend_id = s.fe_key("backend-id").unwrap();
    assert_eq!(
        backend_id,
        s.back.id().to_string(),
        "served by the new domain"
    );
    let d = disk.lock().unwrap();
    for (sector, data) in expect.values() {
        let at = *sector as usize * 512;
        assert_eq!(&d[at..at + data.len()], &data[..], "sector {sector}");
    }
}
