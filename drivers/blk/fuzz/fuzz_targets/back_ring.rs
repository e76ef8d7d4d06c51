//! blkback facing a hostile frontend: the whole shared ring page (indexes and request slots),
//! the contents of the pages its requests name (indirect segment lists among them), the grant
//! references in them (some granted, most not) and the negotiated limits come from the input.
//! The channel runs on the simulator's real grants, mappings and event channels; each input
//! gets a fresh connection, polled a few rounds, then disconnected.
//!
//! Checked beyond "no crash, no hang": never more responses than requests taken, the
//! response producer never runs ahead of the requests by more than the ring, and every
//! mapping is released at disconnect.
#![no_main]

use std::rc::Rc;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xen_blk::back::channel::{Channel, Limits};
use xen_blk::storage::{MemDisk, Storage};
use xen_platform::{Events, GrantRef, Grants, PageRun, Pages, PAGE_SIZE};
use xen_sim::{Domain, Hypervisor};

/// Data pages the frontend grants (their refs are what a request most likely names).
const DATA_PAGES: usize = 4;

struct World {
    _hv: Arc<Hypervisor>,
    front: Domain,
    back: Rc<Domain>,
    ring: PageRun,
    ring_ref: GrantRef,
    data: Vec<(PageRun, GrantRef)>,
}

impl World {
    fn new() -> World {
        let hv = Hypervisor::new();
        let back = hv.create_domain("storage");
        let front = hv.create_domain("guest");
        let grant = |run: &PageRun| {
            let f = front.frame(run.addr).unwrap();
            front.grant(back.id(), f, false).unwrap()
        };
        let ring = front.alloc(1).unwrap();
        let ring_ref = grant(&ring);
        let data = (0..DATA_PAGES)
            .map(|_| {
                let p = front.alloc(1).unwrap();
                let r = grant(&p);
                (p, r)
            })
            .collect();
        World {
            _hv: hv,
            front,
            back: Rc::new(back),
            ring,
            ring_ref,
            data,
        }
    }
}

thread_local! {
    static WORLD: World = World::new();
}

fn write(run: &PageRun, bytes: &[u8]) {
    let n = bytes.len().min(PAGE_SIZE);
    // SAFETY: the frontend's own page (one page long); the backend maps it only while the
    // channel below exists, and nothing else writes it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), run.addr.as_ptr(), n) }
}

fn read_u32(run: &PageRun, off: usize) -> u32 {
    // SAFETY: inside the frontend's own page; a plain read of an index.
    unsafe { std::ptr::read_volatile(run.addr.as_ptr().add(off).cast::<u32>()) }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    WORLD.with(|w| {
        // The ring page (indexes included), then each data page, from the input.
        let (ring_bytes, mut rest) = rest.split_at(rest.len().min(PAGE_SIZE));
        let mut page = vec![0u8; PAGE_SIZE];
        page[..ring_bytes.len()].copy_from_slice(ring_bytes);
        // rsp_prod starts where a fresh ring has it: 0 (the backend owns it).
        page[8..12].fill(0);
        let req_prod = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
        // Request slots may name the granted pages: map small gref values onto them.
        for slot in 0..32 {
            let at = 64 + slot * 112;
            for seg in 0..11 {
                let g = at + 24 + seg * 8;
                if page[g + 3] == 0 && page[g + 2] == 0 && page[g + 1] == 0 && page[g] < 8 {
                    let r = w.data[usize::from(page[g]) % DATA_PAGES].1;
                    page[g..g + 4].copy_from_slice(&r.to_le_bytes());
                }
            }
        }
        write(&w.ring, &page);
        for (run, _) in &w.data {
            let (d, r) = rest.split_at(rest.len().min(PAGE_SIZE));
            let mut p = vec![0u8; PAGE_SIZE];
            p[..d.len()].copy_from_slice(d);
            // As an indirect page: 8-byte segment entries, small grefs onto the granted pages.
            for e in p.chunks_exact_mut(8) {
                if e[1] == 0 && e[2] == 0 && e[3] == 0 && e[0] < 8 {
                    let r = w.data[usize::from(e[0]) % DATA_PAGES].1;
                    e[..4].copy_from_slice(&r.to_le_bytes());
                }
            }
            write(run, &p);
            rest = r;
        }
        let limits = Limits {
            max_segments: if flags & 1 != 0 { 256 } else { 11 },
            indirect: flags & 1 != 0,
            flush: flags & 2 != 0,
            barrier: flags & 4 != 0,
            discard: flags & 8 != 0,
            secure_discard: flags & 16 != 0,
            read_only: flags & 32 != 0,
            sectors: 64,
            sector_size: if flags & 64 != 0 { 4096 } else { 512 },
            persistent_grants: if flags & 128 != 0 { 64 } else { 0 },
        };
        let disk = MemDisk::new(64).with_sector_size(limits.sector_size);
        let port = w.front.alloc_unbound(w.back.id()).unwrap();
        let maps_before = w.back.stats().unwrap().mappings;
        let storage: Box<dyn Storage> = Box::new(disk);
        let Ok(mut ch) = Channel::connect(
            w.back.clone(),
            w.front.id(),
            &[w.ring_ref],
            port,
            storage,
            limits,
            0,
        ) else {
            let _ = w.front.close(port);
            return;
        };
        for _ in 0..4 {
            ch.poll(true);
        }
        let st = ch.stats();
        assert!(st.responses <= st.requests, "{st:?}");
        let rsp_prod = read_u32(&w.ring, 8);
        assert!(
            u64::from(rsp_prod) <= st.requests,
            "rsp_prod {rsp_prod} (req_prod {req_prod}) after {st:?}"
        );
        drop(ch);
        assert_eq!(
            w.back.stats().unwrap().mappings,
            maps_before,
            "every mapping released at disconnect"
        );
        let _ = w.front.close(port);
    });
});
