//! The farmer table: one row per announced identity, built from the scanner's records, the
//! verified adverts and the evidence held: URL (once an advert verifies for it), largest
//! live bond and its value (JoinMarket's formula, at the chain's median time), the chain's
//! outcome counts, burned, and the score `dstore-open auto` ranks by.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::OutPoint;
use dstore_protocol::market::advert::SignedAdvert;
use dstore_protocol::market::bond::{bond_value, locktime_to_time};
use dstore_protocol::market::outcome::{downloads_refunded, Count};
use dstore_protocol::market::score::{explain, score, FarmerFacts};
use serde::Serialize;

use super::store::{AnnouncementRec, BondRec, MarketState, Record};

/// How `dstore-farmers` orders the farmers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Best score first.
    Score,
    /// Cheapest advertised download first (no advert last).
    Price,
    /// Largest bond value first.
    Bond,
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "score" => Ok(Sort::Score),
            "price" => Ok(Sort::Price),
            "bond" => Ok(Sort::Bond),
            other => Err(format!("sort must be score, price or bond, not '{other}'")),
        }
    }
}

/// A farmer's live bond as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BondRow {
    pub outpoint: String,
    pub value_sat: u64,
    pub locktime: u32,
    pub confirmed_height: u32,
    pub bond_value: f64,
}

/// One farmer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FarmerRow {
    pub identity: String,
    pub peer_url: Option<String>,
    pub bond: Option<BondRow>,
    pub advert: Option<SignedAdvert>,
    pub advert_error: Option<String>,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub downloads_served: u64,
    pub downloads_refunded: u64,
    pub burned: bool,
    pub evidence: Vec<String>,
    pub score: f64,
    pub score_explained: String,
}

/// The table at the scanned height.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub height: Option<u32>,
    pub farmers: Vec<FarmerRow>,
}

/// Builds the table from the records; `now` is the chain's median time.
pub fn build(
    state: &MarketState,
    advert_errors: &HashMap<XOnlyPublicKey, String>,
    now: u64,
    sort: Sort,
) -> Table {
    let counts = outcome_counts(state);
    let mut latest: HashMap<XOnlyPublicKey, &AnnouncementRec> = HashMap::new();
    let mut urls: HashMap<XOnlyPublicKey, Vec<&str>> = HashMap::new();
    let mut bonds: HashMap<XOnlyPublicKey, Vec<(OutPoint, &BondRec)>> = HashMap::new();
    for (key, record) in &state.records {
        match (key, record) {
            (_, Record::Announcement(a)) => {
                urls.entry(a.identity).or_default().push(&a.peer_url);
                let held = latest.entry(a.identity).or_insert(a);
                if (a.height, a.tx_index) > (held.height, held.tx_index) {
                    *held = a;
                }
            }
            (super::store::Key::Bond(point), Record::Bond(b)) => {
                bonds.entry(b.identity).or_default().push((*point, b));
            }
            _ => {}
        }
    }
    let mut farmers: Vec<FarmerRow> = latest
        .into_iter()
        .map(|(identity, announcement)| {
            let facts = Facts {
                announcement,
                announced_urls: urls.get(&identity).map(Vec::as_slice).unwrap_or_default(),
                bonds: bonds.get(&identity).map(Vec::as_slice).unwrap_or_default(),
                counts: counts.get(&identity).copied().unwrap_or_default(),
                advert: state.adverts.get(&identity),
                advert_error: advert_errors.get(&identity),
                evidence: state
                    .evidence
                    .values()
                    .filter(|e| e.farmer == identity)
                    .map(|e| hex::encode(e.id))
                    .collect(),
            };
            row(identity, facts, now)
        })
        .collect();
    sort_rows(&mut farmers, sort);
    Table {
        height: state.tip.map(|t| t.height),
        farmers,
    }
}

/// What one row is built from.
struct Facts<'a> {
    /// The farmer's latest announcement.
    announcement: &'a AnnouncementRec,
    /// The URLs of all its announcements (anyone can announce an identity with a bond
    /// gifted to its key, so the latest URL need not be the farmer's).
    announced_urls: &'a [&'a str],
    bonds: &'a [(OutPoint, &'a BondRec)],
    counts: Counts,
    advert: Option<&'a SignedAdvert>,
    advert_error: Option<&'a String>,
    evidence: Vec<String>,
}

fn row(identity: XOnlyPublicKey, facts: Facts<'_>, now: u64) -> FarmerRow {
    let bond = live_bond(facts.bonds, now);
    let url = &facts.announcement.peer_url;
    let announced = |advert_url: &str| facts.announced_urls.iter().any(|u| same_url(u, advert_url));
    let (advert, advert_error) = match facts.advert {
        // The farmer's own advert says which of its announced URLs is its endpoint. A held
        // advert stays listed while a later fetch fails (the error is shown too).
        Some(a) if announced(&a.advert.peer_url) => (Some(a.clone()), facts.advert_error.cloned()),
        Some(a) => (
            None,
            Some(facts.advert_error.cloned().unwrap_or_else(|| {
                format!(
                    "the last verified advert names {}, the announcement {url}",
                    a.advert.peer_url
                )
            })),
        ),
        None => (
            None,
            Some(
                facts
                    .advert_error
                    .cloned()
                    .unwrap_or_else(|| "no advert fetched yet".to_string()),
            ),
        ),
    };
    let burned = !facts.evidence.is_empty();
    let counts = facts.counts;
    let score_facts = FarmerFacts {
        bond_value: bond.as_ref().map_or(0.0, |b| b.bond_value),
        audits_passed: counts.audits_passed,
        audits_failed: counts.audits_failed,
        downloads_served: counts.downloads_served,
        downloads_refunded: counts.downloads_refunded,
        price_per_download_sat: advert
            .as_ref()
            .map_or(0, |a| a.advert.price_per_download_sat),
        burned,
    };
    // Without a verified advert there is no price to weigh and nobody to contact: such a
    // farmer scores 0 rather than ranking as if it were free.
    let (score, score_explained) = match &advert {
        Some(_) => (score(&score_facts), explain(&score_facts)),
        None => (
            0.0,
            format!(
                "0: no verified advert (bond and record: {})",
                explain(&score_facts)
            ),
        ),
    };
    FarmerRow {
        identity: identity.to_string(),
        peer_url: advert.as_ref().map(|a| a.advert.peer_url.clone()),
        bond,
        advert,
        advert_error,
        audits_passed: counts.audits_passed,
        audits_failed: counts.audits_failed,
        downloads_served: counts.downloads_served,
        downloads_refunded: counts.downloads_refunded,
        burned,
        evidence: facts.evidence,
        score,
        score_explained,
    }
}

/// URLs compare without a trailing '/'.
pub(crate) fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The largest confirmed, unspent bond, valued at `now`; spent bonds count nothing.
fn live_bond(bonds: &[(OutPoint, &BondRec)], now: u64) -> Option<BondRow> {
    bonds
        .iter()
        .filter(|(_, b)| b.spent_height.is_none())
        .max_by_key(|(point, b)| (b.value_sat, std::cmp::Reverse(point.to_string())))
        .map(|(point, b)| {
            let lock_time = locktime_to_time(b.locktime, b.confirmed_height, b.confirmed_time);
            BondRow {
                outpoint: point.to_string(),
                value_sat: b.value_sat,
                locktime: b.locktime,
                confirmed_height: b.confirmed_height,
                bond_value: bond_value(b.value_sat, b.confirmed_time, lock_time, now),
            }
        })
}

/// A farmer's outcome counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub downloads_served: u64,
    pub downloads_refunded: u64,
}

/// The counters of every attributed farmer: events through their verified lease records;
/// refunds at most once per contract tag and only without a served download.
pub fn outcome_counts(state: &MarketState) -> HashMap<XOnlyPublicKey, Counts> {
    let mut counts: HashMap<XOnlyPublicKey, Counts> = HashMap::new();
    // (farmer, tag) -> (served, refunds)
    let mut downloads: BTreeMap<(String, [u8; 8]), (u64, u64)> = BTreeMap::new();
    let mut identities: HashSet<XOnlyPublicKey> = HashSet::new();
    for record in state.records.values() {
        let Record::Event(event) = record else {
            continue;
        };
        let Some(Record::Lease(lease)) = state.records.get(&super::store::Key::Lease(event.lease))
        else {
            continue;
        };
        let Some(identity) = lease.identity else {
            continue;
        };
        identities.insert(identity);
        let entry = counts.entry(identity).or_default();
        let tag = downloads
            .entry((identity.to_string(), lease.contract_tag))
            .or_default();
        match event.count {
            Count::AuditPassed => entry.audits_passed += 1,
            Count::AuditFailed => entry.audits_failed += 1,
            Count::DownloadServed => {
                entry.downloads_served += 1;
                tag.0 += 1;
            }
            Count::DownloadRefunded => tag.1 += 1,
        }
    }
    for identity in identities {
        let key = identity.to_string();
        let refunded: u64 = downloads
            .range((key.clone(), [0; 8])..=(key, [0xff; 8]))
            .map(|(_, (served, refunds))| downloads_refunded(*served, *refunds))
            .sum();
        counts.entry(identity).or_default().downloads_refunded = refunded;
    }
    counts
}

fn sort_rows(rows: &mut [FarmerRow], sort: Sort) {
    let bond_value = |r: &FarmerRow| r.bond.as_ref().map_or(0.0, |b| b.bond_value);
    let price = |r: &FarmerRow| {
        r.advert
            .as_ref()
            .map_or(u64::MAX, |a| a.advert.price_per_download_sat)
    };
    rows.sort_by(|a, b| {
        let order = match sort {
            Sort::Score => b.score.total_cmp(&a.score),
            Sort::Bond => bond_value(b).total_cmp(&bond_value(a)),
            Sort::Price => price(a).cmp(&price(b)),
        };
        order
            .then_with(|| b.score.total_cmp(&a.score))
            .then_with(|| a.identity.cmp(&b.identity))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::store::tests::identity;
    use crate::market::store::{Key, Tip};
    use bitcoin::hashes::Hash;
    use bitcoin::{BlockHash, Txid};

    fn point(n: u8, vout: u32) -> OutPoint {
        OutPoint::new(Txid::from_byte_array([n; 32]), vout)
    }

    fn announce(state: &mut MarketState, who: u8, tx: u8, height: u32, value_sat: u64) {
        let bond = point(tx, 0);
        state.apply(&[
            (
                Key::Announcement(bond.txid),
                Some(Record::Announcement(AnnouncementRec {
                    identity: identity(who),
                    peer_url: format!("http://127.0.0.1:{}", 9000 + u32::from(tx)),
                    locktime: 1_000,
                    bond,
                    height,
                    tx_index: 1,
                })),
            ),
            (
                Key::Bond(bond),
                Some(Record::Bond(BondRec {
                    identity: identity(who),
                    value_sat,
                    locktime: 1_000,
                    confirmed_height: height,
                    confirmed_time: 1_700_000_000,
                    spent_height: None,
                })),
            ),
        ]);
    }

    fn spend(state: &mut MarketState, tx: u8, height: u32) {
        let key = Key::Bond(point(tx, 0));
        let Some(Record::Bond(mut bond)) = state.records.get(&key).cloned() else {
            panic!("no bond")
        };
        bond.spent_height = Some(height);
        state.apply(&[(key, Some(Record::Bond(bond)))]);
    }

    fn table(state: &MarketState, sort: Sort) -> Table {
        build(state, &HashMap::new(), 1_700_000_600, sort)
    }

    /// The listed bond is the largest live one; a spent bond counts nothing; a farmer with
    /// only spent bonds has no bond and scores 0; a farmer without a verified advert is not
    /// listed with a URL and scores 0.
    #[test]
    fn bond_accounting_takes_the_largest_live_bond() {
        let mut state = MarketState::default();
        state.tip = Some(Tip {
            height: 20,
            hash: BlockHash::all_zeros(),
        });
        announce(&mut state, 1, 10, 5, 50_000);
        announce(&mut state, 1, 11, 6, 80_000);
        announce(&mut state, 2, 12, 7, 30_000);
        let rows = table(&state, Sort::Bond).farmers;
        assert_eq!(rows.len(), 2, "one row per identity");
        assert_eq!(rows[0].identity, identity(1).to_string());
        let bond = rows[0].bond.as_ref().unwrap();
        assert_eq!(bond.value_sat, 80_000);
        assert_eq!(bond.outpoint, point(11, 0).to_string());
        assert!(bond.bond_value > 0.0);
        assert_eq!(rows[0].peer_url, None, "no verified advert yet");
        assert!(rows[0].advert_error.is_some());

        spend(&mut state, 11, 8);
        let rows = table(&state, Sort::Bond).farmers;
        let first = rows
            .iter()
            .find(|r| r.identity == identity(1).to_string())
            .unwrap();
        assert_eq!(
            first.bond.as_ref().unwrap().value_sat,
            50_000,
            "spent bond withdrawn"
        );

        spend(&mut state, 10, 9);
        let rows = table(&state, Sort::Score).farmers;
        let first = rows
            .iter()
            .find(|r| r.identity == identity(1).to_string())
            .unwrap();
        assert!(first.bond.is_none());
        assert_eq!(first.score, 0.0);
        // Identity 2 still has a live bond but no verified advert: it scores 0 too, rather
        // than ranking as a farmer that charges nothing.
        let second = rows
            .iter()
            .find(|r| r.identity == identity(2).to_string())
            .unwrap();
        assert!(second.bond.is_some());
        assert_eq!(second.score, 0.0);
        assert!(second.score_explained.contains("no verified advert"));
        assert_eq!(table(&state, Sort::Score).height, Some(20));
    }

    fn lease(state: &mut MarketState, who: u8, tx: u8, tag: u8, attributed: bool) -> OutPoint {
        let at = point(tx, 1);
        state.apply(&[(
            Key::Lease(at),
            Some(Record::Lease(crate::market::store::LeaseRec {
                identity_prefix: crate::market::store::prefix_of(&identity(who)),
                contract_tag: [tag; 8],
                signature: bitcoin::secp256k1::schnorr::Signature::from_slice(&[1; 64]).unwrap(),
                leased: vec![],
                identity: attributed.then(|| identity(who)),
                height: 3,
            })),
        )]);
        at
    }

    fn event(state: &mut MarketState, lease: OutPoint, spender: u8, count: Count) {
        state.apply(&[(
            Key::Event(point(spender, 0)),
            Some(Record::Event(crate::market::store::EventRec {
                lease,
                count,
                height: 4,
            })),
        )]);
    }

    /// Events count through attributed leases only; refunds count once per contract tag
    /// and not at all for a tag with a served download.
    #[test]
    fn outcome_counts_follow_the_refund_rule_and_attribution() {
        let mut state = MarketState::default();
        let served = lease(&mut state, 1, 40, 1, true);
        let refunded = lease(&mut state, 1, 41, 2, true);
        let refunded_again = lease(&mut state, 1, 42, 2, true);
        let stranger = lease(&mut state, 2, 43, 3, false);
        event(&mut state, served, 50, Count::DownloadServed);
        event(&mut state, served, 51, Count::DownloadRefunded);
        event(&mut state, refunded, 52, Count::DownloadRefunded);
        event(&mut state, refunded_again, 53, Count::DownloadRefunded);
        event(&mut state, served, 54, Count::AuditFailed);
        event(&mut state, served, 55, Count::AuditPassed);
        event(&mut state, stranger, 56, Count::AuditFailed);
        let counts = outcome_counts(&state);
        assert_eq!(
            counts.get(&identity(1)),
            Some(&Counts {
                audits_passed: 1,
                audits_failed: 1,
                downloads_served: 1,
                downloads_refunded: 1,
            })
        );
        assert_eq!(
            counts.get(&identity(2)),
            None,
            "unattributed lease counts nothing"
        );
    }
}
