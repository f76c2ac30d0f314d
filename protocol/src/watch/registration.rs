//! What a plugin hands its watchtower per contract (PROTOCOL.md 6): the outpoint whose
//! spend reveals f, the pre-signed transactions to broadcast when valid, and the txids to
//! watch; parsed from hostile JSON with hard limits, and merged idempotently.
//!
//! An audit contract (PROTOCOL.md 5) registers up to N·m·3 + N transactions: every kept
//! candidate A_ij as `audit-{i}-candidate-{j}` in group i, then `audit-{i}-refund-after-{j}`
//! (RF_ij) and `audit-{i}-reclaim-{j}`, then `audit-{i}-refund` (RF_i); later the farmer's
//! claim as `audit-{i}-claim-{j}`. The registration's `id` must then be the audit
//! contract's id: the towers of both parties feed it to the beacon that picks which
//! candidate of a group they broadcast. The auditor's tower also gets an [`AuditorSpec`].

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use serde::{Deserialize, Serialize};

use crate::audit::book::AuditBook;
use crate::audit::candidates::{check_index, CandidateSecret};
use crate::merkle::segment_count;

pub use super::bump::Bump;

/// Most pre-signed transactions one registration may carry: an audit contract of N audits
/// with m kept candidates registers N·m·3 + N (N = 52, m = 8: 1,300).
pub const MAX_TRANSACTIONS: usize = 4096;
/// Most extra txids one registration may watch (an auditor-only registration watches
/// every candidate).
pub const MAX_WATCH_TXIDS: usize = 4096;
/// Largest pre-signed transaction accepted (bitcoind's standard weight limit / 4).
pub const MAX_TX_BYTES: usize = 100_000;
/// Most bytes (consensus encoding) of all pre-signed transactions of one registration
/// together. N = 52, m = 8 needs about 3.4 MB, mostly the RF_ij with their many inputs.
pub const MAX_REGISTRATION_TX_BYTES: usize = 8_000_000;
/// Largest registration as JSON: the transactions in hex, plus room for names, the audit
/// book and the secrets. The tower's RPC accepts `tower-register` bodies up to this size.
pub const MAX_REGISTRATION_JSON_BYTES: usize = 2 * MAX_REGISTRATION_TX_BYTES + 2_000_000;
/// Most candidates (N·m) an auditor spec may cover.
pub const MAX_AUDIT_CANDIDATES: usize = 4096;
/// Longest transaction name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest farmer URL of an auditor spec.
pub const MAX_URL_LEN: usize = 512;

/// Which side of the contract the registering plugin plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchRole {
    Renter,
    Farmer,
}

/// How to recover f from the transaction that spends TX1's output (PROTOCOL.md 3.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractSpec {
    pub tx1_outpoint: OutPoint,
    pub farmer_key: PublicKey,
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub tx1_script_pubkey: ScriptBuf,
}

/// A pre-signed transaction the tower broadcasts as soon as it is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presigned {
    pub name: String,
    #[serde(with = "tx_hex")]
    pub tx: Transaction,
    /// Alternatives: of the transactions sharing a group (an audit's candidates, which all
    /// spend the same output) the tower broadcasts only one, the beacon's choice
    /// (PROTOCOL.md 5), in the group's registration order. The members of a group share
    /// one block-height nLockTime T; the beacon reads block T − 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Conditions on top of validity: held until its parents are deep enough, and never
    /// broadcast late (a farmer's TX2, whose broadcast reveals f).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// A fee-bumped replacement of another registered transaction (a renter's refund
    /// signed at a higher fee): broadcast only once that one is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bump: Option<Bump>,
}

impl Presigned {
    /// A transaction broadcast on its own (no group).
    pub fn new(name: impl Into<String>, tx: Transaction) -> Self {
        Presigned {
            name: name.into(),
            tx,
            group: None,
            hold: None,
            bump: None,
        }
    }

    /// The same transaction, as a replacement of `replaces` once that one has been stuck
    /// for `after_blocks` blocks.
    pub fn bumping(mut self, replaces: impl Into<String>, after_blocks: u32) -> Self {
        self.bump = Some(Bump {
            replaces: replaces.into(),
            after_blocks,
        });
        self
    }

    /// The same transaction, broadcast only as `hold` allows.
    pub fn held(mut self, hold: Hold) -> Self {
        self.hold = Some(hold);
        self
    }
}

/// When a valid pre-signed transaction may be broadcast at all (PROTOCOL.md 3.3): a
/// farmer's TX2 reveals f, so it waits until TX1 cannot be taken back cheaply, and it
/// never goes out so close to T1 that the renter could still refund TX1 after learning f.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Not before every input's parent has this many confirmations; a reorg that takes
    /// them away puts the transaction back on hold.
    #[serde(default)]
    pub min_parent_confirmations: u32,
    /// Never broadcast at a tip at or above this height, unless it was already seen or
    /// accepted (then its secret is out anyway). Its registered children expire with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_from_height: Option<u32>,
}

/// What an auditor needs to run a contract's audits (PROTOCOL.md 5): the audit book, the
/// secret (index, salt) of every kept candidate, and where and what to challenge.
/// Only the auditor's tower gets one; it holds the secrets encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditorSpec {
    pub book: AuditBook,
    /// Per audit, the secrets of its kept candidates, in the book's kept-lock order.
    pub secrets: Vec<Vec<CandidateSecret>>,
    /// The farmer's peer endpoint base URL (e.g. `http://127.0.0.1:9735`).
    pub farmer_url: String,
    /// root_C and length of the stored ciphertext, for off-chain Merkle audits.
    #[serde(with = "hex::serde")]
    pub root_c: [u8; 32],
    pub length: u64,
}

/// One contract as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(with = "hex::serde")]
    pub id: [u8; 32],
    pub role: WatchRole,
    #[serde(default)]
    pub extract: Option<ExtractSpec>,
    #[serde(default)]
    pub transactions: Vec<Presigned>,
    #[serde(default)]
    pub watch_txids: Vec<Txid>,
    /// Where the tower looks back for events that happened before the registration.
    #[serde(default)]
    pub rescan_from_height: Option<u32>,
    /// Present when this tower is the contract's auditor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditor: Option<AuditorSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid registration: {0}")]
    Malformed(String),
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("transaction {0:?}: {1}")]
    BadTransaction(String, String),
    #[error("registration {id} conflicts with the one on record: {what}")]
    Conflict { id: String, what: String },
    #[error("the transactions take {bytes} bytes, more than the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("group {group}: {why}")]
    BadGroup { group: u32, why: String },
    #[error("auditor spec: {0}")]
    BadAuditor(String),
}

/// What a registration did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    Registered,
    Updated,
    Unchanged,
}

impl Registration {
    /// Parses and checks a registration from untrusted JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<Registration, RegistrationError> {
        let registration: Registration = serde_json::from_value(value.clone())
            .map_err(|e| RegistrationError::Malformed(e.to_string()))?;
        registration.check()?;
        Ok(registration)
    }

    /// The limits and the consistency every registration must meet.
    pub fn check(&self) -> Result<(), RegistrationError> {
        limit("transactions", self.transactions.len(), MAX_TRANSACTIONS)?;
        limit("watched txids", self.watch_txids.len(), MAX_WATCH_TXIDS)?;
        if self.extract.is_none()
            && self.transactions.is_empty()
            && self.watch_txids.is_empty()
            && self.auditor.is_none()
        {
            return Err(RegistrationError::Malformed(
                "nothing to watch: give extract, transactions, watch_txids or auditor".into(),
            ));
        }
        let mut names = std::collections::HashSet::with_capacity(self.transactions.len());
        let mut bytes = 0usize;
        for p in &self.transactions {
            bytes += check_presigned(p)?;
            if !names.insert(p.name.as_str()) {
                return Err(RegistrationError::Malformed(format!(
                    "transaction name {:?} is used twice",
                    p.name
                )));
            }
        }
        if bytes > MAX_REGISTRATION_TX_BYTES {
            return Err(RegistrationError::TooLarge {
                bytes,
                max: MAX_REGISTRATION_TX_BYTES,
            });
        }
        self.check_groups()?;
        self.check_bumps()?;
        if let Some(auditor) = &self.auditor {
            auditor.check(&self.id)?;
        }
        Ok(())
    }

    /// Every group's members share one block-height nLockTime T ≥ 1 (the beacon reads
    /// block T − 1).
    fn check_groups(&self) -> Result<(), RegistrationError> {
        let mut heights: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for p in &self.transactions {
            let Some(group) = p.group else { continue };
            let bad = |why: &str| RegistrationError::BadGroup {
                group,
                why: why.to_string(),
            };
            let height = match p.tx.lock_time {
                LockTime::Blocks(h) if h.to_consensus_u32() > 0 => h.to_consensus_u32(),
                _ => return Err(bad("members need a block-height nLockTime above 0")),
            };
            if *heights.entry(group).or_insert(height) != height {
                return Err(bad("members have different nLockTimes"));
            }
        }
        Ok(())
    }

    /// The members of `group`, in registration order.
    pub fn group_members(&self, group: u32) -> impl Iterator<Item = &Presigned> {
        self.transactions
            .iter()
            .filter(move |p| p.group == Some(group))
    }

    /// Folds `newer` (same id) into this registration: new transactions and txids are
    /// added; anything that contradicts the record is refused and changes nothing.
    pub fn merge(&mut self, newer: &Registration) -> Result<Merge, RegistrationError> {
        let conflict = |what: &str| RegistrationError::Conflict {
            id: hex::encode(self.id),
            what: what.to_string(),
        };
        if newer.role != self.role {
            return Err(conflict("another role"));
        }
        let mut merged = self.clone();
        match (&merged.extract, &newer.extract) {
            (Some(old), Some(new)) if old != new => return Err(conflict("another TX1")),
            (None, Some(new)) => merged.extract = Some(new.clone()),
            _ => {}
        }
        match (&merged.auditor, &newer.auditor) {
            (Some(old), Some(new)) if old != new => return Err(conflict("another auditor spec")),
            (None, Some(new)) => merged.auditor = Some(new.clone()),
            _ => {}
        }
        for p in &newer.transactions {
            match merged.transactions.iter().find(|q| q.name == p.name) {
                Some(q)
                    if q.tx != p.tx
                        || q.group != p.group
                        || q.hold != p.hold
                        || q.bump != p.bump =>
                {
                    return Err(conflict(&format!("another transaction named {:?}", p.name)))
                }
                Some(_) => {}
                None => merged.transactions.push(p.clone()),
            }
        }
        for txid in &newer.watch_txids {
            if !merged.watch_txids.contains(txid) {
                merged.watch_txids.push(*txid);
            }
        }
        merged.rescan_from_height = match (self.rescan_from_height, newer.rescan_from_height) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        merged.check()?;
        if merged == *self {
            return Ok(Merge::Unchanged);
        }
        *self = merged;
        Ok(Merge::Updated)
    }
}

fn limit(what: &'static str, count: usize, max: usize) -> Result<(), RegistrationError> {
    if count > max {
        return Err(RegistrationError::TooMany { what, count, max });
    }
    Ok(())
}

/// Checks one pre-signed transaction; returns its size in bytes.
fn check_presigned(p: &Presigned) -> Result<usize, RegistrationError> {
    let bad = |why: &str| RegistrationError::BadTransaction(p.name.clone(), why.to_string());
    if p.name.is_empty() || p.name.len() > MAX_NAME_LEN {
        return Err(bad("the name must be 1 to 64 characters"));
    }
    if p.tx.input.is_empty() || p.tx.output.is_empty() {
        return Err(bad("no inputs or no outputs"));
    }
    let size = p.tx.total_size();
    if size > MAX_TX_BYTES {
        return Err(bad("larger than 100,000 bytes"));
    }
    Ok(size)
}

impl AuditorSpec {
    /// The book is sound and belongs to contract `id`, there is one secret per kept
    /// candidate, each inside the data, and the farmer URL is a plain http(s) URL.
    pub fn check(&self, id: &[u8; 32]) -> Result<(), RegistrationError> {
        let bad = |why: String| RegistrationError::BadAuditor(why);
        self.book.check().map_err(|e| bad(e.to_string()))?;
        let terms = &self.book.terms;
        if terms.contract_id != *id {
            return Err(bad(
                "the registration id must be the audit contract's id (book.terms.contract_id)"
                    .into(),
            ));
        }
        let (audits, kept) = (terms.audits as usize, self.book.kept_per_audit());
        limit("audit candidates", audits * kept, MAX_AUDIT_CANDIDATES)?;
        let counts: Vec<usize> = self.secrets.iter().map(Vec::len).collect();
        if counts.len() != audits || counts.iter().any(|c| *c != kept) {
            return Err(bad(format!(
                "expected {kept} secrets for each of {audits} audits, got {counts:?}"
            )));
        }
        if self.length == 0 {
            return Err(bad("the data length is 0".into()));
        }
        let segments = segment_count(self.length);
        for secret in self.secrets.iter().flatten() {
            check_index(secret, segments).map_err(|e| bad(e.to_string()))?;
        }
        check_url(&self.farmer_url).map_err(|why| bad(format!("farmer_url: {why}")))?;
        crate::watch::auditor::candidate_txids(&self.book).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
}

/// An absolute http:// or https:// URL without whitespace, at most [`MAX_URL_LEN`] bytes.
fn check_url(url: &str) -> Result<(), &'static str> {
    if url.len() > MAX_URL_LEN {
        return Err("longer than 512 bytes");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host");
    }
    Ok(())
}

/// Transactions as consensus hex in JSON, the way bitcoind's RPC shows them.
pub mod tx_hex {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tx: &Transaction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serialize_hex(tx))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transaction, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() > 2 * MAX_TX_BYTES {
            return Err(serde::de::Error::custom(
                "transaction larger than 100,000 bytes",
            ));
        }
        deserialize_hex(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad transaction hex: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{Amount, TxIn, TxOut};
    use serde_json::json;

    fn tx(lock: u32) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::from_consensus(lock),
            input: vec![TxIn::default()],
            output: vec![TxOut {
                value: Amount::from_sat(1000),
                script_pubkey: ScriptBuf::new(),
            }],
        }
    }

    fn registration(names: &[(&str, u32)]) -> Registration {
        Registration {
            id: [1; 32],
            role: WatchRole::Renter,
            extract: None,
            transactions: names
                .iter()
                .map(|(n, l)| Presigned::new(*n, tx(*l)))
                .collect(),
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: None,
        }
    }

    #[test]
    fn json_round_trip_and_limits() {
        let r = registration(&[("tx1-refund", 500)]);
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(Registration::from_json(&value).unwrap(), r);
        for bad in [
            json!({}),
            json!({"id": "00", "role": "renter", "watch_txids": []}),
            json!({"id": hex::encode([1u8; 32]), "role": "thief", "watch_txids": []}),
            json!({"id": hex::encode([1u8; 32]), "role": "renter"}),
            json!({"id": hex::encode([1u8; 32]), "role": "renter", "transactions": [{"name": "x", "tx": "zz"}]}),
        ] {
            assert!(Registration::from_json(&bad).is_err(), "{bad}");
        }
        let many: Vec<(String, u32)> = (0..MAX_TRANSACTIONS as u32 + 1)
            .map(|i| (format!("t{i}"), i))
            .collect();
        let names: Vec<(&str, u32)> = many.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        assert!(matches!(
            registration(&names).check(),
            Err(RegistrationError::TooMany { .. })
        ));
        assert!(registration(&[("a", 1), ("a", 2)]).check().is_err());
    }

    #[test]
    fn merging_adds_but_never_replaces() {
        let mut on_record = registration(&[("tx1-refund", 500)]);
        let same = on_record.clone();
        assert_eq!(on_record.merge(&same).unwrap(), Merge::Unchanged);
        let more = registration(&[("tx1-refund", 500), ("tx2-refund", 0)]);
        assert_eq!(on_record.merge(&more).unwrap(), Merge::Updated);
        assert_eq!(on_record.transactions.len(), 2);
        let before = on_record.clone();
        let replaced = registration(&[("tx1-refund", 501)]);
        assert!(matches!(
            on_record.merge(&replaced),
            Err(RegistrationError::Conflict { .. })
        ));
        let mut farmer = registration(&[]);
        farmer.role = WatchRole::Farmer;
        assert!(on_record.merge(&farmer).is_err());
        assert_eq!(on_record, before);
    }
}
