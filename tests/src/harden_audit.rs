//! Helpers for the audit hardening tests (issue 15, items 3, 4 and 6): what a hostile
//! renter knows (its own salts, read from its plugin's metadata store once the process is
//! stopped), posting a salt release to the farmer's unauthenticated endpoint, and mining
//! block by block while the towers keep up.

use std::path::Path;
use std::time::Duration;

use bitcoin::Txid;
use dstore_protocol::audit::book::AuditBook;
use dstore_protocol::audit::candidates::{Candidate, CandidateSecret};
use dstore_protocol::audit::messages::ProposedTerms;
use dstore_protocol::audit::opening;
use dstore_protocol::audit::wire::{RevealRequest, REVEAL_PATH};
use serde_json::{json, Value};

use crate::market::Market;
use crate::{wait_until, BitcoinNode, TowerProcess};

/// What the renter holds of a contract's audits: the book and every kept candidate's
/// secret (index, salt), per audit in the book's order.
pub struct RenterSecrets {
    pub book: AuditBook,
    pub kept: Vec<Vec<CandidateSecret>>,
}

impl RenterSecrets {
    /// Reads them from the (stopped) renter plugin's RocksDB under `datadir`.
    pub fn read(datadir: &Path, contract_hex: &str) -> Self {
        let db = dstore_plugin::db::Db::open(&datadir.join("regtest").join("db"))
            .expect("the renter's metadata store (is the renter stopped?)");
        let record: Value = db
            .get(&format!(
                "{}{contract_hex}",
                dstore_plugin::db::prefix::RENTED
            ))
            .expect("readable")
            .expect("the rented contract");
        let audit = &record["audit"];
        let candidates: Vec<Vec<Candidate>> =
            serde_json::from_value(audit["candidates"].clone()).expect("candidates");
        let seed: [u8; 32] = serde_json::from_value(audit["seed"].clone()).expect("toss seed");
        let book: AuditBook = serde_json::from_value(audit["book"].clone()).expect("book");
        let kept = opening::kept(&candidates, &seed)
            .into_iter()
            .map(|a| a.into_iter().map(|c| c.secret).collect())
            .collect();
        RenterSecrets { book, kept }
    }

    pub fn candidate_txid(&self, audit: u32, j: u32) -> Txid {
        self.book
            .candidate(audit, j)
            .expect("candidate")
            .tx
            .compute_txid()
    }

    /// A well-formed release of candidate j of audit i.
    pub fn release(&self, audit: u32, j: u32) -> RevealRequest {
        RevealRequest {
            contract_id: self.book.terms.contract_id,
            audit,
            candidate: j,
            candidate_txid: self.candidate_txid(audit, j),
            secret: self.kept[audit as usize][j as usize],
        }
    }
}

/// POSTs `request` to the farmer's reveal endpoint; the HTTP status and JSON body.
pub fn post_reveal(peer_url: &str, request: &RevealRequest) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{peer_url}{REVEAL_PATH}"))
        .json(request)
        .send()
        .expect("the farmer's peer endpoint answers");
    let code = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(json!(text)))
}

pub fn in_mempool(node: &BitcoinNode, txid: &Txid) -> bool {
    node.rpc("getmempoolentry", json!([txid.to_string()]))
        .is_ok()
}

pub fn confirmations(node: &BitcoinNode, txid: &Txid) -> u64 {
    node.rpc("getrawtransaction", json!([txid.to_string(), true]))
        .ok()
        .and_then(|t| t["confirmations"].as_u64())
        .unwrap_or(0)
}

/// Mines one block and waits until every tower has processed it.
pub fn mine_one(node: &BitcoinNode, towers: &[&TowerProcess]) {
    node.mine(1);
    let tip = node.block_count();
    for tower in towers {
        tower.wait_for_tip(tip);
    }
}

/// Mines block by block until the tip is `height`.
pub fn mine_to(node: &BitcoinNode, towers: &[&TowerProcess], height: u64) {
    while node.block_count() < height {
        mine_one(node, towers);
    }
}

/// Waits until one of `txids` is in the mempool; returns its position.
pub fn wait_for_one_in_mempool(node: &BitcoinNode, txids: &[Txid]) -> usize {
    wait_until(
        "a candidate in the mempool",
        Duration::from_secs(30),
        || txids.iter().position(|t| in_mempool(node, t)),
    )
}

/// Polls `check` every 100 ms until it returns `Some`, or gives `None` after `timeout`
/// (for a state that may or may not come after one block).
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An open request from a fresh renter identity made from `id` (no upload), then one audit
/// proposal posted to the farmer: 4 audits of 20 000 sat every 8 blocks, W = 6, 4 locks per
/// audit (m = 2), fees of 1 000 and 3 000 sat and the least stake those terms need, as
/// `edit` changes them. The farmer's HTTP status and JSON reply.
pub fn propose_audit(
    m: &Market,
    id: [u8; 32],
    edit: impl FnOnce(&mut ProposedTerms),
) -> (u16, Value) {
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
    use bitcoin::{Amount, ScriptBuf, WPubkeyHash};
    use dstore_protocol::audit::book::KeptLock;
    use dstore_protocol::audit::messages::AuditProposal;
    use dstore_protocol::audit::stake::required_stake;
    use dstore_protocol::messages::OpenRequest;
    use dstore_protocol::peer;

    let renter = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[id[0]; 32]).unwrap());
    let open = OpenRequest {
        file_length: 100,
        download_price: Amount::from_sat(crate::market::TEST_PRICE_SAT),
    };
    let (code, body) = m.post_message("open_request", peer::sign(&renter, id, 0, &open).unwrap());
    assert_eq!(code, 200, "{body}");
    let key = renter.public_key();
    let amount = Amount::from_sat(20_000);
    let mut terms = ProposedTerms {
        renter_funding_key: key,
        renter_claim_key: key,
        first_audit_height: 500,
        period: 8,
        claim_window: 6,
        audits: 4,
        amount,
        candidate_fee: Amount::from_sat(1_000),
        refund_fee: Amount::from_sat(3_000),
        stake: required_stake(amount, 2),
    };
    edit(&mut terms);
    let proposal = AuditProposal {
        terms,
        renter_destination: ScriptBuf::new_p2wpkh(&WPubkeyHash::all_zeros()),
        locks: vec![vec![KeptLock([0; 20]); 4]; 4],
        refund_anchor: None,
    };
    m.post_message(
        "audit_proposal",
        peer::sign(&renter, id, 1, &proposal).unwrap(),
    )
}
