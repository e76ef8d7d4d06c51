// The build script every bootable image shares (`build.rs` of each image: `include!("../image-link.rs");`).
// Link the bin as a freestanding, statically linked ELF at 1 MiB (IMAGES.md: these
// arguments turn rustc's host-target link into an image Xen's domain builder accepts).
fn main() {
    let script =
        std::env::var("DEP_XEN_RT_LINKER_SCRIPT").expect("xen-rt publishes its linker script");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
        "-Wl,-z,max-page-size=4096",
        // The workspace release profile keeps debuginfo (debug = 1, for benches); an image
        // does not need it in the file Xen loads (the target is <= 256 KiB). Symbols stay.
        "-Wl,--strip-debug",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-env-changed=DEP_XEN_RT_LINKER_SCRIPT");
    println!("cargo:rerun-if-changed=../image-link.rs");
}
