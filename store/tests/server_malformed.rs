//! The in-memory xenstored: malformed requests get xenstored's error reply, never a panic,
//! and neither that connection nor any other stops being served. Expected errors are Debian
//! xenstored 4.17's (ci/real-xenstored) where it is strict; where it is lenient (atoi, strtol)
//! the codec's strictness gives EINVAL (documented in the server module).

// `b"1\01\0"` is 1, NUL, 1, NUL: Rust has no octal escapes.
#![allow(clippy::octal_escapes)]

mod server_common;

use server_common::*;
use xen_store::wire::{Header, Message, MsgType::*};
use xen_store::{Response, XsError, XsError::*};

#[test]
fn each_malformed_request_gets_its_error() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    let long_rel = format!("{}\0", "a".repeat(2049));
    let long_abs = format!("/{}\0", "a".repeat(3072));
    let table: &[(u32, &[u8], XsError)] = &[
        // Unknown and server-only types.
        (25, b"", Enosys),
        (20, b"", Enosys),
        (0xffff, b"", Enosys),
        (WatchEvent.as_u32(), b"/a\0b\0", Enosys),
        (Error.as_u32(), b"EINVAL\0", Enosys),
        // Missing NUL, extra strings, trailing bytes.
        (Read.as_u32(), b"/t1", Einval),
        (Read.as_u32(), b"/t1\0extra", Einval),
        (Read.as_u32(), b"/t1\0extra\0", Einval),
        (Read.as_u32(), b"", Einval),
        (Write.as_u32(), b"/t1/nonul", Einval),
        (Mkdir.as_u32(), b"/x\0\0", Einval),
        (Watch.as_u32(), b"/wt\0", Einval),
        (Watch.as_u32(), b"/wt\0t\0x\0", Einval),
        (GetDomainPath.as_u32(), b"5", Einval),
        (TransactionEnd.as_u32(), b"T", Einval),
        // Bad paths: empty, `..`, `.`, `//`, trailing `/`, bad characters, non-UTF-8, too long,
        // `@` where a node is needed.
        (Read.as_u32(), b"\0", Einval),
        (Read.as_u32(), b"/t1/x/..\0", Einval),
        (Read.as_u32(), b"/t1/./x\0", Einval),
        (Read.as_u32(), b"/t1//a\0", Einval),
        (Read.as_u32(), b"/t1/\0", Einval),
        (Read.as_u32(), b"/a b\0", Einval),
        (Read.as_u32(), b"/a\xc3\xa9\0", Einval),
        (Read.as_u32(), b"/a\xff\0", Einval),
        (Write.as_u32(), b"@foo\0v", Einval),
        (Read.as_u32(), b"@foo\0", Einval),
        (Rm.as_u32(), b"@releaseDomain\0", Einval),
        (Read.as_u32(), long_rel.as_bytes(), Einval),
        (Read.as_u32(), long_abs.as_bytes(), Einval),
        // Bad permission strings.
        (SetPerms.as_u32(), b"/t1\0", Einval),
        (SetPerms.as_u32(), b"/t1\0x5\0", Einval),
        (SetPerms.as_u32(), b"/t1\0r5x\0", Einval),
        (SetPerms.as_u32(), b"/t1\0r\0", Einval),
        (SetPerms.as_u32(), b"/t1\0N0\0", Einval),
        (SetPerms.as_u32(), b"/t1\0r70000\0", Einval),
        // Bad numbers and booleans.
        (GetDomainPath.as_u32(), b"abc\0", Einval),
        (Introduce.as_u32(), b"1\01\0", Einval),
        (DirectoryPart.as_u32(), b"/\0x\0", Einval),
    ];
    for (i, (ty, payload, want)) in table.iter().enumerate() {
        assert_eq!(
            t.raw(d0, *ty, 0, payload),
            err(*want),
            "row {i}: type {ty} {payload:?}"
        );
        // The same from a domU (privileged-only types would be EACCES first).
        if !matches!(*ty, x if x == Introduce.as_u32()) {
            assert_eq!(t.raw(d1, *ty, 0, payload), err(*want), "domU row {i}");
        }
        // Both connections keep working.
        assert_eq!(t.read(d0, "/tool"), read_ok(""), "after row {i}");
        assert_eq!(t.write(d1, "alive", "1"), ok(Write), "after row {i}");
    }
}

#[test]
fn checks_come_in_xenstoreds_order() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let d1 = t.domu(d0, 1);
    // Privilege before transaction id before payload.
    assert_eq!(t.raw(d1, Introduce.as_u32(), 999, b"junk"), err(Eacces));
    assert_eq!(t.raw(d0, Introduce.as_u32(), 999, b"junk"), err(Enoent));
    assert_eq!(t.raw(d0, Read.as_u32(), 999, b"/t1"), err(Enoent));
    // Unknown type before everything.
    assert_eq!(t.raw(d1, 99, 999, b"junk"), err(Enosys));
}

#[test]
fn oversized_and_inconsistent_messages() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let big = vec![b'a'; 5000];
    let msg = Message {
        header: Header {
            ty: Write.as_u32(),
            req_id: 3,
            tx_id: 0,
            len: big.len() as u32,
        },
        payload: big,
    };
    let reply = t.send(d0, &msg);
    assert_eq!(Response::from_message(&reply).unwrap(), err(E2big));
    let msg = Message {
        header: Header {
            ty: Read.as_u32(),
            req_id: 4,
            tx_id: 0,
            len: 100,
        },
        payload: b"/tool\0".to_vec(),
    };
    let reply = t.send(d0, &msg);
    assert_eq!(Response::from_message(&reply).unwrap(), err(Einval));
    assert_eq!(t.read(d0, "/tool"), read_ok(""));
}

#[test]
fn lenient_where_xenstored_is() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    // TRANSACTION_START and RESET_WATCHES payloads are not looked at.
    assert!(matches!(
        t.raw(d0, TransactionStart.as_u32(), 0, b"junk"),
        Response::TransactionStart(_)
    ));
    assert_eq!(t.raw(d0, ResetWatches.as_u32(), 0, b""), ok(ResetWatches));
    // A write's value may hold NULs.
    assert_eq!(t.raw(d0, Write.as_u32(), 0, b"/v\0a\0b\0"), ok(Write));
    assert_eq!(t.read(d0, "/v"), Response::Read(b"a\0b\0".to_vec()));
}

#[test]
fn messages_for_closed_or_unknown_connections_are_ignored() {
    let mut t = T::new();
    let d0 = t.xs.connect(0);
    let gone = t.xs.connect(0);
    t.xs.disconnect(gone);
    let msg = xen_store::Request::Read(p("/tool"))
        .to_message(1, 0)
        .unwrap();
    t.xs.handle(gone, &msg);
    assert!(t.xs.take_output(gone).is_empty());
    assert_eq!(t.read(d0, "/tool"), read_ok(""));
}

/// A deterministic storm of random messages from three connections (one privileged): no
/// panic, one reply per message, bounded queues. (The `server` fuzz target does this with
/// coverage guidance.)
#[test]
fn random_storm() {
    let mut t = T::new();
    let domids = [0u16, 1, 2];
    let mut conns = [t.xs.connect(0), t.xs.connect(1), t.xs.connect(2)];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words: &[&[u8]] = &[
        b"/",
        b"a",
        b"b",
        b"local",
        b"domain",
        b"1",
        b"2",
        b"@introduceDomain",
        b"T",
        b"F",
        b"n1",
        b"r0",
        b"b2",
        b"w1",
        b"0",
        b"..",
        b"",
        b"x/y",
        b"/a/b",
        b"1",
    ];
    for round in 0..20_000 {
        let i = (next() % 3) as usize;
        // A RELEASE from dom0 or the toolstack closes a domain's connection: reconnect.
        if !t.xs.is_connected(conns[i]) {
            conns[i] = t.xs.connect(domids[i]);
        }
        let c = conns[i];
        let ty = (next() % 24) as u32;
        let mut payload = Vec::new();
        for _ in 0..(next() % 4) {
            payload.extend_from_slice(words[(next() % words.len() as u64) as usize]);
            if next() % 5 != 0 {
                payload.push(0);
            }
        }
        let tx = if next() % 4 == 0 {
            (next() % 4) as u32
        } else {
            0
        };
        let msg = Message {
            header: Header {
                ty,
                req_id: round,
                tx_id: tx,
                len: payload.len() as u32,
            },
            payload,
        };
        t.xs.handle(c, &msg);
        let out = t.xs.take_output(c);
        let replies = out
            .iter()
            .filter(|m| m.header.ty != WatchEvent.as_u32())
            .count();
        assert!(
            replies == 1 || t.xs.is_broken(c) || !t.xs.is_connected(c),
            "one reply per request: {msg:?} -> {out:?}"
        );
        if next() % 50 == 0 {
            for c in conns {
                t.xs.take_output(c);
            }
        }
        for c in conns {
            assert!(t.xs.pending_output(c) <= 2 * t.xs.quotas().outbox);
        }
        if next() % 5000 == 0 {
            t.xs.destroy_domain(2);
        }
        if round % 1000 == 0 {
            t.xs.check_consistency().unwrap();
        }
    }
}
