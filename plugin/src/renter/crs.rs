//! The renter's Groth16 CRS (PROTOCOL.md 3.4, 3.5): generated once per TX2 shape, kept on
//! disk and in memory with its hash; offered to the farmer by hash (its bytes only when the
//! farmer has not checked it yet) to get the proof.

use std::sync::Arc;

use dstore_protocol::messages::{CrsOffer, ProofReady};
use dstore_protocol::zk::{self, Crs, Shape};

use super::records::RentedContract;
use super::{internal, HashedCrs, Renter, RenterError, SLOW_CALL};
use crate::farmer::UNKNOWN_CRS;
use crate::wire::PeerCallError;

impl Renter {
    /// This renter's CRS for `shape` and its hash: generated once, kept on disk and in
    /// memory.
    pub(super) async fn crs_for(&self, shape: &Shape) -> Result<HashedCrs, RenterError> {
        let mut cache = self.crs.lock().await;
        if let Some(found) = cache.get(shape) {
            return Ok(found.clone());
        }
        let crs = self.load_or_make_crs(shape).await?;
        let hashed = crs.clone();
        let hash = tokio::task::spawn_blocking(move || zk::crs_hash(&hashed))
            .await
            .map_err(internal)?;
        cache.insert(*shape, (crs.clone(), hash));
        Ok((crs, hash))
    }

    async fn load_or_make_crs(&self, shape: &Shape) -> Result<Arc<Crs>, RenterError> {
        let key = shape.crs_cache_key();
        let path = self.crs_dir.join(format!("renter-{key}.crs"));
        let shape = *shape;
        let lock_path = self.crs_dir.join(format!("renter-{key}.lock"));
        let crs = tokio::task::spawn_blocking(move || {
            // One generation per shape even when several plugins share the cache.
            let lock = std::fs::File::create(&lock_path).map_err(internal)?;
            lock.lock().map_err(internal)?;
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(crs) = zk::deserialize_trusted_crs(&bytes) {
                    return Ok(crs);
                }
            }
            tracing::info!(
                circuit_version = zk::circuit::CIRCUIT_VERSION,
                cache_key = %key,
                "generating a CRS for this TX2 shape (once): none cached under this circuit \
                 version and shape (CRSs of older versions have other names and are never read)"
            );
            let crs = zk::setup(&shape, &mut rand::rngs::OsRng).map_err(internal)?;
            crate::files::write_atomically(&path, &zk::serialize_trusted_crs(&crs))
                .map_err(internal)?;
            Ok::<_, RenterError>(crs)
        })
        .await
        .map_err(internal)??;
        if crate::dev_fault!(self.dev_fault, SubvertCrs) {
            return Ok(Arc::new(subverted(crs)));
        }
        Ok(Arc::new(crs))
    }

    /// Offers the CRS by hash; sends its bytes first if the farmer has not checked it.
    pub(super) async fn get_proof(
        &self,
        record: &mut RentedContract,
        crs: &Arc<Crs>,
        crs_hash: [u8; 32],
    ) -> Result<ProofReady, RenterError> {
        let offer = CrsOffer { crs_hash };
        match self
            .exchange::<_, ProofReady>(record, &offer, SLOW_CALL)
            .await
        {
            Err(RenterError::Peer(PeerCallError::Refused(e))) if e.code == UNKNOWN_CRS => {}
            other => return other,
        }
        let bytes = {
            let crs = crs.clone();
            tokio::task::spawn_blocking(move || zk::serialize_crs(&crs))
                .await
                .map_err(internal)?
        };
        let download_id = record
            .downloads
            .last()
            .map(|d| d.download_id)
            .ok_or_else(|| internal("no download"))?;
        self.client(record)
            .put_crs(&record.contract_id, &download_id, bytes)
            .await?;
        self.exchange(record, &offer, SLOW_CALL).await
    }
}

/// A CRS whose δ is the identity, so that anyone can prove anything under it (the first
/// subversion of the Groth16 issue's list), for `--dev-fault subvert-crs` only.
fn subverted(mut crs: Crs) -> Crs {
    use ark_ec::AffineRepr;
    crs.vk.delta_g2 = ark_bn254::G2Affine::zero();
    crs.delta_g1 = ark_bn254::G1Affine::zero();
    crs
}
