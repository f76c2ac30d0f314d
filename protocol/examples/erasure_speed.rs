//! Quick throughput check of erasure::encrypt_and_shard against datapath's
//! encrypt_and_commit_parallel (the single-contract path): `cargo run --release -p
//! dstore-protocol --example erasure_speed [MiB] [N] [K]`.

use std::io::{self, Read};
use std::time::Instant;

use dstore_protocol::datapath::encrypt_and_commit_parallel;
use dstore_protocol::erasure::{
    decode_and_decrypt, decrypt_and_check, encrypt_and_shard, ShardParams,
};

/// `left` bytes of a repeating pattern, without holding them.
struct Pattern {
    left: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mib = arg(1, 256);
    let params = ShardParams::new(arg(2, 6), arg(3, 4)).expect("params");
    let bytes = mib << 20;
    let (key, id) = ([1u8; 32], [2u8; 32]);
    let (mut single, mut sharded) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        encrypt_and_commit_parallel(&key, &id, Pattern { left: bytes }, io::sink()).unwrap();
        single = single.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let sinks = vec![io::sink(); params.shards()];
        encrypt_and_shard(&key, &id, Pattern { left: bytes }, params, sinks).unwrap();
        sharded = sharded.min(start.elapsed().as_secs_f64());
    }
    let rate = |secs: f64| mib as f64 / secs;
    println!("single-encrypt-merkle-mib-s {:.0}", rate(single));
    println!("shards-encode-mib-s {:.0}", rate(sharded));
    println!("shards-encode-ratio {:.2}", single / sharded);
    decode_figures(mib.min(64), params);
}

/// Decrypt+check of C alone, then decode+decrypt+check from the data shards and from the
/// last K shards (parity decoding), on in-memory shards of `mib` MiB.
fn decode_figures(mib: u64, params: ShardParams) {
    let (key, id) = ([1u8; 32], [2u8; 32]);
    let writers = vec![Vec::new(); params.shards()];
    let sharded = encrypt_and_shard(&key, &id, Pattern { left: mib << 20 }, params, writers);
    let sharded = sharded.unwrap();
    let root = sharded.commitment;
    let shards = &sharded.writers;
    let mut c = Vec::new();
    dstore_protocol::erasure::decode_c(params, root.length, slots(shards, 0), &mut c).unwrap();
    let time = |run: &dyn Fn()| {
        let start = Instant::now();
        run();
        mib as f64 / start.elapsed().as_secs_f64()
    };
    let single = time(&|| {
        decrypt_and_check(&key, &id, &root, &c[..], io::sink()).unwrap();
    });
    let data = time(&|| {
        decode_and_decrypt(&key, &id, params, &root, slots(shards, 0), io::sink()).unwrap();
    });
    let skip = params.shards() - params.needed();
    let parity = time(&|| {
        decode_and_decrypt(&key, &id, params, &root, slots(shards, skip), io::sink()).unwrap();
    });
    println!("decrypt-check-mib-s {single:.0}");
    println!("decode-data-shards-mib-s {data:.0}");
    println!("decode-with-parity-mib-s {parity:.0}");
}

/// All shards present except the first `skip`.
fn slots(shards: &[Vec<u8>], skip: usize) -> Vec<Option<&[u8]>> {
    shards
        .iter()
        .enumerate()
        .map(|(i, s)| (i >= skip).then_some(s.as_slice()))
        .collect()
}
