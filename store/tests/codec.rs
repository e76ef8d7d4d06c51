//! Table-driven tests of the xs_wire codec: header, types, error table, paths, permissions,
//! every request and reply format (roundtrip and malformed cases), and the framer.
//!
//! The numeric ground truth (type values, XS_TYPE_COUNT, sizeof(xsd_sockmsg), the xsd_errors[]
//! table with errno numbers) was printed by a C program including the installed
//! /usr/include/xen/io/xs_wire.h and <errno.h>.

// Rust has no octal escapes: `b"1\02\0"` is 1, NUL, 2, NUL — exactly what the tables mean.
#![allow(clippy::octal_escapes)]

use xen_store::error::{CodecError, XsError};
use xen_store::path::{self, Path, PathError, PathKind};
use xen_store::perms::{Access, Perm, PermError, Perms};
use xen_store::wire::{self, Header, Message, MsgType, HEADER_LEN, XENSTORE_PAYLOAD_MAX};
use xen_store::{Framer, Request, Response};

fn p(s: &str) -> Path {
    Path::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Types and header.

#[test]
fn msg_type_values_match_xs_wire_h() {
    let table: &[(u32, MsgType, &str)] = &[
        (0, MsgType::Control, "CONTROL"),
        (1, MsgType::Directory, "DIRECTORY"),
        (2, MsgType::Read, "READ"),
        (3, MsgType::GetPerms, "GET_PERMS"),
        (4, MsgType::Watch, "WATCH"),
        (5, MsgType::Unwatch, "UNWATCH"),
        (6, MsgType::TransactionStart, "TRANSACTION_START"),
        (7, MsgType::TransactionEnd, "TRANSACTION_END"),
        (8, MsgType::Introduce, "INTRODUCE"),
        (9, MsgType::Release, "RELEASE"),
        (10, MsgType::GetDomainPath, "GET_DOMAIN_PATH"),
        (11, MsgType::Write, "WRITE"),
        (12, MsgType::Mkdir, "MKDIR"),
        (13, MsgType::Rm, "RM"),
        (14, MsgType::SetPerms, "SET_PERMS"),
        (15, MsgType::WatchEvent, "WATCH_EVENT"),
        (16, MsgType::Error, "ERROR"),
        (17, MsgType::IsDomainIntroduced, "IS_DOMAIN_INTRODUCED"),
        (18, MsgType::Resume, "RESUME"),
        (19, MsgType::SetTarget, "SET_TARGET"),
        (21, MsgType::ResetWatches, "RESET_WATCHES"),
        (22, MsgType::DirectoryPart, "DIRECTORY_PART"),
    ];
    assert_eq!(table.len(), MsgType::ALL.len());
    for &(v, t, name) in table {
        assert_eq!(MsgType::try_from(v), Ok(t));
        assert_eq!(t.as_u32(), v);
        assert_eq!(u32::from(t), v);
        assert_eq!(t.name(), name);
    }
    assert_eq!(MsgType::DEBUG, MsgType::Control);
    assert_eq!(wire::XS_TYPE_COUNT, 23);
    assert_eq!(wire::XS_INVALID, 0xffff);
    assert_eq!(HEADER_LEN, 16);
    assert_eq!(XENSTORE_PAYLOAD_MAX, 4096);
    assert_eq!(path::XENSTORE_ABS_PATH_MAX, 3072);
    assert_eq!(path::XENSTORE_REL_PATH_MAX, 2048);
}

#[test]
fn unknown_types_are_errors() {
    for v in [
        20,
        23,
        wire::XS_TYPE_COUNT,
        100,
        wire::XS_INVALID,
        0x1_0000,
        u32::MAX,
    ] {
        assert_eq!(MsgType::try_from(v), Err(CodecError::UnknownType(v)), "{v}");
        assert_eq!(CodecError::UnknownType(v).xs_error(), XsError::Enosys);
    }
}

#[test]
fn ok_reply_types_and_request_types() {
    use MsgType::*;
    let ok = [
        Watch,
        Unwatch,
        TransactionEnd,
        Introduce,
        Release,
        Write,
        Mkdir,
        Rm,
        SetPerms,
        Resume,
        SetTarget,
        ResetWatches,
    ];
    for t in MsgType::ALL {
        assert_eq!(t.replies_ok(), ok.contains(&t), "{t:?}");
        assert_eq!(t.is_request(), !matches!(t, WatchEvent | Error), "{t:?}");
    }
}

#[test]
fn header_roundtrip_and_layout() {
    let h = Header {
        ty: 2,
        req_id: 0x0403_0201,
        tx_id: 0x0807_0605,
        len: 0x0c0b_0a09,
    };
    let b = h.encode();
    assert_eq!(
        b,
        [2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        "little-endian, field order type, req_id, tx_id, len"
    );
    assert_eq!(Header::decode(&b), Ok(h));
    assert_eq!(Header::from_array(&b), h);
    assert_eq!(
        Header::decode(&b[..15]),
        Err(CodecError::Truncated {
            needed: 16,
            have: 15
        })
    );
    assert_eq!(
        Header::decode(&[]),
        Err(CodecError::Truncated {
            needed: 16,
            have: 0
        })
    );
    assert_eq!(h.msg_type(), Ok(MsgType::Read));
    assert_eq!(
        h.check_len(),
        Err(CodecError::PayloadTooLarge { len: 0x0c0b_0a09 })
    );
    let ok = Header::new(MsgType::Write, 1, 2, 4096);
    assert_eq!(ok.check_len(), Ok(4096));
    let big = Header::new(MsgType::Write, 1, 2, 4097);
    assert_eq!(
        big.check_len().unwrap_err().xs_error(),
        XsError::E2big,
        "E2BIG semantics"
    );
}

#[test]
fn message_encode_decode() {
    let m = Message::new(MsgType::Read, 7, 3, b"/a\0".to_vec()).unwrap();
    let bytes = m.encode().unwrap();
    assert_eq!(bytes.len(), 16 + 3);
    assert_eq!(Message::decode(&bytes), Ok(m.clone()));
    // Length mismatch both ways.
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        Message::decode(&longer),
        Err(CodecError::LengthMismatch {
            header: 3,
            actual: 4
        })
    );
    assert_eq!(
        Message::decode(&bytes[..18]),
        Err(CodecError::LengthMismatch {
            header: 3,
            actual: 2
        })
    );
    // Header len disagreeing with payload on encode.
    let mut bad = m.clone();
    bad.header.len = 2;
    assert_eq!(
        bad.encode(),
        Err(CodecError::LengthMismatch {
            header: 2,
            actual: 3
        })
    );
    // Size limit.
    assert!(Message::new(MsgType::Write, 0, 0, vec![0; 4096]).is_ok());
    assert_eq!(
        Message::new(MsgType::Write, 0, 0, vec![0; 4097]),
        Err(CodecError::PayloadTooLarge { len: 4097 })
    );
    let mut huge = Header::new(MsgType::Write, 0, 0, 5000).encode().to_vec();
    huge.extend_from_slice(&[0; 5000]);
    assert_eq!(
        Message::decode(&huge),
        Err(CodecError::PayloadTooLarge { len: 5000 })
    );
}

// ---------------------------------------------------------------------------------------------
// Error table.

#[test]
fn every_xsd_error_string() {
    // xsd_errors[] of xs_wire.h, in order, with Linux errno numbers.
    let table: &[(&str, i32, XsError)] = &[
        ("EINVAL", 22, XsError::Einval),
        ("EACCES", 13, XsError::Eacces),
        ("EEXIST", 17, XsError::Eexist),
        ("EISDIR", 21, XsError::Eisdir),
        ("ENOENT", 2, XsError::Enoent),
        ("ENOMEM", 12, XsError::Enomem),
        ("ENOSPC", 28, XsError::Enospc),
        ("EIO", 5, XsError::Eio),
        ("ENOTEMPTY", 39, XsError::Enotempty),
        ("ENOSYS", 38, XsError::Enosys),
        ("EROFS", 30, XsError::Erofs),
        ("EBUSY", 16, XsError::Ebusy),
        ("EAGAIN", 11, XsError::Eagain),
        ("EISCONN", 106, XsError::Eisconn),
        ("E2BIG", 7, XsError::E2big),
        ("EPERM", 1, XsError::Eperm),
    ];
    assert_eq!(table.len(), XsError::ALL.len());
    for (i, &(name, errno, e)) in table.iter().enumerate() {
        assert_eq!(XsError::ALL[i], e, "table order");
        assert_eq!(e.as_str(), name);
        assert_eq!(e.to_string(), name);
        assert_eq!(name.parse::<XsError>(), Ok(e));
        assert_eq!(XsError::from_name(name), Some(e));
        assert_eq!(e.errno(), errno);
        assert_eq!(XsError::from_errno(errno), Some(e));
        // On the wire.
        let payload = format!("{name}\0").into_bytes();
        assert_eq!(
            Response::decode(MsgType::Error, &payload),
            Ok(Response::Error(e))
        );
        assert_eq!(Response::Error(e).encode_payload().unwrap(), payload);
    }
    for bad in ["", "einval", "EINVAL ", "ENOTSUP", "EWOULDBLOCK", "E"] {
        assert!(bad.parse::<XsError>().is_err(), "{bad:?}");
    }
    assert_eq!(XsError::from_errno(0), None);
    assert_eq!(XsError::from_errno(110), None);
}

#[test]
fn malformed_error_replies() {
    let cases: &[(&[u8], CodecError)] = &[
        (
            b"",
            CodecError::WrongArgCount {
                expected: 1,
                found: 0,
            },
        ),
        (b"EINVAL", CodecError::MissingNul),
        (
            b"EINVAL\0\0",
            CodecError::WrongArgCount {
                expected: 1,
                found: 2,
            },
        ),
        (b"EINVAL\0x", CodecError::TrailingData),
        (b"EFOO\0", CodecError::UnknownErrorName),
        (b"\xff\0", CodecError::NotUtf8),
    ];
    for (payload, want) in cases {
        assert_eq!(
            Response::decode(MsgType::Error, payload),
            Err(want.clone()),
            "{payload:?}"
        );
    }
}

#[test]
fn codec_error_maps_to_xs_error() {
    assert_eq!(
        CodecError::NotARequest(MsgType::Error).xs_error(),
        XsError::Enosys
    );
    assert_eq!(
        CodecError::PayloadTooLarge { len: 5000 }.xs_error(),
        XsError::E2big
    );
    for e in [
        CodecError::MissingNul,
        CodecError::TrailingData,
        CodecError::NotUtf8,
        CodecError::BadNumber,
        CodecError::Path(PathError::DoubleSlash),
        CodecError::Perm(PermError::BadDomid),
    ] {
        assert_eq!(e.xs_error(), XsError::Einval, "{e:?}");
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Paths.

#[test]
fn path_validity_table() {
    let long_abs = format!("/{}", "a".repeat(3071)); // 3072 bytes
    let too_long_abs = format!("/{}", "a".repeat(3072)); // 3073
    let long_rel = "a".repeat(2048);
    let too_long_rel = "a".repeat(2049);
    let long_special = format!("@{}", "a".repeat(3071));
    let cases: Vec<(&str, Result<PathKind, PathError>)> = vec![
        ("/", Ok(PathKind::Absolute)),
        ("/local/domain/0/name", Ok(PathKind::Absolute)),
        ("/A-Z_a-z0-9@x", Ok(PathKind::Absolute)),
        ("device/vbd/51712/state", Ok(PathKind::Relative)),
        ("name", Ok(PathKind::Relative)),
        ("@introduceDomain", Ok(PathKind::Special)),
        ("@releaseDomain", Ok(PathKind::Special)),
        ("@", Ok(PathKind::Special)),
        ("@foo/bar", Ok(PathKind::Special)),
        (long_abs.as_str(), Ok(PathKind::Absolute)),
        (long_rel.as_str(), Ok(PathKind::Relative)),
        (long_special.as_str(), Ok(PathKind::Special)),
        ("", Err(PathError::Empty)),
        ("//", Err(PathError::DoubleSlash)),
        ("/a//b", Err(PathError::DoubleSlash)),
        ("a//b", Err(PathError::DoubleSlash)),
        ("/a/", Err(PathError::TrailingSlash)),
        ("a/", Err(PathError::TrailingSlash)),
        ("@x/", Err(PathError::TrailingSlash)),
        ("/a/..", Err(PathError::InvalidChar { byte: b'.', pos: 3 })),
        ("..", Err(PathError::InvalidChar { byte: b'.', pos: 0 })),
        ("/a/./b", Err(PathError::InvalidChar { byte: b'.', pos: 3 })),
        ("/a b", Err(PathError::InvalidChar { byte: b' ', pos: 2 })),
        (
            "/a\tb",
            Err(PathError::InvalidChar {
                byte: b'\t',
                pos: 2,
            }),
        ),
        (
            "/a\\b",
            Err(PathError::InvalidChar {
                byte: b'\\',
                pos: 2,
            }),
        ),
        ("/a:b", Err(PathError::InvalidChar { byte: b':', pos: 2 })),
        ("/a+b", Err(PathError::InvalidChar { byte: b'+', pos: 2 })),
        ("/é", Err(PathError::InvalidChar { byte: 0xc3, pos: 1 })),
        ("/a\u{0}b", Err(PathError::InvalidChar { byte: 0, pos: 2 })),
        (
            too_long_abs.as_str(),
            Err(PathError::TooLong {
                len: 3073,
                max: 3072,
            }),
        ),
        (
            too_long_rel.as_str(),
            Err(PathError::TooLong {
                len: 2049,
                max: 2048,
            }),
        ),
    ];
    for (s, want) in cases {
        let short: String = s.chars().take(40).collect();
        assert_eq!(path::validate(s), want, "{short:?}");
        assert_eq!(Path::new(s).map(|p| p.kind()), want, "{short:?}");
        if let Ok(k) = want {
            let pth = p(s);
            assert_eq!(pth.as_str(), s);
            assert_eq!(pth.to_string(), s);
            assert_eq!(pth.is_absolute(), k == PathKind::Absolute);
            assert_eq!(pth.is_relative(), k == PathKind::Relative);
            assert_eq!(pth.is_special(), k == PathKind::Special);
            assert_eq!(s.parse::<Path>(), Ok(pth));
        }
    }
    assert_eq!(Path::from_bytes(b"/a\xff"), Err(PathError::NotUtf8));
    assert_eq!(
        Path::node("@releaseDomain"),
        Err(PathError::SpecialNotAllowed)
    );
    assert!(Path::node("/a").is_ok() && Path::node("a").is_ok());
    for b in 0u8..=255 {
        let ok = b.is_ascii_alphanumeric() || b"-/_@".contains(&b);
        assert_eq!(path::is_valid_char(b), ok, "{b}");
    }
}

#[test]
fn resolve_relative_paths() {
    let cases: &[(u16, &str, Result<&str, PathError>)] = &[
        (3, "x/y", Ok("/local/domain/3/x/y")),
        (0, "name", Ok("/local/domain/0/name")),
        (65535, "a", Ok("/local/domain/65535/a")),
        (3, "/abs/path", Ok("/abs/path")),
        (3, "/", Ok("/")),
        (3, "@releaseDomain", Ok("@releaseDomain")),
        (3, "", Err(PathError::Empty)),
        (3, "x/", Err(PathError::TrailingSlash)),
        (
            3,
            "../x",
            Err(PathError::InvalidChar { byte: b'.', pos: 0 }),
        ),
    ];
    for &(d, s, ref want) in cases {
        let got = path::resolve(d, s).map(|p| p.as_str().to_string());
        assert_eq!(got, want.map(str::to_string), "{d} {s:?}");
    }
    // The longest relative path still resolves within XENSTORE_ABS_PATH_MAX.
    let r = path::resolve(65535, &"a".repeat(2048)).unwrap();
    assert!(r.as_str().len() <= path::XENSTORE_ABS_PATH_MAX);
    assert_eq!(path::domain_path(7), "/local/domain/7");
    assert_eq!(
        p("/local/domain/3/x/y").relative_to_domain(3),
        Some(p("x/y"))
    );
    assert_eq!(p("/local/domain/3").relative_to_domain(3), None);
    assert_eq!(p("/local/domain/33/x").relative_to_domain(3), None);
}

#[test]
fn path_quota_len_and_children() {
    assert_eq!(p("/local/domain/12/abc").quota_len(), 3);
    assert_eq!(p("/local/domain/12").quota_len(), 16);
    assert_eq!(p("/local/domain/123456/a").quota_len(), 22);
    assert_eq!(p("/vm/x").quota_len(), 5);

    let child = [
        ("/a/b", "/a", true),
        ("/a", "/a", true),
        ("/a", "/", true),
        ("/", "/", true),
        ("/ab", "/a", false),
        ("/a", "/a/b", false),
        ("@releaseDomain", "@releaseDomain", true),
        ("@releaseDomain", "/", false),
        ("/x", "@releaseDomain", false),
    ];
    for (c, par, want) in child {
        assert_eq!(p(c).is_child_of(&p(par)), want, "{c} under {par}");
    }
    assert_eq!(path::INTRODUCE_DOMAIN, "@introduceDomain");
    assert_eq!(path::RELEASE_DOMAIN, "@releaseDomain");
    assert_eq!(Path::root().as_str(), "/");
}

// ---------------------------------------------------------------------------------------------
// Permissions.

#[test]
fn perm_string_table() {
    let cases: &[(&str, Result<Perm, PermError>)] = &[
        ("n0", Ok(Perm::new(Access::None, 0))),
        ("r5", Ok(Perm::new(Access::Read, 5))),
        ("w12", Ok(Perm::new(Access::Write, 12))),
        ("b65535", Ok(Perm::new(Access::Both, 65535))),
        ("", Err(PermError::Empty)),
        ("r", Err(PermError::BadDomid)),
        ("b65536", Err(PermError::BadDomid)),
        ("r4294967296", Err(PermError::BadDomid)),
        ("r-1", Err(PermError::BadDomid)),
        ("r+1", Err(PermError::BadDomid)),
        ("r 1", Err(PermError::BadDomid)),
        ("r1 ", Err(PermError::BadDomid)),
        ("r0x10", Err(PermError::BadDomid)),
        ("r010", Err(PermError::BadDomid)),
        ("r1a", Err(PermError::BadDomid)),
        ("x1", Err(PermError::BadAccess(b'x'))),
        ("R1", Err(PermError::BadAccess(b'R'))),
        ("1", Err(PermError::BadAccess(b'1'))),
        ("rw1", Err(PermError::BadDomid)),
    ];
    for (s, want) in cases {
        assert_eq!(s.parse::<Perm>(), *want, "{s:?}");
        if let Ok(perm) = want {
            assert_eq!(perm.to_string(), *s);
        }
    }
    for a in Access::ALL {
        assert_eq!(Access::from_byte(a.as_char() as u8), Some(a));
    }
    assert!(Access::Both.can_read() && Access::Both.can_write());
    assert!(Access::Read.can_read() && !Access::Read.can_write());
    assert!(!Access::Write.can_read() && Access::Write.can_write());
    assert!(!Access::None.can_read() && !Access::None.can_write());
}

#[test]
fn perm_list_semantics() {
    // Owner 3, others read, dom 5 may write, dom 7 nothing.
    let perms = Perms::new(3, Access::Read)
        .with(Access::Write, 5)
        .with(Access::None, 7);
    assert_eq!(perms.owner(), 3);
    assert_eq!(perms.default_access(), Access::Read);
    assert_eq!(perms.acl().len(), 2);
    assert_eq!(perms.entries().len(), 3);
    assert_eq!(perms.access_for(3), Access::Both);
    assert_eq!(perms.access_for(5), Access::Write);
    assert_eq!(perms.access_for(7), Access::None);
    assert_eq!(perms.access_for(9), Access::Read);
    assert_eq!(Perms::from_vec(vec![]), Err(PermError::NoEntries));
    assert!(Perms::new(0, Access::None).acl().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Requests: every type, roundtrip against exact bytes.

fn request_table() -> Vec<(Request, &'static [u8])> {
    vec![
        (
            Request::Control {
                command: "log".into(),
                params: b"on\0".to_vec(),
            },
            b"log\0on\0",
        ),
        (
            Request::Control {
                command: "check".into(),
                params: vec![],
            },
            b"check\0",
        ),
        (
            Request::Control {
                command: "live-update".into(),
                params: b"-b\0\x01\x00\x02".to_vec(),
            },
            b"live-update\0-b\0\x01\x00\x02",
        ),
        (Request::Directory(p("/local/domain")), b"/local/domain\0"),
        (
            Request::Read(p("device/vbd/51712/state")),
            b"device/vbd/51712/state\0",
        ),
        (Request::Read(p("/")), b"/\0"),
        (Request::GetPerms(p("/a")), b"/a\0"),
        (Request::GetPerms(p("@releaseDomain")), b"@releaseDomain\0"),
        (
            Request::Watch {
                path: p("/local/domain/1/device"),
                token: "tok-1".into(),
            },
            b"/local/domain/1/device\0tok-1\0",
        ),
        (
            Request::Watch {
                path: p("@introduceDomain"),
                token: "".into(),
            },
            b"@introduceDomain\0\0",
        ),
        (
            Request::Unwatch {
                path: p("backend"),
                token: "FFFF8880".into(),
            },
            b"backend\0FFFF8880\0",
        ),
        (Request::TransactionStart, b"\0"),
        (Request::TransactionEnd { commit: true }, b"T\0"),
        (Request::TransactionEnd { commit: false }, b"F\0"),
        (
            Request::Introduce {
                domid: 5,
                mfn: 123456789,
                port: 7,
            },
            b"5\0123456789\07\0",
        ),
        (Request::Release(5), b"5\0"),
        (Request::GetDomainPath(65535), b"65535\0"),
        (
            Request::Write {
                path: p("/a/b"),
                value: b"hello".to_vec(),
            },
            b"/a/b\0hello",
        ),
        (
            Request::Write {
                path: p("/a/b"),
                value: vec![],
            },
            b"/a/b\0",
        ),
        (
            Request::Write {
                path: p("x"),
                value: b"\0bin\0ary\0".to_vec(),
            },
            b"x\0\0bin\0ary\0",
        ),
        (Request::Mkdir(p("/a/b/c")), b"/a/b/c\0"),
        (Request::Rm(p("/a")), b"/a\0"),
        (
            Request::SetPerms {
                path: p("/local/domain/3/device"),
                perms: Perms::new(3, Access::None).with(Access::Read, 0),
            },
            b"/local/domain/3/device\0n3\0r0\0",
        ),
        (
            Request::SetPerms {
                path: p("@releaseDomain"),
                perms: Perms::new(0, Access::Both),
            },
            b"@releaseDomain\0b0\0",
        ),
        (Request::IsDomainIntroduced(1), b"1\0"),
        (Request::Resume(0), b"0\0"),
        (
            Request::SetTarget {
                domid: 2,
                target: 3,
            },
            b"2\03\0",
        ),
        (Request::ResetWatches, b"\0"),
        (
            Request::DirectoryPart {
                path: p("/local/domain"),
                offset: 0,
            },
            b"/local/domain\00\0",
        ),
        (
            Request::DirectoryPart {
                path: p("/a"),
                offset: 4000,
            },
            b"/a\04000\0",
        ),
    ]
}

#[test]
fn every_request_type_roundtrips() {
    let mut seen = std::collections::HashSet::new();
    for (req, bytes) in request_table() {
        let t = req.msg_type();
        seen.insert(t);
        assert_eq!(req.encode_payload().as_deref(), Ok(bytes), "{req:?}");
        assert_eq!(Request::decode(t, bytes), Ok(req.clone()), "{req:?}");
        let msg = req.to_message(42, 9).unwrap();
        assert_eq!(msg.header.ty, t.as_u32());
        assert_eq!(msg.header.req_id, 42);
        assert_eq!(msg.header.tx_id, 9);
        assert_eq!(msg.header.len as usize, bytes.len());
        let wire = msg.encode().unwrap();
        let back = Message::decode(&wire).unwrap();
        assert_eq!(Request::from_message(&back), Ok(req));
    }
    let requests: Vec<_> = MsgType::ALL
        .into_iter()
        .filter(|t| t.is_request())
        .collect();
    assert_eq!(seen.len(), requests.len(), "every request type covered");
}

#[test]
fn non_request_types_are_rejected() {
    for t in [MsgType::WatchEvent, MsgType::Error] {
        assert_eq!(
            Request::decode(t, b"/a\0tok\0"),
            Err(CodecError::NotARequest(t))
        );
    }
    let unknown = Message {
        header: Header {
            ty: 20,
            req_id: 1,
            tx_id: 0,
            len: 0,
        },
        payload: vec![],
    };
    assert_eq!(
        Request::from_message(&unknown),
        Err(CodecError::UnknownType(20))
    );
}

#[test]
fn malformed_requests() {
    use CodecError::*;
    use MsgType as T;
    let wac = |expected, found| WrongArgCount { expected, found };
    let cases: Vec<(MsgType, &[u8], CodecError)> = vec![
        // Missing NUL / extra data / wrong counts.
        (T::Read, b"/a", MissingNul),
        (T::Read, b"", wac(1, 0)),
        (T::Read, b"/a\0b", TrailingData),
        (T::Read, b"/a\0b\0", wac(1, 2)),
        (T::Read, b"/a\0\0", wac(1, 2)),
        (T::Directory, b"/a", MissingNul),
        (T::Mkdir, b"/a\0/b\0", wac(1, 2)),
        (T::Rm, b"\0", Path(PathError::Empty)),
        (T::GetPerms, b"/a", MissingNul),
        (T::Write, b"/a", MissingNul),
        (T::Write, b"", MissingNul),
        (T::Watch, b"/a\0", wac(2, 1)),
        (T::Watch, b"/a\0tok", TrailingData),
        (T::Watch, b"/a\0tok\0\0", wac(2, 3)),
        (T::Unwatch, b"/a", MissingNul),
        (T::TransactionStart, b"", wac(1, 0)),
        (T::TransactionStart, b"x\0", TrailingData),
        (T::TransactionStart, b"\0\0", wac(1, 2)),
        (T::ResetWatches, b"", wac(1, 0)),
        (T::TransactionEnd, b"T", MissingNul),
        (T::TransactionEnd, b"t\0", BadBool),
        (T::TransactionEnd, b"TRUE\0", BadBool),
        (T::TransactionEnd, b"\0", BadBool),
        (T::Introduce, b"1\02\0", wac(3, 2)),
        (T::Introduce, b"1\02\03\04\0", wac(3, 4)),
        (T::Introduce, b"1\0-2\03\0", BadNumber),
        (T::Introduce, b"1\02\04294967296\0", BadNumber),
        (T::Introduce, b"65536\02\03\0", BadNumber),
        (T::Release, b"x\0", BadNumber),
        (T::Release, b"\0", BadNumber),
        (T::Release, b"01\0", BadNumber),
        (T::GetDomainPath, b"70000\0", BadNumber),
        (T::IsDomainIntroduced, b" 1\0", BadNumber),
        (T::Resume, b"1", MissingNul),
        (T::SetTarget, b"1\0", wac(2, 1)),
        (T::SetTarget, b"1\0x\0", BadNumber),
        (T::DirectoryPart, b"/a\0", wac(2, 1)),
        (T::DirectoryPart, b"/a\0-1\0", BadNumber),
        (T::DirectoryPart, b"/a\00x10\0", BadNumber),
        (T::SetPerms, b"", wac(2, 0)),
        (T::SetPerms, b"/a\0", wac(2, 1)),
        (T::SetPerms, b"/a\0r1", TrailingData),
        (T::SetPerms, b"/a\0x1\0", Perm(PermError::BadAccess(b'x'))),
        (T::SetPerms, b"/a\0r70000\0", Perm(PermError::BadDomid)),
        (T::SetPerms, b"/a\0\0", Perm(PermError::Empty)),
        (T::SetPerms, b"/a\0r1\0r\0", Perm(PermError::BadDomid)),
        (T::Control, b"", MissingNul),
        (T::Control, b"check", MissingNul),
        // Path rules.
        (
            T::Read,
            b"/a/..\0",
            Path(PathError::InvalidChar { byte: b'.', pos: 3 }),
        ),
        (T::Read, b"/a//b\0", Path(PathError::DoubleSlash)),
        (T::Read, b"/a/\0", Path(PathError::TrailingSlash)),
        (
            T::Read,
            b"/a b\0",
            Path(PathError::InvalidChar { byte: b' ', pos: 2 }),
        ),
        (
            T::Read,
            b"@releaseDomain\0",
            Path(PathError::SpecialNotAllowed),
        ),
        (T::Write, b"@x\0v", Path(PathError::SpecialNotAllowed)),
        (
            T::DirectoryPart,
            b"@x\00\0",
            Path(PathError::SpecialNotAllowed),
        ),
        (T::Watch, b"/a/\0t\0", Path(PathError::TrailingSlash)),
        // Non-UTF-8.
        (T::Read, b"/\xff\0", Path(PathError::NotUtf8)),
        (T::Watch, b"/a\0\xfe\0", NotUtf8),
        (T::Control, b"\xff\0", NotUtf8),
    ];
    for (t, payload, want) in cases {
        assert_eq!(
            Request::decode(t, payload),
            Err(want.clone()),
            "{t:?} {payload:?}"
        );
        assert_eq!(want.xs_error(), XsError::Einval);
    }
}

#[test]
fn overlong_requests() {
    let abs = format!("/{}\0", "a".repeat(3072));
    assert_eq!(
        Request::decode(MsgType::Read, abs.as_bytes()),
        Err(CodecError::Path(PathError::TooLong {
            len: 3073,
            max: 3072
        }))
    );
    let rel = format!("{}\0", "a".repeat(2049));
    assert_eq!(
        Request::decode(MsgType::Read, rel.as_bytes()),
        Err(CodecError::Path(PathError::TooLong {
            len: 2049,
            max: 2048
        }))
    );
    // Payload limit: decode and encode.
    let mut big = b"/a\0".to_vec();
    big.resize(4097, b'x');
    assert_eq!(
        Request::decode(MsgType::Write, &big),
        Err(CodecError::PayloadTooLarge { len: 4097 })
    );
    let w = Request::Write {
        path: p("/a"),
        value: vec![b'x'; 4094],
    };
    assert_eq!(
        w.encode_payload(),
        Err(CodecError::PayloadTooLarge { len: 4097 })
    );
    let w = Request::Write {
        path: p("/a"),
        value: vec![b'x'; 4093],
    };
    assert_eq!(w.to_message(1, 0).unwrap().header.len, 4096);
}

#[test]
fn request_encode_rejects_bad_values() {
    let cases = [
        (
            Request::Watch {
                path: p("/a"),
                token: "a\0b".into(),
            },
            CodecError::EmbeddedNul,
        ),
        (
            Request::Control {
                command: "x\0".into(),
                params: vec![],
            },
            CodecError::EmbeddedNul,
        ),
        (
            Request::Read(p("@releaseDomain")),
            CodecError::Path(PathError::SpecialNotAllowed),
        ),
        (
            Request::Write {
                path: p("@x"),
                value: vec![],
            },
            CodecError::Path(PathError::SpecialNotAllowed),
        ),
    ];
    for (req, want) in cases {
        assert_eq!(req.encode_payload(), Err(want.clone()), "{req:?}");
        assert_eq!(req.to_message(0, 0), Err(want));
    }
}

// ---------------------------------------------------------------------------------------------
// Replies.

fn response_table() -> Vec<(Response, &'static [u8])> {
    let mut v: Vec<(Response, &'static [u8])> = MsgType::ALL
        .into_iter()
        .filter(|t| t.replies_ok())
        .map(|t| (Response::Ok(t), &b"OK\0"[..]))
        .collect();
    v.extend([
        (Response::Error(XsError::Eagain), &b"EAGAIN\0"[..]),
        (
            Response::Control(b"Supported commands:\0".to_vec()),
            b"Supported commands:\0",
        ),
        (Response::Control(vec![]), b""),
        (
            Response::Directory(vec!["0".into(), "5".into(), "backend".into()]),
            b"0\05\0backend\0",
        ),
        (Response::Directory(vec![]), b""),
        (Response::Read(b"4".to_vec()), b"4"),
        (Response::Read(vec![]), b""),
        (Response::Read(b"a\0b\0".to_vec()), b"a\0b\0"),
        (
            Response::GetPerms(Perms::new(0, Access::None).with(Access::Read, 3)),
            b"n0\0r3\0",
        ),
        (Response::TransactionStart(0), b"0\0"),
        (Response::TransactionStart(u32::MAX), b"4294967295\0"),
        (
            Response::GetDomainPath(p("/local/domain/3")),
            b"/local/domain/3\0",
        ),
        (Response::IsDomainIntroduced(true), b"T\0"),
        (Response::IsDomainIntroduced(false), b"F\0"),
        (
            Response::DirectoryPart {
                generation: 17,
                children: vec!["a".into(), "b".into()],
                complete: true,
            },
            b"17\0a\0b\0\0",
        ),
        (
            Response::DirectoryPart {
                generation: 17,
                children: vec!["a".into(), "b".into()],
                complete: false,
            },
            b"17\0a\0b\0",
        ),
        (
            Response::DirectoryPart {
                generation: 9,
                children: vec![],
                complete: true,
            },
            b"9\0\0",
        ),
        (
            Response::DirectoryPart {
                generation: u64::MAX,
                children: vec![],
                complete: false,
            },
            b"18446744073709551615\0",
        ),
        (
            Response::WatchEvent {
                path: p("/local/domain/1/device/vbd"),
                token: "t".into(),
            },
            b"/local/domain/1/device/vbd\0t\0",
        ),
        (
            Response::WatchEvent {
                path: p("device/vbd"),
                token: "".into(),
            },
            b"device/vbd\0\0",
        ),
        (
            Response::WatchEvent {
                path: p("@releaseDomain"),
                token: "r".into(),
            },
            b"@releaseDomain\0r\0",
        ),
    ]);
    v
}

#[test]
fn every_response_type_roundtrips() {
    let mut seen = std::collections::HashSet::new();
    for (rsp, bytes) in response_table() {
        let t = rsp.msg_type();
        seen.insert(t);
        assert_eq!(rsp.encode_payload().as_deref(), Ok(bytes), "{rsp:?}");
        assert_eq!(Response::decode(t, bytes), Ok(rsp.clone()), "{rsp:?}");
        let wire = rsp.to_message(3, 4).unwrap().encode().unwrap();
        assert_eq!(
            Response::from_message(&Message::decode(&wire).unwrap()),
            Ok(rsp)
        );
    }
    assert_eq!(
        seen.len(),
        MsgType::ALL.len(),
        "every type has a reply form"
    );
}

#[test]
fn malformed_responses() {
    use CodecError::*;
    use MsgType as T;
    let wac = |expected, found| WrongArgCount { expected, found };
    let cases: Vec<(MsgType, &[u8], CodecError)> = vec![
        (T::Write, b"OK", ExpectedOk),
        (T::Write, b"ok\0", ExpectedOk),
        (T::Write, b"OK\0\0", ExpectedOk),
        (T::Write, b"", ExpectedOk),
        (T::Directory, b"a\0b", TrailingData),
        (T::Directory, b"a", MissingNul),
        (T::Directory, b"a\0\0", BadChildName),
        (T::Directory, b"a/b\0", BadChildName),
        (T::Directory, b"a.b\0", BadChildName),
        (T::GetPerms, b"", Perm(PermError::NoEntries)),
        (T::GetPerms, b"r1", MissingNul),
        (T::GetPerms, b"q1\0", Perm(PermError::BadAccess(b'q'))),
        (T::TransactionStart, b"1", MissingNul),
        (T::TransactionStart, b"-1\0", BadNumber),
        (T::TransactionStart, b"4294967296\0", BadNumber),
        (T::TransactionStart, b"1\02\0", wac(1, 2)),
        (
            T::GetDomainPath,
            b"/local/domain/1/\0",
            Path(PathError::TrailingSlash),
        ),
        (T::IsDomainIntroduced, b"Y\0", BadBool),
        (T::DirectoryPart, b"", wac(1, 0)),
        (T::DirectoryPart, b"x\0\0", BadNumber),
        (T::DirectoryPart, b"1\0a\0\0\0", BadChildName),
        (T::DirectoryPart, b"1\0\0a\0", BadChildName),
        (T::DirectoryPart, b"1\0a", TrailingData),
        (T::WatchEvent, b"/a\0", wac(2, 1)),
        (T::WatchEvent, b"/a\0t", TrailingData),
        (T::WatchEvent, b"/a/\0t\0", Path(PathError::TrailingSlash)),
        (T::WatchEvent, b"/a\0\xff\0", NotUtf8),
    ];
    for (t, payload, want) in cases {
        assert_eq!(Response::decode(t, payload), Err(want), "{t:?} {payload:?}");
    }
    assert_eq!(
        Response::Ok(MsgType::Read).encode_payload(),
        Err(CodecError::NotAnAckType(MsgType::Read))
    );
    assert_eq!(
        Response::Directory(vec!["a/b".into()]).encode_payload(),
        Err(CodecError::BadChildName)
    );
    assert_eq!(
        Response::Read(vec![0; 4097]).encode_payload(),
        Err(CodecError::PayloadTooLarge { len: 4097 })
    );
}

// ---------------------------------------------------------------------------------------------
// Framer.

fn wire_of(req: &Request, id: u32) -> Vec<u8> {
    req.to_message(id, 0).unwrap().encode().unwrap()
}

#[test]
fn framer_splits_a_stream_at_every_boundary() {
    let reqs: Vec<Request> = request_table().into_iter().map(|(r, _)| r).collect();
    let mut stream = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        stream.extend(wire_of(r, i as u32));
    }
    // Whole stream at once.
    let mut f = Framer::new();
    let got: Vec<_> = f.feed(&stream).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), reqs.len());
    for (i, (m, r)) in got.iter().zip(&reqs).enumerate() {
        assert_eq!(m.header.req_id, i as u32);
        assert_eq!(&Request::from_message(m).unwrap(), r);
    }
    assert!(f.is_idle());
    // Every chunk size, including one byte at a time.
    for chunk in [1, 2, 3, 7, 15, 16, 17, 64, 1000] {
        let mut f = Framer::new();
        let mut got = Vec::new();
        for c in stream.chunks(chunk) {
            for m in f.feed(c) {
                got.push(m.unwrap());
            }
        }
        assert_eq!(got.len(), reqs.len(), "chunk {chunk}");
        assert!(f.is_idle());
    }
}

#[test]
fn framer_push_reports_consumption() {
    let a = wire_of(&Request::Read(p("/a")), 1);
    let b = wire_of(&Request::TransactionStart, 2);
    let mut both = a.clone();
    both.extend(&b);
    let mut f = Framer::new();
    let (n, m) = f.push(&both).unwrap();
    assert_eq!(n, a.len());
    assert_eq!(m.unwrap().header.req_id, 1);
    let (n2, m2) = f.push(&both[n..]).unwrap();
    assert_eq!(n2, b.len());
    assert_eq!(m2.unwrap().header.req_id, 2);
    // Partial header, then partial body.
    let mut f = Framer::new();
    assert_eq!(f.push(&a[..10]).unwrap(), (10, None));
    assert!(!f.is_idle());
    assert_eq!(f.push(&a[10..17]).unwrap(), (7, None));
    let (n, m) = f.push(&a[17..]).unwrap();
    assert_eq!(n, a.len() - 17);
    assert!(m.is_some());
    assert_eq!(f.push(&[]).unwrap(), (0, None));
}

#[test]
fn framer_zero_length_and_unknown_types() {
    let mut s = Header {
        ty: 20,
        req_id: 5,
        tx_id: 0,
        len: 0,
    }
    .encode()
    .to_vec();
    s.extend(Header::new(MsgType::Read, 6, 0, 0).encode());
    let mut f = Framer::new();
    let got: Vec<_> = f.feed(&s).map(Result::unwrap).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].msg_type(), Err(CodecError::UnknownType(20)));
    assert_eq!(got[0].header.req_id, 5, "still answerable with ENOSYS");
    assert_eq!(
        Request::from_message(&got[1]),
        Err(CodecError::WrongArgCount {
            expected: 1,
            found: 0
        })
    );
}

#[test]
fn framer_rejects_oversized_header_without_allocating() {
    for len in [4097u32, 65536, u32::MAX] {
        let mut f = Framer::new();
        let mut s = wire_of(&Request::Read(p("/ok")), 1);
        s.extend(Header::new(MsgType::Write, 2, 0, len).encode());
        s.extend(wire_of(&Request::Read(p("/after")), 3));
        let out: Vec<_> = f.feed(&s).collect();
        assert_eq!(out.len(), 2, "len {len}");
        assert!(out[0].is_ok());
        let err = out[1].clone().unwrap_err();
        assert_eq!(err, CodecError::PayloadTooLarge { len: len as usize });
        assert_eq!(err.xs_error(), XsError::E2big);
        // Poisoned: nothing more comes out until reset.
        assert_eq!(f.error(), Some(&err));
        assert!(!f.is_idle());
        assert_eq!(f.push(b"anything"), Err(err.clone()));
        assert_eq!(f.feed(&s).next(), Some(Err(err)));
        f.reset();
        assert!(f.is_idle());
        assert!(f.feed(&s).next().unwrap().is_ok());
    }
    // Exactly 4096 is fine.
    let mut f = Framer::new();
    let mut s = Header::new(MsgType::Write, 2, 0, 4096).encode().to_vec();
    s.extend([0u8; 4096]);
    let m = f.feed(&s).next().unwrap().unwrap();
    assert_eq!(m.payload.len(), 4096);
}
