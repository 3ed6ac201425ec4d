//! A Python grpcio client over the Unix socket (tests/probes/grpcio_client.py),
//! with the one option the README shows for it.

use std::path::PathBuf;
use std::time::Duration;

use aurae_tests::Daemon;

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("probes/grpcio_client.py")
}

/// Why grpcio can't be used here, if it can't.
async fn grpcio_missing() -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .args(["-c", "import grpc"])
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match out {
        Err(_) => Some("python3 -c 'import grpc' did not finish in 30 s".into()),
        Ok(Err(e)) => Some(format!("running python3: {e}")),
        Ok(Ok(o)) if !o.status.success() => Some(format!(
            "python3 cannot import grpc (`cargo xtask test` installs it with pip): {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )),
        Ok(Ok(_)) => None,
    }
}

/// Runs the probe against `d` and returns its output line.
async fn run_probe(d: &Daemon, mode: &str) -> String {
    let cfg = d.config();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(probe())
            .arg(&d.socket)
            .arg(&cfg.auth.ca_crt)
            .arg(&cfg.auth.client_crt)
            .arg(&cfg.auth.client_key)
            .arg(mode)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio probe finishes within 60 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.success(),
        stdout == "OK",
        "exit status and output disagree: {stdout}\n{stderr}"
    );
    format!("{stdout}\n{stderr}")
}

#[tokio::test]
async fn grpcio_works_over_the_socket_with_the_target_name_override() {
    if let Some(reason) = grpcio_missing().await {
        aurae_tests::report_skip(aurae_tests::function_name!(), &reason);
        return;
    }
    let d = Daemon::start().await;
    let with = run_probe(&d, "override").await;
    assert!(with.starts_with("OK\n"), "with the override: {with}");
    // Without it grpcio sends a server name derived from the socket path
    // (1.85: "tmp%2F...%2Faurae.sock"), and rustls 0.23 refuses the
    // handshake with an illegal_parameter alert.
    let without = run_probe(&d, "no-override").await;
    assert!(
        without.starts_with("FAILED UNAVAILABLE") && without.contains("ILLEGAL_PARAMETER"),
        "without the override: {without}"
    );
}
