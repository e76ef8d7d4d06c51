//! Where XenBus devices live in XenStore, and validation of what a peer or toolstack wrote
//! there (pure; table-tested).
//!
//! * A frontend of domain F: `/local/domain/F/device/<class>/<id>` with `backend` (the
//!   backend's directory) and `backend-id`.
//! * A backend in domain B serving F: `/local/domain/B/backend/<class>/F/<id>` with
//!   `frontend` and `frontend-id`.
//!
//! (Linux `drivers/xen/xenbus/xenbus_probe_frontend.c` / `xenbus_probe_backend.c`:
//! `read_backend_details()` / `read_frontend_details()` read these pairs through
//! `xenbus_read_otherend_details()`; libxl writes them, see XENSTORE-LAYOUT.md.) Linux only
//! checks that the other end's path is non-empty and exists; we also check that it is the
//! one path it can be, so a toolstack or peer cannot point a device at someone else's node.

use alloc::format;
use alloc::string::String;

use crate::DomId;

/// Which end of a device this domain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The frontend (`device/<class>/<id>`).
    Front,
    /// The backend (`backend/<class>/<fe-domid>/<id>`).
    Back,
}

impl Role {
    /// `"front"` / `"back"`.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Front => "front",
            Role::Back => "back",
        }
    }
}

/// Why the other end's details are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailsError {
    /// `backend-id` / `frontend-id` is not a decimal domid (0..=65535, digits only).
    BadDomid,
    /// The other end's path is not the one the device's own place implies.
    BadPath,
    /// A value is not UTF-8.
    NotUtf8,
}

impl core::fmt::Display for DetailsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DetailsError::BadDomid => f.write_str("bad domain id"),
            DetailsError::BadPath => f.write_str("other end path does not match the device"),
            DetailsError::NotUtf8 => f.write_str("value is not UTF-8"),
        }
    }
}

impl core::error::Error for DetailsError {}

/// Whether `s` may be a class name or device id: a valid XenStore leaf (no `/`), at most 64
/// bytes of `[A-Za-z0-9_-]` (xenstored also allows `@`, which no device name uses).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A domid as a peer writes it: plain decimal digits, 0..=65535 (strict, no blanks or sign).
pub fn parse_domid(v: &[u8]) -> Option<DomId> {
    if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'));
    DomId::try_from(n).ok()
}

/// `/local/domain/<domid>`.
pub fn home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// A frontend's node relative to its home: `device/<class>/<id>`.
pub fn front_nodename(class: &str, id: &str) -> String {
    format!("device/{class}/{id}")
}

/// A backend's node relative to its home: `backend/<class>/<fe>/<id>`.
pub fn back_nodename(class: &str, fe: DomId, id: &str) -> String {
    format!("backend/{class}/{fe}/{id}")
}

/// Check a frontend's `backend` / `backend-id`: the backend of frontend `fe`'s device
/// `<id>` (of any class) must be `/local/domain/<backend-id>/backend/<type>/<fe>/<id>`. Returns the
/// backend domid.
///
/// `<type>` is the backend's own class, which need not be the frontend's: libxl puts a vbd's
/// backend under `backend/vbd` (kernel blkback), `backend/qdisk` (QEMU's xen-block,
/// `backendtype=qdisk`) or `backend/vbd3` (tapdisk3) — seen in the lab: a qdisk backend at
/// `/local/domain/0/backend/qdisk/<fe>/51712` for frontend `device/vbd/51712`. Linux's
/// `xenbus_read_otherend_details()` does not look at the path at all; we still require the
/// backend domain's home, our domid and our device id, with any valid class name.
pub fn check_backend_details(
    fe: DomId,
    id: &str,
    backend: &[u8],
    backend_id: &[u8],
) -> Result<DomId, DetailsError> {
    let be = parse_domid(backend_id).ok_or(DetailsError::BadDomid)?;
    let path = core::str::from_utf8(backend).map_err(|_| DetailsError::NotUtf8)?;
    let rest = path
        .strip_prefix(&format!("{}/backend/", home(be)))
        .ok_or(DetailsError::BadPath)?;
    let (ty, rest) = rest.split_once('/').ok_or(DetailsError::BadPath)?;
    if !is_valid_name(ty) || rest != format!("{fe}/{id}") {
        return Err(DetailsError::BadPath);
    }
    Ok(be)
}

/// Check a backend's `frontend` / `frontend-id`: for backend node
/// `backend/<class>/<fe>/<id>`, `frontend-id` must be `fe` and `frontend` must be
/// `/local/domain/<fe>/device/<class>/<id>`.
pub fn check_frontend_details(
    fe: DomId,
    class: &str,
    id: &str,
    frontend: &[u8],
    frontend_id: &[u8],
) -> Result<(), DetailsError> {
    let got = parse_domid(frontend_id).ok_or(DetailsError::BadDomid)?;
    if got != fe {
        return Err(DetailsError::BadDomid);
    }
    let path = core::str::from_utf8(frontend).map_err(|_| DetailsError::NotUtf8)?;
    if path != format!("{}/{}", home(fe), front_nodename(class, id)) {
        return Err(DetailsError::BadPath);
    }
    Ok(())
}

/// The node Linux's `xenbus_dev_error()` writes for device `nodename` (relative to the
/// writer's home): `error/<nodename>/error` (`xenbus_va_dev_error()` in
/// `drivers/xen/xenbus/xenbus_client.c` writes key `error` under `"error/%s", dev->nodename`
/// with a relative path, i.e. in the writer's own domain home).
pub fn error_node(home: &str, rel_nodename: &str) -> String {
    format!("{home}/error/{rel_nodename}/error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_details() {
        let ok = b"/local/domain/0/backend/vbd/1/51712";
        assert_eq!(check_backend_details(1, "51712", ok, b"0"), Ok(0));
        let dd = b"/local/domain/7/backend/vbd/3/51712";
        assert_eq!(check_backend_details(3, "51712", dd, b"7"), Ok(7));
        // other backend types libxl uses for a vbd: QEMU's qdisk, tapdisk3's vbd3
        let qdisk = b"/local/domain/0/backend/qdisk/1/51712";
        assert_eq!(check_backend_details(1, "51712", qdisk, b"0"), Ok(0));
        let vbd3 = b"/local/domain/0/backend/vbd3/1/51712";
        assert_eq!(check_backend_details(1, "51712", vbd3, b"0"), Ok(0));
        let bad: &[(&[u8], &[u8], DetailsError)] = &[
            (ok, b"1", DetailsError::BadPath),
            (ok, b"", DetailsError::BadDomid),
            (ok, b"-0", DetailsError::BadDomid),
            (ok, b"65536", DetailsError::BadDomid),
            (ok, b" 0", DetailsError::BadDomid),
            (
                b"/local/domain/0/backend/vbd/2/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend//1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend/q.d/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend/vbd/x/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/00/backend/vbd/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend/vbd/1/51712/",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/backend/vbd/1/5171",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"local/domain/0/backend/vbd/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (
                b"/local/domain/0/device/vbd/1/51712",
                b"0",
                DetailsError::BadPath,
            ),
            (b"", b"0", DetailsError::BadPath),
            (b"/tool/xenstored", b"0", DetailsError::BadPath),
            (b"\xff", b"0", DetailsError::NotUtf8),
        ];
        for (path, id, e) in bad {
            assert_eq!(
                check_backend_details(1, "51712", path, id).as_ref(),
                Err(e),
                "{path:?} {id:?}"
            );
        }
    }

    #[test]
    fn frontend_details() {
        let ok = b"/local/domain/3/device/vbd/51712";
        assert_eq!(check_frontend_details(3, "vbd", "51712", ok, b"3"), Ok(()));
        assert_eq!(
            check_frontend_details(3, "vbd", "51712", ok, b"4"),
            Err(DetailsError::BadDomid)
        );
        assert_eq!(
            check_frontend_details(3, "vbd", "51712", b"/local/domain/4/device/vbd/51712", b"3"),
            Err(DetailsError::BadPath)
        );
        assert_eq!(
            check_frontend_details(3, "vbd", "51712", b"/local/domain/3/device/vbd/1", b"3"),
            Err(DetailsError::BadPath)
        );
    }

    #[test]
    fn names_and_domids() {
        assert!(is_valid_name("vbd") && is_valid_name("51712") && is_valid_name("v-d_1"));
        for s in ["", "a/b", "..", "a b", "é", "@x"] {
            assert!(!is_valid_name(s), "{s}");
        }
        assert_eq!(parse_domid(b"0"), Some(0));
        assert_eq!(parse_domid(b"65535"), Some(65535));
        for v in [
            &b""[..],
            b"65536",
            b"99999",
            b"123456",
            b"-1",
            b"1 ",
            b"0x1",
        ] {
            assert_eq!(parse_domid(v), None, "{v:?}");
        }
        assert_eq!(
            error_node("/local/domain/1", "device/vbd/51712"),
            "/local/domain/1/error/device/vbd/51712/error"
        );
    }
}
