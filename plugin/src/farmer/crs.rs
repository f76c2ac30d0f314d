//! Step 5 of a download (PROTOCOL.md 3.3, 3.5): the renter's Groth16 CRS, checked by the
//! farmer before it proves, and the proof. One CRS per download: a CRS that fails its
//! check, a second, different CRS, or a proof that does not verify under the accepted one
//! aborts the download for good ([`Farmer::abort_download`]). Checked CRSs are cached (in
//! memory and in `crs_dir`) for later downloads of the same TX2 shape, keyed by the CRS
//! hash together with the shape's cache key ([`zk::Shape::crs_cache_key`], which names the
//! circuit version): a CRS checked for another shape or an older circuit is not found, so
//! it is checked again (and refused) before any proof.

use std::path::PathBuf;
use std::sync::Arc;

use dstore_protocol::hashing::sha256;
use dstore_protocol::messages::{CrsOffer, ProofReady};
use dstore_protocol::zk::{self, Crs, Statement};

use super::records::{FarmedContract, FarmerPhase};
use super::{internal, Farmer, FarmerError, Step, TX3_FEE};
use crate::files::write_atomically;

impl Farmer {
    /// Checks the CRS the renter sent for contract `id`'s download. The farmer accepts
    /// exactly one CRS per download: a CRS that fails any check, or a second, different
    /// CRS, aborts the download for good, and so does a failed proof under the accepted
    /// one (see [`Farmer::prove_under_crs`]). The signed TX2 is then never proved about or
    /// broadcast, so a renter probing with crafted CRSs learns at most one bit of this
    /// download's one-time key, once. Re-sending the accepted bytes is an idempotent retry.
    pub async fn receive_crs(&self, id: &[u8; 32], bytes: Vec<u8>) -> Result<(), FarmerError> {
        let _guard = self.locks.lock(id).await;
        let record = self.existing(id)?;
        let download = record.download_in(FarmerPhase::Tx2Signed)?;
        let upload = sha256(&[&bytes]);
        let template = download.signed_tx2()?;
        let shape = zk::Shape::of(&template).map_err(internal)?;
        if let Some(accepted) = download.checked_crs {
            if download.crs_upload != Some(upload) {
                return Err(self.abort_download(record, "a second CRS for this download"));
            }
            if self.checked(&shape, &accepted).await?.is_some() {
                return Ok(());
            }
        }
        let checked = tokio::task::spawn_blocking(move || {
            zk::check_crs(&shape, &bytes, &mut rand::thread_rng())
        })
        .await
        .map_err(internal)?;
        let Ok(crs) = checked else {
            return Err(self.abort_download(record, "the CRS failed its check"));
        };
        let hash = zk::crs_hash(&crs);
        let key = checked_key(&shape, &hash);
        write_atomically(
            &self.checked_crs_path(&key),
            &zk::serialize_trusted_crs(&crs),
        )
        .map_err(internal)?;
        self.checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::new(crs));
        let mut record = record;
        let download = record.download.as_mut().expect("checked above");
        download.checked_crs = Some(hash);
        download.crs_upload = Some(upload);
        self.store(&record)?;
        Ok(())
    }

    /// Aborts the current download of `record` for good (stored before answering) and
    /// returns the one error the renter sees, whatever went wrong: which of check, second
    /// CRS, proof or self-verification failed stays in this farmer's log.
    fn abort_download(&self, mut record: FarmedContract, why: &'static str) -> FarmerError {
        if let Some(download) = record.download.as_mut() {
            download.phase = FarmerPhase::Aborted;
            download.template = None;
        }
        if let Err(e) = self.store(&record) {
            return e;
        }
        tracing::warn!(contract = %hex::encode(record.contract_id), why, "CRS refused: download aborted");
        FarmerError::CrsRejected(zk::CrsRejected.to_string())
    }

    /// The file of a checked CRS, named by its [`checked_key`].
    fn checked_crs_path(&self, key: &[u8; 32]) -> PathBuf {
        self.config
            .crs_dir
            .join(format!("checked-{}.crs", hex::encode(key)))
    }

    /// A CRS with hash `hash` this farmer checked before for `shape` under the current
    /// circuit version: in memory, or reloaded from its own cache.
    async fn checked(
        &self,
        shape: &zk::Shape,
        hash: &[u8; 32],
    ) -> Result<Option<Arc<Crs>>, FarmerError> {
        let key = checked_key(shape, hash);
        if let Some(crs) = self
            .checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(crs.clone()));
        }
        let path = self.checked_crs_path(&key);
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return Ok(None);
        };
        let crs = tokio::task::spawn_blocking(move || zk::deserialize_trusted_crs(&bytes))
            .await
            .map_err(internal)?;
        let Ok(crs) = crs else { return Ok(None) };
        if zk::crs_hash(&crs) != *hash {
            return Ok(None);
        }
        let crs = Arc::new(crs);
        self.checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, crs.clone());
        Ok(Some(crs))
    }

    /// Step 5, from phase `tx2_signed`: proves under the offered CRS, which must be this
    /// download's one CRS: the one uploaded for it, or (if none was) one this farmer
    /// checked before, which becomes the download's CRS. Any other CRS, and any failure
    /// of the proof or of its self-verification, aborts the download.
    pub(super) async fn prove_under_crs(
        &self,
        mut record: FarmedContract,
        offer: CrsOffer,
    ) -> Result<Step<ProofReady>, FarmerError> {
        let download = record.download_in(FarmerPhase::Tx2Signed)?;
        if download
            .checked_crs
            .is_some_and(|accepted| accepted != offer.crs_hash)
        {
            return Err(self.abort_download(record, "a second CRS for this download"));
        }
        let template = download.signed_tx2()?;
        let shape = zk::Shape::of(&template).map_err(internal)?;
        let crs = self
            .checked(&shape, &offer.crs_hash)
            .await?
            .ok_or(FarmerError::UnknownCrs)?;
        let proved = tokio::task::spawn_blocking(move || {
            let (statement, s1, s2) = Statement::of(&template)?;
            zk::prove(&crs, &statement, &s1, &s2, &mut rand::thread_rng())
        })
        .await;
        let Ok(Ok(proof)) = proved else {
            return Err(self.abort_download(record, "no verifying proof under this CRS"));
        };
        let payout_script = self.wallet.new_script().map_err(internal)?;
        let download = record.download.as_mut().expect("checked above");
        download.checked_crs = Some(offer.crs_hash);
        download.payout_script = Some(payout_script.clone());
        download.phase = FarmerPhase::Proved;
        Ok(Step {
            record,
            reply: ProofReady {
                proof: zk::serialize_proof(&proof),
                payout_script,
                tx3_fee: TX3_FEE,
            },
        })
    }
}

/// Where a CRS checked for `shape` is cached: its hash bound to the shape's cache key,
/// which changes with the shape and with the circuit version.
fn checked_key(shape: &zk::Shape, crs_hash: &[u8; 32]) -> [u8; 32] {
    sha256(&[
        b"dstore/checked-crs/v1",
        shape.crs_cache_key().as_bytes(),
        crs_hash,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRS checked for one shape is not found under another; the cache key also names
    /// the circuit version (`crs_cache_key_names_version_and_shape` in the protocol crate),
    /// so a CRS checked for an older circuit is not found either.
    #[test]
    fn checked_keys_bind_shape_and_hash() {
        let shape = zk::Shape {
            len: 180,
            farmer_r: 40,
            farmer_s: 74,
            twin_r: 112,
            twin_s: 146,
        };
        let moved = zk::Shape {
            twin_s: 147,
            ..shape
        };
        let hash = [7u8; 32];
        assert_eq!(checked_key(&shape, &hash), checked_key(&shape, &hash));
        assert_ne!(checked_key(&shape, &hash), checked_key(&moved, &hash));
        assert_ne!(checked_key(&shape, &hash), checked_key(&shape, &[8u8; 32]));
        assert_ne!(checked_key(&shape, &hash), hash);
    }
}
