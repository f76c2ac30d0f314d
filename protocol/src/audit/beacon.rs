//! The audit beacon (PROTOCOL.md 5): which kept candidate the towers broadcast at T_i, j = H(contract ‖ blockhash(T_i − 1)) mod m, so neither side picks.

use crate::hashing::uniform_below;

/// j for a contract, the hash of block T_i − 1 (internal byte order, as in block
/// headers) and m kept candidates. The hash is reduced by rejection sampling, so j is
/// uniform. Returns 0 for m = 0.
pub fn beacon_candidate(contract_id: &[u8; 32], block_hash: &[u8; 32], kept: usize) -> u32 {
    if kept == 0 {
        return 0;
    }
    uniform_below("dstore/beacon", &[contract_id, block_hash], kept as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_beacon_is_deterministic_in_range_and_follows_the_block() {
        let j = beacon_candidate(&[1; 32], &[2; 32], 8);
        assert!(j < 8);
        assert_eq!(j, beacon_candidate(&[1; 32], &[2; 32], 8));
        let spread: std::collections::BTreeSet<u32> = (0u8..64)
            .map(|b| beacon_candidate(&[1; 32], &[b; 32], 8))
            .collect();
        assert!(spread.len() >= 6, "{spread:?}");
        assert_eq!(beacon_candidate(&[1; 32], &[2; 32], 0), 0);
    }
}
