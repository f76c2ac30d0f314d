//! Run-time choice of the data path's SHA-256 (Merkle leaves) and AES-256-GCM implementations by CPU feature (issue 20).
//!
//! Detected once per process ([`DataPathImpl::detected`]):
//!
//! * Merkle leaves: AVX-512F → 16 leaves at once in SIMD lanes (faster than SHA-NI on the
//!   Xeons measured here); else SHA-NI → the `sha2` crate, which uses it; else AVX2 → 8
//!   leaves at once; else `ring`, whose own assembly picks AVX, SSSE3 or plain x86-64.
//!   Interior nodes and partial leaves always use the `sha2` crate (SHA-NI when present).
//! * AES-256-GCM: `ring` on every CPU; it picks VAES+VPCLMULQDQ (AVX2), AES-NI+PCLMULQDQ
//!   or a constant-time software path itself. The description names the path its rules
//!   pick on this CPU. The `aes-gcm` crate (AES-NI but separate CTR and GHASH passes, about
//!   10x slower here) stays as a forced choice to cross-check.
//!
//! Every choice gives byte-identical ciphertext and Merkle roots. Benchmarks and tests
//! may force another supported choice with [`force_for_benchmark`] (to measure a machine
//! without SHA-NI on one that has it); production code never calls it.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub(crate) mod sha256_lanes;

/// How Merkle leaves (SHA-256 of 0x00 ‖ 4096-byte segment) are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sha256Impl {
    /// 16 leaves at once in AVX-512F lanes.
    Avx512x16,
    /// 8 leaves at once in AVX2 lanes.
    Avx2x8,
    /// One leaf at a time with the `sha2` crate, which uses SHA-NI when the CPU has it.
    ShaNi,
    /// One leaf at a time with `ring` (SHA-NI, AVX, SSSE3 or plain assembly, its choice).
    Ring,
    /// One leaf at a time with plain x86-64 assembly (`sha2-asm`, the `sha2` crate's
    /// fallback without SHA-NI), or the `sha2` crate on other architectures.
    Scalar,
}

/// Which AES-256-GCM implementation seals the data path's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AesGcmImpl {
    /// `ring`'s AEAD (VAES/VPCLMULQDQ, AES-NI/PCLMULQDQ or constant-time software).
    Ring,
    /// The RustCrypto `aes-gcm` crate.
    RustCrypto,
}

/// The data path's implementation choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataPathImpl {
    pub sha256: Sha256Impl,
    pub aes_gcm: AesGcmImpl,
}

/// Why a forced implementation choice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    #[error("{0} is not supported by this CPU")]
    Unsupported(String),
    #[error("unknown implementation {given:?} (expected one of: {expected})")]
    UnknownName { given: String, expected: String },
    #[error("the data path implementation was already chosen ({0})")]
    AlreadyChosen(DataPathImpl),
}

/// True if the running CPU has the named x86 feature (false on other architectures).
macro_rules! has {
    ($feature:tt) => {{
        #[cfg(target_arch = "x86_64")]
        let present = std::arch::is_x86_feature_detected!($feature);
        #[cfg(not(target_arch = "x86_64"))]
        let present = false;
        present
    }};
}

impl Sha256Impl {
    /// Every implementation, fastest first on the CPUs measured.
    pub const ALL: [Sha256Impl; 5] = [
        Sha256Impl::Avx512x16,
        Sha256Impl::ShaNi,
        Sha256Impl::Avx2x8,
        Sha256Impl::Ring,
        Sha256Impl::Scalar,
    ];

    /// Whether this CPU can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Sha256Impl::Avx512x16 => has!("avx512f"),
            Sha256Impl::Avx2x8 => has!("avx2"),
            Sha256Impl::ShaNi => has!("sha") && has!("sse4.1"),
            Sha256Impl::Ring | Sha256Impl::Scalar => true,
        }
    }

    /// The best supported choice for this CPU (see the module documentation).
    pub fn detect() -> Sha256Impl {
        Sha256Impl::ALL
            .into_iter()
            .find(|choice| choice.is_supported())
            .unwrap_or(Sha256Impl::Scalar)
    }

    /// Leaves hashed per call.
    pub fn lanes(self) -> usize {
        match self {
            Sha256Impl::Avx512x16 => 16,
            Sha256Impl::Avx2x8 => 8,
            _ => 1,
        }
    }

    /// Short name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Sha256Impl::Avx512x16 => "avx512-x16",
            Sha256Impl::Avx2x8 => "avx2-x8",
            Sha256Impl::ShaNi => "sha-ni",
            Sha256Impl::Ring => "ring",
            Sha256Impl::Scalar => "scalar",
        }
    }
}

impl fmt::Display for Sha256Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self {
            Sha256Impl::Avx512x16 => "16 leaves per pass in AVX-512F lanes (dstore)",
            Sha256Impl::Avx2x8 => "8 leaves per pass in AVX2 lanes (dstore)",
            Sha256Impl::ShaNi => "SHA-NI, one leaf at a time (sha2 crate)",
            Sha256Impl::Ring if has!("sha") => "SHA-NI, one leaf at a time (ring)",
            Sha256Impl::Ring if has!("avx") => "AVX assembly, one leaf at a time (ring)",
            Sha256Impl::Ring => "SSSE3 or plain assembly, one leaf at a time (ring)",
            Sha256Impl::Scalar => "plain x86-64 assembly, one leaf at a time (sha2-asm)",
        };
        write!(f, "{}: {how}", self.name())
    }
}

impl FromStr for Sha256Impl {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, CpuError> {
        Sha256Impl::ALL
            .into_iter()
            .find(|choice| choice.name() == s)
            .ok_or_else(|| unknown_name(s, Sha256Impl::ALL.map(Sha256Impl::name).as_slice()))
    }
}

impl AesGcmImpl {
    /// Every implementation, preferred first.
    pub const ALL: [AesGcmImpl; 2] = [AesGcmImpl::Ring, AesGcmImpl::RustCrypto];

    /// Short name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            AesGcmImpl::Ring => "ring",
            AesGcmImpl::RustCrypto => "rustcrypto",
        }
    }

    /// The hardware path this implementation takes on this CPU, by its own rules.
    fn path(self) -> &'static str {
        let aes_ni = has!("aes") && has!("pclmulqdq");
        match self {
            AesGcmImpl::Ring if aes_ni && has!("vaes") && has!("vpclmulqdq") && has!("avx2") => {
                "VAES+VPCLMULQDQ, AVX2"
            }
            AesGcmImpl::Ring if aes_ni && has!("avx") && has!("movbe") => {
                "AES-NI+PCLMULQDQ, AVX, MOVBE"
            }
            AesGcmImpl::Ring | AesGcmImpl::RustCrypto if aes_ni => "AES-NI+PCLMULQDQ",
            AesGcmImpl::Ring if has!("ssse3") => "constant-time vector-permute AES, SSSE3",
            _ => "constant-time software",
        }
    }
}

impl fmt::Display for AesGcmImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self {
            AesGcmImpl::Ring => "ring",
            AesGcmImpl::RustCrypto => "aes-gcm crate",
        };
        write!(f, "{}: {} ({source})", self.name(), self.path())
    }
}

impl FromStr for AesGcmImpl {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, CpuError> {
        AesGcmImpl::ALL
            .into_iter()
            .find(|choice| choice.name() == s)
            .ok_or_else(|| unknown_name(s, AesGcmImpl::ALL.map(AesGcmImpl::name).as_slice()))
    }
}

fn unknown_name(given: &str, expected: &[&str]) -> CpuError {
    CpuError::UnknownName {
        given: given.to_owned(),
        expected: expected.join(", "),
    }
}

/// The process-wide choice: set by the first [`DataPathImpl::active`] or
/// [`force_for_benchmark`] call.
static ACTIVE: OnceLock<DataPathImpl> = OnceLock::new();

impl DataPathImpl {
    /// The best choice for this CPU.
    pub fn detected() -> DataPathImpl {
        DataPathImpl {
            sha256: Sha256Impl::detect(),
            aes_gcm: AesGcmImpl::Ring,
        }
    }

    /// The choice the data path uses in this process: [`DataPathImpl::detected`], unless a
    /// benchmark forced another one first.
    pub fn active() -> DataPathImpl {
        *ACTIVE.get_or_init(DataPathImpl::detected)
    }
}

impl fmt::Display for DataPathImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256 {}; aes-gcm {}", self.sha256, self.aes_gcm)
    }
}

/// Benchmark and test hook: makes this process's data path use `choice` instead of the
/// detected one. Must come before the first encryption or Merkle operation; refuses a
/// choice this CPU cannot run. The result is byte-identical either way, only speed changes.
pub fn force_for_benchmark(choice: DataPathImpl) -> Result<(), CpuError> {
    if !choice.sha256.is_supported() {
        return Err(CpuError::Unsupported(choice.sha256.to_string()));
    }
    let active = *ACTIVE.get_or_init(|| choice);
    if active != choice {
        return Err(CpuError::AlreadyChosen(active));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for choice in Sha256Impl::ALL {
            assert_eq!(choice.name().parse::<Sha256Impl>().unwrap(), choice);
        }
        for choice in AesGcmImpl::ALL {
            assert_eq!(choice.name().parse::<AesGcmImpl>().unwrap(), choice);
        }
        assert!(matches!(
            "md5".parse::<Sha256Impl>(),
            Err(CpuError::UnknownName { .. })
        ));
    }

    #[test]
    fn detected_choice_is_supported_and_described() {
        let detected = DataPathImpl::detected();
        assert!(detected.sha256.is_supported());
        let text = detected.to_string();
        assert!(
            text.contains("sha256") && text.contains("aes-gcm"),
            "{text}"
        );
    }
}
