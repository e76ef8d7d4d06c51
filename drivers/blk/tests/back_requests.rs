//! blkback through the simulator, our xenstored and `xen-toolstack`: a storage domain serves a
//! disk to hand-written frontends. One test per validation rule (exact status, and the backend
//! keeps serving a good request afterwards), ring set-ups, indirect requests, barriers, several
//! frontends, and a frontend destroyed mid-I/O.

mod back_common;

use std::cell::RefCell;
use std::rc::Rc;

use back_common::*;
use xen_blk::abi::*;
use xen_blk::back::BackOptions;
use xen_platform::{GrantRef, PAGE_SIZE};
use xen_toolstack::{Guest, Vbd};

/// A world with one guest whose raw frontend is connected.
fn connected(
    opts: BackOptions,
    kind: DiskKind,
    style: RingStyle,
    vbd: impl FnOnce(Vbd) -> Vbd,
) -> (World, Guest, RawFront) {
    let mut w = World::new(opts, kind);
    let g = w.guest("guest");
    w.add_disk(&g, vbd);
    let fe = g.domid();
    w.run_until("backend InitWait", |w| {
        w.backend_state(fe).as_deref() == Some("2")
    });
    let f = RawFront::start(&g, w.sd.domid(), style);
    w.run_until("backend Connected", |w| {
        w.backend_state(fe).as_deref() == Some("4")
    });
    (w, g, f)
}

fn default_world() -> (World, Guest, RawFront) {
    connected(
        BackOptions::default(),
        DiskKind::Mem,
        RingStyle::Single,
        |v| v,
    )
}

/// Push `reqs`, run until each id got a response; the responses in id order of `reqs`.
fn exchange(w: &mut World, f: &mut RawFront, reqs: &[BlkifRequest]) -> Vec<BlkifResponse> {
    f.push(reqs);
    let mut got = Vec::new();
    w.run_until("responses", |_| {
        f.collect();
        f.responses.len() >= reqs.len()
    });
    for r in reqs {
        got.push(f.response(r.id).expect("a response per id"));
    }
    got
}

fn status_of(w: &mut World, f: &mut RawFront, req: BlkifRequest) -> i16 {
    let rsp = exchange(w, f, &[req]).pop().unwrap();
    assert_eq!(rsp.id, req.id, "id echoed");
    rsp.status
}

/// A good read of sectors 8..16 into a fresh page: OKAY with the disk's bytes.
fn still_serves(w: &mut World, f: &mut RawFront) {
    let (page, gref) = f.page(0, false);
    let rsp = exchange(w, f, &[rw(BLKIF_OP_READ, 0xfeed, 8, &[(gref, 0, 7)])]);
    assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
    assert_eq!(rsp[0].operation, BLKIF_OP_READ);
    let data = f.read_page(&page);
    assert!((0..PAGE_SIZE).all(|i| data[i] == disk_byte(8 * 512 + i)));
}

#[track_caller]
fn refused(w: &mut World, f: &mut RawFront, req: BlkifRequest, want: i16) {
    assert_eq!(status_of(w, f, req), want, "{req:?}");
    still_serves(w, f);
}

#[test]
fn connect_keys_read_and_write_roundtrip() {
    let (mut w, g, mut f) = default_world();
    let be = w.be_path(g.domid());
    let key = |w: &World, k: &str| w.read(&format!("{be}/{k}"));
    assert_eq!(key(&w, "sectors").as_deref(), Some("2048"));
    assert_eq!(key(&w, "info").as_deref(), Some("0"));
    assert_eq!(key(&w, "sector-size").as_deref(), Some("512"));
    assert_eq!(key(&w, "physical-sector-size").as_deref(), Some("512"));
    assert_eq!(key(&w, "feature-flush-cache").as_deref(), Some("1"));
    assert_eq!(key(&w, "feature-barrier").as_deref(), Some("1"));
    assert_eq!(key(&w, "feature-discard").as_deref(), Some("1"));
    assert_eq!(key(&w, "max-ring-page-order").as_deref(), Some("4"));
    assert_eq!(
        key(&w, "feature-max-indirect-segments").as_deref(),
        Some("256")
    );
    assert_eq!(w.specs.borrow()[0].params, "disk0");
    assert!(!w.specs.borrow()[0].read_only);
    // Write two segments (sectors 2..4 of page a, 0..1 of page b) at sector 100, read back.
    let (a, ga) = f.page(0x11, true);
    let (b, gb) = f.page(0x22, true);
    f.write_page(&a, 1024, &[0x33; 512]);
    let rsp = exchange(
        &mut w,
        &mut f,
        &[rw(BLKIF_OP_WRITE, 1, 100, &[(ga, 2, 3), (gb, 0, 0)])],
    );
    assert_eq!(
        (rsp[0].status, rsp[0].operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_WRITE)
    );
    let _ = (a, b);
    let (r, gr) = f.page(0, false);
    let rsp = exchange(&mut w, &mut f, &[rw(BLKIF_OP_READ, 2, 100, &[(gr, 1, 3)])]);
    assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
    let d = f.read_page(&r);
    assert!(d[..512].iter().all(|&x| x == 0), "sector 0 untouched");
    assert!(d[512..1024].iter().all(|&x| x == 0x33));
    assert!(d[1024..1536].iter().all(|&x| x == 0x11));
    assert!(d[1536..2048].iter().all(|&x| x == 0x22));
    assert!(d[2048..].iter().all(|&x| x == 0));
    // Flush and discard.
    let flush = BlkifRequest {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        id: 3,
        ..Default::default()
    };
    assert_eq!(status_of(&mut w, &mut f, flush), BLKIF_RSP_OKAY);
    let discard = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 4,
        sector_number: 101,
        nr_sectors: 1,
        ..Default::default()
    };
    assert_eq!(
        status_of(&mut w, &mut f, as_request(&discard)),
        BLKIF_RSP_OKAY
    );
    let (r, gr) = f.page(0xff, false);
    assert_eq!(
        status_of(&mut w, &mut f, rw(BLKIF_OP_READ, 5, 100, &[(gr, 0, 2)])),
        BLKIF_RSP_OKAY
    );
    let d = f.read_page(&r);
    assert!(d[..512].iter().all(|&x| x == 0x33));
    assert!(d[512..1024].iter().all(|&x| x == 0), "discarded");
    assert!(d[1024..1536].iter().all(|&x| x == 0x22));
}

#[test]
fn unknown_op_is_eopnotsupp() {
    let (mut w, _g, mut f) = default_world();
    for op in [BLKIF_OP_RESERVED_1, 7, 200] {
        let (_p, gr) = f.page(0, false);
        refused(
            &mut w,
            &mut f,
            rw(op, 9, 0, &[(gr, 0, 7)]),
            BLKIF_RSP_EOPNOTSUPP,
        );
    }
}

#[test]
fn zero_segments_is_error() {
    let (mut w, _g, mut f) = default_world();
    for op in [BLKIF_OP_READ, BLKIF_OP_WRITE] {
        refused(&mut w, &mut f, rw(op, 9, 0, &[]), BLKIF_RSP_ERROR);
    }
    // A flush and a barrier without segments are valid.
    for op in [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER] {
        refused(&mut w, &mut f, rw(op, 9, 0, &[]), BLKIF_RSP_OKAY);
    }
}

#[test]
fn too_many_segments_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    let mut req = rw(BLKIF_OP_READ, 9, 0, &[(gr, 0, 0); 11]);
    req.nr_segments = 12;
    refused(&mut w, &mut f, req, BLKIF_RSP_ERROR);
    req.nr_segments = 255;
    refused(&mut w, &mut f, req, BLKIF_RSP_ERROR);
}

#[test]
fn first_sect_after_last_sect_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, 0, &[(gr, 3, 2)]),
        BLKIF_RSP_ERROR,
    );
}

#[test]
fn last_sect_beyond_the_page_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, 0, &[(gr, 0, 8)]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, 0, &[(gr, 7, 255)]),
        BLKIF_RSP_ERROR,
    );
}

#[test]
fn sectors_beyond_the_disk_are_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, DISK_SECTORS - 7, &[(gr, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, u64::MAX - 3, &[(gr, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
    let discard = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 9,
        sector_number: 10,
        nr_sectors: u64::MAX - 5,
        ..Default::default()
    };
    refused(&mut w, &mut f, as_request(&discard), BLKIF_RSP_ERROR);
    // The last sector exactly is fine.
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, DISK_SECTORS - 1, &[(gr, 0, 0)]),
        BLKIF_RSP_OKAY,
    );
}

#[test]
fn gref_not_granted_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    let bogus: GrantRef = 4000;
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, 0, &[(gr, 0, 7), (bogus, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, 0, &[(bogus, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
}

#[test]
fn read_into_a_read_only_grant_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (p, gr) = f.page(0x77, true);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, 0, &[(gr, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
    assert!(f.read_page(&p).iter().all(|&x| x == 0x77), "not written");
    // The same grant is fine for a write.
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, 0, &[(gr, 0, 7)]),
        BLKIF_RSP_OKAY,
    );
}

#[test]
fn writes_to_a_read_only_disk_are_refused() {
    let (mut w, g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Mem,
        RingStyle::Single,
        |v| v.read_only(),
    );
    let be = w.be_path(g.domid());
    assert_eq!(
        w.read(&format!("{be}/info")).as_deref(),
        Some("4"),
        "VDISK_READONLY"
    );
    assert_eq!(
        w.read(&format!("{be}/feature-flush-cache")).as_deref(),
        Some("0")
    );
    assert_eq!(
        w.read(&format!("{be}/feature-discard")).as_deref(),
        Some("0")
    );
    assert!(w.specs.borrow()[0].read_only);
    let (_p, gr) = f.page(1, true);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, 0, &[(gr, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
    // Flush and barrier (with data or not) and discard are not offered on a read-only disk.
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_FLUSH_DISKCACHE, 9, 0, &[(gr, 0, 7)]),
        BLKIF_RSP_EOPNOTSUPP,
    );
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE_BARRIER, 9, 0, &[]),
        BLKIF_RSP_EOPNOTSUPP,
    );
    let discard = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 9,
        sector_number: 0,
        nr_sectors: 1,
        ..Default::default()
    };
    refused(&mut w, &mut f, as_request(&discard), BLKIF_RSP_EOPNOTSUPP);
    let (r, gr) = f.page(0, false);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_READ, 9, 0, &[(gr, 0, 0)]),
        BLKIF_RSP_OKAY,
    );
    assert_eq!(f.read_page(&r)[0], disk_byte(0), "nothing was written");
}

#[test]
fn a_storage_that_is_read_only_makes_the_disk_read_only() {
    let (mut w, g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Mem,
        RingStyle::Single,
        |mut v| {
            v.target = "x:ro-storage".into();
            v
        },
    );
    assert_eq!(
        w.read(&format!("{}/info", w.be_path(g.domid()))).as_deref(),
        Some("4")
    );
    let (_p, gr) = f.page(1, true);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE, 9, 0, &[(gr, 0, 7)]),
        BLKIF_RSP_ERROR,
    );
}

#[test]
fn discard_when_not_offered_is_eopnotsupp() {
    let opts = BackOptions {
        discard: false,
        ..BackOptions::default()
    };
    let (mut w, g, mut f) = connected(opts, DiskKind::Mem, RingStyle::Single, |v| v);
    assert_eq!(
        w.read(&format!("{}/feature-discard", w.be_path(g.domid())))
            .as_deref(),
        Some("0")
    );
    let discard = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 9,
        sector_number: 0,
        nr_sectors: 1,
        ..Default::default()
    };
    refused(&mut w, &mut f, as_request(&discard), BLKIF_RSP_EOPNOTSUPP);
}

#[test]
fn flush_and_barrier_when_not_offered_are_eopnotsupp() {
    let opts = BackOptions {
        flush: false,
        barrier: false,
        ..BackOptions::default()
    };
    let (mut w, _g, mut f) = connected(opts, DiskKind::Mem, RingStyle::Single, |v| v);
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_FLUSH_DISKCACHE, 9, 0, &[]),
        BLKIF_RSP_EOPNOTSUPP,
    );
    refused(
        &mut w,
        &mut f,
        rw(BLKIF_OP_WRITE_BARRIER, 9, 0, &[]),
        BLKIF_RSP_EOPNOTSUPP,
    );
}

#[test]
fn indirect_write_then_read_of_100_segments() {
    let (mut w, _g, mut f) = default_world();
    let n = 100usize;
    let mut data = Vec::new();
    let mut segs = Vec::new();
    for i in 0..n {
        let (p, gr) = f.page(i as u8, true);
        segs.push((gr, 0u8, 7u8));
        data.push(p);
    }
    // 100 segments fit in one indirect page.
    let (ip, igr) = f.page(0, true);
    f.write_page(&ip, 0, &seg_bytes(&segs));
    let rsp = exchange(
        &mut w,
        &mut f,
        &[indirect_req(BLKIF_OP_WRITE, 1, 800, n as u16, &[igr])],
    );
    assert_eq!(
        (rsp[0].status, rsp[0].operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_WRITE)
    );
    // Read back the pages 10..30 of it into fresh pages, with a two-page indirect list
    // (segments of one sector each: 160 of them).
    let mut rsegs = Vec::new();
    let mut rpages = Vec::new();
    for _ in 0..20 {
        let (p, gr) = f.page(0, false);
        for s in 0..8u8 {
            rsegs.push((gr, s, s));
        }
        rpages.push(p);
    }
    let bytes = seg_bytes(&rsegs);
    let (ip1, igr1) = f.page(0, true);
    let (ip2, igr2) = f.page(0, true);
    f.write_page(&ip1, 0, &bytes[..PAGE_SIZE.min(bytes.len())]);
    // 160 segments take 1280 bytes: one indirect page (a second one given is not read).
    let rsp = exchange(
        &mut w,
        &mut f,
        &[indirect_req(BLKIF_OP_READ, 3, 880, 160, &[igr1, igr2])],
    );
    assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
    let _keep = (ip, ip1, ip2);
    for (k, p) in rpages.iter().enumerate() {
        let d = f.read_page(p);
        assert!(d.iter().all(|&x| x == (10 + k) as u8), "page {k}");
    }
}

#[test]
fn indirect_garbage_is_error() {
    let (mut w, _g, mut f) = default_world();
    let (_p, gr) = f.page(0, false);
    let (ip, igr) = f.page(0, true);
    // More segments than negotiated (256), and more than 8 pages can hold.
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7); 300]));
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 300, &[igr]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, u16::MAX, &[igr]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 0, &[igr]),
        BLKIF_RSP_ERROR,
    );
    // Bad segment entries inside the page.
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7), (gr, 5, 9)]));
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 2, &[igr]),
        BLKIF_RSP_ERROR,
    );
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7), (3999, 0, 7)]));
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 2, &[igr]),
        BLKIF_RSP_ERROR,
    );
    // An indirect page not granted; an inner op that is neither read nor write.
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 1, &[3998]),
        BLKIF_RSP_ERROR,
    );
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7)]));
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_DISCARD, 9, 0, 1, &[igr]),
        BLKIF_RSP_ERROR,
    );
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 1, &[igr]),
        BLKIF_RSP_OKAY,
    );
}

#[test]
fn indirect_when_not_offered_is_eopnotsupp() {
    let opts = BackOptions {
        max_indirect_segments: 0,
        ..BackOptions::default()
    };
    let (mut w, g, mut f) = connected(opts, DiskKind::Mem, RingStyle::Single, |v| v);
    assert_eq!(
        w.read(&format!(
            "{}/feature-max-indirect-segments",
            w.be_path(g.domid())
        )),
        None
    );
    let (_p, gr) = f.page(0, false);
    let (ip, igr) = f.page(0, true);
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7)]));
    refused(
        &mut w,
        &mut f,
        indirect_req(BLKIF_OP_READ, 9, 0, 1, &[igr]),
        BLKIF_RSP_EOPNOTSUPP,
    );
}

#[test]
fn frontend_that_skips_init_wait() {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let g = w.guest("guest");
    w.add_disk(&g, |v| v);
    // Ring keys and Initialised before the backend even probed.
    let mut f = RawFront::start(&g, w.sd.domid(), RingStyle::Single);
    let fe = g.domid();
    w.run_until("backend Connected", |w| {
        w.backend_state(fe).as_deref() == Some("4")
    });
    still_serves(&mut w, &mut f);
}

#[test]
fn legacy_num_ring_pages_frontend() {
    let (mut w, _g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Mem,
        RingStyle::Legacy(1),
        |v| v,
    );
    assert_eq!(f.ring.size(), blkif_ring_size(2));
    still_serves(&mut w, &mut f);
}

#[test]
fn multi_page_ring_with_many_requests_in_flight() {
    let ctl = Rc::new(RefCell::new(GateCtl {
        closed: true,
        reverse: true,
        ..Default::default()
    }));
    let (mut w, _g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Gate(ctl.clone()),
        RingStyle::Order(2),
        |v| v,
    );
    assert_eq!(f.ring.size(), 128);
    let n = 100u64;
    let mut pages = Vec::new();
    let mut reqs = Vec::new();
    for i in 0..n {
        let (p, gr) = f.page(0, false);
        reqs.push(rw(BLKIF_OP_READ, 1000 + i, i * 8, &[(gr, 0, 7)]));
        pages.push(p);
    }
    f.push(&reqs);
    w.run_until("all submitted", |_| ctl.borrow().log.len() == n as usize);
    assert_eq!(
        ctl.borrow().max_held,
        n as usize,
        "every request in flight at once"
    );
    assert_eq!(f.collect(), 0, "none answered before the storage completes");
    ctl.borrow_mut().closed = false;
    w.run_until("all answered", |_| {
        f.collect();
        f.responses.len() == n as usize
    });
    // Completed newest first: answered in that order, each id echoed.
    let ids: Vec<u64> = f.responses.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1000..1000 + n).rev().collect::<Vec<_>>());
    assert!(f.responses.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(f.read_page(p)[0], disk_byte(i * 8 * 512));
    }
}

#[test]
fn barrier_waits_for_earlier_writes_and_holds_later_ones() {
    let ctl = Rc::new(RefCell::new(GateCtl {
        closed: true,
        ..Default::default()
    }));
    let (mut w, _g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Gate(ctl.clone()),
        RingStyle::Single,
        |v| v,
    );
    let (_a, ga) = f.page(1, true);
    let (_b, gb) = f.page(2, true);
    let (_c, gc) = f.page(3, true);
    f.push(&[
        rw(BLKIF_OP_WRITE, 1, 0, &[(ga, 0, 7)]),
        rw(BLKIF_OP_WRITE_BARRIER, 2, 8, &[(gb, 0, 7)]),
        rw(BLKIF_OP_WRITE, 3, 16, &[(gc, 0, 7)]),
    ]);
    w.run_until("first write submitted", |_| !ctl.borrow().log.is_empty());
    for _ in 0..50 {
        w.poll();
    }
    let kinds = |ctl: &GateCtl| ctl.log.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>();
    assert_eq!(
        kinds(&ctl.borrow()),
        [("write", 0)],
        "the barrier waits for the drain"
    );
    ctl.borrow_mut().closed = false;
    w.run_until("all answered", |_| {
        f.collect();
        f.responses.len() == 3
    });
    assert_eq!(
        kinds(&ctl.borrow()),
        [("write", 0), ("write", 8), ("flush", 0), ("write", 16)],
        "barrier = drain, write, flush; later writes after it"
    );
    let ids: Vec<(u64, u8, i16)> = f
        .responses
        .iter()
        .map(|r| (r.id, r.operation, r.status))
        .collect();
    assert_eq!(
        ids,
        [
            (1, BLKIF_OP_WRITE, 0),
            (2, BLKIF_OP_WRITE_BARRIER, 0),
            (3, BLKIF_OP_WRITE, 0)
        ]
    );
}

#[test]
fn several_frontends_at_once() {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let guests: Vec<Guest> = (0..3).map(|i| w.guest(&format!("guest{i}"))).collect();
    for g in &guests {
        w.add_disk(g, |v| v);
    }
    let mut fronts: Vec<RawFront> = guests
        .iter()
        .map(|g| RawFront::start(g, w.sd.domid(), RingStyle::Order(1)))
        .collect();
    for g in &guests {
        let fe = g.domid();
        w.run_until("Connected", |w| w.backend_state(fe).as_deref() == Some("4"));
    }
    // Each writes its own pattern at sector 0 of its own disk, then reads it back.
    let mut pages = Vec::new();
    for (i, f) in fronts.iter_mut().enumerate() {
        let (p, gr) = f.page(0xa0 + i as u8, true);
        f.push(&[rw(BLKIF_OP_WRITE, 1, 0, &[(gr, 0, 7)])]);
        pages.push(p);
    }
    w.run_until("all written", |_| {
        fronts.iter_mut().all(|f| {
            f.collect();
            !f.responses.is_empty()
        })
    });
    for (i, f) in fronts.iter_mut().enumerate() {
        assert_eq!(f.response(1).unwrap().status, BLKIF_RSP_OKAY);
        let (r, gr) = f.page(0, false);
        let rsp = exchange(&mut w, f, &[rw(BLKIF_OP_READ, 2, 0, &[(gr, 0, 7)])]);
        assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
        assert!(
            f.read_page(&r).iter().all(|&x| x == 0xa0 + i as u8),
            "disk {i}"
        );
    }
    assert_eq!(w.specs.borrow().len(), 3, "one storage per device");
}

/// `xl destroy` of a frontend domain with requests in flight: its device goes Closed, every
/// mapping, event channel and page the storage domain held for it is released once the storage
/// finishes (nothing is answered to the dead ring), and another guest of the same backend keeps
/// its disk, before and after.
#[test]
fn frontend_destroyed_mid_io() {
    let ctl = Rc::new(RefCell::new(GateCtl::default()));
    let mut w = World::new(BackOptions::default(), DiskKind::Gate(ctl.clone()));
    let other = w.guest("other");
    w.add_disk(&other, |v| v);
    let ofe = other.domid();
    let mut of = RawFront::start(&other, w.sd.domid(), RingStyle::Order(1));
    w.run_until("other Connected", |w| {
        w.backend_state(ofe).as_deref() == Some("4")
    });
    let (_p, og) = of.page(0x77, true);
    assert_eq!(
        exchange(&mut w, &mut of, &[rw(BLKIF_OP_WRITE, 1, 8, &[(og, 0, 7)])])[0].status,
        BLKIF_RSP_OKAY
    );
    let sd = w.sd.domain().clone();
    let base = sd.stats().unwrap();

    let g = w.guest("victim");
    w.add_disk(&g, |v| v);
    let fe = g.domid();
    let mut f = RawFront::start(&g, w.sd.domid(), RingStyle::Order(2));
    w.run_until("victim Connected", |w| {
        w.backend_state(fe).as_deref() == Some("4")
    });
    // Requests in flight, held by the storage: reads and writes, several segments each.
    ctl.borrow_mut().closed = true;
    let pages: Vec<_> = (0..4).map(|i| f.page(i, false)).collect();
    let reqs: Vec<_> = (0..4u64)
        .map(|i| {
            let op = if i % 2 == 0 {
                BLKIF_OP_READ
            } else {
                BLKIF_OP_WRITE
            };
            let segs: Vec<_> = pages.iter().map(|(_, gr)| (*gr, 0u8, 7u8)).collect();
            rw(op, 10 + i, 64 * i, &segs)
        })
        .collect();
    f.push(&reqs);
    let n0 = ctl.borrow().log.len();
    w.run_until("submitted", |_| ctl.borrow().log.len() >= n0 + 4);
    let during = sd.stats().unwrap();
    assert!(during.mappings > base.mappings && during.ports > base.ports);

    w.ts.destroy(fe).unwrap();
    w.run_until("device Closed", |w| w.closed(fe));
    // The storage finishes later: nothing is answered to a dead ring, nothing crashes.
    ctl.borrow_mut().closed = false;
    for _ in 0..20 {
        w.poll();
    }
    assert!(w.back.device(&w.be_node(fe)).is_none_or(|d| !d.connected));
    let after = sd.stats().unwrap();
    assert_eq!(
        after.mappings, base.mappings,
        "every mapping of the victim released"
    );
    assert_eq!(after.ports, base.ports, "its event channel closed");
    assert_eq!(after.grants, base.grants, "no grant left behind");
    assert_eq!(after.pages, base.pages, "no page left behind");

    // The other guest never noticed.
    assert_eq!(w.backend_state(ofe).as_deref(), Some("4"));
    let (r, rg) = of.page(0, false);
    assert_eq!(
        exchange(&mut w, &mut of, &[rw(BLKIF_OP_READ, 2, 8, &[(rg, 0, 7)])])[0].status,
        BLKIF_RSP_OKAY
    );
    assert!(of.read_page(&r).iter().all(|&x| x == 0x77));
}

#[test]
fn overflowing_frontend_is_reported_broken() {
    let (mut w, g, f) = default_world();
    // Claim more requests than the ring holds: write req_prod by hand.
    let p = f.ring_pages().addr.as_ptr().cast::<u32>();
    // SAFETY: our own ring page; req_prod is the first word of the shared header.
    unsafe { p.write_volatile(1000) };
    use xen_platform::Events;
    f.dom.notify(f.port).unwrap();
    let node = w.be_node(g.domid());
    let mut broken = false;
    w.run_until("reported broken", |w| {
        w.poll();
        broken |= w.back.poll().broken.contains(&node);
        broken
    });
}

#[test]
fn frontend_closes_and_reconnects_to_the_same_disk() {
    let (mut w, g, mut f) = default_world();
    let fe = g.domid();
    let (_a, ga) = f.page(0x42, true);
    assert_eq!(
        status_of(&mut w, &mut f, rw(BLKIF_OP_WRITE, 1, 64, &[(ga, 0, 7)])),
        BLKIF_RSP_OKAY
    );
    // Closing → the backend follows; Closed → the backend closes (online=1: reconnectable).
    f.set_state(5);
    w.run_until("backend Closing", |w| {
        w.backend_state(fe).as_deref() == Some("5")
    });
    f.set_state(6);
    w.run_until("backend Closed", |w| {
        w.backend_state(fe).as_deref() == Some("6")
    });
    assert!(
        !w.back.device(&w.be_node(fe)).unwrap().connected,
        "ring unmapped"
    );
    // Back to Initialising: the backend probes again with the same storage.
    f.set_state(1);
    w.run_until("backend InitWait again", |w| {
        w.backend_state(fe).as_deref() == Some("2")
    });
    let RawFront { xs, .. } = f;
    let mut f = RawFront::start_with(&g, xs, w.sd.domid(), RingStyle::Order(1));
    w.run_until("Connected again", |w| {
        w.backend_state(fe).as_deref() == Some("4")
    });
    let (r, gr) = f.page(0, false);
    assert_eq!(
        status_of(&mut w, &mut f, rw(BLKIF_OP_READ, 2, 64, &[(gr, 0, 7)])),
        BLKIF_RSP_OKAY
    );
    assert!(f.read_page(&r).iter().all(|&x| x == 0x42), "the same disk");
    assert_eq!(w.specs.borrow().len(), 1, "the storage was made once");
    // The ended connection's response counts with the live one's.
    assert_eq!(w.back.responses(), 2);
}

#[test]
fn event_mode_notifications_both_ways() {
    use std::time::Duration;
    use xen_platform::Events;
    let (w, _g, mut f) = default_world();
    // Idle: the backend asked for a notification (req_event) and reports its port.
    let ports = w.back.poll().ports;
    assert_eq!(ports.len(), 1);
    let sd = w.sd.domain().clone();
    sd.clear(ports[0]);
    // The frontend's push must notify (the backend is waiting), and the wait must see it.
    let (_p, gr) = f.page(0, false);
    f.ring
        .push_request(rw(BLKIF_OP_READ, 7, 0, &[(gr, 0, 7)]))
        .unwrap();
    assert!(
        f.ring.push_requests_and_check_notify(),
        "backend asked for an event"
    );
    f.dom.notify(f.port).unwrap();
    assert_eq!(sd.wait(&ports, Some(Duration::from_secs(5))), Ok(ports[0]));
    let out = w.back.poll();
    assert!(
        !out.busy,
        "a storage that completes at once leaves nothing to poll for"
    );
    // The response came with an event on the frontend's port (rsp_event was armed).
    assert!(f.dom.is_pending(f.port));
    assert_eq!(f.response(7).unwrap().status, BLKIF_RSP_OKAY);
}

#[test]
fn no_mapping_is_held_while_the_storage_works() {
    use xen_platform::Grants;
    let ctl = Rc::new(RefCell::new(GateCtl {
        closed: true,
        ..Default::default()
    }));
    let (mut w, _g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Gate(ctl.clone()),
        RingStyle::Single,
        |v| v,
    );
    let (_p, gr) = f.page(0, false);
    f.push(&[rw(BLKIF_OP_READ, 1, 0, &[(gr, 0, 7)])]);
    w.run_until("submitted", |_| !ctl.borrow().log.is_empty());
    // The read's page is not mapped by the backend while the storage holds the read: the
    // frontend can even end its grant (then the read cannot be delivered: ERROR).
    f.dom.end(gr).unwrap();
    ctl.borrow_mut().closed = false;
    w.run_until("answered", |_| {
        f.collect();
        !f.responses.is_empty()
    });
    assert_eq!(f.response(1).unwrap().status, BLKIF_RSP_ERROR);
    still_serves(&mut w, &mut f);
}

#[test]
fn buffered_bytes_are_bounded_requests_wait_on_the_ring() {
    let ctl = Rc::new(RefCell::new(GateCtl {
        closed: true,
        ..Default::default()
    }));
    let (mut w, _g, mut f) = connected(
        BackOptions::default(),
        DiskKind::Gate(ctl.clone()),
        RingStyle::Order(1),
        |v| v,
    );
    // 12 indirect reads of 256 pages (1 MiB) each: only 8 MiB are taken at once (in parts of
    // PART_BYTES, each its own storage op).
    let per_request = (1 << 20) / xen_blk::back::channel::PART_BYTES;
    let (page, gr) = f.page(0, false);
    let (ip, igr) = f.page(0, true);
    f.write_page(&ip, 0, &seg_bytes(&[(gr, 0, 7); 256]));
    let reqs: Vec<BlkifRequest> = (0..12)
        .map(|i| indirect_req(BLKIF_OP_READ, i, 0, 256, &[igr]))
        .collect();
    f.push(&reqs);
    w.run_until("8 MiB submitted", |_| {
        ctl.borrow().log.len() == 8 * per_request
    });
    for _ in 0..50 {
        w.poll();
    }
    assert_eq!(
        ctl.borrow().log.len(),
        8 * per_request,
        "the rest waits on the ring"
    );
    ctl.borrow_mut().closed = false;
    w.run_until("all answered", |_| {
        f.collect();
        f.responses.len() == 12
    });
    assert!(f.responses.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert_eq!(f.read_page(&page)[0], disk_byte(255 * 4096));
}

/// Multi-queue (blkif.h "Multiple hardware queues/rings"): blkback offers
/// `multi-queue-max-queues`; a frontend with three queues writes `multi-queue-num-queues` and
/// each queue's ring and port under `queue-<N>/`. Requests on any queue reach the one disk
/// and are answered on their own ring: a write on queue 2 is read back on queue 1 and on
/// queue 0, with interleaved ids that the rings keep apart.
#[test]
fn three_queues_share_one_disk_and_answer_on_their_own_rings() {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let g = w.guest("guest");
    w.add_disk(&g, |v| v);
    let fe = g.domid();
    w.run_until("backend InitWait", |w| {
        w.backend_state(fe).as_deref() == Some("2")
    });
    let be = w.be_path(fe);
    assert_eq!(
        w.read(&format!("{be}/multi-queue-max-queues")).as_deref(),
        Some("4")
    );
    let mut f = RawFront::start(&g, w.sd.domid(), RingStyle::Queues(3));
    w.run_until("backend Connected", |w| {
        w.backend_state(fe).as_deref() == Some("4")
    });
    assert_eq!(w.back.device(&w.be_node(fe)).unwrap().queues, 3);
    let (_p, gw) = f.page(0xc3, true);
    f.push_q(2, &[rw(BLKIF_OP_WRITE, 7, 40, &[(gw, 0, 7)])]);
    w.run_until("write answered on queue 2", |_| {
        f.response_q(2, 7).is_some()
    });
    let (r1, g1) = f.page(0, false);
    let (r0, g0) = f.page(0, false);
    // The same id on two rings: each ring's response goes to its own ring.
    f.push_q(1, &[rw(BLKIF_OP_READ, 7, 40, &[(g1, 0, 7)])]);
    f.push(&[rw(BLKIF_OP_READ, 7, 40, &[(g0, 0, 7)])]);
    let (mut a, mut b) = (None, None);
    w.run_until("both reads answered", |_| {
        a = a.or_else(|| f.response_q(1, 7));
        b = b.or_else(|| f.response(7));
        a.is_some() && b.is_some()
    });
    assert_eq!(a.unwrap().status, BLKIF_RSP_OKAY);
    assert_eq!(b.unwrap().status, BLKIF_RSP_OKAY);
    assert!(f.read_page(&r1).iter().all(|&x| x == 0xc3));
    assert!(f.read_page(&r0).iter().all(|&x| x == 0xc3));
    let stats = w.back.device(&w.be_node(fe)).unwrap().stats;
    assert_eq!((stats.requests, stats.responses), (3, 3));
}

/// A frontend asking for more queues than offered is refused with an error published
/// (blkif.h: "no more than the value reported by the backend in multi-queue-max-queues").
#[test]
fn more_queues_than_offered_are_refused() {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let g = w.guest("guest");
    w.add_disk(&g, |v| v);
    let fe = g.domid();
    w.run_until("backend InitWait", |w| {
        w.backend_state(fe).as_deref() == Some("2")
    });
    let _f = RawFront::start(&g, w.sd.domid(), RingStyle::Queues(5));
    w.run_until("backend closed", |w| w.closed(fe));
    let e = w
        .read(&format!(
            "/local/domain/{}/error/backend/vbd/{fe}/51712/error",
            w.sd.domid()
        ))
        .unwrap_or_default();
    assert!(e.contains("multi-queue-num-queues 5"), "{e}");
}
