//! SPIFFE X.509-SVIDs for auraed and its clients, made with rcgen.
//!
//! Every certificate carries exactly one URI SAN `spiffe://<trust domain>/…`,
//! a critical key usage (digitalSignature, plus keyCertSign for the CA) and
//! the serverAuth and clientAuth extended key usages.
//!
//! [`delegation`] issues identities for nested auraed instances, each with
//! an intermediate CA bound to its SPIFFE subtree; [`subtree`] verifies that
//! binding on presented chains.

pub mod delegation;
#[cfg(test)]
mod delegation_tests;
pub mod subtree;

pub use delegation::{Delegator, InstanceIdentity, HOST_PATH, MAX_DEPTH};
pub use subtree::{check_subtree, is_under, SUBTREE_OID, SUBTREE_OID_STR};

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
    #[error("{op} {path}: {source}")]
    Io {
        /// What failed, like "writing" or "reading".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`init`] without [`Overwrite::Replace`] found a file it would write.
    #[error("{path} already exists: refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: not a valid X.509 certificate: {source}")]
    Certificate {
        /// Which certificate, like "leaf" or "certificate 2 of the chain".
        what: String,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{what}: bad PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: x509_parser::error::PEMError,
    },
    #[error(
        "instance name {0:?} is not a SPIFFE path segment: use [A-Za-z0-9._-], not \".\" or \"..\""
    )]
    InstanceName(String),
    /// The parent's CA has `pathLenConstraint` 0.
    #[error("{ca} has no delegation depth left (pathLenConstraint 0): it can't issue a CA for a child instance")]
    DelegationExhausted { ca: String },
    #[error("remaining depth {requested} is more than {ca} can delegate: at most {max}")]
    DelegationTooDeep { requested: u8, max: u8, ca: String },
    /// The parent's own CA material doesn't make a delegating CA.
    #[error("{ca} can't delegate: {reason}")]
    NotDelegatingCa { ca: String, reason: String },
    /// A presented intermediate CA breaks the delegation rules.
    #[error("intermediate CA {ca}: {reason}")]
    Intermediate { ca: String, reason: String },
    #[error(
        "intermediate CA {ca}: the subtree extension ({}) is not a DER UTF8String: {source}",
        subtree::SUBTREE_OID_STR
    )]
    SubtreeEncoding {
        ca: String,
        #[source]
        source: x509_parser::nom::Err<x509_parser::asn1_rs::Error>,
    },
    /// `id` (a leaf's SPIFFE ID, or a lower CA's subtree) is not `subtree`
    /// nor under it.
    #[error("{id} is outside {subtree}, the subtree delegated to {ca}")]
    OutsideSubtree {
        id: String,
        subtree: String,
        ca: String,
    },
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

/// Whether files that already exist are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`PkiError::Exists`]; new files are created with O_EXCL.
    Refuse,
    /// Replace them, each atomically (a new file renamed over the old).
    Replace,
}

/// Writes `contents` to a new file at `path` (mode 0600 if `private`, else
/// 0644, less the umask), created with O_EXCL so that it never writes
/// through an existing file or symlink.
fn create_new(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op, source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists {
                path: path.to_path_buf(),
            },
            _ => io("creating", e),
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))
}

/// Writes `path` as [`create_new`] does; with [`Overwrite::Replace`], through
/// a new temporary file renamed over `path`.
fn write(path: &Path, contents: &str, private: bool, overwrite: Overwrite) -> Result<(), PkiError> {
    if overwrite == Overwrite::Refuse {
        return create_new(path, contents, private);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover of an interrupted run: it may have another mode.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(PkiError::Io {
                op: "removing",
                path: tmp,
                source: e,
            })
        }
        _ => {}
    }
    create_new(&tmp, contents, private)?;
    std::fs::rename(&tmp, path).map_err(|source| PkiError::Io {
        op: "renaming to",
        path: path.to_path_buf(),
        source,
    })
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
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                op: "reading",
                path,
                source,
            })
        };
        let cert_pem = read(CA_CRT)?;
        let key_pem = read(CA_KEY)?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            issuer,
            key_pem,
            cert_pem,
        })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path, overwrite: Overwrite) -> Result<(), PkiError> {
        write(&dir.join(CA_KEY), &self.key_pem, true, overwrite)?;
        write(&dir.join(CA_CRT), &self.cert_pem, false, overwrite)
    }

    /// Issues an SVID for `spiffe_id`, with optional DNS and IP SANs so that
    /// TLS clients can check the server's address.
    pub fn issue(&self, spiffe_id: &str, dns: &[String], ips: &[IpAddr]) -> Result<Svid, PkiError> {
        sign_svid(spiffe_id, dns, ips, &self.issuer)
    }
}

/// A new key and an SVID for it: one URI SAN, then `dns` and `ips`;
/// critical key usage digitalSignature, serverAuth and clientAuth, cA=false.
fn sign_svid(
    spiffe_id: &str,
    dns: &[String],
    ips: &[IpAddr],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Svid, PkiError> {
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
    let cert = params.signed_by(&key, issuer)?;
    Ok(Svid {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The DNS name and addresses a server SVID carries besides its SPIFFE ID,
/// so that clients dialing (or overriding the target name to) `localhost`
/// can check it.
fn localhost_sans() -> ([String; 1], [IpAddr; 2]) {
    (
        ["localhost".to_string()],
        [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ],
    )
}

impl Svid {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`.
    pub fn save(
        &self,
        dir: &Path,
        name: &str,
        overwrite: Overwrite,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write(&key, &self.key_pem, true, overwrite)?;
        write(&crt, &self.cert_pem, false, overwrite)?;
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

/// File names of the CA in a PKI directory.
pub const CA_KEY: &str = "ca.key";
pub const CA_CRT: &str = "ca.crt";

/// Every file [`init`] writes, the CA key first.
pub const INIT_FILES: [&str; 8] = [
    CA_KEY,
    CA_CRT,
    "server.key",
    "server.crt",
    "client.key",
    "client.crt",
    "auraed.toml",
    "config",
];

/// Files written by `auraed pki init`.
pub struct InitOutput {
    pub dir: PathBuf,
    pub server_id: String,
    pub client_id: String,
}

/// Creates a CA, a server SVID and a client SVID in `out`, plus an auraed
/// config and an aer client config that use them ([`INIT_FILES`]).
///
/// With [`Overwrite::Refuse`], fails with [`PkiError::Exists`] before
/// writing anything if one of those files exists (the CA key is checked
/// first), and creates each file with O_EXCL.
pub fn init(
    trust_domain: &str,
    out: &Path,
    socket: &Path,
    overwrite: Overwrite,
) -> Result<InitOutput, PkiError> {
    validate_trust_domain(trust_domain)?;
    if overwrite == Overwrite::Refuse {
        for name in INIT_FILES {
            let path = out.join(name);
            // symlink_metadata: a dangling symlink exists too.
            if path.symlink_metadata().is_ok() {
                return Err(PkiError::Exists { path });
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|source| PkiError::Io {
        op: "creating directory",
        path: out.to_path_buf(),
        source,
    })?;
    let ca = Authority::new(trust_domain)?;
    ca.save(out, overwrite)?;
    let server_id = format!("spiffe://{trust_domain}/auraed");
    let client_id = format!("spiffe://{trust_domain}/aer");
    let (dns, ips) = localhost_sans();
    ca.issue(&server_id, &dns, &ips)?
        .save(out, "server", overwrite)?;
    ca.issue(&client_id, &[], &[])?
        .save(out, "client", overwrite)?;
    let p = |n: &str| out.join(n).display().to_string();
    let server_cfg = format!(
        "[server]\nsocket = {socket:?}\n\n[auth]\nca_crt = {:?}\nserver_crt = {:?}\nserver_key = {:?}\nallowed_spiffe_ids = [{client_id:?}]\n",
        p(CA_CRT),
        p("server.crt"),
        p("server.key"),
    );
    write(&out.join("auraed.toml"), &server_cfg, false, overwrite)?;
    let client_cfg = format!(
        "[auth]\nca_crt = {:?}\nclient_crt = {:?}\nclient_key = {:?}\n\n[system]\nsocket = {socket:?}\n",
        p(CA_CRT),
        p("client.crt"),
        p("client.key"),
    );
    write(&out.join("config"), &client_cfg, false, overwrite)?;
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

    fn read_all(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(e.path()).unwrap_or_default())
            })
            .collect();
        files.sort();
        files
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca_key_unless_told_to() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("pki");
        let sock = Path::new("/run/test.sock");
        init("example.org", &out, sock, Overwrite::Refuse).expect("first init");
        for name in INIT_FILES {
            assert!(out.join(name).exists(), "{name}");
        }
        for key in [CA_KEY, "server.key", "client.key"] {
            assert_eq!(mode(&out.join(key)), 0o600, "{key}");
        }
        let before = read_all(&out);

        let err = init("example.org", &out, sock, Overwrite::Refuse).err();
        match err {
            Some(PkiError::Exists { path }) => assert_eq!(path, out.join(CA_KEY)),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(read_all(&out), before, "a refused init wrote something");

        init("example.org", &out, sock, Overwrite::Replace).expect("forced init");
        let key = |files: &[(String, String)]| {
            files
                .iter()
                .find(|(n, _)| n == CA_KEY)
                .map(|(_, k)| k.clone())
        };
        let after = read_all(&out);
        assert_ne!(key(&after), key(&before), "the CA key was not replaced");
        assert_eq!(after.len(), before.len(), "temporary files left: {after:?}");
        assert_eq!(mode(&out.join(CA_KEY)), 0o600);
        // The new CA loads and signs.
        Authority::load(&out)
            .expect("load")
            .issue("spiffe://example.org/x", &[], &[])
            .expect("issue");
    }

    #[test]
    fn init_writes_nothing_if_any_of_its_files_exists() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sock = Path::new("/run/test.sock");
        std::fs::write(tmp.path().join("config"), "mine").expect("write");
        match init("example.org", tmp.path(), sock, Overwrite::Refuse) {
            Err(PkiError::Exists { path }) => assert_eq!(path, tmp.path().join("config")),
            other => panic!("expected Exists, got {:?}", other.err()),
        }
        assert_eq!(
            read_all(tmp.path()),
            [("config".to_string(), "mine".to_string())]
        );

        // A dangling symlink at the CA key: refused, and nothing is written
        // where it points.
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, tmp.path().join(CA_KEY)).expect("symlink");
        assert!(matches!(
            init("example.org", tmp.path(), sock, Overwrite::Refuse),
            Err(PkiError::Exists { .. })
        ));
        assert!(!target.exists());
        // create_new refuses it too, should a check be skipped.
        assert!(matches!(
            write(&tmp.path().join(CA_KEY), "k", true, Overwrite::Refuse),
            Err(PkiError::Exists { .. })
        ));
        assert!(!target.exists());
    }

    #[test]
    fn replacing_ignores_a_leftover_temporary_file_and_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let leftover = tmp.path().join(".ca.key.tmp");
        std::fs::write(&leftover, "old").expect("write");
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let key = tmp.path().join(CA_KEY);
        write(&key, "secret", true, Overwrite::Replace).expect("write");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "secret");
        assert_eq!(mode(&key), 0o600);
        assert!(!leftover.exists());
    }
}
