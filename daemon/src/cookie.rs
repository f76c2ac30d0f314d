//! RPC authentication the way bitcoind does it: a random cookie file and HTTP Basic auth.
//!
//! The cookie is `__cookie__:<64 hex chars>`, written with mode 0600 at every start and
//! deleted on clean exit (when the [`CookieFile`] is dropped).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The user name bitcoind puts in its cookie.
pub const COOKIE_USER: &str = "__cookie__";

/// A cookie written to disk; removed again on drop.
#[derive(Debug)]
pub struct CookieFile {
    path: PathBuf,
    credentials: String,
}

impl CookieFile {
    /// Writes a fresh random cookie to `path` (mode 0600), replacing any old one.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let credentials = format!("{COOKIE_USER}:{}", hex::encode(secret));
        write_secret_file(path, credentials.as_bytes())?;
        Ok(CookieFile {
            path: path.to_path_buf(),
            credentials,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when an `Authorization` header value carries this cookie's credentials.
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        let Some(decoded) = header.and_then(decode_basic) else {
            return false;
        };
        decoded.ct_eq(self.credentials.as_bytes()).into()
    }
}

impl Drop for CookieFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decodes `Basic <base64(user:password)>` to `user:password`.
fn decode_basic(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

/// Writes a file that holds a secret: created with mode 0600 via a temporary file and an
/// atomic rename, so a crash never leaves a half-written secret behind.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn basic(credentials: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn cookie_is_private_checked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regtest/.cookie");
        let cookie = CookieFile::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("__cookie__:") && text.len() == 11 + 64);
        assert!(cookie.authorizes(Some(&basic(&text))));
        assert!(!cookie.authorizes(Some(&basic("__cookie__:wrong"))));
        assert!(!cookie.authorizes(Some(b"Bearer abc")));
        assert!(!cookie.authorizes(Some(b"Basic !!!")));
        assert!(!cookie.authorizes(None));
        drop(cookie);
        assert!(!path.exists());
    }
}
