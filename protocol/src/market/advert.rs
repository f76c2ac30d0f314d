//! Signed adverts: a farmer's current terms (price, capacity, limits, version), signed by its
//! identity key and served from `/dstore/v1/info`.
//!
//! Signature: BIP340 without aux randomness by the identity key over
//! `tagged_hash("dstore/advert", serde_json bytes of the Advert)`. The JSON is canonical
//! because the struct's field order is fixed and every field is a plain value.

use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use serde::{Deserialize, Serialize};

use super::announce::check_peer_url;
use super::MarketError;
use crate::hashing::tagged_hash;

/// Largest serialized advert a renter accepts.
pub const MAX_ADVERT_BYTES: usize = 4096;

/// A farmer's terms as of `issued_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub identity: XOnlyPublicKey,
    pub network: String,
    pub peer_url: String,
    pub version: String,
    pub price_per_download_sat: u64,
    pub max_file_bytes: u64,
    pub free_bytes: u64,
    pub audits: bool,
    pub min_claim_window_blocks: u32,
    /// Unix seconds by the farmer's clock, for freshness.
    pub issued_at: u64,
    /// The farmer's Lightning node, when it sells downloads over Lightning (mode N,
    /// PROTOCOL.md 4b). Left out of the JSON when absent, so adverts without it sign and
    /// verify exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightning: Option<AdvertLightning>,
}

/// A farmer's Lightning node in its advert: the node id and the "host:port" to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertLightning {
    pub node_id: bitcoin::secp256k1::PublicKey,
    pub address: String,
}

/// An advert with its identity's BIP340 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAdvert {
    pub advert: Advert,
    pub signature: schnorr::Signature,
}

impl Advert {
    /// The canonical bytes that are signed (serde_json of the struct).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an advert of plain fields always serialises")
    }

    fn message(&self) -> Message {
        Message::from_digest(tagged_hash("dstore/advert", &[&self.canonical_bytes()]))
    }
}

/// Signs `advert` with the identity key (deterministic BIP340, no aux randomness). The
/// signature verifies only if `advert.identity` is this key's x-only key.
pub fn sign_advert(identity: &Keypair, advert: Advert) -> SignedAdvert {
    let signature = SECP256K1.sign_schnorr_no_aux_rand(&advert.message(), identity);
    SignedAdvert { advert, signature }
}

impl SignedAdvert {
    /// Size (<= 4096 bytes serialized), URL rules (as announcements) and the signature under
    /// `advert.identity`.
    pub fn verify(&self) -> Result<(), MarketError> {
        let size = self.advert.canonical_bytes().len();
        if size > MAX_ADVERT_BYTES {
            return Err(MarketError::TooLarge {
                what: "advert",
                size,
                max: MAX_ADVERT_BYTES,
            });
        }
        check_peer_url(&self.advert.peer_url)?;
        SECP256K1
            .verify_schnorr(
                &self.signature,
                &self.advert.message(),
                &self.advert.identity,
            )
            .map_err(|_| MarketError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::identity_keypair;

    fn keypair(seed: u8) -> Keypair {
        identity_keypair(&[seed; 32]).unwrap()
    }

    fn advert(kp: &Keypair) -> Advert {
        Advert {
            identity: kp.x_only_public_key().0,
            network: "regtest".into(),
            peer_url: "http://127.0.0.1:9735".into(),
            version: "0.1.0".into(),
            price_per_download_sat: 1_000,
            max_file_bytes: 1 << 30,
            free_bytes: 1 << 32,
            audits: true,
            min_claim_window_blocks: 6,
            issued_at: 1_700_000_000,
            lightning: None,
        }
    }

    #[test]
    fn signed_advert_verifies_and_survives_json() {
        let kp = keypair(1);
        let signed = sign_advert(&kp, advert(&kp));
        signed.verify().unwrap();
        assert_eq!(signed, sign_advert(&kp, advert(&kp)), "deterministic");
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedAdvert = serde_json::from_str(&json).unwrap();
        back.verify().unwrap();
        // Whitespace in the transport does not matter: the signature is over the struct.
        let pretty = serde_json::to_string_pretty(&signed).unwrap();
        serde_json::from_str::<SignedAdvert>(&pretty)
            .unwrap()
            .verify()
            .unwrap();
    }

    #[test]
    fn a_lightning_node_is_signed_and_its_absence_changes_nothing() {
        let kp = keypair(5);
        let plain = advert(&kp);
        assert!(!String::from_utf8(plain.canonical_bytes())
            .unwrap()
            .contains("lightning"));
        let mut with_ln = advert(&kp);
        with_ln.lightning = Some(AdvertLightning {
            node_id: kp.public_key(),
            address: "127.0.0.1:9735".into(),
        });
        let signed = sign_advert(&kp, with_ln);
        let back: SignedAdvert =
            serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        back.verify().unwrap();
        let mut moved = back.clone();
        moved.advert.lightning.as_mut().unwrap().node_id = keypair(6).public_key();
        assert_eq!(moved.verify(), Err(MarketError::BadSignature));
        let mut dropped = back;
        dropped.advert.lightning = None;
        assert_eq!(dropped.verify(), Err(MarketError::BadSignature));
    }

    #[test]
    fn tampered_or_foreign_adverts_fail() {
        let kp = keypair(2);
        let mut cheaper = sign_advert(&kp, advert(&kp));
        cheaper.advert.price_per_download_sat = 1;
        assert_eq!(cheaper.verify(), Err(MarketError::BadSignature));
        let mut redirected = sign_advert(&kp, advert(&kp));
        redirected.advert.peer_url = "http://evil.example".into();
        assert_eq!(redirected.verify(), Err(MarketError::BadSignature));
        // Signed by another key than the identity it names.
        let other = keypair(3);
        let foreign = sign_advert(&other, advert(&kp));
        assert_eq!(foreign.verify(), Err(MarketError::BadSignature));
    }

    #[test]
    fn oversized_adverts_and_bad_urls_are_refused() {
        let kp = keypair(4);
        let mut big = advert(&kp);
        big.version = "v".repeat(MAX_ADVERT_BYTES);
        assert!(matches!(
            sign_advert(&kp, big).verify(),
            Err(MarketError::TooLarge { what: "advert", .. })
        ));
        let mut bad_url = advert(&kp);
        bad_url.peer_url = "http://a b".into();
        assert!(matches!(
            sign_advert(&kp, bad_url).verify(),
            Err(MarketError::BadUrl(_))
        ));
    }
}
