//! The `Stream*` lists of the CRI (KEP 5825, the kubelet's
//! `CRIListStreaming`): the same items as the `List*` call, sent in pages
//! so that no message nears gRPC's size limit on a node with many pods.
//! Each item is in exactly one page; pages are never empty (an empty list
//! is a stream that ends at once); the stream ends after the last page.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

/// Items per page. A pod sandbox or container with the kubelet's labels
/// and annotations is a few KiB at most, so a page stays far below the
/// 4 MiB that a gRPC client takes by default.
pub const PAGE: usize = 64;

pub type Pages<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

/// `items` in pages of at most [`PAGE`], each wrapped by `wrap`.
pub fn pages<T, R>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> R) -> Pages<R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let mut items = items.into_iter().peekable();
    let mut out = Vec::new();
    while items.peek().is_some() {
        out.push(Ok(wrap(items.by_ref().take(PAGE).collect())));
    }
    Box::pin(futures::stream::iter(out))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn sizes(n: usize) -> Vec<usize> {
        pages((0..n).collect::<Vec<_>>(), |v| v)
            .map(|p| p.expect("page").len())
            .collect()
            .await
    }

    #[tokio::test]
    async fn every_item_once_in_pages_that_are_never_empty() {
        assert_eq!(sizes(0).await, Vec::<usize>::new());
        assert_eq!(sizes(1).await, vec![1]);
        assert_eq!(sizes(PAGE).await, vec![PAGE]);
        assert_eq!(sizes(2 * PAGE + 3).await, vec![PAGE, PAGE, 3]);
        let all: Vec<usize> = pages((0..150).collect::<Vec<_>>(), |v| v)
            .flat_map(|p| futures::stream::iter(p.expect("page")))
            .collect()
            .await;
        assert_eq!(all, (0..150).collect::<Vec<_>>());
    }
}
