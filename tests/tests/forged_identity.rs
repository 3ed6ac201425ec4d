//! A compromised instance tries to mint an identity outside its subtree
//! with the signing CA its parent delegated to it: the admin's SPIFFE ID,
//! to manage its parent. Standard verification accepts the chain (same
//! trust domain, valid signatures); auraed's subtree check refuses it.

use std::path::Path;

use aurae_tests::{require_root, Daemon, DaemonOptions};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A client SVID for `spiffe_id`, signed by the CA in `key_pem`/`ca_pem`.
fn forge(spiffe_id: &str, key_pem: &str, ca_pem: &str) -> (String, String) {
    let ca_key = KeyPair::from_pem(key_pem).expect("the instance's CA key");
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("the instance's CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, spiffe_id);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("uri"))];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn an_instance_cannot_mint_its_parents_admin_identity() {
    require_root!();
    let Some(image) = aurae_tests::binary("auraed")
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("aurae-image"))
        .filter(|d| d.join("initramfs.cpio.zst").is_file())
    else {
        aurae_tests::report_skip(
            aurae_tests::function_name!(),
            "no image: target/aurae-image/initramfs.cpio.zst (cargo xtask image)",
        );
        return;
    };
    let d = Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        ..Default::default()
    })
    .await;
    let out = d.aer(&["spawn", "--name", "a", "--backend", "cell"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What a compromised `a` holds: its delegated CA (the chain up to the
    // root) and its key, from its own writable layer.
    let pki = d.seen_by_auraed("state/cells/a/upper/etc/aurae/pki");
    let ca_chain = std::fs::read_to_string(pki.join("signing.crt")).expect("a's CA chain");
    let ca_key = std::fs::read_to_string(pki.join("signing.key")).expect("a's CA key");
    let first_ca = {
        let end = "-----END CERTIFICATE-----";
        let at = ca_chain.find(end).expect("a PEM certificate") + end.len();
        format!("{}\n", &ca_chain[..at])
    };

    let try_as = |spiffe_id: &str, name: &str| {
        let (cert, key) = forge(spiffe_id, &ca_key, &first_ca);
        let dir = d.dir.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("client.crt"), format!("{cert}{ca_chain}")).expect("crt");
        std::fs::write(dir.join("client.key"), key).expect("key");
        let config = format!(
            "[auth]\nca_crt = {:?}\nclient_crt = {:?}\nclient_key = {:?}\n\n[system]\nsocket = {:?}\n",
            d.dir.join("pki/ca.crt").display().to_string(),
            dir.join("client.crt").display().to_string(),
            dir.join("client.key").display().to_string(),
            d.socket.display().to_string(),
        );
        std::fs::write(dir.join("config"), config).expect("config");
        std::process::Command::new(aurae_tests::binary("aer"))
            .env("AURAE_CONFIG", dir.join("config"))
            .arg("ls")
            .output()
            .expect("aer")
    };
    // The admin's identity, minted by a: refused by the subtree check.
    let out = try_as("spiffe://test.local/aer", "forged-admin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a forged admin was let in");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains("subtree") || err.contains("outside"), "{err}");
    // A sibling's identity, minted by a: refused too (not allowed anyway,
    // but the refusal names the subtree, not the allow-list).
    let out = try_as("spiffe://test.local/auraed/b", "forged-sibling");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("subtree") || err.contains("outside"), "{err}");
    // An identity inside a's subtree passes the check and meets the
    // allow-list, which doesn't name it: refused for that reason instead.
    let out = try_as("spiffe://test.local/auraed/a/x", "own-subtree");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not allowed"), "{err}");
}
