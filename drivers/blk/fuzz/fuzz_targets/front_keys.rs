//! blkfront facing a hostile backend's XenStore keys: `max-ring-page-order`, `max-ring-pages`,
//! `feature-max-indirect-segments`, `feature-flush-cache`, `feature-barrier`,
//! `feature-discard` and `discard-*`, `feature-persistent`, `sectors`, `info`, `sector-size`,
//! `physical-sector-size` and the request caps come from the input with any value. They go
//! through what blkfront's XenBus glue calls — `BackendOffer::read`, `front_ring_order`,
//! `negotiate_front` — and what it accepts builds the data path on the simulator's real grants,
//! where requests around the end of the disk (and past it) and a discard are submitted, then
//! the connection ends.
//!
//! Checked: no panic or overflow; the configuration stays inside the frontend's own limits;
//! a request is accepted only when it lies inside the disk and is whole logical blocks; every
//! accepted request is reported once after the shutdown; every grant is ended.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xen_blk::abi::blkif_ring_size;
use xen_blk::front::fuzzing::FuzzFront;
use xen_blk::front::Request;
use xen_blk::negotiate::{front_ring_order, keys, negotiate_front, BackendOffer, FrontLimits};
use xen_sim::{Domain, Hypervisor};

struct World {
    _hv: Arc<Hypervisor>,
    front: Rc<Domain>,
    back: Domain,
}

thread_local! {
    static WORLD: World = {
        let hv = Hypervisor::new();
        let back = hv.create_domain("storage");
        let front = Rc::new(hv.create_domain("guest"));
        World { _hv: hv, front, back }
    };
}

const NAMED: [&str; 19] = [
    keys::MAX_RING_PAGE_ORDER,
    keys::MAX_RING_PAGES,
    keys::FEATURE_MAX_INDIRECT_SEGMENTS,
    keys::MAX_REQUESTS,
    keys::MAX_REQUEST_SEGMENTS,
    keys::MAX_REQUEST_SIZE,
    keys::FEATURE_FLUSH_CACHE,
    keys::FEATURE_BARRIER,
    keys::FEATURE_DISCARD,
    keys::DISCARD_GRANULARITY,
    keys::DISCARD_ALIGNMENT,
    keys::DISCARD_SECURE,
    keys::FEATURE_PERSISTENT,
    keys::SECTORS,
    keys::INFO,
    keys::SECTOR_SIZE,
    keys::PHYSICAL_SECTOR_SIZE,
    keys::MODE,
    keys::MULTI_QUEUE_MAX_QUEUES,
];

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let mut store: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Some((&sel, value)) = line.split_first() {
            store.insert(NAMED[usize::from(sel) % NAMED.len()], value.to_vec());
        }
    }
    let get = |k: &str| Ok(store.get(k).cloned());
    let limits = FrontLimits {
        max_ring_page_order: u32::from(flags & 7),
        max_indirect_segments: if flags & 8 != 0 { 256 } else { 0 },
        max_requests: 64,
        persistent: flags & 16 != 0,
        max_queues: 1 + u32::from(flags >> 5 & 3),
    };
    // At the backend's InitWait: the ring order; at its Connected: everything.
    let Ok(offered) = BackendOffer::read_ring_order(get) else {
        return;
    };
    let order = front_ring_order(offered, &limits);
    assert!(order <= limits.max_ring_page_order.min(4));
    let Ok(offer) = BackendOffer::read(get) else {
        return;
    };
    let cfg = negotiate_front(&offer, order, &limits);
    assert!(cfg.max_requests >= 1 && cfg.max_requests <= blkif_ring_size(1 << order));
    assert!(cfg.max_requests <= limits.max_requests);
    assert!(cfg.queues >= 1 && cfg.queues <= limits.max_queues, "{} queues", cfg.queues);
    assert!(cfg.max_segments >= 1 && cfg.max_segments <= limits.max_indirect_segments.max(11));
    assert!(cfg.sectors.checked_mul(512).is_some(), "{} sectors", cfg.sectors);
    let bs = u64::from(cfg.sector_size);
    assert!(bs >= 512 && bs.is_power_of_two() && bs <= 4096);
    WORLD.with(|w| {
        let grants_before = w.front.stats().unwrap().grants;
        let Ok(mut f) = FuzzFront::new(w.front.clone(), w.back.id(), cfg.clone()) else {
            return;
        };
        // Reads and writes at the start, at the end and past the end of the disk, of one
        // logical block and of 64 KiB, and a discard of the last blocks.
        let end = cfg.sectors;
        let spb = bs / 512;
        let mut accepted = BTreeSet::new();
        let mut tag = 0u64;
        for sector in [0, end.saturating_sub(spb), end.saturating_sub(128), end, u64::MAX - 7] {
            for bytes in [bs as usize, 65536] {
                let Ok(buf) = f.alloc_buffer(bytes) else { continue };
                let req = if tag % 2 == 0 {
                    Request::Read { sector, buf }
                } else {
                    Request::Write { sector, buf }
                };
                let inside = sector % spb == 0
                    && sector
                        .checked_add(bytes as u64 / 512)
                        .is_some_and(|e| e <= end);
                match f.submit(tag, req) {
                    Ok(()) => {
                        assert!(inside, "accepted {bytes} bytes at {sector} of {end}");
                        accepted.insert(tag);
                    }
                    Err(r) => {
                        if let Some(b) = r.buf {
                            let _ = f.free_buffer(b);
                        }
                    }
                }
                tag += 1;
            }
        }
        let count = 2 * spb;
        let discard = Request::Discard {
            sector: end.saturating_sub(count),
            count,
            secure: flags & 32 != 0,
        };
        if f.submit(tag, discard).is_ok() {
            assert!(cfg.discard.is_some() && end >= count);
            accepted.insert(tag);
        }
        f.shutdown();
        let mut seen = BTreeSet::new();
        let mut buffers = Vec::new();
        f.poll(&mut |c| {
            assert!(seen.insert(c.tag), "tag {} reported twice", c.tag);
            buffers.extend(c.buf);
        });
        assert_eq!(seen, accepted, "every accepted request reported once");
        for b in buffers {
            let _ = f.free_buffer(b);
        }
        drop(f);
        assert_eq!(w.front.stats().unwrap().grants, grants_before, "every grant ended");
    });
});
