//! Front and back end on two threads, each sleeping on a simulated event channel when its final
//! check finds nothing and woken only when the peer's push-and-check-notify says so. A lost
//! wakeup (a missing `xen_mb()`, a wrong event index) leaves both sides asleep: the wait times
//! out and the test fails instead of hanging.

mod ring_common;

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use ring_common::{Blk, Proto, Shm, Small};
use xen_platform::ring::{BackRing, FrontRing, RingIdx};

/// An event channel port: a pending bit plus a way to sleep until it is set.
#[derive(Default)]
struct Port {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Port {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }
    /// Sleep until pending (then clear it). Panics if nothing arrives for a long time: with a
    /// correct ring, the peer always notifies when it publishes something we wait for.
    fn wait(&self, who: &str) {
        let guard = self.pending.lock().unwrap();
        let (mut guard, timeout) = self
            .cv
            .wait_timeout_while(guard, Duration::from_secs(10), |p| !*p)
            .unwrap();
        assert!(!timeout.timed_out(), "{who}: lost wakeup");
        *guard = false;
    }
}

fn run<P: Proto>(pages: usize, start: RingIdx, total: u64, batch: u64) {
    let shm = Shm::pages(pages);
    shm.init_at(start);
    // SAFETY: `shm` is page aligned, `bytes` long, and outlives both rings: the threads owning
    // them are joined before it is dropped.
    let (mut front, mut back) = unsafe {
        (
            FrontRing::<P::Req, P::Rsp>::attach(shm.ptr, shm.bytes(), start).unwrap(),
            BackRing::<P::Req, P::Rsp>::attach(shm.ptr, shm.bytes(), start).unwrap(),
        )
    };
    let to_back = Arc::new(Port::default());
    let to_front = Arc::new(Port::default());

    let back_thread = {
        let (to_back, to_front) = (to_back.clone(), to_front.clone());
        thread::spawn(move || {
            let mut served = 0u64;
            let mut notifies = 0u64;
            while served < total {
                while let Some(r) = back.take_request().expect("no overflow") {
                    assert_eq!(
                        P::req_seq(&r),
                        Some(served),
                        "request out of order or corrupt"
                    );
                    back.push_response(P::rsp(served)).unwrap();
                    served += 1;
                }
                if back.push_responses_and_check_notify() {
                    notifies += 1;
                    to_front.notify();
                }
                if served < total && !back.final_check_for_requests() {
                    to_back.wait("back end");
                }
            }
            notifies
        })
    };

    let mut sent = 0u64;
    let mut done = 0u64;
    let mut notifies = 0u64;
    while done < total {
        let mut k = 0;
        while sent < total && k < batch && front.push_request(P::req(sent)).is_ok() {
            sent += 1;
            k += 1;
        }
        if front.push_requests_and_check_notify() {
            notifies += 1;
            to_back.notify();
        }
        let mut got = 0;
        while let Some(r) = front.take_response().expect("no overflow") {
            assert_eq!(
                P::rsp_seq(&r),
                Some(done),
                "response out of order or corrupt"
            );
            done += 1;
            got += 1;
        }
        // Sleep only when there is nothing to send (all sent, or the ring is full) and nothing
        // came back.
        if got == 0 && (sent == total || front.is_full()) && !front.final_check_for_responses() {
            to_front.wait("front end");
        }
    }
    let back_notifies = back_thread.join().unwrap();
    assert_eq!(front.rsp_cons(), start.wrapping_add(total as u32));
    assert!(notifies > 0 && back_notifies > 0);
}

/// `n` round trips; under Miri (ci/miri), whose data-race detector and weak-memory emulation
/// check every access of both threads (the point of running these there), a two-hundredth:
/// 500 to 1500, still across the `u32` wrap where the full run crosses it.
const fn scaled(n: u32) -> u32 {
    if cfg!(miri) {
        n / 200
    } else {
        n
    }
}

#[test]
fn blkif_one_page_across_wrap() {
    run::<Blk>(1, u32::MAX - scaled(50_000), scaled(200_000).into(), 1);
}

#[test]
fn blkif_four_pages_batched() {
    run::<Blk>(4, u32::MAX - scaled(1000), scaled(200_000).into(), 32);
}

#[test]
fn small_sixteen_pages_batched() {
    run::<Small>(16, 7, scaled(300_000).into(), 4096);
}

#[test]
fn small_one_entry_at_a_time() {
    run::<Small>(2, u32::MAX, scaled(100_000).into(), 3);
}
