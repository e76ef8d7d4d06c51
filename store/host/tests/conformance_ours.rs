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

use xen_store_host::conformance::{Case, Limits};
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

xen_store_host::conformance_tests!(run);
