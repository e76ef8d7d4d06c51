//! blkback facing a hostile frontend's XenStore keys: `ring-page-order`, `num-ring-pages`,
//! `ring-ref`, `ring-ref<N>`, `event-channel`, `protocol`, `feature-persistent`,
//! `max-requests`, `max-request-segments`, `multi-queue-num-queues` and the `queue-<N>/` keys
//! come from the input, with any value (digits, signs,
//! blanks, NULs, huge numbers, raw bytes) — and repeated or missing. They go through
//! `negotiate_back`, what the vbd driver calls at the frontend's Initialised, and what it
//! accepts goes on to `Channel::connect` on the simulator's real grants and event channels
//! (small ring-ref values name pages the frontend really granted, small event-channel values
//! its real unbound port), polled once and disconnected.
//!
//! Checked: no panic; an accepted configuration stays inside what the backend offered (ring
//! pages, queues, requests per ring, segments per request); every mapping is released at disconnect.
#![no_main]

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xen_blk::back::channel::{Channel, Limits};
use xen_blk::abi::blkif_ring_size;
use xen_blk::negotiate::{keys, negotiate_back, BackendOffer};
use xen_blk::storage::{MemDisk, Storage};
use xen_platform::{Events, GrantRef, Grants, PageRun, Pages};
use xen_sim::{Domain, Hypervisor};

/// Ring pages the frontend grants (an order-4 ring at most).
const RING_PAGES: usize = 16;

struct World {
    _hv: Arc<Hypervisor>,
    front: Domain,
    back: Rc<Domain>,
    _ring: Vec<PageRun>,
    refs: Vec<GrantRef>,
}

thread_local! {
    static WORLD: World = {
        let hv = Hypervisor::new();
        let back = hv.create_domain("storage");
        let front = hv.create_domain("guest");
        let mut ring = Vec::new();
        let mut refs = Vec::new();
        for _ in 0..RING_PAGES {
            let p = front.alloc(1).unwrap();
            let f = front.frame(p.addr).unwrap();
            refs.push(front.grant(back.id(), f, false).unwrap());
            ring.push(p);
        }
        World { _hv: hv, front, back: Rc::new(back), _ring: ring, refs }
    };
}

/// The key a line names (its first byte picks one).
fn key_name(sel: u8) -> String {
    const NAMED: [&str; 9] = [
        keys::RING_PAGE_ORDER,
        keys::NUM_RING_PAGES,
        keys::RING_REF,
        keys::EVENT_CHANNEL,
        keys::PROTOCOL,
        keys::FEATURE_PERSISTENT,
        keys::MAX_REQUESTS,
        keys::MAX_REQUEST_SEGMENTS,
        "ring-ref",
    ];
    match sel {
        0..=8 => NAMED[usize::from(sel)].to_string(),
        // ring-ref0 .. ring-ref17: two past an order-4 ring.
        9..=26 => format!("ring-ref{}", sel - 9),
        27 => keys::MULTI_QUEUE_NUM_QUEUES.to_string(),
        // Queues 0..5 (one past the most offered): ring-ref, ring-ref0/1, event-channel.
        _ => {
            let k = sel - 28;
            let leaf = ["ring-ref", "ring-ref0", "ring-ref1", "event-channel"][usize::from(k % 4)];
            format!("queue-{}/{leaf}", (k / 4) % 6)
        }
    }
}

fn offer(flags: u8) -> BackendOffer {
    BackendOffer {
        max_ring_page_order: u32::from(flags & 7),
        max_indirect_segments: if flags & 8 != 0 { 256 } else { 0 },
        flush_cache: true,
        barrier: false,
        discard: None,
        persistent: flags & 16 != 0,
        sectors: 64,
        sector_size: 512,
        physical_sector_size: 512,
        info: 0,
        max_requests: None,
        max_request_segments: None,
        max_request_size: None,
        max_queues: if flags & 32 != 0 { 4 } else { 1 },
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Some((&sel, value)) = line.split_first() {
            store.insert(key_name(sel), value.to_vec());
        }
    }
    let offer = offer(flags);
    let Ok(cfg) = negotiate_back(|k| Ok(store.get(k).cloned()), &offer) else {
        return;
    };
    assert!(1 + cfg.more_queues.len() <= offer.max_queues as usize, "{cfg:?}");
    assert!(cfg.queues().all(|q| q.ring_refs.len() == cfg.ring.ring_refs.len()));
    let pages = cfg.ring.ring_refs.len();
    let limit = offer.max_ring_page_order.min(4);
    assert!(pages.is_power_of_two() && pages <= 1 << limit, "{pages} ring pages");
    assert!(cfg.max_requests >= 1 && cfg.max_requests <= blkif_ring_size(pages));
    let most = offer.max_indirect_segments.clamp(11, 4096);
    assert!(cfg.max_segments >= 1 && cfg.max_segments <= most, "{cfg:?}");
    WORLD.with(|w| {
        // Small values name the pages the frontend granted; anything else stays as written.
        let refs: Vec<GrantRef> = cfg
            .ring
            .ring_refs
            .iter()
            .map(|&r| if (r as usize) < RING_PAGES { w.refs[r as usize] } else { r })
            .collect();
        let port = w.front.alloc_unbound(w.back.id()).unwrap();
        let event_channel = if cfg.ring.event_channel < 4 {
            port
        } else {
            cfg.ring.event_channel
        };
        let limits = Limits {
            max_segments: cfg.max_segments,
            indirect: offer.max_indirect_segments > 0,
            flush: true,
            barrier: false,
            discard: false,
            secure_discard: false,
            read_only: false,
            sectors: 64,
            sector_size: 512,
            persistent_grants: if cfg.ring.persistent && offer.persistent { 64 } else { 0 },
        };
        let maps_before = w.back.stats().unwrap().mappings;
        let storage: Box<dyn Storage> = Box::new(MemDisk::new(64));
        if let Ok(mut ch) =
            Channel::connect(w.back.clone(), w.front.id(), &refs, event_channel, storage, limits, 0)
        {
            ch.poll(true);
            drop(ch);
        }
        assert_eq!(
            w.back.stats().unwrap().mappings,
            maps_before,
            "every mapping released at disconnect"
        );
        let _ = w.front.close(port);
    });
});
