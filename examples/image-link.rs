// The build script every bootable image shares (`build.rs` of each image: `include!("../image-link.rs");`).
// Link the bin as a freestanding, statically linked ELF at 1 MiB (IMAGES.md: these
// arguments turn rustc's host-target link into an image Xen's domain builder accepts).
fn main() {
    // xen-rt's linker script, passed on by the facade (`xenolith`, feature `image`).
    let script = std::env::var("DEP_XENOLITH_LINKER_SCRIPT")
        .expect("the xenolith facade with feature `image` passes on xen-rt's linker script");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
        "-Wl,-z,max-page-size=4096",
        // No --strip-* here: the profile decides (`--profile image` strips everything, rustc
        // passes --strip-all; `--release` keeps symbols and debuginfo to debug a crash). A
        // --strip-debug here came after rustc's --strip-all and undid it.
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-env-changed=DEP_XENOLITH_LINKER_SCRIPT");
    println!("cargo:rerun-if-changed=../image-link.rs");
}
