//! Identities for nested auraed instances, each signed by its parent.
//!
//! The host auraed holds the trust domain's root CA (`pki init`); its own
//! SVID is `spiffe://<td>/auraed`. An instance `a` it spawns gets
//! `spiffe://<td>/auraed/a`, a's child `b` gets `spiffe://<td>/auraed/a/b`,
//! and so on. Each instance gets two certificates:
//!
//! - a leaf X.509-SVID (cA=false, critical key usage digitalSignature,
//!   serverAuth and clientAuth, one URI SAN, plus `localhost` and the
//!   loopback addresses like the host's server SVID), signed by its parent's
//!   CA;
//! - an intermediate CA (URI SAN `spiffe://<td>`, no path, as the X509-SVID
//!   spec requires of signing certificates; pathLenConstraint = the depth it
//!   may still delegate; critical key usage keyCertSign and cRLSign) bound to
//!   the instance's SPIFFE ID as its subtree by the non-critical
//!   [`SUBTREE_OID`](super::SUBTREE_OID) extension, so that it can issue its
//!   own children's identities, and [`check_subtree`](super::check_subtree)
//!   refuses anything it signs outside that subtree.
//!
//! Nothing here touches the disk but [`InstanceIdentity::save`]: the caller
//! writes an instance's keys into that instance's overlay (or tmpfs) only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};

use super::subtree::{self, is_under, parse_cert, pem_certs, signing_trust_domain, subtree_of};
use super::{localhost_sans, sign_svid, validate_spiffe_id, write, Authority, Overwrite, PkiError};

/// The host auraed's path in the trust domain: its children are named
/// `spiffe://<td>/auraed/<name>`, as its server SVID is `spiffe://<td>/auraed`.
pub const HOST_PATH: &str = "auraed";

/// The largest remaining depth the root gives a child. rustls-webpki builds
/// paths of at most 6 intermediates; a child of the root with remaining
/// depth 5 has descendants 5 levels down, whose CA's leaves sit under 6.
pub const MAX_DEPTH: u8 = 5;

/// What a spawned instance needs: its SVID and its delegating CA, in PEM.
#[derive(Clone)]
pub struct InstanceIdentity {
    pub spiffe_id: String,
    /// The leaf, then the intermediates above it up to (not including) the
    /// root: what the instance presents in TLS.
    pub leaf_chain_pem: String,
    pub leaf_key_pem: String,
    /// The instance's own intermediate CA.
    pub ca_cert_pem: String,
    /// That CA followed by the intermediates above it (not the root): what
    /// the instance appends to the leaves it issues.
    pub ca_chain_pem: String,
    pub ca_key_pem: String,
    /// The root CA: the only trust anchor.
    pub trust_bundle_pem: String,
}

impl std::fmt::Debug for InstanceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// File names [`InstanceIdentity::save`] writes, keys mode 0600.
pub const IDENTITY_FILES: [&str; 5] = ["svid.key", "svid.crt", "ca.key", "ca.crt", "bundle.crt"];

impl InstanceIdentity {
    /// Writes the identity into `dir` (meant to be the instance's own
    /// overlay or tmpfs, never the parent's disk): `svid.crt` (the leaf
    /// chain), `svid.key`, `ca.crt` (the CA chain), `ca.key` and
    /// `bundle.crt`, keys mode 0600.
    pub fn save(&self, dir: &Path, overwrite: Overwrite) -> Result<Vec<PathBuf>, PkiError> {
        let [svid_key, svid_crt, ca_key, ca_crt, bundle] = IDENTITY_FILES;
        let files = [
            (svid_key, &self.leaf_key_pem, true),
            (svid_crt, &self.leaf_chain_pem, false),
            (ca_key, &self.ca_key_pem, true),
            (ca_crt, &self.ca_chain_pem, false),
            (bundle, &self.trust_bundle_pem, false),
        ];
        let mut paths = Vec::new();
        for (name, contents, private) in files {
            let path = dir.join(name);
            write(&path, contents, private, overwrite)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Issues identities for the children of one auraed, with its CA.
pub struct Delegator {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's subject, for messages.
    name: String,
    trust_domain: String,
    /// Children are `<base>/<name>`.
    base: String,
    /// What the CA may sign: `spiffe://<td>` for the root, else `base`.
    subtree: String,
    /// The CA's pathLenConstraint; `None` for an unconstrained root.
    path_len: Option<u32>,
    /// The CA and the intermediates above it, not the root: empty for the
    /// root.
    chain_pem: String,
    trust_bundle_pem: String,
}

impl Delegator {
    /// The host's: the trust domain's root CA from `pki init`.
    pub fn from_authority(root: &Authority) -> Result<Self, PkiError> {
        Self::new(&root.key_pem, &root.cert_pem, &root.cert_pem)
    }

    /// An instance's, from the identity its parent issued it.
    pub fn from_identity(identity: &InstanceIdentity) -> Result<Self, PkiError> {
        Self::new(
            &identity.ca_key_pem,
            &identity.ca_chain_pem,
            &identity.trust_bundle_pem,
        )
    }

    /// A delegator for the CA of `ca_chain_pem` (that CA, then the
    /// intermediates above it; just the root for the host) with its key,
    /// under the root of `trust_bundle_pem`.
    ///
    /// The subtree and the depth left come from the CA certificate: the
    /// root's subtree is the whole trust domain, and its children are named
    /// under `spiffe://<td>/auraed`; an intermediate's subtree is its
    /// [`SUBTREE_OID`](super::SUBTREE_OID) extension, and its children are
    /// named under it.
    pub fn new(
        ca_key_pem: &str,
        ca_chain_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, PkiError> {
        let chain = pem_certs("CA chain", ca_chain_pem)?;
        let roots = pem_certs("trust bundle", trust_bundle_pem)?;
        let [root_der] = roots.as_slice() else {
            return Err(PkiError::NotDelegatingCa {
                ca: "the trust bundle".into(),
                reason: format!("it holds {} certificates, not one root", roots.len()),
            });
        };
        let root = parse_cert(|| "trust bundle".into(), root_der)?;
        let Some(ca_der) = chain.first() else {
            return Err(PkiError::NotDelegatingCa {
                ca: "the CA chain".into(),
                reason: "it holds no certificate".into(),
            });
        };
        let ca = parse_cert(|| "CA certificate".into(), ca_der)?;
        let name = ca.subject().to_string();
        let refuse = |reason: &str| PkiError::NotDelegatingCa {
            ca: name.clone(),
            reason: reason.to_string(),
        };
        let bc = ca
            .basic_constraints()
            .map_err(|e| refuse(&format!("bad basicConstraints: {e}")))?
            .map(|bc| bc.value.clone())
            .filter(|bc| bc.ca)
            .ok_or_else(|| refuse("it is not a CA (basicConstraints cA=false)"))?;
        let trust_domain = signing_trust_domain(&ca)
            .map_err(|e| refuse(&e))?
            .ok_or_else(|| refuse("it has no spiffe://<td> URI SAN"))?;
        let key = KeyPair::from_pem(ca_key_pem)?;
        if key.subject_public_key_info() != ca.public_key().raw {
            return Err(refuse("the key given is not this certificate's"));
        }
        let last = parse_cert(|| "CA chain".into(), chain.last().unwrap_or(ca_der))?;
        let (subtree, base, path_len, chain_pem) = if chain.len() == 1 && ca_der == root_der {
            let subtree = format!("spiffe://{trust_domain}");
            let base = format!("{subtree}/{HOST_PATH}");
            (subtree, base, bc.path_len_constraint, String::new())
        } else {
            if last.issuer().as_raw() != root.subject().as_raw() || key_ids_differ(&last, &root) {
                return Err(refuse(
                    "the CA chain does not end at the trust bundle's root",
                ));
            }
            let subtree = subtree_of(&ca)?.ok_or_else(|| {
                refuse("it has no subtree extension and it is not the trust bundle's root")
            })?;
            if !is_under(&subtree, &format!("spiffe://{trust_domain}")) {
                return Err(refuse("its subtree is in another trust domain"));
            }
            let path_len = bc
                .path_len_constraint
                .ok_or_else(|| refuse("an intermediate without pathLenConstraint"))?;
            (
                subtree.clone(),
                subtree,
                Some(path_len),
                with_newline(ca_chain_pem),
            )
        };
        let issuer = Issuer::from_ca_cert_der(ca_der, key)?;
        Ok(Self {
            issuer,
            name,
            trust_domain,
            base,
            subtree,
            path_len,
            chain_pem,
            trust_bundle_pem: with_newline(trust_bundle_pem),
        })
    }

    /// The subtree this delegator's CA may sign for.
    pub fn subtree(&self) -> &str {
        &self.subtree
    }

    /// The largest remaining depth a child may get: the CA's
    /// pathLenConstraint less one (the child's CA counts), at most
    /// [`MAX_DEPTH`]; an error if it is 0.
    pub fn max_child_depth(&self) -> Result<u8, PkiError> {
        match self.path_len {
            None => Ok(MAX_DEPTH),
            Some(0) => Err(PkiError::DelegationExhausted {
                ca: self.name.clone(),
            }),
            Some(p) => Ok(u8::try_from(p - 1).unwrap_or(u8::MAX).min(MAX_DEPTH)),
        }
    }

    /// The identity of child `instance_name`, which may delegate
    /// `remaining_depth` more levels (0: it can sign leaves, not CAs).
    pub fn issue(
        &self,
        instance_name: &str,
        remaining_depth: u8,
    ) -> Result<InstanceIdentity, PkiError> {
        let segment_ok = !instance_name.is_empty()
            && instance_name != "."
            && instance_name != ".."
            && instance_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !segment_ok {
            return Err(PkiError::InstanceName(instance_name.to_string()));
        }
        let max = self.max_child_depth()?;
        if remaining_depth > max {
            return Err(PkiError::DelegationTooDeep {
                requested: remaining_depth,
                max,
                ca: self.name.clone(),
            });
        }
        let spiffe_id = format!("{}/{instance_name}", self.base);
        if spiffe_id.len() > subtree::MAX_SPIFFE_ID_LEN {
            return Err(PkiError::SpiffeId(spiffe_id));
        }
        validate_spiffe_id(&spiffe_id)?;
        let (leaf_pem, leaf_key_pem) = self.sign_leaf(&spiffe_id)?;
        let (ca_cert_pem, ca_key_pem) = self.sign_ca(&spiffe_id, remaining_depth)?;
        Ok(InstanceIdentity {
            leaf_chain_pem: format!("{}{}", with_newline(&leaf_pem), self.chain_pem),
            leaf_key_pem,
            ca_chain_pem: format!("{}{}", with_newline(&ca_cert_pem), self.chain_pem),
            ca_cert_pem,
            ca_key_pem,
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            spiffe_id,
        })
    }

    /// A leaf for `spiffe_id`, unchecked against the subtree (tests forge
    /// with it). Returns the certificate and key PEM.
    pub(super) fn sign_leaf(&self, spiffe_id: &str) -> Result<(String, String), PkiError> {
        let (dns, ips) = localhost_sans();
        let svid = sign_svid(spiffe_id, &dns, &ips, &self.issuer)?;
        Ok((svid.cert_pem, svid.key_pem))
    }

    /// An intermediate CA bound to `subtree` with pathLenConstraint
    /// `path_len`, unchecked (tests forge with it). Returns the certificate
    /// and key PEM.
    pub(super) fn sign_ca(
        &self,
        subtree: &str,
        path_len: u8,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("aurae CA {subtree}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain).try_into()?,
        )];
        params.custom_extensions = vec![subtree::extension(subtree)];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Whether `cert`'s authority key identifier and `issuer`'s subject key
/// identifier are both there and differ (two roots may share a name).
fn key_ids_differ(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    use x509_parser::extensions::ParsedExtension;
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        });
    let ski = issuer
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski),
            _ => None,
        });
    matches!((aki, ski), (Some(a), Some(s)) if a.0 != s.0)
}

/// `pem`, ending with a newline so that PEM bundles concatenate.
fn with_newline(pem: &str) -> String {
    let mut pem = pem.to_string();
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem
}
