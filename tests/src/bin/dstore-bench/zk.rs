//! `zk`: the Groth16 reused-nonce proof (`dstore_protocol::zk`) on a real TX2 template,
//! ours against the same statement over ark-crypto-primitives' `Sha256Gadget`
//! (`dstore_protocol::zk::baseline`), measured in the same run.
//!
//! Figures (required names first):
//!
//! * `zk-constraints-per-compression`, `zk-baseline-constraints-per-compression`: the
//!   cost of one more 64-byte block for each gadget (hashing 119 against 55 witness
//!   bytes); `zk-constraints-ratio` is baseline over ours. Both include the 512
//!   booleanity constraints of the block's message bits;
//!   `zk-constraints-per-compression-as-the-records-count` is ours without them, as
//!   zk.golf's 15,168 and Clean's 17,824 are counted (their message arrives as bits the
//!   caller pins).
//! * `zk-setup-s`, `zk-prove-s`, `zk-verify-ms`: ours on the real TX2 (462 bytes; the
//!   circuit hashes from the midstate of the bytes before s1). Prove is `zk::prove` as
//!   the farmer calls it after its CRS check: the witness synthesis, the satisfaction
//!   check, the Groth16 prover and the prover's self-verification; the shape's compiled
//!   circuit, which the CRS check made, is reused (`dstore_protocol::zk::prover`).
//! * `zk-prove-first-s`: the same with the compiled circuits dropped first
//!   (`zk::forget_compiled_shapes`): a farmer's first proof of a shape after a restart
//!   without a CRS check.
//! * `zk-baseline-setup-s`, `zk-baseline-prove-s`, `zk-baseline-verify-ms` and the
//!   `zk-*-ratio` figures (baseline over ours; above 1 means ours is faster). The baseline
//!   prover is ark-groth16's stock one (`create_random_proof_with_reduction`, after a
//!   synthesis for the satisfaction check), as the library offers it.
//! * `zk-baseline-prove-our-prover-s`, `zk-prove-ratio-same-prover`: the baseline statement
//!   proven by our prover (its circuit compiled once, untimed, as for ours), so the ratio
//!   shows the gadget's share alone; `zk-prove-ratio` over it is the prover's share.
//! * `zk-check-crs-s`: the farmer's CRS check (decoding on every core, the G2 subgroup
//!   checks batched: `dstore_protocol::zk::crs_check`).
//! * `zk-constraints`, `zk-baseline-constraints`: whole circuits.
//! * `zk-domain-size`, `zk-baseline-domain-size`: points of each CRS's QAP domain (its H
//!   query has one fewer): ours is the smallest 2^a·3^b that holds the circuit's
//!   constraints and inputs (`dstore_protocol::zk::qap`), the baseline's ark's power of two.
//! * `zk-blocks-hashed`: SHA-256 compressions in our circuit for the real TX2 (the blocks
//!   from the first one holding a byte of s1 to the end; the midstate covers the rest).
//! * `zk-proof-bytes`, `zk-pk-bytes`: compressed sizes of our proof and proving key.
//! * `zk-peak-rss-mib`: this process's peak RSS after our setup, check, prove and verify
//!   and before the baseline starts (VmHWM is a high-water mark, so the baseline, which
//!   runs second, cannot inflate it).
//! * `cpu-flags`: the CPU, its logical cores and the flags that move these figures (ark's
//!   prover and the CRS check use every core).
//!
//! Each timing is the best of `--runs` runs (setup and the CRS check run once).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::{Amount, OutPoint, Txid};
use clap::Args;
use dstore_protocol::contract::DownloadContract;
use dstore_protocol::nonce_reuse::{farmer_sign_tx2, Tx2Template};
use dstore_protocol::zk::{self, baseline, sha256_gadget, Shape, Statement};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::measure::{cpu_summary, figure, kib_to_mib, peak_rss_kib};

/// Options of `dstore-bench zk`.
#[derive(Debug, Args)]
pub struct ZkArgs {
    /// Timed runs of prove and verify for each side; each figure is the best run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// A real reused-nonce TX2 as the farmer signs it (PROTOCOL.md 3.3 step 3); the TX1
/// outpoint is arbitrary, which does not change the shape.
fn real_tx2(rng: &mut StdRng) -> anyhow::Result<Tx2Template> {
    let [f, r, r2, f2] = [(); 4].map(|_| SecretKey::new(rng));
    let contract = DownloadContract {
        contract_id: [7; 32],
        farmer_key: f.public_key(SECP256K1),
        renter_key: r.public_key(SECP256K1),
        renter_tx2_key: r2.public_key(SECP256K1),
        farmer_tx2_key: f2.public_key(SECP256K1),
        refund_height: 500,
        payout_delay: 144,
        price: Amount::from_sat(100_000),
        tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
    };
    let outpoint = OutPoint {
        txid: "ab".repeat(32).parse::<Txid>()?,
        vout: 0,
    };
    let unsigned = contract.unsigned_tx2(outpoint, Amount::from_sat(1_000))?;
    let sig_r = contract.renter_sign_tx2(&unsigned, &r)?;
    Ok(farmer_sign_tx2(rng, &contract, &unsigned, &f, &sig_r)?)
}

/// Runs `f` once, returning its value and how long it took.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

/// Best time of `runs` runs of `f`, and the last value.
fn best_of<T>(
    runs: u32,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let (value, took) = timed(&mut f)?;
        best = best.min(took);
        last = Some(value);
    }
    Ok((last.expect("runs >= 1"), best))
}

fn ratio(baseline: f64, ours: f64) -> String {
    format!("{:.3}", baseline / ours)
}

/// Timings of one side.
struct Side {
    setup: Duration,
    prove: Duration,
    verify: Duration,
    constraints: usize,
    /// The baseline statement through our prover (None for ours).
    prove_our_prover: Option<Duration>,
}

fn run_ours(
    args: &ZkArgs,
    rng: &mut StdRng,
    statement: &Statement,
    s: (&[u8; 32], &[u8; 32]),
) -> anyhow::Result<Side> {
    let shape: Shape = statement.shape;
    eprintln!("zk: ours: setup…");
    let (crs, setup) = timed(|| Ok(zk::setup(&shape, rng)?))?;
    let crs_bytes = zk::serialize_crs(&crs);
    eprintln!("zk: ours: farmer's CRS check…");
    let (_, check) =
        timed(|| zk::check_crs(&shape, &crs_bytes, rng).map_err(|e| anyhow!("honest CRS: {e}")))?;
    eprintln!("zk: ours: prove and verify…");
    let (proof, prove) = best_of(args.runs, || Ok(zk::prove(&crs, statement, s.0, s.1, rng)?))?;
    let (_, verify) = best_of(args.runs, || Ok(zk::verify(&crs.vk, statement, &proof)?))?;
    zk::forget_compiled_shapes();
    let (_, prove_first) = timed(|| Ok(zk::prove(&crs, statement, s.0, s.1, rng)?))?;
    figure(
        "zk-prove-first-s",
        format!("{:.2}", prove_first.as_secs_f64()),
    );
    let constraints = zk::api::num_constraints(&shape)?;
    figure("zk-check-crs-s", format!("{:.2}", check.as_secs_f64()));
    figure("zk-proof-bytes", zk::serialize_proof(&proof).len());
    figure("zk-pk-bytes", crs_bytes.len());
    figure("zk-domain-size", crs.h_query.len() + 1);
    figure(
        "zk-peak-rss-mib",
        format!("{:.1}", kib_to_mib(peak_rss_kib()?)),
    );
    Ok(Side {
        setup,
        prove,
        verify,
        constraints,
        prove_our_prover: None,
    })
}

fn run_baseline(
    args: &ZkArgs,
    rng: &mut StdRng,
    statement: &Statement,
    s: (&[u8; 32], &[u8; 32]),
) -> anyhow::Result<Side> {
    eprintln!("zk: baseline: setup…");
    let (pk, setup) = timed(|| Ok(baseline::setup(statement, rng)?))?;
    figure("zk-baseline-domain-size", pk.h_query.len() + 1);
    eprintln!("zk: baseline: prove and verify…");
    let (proof, prove) = best_of(args.runs, || {
        Ok(baseline::prove(&pk, statement, s.0, s.1, rng)?)
    })?;
    let (_, verify) = best_of(args.runs, || Ok(baseline::verify(&pk, statement, &proof)?))?;
    eprintln!("zk: baseline: prove with our prover…");
    let compiled = baseline::compile_for_our_prover(statement)?;
    let (proof, prove_our_prover) = best_of(args.runs, || {
        Ok(baseline::prove_with_our_prover(
            &pk, &compiled, statement, s.0, s.1, rng,
        )?)
    })?;
    baseline::verify(&pk, statement, &proof)?;
    Ok(Side {
        setup,
        prove,
        verify,
        constraints: baseline::num_constraints(statement)?,
        prove_our_prover: Some(prove_our_prover),
    })
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &ZkArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(0x2b);
    figure(
        "cpu-flags",
        cpu_summary(&["avx2", "avx512f", "bmi2", "adx", "sha_ni"]),
    );
    let ours_per_block = sha256_gadget::constraints_per_compression()?;
    let base_per_block = sha256_gadget::baseline_constraints_per_compression()?;
    figure("zk-constraints-per-compression", ours_per_block);
    figure("zk-baseline-constraints-per-compression", base_per_block);
    figure(
        "zk-constraints-per-compression-as-the-records-count",
        sha256_gadget::constraints_per_compression_as_the_records_count()?,
    );
    figure(
        "zk-constraints-ratio",
        ratio(base_per_block as f64, ours_per_block as f64),
    );

    let tx2 = real_tx2(&mut rng).context("building a real TX2")?;
    let (statement, s1, s2) = Statement::of(&tx2)?;
    eprintln!(
        "zk: real TX2 of {} bytes, {} compressions in our circuit",
        tx2.bytes.len(),
        statement.shape.compressions()
    );
    figure("zk-blocks-hashed", statement.shape.compressions());
    let ours = run_ours(args, &mut rng, &statement, (&s1, &s2))?;
    let base = run_baseline(args, &mut rng, &statement, (&s1, &s2))?;

    figure("zk-constraints", ours.constraints);
    figure("zk-baseline-constraints", base.constraints);
    let secs = |d: Duration| d.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    figure("zk-setup-s", format!("{:.2}", secs(ours.setup)));
    figure("zk-baseline-setup-s", format!("{:.2}", secs(base.setup)));
    figure("zk-setup-ratio", ratio(secs(base.setup), secs(ours.setup)));
    figure("zk-prove-s", format!("{:.2}", secs(ours.prove)));
    figure("zk-baseline-prove-s", format!("{:.2}", secs(base.prove)));
    figure("zk-prove-ratio", ratio(secs(base.prove), secs(ours.prove)));
    if let Some(same) = base.prove_our_prover {
        figure(
            "zk-baseline-prove-our-prover-s",
            format!("{:.2}", secs(same)),
        );
        figure(
            "zk-prove-ratio-same-prover",
            ratio(secs(same), secs(ours.prove)),
        );
    }
    figure("zk-verify-ms", format!("{:.2}", ms(ours.verify)));
    figure("zk-baseline-verify-ms", format!("{:.2}", ms(base.verify)));
    figure("zk-verify-ratio", ratio(ms(base.verify), ms(ours.verify)));
    Ok(())
}
