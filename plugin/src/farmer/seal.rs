//! The sealed copy E of a download (PROTOCOL.md 3.1): the stored file copied out of the
//! object store and sealed with randomness only this farmer knows, then served to the
//! renter, who checks it before funding TX1.

use std::path::{Path, PathBuf};

use dstore_protocol::seal::{SealContext, SealTranscript};

use super::records::FarmerPhase;
use super::{internal, Farmer, FarmerError};

impl Farmer {
    /// Seals the stored file of contract `id` for download `download_id` under `context`
    /// into [`Farmer::sealed_path`]; returns the signed transcript (A, root_E).
    pub(super) async fn seal_copy(
        &self,
        id: &[u8; 32],
        download_id: &[u8; 32],
        context: SealContext,
    ) -> Result<SealTranscript, FarmerError> {
        let sealed_path = self.sealed_path(download_id);
        let wrong_data = crate::dev_fault!(self.config.dev_fault, SealWrongData);
        // A local store's blob is sealed where it lies; any other is copied out first.
        let (plain, copied) = match self.blobs.local_file(id).filter(|_| !wrong_data) {
            Some(path) => (path, None),
            None => {
                let copy = self.config.work_dir.join(format!("{}.c", hex::encode(id)));
                self.copy_blob(id, &copy).await?;
                if wrong_data {
                    flip_first_byte(&copy).map_err(internal)?;
                }
                (copy.clone(), Some(copy))
            }
        };
        let identity = self.identity;
        let sealed = sealed_path.clone();
        let transcript = tokio::task::spawn_blocking(move || {
            let input = std::fs::File::open(&plain)?;
            let output = std::fs::File::create(&sealed)?;
            seal_into(&context, &identity, input, output)
        })
        .await
        .map_err(internal)?
        .map_err(internal);
        if let Some(copy) = copied {
            let _ = std::fs::remove_file(copy);
        }
        let transcript = transcript?;
        if crate::dev_fault!(self.config.dev_fault, FlipSealedByte) {
            flip_first_byte(&sealed_path).map_err(internal)?;
        }
        Ok(transcript)
    }

    /// Where the sealed copy E of a download lives.
    pub fn sealed_path(&self, download_id: &[u8; 32]) -> PathBuf {
        self.config
            .work_dir
            .join(format!("{}.sealed", hex::encode(download_id)))
    }

    /// The sealed copy the renter may fetch now for contract `id`, if any.
    pub fn current_sealed(&self, id: &[u8; 32]) -> Result<PathBuf, FarmerError> {
        let record = self.existing(id)?;
        if let Some(ln) = record.current_ln_download() {
            return Ok(self.sealed_path(&ln.download_id));
        }
        match &record.download {
            Some(d) if d.phase != FarmerPhase::Offered && d.phase != FarmerPhase::Aborted => {
                Ok(self.sealed_path(&d.download_id))
            }
            _ => Err(FarmerError::WrongPhase("no sealed copy is ready")),
        }
    }

    pub(super) async fn copy_blob(&self, id: &[u8; 32], dest: &Path) -> Result<(), FarmerError> {
        use tokio::io::AsyncWriteExt;
        let size = self.blobs.size(id).await.map_err(internal)?;
        let mut out = tokio::fs::File::create(dest).await.map_err(internal)?;
        let mut at = 0u64;
        while at < size {
            let end = (at + (8 << 20)).min(size);
            let bytes = self.blobs.read_range(id, at..end).await.map_err(internal)?;
            out.write_all(&bytes).await.map_err(internal)?;
            at = end;
        }
        out.flush().await.map_err(internal)?;
        Ok(())
    }
}

/// Seals `input` into `output` (fresh ρ): the keystream on this thread, the hashing and
/// writing of E on a second one (`dstore_protocol::seal::seal`); returns the signed
/// transcript.
fn seal_into(
    context: &SealContext,
    identity: &bitcoin::secp256k1::Keypair,
    input: std::fs::File,
    output: std::fs::File,
) -> std::io::Result<SealTranscript> {
    let input = std::io::BufReader::with_capacity(crate::pipe::PIPE_BLOCK, input);
    let output = std::io::BufWriter::with_capacity(crate::pipe::PIPE_BLOCK, output);
    dstore_protocol::seal::seal(&mut rand::thread_rng(), context, identity, input, output)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Flips the first byte of a file, if it has one (test-only faults).
pub(super) fn flip_first_byte(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8; 1];
    if file.read(&mut byte)? == 1 {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&[byte[0] ^ 0x01])?;
    }
    Ok(())
}
