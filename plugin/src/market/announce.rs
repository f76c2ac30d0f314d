//! (owner D: see /work/notes/s4/MARKET.md)

/// Placeholder until its owner writes it (lead's skeleton; must not survive the session).
pub(crate) async fn announce(
    _app: &std::sync::Arc<crate::app::App>,
    _args: &crate::methods::Params<'_>,
) -> Result<serde_json::Value, crate::jsonrpc::RpcError> {
    Err(crate::jsonrpc::RpcError::new(
        crate::jsonrpc::code::MISC_ERROR,
        "not built yet",
    ))
}

/// Placeholder until its owner writes it (lead's skeleton; must not survive the session).
pub(crate) async fn unbond(
    _app: &std::sync::Arc<crate::app::App>,
    _args: &crate::methods::Params<'_>,
) -> Result<serde_json::Value, crate::jsonrpc::RpcError> {
    Err(crate::jsonrpc::RpcError::new(
        crate::jsonrpc::code::MISC_ERROR,
        "not built yet",
    ))
}
