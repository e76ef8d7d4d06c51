//! Machine memory: allocation, frames, sharing through grants, recycling.

mod common;

use std::ptr::NonNull;

use common::{peek, perms, poke};
use xen_platform::{Error, GrantMapper, Grants, PageRun, Pages, PAGE_SIZE};
use xen_sim::{Config, Hypervisor};

#[test]
fn alloc_is_zeroed_aligned_and_writable() {
    let hv = Hypervisor::new();
    let d = hv.create_domain("a");
    let run = d.alloc(3).unwrap();
    assert_eq!(run.pages, 3);
    assert_eq!(run.addr.as_ptr() as usize % PAGE_SIZE, 0);
    for i in 0..3 {
        let p = run.page(i);
        assert!((0..PAGE_SIZE).all(|b| peek(p, b) == 0));
        poke(p, 7, i as u8 + 1);
        assert_eq!(peek(p, 7), i as u8 + 1);
    }
    assert_eq!(perms(run.addr).as_deref(), Some("rw-s"));
    assert_eq!(d.stats().unwrap().pages, 3);
    d.free(run).unwrap();
    assert_eq!(d.stats().unwrap().pages, 0);
}

#[test]
fn frame_translates_owned_pages_only() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(2).unwrap();
    let f0 = a.frame(run.page(0)).unwrap();
    let f1 = a.frame(run.page(1)).unwrap();
    assert_ne!(f0, f1);
    // Not page-aligned.
    let mid = NonNull::new(run.addr.as_ptr().wrapping_add(1)).unwrap();
    assert_eq!(a.frame(mid), Err(Error::Invalid));
    // Past the run, and another domain's page.
    let past = NonNull::new(run.addr.as_ptr().wrapping_add(2 * PAGE_SIZE)).unwrap();
    assert_eq!(a.frame(past), Err(Error::Invalid));
    assert_eq!(b.frame(run.page(0)), Err(Error::Invalid));
    // An address that is not simulator memory at all.
    let mut local = [0u8; 2 * PAGE_SIZE];
    let p = local.as_mut_ptr() as usize;
    let aligned = NonNull::new(((p + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)) as *mut u8).unwrap();
    assert_eq!(a.frame(aligned), Err(Error::Invalid));
    a.free(run).unwrap();
}

#[test]
fn bad_alloc_and_free_arguments_are_errors() {
    let hv = Hypervisor::with_config(Config {
        max_frames: 16,
        ..Config::default()
    });
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    assert_eq!(a.alloc(0).err(), Some(Error::Invalid));
    assert_eq!(a.alloc(17).err(), Some(Error::NoSpace));
    assert_eq!(a.alloc(usize::MAX).err(), Some(Error::NoSpace));
    let run = a.alloc(16).unwrap();
    assert_eq!(b.alloc(1).err(), Some(Error::NoSpace));
    // Wrong length, wrong owner: Invalid and the memory stays.
    let fake = PageRun {
        addr: run.addr,
        pages: 2,
    };
    assert_eq!(a.free(fake), Err(Error::Invalid));
    let fake = PageRun {
        addr: run.addr,
        pages: 16,
    };
    assert_eq!(b.free(fake), Err(Error::Invalid));
    poke(run.page(15), 0, 1);
    a.free(run).unwrap();
    // The frames came back.
    let again = b.alloc(16).unwrap();
    b.free(again).unwrap();
}

#[test]
fn freed_frames_are_recycled_zeroed() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(4).unwrap();
    for i in 0..4 {
        poke(run.page(i), 100, 0xAB);
    }
    let frames: Vec<_> = (0..4).map(|i| a.frame(run.page(i)).unwrap()).collect();
    let in_use = hv.frames_in_use();
    a.free(run).unwrap();
    assert_eq!(hv.frames_in_use(), in_use - 4);
    let run = b.alloc(4).unwrap();
    let mut again: Vec<_> = (0..4).map(|i| b.frame(run.page(i)).unwrap()).collect();
    again.sort_unstable();
    assert_eq!(again, frames, "frames are reused");
    for i in 0..4 {
        assert!((0..PAGE_SIZE).all(|x| peek(run.page(i), x) == 0));
    }
    b.free(run).unwrap();
}

#[test]
fn free_of_a_granted_page_is_busy_and_keeps_memory() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(2).unwrap();
    let (addr, pages) = (run.addr, run.pages);
    let f1 = a.frame(run.page(1)).unwrap();
    let g = a.grant(b.id(), f1, true).unwrap();
    assert_eq!(a.free(run), Err(Error::Busy));
    // Still ours and usable.
    let run = PageRun { addr, pages };
    poke(run.page(1), 0, 9);
    assert_eq!(a.frame(run.page(1)), Ok(f1));
    a.end(g).unwrap();
    a.free(run).unwrap();
}

#[test]
fn granter_and_mapper_share_bytes_at_different_addresses() {
    let hv = Hypervisor::new();
    let front = hv.create_domain("front");
    let back = hv.create_domain("back");
    let run = front.alloc(1).unwrap();
    let f = front.frame(run.addr).unwrap();
    let rw = front.grant(back.id(), f, false).unwrap();
    let m = back.map(front.id(), rw, false).unwrap();
    assert_ne!(m.addr, run.addr);
    assert_eq!(perms(m.addr).as_deref(), Some("rw-s"));
    poke(run.addr, 10, 0x5A);
    assert_eq!(peek(m.addr, 10), 0x5A);
    poke(m.addr, 11, 0xA5);
    assert_eq!(peek(run.addr, 11), 0xA5);

    // A read-only mapping is mapped PROT_READ.
    let ro = front.grant(back.id(), f, true).unwrap();
    let r = back.map(front.id(), ro, true).unwrap();
    assert_eq!(perms(r.addr).as_deref(), Some("r--s"));
    assert_eq!(peek(r.addr, 10), 0x5A);

    back.unmap(m).unwrap();
    back.unmap(r).unwrap();
    front.end(rw).unwrap();
    front.end(ro).unwrap();
    front.free(run).unwrap();
}
