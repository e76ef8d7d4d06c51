//! Link this image like every other (examples/image-link.rs).
include!("../image-link.rs");
