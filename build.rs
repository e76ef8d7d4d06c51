//! With the `image` feature: pass xen-rt's linker script on to the image packages that depend
//! on this crate (they see `DEP_XENOLITH_LINKER_SCRIPT`).
fn main() {
    if let Ok(script) = std::env::var("DEP_XEN_RT_LINKER_SCRIPT") {
        println!("cargo:linker_script={script}");
    }
    println!("cargo:rerun-if-env-changed=DEP_XEN_RT_LINKER_SCRIPT");
}
