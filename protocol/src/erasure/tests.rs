//! Unit tests of the erasure module: parameters, lengths, every K-subset decoding,
//! encryption round trips, corruption, repair.

use std::io::Write;

use super::*;
use crate::datapath::{ciphertext_len, encrypt_and_commit};
use crate::merkle::{MerkleCommitment, MerkleTree};

const KEY: [u8; 32] = [7; 32];
const FILE_ID: [u8; 32] = [9; 32];

fn params(n: u64, k: u64) -> ShardParams {
    ShardParams::new(n, k).unwrap()
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 11) as u8 ^ seed)
        .collect()
}

/// Encodes `c` into N in-memory shards, writing it in `piece`-byte writes.
fn encode(p: ShardParams, c: &[u8], piece: usize) -> Vec<Vec<u8>> {
    let mut encoder = ShardEncoder::new(p, vec![Vec::new(); p.shards()]).unwrap();
    for part in c.chunks(piece.max(1)) {
        encoder.write_all(part).unwrap();
    }
    let shards = encoder.finish().unwrap();
    for shard in &shards {
        assert_eq!(shard.len() as u64, shard_len(c.len() as u64, p));
    }
    shards
}

/// The shard slots with only the indices in `keep` present.
fn subset<'a>(shards: &'a [Vec<u8>], keep: &[usize]) -> Vec<Option<&'a [u8]>> {
    shards
        .iter()
        .enumerate()
        .map(|(i, s)| keep.contains(&i).then_some(s.as_slice()))
        .collect()
}

fn decode(
    p: ShardParams,
    c_len: usize,
    slots: Vec<Option<&[u8]>>,
) -> Result<Vec<u8>, ErasureError> {
    let mut out = Vec::new();
    decode_c(p, c_len as u64, slots, &mut out)?;
    Ok(out)
}

/// Every subset of `0..n` with exactly `k` members.
fn k_subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..1 << n)
        .filter(|mask| mask.count_ones() as usize == k)
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn params_refuse_bad_counts_with_clear_messages() {
    let err = |n, k| ShardParams::new(n, k).unwrap_err().to_string();
    assert_eq!(
        err(3, 0),
        "bad shard parameters: needed (K) must be at least 1"
    );
    assert_eq!(
        err(2, 3),
        "bad shard parameters: needed (K=3) exceeds shards (N=2)"
    );
    assert_eq!(
        err(33, 2),
        "bad shard parameters: shards (N=33) exceeds the maximum of 32"
    );
    assert_eq!(
        err(300, 2),
        "bad shard parameters: shards (N=300) exceeds the maximum of 32"
    );
    assert!(ShardParams::new(0, 0).is_err());
    let max = params(32, 32);
    assert_eq!((max.shards(), max.needed(), max.parity()), (32, 32, 0));
    let p = params(6, 4);
    assert_eq!((p.shards(), p.needed(), p.parity()), (6, 4, 2));
}

#[test]
fn params_serde_round_trips_and_checks() {
    let p = params(5, 3);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(json, r#"{"shards":5,"needed":3}"#);
    assert_eq!(serde_json::from_str::<ShardParams>(&json).unwrap(), p);
    assert!(serde_json::from_str::<ShardParams>(r#"{"shards":2,"needed":3}"#).is_err());
    assert!(serde_json::from_str::<ShardParams>(r#"{"shards":40,"needed":3}"#).is_err());
    assert!(serde_json::from_str::<ShardParams>(r#"{"shards":4,"needed":0}"#).is_err());
}

#[test]
fn lengths_count_padded_stripes() {
    let p = params(3, 2);
    let stripe = 2 * CHUNK as u64;
    assert_eq!((stripes(0, p), shard_len(0, p)), (0, 0));
    assert_eq!((stripes(1, p), shard_len(1, p)), (1, CHUNK as u64));
    assert_eq!(stripes(stripe, p), 1);
    assert_eq!(stripes(stripe + 1, p), 2);
    assert_eq!(shard_len(stripe + 1, p), 2 * CHUNK as u64);
}

#[test]
fn every_k_subset_decodes_byte_exact() {
    for n in 1..=5usize {
        for k in 1..=n {
            let p = params(n as u64, k as u64);
            let stripe = k * CHUNK;
            for len in [0, 1, stripe + 7] {
                let c = bytes(len, (n * 8 + k) as u8);
                let shards = encode(p, &c, 100_003);
                for keep in k_subsets(n, k) {
                    let out = decode(p, len, subset(&shards, &keep)).unwrap();
                    assert!(out == c, "n {n} k {k} len {len} keep {keep:?}");
                }
            }
        }
    }
}

#[test]
fn exact_stripes_and_extra_shards_decode() {
    let p = params(4, 2);
    for len in [2 * CHUNK, 4 * CHUNK, 4 * CHUNK - 1] {
        let c = bytes(len, 3);
        let shards = encode(p, &c, len + 1);
        assert_eq!(&shards[0][..CHUNK], &c[..CHUNK], "shard 0 starts with C");
        assert_eq!(decode(p, len, subset(&shards, &[0, 1, 2, 3])).unwrap(), c);
        assert_eq!(decode(p, len, subset(&shards, &[1, 2, 3])).unwrap(), c);
    }
}

#[test]
fn write_pattern_does_not_change_shards() {
    let p = params(5, 3);
    let c = bytes(3 * CHUNK + 12_345, 1);
    assert_eq!(encode(p, &c, 1), encode(p, &c, c.len()));
    assert_eq!(encode(p, &c, 4096), encode(p, &c, 777));
}

#[test]
fn decoder_refuses_missing_short_and_long_shards() {
    let p = params(4, 2);
    let c = bytes(CHUNK + 10, 5);
    let shards = encode(p, &c, 1 << 20);
    assert!(matches!(
        decode(p, c.len(), subset(&shards, &[3])),
        Err(ErasureError::TooFewShards {
            present: 1,
            needed: 2
        })
    ));
    assert!(matches!(
        decode(p, c.len(), subset(&shards, &[0, 1, 2])[..3].to_vec()),
        Err(ErasureError::ShardCount {
            got: 3,
            expected: 4
        })
    ));
    let mut short = subset(&shards, &[1, 3]);
    short[3] = Some(&shards[3][..CHUNK - 1]);
    assert!(matches!(
        decode(p, c.len(), short),
        Err(ErasureError::ShardTooShort { index: 3 })
    ));
    let long_shard: Vec<u8> = shards[1].iter().copied().chain([0u8]).collect();
    let mut long = subset(&shards, &[1, 3]);
    long[1] = Some(&long_shard);
    assert!(matches!(
        decode(p, c.len(), long),
        Err(ErasureError::ShardTooLong { index: 1 })
    ));
}

#[test]
fn encoder_refuses_wrong_writer_count() {
    assert!(matches!(
        ShardEncoder::new(params(3, 2), vec![Vec::<u8>::new(); 2]),
        Err(ErasureError::WriterCount {
            got: 2,
            expected: 3
        })
    ));
}

fn shard_file(p: ShardParams, plaintext: &[u8]) -> (MerkleCommitment, Vec<Vec<u8>>) {
    let sharded =
        encrypt_and_shard(&KEY, &FILE_ID, plaintext, p, vec![Vec::new(); p.shards()]).unwrap();
    (sharded.commitment, sharded.writers)
}

#[test]
fn encrypt_and_shard_round_trips_through_any_k() {
    let p = params(6, 4);
    for len in [0, 1000, 4 * CHUNK, 5 * CHUNK + 333] {
        let plaintext = bytes(len, 11);
        let (root_c, shards) = shard_file(p, &plaintext);
        let mut c = Vec::new();
        let expected = encrypt_and_commit(&KEY, &FILE_ID, &plaintext[..], &mut c).unwrap();
        assert_eq!(
            root_c, expected,
            "same C and root as the single-contract path"
        );
        assert_eq!(root_c.length, ciphertext_len(len as u64).unwrap());
        for keep in [vec![0, 1, 2, 3], vec![2, 3, 4, 5], vec![0, 2, 4, 5]] {
            let mut out = Vec::new();
            let n =
                decode_and_decrypt(&KEY, &FILE_ID, p, &root_c, subset(&shards, &keep), &mut out)
                    .unwrap();
            assert_eq!(n, len as u64);
            assert!(out == plaintext, "len {len} keep {keep:?}");
        }
        let mut decoded_c = Vec::new();
        decode_c(
            p,
            root_c.length,
            subset(&shards, &[1, 3, 4, 5]),
            &mut decoded_c,
        )
        .unwrap();
        assert!(decoded_c == c);
    }
}

#[test]
fn decrypt_and_check_requires_the_root() {
    let plaintext = bytes(3000, 2);
    let mut c = Vec::new();
    let root_c = encrypt_and_commit(&KEY, &FILE_ID, &plaintext[..], &mut c).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        decrypt_and_check(&KEY, &FILE_ID, &root_c, &c[..], &mut out).unwrap(),
        3000
    );
    assert_eq!(out, plaintext);
    let wrong_root = MerkleCommitment {
        root: [0; 32],
        ..root_c
    };
    assert!(matches!(
        decrypt_and_check(&KEY, &FILE_ID, &wrong_root, &c[..], Vec::new()),
        Err(ErasureError::RootMismatch)
    ));
    let wrong_length = MerkleCommitment {
        length: root_c.length + 1,
        ..root_c
    };
    assert!(matches!(
        decrypt_and_check(&KEY, &FILE_ID, &wrong_length, &c[..], Vec::new()),
        Err(ErasureError::RootMismatch)
    ));
}

#[test]
fn a_corrupted_shard_is_caught() {
    let p = params(3, 2);
    let (root_c, mut shards) = shard_file(p, &bytes(CHUNK + 5000, 4));
    shards[2][100] ^= 1;
    let mut c = Vec::new();
    decode_c(p, root_c.length, subset(&shards, &[0, 2]), &mut c).unwrap();
    assert_ne!(MerkleTree::from_data(&c).commitment(), root_c, "wrong root");
    let result = decode_and_decrypt(
        &KEY,
        &FILE_ID,
        p,
        &root_c,
        subset(&shards, &[0, 2]),
        Vec::new(),
    );
    assert!(
        result.is_err(),
        "decryption with a corrupted shard must fail"
    );
    let good = decode_and_decrypt(
        &KEY,
        &FILE_ID,
        p,
        &root_c,
        subset(&shards, &[0, 1]),
        Vec::new(),
    );
    assert!(good.is_ok(), "the other two shards still decode");
}

#[test]
fn rebuild_restores_lost_shards_byte_exact() {
    let p = params(5, 3);
    let (root_c, shards) = shard_file(p, &bytes(4 * CHUNK + 99, 6));
    for (keep, wanted) in [
        (vec![0, 1, 2], vec![3, 4]),
        (vec![2, 3, 4], vec![0, 1]),
        (vec![0, 3, 4], vec![2, 1]),
        (vec![1, 2, 4], vec![0, 3]),
    ] {
        let rebuilt = rebuild(
            p,
            root_c.length,
            subset(&shards, &keep),
            &wanted,
            vec![Vec::new(); wanted.len()],
        )
        .unwrap();
        for (index, shard) in wanted.iter().zip(&rebuilt) {
            assert!(*shard == shards[*index], "shard {index} from {keep:?}");
        }
    }
}

#[test]
fn rebuild_refuses_bad_wanted() {
    let p = params(4, 2);
    let (root_c, shards) = shard_file(p, &bytes(100, 6));
    let run = |wanted: &[usize], writers: usize| {
        rebuild(
            p,
            root_c.length,
            subset(&shards, &[0, 1]),
            wanted,
            vec![Vec::new(); writers],
        )
    };
    assert!(matches!(
        run(&[4], 1),
        Err(ErasureError::BadWanted { index: 4 })
    ));
    assert!(matches!(
        run(&[2, 2], 2),
        Err(ErasureError::BadWanted { index: 2 })
    ));
    assert!(matches!(
        run(&[2, 3], 1),
        Err(ErasureError::WriterCount {
            got: 1,
            expected: 2
        })
    ));
}
