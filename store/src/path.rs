//! XenStore paths: absolute (`/...`), relative (to `/local/domain/<domid>`) and `@` specials.
//!
//! Rules (docs/misc/xenstore.txt, "Paths are /-separated..."; C xenstored `canonicalize()` /
//! the older `is_valid_nodename()` + `valid_chars()` in tools/xenstore/xenstored_core.c):
//! * allowed bytes: ASCII alphanumerics and the four punctuation characters `-/_@`
//!   (`valid_chars()` is a `strspn()` over exactly that set). `.` is not allowed, so `.` and `..`
//!   components are invalid by the character rule alone — there is no dot-dot resolution.
//! * no doubled slashes (`strstr(node, "//")`), no trailing slash except the root `/` itself,
//!   and the empty path is forbidden.
//! * a path not starting with `/` or `@` is relative: xenstored prefixes the connection's
//!   domain path, `/local/domain/<domid>/` (`get_implicit_path()`), so an empty relative path
//!   becomes `/local/domain/N/`, which ends in `/` and is rejected.
//! * a path starting with `@` names a special watch (`@introduceDomain`, `@releaseDomain`);
//!   only WATCH/UNWATCH and GET_PERMS/SET_PERMS accept them (`allow_special`).
//! * lengths (xs_wire.h): `XENSTORE_ABS_PATH_MAX` 3072 bytes for absolute paths,
//!   `XENSTORE_REL_PATH_MAX` 2048 bytes for relative ones ("Violating these just gets you an
//!   error back", i.e. `EINVAL`). Current xenstored instead counts the length *after* a
//!   `/local/domain/<N>/` prefix against its `path-max` quota (default
//!   `XENSTORE_REL_PATH_MAX`); see [`Path::quota_len`]. We enforce the xs_wire.h limits.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use crate::DomId;

/// `XENSTORE_ABS_PATH_MAX` (xs_wire.h): the longest absolute path, in bytes (no NUL).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX` (xs_wire.h): the longest relative path, in bytes (no NUL).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// The special watch fired by xenstored on `XS_INTRODUCE` (xenstore.txt, WATCH).
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special watch fired on domain shutdown/destruction and `XS_RELEASE`.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// The kind of a valid path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Starts with `/`.
    Absolute,
    /// Starts with neither `/` nor `@`; relative to `/local/domain/<domid>`.
    Relative,
    /// Starts with `@`: a special watch name (`@introduceDomain`, `@releaseDomain`, ...).
    Special,
}

/// Why a path is invalid. Every variant is reported to clients as `EINVAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The empty path.
    Empty,
    /// Not UTF-8 (only possible for bytes; a non-ASCII byte is also an invalid character).
    NotUtf8,
    /// A byte outside `[A-Za-z0-9/_@-]` (this includes `.`, so `..` lands here).
    InvalidChar {
        /// The offending byte.
        byte: u8,
        /// Its offset in the path.
        pos: usize,
    },
    /// Contains `//`.
    DoubleSlash,
    /// Ends with `/` and is not the root.
    TrailingSlash,
    /// Longer than the limit for its kind.
    TooLong {
        /// The path's length in bytes.
        len: usize,
        /// The limit that applies (`XENSTORE_ABS_PATH_MAX` or `XENSTORE_REL_PATH_MAX`).
        max: usize,
    },
    /// A `@` special name where the operation only takes node paths.
    SpecialNotAllowed,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("empty path"),
            PathError::NotUtf8 => f.write_str("path is not UTF-8"),
            PathError::InvalidChar { byte, pos } => {
                write!(f, "invalid character 0x{byte:02x} at offset {pos}")
            }
            PathError::DoubleSlash => f.write_str("path contains //"),
            PathError::TrailingSlash => f.write_str("path ends with /"),
            PathError::TooLong { len, max } => write!(f, "path of {len} bytes exceeds {max}"),
            PathError::SpecialNotAllowed => f.write_str("@ special path not allowed here"),
        }
    }
}

impl core::error::Error for PathError {}

/// Is `b` allowed in a path (`valid_chars()` in xenstored_core.c)?
pub const fn is_valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Check `s` against xenstored's path rules and classify it.
pub fn validate(s: &str) -> Result<PathKind, PathError> {
    let bytes = s.as_bytes();
    let kind = match bytes.first() {
        None => return Err(PathError::Empty),
        Some(b'/') => PathKind::Absolute,
        Some(b'@') => PathKind::Special,
        Some(_) => PathKind::Relative,
    };
    let max = match kind {
        PathKind::Relative => XENSTORE_REL_PATH_MAX,
        PathKind::Absolute | PathKind::Special => XENSTORE_ABS_PATH_MAX,
    };
    if bytes.len() > max {
        return Err(PathError::TooLong {
            len: bytes.len(),
            max,
        });
    }
    if let Some(pos) = bytes.iter().position(|&b| !is_valid_char(b)) {
        return Err(PathError::InvalidChar {
            byte: bytes[pos],
            pos,
        });
    }
    if bytes.windows(2).any(|w| w == b"//") {
        return Err(PathError::DoubleSlash);
    }
    if bytes.ends_with(b"/") && s != "/" {
        return Err(PathError::TrailingSlash);
    }
    Ok(kind)
}

/// Check a child (leaf) name as listed by `XS_DIRECTORY`: non-empty, valid characters, no `/`.
pub fn is_valid_leaf(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= XENSTORE_ABS_PATH_MAX
        && s.iter().all(|&b| b != b'/' && is_valid_char(b))
}

/// The home path of a domain, `/local/domain/<domid>` (xenstore.txt, GET_DOMAIN_PATH;
/// xenstored's `get_implicit_path()`).
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// A path that passed [`validate`]: absolute, relative or special.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(String);

impl Path {
    /// The root, `/`.
    pub fn root() -> Path {
        Path("/".to_string())
    }

    /// Validate `s` (any kind).
    pub fn new(s: &str) -> Result<Path, PathError> {
        validate(s)?;
        Ok(Path(s.to_string()))
    }

    /// Validate `bytes` (any kind); non-UTF-8 is [`PathError::NotUtf8`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Path, PathError> {
        let s = core::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
        Path::new(s)
    }

    /// Validate `s` as a node path (absolute or relative, not `@` special).
    pub fn node(s: &str) -> Result<Path, PathError> {
        let p = Path::new(s)?;
        if p.is_special() {
            return Err(PathError::SpecialNotAllowed);
        }
        Ok(p)
    }

    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its kind.
    pub fn kind(&self) -> PathKind {
        match self.0.as_bytes().first() {
            Some(b'/') => PathKind::Absolute,
            Some(b'@') => PathKind::Special,
            _ => PathKind::Relative,
        }
    }

    /// Starts with `/`.
    pub fn is_absolute(&self) -> bool {
        self.kind() == PathKind::Absolute
    }

    /// Relative to the connection's domain path.
    pub fn is_relative(&self) -> bool {
        self.kind() == PathKind::Relative
    }

    /// A `@` special watch name.
    pub fn is_special(&self) -> bool {
        self.kind() == PathKind::Special
    }

    /// Make a relative path absolute for domain `domid` (`/local/domain/<domid>/<path>`);
    /// absolute and special paths are returned unchanged. Cannot fail: the longest result,
    /// 20 + 2048 bytes, is within `XENSTORE_ABS_PATH_MAX`.
    pub fn resolve(&self, domid: DomId) -> Path {
        if self.is_relative() {
            Path(format!("/local/domain/{domid}/{}", self.0))
        } else {
            self.clone()
        }
    }

    /// The inverse of [`Path::resolve`] for watch events (xenstore.txt, WATCH_EVENT: "Iff
    /// `<wpath>` for the watch was specified as a relative pathname, the `<epath>` path will also
    /// be relative"): strip `/local/domain/<domid>/` if present.
    pub fn relative_to_domain(&self, domid: DomId) -> Option<Path> {
        let prefix = format!("/local/domain/{domid}/");
        self.0
            .strip_prefix(prefix.as_str())
            .map(|rest| Path(rest.to_string()))
    }

    /// The length current C xenstored counts against its `path-length` quota: the length
    /// after a leading `/local/domain/<N>/` (N up to 5 digits), else the whole length
    /// (`sscanf(name, "/local/domain/%5u/%n", ...)` in `canonicalize()`).
    pub fn quota_len(&self) -> usize {
        let s = self.0.as_bytes();
        const PFX: &[u8] = b"/local/domain/";
        if let Some(rest) = s.strip_prefix(PFX) {
            let digits = rest
                .iter()
                .take(5)
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 && rest.get(digits) == Some(&b'/') {
                return s.len() - (PFX.len() + digits + 1);
            }
        }
        s.len()
    }

    /// `self` is a child of `parent` in the sense of xenstore.txt: identical, or `parent` is
    /// `/` (for node paths), or `parent/` is a prefix of `self`. Both are compared as given,
    /// so resolve relative paths first; a special name is never the child of a node path.
    pub fn is_child_of(&self, parent: &Path) -> bool {
        if self.0 == parent.0 {
            return true;
        }
        if self.is_special() != parent.is_special() {
            return false;
        }
        if parent.0 == "/" {
            return self.is_absolute();
        }
        self.0
            .strip_prefix(parent.0.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Path {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl core::str::FromStr for Path {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::new(s)
    }
}

/// Resolve `path` (any kind) for domain `domid`: validate it, then make a relative path
/// absolute. Absolute and special paths come back unchanged.
pub fn resolve(domid: DomId, path: &str) -> Result<Path, PathError> {
    Ok(Path::new(path)?.resolve(domid))
}
