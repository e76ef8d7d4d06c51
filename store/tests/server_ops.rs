//! The in-memory xenstored: node operations and permissions, table by table. Expected
//! answers are the ones Debian's xenstored 4.17 gave to the same requests (ci/real-xenstored).

mod server_common;

use server_common::*;
use xen_store::perms::Access;
use xen_store::server::Quotas;
use xen_store::wire::MsgType::{self, *};
use xen_store::{Request, Response, XsError::*};

fn names(v: &[&str]) -> Response {
    Response::Directory(v.iter().map(|s| s.to_string()).collect())
}

fn gp(v: &[&str]) -> Response {
    Response::GetPerms(perms(v))
}

#[test]
fn initial_tree() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    assert_eq!(t.dir(d0, "/"), names(&["tool"]));
    assert_eq!(t.dir(d0, "/tool"), names(&["xenstored"]));
    assert_eq!(t.get_perms(d0, "/"), gp(&["n0"]));
    assert_eq!(t.read(d0, "/tool"), read_ok(""));
    assert_eq!(t.read(d0, "/local"), err(Enoent));
}

#[test]
fn write_mkdir_rm_dom0() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let table: &[(Request, Response)] = &[
        (
            Request::Write {
                path: p("/t1/a/b"),
                value: b"v".to_vec(),
            },
            ok(Write),
        ),
        (Request::Read(p("/t1/a/b")), read_ok("v")),
        (Request::Read(p("/t1/a")), read_ok("")),
        (Request::GetPerms(p("/t1")), gp(&["n0"])),
        (Request::Mkdir(p("/t1")), ok(Mkdir)),
        (Request::Rm(p("/")), err(Einval)),
        (Request::Rm(p("/nonexist")), ok(Rm)),
        (Request::Rm(p("/nonexist/child")), err(Enoent)),
        (Request::Rm(p("/t1/a/missing")), ok(Rm)),
        (Request::Rm(p("/t1/missing/deeper")), err(Enoent)),
        (Request::Read(p("/t1/a/b/c/d/e")), err(Enoent)),
        (
            Request::Write {
                path: p("/empty"),
                value: vec![],
            },
            ok(Write),
        ),
        (Request::Read(p("/empty")), read_ok("")),
        (
            Request::Write {
                path: p("/bin"),
                value: vec![0, 1, 0, 255],
            },
            ok(Write),
        ),
        (Request::Read(p("/bin")), Response::Read(vec![0, 1, 0, 255])),
        (Request::Rm(p("/t1")), ok(Rm)),
        (Request::Read(p("/t1/a/b")), err(Enoent)),
        (Request::Read(p("/t1")), err(Enoent)),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        assert_eq!(&t.req(d0, req.clone()), want, "row {i}: {req:?}");
    }
    assert_eq!(t.xs.value("/bin"), Some(&[0u8, 1, 0, 255][..]));
}

#[test]
fn children_keep_creation_order() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    t.write(d0, "/a1/b1/c1", "v");
    t.write(d0, "/a1/x1", "v");
    t.write(d0, "/a1/b0", "v");
    assert_eq!(t.dir(d0, "/a1"), names(&["b1", "x1", "b0"]));
    t.rm(d0, "/a1/x1");
    t.write(d0, "/a1/x1", "v");
    assert_eq!(t.dir(d0, "/a1"), names(&["b1", "b0", "x1"]));
}

#[test]
fn relative_paths_resolve_against_the_home() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    assert_eq!(t.write(d1, "x2/y/z", "1"), ok(Write));
    assert_eq!(t.read(d0, "/local/domain/1/x2/y/z"), read_ok("1"));
    assert_eq!(t.get_perms(d0, "/local/domain/1/x2"), gp(&["n1"]));
    assert_eq!(t.get_perms(d0, "/local/domain/1/x2/y/z"), gp(&["n1"]));
    // dom0's relative paths are under /local/domain/0.
    assert_eq!(t.write(d0, "mine", "0"), ok(Write));
    assert_eq!(t.read(d0, "/local/domain/0/mine"), read_ok("0"));
    assert_eq!(
        t.req(d1, Request::GetDomainPath(0)),
        Response::GetDomainPath(p("/local/domain/0"))
    );
}

/// The permission table of a domU (domain 1) against nodes dom0 set up, row by row as the
/// real daemon answered.
#[test]
fn domu_permissions() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.xs.connect(1);
    t.write(d0, "/t1/a/b", "v");
    // Before the toolstack made the home, the domU cannot even tell it is missing.
    assert_eq!(t.read(d1, "/local/domain/1"), err(Eacces));
    assert_eq!(t.write(d1, "/local/domain/1/x", "1"), err(Eacces));
    t.mkdir(d0, "/local/domain/1");
    t.set_perms(d0, "/local/domain/1", &["n1"]);
    t.write(d0, "/acl", "v");
    t.set_perms(d0, "/acl", &["n0", "r1"]);
    t.write(d0, "/wr", "v");
    t.set_perms(d0, "/wr", &["n0", "w1"]);
    let w = |path: &str, v: &str| Request::Write {
        path: p(path),
        value: v.as_bytes().to_vec(),
    };
    let table: &[(Request, Response)] = &[
        (w("/local/domain/1/x", "1"), ok(Write)),
        (Request::Read(p("/t1")), err(Eacces)),
        (Request::Read(p("/t1/zz")), err(Eacces)),
        (Request::Read(p("/nonexist")), err(Eacces)),
        (Request::Read(p("/t1/a/b")), err(Eacces)),
        (Request::Directory(p("/")), err(Eacces)),
        (w("/t1/new", "1"), err(Eacces)),
        // ACL read grant.
        (Request::Read(p("/acl")), read_ok("v")),
        (w("/acl", "w"), err(Eacces)),
        (Request::GetPerms(p("/acl")), gp(&["n0", "r1"])),
        (Request::Directory(p("/acl")), names(&[])),
        (Request::Read(p("/acl/child")), err(Enoent)),
        // ACL write grant: write and create below, not read.
        (Request::Read(p("/wr")), err(Eacces)),
        (w("/wr", "w"), ok(Write)),
        (w("/wr/c/d", "w"), ok(Write)),
        (Request::Mkdir(p("/wr")), ok(Mkdir)),
        (Request::Mkdir(p("/t1")), err(Eacces)),
        (Request::Rm(p("/wr/c/d")), ok(Rm)),
        (Request::Rm(p("/wr/zz")), ok(Rm)),
        (Request::Rm(p("/t1/zz")), err(Eacces)),
        (Request::Rm(p("/t1/zz/yy")), err(Eacces)),
        (Request::Rm(p("/t1")), err(Eacces)),
        (Request::Rm(p("/")), err(Eacces)),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        assert_eq!(&t.req(d1, req.clone()), want, "row {i}: {req:?}");
    }
    // Nodes a domU creates under a node it may write are its own (ACL inherited).
    assert_eq!(t.get_perms(d0, "/wr/c"), gp(&["n1", "w1"]));
}

#[test]
fn set_perms_rules() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.write(d1, "x", "1");
    t.write(d0, "/wr", "v");
    t.set_perms(d0, "/wr", &["n0", "b1"]);
    // The owner may set the ACL...
    assert_eq!(t.set_perms(d1, "x", &["r1", "b0"]), ok(SetPerms));
    assert_eq!(t.get_perms(d1, "x"), gp(&["r1", "b0"]));
    // ...but not give the node away (EPERM), nor name an owner that does not exist (ENOENT,
    // checked before anything else).
    assert_eq!(t.set_perms(d1, "x", &["n0"]), err(Eperm));
    assert_eq!(t.set_perms(d1, "x", &["n2"]), err(Enoent));
    assert_eq!(t.set_perms(d0, "/wr", &["n9"]), err(Enoent));
    // Read+write through the ACL is not ownership.
    assert_eq!(t.set_perms(d1, "/wr", &["b1"]), err(Eacces));
    // Special names: only with write+owner on them; GET_PERMS of one is EINVAL in 4.17.
    assert_eq!(t.set_perms(d1, "@introduceDomain", &["n1"]), err(Eacces));
    assert_eq!(t.get_perms(d1, "@introduceDomain"), err(Einval));
    assert_eq!(
        t.set_perms(d0, "@introduceDomain", &["n0", "r1"]),
        ok(SetPerms)
    );
    assert_eq!(t.get_perms(d0, "@introduceDomain"), err(Einval));
    assert_eq!(t.set_perms(d0, "@foo", &["n0"]), err(Enoent));
    // dom0 may give nodes to existing domains; ACL entries naming missing domains are kept
    // (shown) but grant nothing.
    assert_eq!(
        t.set_perms(d0, "/local/domain/1/x", &["n0", "r9", "r1"]),
        ok(SetPerms)
    );
    assert_eq!(
        t.get_perms(d0, "/local/domain/1/x"),
        gp(&["n0", "r9", "r1"])
    );
    assert_eq!(t.read(d1, "x"), read_ok("1"));
    assert_eq!(
        t.xs.perms("/local/domain/1/x").unwrap().default_access(),
        Access::None
    );
}

#[test]
fn nodes_created_by_dom0_under_a_domu_home_belong_to_the_domu() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let _d2 = t.domu(d0, 2);
    t.write(d0, "/local/domain/2/name", "d2");
    assert_eq!(t.get_perms(d0, "/local/domain/2/name"), gp(&["n2"]));
    assert_eq!(t.xs.nodes_owned(2), 2);
}

#[test]
fn privileged_only_operations() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let table: &[(Request, Response)] = &[
        (
            Request::Introduce {
                domid: 5,
                mfn: 1,
                port: 1,
            },
            err(Eacces),
        ),
        (Request::Release(1), err(Eacces)),
        (
            Request::SetTarget {
                domid: 1,
                target: 2,
            },
            err(Eacces),
        ),
        (Request::IsDomainIntroduced(1), err(Eacces)),
        (Request::IsDomainIntroduced(0), err(Eacces)),
        (Request::Resume(1), err(Eacces)),
        (
            Request::Control {
                command: "help".into(),
                params: vec![],
            },
            err(Eacces),
        ),
        (
            Request::GetDomainPath(0),
            Response::GetDomainPath(p("/local/domain/0")),
        ),
        (Request::ResetWatches, ok(ResetWatches)),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        assert_eq!(&t.req(d1, req.clone()), want, "row {i}: {req:?}");
    }
}

#[test]
fn device_model_acts_for_its_target() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    assert_eq!(
        t.req(
            d0,
            Request::SetTarget {
                domid: 1,
                target: 4
            }
        ),
        err(Enoent)
    );
    let _d4 = t.domu(d0, 4);
    assert_eq!(
        t.req(
            d0,
            Request::SetTarget {
                domid: 1,
                target: 4
            }
        ),
        ok(SetTarget)
    );
    assert_eq!(
        t.req(
            d0,
            Request::SetTarget {
                domid: 5,
                target: 4
            }
        ),
        err(Enoent)
    );
    t.write(d0, "/t4", "x");
    t.set_perms(d0, "/t4", &["n4"]);
    t.write(d0, "/t4acl", "x");
    t.set_perms(d0, "/t4acl", &["n0", "r4"]);
    assert_eq!(t.read(d1, "/t4"), read_ok("x"));
    assert_eq!(t.read(d1, "/t4acl"), read_ok("x"));
    assert_eq!(t.set_perms(d1, "/t4", &["n4", "r1"]), ok(SetPerms));
}

#[test]
fn directory_part_pages_by_byte_offset() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let dp = |t: &mut T, path: &str, off: u32| -> Vec<u8> {
        // Raw payloads: partial lists are not always representable as names.
        let m = t.req_msg(
            d0,
            0,
            Request::DirectoryPart {
                path: p(path),
                offset: off,
            },
        );
        assert_eq!(m.header.ty, DirectoryPart.as_u32());
        m.payload
    };
    let root = dp(&mut t, "/", 0);
    let gen_end = root.iter().position(|&b| b == 0).unwrap();
    let gen = String::from_utf8(root[..gen_end].to_vec()).unwrap();
    assert_eq!(root, format!("{gen}\0tool\0\0").into_bytes());
    assert_eq!(dp(&mut t, "/", 2), format!("{gen}\0ol\0\0").into_bytes());
    assert_eq!(dp(&mut t, "/", 4), format!("{gen}\0\0\0").into_bytes());
    assert_eq!(dp(&mut t, "/", 5), format!("{gen}\0\0").into_bytes());
    assert_eq!(dp(&mut t, "/", 100), format!("{gen}\0\0").into_bytes());
    // A children list over 4096 bytes: DIRECTORY is E2BIG, DIRECTORY_PART pages it.
    for i in 0..60 {
        t.write(d0, &format!("/big/c{i:03}{}", "x".repeat(75)), "");
    }
    assert_eq!(t.dir(d0, "/big"), err(E2big));
    let mut off = 0u32;
    let mut all = Vec::new();
    loop {
        match t.req(
            d0,
            Request::DirectoryPart {
                path: p("/big"),
                offset: off,
            },
        ) {
            Response::DirectoryPart {
                children, complete, ..
            } => {
                for c in &children {
                    off += c.len() as u32 + 1;
                }
                all.extend(children);
                if complete {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(all.len(), 60);
    assert_eq!(all[59], format!("c059{}", "x".repeat(75)));
    // A domU may page what it may read.
    let d1 = t.domu(d0, 1);
    assert_eq!(
        t.req(
            d1,
            Request::DirectoryPart {
                path: p("/"),
                offset: 0
            }
        ),
        err(Eacces)
    );
    t.write(d1, "x2/y", "");
    assert!(matches!(
        t.req(d1, Request::DirectoryPart { path: p("x2"), offset: 0 }),
        Response::DirectoryPart { complete: true, ref children, .. } if children == &["y"]
    ));
}

#[test]
fn path_length_quota_applies_to_everyone() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    // A domU's relative path of 2000 bytes is legal (and its home's children list stays
    // under the default node-size quota).
    assert_eq!(t.write(d1, &"q".repeat(2000), "v"), ok(Write));
    assert_eq!(
        t.write(d0, &format!("/{}", "p".repeat(2047)), "v"),
        ok(Write)
    );
    assert_eq!(
        t.write(d0, &format!("/{}", "p".repeat(2048)), "v"),
        err(Einval)
    );
    assert_eq!(
        t.write(d0, &format!("/local/domain/1/{}", "p".repeat(2048)), "v"),
        ok(Write)
    );
    assert_eq!(
        t.write(d0, &format!("/local/domain/1/{}", "p".repeat(2049)), "v"),
        err(Einval)
    );
    assert_eq!(
        t.watch(d0, &format!("/{}", "p".repeat(2048)), "t"),
        err(Einval)
    );
    let mut small = T::with(Quotas {
        path_max: 10,
        ..Quotas::default()
    });
    let d0 = small.xs.connect(0);
    assert_eq!(small.write(d0, "/012345678", ""), ok(Write));
    assert_eq!(small.write(d0, "/0123456789", ""), err(Einval));
}

#[test]
fn domain_queries() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let table: &[(Request, Response)] = &[
        (
            Request::GetDomainPath(5),
            Response::GetDomainPath(p("/local/domain/5")),
        ),
        (
            Request::IsDomainIntroduced(5),
            Response::IsDomainIntroduced(false),
        ),
        (
            Request::IsDomainIntroduced(0),
            Response::IsDomainIntroduced(true),
        ),
        (Request::Release(0), err(Einval)),
        (Request::Release(9), err(Enoent)),
        (Request::Resume(9), err(Enoent)),
        (
            Request::SetTarget {
                domid: 9,
                target: 2,
            },
            err(Enoent),
        ),
        (
            Request::Introduce {
                domid: 0,
                mfn: 1,
                port: 1,
            },
            ok(Introduce),
        ),
        (
            Request::Introduce {
                domid: 6,
                mfn: 1,
                port: 1,
            },
            err(Einval),
        ),
    ];
    for (i, (req, want)) in table.iter().enumerate() {
        assert_eq!(&t.req(d0, req.clone()), want, "row {i}: {req:?}");
    }
}

#[test]
fn control_is_minimal() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let ctl = |c: &str, params: &[u8]| Request::Control {
        command: c.into(),
        params: params.to_vec(),
    };
    assert_eq!(
        t.req(d0, ctl("check", b"")),
        Response::Control(b"OK\0".to_vec())
    );
    assert_eq!(
        t.req(d0, ctl("print", b"hello\0")),
        Response::Control(b"OK\0".to_vec())
    );
    assert_eq!(t.req(d0, ctl("print", b"")), err(Einval));
    assert_eq!(t.req(d0, ctl("bogus", b"")), err(Einval));
    assert!(matches!(t.req(d0, ctl("help", b"")), Response::Control(v) if v.starts_with(b"check")));
    assert!(
        matches!(t.req(d0, ctl("quota", b"")), Response::Control(v) if v.starts_with(b"Quota"))
    );
}

#[test]
fn reply_types_echo_the_request() {
    // T::req_tx asserts reply type == request type and req_id/tx_id echo for every request.
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let tx = t.start(d0);
    assert_eq!(t.write_tx(d0, tx, "/x", "1"), ok(MsgType::Write));
    assert_eq!(t.read_tx(d0, tx, "/x"), read_ok("1"));
    assert_eq!(t.end(d0, tx, true), ok(TransactionEnd));
}
