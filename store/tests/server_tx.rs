//! The in-memory xenstored: transactions. Expected answers are what Debian's xenstored 4.17
//! gave to the same sequences (ci/real-xenstored).

mod server_common;

use server_common::*;
use xen_store::server::Quotas;
use xen_store::wire::MsgType::*;
use xen_store::{Request, Response, XsError::*};

#[test]
fn isolation_per_node_and_eagain_on_conflict() {
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    let c1 = t.xs.connect(0);
    t.write(c0, "/tx/a", "1");
    t.write(c0, "/tx/b", "1");
    let tx = t.start(c0);
    assert_eq!(tx, 1);
    assert_eq!(t.req_tx(c0, tx, Request::TransactionStart), err(Ebusy));
    assert_eq!(t.read_tx(c0, tx, "/tx/a"), read_ok("1"));
    t.write(c1, "/tx/a", "2");
    // The transaction keeps seeing the value it first read.
    assert_eq!(t.read_tx(c0, tx, "/tx/a"), read_ok("1"));
    assert_eq!(t.read(c0, "/tx/a"), read_ok("2"));
    assert_eq!(t.read_tx(c0, tx, "/tx/b"), read_ok("1"));
    assert_eq!(t.write_tx(c0, tx, "/tx/c", "3"), ok(Write));
    assert_eq!(t.read(c0, "/tx/c"), err(Enoent));
    assert_eq!(
        t.req_tx(c0, tx, Request::Directory(p("/tx"))),
        Response::Directory(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(t.end(c0, tx, true), err(Eagain));
    assert_eq!(t.read(c0, "/tx/c"), err(Enoent));
    // The transaction is gone after a failed commit.
    assert_eq!(t.end(c0, tx, true), err(Enoent));
}

#[test]
fn conflicts() {
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    let c1 = t.xs.connect(0);
    t.write(c0, "/tx/a", "1");
    // A blind overwrite conflicts too: every write reads its node first.
    let tx = t.start(c0);
    t.write_tx(c0, tx, "/tx/a", "5");
    t.write(c1, "/tx/a", "6");
    assert_eq!(t.end(c0, tx, true), err(Eagain));
    assert_eq!(t.read(c0, "/tx/a"), read_ok("6"));
    // Adding a child to a directory someone else added a child to.
    let tx = t.start(c0);
    t.write_tx(c0, tx, "/tx/new1", "5");
    t.write(c1, "/tx/new2", "6");
    assert_eq!(t.end(c0, tx, true), err(Eagain));
    // Reading a missing node that someone then creates.
    let tx = t.start(c0);
    assert_eq!(t.read_tx(c0, tx, "/tx/ghost"), err(Enoent));
    t.write(c1, "/tx/ghost", "6");
    assert_eq!(t.end(c0, tx, true), err(Eagain));
    // A removal conflicts with a transaction that read the node.
    let tx = t.start(c0);
    t.read_tx(c0, tx, "/tx/ghost");
    t.write_tx(c0, tx, "/tx/other", "1");
    t.rm(c1, "/tx/ghost");
    assert_eq!(t.end(c0, tx, true), err(Eagain));
    // Untouched nodes may change freely.
    let tx = t.start(c0);
    t.write_tx(c0, tx, "/tx/a", "7");
    t.write(c1, "/elsewhere", "x");
    assert_eq!(t.end(c0, tx, true), ok(TransactionEnd));
    assert_eq!(t.read(c1, "/tx/a"), read_ok("7"));
}

#[test]
fn two_interfering_transactions() {
    // xenstored_transaction.c example 4: the first to commit wins.
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    let c1 = t.xs.connect(0);
    t.write(c0, "/A", "a");
    t.write(c0, "/B", "b");
    let t1 = t.start(c0);
    let t2 = t.start(c1);
    t.read_tx(c0, t1, "/A");
    t.read_tx(c1, t2, "/B");
    t.write_tx(c0, t1, "/B", "1");
    t.write_tx(c1, t2, "/A", "2");
    assert_eq!(t.end(c0, t1, true), ok(TransactionEnd));
    assert_eq!(t.end(c1, t2, true), err(Eagain));
    assert_eq!(t.read(c0, "/A"), read_ok("a"));
    assert_eq!(t.read(c0, "/B"), read_ok("1"));
}

#[test]
fn commit_applies_writes_removals_and_perms() {
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    t.write(c0, "/k/old/deep", "x");
    let tx = t.start(c0);
    t.write_tx(c0, tx, "/k/new/leaf", "v");
    t.req_tx(c0, tx, Request::Rm(p("/k/old")));
    t.req_tx(
        c0,
        tx,
        Request::SetPerms {
            path: p("/k"),
            perms: perms(&["n0", "r3"]),
        },
    );
    t.write_tx(c0, tx, "/k/tmp", "t");
    t.req_tx(c0, tx, Request::Rm(p("/k/tmp")));
    assert_eq!(
        t.req_tx(c0, tx, Request::Read(p("/k/old/deep"))),
        err(Enoent)
    );
    assert_eq!(t.read(c0, "/k/old/deep"), read_ok("x"));
    assert_eq!(t.end(c0, tx, true), ok(TransactionEnd));
    assert_eq!(t.read(c0, "/k/new/leaf"), read_ok("v"));
    assert_eq!(t.read(c0, "/k/old"), err(Enoent));
    assert_eq!(t.read(c0, "/k/old/deep"), err(Enoent));
    assert_eq!(t.read(c0, "/k/tmp"), err(Enoent));
    assert_eq!(t.dir(c0, "/k"), Response::Directory(vec!["new".into()]));
    assert_eq!(
        t.get_perms(c0, "/k"),
        Response::GetPerms(perms(&["n0", "r3"]))
    );
}

#[test]
fn transaction_ids_and_errors() {
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    let c1 = t.xs.connect(0);
    let ids: Vec<u32> = (0..3).map(|_| t.start(c0)).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(t.start(c1), 1, "ids are per connection");
    // Another connection cannot use my transaction.
    assert_eq!(t.read_tx(c1, 1, "/tool"), read_ok(""));
    assert_eq!(t.read_tx(c1, 2, "/tool"), err(Enoent));
    for id in ids {
        assert_eq!(t.end(c0, id, false), ok(TransactionEnd));
    }
    assert_eq!(t.start(c0), 4);
    assert_eq!(t.end(c0, 0, true), err(Enoent));
    assert_eq!(t.raw(c0, TransactionEnd.as_u32(), 0, b"X\0"), err(Einval));
    assert_eq!(t.raw(c0, TransactionEnd.as_u32(), 4, b"X\0"), err(Einval));
    assert_eq!(t.raw(c0, TransactionEnd.as_u32(), 4, b"T"), err(Einval));
    assert_eq!(t.raw(c0, TransactionEnd.as_u32(), 999, b"T\0"), err(Enoent));
    assert_eq!(t.read_tx(c0, 999, "/tool"), err(Enoent));
    // WATCH and UNWATCH ignore the transaction id, even a bogus one; others check it.
    assert_eq!(
        t.req_tx(
            c0,
            12345,
            Request::Watch {
                path: p("/tx"),
                token: "a".into()
            }
        ),
        ok(Watch)
    );
    assert_eq!(
        t.req_tx(
            c0,
            4,
            Request::Watch {
                path: p("/tx"),
                token: "b".into()
            }
        ),
        ok(Watch)
    );
    assert_eq!(t.req_tx(c0, 12345, Request::GetDomainPath(1)), err(Enoent));
    assert_eq!(
        t.req_tx(
            c0,
            12345,
            Request::Introduce {
                domid: 7,
                mfn: 1,
                port: 1
            }
        ),
        err(Enoent)
    );
    // xenstored does not look at TRANSACTION_START's payload.
    assert!(matches!(
        t.raw(c0, TransactionStart.as_u32(), 0, b""),
        Response::TransactionStart(_)
    ));
    assert!(matches!(
        t.raw(c0, TransactionStart.as_u32(), 0, b"junk"),
        Response::TransactionStart(_)
    ));
}

#[test]
fn reset_watches_and_disconnect_drop_transactions() {
    let mut t = T::new();
    let c0 = t.xs.connect(0);
    let tx = t.start(c0);
    t.write_tx(c0, tx, "/never", "x");
    assert_eq!(t.req(c0, Request::ResetWatches), ok(ResetWatches));
    assert_eq!(t.read_tx(c0, tx, "/tool"), err(Enoent));
    assert_eq!(t.req_tx(c0, tx, Request::ResetWatches), err(Enoent));
    let c1 = t.xs.connect(0);
    let tx = t.start(c1);
    t.write_tx(c1, tx, "/never", "x");
    t.xs.disconnect(c1);
    assert_eq!(t.read(c0, "/never"), err(Enoent));
}

#[test]
fn transaction_quota_per_domu() {
    let mut t = T::with(Quotas {
        transactions: 2,
        ..Quotas::default()
    });
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let got: Vec<Response> = (0..5)
        .map(|_| t.req(d1, Request::TransactionStart))
        .collect();
    assert_eq!(
        got,
        [
            Response::TransactionStart(1),
            Response::TransactionStart(2),
            Response::TransactionStart(3),
            err(Enospc),
            err(Enospc)
        ]
    );
    for _ in 0..5 {
        t.start(d0);
    }
}

#[test]
fn node_quota_is_checked_at_commit() {
    for (new, want) in [(4, ok(TransactionEnd)), (5, err(Enospc)), (6, err(Enospc))] {
        let mut t = T::with(Quotas {
            nodes: 6,
            ..Quotas::default()
        });
        let d0 = t.xs.connect(0);
        let d1 = t.domu(d0, 1); // owns its home: 1 node
        let tx = t.start(d1);
        for i in 0..new {
            assert_eq!(t.write_tx(d1, tx, &format!("t{i}"), "v"), ok(Write));
        }
        assert_eq!(t.end(d1, tx, true), want, "{new} new nodes");
    }
}

#[test]
fn transaction_nodes_quota_dooms_the_transaction() {
    let mut t = T::with(Quotas {
        transaction_nodes: 4,
        ..Quotas::default()
    });
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let tx = t.start(d1);
    // a0 touches a0 and the home; each further write one more node.
    let got: Vec<Response> = (0..6)
        .map(|i| t.write_tx(d1, tx, &format!("a{i}"), "v"))
        .collect();
    assert_eq!(
        got,
        [
            ok(Write),
            ok(Write),
            ok(Write),
            err(Enospc),
            err(Enospc),
            err(Enospc)
        ]
    );
    assert_eq!(t.read_tx(d1, tx, "a0"), read_ok("v"));
    assert_eq!(t.end(d1, tx, true), err(Enomem));
    // Reads of missing nodes count too (the node, and the parent read to pick ENOENT).
    let tx = t.start(d1);
    let got: Vec<Response> = (0..5)
        .map(|i| t.read_tx(d1, tx, &format!("r{i}")))
        .collect();
    assert_eq!(
        got,
        [
            err(Enoent),
            err(Enoent),
            err(Enoent),
            err(Enospc),
            err(Enospc)
        ]
    );
    assert_eq!(t.end(d1, tx, false), ok(TransactionEnd));
    // dom0 is not limited.
    let tx = t.start(d0);
    for i in 0..10 {
        assert_eq!(t.write_tx(d0, tx, &format!("/z{i}"), "v"), ok(Write));
    }
    assert_eq!(t.end(d0, tx, true), ok(TransactionEnd));
}

#[test]
fn domu_transactions_respect_permissions() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.write(d0, "/secret", "s");
    let tx = t.start(d1);
    assert_eq!(t.read_tx(d1, tx, "/secret"), err(Eacces));
    assert_eq!(t.write_tx(d1, tx, "/secret", "x"), err(Eacces));
    assert_eq!(t.write_tx(d1, tx, "mine", "x"), ok(Write));
    assert_eq!(t.end(d1, tx, true), ok(TransactionEnd));
    assert_eq!(
        t.get_perms(d0, "/local/domain/1/mine"),
        Response::GetPerms(perms(&["n1"]))
    );
    assert_eq!(t.xs.nodes_owned(1), 2);
}
