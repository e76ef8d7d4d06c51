//! Benchmarks that print ratios against baselines measured in the same run.
//!
//! The ring benchmark (`cargo bench -p xenolith-benches`, `benches/ring.rs`) compares
//! [`FrontRing`]/[`BackRing`] with the same work done by Xen's `ring.h` macros in C
//! (`c/ring_harness.c`, built by `build.rs` against the installed headers), on rings shared
//! between two domains of the simulator.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_platform::abi::Pod;
use xen_platform::ring::{BackRing, FrontRing};
use xen_platform::{GrantMapper, GrantRef, Grants, MultiMapping, PageRun, Pages, PAGE_SIZE};
use xen_sim::{Domain, Hypervisor};

/// One segment of [`BenchReq`] (`blkif_request_segment`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSeg {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First sector in the page.
    pub first_sect: u8,
    /// Last sector in the page.
    pub last_sect: u8,
    /// Padding.
    pub pad: u16,
}

/// A request shaped like `blkif_request` on x86_64 (112 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchReq {
    /// Operation.
    pub operation: u8,
    /// Number of segments.
    pub nr_segments: u8,
    /// Device handle.
    pub handle: u16,
    /// Padding.
    pub pad: u32,
    /// Request id, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Segments.
    pub seg: [BenchSeg; 11],
}
// SAFETY: repr(C), integer fields only, no implicit padding.
unsafe impl Pod for BenchReq {}
const _: () = assert!(size_of::<BenchReq>() == 112);

/// A response shaped like `blkif_response` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchRsp {
    /// Id of the request answered.
    pub id: u64,
    /// Its operation.
    pub operation: u8,
    /// Padding.
    pub pad0: u8,
    /// Status.
    pub status: i16,
    /// Padding.
    pub pad1: u32,
}
// SAFETY: repr(C), integer fields only, no implicit padding.
unsafe impl Pod for BenchRsp {}
const _: () = assert!(size_of::<BenchRsp>() == 16);

/// What every request looks like before its per-request fields are set: 11 segments, segment
/// `i` with gref `i` and sectors `(i & 7)..=7`. Both harnesses get it as runtime data (see
/// [`request`]).
pub const TEMPLATE: BenchReq = {
    let mut seg = [BenchSeg {
        gref: 0,
        first_sect: 0,
        last_sect: 7,
        pad: 0,
    }; 11];
    let mut i = 0;
    while i < 11 {
        seg[i].gref = i as u32;
        seg[i].first_sect = (i & 7) as u8;
        i += 1;
    }
    BenchReq {
        operation: 0,
        nr_segments: 11,
        handle: 0x51,
        pad: 0,
        id: 0,
        sector_number: 0,
        seg,
    }
};

/// The request the C harness writes for `id`: a copy of `tmpl` with the per-request fields
/// set (every byte of the entry is written). The template is runtime data in both harnesses,
/// so that both compilers emit a plain 112-byte copy rather than their own constant-store
/// sequences (GCC zeroes with `rep stos`, LLVM merges stores), which would dwarf the ring.
#[inline(always)]
pub fn request(tmpl: &BenchReq, id: u64) -> BenchReq {
    BenchReq {
        operation: (id & 1) as u8,
        id,
        sector_number: id.wrapping_mul(88),
        ..*tmpl
    }
}

/// What the back end does with its copy of each request before answering it (the C harness's
/// `WORK_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Work {
    /// Answer with its id. `BackRing::take_request` copies the whole entry regardless; GCC
    /// loads only the id and operation out of `RING_COPY_REQUEST`'s volatile struct copy.
    Id = 0,
    /// Hand the copy to [`validate`] (the C harness's out-of-line `bench_validate`, called by
    /// both harnesses) and answer with its verdict: both read every byte, and the checks cost
    /// the same machine code on both sides.
    Validate = 1,
}

/// blkback's per-request checks on every field: 0 if well formed, -1 if not. This is the C
/// harness's `bench_validate`, so that both harnesses run the same code for it.
pub fn validate(req: &BenchReq) -> i16 {
    // SAFETY: `req` is a valid BenchReq (repr(C), the layout of struct bench_req), only read.
    unsafe { c::bench_validate(req) }
}

mod c {
    extern "C" {
        pub fn c_ring_run(
            front_view: *mut u8,
            back_view: *mut u8,
            bytes: usize,
            n: u64,
            batch: core::ffi::c_ulong,
            tmpl: *const crate::BenchReq,
            work: core::ffi::c_int,
            notifies: *mut u64,
        ) -> i64;
        pub fn c_ring_size(bytes: usize) -> core::ffi::c_uint;
        pub fn bench_validate(req: *const crate::BenchReq) -> i16;
    }
}

/// A shared ring of `pages` pages between two simulator domains: the front domain allocates
/// and grants the pages, the back domain maps them (at another address) with `map_multi`.
pub struct SimRing {
    _hv: Arc<Hypervisor>,
    front_dom: Domain,
    back_dom: Domain,
    run: Option<PageRun>,
    refs: Vec<GrantRef>,
    mapping: Option<MultiMapping>,
}

impl SimRing {
    /// Set up the two domains and the ring pages.
    pub fn new(pages: usize) -> Self {
        let hv = Hypervisor::new();
        let front_dom = hv.create_domain("front");
        let back_dom = hv.create_domain("back");
        let run = front_dom.alloc(pages).expect("alloc ring pages");
        let refs: Vec<GrantRef> = (0..pages)
            .map(|i| {
                let frame = front_dom.frame(run.page(i)).expect("frame");
                front_dom.grant(back_dom.id(), frame, false).expect("grant")
            })
            .collect();
        let mapping = back_dom
            .map_multi(front_dom.id(), &refs, false)
            .expect("map_multi");
        assert_eq!(mapping.pages, pages);
        SimRing {
            _hv: hv,
            front_dom,
            back_dom,
            run: Some(run),
            refs,
            mapping: Some(mapping),
        }
    }

    /// Size of the ring in bytes.
    pub fn bytes(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.pages * PAGE_SIZE)
    }

    /// The front domain's address of the ring.
    pub fn front_view(&self) -> NonNull<u8> {
        self.run.as_ref().expect("live").addr
    }

    /// The back domain's address of the ring.
    pub fn back_view(&self) -> NonNull<u8> {
        self.mapping.as_ref().expect("live").addr
    }
}

impl Drop for SimRing {
    fn drop(&mut self) {
        if let Some(m) = self.mapping.take() {
            let _ = self.back_dom.unmap_multi(m);
        }
        for &r in &self.refs {
            let _ = self.front_dom.end(r);
        }
        if let Some(run) = self.run.take() {
            let _ = self.front_dom.free(run);
        }
    }
}

/// What a run did: elapsed time and the notifications the check-notify calls asked for.
#[derive(Debug, Clone, Copy)]
pub struct RunStats {
    /// Time for the whole run.
    pub elapsed: Duration,
    /// Notifications requested (front and back together).
    pub notifies: u64,
}

/// `RING_SIZE` for [`BenchReq`]/[`BenchRsp`] in `bytes`, computed by the C macros.
pub fn c_ring_size(bytes: usize) -> u32 {
    // SAFETY: a pure computation.
    unsafe { c::c_ring_size(bytes) }
}

/// `n` round trips in batches of `batch` with the C macros (`c/ring_harness.c`), the back end
/// doing `work` with each request.
pub fn c_run(ring: &SimRing, n: u64, batch: u64, work: Work) -> RunStats {
    let mut notifies = 0u64;
    // SAFETY: both views are live mappings of the same `bytes` bytes for the duration of the
    // call (SimRing keeps them), page aligned, and nothing else uses them meanwhile.
    let ns = unsafe {
        c::c_ring_run(
            ring.front_view().as_ptr(),
            ring.back_view().as_ptr(),
            ring.bytes(),
            n,
            batch as core::ffi::c_ulong,
            &std::hint::black_box(TEMPLATE),
            work as core::ffi::c_int,
            &mut notifies,
        )
    };
    assert!(ns >= 0, "C harness: protocol error");
    RunStats {
        elapsed: Duration::from_nanos(ns as u64),
        notifies,
    }
}

/// `n` round trips in batches of `batch` with [`FrontRing`]/[`BackRing`]: the same loops as
/// the C harness (front writes and pushes with check-notify; back serves everything, pushes
/// with check-notify, final check; front consumes everything, final check). The back end takes
/// requests with `take_request_with`, which hands the local copy over in place.
pub fn rust_run(ring: &SimRing, n: u64, batch: u64, work: Work) -> RunStats {
    // The kind of work is a constant of each loop here; the C loop tests it per request (a
    // perfectly predicted branch), and in both modes GCC then copies the whole request out,
    // since the copy may be handed to bench_validate.
    match work {
        Work::Id => rust_run_with::<0>(ring, n, batch),
        Work::Validate => rust_run_with::<1>(ring, n, batch),
    }
}

fn rust_run_with<const WORK: i32>(ring: &SimRing, n: u64, batch: u64) -> RunStats {
    // SAFETY: the front view is the front domain's live, page-aligned run of `bytes` bytes, the
    // back view the back domain's mapping of the same pages; SimRing keeps both alive beyond
    // this function, which is the rings' whole life.
    let (mut front, mut back) = unsafe {
        (
            FrontRing::<BenchReq, BenchRsp>::new(ring.front_view(), ring.bytes()).unwrap(),
            BackRing::<BenchReq, BenchRsp>::new(ring.back_view(), ring.bytes()).unwrap(),
        )
    };
    let tmpl = std::hint::black_box(TEMPLATE);
    let mut next_id = 0u64;
    let mut expect_id = 0u64;
    let mut notifies = 0u64;

    let t0 = Instant::now();
    while expect_id < n {
        // Front: write up to `batch` requests, push and check notify.
        let k = batch.min(n - next_id);
        for _ in 0..k {
            if front.push_request(request(&tmpl, next_id)).is_err() {
                break;
            }
            next_id += 1;
        }
        notifies += u64::from(front.push_requests_and_check_notify());

        // Back: serve everything, push, final check.
        loop {
            while let Some(rsp) = back
                .take_request_with(|req| {
                    let status = if WORK == Work::Validate as i32 {
                        validate(req)
                    } else {
                        0
                    };
                    BenchRsp {
                        id: req.id,
                        operation: req.operation,
                        pad0: 0,
                        status,
                        pad1: 0,
                    }
                })
                .expect("bad front end")
            {
                if back.push_response(rsp).is_err() {
                    unreachable!("a response for every request taken");
                }
            }
            notifies += u64::from(back.push_responses_and_check_notify());
            if !back.final_check_for_requests() {
                break;
            }
        }

        // Front: consume everything, final check.
        loop {
            while let Some(rsp) = front.take_response().expect("bad back end") {
                assert!(rsp.id == expect_id && rsp.status == 0, "bad response");
                expect_id += 1;
            }
            if !front.final_check_for_responses() {
                break;
            }
        }
    }
    let elapsed = t0.elapsed();
    RunStats { elapsed, notifies }
}
