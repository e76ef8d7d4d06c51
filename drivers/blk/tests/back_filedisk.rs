//! blkback serving a file through `xen-blk-host`'s FileDisk: completions come from worker
//! threads, many requests in flight, read back through the frontend and from the file itself.

mod back_common;

use std::rc::Rc;

use back_common::*;
use xen_blk::abi::*;
use xen_blk::back::BackOptions;
use xen_blk::storage::Storage;

#[test]
fn file_disk_served_to_a_frontend() {
    let path = std::env::temp_dir().join(format!("xenolith-back-filedisk-{}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(DISK_SECTORS * 512)
        .unwrap();
    let p = path.clone();
    let kind = DiskKind::Factory(Rc::new(move |spec| {
        assert_eq!(spec.params, "disk0");
        Box::new(xen_blk_host::open(&p, spec.read_only).unwrap()) as Box<dyn Storage>
    }));
    let mut w = World::new(BackOptions::default(), kind);
    let g = w.guest("guest");
    w.add_disk(&g, |v| v);
    let fe = g.domid();
    w.run_until("InitWait", |w| w.backend_state(fe).as_deref() == Some("2"));
    let mut f = RawFront::start(&g, w.sd.domid(), RingStyle::Order(1));
    w.run_until("Connected", |w| w.backend_state(fe).as_deref() == Some("4"));
    // 40 page writes at once (more than a one-page ring holds), then a flush.
    let n = 40u64;
    let mut reqs = Vec::new();
    let mut keep = Vec::new();
    for i in 0..n {
        let (p, gr) = f.page(i as u8 + 1, true);
        reqs.push(rw(BLKIF_OP_WRITE, i, i * 8, &[(gr, 0, 7)]));
        keep.push(p);
    }
    f.push(&reqs);
    w.run_until("written", |_| {
        f.collect();
        f.responses.len() == n as usize
    });
    assert!(f.responses.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    f.responses.clear();
    f.push(&[rw(BLKIF_OP_FLUSH_DISKCACHE, 100, 0, &[])]);
    w.run_until("flushed", |_| f.response(100).is_some());
    let stats = w.back.device(&w.be_node(fe)).unwrap().stats;
    assert!(stats.max_in_flight >= 2, "{stats:?}");
    let bytes = std::fs::read(&path).unwrap();
    for i in 0..n as usize {
        assert!(bytes[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&x| x == i as u8 + 1));
    }
    // Read back through the ring.
    let (r, gr) = f.page(0, false);
    f.push(&[rw(BLKIF_OP_READ, 200, 5 * 8, &[(gr, 0, 7)])]);
    w.run_until("read", |_| f.response(200).is_some());
    assert!(f.read_page(&r).iter().all(|&x| x == 6));
    let _ = std::fs::remove_file(&path);
}
