//! The streaming server's tokens: `Exec` and `PortForward` answer a URL
//! with a random token in it, good for one connection within a minute (as
//! the kubelet's streaming cache does), and the server takes the request
//! back by it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a URL stays good.
pub const TTL: Duration = Duration::from_secs(60);
/// The most tokens waiting at once (the kubelet's limit too).
pub const MAX_WAITING: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{MAX_WAITING} streaming requests are waiting for their connection already")]
    Full,
    #[error("drawing a random token")]
    Random(#[source] std::io::Error),
}

/// Requests waiting for their connection, by token.
pub struct Tokens<T> {
    waiting: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
}

impl<T> Default for Tokens<T> {
    fn default() -> Self {
        Self::with_ttl(TTL)
    }
}

impl<T> Tokens<T> {
    fn with_ttl(ttl: Duration) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Keeps `request`; returns its token (URL-safe).
    pub fn insert(&self, request: T) -> Result<String, TokenError> {
        let mut bytes = [0u8; 18];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| TokenError::Random(std::io::Error::other(e.to_string())))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if waiting.len() >= MAX_WAITING {
            return Err(TokenError::Full);
        }
        waiting.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// The request of `token`, if it is there and has not expired, left in
    /// place (an upgrade refused before the session does not use it up: a
    /// client may fall back to another protocol with the same URL).
    pub fn peek(&self, token: &str) -> Option<T>
    where
        T: Clone,
    {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (at, request) = waiting.get(token)?;
        (at.elapsed() < self.ttl).then(|| request.clone())
    }

    /// Takes the request of `token`, if it is there and has not expired;
    /// a token works once.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (at, request) = waiting.remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let t = Tokens::default();
        let a = t.insert(1).expect("insert");
        let b = t.insert(2).expect("insert");
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(t.take(&b), Some(2));
        assert_eq!(t.take(&b), None);
        assert_eq!(t.take("nonsense"), None);
        assert_eq!(t.take(&a), Some(1));
    }

    #[test]
    fn an_expired_token_is_refused_and_the_waiting_are_bounded() {
        let t = Tokens::with_ttl(Duration::from_millis(50));
        let a = t.insert(1).expect("insert");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.take(&a), None);

        let t = Tokens::default();
        for i in 0..MAX_WAITING {
            t.insert(i).expect("insert");
        }
        assert!(matches!(t.insert(0), Err(TokenError::Full)));
    }
}
