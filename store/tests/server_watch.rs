//! The in-memory xenstored: watches. Expected events are what Debian's xenstored 4.17 sent
//! for the same sequences (ci/real-xenstored).

mod server_common;

use server_common::*;
use xen_store::server::Quotas;
use xen_store::wire::MsgType::*;
use xen_store::{Request, XsError::*};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn registration_fires_once_and_duplicates_are_refused() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    assert_eq!(t.watch(d0, "/dup", "t"), ok(Watch));
    assert_eq!(t.watch(d0, "/dup", "t"), err(Eexist));
    assert_eq!(t.watch(d0, "/dup", "t2"), ok(Watch));
    assert_eq!(t.unwatch(d0, "/dup", "t3"), err(Enoent));
    assert_eq!(t.unwatch(d0, "/dup", "t"), ok(Unwatch));
    assert_eq!(t.ev(d0), s(&["/dup t", "/dup t2"]));
    // The initial event follows the WATCH reply.
    let msg = Request::Watch {
        path: p("/w"),
        token: "x".into(),
    }
    .to_message(77, 0)
    .unwrap();
    t.xs.handle(d0, &msg);
    let out = t.xs.take_output(d0);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].header.req_id, 77);
    assert_eq!(out[1].header.ty, WatchEvent.as_u32());
}

#[test]
fn writes_fire_at_and_above_the_node_only() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    for path in ["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/ab"] {
        t.watch(w, path, path);
    }
    t.events(w);
    // Creating /a/b/c (and its parents) fires for /a/b/c only.
    t.write(d0, "/a/b/c", "1");
    assert_eq!(
        t.ev(w),
        s(&["/a/b/c /", "/a/b/c /a", "/a/b/c /a/b", "/a/b/c /a/b/c"])
    );
    // MKDIR of an existing node fires nothing; of a new one fires; WRITE of the same value
    // fires.
    t.mkdir(d0, "/a/b");
    assert!(t.ev(w).is_empty());
    t.mkdir(d0, "/ab");
    assert_eq!(t.ev(w), s(&["/ab /", "/ab /ab"]));
    t.write(d0, "/ab", "");
    assert_eq!(t.ev(w), s(&["/ab /", "/ab /ab"]));
    t.set_perms(d0, "/a", &["n0", "r1"]);
    assert_eq!(t.ev(w), s(&["/a /", "/a /a"]));
    // The writer's own watches fire before its reply.
    t.watch(d0, "/a", "own");
    t.events(d0);
    let msg = Request::Write {
        path: p("/a/z"),
        value: vec![],
    }
    .to_message(9, 0)
    .unwrap();
    t.xs.handle(d0, &msg);
    let out = t.xs.take_output(d0);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].header.ty, WatchEvent.as_u32());
    assert_eq!(out[1].header.req_id, 9);
}

#[test]
fn rm_fires_for_the_subtree_deepest_first() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    t.write(d0, "/rmt/a/b/c", "1");
    t.write(d0, "/rmt/a/d", "1");
    for path in [
        "/rmt",
        "/rmt/a",
        "/rmt/a/b",
        "/rmt/a/b/c",
        "/rmt/a/b/c/zz",
        "/rmt/a/d",
        "/rmtx",
    ] {
        t.watch(w, path, &format!("T{path}"));
    }
    t.events(w);
    assert_eq!(t.rm(d0, "/rmt/a"), ok(Rm));
    assert_eq!(
        t.ev(w),
        s(&[
            "/rmt/a/b/c T/rmt/a/b/c",
            "/rmt/a/b T/rmt/a/b",
            "/rmt/a/d T/rmt/a/d",
            "/rmt/a T/rmt",
            "/rmt/a T/rmt/a",
        ])
    );
    // Removing a missing node fires nothing.
    assert_eq!(t.rm(d0, "/rmt/a"), ok(Rm));
    assert!(t.ev(w).is_empty());
}

#[test]
fn relative_watches_get_relative_paths() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.watch(d1, "rel", "rel");
    t.watch(d1, "/local/domain/1/abs", "abs");
    assert_eq!(t.ev(d1), s(&["rel rel", "/local/domain/1/abs abs"]));
    t.write(d1, "rel/x", "1");
    t.write(d1, "abs/y", "1");
    t.rm(d1, "rel");
    // Removing rel fires rel/x only for watches set exactly on it (none), then rel.
    assert_eq!(
        t.ev(d1),
        s(&["rel/x rel", "/local/domain/1/abs/y abs", "rel rel"])
    );
    // UNWATCH with the absolute form removes the relative watch.
    assert_eq!(t.unwatch(d1, "/local/domain/1/rel", "rel"), ok(Unwatch));
    assert_eq!(t.unwatch(d1, "rel", "rel"), err(Enoent));
    // dom0's relative watches are relative to /local/domain/0.
    t.watch(d0, "rel0", "rel0");
    t.write(d0, "/local/domain/0/rel0", "1");
    assert_eq!(t.ev(d0), s(&["rel0 rel0", "rel0 rel0"]));
}

/// A domU watching `/ev` and `/`: which changes made by dom0 it hears of.
#[test]
fn events_need_read_access_to_the_node_or_its_parent() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.write(d0, "/ev/pub", "1");
    t.set_perms(d0, "/ev/pub", &["r0"]);
    t.write(d0, "/ev/priv", "1");
    t.write(d0, "/ev/pub/child", "1");
    t.set_perms(d0, "/ev/pub/child", &["n0"]);
    t.write(d0, "/ev/priv/child", "1");
    t.set_perms(d0, "/ev/priv/child", &["n0", "r1"]);
    t.watch(d1, "/ev", "ev");
    t.watch(d1, "/", "root");
    assert_eq!(t.ev(d1), s(&["/ev ev", "/ root"]));
    let steps: &[(&str, Request, &[&str])] = &[
        (
            "readable node",
            Request::Write {
                path: p("/ev/pub"),
                value: b"2".to_vec(),
            },
            &["/ev/pub ev", "/ev/pub root"],
        ),
        (
            "unreadable node, unreadable parent",
            Request::Write {
                path: p("/ev/priv"),
                value: b"2".to_vec(),
            },
            &[],
        ),
        (
            "unreadable node, readable parent",
            Request::Write {
                path: p("/ev/pub/child"),
                value: b"2".to_vec(),
            },
            &["/ev/pub/child ev", "/ev/pub/child root"],
        ),
        (
            "ACL grant",
            Request::Write {
                path: p("/ev/priv/child"),
                value: b"2".to_vec(),
            },
            &["/ev/priv/child ev", "/ev/priv/child root"],
        ),
        (
            "losing access is still heard",
            Request::SetPerms {
                path: p("/ev/pub"),
                perms: perms(&["n0"]),
            },
            &["/ev/pub ev", "/ev/pub root"],
        ),
        (
            "then nothing",
            Request::Write {
                path: p("/ev/pub"),
                value: b"3".to_vec(),
            },
            &[],
        ),
        (
            "rm of unreadable under unreadable",
            Request::Rm(p("/ev/pub/child")),
            &[],
        ),
        (
            "rm of ACL-readable",
            Request::Rm(p("/ev/priv/child")),
            &["/ev/priv/child ev", "/ev/priv/child root"],
        ),
    ];
    for (what, req, want) in steps {
        t.req(d0, req.clone());
        assert_eq!(t.ev(d1), s(want), "{what}");
    }
}

#[test]
fn special_watches() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let root = t.xs.connect(0);
    t.watch(root, "/", "root");
    let d1 = t.domu(d0, 1);
    t.watch(d1, "@introduceDomain", "I");
    t.watch(d1, "@releaseDomain", "R");
    t.watch(d0, "@introduceDomain", "I0");
    t.watch(d0, "@releaseDomain", "R0");
    t.watch(d1, "@foo", "F");
    // Initial events whatever the permissions.
    assert_eq!(
        t.ev(d1),
        s(&["@introduceDomain I", "@releaseDomain R", "@foo F"])
    );
    assert_eq!(t.ev(d0), s(&["@introduceDomain I0", "@releaseDomain R0"]));
    t.events(root);
    // Default permissions (n0): dom0 hears them, the domU does not, a watch on / neither.
    t.xs.connect(2);
    assert_eq!(t.ev(d0), s(&["@introduceDomain I0"]));
    assert!(t.ev(d1).is_empty());
    assert_eq!(t.req(d0, Request::Release(2)), ok(Release));
    assert_eq!(t.ev(d0), s(&["@releaseDomain R0"]));
    assert!(t.ev(d1).is_empty());
    assert!(t.ev(root).iter().all(|e| !e.starts_with('@')));
    // Granting read on the special name lets the domU hear it; setting it fires nothing.
    t.set_perms(d0, "@releaseDomain", &["n0", "r1"]);
    t.set_perms(d0, "@introduceDomain", &["n1"]);
    assert!(t.ev(d0).is_empty());
    t.xs.introduce_domain(2).unwrap();
    assert_eq!(t.ev(d1), s(&["@introduceDomain I"]));
    t.xs.release_domain(2).unwrap();
    assert_eq!(t.ev(d1), s(&["@releaseDomain R"]));
    // The owner of a special name may set its permissions.
    assert_eq!(
        t.set_perms(d1, "@introduceDomain", &["n1", "r0"]),
        ok(SetPerms)
    );
}

#[test]
fn identical_pending_events_are_not_queued_twice() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    t.watch(w, "/q", "q");
    t.watch(w, "@releaseDomain", "r");
    t.events(w);
    for v in ["x", "y", "z"] {
        t.write(d0, "/q", v);
    }
    assert_eq!(t.ev(w), s(&["/q q"]));
    // ...but once taken, the next change is queued again.
    t.write(d0, "/q", "again");
    assert_eq!(t.ev(w), s(&["/q q"]));
    // Special events are never merged.
    for d in [3, 4] {
        t.xs.connect(d);
        t.xs.release_domain(d).unwrap();
    }
    assert_eq!(t.ev(w), s(&["@releaseDomain r", "@releaseDomain r"]));
}

#[test]
fn events_over_the_payload_limit_are_dropped() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let token = "T".repeat(4000);
    t.watch(d0, "/lt", &token);
    assert_eq!(t.events(d0).len(), 1);
    t.write(d0, "/lt/short", "x");
    assert_eq!(t.events(d0).len(), 1);
    t.write(d0, &format!("/lt/{}", "a".repeat(200)), "x");
    assert!(t.events(d0).is_empty());
}

#[test]
fn transaction_events_fire_at_commit() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    t.write(d0, "/tx/b", "1");
    t.watch(w, "/tx", "w");
    t.events(w);
    let tx = t.start(d0);
    t.write_tx(d0, tx, "/tx/x/y", "5");
    t.req_tx(d0, tx, Request::Rm(p("/tx/b")));
    t.req_tx(d0, tx, Request::Mkdir(p("/tx/m")));
    assert!(t.ev(w).is_empty());
    assert_eq!(t.end(d0, tx, true), ok(TransactionEnd));
    assert_eq!(t.ev(w), s(&["/tx/x/y w", "/tx/b w", "/tx/m w"]));
    let tx = t.start(d0);
    t.write_tx(d0, tx, "/tx/abort", "5");
    assert_eq!(t.end(d0, tx, false), ok(TransactionEnd));
    assert!(t.ev(w).is_empty());
    assert_eq!(t.read(d0, "/tx/abort"), err(Enoent));
}

#[test]
fn watch_quota_and_reset() {
    let mut t = T::with(Quotas {
        watches: 2,
        ..Quotas::default()
    });
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let got: Vec<_> = (0..5)
        .map(|i| t.watch(d1, &format!("/w{i}"), "t"))
        .collect();
    assert_eq!(
        got,
        [ok(Watch), ok(Watch), ok(Watch), err(E2big), err(E2big)]
    );
    // dom0 has no watch quota.
    for i in 0..10 {
        assert_eq!(t.watch(d0, &format!("/w{i}"), "t"), ok(Watch));
    }
    assert_eq!(t.req(d1, Request::ResetWatches), ok(ResetWatches));
    t.events(d1);
    t.write(d0, "/w0", "x");
    assert!(t.ev(d1).is_empty());
    assert_eq!(t.watch(d1, "/w0", "t"), ok(Watch));
}

#[test]
fn event_queue_is_bounded() {
    let mut t = T::with(Quotas {
        outbox: 8,
        ..Quotas::default()
    });
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    t.watch(w, "/", "all");
    t.events(w);
    for i in 0..20 {
        t.write(d0, &format!("/n{i}"), "x");
    }
    assert_eq!(t.xs.pending_output(w), 8);
    assert_eq!(t.xs.dropped_events(w), 12);
    assert!(!t.xs.wants_input(w));
    assert_eq!(t.events(w).len(), 8);
    assert!(t.xs.wants_input(w));
    // A peer that never reads its replies is cut off at twice the bound.
    let greedy = t.xs.connect(0);
    for _ in 0..16 {
        t.xs.handle(greedy, &Request::Read(p("/n0")).to_message(1, 0).unwrap());
    }
    assert!(!t.xs.is_broken(greedy));
    assert_eq!(t.xs.pending_output(greedy), 16);
    t.xs.handle(greedy, &Request::Read(p("/n0")).to_message(1, 0).unwrap());
    assert!(t.xs.is_broken(greedy));
    assert_eq!(t.xs.pending_output(greedy), 0);
    t.xs.handle(greedy, &Request::Read(p("/n0")).to_message(1, 0).unwrap());
    assert_eq!(t.xs.pending_output(greedy), 0);
    // Everyone else carries on.
    assert_eq!(t.read(d0, "/n0"), read_ok("x"));
}

#[test]
fn disconnect_drops_watches() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let w = t.xs.connect(0);
    t.watch(w, "/x", "x");
    t.xs.disconnect(w);
    assert!(!t.xs.is_connected(w));
    t.write(d0, "/x", "1");
    assert!(t.xs.take_output(w).is_empty());
}

#[test]
fn unwatch_does_not_validate_its_path() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    assert_eq!(t.raw(d0, Unwatch.as_u32(), 0, b"/a//b\0t1\0"), err(Enoent));
    assert_eq!(t.raw(d0, Unwatch.as_u32(), 0, b"/a/..\0t1\0"), err(Enoent));
    assert_eq!(t.raw(d0, Unwatch.as_u32(), 0, b"/a\0"), err(Einval));
    assert_eq!(t.raw(d0, Watch.as_u32(), 0, b"/a//b\0t1\0"), err(Einval));
}

#[test]
fn a_domu_may_not_give_away_a_special_name() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.set_perms(d0, "@releaseDomain", &["n1"]);
    assert_eq!(t.set_perms(d1, "@releaseDomain", &["r1"]), ok(SetPerms));
    assert_eq!(t.set_perms(d1, "@releaseDomain", &["n0"]), err(Eperm));
}
