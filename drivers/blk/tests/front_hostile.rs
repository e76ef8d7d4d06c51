//! blkfront against a hostile or dying backend: responses with an unknown id, a duplicate
//! id, a garbage status, a response producer that overflows the ring; a backend domain
//! destroyed mid-I/O; a backend that closes with writes in flight. In every case the device
//! fails cleanly — every outstanding request completes with an error, the error is
//! published, the frontend closes — and nothing panics or hangs.

mod front_common;

use std::time::{Duration, Instant};

use front_common::*;
use xen_blk::front::{BlkError, BlockDevice, DeviceState, Request, WaitMode};

const DISK: usize = 4 << 20;

/// Submit `n` 4 KiB reads at sectors 0, 8, ...
fn submit_reads<D: BlockDevice>(dev: &mut D, n: u64) {
    for i in 0..n {
        let b = dev.alloc_buffer(4096).unwrap();
        dev.submit(
            i,
            Request::Read {
                sector: i * 8,
                buf: b,
            },
        )
        .unwrap();
    }
}

fn hostile(b: Behaviour, requests: u64, why: &str, ok_first: bool) {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let _be = s.backend(BackKeys::from_offer(&modern_offer()), DISK, b);
    let mut dev = s.connect();
    submit_reads(&mut dev, requests);
    let mut done = collect(&mut s, &mut dev, requests as usize);
    done.sort_by_key(|c| c.tag);
    for (i, c) in done.iter().enumerate() {
        if ok_first && i == 0 {
            assert_eq!(c.result, Ok(()), "the request answered correctly completes");
        } else {
            assert_eq!(c.result, Err(BlkError::Failed), "request {i}");
        }
    }
    match s.state() {
        Some(DeviceState::Failed(w)) => assert!(w.contains(why), "{w:?} vs {why:?}"),
        other => panic!("not failed: {other:?}"),
    }
    // The error is published as xenbus_dev_fatal does, and the frontend closes.
    s.until("error published", |s| s.error().is_some());
    let err = s.error().unwrap();
    assert!(err.starts_with("71 ") && err.contains(why), "{err}");
    s.until("frontend Closed", |s| {
        s.fe_key("state").as_deref() == Some("6")
    });
    // Nothing more goes to the backend; blocking calls fail at once.
    assert_eq!(dev.read(0, &mut [0u8; 512]), Err(BlkError::Failed));
    assert!(s.front.device(XVDA).is_none());
}

#[test]
fn unknown_id_fails_the_device() {
    hostile(Behaviour::UnknownId, 2, "unknown id", false);
}

#[test]
fn duplicate_id_fails_the_device() {
    hostile(Behaviour::DuplicateId, 2, "duplicate id", true);
}

#[test]
fn garbage_status_fails_the_device() {
    hostile(Behaviour::GarbageStatus, 3, "invalid status", false);
}

#[test]
fn response_producer_overflow_fails_the_device() {
    hostile(Behaviour::ProdOverflow, 2, "overflow", false);
}

#[test]
fn a_data_page_kept_mapped_after_the_answer_fails_the_device() {
    // XSA-396: a backend that keeps a page it was granted for one request may read or write
    // it later; the frontend fails the device at once (the page stays in quarantine).
    hostile(
        Behaviour::KeepDataMapped,
        1,
        "kept a granted page mapped",
        false,
    );
}

#[test]
fn an_indirect_page_kept_mapped_after_the_answer_fails_the_device() {
    // Its request id cannot be reused while the page is mapped: before, the id was retired
    // silently, and a backend that kept doing it drained the id pool until I/O hung.
    let mut s = Setup::new(WaitMode::Event, false, false);
    let _be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::KeepIndirectMapped,
    );
    let mut dev = s.connect();
    assert!(dev.config().unwrap().indirect && !dev.config().unwrap().persistent);
    let b = dev.alloc_buffer(64 << 10).unwrap();
    dev.submit(1, Request::Read { sector: 0, buf: b }).unwrap();
    let done = collect(&mut s, &mut dev, 1);
    assert_eq!(done[0].result, Ok(()), "the data itself was served");
    match s.state() {
        Some(DeviceState::Failed(w)) => assert!(w.contains("indirect page"), "{w:?}"),
        other => panic!("not failed: {other:?}"),
    }
    assert_eq!(dev.read(0, &mut [0u8; 512]), Err(BlkError::Failed));
    s.until("error published", |s| s.error().is_some());
}

#[test]
fn backend_domain_destroyed_mid_io_fails_pending_requests() {
    for mode in [WaitMode::Event, WaitMode::Polled] {
        let mut s = Setup::new(mode, true, false);
        let base = s.guest.domain().stats().unwrap();
        let be = s.backend(
            BackKeys::from_offer(&modern_offer()),
            DISK,
            Behaviour::Honest,
        );
        let mut dev = s.connect();
        dev.write(0, &pattern(8192, 1)).unwrap();
        be.set(Behaviour::Stall);
        submit_reads(&mut dev, 4);
        let end = Instant::now() + LIMIT;
        while be.taken.load(std::sync::atomic::Ordering::SeqCst) < 5 {
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(1));
        }
        let storage = s.storage.as_ref().unwrap().domid();
        s.ts.destroy(storage).unwrap();
        let t = Instant::now();
        let done = collect(&mut s, &mut dev, 4);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(done.iter().all(|c| c.result == Err(BlkError::Failed)));
        assert!(
            matches!(
                s.state(),
                Some(DeviceState::Failed(_) | DeviceState::Closed)
            ),
            "{:?}",
            s.state()
        );
        // A blocking call on the dead device fails at once, it does not hang.
        let t = Instant::now();
        assert!(dev.read(0, &mut [0u8; 512]).is_err());
        assert!(t.elapsed() < Duration::from_secs(1));
        // The guest gets back every page, grant and event channel it gave the dead backend,
        // and the failed reads' buffers once the application drops them (no further call on
        // the device needed: the bus's service takes them back).
        drop(done);
        drop(dev);
        let released = s.until_or_timeout(|s| s.guest.domain().stats().unwrap() == base);
        assert!(released, "{base:?} then {:?}", s.guest.domain().stats());
    }
}

#[test]
fn blocking_call_on_a_silent_backend_times_out() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let _be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Stall,
    );
    let mut dev = s.connect();
    dev.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(dev.read(0, &mut [0u8; 4096]), Err(BlkError::Timeout));
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// A backend that goes Closing and never comes back: the writes it did not answer wait for it
/// (blkfront parks them) and fail after the reconnect timeout; the ones it answered stay on
/// the disk.
#[test]
fn backend_closing_for_good_fails_unanswered_writes_and_keeps_answered_ones() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    // Two writes acknowledged.
    dev.write(0, &pattern(4096, 1)).unwrap();
    dev.write(8, &pattern(4096, 2)).unwrap();
    // Three more in flight, never answered.
    be.set(Behaviour::Stall);
    for i in 0..3u64 {
        let mut b = dev.alloc_buffer(4096).unwrap();
        b.as_mut_slice()
            .copy_from_slice(&pattern(4096, 10 + i as u8));
        dev.submit(
            i,
            Request::Write {
                sector: 64 + i * 8,
                buf: b,
            },
        )
        .unwrap();
    }
    let end = Instant::now() + LIMIT;
    while be.taken.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The backend goes Closing (as libxl's detach writes it).
    s.ts.with_xs(|xs| {
        use xen_bus::store::client::Store;
        xs.write(&format!("{}/state", s.backend_path), b"5")
            .unwrap()
    });
    s.until("parked", |s| s.state() == Some(DeviceState::Reconnecting));
    let t = Instant::now();
    let done = collect(&mut s, &mut dev, 3);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|c| c.result == Err(BlkError::Failed)));
    assert!(
        t.elapsed() + Duration::from_millis(300) >= RECONNECT,
        "failed before the reconnect timeout"
    );
    assert_eq!(s.state(), Some(DeviceState::Closed));
    // The acknowledged writes are on the disk.
    let disk = be.disk.lock().unwrap();
    assert_eq!(&disk[..4096], &pattern(4096, 1)[..]);
    assert_eq!(&disk[4096..8192], &pattern(4096, 2)[..]);
}

/// XSA-396/403: what a backend can read and write of the application's memory. In every mode
/// (persistent grants or not, backend trusted or not) a backend that writes every data page
/// it can still map after answering (`Behaviour::Scribble`) cannot change a buffer the
/// application got back; only with a trusted backend and no persistent grants are the
/// application's own whole pages ever granted (for the request), and never a page a request
/// covers only in part.
#[test]
fn a_backend_cannot_reach_the_applications_memory_after_a_request() {
    for (persistent, trusted) in [(true, true), (true, false), (false, true), (false, false)] {
        let what = format!("persistent {persistent}, trusted {trusted}");
        let mut s = Setup::with_vbd(
            WaitMode::Event,
            false,
            xen_blk::front::DEFAULT_LIMITS,
            |mut v| {
                v.trusted = trusted;
                v
            },
        );
        let mut offer = modern_offer();
        offer.persistent = persistent;
        let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Scribble);
        let mut dev = s.connect();
        assert_eq!(dev.config().unwrap().persistent, persistent, "{what}");
        // Two whole pages and a 512-byte tail.
        let len = 2 * 4096 + 512;
        let data = pattern(len, 7);
        let mut a = dev.alloc_buffer(len).unwrap();
        a.as_mut_slice().copy_from_slice(&data);
        let a_frames = frames(&s, &a);
        dev.submit(1, Request::Write { sector: 0, buf: a }).unwrap();
        let a = collect(&mut s, &mut dev, 1).remove(0);
        assert_eq!(a.result, Ok(()), "{what}");
        let b = dev.alloc_buffer(len).unwrap();
        let b_frames = frames(&s, &b);
        dev.submit(2, Request::Read { sector: 0, buf: b }).unwrap();
        let b = collect(&mut s, &mut dev, 1).remove(0);
        assert_eq!(b.result, Ok(()), "{what}");
        let b = b.buf.unwrap();
        assert!(b.as_slice() == data.as_slice(), "{what}: read back");
        // Another request: the backend first writes over every page it can still map.
        let c = dev.alloc_buffer(4096).unwrap();
        dev.submit(3, Request::Read { sector: 64, buf: c }).unwrap();
        assert_eq!(collect(&mut s, &mut dev, 1)[0].result, Ok(()), "{what}");
        assert!(
            b.as_slice() == data.as_slice(),
            "{what}: the backend changed a buffer the application holds"
        );
        let scribbled = be.scribbled.load(std::sync::atomic::Ordering::SeqCst);
        // With persistent grants it keeps (and here abuses) its mappings of our bounce
        // pages. (Without, the refs it names were ended and may be reused by the guest for
        // the request in flight, which it may write anyway.)
        if persistent {
            assert!(scribbled > 0, "{what}: no page written later");
        }
        // What was ever granted of the application's pages.
        let granted = s.plat.granted_frames.lock().unwrap().clone();
        let exposed = |f: &[u64]| -> Vec<bool> { f.iter().map(|x| granted.contains(x)).collect() };
        let whole_pages_granted = trusted && !persistent;
        for f in [&a_frames, &b_frames] {
            assert_eq!(
                exposed(f),
                [whole_pages_granted, whole_pages_granted, false],
                "{what}: frames of the application's buffer granted"
            );
        }
        let _ = dev.free_buffer(b);
    }
}

/// The frame of each page of `buf`.
fn frames(s: &Setup, buf: &xen_blk::front::Buffer) -> Vec<u64> {
    use xen_platform::Pages;
    (0..buf.capacity() / 4096)
        .map(|i| {
            let at = std::ptr::NonNull::new(buf.addr().as_ptr().wrapping_add(i * 4096)).unwrap();
            s.plat.dom.frame(at).unwrap()
        })
        .collect()
}
