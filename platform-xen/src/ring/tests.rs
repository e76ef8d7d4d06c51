//! Unit tests of `ring` (in their own file; they use its private items).

extern crate std;

use super::*;
use std::alloc::{alloc, dealloc, Layout};
use std::vec::Vec;

/// Page-aligned memory standing in for granted pages, filled with `0xAA`.
struct Shm {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Shm {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.max(PAGE_SIZE), PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) }).expect("out of memory");
        // SAFETY: freshly allocated, layout.size() bytes.
        unsafe { ptr.as_ptr().write_bytes(0xAA, layout.size()) };
        Shm { ptr, layout }
    }
    fn pages(n: usize) -> Self {
        Self::new(n * PAGE_SIZE)
    }
    fn idx(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offset is a header field offset inside the allocation, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
    fn get(&self, offset: usize) -> u32 {
        self.idx(offset).load(Ordering::SeqCst)
    }
    fn set(&self, offset: usize, v: u32) {
        self.idx(offset).store(v, Ordering::SeqCst)
    }
    /// `SHARED_RING_INIT` as if the ring had been in use up to index `start`.
    fn init_at(&self, start: RingIdx) {
        self.set(REQ_PROD, start);
        self.set(RSP_PROD, start);
        self.set(REQ_EVENT, start.wrapping_add(1));
        self.set(RSP_EVENT, start.wrapping_add(1));
    }
    fn byte(&self, offset: usize) -> u8 {
        // SAFETY: tests only pass offsets inside the allocation.
        unsafe { self.ptr.as_ptr().add(offset).read_volatile() }
    }
    fn write_entry<T>(&self, slot: usize, v: T) {
        let size = entry_size::<T, T>();
        // SAFETY: tests pass slots inside the ring; entries are aligned.
        unsafe {
            self.ptr
                .as_ptr()
                .add(SRING_HEADER_SIZE + slot * size)
                .cast::<T>()
                .write_volatile(v)
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: allocated in Shm::new with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// blkif-shaped entries: a 112-byte request and a 16-byte response.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlkReq {
    op: u8,
    nr_segments: u8,
    handle: u16,
    pad: u32,
    id: u64,
    sector: u64,
    seg: [u64; 11],
}
// SAFETY: repr(C) integers, no implicit padding.
unsafe impl Pod for BlkReq {}
const _: () = assert!(size_of::<BlkReq>() == 112);

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlkRsp {
    id: u64,
    op: u8,
    pad0: u8,
    status: i16,
    pad1: u32,
}
// SAFETY: repr(C) integers, no implicit padding.
unsafe impl Pod for BlkRsp {}
const _: () = assert!(size_of::<BlkRsp>() == 16);

fn req(id: u64) -> BlkReq {
    BlkReq {
        op: 1,
        nr_segments: 11,
        handle: 7,
        pad: 0,
        id,
        sector: id * 8,
        seg: [id ^ 0x5555_5555_5555_5555; 11],
    }
}
fn rsp(id: u64) -> BlkRsp {
    BlkRsp {
        id,
        op: 1,
        pad0: 0,
        status: -(id as i16 & 3),
        pad1: 0,
    }
}

type Front = FrontRing<BlkReq, BlkRsp>;
type Back = BackRing<BlkReq, BlkRsp>;

fn pair(shm: &Shm, bytes: usize) -> (Front, Back) {
    // SAFETY: shm outlives the rings in every test (declared first, dropped last).
    unsafe {
        (
            Front::new(shm.ptr, bytes).unwrap(),
            Back::new(shm.ptr, bytes).unwrap(),
        )
    }
}

fn pair_at(shm: &Shm, bytes: usize, start: RingIdx) -> (Front, Back) {
    shm.init_at(start);
    // SAFETY: as in `pair`.
    unsafe {
        (
            Front::attach(shm.ptr, bytes, start).unwrap(),
            Back::attach(shm.ptr, bytes, start).unwrap(),
        )
    }
}

#[test]
fn sizes() {
    assert_eq!(entry_size::<BlkReq, BlkRsp>(), 112);
    assert_eq!(ring_size(PAGE_SIZE, 112), 32);
    assert_eq!(ring_size(4 * PAGE_SIZE, 112), 128);
    assert_eq!(ring_size(16 * PAGE_SIZE, 112), 512);
    assert_eq!(ring_size(PAGE_SIZE, 8), 256);
    assert_eq!(ring_size(PAGE_SIZE, 16), 128);
    let shm = Shm::pages(4);
    let (f, b) = pair(&shm, 4 * PAGE_SIZE);
    assert_eq!((f.size(), b.size()), (128, 128));
    // SAFETY: shm outlives the ring.
    let small = unsafe { FrontRing::<u64, u32>::new(shm.ptr, PAGE_SIZE).unwrap() };
    assert_eq!(small.size(), 256);
}

#[test]
fn shared_ring_init() {
    let shm = Shm::pages(1);
    let (f, b) = pair(&shm, PAGE_SIZE);
    assert_eq!(
        [
            shm.get(REQ_PROD),
            shm.get(REQ_EVENT),
            shm.get(RSP_PROD),
            shm.get(RSP_EVENT)
        ],
        [0, 1, 0, 1]
    );
    assert!(
        (PVT..SRING_HEADER_SIZE).all(|i| shm.byte(i) == 0),
        "pvt and __pad zeroed"
    );
    assert_eq!(shm.byte(SRING_HEADER_SIZE), 0xAA, "entries untouched");
    assert_eq!(
        (
            f.req_prod_pvt(),
            f.rsp_cons(),
            b.req_cons(),
            b.rsp_prod_pvt()
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(f.free_requests(), 32);
    assert_eq!(b.unconsumed_requests(), 0);
    assert_eq!(f.unconsumed_responses(), 0);
}

#[test]
fn attach_leaves_shared_ring_alone() {
    let shm = Shm::pages(1);
    shm.init_at(1000);
    shm.set(REQ_PROD, 1003);
    // SAFETY: shm outlives the rings.
    let (f, mut b) = unsafe {
        (
            Front::attach(shm.ptr, PAGE_SIZE, 1000).unwrap(),
            Back::attach(shm.ptr, PAGE_SIZE, 1000).unwrap(),
        )
    };
    assert_eq!((f.req_prod_pvt(), f.rsp_cons()), (1000, 1000));
    assert_eq!((b.req_cons(), b.rsp_prod_pvt()), (1000, 1000));
    assert_eq!(
        [
            shm.get(REQ_PROD),
            shm.get(REQ_EVENT),
            shm.get(RSP_PROD),
            shm.get(RSP_EVENT)
        ],
        [1003, 1001, 1000, 1001]
    );
    assert_eq!(shm.byte(PVT), 0xAA);
    assert_eq!(b.unconsumed_requests(), 3);
    assert!(b.take_request().unwrap().is_some());
}

#[test]
fn constructors_reject_bad_memory() {
    let shm = Shm::pages(MAX_RING_PAGES + 1);
    let p = shm.ptr;
    // SAFETY: the memory is valid; rejected constructors never touch it.
    unsafe {
        let misaligned = p.add(64);
        assert_eq!(
            Front::new(misaligned, PAGE_SIZE).unwrap_err(),
            Error::Invalid
        );
        assert_eq!(
            Back::new(misaligned, PAGE_SIZE).unwrap_err(),
            Error::Invalid
        );
        assert_eq!(
            Front::attach(p.add(8), PAGE_SIZE, 0).unwrap_err(),
            Error::Invalid
        );
        for bytes in [0, 1, SRING_HEADER_SIZE, SRING_HEADER_SIZE + 111] {
            assert_eq!(Front::new(p, bytes).unwrap_err(), Error::Invalid, "{bytes}");
            assert_eq!(
                Back::attach(p, bytes, 5).unwrap_err(),
                Error::Invalid,
                "{bytes}"
            );
        }
        for bytes in [
            MAX_RING_BYTES + 1,
            (MAX_RING_PAGES + 1) * PAGE_SIZE,
            usize::MAX,
        ] {
            assert_eq!(Front::new(p, bytes).unwrap_err(), Error::Invalid, "{bytes}");
            assert_eq!(Back::new(p, bytes).unwrap_err(), Error::Invalid, "{bytes}");
        }
        // Exactly one entry, and exactly the maximum, are fine.
        assert_eq!(Front::new(p, SRING_HEADER_SIZE + 112).unwrap().size(), 1);
        assert_eq!(Back::new(p, MAX_RING_BYTES).unwrap().size(), 512);
    }
}

#[test]
fn free_and_full() {
    let shm = Shm::pages(1);
    let (mut f, mut b) = pair(&shm, PAGE_SIZE);
    for i in 0..32u64 {
        assert_eq!(f.free_requests(), 32 - i as u32);
        assert!(!f.is_full());
        f.push_request(req(i)).unwrap();
    }
    assert!(f.is_full());
    assert_eq!(f.free_requests(), 0);
    assert_eq!(f.push_request(req(99)), Err(req(99)));
    assert_eq!(f.req_prod_pvt(), 32);
    // Unpublished requests are invisible to the back end.
    assert_eq!(b.take_request(), Ok(None));
    f.push_requests();
    assert_eq!(b.unconsumed_requests(), 32);
    for i in 0..32 {
        assert_eq!(b.take_request(), Ok(Some(req(i))));
    }
    assert_eq!(b.take_request(), Ok(None));
    // Consuming requests does not free slots; only consumed responses do.
    assert!(f.is_full());
    b.push_response(rsp(0)).unwrap();
    b.push_responses();
    assert!(f.is_full());
    assert_eq!(f.unconsumed_responses(), 1);
    assert_eq!(f.take_response(), Ok(Some(rsp(0))));
    assert_eq!(f.free_requests(), 1);
    assert_eq!(f.take_response(), Ok(None));
}

#[test]
fn push_response_needs_a_consumed_request() {
    let shm = Shm::pages(1);
    let (mut f, mut b) = pair(&shm, PAGE_SIZE);
    assert_eq!(b.push_response(rsp(1)), Err(rsp(1)));
    f.push_request(req(1)).unwrap();
    f.push_requests();
    assert_eq!(
        b.push_response(rsp(1)),
        Err(rsp(1)),
        "published but not consumed"
    );
    b.take_request().unwrap().unwrap();
    assert_eq!(b.requests_in_progress(), 1);
    assert_eq!(b.push_response(rsp(1)), Ok(()));
    assert_eq!(b.push_response(rsp(2)), Err(rsp(2)));
    assert_eq!(b.requests_in_progress(), 0);
}

/// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` with `req_event` at various places relative to
/// the old and new producer.
#[test]
fn request_notify_decisions() {
    // (event - old, pushed, notify)
    let cases = [
        (1, 1, true), // back asked for the next request
        (1, 3, true),
        (0, 1, false), // event already passed: back is awake
        (0, 5, false),
        (2, 1, false), // back wants a notification later
        (2, 2, true),
        (3, 2, false),
        (5, 5, true),
        (5, 4, false),
        (1, 0, false),                    // nothing new
        (0u32.wrapping_sub(7), 3, false), // event far behind
    ];
    for start in [0, 1000, u32::MAX - 1, u32::MAX] {
        for (ev, k, want) in cases {
            let shm = Shm::pages(1);
            let (mut f, _b) = pair_at(&shm, PAGE_SIZE, start);
            shm.set(REQ_EVENT, start.wrapping_add(ev));
            for i in 0..k {
                f.push_request(req(i as u64)).unwrap();
            }
            assert_eq!(
                f.push_requests_and_check_notify(),
                want,
                "start {start} event +{ev} pushed {k}"
            );
            assert_eq!(shm.get(REQ_PROD), start.wrapping_add(k));
            assert_eq!(
                shm.get(REQ_EVENT),
                start.wrapping_add(ev),
                "front never writes req_event"
            );
        }
    }
}

/// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`, likewise.
#[test]
fn response_notify_decisions() {
    let cases = [
        (1, 1, true),
        (1, 4, true),
        (0, 2, false),
        (2, 1, false),
        (2, 2, true),
        (4, 3, false),
        (1, 0, false),
    ];
    for start in [0, 77, u32::MAX - 2, u32::MAX] {
        for (ev, k, want) in cases {
            let shm = Shm::pages(1);
            let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, start);
            for i in 0..k {
                f.push_request(req(i as u64)).unwrap();
            }
            f.push_requests();
            for i in 0..k {
                assert_eq!(b.take_request(), Ok(Some(req(i as u64))));
            }
            shm.set(RSP_EVENT, start.wrapping_add(ev));
            for i in 0..k {
                b.push_response(rsp(i as u64)).unwrap();
            }
            assert_eq!(
                b.push_responses_and_check_notify(),
                want,
                "start {start} event +{ev} pushed {k}"
            );
            assert_eq!(shm.get(RSP_PROD), start.wrapping_add(k));
        }
    }
}

#[test]
fn final_check_for_requests_sets_event() {
    for start in [0, 500, u32::MAX - 1, u32::MAX] {
        let shm = Shm::pages(1);
        let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, start);
        shm.set(REQ_EVENT, 12345);
        assert!(!b.final_check_for_requests());
        assert_eq!(
            shm.get(REQ_EVENT),
            start.wrapping_add(1),
            "req_event = req_cons + 1"
        );
        // The next request must be notified, the one after it not.
        f.push_request(req(1)).unwrap();
        assert!(f.push_requests_and_check_notify());
        f.push_request(req(2)).unwrap();
        assert!(!f.push_requests_and_check_notify());
        // Work pending: final check returns true and leaves req_event alone.
        shm.set(REQ_EVENT, 12345);
        assert!(b.final_check_for_requests());
        assert_eq!(shm.get(REQ_EVENT), 12345);
        assert_eq!(b.take_request(), Ok(Some(req(1))));
        assert!(b.final_check_for_requests());
        assert_eq!(b.take_request(), Ok(Some(req(2))));
        assert!(!b.final_check_for_requests());
        assert_eq!(shm.get(REQ_EVENT), start.wrapping_add(3));
    }
}

#[test]
fn final_check_for_responses_sets_event() {
    for start in [0, 9, u32::MAX - 1, u32::MAX] {
        let shm = Shm::pages(1);
        let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, start);
        shm.set(RSP_EVENT, 4242);
        assert!(!f.final_check_for_responses());
        assert_eq!(
            shm.get(RSP_EVENT),
            start.wrapping_add(1),
            "rsp_event = rsp_cons + 1"
        );
        for i in 0..3 {
            f.push_request(req(i)).unwrap();
        }
        f.push_requests();
        for i in 0..3 {
            assert_eq!(b.take_request(), Ok(Some(req(i))));
        }
        b.push_response(rsp(0)).unwrap();
        assert!(b.push_responses_and_check_notify());
        b.push_response(rsp(1)).unwrap();
        assert!(!b.push_responses_and_check_notify());
        shm.set(RSP_EVENT, 4242);
        assert!(f.final_check_for_responses());
        assert_eq!(shm.get(RSP_EVENT), 4242);
        assert_eq!(f.take_response(), Ok(Some(rsp(0))));
        assert_eq!(f.take_response(), Ok(Some(rsp(1))));
        assert!(!f.final_check_for_responses());
        assert_eq!(shm.get(RSP_EVENT), start.wrapping_add(3));
        b.push_response(rsp(2)).unwrap();
        assert!(b.push_responses_and_check_notify());
    }
}

/// Many round trips across the `u32` wrap, in batches of varying size.
#[test]
fn wraparound() {
    // Under Miri (ci/miri) 40 rounds: still far past the 140 entries the last asserts ask for,
    // so both rings cross the `u32` wrap and reuse their slots many times; 200 rounds take half
    // a minute there.
    let rounds = if cfg!(miri) { 40 } else { 200 };
    for pages in [1, 4] {
        let bytes = pages * PAGE_SIZE;
        let start = u32::MAX - 40;
        let shm = Shm::pages(pages);
        let (mut f, mut b) = pair_at(&shm, bytes, start);
        let (mut sent, mut served, mut done) = (0u64, 0u64, 0u64);
        for round in 0..rounds {
            let batch = 1 + (round * 7 % f.size() as u64);
            for _ in 0..batch {
                if f.push_request(req(sent)).is_err() {
                    break;
                }
                sent += 1;
            }
            f.push_requests_and_check_notify();
            while let Some(r) = b.take_request().unwrap() {
                assert_eq!(r, req(served));
                b.push_response(rsp(served)).unwrap();
                served += 1;
            }
            b.push_responses_and_check_notify();
            while let Some(r) = f.take_response().unwrap() {
                assert_eq!(r, rsp(done));
                done += 1;
            }
            assert_eq!(done, sent);
            assert_eq!(f.free_requests(), f.size());
        }
        assert!(sent > u64::from(u32::MAX - start) + 100);
        assert_eq!(f.req_prod_pvt(), start.wrapping_add(sent as u32));
        assert_eq!(b.req_cons(), f.req_prod_pvt());
    }
}

#[test]
fn hostile_req_prod_is_an_overflow() {
    for start in [0, 12, u32::MAX - 3] {
        let shm = Shm::pages(1);
        let (_f, mut b) = pair_at(&shm, PAGE_SIZE, start);
        let n = b.size();
        for bad in [n + 1, n + 1000, 0x8000_0000, u32::MAX] {
            shm.set(REQ_PROD, start.wrapping_add(bad));
            assert_eq!(
                b.take_request(),
                Err(Error::RingOverflow),
                "req_prod = req_cons + {bad}"
            );
            assert_eq!(b.req_cons(), start, "nothing consumed");
            // RING_HAS_UNCONSUMED_REQUESTS is bounded by the ring size.
            assert_eq!(b.unconsumed_requests(), n);
        }
        // Exactly a full ring is legal.
        shm.set(REQ_PROD, start.wrapping_add(n));
        for _ in 0..n {
            assert!(b.take_request().unwrap().is_some());
        }
        assert_eq!(b.take_request(), Ok(None));
        // RING_REQUEST_CONS_OVERFLOW: n requests consumed, none answered.
        assert_eq!(b.unconsumed_requests(), 0);
        // One more claimed request overflows relative to rsp_prod_pvt.
        shm.set(REQ_PROD, start.wrapping_add(n + 1));
        assert_eq!(b.take_request(), Err(Error::RingOverflow));
    }
}

/// RING_REQUEST_PROD_OVERFLOW is relative to rsp_prod_pvt, not req_cons.
#[test]
fn request_prod_overflow_counts_unanswered_requests() {
    let shm = Shm::pages(1);
    let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, u32::MAX - 5);
    let n = b.size();
    for i in 0..10 {
        f.push_request(req(i)).unwrap();
    }
    f.push_requests();
    for _ in 0..10 {
        b.take_request().unwrap().unwrap();
    }
    // 10 in progress: req_prod may be at most rsp_prod_pvt + n = req_cons + n - 10.
    let cons = b.req_cons();
    shm.set(REQ_PROD, cons.wrapping_add(n - 9));
    assert_eq!(b.take_request(), Err(Error::RingOverflow));
    shm.set(REQ_PROD, cons.wrapping_add(n - 10));
    assert!(b.take_request().unwrap().is_some());
    // req_prod going backwards.
    shm.set(REQ_PROD, cons);
    let mut got = 0;
    loop {
        match b.take_request() {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("should overflow"),
            Err(e) => {
                assert_eq!(e, Error::RingOverflow);
                break;
            }
        }
    }
    assert_eq!(got, n - 11, "cached, checked requests are still served");
}

#[test]
fn hostile_rsp_prod_is_an_overflow() {
    for start in [0, u32::MAX - 1] {
        let shm = Shm::pages(1);
        let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, start);
        let n = f.size();
        for bad in [n + 1, 0x8000_0000, u32::MAX] {
            shm.set(RSP_PROD, start.wrapping_add(bad));
            assert_eq!(
                f.take_response(),
                Err(Error::RingOverflow),
                "RING_RESPONSE_PROD_OVERFLOW +{bad}"
            );
            assert_eq!(f.rsp_cons(), start);
        }
        // More responses than requests outstanding.
        shm.set(RSP_PROD, start.wrapping_add(1));
        assert_eq!(f.take_response(), Err(Error::RingOverflow));
        for i in 0..3 {
            f.push_request(req(i)).unwrap();
        }
        f.push_requests();
        shm.set(RSP_PROD, start.wrapping_add(4));
        assert_eq!(f.take_response(), Err(Error::RingOverflow));
        shm.set(RSP_PROD, start);
        for i in 0..3 {
            b.take_request().unwrap().unwrap();
            b.push_response(rsp(i)).unwrap();
        }
        b.push_responses();
        for i in 0..3 {
            assert_eq!(f.take_response(), Ok(Some(rsp(i))));
        }
        assert_eq!(f.take_response(), Ok(None));
    }
}

#[test]
fn take_request_with_visits_the_copy() {
    let shm = Shm::pages(1);
    let (mut f, mut b) = pair_at(&shm, PAGE_SIZE, u32::MAX);
    assert_eq!(b.take_request_with(|r| r.id), Ok(None));
    for i in 0..3 {
        f.push_request(req(i)).unwrap();
    }
    f.push_requests();
    assert_eq!(b.take_request_with(|r| *r), Ok(Some(req(0))));
    assert_eq!(b.take_request(), Ok(Some(req(1))));
    let seen = b
        .take_request_with(|r| {
            // The closure sees the local copy, not the slot.
            shm.write_entry(1, req(77));
            r.id
        })
        .unwrap();
    assert_eq!(seen, Some(2));
    assert_eq!(b.take_request_with(|r| r.id), Ok(None));
    assert_eq!(b.req_cons(), 2);
    shm.set(REQ_PROD, b.req_cons().wrapping_add(b.size() + 1));
    assert_eq!(b.take_request_with(|r| r.id), Err(Error::RingOverflow));
    assert_eq!(b.req_cons(), 2);
}

/// Requests are copied out once: later writes by the peer do not change what was taken.
#[test]
fn requests_are_copied_out() {
    let shm = Shm::pages(1);
    let (mut f, mut b) = pair(&shm, PAGE_SIZE);
    f.push_request(req(5)).unwrap();
    f.push_requests();
    let got = b.take_request().unwrap().unwrap();
    shm.write_entry(0, req(6));
    assert_eq!(got, req(5));
    b.push_response(rsp(5)).unwrap();
    b.push_responses();
    let r = f.take_response().unwrap().unwrap();
    shm.write_entry(0, rsp(9));
    assert_eq!(r, rsp(5));
}

/// Slots are `idx & (size - 1)`: entry `i` of the shared ring holds index `start + k`.
#[test]
fn slot_mapping() {
    let shm = Shm::pages(1);
    let start = u32::MAX - 1;
    let (mut f, _b) = pair_at(&shm, PAGE_SIZE, start);
    let mut seen = Vec::new();
    for i in 0..4u64 {
        f.push_request(req(i)).unwrap();
        let slot = (start.wrapping_add(i as u32) & 31) as usize;
        // SAFETY: slot < 32, inside the one-page ring.
        let id = unsafe {
            shm.ptr
                .as_ptr()
                .add(SRING_HEADER_SIZE + slot * 112 + 8)
                .cast::<u64>()
                .read_volatile()
        };
        seen.push((slot, id));
    }
    assert_eq!(seen, [(30, 0), (31, 1), (0, 2), (1, 3)]);
    assert!(std::format!("{f:?}").contains("req_prod_pvt"));
}
