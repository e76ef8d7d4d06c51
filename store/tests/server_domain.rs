//! The in-memory xenstored: domains — introduce, release, destroy, shutdown, and what each
//! fires and removes, as Debian's xenstored 4.17 did (ci/real-xenstored).

mod server_common;

use server_common::*;
use xen_store::server::{Notice, Quotas};
use xen_store::wire::MsgType::*;
use xen_store::{Request, Response, XsError::*};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn introduce_by_message_needs_an_existing_domain() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.watch(d0, "@introduceDomain", "I");
    t.events(d0);
    let intro = |d, port| Request::Introduce {
        domid: d,
        mfn: 0x1234,
        port,
    };
    assert_eq!(t.req(d0, intro(6, 1)), err(Einval));
    t.xs.create_domain(6);
    assert_eq!(
        t.req(d0, Request::IsDomainIntroduced(6)),
        Response::IsDomainIntroduced(false)
    );
    assert_eq!(t.req(d0, intro(6, 7)), ok(Introduce));
    assert_eq!(t.ev(d0), s(&["@introduceDomain I"]));
    assert_eq!(
        t.req(d0, Request::IsDomainIntroduced(6)),
        Response::IsDomainIntroduced(true)
    );
    let n = t.xs.take_notices();
    let conn = match n.as_slice() {
        [Notice::Introduced {
            domid: 6,
            conn,
            mfn: 0x1234,
            port: 7,
            new: true,
        }] => *conn,
        other => panic!("{other:?}"),
    };
    assert_eq!(t.xs.conn_domid(conn), Some(6));
    // Introducing again re-binds the event channel: same connection, no event.
    assert_eq!(t.req(d0, intro(6, 8)), ok(Introduce));
    assert!(t.ev(d0).is_empty());
    assert_eq!(
        t.xs.take_notices(),
        [Notice::Introduced {
            domid: 6,
            conn,
            mfn: 0x1234,
            port: 8,
            new: false
        }]
    );
    assert_eq!(t.xs.connect(6), conn);
    // dom0's introduction is accepted and ignored.
    assert_eq!(t.req(d0, intro(0, 1)), ok(Introduce));
    assert!(t.ev(d0).is_empty());
}

#[test]
fn release_removes_the_domains_nodes_then_fires() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.watch(d0, "@releaseDomain", "tokR");
    t.watch(d0, "/local/domain/2", "home2");
    t.watch(d0, "/other", "other");
    t.events(d0);
    let d2 = t.domu(d0, 2);
    t.write(d0, "/local/domain/2/name", "d2");
    t.write(d0, "/other/owned2", "x");
    t.set_perms(d0, "/other/owned2", &["n2"]);
    t.write(d0, "/other/acl2", "x");
    t.set_perms(d0, "/other/acl2", &["n0", "r2"]);
    t.write(d2, "data/a", "1");
    t.watch(d2, "/local/domain/2", "mine");
    t.events(d0);
    t.events(d2);
    t.xs.take_notices();
    assert_eq!(t.req(d0, Request::Release(2)), ok(Release));
    // The released domain hears nothing; its connection is gone.
    assert!(!t.xs.is_connected(d2));
    assert_eq!(
        t.xs.take_notices(),
        [Notice::Released { domid: 2, conn: d2 }]
    );
    assert_eq!(
        t.ev(d0),
        s(&[
            "/local/domain/2 home2",
            "/other/owned2 other",
            "@releaseDomain tokR"
        ])
    );
    assert_eq!(
        t.req(d0, Request::IsDomainIntroduced(2)),
        Response::IsDomainIntroduced(false)
    );
    assert_eq!(t.dir(d0, "/local/domain/2"), err(Enoent));
    assert_eq!(t.get_perms(d0, "/other/owned2"), err(Enoent));
    assert_eq!(
        t.get_perms(d0, "/other/acl2"),
        Response::GetPerms(perms(&["n0", "r2"]))
    );
    assert_eq!(t.xs.nodes_owned(2), 0);
    assert_eq!(t.req(d0, Request::Release(2)), err(Enoent));
    // Released, not destroyed: the domain still exists, its ACL entries still count.
    let d2 = t.xs.connect(2);
    assert_eq!(t.read(d2, "/other/acl2"), read_ok("x"));
}

#[test]
fn destroyed_domids_lose_their_rights() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.watch(d0, "@releaseDomain", "R");
    t.events(d0);
    let d5 = t.xs.connect(5);
    t.write(d0, "/acl5", "v");
    t.set_perms(d0, "/acl5", &["n0", "r5"]);
    t.write(d0, "/own5", "v");
    t.set_perms(d0, "/own5", &["n5"]);
    assert_eq!(t.read(d5, "/acl5"), read_ok("v"));
    t.events(d0);
    t.xs.destroy_domain(5);
    assert_eq!(t.ev(d0), s(&["@releaseDomain R"]));
    assert!(!t.xs.is_connected(d5));
    assert_eq!(t.get_perms(d0, "/own5"), err(Enoent));
    assert_eq!(
        t.get_perms(d0, "/acl5"),
        Response::GetPerms(perms(&["n0", "r5"]))
    );
    // A new domain 5 does not inherit the old one's ACL entry, even after a rewrite.
    let d5 = t.xs.connect(5);
    assert_eq!(t.read(d5, "/acl5"), err(Eacces));
    t.write(d0, "/acl5", "w");
    assert_eq!(t.read(d5, "/acl5"), err(Eacces));
    // Setting the permission again grants it.
    t.set_perms(d0, "/acl5", &["n0", "r5"]);
    assert_eq!(t.read(d5, "/acl5"), read_ok("w"));
    assert_eq!(
        t.req(d0, Request::IsDomainIntroduced(5)),
        Response::IsDomainIntroduced(true)
    );
}

#[test]
fn keep_orphans_gives_them_to_dom0() {
    let mut t = T::with(Quotas {
        keep_orphans: true,
        ..Quotas::default()
    });
    let d0 = t.xs.connect(0);
    let d3 = t.domu(d0, 3);
    t.write(d3, "data", "1");
    t.xs.destroy_domain(3);
    assert_eq!(t.read(d0, "/local/domain/3/data"), read_ok("1"));
    assert_eq!(
        t.get_perms(d0, "/local/domain/3"),
        Response::GetPerms(perms(&["n0"]))
    );
}

#[test]
fn shutdown_fires_release_once_until_resume() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.watch(d0, "@releaseDomain", "R");
    t.events(d0);
    let _d4 = t.domu(d0, 4);
    t.xs.shutdown_domain(4);
    t.xs.shutdown_domain(4);
    assert_eq!(t.ev(d0), s(&["@releaseDomain R"]));
    assert_eq!(t.req(d0, Request::Resume(4)), ok(Resume));
    t.xs.shutdown_domain(4);
    assert_eq!(t.ev(d0), s(&["@releaseDomain R"]));
    // Shutdown removes nothing.
    assert_eq!(t.read(d0, "/local/domain/4"), read_ok(""));
    assert_eq!(t.req(d0, Request::Resume(0)), err(Einval));
}

#[test]
fn reconnecting_a_domain_after_disconnect() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.watch(d0, "@introduceDomain", "I");
    t.events(d0);
    let c = t.xs.connect(7);
    assert_eq!(t.ev(d0), s(&["@introduceDomain I"]));
    t.xs.disconnect(c);
    assert!(t.xs.is_introduced(7));
    let c2 = t.xs.introduce_domain(7).unwrap();
    assert_ne!(c, c2);
    assert!(t.ev(d0).is_empty(), "still introduced: no second event");
    assert_eq!(
        t.req(c2, Request::GetDomainPath(7)),
        Response::GetDomainPath(p("/local/domain/7"))
    );
}

#[test]
fn a_node_written_before_a_domain_exists_is_not_its_own() {
    // Found by the `server` fuzz target: domain 2 owns a node, is destroyed without ever
    // being introduced (so nothing is removed), and a new domain 2 is created at once.
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.xs.create_domain(2);
    t.write(d0, "/given", "v");
    assert_eq!(t.set_perms(d0, "/given", &["n2"]), ok(SetPerms));
    assert_eq!(t.xs.nodes_owned(2), 1);
    t.xs.destroy_domain(2);
    t.xs.create_domain(2);
    assert_eq!(t.xs.nodes_owned(2), 0);
    assert_eq!(
        t.get_perms(d0, "/given"),
        Response::GetPerms(perms(&["n0"]))
    );
    t.xs.check_consistency().unwrap();
    let d2 = t.xs.connect(2);
    assert_eq!(t.read(d2, "/given"), err(Eacces));
}
