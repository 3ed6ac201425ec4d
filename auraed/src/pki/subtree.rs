//! The delegated SPIFFE subtree of an intermediate CA, and its verification.
//!
//! A signing certificate's SPIFFE ID has no path (`spiffe://<td>`), and
//! rustls-webpki refuses URI name constraints, so standard X.509-SVID
//! verification lets any CA of the trust domain sign any SPIFFE ID in it.
//! Each intermediate auraed issues for an instance therefore carries a
//! non-critical private extension ([`SUBTREE_OID`]) holding the SPIFFE ID
//! prefix it may sign for, and [`check_subtree`] enforces it on a chain that
//! standard verification has already accepted.

use rustls::pki_types::CertificateDer;
use x509_parser::asn1_rs::{FromDer, Utf8String};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::Oid;

use super::{spiffe_id_of, validate_spiffe_id, validate_trust_domain, PkiError};

/// The aurae delegated SPIFFE subtree extension, as OID arcs.
///
/// Generated once from the random UUID d8919aa7-b7f6-481f-9bee-41911971d9f8
/// under 1.2.840.113556.1.8000.2554, the arc Microsoft hands out for
/// GUID-derived OIDs without registration (the UUID's 32 hex digits split
/// 4-4-4-4-4-6-6). `2.25.<uuid>` would need no registration either, but its
/// single 128-bit arc doesn't fit rcgen's u64 OID components.
pub const SUBTREE_OID: &[u64] = &[
    1, 2, 840, 113556, 1, 8000, 2554, 55441, 39591, 47094, 18463, 39918, 4296985, 7461368,
];

/// [`SUBTREE_OID`] in dotted form.
pub const SUBTREE_OID_STR: &str =
    "1.2.840.113556.1.8000.2554.55441.39591.47094.18463.39918.4296985.7461368";

/// The longest SPIFFE ID the SPIFFE spec allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The non-critical subtree extension: the DER of a UTF8String holding
/// `subtree`.
pub(super) fn extension(subtree: &str) -> rcgen::CustomExtension {
    let mut der = vec![0x0c]; // UTF8String
    let len = subtree.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        der.push(0x80 | bytes.len() as u8);
        der.extend(bytes);
    }
    der.extend_from_slice(subtree.as_bytes());
    let mut ext = rcgen::CustomExtension::from_oid_content(SUBTREE_OID, der);
    ext.set_criticality(false);
    ext
}

/// Whether `id` is `subtree` or below it, segment-wise:
/// `spiffe://td/a/b` is under `spiffe://td/a` and `spiffe://td`, but
/// `spiffe://td/ab` is not under `spiffe://td/a`.
pub fn is_under(id: &str, subtree: &str) -> bool {
    match id.strip_prefix(subtree) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Checks a subtree value: `spiffe://<td>` (the whole trust domain) or a
/// valid SPIFFE ID. Returns its trust domain.
fn validate_subtree(subtree: &str) -> Result<&str, PkiError> {
    if subtree.len() > MAX_SPIFFE_ID_LEN {
        return Err(PkiError::SpiffeId(subtree.to_string()));
    }
    match subtree.strip_prefix("spiffe://") {
        Some(td) if !td.contains('/') => {
            validate_trust_domain(td).map_err(|_| PkiError::SpiffeId(subtree.to_string()))?;
            Ok(td)
        }
        _ => validate_spiffe_id(subtree),
    }
}

/// The subtree `cert` (an intermediate CA) may sign for, from its
/// [`SUBTREE_OID`] extension; `None` if it has none.
pub fn subtree_of(cert: &X509Certificate<'_>) -> Result<Option<String>, PkiError> {
    let ca = cert.subject().to_string();
    let oid = Oid::from(SUBTREE_OID).map_err(|_| PkiError::Invalid("bad SUBTREE_OID".into()))?;
    let ext = cert
        .get_extension_unique(&oid)
        .map_err(|e| PkiError::Intermediate {
            ca: ca.clone(),
            reason: format!("subtree extension: {e}"),
        })?;
    let Some(ext) = ext else { return Ok(None) };
    let (rest, value) =
        Utf8String::from_der(ext.value).map_err(|source| PkiError::SubtreeEncoding {
            ca: ca.clone(),
            source,
        })?;
    if !rest.is_empty() {
        return Err(PkiError::Intermediate {
            ca,
            reason: "trailing bytes after the subtree extension's UTF8String".into(),
        });
    }
    let subtree = value.string();
    validate_subtree(&subtree).map_err(|_| PkiError::Intermediate {
        ca,
        reason: format!("its subtree {subtree:?} is not spiffe://<td> nor a SPIFFE ID"),
    })?;
    Ok(Some(subtree))
}

/// The trust domain of a signing certificate's URI SAN: `None` without one;
/// an error unless it is exactly one `spiffe://<td>`, without a path.
pub(super) fn signing_trust_domain(cert: &X509Certificate<'_>) -> Result<Option<String>, String> {
    let Some(sans) = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
    else {
        return Ok(None);
    };
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
        [] => Ok(None),
        [uri] => match uri.strip_prefix("spiffe://") {
            Some(td) if validate_trust_domain(td).is_ok() => Ok(Some(td.to_string())),
            _ => Err(format!(
                "its URI SAN {uri:?} is not spiffe://<trust domain> (a signing certificate's SPIFFE ID has no path)"
            )),
        },
        _ => Err(format!("it has {} URI SANs, at most one is allowed", uris.len())),
    }
}

/// Enforces the delegated subtrees on a presented chain: the leaf first,
/// then the intermediates up to (not including) the root, each issuing the
/// one before it. Returns the leaf's SPIFFE ID.
///
/// Run it after standard verification (rustls' `WebPkiClientVerifier`),
/// which checks signatures, validity and pathLenConstraint but lets any CA
/// of the trust domain sign any SPIFFE ID in it. Here every intermediate must
/// be a CA in the leaf's trust domain with a [`SUBTREE_OID`] extension (one
/// without it is refused, and so is a root sent along), the leaf's SPIFFE ID
/// must be its subtree or under it, and each intermediate's subtree must be
/// under the subtree of each one above it. A leaf issued by the root itself
/// (a one-certificate chain) needs nothing more.
///
/// The chain is peer input: anything unparsable is an error.
pub fn check_subtree(chain: &[CertificateDer<'_>]) -> Result<String, PkiError> {
    let (leaf_der, intermediates) = chain
        .split_first()
        .ok_or_else(|| PkiError::Invalid("no certificate was presented".into()))?;
    let id = spiffe_id_of(leaf_der)?;
    let td = validate_spiffe_id(&id)?.to_string();
    let leaf = parse_cert(|| format!("leaf {id}"), leaf_der)?;
    let mut issuer = leaf.issuer().as_raw().to_vec();
    // The subtree of the intermediate below the current one.
    let mut below: Option<String> = None;
    for (i, der) in intermediates.iter().enumerate() {
        let cert = parse_cert(|| format!("certificate {} of the chain", i + 2), der)?;
        let ca = cert.subject().to_string();
        let refuse = |reason: String| PkiError::Intermediate {
            ca: ca.clone(),
            reason,
        };
        if cert.subject().as_raw() != issuer {
            return Err(refuse(format!(
                "it did not issue certificate {} of the chain: send the leaf first, then each issuer, without the root",
                i + 1
            )));
        }
        issuer = cert.issuer().as_raw().to_vec();
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| refuse(format!("bad basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(refuse("it is not a CA (basicConstraints cA=false)".into()));
        }
        match signing_trust_domain(&cert).map_err(&refuse)? {
            Some(t) if t != td => {
                return Err(refuse(format!(
                    "it is in trust domain {t:?}, the leaf {id} is not"
                )))
            }
            _ => {}
        }
        let subtree = subtree_of(&cert)?.ok_or_else(|| {
            refuse(format!(
                "it has no aurae subtree extension ({SUBTREE_OID_STR}); every intermediate must"
            ))
        })?;
        if !is_under(&id, &subtree) {
            return Err(PkiError::OutsideSubtree { id, subtree, ca });
        }
        if let Some(lower) = below.take() {
            if !is_under(&lower, &subtree) {
                return Err(PkiError::OutsideSubtree {
                    id: lower,
                    subtree,
                    ca,
                });
            }
        }
        below = Some(subtree);
    }
    Ok(id)
}

/// The DER certificates of a PEM bundle (possibly empty), in order.
pub(super) fn pem_certs(
    what: &'static str,
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|source| PkiError::Pem { what, source })?;
        if block.label != "CERTIFICATE" {
            return Err(PkiError::Invalid(format!(
                "{what}: expected CERTIFICATE PEM blocks, found {:?}",
                block.label
            )));
        }
        out.push(block.contents.into());
    }
    Ok(out)
}

/// Parses a DER certificate, naming it `what` if it fails.
pub(super) fn parse_cert<'a>(
    what: impl FnOnce() -> String,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::Invalid(format!(
            "{}: trailing bytes after the certificate",
            what()
        ))),
        Err(source) => Err(PkiError::Certificate {
            what: what(),
            source,
        }),
    }
}

/// Standard (rustls-webpki) verification with the root as the only trust
/// anchor, for tests.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    pub fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
        super::pem_certs("test", pem).expect("pem")
    }

    fn roots(root_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for root in ders(root_pem) {
            roots.add(root).expect("root");
        }
        Arc::new(roots)
    }

    /// As auraed verifies a client: `chain_pem` is the leaf then the
    /// intermediates.
    pub fn verify_client(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(root_pem), provider)
            .build()
            .expect("verifier");
        let chain = ders(chain_pem);
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map(|_| ())
    }

    /// As a client dialing `localhost` verifies a server.
    pub fn verify_server(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(root_pem), provider)
            .build()
            .expect("verifier");
        let chain = ders(chain_pem);
        let name = ServerName::try_from("localhost").expect("name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ders, verify_client};
    use super::*;
    use crate::pki::{Authority, Delegator};

    #[test]
    fn under_is_segment_wise() {
        let a = "spiffe://td/auraed/a";
        assert!(is_under(a, a));
        assert!(is_under("spiffe://td/auraed/a/b", a));
        assert!(is_under("spiffe://td/auraed/a/b/c", a));
        assert!(is_under(a, "spiffe://td"));
        assert!(!is_under("spiffe://td/auraed/ab", a));
        assert!(!is_under("spiffe://td/auraed", a));
        assert!(!is_under("spiffe://td/auraed/b", a));
        assert!(!is_under("spiffe://tdx/auraed/a", "spiffe://td"));
        assert!(!is_under("spiffe://td.evil/auraed/a", "spiffe://td"));
    }

    #[test]
    fn the_extension_is_a_non_critical_der_utf8string() {
        for subtree in [
            "spiffe://td/auraed/a",
            &format!("spiffe://td/{}", "x".repeat(300)),
        ] {
            let ext = extension(subtree);
            assert!(!ext.criticality());
            assert_eq!(ext.oid_components().collect::<Vec<_>>(), SUBTREE_OID);
            let (rest, value) = Utf8String::from_der(ext.content()).expect("der");
            assert!(rest.is_empty());
            assert_eq!(value.string(), subtree);
        }
        let dotted: Vec<String> = SUBTREE_OID.iter().map(|n| n.to_string()).collect();
        assert_eq!(dotted.join("."), SUBTREE_OID_STR);
    }

    #[test]
    fn chains_are_refused_unless_in_order_and_every_intermediate_is_bound() {
        let root = Authority::new("example.org").expect("root");
        let host = Delegator::from_authority(&root).expect("host");
        let a = host.issue("a", 1).expect("a");
        let ab = Delegator::from_identity(&a)
            .expect("delegator a")
            .issue("b", 0)
            .expect("a/b");
        assert!(check_subtree(&[]).is_err());
        // The host's own kind of SVID, signed by the root: nothing to check.
        let svid = root
            .issue("spiffe://example.org/auraed", &[], &[])
            .expect("svid");
        assert_eq!(
            check_subtree(&ders(&svid.cert_pem)).expect("root-signed"),
            "spiffe://example.org/auraed"
        );

        let mut chain = ders(&ab.leaf_chain_pem);
        assert_eq!(chain.len(), 2);
        chain.swap(0, 1);
        chain.insert(0, ders(&ab.leaf_chain_pem)[0].clone());
        assert!(
            matches!(check_subtree(&chain), Err(PkiError::Intermediate { .. })),
            "out of order"
        );

        // The root sent along is an intermediate without the extension.
        let with_root = format!("{}{}", ab.leaf_chain_pem, root.cert_pem);
        verify_client(&root.cert_pem, &with_root).expect("webpki ignores the extra root");
        match check_subtree(&ders(&with_root)) {
            Err(PkiError::Intermediate { ca, reason }) => {
                assert!(ca.contains("aurae CA example.org"), "{ca}");
                assert!(reason.contains(SUBTREE_OID_STR), "{reason}");
            }
            other => panic!("expected Intermediate, got {other:?}"),
        }

        // An intermediate the root signed without the extension.
        let unbound = {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "unbound CA");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            let ca = params.signed_by(&key, &root.issuer).expect("ca");
            let issuer = rcgen::Issuer::new(params, key);
            let leaf =
                crate::pki::sign_svid("spiffe://example.org/x", &[], &[], &issuer).expect("leaf");
            format!("{}{}", leaf.cert_pem, ca.pem())
        };
        verify_client(&root.cert_pem, &unbound).expect("webpki accepts it");
        assert!(matches!(
            check_subtree(&ders(&unbound)),
            Err(PkiError::Intermediate { .. })
        ));

        // Garbage is an error, not a panic.
        let junk = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(check_subtree(std::slice::from_ref(&junk)).is_err());
        let leaf = ders(&ab.leaf_chain_pem).remove(0);
        assert!(matches!(
            check_subtree(&[leaf, junk]),
            Err(PkiError::Certificate { .. })
        ));
    }
}
