//! What the benches share (each bench includes it with `mod common;` and uses what it needs).
#![allow(dead_code)]

use std::time::Duration;

use xen_bus::BusConfig;

/// The median of a round's measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The buses of the benches' simulated domains: generous handshake and close bounds.
pub fn bus_cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    }
}
