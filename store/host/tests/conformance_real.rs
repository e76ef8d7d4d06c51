//! The conformance suite against Debian's real xenstored 4.17 (`ci/real-xenstored`): one test
//! per case, each with a daemon of its own (tests run in parallel threads).
//!
//! Needs root (the start script installs xen-utils-4.17 and libxen-dev when missing). Where
//! the daemon cannot run, every test FAILS with the reason, unless
//! `XENOLITH_SKIP_REAL_XENSTORED=1` is set (then each prints `SKIPPED: ...`).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use xen_store_host::conformance::{Case, Limits};
use xen_store_host::real::RealXenstored;

fn run(name: &str, limits: Limits, case: Case) {
    let Some(xs) = RealXenstored::for_test(name, limits) else {
        return;
    };
    let r = catch_unwind(AssertUnwindSafe(|| case(&xs)));
    let alive = xs.is_alive();
    if r.is_err() || !alive {
        let log = std::fs::read_to_string(xs.rundir().join("xenstored.stderr")).unwrap_or_default();
        eprintln!(
            "{name}: xenstored (pid {}, alive: {alive}) stderr:\n{log}",
            xs.pid()
        );
    }
    if let Err(p) = r {
        resume_unwind(p);
    }
    assert!(alive, "{name}: the real xenstored died during the case");
}

xen_store_host::conformance_tests!(run);
