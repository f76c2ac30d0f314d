//! The end of a paid download (PROTOCOL.md 3.3 step 8, 3.6): f extracted from TX2, the
//! sealed copy E unsealed into C' and checked against root_C, C' decrypted to the output
//! (through a hidden partial file); a mismatch stores a fraud proof instead.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bitcoin::secp256k1::SecretKey;
use bitcoin::Transaction;
use dstore_protocol::datapath::decrypt_stream;
use dstore_protocol::extract::extract_farmer_key;
use dstore_protocol::keys::joint_secret_key;
use dstore_protocol::merkle::{MerkleBuilder, MerkleCommitment};
use dstore_protocol::seal::unseal;
use serde_json::Value;

use super::download::done_json;
use super::records::{DownloadPhase, RentedContract};
use super::{current, farmer_fault, internal, Renter, RenterError};

/// What the fused pass of [`unseal_check_decrypt`] found.
pub(super) struct Unsealed {
    /// The unsealed bytes are C (root_C and length of the receipt).
    pub root_ok: bool,
    /// Decrypting them into the partial file failed (why), meaningful when `root_ok`.
    pub decrypt_error: Option<String>,
}

/// One pass over the sealed copy at `sealed` on three threads: this one reads E and
/// unseals it with `unseal_with` (either mode's keystream), a second hashes the unsealed
/// bytes against `expected` (root_C, length), a third decrypts them (`key`, contract `id`)
/// into `partial`, a hidden file that becomes the output only after the caller saw
/// `root_ok`. The blocks go from thread to thread without copies; C' itself is never
/// written to disk.
pub(super) async fn unseal_check_decrypt<F>(
    sealed: &Path,
    partial: &Path,
    expected: MerkleCommitment,
    (key, id): ([u8; 32], [u8; 32]),
    unseal_with: F,
) -> Result<Unsealed, RenterError>
where
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<u64, String> + Send + 'static,
{
    let (sealed, partial) = (sealed.to_path_buf(), partial.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::new(std::fs::File::open(&sealed)?);
        let out = std::fs::File::create(&partial)?;
        let (to_hash, unsealed) = crate::pipe::pipe();
        let (to_decrypt, hashed) = crate::pipe::pipe();
        std::thread::scope(|scope| {
            let decryptor = scope.spawn(move || decrypt_into(&key, &id, hashed, out));
            let hasher = scope.spawn(move || hash_on(unsealed, to_decrypt));
            let mut to_hash = to_hash;
            let unsealing = unseal_with(&mut input, &mut to_hash)
                .and_then(|_| to_hash.flush().map_err(|e| e.to_string()));
            drop(to_hash); // the end of C' for the hashing thread
            let builder = hasher
                .join()
                .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
            let decrypted = decryptor
                .join()
                .unwrap_or_else(|_| Err("the decrypting thread panicked".into()));
            unsealing.map_err(std::io::Error::other)?;
            Ok(Unsealed {
                root_ok: builder.finish() == expected,
                decrypt_error: decrypted.err(),
            })
        })
    })
    .await
    .map_err(internal)?
    .map_err(|e: std::io::Error| internal(e))
}

/// Hashes the unsealed blocks into C's Merkle builder and hands each on to the decrypting
/// thread (which drains its pipe even after a failure; if it is gone, hashing goes on).
fn hash_on(
    unsealed: crate::pipe::PipeReader,
    mut to_decrypt: crate::pipe::PipeWriter,
) -> MerkleBuilder {
    let mut builder = MerkleBuilder::new();
    let mut passing = true;
    for block in unsealed.blocks() {
        builder.update(&block);
        passing = passing && to_decrypt.send(block).is_ok();
    }
    builder
}

/// The fused pass's verdict: the pass when the unsealed bytes were C, None when they were
/// not (the caller then builds its fraud proof), the pass's own error otherwise. Unless
/// they were C, the partial file is removed: nothing of it may reach the output.
fn was_c(
    pass: Result<Unsealed, RenterError>,
    partial: &Path,
) -> Result<Option<Unsealed>, RenterError> {
    match pass {
        Ok(unsealed) if unsealed.root_ok => Ok(Some(unsealed)),
        other => {
            let _ = std::fs::remove_file(partial);
            other.map(|_| None)
        }
    }
}

/// Decrypts C' from `unsealed` into `out` and syncs it. On a failure (a chunk that does
/// not authenticate, a full disk) the rest of C' is still read and dropped, so the
/// unsealing thread finishes its hash and the caller learns whether it was C.
fn decrypt_into(
    key: &[u8; 32],
    id: &[u8; 32],
    mut unsealed: crate::pipe::PipeReader,
    out: std::fs::File,
) -> Result<(), String> {
    let mut out = std::io::BufWriter::with_capacity(crate::pipe::PIPE_BLOCK, out);
    let decrypted = decrypt_stream(key, id, &mut unsealed, &mut out);
    let _ = std::io::copy(&mut unsealed, &mut std::io::sink());
    decrypted.map_err(|e| e.to_string())?;
    let file = out.into_inner().map_err(|e| e.into_error().to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

impl Renter {
    /// Finishes the paid download at the end of `record` once TX2 is known: extracts f,
    /// unseals E, checks root_C, decrypts to `output`.
    pub(super) async fn complete(
        &self,
        record: &mut RentedContract,
        r: &SecretKey,
        tx2: Transaction,
        output: &Path,
    ) -> Result<Value, RenterError> {
        let id = record.contract_id;
        let d = current(record).clone();
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        let f = extract_farmer_key(
            &tx2,
            0,
            &contract.farmer_key,
            &id,
            Some(&contract.tx1_script_pubkey().map_err(internal)?),
        )
        .map_err(farmer_fault)?;
        let joint = joint_secret_key(r, &f).map_err(internal)?;
        self.progress
            .phase(&hex::encode(id), "decrypting", record.ciphertext_length);
        self.finish_download(record, &joint, r, tx2, output).await?;
        let _ = std::fs::remove_file(self.sealed_file(&d.download_id));
        let done = current(record).clone();
        Ok(done_json(record, &done))
    }

    pub(super) fn sealed_file(&self, download_id: &[u8; 32]) -> PathBuf {
        self.work_dir
            .join(format!("{}.sealed", hex::encode(download_id)))
    }

    /// Unseals E into C', checks it against root_C and decrypts it to `output`; on a
    /// mismatch, writes nothing there and stores a fraud proof instead.
    async fn finish_download(
        &self,
        record: &mut RentedContract,
        joint: &SecretKey,
        r: &SecretKey,
        tx2: Transaction,
        output: &Path,
    ) -> Result<(), RenterError> {
        let transcript = current(record)
            .transcript
            .ok_or_else(|| internal("no transcript"))?;
        let (joint_key, ephemeral) = (*joint, transcript.ephemeral);
        let unseal_with = move |e: &mut dyn Read, c: &mut dyn Write| {
            unseal(&joint_key, &ephemeral, e, c).map_err(|e| e.to_string())
        };
        let Some(unsealed) = self.unseal_latest(record, output, unseal_with).await? else {
            let proof = self.fraud_proof(record, joint, r, tx2).await?;
            return Err(RenterError::Fraud(proof));
        };
        self.publish_output(record, output, unsealed.decrypt_error)
    }

    /// The fused pass over the latest download's sealed copy of `record` into `output`'s
    /// partial file, with `unseal_with` (either mode's keystream), and its verdict
    /// ([`was_c`]): None when the unsealed bytes were not C.
    pub(super) async fn unseal_latest<F>(
        &self,
        record: &RentedContract,
        output: &Path,
        unseal_with: F,
    ) -> Result<Option<Unsealed>, RenterError>
    where
        F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<u64, String> + Send + 'static,
    {
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        let download_id = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?
            .download_id;
        let partial = partial_path(output);
        let keys = (record.file_key, record.contract_id);
        let pass = unseal_check_decrypt(
            &self.sealed_file(&download_id),
            &partial,
            receipt.commitment(),
            keys,
            unseal_with,
        )
        .await;
        was_c(pass, &partial)
    }

    /// Renames the decrypted `partial` file to `output` (C' was checked against root_C)
    /// and stores the latest download as done; with `decrypt_error`, removes it instead.
    pub(super) fn publish_output(
        &self,
        record: &mut RentedContract,
        output: &Path,
        decrypt_error: Option<String>,
    ) -> Result<(), RenterError> {
        let partial = &partial_path(output);
        if let Some(e) = decrypt_error {
            let _ = std::fs::remove_file(partial);
            return Err(RenterError::Invalid(format!(
                "cannot write {}: {e}",
                output.display()
            )));
        }
        std::fs::rename(partial, output).map_err(|e| {
            let _ = std::fs::remove_file(partial);
            RenterError::Invalid(format!("cannot write {}: {e}", output.display()))
        })?;
        let d = current(record);
        d.phase = DownloadPhase::Done;
        d.error = None;
        self.store(record)?;
        tracing::info!(contract = %hex::encode(record.contract_id), "download complete");
        Ok(())
    }
}

/// Where `output` is written before it is complete: a hidden file next to it.
pub(crate) fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.dstore-partial"))
}

/// `output` as an absolute path; it must name a file.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, RenterError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(RenterError::Invalid("output_path must name a file".into()));
    }
    std::path::absolute(path).map_err(|e| RenterError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_output_is_hidden_next_to_the_output() {
        assert_eq!(
            partial_path(Path::new("/a/b/file.bin")),
            PathBuf::from("/a/b/.file.bin.dstore-partial")
        );
        assert!(absolute(Path::new("")).is_err());
        assert!(absolute(Path::new("/")).is_err());
    }

    #[tokio::test]
    async fn the_fused_pass_decrypts_c_and_tells_when_it_is_not_c() {
        use dstore_protocol::datapath::encrypt_stream;
        use dstore_protocol::merkle::MerkleTree;
        let (key, id) = ([5u8; 32], [6u8; 32]);
        let plaintext: Vec<u8> = (0..3 * (1 << 20) + 11).map(|i| (i % 241) as u8).collect();
        let mut c = Vec::new();
        encrypt_stream(&key, &id, &plaintext[..], &mut c).unwrap();
        let root_c = MerkleTree::from_data(&c).commitment();
        let dir = tempfile::tempdir().unwrap();
        let (sealed, partial) = (dir.path().join("e"), dir.path().join(".out.partial"));
        std::fs::write(&sealed, &c).unwrap();
        // An identity "unsealing": E is C.
        let copy =
            |e: &mut dyn Read, c: &mut dyn Write| std::io::copy(e, c).map_err(|e| e.to_string());
        let pass = unseal_check_decrypt(&sealed, &partial, root_c, (key, id), copy)
            .await
            .unwrap();
        assert!(pass.root_ok && pass.decrypt_error.is_none());
        assert_eq!(std::fs::read(&partial).unwrap(), plaintext);
        // One byte off in the middle: root_C fails (and GCM with it).
        c[(1 << 20) + 3] ^= 1;
        std::fs::write(&sealed, &c).unwrap();
        let pass = unseal_check_decrypt(&sealed, &partial, root_c, (key, id), copy)
            .await
            .unwrap();
        assert!(!pass.root_ok);
        assert!(pass.decrypt_error.is_some());
    }
}
