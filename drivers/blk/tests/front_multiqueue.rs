//! blkfront on several queues (blkif.h "Multiple hardware queues/rings"; issue "suspend/resume
//! and multi-queue", item 4): the keys it writes, I/O spread over the rings of our blkback,
//! the single-queue keys kept for a backend without the feature, a reconnect to a backend
//! with fewer queues (stale queue keys removed, requests of every ring issued again), and a
//! backend that answers on one ring for a request of another.

mod front_common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use front_common::*;
use xen_blk::abi::{BLKIF_OP_WRITE, BLKIF_RSP_OKAY};
use xen_blk::back::BackOptions;
use xen_blk::front::fuzzing::FuzzFront;
use xen_blk::front::{BlkError, BlockDevice, DeviceState, Request, WaitMode, DEFAULT_LIMITS};
use xen_blk::negotiate::{FlushMode, FrontConfig, FrontLimits};

const DISK: usize = 4 << 20;

fn queues(n: u32) -> FrontLimits {
    FrontLimits {
        max_queues: n,
        ..DEFAULT_LIMITS
    }
}

/// The ring keys of the frontend directory: none at the top with several queues, each
/// queue's under `queue-<N>/`.
fn assert_queue_keys(s: &Setup, n: u32) {
    assert_eq!(
        s.fe_key("multi-queue-num-queues").as_deref(),
        Some(n.to_string().as_str())
    );
    for top in ["ring-ref", "ring-ref0", "event-channel"] {
        assert_eq!(s.fe_key(top), None, "toplevel {top} with {n} queues");
    }
    for q in 0..n {
        let port = s.fe_key(&format!("queue-{q}/event-channel"));
        assert!(port.is_some(), "queue-{q}/event-channel");
        let refs = s.fe_key(&format!("queue-{q}/ring-ref"));
        let refs0 = s.fe_key(&format!("queue-{q}/ring-ref0"));
        assert!(refs.is_some() || refs0.is_some(), "queue-{q}/ring-ref*");
    }
    assert_eq!(s.fe_key(&format!("queue-{n}/event-channel")), None);
}

#[test]
fn two_queues_with_our_blkback_carry_requests_on_both_rings() {
    let (mut s, back) = world(queues(2), BackOptions::default());
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().queues, 2);
    assert_queue_keys(&s, 2);
    // The ring order is the device's, at the top (blkif.h's example).
    assert!(s.fe_key("ring-page-order").is_some());
    let ports = dev.ports();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    exercise(&mut dev, 3);
    let r = back.report().unwrap();
    assert_eq!(r.queues, 2);
    assert_eq!(r.per_queue.len(), 2);
    for (q, st) in r.per_queue.iter().enumerate() {
        assert!(
            st.requests > 8,
            "queue {q} carried {} requests",
            st.requests
        );
    }
    assert_eq!(r.stats.refused, 0);
}

#[test]
fn a_backend_without_multi_queue_gets_the_single_queue_keys() {
    let opts = BackOptions {
        max_queues: 1,
        ..BackOptions::default()
    };
    let (mut s, back) = world(queues(4), opts);
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().queues, 1);
    assert_eq!(s.fe_key("multi-queue-num-queues"), None);
    assert!(s.fe_key("event-channel").is_some());
    assert_eq!(s.fe_key("queue-0/event-channel"), None);
    assert_eq!(dev.ports().len(), 1);
    exercise(&mut dev, 5);
    assert_eq!(back.report().unwrap().queues, 1);
}

#[test]
fn a_frontend_limited_to_one_queue_writes_no_queue_keys() {
    let (mut s, back) = world(queues(1), BackOptions::default());
    let mut dev = s.connect();
    // Our blkback offers several.
    assert!(s
        .read(&format!("{}/multi-queue-max-queues", s.backend_path))
        .is_some_and(|v| v != "1"));
    assert_eq!(s.fe_key("multi-queue-num-queues"), None);
    assert!(s.fe_key("event-channel").is_some());
    exercise(&mut dev, 9);
    assert_eq!(back.report().unwrap().queues, 1);
}

/// Writes on both rings of a backend that serves only ring 0 and then goes away; the new
/// backend offers one queue: the frontend's queue keys go, the toplevel ones come, and every
/// write — those the old backend took and those it never looked at — is issued again and
/// completes once, with its data on the disk.
#[test]
fn requests_of_every_queue_are_issued_again_on_a_backend_with_one() {
    let mut s = Setup::with_limits(WaitMode::Event, false, false, queues(2));
    let mut offer = modern_offer();
    offer.max_queues = 2;
    let mut be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Honest);
    let disk = be.disk.clone();
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().queues, 2);
    assert_queue_keys(&s, 2);
    be.set(Behaviour::Stall);
    let mut expect: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
    for tag in 0..8u64 {
        let data = pattern(4096, 40 + tag as u8);
        let mut b = dev.alloc_buffer(4096).unwrap();
        b.as_mut_slice().copy_from_slice(&data);
        let sector = 64 + tag * 8;
        dev.submit(tag, Request::Write { sector, buf: b }).unwrap();
        expect.insert(tag, (sector, data));
    }
    // Round robin: half on each ring; the backend takes ring 0's.
    let end = Instant::now() + LIMIT;
    while be.taken.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < end, "the backend took {:?}", be.taken);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(be.taken.load(Ordering::SeqCst), 4, "only ring 0 is served");
    backend_goes_away(&mut s, &mut be);
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.rm(&format!("{}/multi-queue-max-queues", s.backend_path))
            .unwrap()
    });
    let _be2 = s.backend_on(
        BackKeys::from_offer(&modern_offer()),
        disk.clone(),
        Behaviour::Honest,
    );
    let done = collect_once(&mut s, &mut dev, &(0..8).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result == Ok(())), "{done:?}");
    assert_eq!(dev.state(), DeviceState::Connected);
    assert_eq!(dev.config().unwrap().queues, 1);
    assert_eq!(dev.reissued(), 8);
    for stale in [
        "multi-queue-num-queues",
        "queue-0",
        "queue-1",
        "queue-0/event-channel",
    ] {
        assert_eq!(s.fe_key(stale), None, "stale {stale}");
    }
    assert!(s.fe_key("event-channel").is_some());
    let d = disk.lock().unwrap();
    for (tag, (sector, data)) in &expect {
        let at = *sector as usize * 512;
        assert!(d[at..at + 4096] == data[..], "write {tag} on the disk");
    }
}

/// Offsets in a blkif ring page (io/ring.h `struct blkif_sring`: four 32-bit indexes, 48
/// bytes of padding, then 112-byte entries; a response is `id` u64, `operation` u8, pad,
/// `status` i16 at 10).
const RSP_PROD: usize = 8;
const ENTRIES: usize = 64;
const ENTRY: usize = 112;

/// The id of request slot `slot` of a ring page (a request's `id` is at offset 8).
///
/// # Safety
/// `ring` is a live ring page of a [`FuzzFront`].
unsafe fn request_id(ring: std::ptr::NonNull<u8>, slot: usize) -> u64 {
    // SAFETY: inside the page (slot < 32 entries of 112 bytes after 64); the caller's contract.
    unsafe { std::ptr::read_unaligned(ring.as_ptr().add(ENTRIES + slot * ENTRY + 8) as *const u64) }
}

/// Write a response in slot `slot` of `ring` and publish responses up to `prod`.
///
/// # Safety
/// As [`request_id`]; the frontend does not read the ring meanwhile (only inside `poll`).
unsafe fn respond(
    ring: std::ptr::NonNull<u8>,
    slot: usize,
    id: u64,
    op: u8,
    status: i16,
    prod: u32,
) {
    // SAFETY: inside the page, as in request_id; the caller's contract.
    unsafe {
        let at = ring.as_ptr().add(ENTRIES + slot * ENTRY);
        std::ptr::write_unaligned(at as *mut u64, id);
        *at.add(8) = op;
        std::ptr::write_unaligned(at.add(10) as *mut i16, status);
        std::ptr::write_unaligned(ring.as_ptr().add(RSP_PROD) as *mut u32, prod);
    }
}

fn two_queue_config() -> FrontConfig {
    FrontConfig {
        ring_page_order: 0,
        max_requests: 32,
        max_segments: 11,
        indirect: false,
        flush: FlushMode::FlushCache,
        discard: None,
        sectors: 1 << 16,
        sector_size: 512,
        physical_sector_size: 512,
        readonly: false,
        info: 0,
        persistent: false,
        queues: 2,
    }
}

/// A backend answers a request of ring 1 on ring 1 (it completes), then answers on ring 1
/// with the id of ring 0's request: an id that ring does not own fails the device, and every
/// request left completes with an error, once.
#[test]
fn a_response_on_the_wrong_ring_fails_the_device() {
    let hv = xen_sim::Hypervisor::new();
    let back = hv.create_domain("storage");
    let front = std::rc::Rc::new(hv.create_domain("guest"));
    let grants_before = front.stats().unwrap().grants;
    let mut f = FuzzFront::new(front.clone(), back.id(), two_queue_config()).unwrap();
    for tag in 0..2u64 {
        let mut b = f.alloc_buffer(4096).unwrap();
        b.as_mut_slice().fill(tag as u8);
        f.submit(
            tag,
            Request::Write {
                sector: tag * 8,
                buf: b,
            },
        )
        .unwrap();
    }
    let (r0, r1) = (f.ring_of(0).unwrap(), f.ring_of(1).unwrap());
    assert!(f.ring_of(2).is_none());
    // SAFETY: both rings are live pages of `f`, which only reads them inside `poll`.
    let (id0, id1) = unsafe { (request_id(r0, 0), request_id(r1, 0)) };
    assert_ne!(id0, id1, "ids are per ring");
    let mut done = Vec::new();
    // SAFETY: as above.
    unsafe { respond(r1, 0, id1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, 1) };
    f.poll(&mut |c| done.push((c.tag, c.result, c.buf)));
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].0, done[0].1), (1, Ok(())));
    // SAFETY: as above; the second response goes in slot 1 of ring 1.
    unsafe { respond(r1, 1, id0, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, 2) };
    f.poll(&mut |c| done.push((c.tag, c.result, c.buf)));
    assert_eq!(done.len(), 2, "ring 0's write completes, failed");
    assert_eq!((done[1].0, done[1].1), (0, Err(BlkError::Failed)));
    assert_eq!(f.in_flight(), 0);
    let submit = f.submit(9, Request::Flush);
    assert!(submit.is_err(), "a failed device takes nothing");
    for (_, _, b) in done {
        f.free_buffer(b.unwrap()).unwrap();
    }
    drop(f);
    assert_eq!(
        front.stats().unwrap().grants,
        grants_before,
        "every grant ended"
    );
}

/// A sequence log's pattern on two queues, event-driven, for a while: 8 writes then a flush,
/// again and again (blk-app's `log=N`), every batch completing within the bound.
#[test]
fn batches_of_writes_and_flushes_keep_going_on_two_queues() {
    let (mut s, back) = world(queues(2), BackOptions::default());
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().queues, 2);
    let batches: u64 = std::env::var("MQ_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for b in 0..batches {
        let mut reqs = Vec::new();
        for i in 0..8u64 {
            let mut buf = dev.alloc_buffer(4096).unwrap();
            buf.as_mut_slice()[..8].copy_from_slice(&(b * 8 + i).to_le_bytes());
            let sector = 8 * ((b * 8 + i) % 1024);
            reqs.push((Request::Write { sector, buf }, i));
        }
        for c in run_all(&mut dev, reqs) {
            assert_eq!(c.result, Ok(()), "batch {b} write {}", c.tag);
            dev.free_buffer(c.buf.unwrap()).unwrap();
        }
        let done = run_all(&mut dev, vec![(Request::Flush, 99)]);
        assert_eq!(done[0].result, Ok(()), "batch {b} flush");
    }
    let r = back.report().unwrap();
    assert!(r.per_queue.iter().all(|q| q.requests > batches), "{r:?}");
}
