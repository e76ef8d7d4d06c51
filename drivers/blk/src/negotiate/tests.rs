//! Unit tests of `negotiate` (in their own file; they use its private items).

use super::*;
use alloc::collections::BTreeMap;
use alloc::vec;

/// A XenStore directory as a map; `get` as the glue hands it over.
fn dir(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn getter(
    d: &BTreeMap<String, Vec<u8>>,
) -> impl FnMut(&str) -> Result<Option<Vec<u8>>, DriverError> + '_ {
    move |k| Ok(d.get(k).cloned())
}

/// What Linux blkback 6.x wrote in the lab (docs/XENSTORE-LAYOUT.md), probe + connect.
fn linux_blkback() -> BTreeMap<String, Vec<u8>> {
    dir(&[
        ("feature-max-indirect-segments", "256"),
        ("multi-queue-max-queues", "2"),
        ("max-ring-page-order", "4"),
        ("feature-flush-cache", "1"),
        ("discard-granularity", "4096"),
        ("discard-alignment", "0"),
        ("discard-secure", "0"),
        ("feature-discard", "1"),
        ("feature-barrier", "1"),
        ("feature-persistent", "1"),
        ("sectors", "32768"),
        ("info", "0"),
        ("sector-size", "512"),
        ("physical-sector-size", "512"),
    ])
}

const NEW_FRONT: FrontLimits = FrontLimits {
    max_ring_page_order: 4,
    max_indirect_segments: 256,
    max_requests: 1024,
    persistent: true,
    max_queues: 4,
};
const OLD_FRONT: FrontLimits = FrontLimits {
    max_ring_page_order: 0,
    max_indirect_segments: 0,
    max_requests: 32,
    persistent: false,
    max_queues: 1,
};

fn front(backend: &BTreeMap<String, Vec<u8>>, limits: FrontLimits) -> FrontConfig {
    let order = front_ring_order(
        BackendOffer::read_ring_order(getter(backend)).unwrap(),
        &limits,
    );
    negotiate_front(
        &BackendOffer::read(getter(backend)).unwrap(),
        order,
        &limits,
    )
}

/// `feature-persistent`: used only when both ends write 1 (blkif.h: "the backend driver
/// should only map grants persistently if the frontend supports it").
#[test]
fn persistent_grants_need_both_ends() {
    // Linux blkback writes feature-persistent=1 (XENSTORE-LAYOUT.md).
    assert!(front(&linux_blkback(), NEW_FRONT).persistent);
    assert!(!front(&linux_blkback(), OLD_FRONT).persistent);
    let mut no_key = linux_blkback();
    no_key.remove("feature-persistent");
    assert!(!front(&no_key, NEW_FRONT).persistent);
    // Our backend publishes the key with the other features, 0 or 1.
    let mut o = offer(0, 0);
    let published = |o: &BackendOffer| {
        o.connect_keys()
            .into_iter()
            .find(|(k, _)| *k == "feature-persistent")
            .map(|(_, v)| v)
    };
    assert_eq!(published(&o).as_deref(), Some("0"));
    o.persistent = true;
    assert_eq!(published(&o).as_deref(), Some("1"));
    // Back side: Linux blkfront writes feature-persistent=1; an old one writes nothing.
    let fe = |extra: &[(&str, &str)]| {
        let mut keys = vec![("ring-ref", "8"), ("event-channel", "4")];
        keys.extend_from_slice(extra);
        negotiate_back(getter(&dir(&keys)), &o).unwrap()
    };
    assert!(fe(&[("feature-persistent", "1")]).persistent(&o));
    assert!(!fe(&[]).persistent(&o));
    assert!(!fe(&[("feature-persistent", "0")]).persistent(&o));
    let not_offered = offer(0, 0);
    assert!(!fe(&[("feature-persistent", "1")]).persistent(&not_offered));
}

#[test]
fn linux_blkback_vector_new_front() {
    let c = front(&linux_blkback(), NEW_FRONT);
    assert_eq!(c.ring_page_order, 4);
    assert_eq!(c.ring_pages(), 16);
    assert_eq!(c.max_requests, blkif_ring_size(16)); // 512
    assert_eq!(c.max_segments, 256);
    assert!(c.indirect);
    assert_eq!(c.max_request_bytes(), 1 << 20);
    assert_eq!(c.flush, FlushMode::FlushCache);
    assert_eq!(
        c.discard,
        Some(DiscardParams {
            granularity: 4096,
            alignment: 0,
            secure: false
        })
    );
    assert_eq!(
        (c.sectors, c.sector_size, c.physical_sector_size),
        (32768, 512, 512)
    );
    assert!(!c.readonly);
}

/// Table: backend keys × front limits → (order, requests, segments, indirect, flush, discard).
#[test]
fn negotiation_table() {
    type Row = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        FrontLimits,
        (u32, u32, u32, bool, FlushMode, bool),
    );
    let disk = [("sectors", "2048")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = disk.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let rows: Vec<Row> = vec![
        (
            "new front, old back (no keys): original protocol",
            with(&[]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::None, false),
        ),
        (
            "old front, new back",
            linux_blkback()
                .iter()
                .map(|(k, v)| (leak(k), leak_v(v)))
                .collect(),
            OLD_FRONT,
            (0, 32, 11, false, FlushMode::FlushCache, true),
        ),
        (
            "front limits the ring order",
            with(&[("max-ring-page-order", "4")]),
            FrontLimits {
                max_ring_page_order: 2,
                ..NEW_FRONT
            },
            (2, 128, 11, false, FlushMode::None, false),
        ),
        (
            "back limits the ring order",
            with(&[("max-ring-page-order", "1")]),
            NEW_FRONT,
            (1, 64, 11, false, FlushMode::None, false),
        ),
        (
            "order above ours is clamped",
            with(&[("max-ring-page-order", "9")]),
            FrontLimits {
                max_ring_page_order: 9,
                ..NEW_FRONT
            },
            (4, 512, 11, false, FlushMode::None, false),
        ),
        (
            "legacy max-ring-pages",
            with(&[("max-ring-pages", "8")]),
            NEW_FRONT,
            (3, 256, 11, false, FlushMode::None, false),
        ),
        (
            "legacy max-ring-pages not a power of two rounds down",
            with(&[("max-ring-pages", "6")]),
            NEW_FRONT,
            (2, 128, 11, false, FlushMode::None, false),
        ),
        (
            "order key wins over legacy pages",
            with(&[("max-ring-page-order", "1"), ("max-ring-pages", "16")]),
            NEW_FRONT,
            (1, 64, 11, false, FlushMode::None, false),
        ),
        (
            "indirect: lesser of both",
            with(&[("feature-max-indirect-segments", "64")]),
            NEW_FRONT,
            (0, 32, 64, true, FlushMode::None, false),
        ),
        (
            "indirect: front smaller",
            with(&[("feature-max-indirect-segments", "4096")]),
            FrontLimits {
                max_indirect_segments: 128,
                ..NEW_FRONT
            },
            (0, 32, 128, true, FlushMode::None, false),
        ),
        (
            "indirect above the 8-page limit is clamped",
            with(&[("feature-max-indirect-segments", "100000")]),
            FrontLimits {
                max_indirect_segments: 100000,
                ..NEW_FRONT
            },
            (0, 32, 4096, true, FlushMode::None, false),
        ),
        (
            "indirect fewer than 11 keeps direct requests",
            with(&[("feature-max-indirect-segments", "4")]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::None, false),
        ),
        (
            "seed cap max-requests",
            with(&[("max-ring-page-order", "2"), ("max-requests", "40")]),
            NEW_FRONT,
            (2, 40, 11, false, FlushMode::None, false),
        ),
        (
            "seed cap max-request-segments",
            with(&[
                ("feature-max-indirect-segments", "256"),
                ("max-request-segments", "32"),
            ]),
            NEW_FRONT,
            (0, 32, 32, true, FlushMode::None, false),
        ),
        (
            "seed cap max-request-size",
            with(&[
                ("feature-max-indirect-segments", "256"),
                ("max-request-size", "65536"),
            ]),
            NEW_FRONT,
            (0, 32, 16, true, FlushMode::None, false),
        ),
        (
            "seed cap max-request-size below 11 pages",
            with(&[("max-request-size", "16384")]),
            NEW_FRONT,
            (0, 32, 4, false, FlushMode::None, false),
        ),
        (
            "front's own max-requests",
            with(&[("max-ring-page-order", "4")]),
            FrontLimits {
                max_requests: 100,
                ..NEW_FRONT
            },
            (4, 100, 11, false, FlushMode::None, false),
        ),
        (
            "barrier only",
            with(&[("feature-barrier", "1")]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::Barrier, false),
        ),
        (
            "flush preferred over barrier",
            with(&[("feature-barrier", "1"), ("feature-flush-cache", "1")]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::FlushCache, false),
        ),
        (
            "features written as 0",
            with(&[
                ("feature-barrier", "0"),
                ("feature-flush-cache", "0"),
                ("feature-discard", "0"),
            ]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::None, false),
        ),
        (
            "discard",
            with(&[("feature-discard", "1")]),
            NEW_FRONT,
            (0, 32, 11, false, FlushMode::None, true),
        ),
    ];
    for (name, keys, limits, want) in rows {
        let d = dir(&keys);
        let c = front(&d, limits);
        let got = (
            c.ring_page_order,
            c.max_requests,
            c.max_segments,
            c.indirect,
            c.flush,
            c.discard.is_some(),
        );
        assert_eq!(got, want, "{name}");
        assert!(c.max_requests <= blkif_ring_size(c.ring_pages()), "{name}");
    }
}

fn leak(s: &str) -> &'static str {
    alloc::boxed::Box::leak(s.to_string().into_boxed_str())
}
fn leak_v(v: &[u8]) -> &'static str {
    leak(core::str::from_utf8(v).unwrap())
}

#[test]
fn readonly_and_sector_sizes() {
    let c = front(
        &dir(&[("sectors", "8"), ("info", "4"), ("sector-size", "4096")]),
        NEW_FRONT,
    );
    assert!(c.readonly);
    assert_eq!((c.sector_size, c.physical_sector_size), (4096, 4096));
    for bad in ["0", "100", "8192", "x"] {
        let d = dir(&[("sectors", "8"), ("sector-size", bad)]);
        assert!(BackendOffer::read(getter(&d)).is_err(), "sector-size {bad}");
    }
    let missing = dir(&[("info", "0")]);
    assert_eq!(
        BackendOffer::read(getter(&missing)).unwrap_err().errno,
        ENOENT
    );
    // u64::MAX / 512 + 1 and u64::MAX parse, but their size in bytes would not fit a u64.
    for bad in [
        "-1",
        "12x",
        "",
        "99999999999999999999999",
        "36028797018963968",
        "18446744073709551615",
    ] {
        let d = dir(&[("sectors", bad)]);
        assert!(BackendOffer::read(getter(&d)).is_err(), "sectors {bad:?}");
    }
    let d = dir(&[("sectors", "36028797018963967")]);
    assert_eq!(
        BackendOffer::read(getter(&d)).unwrap().sectors,
        u64::MAX / 512
    );
}

#[test]
fn backend_keys_roundtrip() {
    let offer = BackendOffer {
        max_ring_page_order: 3,
        max_indirect_segments: 256,
        flush_cache: true,
        barrier: true,
        discard: Some(DiscardParams {
            granularity: 4096,
            alignment: 512,
            secure: true,
        }),
        persistent: false,
        sectors: 1 << 20,
        sector_size: 512,
        physical_sector_size: 4096,
        info: VDISK_READONLY,
        max_requests: Some(64),
        max_request_segments: None,
        max_request_size: Some(1 << 20),
        max_queues: 1,
    };
    let ring = offer.ring_keys();
    assert!(ring.contains(&("max-ring-page-order", "3".into())));
    assert!(ring.contains(&("max-ring-pages", "8".into())));
    let all: BTreeMap<String, Vec<u8>> = ring
        .into_iter()
        .chain(offer.connect_keys())
        .map(|(k, v)| (k.to_string(), v.into_bytes()))
        .collect();
    assert_eq!(BackendOffer::read(getter(&all)).unwrap(), offer);
    // No indirect offered: the key is absent, not "0" (blkif.h: absence means unsupported).
    let none = BackendOffer {
        max_indirect_segments: 0,
        ..offer
    };
    assert!(!none
        .ring_keys()
        .iter()
        .any(|(k, _)| *k == keys::FEATURE_MAX_INDIRECT_SEGMENTS));
}

fn offer(order: u32, indirect: u32) -> BackendOffer {
    BackendOffer {
        max_ring_page_order: order,
        max_indirect_segments: indirect,
        flush_cache: true,
        barrier: false,
        discard: None,
        persistent: false,
        sectors: 100,
        sector_size: 512,
        physical_sector_size: 512,
        info: 0,
        max_requests: None,
        max_request_segments: None,
        max_request_size: None,
        max_queues: 1,
    }
}

#[test]
fn front_keys_single_and_multi_page() {
    let one = FrontRing {
        ring_refs: vec![9],
        event_channel: 5,
        persistent: false,
    };
    let k = one.keys();
    assert_eq!(
        k,
        vec![
            ("ring-ref".into(), "9".into()),
            ("event-channel".into(), "5".into()),
            ("protocol".into(), "x86_64-abi".into()),
            ("feature-persistent".into(), "0".into())
        ]
    );
    let four = FrontRing {
        ring_refs: vec![10, 11, 12, 13],
        event_channel: 6,
        persistent: true,
    };
    let k: BTreeMap<String, Vec<u8>> = four
        .keys()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    assert_eq!(k.get("ring-page-order").unwrap(), b"2");
    assert_eq!(k.get("num-ring-pages").unwrap(), b"4");
    assert_eq!(k.get("ring-ref3").unwrap(), b"13");
    assert!(!k.contains_key("ring-ref"));
    let back = negotiate_back(getter(&k), &offer(4, 0)).unwrap();
    assert_eq!(back.ring, four);
    assert_eq!(back.max_requests, blkif_ring_size(4));
}

/// Back side table: the frontend's keys → the ring the backend maps, or the refusal.
#[test]
fn backend_reads_frontends() {
    let ok = |keys: &[(&str, &str)], o: BackendOffer| negotiate_back(getter(&dir(keys)), &o);
    // Linux blkfront, 1 vCPU (XENSTORE-LAYOUT.md): a single ring-ref, persistent asked for.
    let c = ok(
        &[
            ("ring-ref", "8"),
            ("event-channel", "4"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "1"),
        ],
        offer(4, 256),
    )
    .unwrap();
    assert_eq!(
        (
            c.ring.ring_refs.clone(),
            c.ring.event_channel,
            c.max_segments,
            c.max_requests
        ),
        (vec![8], 4, 256, 32)
    );
    // Old frontend: no protocol key (native), no indirect offered → 11 segments.
    let c = ok(&[("ring-ref", "8"), ("event-channel", "4")], offer(0, 0)).unwrap();
    assert_eq!(c.max_segments, 11);
    // FreeBSD's older frontend: num-ring-pages + ring-refN + caps.
    let c = ok(
        &[
            ("num-ring-pages", "2"),
            ("ring-ref0", "1"),
            ("ring-ref1", "2"),
            ("event-channel", "3"),
            ("max-requests", "40"),
            ("max-request-segments", "20"),
        ],
        offer(2, 256),
    )
    .unwrap();
    assert_eq!(
        (c.ring.ring_refs.clone(), c.max_requests, c.max_segments),
        (vec![1, 2], 40, 20)
    );
    // ring-page-order 0 with ring-ref0 only.
    assert_eq!(
        ok(
            &[
                ("ring-page-order", "0"),
                ("ring-ref0", "7"),
                ("event-channel", "3")
            ],
            offer(2, 0)
        )
        .unwrap()
        .ring
        .ring_refs,
        vec![7]
    );
    // Refusals: each names what is wrong.
    type Refusal<'a> = (&'a [(&'a str, &'a str)], BackendOffer, &'a str);
    let cases: &[Refusal<'_>] = &[
        (&[("event-channel", "3")], offer(0, 0), "ring-ref"),
        (&[("ring-ref", "1")], offer(0, 0), "event-channel"),
        (
            &[("ring-ref", "x"), ("event-channel", "3")],
            offer(0, 0),
            "ring-ref",
        ),
        (
            &[("ring-page-order", "3"), ("event-channel", "3")],
            offer(2, 0),
            "exceeds",
        ),
        (
            &[
                ("ring-page-order", "1"),
                ("ring-ref0", "1"),
                ("event-channel", "3"),
            ],
            offer(2, 0),
            "ring-ref1",
        ),
        (
            &[("num-ring-pages", "3"), ("event-channel", "3")],
            offer(2, 0),
            "power of two",
        ),
        (
            &[
                ("ring-ref", "1"),
                ("event-channel", "3"),
                ("protocol", "x86_32-abi"),
            ],
            offer(0, 0),
            "protocol",
        ),
        (
            &[("ring-ref", "1"), ("event-channel", "99999999999")],
            offer(0, 0),
            "event-channel",
        ),
    ];
    for (keys, o, what) in cases {
        let e = ok(keys, o.clone()).unwrap_err();
        assert!(e.message.contains(what), "{keys:?}: {e}");
    }
}

#[test]
fn mode_values() {
    assert!(parse_mode(b"r").unwrap());
    assert!(!parse_mode(b"w").unwrap());
    assert!(parse_mode(b"x").is_err());
}

/// Multi-queue (blkif.h "Multiple hardware queues/rings"): `multi-queue-num-queues` of two or
/// more moves each queue's `ring-ref*`/`event-channel` under `queue-<N>/` (the toplevel ones
/// are not read, `ring-page-order` stays shared); one queue keeps the toplevel keys; zero, or
/// more than `multi-queue-max-queues`, is refused; a queue with a key missing is refused.
#[test]
fn backend_reads_queues() {
    let mut o = offer(4, 256);
    o.max_queues = 4;
    let ok = |keys: &[(&str, &str)], o: &BackendOffer| negotiate_back(getter(&dir(keys)), o);
    // Linux blkfront with 2 vCPUs and an order-1 ring.
    let c = ok(
        &[
            ("multi-queue-num-queues", "2"),
            ("ring-page-order", "1"),
            ("queue-0/ring-ref0", "10"),
            ("queue-0/ring-ref1", "11"),
            ("queue-0/event-channel", "5"),
            ("queue-1/ring-ref0", "12"),
            ("queue-1/ring-ref1", "13"),
            ("queue-1/event-channel", "6"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "1"),
        ],
        &o,
    )
    .unwrap();
    let q: Vec<_> = c
        .queues()
        .map(|r| (r.ring_refs.clone(), r.event_channel, r.persistent))
        .collect();
    assert_eq!(q, vec![(vec![10, 11], 5, true), (vec![12, 13], 6, true)]);
    assert_eq!(c.max_requests, blkif_ring_size(2));
    // One queue: toplevel keys, as a frontend that knows nothing of queues.
    let c = ok(
        &[
            ("multi-queue-num-queues", "1"),
            ("ring-ref", "8"),
            ("event-channel", "4"),
        ],
        &o,
    )
    .unwrap();
    assert!(c.more_queues.is_empty());
    assert_eq!(c.ring.ring_refs, vec![8]);
    // Zero, or more than offered (and a backend that offered none takes one only).
    for (n, o) in [("0", o.clone()), ("5", o.clone()), ("2", offer(4, 256))] {
        let e = ok(
            &[
                ("multi-queue-num-queues", n),
                ("queue-0/ring-ref", "1"),
                ("queue-0/event-channel", "2"),
                ("queue-1/ring-ref", "3"),
                ("queue-1/event-channel", "4"),
            ],
            &o,
        )
        .unwrap_err();
        assert!(e.message.contains("multi-queue-num-queues"), "{n}: {e:?}");
    }
    // Queue 1's port missing; toplevel keys do not stand in for a queue's.
    let e = ok(
        &[
            ("multi-queue-num-queues", "2"),
            ("ring-ref", "1"),
            ("event-channel", "2"),
            ("queue-0/ring-ref", "1"),
            ("queue-0/event-channel", "2"),
            ("queue-1/ring-ref", "3"),
        ],
        &o,
    )
    .unwrap_err();
    assert!(e.message.contains("queue-1/event-channel"), "{e:?}");
    // The offer's key: written only with more than one queue.
    let keys = o.ring_keys();
    assert!(keys.contains(&("multi-queue-max-queues", "4".to_string())));
    assert!(!offer(4, 256)
        .ring_keys()
        .iter()
        .any(|(k, _)| *k == "multi-queue-max-queues"));
}
