//! Node permissions as carried by `XS_GET_PERMS` / `XS_SET_PERMS`.
//!
//! docs/misc/xenstore.txt (GET_PERMS/SET_PERMS): `<perm-as-string>` is one of `w<domid>`
//! (write only), `r<domid>` (read only), `b<domid>` (both), `n<domid>` (no access); `<domid>`
//! is decimal 0..65535. The first entry of a node's list names the owner and the access every
//! domain not listed gets; the following entries are an ACL (the XenBus wiki, "Permissions";
//! xenstored's `perm_for_conn()`).
//!
//! C is lenient here: `xenstore_strings_to_perms()` (tools/include/xen-tools/xenstore-common.h)
//! reads the domid with `strtol(p, &end, 0)`, so it accepts a sign, leading blanks, hex (`0x`)
//! and octal (leading `0`), and then truncates to `domid_t`. We accept only plain decimal with
//! no leading zeros (so `r010` — octal 8 to C — is rejected rather than misread) and reject
//! values above 65535.

use alloc::vec::Vec;
use core::fmt;

use crate::num::parse_dec;
use crate::DomId;

/// One access right of a permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// All four, in `n r w b` order.
    pub const ALL: [Access; 4] = [Access::None, Access::Read, Access::Write, Access::Both];

    /// The wire letter.
    pub const fn as_char(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    /// Parse the wire letter (lower case only, as xenstored).
    pub const fn from_byte(b: u8) -> Option<Access> {
        match b {
            b'n' => Some(Access::None),
            b'r' => Some(Access::Read),
            b'w' => Some(Access::Write),
            b'b' => Some(Access::Both),
            _ => None,
        }
    }

    /// Grants reading.
    pub const fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Grants writing.
    pub const fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// Why a permission string or list is invalid (reported as `EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermError {
    /// The empty string.
    Empty,
    /// The first byte is not one of `n r w b`.
    BadAccess(u8),
    /// The domid is missing, not plain decimal, has leading zeros, or exceeds 65535.
    BadDomid,
    /// A permission list with no entries (a node always has an owner entry).
    NoEntries,
}

impl fmt::Display for PermError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PermError::Empty => f.write_str("empty permission string"),
            PermError::BadAccess(b) => write!(f, "bad access letter 0x{b:02x}"),
            PermError::BadDomid => f.write_str("bad domid"),
            PermError::NoEntries => f.write_str("empty permission list"),
        }
    }
}

impl core::error::Error for PermError {}

/// One `<perm-as-string>`: an access letter and a domid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The access granted.
    pub access: Access,
    /// The domain it applies to (for the first entry of a list: the owner).
    pub domid: DomId,
}

impl Perm {
    /// An entry.
    pub const fn new(access: Access, domid: DomId) -> Perm {
        Perm { access, domid }
    }

    /// Parse `r5`, `b0`, ... from bytes (no NUL).
    pub fn parse_bytes(s: &[u8]) -> Result<Perm, PermError> {
        let (&first, rest) = s.split_first().ok_or(PermError::Empty)?;
        let access = Access::from_byte(first).ok_or(PermError::BadAccess(first))?;
        let domid = parse_dec(rest, u64::from(DomId::MAX)).ok_or(PermError::BadDomid)?;
        let domid = DomId::try_from(domid).map_err(|_| PermError::BadDomid)?;
        Ok(Perm { access, domid })
    }
}

impl core::str::FromStr for Perm {
    type Err = PermError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Perm::parse_bytes(s.as_bytes())
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.as_char(), self.domid)
    }
}

/// A node's permission list: never empty. Entry 0 is the owner and the default access for
/// domains not listed; entries 1.. are the ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// `owner` owns the node; every other domain gets `others`.
    pub fn new(owner: DomId, others: Access) -> Perms {
        Perms(alloc::vec![Perm::new(others, owner)])
    }

    /// A list from its entries; empty is [`PermError::NoEntries`].
    pub fn from_vec(entries: Vec<Perm>) -> Result<Perms, PermError> {
        if entries.is_empty() {
            return Err(PermError::NoEntries);
        }
        Ok(Perms(entries))
    }

    /// Append an ACL entry.
    pub fn with(mut self, access: Access, domid: DomId) -> Perms {
        self.0.push(Perm::new(access, domid));
        self
    }

    /// The owner (entry 0's domid).
    pub fn owner(&self) -> DomId {
        self.first().domid
    }

    /// The access of domains not in the ACL (entry 0's access).
    pub fn default_access(&self) -> Access {
        self.first().access
    }

    /// Entries 1.. (the ACL).
    pub fn acl(&self) -> &[Perm] {
        self.0.get(1..).unwrap_or(&[])
    }

    /// All entries, owner first.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// The access `domid` has by the list alone, as xenstored's `perm_for_conn()` computes it
    /// for an unprivileged connection without a target: the owner has full access, else the
    /// first ACL entry naming `domid`, else the default. (Privileged domains — dom0 — bypass
    /// the list entirely; that is the server's business.)
    pub fn access_for(&self, domid: DomId) -> Access {
        if domid == self.owner() {
            return Access::Both;
        }
        self.acl()
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.default_access(), |p| p.access)
    }

    fn first(&self) -> Perm {
        // Invariant: never empty (constructors enforce it); fall back to "dom0 owns, no
        // access" rather than panicking should that ever be broken.
        self.0
            .first()
            .copied()
            .unwrap_or(Perm::new(Access::None, 0))
    }
}
