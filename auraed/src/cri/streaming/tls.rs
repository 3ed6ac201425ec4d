//! HTTPS for the streaming server (`[cri] stream_tls`, containerd's
//! `enable_tls_streaming`): the configured certificate chain and key, or a
//! self-signed certificate made at start for `localhost` and the stream
//! address (unless it is unspecified, `0.0.0.0` or `::`), as containerd
//! makes one when no key pair is configured. Only clients that don't verify
//! the server take that one (crictl's exec; not its port-forward, nor a
//! kubelet proxying the stream). No ALPN: the server speaks HTTP/1.1 only,
//! upgraded to SPDY or WebSocket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum StreamTlsError {
    #[error("reading the streaming server's {what} from {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate (cri.stream_tls_cert)")]
    NoCertificate { path: PathBuf },
    #[error("making the streaming server's self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    #[error("the streaming server's TLS versions")]
    Versions(#[source] rustls::Error),
    #[error(
        "the streaming server's certificate and key (cri.stream_tls_cert, cri.stream_tls_key) \
         are not a TLS identity"
    )]
    Identity(#[source] rustls::Error),
}

/// The server configuration: from `cert` and `key` (PEM files), or
/// self-signed for `addr` when both are `None`.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    addr: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, StreamTlsError> {
    let (chain, key) = match (cert, key) {
        (Some(cert), Some(key)) => from_files(cert, key)?,
        // The configuration's validation refuses one without the other.
        _ => self_signed(addr)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StreamTlsError::Versions)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(StreamTlsError::Identity)?;
    Ok(Arc::new(config))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn from_files(cert: &Path, key: &Path) -> Result<Identity, StreamTlsError> {
    let pem = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| StreamTlsError::Pem { what, path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem("certificate (cri.stream_tls_cert)", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("certificate (cri.stream_tls_cert)", cert))?;
    if chain.is_empty() {
        return Err(StreamTlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("key (cri.stream_tls_key)", key))?;
    Ok((chain, key))
}

fn self_signed(addr: SocketAddr) -> Result<Identity, StreamTlsError> {
    let mut names = vec!["localhost".to_string()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(StreamTlsError::SelfSigned)?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    Ok((vec![certified.cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_names_localhost_and_the_address() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (chain, _) = self_signed(addr).expect("self-signed");
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).expect("x509");
        use x509_parser::extensions::GeneralName;
        let names = cert
            .subject_alternative_name()
            .expect("SAN")
            .expect("SAN present")
            .value
            .general_names
            .clone();
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName("localhost"))),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])),
            "{names:?}"
        );
        server_config(None, None, addr).expect("a server config");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let e = server_config(Some(&cert), Some(&key), addr).unwrap_err();
        assert!(
            matches!(e, StreamTlsError::NoCertificate { ref path } if *path == cert),
            "{e}"
        );
        // A certificate with another's key.
        let one = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("one");
        let other = rcgen::KeyPair::generate().expect("a key");
        std::fs::write(&cert, one.cert.pem()).unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let e = server_config(Some(&cert), Some(&key), addr).unwrap_err();
        assert!(matches!(e, StreamTlsError::Identity(_)), "{e}");
        assert!(e.to_string().contains("cri.stream_tls_key"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = server_config(Some(&missing), Some(&key), addr).unwrap_err();
        assert!(e.to_string().contains("cri.stream_tls_cert"), "{e}");
    }
}
