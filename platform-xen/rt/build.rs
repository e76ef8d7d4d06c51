//! Publishes the linker script's path to dependents (`links = "xen_rt"`): an image's build
//! script reads it as `DEP_XEN_RT_LINKER_SCRIPT`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:linker_script={dir}/link.ld");
    println!("cargo:rerun-if-changed=link.ld");
}
