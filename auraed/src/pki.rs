//! SPIFFE X.509-SVIDs for auraed and its clients, made with rcgen.
//!
//! Every certificate carries exactly one URI SAN `spiffe://<trust domain>/…`,
//! a critical key usage (digitalSignature, plus keyCertSign for the CA) and
//! the serverAuth and clientAuth extended key usages.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("trust domain {0:?} is invalid: use lowercase letters, digits, '.', '-' and '_' (at most 255)")]
    TrustDomain(String),
    #[error("SPIFFE ID {0:?} is invalid: expected spiffe://<trust domain>/<path> with non-empty segments of [A-Za-z0-9._-]")]
    SpiffeId(String),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub fn validate_trust_domain(td: &str) -> Result<(), PkiError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::TrustDomain(td.to_string()))
    }
}

/// Checks `id` and returns its trust domain.
pub fn validate_spiffe_id(id: &str) -> Result<&str, PkiError> {
    let bad = || PkiError::SpiffeId(id.to_string());
    let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (td, path) = rest.split_once('/').ok_or_else(bad)?;
    validate_trust_domain(td).map_err(|_| bad())?;
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if path.split('/').all(segment_ok) {
        Ok(td)
    } else {
        Err(bad())
    }
}

/// A CA that signs SVIDs.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    pub cert_pem: String,
}

/// A certificate and its private key, PEM-encoded.
pub struct Svid {
    pub cert_pem: String,
    pub key_pem: String,
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Authority {
    /// A new self-signed CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Result<Self, PkiError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("aurae CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            key_pem,
            cert_pem,
        })
    }

    /// Loads a CA written by [`Authority::save`].
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
        };
        let cert_pem = read("ca.crt")?;
        let key_pem = read("ca.key")?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            issuer,
            key_pem,
            cert_pem,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write(&dir.join("ca.crt"), &self.cert_pem, false)?;
        write(&dir.join("ca.key"), &self.key_pem, true)
    }

    /// Issues an SVID for `spiffe_id`, with optional DNS and IP SANs so that
    /// TLS clients can check the server's address.
    pub fn issue(&self, spiffe_id: &str, dns: &[String], ips: &[IpAddr]) -> Result<Svid, PkiError> {
        validate_spiffe_id(spiffe_id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut sans = vec![SanType::URI(spiffe_id.try_into()?)];
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Svid {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Svid {
    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write(&crt, &self.cert_pem, false)?;
        write(&key, &self.key_pem, true)?;
        Ok((crt, key))
    }
}

/// The SPIFFE ID of a DER certificate: its single `spiffe://` URI SAN.
pub fn spiffe_id_of(der: &[u8]) -> Result<String, PkiError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Invalid(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| PkiError::Invalid("the certificate has no subjectAltName".into()))?;
    let uris: Vec<&str> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => {
            validate_spiffe_id(one)?;
            Ok(one.to_string())
        }
        _ => Err(PkiError::Invalid(format!(
            "an X.509-SVID has exactly one URI SAN, this certificate has {}",
            uris.len()
        ))),
    }
}

/// Files written by `auraed pki init`.
pub struct InitOutput {
    pub dir: PathBuf,
    pub server_id: String,
    pub client_id: String,
}

/// Creates a CA, a server SVID and a client SVID in `out`, plus an auraed
/// config and an aer client config that use them.
pub fn init(trust_domain: &str, out: &Path, socket: &Path) -> Result<InitOutput, PkiError> {
    std::fs::create_dir_all(out).map_err(|source| PkiError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let ca = Authority::new(trust_domain)?;
    ca.save(out)?;
    let server_id = format!("spiffe://{trust_domain}/auraed");
    let client_id = format!("spiffe://{trust_domain}/aer");
    let localhost = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    ca.issue(&server_id, &["localhost".to_string()], &localhost)?
        .save(out, "server")?;
    ca.issue(&client_id, &[], &[])?.save(out, "client")?;
    let p = |n: &str| out.join(n).display().to_string();
    let server_cfg = format!(
        "[server]\nsocket = {socket:?}\n\n[auth]\nca_crt = {:?}\nserver_crt = {:?}\nserver_key = {:?}\nallowed_spiffe_ids = [{client_id:?}]\n",
        p("ca.crt"),
        p("server.crt"),
        p("server.key"),
    );
    write(&out.join("auraed.toml"), &server_cfg, false)?;
    let client_cfg = format!(
        "[auth]\nca_crt = {:?}\nclient_crt = {:?}\nclient_key = {:?}\n\n[system]\nsocket = {socket:?}\n",
        p("ca.crt"),
        p("client.crt"),
        p("client.key"),
    );
    write(&out.join("config"), &client_cfg, false)?;
    Ok(InitOutput {
        dir: out.to_path_buf(),
        server_id,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn svids_have_one_spiffe_uri_critical_key_usage_and_both_ekus() {
        let ca = Authority::new("example.org").expect("ca");
        let svid = ca
            .issue("spiffe://example.org/aer", &[], &[])
            .expect("svid");
        let (_, pem) = x509_parser::pem::parse_x509_pem(svid.cert_pem.as_bytes()).expect("pem");
        let (_, cert) = parse_x509_certificate(&pem.contents).expect("parse");
        assert_eq!(
            spiffe_id_of(&pem.contents).expect("id"),
            "spiffe://example.org/aer"
        );
        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(validate_spiffe_id("spiffe://td/ok/path").is_ok());
        for bad in [
            "http://td/x",
            "spiffe://td",
            "spiffe://TD/x",
            "spiffe://td//x",
            "spiffe://td/../x",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad}");
        }
        assert!(validate_trust_domain("Bad Domain").is_err());
    }
}
