//! Hash helpers shared by every module: plain domain-separated SHA-256 and BIP340-style tagged hashes.

use sha2::{Digest, Sha256};

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// BIP340-style tagged hash: SHA256(SHA256(tag) ‖ SHA256(tag) ‖ parts…).
pub fn tagged_hash(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let tag_hash = sha256(&[tag.as_bytes()]);
    let mut hasher = Sha256::new();
    hasher.update(tag_hash);
    hasher.update(tag_hash);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_hash_matches_bitcoin_hashes() {
        // BIP340 "TapLeaf" tag through rust-bitcoin's own implementation.
        use bitcoin::hashes::Hash;
        let ours = tagged_hash("TapLeaf", &[b"abc"]);
        let theirs = bitcoin::taproot::TapLeafHash::hash(b"abc");
        assert_eq!(ours, theirs.to_byte_array());
    }

    #[test]
    fn sha256_concatenates() {
        assert_eq!(sha256(&[b"ab", b"c"]), sha256(&[b"abc"]));
    }
}
