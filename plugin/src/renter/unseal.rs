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
use dstore_protocol::merkle::{MerkleBuilder, MerkleCommitment, MerkleWriter};
use dstore_protocol::seal::unseal;
use serde_json::Value;

use super::download::done_json;
use super::records::{DownloadPhase, RentedContract};
use super::{current, farmer_fault, internal, Renter, RenterError};

/// Unseals the sealed copy at `sealed` into `unsealed` with `unseal_with` (either mode's
/// keystream), hashing what it writes, off the async executor; true when that is C (root_C
/// and length of `expected`).
pub(super) async fn unseal_checked<F>(
    sealed: &Path,
    unsealed: &Path,
    expected: MerkleCommitment,
    unseal_with: F,
) -> Result<bool, RenterError>
where
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<u64, String> + Send + 'static,
{
    let (sealed, unsealed) = (sealed.to_path_buf(), unsealed.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::new(std::fs::File::open(&sealed)?);
        let out = std::io::BufWriter::new(std::fs::File::create(&unsealed)?);
        let mut tee = MerkleWriter::new(out, MerkleBuilder::new());
        unseal_with(&mut input, &mut tee).map_err(std::io::Error::other)?;
        let (mut out, builder) = tee.into_parts();
        out.flush()?;
        Ok::<_, std::io::Error>(builder.finish() == expected)
    })
    .await
    .map_err(internal)?
    .map_err(internal)
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
        let d = current(record).clone();
        let transcript = d.transcript.ok_or_else(|| internal("no transcript"))?;
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        let sealed = self.sealed_file(&d.download_id);
        let unsealed = self
            .work_dir
            .join(format!("{}.c", hex::encode(d.download_id)));
        let (joint_key, ephemeral) = (*joint, transcript.ephemeral);
        let root_ok = unseal_checked(&sealed, &unsealed, receipt.commitment(), move |e, c| {
            unseal(&joint_key, &ephemeral, e, c).map_err(|e| e.to_string())
        })
        .await?;
        if !root_ok {
            let _ = std::fs::remove_file(&unsealed);
            let proof = self.fraud_proof(record, joint, r, tx2).await?;
            return Err(RenterError::Fraud(proof));
        }
        self.decrypt_checked(record, &unsealed, output).await
    }

    /// Decrypts `unsealed` (C', already checked against root_C) to `output` through a
    /// hidden partial file, removes `unsealed`, and stores the latest download as done.
    pub(super) async fn decrypt_checked(
        &self,
        record: &mut RentedContract,
        unsealed: &Path,
        output: &Path,
    ) -> Result<(), RenterError> {
        let (key, id) = (record.file_key, record.contract_id);
        let unsealed = unsealed.to_path_buf();
        let partial = partial_path(output);
        let (unsealed_in, partial_out) = (unsealed.clone(), partial.clone());
        let decrypted = tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&unsealed_in)?);
            let mut out = std::io::BufWriter::new(std::fs::File::create(&partial_out)?);
            decrypt_stream(&key, &id, input, &mut out)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })
        .await
        .map_err(internal)?;
        let _ = std::fs::remove_file(&unsealed);
        if let Err(e) = decrypted {
            let _ = std::fs::remove_file(&partial);
            return Err(RenterError::Invalid(format!(
                "cannot write {}: {e}",
                output.display()
            )));
        }
        std::fs::rename(&partial, output).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            RenterError::Invalid(format!("cannot write {}: {e}", output.display()))
        })?;
        let d = current(record);
        d.phase = DownloadPhase::Done;
        d.error = None;
        self.store(record)?;
        tracing::info!(contract = %hex::encode(id), "download complete");
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
}
