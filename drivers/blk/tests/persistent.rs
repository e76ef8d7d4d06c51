//! Persistent grants (`feature-persistent`, blkif.h notes 7-9) and in-place storage I/O through
//! the real code path: our blkfront in a guest, our blkback (`BlkBack`, a `MemDisk`) in a
//! storage domain, each on its own XenBus, the vbd added and removed by the toolstack. Then a
//! hand-written frontend (`back_common::RawFront`) that writes `feature-persistent = 1` and
//! sends hostile requests: persistent mappings must not weaken blkback's validation.

mod back_common;
mod front_common;

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use front_common::{exercise, pattern, run_all, world, Back, Setup, LIMIT, XVDA};
use xen_blk::abi::*;
use xen_blk::back::channel::ChannelStats;
use xen_blk::back::BackOptions;
use xen_blk::front::{
    BlockDevice, Buffer, DeviceState, Request, WaitMode, DEFAULT_LIMITS, PERSISTENT_PAGES_MAX,
};
use xen_blk::negotiate::FrontLimits;
use xen_platform::{GrantRef, Grants, Pages, PAGE_SIZE};

fn be_key(s: &Setup, k: &str) -> Option<String> {
    s.read(&format!("{}/{k}", s.backend_path))
}

fn no_persistent_front() -> FrontLimits {
    FrontLimits {
        persistent: false,
        ..DEFAULT_LIMITS
    }
}

// ---------------------------------------------------------------------------------------
// I/O helpers.

fn grant_calls(s: &Setup) -> usize {
    s.plat.grants.load(Ordering::SeqCst)
}

/// Grant entries the guest holds now.
fn guest_grants(s: &Setup) -> usize {
    s.guest.domain().stats().unwrap().grants
}

/// Mappings the storage domain holds now.
fn storage_mappings(s: &Setup) -> usize {
    s.storage
        .as_ref()
        .unwrap()
        .domain()
        .stats()
        .unwrap()
        .mappings
}

// ---------------------------------------------------------------------------------------
// Our blkfront with our blkback.

#[test]
fn both_ends_default_use_persistent_grants_and_in_place_io() {
    let (mut s, back) = world(DEFAULT_LIMITS, BackOptions::default());
    let base_grants = guest_grants(&s);
    let base_maps = storage_mappings(&s);
    let mut dev = s.connect();
    assert_eq!(s.fe_key("feature-persistent").as_deref(), Some("1"));
    assert_eq!(be_key(&s, "feature-persistent").as_deref(), Some("1"));
    let cfg = dev.config().unwrap();
    assert!(cfg.persistent);
    assert_eq!(cfg.ring_page_order, 4);
    exercise(&mut dev, 1);
    let st = back.stats();
    assert!(st.requests > 0);
    assert_eq!(st.refused, 0);
    // Every data request (or each part of a large one) went straight between the guest's
    // pages and the disk.
    assert!(st.split > 0, "1 MiB requests are split: {st:?}");
    assert_eq!(st.in_place, st.requests - st.split + st.parts, "{st:?}");
    assert_eq!(st.submitted, 0, "nothing queued on the storage: {st:?}");
    assert_eq!(st.responses, st.requests);
    // Every grant the guest holds beyond its ring (16 pages) is a persistent one, and every
    // one of them was used by a request: blkback maps each once and keeps it.
    let held = guest_grants(&s) - base_grants;
    assert!(held > 16, "persistent grants kept: {held}");
    assert_eq!(st.persistent_maps, held - 16, "{st:?}");
    assert_eq!(
        storage_mappings(&s) - base_maps,
        st.persistent_maps + 16,
        "the ring and the persistent grants are all the storage domain maps"
    );
    // The same I/O again grants nothing new and maps nothing new.
    let calls = grant_calls(&s);
    exercise(&mut dev, 2);
    assert_eq!(grant_calls(&s), calls, "grants reused, none made");
    let st2 = back.stats();
    assert_eq!(st2.persistent_maps, st.persistent_maps);
    assert_eq!(st2.in_place, st2.requests - st2.split + st2.parts);
    assert!(st2.requests > st.requests);
}

#[test]
fn frontend_without_persistent_grants_is_served_per_request() {
    let (mut s, back) = world(no_persistent_front(), BackOptions::default());
    let base_grants = guest_grants(&s);
    let mut dev = s.connect();
    assert_eq!(s.fe_key("feature-persistent").as_deref(), Some("0"));
    assert_eq!(be_key(&s, "feature-persistent").as_deref(), Some("1"));
    assert!(!dev.config().unwrap().persistent);
    let calls = grant_calls(&s);
    exercise(&mut dev, 3);
    assert!(grant_calls(&s) > calls, "granted per request");
    let st = back.stats();
    assert!(st.requests > 0);
    assert_eq!(st.in_place, 0, "{st:?}");
    assert_eq!(st.persistent_maps, 0, "{st:?}");
    assert_eq!(st.submitted, st.requests - st.split + st.parts, "{st:?}");
    // Only the ring stays granted; a freed buffer goes back to the platform.
    assert_eq!(guest_grants(&s) - base_grants, 16);
    let pages = s.guest.domain().stats().unwrap().pages;
    let b = dev.alloc_buffer(3 * PAGE_SIZE).unwrap();
    assert_eq!(s.guest.domain().stats().unwrap().pages, pages + 3);
    dev.free_buffer(b).unwrap();
    assert_eq!(s.guest.domain().stats().unwrap().pages, pages);
}

#[test]
fn backend_without_persistent_grants_is_used_per_request() {
    let opts = BackOptions {
        persistent: false,
        ..Default::default()
    };
    let (mut s, back) = world(DEFAULT_LIMITS, opts);
    let base_grants = guest_grants(&s);
    let mut dev = s.connect();
    assert_eq!(s.fe_key("feature-persistent").as_deref(), Some("1"));
    assert_eq!(be_key(&s, "feature-persistent").as_deref(), Some("0"));
    assert!(!dev.config().unwrap().persistent);
    exercise(&mut dev, 4);
    let st = back.stats();
    assert!(st.requests > 0);
    assert_eq!(st.in_place, 0, "{st:?}");
    assert_eq!(st.persistent_maps, 0, "{st:?}");
    assert_eq!(
        guest_grants(&s) - base_grants,
        16,
        "only the ring stays granted"
    );
}

#[test]
fn backend_cap_on_persistent_maps_falls_back_per_request() {
    let opts = BackOptions {
        max_persistent_grants: Some(4),
        ..Default::default()
    };
    let (mut s, back) = world(DEFAULT_LIMITS, opts);
    let mut dev = s.connect();
    dev.set_mode(WaitMode::Polled);
    assert!(dev.config().unwrap().persistent);
    exercise(&mut dev, 5);
    let st = back.stats();
    assert_eq!(
        st.persistent_maps, 4,
        "the cap is reached, not passed: {st:?}"
    );
    assert!(st.in_place > 0, "requests within the 4 kept grants: {st:?}");
    assert!(
        st.in_place < st.requests,
        "the others fell back to the per-request path: {st:?}"
    );
    assert_eq!(st.refused, 0);
    // The grants blkback could not keep are still the frontend's persistent ones: the storage
    // domain holds only the ring and the 4 kept mappings once the requests are answered.
    let sd = s.storage.as_ref().unwrap().domain().clone();
    let end = Instant::now() + LIMIT;
    while sd.stats().unwrap().mappings != 16 + 4 {
        assert!(Instant::now() < end, "{:?}", sd.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `xl block-detach` after I/O with persistent grants (buffers in the spare pool, the bounce
/// buffer, indirect pages, a buffer the application still holds): the guest ends up holding
/// exactly what it held before the device (pages, grants, mappings, ports) and the storage
/// domain maps nothing of it. `front_first`: blkback is paused until blkfront has
/// disconnected, so every persistent grant is still mapped when blkfront ends it (it must
/// free the pages once blkback lets go, as it does for its ring); otherwise blkback unmaps
/// everything before blkfront sees the detach.
fn detach_releases_everything(front_first: bool) {
    let (mut s, back) = world(DEFAULT_LIMITS, BackOptions::default());
    let base = s.guest.domain().stats().unwrap();
    let sd = s.storage.as_ref().unwrap().domain().clone();
    let sd_base = sd.stats().unwrap();
    let mut dev = s.connect();
    exercise(&mut dev, 6);
    // A buffer the application still holds at detach (its grants are persistent).
    let mut held = dev.alloc_buffer(5 * PAGE_SIZE).unwrap();
    held.as_mut_slice().fill(0x5e);
    let c = run_all(
        &mut dev,
        vec![(
            Request::Write {
                sector: 20000,
                buf: held,
            },
            1,
        )],
    );
    let held = c.into_iter().next().unwrap().buf.unwrap();
    let st = back.stats();
    assert!(st.persistent_maps > 0);
    let now = s.guest.domain().stats().unwrap();
    assert!(now.grants > base.grants + 16 && now.pages > base.pages);
    assert!(sd.stats().unwrap().mappings >= sd_base.mappings + 16 + st.persistent_maps);

    if front_first {
        back.pause.store(true, Ordering::SeqCst);
    }
    let fe = s.guest.domid();
    let Setup {
        ts, bus, front, t0, ..
    } = &mut s;
    std::thread::scope(|sc| {
        let detach = sc.spawn(|| ts.block_detach(fe, "xvda"));
        let end = Instant::now() + LIMIT;
        while !detach.is_finished() {
            assert!(Instant::now() < end, "block-detach did not return");
            if front_first || sd.stats().unwrap().mappings == sd_base.mappings {
                let _ = bus.poll(t0.elapsed());
                front.service(bus);
            }
            if front_first
                && back.pause.load(Ordering::SeqCst)
                && front.state(XVDA) == Some(DeviceState::Closed)
            {
                assert!(
                    sd.stats().unwrap().mappings > sd_base.mappings + 16,
                    "blkback still maps the persistent grants"
                );
                back.pause.store(false, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        detach.join().unwrap().unwrap();
    });
    assert_eq!(s.state(), Some(DeviceState::Closed));
    assert!(dev.read(0, &mut [0u8; 512]).is_err());
    // The held buffer's grants ended at disconnect: it goes back to the platform.
    dev.free_buffer(held).unwrap();
    let end = Instant::now() + LIMIT;
    while sd.stats().unwrap().mappings != sd_base.mappings {
        assert!(Instant::now() < end, "{:?} vs {sd_base:?}", sd.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let end = Instant::now() + Duration::from_secs(2);
    while s.guest.domain().stats().unwrap() != base && Instant::now() < end {
        s.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        s.guest.domain().stats().unwrap(),
        base,
        "the guest holds what it held before the device"
    );
    if let Some(r) = back.report() {
        assert!(!r.connected);
        assert_eq!(r.stats.persistent_maps, 0);
    }
}

#[test]
fn detach_releases_every_persistent_grant_and_page() {
    detach_releases_everything(false);
}

#[test]
fn detach_releases_every_page_when_blkback_unmaps_after_blkfront_disconnected() {
    detach_releases_everything(true);
}

/// With persistent grants blkfront carries data through bounce pages of its own, each granted
/// once for the connection; the application's buffers are never granted. So fresh buffers
/// every time cost no grant and no mapping after the first use, and a freed buffer goes
/// straight back to the platform.
#[test]
fn bounce_pages_carry_the_data_and_keep_their_grants() {
    let (mut s, back) = world(DEFAULT_LIMITS, BackOptions::default());
    let mut dev = s.connect();
    let data = pattern(3 * PAGE_SIZE, 5);
    let mut a = dev.alloc_buffer(3 * PAGE_SIZE).unwrap();
    a.as_mut_slice().copy_from_slice(&data);
    let c = run_all(&mut dev, vec![(Request::Write { sector: 64, buf: a }, 1)]);
    assert_eq!(c[0].result, Ok(()));
    let maps = back.stats().persistent_maps;
    assert!(maps >= 3);
    let grants = guest_grants(&s);
    let calls = grant_calls(&s);
    // A freed buffer goes back to the platform: nothing of it is granted.
    let pages = s.guest.domain().stats().unwrap().pages;
    dev.free_buffer(c.into_iter().next().unwrap().buf.unwrap())
        .unwrap();
    assert_eq!(s.guest.domain().stats().unwrap().pages, pages - 3);
    assert_eq!(guest_grants(&s), grants);
    // Fresh buffers, read and write, many times: no new grant, no new mapping.
    for i in 0..8u64 {
        let b = dev.alloc_buffer(3 * PAGE_SIZE).unwrap();
        let c = run_all(&mut dev, vec![(Request::Read { sector: 64, buf: b }, 2)]);
        assert_eq!(c[0].result, Ok(()));
        let mut b = c.into_iter().next().unwrap().buf.unwrap();
        assert!(b.as_slice() == data.as_slice(), "read back {i}");
        b.as_mut_slice()[0] = i as u8;
        let c = run_all(
            &mut dev,
            vec![(
                Request::Write {
                    sector: 128 + i * 8,
                    buf: b,
                },
                3,
            )],
        );
        assert_eq!(c[0].result, Ok(()));
        dev.free_buffer(c.into_iter().next().unwrap().buf.unwrap())
            .unwrap();
    }
    assert_eq!(
        grant_calls(&s),
        calls,
        "the bounce pages' grants were reused"
    );
    assert_eq!(guest_grants(&s), grants);
    assert_eq!(
        back.stats().persistent_maps,
        maps,
        "blkback mapped nothing new"
    );
    // A partial buffer (2 pages + 512 bytes) through the same pages reads back right.
    let short = pattern(2 * PAGE_SIZE + 512, 9);
    dev.write(4000, &short).unwrap();
    let mut got = vec![0u8; short.len()];
    dev.read(4000, &mut got).unwrap();
    assert!(got == short);
}

/// The error blkfront published for the device (after letting `service` see the failure).
fn why_failed(s: &mut Setup) -> String {
    for _ in 0..50 {
        s.poll();
        if let Some(e) = s.error() {
            return format!("published error: {e}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    format!("no error published, state {:?}", s.state())
}

/// Reads into a `Buffer::from_raw` (never granted persistently: granted read-write for the
/// request and ended at its response) while persistent grants are negotiated.
#[test]
fn reads_into_caller_memory_with_persistent_grants() {
    let (mut s, _back) = world(DEFAULT_LIMITS, BackOptions::default());
    let mut dev = s.connect();
    assert!(dev.config().unwrap().persistent);
    let data = pattern(4 * PAGE_SIZE, 11);
    dev.write(128, &data).unwrap();
    let run = s.guest.domain().alloc(4).unwrap();
    // SAFETY: `run` is 4 pages of the guest's own memory, used only through this buffer,
    // and freed after it is given back.
    let buf = unsafe { Buffer::from_raw(run.addr, run.len()) }.unwrap();
    let c = run_all(&mut dev, vec![(Request::Read { sector: 128, buf }, 1)]);
    assert_eq!(c[0].result, Ok(()), "{}", why_failed(&mut s));
    let b = c.into_iter().next().unwrap().buf.unwrap();
    assert!(b.as_slice() == data);
    assert_eq!(dev.state(), DeviceState::Connected);
    drop(b);
    s.guest.domain().free(run).unwrap();
}

/// A frontend whose own cap on persistent grants (RING_SIZE * 11, here 1 request * 11 pages)
/// is exceeded grants the rest per request (blkif.h: "it can fallback to non persistent
/// mode ... the backend driver will still try to map those grants persistently").
#[test]
fn frontend_beyond_its_persistent_cap() {
    let limits = FrontLimits {
        max_requests: 1,
        ..DEFAULT_LIMITS
    };
    let (mut s, _back) = world(limits, BackOptions::default());
    let mut dev = s.connect();
    assert!(dev.config().unwrap().persistent);
    let data = pattern(64 * PAGE_SIZE, 12);
    dev.write(0, &data).unwrap();
    let mut got = vec![0u8; data.len()];
    let r = dev.read(0, &mut got);
    assert_eq!(r, Ok(()), "{}", why_failed(&mut s));
    assert!(got == data);
    dev.read(0, &mut got).unwrap();
    assert_eq!(dev.state(), DeviceState::Connected);
}

/// With a 16-page ring (512 requests × 11 = 5632 pages it could keep), blkfront keeps at most
/// `PERSISTENT_PAGES_MAX` (1056, Linux blkback's own cap) pages granted for the connection:
/// 12 MiB of buffers in flight, of sizes no spare buffer matches, leave no more than that
/// (plus the ring) granted once they are freed, and every byte reads back.
#[test]
fn frontend_keeps_at_most_linux_blkbacks_persistent_cap() {
    // The backend keeps what it maps persistently until disconnect, whatever the frontend
    // caps (our blkback's own cap is larger): give it Linux blkback's.
    let linux = BackOptions {
        max_persistent_grants: Some(PERSISTENT_PAGES_MAX),
        ..BackOptions::default()
    };
    let (mut s, _back) = world(DEFAULT_LIMITS, linux);
    let mut dev = s.connect();
    let cfg = dev.config().unwrap();
    assert!(cfg.persistent);
    assert!(cfg.max_requests as usize * 11 > PERSISTENT_PAGES_MAX);
    let before = guest_grants(&s);
    let sizes = [256usize, 255, 254, 253, 252, 251];
    let mut sector = 0;
    let mut reqs = Vec::new();
    let mut written = Vec::new();
    for (i, &pages) in sizes.iter().cycle().take(12).enumerate() {
        let data = pattern(pages * PAGE_SIZE, 40 + i as u8);
        let mut b = dev.alloc_buffer(data.len()).unwrap();
        b.as_mut_slice().copy_from_slice(&data);
        reqs.push((Request::Write { sector, buf: b }, i as u64));
        written.push((sector, data));
        sector += (pages * PAGE_SIZE / 512) as u64;
    }
    for c in run_all(&mut dev, reqs) {
        assert_eq!(c.result, Ok(()), "write {}: {}", c.tag, why_failed(&mut s));
        dev.free_buffer(c.buf.unwrap()).unwrap();
    }
    // Besides the data pages: what was granted before (the ring), and one indirect page per
    // request slot used (kept with its slot for the connection).
    let held = guest_grants(&s) - before;
    assert!(
        held <= PERSISTENT_PAGES_MAX + 12,
        "{held} more grants held after 12 MiB of distinct buffers (cap {PERSISTENT_PAGES_MAX} + 12 indirect pages)"
    );
    // Past the cap pages are granted per request — read-write all the same (blkif.h note 8;
    // Linux blkback maps every grant of a persistent connection read-write, and writes of
    // ours granted read-only beyond the cap failed in the lab).
    assert_eq!(s.plat.readonly_grants.load(Ordering::SeqCst), 0);
    for (sector, data) in written {
        let mut back = vec![0u8; data.len()];
        dev.read(sector, &mut back).unwrap();
        assert!(
            back == data,
            "{} bytes at sector {sector} differ",
            data.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// A hand-written frontend with persistent grants against blkback.

mod raw {
    use super::back_common::*;
    use super::*;

    /// A world whose raw frontend wrote `feature-persistent = 1` and is connected.
    fn connected(kind: DiskKind) -> (World, xen_toolstack::Guest, RawFront) {
        let mut w = World::new(BackOptions::default(), kind);
        let g = w.guest("guest");
        w.add_disk(&g, |v| v);
        let fe = g.domid();
        w.run_until("backend InitWait", |w| {
            w.backend_state(fe).as_deref() == Some("2")
        });
        let mut f = RawFront::start(&g, w.sd.domid(), RingStyle::Single);
        // The backend has not been polled since `start`: it reads this with the ring keys.
        let p = format!("{}/feature-persistent", f.front_path);
        xen_bus::store::client::Store::write(&mut f.xs, &p, b"1").unwrap();
        w.run_until("backend Connected", |w| {
            w.backend_state(fe).as_deref() == Some("4")
        });
        assert_eq!(
            w.read(&format!("{}/feature-persistent", w.be_path(fe)))
                .as_deref(),
            Some("1")
        );
        (w, g, f)
    }

    fn stats(w: &World, fe: u16) -> ChannelStats {
        w.back.device(&w.be_node(fe)).unwrap().stats
    }

    fn exchange(w: &mut World, f: &mut RawFront, req: BlkifRequest) -> BlkifResponse {
        f.push(&[req]);
        let mut rsp = None;
        w.run_until("a response", |_| {
            rsp = f.response(req.id);
            rsp.is_some()
        });
        let rsp = rsp.unwrap();
        assert_eq!(rsp.id, req.id);
        rsp
    }

    fn status(w: &mut World, f: &mut RawFront, req: BlkifRequest) -> i16 {
        exchange(w, f, req).status
    }

    /// A good read of sectors 8..16 into a fresh read-write page: OKAY with the disk's
    /// bytes (the world's disk pattern).
    fn still_serves(w: &mut World, f: &mut RawFront) {
        let (page, gref) = f.page(0, false);
        assert_eq!(
            status(w, f, rw(BLKIF_OP_READ, 0xfeed, 8, &[(gref, 0, 7)])),
            BLKIF_RSP_OKAY
        );
        let d = f.read_page(&page);
        assert!((0..PAGE_SIZE).all(|i| d[i] == disk_byte(8 * 512 + i)));
    }

    fn hostile_requests_are_still_refused(kind: DiskKind, in_place: bool) {
        let (mut w, g, mut f) = connected(kind);
        let fe = g.domid();
        // A good write and read through read-write grants: kept mapped.
        let (a, ga) = f.page(0x11, false);
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_WRITE, 1, 100, &[(ga, 0, 7)])),
            BLKIF_RSP_OKAY
        );
        let (r, gr) = f.page(0, false);
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_READ, 2, 100, &[(gr, 0, 7)])),
            BLKIF_RSP_OKAY
        );
        assert!(f.read_page(&r).iter().all(|&x| x == 0x11));
        let st = stats(&w, fe);
        assert_eq!(st.persistent_maps, 2, "{st:?}");
        assert_eq!(st.in_place, if in_place { 2 } else { 0 }, "{st:?}");
        // blkback keeps them mapped: the frontend cannot end them while connected.
        assert_eq!(f.dom.end(ga), Err(xen_platform::Error::Busy));

        // A gref that was never granted: ERROR for a read and for a write.
        let bogus: GrantRef = 4000;
        for (op, id) in [(BLKIF_OP_READ, 3), (BLKIF_OP_WRITE, 4)] {
            assert_eq!(
                status(&mut w, &mut f, rw(op, id, 0, &[(bogus, 0, 7)])),
                BLKIF_RSP_ERROR
            );
            still_serves(&mut w, &mut f);
        }
        // A persistently mapped page with a never-granted one: ERROR, and the kept page
        // is not written.
        f.write_page(&r, 0, &[0x99; PAGE_SIZE]);
        assert_eq!(
            status(
                &mut w,
                &mut f,
                rw(BLKIF_OP_READ, 5, 0, &[(gr, 0, 7), (bogus, 0, 7)])
            ),
            BLKIF_RSP_ERROR
        );
        assert!(f.read_page(&r).iter().all(|&x| x == 0x99), "not written");
        still_serves(&mut w, &mut f);

        // A READ into a page granted read-only: ERROR, the page untouched — alone, and
        // after a persistently mapped segment.
        let (ro, gro) = f.page(0x77, true);
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_READ, 6, 0, &[(gro, 0, 7)])),
            BLKIF_RSP_ERROR
        );
        assert!(f.read_page(&ro).iter().all(|&x| x == 0x77), "not written");
        still_serves(&mut w, &mut f);
        assert_eq!(
            status(
                &mut w,
                &mut f,
                rw(BLKIF_OP_READ, 7, 0, &[(gr, 0, 7), (gro, 0, 7)])
            ),
            BLKIF_RSP_ERROR
        );
        assert!(f.read_page(&ro).iter().all(|&x| x == 0x77), "not written");
        assert!(f.read_page(&r).iter().all(|&x| x == 0x99), "not written");
        still_serves(&mut w, &mut f);
        // The read-only grant is fine for a WRITE (per-request fallback), and is not kept.
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_WRITE, 8, 200, &[(gro, 0, 7)])),
            BLKIF_RSP_OKAY
        );
        assert_eq!(f.dom.end(gro), Ok(()), "not kept mapped");
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_READ, 9, 200, &[(gr, 0, 7)])),
            BLKIF_RSP_OKAY
        );
        assert!(f.read_page(&r).iter().all(|&x| x == 0x77));
        // Its ref, now ended, is refused as any ungranted one.
        assert_eq!(
            status(&mut w, &mut f, rw(BLKIF_OP_READ, 10, 0, &[(gro, 0, 7)])),
            BLKIF_RSP_ERROR
        );
        still_serves(&mut w, &mut f);

        // Indirect: the segment list in a read-write page (kept mapped) naming 12 pages.
        let mut pages = Vec::new();
        let mut segs = Vec::new();
        for i in 0..12u8 {
            let (p, gp) = f.page(0x20 + i, false);
            pages.push(p);
            segs.push((gp, 0u8, 7u8));
        }
        let (ip, gip) = f.page(0, false);
        f.write_page(&ip, 0, &seg_bytes(&segs));
        assert_eq!(
            status(
                &mut w,
                &mut f,
                indirect_req(BLKIF_OP_WRITE, 11, 300, segs.len() as u16, &[gip])
            ),
            BLKIF_RSP_OKAY
        );
        for p in &pages {
            f.write_page(p, 0, &[0; PAGE_SIZE]);
        }
        let rsp = exchange(
            &mut w,
            &mut f,
            indirect_req(BLKIF_OP_READ, 12, 300, segs.len() as u16, &[gip]),
        );
        assert_eq!((rsp.status, rsp.operation), (BLKIF_RSP_OKAY, BLKIF_OP_READ));
        for (i, p) in pages.iter().enumerate() {
            assert!(
                f.read_page(p).iter().all(|&x| x == 0x20 + i as u8),
                "page {i}"
            );
        }
        // The same list with one ungranted segment: ERROR, no page written.
        let mut bad = segs.clone();
        bad[7].0 = bogus;
        f.write_page(&ip, 0, &seg_bytes(&bad));
        for p in &pages {
            f.write_page(p, 0, &[0x44; PAGE_SIZE]);
        }
        assert_eq!(
            status(
                &mut w,
                &mut f,
                indirect_req(BLKIF_OP_READ, 13, 300, bad.len() as u16, &[gip])
            ),
            BLKIF_RSP_ERROR
        );
        for p in &pages {
            assert!(f.read_page(p).iter().all(|&x| x == 0x44), "not written");
        }
        still_serves(&mut w, &mut f);
        // With a segment beyond its page (last_sect 8), through the kept indirect page.
        let mut bad = segs.clone();
        bad[3].2 = 8;
        f.write_page(&ip, 0, &seg_bytes(&bad));
        assert_eq!(
            status(
                &mut w,
                &mut f,
                indirect_req(BLKIF_OP_READ, 14, 300, bad.len() as u16, &[gip])
            ),
            BLKIF_RSP_ERROR
        );
        for p in &pages {
            assert!(f.read_page(p).iter().all(|&x| x == 0x44), "not written");
        }
        still_serves(&mut w, &mut f);
        let st = stats(&w, fe);
        // ga, gr, the 12 data pages and the indirect page at least (plus still_serves').
        let kept = 2 + 12 + 1;
        assert!(st.persistent_maps >= kept, "{st:?}");
        if !in_place {
            assert_eq!(st.in_place, 0);
        }
        let _keep = (a, ro);

        // Disconnect: every persistent mapping goes, the grants can be ended.
        f.set_state(5);
        w.run_until("backend Closing", |w| {
            w.backend_state(fe).as_deref() == Some("5")
        });
        f.set_state(6);
        w.run_until("backend Closed", |w| {
            w.backend_state(fe).as_deref() == Some("6")
        });
        let rep = w.back.device(&w.be_node(fe)).unwrap();
        assert!(!rep.connected);
        assert_eq!(rep.stats.persistent_maps, 0);
        assert_eq!(w.sd.domain().stats().unwrap().mappings, 0, "nothing mapped");
        assert_eq!(f.dom.end(ga), Ok(()));
        assert_eq!(f.dom.end(gr), Ok(()));
        assert_eq!(f.dom.end(gip), Ok(()));
    }

    #[test]
    fn hostile_frontend_with_persistent_grants_in_place_storage() {
        hostile_requests_are_still_refused(DiskKind::Mem, true);
    }

    #[test]
    fn hostile_frontend_with_persistent_grants_queued_storage() {
        // `Gate` is not in place: persistent grants with the buffered path (a read's data
        // copied at completion through the kept mapping).
        let ctl = Rc::new(std::cell::RefCell::new(GateCtl::default()));
        hostile_requests_are_still_refused(DiskKind::Gate(ctl), false);
    }
}

/// Grant references are a budget (issue 15, item 3): on a guest whose grant table has 1024
/// usable entries, one disk with persistent grants keeps at most a quarter of them however
/// much I/O is in flight (its bounce pool's cap: `Grants::grant_refs`), leaving the rest to
/// other devices and rings; every request still succeeds, waiting for bounce pages when the
/// pool is in use.
#[test]
fn persistent_grants_keep_to_a_quarter_of_a_small_grant_table() {
    let usable = 1024;
    let sim = xen_sim::Config {
        grant_entries: usable + xen_sim::NR_RESERVED_REFS,
        ..Default::default()
    };
    let mut s = Setup::with_sim(
        sim,
        WaitMode::Event,
        true,
        DEFAULT_LIMITS,
        |v| v,
        front_common::RECONNECT,
    );
    let back = Back::start(&s, BackOptions::default());
    let base = guest_grants(&s);
    let mut dev = s.connect();
    let cfg = dev.config().unwrap();
    assert!(cfg.persistent);
    let ring = cfg.ring_pages();
    // 16 requests of 1 MiB in flight (4096 pages): far more than the budget.
    let mib = 1 << 20;
    let reqs = (0..16u64)
        .map(|i| {
            let mut b = dev.alloc_buffer(mib).unwrap();
            b.as_mut_slice().copy_from_slice(&pattern(mib, i as u8));
            (
                Request::Write {
                    sector: i * 2048,
                    buf: b,
                },
                i,
            )
        })
        .collect();
    for c in run_all(&mut dev, reqs) {
        assert_eq!(c.result, Ok(()), "write {}", c.tag);
        dev.free_buffer(c.buf.unwrap()).unwrap();
    }
    let reqs = (0..16u64)
        .map(|i| {
            let b = dev.alloc_buffer(mib).unwrap();
            (
                Request::Read {
                    sector: i * 2048,
                    buf: b,
                },
                i,
            )
        })
        .collect();
    for c in run_all(&mut dev, reqs) {
        assert_eq!(c.result, Ok(()), "read {}", c.tag);
        let b = c.buf.unwrap();
        assert!(b.as_slice() == pattern(mib, c.tag as u8), "read {}", c.tag);
        dev.free_buffer(b).unwrap();
    }
    let held = guest_grants(&s) - base - ring;
    // A quarter of the table, or one largest request (256 data pages + its descriptor page)
    // if that is more.
    let cap = (usable as usize / 4).max(cfg.max_segments as usize + 1);
    assert!(held > 0 && held <= cap, "{held} grants kept (cap {cap})");
    assert!(back.stats().persistent_maps <= cap);
    let (free, total) = xen_platform::Grants::grant_refs(s.guest.domain()).unwrap();
    assert_eq!(total, usable as usize);
    assert!(free >= total - cap - ring, "{free} of {total} refs left");
}
