//! What a client call can fail with.

use alloc::string::String;
use core::fmt;

use crate::error::{CodecError, XsError};
use crate::platform;
use crate::wire::MsgType;

/// Why a client call (or a [`Transport`](crate::transport::Transport) operation) failed.
///
/// Three groups:
/// * the server said no: [`Xs`](Self::Xs) (an `XS_ERROR` reply, e.g. `ENOENT`), and the local
///   mistakes [`BadRequest`](Self::BadRequest) / [`BadValue`](Self::BadValue);
/// * the exchange failed but the connection is still usable: [`Timeout`](Self::Timeout) while
///   waiting for a reply (the late reply, should it come, is discarded),
///   [`Protocol`](Self::Protocol) for a reply that is not what was asked for, and
///   [`ConnectionReset`](Self::ConnectionReset) (the server reset the ring: every watch and
///   transaction is gone, the client is usable again);
/// * the connection is unusable ([`is_fatal`](Self::is_fatal)): every later call returns the
///   same error until [`Client::reset`](crate::client::Client::reset) after the transport
///   was reconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsClientError {
    /// The server answered `XS_ERROR` with this error (`ENOENT`, `EACCES`, `EAGAIN`, ...).
    Xs(XsError),
    /// Nothing (or not enough) happened within the timeout: no reply, or no room in the
    /// request ring. A send that timed out may have left part of a message behind, so that
    /// case is fatal; a receive that timed out is not.
    Timeout,
    /// The server is gone: its event channel was closed or its domain destroyed.
    PeerGone,
    /// The server closed the connection (end of stream on a socket).
    Closed,
    /// The shared ring's indexes are inconsistent (`prod - cons > 1024`): corrupt ring.
    RingCorrupt,
    /// The server set the ring's `error` field (`XENSTORE_ERROR_COMM` 1, `_RINGIDX` 2,
    /// `_PROTO` 3, or a value not defined yet) and stopped serving the connection.
    ServerError(u32),
    /// The ring was reset (`connection` went through `XENSTORE_RECONNECT`): partial messages,
    /// the request in flight, watches and transactions of the connection are gone. The
    /// client has forgotten its watches; it is usable again.
    ConnectionReset,
    /// A platform call failed in another way (e.g. our own domain was destroyed:
    /// `NoSuchDomain`).
    Platform(platform::Error),
    /// A host transport's I/O error (the raw OS errno, or -1 if none).
    Io(i32),
    /// The server broke the protocol (see [`ProtocolError`]).
    Protocol(ProtocolError),
    /// The request cannot be encoded: an invalid path or token, an embedded NUL, a payload
    /// over 4096 bytes. Nothing was sent.
    BadRequest(CodecError),
    /// A typed helper found a value it cannot parse (the path is given).
    BadValue(String),
    /// The transport or server does not support the operation (e.g. reconnect without
    /// `XENSTORE_SERVER_FEATURE_RECONNECTION`).
    Unsupported,
}

impl XsClientError {
    /// Whether the connection is unusable after this error (the client keeps returning it).
    pub fn is_fatal(&self) -> bool {
        match self {
            XsClientError::PeerGone
            | XsClientError::Closed
            | XsClientError::RingCorrupt
            | XsClientError::ServerError(_)
            | XsClientError::Platform(_)
            | XsClientError::Io(_) => true,
            XsClientError::Protocol(p) => p.is_fatal(),
            XsClientError::Xs(_)
            | XsClientError::Timeout
            | XsClientError::ConnectionReset
            | XsClientError::BadRequest(_)
            | XsClientError::BadValue(_)
            | XsClientError::Unsupported => false,
        }
    }

    /// The XenStore error, if the server replied with one.
    pub fn xs(&self) -> Option<XsError> {
        match self {
            XsClientError::Xs(e) => Some(*e),
            _ => None,
        }
    }

    /// The server replied `ENOENT`.
    pub fn is_enoent(&self) -> bool {
        self.xs() == Some(XsError::Enoent)
    }
}

impl From<XsError> for XsClientError {
    fn from(e: XsError) -> Self {
        XsClientError::Xs(e)
    }
}

impl From<ProtocolError> for XsClientError {
    fn from(e: ProtocolError) -> Self {
        XsClientError::Protocol(e)
    }
}

impl From<crate::transport::TransportError> for XsClientError {
    fn from(e: crate::transport::TransportError) -> Self {
        use crate::transport::TransportError as T;
        match e {
            T::Timeout => XsClientError::Timeout,
            T::PeerGone => XsClientError::PeerGone,
            T::Closed => XsClientError::Closed,
            T::RingCorrupt => XsClientError::RingCorrupt,
            T::ServerError(x) => XsClientError::ServerError(x),
            T::ConnectionReset => XsClientError::ConnectionReset,
            T::Platform(p) => XsClientError::Platform(p),
            T::Io(x) => XsClientError::Io(x),
            T::Unsupported => XsClientError::Unsupported,
        }
    }
}

impl From<platform::Error> for XsClientError {
    /// `Timeout`, `PeerGone` and `RingOverflow` have their own variants; the rest is
    /// [`XsClientError::Platform`].
    fn from(e: platform::Error) -> Self {
        match e {
            platform::Error::Timeout => XsClientError::Timeout,
            platform::Error::PeerGone => XsClientError::PeerGone,
            platform::Error::RingOverflow => XsClientError::RingCorrupt,
            other => XsClientError::Platform(other),
        }
    }
}

impl fmt::Display for XsClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsClientError::Xs(e) => write!(f, "xenstore error {e}"),
            XsClientError::Timeout => f.write_str("xenstore: timed out"),
            XsClientError::PeerGone => f.write_str("xenstore: server gone"),
            XsClientError::Closed => f.write_str("xenstore: connection closed"),
            XsClientError::RingCorrupt => f.write_str("xenstore: ring indexes corrupt"),
            XsClientError::ServerError(e) => write!(f, "xenstore: server reported error {e}"),
            XsClientError::ConnectionReset => f.write_str("xenstore: connection reset"),
            XsClientError::Platform(e) => write!(f, "xenstore: {e}"),
            XsClientError::Io(e) => write!(f, "xenstore: I/O error {e}"),
            XsClientError::Protocol(e) => write!(f, "xenstore protocol: {e}"),
            XsClientError::BadRequest(e) => write!(f, "xenstore: bad request: {e}"),
            XsClientError::BadValue(p) => write!(f, "xenstore: unexpected value at {p}"),
            XsClientError::Unsupported => f.write_str("xenstore: unsupported"),
        }
    }
}

impl core::error::Error for XsClientError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            XsClientError::Xs(e) => Some(e),
            XsClientError::Platform(e) => Some(e),
            XsClientError::Protocol(e) => Some(e),
            XsClientError::BadRequest(e) => Some(e),
            _ => None,
        }
    }
}

/// How the server broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The byte stream is out of sync: a header claimed a payload over 4096 bytes. Fatal.
    Framing(CodecError),
    /// A reply whose `req_id` matches no request waiting for one.
    UnexpectedReply {
        /// The reply's `req_id`.
        req_id: u32,
        /// The reply's type (raw).
        ty: u32,
    },
    /// The reply to our request has a type other than the request's or `XS_ERROR`.
    WrongType {
        /// The request's type.
        expected: MsgType,
        /// The reply's type (raw).
        got: u32,
    },
    /// The reply's payload does not decode for its type (including an `XS_ERROR` naming an
    /// error not in `xsd_errors[]`).
    Malformed(CodecError),
    /// `XS_TRANSACTION_START` returned transaction id 0 (which means "no transaction").
    ZeroTransactionId,
    /// `XS_DIRECTORY_PART` made no progress or its list grew past the client's limit.
    DirectoryPart,
}

impl ProtocolError {
    /// Whether the connection is unusable after it (only a framing error is).
    pub fn is_fatal(&self) -> bool {
        matches!(self, ProtocolError::Framing(_))
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Framing(e) => write!(f, "stream out of sync: {e}"),
            ProtocolError::UnexpectedReply { req_id, ty } => {
                write!(f, "unexpected reply (req_id {req_id}, type {ty})")
            }
            ProtocolError::WrongType { expected, got } => {
                write!(f, "reply of type {got} to a {} request", expected.name())
            }
            ProtocolError::Malformed(e) => write!(f, "malformed reply: {e}"),
            ProtocolError::ZeroTransactionId => f.write_str("transaction id 0"),
            ProtocolError::DirectoryPart => f.write_str("DIRECTORY_PART listing does not end"),
        }
    }
}

impl core::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ProtocolError::Framing(e) => Some(e),
            _ => None,
        }
    }
}
