//! Grant-table rules: granting, mapping, ending, batches, multi-page maps and copies.

mod common;

use common::{peek, poke};
use xen_platform::{
    CopyPtr, Error, GrantCopy, GrantMapper, GrantRef, Grants, Mapping, Pages, MAX_MULTI_MAP,
    PAGE_SIZE,
};
use xen_sim::{Config, Hypervisor, NR_RESERVED_REFS};

#[test]
fn refs_start_after_the_reserved_entries() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(1).unwrap();
    let f = a.frame(run.addr).unwrap();
    let g = a.grant(b.id(), f, false).unwrap();
    assert_eq!(g, NR_RESERVED_REFS);
    assert_eq!(g, 8);
    // Reserved entries are never in use unless set explicitly.
    for r in 0..NR_RESERVED_REFS {
        assert_eq!(b.map(a.id(), r, true).err(), Some(Error::NotFound));
    }
}

#[test]
fn map_of_a_ref_not_in_use_is_not_found() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    assert_eq!(b.map(a.id(), 8, true).err(), Some(Error::NotFound));
    assert_eq!(b.map(a.id(), 123_456, true).err(), Some(Error::NotFound));
    assert_eq!(
        b.map(a.id(), GrantRef::MAX, true).err(),
        Some(Error::NotFound)
    );
    // An ended ref is no longer in use.
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    a.end(g).unwrap();
    assert_eq!(b.map(a.id(), g, true).err(), Some(Error::NotFound));
}

#[test]
fn map_of_a_ref_granted_to_another_domain_is_denied() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let c = hv.create_domain("c");
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    assert_eq!(c.map(a.id(), g, true).err(), Some(Error::PermissionDenied));
    assert_eq!(c.map(a.id(), g, false).err(), Some(Error::PermissionDenied));
    // The granter itself is not the grantee either.
    assert_eq!(a.map(a.id(), g, true).err(), Some(Error::PermissionDenied));
    // A granter that does not exist.
    assert_eq!(b.map(77, g, true).err(), Some(Error::NoSuchDomain));
    let m = b.map(a.id(), g, true).unwrap();
    b.unmap(m).unwrap();
}

#[test]
fn writable_map_of_a_readonly_grant_is_denied() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), true).unwrap();
    assert_eq!(b.map(a.id(), g, false).err(), Some(Error::PermissionDenied));
    let m = b.map(a.id(), g, true).unwrap();
    assert!(m.readonly);
    b.unmap(m).unwrap();
    a.end(g).unwrap();
}

#[test]
fn end_while_mapped_is_busy_and_the_grant_stays() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    let m1 = b.map(a.id(), g, false).unwrap();
    let m2 = b.map(a.id(), g, true).unwrap();
    assert_eq!(a.end(g), Err(Error::Busy));
    // Still valid: a third mapping works and sees the same page.
    poke(run.addr, 0, 3);
    let m3 = b.map(a.id(), g, true).unwrap();
    assert_eq!(peek(m3.addr, 0), 3);
    b.unmap(m1).unwrap();
    b.unmap(m3).unwrap();
    assert_eq!(a.end(g), Err(Error::Busy));
    b.unmap(m2).unwrap();
    a.end(g).unwrap();
    assert_eq!(a.stats().unwrap().grants, 0);
}

#[test]
fn end_of_an_unused_ref_is_not_found() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    assert_eq!(a.end(8), Err(Error::NotFound));
    assert_eq!(a.end(0), Err(Error::NotFound));
    assert_eq!(a.end(GrantRef::MAX), Err(Error::NotFound));
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    a.end(g).unwrap();
    assert_eq!(a.end(g), Err(Error::NotFound));
    // Only the granter's table is affected: b has no such ref.
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    assert_eq!(b.end(g), Err(Error::NotFound));
    a.end(g).unwrap();
}

#[test]
fn only_owned_frames_can_be_granted() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let ra = a.alloc(1).unwrap();
    let rb = b.alloc(1).unwrap();
    let fb = b.frame(rb.addr).unwrap();
    // Someone else's frame.
    assert_eq!(a.grant(b.id(), fb, false), Err(Error::PermissionDenied));
    // A frame nobody owns (never allocated, or freed).
    assert_eq!(a.grant(b.id(), 1 << 40, false), Err(Error::Invalid));
    let fa = a.frame(ra.addr).unwrap();
    a.free(ra).unwrap();
    assert_eq!(a.grant(b.id(), fa, false), Err(Error::Invalid));
    // Reserved domids are not grantees.
    assert_eq!(b.grant(0x7FF1, fb, false), Err(Error::Invalid));
    assert_eq!(a.stats().unwrap().grants, 0);
}

#[test]
fn grant_refs_run_out_with_no_space() {
    let hv = Hypervisor::with_config(Config {
        grant_entries: 64,
        ..Config::default()
    });
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(1).unwrap();
    let f = a.frame(run.addr).unwrap();
    let refs: Vec<_> = (0..56).map(|_| a.grant(b.id(), f, true).unwrap()).collect();
    assert_eq!(refs.first(), Some(&8));
    assert_eq!(refs.last(), Some(&63));
    assert_eq!(a.grant(b.id(), f, true), Err(Error::NoSpace));
    a.end(refs[10]).unwrap();
    assert_eq!(a.grant(b.id(), f, true), Ok(refs[10]));
    assert_eq!(a.grant(b.id(), f, true), Err(Error::NoSpace));
}

#[test]
fn grant_refs_run_out_at_the_default_limit() {
    let hv = Hypervisor::new();
    let limit = hv.config().grant_entries;
    let a = hv.create_domain("a");
    let run = a.alloc(1).unwrap();
    let f = a.frame(run.addr).unwrap();
    for _ in NR_RESERVED_REFS..limit {
        a.grant(0, f, true).unwrap();
    }
    assert_eq!(a.grant(0, f, true), Err(Error::NoSpace));
}

#[test]
fn end_batch_ends_what_it_can_and_reports_the_rest() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let run = a.alloc(4).unwrap();
    let refs: Vec<_> = (0..4)
        .map(|i| {
            let f = a.frame(run.page(i)).unwrap();
            a.grant(b.id(), f, false).unwrap()
        })
        .collect();
    let m = b.map(a.id(), refs[1], false).unwrap();
    let batch = [refs[0], refs[1], 4000, refs[2], refs[3]];
    let mut failed = Vec::new();
    let n = a.end_batch(&batch, &mut |r, e| failed.push((r, e)));
    assert_eq!(n, 2);
    assert_eq!(
        failed,
        vec![(refs[1], Error::Busy), (4000, Error::NotFound)]
    );
    // The busy one is still granted, the others are gone.
    assert_eq!(a.stats().unwrap().grants, 1);
    assert_eq!(b.map(a.id(), refs[0], true).err(), Some(Error::NotFound));
    b.unmap(m).unwrap();
    assert_eq!(a.end_batch(&[refs[1]], &mut |_, _| panic!("no failure")), 0);
    a.free(run).unwrap();
}

#[test]
fn unmap_checks_the_handle() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let b = hv.create_domain("b");
    let c = hv.create_domain("c");
    let run = a.alloc(1).unwrap();
    let g = a.grant(b.id(), a.frame(run.addr).unwrap(), false).unwrap();
    let m = b.map(a.id(), g, true).unwrap();
    // A forged mapping: unknown handle, and a known handle with the wrong details.
    let forged = Mapping {
        addr: m.addr,
        handle: m.handle + 1000,
        domid: m.domid,
        gref: m.gref,
        readonly: true,
    };
    assert_eq!(b.unmap(forged), Err(Error::NotFound));
    let forged = Mapping {
        addr: m.addr,
        handle: m.handle,
        domid: m.domid,
        gref: m.gref + 1,
        readonly: true,
    };
    assert_eq!(b.unmap(forged), Err(Error::Invalid));
    // Another domain cannot unmap it.
    let stolen = Mapping {
        addr: m.addr,
        handle: m.handle,
        domid: m.domid,
        gref: m.gref,
        readonly: true,
    };
    assert_eq!(c.unmap(stolen), Err(Error::NotFound));
    assert_eq!(b.stats().unwrap().mappings, 1);
    b.unmap(m).unwrap();
    a.end(g).unwrap();
}

#[test]
fn reserved_entries_can_be_set_by_the_builder() {
    let hv = Hypervisor::new();
    let dom0 = hv.create_domain("Domain-0");
    let guest = hv.create_domain("guest");
    let run = guest.alloc(1).unwrap();
    let f = guest.frame(run.addr).unwrap();
    guest.grant_reserved(1, dom0.id(), f, false).unwrap();
    assert_eq!(
        guest.grant_reserved(1, dom0.id(), f, false),
        Err(Error::Busy)
    );
    assert_eq!(
        guest.grant_reserved(8, dom0.id(), f, false),
        Err(Error::Invalid)
    );
    poke(run.addr, 1, 1);
    let m = dom0.map(guest.id(), 1, false).unwrap();
    assert_eq!(peek(m.addr, 1), 1);
    assert_eq!(guest.end(1), Err(Error::Busy));
    dom0.unmap(m).unwrap();
    guest.end(1).unwrap();
    // A reserved ref never goes to the free list.
    let g = guest.grant(dom0.id(), f, false).unwrap();
    assert_eq!(g, 8);
}

#[test]
fn map_multi_maps_consecutively_and_is_all_or_nothing() {
    let hv = Hypervisor::new();
    let front = hv.create_domain("front");
    let back = hv.create_domain("back");
    let other = hv.create_domain("other");
    let run = front.alloc(4).unwrap();
    let mut refs = Vec::new();
    for i in 0..4 {
        poke(run.page(i), 0, i as u8 + 1);
        let f = front.frame(run.page(i)).unwrap();
        refs.push(front.grant(back.id(), f, false).unwrap());
    }
    let mm = back.map_multi(front.id(), &refs, false).unwrap();
    assert_eq!(mm.pages, 4);
    for i in 0..4 {
        let p = std::ptr::NonNull::new(mm.addr.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap();
        assert_eq!(peek(p, 0), i as u8 + 1);
    }
    assert_eq!(back.stats().unwrap().mappings, 4);
    assert_eq!(front.end(refs[2]), Err(Error::Busy));

    // One bad ref: nothing mapped.
    let f = front.frame(run.page(0)).unwrap();
    let to_other = front.grant(other.id(), f, false).unwrap();
    let bad = [refs[0], refs[1], to_other];
    assert_eq!(
        back.map_multi(front.id(), &bad, false).err(),
        Some(Error::PermissionDenied)
    );
    assert_eq!(
        back.map_multi(front.id(), &[refs[0], 5000], true).err(),
        Some(Error::NotFound)
    );
    assert_eq!(back.stats().unwrap().mappings, 4);
    // Sizes.
    assert_eq!(
        back.map_multi(front.id(), &[], true).err(),
        Some(Error::Invalid)
    );
    let too_many = [refs[0]; MAX_MULTI_MAP + 1];
    assert_eq!(
        back.map_multi(front.id(), &too_many, true).err(),
        Some(Error::Invalid)
    );

    back.unmap_multi(mm).unwrap();
    assert_eq!(back.stats().unwrap().mappings, 0);
    for r in refs {
        front.end(r).unwrap();
    }
    front.end(to_other).unwrap();
    front.free(run).unwrap();
}

fn status_vec(n: usize) -> Vec<xen_platform::Result<()>> {
    vec![Err(Error::Invalid); n]
}

#[test]
fn copy_checks_permissions_and_bounds_per_op() {
    let hv = Hypervisor::new();
    let front = hv.create_domain("front");
    let back = hv.create_domain("back");
    let stranger = hv.create_domain("stranger");
    let fr = front.alloc(2).unwrap();
    let br = back.alloc(1).unwrap();
    let bf = back.frame(br.addr).unwrap();
    let f0 = front.frame(fr.page(0)).unwrap();
    let f1 = front.frame(fr.page(1)).unwrap();
    let ro = front.grant(back.id(), f0, true).unwrap();
    let rw = front.grant(back.id(), f1, false).unwrap();
    let elsewhere = front.grant(stranger.id(), f1, false).unwrap();
    for i in 0..16 {
        poke(fr.page(0), i, 0x10 + i as u8);
        poke(br.addr, i, 0x80 + i as u8);
    }
    let foreign = |gref, offset| CopyPtr::Foreign {
        domid: front.id(),
        gref,
        offset,
    };
    let local = |frame, offset| CopyPtr::Local { frame, offset };
    let ops = [
        // 0: read a read-only grant into our page: ok.
        GrantCopy {
            source: foreign(ro, 0),
            dest: local(bf, 100),
            len: 8,
        },
        // 1: write our bytes into a writable grant: ok.
        GrantCopy {
            source: local(bf, 0),
            dest: foreign(rw, 200),
            len: 4,
        },
        // 2: write into a read-only grant: denied.
        GrantCopy {
            source: local(bf, 0),
            dest: foreign(ro, 0),
            len: 4,
        },
        // 3: a grant to another domain: denied.
        GrantCopy {
            source: foreign(elsewhere, 0),
            dest: local(bf, 0),
            len: 4,
        },
        // 4: a ref not in use.
        GrantCopy {
            source: foreign(999, 0),
            dest: local(bf, 0),
            len: 4,
        },
        // 5: offset + len beyond the page.
        GrantCopy {
            source: foreign(ro, 4000),
            dest: local(bf, 0),
            len: 97,
        },
        // 6: exactly to the end of the page: ok.
        GrantCopy {
            source: foreign(ro, 4000),
            dest: local(bf, 4000),
            len: 96,
        },
        // 7: a local frame we do not own.
        GrantCopy {
            source: local(f0, 0),
            dest: local(bf, 0),
            len: 4,
        },
        // 8: a granter that does not exist.
        GrantCopy {
            source: CopyPtr::Foreign {
                domid: 999,
                gref: ro,
                offset: 0,
            },
            dest: local(bf, 0),
            len: 4,
        },
    ];
    let mut status = status_vec(ops.len());
    back.copy(&ops, &mut status).unwrap();
    assert_eq!(
        status,
        vec![
            Ok(()),
            Ok(()),
            Err(Error::PermissionDenied),
            Err(Error::PermissionDenied),
            Err(Error::NotFound),
            Err(Error::Invalid),
            Ok(()),
            Err(Error::PermissionDenied),
            Err(Error::NoSuchDomain),
        ]
    );
    for i in 0..8 {
        assert_eq!(peek(br.addr, 100 + i), 0x10 + i as u8);
    }
    for i in 0..4 {
        assert_eq!(peek(fr.page(1), 200 + i), 0x80 + i as u8);
    }
    // Failed ops wrote nothing.
    assert_eq!(peek(fr.page(0), 0), 0x10);
    // A status slice shorter than the ops is an error as a whole.
    let mut short = status_vec(1);
    assert_eq!(back.copy(&ops[..2], &mut short), Err(Error::Invalid));
}

#[test]
fn copy_within_one_page_overlapping() {
    let hv = Hypervisor::new();
    let a = hv.create_domain("a");
    let run = a.alloc(1).unwrap();
    let f = a.frame(run.addr).unwrap();
    for i in 0..8 {
        poke(run.addr, i, i as u8);
    }
    let op = GrantCopy {
        source: CopyPtr::Local {
            frame: f,
            offset: 0,
        },
        dest: CopyPtr::Local {
            frame: f,
            offset: 2,
        },
        len: 6,
    };
    let mut st = status_vec(1);
    a.copy(&[op], &mut st).unwrap();
    assert_eq!(st, vec![Ok(())]);
    let got: Vec<u8> = (0..8).map(|i| peek(run.addr, i)).collect();
    assert_eq!(got, vec![0, 1, 0, 1, 2, 3, 4, 5]);
}
