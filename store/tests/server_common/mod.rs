//! Helpers shared by the `server*` integration tests: drive a [`Store`] with typed requests
//! and split its output into the reply and the watch events.
#![allow(dead_code)]

use std::collections::BTreeMap;

use xen_store::server::{ConnId, Quotas, Store};
use xen_store::wire::{Header, Message, MsgType};
use xen_store::{Path, Perms, Request, Response, XsError};

pub struct T {
    pub xs: Store,
    next_req: u32,
    events: BTreeMap<ConnId, Vec<(String, String)>>,
}

pub fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

pub fn perms(list: &[&str]) -> Perms {
    Perms::from_vec(list.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
}

pub fn ok(ty: MsgType) -> Response {
    Response::Ok(ty)
}

pub fn err(e: XsError) -> Response {
    Response::Error(e)
}

impl T {
    pub fn new() -> T {
        T::with(Quotas::default())
    }

    pub fn with(q: Quotas) -> T {
        T {
            xs: Store::new(q),
            next_req: 1,
            events: BTreeMap::new(),
        }
    }

    /// Send a raw message; return the reply (events go to the connection's event list).
    pub fn send(&mut self, c: ConnId, msg: &Message) -> Message {
        self.xs.handle(c, msg);
        let mut reply = None;
        for m in self.xs.take_output(c) {
            if m.header.ty == MsgType::WatchEvent.as_u32() {
                assert_eq!((m.header.req_id, m.header.tx_id), (0, 0));
                match Response::from_message(&m).unwrap() {
                    Response::WatchEvent { path, token } => self
                        .events
                        .entry(c)
                        .or_default()
                        .push((path.to_string(), token)),
                    other => panic!("bad event {other:?}"),
                }
            } else {
                assert!(reply.is_none(), "two replies to one request");
                reply = Some(m);
            }
        }
        let reply = reply.expect("a reply");
        assert_eq!(reply.header.req_id, msg.header.req_id, "req_id echoed");
        assert_eq!(reply.header.tx_id, msg.header.tx_id, "tx_id echoed");
        reply
    }

    pub fn raw(&mut self, c: ConnId, ty: u32, tx: u32, payload: &[u8]) -> Response {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = Message {
            header: Header {
                ty,
                req_id,
                tx_id: tx,
                len: payload.len() as u32,
            },
            payload: payload.to_vec(),
        };
        let reply = self.send(c, &msg);
        Response::from_message(&reply).unwrap()
    }

    /// Send a request; the reply message undecoded.
    pub fn req_msg(&mut self, c: ConnId, tx: u32, r: Request) -> Message {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = r.to_message(req_id, tx).unwrap();
        self.send(c, &msg)
    }

    pub fn req_tx(&mut self, c: ConnId, tx: u32, r: Request) -> Response {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = r.to_message(req_id, tx).unwrap();
        let reply = self.send(c, &msg);
        let rsp = Response::from_message(&reply).unwrap();
        if !matches!(rsp, Response::Error(_)) {
            assert_eq!(
                reply.header.ty, msg.header.ty,
                "reply type is the request type"
            );
        }
        rsp
    }

    pub fn req(&mut self, c: ConnId, r: Request) -> Response {
        self.req_tx(c, 0, r)
    }

    /// Events queued for `c` so far (taken).
    pub fn events(&mut self, c: ConnId) -> Vec<(String, String)> {
        for m in self.xs.take_output(c) {
            match Response::from_message(&m).unwrap() {
                Response::WatchEvent { path, token } => self
                    .events
                    .entry(c)
                    .or_default()
                    .push((path.to_string(), token)),
                other => panic!("unexpected unsolicited message {other:?}"),
            }
        }
        self.events.remove(&c).unwrap_or_default()
    }

    pub fn ev(&mut self, c: ConnId) -> Vec<String> {
        self.events(c)
            .into_iter()
            .map(|(p, t)| format!("{p} {t}"))
            .collect()
    }

    // Typed shorthands.
    pub fn write(&mut self, c: ConnId, path: &str, v: &str) -> Response {
        self.req(
            c,
            Request::Write {
                path: p(path),
                value: v.as_bytes().to_vec(),
            },
        )
    }
    pub fn write_tx(&mut self, c: ConnId, tx: u32, path: &str, v: &str) -> Response {
        self.req_tx(
            c,
            tx,
            Request::Write {
                path: p(path),
                value: v.as_bytes().to_vec(),
            },
        )
    }
    pub fn read(&mut self, c: ConnId, path: &str) -> Response {
        self.req(c, Request::Read(p(path)))
    }
    pub fn read_tx(&mut self, c: ConnId, tx: u32, path: &str) -> Response {
        self.req_tx(c, tx, Request::Read(p(path)))
    }
    pub fn mkdir(&mut self, c: ConnId, path: &str) -> Response {
        self.req(c, Request::Mkdir(p(path)))
    }
    pub fn rm(&mut self, c: ConnId, path: &str) -> Response {
        self.req(c, Request::Rm(p(path)))
    }
    pub fn dir(&mut self, c: ConnId, path: &str) -> Response {
        self.req(c, Request::Directory(p(path)))
    }
    pub fn set_perms(&mut self, c: ConnId, path: &str, list: &[&str]) -> Response {
        self.req(
            c,
            Request::SetPerms {
                path: p(path),
                perms: perms(list),
            },
        )
    }
    pub fn get_perms(&mut self, c: ConnId, path: &str) -> Response {
        self.req(c, Request::GetPerms(p(path)))
    }
    pub fn watch(&mut self, c: ConnId, path: &str, token: &str) -> Response {
        self.req(
            c,
            Request::Watch {
                path: p(path),
                token: token.into(),
            },
        )
    }
    pub fn unwatch(&mut self, c: ConnId, path: &str, token: &str) -> Response {
        self.req(
            c,
            Request::Unwatch {
                path: p(path),
                token: token.into(),
            },
        )
    }
    pub fn start(&mut self, c: ConnId) -> u32 {
        match self.req(c, Request::TransactionStart) {
            Response::TransactionStart(id) => id,
            other => panic!("transaction start: {other:?}"),
        }
    }
    pub fn end(&mut self, c: ConnId, tx: u32, commit: bool) -> Response {
        self.req_tx(c, tx, Request::TransactionEnd { commit })
    }

    /// A domU with its home `/local/domain/N` created by dom0 and owned by it (`n<N>`), as
    /// libxl leaves it (minus the `r0`), with initial events drained.
    pub fn domu(&mut self, dom0: ConnId, domid: u16) -> ConnId {
        let c = self.xs.connect(domid);
        let home = format!("/local/domain/{domid}");
        assert_eq!(self.mkdir(dom0, &home), ok(MsgType::Mkdir));
        assert_eq!(
            self.set_perms(dom0, &home, &[&format!("n{domid}")]),
            ok(MsgType::SetPerms)
        );
        self.events(dom0);
        self.events(c);
        c
    }
}

pub fn read_ok(v: &str) -> Response {
    Response::Read(v.as_bytes().to_vec())
}
