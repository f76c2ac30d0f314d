//! Why the farmer refused a request, and how the renter sees it: one clear error with a
//! bitcoind-style code, an HTTP status, and where to resume for a sequence error.

use dstore_protocol::peer::PeerError;

use crate::jsonrpc::code;
use crate::wire::ErrorBody;

/// The error code of [`FarmerError::UnknownCrs`]: the renter then sends the CRS bytes.
pub const UNKNOWN_CRS: i64 = -40;
/// The error code of [`FarmerError::Unconfirmed`]: TX_A lacks the farmer's
/// confirmations; the renter asks again later.
pub const NOT_CONFIRMED: i64 = -42;

/// Why the farmer refused a request; each becomes one clear error for the renter.
#[derive(Debug, thiserror::Error)]
pub enum FarmerError {
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("unknown contract {0}")]
    UnknownContract(String),
    #[error("contract {0} already exists")]
    ContractExists(String),
    #[error("{0}")]
    Terms(#[from] dstore_protocol::messages::TermsError),
    #[error("{0}")]
    Upload(#[from] dstore_protocol::upload::UploadError),
    #[error("out of order: {0}")]
    WrongPhase(&'static str),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("bad CRS: the farmer aborts this download ({0})")]
    CrsRejected(String),
    #[error("unknown CRS: send its bytes to the crs path first")]
    UnknownCrs,
    #[error("unauthorised bulk request")]
    Unauthorised,
    #[error("the request's body does not match the hash its signature covers")]
    BodyMismatch,
    #[error(
        "the tip reached height {0}, too close to T1 for TX2: the farmer abandons this download"
    )]
    Abandoned(u32),
    #[error(
        "TX_A has {got} of {needed} confirmations: the toss nonce is revealed once it has {needed}"
    )]
    Unconfirmed { got: u32, needed: u32 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl FarmerError {
    /// The error as the renter sees it, with a bitcoind-style code and an HTTP status.
    pub fn to_body(&self) -> (u16, ErrorBody) {
        let (status, code) = match self {
            FarmerError::UnknownContract(_) => (404, code::INVALID_ADDRESS_OR_KEY),
            FarmerError::UnknownCrs => (404, UNKNOWN_CRS),
            FarmerError::Unconfirmed { .. } => (409, NOT_CONFIRMED),
            FarmerError::Unauthorised => (401, code::INVALID_REQUEST),
            FarmerError::BodyMismatch => (400, crate::wire::BODY_MISMATCH),
            FarmerError::Internal(_) => (500, code::INTERNAL_ERROR),
            FarmerError::Peer(PeerError::Oversized(_)) => (413, code::INVALID_REQUEST),
            FarmerError::Upload(dstore_protocol::upload::UploadError::PastOffer { .. }) => {
                (413, code::INVALID_PARAMETER)
            }
            FarmerError::Peer(_) => (400, code::INVALID_REQUEST),
            _ => (400, code::INVALID_PARAMETER),
        };
        let next_seq = match self {
            FarmerError::Peer(
                PeerError::Replayed { expected, .. } | PeerError::OutOfOrder { expected, .. },
            ) => Some(*expected),
            _ => None,
        };
        (
            status,
            ErrorBody {
                code,
                message: self.to_string(),
                next_seq,
                resync: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_errors_tell_the_renter_where_to_resume() {
        let (status, body) = FarmerError::Peer(PeerError::Replayed {
            expected: 6,
            got: 5,
        })
        .to_body();
        assert_eq!((status, body.next_seq), (400, Some(6)));
        let (_, body) = FarmerError::Peer(PeerError::OutOfOrder {
            expected: 2,
            got: 9,
        })
        .to_body();
        assert_eq!(body.next_seq, Some(2));
        let (status, body) = FarmerError::UnknownCrs.to_body();
        assert_eq!((status, body.code, body.next_seq), (404, UNKNOWN_CRS, None));
        let (status, _) = FarmerError::Unauthorised.to_body();
        assert_eq!(status, 401);
    }
}
