//! SHA-512 backed by OpenSSL's libcrypto, behind the RustCrypto `Digest`
//! traits so that it drops in where `sha2::Sha512` was (ed25519-dalek's
//! prehashed signing and verification take any such digest).
//!
//! Why not `sha2` or ring: fetching hashes every byte twice (the compressed
//! file for its signature, the uncompressed tar for the image ID), and
//! SHA-512 is the largest CPU cost of `pod fetch`. On the AMD EPYC (Zen)
//! hosts we measured, OpenSSL's AVX2+BMI2 assembly runs at ~650 MB/s where
//! `sha2` (AVX2 intrinsics) and ring (no SIMD path for SHA-512 on AMD) both
//! manage ~300 MB/s.

use sha2::digest::consts::U64;
use sha2::digest::{FixedOutput, HashMarker, Output, OutputSizeUser, Reset, Update};

/// An incremental SHA-512; use it through [`sha2::Digest`].
#[derive(Clone)]
pub struct Sha512(openssl::sha::Sha512);

impl std::fmt::Debug for Sha512 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha512 { .. }")
    }
}

impl Default for Sha512 {
    fn default() -> Self {
        Self(openssl::sha::Sha512::new())
    }
}

impl HashMarker for Sha512 {}

impl OutputSizeUser for Sha512 {
    type OutputSize = U64;
}

impl Update for Sha512 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

impl FixedOutput for Sha512 {
    fn finalize_into(self, out: &mut Output<Self>) {
        out.copy_from_slice(&self.0.finish());
    }
}

impl Reset for Sha512 {
    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::Sha512;

    #[test]
    fn matches_sha2() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
        // Lengths around the 128-byte block and its padding boundary.
        for len in [0, 1, 111, 112, 127, 128, 129, 255, 256, 4096, 300_000] {
            let ours = Sha512::digest(&data[..len]);
            let reference = sha2::Sha512::digest(&data[..len]);
            assert_eq!(ours.as_slice(), reference.as_slice(), "length {len}");
        }
        // Fed in uneven pieces, cloned midway.
        let mut h = Sha512::new();
        for piece in data.chunks(1000 + 7) {
            h.update(piece);
        }
        let copy = h.clone();
        assert_eq!(h.finalize().as_slice(), sha2::Sha512::digest(&data).as_slice());
        assert_eq!(copy.finalize().as_slice(), sha2::Sha512::digest(&data).as_slice());
    }
}
