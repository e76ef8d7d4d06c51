//! blkback's work budget (rounds per ring, at most ROUNDS_PER_POLL per poll, rings served
//! round-robin, requests and parts of large requests started by deficit round robin): a frontend that keeps its ring full cannot hold one
//! `BlkBack::poll` call for long, nor starve another frontend of the same backend. Hand-written frontends through the simulator, our xenstored and
//! `xen-toolstack`.

mod back_common;

use back_common::*;
use xen_blk::abi::*;
use xen_blk::back::channel::{MAX_COST, QUANTUM, RING_BUDGET};
use xen_blk::back::BackOptions;
use xen_blk::back::ROUNDS_PER_POLL;
use xen_toolstack::Guest;

/// `n` guests, each with a raw frontend on a ring of `1 << order` pages, all Connected.
fn world(n: usize, order: u32) -> (World, Vec<Guest>, Vec<RawFront>) {
    let mut w = World::new(BackOptions::default(), DiskKind::Mem);
    let guests: Vec<Guest> = (0..n).map(|i| w.guest(&format!("guest{i}"))).collect();
    for g in &guests {
        w.add_disk(g, |v| v);
    }
    let fronts = guests
        .iter()
        .map(|g| RawFront::start(g, w.sd.domid(), RingStyle::Order(order)))
        .collect();
    for g in &guests {
        let fe = g.domid();
        w.run_until("Connected", |w| w.backend_state(fe).as_deref() == Some("4"));
    }
    (w, guests, fronts)
}

/// Fill `f`'s ring with `n` reads of one page each (ids from `id0`), without notifying twice.
fn fill(f: &mut RawFront, id0: u64, n: usize, segs: &[(xen_platform::GrantRef, u8, u8)]) {
    let reqs: Vec<BlkifRequest> = (0..n as u64)
        .map(|i| rw(BLKIF_OP_READ, id0 + i, (i % 64) * 8, segs))
        .collect();
    f.push(&reqs);
}

#[test]
fn a_full_ring_is_served_in_rounds() {
    let (w, _g, mut fronts) = world(1, 4);
    let f = &mut fronts[0];
    let (_p, gr) = f.page(0, false);
    let slots = f.ring.size() as usize; // order 4: 16 pages of 32 requests
    let per_poll = (QUANTUM / 4096).min(RING_BUDGET) * ROUNDS_PER_POLL;
    assert!(slots > per_poll);
    fill(f, 1, slots, &[(gr, 0, 7)]);
    // One call serves at most ROUNDS_PER_POLL rounds of this ring (a quantum of 4 KiB reads
    // each), and says that work is left.
    let p = w.back.poll();
    assert!(p.busy, "requests left on the ring: poll again");
    let first = f.collect();
    assert_eq!(first, per_poll, "a call answers its rounds' worth");
    // The next calls take the rest; nothing is lost, nothing answered twice.
    let mut calls = 1;
    while f.responses.len() < slots {
        w.back.poll();
        f.collect();
        calls += 1;
        assert!(calls <= slots, "no progress");
    }
    assert_eq!(calls, slots.div_ceil(per_poll));
    assert!(f.responses.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    let mut ids: Vec<u64> = f.responses.iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, (1..=slots as u64).collect::<Vec<_>>());
}

/// A ring of `n` whole-disk discards (each a memset of the RAM disk), ids from 0.
fn discards(f: &mut RawFront, n: usize) {
    let reqs: Vec<BlkifRequest> = (0..n as u64)
        .map(|i| {
            as_request(&BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                id: i,
                sector_number: 0,
                nr_sectors: DISK_SECTORS,
                ..Default::default()
            })
        })
        .collect();
    f.push(&reqs);
}

#[test]
fn big_requests_wait_for_credit_while_small_ones_flow() {
    let (w, _g, mut fronts) = world(2, 2);
    let (big, small) = fronts.split_at_mut(1);
    let (big, small) = (&mut big[0], &mut small[0]);
    // Whole-disk discards cost what they drop (1 MiB here, capped at MAX_COST): one starts
    // per MAX_COST / QUANTUM rounds of its ring, however many wait.
    let cost = (DISK_SECTORS as usize * 512).min(MAX_COST);
    let rounds_per_big = cost.div_ceil(QUANTUM);
    assert!(rounds_per_big > 1);
    let n = big.ring.size() as usize;
    discards(big, n);
    let (_p, gr) = small.page(0, false);
    let calls = 4 * rounds_per_big / ROUNDS_PER_POLL;
    for call in 0..calls as u64 {
        small.push(&[rw(BLKIF_OP_READ, call, 8, &[(gr, 0, 7)])]);
        assert!(w.back.poll().busy, "the discards are still waiting");
        assert!(
            small
                .response(call)
                .is_some_and(|r| r.status == BLKIF_RSP_OKAY),
            "call {call}: the small request was answered in the same call"
        );
    }
    big.collect();
    // calls × ROUNDS_PER_POLL rounds of credit pay for 4 discards.
    assert!(
        (3..=4).contains(&big.responses.len()),
        "{} discards started in {} rounds",
        big.responses.len(),
        calls * ROUNDS_PER_POLL
    );
    // Left alone, every discard is served in the end.
    while big.responses.len() < n {
        w.back.poll();
        big.collect();
    }
    assert!(big.responses.iter().all(|r| r.status == BLKIF_RSP_OKAY));
}

#[test]
fn a_held_request_is_answered_when_the_frontend_goes_away() {
    let (mut w, g, mut fronts) = world(1, 0);
    let f = &mut fronts[0];
    discards(f, 1);
    // The discard (1 MiB of credit) is taken and waits: one call gives less.
    assert!(ROUNDS_PER_POLL * QUANTUM < (DISK_SECTORS as usize * 512).min(MAX_COST));
    w.back.poll();
    assert!(f.collect() == 0);
    // The frontend closes: the request it sent is answered (error), not dropped.
    f.set_state(5);
    let fe = g[0].domid();
    w.run_until("backend Closing", |w| {
        w.backend_state(fe).as_deref() == Some("5")
    });
    f.collect();
    assert_eq!(f.responses.len(), 1, "the held request got its response");
    assert_eq!(f.responses[0].status, BLKIF_RSP_ERROR);
}

#[test]
fn a_flooding_frontend_does_not_starve_another() {
    let (w, _g, mut fronts) = world(2, 4);
    let (hostile, honest) = fronts.split_at_mut(1);
    let (hostile, honest) = (&mut hostile[0], &mut honest[0]);
    let (_hp, hg) = hostile.page(0, false);
    let (_p, gr) = honest.page(0, false);
    // Whichever ring the backend serves first: the hostile one stays full every round, the
    // honest one has one request; each round serves both.
    for round in 0..4u64 {
        let room = hostile.ring.free_requests() as usize;
        fill(hostile, 1000 * (round + 1), room, &[(hg, 0, 7)]);
        honest.push(&[rw(BLKIF_OP_READ, round, 8, &[(gr, 0, 7)])]);
        w.back.poll();
        assert!(
            honest
                .response(round)
                .is_some_and(|r| r.status == BLKIF_RSP_OKAY),
            "round {round}: the honest frontend was answered in the same call"
        );
        let before = hostile.responses.len();
        hostile.collect();
        let per_poll = (QUANTUM / 4096).min(RING_BUDGET) * ROUNDS_PER_POLL;
        assert!(
            hostile.responses.len() - before <= per_poll,
            "round {round}: the flooding ring got its rounds, not all of its requests"
        );
    }
}

#[test]
fn a_split_request_is_answered_once_with_its_first_error() {
    let (mut w, g, mut fronts) = world(1, 0);
    let f = &mut fronts[0];
    // 32 segments of whole pages: 128 KiB, two parts. The first part's grants are good; one
    // in the second part was never granted.
    let mut segs: Vec<(xen_platform::GrantRef, u8, u8)> =
        (0..32).map(|_| (f.page(0x33, true).1, 0, 7)).collect();
    segs[20].0 = 0xdead;
    let (ip, igr) = f.page(0, true);
    f.write_page(&ip, 0, &seg_bytes(&segs));
    f.push(&[indirect_req(BLKIF_OP_WRITE, 7, 0, 32, &[igr])]);
    w.run_until("answered", |_| f.collect() > 0);
    for _ in 0..20 {
        w.poll();
    }
    f.collect();
    assert_eq!(f.responses.len(), 1, "one response for the whole request");
    assert_eq!(
        (f.responses[0].id, f.responses[0].status),
        (7, BLKIF_RSP_ERROR)
    );
    assert_eq!(f.responses[0].operation, BLKIF_OP_WRITE);
    let st = w.back.device(&w.be_node(g[0].domid())).unwrap().stats;
    assert_eq!((st.split, st.parts), (1, 2), "{st:?}");
    // The ring goes on: a good split request after it is answered OKAY.
    segs[20].0 = f.page(0x44, true).1;
    f.write_page(&ip, 0, &seg_bytes(&segs));
    f.push(&[indirect_req(BLKIF_OP_WRITE, 8, 0, 32, &[igr])]);
    w.run_until("answered", |_| {
        f.collect();
        f.responses.len() == 2
    });
    assert_eq!(
        (f.responses[1].id, f.responses[1].status),
        (8, BLKIF_RSP_OKAY)
    );
}
