//! Link configuration over rtnetlink.

use futures::TryStreamExt;
use rtnetlink::LinkUnspec;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("link {0} does not exist")]
    NoSuchLink(String),
}

/// Sets the link `name` up in the caller's network namespace.
pub async fn link_up(name: &str) -> Result<(), NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetError::Netlink(e.to_string()))?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| NetError::Netlink(e.to_string()))?
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::Netlink(e.to_string()))
    }
    .await;
    task.abort();
    result
}
