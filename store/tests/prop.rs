//! Property tests: every encodable request/reply decodes back to itself; every accepted payload
//! re-encodes to the same bytes; arbitrary bytes never panic; the framer is chunking-agnostic.

use proptest::prelude::*;
use xen_store::error::XsError;
use xen_store::perms::{Access, Perm, Perms};
use xen_store::wire::{Header, Message, MsgType};
use xen_store::{Framer, Path, Request, Response};

fn component() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_@-]{1,12}"
}

fn abs_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        Just(Path::root()),
        prop::collection::vec(component(), 1..6).prop_map(|c| Path::new(&format!(
            "/{}",
            c.join("/")
        ))
        .unwrap()),
    ]
}

fn rel_path() -> impl Strategy<Value = Path> {
    (
        "[A-Za-z0-9_-][A-Za-z0-9_@-]{0,8}",
        prop::collection::vec(component(), 0..5),
    )
        .prop_map(|(first, rest)| {
            let mut s = first;
            for c in rest {
                s.push('/');
                s.push_str(&c);
            }
            Path::new(&s).unwrap()
        })
}

fn special_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        Just(Path::new("@introduceDomain").unwrap()),
        Just(Path::new("@releaseDomain").unwrap()),
        prop::collection::vec(component(), 1..3).prop_map(|c| Path::new(&format!(
            "@{}",
            c.join("/")
        ))
        .unwrap()),
    ]
}

fn node_path() -> impl Strategy<Value = Path> {
    prop_oneof![abs_path(), rel_path()]
}

fn any_path() -> impl Strategy<Value = Path> {
    prop_oneof![abs_path(), rel_path(), special_path()]
}

fn token() -> impl Strategy<Value = String> {
    "[^\\x00]{0,24}"
}

fn access() -> impl Strategy<Value = Access> {
    prop::sample::select(Access::ALL.to_vec())
}

fn perms() -> impl Strategy<Value = Perms> {
    prop::collection::vec((access(), any::<u16>()), 1..6).prop_map(|v| {
        Perms::from_vec(v.into_iter().map(|(a, d)| Perm::new(a, d)).collect()).unwrap()
    })
}

fn leaf() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_@-]{1,12}"
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        ("[a-z-]{0,12}", prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(command, params)| Request::Control { command, params }),
        node_path().prop_map(Request::Directory),
        node_path().prop_map(Request::Read),
        any_path().prop_map(Request::GetPerms),
        (any_path(), token()).prop_map(|(path, token)| Request::Watch { path, token }),
        (any_path(), token()).prop_map(|(path, token)| Request::Unwatch { path, token }),
        Just(Request::TransactionStart),
        any::<bool>().prop_map(|commit| Request::TransactionEnd { commit }),
        (any::<u16>(), any::<u64>(), any::<u32>())
            .prop_map(|(domid, mfn, port)| Request::Introduce { domid, mfn, port }),
        any::<u16>().prop_map(Request::Release),
        any::<u16>().prop_map(Request::GetDomainPath),
        (node_path(), prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(path, value)| Request::Write { path, value }),
        node_path().prop_map(Request::Mkdir),
        node_path().prop_map(Request::Rm),
        (any_path(), perms()).prop_map(|(path, perms)| Request::SetPerms { path, perms }),
        any::<u16>().prop_map(Request::IsDomainIntroduced),
        any::<u16>().prop_map(Request::Resume),
        (any::<u16>(), any::<u16>())
            .prop_map(|(domid, target)| Request::SetTarget { domid, target }),
        Just(Request::ResetWatches),
        (node_path(), any::<u32>())
            .prop_map(|(path, offset)| Request::DirectoryPart { path, offset }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let ok_types: Vec<MsgType> = MsgType::ALL
        .into_iter()
        .filter(|t| t.replies_ok())
        .collect();
    prop_oneof![
        prop::sample::select(ok_types).prop_map(Response::Ok),
        prop::sample::select(XsError::ALL.to_vec()).prop_map(Response::Error),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Response::Control),
        prop::collection::vec(leaf(), 0..8).prop_map(Response::Directory),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Response::Read),
        perms().prop_map(Response::GetPerms),
        any::<u32>().prop_map(Response::TransactionStart),
        abs_path().prop_map(Response::GetDomainPath),
        any::<bool>().prop_map(Response::IsDomainIntroduced),
        (
            any::<u64>(),
            prop::collection::vec(leaf(), 0..8),
            any::<bool>()
        )
            .prop_map(|(generation, children, complete)| Response::DirectoryPart {
                generation,
                children,
                complete
            }),
        (any_path(), token()).prop_map(|(path, token)| Response::WatchEvent { path, token }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_roundtrip(req in request(), req_id in any::<u32>(), tx_id in any::<u32>()) {
        let payload = req.encode_payload().unwrap();
        prop_assert_eq!(Request::decode(req.msg_type(), &payload), Ok(req.clone()));
        let wire = req.to_message(req_id, tx_id).unwrap().encode().unwrap();
        let msg = Message::decode(&wire).unwrap();
        prop_assert_eq!(msg.header.req_id, req_id);
        prop_assert_eq!(msg.header.tx_id, tx_id);
        prop_assert_eq!(Request::from_message(&msg), Ok(req));
    }

    #[test]
    fn response_roundtrip(rsp in response()) {
        let payload = rsp.encode_payload().unwrap();
        prop_assert_eq!(Response::decode(rsp.msg_type(), &payload), Ok(rsp.clone()));
        let wire = rsp.to_message(1, 2).unwrap().encode().unwrap();
        prop_assert_eq!(Response::from_message(&Message::decode(&wire).unwrap()), Ok(rsp));
    }

    #[test]
    fn header_roundtrip(ty in any::<u32>(), req_id in any::<u32>(), tx_id in any::<u32>(), len in any::<u32>()) {
        let h = Header { ty, req_id, tx_id, len };
        prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    /// Arbitrary bytes as every payload type: no panic, and whatever is accepted is canonical.
    #[test]
    fn arbitrary_payloads_decode_canonically(ty in 0u32..24, payload in prop::collection::vec(
        prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'1'), Just(b'@'), any::<u8>()], 0..64)) {
        if let Ok(t) = MsgType::try_from(ty) {
            if let Ok(req) = Request::decode(t, &payload) {
                prop_assert_eq!(req.encode_payload().unwrap(), payload.clone());
            }
            if let Ok(rsp) = Response::decode(t, &payload) {
                prop_assert_eq!(rsp.encode_payload().unwrap(), payload.clone());
            }
        }
    }

    /// A stream of requests cut into arbitrary chunks frames back to the same messages.
    #[test]
    fn framer_is_chunking_agnostic(reqs in prop::collection::vec(request(), 1..8),
                                   cuts in prop::collection::vec(1usize..40, 1..64)) {
        let mut stream = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            stream.extend(r.to_message(i as u32, 0).unwrap().encode().unwrap());
        }
        let mut f = Framer::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut ci = 0;
        while !rest.is_empty() {
            let n = cuts[ci % cuts.len()].min(rest.len());
            ci += 1;
            for m in f.feed(&rest[..n]) {
                got.push(Request::from_message(&m.unwrap()).unwrap());
            }
            rest = &rest[n..];
        }
        prop_assert!(f.is_idle());
        prop_assert_eq!(got, reqs);
    }

    /// Arbitrary bytes through the framer: no panic; every message it yields is within limits.
    #[test]
    fn framer_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut f = Framer::new();
        for m in f.feed(&bytes) {
            match m {
                Ok(m) => prop_assert!(m.payload.len() <= 4096 && m.payload.len() == m.header.len as usize),
                Err(e) => prop_assert_eq!(e.xs_error(), XsError::E2big),
            }
        }
    }
}
