//! Tests of [`super::delegation`] and, through it, [`super::subtree`].

use super::delegation::*;
use super::{Authority, Overwrite, PkiError};
use crate::pki::subtree::subtree_of;
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
