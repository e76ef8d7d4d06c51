//! XenStore for xenolith: the `xs_wire` codec (this module set), and later the client and an
//! in-memory xenstored.
//!
//! The codec is pure (no I/O) and never panics on peer input:
//! * [`wire`]: the `xsd_sockmsg` header, [`MsgType`] (every `XS_*` of `xen/io/xs_wire.h`),
//!   [`Message`], the protocol limits.
//! * [`msg`]: typed [`Request`]s and [`Response`]s, decoded from / encoded to payload bytes per
//!   `docs/misc/xenstore.txt`.
//! * [`framer`]: a bounded streaming [`Framer`] for socket and ring byte streams.
//! * [`path`]: path validation and relative-path resolution (xenstored's rules).
//! * [`perms`]: permission strings and lists.
//! * [`error`]: the `xsd_errors[]` table ([`XsError`]) and the codec's [`CodecError`].
//!
//! On top of the codec, [`client`]: the XenStore [`Client`](client::Client) (requests, watch
//! events per token, transactions with retry, typed helpers) over a
//! [`Transport`](transport::Transport) — the guest's ring page
//! ([`RingTransport`](transport::RingTransport)) or a Unix socket (std, in a host crate).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub use xen_platform as platform;
pub use xen_platform::{DomId, EvtchnPort};

pub mod client;
pub mod error;
pub mod framer;
pub mod msg;
mod num;
pub mod path;
pub mod perms;
pub mod server;
pub mod transport;
pub mod wire;

pub use error::{CodecError, XsError};
pub use framer::Framer;
pub use msg::{Request, Response};
pub use path::{Path, PathError, PathKind};
pub use perms::{Access, Perm, PermError, Perms};
pub use wire::{Header, Message, MsgType, HEADER_LEN, XENSTORE_PAYLOAD_MAX};
