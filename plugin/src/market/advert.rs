//! Signed adverts: the farmer's (in `/dstore/v1/info` under `advert`, signed on each
//! request so `issued_at` is fresh) and the fetch of another farmer's ([`fetch_advert`]),
//! which returns it only once its signature verifies and it names the URL it came from.
//!
//! Every market HTTP read goes through [`http_client`] and [`get_capped`]: 2 s timeouts,
//! no redirects, and bodies refused past a cap without reading them whole.

use std::time::Duration;

use bitcoin::secp256k1::{Keypair, XOnlyPublicKey};
use dstore_protocol::market::advert::{sign_advert, Advert, AdvertLightning, SignedAdvert};
use dstore_protocol::market::MarketError;
use serde_json::Value;

/// Each market request's timeout (connect and whole request).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `/dstore/v1/info` reply read (an advert is at most 4,096 bytes).
const MAX_INFO_BYTES: usize = 64 << 10;

/// Why a farmer's advert or board could not be read or was not believed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("reply larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(MarketError),
    #[error("{0}")]
    Mismatch(String),
    #[error("refused with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

/// What the farmer advertises besides its identity (the farmer fills it from its config).
pub struct AdvertTerms {
    pub network: String,
    pub peer_url: String,
    pub price_per_download_sat: u64,
    pub max_file_bytes: u64,
    pub free_bytes: u64,
    pub min_claim_window_blocks: u32,
    /// The farmer's Lightning node, when it has one (mode N).
    pub lightning: Option<AdvertLightning>,
}

/// The farmer's advert, signed now.
pub fn signed_advert(identity: &Keypair, terms: AdvertTerms) -> SignedAdvert {
    let advert = Advert {
        identity: identity.x_only_public_key().0,
        network: terms.network,
        peer_url: terms.peer_url,
        version: env!("CARGO_PKG_VERSION").to_string(),
        price_per_download_sat: terms.price_per_download_sat,
        max_file_bytes: terms.max_file_bytes,
        free_bytes: terms.free_bytes,
        audits: true,
        min_claim_window_blocks: terms.min_claim_window_blocks,
        issued_at: unix_now(),
        lightning: terms.lightning,
    };
    sign_advert(identity, advert)
}

/// Bytes an unprivileged writer can still put on the filesystem holding `dir` (0 if unknown).
pub fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, exclusive out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    // The fields are u64 here but narrower on some platforms.
    #[allow(clippy::useless_conversion)]
    let (available, fragment) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    available.saturating_mul(fragment)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The advert served at `<url>/dstore/v1/info`, returned only if its signature verifies
/// and it names `url` as its peer URL (a trailing `/` aside). The caller checks that its
/// identity is the announced one (or calls [`fetch_advert_for`]).
pub async fn fetch_advert(url: &str) -> Result<SignedAdvert, FetchError> {
    let client = http_client()?;
    let body = get_capped(&client, &join_url(url, "dstore/v1/info")?, MAX_INFO_BYTES).await?;
    let info: Value =
        serde_json::from_slice(&body).map_err(|e| FetchError::Malformed(e.to_string()))?;
    let advert = info
        .get("advert")
        .cloned()
        .ok_or_else(|| FetchError::Malformed("the info has no advert".into()))?;
    let advert: SignedAdvert =
        serde_json::from_value(advert).map_err(|e| FetchError::Malformed(e.to_string()))?;
    advert.verify().map_err(FetchError::Invalid)?;
    if trimmed(&advert.advert.peer_url) != trimmed(url) {
        return Err(FetchError::Mismatch(format!(
            "the advert names {}, not {url}",
            advert.advert.peer_url
        )));
    }
    Ok(advert)
}

/// [`fetch_advert`], also checking that the advert is `identity`'s.
pub async fn fetch_advert_for(
    url: &str,
    identity: &XOnlyPublicKey,
) -> Result<SignedAdvert, FetchError> {
    let advert = fetch_advert(url).await?;
    if advert.advert.identity != *identity {
        return Err(FetchError::Mismatch(format!(
            "the advert at {url} is {}'s, not {identity}'s",
            advert.advert.identity
        )));
    }
    Ok(advert)
}

fn trimmed(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The HTTP client of every market request: short timeouts, no redirects.
pub(crate) fn http_client() -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| FetchError::Http(e.to_string()))
}

/// `<base>/<path>` for an http(s) base URL without query or fragment.
pub(crate) fn join_url(base: &str, path: &str) -> Result<String, FetchError> {
    let parsed = url::Url::parse(base).map_err(|e| FetchError::BadUrl(format!("{base}: {e}")))?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !plain {
        return Err(FetchError::BadUrl(format!(
            "{base}: an http(s)://host[:port] URL is needed"
        )));
    }
    if path.is_empty() {
        return Ok(trimmed(base).to_string());
    }
    Ok(format!("{}/{path}", trimmed(base)))
}

/// GETs `url` and reads at most `cap` bytes of its body: a declared or actual length above
/// it is refused without reading on.
pub(crate) async fn get_capped(
    client: &reqwest::Client,
    url: &str,
    cap: usize,
) -> Result<Vec<u8>, FetchError> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return Err(FetchError::TooLarge(cap));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > cap {
            return Err(FetchError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_joined() {
        assert_eq!(
            join_url("http://127.0.0.1:9/", "dstore/v1/info").unwrap(),
            "http://127.0.0.1:9/dstore/v1/info"
        );
        assert_eq!(
            join_url("https://a.example", "").unwrap(),
            "https://a.example"
        );
        for bad in ["ftp://x", "nope", "http://x/?q=1", "file:///etc/passwd"] {
            assert!(join_url(bad, "x").is_err(), "{bad}");
        }
    }
}
