//! What the pod tests share: a busybox image, containers running a shell
//! script, an HTTP server and its client, and a bounded HTTP GET.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aurae_proto::runtime as pb;

use crate::image::{busybox_layer, write_docker_save, ImageConfig};

pub const PAGE: &str = "pod-says-hi";

pub fn busybox_image(dir: &Path) -> PathBuf {
    write_docker_save(
        &dir.join("busybox.tar"),
        &[busybox_layer()],
        &ImageConfig::default(),
    )
}

fn sh(script: &str) -> Option<pb::Executable> {
    Some(pb::Executable {
        command: "/bin/busybox".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    })
}

pub fn container(name: &str, image: &Path, script: &str) -> pb::PodContainer {
    pb::PodContainer {
        name: name.into(),
        image: image.display().to_string(),
        executable: sh(script),
        limits: None,
    }
}

pub fn pod(
    name: &str,
    containers: Vec<pb::PodContainer>,
    ports: Vec<pb::PodPort>,
) -> pb::RunPodRequest {
    pb::RunPodRequest {
        name: name.into(),
        containers,
        ports,
        backend: pb::SpawnBackend::Cell as i32,
        ready_timeout_ms: Some(30_000),
        ..Default::default()
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP GET of `/` at `addr`, bounded: 50 tries, 2 s each at most.
pub fn http_get(addr: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let got = (|| -> std::io::Result<String> {
            let sock = addr.parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match got {
            Ok(body) if body.contains(PAGE) => return body,
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no page from {addr}: {last}")
}

/// The server: busybox httpd serving PAGE on 8080.
pub const SERVER: &str = "mkdir -p /tmp/www && echo pod-says-hi > /tmp/www/index.html && \
                      exec /bin/busybox httpd -f -p 8080 -h /tmp/www";
/// The client: fetches the page from the server over localhost, bounded.
pub const CLIENT: &str = "for i in $(seq 1 100); do \
                      /bin/busybox wget -q -O- http://127.0.0.1:8080/ && exit 0; sleep 0.1; \
                      done; exit 1";

/// Waits for the pod's `web/client` container and checks that it fetched
/// the server's page over the pod's localhost.
pub async fn client_got_the_page(
    c: &mut aurae_proto::runtime::runtime_client::RuntimeClient<tonic::transport::Channel>,
) {
    let waited = c
        .wait(pb::WaitRequest {
            id: "web/client".into(),
            timeout_ms: Some(20_000),
        })
        .await
        .expect("wait web/client")
        .into_inner();
    assert_eq!(waited.exit_code, Some(0), "{waited:?}");
    let text = crate::logs::text(c, "web/client").await;
    assert!(text.contains(PAGE), "client logs: {text}");
}
