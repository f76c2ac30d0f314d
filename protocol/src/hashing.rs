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

/// A value uniform in [0, span) drawn from tagged_hash(tag, parts ‖ attempt), rejecting
/// draws past the largest multiple of `span` so there is no modulo bias. `span` must be
/// non-zero.
pub fn uniform_below(tag: &str, parts: &[&[u8]], span: u64) -> u64 {
    assert!(span > 0, "uniform_below needs a non-empty range");
    let zone = u64::MAX - (u64::MAX % span);
    (0u32..)
        .map(|attempt| {
            let counter = attempt.to_be_bytes();
            let mut all = parts.to_vec();
            all.push(&counter);
            let h = tagged_hash(tag, &all);
            u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
        })
        .find(|v| *v < zone)
        .expect("rejection sampling terminates")
        % span
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
