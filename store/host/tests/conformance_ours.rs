//! The conformance suite against our xenstored (`xen_store_host::xenstored`): dom0 over its
//! Unix socket, domUs over simulated domains' ring pages and event channels. One test per
//! case, each with a daemon (and simulator) of its own. The same cases run against the real
//! xenstored in `conformance_real.rs`.
//!
//! Where ours differs on purpose (so the suite does not exercise it):
//! * malformed payloads the real 4.17 daemon reads past or aborts on (strings without their
//!   NUL, bytes after the last NUL, `atoi()` numbers such as `GET_DOMAIN_PATH "abc"`,
//!   `SET_PERMS` on an unknown `@` name): our codec answers `EINVAL` (`ENOENT` for the `@`
//!   name) — see `xen_store::server`, "Where we differ";
//! * the ring page: ours advertises `XENSTORE_SERVER_FEATURE_ERROR` and `_RECONNECTION`
//!   (sets `error` on corrupt indexes or an oversized header, and resets the ring on request);
//!   4.17 leaves `server_features` at 0 (checked on its page), so its guests are never told;
//! * the output bound ([`xen_store::server::Quotas::outbox`]) stands in for 4.17's memory
//!   quota and 20 s watch-event timeout.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use xen_store_host::conformance::{self, Case, Limits};
use xen_store_host::ours::OurXenstored;

fn run(name: &str, limits: Limits, case: Case) {
    let xs = OurXenstored::for_test(limits);
    let r = catch_unwind(AssertUnwindSafe(|| case(&xs)));
    // Whatever the case did, the daemon must still answer.
    let alive = catch_unwind(AssertUnwindSafe(|| xs.xenstored().sync())).is_ok();
    if let Err(p) = r {
        resume_unwind(p);
    }
    assert!(alive, "{name}: our xenstored's service thread died");
}

macro_rules! cases {
    ($list:ident, $limits:expr => $($name:ident),* $(,)?) => {
        const $list: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run(stringify!($name), $limits, conformance::$name);
            }
        )*
    };
}

cases!(DEFAULT_TESTS, Limits::DEFAULT =>
    initial_tree,
    read_write_basics,
    write_creates_parents,
    mkdir_semantics,
    rm_semantics,
    directory_listing,
    directory_too_big,
    domain_introduction,
    perms_defaults_and_inheritance,
    perms_domu_read_denied,
    perms_domu_write_denied,
    perms_set_perms_rules,
    perms_acl_grants,
    domu_privileged_ops_denied,
    relative_paths,
    tx_isolation,
    tx_conflict_eagain,
    tx_abort,
    tx_bad_id,
    tx_domu,
    watch_initial_event,
    watch_child_events,
    watch_rm_fires_descendant_watches,
    watch_relative_paths,
    watch_duplicate_and_unwatch,
    watch_events_filtered_by_perms,
    watch_introduce_domain,
    watch_release_domain_on_death,
    watch_release_domain_on_release,
    malformed_paths,
    malformed_payloads,
    unknown_message_type,
    oversized_message_drops_connection,
);

cases!(QUOTA_TESTS, Limits::SMALL =>
    quota_nodes,
    quota_watches,
    quota_transactions,
    quota_node_size,
    quota_dom0_exempt,
);

/// Every case of the suite has a test here (and nothing else does).
#[test]
fn every_case_has_a_test() {
    let names = |v: &[(&'static str, Case)]| -> Vec<&'static str> {
        let mut n: Vec<&str> = v.iter().map(|(n, _)| *n).collect();
        n.sort_unstable();
        n
    };
    let sorted = |v: &[&'static str]| {
        let mut n = v.to_vec();
        n.sort_unstable();
        n
    };
    assert_eq!(names(conformance::CASES), sorted(DEFAULT_TESTS));
    assert_eq!(names(conformance::QUOTA_CASES), sorted(QUOTA_TESTS));
}
