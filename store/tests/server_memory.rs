//! The in-memory xenstored's per-domain memory quota ([`Quotas::memory`], xenstored's
//! `-Q memory`). The byte counts and errors are those Debian's xenstored 4.17.7 showed under
//! `ci/real-xenstored` with `-Q memory=8471` / `8472` (quoted per test), except where noted:
//! a transaction's node copy counts 3 bytes fewer here (xenstored also counts the
//! `<generation>/` of the key it stores the copy under), and a refused overwrite answers `EIO`
//! where xenstored answers a leftover `errno`.

mod server_common;

use server_common::*;
use xen_store::server::Quotas;
use xen_store::wire::MsgType::*;
use xen_store::{Request, Response, XsError::*};

/// The memory quota under test; everything else at xenstored's defaults.
fn mem(bytes: usize) -> Quotas {
    Quotas {
        memory: bytes,
        ..Quotas::default()
    }
}

const KB: &str = "x";

/// Domain 5 with its home, and seven 1000-byte nodes `n0`..`n6` of its own: 47 bytes for
/// the home (24 + 8 + `/local/domain/5`), 1050 per node (24 + 8 + 1000 + 18), 21 for the
/// children names in the home: 7418.
fn seven_nodes(t: &mut T) -> xen_store::server::ConnId {
    let d0 = t.xs.connect(0);
    let d5 = t.domu(d0, 5);
    assert_eq!(t.xs.memory_used(5), 47);
    for i in 0..7 {
        assert_eq!(t.write(d5, &format!("n{i}"), &KB.repeat(1000)), ok(Write));
    }
    assert_eq!(t.xs.memory_used(5), 7418);
    d5
}

/// A guest writing 1000-byte nodes: the 8th (1050 bytes + 3 for the home's children list,
/// 8471 in all) is refused with `EIO` when the quota is 8471 (`>=`), fits with 8472 —
/// exactly as on the real daemon. Nothing of the refused write is kept.
#[test]
fn guest_writing_nodes_gets_eio_at_the_quota() {
    let mut t = T::with(mem(8471));
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    assert_eq!(t.xs.memory_used(5), 7418);
    assert_eq!(t.xs.value("/local/domain/5/n7"), None);
    assert_eq!(t.xs.nodes_owned(5), 8);
    // Smaller still fits, the boundary is the same.
    assert_eq!(t.write(d5, "n7", &KB.repeat(996)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 8467);
    assert_eq!(t.mkdir(d5, "m"), err(Eio)); // 24 + 8 + 17 + 2 more
    t.xs.check_consistency().unwrap();

    let mut t = T::with(mem(8472));
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 8471);
    // An overwrite counts the difference: one byte more reaches the quota, one less fits.
    assert_eq!(t.write(d5, "n0", &KB.repeat(1001)), err(Eio));
    assert_eq!(t.write(d5, "n0", &KB.repeat(999)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 8470);
    t.xs.check_consistency().unwrap();
}

/// The real daemon's sequence with `-Q memory=8472`: a 900-byte 8th node (8371), an
/// overwrite that would reach the quota refused, `MKDIR` (+53) and `SET_PERMS` with two more
/// entries (+16) still fit, `RM` gives 953 back, and the refused overwrite then fits.
#[test]
fn mkdir_set_perms_and_rm_are_counted_like_the_real_daemon() {
    let mut t = T::with(mem(8472));
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.write(d5, "n7", &KB.repeat(900)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 8371);
    assert_eq!(t.write(d5, "n0", &KB.repeat(1200)), err(Eio));
    assert_eq!(t.mkdir(d5, "mk"), ok(Mkdir));
    assert_eq!(t.xs.memory_used(5), 8424);
    assert_eq!(t.set_perms(d5, "n1", &["n5", "r0", "r0"]), ok(SetPerms));
    assert_eq!(t.xs.memory_used(5), 8440);
    assert_eq!(t.rm(d5, "n7"), ok(Rm));
    assert_eq!(t.xs.memory_used(5), 7487);
    assert_eq!(t.write(d5, "n0", &KB.repeat(1200)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 7687);
    t.xs.check_consistency().unwrap();
}

/// Watches count path + token (`ENOMEM` past the quota), replies over 16 bytes that do not
/// fit become `ENOMEM`, queued output counts until taken, events that do not fit are
/// dropped. The real daemon's numbers with `-Q memory=8472`.
#[test]
fn watches_replies_and_events_count() {
    let mut t = T::with(mem(8472));
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.write(d5, "n0", &"y".repeat(1100)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 7518);
    assert_eq!(t.watch(d5, "w", &"t".repeat(2000)), err(Enomem));
    assert_eq!(t.watch(d5, "w", &"t".repeat(10)), ok(Watch));
    assert_eq!(t.ev(d5), vec![format!("w {}", "t".repeat(10))]);
    assert_eq!(t.xs.memory_used(5), 7545); // + 17 + 10
    assert_eq!(t.read(d5, "n0"), err(Enomem)); // 1100 + 16 would reach it
    assert_eq!(t.read(d5, "/local/domain/5"), read_ok(""));
    // Output counts while queued: the reply to this DIRECTORY (16 + 21), until taken.
    let msg = Request::Directory(p("/local/domain/5"))
        .to_message(77, 0)
        .unwrap();
    t.xs.handle(d5, &msg);
    assert_eq!(t.xs.memory_used(5), 7545 + 37);
    assert_eq!(t.xs.take_output(d5).len(), 1);
    assert_eq!(t.xs.memory_used(5), 7545);
    // An event that does not fit is dropped. A watch on n2 (18 + 10 bytes); dom0 grows n3
    // (the guest's) to 27 bytes below the quota; the event for n2 (16 + 3 + 11) is dropped.
    assert_eq!(t.watch(d5, "n2", &"e".repeat(10)), ok(Watch));
    assert_eq!(t.events(d5).len(), 1);
    assert_eq!(t.xs.memory_used(5), 7573);
    let d0 = t.xs.connect(0);
    assert_eq!(
        t.write(d0, "/local/domain/5/n3", &KB.repeat(1872)),
        ok(Write)
    );
    assert_eq!(t.xs.memory_used(5), 8445);
    assert_eq!(
        t.write(d0, "/local/domain/5/n2", &KB.repeat(1000)),
        ok(Write)
    );
    assert_eq!(t.events(d5), vec![]);
    assert_eq!(t.xs.dropped_events(d5), 1);
    // UNWATCH gives it back; with n3 shrunk again events fit again.
    assert_eq!(t.unwatch(d5, "n2", &"e".repeat(10)), ok(Unwatch));
    assert_eq!(t.xs.memory_used(5), 8445 - 28);
    assert_eq!(
        t.write(d0, "/local/domain/5/n3", &KB.repeat(1000)),
        ok(Write)
    );
    assert_eq!(t.xs.memory_used(5), 7545);
    assert_eq!(t.watch(d5, "n2", "e"), ok(Watch));
    assert_eq!(t.ev(d5), vec!["n2 e".to_string()]);
    t.xs.check_consistency().unwrap();
}

/// The real daemon's transaction sequence with `-Q memory=8472` (ours 3 bytes fewer per
/// copy): every node a transaction reads is copied for the guest without a check; writes
/// are checked, and the refused one leaves the guest over its quota (the read copy stays),
/// where xenstored stops reading its ring — `wants_input` is false. Ending the transaction
/// gives everything back.
#[test]
fn transaction_copies_count_for_the_guest() {
    let mut t = T::with(mem(8472));
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.rm(d5, "n6"), ok(Rm));
    assert_eq!(t.xs.memory_used(5), 6365);
    let tx = t.start(d5);
    assert_eq!(t.read_tx(d5, tx, "n0"), read_ok(&KB.repeat(1000)));
    assert_eq!(t.xs.memory_used(5), 6365 + 1050); // real: + 1053
    assert_eq!(t.write_tx(d5, tx, "n1", &"k".repeat(10)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 7415 + 60); // real: 7481
    assert_eq!(t.write_tx(d5, tx, "t1", &"k".repeat(10)), ok(Write));
    assert_eq!(t.xs.memory_used(5), 7475 + 60 + 68); // real: 7615
    assert!(t.xs.wants_input(d5));
    assert_eq!(t.write_tx(d5, tx, "n2", &"k".repeat(1500)), err(Eio));
    assert_eq!(t.xs.memory_used(5), 7603 + 1050);
    assert!(
        !t.xs.wants_input(d5),
        "stalled over the quota, as xenstored"
    );
    // xenstored would never read the next request (the real daemon hangs here); a transport
    // that sends it anyway ends the transaction, doomed by the refused write.
    assert_eq!(t.end(d5, tx, true), err(Enomem));
    assert_eq!(t.xs.memory_used(5), 6365);
    assert!(t.xs.wants_input(d5));
    assert_eq!(t.read(d5, "n1"), read_ok(&KB.repeat(1000)));
    t.xs.check_consistency().unwrap();
}

/// A guest's transaction touching many nodes it does not own (dom0's, writable by it):
/// outside a transaction those writes count for dom0 and are never refused; inside one each
/// copy counts for the guest (24 + 16 + 1000 + 11 = 1051), so the 12th is refused (47 +
/// 12 × 1051 >= 12000). The commit then fails, the memory comes back, and the guest can run
/// the transaction again in two halves.
#[test]
fn transaction_copying_many_nodes_hits_the_quota() {
    let mut t = T::with(mem(12000));
    let d0 = t.xs.connect(0);
    let d5 = t.domu(d0, 5);
    for i in 0..20 {
        let path = format!("/shared/n{i:02}");
        assert_eq!(t.write(d0, &path, &KB.repeat(1000)), ok(Write));
        assert_eq!(t.set_perms(d0, &path, &["n0", "b5"]), ok(SetPerms));
    }
    for i in 0..20 {
        assert_eq!(
            t.write(d5, &format!("/shared/n{i:02}"), &"a".repeat(1000)),
            ok(Write)
        );
    }
    assert_eq!(t.xs.memory_used(5), 47);
    let tx = t.start(d5);
    let got: Vec<Response> = (0..13)
        .map(|i| t.write_tx(d5, tx, &format!("/shared/n{i:02}"), &"b".repeat(1000)))
        .collect();
    let mut want = vec![ok(Write); 11];
    want.extend([err(Eio), err(Eio)]);
    assert_eq!(got, want);
    assert!(t.xs.memory_used(5) > 12000 - 1051);
    assert_eq!(t.end(d5, tx, true), err(Enomem));
    assert_eq!(t.xs.memory_used(5), 47);
    assert_eq!(t.read(d0, "/shared/n00"), read_ok(&"a".repeat(1000)));
    for half in [0..10, 10..20] {
        let tx = t.start(d5);
        for i in half {
            let r = t.write_tx(d5, tx, &format!("/shared/n{i:02}"), &"c".repeat(1000));
            assert_eq!(r, ok(Write));
        }
        assert_eq!(t.end(d5, tx, true), ok(TransactionEnd));
        assert_eq!(t.xs.memory_used(5), 47);
    }
    assert_eq!(t.read(d0, "/shared/n19"), read_ok(&"c".repeat(1000)));
    t.xs.check_consistency().unwrap();
}

/// Memory comes back on `RM`, at the end of a transaction (abort or commit), on
/// `RESET_WATCHES`, and when the domain is released; after each the guest that was refused
/// can write again.
#[test]
fn memory_is_given_back() {
    let mut t = T::with(mem(8471));
    let d0 = t.xs.connect(0);
    let d5 = seven_nodes(&mut t);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    // RM.
    assert_eq!(t.rm(d5, "n6"), ok(Rm));
    assert_eq!(t.xs.memory_used(5), 7418 - 1053);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), ok(Write));
    assert_eq!(t.write(d5, "n8", &KB.repeat(1000)), err(Eio));
    // Transaction end, abort and commit.
    assert_eq!(t.rm(d5, "n7"), ok(Rm));
    for commit in [false, true] {
        let tx = t.start(d5);
        for n in ["n0", "n1"] {
            let r = t.req_tx(d5, tx, Request::GetPerms(p(n)));
            assert_eq!(r, Response::GetPerms(perms(&["n5"])));
        }
        assert_eq!(t.xs.memory_used(5), 6365 + 2100);
        assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
        assert_eq!(t.end(d5, tx, commit), ok(TransactionEnd));
        assert_eq!(t.xs.memory_used(5), 6365);
    }
    // RESET_WATCHES drops watches and transactions.
    assert_eq!(t.watch(d5, "w", &"t".repeat(1000)), ok(Watch));
    t.events(d5);
    let tx = t.start(d5);
    let r = t.req_tx(d5, tx, Request::GetPerms(p("n0")));
    assert_eq!(r, Response::GetPerms(perms(&["n5"])));
    assert_eq!(t.xs.memory_used(5), 6365 + 1017 + 1050);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    assert_eq!(t.req(d5, Request::ResetWatches), ok(ResetWatches));
    assert_eq!(t.xs.memory_used(5), 6365);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), ok(Write));
    // Release: the domain's nodes, watches, transactions and output go; nothing stays counted.
    assert_eq!(t.watch(d5, "w", "t"), ok(Watch));
    let _tx = t.start(d5);
    t.xs.release_domain(5).unwrap();
    assert_eq!(t.xs.memory_used(5), 0);
    t.xs.check_consistency().unwrap();
    // Re-introduced, it starts from its home again and may write as much as at first.
    let d5 = t.xs.introduce_domain(5).unwrap();
    assert_eq!(t.mkdir(d0, "/local/domain/5"), ok(Mkdir));
    assert_eq!(t.set_perms(d0, "/local/domain/5", &["n5"]), ok(SetPerms));
    for i in 0..7 {
        assert_eq!(t.write(d5, &format!("n{i}"), &KB.repeat(1000)), ok(Write));
    }
    assert_eq!(t.xs.memory_used(5), 7418);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    // Destroyed: forgotten.
    t.xs.destroy_domain(5);
    assert_eq!(t.xs.memory_used(5), 0);
    t.xs.check_consistency().unwrap();
}

/// Dom0's own memory is never limited; but nodes a guest owns count for the guest whoever
/// writes them, so dom0 creating one in a guest's home past the guest's quota is refused too
/// (the real daemon, `-Q memory=8472`: dom0 overwriting `n0` with 1900 bytes → 8318, then
/// creating a 1900-byte node there → `EIO`, its own 3000-byte node fine, and the guest can
/// still shrink `n1` → 7319).
#[test]
fn dom0_is_limited_only_in_a_guests_nodes() {
    let mut t = T::with(mem(8472));
    let d0 = t.xs.connect(0);
    let d5 = seven_nodes(&mut t);
    assert_eq!(
        t.write(d0, "/local/domain/5/n0", &"y".repeat(1900)),
        ok(Write)
    );
    assert_eq!(t.xs.memory_used(5), 8318);
    assert_eq!(
        t.write(d0, "/local/domain/5/new", &"y".repeat(1900)),
        err(Eio)
    );
    assert_eq!(t.write(d0, "/dom0own", &"y".repeat(3000)), ok(Write));
    for i in 0..20 {
        let r = t.write(d0, &format!("/dom0/n{i}"), &"y".repeat(4000));
        assert_eq!(r, ok(Write));
    }
    let tx = t.start(d0);
    for i in 0..20 {
        let r = t.write_tx(d0, tx, &format!("/dom0/n{i}"), &"z".repeat(4000));
        assert_eq!(r, ok(Write));
    }
    assert_eq!(t.end(d0, tx, true), ok(TransactionEnd));
    assert_eq!(t.xs.memory_used(0), 0);
    assert_eq!(t.write(d5, "n1", "z"), ok(Write));
    assert_eq!(t.xs.memory_used(5), 7319);
    t.xs.check_consistency().unwrap();
}

/// One guest at its quota does not limit another, nor dom0.
#[test]
fn another_guest_is_unaffected() {
    let mut t = T::with(mem(8471));
    let d0 = t.xs.connect(0);
    let d5 = seven_nodes(&mut t);
    let d6 = t.domu(d0, 6);
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    for i in 0..7 {
        assert_eq!(t.write(d6, &format!("n{i}"), &KB.repeat(1000)), ok(Write));
    }
    assert_eq!(t.xs.memory_used(6), 7418);
    assert_eq!(t.watch(d6, "w", "t"), ok(Watch));
    assert_eq!(t.write(d0, "/free", &KB.repeat(2000)), ok(Write));
    assert_eq!(t.write(d5, "n7", &KB.repeat(1000)), err(Eio));
    assert_eq!(t.xs.memory_used(5), 7418);
    t.xs.check_consistency().unwrap();
}

/// Quota 0 disables the check (xenstored: `-Q memory=0` is refused, but its check is
/// skipped for 0); counting goes on.
#[test]
fn zero_disables_the_check() {
    let mut t = T::with(mem(0));
    let d5 = seven_nodes(&mut t);
    for i in 7..40 {
        assert_eq!(t.write(d5, &format!("n{i}"), &KB.repeat(1000)), ok(Write));
    }
    assert!(t.xs.memory_used(5) > 40 * 1000);
    t.xs.check_consistency().unwrap();
}

#[test]
fn default_is_two_and_a_half_mib() {
    assert_eq!(Quotas::default().memory, 2 * 1024 * 1024 + 512 * 1024);
}
