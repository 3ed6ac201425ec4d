//! The registry client of a pull. oci-client builds a default reqwest
//! client inside every client it makes, and reqwest's `Client::new` panics
//! when the node has no system CA certificates (even for plain-HTTP
//! mirrors). That panic is caught here and answered as an error naming the
//! cause, instead of cancelling the call.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::Client;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the registry client")]
    Build(#[source] Box<OciDistributionError>),
    #[error(
        "building the registry client failed: {0} (reqwest needs the node's CA certificates \
         even for plain-HTTP mirrors: install them, e.g. Debian's ca-certificates)"
    )]
    Panicked(String),
}

/// The client for a pull whose plain-HTTP hosts are `plain`.
pub fn client(plain: Vec<String>) -> Result<Client, ClientError> {
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    // Nothing of ours is observed after a panic: the config is consumed.
    let built = std::panic::AssertUnwindSafe(move || Client::try_from(config));
    match std::panic::catch_unwind(built) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(ClientError::Build(Box::new(e))),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(ClientError::Panicked(text))
        }
    }
}
