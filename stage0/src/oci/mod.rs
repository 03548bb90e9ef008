//! OCI images: references, registries (the distribution API v2), layouts and
//! archives, sigstore signatures, layers rendered into trees of their own.
//!
//! ```text
//! <data>/blobs/sha256/<hex>                 every blob once, verified while it streamed in
//! <data>/layers/sha256-<hex>/rootfs         one layer (by blob digest), applied once, with
//!                                           overlayfs whiteouts; a lower layer of every
//!                                           image that has it
//! <data>/images/sha256-<hex>/               an OCI image: its manifest digest is its ID
//!                            oci-manifest.json, config.json, manifest (the app as appc
//!                            sees it), meta.json
//! ```

pub mod layer;
