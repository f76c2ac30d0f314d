//! The blocking file I/O around `dstore_protocol::erasure`: encrypting a file into N
//! staged shard files, decoding K shard files back into the checked plaintext (through a
//! hidden partial file renamed only once every byte decoded and root_C matched), and
//! rebuilding lost shards for a repair. Run on tokio's blocking pool.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use dstore_protocol::erasure::{decode_and_decrypt, encrypt_and_shard, rebuild, ShardParams};
use dstore_protocol::merkle::MerkleCommitment;

use super::{internal, FileError};
use crate::renter::partial_path;

/// Encrypts `source` with `key` under `file_id` into shard files `outputs` (N of them,
/// index order), each synced; returns C's commitment (root_C and length).
pub fn encode_file(
    key: &[u8; 32],
    file_id: &[u8; 32],
    source: &Path,
    params: ShardParams,
    outputs: &[PathBuf],
) -> Result<MerkleCommitment, FileError> {
    let input = File::open(source)
        .map(BufReader::new)
        .map_err(|e| FileError::Invalid(format!("{}: {e}", source.display())))?;
    let writers = create_all(outputs)?;
    let sharded = encrypt_and_shard(key, file_id, input, params, writers)?;
    sync_all(sharded.writers)?;
    Ok(sharded.commitment)
}

/// Decodes C from the shard files present in `shards` (N entries, `None` = not fetched),
/// decrypts it with `key` and checks root_C; the plaintext goes to `output` only if every
/// byte decoded and the root matched. Returns the plaintext length.
pub fn decode_file(
    key: &[u8; 32],
    file_id: &[u8; 32],
    params: ShardParams,
    root_c: &MerkleCommitment,
    shards: &[Option<PathBuf>],
    output: &Path,
) -> Result<u64, FileError> {
    let readers = open_present(shards)?;
    let partial = partial_path(output);
    let written = File::create(&partial)
        .map_err(|e| FileError::Invalid(format!("cannot write {}: {e}", output.display())))
        .and_then(|file| {
            let mut out = BufWriter::new(file);
            let bytes = decode_and_decrypt(key, file_id, params, root_c, readers, &mut out)?;
            let file = out.into_inner().map_err(|e| internal(e.into_error()))?;
            file.sync_all().map_err(internal)?;
            Ok(bytes)
        });
    match written {
        Ok(bytes) => {
            std::fs::rename(&partial, output).map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                FileError::Invalid(format!("cannot write {}: {e}", output.display()))
            })?;
            Ok(bytes)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Regenerates shards `wanted` from the shard files present in `shards` into `outputs`
/// (one per wanted index), each synced.
pub fn rebuild_files(
    params: ShardParams,
    c_len: u64,
    shards: &[Option<PathBuf>],
    wanted: &[usize],
    outputs: &[PathBuf],
) -> Result<(), FileError> {
    let readers = open_present(shards)?;
    let writers = create_all(outputs)?;
    let writers = rebuild(params, c_len, readers, wanted, writers)?;
    sync_all(writers)
}

fn create_all(paths: &[PathBuf]) -> Result<Vec<BufWriter<File>>, FileError> {
    paths
        .iter()
        .map(|p| {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(internal)?;
            }
            File::create(p).map(BufWriter::new).map_err(internal)
        })
        .collect()
}

fn sync_all(writers: Vec<BufWriter<File>>) -> Result<(), FileError> {
    for writer in writers {
        let file = writer.into_inner().map_err(|e| internal(e.into_error()))?;
        file.sync_all().map_err(internal)?;
    }
    Ok(())
}

fn open_present(shards: &[Option<PathBuf>]) -> Result<Vec<Option<BufReader<File>>>, FileError> {
    shards
        .iter()
        .map(|p| match p {
            None => Ok(None),
            Some(path) => File::open(path)
                .map(|f| Some(BufReader::new(f)))
                .map_err(internal),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_survives_encoding_and_decoding_from_any_two_of_three_shards() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("in.bin");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&source, &data).unwrap();
        let params = ShardParams::new(3, 2).unwrap();
        let shards: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("{i}.shard")))
            .collect();
        let (key, id) = ([5u8; 32], [6u8; 32]);
        let root = encode_file(&key, &id, &source, params, &shards).unwrap();
        for missing in 0..3 {
            let present: Vec<Option<PathBuf>> = (0..3)
                .map(|i| (i != missing).then(|| shards[i].clone()))
                .collect();
            let out = dir.path().join(format!("out{missing}"));
            assert_eq!(
                decode_file(&key, &id, params, &root, &present, &out).unwrap(),
                data.len() as u64
            );
            assert_eq!(std::fs::read(&out).unwrap(), data);
        }
        let rebuilt = dir.path().join("rebuilt");
        let present = vec![None, Some(shards[1].clone()), Some(shards[2].clone())];
        rebuild_files(
            params,
            root.length,
            &present,
            &[0],
            std::slice::from_ref(&rebuilt),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&rebuilt).unwrap(),
            std::fs::read(&shards[0]).unwrap()
        );
    }

    #[test]
    fn a_corrupted_shard_writes_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("in.bin");
        std::fs::write(&source, vec![9u8; 10_000]).unwrap();
        let params = ShardParams::new(2, 1).unwrap();
        let shards: Vec<PathBuf> = (0..2)
            .map(|i| dir.path().join(format!("{i}.shard")))
            .collect();
        let root = encode_file(&[1; 32], &[2; 32], &source, params, &shards).unwrap();
        let mut bytes = std::fs::read(&shards[0]).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&shards[0], bytes).unwrap();
        let out = dir.path().join("out");
        let present = vec![Some(shards[0].clone()), None];
        assert!(decode_file(&[1; 32], &[2; 32], params, &root, &present, &out).is_err());
        assert!(!out.exists());
        assert!(!partial_path(&out).exists());
    }
}
