//! A CRS per TX2 shape, generated once and shared by every test process of a run through a
//! file under the cargo target directory (the renter's "generate once per shape, cache it
//! under its hash" of PROTOCOL.md 3.5, for the tests). An exclusive file lock makes
//! concurrent test processes wait for the first one's setup instead of repeating it.
//!
//! The cache holds our own output, so it is stored uncompressed and read back without
//! validation; what crosses between the parties in the tests is always the compressed
//! encoding, decoded and checked by `check_crs`.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use dstore_protocol::zk::{setup, Crs, Shape};
use rand::rngs::OsRng;

/// The CRS for `shape`, from `dir` if a previous process made it, else made and stored.
pub fn crs_for(dir: &Path, shape: &Shape) -> Crs {
    fs::create_dir_all(dir).expect("CRS cache directory");
    // The circuit's version is in the key, so a changed circuit never meets a stale CRS
    // left in the target directory by an earlier build.
    let key = shape.crs_cache_key();
    let path = dir.join(format!("crs-{key}.bin"));
    let lock = File::create(dir.join(format!("crs-{key}.lock"))).expect("CRS lock file");
    lock.lock().expect("locking the CRS cache");
    if let Ok(file) = File::open(&path) {
        if let Ok(crs) = Crs::deserialize_uncompressed_unchecked(BufReader::new(file)) {
            return crs;
        }
    }
    let crs = setup(shape, &mut OsRng).expect("CRS setup");
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::new(File::create(&tmp).expect("CRS cache file"));
    crs.serialize_uncompressed(&mut out)
        .expect("CRS serialises");
    out.flush().expect("CRS cache written");
    drop(out);
    fs::rename(&tmp, &path).expect("CRS cache in place");
    crs
}
