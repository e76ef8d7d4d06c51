//! The node operations, shared by [`Client`](super::Client) (outside any transaction) and
//! [`Transaction`](super::Transaction) (inside one): the [`Store`] trait.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{ProtocolError, XsClientError};
use crate::error::XsError;
use crate::msg::{Request, Response};
use crate::path::Path;
use crate::perms::Perms;

/// How many times [`Store::directory`] restarts an `XS_DIRECTORY_PART` listing whose node
/// changed underneath (its generation count moved) before giving up with `EAGAIN`.
pub const DIRECTORY_PART_RESTARTS: u32 = 16;

/// The largest child list (bytes of NUL-terminated names) [`Store::directory`] assembles from
/// `XS_DIRECTORY_PART` replies; a server claiming more breaks the protocol.
pub const DIRECTORY_PART_MAX_BYTES: usize = 1 << 20;

type Result<T> = core::result::Result<T, XsClientError>;

fn node(path: &str) -> Result<Path> {
    Path::node(path).map_err(|e| XsClientError::BadRequest(e.into()))
}

fn any(path: &str) -> Result<Path> {
    Path::new(path).map_err(|e| XsClientError::BadRequest(e.into()))
}

fn unexpected(r: &Response, expected: crate::wire::MsgType) -> XsClientError {
    XsClientError::Protocol(ProtocolError::WrongType {
        expected,
        got: r.msg_type().as_u32(),
    })
}

fn expect_ok(r: Response, ty: crate::wire::MsgType) -> Result<()> {
    match r {
        Response::Ok(t) if t == ty => Ok(()),
        other => Err(unexpected(&other, ty)),
    }
}

/// Parse a decimal value as xenbus readers do (`%u`), but strictly: ASCII digits only (leading
/// zeros allowed), no sign, no blanks, no overflow.
pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 40 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn bad(path: &str) -> XsClientError {
    XsClientError::BadValue(path.to_string())
}

fn to_u32(path: &str, v: &[u8]) -> Result<u32> {
    parse_decimal(v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(path))
}

fn to_u64(path: &str, v: &[u8]) -> Result<u64> {
    parse_decimal(v).ok_or_else(|| bad(path))
}

fn to_bool(path: &str, v: &[u8]) -> Result<bool> {
    match v {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(bad(path)),
    }
}

fn to_str<'v>(path: &str, v: &'v [u8]) -> Result<&'v str> {
    core::str::from_utf8(v).map_err(|_| bad(path))
}

/// XenStore node operations. Implemented by [`Client`](super::Client) (each call outside any
/// transaction) and by [`Transaction`](super::Transaction) (each call inside it); every method
/// but [`call`](Self::call) is provided.
///
/// Paths are absolute (`/local/domain/0/name`) or relative to the caller's home
/// (`/local/domain/<domid>`; ring connections only). An invalid path is
/// [`XsClientError::BadRequest`] and nothing is sent; a server error is
/// [`XsClientError::Xs`], e.g. `Xs(XsError::Enoent)` for a missing node.
pub trait Store {
    /// Send `req` in this context and return the decoded reply (an `XS_ERROR` reply is
    /// `Err(Xs(..))`).
    fn call(&mut self, req: &Request) -> Result<Response>;

    /// `XS_READ`: the node's value.
    fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        match self.call(&Request::Read(node(path)?))? {
            Response::Read(v) => Ok(v),
            other => Err(unexpected(&other, crate::wire::MsgType::Read)),
        }
    }

    /// `XS_READ`, `None` if the node does not exist (`ENOENT`).
    fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(XsClientError::Xs(XsError::Enoent)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `XS_READ` of a UTF-8 value ([`XsClientError::BadValue`] if it is not).
    fn read_string(&mut self, path: &str) -> Result<String> {
        let v = self.read(path)?;
        String::from_utf8(v).map_err(|_| bad(path))
    }

    /// `XS_READ` of a decimal `u32` (`"123"`; leading zeros allowed, nothing else).
    fn read_u32(&mut self, path: &str) -> Result<u32> {
        let v = self.read(path)?;
        to_u32(path, &v)
    }

    /// `XS_READ` of a decimal `u64`.
    fn read_u64(&mut self, path: &str) -> Result<u64> {
        let v = self.read(path)?;
        to_u64(path, &v)
    }

    /// `XS_READ` of a boolean written as `"0"` or `"1"` (XenBus feature flags).
    fn read_bool(&mut self, path: &str) -> Result<bool> {
        let v = self.read(path)?;
        to_bool(path, &v)
    }

    /// `XS_WRITE`: set the node's value, creating it and missing parents.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<()> {
        let req = Request::Write {
            path: node(path)?,
            value: value.to_vec(),
        };
        expect_ok(self.call(&req)?, crate::wire::MsgType::Write)
    }

    /// `XS_WRITE` of a string.
    fn write_str(&mut self, path: &str, value: &str) -> Result<()> {
        self.write(path, value.as_bytes())
    }

    /// `XS_WRITE` of a decimal `u32`.
    fn write_u32(&mut self, path: &str, value: u32) -> Result<()> {
        self.write(path, format!("{value}").as_bytes())
    }

    /// `XS_WRITE` of a decimal `u64`.
    fn write_u64(&mut self, path: &str, value: u64) -> Result<()> {
        self.write(path, format!("{value}").as_bytes())
    }

    /// `XS_WRITE` of `"1"` or `"0"`.
    fn write_bool(&mut self, path: &str, value: bool) -> Result<()> {
        self.write(path, if value { b"1" } else { b"0" })
    }

    /// `XS_MKDIR`: make sure the node exists (values of existing nodes are kept).
    fn mkdir(&mut self, path: &str) -> Result<()> {
        expect_ok(
            self.call(&Request::Mkdir(node(path)?))?,
            crate::wire::MsgType::Mkdir,
        )
    }

    /// `XS_RM`: remove the node and its children (not an error if it does not exist, but
    /// `ENOENT` if its parent does not either).
    fn rm(&mut self, path: &str) -> Result<()> {
        expect_ok(
            self.call(&Request::Rm(node(path)?))?,
            crate::wire::MsgType::Rm,
        )
    }

    /// The children's leaf names. `XS_DIRECTORY`; if the list does not fit a reply (`E2BIG`),
    /// falls back to `XS_DIRECTORY_PART` as libxenstore does: parts from offset 0 until the
    /// end marker, restarting when the node's generation count changes (at most
    /// [`DIRECTORY_PART_RESTARTS`] times, then `EAGAIN`). If the server does not know
    /// `XS_DIRECTORY_PART` (`ENOSYS`) the result is the original `E2BIG`.
    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        let p = node(path)?;
        match self.call(&Request::Directory(p.clone())) {
            Ok(Response::Directory(v)) => Ok(v),
            Ok(other) => Err(unexpected(&other, crate::wire::MsgType::Directory)),
            Err(XsClientError::Xs(XsError::E2big)) => match directory_part(self, p) {
                Err(XsClientError::Xs(XsError::Enosys)) => Err(XsClientError::Xs(XsError::E2big)),
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    /// `XS_GET_PERMS` (node paths and `@` special names).
    fn get_perms(&mut self, path: &str) -> Result<Perms> {
        match self.call(&Request::GetPerms(any(path)?))? {
            Response::GetPerms(p) => Ok(p),
            other => Err(unexpected(&other, crate::wire::MsgType::GetPerms)),
        }
    }

    /// `XS_SET_PERMS` (node paths and `@` special names).
    fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
        let req = Request::SetPerms {
            path: any(path)?,
            perms: perms.clone(),
        };
        expect_ok(self.call(&req)?, crate::wire::MsgType::SetPerms)
    }

    /// Whether the node exists (an `XS_READ` that did not fail with `ENOENT`).
    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.try_read(path)?.is_some())
    }

    /// Read `dir/key` for every key (`key` alone if `dir` is empty), one request each, in
    /// this context: on a [`Client`](super::Client) the values may come from different
    /// moments (use [`Client::gather_atomic`](super::Client::gather_atomic) for one
    /// snapshot); on a [`Transaction`](super::Transaction) they are consistent. A missing
    /// node is `None`; any other error fails the whole gather.
    fn gather(&mut self, dir: &str, keys: &[&str]) -> Result<Gathered> {
        let mut entries = Vec::with_capacity(keys.len());
        for &k in keys {
            let path = if dir.is_empty() {
                k.to_string()
            } else {
                format!("{dir}/{k}")
            };
            let v = self.try_read(&path)?;
            entries.push((k.to_string(), path, v));
        }
        Ok(Gathered { entries })
    }
}

fn directory_part<S: Store + ?Sized>(s: &mut S, path: Path) -> Result<Vec<String>> {
    'restart: for _ in 0..=DIRECTORY_PART_RESTARTS {
        let mut out = Vec::new();
        let mut generation = None;
        let mut offset = 0usize;
        loop {
            let req = Request::DirectoryPart {
                path: path.clone(),
                offset: u32::try_from(offset)
                    .map_err(|_| XsClientError::Protocol(ProtocolError::DirectoryPart))?,
            };
            let (gen, children, complete) = match s.call(&req)? {
                Response::DirectoryPart {
                    generation,
                    children,
                    complete,
                } => (generation, children, complete),
                other => return Err(unexpected(&other, crate::wire::MsgType::DirectoryPart)),
            };
            if generation.is_some_and(|g| g != gen) {
                continue 'restart;
            }
            generation = Some(gen);
            if children.is_empty() && !complete {
                return Err(XsClientError::Protocol(ProtocolError::DirectoryPart));
            }
            for c in children {
                offset += c.len() + 1;
                out.push(c);
            }
            if offset > DIRECTORY_PART_MAX_BYTES {
                return Err(XsClientError::Protocol(ProtocolError::DirectoryPart));
            }
            if complete {
                return Ok(out);
            }
        }
    }
    Err(XsClientError::Xs(XsError::Eagain))
}

/// Values read by [`Store::gather`], by key, with typed accessors. A key not asked for, or
/// a node that does not exist, reads as `None`; a value that does not parse is
/// [`XsClientError::BadValue`] naming its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gathered {
    /// (key, full path, value).
    entries: Vec<(String, String, Option<Vec<u8>>)>,
}

impl Gathered {
    fn find(&self, key: &str) -> Option<(&str, &[u8])> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .and_then(|(_, p, v)| v.as_deref().map(|v| (p.as_str(), v)))
    }

    /// The raw value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.find(key).map(|(_, v)| v)
    }

    /// Whether the node existed.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The value as UTF-8.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        self.find(key).map(|(p, v)| to_str(p, v)).transpose()
    }

    /// The value as a decimal `u32`.
    pub fn u32(&self, key: &str) -> Result<Option<u32>> {
        self.find(key).map(|(p, v)| to_u32(p, v)).transpose()
    }

    /// The value as a decimal `u64`.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.find(key).map(|(p, v)| to_u64(p, v)).transpose()
    }

    /// The value as `"0"`/`"1"`.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.find(key).map(|(p, v)| to_bool(p, v)).transpose()
    }

    /// A value that must exist: `Err(Xs(ENOENT))` if it did not.
    pub fn require(&self, key: &str) -> Result<&[u8]> {
        self.get(key).ok_or(XsClientError::Xs(XsError::Enoent))
    }

    /// Every (key, value) in the order asked.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.entries
            .iter()
            .map(|(k, _, v)| (k.as_str(), v.as_deref()))
    }
}
