//! `auraed pki init` against an existing PKI directory.

use std::process::{Command, Output};

fn pki_init(out: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(aurae_tests::binary("auraed"))
        .args(["pki", "init", "--trust-domain", "test.local", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run auraed pki init")
}

#[test]
fn pki_init_refuses_to_overwrite_the_ca_key_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("pki");
    let first = pki_init(&out, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key = out.join("ca.key");
    let original = std::fs::read(&key).expect("ca.key");

    let second = pki_init(&out, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second init succeeded");
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).expect("ca.key"), original);

    let forced = pki_init(&out, &["--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(std::fs::read(&key).expect("ca.key"), original);
}
