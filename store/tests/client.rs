//! The XenStore client against scripted servers: a deterministic in-process loopback transport
//! (with a fake clock, so timeouts cost no real time) and a Unix socket to a server thread.
//!
//! What is checked: every request is encoded as xenstore.txt says and carries the right
//! req_id/tx_id; replies are matched by req_id and type; XS_WATCH_EVENTs interleaved anywhere
//! in the stream (split at every byte boundary) go to their token's queue and are never taken
//! for a reply; XS_ERROR maps to `XsError`; transactions retry on EAGAIN a bounded number of
//! times; DIRECTORY falls back to DIRECTORY_PART on E2BIG; a server that dies, stalls, floods
//! or lies yields an error, never a hang.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xen_store::client::{
    Client, ClientConfig, ProtocolError, Store, Transport, TransportError, WatchEvent,
    XsClientError,
};
use xen_store::perms::{Access, Perms};
use xen_store::wire::{Header, Message, MsgType};
use xen_store::{Framer, Path, Request, Response, XsError};
use xen_store_host::UnixTransport;

// ---------------------------------------------------------------------------------------------
// The loopback transport and its scripted server.

/// What the scripted server does in answer to one request.
#[derive(Debug, Clone)]
enum Act {
    /// Reply with this response (req_id and tx_id copied from the request).
    Reply(Response),
    /// An XS_ERROR reply.
    Error(XsError),
    /// A watch event (req_id 0).
    Event(&'static str, &'static str),
    /// A whole message with an arbitrary header.
    Raw(Message),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// Close the connection once everything before this was delivered.
    Die,
}

type Script = Box<dyn FnMut(&Message, &Request) -> Vec<Act>>;

struct Loopback {
    now: Duration,
    inbox: Framer,
    outbox: VecDeque<u8>,
    /// Bytes delivered per recv at most (to split messages everywhere).
    chunk: usize,
    /// After delivering this many bytes of outbox, the connection is closed.
    dies_at: Option<usize>,
    delivered: usize,
    script: Script,
    /// Every request received, decoded.
    log: Vec<(Header, Request)>,
    /// Produce bytes when idle (e.g. an endless stream of watch events).
    idle: Option<Box<dyn FnMut() -> Vec<u8>>>,
    recv_calls: usize,
}

impl Loopback {
    fn new(script: impl FnMut(&Message, &Request) -> Vec<Act> + 'static) -> Loopback {
        Loopback {
            now: Duration::ZERO,
            inbox: Framer::new(),
            outbox: VecDeque::new(),
            chunk: usize::MAX,
            dies_at: None,
            delivered: 0,
            script: Box::new(script),
            log: Vec::new(),
            idle: None,
            recv_calls: 0,
        }
    }

    fn chunked(mut self, chunk: usize) -> Loopback {
        self.chunk = chunk;
        self
    }

    fn push_msg(&mut self, m: &Message) {
        self.outbox.extend(m.encode().unwrap());
    }

    fn push_event(&mut self, path: &str, token: &str) {
        let m = Response::WatchEvent {
            path: Path::new(path).unwrap(),
            token: token.into(),
        }
        .to_message(0, 0)
        .unwrap();
        self.push_msg(&m);
    }

    fn perform(&mut self, h: &Header, acts: Vec<Act>) {
        for a in acts {
            match a {
                Act::Reply(r) => {
                    let m = r.to_message(h.req_id, h.tx_id).unwrap();
                    self.push_msg(&m);
                }
                Act::Error(e) => {
                    let m = Response::Error(e).to_message(h.req_id, h.tx_id).unwrap();
                    self.push_msg(&m);
                }
                Act::Event(p, t) => self.push_event(p, t),
                Act::Raw(m) => self.push_msg(&m),
                Act::Bytes(b) => self.outbox.extend(b),
                Act::Die => self.dies_at = Some(self.delivered + self.outbox.len()),
            }
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.iter().map(|(_, r)| r.clone()).collect()
    }

    fn types(&self) -> Vec<MsgType> {
        self.log.iter().map(|(_, r)| r.msg_type()).collect()
    }
}

impl Transport for Loopback {
    fn now(&self) -> Duration {
        self.now
    }

    fn send(&mut self, bytes: &[u8], _timeout: Duration) -> Result<(), TransportError> {
        if self.dies_at.is_some_and(|d| self.delivered >= d) {
            return Err(TransportError::Closed);
        }
        let msgs: Vec<Message> = self.inbox.feed(bytes).map(|m| m.unwrap()).collect();
        for m in msgs {
            let req = Request::from_message(&m).expect("client sent a malformed request");
            // Every request is re-encoded identically (strict codec): it is well formed.
            assert_eq!(req.to_message(m.header.req_id, m.header.tx_id).unwrap(), m);
            self.log.push((m.header, req.clone()));
            let acts = (self.script)(&m, &req);
            self.perform(&m.header, acts);
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        self.recv_calls += 1;
        assert!(self.recv_calls < 1_000_000, "client spins");
        if self.outbox.is_empty() {
            if let Some(idle) = &mut self.idle {
                let b = idle();
                self.outbox.extend(b);
                self.now += Duration::from_millis(1);
            }
        }
        let mut n = buf.len().min(self.chunk).min(self.outbox.len());
        if let Some(d) = self.dies_at {
            if self.delivered >= d {
                return Err(TransportError::Closed);
            }
            n = n.min(d - self.delivered);
        }
        if n == 0 {
            // Nothing will come: the whole timeout passes.
            self.now += timeout;
            return Ok(0);
        }
        for b in buf.iter_mut().take(n) {
            *b = self.outbox.pop_front().unwrap();
        }
        self.delivered += n;
        Ok(n)
    }
}

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

fn ok(req: &Request) -> Act {
    Act::Reply(Response::Ok(req.msg_type()))
}

/// A server that answers every request with a plausible success reply.
fn agreeable(_: &Message, req: &Request) -> Vec<Act> {
    let r = match req {
        Request::Read(path) => Response::Read(format!("value of {path}").into_bytes()),
        Request::Directory(_) => Response::Directory(vec!["a".into(), "b".into()]),
        Request::GetPerms(_) => {
            Response::GetPerms(Perms::new(0, Access::Read).with(Access::Both, 5))
        }
        Request::TransactionStart => Response::TransactionStart(42),
        Request::GetDomainPath(d) => Response::GetDomainPath(p(&format!("/local/domain/{d}"))),
        Request::IsDomainIntroduced(d) => Response::IsDomainIntroduced(*d == 3),
        Request::Control { command, .. } => Response::Control(command.clone().into_bytes()),
        Request::DirectoryPart { .. } => Response::DirectoryPart {
            generation: 1,
            children: vec![],
            complete: true,
        },
        other => Response::Ok(other.msg_type()),
    };
    vec![Act::Reply(r)]
}

fn cfg(timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_millis(timeout_ms),
        ..ClientConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and replies.

#[test]
fn every_operation_encodes_and_decodes() {
    for chunk in [usize::MAX, 1, 5] {
        let mut lb = Loopback::new(agreeable).chunked(chunk);
        let mut c = Client::new(&mut lb);
        assert_eq!(c.read("/vm/x").unwrap(), b"value of /vm/x");
        assert_eq!(c.read_string("name").unwrap(), "value of name");
        c.write("/a/b", b"v\0with nul").unwrap();
        c.write_str("/a/s", "text").unwrap();
        c.write_u32("/a/u", 4_000_000_000).unwrap();
        c.write_u64("/a/l", u64::MAX).unwrap();
        c.write_bool("/a/f", true).unwrap();
        c.mkdir("/a/d").unwrap();
        c.rm("/a/d").unwrap();
        assert_eq!(c.directory("/a").unwrap(), ["a", "b"]);
        let perms = c.get_perms("/a").unwrap();
        assert_eq!(perms.owner(), 0);
        assert_eq!(perms.access_for(5), Access::Both);
        c.set_perms("@releaseDomain", &Perms::new(0, Access::None))
            .unwrap();
        assert_eq!(c.get_domain_path(7).unwrap().as_str(), "/local/domain/7");
        c.introduce(3, 0x1234, 9).unwrap();
        assert!(c.is_domain_introduced(3).unwrap());
        assert!(!c.is_domain_introduced(4).unwrap());
        c.release(3).unwrap();
        c.resume(3).unwrap();
        c.set_target(4, 3).unwrap();
        c.reset_watches().unwrap();
        assert_eq!(c.control("help", b"").unwrap(), b"help");
        drop(c);
        let want = vec![
            Request::Read(p("/vm/x")),
            Request::Read(p("name")),
            Request::Write {
                path: p("/a/b"),
                value: b"v\0with nul".to_vec(),
            },
            Request::Write {
                path: p("/a/s"),
                value: b"text".to_vec(),
            },
            Request::Write {
                path: p("/a/u"),
                value: b"4000000000".to_vec(),
            },
            Request::Write {
                path: p("/a/l"),
                value: b"18446744073709551615".to_vec(),
            },
            Request::Write {
                path: p("/a/f"),
                value: b"1".to_vec(),
            },
            Request::Mkdir(p("/a/d")),
            Request::Rm(p("/a/d")),
            Request::Directory(p("/a")),
            Request::GetPerms(p("/a")),
            Request::SetPerms {
                path: p("@releaseDomain"),
                perms: Perms::new(0, Access::None),
            },
            Request::GetDomainPath(7),
            Request::Introduce {
                domid: 3,
                mfn: 0x1234,
                port: 9,
            },
            Request::IsDomainIntroduced(3),
            Request::IsDomainIntroduced(4),
            Request::Release(3),
            Request::Resume(3),
            Request::SetTarget {
                domid: 4,
                target: 3,
            },
            Request::ResetWatches,
            Request::Control {
                command: "help".into(),
                params: vec![],
            },
        ];
        assert_eq!(lb.requests(), want);
        // Fresh, non-zero request ids; no transaction.
        let ids: Vec<u32> = lb.log.iter().map(|(h, _)| h.req_id).collect();
        assert!(ids.iter().all(|&i| i != 0));
        assert!(ids.windows(2).all(|w| w[0] != w[1]));
        assert!(lb.log.iter().all(|(h, _)| h.tx_id == 0));
    }
}

#[test]
fn invalid_arguments_send_nothing() {
    let mut lb = Loopback::new(agreeable);
    let mut c = Client::new(&mut lb);
    for bad in ["", "/a//b", "/a/", "/a b", "@releaseDomain"] {
        assert!(
            matches!(c.read(bad), Err(XsClientError::BadRequest(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.write("/a", &[b'x'; 5000]),
        Err(XsClientError::BadRequest(_))
    ));
    assert!(matches!(
        c.watch("/a", "tok\0en"),
        Err(XsClientError::BadRequest(_))
    ));
    // Nothing was sent and the client is fine.
    assert_eq!(c.read("/ok").unwrap(), b"value of /ok");
    drop(c);
    assert_eq!(lb.log.len(), 1);
}

#[test]
fn xs_error_replies_map_to_xs_errors() {
    for e in XsError::ALL {
        let mut lb = Loopback::new(move |_, _| vec![Act::Error(e)]);
        let mut c = Client::new(&mut lb);
        assert_eq!(c.read("/x"), Err(XsClientError::Xs(e)));
        assert_eq!(c.write("/x", b"1"), Err(XsClientError::Xs(e)));
        assert_eq!(c.mkdir("/x"), Err(XsClientError::Xs(e)));
        assert_eq!(c.get_domain_path(1).unwrap_err(), XsClientError::Xs(e));
        assert!(c.failure().is_none(), "an XS_ERROR is not fatal");
    }
    // ENOENT is "absent" for the Option helpers.
    let mut lb = Loopback::new(|_, _| vec![Act::Error(XsError::Enoent)]);
    let mut c = Client::new(&mut lb);
    assert_eq!(c.try_read("/x"), Ok(None));
    assert_eq!(c.exists("/x"), Ok(false));
    assert!(c.read("/x").unwrap_err().is_enoent());
    // An error name outside xsd_errors[] is a protocol error.
    let mut lb = Loopback::new(|m, _| {
        vec![Act::Raw(
            Message::new(MsgType::Error, m.header.req_id, 0, b"EWHATEVER\0".to_vec()).unwrap(),
        )]
    });
    let mut c = Client::new(&mut lb);
    assert!(matches!(
        c.read("/x"),
        Err(XsClientError::Protocol(ProtocolError::Malformed(_)))
    ));
    // ... and not fatal.
    assert!(c.failure().is_none());
}

#[test]
fn typed_helpers() {
    let mut lb = Loopback::new(|_, req| {
        let v: &[u8] = match req {
            Request::Read(path) => match path.as_str() {
                "/n" => b"4294967295",
                "/big" => b"4294967296",
                "/zeros" => b"007",
                "/neg" => b"-1",
                "/sp" => b" 1",
                "/empty" => b"",
                "/t" => b"1",
                "/f" => b"0",
                "/yes" => b"yes",
                "/bin" => b"\xff\xfe",
                "/missing" => return vec![Act::Error(XsError::Enoent)],
                _ => b"18446744073709551615",
            },
            _ => b"",
        };
        vec![Act::Reply(Response::Read(v.to_vec()))]
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(c.read_u32("/n"), Ok(u32::MAX));
    assert_eq!(c.read_u64("/big"), Ok(1 << 32));
    assert_eq!(c.read_u32("/zeros"), Ok(7));
    assert_eq!(c.read_u64("/max"), Ok(u64::MAX));
    for bad in ["/big", "/neg", "/sp", "/empty", "/yes"] {
        assert_eq!(
            c.read_u32(bad),
            Err(XsClientError::BadValue(bad.into())),
            "{bad}"
        );
    }
    assert_eq!(c.read_bool("/t"), Ok(true));
    assert_eq!(c.read_bool("/f"), Ok(false));
    assert_eq!(
        c.read_bool("/yes"),
        Err(XsClientError::BadValue("/yes".into()))
    );
    assert_eq!(c.read_bool("/n"), Err(XsClientError::BadValue("/n".into())));
    assert_eq!(
        c.read_string("/bin"),
        Err(XsClientError::BadValue("/bin".into()))
    );
    assert!(c.read_u32("/missing").unwrap_err().is_enoent());

    let g = c.gather("", &["/n", "/t", "/missing", "/yes"]).unwrap();
    assert_eq!(g.u32("/n"), Ok(Some(u32::MAX)));
    assert_eq!(g.bool("/t"), Ok(Some(true)));
    assert_eq!(g.u32("/missing"), Ok(None));
    assert!(!g.contains("/missing"));
    assert!(g.require("/missing").unwrap_err().is_enoent());
    assert_eq!(g.bool("/yes"), Err(XsClientError::BadValue("/yes".into())));
    assert_eq!(g.str("/yes"), Ok(Some("yes")));
    assert_eq!(g.get("/not-asked"), None);
    assert_eq!(g.iter().count(), 4);
}

#[test]
fn gather_reads_dir_slash_key_and_atomic_uses_one_transaction() {
    let mut lb = Loopback::new(|_, req| match req {
        Request::TransactionStart => vec![Act::Reply(Response::TransactionStart(9))],
        Request::Read(p) if p.as_str().ends_with("ring-ref") => {
            vec![Act::Reply(Response::Read(b"8".to_vec()))]
        }
        Request::Read(p) if p.as_str().ends_with("event-channel") => {
            vec![Act::Reply(Response::Read(b"17".to_vec()))]
        }
        Request::Read(_) => vec![Act::Error(XsError::Enoent)],
        other => vec![ok(other)],
    });
    let mut c = Client::new(&mut lb);
    let keys = ["ring-ref", "event-channel", "protocol"];
    let g = c.gather("device/vbd/768", &keys).unwrap();
    assert_eq!(g.u32("ring-ref"), Ok(Some(8)));
    assert_eq!(g.u32("event-channel"), Ok(Some(17)));
    assert_eq!(g.str("protocol"), Ok(None));
    let g2 = c.gather_atomic("device/vbd/768", &keys).unwrap();
    assert_eq!(g, g2);
    drop(c);
    let log = &lb.log;
    assert_eq!(log[0].1, Request::Read(p("device/vbd/768/ring-ref")));
    assert!(log[..3].iter().all(|(h, _)| h.tx_id == 0));
    assert_eq!(log[3].1, Request::TransactionStart);
    assert!(log[4..7].iter().all(|(h, _)| h.tx_id == 9));
    assert_eq!(log[7].1, Request::TransactionEnd { commit: true });
    assert_eq!(log[7].0.tx_id, 9);
    assert_eq!(log.len(), 8);
}

// ---------------------------------------------------------------------------------------------
// Watch events interleaved with replies.

#[test]
fn watch_events_interleave_with_replies_and_go_to_their_token() {
    for chunk in [usize::MAX, 1, 2, 3, 7, 16, 17] {
        let mut lb = Loopback::new(|m, req| match req {
            // The initial fire comes *before* the reply.
            Request::Watch { path, token } if token == "be" => {
                assert_eq!(path.as_str(), "backend");
                vec![Act::Event("backend", "be"), ok(req)]
            }
            Request::Watch { .. } => vec![ok(req), Act::Event("@releaseDomain", "rel")],
            Request::Read(_) => vec![
                Act::Event("backend/vbd/1/768/state", "be"),
                Act::Event("@releaseDomain", "rel"),
                // An event carrying the request's own req_id is still an event.
                Act::Raw(
                    Response::WatchEvent {
                        path: p("backend/x"),
                        token: "be".into(),
                    }
                    .to_message(m.header.req_id, m.header.tx_id)
                    .unwrap(),
                ),
                Act::Reply(Response::Read(b"4".to_vec())),
                Act::Event("backend/vbd/1/768/ring-ref", "be"),
            ],
            other => vec![ok(other)],
        })
        .chunked(chunk);
        let mut c = Client::new(&mut lb);
        c.watch("backend", "be").unwrap();
        c.watch("@releaseDomain", "rel").unwrap();
        assert_eq!(
            c.read_u32("backend/vbd/1/768/state"),
            Ok(4),
            "chunk {chunk}"
        );
        // The event after the reply may or may not have been read yet; this gets it.
        c.poll_watch_events().unwrap();
        let ev = |path: &str, token: &str| WatchEvent {
            path: p(path),
            token: token.into(),
        };
        assert_eq!(c.pending_watch_events(Some("be")), 4, "chunk {chunk}");
        assert_eq!(c.pending_watch_events(Some("rel")), 2);
        assert_eq!(
            c.take_watch_event(Some("rel")),
            Some(ev("@releaseDomain", "rel"))
        );
        // Any token: arrival order.
        assert_eq!(c.take_watch_event(None), Some(ev("backend", "be")));
        assert_eq!(
            c.take_watch_event(None),
            Some(ev("backend/vbd/1/768/state", "be"))
        );
        assert_eq!(c.take_watch_event(None), Some(ev("@releaseDomain", "rel")));
        assert_eq!(c.take_watch_event(Some("rel")), None);
        assert_eq!(
            c.next_watch_event(Some("be"), Duration::ZERO),
            Ok(Some(ev("backend/x", "be")))
        );
        assert_eq!(
            c.next_watch_event(None, Duration::from_secs(1)),
            Ok(Some(ev("backend/vbd/1/768/ring-ref", "be")))
        );
        assert_eq!(c.next_watch_event(None, Duration::from_secs(1)), Ok(None));
        assert_eq!(c.stats().events_queued, 6);
    }
}

#[test]
fn poll_is_non_blocking_and_next_event_waits_with_a_limit() {
    let mut lb = Loopback::new(agreeable).chunked(5);
    let mut c = Client::new(&mut lb);
    c.watch("a", "t1").unwrap();
    c.watch("b", "t2").unwrap();
    c.transport_mut().push_event("a", "t1");
    c.transport_mut().push_event("b", "t2");
    c.transport_mut().push_event("c", "t1");
    let t0 = c.transport().now;
    assert_eq!(c.poll_watch_events(), Ok(3));
    assert_eq!(c.poll_watch_events(), Ok(3), "nothing new");
    assert_eq!(c.transport().now, t0, "poll never waits");
    assert_eq!(c.take_watch_event(Some("t1")).unwrap().path, p("a"));
    assert_eq!(c.take_watch_event(Some("t1")).unwrap().path, p("c"));
    assert_eq!(c.take_watch_event(Some("t1")), None);
    assert_eq!(
        c.next_watch_event(Some("t2"), Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .path,
        p("b")
    );
    let t0 = c.transport().now;
    assert_eq!(
        c.next_watch_event(Some("t2"), Duration::from_secs(5)),
        Ok(None)
    );
    assert_eq!(c.transport().now - t0, Duration::from_secs(5));
    // An event for another token while waiting for t2 is queued for later.
    c.transport_mut().push_event("a/z", "t1");
    assert_eq!(
        c.next_watch_event(Some("t2"), Duration::from_secs(1)),
        Ok(None)
    );
    assert_eq!(c.take_watch_event(None).unwrap().path, p("a/z"));
}

#[test]
fn watch_queue_is_bounded_and_drops_the_oldest() {
    let mut lb = Loopback::new(agreeable);
    for i in 0..10 {
        lb.push_event(&format!("w/{i}"), "t");
    }
    lb.push_event("x", "nobody");
    let mut c = Client::with_config(
        &mut lb,
        ClientConfig {
            watch_queue_len: 4,
            ..ClientConfig::default()
        },
    );
    c.watch("w", "t").unwrap();
    assert_eq!(c.poll_watch_events(), Ok(4));
    assert_eq!(c.dropped_watch_events("t"), 6);
    let got: Vec<String> = std::iter::from_fn(|| c.take_watch_event(Some("t")))
        .map(|e| e.path.to_string())
        .collect();
    assert_eq!(got, ["w/6", "w/7", "w/8", "w/9"], "the newest are kept");
    let s = c.stats();
    assert_eq!(
        (s.events_overflowed, s.events_stray, s.events_queued),
        (6, 1, 10)
    );
}

#[test]
fn unwatch_drops_the_token_and_its_late_events() {
    let mut lb = Loopback::new(|_, req| match req {
        Request::Unwatch { .. } => vec![Act::Event("w/late", "t"), ok(req)],
        Request::Watch { .. } => vec![ok(req), Act::Event("w", "t")],
        other => vec![ok(other)],
    });
    let mut c = Client::new(&mut lb);
    c.watch("w", "t").unwrap();
    c.watch("v", "t").unwrap();
    c.unwatch("v", "t").unwrap();
    // Still one watch with token t: its events stay.
    assert_eq!(c.pending_watch_events(Some("t")), 3);
    c.unwatch("w", "t").unwrap();
    assert_eq!(c.pending_watch_events(Some("t")), 0);
    assert_eq!(c.take_watch_event(None), None);
    // An event after the last unwatch is stray.
    c.transport_mut().push_event("w/later", "t");
    assert_eq!(c.poll_watch_events(), Ok(0));
    assert_eq!(c.stats().events_stray, 1);
    // A watch the connection has already (EEXIST: registered before a `reset` the server
    // did not share, as after a cancelled suspend) stays registered: its events come.
    let mut lb = Loopback::new(|_, _| vec![Act::Error(XsError::Eexist)]);
    let mut c = Client::new(&mut lb);
    assert_eq!(c.watch("w", "t"), Err(XsClientError::Xs(XsError::Eexist)));
    c.transport_mut().push_event("w", "t");
    assert_eq!(c.poll_watch_events(), Ok(1));
    assert_eq!(c.pending_watch_events(Some("t")), 1);
    // A failed watch does not stay registered.
    let mut lb = Loopback::new(|_, _| vec![Act::Error(XsError::Eacces)]);
    let mut c = Client::new(&mut lb);
    assert_eq!(c.watch("w", "t"), Err(XsClientError::Xs(XsError::Eacces)));
    c.transport_mut().push_event("w", "t");
    assert_eq!(c.poll_watch_events(), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// Transactions.

/// A server whose TRANSACTION_END T fails with EAGAIN `conflicts` times.
fn conflicting(conflicts: usize) -> impl FnMut(&Message, &Request) -> Vec<Act> {
    let mut next_tx = 100;
    let mut left = conflicts;
    move |m, req| match req {
        Request::TransactionStart => {
            assert_eq!(m.header.tx_id, 0);
            next_tx += 1;
            vec![Act::Reply(Response::TransactionStart(next_tx))]
        }
        Request::TransactionEnd { commit: true } if left > 0 => {
            left -= 1;
            vec![Act::Error(XsError::Eagain)]
        }
        Request::Read(_) => vec![Act::Reply(Response::Read(b"41".to_vec()))],
        other => vec![ok(other)],
    }
}

#[test]
fn transact_retries_eagain_then_succeeds() {
    let mut lb = Loopback::new(conflicting(2));
    let mut c = Client::new(&mut lb);
    let mut runs = 0;
    let v = c
        .transact(|tx| {
            runs += 1;
            let n = tx.read_u32("counter")?;
            tx.write_u32("counter", n + 1)?;
            Ok(n + 1)
        })
        .unwrap();
    assert_eq!((v, runs), (42, 3));
    drop(c);
    let t = lb.types();
    use MsgType::*;
    assert_eq!(
        t,
        [
            TransactionStart,
            Read,
            Write,
            TransactionEnd, // EAGAIN
            TransactionStart,
            Read,
            Write,
            TransactionEnd, // EAGAIN
            TransactionStart,
            Read,
            Write,
            TransactionEnd, // OK
        ]
    );
    // Each attempt's requests carry its own transaction id.
    let tx_ids: Vec<u32> = lb.log.iter().map(|(h, _)| h.tx_id).collect();
    assert_eq!(
        tx_ids,
        [0, 101, 101, 101, 0, 102, 102, 102, 0, 103, 103, 103]
    );
}

#[test]
fn transact_gives_up_after_n_retries() {
    for n in [0u32, 1, 3, 16] {
        let mut lb = Loopback::new(conflicting(usize::MAX));
        let mut c = Client::with_config(
            &mut lb,
            ClientConfig {
                tx_retries: n,
                ..ClientConfig::default()
            },
        );
        let mut runs = 0;
        let r = c.transact(|tx| {
            runs += 1;
            tx.write("x", b"1")
        });
        assert_eq!(r, Err(XsClientError::Xs(XsError::Eagain)));
        assert_eq!(runs, n + 1, "retries {n}");
        drop(c);
        let starts = lb
            .types()
            .iter()
            .filter(|t| **t == MsgType::TransactionStart)
            .count();
        assert_eq!(starts as u32, n + 1);
    }
    assert_eq!(ClientConfig::default().tx_retries, 16);
}

#[test]
fn transact_error_aborts_and_inner_eagain_retries() {
    // An error from the closure aborts (END F) and is returned as is.
    let mut lb = Loopback::new(conflicting(0));
    let mut c = Client::new(&mut lb);
    let r: Result<(), _> = c.transact(|tx| {
        tx.write("a", b"1")?;
        Err(XsClientError::Xs(XsError::Eacces))
    });
    assert_eq!(r, Err(XsClientError::Xs(XsError::Eacces)));
    drop(c);
    assert_eq!(
        lb.requests().last(),
        Some(&Request::TransactionEnd { commit: false })
    );

    // EAGAIN from an operation inside the transaction: abort and run again.
    let mut failed = false;
    let mut lb = Loopback::new(move |_, req| match req {
        Request::TransactionStart => vec![Act::Reply(Response::TransactionStart(5))],
        Request::Write { .. } if !failed => {
            failed = true;
            vec![Act::Error(XsError::Eagain)]
        }
        other => vec![ok(other)],
    });
    let mut c = Client::new(&mut lb);
    c.transact(|tx| tx.write("a", b"1")).unwrap();
    drop(c);
    use MsgType::*;
    assert_eq!(
        lb.types(),
        [
            TransactionStart,
            Write,
            TransactionEnd,
            TransactionStart,
            Write,
            TransactionEnd
        ]
    );
    assert_eq!(lb.log[2].1, Request::TransactionEnd { commit: false });
    assert_eq!(lb.log[5].1, Request::TransactionEnd { commit: true });
}

#[test]
fn transaction_handle_commit_abort_drop() {
    let mut lb = Loopback::new(conflicting(0));
    let mut c = Client::new(&mut lb);
    let mut tx = c.transaction_start().unwrap();
    assert_eq!(tx.id(), 101);
    tx.write("k", b"v").unwrap();
    tx.commit().unwrap();
    let tx = c.transaction_start().unwrap();
    tx.abort().unwrap();
    {
        let mut tx = c.transaction_start().unwrap();
        tx.mkdir("d").unwrap();
        // dropped: aborted
    }
    drop(c);
    let ends: Vec<(u32, Request)> = lb
        .log
        .iter()
        .filter(|(_, r)| r.msg_type() == MsgType::TransactionEnd)
        .map(|(h, r)| (h.tx_id, r.clone()))
        .collect();
    assert_eq!(
        ends,
        [
            (101, Request::TransactionEnd { commit: true }),
            (102, Request::TransactionEnd { commit: false }),
            (103, Request::TransactionEnd { commit: false }),
        ]
    );
    // Transaction id 0 would mean "no transaction".
    let mut lb = Loopback::new(|_, _| vec![Act::Reply(Response::TransactionStart(0))]);
    let mut c = Client::new(&mut lb);
    assert_eq!(
        c.transaction_start().err(),
        Some(XsClientError::Protocol(ProtocolError::ZeroTransactionId))
    );
}

// ---------------------------------------------------------------------------------------------
// DIRECTORY_PART fallback.

fn part(generation: u64, children: &[&str], complete: bool) -> Act {
    Act::Reply(Response::DirectoryPart {
        generation,
        children: children.iter().map(|s| s.to_string()).collect(),
        complete,
    })
}

#[test]
fn directory_falls_back_to_directory_part_on_e2big() {
    let mut lb = Loopback::new(|_, req| match req {
        Request::Directory(_) => vec![Act::Error(XsError::E2big)],
        Request::DirectoryPart { offset, .. } => match offset {
            0 => vec![part(7, &["alpha", "b"], false)],
            8 => vec![part(7, &["gamma"], false)],
            14 => vec![part(7, &[], true)],
            _ => vec![Act::Error(XsError::Einval)],
        },
        other => vec![ok(other)],
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(c.directory("/big").unwrap(), ["alpha", "b", "gamma"]);
    drop(c);
    let offsets: Vec<u32> = lb
        .requests()
        .iter()
        .filter_map(|r| match r {
            Request::DirectoryPart { path, offset } => {
                assert_eq!(path.as_str(), "/big");
                Some(*offset)
            }
            _ => None,
        })
        .collect();
    assert_eq!(offsets, [0, 8, 14]);
}

#[test]
fn directory_part_restarts_when_the_node_changes() {
    let mut calls = 0;
    let mut lb = Loopback::new(move |_, req| match req {
        Request::Directory(_) => vec![Act::Error(XsError::E2big)],
        Request::DirectoryPart { offset, .. } => {
            calls += 1;
            match (calls, offset) {
                (1, 0) => vec![part(1, &["old"], false)],
                (2, 4) => vec![part(2, &["x"], false)], // changed underneath: restart
                (3, 0) => vec![part(2, &["new"], false)],
                (4, 4) => vec![part(2, &["x"], true)],
                _ => panic!("unexpected part request {calls} at {offset}"),
            }
        }
        other => vec![ok(other)],
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(c.directory("/d").unwrap(), ["new", "x"]);

    // A node that keeps changing: EAGAIN after the restarts.
    let mut g = 0;
    let mut lb = Loopback::new(move |_, req| match req {
        Request::Directory(_) => vec![Act::Error(XsError::E2big)],
        _ => {
            g += 1;
            vec![part(g, &["a"], false)]
        }
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(c.directory("/d"), Err(XsClientError::Xs(XsError::Eagain)));

    // A server without DIRECTORY_PART: the original E2BIG.
    let mut lb = Loopback::new(|_, req| match req {
        Request::Directory(_) => vec![Act::Error(XsError::E2big)],
        _ => vec![Act::Error(XsError::Enosys)],
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(c.directory("/d"), Err(XsClientError::Xs(XsError::E2big)));

    // A part that makes no progress is a protocol error, not a loop.
    let mut lb = Loopback::new(|_, req| match req {
        Request::Directory(_) => vec![Act::Error(XsError::E2big)],
        _ => vec![part(1, &[], false)],
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(
        c.directory("/d"),
        Err(XsClientError::Protocol(ProtocolError::DirectoryPart))
    );
}

// ---------------------------------------------------------------------------------------------
// Bad servers.

#[test]
fn server_dying_mid_reply_is_an_error_not_a_hang() {
    for cut in [0usize, 1, 15, 16, 17, 20] {
        let mut lb = Loopback::new(move |m, _| {
            let full = Response::Read(b"0123456789".to_vec())
                .to_message(m.header.req_id, 0)
                .unwrap()
                .encode()
                .unwrap();
            vec![Act::Bytes(full[..cut].to_vec()), Act::Die]
        })
        .chunked(3);
        let mut c = Client::with_config(&mut lb, cfg(10_000));
        assert_eq!(c.read("/x"), Err(XsClientError::Closed), "cut at {cut}");
        // Fatal: every later call says so at once.
        assert_eq!(c.read("/y"), Err(XsClientError::Closed));
        assert_eq!(c.poll_watch_events(), Err(XsClientError::Closed));
        assert_eq!(c.failure(), Some(&XsClientError::Closed));
        assert!(c.transport().now < Duration::from_secs(1), "no waiting");
    }
}

#[test]
fn a_silent_server_times_out_and_a_late_reply_is_discarded() {
    let mut n = 0;
    let mut held: Option<Message> = None;
    let mut lb = Loopback::new(move |m, req| {
        n += 1;
        let reply = Response::Read(format!("reply {n}").into_bytes())
            .to_message(m.header.req_id, 0)
            .unwrap();
        match req {
            // Hold the first reply back and send it before the second one.
            Request::Read(path) if path.as_str() == "/slow" => {
                held = Some(reply);
                vec![]
            }
            _ => {
                let mut v = vec![];
                if let Some(late) = held.take() {
                    v.push(Act::Raw(late));
                }
                v.push(Act::Raw(reply));
                v
            }
        }
    });
    let mut c = Client::with_config(&mut lb, cfg(2500));
    let t0 = c.transport().now;
    assert_eq!(c.read("/slow"), Err(XsClientError::Timeout));
    assert_eq!(c.transport().now - t0, Duration::from_millis(2500));
    assert!(c.failure().is_none(), "a reply timeout is not fatal");
    assert_eq!(c.read("/fast").unwrap(), b"reply 2");
    assert_eq!(c.stats().replies_discarded, 1);
}

#[test]
fn a_flood_of_watch_events_cannot_hold_a_request_forever() {
    let mut lb = Loopback::new(|_, _| vec![]);
    lb.idle = Some(Box::new(|| {
        Response::WatchEvent {
            path: Path::new("/spam").unwrap(),
            token: "t".into(),
        }
        .to_message(0, 0)
        .unwrap()
        .encode()
        .unwrap()
    }));
    let mut c = Client::with_config(&mut lb, cfg(300));
    c.watch("/spam", "t").unwrap_err(); // the WATCH reply never comes either
    let calls = c.transport().recv_calls;
    assert_eq!(c.read("/x"), Err(XsClientError::Timeout));
    // The fake clock advances 1 ms per event: ~300 events until the deadline, then at most a
    // bounded drain (64 KiB) without waiting.
    assert!(c.transport().now < Duration::from_secs(10));
    assert!(c.transport().recv_calls - calls < 10_000);
    // Polling drains a bounded amount too.
    let calls = c.transport().recv_calls;
    assert_eq!(c.poll_watch_events(), Ok(0), "token not registered: stray");
    assert!(c.transport().recv_calls - calls < 10_000);
}

#[test]
fn unexpected_and_mistyped_replies_are_protocol_errors() {
    // A reply to a request nobody sent.
    let mut lb = Loopback::new(|m, _| {
        vec![Act::Raw(
            Response::Read(b"?".to_vec())
                .to_message(m.header.req_id.wrapping_add(1000), 0)
                .unwrap(),
        )]
    });
    let mut c = Client::new(&mut lb);
    assert!(matches!(
        c.read("/x"),
        Err(XsClientError::Protocol(
            ProtocolError::UnexpectedReply { .. }
        ))
    ));
    // A reply of the wrong type to our request.
    let mut lb = Loopback::new(|m, _| {
        vec![Act::Raw(
            Response::Ok(MsgType::Write)
                .to_message(m.header.req_id, 0)
                .unwrap(),
        )]
    });
    let mut c = Client::new(&mut lb);
    assert_eq!(
        c.read("/x"),
        Err(XsClientError::Protocol(ProtocolError::WrongType {
            expected: MsgType::Read,
            got: MsgType::Write.as_u32()
        }))
    );
    // A payload that does not decode for its type.
    let mut lb = Loopback::new(|m, _| {
        vec![Act::Raw(
            Message::new(MsgType::Write, m.header.req_id, 0, b"NOPE\0".to_vec()).unwrap(),
        )]
    });
    let mut c = Client::new(&mut lb);
    assert!(matches!(
        c.write("/x", b""),
        Err(XsClientError::Protocol(ProtocolError::Malformed(_)))
    ));
    // An unsolicited reply while polling for events.
    let mut lb = Loopback::new(agreeable);
    lb.push_msg(&Response::Ok(MsgType::Write).to_message(77, 0).unwrap());
    let mut c = Client::new(&mut lb);
    assert!(matches!(
        c.poll_watch_events(),
        Err(XsClientError::Protocol(ProtocolError::UnexpectedReply {
            req_id: 77,
            ..
        }))
    ));
    // None of these is fatal.
    assert_eq!(c.read("/ok").unwrap(), b"value of /ok");
}

#[test]
fn an_oversized_header_breaks_the_stream() {
    let mut lb = Loopback::new(|m, _| {
        let mut h = Header::new(MsgType::Read, m.header.req_id, 0, 5000)
            .encode()
            .to_vec();
        h.extend_from_slice(&[0; 64]);
        vec![Act::Bytes(h)]
    });
    let mut c = Client::new(&mut lb);
    let e = c.read("/x").unwrap_err();
    assert!(matches!(
        e,
        XsClientError::Protocol(ProtocolError::Framing(_))
    ));
    assert!(e.is_fatal());
    assert_eq!(c.read("/x").unwrap_err(), e);
    c.reset();
    assert!(c.failure().is_none());
}

// ---------------------------------------------------------------------------------------------
// The Unix socket transport (xen-store-host's), against a server thread.

/// Serve `n` requests with [`agreeable`] (plus a watch event before every reply), then hang
/// up.
fn unix_server(mut s: UnixStream, n: usize) {
    let mut framer = Framer::new();
    let mut buf = [0u8; 512];
    let mut served = 0;
    while served < n {
        let got = s.read(&mut buf).unwrap();
        if got == 0 {
            return;
        }
        let msgs: Vec<Message> = framer.feed(&buf[..got]).map(|m| m.unwrap()).collect();
        for m in msgs {
            let req = Request::from_message(&m).unwrap();
            let mut out = Response::WatchEvent {
                path: p("/evt"),
                token: format!("tok{served}"),
            }
            .to_message(0, 0)
            .unwrap()
            .encode()
            .unwrap();
            for a in agreeable(&m, &req) {
                let Act::Reply(r) = a else { unreachable!() };
                out.extend(
                    r.to_message(m.header.req_id, m.header.tx_id)
                        .unwrap()
                        .encode()
                        .unwrap(),
                );
            }
            // Dribble it out in small writes.
            for c in out.chunks(5) {
                s.write_all(c).unwrap();
            }
            served += 1;
        }
    }
}

#[test]
fn unix_socket_transport() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || unix_server(b, 3));
    let mut c = Client::with_config(UnixTransport::new(a), cfg(5000));
    c.watch("/evt", "tok1").unwrap(); // served #0: its event (tok0) is stray
    assert_eq!(c.read("/k").unwrap(), b"value of /k"); // #1, event tok1
    assert_eq!(c.directory("/d").unwrap(), ["a", "b"]); // #2
    assert_eq!(c.take_watch_event(None).unwrap().token, "tok1");
    assert_eq!(c.stats().events_stray, 2);
    server.join().unwrap();
    // The server hung up: an error at once, not a timeout.
    let t = Instant::now();
    assert_eq!(c.read("/k"), Err(XsClientError::Closed));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(c.poll_watch_events(), Err(XsClientError::Closed));
}

#[test]
fn unix_socket_silent_server_times_out() {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut c = Client::with_config(UnixTransport::new(a), cfg(200));
    let t = Instant::now();
    assert_eq!(c.read("/k"), Err(XsClientError::Timeout));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(200) && e < Duration::from_secs(3),
        "{e:?}"
    );
    assert_eq!(c.poll_watch_events(), Ok(0));
}

#[test]
fn next_watch_event_returns_as_soon_as_the_event_arrives() {
    let mut lb = Loopback::new(agreeable).chunked(7);
    let mut c = Client::new(&mut lb);
    c.watch("a", "t1").unwrap();
    c.watch("b", "t2").unwrap();
    // Not yet read from the transport: next_watch_event must frame it and return at once,
    // not sit out its timeout first (the fake clock would show the wait).
    c.transport_mut().push_event("b/x", "t2");
    let t0 = c.transport().now;
    let ev = c.next_watch_event(Some("t2"), Duration::from_secs(30));
    assert_eq!(ev.unwrap().unwrap().path, p("b/x"));
    assert_eq!(
        c.transport().now,
        t0,
        "waited although the event had arrived"
    );
    // Another token's event first, then ours: both framed, ours returned, no waiting.
    c.transport_mut().push_event("a/1", "t1");
    c.transport_mut().push_event("b/2", "t2");
    let ev = c.next_watch_event(Some("t2"), Duration::from_secs(30));
    assert_eq!(ev.unwrap().unwrap().path, p("b/2"));
    assert_eq!(
        c.transport().now,
        t0,
        "waited although the event had arrived"
    );
    assert_eq!(c.take_watch_event(Some("t1")).unwrap().path, p("a/1"));
}
