//! An SVID that can be replaced while auraed runs: the certificate its TLS
//! listeners present, and the client certificate of its link to its
//! parent. A pre-started instance serves with a provisional identity until
//! its parent claims it and gives it its own ([`SwappableSvid::replace`]);
//! new handshakes use the new one, and connections already made keep
//! theirs.

use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("reading the {what} PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate PEM holds no certificate")]
    NoCertificate,
    #[error("the key does not fit the certificate, or is of an unsupported type")]
    Key(#[source] rustls::Error),
}

impl SvidError {
    /// Which of a request's two fields is at fault: the chain's or the
    /// key's.
    pub fn field<'a>(&self, chain: &'a str, key: &'a str) -> &'a str {
        match self {
            SvidError::Pem { what: "key", .. } | SvidError::Key(_) => key,
            _ => chain,
        }
    }
}

/// The current SVID: its chain (leaf first) and key.
#[derive(Debug)]
pub struct SwappableSvid {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, SvidError> {
    let pem = |what| move |source| SvidError::Pem { what, source };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("certificate"))?;
    if chain.is_empty() {
        return Err(SvidError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("key"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(SvidError::Key)
}

impl SwappableSvid {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>, SvidError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Presents `chain_pem` and `key_pem` from the next handshake on; the
    /// current SVID stays if they don't parse or don't match.
    pub fn replace(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), SvidError> {
        let next = certified(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// Presents what `other` presents, from the next handshake on.
    pub fn take_from(&self, other: &SwappableSvid) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = other.get();
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The SPIFFE ID the current SVID carries.
    pub fn spiffe_id(&self) -> Option<String> {
        let key = self.get();
        key.cert
            .first()
            .and_then(|leaf| crate::pki::spiffe_id_of(leaf).ok())
    }
}

impl rustls::server::ResolvesServerCert for SwappableSvid {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for SwappableSvid {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(id: &str) -> (String, String) {
        let ca = crate::pki::Authority::new("example.org").expect("ca");
        let s = ca.issue(id, &[], &[]).expect("issue");
        (s.cert_pem, s.key_pem)
    }

    #[test]
    fn a_replaced_svid_is_presented_and_a_bad_one_is_refused() {
        let (a_crt, a_key) = svid("spiffe://example.org/a");
        let (b_crt, b_key) = svid("spiffe://example.org/b");
        let s = SwappableSvid::from_pem(a_crt.as_bytes(), a_key.as_bytes()).expect("a");
        assert_eq!(s.spiffe_id().as_deref(), Some("spiffe://example.org/a"));
        // b's certificate with a's key: refused, a stays.
        assert!(matches!(
            s.replace(b_crt.as_bytes(), a_key.as_bytes()),
            Err(SvidError::Key(_))
        ));
        assert!(matches!(
            s.replace(b"", b_key.as_bytes()),
            Err(SvidError::NoCertificate)
        ));
        assert_eq!(s.spiffe_id().as_deref(), Some("spiffe://example.org/a"));
        s.replace(b_crt.as_bytes(), b_key.as_bytes()).expect("b");
        assert_eq!(s.spiffe_id().as_deref(), Some("spiffe://example.org/b"));
    }
}
