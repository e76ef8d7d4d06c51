//! Many threads at once: no lost wakeups, no leaks, no deadlocks.

mod common;

use std::thread;
use std::time::Duration;

use common::{peek, poke};
use xen_platform::{Error, Events, GrantMapper, Grants, Pages};
use xen_sim::Hypervisor;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn ping_pong_between_two_threads_loses_no_wakeup() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let pa = a.alloc_unbound(b.id()).unwrap();
    let pb = b.bind_interdomain(a.id(), pa).unwrap();
    b.clear(pb);
    const ROUNDS: usize = 2000;
    let pong = {
        let b = b.clone();
        thread::spawn(move || {
            for _ in 0..ROUNDS {
                assert_eq!(b.wait(&[pb], Some(LONG)), Ok(pb));
                b.clear(pb);
                b.notify(pb).unwrap();
            }
        })
    };
    for _ in 0..ROUNDS {
        a.notify(pa).unwrap();
        assert_eq!(a.wait(&[pa], Some(LONG)), Ok(pa));
        a.clear(pa);
    }
    pong.join().unwrap();
}

#[test]
fn concurrent_grant_map_unmap_end_leaves_nothing_behind() {
    let hv = Hypervisor::new();
    let back = hv.create_domain("back");
    let fronts: Vec<_> = (0..4)
        .map(|i| hv.create_domain(&format!("front{i}")))
        .collect();
    let workers: Vec<_> = fronts
        .iter()
        .cloned()
        .map(|front| {
            let back = back.clone();
            thread::spawn(move || {
                for round in 0..200u32 {
                    let run = front.alloc(2).unwrap();
                    poke(run.page(1), 0, round as u8);
                    let f = front.frame(run.page(1)).unwrap();
                    let g = front.grant(back.id(), f, true).unwrap();
                    let m = back.map(front.id(), g, true).unwrap();
                    assert_eq!(peek(m.addr, 0), round as u8);
                    assert_eq!(front.end(g), Err(Error::Busy));
                    back.unmap(m).unwrap();
                    front.end(g).unwrap();
                    front.free(run).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for f in &fronts {
        let s = f.stats().unwrap();
        assert_eq!((s.pages, s.grants), (0, 0));
    }
    assert_eq!(back.stats().unwrap().mappings, 0);
    assert_eq!(hv.frames_in_use(), 0);
}

#[test]
fn destroying_a_busy_peer_never_hangs_or_crashes() {
    for _ in 0..20 {
        let hv = Hypervisor::new();
        let back = hv.create_domain("back");
        let front = hv.create_domain("front");
        let run = front.alloc(1).unwrap();
        let f = front.frame(run.addr).unwrap();
        let g = front.grant(back.id(), f, false).unwrap();
        let pf = front.alloc_unbound(back.id()).unwrap();
        let pb = back.bind_interdomain(front.id(), pf).unwrap();
        // The backend keeps mapping, touching and unmapping until its domain dies.
        let worker = {
            let back = back.clone();
            let fid = front.id();
            thread::spawn(move || loop {
                match back.map(fid, g, false) {
                    Ok(m) => {
                        poke(m.addr, 0, 1);
                        let _ = back.notify(pb);
                        if back.unmap(m).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            })
        };
        thread::sleep(Duration::from_millis(2));
        back.destroy().unwrap();
        worker.join().unwrap();
        front.end(g).unwrap();
        front.free(run).unwrap();
        assert_eq!(front.notify(pf), Err(Error::PeerGone));
    }
}
