//! Negotiation from the frontend's side, table-driven, through the whole handshake: the raw
//! backend writes a set of keys (from a `BackendOffer`, or raw, including the exact keys
//! Linux blkback wrote in docs/XENSTORE-LAYOUT.md); blkfront connects; the test checks the
//! keys blkfront wrote, the configuration it negotiated, and that data goes through with it.

mod front_common;

use front_common::*;
use xen_blk::abi::blkif_ring_size;
use xen_blk::front::{BlockDevice, WaitMode, DEFAULT_LIMITS};
use xen_blk::negotiate::{DiscardParams, FlushMode, FrontLimits};

struct Case {
    name: &'static str,
    keys: BackKeys,
    limits: FrontLimits,
    order: u32,
    max_requests: u32,
    max_segments: u32,
    flush: FlushMode,
    discard: Option<DiscardParams>,
}

fn offer_with(f: impl FnOnce(&mut xen_blk::negotiate::BackendOffer)) -> BackKeys {
    let mut o = modern_offer();
    f(&mut o);
    BackKeys::from_offer(&o)
}

const LINUX_DISCARD: Option<DiscardParams> = Some(DiscardParams {
    granularity: 4096,
    alignment: 0,
    secure: false,
});

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "new front, new back",
            keys: BackKeys::from_offer(&modern_offer()),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 512,
            max_segments: 256,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
        Case {
            name: "old back: no keys but sectors",
            keys: BackKeys::raw(&[], &[("sectors", "32768")]),
            limits: DEFAULT_LIMITS,
            order: 0,
            max_requests: 32,
            max_segments: 11,
            flush: FlushMode::None,
            discard: None,
        },
        Case {
            name: "legacy max-ring-pages back",
            keys: BackKeys::raw(
                &[("max-ring-pages", "4")],
                &[("sectors", "32768"), ("feature-barrier", "1")],
            ),
            limits: DEFAULT_LIMITS,
            order: 2,
            max_requests: blkif_ring_size(4),
            max_segments: 11,
            flush: FlushMode::Barrier,
            discard: None,
        },
        Case {
            name: "back offers more than we take",
            keys: BackKeys::raw(
                &[
                    ("max-ring-page-order", "9"),
                    ("feature-max-indirect-segments", "100000"),
                ],
                &[("sectors", "32768")],
            ),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 512,
            max_segments: 256,
            flush: FlushMode::None,
            discard: None,
        },
        Case {
            name: "front limits smaller than the back's",
            keys: BackKeys::from_offer(&modern_offer()),
            limits: FrontLimits {
                max_ring_page_order: 1,
                max_indirect_segments: 0,
                max_requests: 16,
                persistent: false,
                max_queues: 1,
            },
            order: 1,
            max_requests: 16,
            max_segments: 11,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
        Case {
            name: "seed cap max-requests",
            keys: offer_with(|o| o.max_requests = Some(8)),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 8,
            max_segments: 256,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
        Case {
            name: "seed cap max-request-segments",
            keys: offer_with(|o| o.max_request_segments = Some(16)),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 512,
            max_segments: 16,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
        Case {
            name: "seed cap max-request-size",
            keys: offer_with(|o| o.max_request_size = Some(32768)),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 512,
            max_segments: 8,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
        Case {
            // docs/XENSTORE-LAYOUT.md: what Linux 6.1 blkback wrote at probe and at connect.
            name: "Linux blkback's keys",
            keys: BackKeys::raw(
                &[
                    ("feature-max-indirect-segments", "256"),
                    ("multi-queue-max-queues", "2"),
                    ("max-ring-page-order", "4"),
                ],
                &[
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
                ],
            ),
            limits: DEFAULT_LIMITS,
            order: 4,
            max_requests: 512,
            max_segments: 256,
            flush: FlushMode::FlushCache,
            discard: LINUX_DISCARD,
        },
    ]
}

#[test]
fn negotiation_table() {
    for c in cases() {
        let mut s = Setup::with_limits(WaitMode::Event, false, false, c.limits);
        let be = s.backend(c.keys.clone(), 16 << 20, Behaviour::Honest);
        let mut dev = s.connect();
        let cfg = dev.config().unwrap();
        let n = c.name;
        assert_eq!(cfg.ring_page_order, c.order, "{n}: ring order");
        assert_eq!(cfg.max_requests, c.max_requests, "{n}: max_requests");
        assert_eq!(cfg.max_segments, c.max_segments, "{n}: max_segments");
        assert_eq!(cfg.indirect, c.max_segments > 11, "{n}: indirect");
        assert_eq!(cfg.flush, c.flush, "{n}: flush");
        assert_eq!(cfg.discard, c.discard, "{n}: discard");
        assert_eq!(cfg.sectors, 32768, "{n}: sectors");
        assert!(!cfg.readonly, "{n}");
        assert_eq!(dev.max_request_bytes(), c.max_segments as usize * 4096);
        // The keys blkfront wrote (blkif.h; XENSTORE-LAYOUT.md for a one-page ring).
        let pages = 1usize << c.order;
        if pages == 1 {
            assert!(s.fe_key("ring-ref").is_some(), "{n}");
            assert_eq!(s.fe_key("ring-page-order"), None, "{n}");
            assert_eq!(s.fe_key("ring-ref0"), None, "{n}");
        } else {
            assert_eq!(s.fe_key("ring-ref"), None, "{n}");
            assert_eq!(
                s.fe_key("ring-page-order").as_deref(),
                Some(c.order.to_string().as_str()),
                "{n}"
            );
            assert_eq!(
                s.fe_key("num-ring-pages").as_deref(),
                Some(pages.to_string().as_str()),
                "{n}"
            );
            for i in 0..pages {
                assert!(
                    s.fe_key(&format!("ring-ref{i}")).is_some(),
                    "{n}: ring-ref{i}"
                );
            }
            assert_eq!(s.fe_key(&format!("ring-ref{pages}")), None, "{n}");
        }
        assert!(s.fe_key("event-channel").is_some(), "{n}");
        assert_eq!(s.fe_key("protocol").as_deref(), Some("x86_64-abi"), "{n}");
        // blkfront says whether it reuses its grants (as Linux does, always); they are used
        // when the backend offered them too.
        let want = if c.limits.persistent { "1" } else { "0" };
        assert_eq!(s.fe_key("feature-persistent").as_deref(), Some(want), "{n}");
        let offered = c
            .keys
            .connect
            .iter()
            .any(|(k, v)| k == "feature-persistent" && v == "1");
        assert_eq!(cfg.persistent, offered && c.limits.persistent, "{n}");
        assert_eq!(
            be.ring_pages.load(std::sync::atomic::Ordering::SeqCst),
            pages,
            "{n}: the backend mapped what was granted"
        );
        // Data goes through with this configuration: 300 KiB, split as negotiated.
        let data = pattern(300 * 1024, 3);
        dev.write(10, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read(10, &mut back).unwrap();
        assert_eq!(back, data, "{n}");
        dev.flush().unwrap();
        for seen in be.seen() {
            assert!(seen.segments <= c.max_segments as usize, "{n}: {seen:?}");
        }
    }
}
