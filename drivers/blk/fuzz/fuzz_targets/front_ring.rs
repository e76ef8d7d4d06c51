//! blkfront facing a hostile backend: after a few requests are on the ring, the response slots
//! and `rsp_prod` come from the input (ids — mostly ones the frontend issued —, operations,
//! statuses, index jumps), as do the
//! negotiated configuration (indirect, flush mode, discard, 512/4096-byte blocks, persistent
//! grants). The data path runs on the simulator's real grants; each input gets a fresh ring.
//!
//! Checked beyond "no crash, no hang": no request is reported twice, and after the connection
//! ends every request has been reported exactly once (nothing lost), and every grant the
//! frontend made is ended (none left to a backend that misbehaved and never mapped them).
#![no_main]

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use xen_blk::front::fuzzing::FuzzFront;
use xen_blk::front::Request;
use xen_blk::negotiate::{DiscardParams, FlushMode, FrontConfig};
use xen_platform::PAGE_SIZE;
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

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    WORLD.with(|w| {
        let indirect = flags & 1 != 0;
        let cfg = FrontConfig {
            ring_page_order: 0,
            max_requests: 32,
            max_segments: if indirect { 256 } else { 11 },
            indirect,
            flush: match (flags >> 1) & 3 {
                0 => FlushMode::None,
                1 => FlushMode::FlushCache,
                _ => FlushMode::Barrier,
            },
            discard: (flags & 8 != 0).then_some(DiscardParams {
                granularity: 4096,
                alignment: 0,
                secure: flags & 16 != 0,
            }),
            sectors: 1 << 20,
            sector_size: if flags & 32 != 0 { 4096 } else { 512 },
            physical_sector_size: 4096,
            readonly: false,
            info: 0,
            persistent: flags & 64 != 0,
            // An odd-length input runs two queues: the same answer is written on both rings.
            queues: 1 + (rest.len() % 2) as u32,
        };
        let grants_before = w.front.stats().unwrap().grants;
        let Ok(mut f) = FuzzFront::new(w.front.clone(), w.back.id(), cfg) else {
            return;
        };
        // A few requests of each kind on the ring.
        let mut tags = Vec::new();
        let sizes = [4096usize, 8192, 65536, 131072];
        for (i, &size) in sizes.iter().enumerate() {
            let Ok(buf) = f.alloc_buffer(size) else { break };
            let sector = (i as u64) * 2048;
            let req = if i % 2 == 0 {
                Request::Read { sector, buf }
            } else {
                Request::Write { sector, buf }
            };
            if f.submit(i as u64, req).is_ok() {
                tags.push(i as u64);
            }
        }
        for (tag, req) in [
            (10, Request::Flush),
            (
                11,
                Request::Discard {
                    sector: 8,
                    count: 8,
                    secure: flags & 128 != 0,
                },
            ),
        ] {
            if f.submit(tag, req).is_ok() {
                tags.push(tag);
            }
        }
        // The backend's answer: rsp_prod, rsp_event and the slots, from the input.
        let (head, slots) = rest.split_at(rest.len().min(8));
        let mut page = vec![0u8; PAGE_SIZE - 8];
        page[..head.len()].copy_from_slice(head);
        let n = slots.len().min(PAGE_SIZE - 64);
        page[56..56 + n].copy_from_slice(&slots[..n]);
        // Most ids a backend answers with are ones the frontend issued (small numbers here):
        // a slot whose id's second byte is even gets `first byte % 24` as its id, so inputs
        // reach the completion paths instead of failing the device on an unknown id at once.
        // With two queues, ring 1 (its ids are 32..63) gets the same slots, where such an id
        // is ring 1's own (`32 + first byte % 24`) when the second byte is 0 mod 4, and ring
        // 0's — not this ring's — when it is 2 mod 4.
        let raw = page.clone();
        let mut page1 = page.clone();
        for slot in 0..32 {
            let at = 56 + slot * 112;
            let (b0, b1) = (raw[at], raw[at + 1]);
            if b1 % 2 == 0 {
                let small = u64::from(b0 % 24);
                page[at..at + 8].copy_from_slice(&small.to_le_bytes());
                let id1 = if b1 % 4 == 0 { small + 32 } else { small };
                page1[at..at + 8].copy_from_slice(&id1.to_le_bytes());
            }
        }
        for (q, bytes) in [(0, &page), (1, &page1)] {
            let Some(ring) = f.ring_of(q) else { continue };
            // SAFETY: the ring page is ours (granted to a backend that never maps it here);
            // the data path only reads it inside `poll`, not while this copy runs.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.as_ptr().add(8), bytes.len());
            }
        }
        let mut seen = BTreeSet::new();
        let mut buffers = Vec::new();
        for _ in 0..3 {
            f.poll(&mut |c| {
                assert!(seen.insert(c.tag), "tag {} reported twice", c.tag);
                buffers.extend(c.buf);
            });
        }
        f.shutdown();
        f.poll(&mut |c| {
            assert!(seen.insert(c.tag), "tag {} reported twice", c.tag);
            buffers.extend(c.buf);
        });
        let all: BTreeSet<u64> = tags.iter().copied().collect();
        assert_eq!(seen, all, "every request reported once");
        assert_eq!(f.in_flight(), 0);
        for b in buffers {
            let _ = f.free_buffer(b);
        }
        drop(f);
        assert_eq!(
            w.front.stats().unwrap().grants,
            grants_before,
            "every grant ended"
        );
    });
});
