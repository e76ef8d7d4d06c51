//! Fuzz target `codec`: arbitrary bytes are a stream from a peer.
//!
//! Every framed message goes through the typed request decoder *and* the reply decoder (a
//! server and a client both decode peer input); whatever decodes must re-encode to exactly the
//! bytes it came from (the codec is strict, hence canonical) and re-decode to an equal value.
//! The framer must never yield a payload over XENSTORE_PAYLOAD_MAX, and a framed message must
//! re-encode to the exact wire bytes it was framed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_store::wire::{HEADER_LEN, XENSTORE_PAYLOAD_MAX};
use xen_store::{Framer, Message, Request, Response, XsError};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size so that the framer's partial-input paths are covered.
    let (chunk, stream) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c % 64) + 1, rest),
        None => return,
    };
    let mut framer = Framer::new();
    let mut offset = 0usize;
    for piece in stream.chunks(chunk) {
        for item in framer.feed(piece) {
            let msg = match item {
                Ok(m) => m,
                Err(e) => {
                    // The only framing error is an oversized header (E2BIG semantics).
                    assert_eq!(e.xs_error(), XsError::E2big);
                    return;
                }
            };
            assert!(msg.payload.len() <= XENSTORE_PAYLOAD_MAX);
            let wire = msg.encode().expect("framed message re-encodes");
            assert_eq!(&stream[offset..offset + wire.len()], &wire[..]);
            offset += HEADER_LEN + msg.payload.len();
            check(&msg);
        }
    }
});

fn check(msg: &Message) {
    let Ok(ty) = msg.msg_type() else { return };
    if let Ok(req) = Request::decode(ty, &msg.payload) {
        assert_eq!(req.msg_type(), ty);
        let bytes = req.encode_payload().expect("decoded request re-encodes");
        assert_eq!(bytes, msg.payload, "request encoding is canonical");
        let again = req
            .to_message(msg.header.req_id, msg.header.tx_id)
            .expect("to_message");
        assert_eq!(&again, msg);
        assert_eq!(Request::from_message(&again).as_ref(), Ok(&req));
    }
    if let Ok(rsp) = Response::decode(ty, &msg.payload) {
        assert_eq!(rsp.msg_type(), ty);
        let bytes = rsp.encode_payload().expect("decoded reply re-encodes");
        assert_eq!(bytes, msg.payload, "reply encoding is canonical");
        assert_eq!(Response::decode(ty, &bytes).as_ref(), Ok(&rsp));
    }
}
