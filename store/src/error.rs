//! Errors: the XenStore error table carried on the wire, and the codec's own decode errors.
//!
//! Sources:
//! * `xen/io/xs_wire.h` (`struct xsd_errors xsd_errors[]`): the error names a server may send
//!   in an `XS_ERROR` reply, in table order ("New errors should be added at the end").
//! * `docs/misc/xenstore.txt` ("Error replies"): `ERROR E<something>|` — the *name* of the errno
//!   is transmitted, not its number.
//! * errno numbers: Linux `asm-generic/errno-base.h` / `errno.h` (the values the C xenstored,
//!   libxenstore and Linux's xenbus use on x86 and Arm).

use core::fmt;
use core::str::FromStr;

use crate::path::PathError;
use crate::perms::PermError;
use crate::wire::MsgType;

/// One entry of `xsd_errors[]` (xs_wire.h): an error a XenStore server reports in an
/// `XS_ERROR` reply as the errno *name*, NUL-terminated (e.g. `"EINVAL\0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum XsError {
    /// `EPERM` (1).
    Eperm = 1,
    /// `ENOENT` (2).
    Enoent = 2,
    /// `EIO` (5).
    Eio = 5,
    /// `E2BIG` (7): xenstored replies this when a reply would exceed `XENSTORE_PAYLOAD_MAX`.
    E2big = 7,
    /// `EAGAIN` (11): a transaction conflicted and must be retried.
    Eagain = 11,
    /// `ENOMEM` (12).
    Enomem = 12,
    /// `EACCES` (13).
    Eacces = 13,
    /// `EBUSY` (16).
    Ebusy = 16,
    /// `EEXIST` (17).
    Eexist = 17,
    /// `EISDIR` (21).
    Eisdir = 21,
    /// `EINVAL` (22): malformed request; also C xenstored's fallback for untranslatable errors.
    Einval = 22,
    /// `ENOSPC` (28): quota exceeded.
    Enospc = 28,
    /// `EROFS` (30).
    Erofs = 30,
    /// `ENOSYS` (38): xenstored's reply to an unknown message type.
    Enosys = 38,
    /// `ENOTEMPTY` (39).
    Enotempty = 39,
    /// `EISCONN` (106).
    Eisconn = 106,
}

impl XsError {
    /// Every entry, in the order of `xsd_errors[]` in xs_wire.h.
    pub const ALL: [XsError; 16] = [
        XsError::Einval,
        XsError::Eacces,
        XsError::Eexist,
        XsError::Eisdir,
        XsError::Enoent,
        XsError::Enomem,
        XsError::Enospc,
        XsError::Eio,
        XsError::Enotempty,
        XsError::Enosys,
        XsError::Erofs,
        XsError::Ebusy,
        XsError::Eagain,
        XsError::Eisconn,
        XsError::E2big,
        XsError::Eperm,
    ];

    /// The name sent on the wire (without the terminating NUL), e.g. `"EINVAL"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            XsError::Einval => "EINVAL",
            XsError::Eacces => "EACCES",
            XsError::Eexist => "EEXIST",
            XsError::Eisdir => "EISDIR",
            XsError::Enoent => "ENOENT",
            XsError::Enomem => "ENOMEM",
            XsError::Enospc => "ENOSPC",
            XsError::Eio => "EIO",
            XsError::Enotempty => "ENOTEMPTY",
            XsError::Enosys => "ENOSYS",
            XsError::Erofs => "EROFS",
            XsError::Ebusy => "EBUSY",
            XsError::Eagain => "EAGAIN",
            XsError::Eisconn => "EISCONN",
            XsError::E2big => "E2BIG",
            XsError::Eperm => "EPERM",
        }
    }

    /// Parse a wire name (exact, case-sensitive; without the NUL). `None` for anything not in
    /// `xsd_errors[]`.
    pub fn from_name(s: &str) -> Option<XsError> {
        XsError::ALL.iter().copied().find(|e| e.as_str() == s)
    }

    /// The positive errno number (Linux numbering).
    pub const fn errno(self) -> i32 {
        self as i32
    }

    /// Map a positive errno number to an entry, `None` if it is not in the table.
    ///
    /// C xenstored's `send_error()` sends `EINVAL` for an errno it cannot translate; a server
    /// built on this crate should do the same with `from_errno(n).unwrap_or(XsError::Einval)`.
    pub fn from_errno(errno: i32) -> Option<XsError> {
        XsError::ALL.iter().copied().find(|e| e.errno() == errno)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::error::Error for XsError {}

/// The string is not an error name of `xsd_errors[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownErrorName;

impl FromStr for XsError {
    type Err = UnknownErrorName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        XsError::from_name(s).ok_or(UnknownErrorName)
    }
}

/// Why bytes could not be decoded (or a value could not be encoded) as a XenStore message.
///
/// [`CodecError::xs_error`] gives the error a server replies with (or, for framing errors, why
/// it drops the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The header's type is not an `XS_*` value of xs_wire.h (this includes the removed
    /// `XS_RESTRICT` = 20, `XS_TYPE_COUNT` and `XS_INVALID`). xenstored answers `ENOSYS`.
    UnknownType(u32),
    /// The type is valid but a client may not send it (`XS_WATCH_EVENT`, `XS_ERROR`):
    /// xenstored's `wire_funcs[]` has no handler for them and answers `ENOSYS`.
    NotARequest(MsgType),
    /// A payload longer than `XENSTORE_PAYLOAD_MAX` (4096): `E2BIG`. On a stream this is a
    /// protocol violation after which xenstored drops the connection (`XENSTORE_ERROR_PROTO`).
    PayloadTooLarge {
        /// The offending length.
        len: usize,
    },
    /// Fewer than the 16 bytes of an `xsd_sockmsg` header.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// `xsd_sockmsg.len` disagrees with the number of payload bytes present.
    LengthMismatch {
        /// The header's `len`.
        header: u32,
        /// The payload bytes actually present.
        actual: usize,
    },
    /// A string argument is not NUL-terminated (no NUL at all where one is required).
    MissingNul,
    /// Bytes follow the last NUL-terminated string where the format has none.
    TrailingData,
    /// (Encoding) a string that must go on the wire NUL-terminated contains a NUL itself.
    EmbeddedNul,
    /// Wrong number of NUL-terminated strings for the message type.
    WrongArgCount {
        /// What the format requires (the minimum, for formats with a variable list).
        expected: usize,
        /// What the payload holds.
        found: usize,
    },
    /// A string argument is not UTF-8 (paths, tokens, numbers and names are ASCII).
    NotUtf8,
    /// A path argument breaks xenstored's path rules.
    Path(PathError),
    /// A permission string is malformed.
    Perm(PermError),
    /// A decimal number (domid, transaction id, offset, port, mfn, generation) is malformed
    /// or out of range.
    BadNumber,
    /// Expected `T` or `F`.
    BadBool,
    /// A reply that must be `OK` is something else.
    ExpectedOk,
    /// An `XS_ERROR` reply names an error that is not in `xsd_errors[]`.
    UnknownErrorName,
    /// A directory listing holds an empty or invalid child name.
    BadChildName,
    /// `Response::Ok` was asked to carry a type whose success reply is not `OK`.
    NotAnAckType(MsgType),
    /// The framer saw a fatal error earlier and the stream is out of sync; it must be reset
    /// (i.e. the connection dropped) before it can be used again.
    Poisoned,
}

impl CodecError {
    /// The XenStore error this condition is reported as (xenstored's choices).
    pub fn xs_error(&self) -> XsError {
        match self {
            CodecError::UnknownType(_) | CodecError::NotARequest(_) => XsError::Enosys,
            CodecError::PayloadTooLarge { .. } => XsError::E2big,
            _ => XsError::Einval,
        }
    }
}

impl From<PathError> for CodecError {
    fn from(e: PathError) -> Self {
        CodecError::Path(e)
    }
}

impl From<PermError> for CodecError {
    fn from(e: PermError) -> Self {
        CodecError::Perm(e)
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::UnknownType(t) => write!(f, "unknown xenstore message type {t}"),
            CodecError::NotARequest(t) => write!(f, "{t:?} is not a request type"),
            CodecError::PayloadTooLarge { len } => {
                write!(f, "payload of {len} bytes exceeds XENSTORE_PAYLOAD_MAX")
            }
            CodecError::Truncated { needed, have } => {
                write!(f, "truncated: need {needed} bytes, have {have}")
            }
            CodecError::LengthMismatch { header, actual } => {
                write!(f, "header len {header} but {actual} payload bytes")
            }
            CodecError::MissingNul => f.write_str("string argument not NUL-terminated"),
            CodecError::TrailingData => f.write_str("trailing data after last argument"),
            CodecError::EmbeddedNul => f.write_str("string argument contains a NUL"),
            CodecError::WrongArgCount { expected, found } => {
                write!(f, "expected {expected} string arguments, found {found}")
            }
            CodecError::NotUtf8 => f.write_str("argument is not UTF-8"),
            CodecError::Path(e) => write!(f, "invalid path: {e}"),
            CodecError::Perm(e) => write!(f, "invalid permission: {e}"),
            CodecError::BadNumber => f.write_str("malformed decimal number"),
            CodecError::BadBool => f.write_str("expected T or F"),
            CodecError::ExpectedOk => f.write_str("expected OK"),
            CodecError::UnknownErrorName => f.write_str("unknown error name"),
            CodecError::BadChildName => f.write_str("invalid child name in directory listing"),
            CodecError::NotAnAckType(t) => write!(f, "{t:?} does not reply OK"),
            CodecError::Poisoned => f.write_str("stream out of sync after an earlier error"),
        }
    }
}

impl core::error::Error for CodecError {}
