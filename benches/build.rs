//! Builds the C baseline (`c/ring_harness.c`) against the installed Xen public headers.

use std::path::Path;

const RING_H: &str = "/usr/include/xen/io/ring.h";

fn main() {
    println!("cargo:rerun-if-changed=c/ring_harness.c");
    println!("cargo:rerun-if-changed={RING_H}");
    if !Path::new(RING_H).exists() {
        panic!(
            "{RING_H} is missing: the ring benchmark compares against Xen's own ring.h macros. \
             Install the Xen public headers: apt-get install libxen-dev"
        );
    }
    cc::Build::new()
        .file("c/ring_harness.c")
        .include("/usr/include")
        .opt_level(2)
        .flag_if_supported("-std=gnu11")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("ring_harness");
}
