//! The `xsd_sockmsg` header and message types of `xen/io/xs_wire.h`.
//!
//! Every message, in either direction and on either transport (Unix socket or the shared
//! `xenstore_domain_interface` rings), is a 16-byte `struct xsd_sockmsg { uint32_t type, req_id,
//! tx_id, len; }` followed by `len` bytes of payload (xenstore.txt). The fields are in the
//! machine's byte order; every architecture Xen supports (x86, Arm, RISC-V, PPC64LE guests)
//! is little-endian, so we encode little-endian explicitly.

use alloc::vec::Vec;

use crate::error::CodecError;

/// `XENSTORE_PAYLOAD_MAX` (xs_wire.h): the longest payload in either direction. "Violating
/// this is very bad": xenstored drops a client that sends more (xenstore.txt).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;

/// `sizeof(struct xsd_sockmsg)`.
pub const HEADER_LEN: usize = 16;

/// `XS_TYPE_COUNT` (xs_wire.h): one past the highest valid type.
pub const XS_TYPE_COUNT: u32 = 23;

/// `XS_INVALID` (xs_wire.h): "Guaranteed to remain an invalid type".
pub const XS_INVALID: u32 = 0xffff;

/// `XS_WRITE_NONE` (xs_wire.h; legacy write flags, unused by the protocol today).
pub const XS_WRITE_NONE: &str = "NONE";
/// `XS_WRITE_CREATE` (xs_wire.h).
pub const XS_WRITE_CREATE: &str = "CREATE";
/// `XS_WRITE_CREATE_EXCL` (xs_wire.h).
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// `enum xsd_sockmsg_type` (xs_wire.h). Value 20 (`XS_RESTRICT`) has been removed and is
/// unknown, like anything at or above `XS_TYPE_COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (server to client only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES` (= `XS_SET_TARGET + 2`; 20 was `XS_RESTRICT`).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

impl MsgType {
    /// `XS_DEBUG` is an alias of `XS_CONTROL` (xs_wire.h `#define XS_DEBUG XS_CONTROL`).
    pub const DEBUG: MsgType = MsgType::Control;

    /// Every type, in numeric order.
    pub const ALL: [MsgType; 22] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
    ];

    /// The numeric value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The name without the `XS_` prefix, as xenstored's `sockmsg_string()` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            MsgType::Control => "CONTROL",
            MsgType::Directory => "DIRECTORY",
            MsgType::Read => "READ",
            MsgType::GetPerms => "GET_PERMS",
            MsgType::Watch => "WATCH",
            MsgType::Unwatch => "UNWATCH",
            MsgType::TransactionStart => "TRANSACTION_START",
            MsgType::TransactionEnd => "TRANSACTION_END",
            MsgType::Introduce => "INTRODUCE",
            MsgType::Release => "RELEASE",
            MsgType::GetDomainPath => "GET_DOMAIN_PATH",
            MsgType::Write => "WRITE",
            MsgType::Mkdir => "MKDIR",
            MsgType::Rm => "RM",
            MsgType::SetPerms => "SET_PERMS",
            MsgType::WatchEvent => "WATCH_EVENT",
            MsgType::Error => "ERROR",
            MsgType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "RESUME",
            MsgType::SetTarget => "SET_TARGET",
            MsgType::ResetWatches => "RESET_WATCHES",
            MsgType::DirectoryPart => "DIRECTORY_PART",
        }
    }

    /// Types whose success reply is `OK\0` (xenstore.txt: "Where no reply payload format is
    /// specified below, success responses have the following payload: OK|").
    pub const fn replies_ok(self) -> bool {
        matches!(
            self,
            MsgType::Watch
                | MsgType::Unwatch
                | MsgType::TransactionEnd
                | MsgType::Introduce
                | MsgType::Release
                | MsgType::Write
                | MsgType::Mkdir
                | MsgType::Rm
                | MsgType::SetPerms
                | MsgType::Resume
                | MsgType::SetTarget
                | MsgType::ResetWatches
        )
    }

    /// Types a client may send (all but `XS_WATCH_EVENT` and `XS_ERROR`).
    pub const fn is_request(self) -> bool {
        !matches!(self, MsgType::WatchEvent | MsgType::Error)
    }
}

impl TryFrom<u32> for MsgType {
    type Error = CodecError;

    fn try_from(v: u32) -> Result<Self, CodecError> {
        // Values 0..=19 and 21..=22 are contiguous with the table apart from the hole at 20.
        let idx = match v {
            0..=19 => v,
            21 | 22 => v - 1,
            _ => return Err(CodecError::UnknownType(v)),
        };
        usize::try_from(idx)
            .ok()
            .and_then(|i| MsgType::ALL.get(i).copied())
            .ok_or(CodecError::UnknownType(v))
    }
}

impl From<MsgType> for u32 {
    fn from(t: MsgType) -> u32 {
        t as u32
    }
}

/// `struct xsd_sockmsg`. `ty` is kept raw so that a message of an unknown type can still be
/// framed and answered (xenstored replies `ENOSYS` and carries on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// `type`: an `XS_*` value (see [`Header::msg_type`]).
    pub ty: u32,
    /// `req_id`: chosen by the client, echoed in the reply; 0 in watch events.
    pub req_id: u32,
    /// `tx_id`: the transaction, 0 for none; 0 in watch events.
    pub tx_id: u32,
    /// `len`: payload bytes that follow.
    pub len: u32,
}

impl Header {
    /// A header for a message of type `ty`.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, len: u32) -> Header {
        Header {
            ty: ty.as_u32(),
            req_id,
            tx_id,
            len,
        }
    }

    /// The type, or [`CodecError::UnknownType`].
    pub fn msg_type(&self) -> Result<MsgType, CodecError> {
        MsgType::try_from(self.ty)
    }

    /// The 16 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (chunk, v) in b
            .chunks_exact_mut(4)
            .zip([self.ty, self.req_id, self.tx_id, self.len])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decode the first 16 bytes of `bytes` (more are ignored). Does not judge `len`; see
    /// [`Header::check_len`].
    pub fn decode(bytes: &[u8]) -> Result<Header, CodecError> {
        let raw: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(CodecError::Truncated {
                needed: HEADER_LEN,
                have: bytes.len(),
            })?;
        Ok(Header::from_array(raw))
    }

    /// Decode a full header array (infallible).
    pub fn from_array(raw: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            if let Some(s) = raw.get(i * 4..i * 4 + 4) {
                w.copy_from_slice(s);
            }
            u32::from_le_bytes(w)
        };
        Header {
            ty: word(0),
            req_id: word(1),
            tx_id: word(2),
            len: word(3),
        }
    }

    /// `len` must not exceed `XENSTORE_PAYLOAD_MAX`.
    pub fn check_len(&self) -> Result<usize, CodecError> {
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge { len });
        }
        Ok(len)
    }
}

/// A framed message: header and payload, `header.len == payload.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Exactly `header.len` bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Build a message, setting `len` from the payload; longer than `XENSTORE_PAYLOAD_MAX`
    /// is [`CodecError::PayloadTooLarge`].
    pub fn new(
        ty: MsgType,
        req_id: u32,
        tx_id: u32,
        payload: Vec<u8>,
    ) -> Result<Message, CodecError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge { len: payload.len() });
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| CodecError::PayloadTooLarge { len: payload.len() })?;
        Ok(Message {
            header: Header::new(ty, req_id, tx_id, len),
            payload,
        })
    }

    /// Header plus payload as wire bytes. Fails if the header's `len` disagrees with the
    /// payload or the payload is too large.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let len = self.header.check_len()?;
        if len != self.payload.len() {
            return Err(CodecError::LengthMismatch {
                header: self.header.len,
                actual: self.payload.len(),
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decode exactly one message occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
        let header = Header::decode(bytes)?;
        let len = header.check_len()?;
        let payload = bytes.get(HEADER_LEN..).unwrap_or(&[]);
        if payload.len() != len {
            return Err(CodecError::LengthMismatch {
                header: header.len,
                actual: payload.len(),
            });
        }
        Ok(Message {
            header,
            payload: payload.to_vec(),
        })
    }

    /// The type, or [`CodecError::UnknownType`].
    pub fn msg_type(&self) -> Result<MsgType, CodecError> {
        self.header.msg_type()
    }
}
