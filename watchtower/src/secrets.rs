//! The auditor's secrets at rest: AES-256-GCM under a 32-byte key kept in
//! `<datadir>/<network>/auditor.key` (hex, mode 0600, created the first time a secret is
//! sealed), a fresh random nonce per sealing, and the watch id as associated data so a
//! sealed blob cannot be moved to another watch. The database only ever sees [`Sealed`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use dstore_daemon::cookie::write_secret_file;
use serde::{Deserialize, Serialize};

/// Name of the key file in the network directory.
pub const KEY_FILE: &str = "auditor.key";

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or create the auditor key {path}: {source}")]
    Key {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} does not hold a 32-byte hex key")]
    BadKey(String),
    #[error("the auditor key {0} is missing, so the stored auditor secrets cannot be read")]
    MissingKey(String),
    #[error("stored auditor secrets do not decrypt with the auditor key (wrong key or tampered)")]
    Decrypt,
    #[error("cannot encrypt the auditor secrets")]
    Encrypt,
}

/// An encrypted blob as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
}

/// Seals and opens secrets with the auditor key, loading (or creating) it on first use.
pub struct SecretBox {
    path: PathBuf,
    cipher: Mutex<Option<Aes256Gcm>>,
}

impl SecretBox {
    pub fn new(path: &Path) -> Self {
        SecretBox {
            path: path.to_path_buf(),
            cipher: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encrypts `plaintext` bound to `context` (the watch id).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Sealed, SecretsError> {
        let cipher = self.cipher(true)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext,
            aad: context,
        };
        let ciphertext = cipher
            .encrypt(&nonce, payload)
            .map_err(|_| SecretsError::Encrypt)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a blob sealed for `context`.
    pub fn open(&self, context: &[u8], sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        if sealed.nonce.len() != NONCE_LEN {
            return Err(SecretsError::Decrypt);
        }
        let cipher = self.cipher(false)?;
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: context,
        };
        cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), payload)
            .map_err(|_| SecretsError::Decrypt)
    }

    /// The cipher, reading the key file (or creating it when `create`).
    fn cipher(&self, create: bool) -> Result<Aes256Gcm, SecretsError> {
        let mut cached = self.cipher.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cipher) = cached.as_ref() {
            return Ok(cipher.clone());
        }
        let cipher = Aes256Gcm::new(&self.load_key(create)?);
        *cached = Some(cipher.clone());
        Ok(cipher)
    }

    fn load_key(&self, create: bool) -> Result<Key<Aes256Gcm>, SecretsError> {
        let shown = self.path.display().to_string();
        let io = |source| SecretsError::Key {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let bytes =
                    hex::decode(text.trim()).map_err(|_| SecretsError::BadKey(shown.clone()))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| SecretsError::BadKey(shown.clone()))?;
                Ok(bytes.into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Aes256Gcm::generate_key(&mut OsRng);
                write_secret_file(&self.path, hex::encode(key).as_bytes()).map_err(io)?;
                tracing::info!(path = %shown, "auditor key created");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SecretsError::MissingKey(shown))
            }
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let secrets = SecretBox::new(&path);
        assert!(matches!(
            secrets.open(
                b"w",
                &Sealed {
                    nonce: vec![0; 12],
                    ciphertext: vec![0; 20]
                }
            ),
            Err(SecretsError::MissingKey(_))
        ));
        let sealed = secrets.seal(b"watch", b"salt").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(sealed.ciphertext, b"salt");
        assert_ne!(secrets.seal(b"watch", b"salt").unwrap().nonce, sealed.nonce);
        // A fresh box reads the same key from the file.
        let again = SecretBox::new(&path);
        assert_eq!(again.open(b"watch", &sealed).unwrap(), b"salt");
        assert!(matches!(
            again.open(b"other watch", &sealed),
            Err(SecretsError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(again.open(b"watch", &tampered).is_err());
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            SecretBox::new(&path).open(b"watch", &sealed),
            Err(SecretsError::BadKey(_))
        ));
    }
}
