//! Compiles `oracle.c` against the installed Xen public headers (package `libxen-dev`) into a
//! static library whose data symbols the tests compare with the Rust mirrors.
//!
//! `XEN_INCLUDE_DIR` may name another directory that contains `xen/xen.h` (default
//! `/usr/include`).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=oracle.c");
    println!("cargo:rerun-if-env-changed=XEN_INCLUDE_DIR");

    let include = env::var_os("XEN_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));

    // Every header oracle.c includes, so that a partial install fails here, clearly.
    let headers = [
        "xen/xen.h",
        "xen/grant_table.h",
        "xen/event_channel.h",
        "xen/sched.h",
        "xen/hvm/hvm_op.h",
        "xen/hvm/params.h",
        "xen/arch-x86/hvm/start_info.h",
        "xen/io/ring.h",
        "xen/io/xs_wire.h",
        "xen/io/console.h",
        "xen/io/blkif.h",
        "xen/io/protocols.h",
        // Linux's Xen device interfaces (xen-platform-linux), also shipped by libxen-dev.
        "xen/sys/evtchn.h",
        "xen/sys/gntdev.h",
    ];
    let missing: Vec<String> = headers
        .iter()
        .map(|h| include.join(h))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        panic!(
            "abi-oracle needs the Xen public C headers, and these are missing:\n  {}\n\
             Install them with `apt-get install libxen-dev` (Debian/Ubuntu), or set \
             XEN_INCLUDE_DIR to a directory that contains xen/xen.h.",
            missing.join("\n  ")
        );
    }
    for h in headers {
        println!("cargo:rerun-if-changed={}", include.join(h).display());
    }

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target_arch != "x86_64" {
        panic!("abi-oracle checks the x86_64 layout; build it for an x86_64 target (not {target_arch})");
    }

    cc::Build::new()
        .file("oracle.c")
        .include(&include)
        .flag_if_supported("-std=gnu11")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("xen_abi_oracle");
}
