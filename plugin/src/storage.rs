//! The farmer's blob storage: stored ciphertexts live behind the `object_store` crate (a
//! local directory by default; S3-compatible stores such as MinIO, Ceph or AWS are a
//! matter of handing [`BlobStore::with_store`] another `ObjectStore`), and uploads in
//! progress live in a local staging file each, so a broken connection or a restart
//! resumes where the stored bytes end.
//!
//! Staging writes are plain synchronous file I/O (call them from `spawn_blocking`); each
//! append is flushed to disk before it returns, and the caller records the new length
//! (with the Merkle checkpoint) only afterwards. After a crash the staging file may hold
//! more bytes than were recorded: [`BlobStore::truncate_staged`] cuts it back. Appends to
//! one contract's upload must come from one writer at a time (the caller serialises them
//! per contract); the offset check is not atomic with the write.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Chunk size when moving a finished upload into the object store (S3's minimum part size
/// is 5 MiB).
const COMMIT_CHUNK: usize = 8 << 20;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("staged upload has {stored} bytes; a chunk at offset {offset} does not follow")]
    WrongOffset { stored: u64, offset: u64 },
    #[error("no blob stored for contract {0}")]
    NotFound(String),
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad storage URL {0}")]
    BadUrl(String),
    #[error("object store failed: {0}")]
    Store(#[from] object_store::Error),
}

/// Blobs keyed by contract id.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    staging: PathBuf,
    /// The objects directory when the store is [`BlobStore::local`]: a finished upload is
    /// then renamed into place instead of copied, and a blob is read as a plain file.
    local_objects: Option<PathBuf>,
}

fn blob_path(id: &[u8; 32]) -> Path {
    Path::from(format!("blobs/{}", hex::encode(id)))
}

impl BlobStore {
    /// The default: blobs under `<dir>/objects`, staging under `<dir>/staging`.
    pub fn local(dir: &FsPath) -> Result<BlobStore, StorageError> {
        let objects = dir.join("objects");
        fs::create_dir_all(&objects)?;
        let store = LocalFileSystem::new_with_prefix(&objects)?;
        let mut blobs = BlobStore::with_store(Arc::new(store), dir.join("staging"))?;
        blobs.local_objects = Some(objects);
        Ok(blobs)
    }

    /// Blobs in the object store a URL names (`s3://bucket/prefix` for S3-compatible
    /// stores, configured by the standard `AWS_*` environment variables such as
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and
    /// `AWS_ALLOW_HTTP`), staging under `staging`.
    pub fn from_url(url: &str, staging: PathBuf) -> Result<BlobStore, StorageError> {
        let parsed =
            url::Url::parse(url).map_err(|e| StorageError::BadUrl(format!("{url}: {e}")))?;
        let options = std::env::vars().filter(|(key, _)| key.starts_with("AWS_"));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        BlobStore::with_store(store, staging)
    }

    /// Blobs in any object store, staging in a local directory.
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        staging: PathBuf,
    ) -> Result<BlobStore, StorageError> {
        fs::create_dir_all(&staging)?;
        Ok(BlobStore {
            store,
            staging,
            local_objects: None,
        })
    }

    /// The file holding contract `id`'s blob, when the store is a local directory and the
    /// blob exists (read it directly instead of copying it out).
    pub fn local_file(&self, id: &[u8; 32]) -> Option<PathBuf> {
        let path = self.local_objects.as_ref()?.join(blob_path(id).as_ref());
        path.is_file().then_some(path)
    }

    fn staging_file(&self, id: &[u8; 32]) -> PathBuf {
        self.staging.join(hex::encode(id))
    }

    /// Bytes staged so far for `id` (0 if none).
    pub fn staged_len(&self, id: &[u8; 32]) -> Result<u64, StorageError> {
        match fs::metadata(self.staging_file(id)) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `data` at `offset`, which must be the staged length, and flushes it to disk.
    pub fn append_staged(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let stored = self.staged_len(id)?;
        if offset != stored {
            return Err(StorageError::WrongOffset { stored, offset });
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.staging_file(id))?;
        file.write_all(data)?;
        file.sync_data()?;
        Ok(())
    }

    /// Cuts the staged upload back to `len` bytes (the length last recorded).
    pub fn truncate_staged(&self, id: &[u8; 32], len: u64) -> Result<(), StorageError> {
        let path = self.staging_file(id);
        if len == 0 && !path.exists() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() > len {
            file.set_len(len)?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// Reads `len` bytes of the staged upload from `offset` (for re-hashing).
    pub fn read_staged(
        &self,
        id: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let mut file = File::open(self.staging_file(id))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut out = vec![0u8; len];
        file.read_exact(&mut out)?;
        Ok(out)
    }

    /// Moves a complete staged upload into the object store (renamed into a local one,
    /// else streamed in 8 MiB parts) and removes the staging file.
    pub async fn commit(&self, id: &[u8; 32]) -> Result<u64, StorageError> {
        let staging = self.staging_file(id);
        if let Some(objects) = &self.local_objects {
            return rename_into(&staging, &objects.join(blob_path(id).as_ref()));
        }
        let upload = self.store.put_multipart(&blob_path(id)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, COMMIT_CHUNK);
        let mut file = tokio::fs::File::open(&staging).await?;
        let mut buffer = vec![0u8; COMMIT_CHUNK];
        let mut total = 0u64;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await?;
            writer.write(&buffer[..n]);
            total += n as u64;
        }
        writer.finish().await?;
        tokio::fs::remove_file(&staging).await?;
        Ok(total)
    }

    /// Size of the stored blob for `id`.
    pub async fn size(&self, id: &[u8; 32]) -> Result<u64, StorageError> {
        match self.store.head(&blob_path(id)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(hex::encode(id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes `range` of the stored blob for `id`.
    pub async fn read_range(
        &self,
        id: &[u8; 32],
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        match self.store.get_range(&blob_path(id), range).await {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(hex::encode(id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the blob and any staged upload for `id`.
    pub async fn delete(&self, id: &[u8; 32]) -> Result<(), StorageError> {
        match self.store.delete(&blob_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::remove_file(self.staging_file(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Renames the synced `staging` file to `dest` (same file system) and syncs the directory
/// that now holds it; returns its length.
fn rename_into(staging: &FsPath, dest: &FsPath) -> Result<u64, StorageError> {
    let length = fs::metadata(staging)?.len();
    let dir = dest
        .parent()
        .ok_or_else(|| StorageError::BadUrl(dest.display().to_string()))?;
    fs::create_dir_all(dir)?;
    fs::rename(staging, dest)?;
    File::open(dir)?.sync_all()?;
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + 1) as u8).collect()
    }

    #[tokio::test]
    async fn staged_upload_resumes_commits_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = [7u8; 32];
        let bytes = data(3 * COMMIT_CHUNK / 2 + 5);
        let store = BlobStore::local(dir.path()).unwrap();
        assert_eq!(store.staged_len(&id).unwrap(), 0);
        store.append_staged(&id, 0, &bytes[..1000]).unwrap();
        // A chunk that does not follow is refused and changes nothing.
        assert!(matches!(
            store.append_staged(&id, 0, &bytes[..10]),
            Err(StorageError::WrongOffset {
                stored: 1000,
                offset: 0
            })
        ));
        assert_eq!(store.staged_len(&id).unwrap(), 1000);
        // A restart: a fresh handle on the same directory sees the staged bytes.
        drop(store);
        let store = BlobStore::local(dir.path()).unwrap();
        assert_eq!(store.staged_len(&id).unwrap(), 1000);
        store.append_staged(&id, 1000, &bytes[1000..]).unwrap();
        assert_eq!(store.read_staged(&id, 999, 3).unwrap(), bytes[999..1002]);
        assert_eq!(store.commit(&id).await.unwrap(), bytes.len() as u64);
        assert_eq!(store.staged_len(&id).unwrap(), 0);
        assert_eq!(store.size(&id).await.unwrap(), bytes.len() as u64);
        let start = COMMIT_CHUNK as u64 - 3;
        let got = store.read_range(&id, start..start + 10).await.unwrap();
        assert_eq!(&got[..], &bytes[start as usize..start as usize + 10]);
        assert!(store.read_range(&id, 0..0).await.unwrap().is_empty());
        store.delete(&id).await.unwrap();
        assert!(matches!(
            store.size(&id).await,
            Err(StorageError::NotFound(_))
        ));
        store.delete(&id).await.unwrap();
    }

    #[tokio::test]
    async fn crash_leftovers_are_truncated_to_the_recorded_length() {
        let dir = tempfile::tempdir().unwrap();
        let id = [8u8; 32];
        let store = BlobStore::local(dir.path()).unwrap();
        store.append_staged(&id, 0, &data(5000)).unwrap();
        store.truncate_staged(&id, 4096).unwrap();
        assert_eq!(store.staged_len(&id).unwrap(), 4096);
        store.truncate_staged(&[9u8; 32], 0).unwrap();
        assert_eq!(store.staged_len(&[9u8; 32]).unwrap(), 0);
        assert!(matches!(
            store.read_range(&[9u8; 32], 0..1).await,
            Err(StorageError::NotFound(_))
        ));
    }
}
