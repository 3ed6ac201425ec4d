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
    fn sign_leaf(&self, spiffe_id: &str) -> Result<(String, String), PkiError> {
        let (dns, ips) = localhost_sans();
        let svid = sign_svid(spiffe_id, &dns, &ips, &self.issuer)?;
        Ok((svid.cert_pem, svid.key_pem))
    }

    /// An intermediate CA bound to `subtree` with pathLenConstraint
    /// `path_len`, unchecked (tests forge with it). Returns the certificate
    /// and key PEM.
    fn sign_ca(&self, subtree: &str, path_len: u8) -> Result<(String, String), PkiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::subtree::testing::{ders, verify_client, verify_server};
    use crate::pki::{check_subtree, spiffe_id_of};
    use x509_parser::prelude::*;

    const A: &str = "spiffe://example.org/auraed/a";

    /// root → a (depth 2) → a/b (1) → a/b/c (0).
    fn chain3() -> (Authority, [InstanceIdentity; 3]) {
        let root = Authority::new("example.org").expect("root");
        let host = Delegator::from_authority(&root).expect("host");
        assert_eq!(host.subtree(), "spiffe://example.org");
        let a = host.issue("a", 2).expect("a");
        let ab = Delegator::from_identity(&a)
            .expect("delegator a")
            .issue("b", 1)
            .expect("a/b");
        let abc = Delegator::from_identity(&ab)
            .expect("delegator a/b")
            .issue("c", 0)
            .expect("a/b/c");
        (root, [a, ab, abc])
    }

    fn path_len(cert_pem: &str) -> Option<u32> {
        let der = ders(cert_pem).remove(0);
        let (_, cert) = parse_x509_certificate(&der).expect("parse");
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && bc.value.ca);
        bc.value.path_len_constraint
    }

    #[test]
    fn a_depth_3_chain_verifies_with_the_root_only_and_stays_in_its_subtrees() {
        let (root, ids) = chain3();
        let want = [
            A,
            "spiffe://example.org/auraed/a/b",
            "spiffe://example.org/auraed/a/b/c",
        ];
        for (n, (id, want)) in ids.iter().zip(want).enumerate() {
            assert_eq!(id.spiffe_id, want);
            let chain = ders(&id.leaf_chain_pem);
            // The leaf and the CAs of its ancestors below the root.
            assert_eq!(chain.len(), n + 1, "{want}");
            verify_client(&root.cert_pem, &id.leaf_chain_pem).expect(want);
            verify_server(&root.cert_pem, &id.leaf_chain_pem).expect(want);
            assert_eq!(check_subtree(&chain).expect(want), want);
            assert_eq!(ders(&id.trust_bundle_pem), ders(&root.cert_pem));
            let ca_chain = ders(&id.ca_chain_pem);
            assert_eq!(ca_chain.len(), n + 1);
            assert_eq!(ca_chain[0], ders(&id.ca_cert_pem)[0]);
            assert_eq!(ca_chain[1..], chain[1..]);
            assert_eq!(path_len(&id.ca_cert_pem), Some(2 - n as u32));
        }
        assert_ne!(ids[0].leaf_key_pem, ids[1].leaf_key_pem);
        assert_ne!(ids[0].ca_key_pem, ids[1].ca_key_pem);
        assert_ne!(ids[0].leaf_key_pem, ids[0].ca_key_pem);
    }

    #[test]
    fn leaves_are_svids_and_cas_have_no_path() {
        use x509_parser::extensions::GeneralName;
        let (_, [a, ..]) = chain3();
        let leaf_der = ders(&a.leaf_chain_pem).remove(0);
        let (_, leaf) = parse_x509_certificate(&leaf_der).expect("leaf");
        assert!(!leaf.is_ca());
        let bc = leaf.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().expect("ku").expect("present");
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
        let eku = leaf.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let sans = leaf
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        let uris: Vec<_> = (sans.value.general_names.iter())
            .filter(|n| matches!(n, GeneralName::URI(_)))
            .collect();
        assert_eq!(uris, [&GeneralName::URI(A)]);
        assert!(sans
            .value
            .general_names
            .contains(&GeneralName::DNSName("localhost")));
        assert_eq!(spiffe_id_of(&leaf_der).expect("id"), A);

        let ca_der = ders(&a.ca_cert_pem).remove(0);
        let (_, ca) = parse_x509_certificate(&ca_der).expect("ca");
        let sans = ca
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(
            sans.value.general_names,
            [GeneralName::URI("spiffe://example.org")]
        );
        let ku = ca.key_usage().expect("ku").expect("present");
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(ca.extended_key_usage().expect("eku").is_none());
        let oid = x509_parser::oid_registry::Oid::from(crate::pki::SUBTREE_OID).expect("oid");
        let ext = ca
            .get_extension_unique(&oid)
            .expect("ext")
            .expect("present");
        assert!(!ext.critical);
        assert_eq!(subtree_of(&ca).expect("subtree").as_deref(), Some(A));
    }

    #[test]
    fn a_child_ca_cannot_mint_a_sibling_or_a_wider_ca() {
        let (root, [a, ..]) = chain3();
        let da = Delegator::from_identity(&a).expect("delegator a");
        let sibling = "spiffe://example.org/auraed/b";
        let (leaf, _) = da.sign_leaf(sibling).expect("forged leaf");
        let forged = format!("{leaf}{}", a.ca_chain_pem);
        // Standard X.509-SVID verification accepts it: any CA of the trust
        // domain may sign any of its IDs. Only the subtree check refuses it.
        verify_client(&root.cert_pem, &forged).expect("webpki accepts the forgery");
        match check_subtree(&ders(&forged)) {
            Err(e @ PkiError::OutsideSubtree { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(sibling) && msg.contains(A), "{msg}");
            }
            other => panic!("expected OutsideSubtree, got {other:?}"),
        }

        // A CA for b under a's: its leaves are inside its own subtree but
        // outside a's.
        let (ca_b, ca_b_key) = da.sign_ca(sibling, 0).expect("forged CA");
        let ca_b_chain = format!("{ca_b}{}", a.ca_chain_pem);
        let db = Delegator::new(&ca_b_key, &ca_b_chain, &root.cert_pem).expect("delegator");
        let (leaf, _) = db.sign_leaf(sibling).expect("leaf");
        let chain = format!("{leaf}{ca_b_chain}");
        verify_client(&root.cert_pem, &chain).expect("webpki accepts it");
        match check_subtree(&ders(&chain)) {
            Err(PkiError::OutsideSubtree { id, subtree, .. }) => {
                assert_eq!((id.as_str(), subtree.as_str()), (sibling, A))
            }
            other => panic!("expected OutsideSubtree, got {other:?}"),
        }
        // A CA for the whole trust domain under a's: refused even for a leaf
        // inside a's subtree, since its subtree is wider than a's.
        let (wide, wide_key) = da.sign_ca("spiffe://example.org", 0).expect("forged CA");
        let wide_chain = format!("{wide}{}", a.ca_chain_pem);
        let dw = Delegator::new(&wide_key, &wide_chain, &root.cert_pem).expect("delegator");
        let (leaf, _) = dw.sign_leaf(&format!("{A}/x")).expect("leaf");
        let chain = format!("{leaf}{wide_chain}");
        verify_client(&root.cert_pem, &chain).expect("webpki accepts it");
        match check_subtree(&ders(&chain)) {
            Err(PkiError::OutsideSubtree { id, subtree, .. }) => {
                assert_eq!((id.as_str(), subtree.as_str()), ("spiffe://example.org", A))
            }
            other => panic!("expected OutsideSubtree, got {other:?}"),
        }
    }

    #[test]
    fn a_name_prefix_is_not_a_subtree() {
        let (root, [a, ..]) = chain3();
        let da = Delegator::from_identity(&a).expect("delegator a");
        let (leaf, _) = da.sign_leaf(&format!("{A}b")).expect("forged leaf");
        let forged = format!("{leaf}{}", a.ca_chain_pem);
        verify_client(&root.cert_pem, &forged).expect("webpki accepts it");
        match check_subtree(&ders(&forged)) {
            Err(PkiError::OutsideSubtree { id, subtree, .. }) => {
                assert_eq!(
                    (id.as_str(), subtree.as_str()),
                    ("spiffe://example.org/auraed/ab", A)
                )
            }
            other => panic!("expected OutsideSubtree, got {other:?}"),
        }
    }

    #[test]
    fn depth_is_bounded_by_path_len_here_and_in_webpki() {
        let (root, [a, _, abc]) = chain3();
        let host = Delegator::from_authority(&root).expect("host");
        assert!(matches!(
            host.issue("x", MAX_DEPTH + 1),
            Err(PkiError::DelegationTooDeep { requested, max: MAX_DEPTH, .. }) if requested == MAX_DEPTH + 1
        ));
        let da = Delegator::from_identity(&a).expect("delegator a");
        assert!(matches!(
            da.issue("b", 2),
            Err(PkiError::DelegationTooDeep {
                requested: 2,
                max: 1,
                ..
            })
        ));
        let dc = Delegator::from_identity(&abc).expect("delegator a/b/c");
        assert!(matches!(
            dc.max_child_depth(),
            Err(PkiError::DelegationExhausted { .. })
        ));
        assert!(matches!(
            dc.issue("d", 0),
            Err(PkiError::DelegationExhausted { .. })
        ));

        // pathLenConstraint 0 still signs leaves.
        let c = &abc.spiffe_id;
        let (leaf, _) = dc.sign_leaf(&format!("{c}/x")).expect("leaf");
        let chain = format!("{leaf}{}", abc.ca_chain_pem);
        verify_client(&root.cert_pem, &chain).expect("a leaf under pathLen 0");
        check_subtree(&ders(&chain)).expect("inside c's subtree");

        // A CA forged under c's anyway: inside the subtrees, so only webpki's
        // pathLenConstraint check refuses it.
        let d = format!("{c}/d");
        let (ca_d, ca_d_key) = dc.sign_ca(&d, 0).expect("forged CA");
        let ca_d_chain = format!("{ca_d}{}", abc.ca_chain_pem);
        let dd = Delegator::new(&ca_d_key, &ca_d_chain, &root.cert_pem).expect("delegator d");
        let (leaf, _) = dd.sign_leaf(&format!("{d}/e")).expect("leaf");
        let chain = format!("{leaf}{ca_d_chain}");
        check_subtree(&ders(&chain)).expect("the subtrees nest");
        let err = verify_client(&root.cert_pem, &chain).expect_err("pathLen");
        assert!(
            format!("{err:?}").contains("PathLenConstraintViolated"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_names_and_mismatched_keys_are_refused() {
        let (root, [a, ..]) = chain3();
        let host = Delegator::from_authority(&root).expect("host");
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(2048)] {
            assert!(host.issue(bad, 0).is_err(), "{bad:?}");
        }
        assert!(matches!(
            host.issue("a/b", 0),
            Err(PkiError::InstanceName(_))
        ));
        let other = Authority::new("example.org").expect("other");
        assert!(matches!(
            Delegator::new(&other.key_pem, &a.ca_chain_pem, &root.cert_pem),
            Err(PkiError::NotDelegatingCa { .. })
        ));
        // a's CA under another root.
        assert!(matches!(
            Delegator::new(&a.ca_key_pem, &a.ca_chain_pem, &other.cert_pem),
            Err(PkiError::NotDelegatingCa { .. })
        ));
        // A leaf is not a CA.
        assert!(matches!(
            Delegator::new(&a.leaf_key_pem, &a.leaf_chain_pem, &root.cert_pem),
            Err(PkiError::NotDelegatingCa { .. })
        ));
    }

    #[test]
    fn save_writes_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_, [a, ..]) = chain3();
        let tmp = tempfile::tempdir().expect("tempdir");
        let paths = a.save(tmp.path(), Overwrite::Refuse).expect("save");
        assert_eq!(paths.len(), IDENTITY_FILES.len());
        for path in paths {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            let key = path.extension().is_some_and(|e| e == "key");
            assert_eq!(mode, if key { 0o600 } else { 0o644 }, "{}", path.display());
        }
        let read = |n: &str| std::fs::read_to_string(tmp.path().join(n)).expect("read");
        let loaded = Delegator::new(&read("ca.key"), &read("ca.crt"), &read("bundle.crt"));
        assert_eq!(loaded.expect("delegator").subtree(), A);
        assert!(matches!(
            a.save(tmp.path(), Overwrite::Refuse),
            Err(PkiError::Exists { .. })
        ));
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }
}
