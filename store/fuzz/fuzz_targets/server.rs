//! Fuzz target `server`: arbitrary bytes are the traffic of three connections to the
//! in-memory xenstored — dom0 on a socket (privileged), domain 1 and domain 2 on their rings —
//! interleaved with toolstack actions.
//!
//! The input is a sequence of records `[op][len][len bytes]`: `op % 8` picks what happens —
//! bytes for connection 0, 1 or 2 (through a Framer, as a transport would; a framing error
//! drops and re-opens the connection), taking a connection's output, or a toolstack action
//! (create/introduce/release/destroy/shutdown of domain 1..3). A quarter of the records carry
//! a valid request built from a few chosen paths instead, so that deep states (transactions,
//! watches, permissions) are reached.
//!
//! Checked: no panic; every request gets exactly one reply (unless the connection was cut
//! off for not reading); every queued message is a well-formed message of at most
//! XENSTORE_PAYLOAD_MAX bytes; queues never exceed their bound; the store's invariants hold
//! (tree structure, per-domain node counts) after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_store::server::{ConnId, Quotas, Store};
use xen_store::wire::{MsgType, XENSTORE_PAYLOAD_MAX};
use xen_store::{Access, Framer, Message, Perms, Request};

const PATHS: [&str; 8] = [
    "/a",
    "/a/b",
    "data",
    "/local/domain/1",
    "/local/domain/2/x",
    "@introduceDomain",
    "b/c",
    "/",
];

struct Peer {
    domid: u16,
    conn: ConnId,
    framer: Framer,
}

fn typed(sel: &[u8]) -> Option<Request> {
    let b = |i: usize| sel.get(i).copied().unwrap_or(0);
    let path = PATHS[usize::from(b(1)) % PATHS.len()].parse().ok()?;
    let d = u16::from(b(2) % 4);
    Some(match b(0) % 16 {
        0 => Request::Read(path),
        1 => Request::Write {
            path,
            value: vec![b'v'; usize::from(b(2))],
        },
        2 => Request::Mkdir(path),
        3 => Request::Rm(path),
        4 => Request::Directory(path),
        5 => Request::GetPerms(path),
        6 => {
            let others =
                [Access::None, Access::Read, Access::Write, Access::Both][usize::from(b(3) % 4)];
            Request::SetPerms {
                path,
                perms: Perms::new(d, others).with(Access::Read, 1),
            }
        }
        7 => Request::Watch {
            path,
            token: format!("t{}", b(3) % 3),
        },
        8 => Request::Unwatch {
            path,
            token: format!("t{}", b(3) % 3),
        },
        9 => Request::TransactionStart,
        10 => Request::TransactionEnd {
            commit: b(3) % 2 == 0,
        },
        11 => Request::Introduce {
            domid: d,
            mfn: 1,
            port: 1,
        },
        12 => Request::Release(d),
        13 => Request::SetTarget {
            domid: d,
            target: u16::from(b(3) % 4),
        },
        14 => Request::DirectoryPart {
            path,
            offset: u32::from(b(3)),
        },
        _ => Request::ResetWatches,
    })
}

fn check_output(store: &mut Store, peer: &Peer, expect_replies: usize) {
    let broken = store.is_broken(peer.conn);
    let out = store.take_output(peer.conn);
    let mut replies = 0;
    for m in &out {
        assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
        assert_eq!(m.header.len as usize, m.payload.len());
        let wire = m.encode().expect("queued messages encode");
        assert_eq!(Message::decode(&wire).as_ref(), Ok(m));
        if m.header.ty != MsgType::WatchEvent.as_u32() {
            replies += 1;
        }
    }
    if !broken {
        assert_eq!(replies, expect_replies, "one reply per request");
    }
}

fuzz_target!(|data: &[u8]| {
    let quotas = Quotas {
        nodes: 12,
        watches: 3,
        transactions: 2,
        node_size: 200,
        perms_per_node: 3,
        path_max: 64,
        transaction_nodes: 16,
        memory: 4096,
        keep_orphans: data.first().is_some_and(|b| b & 1 == 1),
        outbox: 16,
    };
    let mut store = Store::new(quotas);
    let dom0 = store.connect(0);
    let mut peers = vec![
        Peer {
            domid: 0,
            conn: dom0,
            framer: Framer::new(),
        },
        Peer {
            domid: 1,
            conn: store.connect(1),
            framer: Framer::new(),
        },
        Peer {
            domid: 2,
            conn: store.connect(2),
            framer: Framer::new(),
        },
    ];
    let mut rest = data.get(1..).unwrap_or(&[]);
    let mut req_id = 1u32;
    let mut pending = [0usize; 3];
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        let who = usize::from(*op >> 3) % 3;
        match op % 8 {
            0..=2 => {
                let i = usize::from(op % 8);
                // Re-open a connection the store closed (released domain) or cut off.
                if !store.is_connected(peers[i].conn) || store.is_broken(peers[i].conn) {
                    store.disconnect(peers[i].conn);
                    peers[i].conn = store.connect(peers[i].domid);
                    peers[i].framer.reset();
                    pending[i] = 0;
                    store.take_output(peers[i].conn);
                }
                let p = &mut peers[i];
                let mut msgs = Vec::new();
                let mut bad = false;
                for item in p.framer.feed(chunk) {
                    match item {
                        Ok(m) => msgs.push(m),
                        Err(_) => bad = true,
                    }
                }
                for m in msgs {
                    store.handle(p.conn, &m);
                    pending[i] += 1;
                }
                if bad {
                    // xenstored drops a client that sends an oversized header.
                    store.disconnect(p.conn);
                    p.conn = store.connect(p.domid);
                    p.framer.reset();
                    pending[i] = 0;
                    store.take_output(p.conn);
                }
            }
            3 => {
                let i = who;
                let expect = pending[i];
                pending[i] = 0;
                check_output(&mut store, &peers[i], expect);
            }
            4 => {
                // A typed request, possibly inside transaction 1 or 2.
                let i = who;
                if let Some(req) = typed(chunk) {
                    let tx = u32::from(chunk.get(4).copied().unwrap_or(0) % 3);
                    if let Ok(m) = req.to_message(req_id, tx) {
                        req_id = req_id.wrapping_add(1);
                        if store.is_connected(peers[i].conn) {
                            store.handle(peers[i].conn, &m);
                            pending[i] += 1;
                        }
                    }
                }
            }
            _ => {
                let d = u16::from(chunk.first().copied().unwrap_or(0) % 3) + 1;
                match op % 8 {
                    5 => store.create_domain(d),
                    6 => {
                        let _ = store.release_domain(d);
                    }
                    _ => match chunk.get(1).copied().unwrap_or(0) % 3 {
                        0 => store.destroy_domain(d),
                        1 => store.shutdown_domain(d),
                        _ => {
                            let _ = store.introduce_domain(d);
                        }
                    },
                }
                store.take_notices();
            }
        }
        // A release (by message or by the toolstack) closes a domain's connection, and its
        // queued replies with it.
        for (i, p) in peers.iter().enumerate() {
            if !store.is_connected(p.conn) {
                pending[i] = 0;
            }
        }
        for p in &peers {
            assert!(store.pending_output(p.conn) <= 2 * store.quotas().outbox);
        }
        if let Err(e) = store.check_consistency() {
            panic!("inconsistent store: {e}");
        }
    }
    for i in 0..3 {
        let expect = pending[i];
        if store.is_connected(peers[i].conn) {
            check_output(&mut store, &peers[i], expect);
        }
    }
});
