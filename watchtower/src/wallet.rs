//! The tower's own key: a P2WPKH address that pre-signed transactions may pay (their
//! output is then CPFP-able) and that holds the coins the tower spends on bumps. The
//! key is stored hex-encoded in `<datadir>/<network>/wallet.key`, mode 0600.

use std::path::Path;

use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::{Address, CompressedPublicKey, ScriptBuf};
use dstore_daemon::cookie::write_secret_file;
use dstore_protocol::network::Network;
use dstore_protocol::watch::cpfp::own_script;

pub struct TowerWallet {
    pub secret: SecretKey,
    pub address: Address,
}

impl TowerWallet {
    /// Loads the key from `path`, creating it on first start.
    pub fn load_or_create(path: &Path, network: Network) -> std::io::Result<TowerWallet> {
        let secret = match std::fs::read_to_string(path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .and_then(|b| SecretKey::from_slice(&b).ok())
                .ok_or_else(|| {
                    std::io::Error::other(format!("{} does not hold a key", path.display()))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = SecretKey::new(&mut bitcoin::secp256k1::rand::thread_rng());
                write_secret_file(path, hex::encode(secret.secret_bytes()).as_bytes())?;
                secret
            }
            Err(e) => return Err(e),
        };
        let public = CompressedPublicKey(secret.public_key(SECP256K1));
        Ok(TowerWallet {
            secret,
            address: Address::p2wpkh(&public, network.to_bitcoin()),
        })
    }

    pub fn script(&self) -> ScriptBuf {
        own_script(&self.secret)
    }
}
