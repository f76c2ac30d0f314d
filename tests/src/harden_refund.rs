//! A hostile farmer for the refund tests (issue 15, item 5): it takes the TX2 a real
//! farmer plugin stored (signed by the renter, withheld by `--dev-fault withhold-tx2`) and
//! its own seed, and re-signs TX2 under fresh nonces: a valid TX2' that spends TX1 but
//! reveals nothing and has another txid than the TX2 the renter expects.

use std::path::Path;

use bitcoin::secp256k1::{Message, SECP256K1};
use bitcoin::Transaction;
use dstore_plugin::db::{self, Db};
use dstore_plugin::farmer::records::FarmedContract;
use dstore_protocol::contract::twin_secret;
use dstore_protocol::keys::{derive_key, Role};

/// TX2' for contract `id` of the (stopped) farmer plugin whose datadir is `farmer_dir`.
pub fn tx2_with_fresh_nonces(farmer_dir: &Path, id: &[u8; 32]) -> Transaction {
    let network_dir = farmer_dir.join("regtest");
    let seed_hex = std::fs::read_to_string(network_dir.join("seed")).expect("farmer seed");
    let seed: [u8; 32] = hex::decode(seed_hex.trim())
        .expect("seed is hex")
        .try_into()
        .expect("32-byte seed");
    let db = Db::open(&network_dir.join("db")).expect("farmer db (farmer stopped)");
    let record: FarmedContract = db
        .get(&db::key(db::prefix::FARMED, id))
        .expect("readable record")
        .expect("the farmer stored the contract");
    let download = record.download.expect("a download");
    let contract = download.contract.expect("the agreed contract");
    let unsigned = download.unsigned_tx2.expect("TX2 offered");
    let template = download.template.expect("the stored, signed TX2");
    let f = derive_key(&seed, Role::Download, download.key_index).expect("f");
    assert_eq!(
        f.public_key(SECP256K1),
        contract.farmer_key,
        "f is the contract's F"
    );
    let z = Message::from_digest(contract.tx2_sighash(&unsigned).expect("sighash"));
    let sig_r = renter_signature(&template.tx, &z, &contract.renter_key);
    let twin = twin_secret(&f, &contract.contract_id).expect("twin key");
    let sig_f = SECP256K1.sign_ecdsa_low_r(&z, &f);
    let sig_twin = SECP256K1.sign_ecdsa_low_r(&z, &twin);
    contract
        .finalize_tx2(&unsigned, sig_f, sig_twin, sig_r)
        .expect("TX2' assembles")
}

/// The renter's signature among the pushes of TX2's scriptSig.
fn renter_signature(
    tx2: &Transaction,
    z: &Message,
    renter_key: &bitcoin::secp256k1::PublicKey,
) -> bitcoin::ecdsa::Signature {
    tx2.input[0]
        .script_sig
        .instructions()
        .filter_map(|i| i.ok()?.push_bytes().map(|b| b.as_bytes().to_vec()))
        .filter_map(|bytes| bitcoin::ecdsa::Signature::from_slice(&bytes).ok())
        .find(|sig| {
            SECP256K1
                .verify_ecdsa(z, &sig.signature, renter_key)
                .is_ok()
        })
        .expect("TX2 carries the renter's signature")
}
