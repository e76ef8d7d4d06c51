//! Typed payloads: requests (client → server) and replies (server → client), per message type.
//!
//! Formats from docs/misc/xenstore.txt (which writes a NUL byte as `|`; here `\0`):
//!
//! | type                 | request                       | success reply                |
//! |----------------------|-------------------------------|------------------------------|
//! | READ                 | `<path>\0`                    | `<value>`                    |
//! | WRITE                | `<path>\0<value>`             | `OK\0`                       |
//! | MKDIR, RM            | `<path>\0`                    | `OK\0`                       |
//! | DIRECTORY            | `<path>\0`                    | `<child>\0*`                 |
//! | DIRECTORY_PART       | `<path>\0<offset>\0`          | `<gencnt>\0<child>\0*[\0]`   |
//! | GET_PERMS            | `<path>\0`                    | `<perm>\0+`                  |
//! | SET_PERMS            | `<path>\0<perm>\0+`           | `OK\0`                       |
//! | WATCH, UNWATCH       | `<wpath>\0<token>\0`          | `OK\0`                       |
//! | WATCH_EVENT          | —                             | `<epath>\0<token>\0` (async) |
//! | TRANSACTION_START    | `\0`                          | `<transid>\0`                |
//! | TRANSACTION_END      | `T\0` or `F\0`                | `OK\0`                       |
//! | INTRODUCE            | `<domid>\0<mfn>\0<evtchn>\0`  | `OK\0`                       |
//! | RELEASE, RESUME      | `<domid>\0`                   | `OK\0`                       |
//! | GET_DOMAIN_PATH      | `<domid>\0`                   | `<path>\0`                   |
//! | IS_DOMAIN_INTRODUCED | `<domid>\0`                   | `T\0` or `F\0`               |
//! | SET_TARGET           | `<domid>\0<tdomid>\0`         | `OK\0`                       |
//! | RESET_WATCHES        | `\0`                          | `OK\0`                       |
//! | CONTROL              | `<command>\0[<parameters>\0]` | implementation specific      |
//! | ERROR                | —                             | `E<name>\0`                  |
//!
//! `<value>` is raw bytes, neither NUL-terminated nor free of NULs; `[\0]` in a DIRECTORY_PART
//! reply is an extra NUL (an empty string) that marks the end of the child list.
//!
//! We decode strictly: exactly the strings the format lists, each NUL-terminated, nothing after
//! the last NUL, UTF-8 for every string (values excepted), strict decimals. Strictness makes
//! `encode(decode(b)) == b` for every accepted `b`. Where C xenstored (tools/xenstored/core.c,
//! domain.c, watch.c, transaction.c) is more lenient it is noted at the type.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{CodecError, XsError};
use crate::num::parse_dec;
use crate::path::{is_valid_leaf, Path, PathError};
use crate::perms::{Perm, Perms};
use crate::wire::{Message, MsgType, XENSTORE_PAYLOAD_MAX};
use crate::{DomId, EvtchnPort};

// ---------------------------------------------------------------------------------------------
// Payload helpers.

/// Split a payload into its NUL-terminated strings (without the NULs). The payload must be
/// empty or end with a NUL.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    if payload.len() > XENSTORE_PAYLOAD_MAX {
        return Err(CodecError::PayloadTooLarge { len: payload.len() });
    }
    match payload.last() {
        None => return Ok(Vec::new()),
        Some(0) => {}
        Some(_) if payload.contains(&0) => return Err(CodecError::TrailingData),
        Some(_) => return Err(CodecError::MissingNul),
    }
    let body = payload.get(..payload.len() - 1).unwrap_or(&[]);
    Ok(body.split(|&b| b == 0).collect())
}

/// Exactly `n` NUL-terminated strings.
fn exact(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, CodecError> {
    let v = split_strings(payload)?;
    if v.len() != n {
        return Err(CodecError::WrongArgCount {
            expected: n,
            found: v.len(),
        });
    }
    Ok(v)
}

/// Exactly one NUL-terminated string: xenstored's `onearg()` ("The payload must contain
/// exactly one nul, at the end").
fn one(payload: &[u8]) -> Result<&[u8], CodecError> {
    exact(payload, 1)?
        .first()
        .copied()
        .ok_or(CodecError::WrongArgCount {
            expected: 1,
            found: 0,
        })
}

/// Exactly two NUL-terminated strings.
fn two(payload: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    match exact(payload, 2)?.as_slice() {
        [a, b] => Ok((a, b)),
        v => Err(CodecError::WrongArgCount {
            expected: 2,
            found: v.len(),
        }),
    }
}

fn utf8(b: &[u8]) -> Result<&str, CodecError> {
    core::str::from_utf8(b).map_err(|_| CodecError::NotUtf8)
}

fn string(b: &[u8]) -> Result<String, CodecError> {
    utf8(b).map(ToString::to_string)
}

fn node_path(b: &[u8]) -> Result<Path, CodecError> {
    let p = Path::from_bytes(b)?;
    if p.is_special() {
        return Err(PathError::SpecialNotAllowed.into());
    }
    Ok(p)
}

fn any_path(b: &[u8]) -> Result<Path, CodecError> {
    Ok(Path::from_bytes(b)?)
}

fn domid(b: &[u8]) -> Result<DomId, CodecError> {
    parse_dec(b, u64::from(DomId::MAX))
        .and_then(|v| DomId::try_from(v).ok())
        .ok_or(CodecError::BadNumber)
}

fn dec_u32(b: &[u8]) -> Result<u32, CodecError> {
    parse_dec(b, u64::from(u32::MAX))
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(CodecError::BadNumber)
}

fn dec_u64(b: &[u8]) -> Result<u64, CodecError> {
    parse_dec(b, u64::MAX).ok_or(CodecError::BadNumber)
}

fn tf(b: &[u8]) -> Result<bool, CodecError> {
    match b {
        b"T" => Ok(true),
        b"F" => Ok(false),
        _ => Err(CodecError::BadBool),
    }
}

/// Builds a payload, refusing embedded NULs and sizes over `XENSTORE_PAYLOAD_MAX`.
struct Out(Vec<u8>);

impl Out {
    fn new() -> Out {
        Out(Vec::new())
    }

    /// A string plus its terminating NUL.
    fn str(&mut self, s: &str) -> Result<&mut Out, CodecError> {
        if s.as_bytes().contains(&0) {
            return Err(CodecError::EmbeddedNul);
        }
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        Ok(self)
    }

    /// Raw bytes, no NUL added.
    fn raw(&mut self, b: &[u8]) -> &mut Out {
        self.0.extend_from_slice(b);
        self
    }

    fn finish(self) -> Result<Vec<u8>, CodecError> {
        if self.0.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge { len: self.0.len() });
        }
        Ok(self.0)
    }
}

fn alloc_str(v: impl core::fmt::Display) -> String {
    alloc::format!("{v}")
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A request, client → server. Build one, then [`Request::to_message`]; or decode one with
/// [`Request::from_message`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `XS_CONTROL` `<command>\0[<parameters>\0]`: `command` is the first string; `params` is
    /// everything after its NUL, verbatim (commands and their parameters are implementation
    /// specific — live-update even sends binary chunks — so they are not split further).
    Control {
        /// The command name, e.g. `check`, `log`, `help`.
        command: String,
        /// The raw bytes after the command's NUL (normally NUL-terminated strings).
        params: Vec<u8>,
    },
    /// `XS_DIRECTORY` `<path>\0`.
    Directory(Path),
    /// `XS_READ` `<path>\0`.
    Read(Path),
    /// `XS_GET_PERMS` `<path>\0`; `@` special names allowed (xenstored passes
    /// `allow_special = true` for GET_PERMS).
    GetPerms(Path),
    /// `XS_WATCH` `<wpath>\0<token>\0`; `wpath` may be a `@` special name. xenstore.txt lists a
    /// trailing reserved `?` (empty, hence absent); C `do_watch()` requires exactly two strings
    /// but ignores unterminated bytes after them — we reject those.
    Watch {
        /// Path or special name to watch.
        path: Path,
        /// Opaque token echoed in events.
        token: String,
    },
    /// `XS_UNWATCH` `<wpath>\0<token>\0` (same leniency note as WATCH).
    Unwatch {
        /// As given to WATCH.
        path: Path,
        /// As given to WATCH.
        token: String,
    },
    /// `XS_TRANSACTION_START` `\0` (one empty string). C `do_transaction_start()` does not
    /// look at the payload at all; we require exactly `"\0"` as xenstore.txt specifies.
    TransactionStart,
    /// `XS_TRANSACTION_END` `T\0` (commit) or `F\0` (abort); C checks the same.
    TransactionEnd {
        /// `T` if true.
        commit: bool,
    },
    /// `XS_INTRODUCE` `<domid>\0<mfn>\0<evtchn>\0`. xenstore.txt calls the mfn "signed decimal
    /// (!)" and C parses the numbers with `atoi`/`strtoul` and ignores extra strings; we take
    /// exactly three strict unsigned decimals.
    Introduce {
        /// The domain (must be a real, non-zero domid — the server checks).
        domid: DomId,
        /// The ring page's frame.
        mfn: u64,
        /// The unbound event channel in `domid`.
        port: EvtchnPort,
    },
    /// `XS_RELEASE` `<domid>\0`.
    Release(DomId),
    /// `XS_GET_DOMAIN_PATH` `<domid>\0`.
    GetDomainPath(DomId),
    /// `XS_WRITE` `<path>\0<value>`: the value is raw bytes (may contain NULs, not terminated).
    /// C `do_write()` requires at least one NUL, as we do.
    Write {
        /// Node path (no specials).
        path: Path,
        /// Raw value.
        value: Vec<u8>,
    },
    /// `XS_MKDIR` `<path>\0`.
    Mkdir(Path),
    /// `XS_RM` `<path>\0`.
    Rm(Path),
    /// `XS_SET_PERMS` `<path>\0<perm>\0+`; specials allowed. xenstore.txt lists a trailing `?`.
    /// C counts NULs with `xenstore_count_strings()` and parses domids with `strtol(.., 0)`
    /// (see [`crate::perms`]).
    SetPerms {
        /// Node or special name.
        path: Path,
        /// Owner first.
        perms: Perms,
    },
    /// `XS_IS_DOMAIN_INTRODUCED` `<domid>\0`.
    IsDomainIntroduced(DomId),
    /// `XS_RESUME` `<domid>\0`.
    Resume(DomId),
    /// `XS_SET_TARGET` `<domid>\0<tdomid>\0`.
    SetTarget {
        /// The device-model domain.
        domid: DomId,
        /// The domain it targets.
        target: DomId,
    },
    /// `XS_RESET_WATCHES` `\0` (one empty string). C ignores the payload; we require it exactly.
    ResetWatches,
    /// `XS_DIRECTORY_PART` `<path>\0<offset>\0`: byte offset into the child list. C requires
    /// exactly two strings but reads the offset with `atoi()`; we want a strict decimal.
    DirectoryPart {
        /// Node path.
        path: Path,
        /// Byte offset into the NUL-separated child list.
        offset: u32,
    },
}

impl Request {
    /// The header type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control { .. } => MsgType::Control,
            Request::Directory(_) => MsgType::Directory,
            Request::Read(_) => MsgType::Read,
            Request::GetPerms(_) => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release(_) => MsgType::Release,
            Request::GetDomainPath(_) => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir(_) => MsgType::Mkdir,
            Request::Rm(_) => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced(_) => MsgType::IsDomainIntroduced,
            Request::Resume(_) => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
        }
    }

    /// Decode the payload of a request of type `ty`.
    pub fn decode(ty: MsgType, payload: &[u8]) -> Result<Request, CodecError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge { len: payload.len() });
        }
        Ok(match ty {
            MsgType::Control => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(CodecError::MissingNul)?;
                let (cmd, rest) = payload.split_at(nul);
                Request::Control {
                    command: string(cmd)?,
                    params: rest.get(1..).unwrap_or(&[]).to_vec(),
                }
            }
            MsgType::Directory => Request::Directory(node_path(one(payload)?)?),
            MsgType::Read => Request::Read(node_path(one(payload)?)?),
            MsgType::GetPerms => Request::GetPerms(any_path(one(payload)?)?),
            MsgType::Watch | MsgType::Unwatch => {
                let (p, t) = two(payload)?;
                let (path, token) = (any_path(p)?, string(t)?);
                if ty == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            MsgType::TransactionStart | MsgType::ResetWatches => {
                if !one(payload)?.is_empty() {
                    return Err(CodecError::TrailingData);
                }
                if ty == MsgType::TransactionStart {
                    Request::TransactionStart
                } else {
                    Request::ResetWatches
                }
            }
            MsgType::TransactionEnd => Request::TransactionEnd {
                commit: tf(one(payload)?)?,
            },
            MsgType::Introduce => match exact(payload, 3)?.as_slice() {
                [d, m, p] => Request::Introduce {
                    domid: domid(d)?,
                    mfn: dec_u64(m)?,
                    port: dec_u32(p)?,
                },
                v => {
                    return Err(CodecError::WrongArgCount {
                        expected: 3,
                        found: v.len(),
                    })
                }
            },
            MsgType::Release => Request::Release(domid(one(payload)?)?),
            MsgType::GetDomainPath => Request::GetDomainPath(domid(one(payload)?)?),
            MsgType::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(CodecError::MissingNul)?;
                let (p, rest) = payload.split_at(nul);
                Request::Write {
                    path: node_path(p)?,
                    value: rest.get(1..).unwrap_or(&[]).to_vec(),
                }
            }
            MsgType::Mkdir => Request::Mkdir(node_path(one(payload)?)?),
            MsgType::Rm => Request::Rm(node_path(one(payload)?)?),
            MsgType::SetPerms => {
                let v = split_strings(payload)?;
                let (p, list) = v.split_first().ok_or(CodecError::WrongArgCount {
                    expected: 2,
                    found: 0,
                })?;
                if list.is_empty() {
                    return Err(CodecError::WrongArgCount {
                        expected: 2,
                        found: 1,
                    });
                }
                let entries = list
                    .iter()
                    .map(|s| Perm::parse_bytes(s))
                    .collect::<Result<Vec<_>, _>>()?;
                Request::SetPerms {
                    path: any_path(p)?,
                    perms: Perms::from_vec(entries)?,
                }
            }
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced(domid(one(payload)?)?),
            MsgType::Resume => Request::Resume(domid(one(payload)?)?),
            MsgType::SetTarget => {
                let (d, t) = two(payload)?;
                Request::SetTarget {
                    domid: domid(d)?,
                    target: domid(t)?,
                }
            }
            MsgType::DirectoryPart => {
                let (p, o) = two(payload)?;
                Request::DirectoryPart {
                    path: node_path(p)?,
                    offset: dec_u32(o)?,
                }
            }
            MsgType::WatchEvent | MsgType::Error => return Err(CodecError::NotARequest(ty)),
        })
    }

    /// Decode a framed message as a request (its header type selects the format).
    pub fn from_message(msg: &Message) -> Result<Request, CodecError> {
        Request::decode(msg.msg_type()?, &msg.payload)
    }

    /// The payload bytes. Fails on embedded NULs in strings, a special path where the type
    /// takes node paths only, or a payload over `XENSTORE_PAYLOAD_MAX`.
    pub fn encode_payload(&self) -> Result<Vec<u8>, CodecError> {
        let mut o = Out::new();
        let node = |p: &Path| -> Result<(), CodecError> {
            if p.is_special() {
                return Err(PathError::SpecialNotAllowed.into());
            }
            Ok(())
        };
        match self {
            Request::Control { command, params } => {
                o.str(command)?.raw(params);
            }
            Request::Directory(p) | Request::Read(p) | Request::Mkdir(p) | Request::Rm(p) => {
                node(p)?;
                o.str(p.as_str())?;
            }
            Request::GetPerms(p) => {
                o.str(p.as_str())?;
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                o.str(path.as_str())?.str(token)?;
            }
            Request::TransactionStart | Request::ResetWatches => {
                o.str("")?;
            }
            Request::TransactionEnd { commit } => {
                o.str(if *commit { "T" } else { "F" })?;
            }
            Request::Introduce { domid, mfn, port } => {
                o.str(&alloc_str(domid))?
                    .str(&alloc_str(mfn))?
                    .str(&alloc_str(port))?;
            }
            Request::Release(d)
            | Request::GetDomainPath(d)
            | Request::IsDomainIntroduced(d)
            | Request::Resume(d) => {
                o.str(&alloc_str(d))?;
            }
            Request::Write { path, value } => {
                node(path)?;
                o.str(path.as_str())?.raw(value);
            }
            Request::SetPerms { path, perms } => {
                o.str(path.as_str())?;
                for p in perms.entries() {
                    o.str(&alloc_str(p))?;
                }
            }
            Request::SetTarget { domid, target } => {
                o.str(&alloc_str(domid))?.str(&alloc_str(target))?;
            }
            Request::DirectoryPart { path, offset } => {
                node(path)?;
                o.str(path.as_str())?.str(&alloc_str(offset))?;
            }
        }
        o.finish()
    }

    /// A framed message with this request.
    pub fn to_message(&self, req_id: u32, tx_id: u32) -> Result<Message, CodecError> {
        Message::new(self.msg_type(), req_id, tx_id, self.encode_payload()?)
    }
}

// ---------------------------------------------------------------------------------------------
// Replies.

/// A message server → client: the reply to a request, an `XS_ERROR`, or an unsolicited
/// `XS_WATCH_EVENT`. A reply carries the request's type in its header (or `XS_ERROR`), so
/// decoding needs the header type: [`Response::decode`] / [`Response::from_message`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response {
    /// `OK\0` for a type whose success reply carries nothing else ([`MsgType::replies_ok`]).
    Ok(MsgType),
    /// `XS_ERROR` `E<name>\0`. Linux's xenbus maps an unknown name to `EINVAL`; we report
    /// [`CodecError::UnknownErrorName`] and let the caller decide.
    Error(XsError),
    /// `XS_CONTROL` reply: implementation specific, kept raw.
    Control(Vec<u8>),
    /// `XS_DIRECTORY` `<child>\0*` (leaf names; none for an empty payload).
    Directory(Vec<String>),
    /// `XS_READ`: the raw value (no NUL appended).
    Read(Vec<u8>),
    /// `XS_GET_PERMS` `<perm>\0+`.
    GetPerms(Perms),
    /// `XS_TRANSACTION_START` `<transid>\0` (unsigned decimal `u32`).
    TransactionStart(u32),
    /// `XS_GET_DOMAIN_PATH` `<path>\0`.
    GetDomainPath(Path),
    /// `XS_IS_DOMAIN_INTRODUCED` `T\0` / `F\0`.
    IsDomainIntroduced(bool),
    /// `XS_DIRECTORY_PART` `<gencnt>\0<child>\0*`, and one more NUL (an empty string) when the
    /// list reaches the end (C `send_directory_part()`: an offset past the end yields
    /// `<gencnt>\0\0`).
    DirectoryPart {
        /// The node's generation count (same across calls ⇒ the node did not change).
        generation: u64,
        /// Children from the requested offset on.
        children: Vec<String>,
        /// The list is complete (the payload ended with the extra empty string).
        complete: bool,
    },
    /// `XS_WATCH_EVENT` `<epath>\0<token>\0` (req_id and tx_id are 0). `epath` may be relative
    /// (for relative watches) or a `@` special name.
    WatchEvent {
        /// The modified path.
        path: Path,
        /// The watch's token.
        token: String,
    },
}

impl Response {
    /// The header type of this reply.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Response::Ok(t) => *t,
            Response::Error(_) => MsgType::Error,
            Response::Control(_) => MsgType::Control,
            Response::Directory(_) => MsgType::Directory,
            Response::Read(_) => MsgType::Read,
            Response::GetPerms(_) => MsgType::GetPerms,
            Response::TransactionStart(_) => MsgType::TransactionStart,
            Response::GetDomainPath(_) => MsgType::GetDomainPath,
            Response::IsDomainIntroduced(_) => MsgType::IsDomainIntroduced,
            Response::DirectoryPart { .. } => MsgType::DirectoryPart,
            Response::WatchEvent { .. } => MsgType::WatchEvent,
        }
    }

    /// Decode the payload of a server message whose header type is `ty`.
    pub fn decode(ty: MsgType, payload: &[u8]) -> Result<Response, CodecError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge { len: payload.len() });
        }
        if ty.replies_ok() {
            return match one(payload) {
                Ok(b"OK") => Ok(Response::Ok(ty)),
                Ok(_) | Err(_) => Err(CodecError::ExpectedOk),
            };
        }
        Ok(match ty {
            MsgType::Error => {
                let name = utf8(one(payload)?)?;
                Response::Error(XsError::from_name(name).ok_or(CodecError::UnknownErrorName)?)
            }
            MsgType::WatchEvent => {
                let (p, t) = two(payload)?;
                Response::WatchEvent {
                    path: any_path(p)?,
                    token: string(t)?,
                }
            }
            MsgType::Control => Response::Control(payload.to_vec()),
            MsgType::Read => Response::Read(payload.to_vec()),
            MsgType::Directory => Response::Directory(children(&split_strings(payload)?)?),
            MsgType::GetPerms => {
                let entries = split_strings(payload)?
                    .iter()
                    .map(|s| Perm::parse_bytes(s))
                    .collect::<Result<Vec<_>, _>>()?;
                Response::GetPerms(Perms::from_vec(entries)?)
            }
            MsgType::TransactionStart => Response::TransactionStart(dec_u32(one(payload)?)?),
            MsgType::GetDomainPath => Response::GetDomainPath(any_path(one(payload)?)?),
            MsgType::IsDomainIntroduced => Response::IsDomainIntroduced(tf(one(payload)?)?),
            MsgType::DirectoryPart => {
                let v = split_strings(payload)?;
                let (gen, rest) = v.split_first().ok_or(CodecError::WrongArgCount {
                    expected: 1,
                    found: 0,
                })?;
                let (complete, rest) = match rest.split_last() {
                    Some(([], init)) => (true, init),
                    _ => (false, rest),
                };
                Response::DirectoryPart {
                    generation: dec_u64(gen)?,
                    children: children(rest)?,
                    complete,
                }
            }
            // The OK-reply types were handled above.
            _ => return Err(CodecError::ExpectedOk),
        })
    }

    /// Decode a framed server message (its header type selects the format).
    pub fn from_message(msg: &Message) -> Result<Response, CodecError> {
        Response::decode(msg.msg_type()?, &msg.payload)
    }

    /// The payload bytes.
    pub fn encode_payload(&self) -> Result<Vec<u8>, CodecError> {
        let mut o = Out::new();
        match self {
            Response::Ok(t) => {
                if !t.replies_ok() {
                    return Err(CodecError::NotAnAckType(*t));
                }
                o.str("OK")?;
            }
            Response::Error(e) => {
                o.str(e.as_str())?;
            }
            Response::Control(b) | Response::Read(b) => {
                o.raw(b);
            }
            Response::Directory(c) => {
                for name in c {
                    leaf(name)?;
                    o.str(name)?;
                }
            }
            Response::GetPerms(p) => {
                for e in p.entries() {
                    o.str(&alloc_str(e))?;
                }
            }
            Response::TransactionStart(id) => {
                o.str(&alloc_str(id))?;
            }
            Response::GetDomainPath(p) => {
                o.str(p.as_str())?;
            }
            Response::IsDomainIntroduced(b) => {
                o.str(if *b { "T" } else { "F" })?;
            }
            Response::DirectoryPart {
                generation,
                children,
                complete,
            } => {
                o.str(&alloc_str(generation))?;
                for name in children {
                    leaf(name)?;
                    o.str(name)?;
                }
                if *complete {
                    o.str("")?;
                }
            }
            Response::WatchEvent { path, token } => {
                o.str(path.as_str())?.str(token)?;
            }
        }
        o.finish()
    }

    /// A framed message with this reply (`req_id`/`tx_id` copied from the request; 0 for
    /// watch events).
    pub fn to_message(&self, req_id: u32, tx_id: u32) -> Result<Message, CodecError> {
        Message::new(self.msg_type(), req_id, tx_id, self.encode_payload()?)
    }
}

fn leaf(name: &str) -> Result<(), CodecError> {
    if is_valid_leaf(name.as_bytes()) {
        Ok(())
    } else {
        Err(CodecError::BadChildName)
    }
}

fn children(v: &[&[u8]]) -> Result<Vec<String>, CodecError> {
    v.iter()
        .map(|s| {
            if is_valid_leaf(s) {
                string(s)
            } else {
                Err(CodecError::BadChildName)
            }
        })
        .collect()
}
