//! The in-memory xenstored: per-domain quotas, each with the error and the exact comparison
//! Debian's xenstored 4.17 showed with `-E 6 -W 2 -t 2 -S 64 -A 3` (ci/real-xenstored).

mod server_common;

use server_common::*;
use xen_store::server::Quotas;
use xen_store::wire::MsgType::*;
use xen_store::{Response, XsError::*};

fn small() -> Quotas {
    Quotas {
        nodes: 6,
        watches: 2,
        transactions: 2,
        node_size: 64,
        perms_per_node: 3,
        ..Quotas::default()
    }
}

#[test]
fn node_count() {
    let mut t = T::with(small());
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1); // the home counts: 1
    let got: Vec<Response> = (0..8).map(|i| t.write(d1, &format!("n{i}"), "v")).collect();
    let mut want = vec![ok(Write); 5];
    want.extend([err(Enospc), err(Enospc), err(Enospc)]);
    assert_eq!(got, want);
    assert_eq!(t.write(d1, "deep/a/b", "v"), err(Enospc));
    assert_eq!(t.mkdir(d1, "mk"), err(Enospc));
    // Overwriting is fine; removing frees.
    assert_eq!(t.write(d1, "n0", "w"), ok(Write));
    assert_eq!(t.rm(d1, "n0"), ok(Rm));
    assert_eq!(t.write(d1, "deep", "v"), ok(Write));
    // Creating several nodes at once needs room for all of them.
    t.rm(d1, "deep");
    t.rm(d1, "n1");
    assert_eq!(t.write(d1, "x/y/z", "v"), err(Enospc));
    assert_eq!(t.write(d1, "x/y", "v"), ok(Write));
    // dom0 is not limited, and may push a domU over its quota by writing in its home.
    for i in 0..8 {
        assert_eq!(t.write(d0, &format!("/z/n{i}"), "v"), ok(Write));
        assert_eq!(
            t.write(d0, &format!("/local/domain/1/z{i}"), "v"),
            ok(Write)
        );
    }
    assert_eq!(t.xs.nodes_owned(1), 14);
    assert_eq!(t.write(d1, "z0", "overwrite"), ok(Write));
    assert_eq!(t.write(d1, "fresh", "v"), err(Enospc));
}

#[test]
fn node_size() {
    let mut t = T::with(small());
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    // 24 header + 8 per permission + data + children: must stay below 64.
    assert_eq!(t.write(d1, "sz", &"x".repeat(31)), ok(Write));
    assert_eq!(t.write(d1, "sz", &"x".repeat(32)), err(Enospc));
    assert_eq!(t.write(d1, "sz", ""), ok(Write));
    assert_eq!(t.set_perms(d1, "sz", &["n1", "r0", "r0"]), ok(SetPerms));
    assert_eq!(t.write(d1, "sz", &"x".repeat(15)), ok(Write)); // 24 + 24 + 15 = 63
    assert_eq!(t.write(d1, "sz", &"x".repeat(16)), err(Enospc));
    assert_eq!(t.set_perms(d1, "sz", &["n1"]), ok(SetPerms));
    // A parent's children list counts: the third 10-byte child makes "d" 32 + 33 bytes.
    assert_eq!(t.write(d1, "d/aaaaaaaaaa", ""), ok(Write));
    assert_eq!(t.write(d1, "d/bbbbbbbbbb", ""), ok(Write));
    assert_eq!(t.write(d1, "d/cccccccccc", ""), err(Enospc));
    // dom0 is not limited; the domU can still remove children of an oversized node but not
    // write to it.
    assert_eq!(t.write(d0, "/local/domain/1/d/cccccccccc", ""), ok(Write));
    assert_eq!(t.write(d1, "d", "x"), err(Enospc));
    assert_eq!(t.read(d1, "d"), read_ok(""));
    assert_eq!(t.rm(d1, "d/aaaaaaaaaa"), ok(Rm));
    assert_eq!(
        t.dir(d1, "d"),
        Response::Directory(vec!["bbbbbbbbbb".into(), "cccccccccc".into()])
    );
    assert_eq!(
        t.write(d0, "/local/domain/1/big", &"x".repeat(1000)),
        ok(Write)
    );
    assert_eq!(t.write(d1, "big", "small"), ok(Write));
}

#[test]
fn permissions_per_node() {
    let mut t = T::with(small());
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    t.write(d1, "p", "");
    assert_eq!(t.set_perms(d1, "p", &["n1", "r0", "r0"]), ok(SetPerms));
    assert_eq!(t.set_perms(d1, "p", &["n1", "r0", "r0", "r0"]), err(Enospc));
    assert_eq!(
        t.set_perms(d0, "/local/domain/1/p", &["n1", "r0", "r0", "r0", "r0"]),
        ok(SetPerms)
    );
}

#[test]
fn quotas_do_not_stop_other_connections() {
    let mut t = T::with(small());
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let d2 = t.domu(d0, 2);
    for i in 0..6 {
        t.write(d1, &format!("n{i}"), "v");
    }
    assert_eq!(t.write(d1, "more", "v"), err(Enospc));
    assert_eq!(t.write(d2, "mine", "v"), ok(Write));
    assert_eq!(t.write(d0, "/free", "v"), ok(Write));
}
