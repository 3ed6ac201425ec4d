//! The images critest pulls, built here under its names (as
//! `registry.k8s.io/...` and `gcr.io/...` reach them through a mirror) from
//! Debian's packages, and pushed to a local registry:
//! - busybox: Debian's dynamically linked busybox with its applets as hard
//!   links (its shell execs `/bin/ls`, so a masked `/bin/ls` is seen, as
//!   with the upstream image), its libraries, and procps' `pgrep` and
//!   util-linux's `ipcs`, which busybox lacks;
//! - nginx (`e2e-test-images/nginx`, `hostnet-nginx-amd64`): Debian's nginx
//!   serving a page on port 80 (12003), writing `/var/run/nginx.pid`;
//! - httpd (the multi-container specs): a stand-in on busybox's `httpd`
//!   serving port 80, which first logs the line the upstream Apache image
//!   logs (`Command line: 'httpd -D FOREGROUND'`);
//! - nonewprivs: a setuid-root program that prints its effective uid;
//! - the test images (`test-image-*`): busybox plus a file named after the
//!   image, or users and groups.
//!
//! The image pinned by the upstream digest can't be built (a local image
//! has another digest).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::cri::Registry;
use crate::image::{files_layer, header, write_docker_save, ImageConfig};

/// Where the programs come from: Debian packages unpacked (`dpkg-deb -x`)
/// and the setuid program, built by the caller.
pub struct Sources {
    /// The root of the unpacked `busybox` package.
    pub busybox: PathBuf,
    /// The root of the unpacked `nginx` package.
    pub nginx: PathBuf,
    /// A static program printing "Effective uid: N".
    pub nnp: PathBuf,
}

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A tar layer that adds each folder on the way once.
struct Layer {
    tar: tar::Builder<Vec<u8>>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl Layer {
    fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str, mode: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755);
        }
        if self.dirs.insert(path.to_string()) {
            let h = header(path, 0, mode, tar::EntryType::Directory);
            self.tar.append(&h, std::io::empty()).expect("dir");
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755);
        }
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        if !self.files.insert(path.to_string()) {
            return;
        }
        self.parent(path);
        let h = header(path, data.len() as u64, mode, tar::EntryType::Regular);
        self.tar.append(&h, data).expect("file");
    }

    fn hard_link(&mut self, path: &str, target: &str) {
        if !self.files.insert(path.to_string()) {
            return;
        }
        self.parent(path);
        let mut h = header(path, 0, 0o755, tar::EntryType::Link);
        h.set_link_name(target).expect("link name");
        h.set_cksum();
        self.tar.append(&h, std::io::empty()).expect("hard link");
    }

    /// A host program at `at`, with the shared libraries it loads at the
    /// paths it loads them from.
    fn program(&mut self, host: &Path, at: &str) {
        let data = std::fs::read(host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        self.file(at, &data, 0o755);
        for lib in libraries(host) {
            let data = std::fs::read(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
            let at = lib.to_string_lossy().trim_start_matches('/').to_string();
            self.file(&at, &data, 0o755);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.tar.into_inner().expect("tar")
    }
}

/// The shared libraries `program` loads, as `ldd` lists them.
fn libraries(program: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// Debian's busybox with an applet per hard link, pgrep, ipcs, and users.
fn busybox_layer(sources: &Sources) -> Vec<u8> {
    let mut l = Layer::new();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "var/run",
    ] {
        l.dir(dir, 0o755);
    }
    l.dir("tmp", 0o1777);
    let busybox = sources.busybox.join("bin/busybox");
    l.program(&busybox, "bin/busybox");
    l.program(Path::new("/usr/bin/pgrep"), "usr/bin/pgrep");
    l.program(Path::new("/usr/bin/ipcs"), "usr/bin/ipcs");
    let out = std::process::Command::new(&busybox)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "bin/busybox" {
            l.hard_link(applet, "bin/busybox");
        }
    }
    l.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/home/web:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    l.file(
        "etc/group",
        b"root:x:0:\nweb:x:1000:\nnogroup:x:65534:\n",
        0o644,
    );
    l.finish()
}

/// Debian's nginx serving `/www` on `port`.
fn nginx_layer(sources: &Sources, port: u16) -> Vec<u8> {
    let mut l = Layer::new();
    l.program(&sources.nginx.join("usr/sbin/nginx"), "usr/sbin/nginx");
    let conf = format!(
        "user nobody nogroup;\nworker_processes 1;\npid /var/run/nginx.pid;\n\
         error_log stderr;\nevents {{ worker_connections 64; }}\n\
         http {{ access_log off; server {{ listen {port}; root /www; }} }}\n"
    );
    l.file("etc/nginx/nginx.conf", conf.as_bytes(), 0o644);
    for dir in ["var/lib/nginx", "var/log/nginx"] {
        l.dir(dir, 0o755);
    }
    l.file(
        "www/index.html",
        b"<html><body>nginx</body></html>\n",
        0o644,
    );
    l.finish()
}

fn config(cmd: &[&str], user: Option<&str>) -> ImageConfig {
    ImageConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec![PATH.into()],
        user: user.map(str::to_string),
        ..ImageConfig::default()
    }
}

/// Builds every image critest pulls (but the digest-pinned one) and
/// pushes it to `registry`; `dir` holds the archives.
pub fn push(registry: &Registry, dir: &Path, sources: &Sources) {
    for (file, name) in build(dir, sources) {
        registry.push(&file, &name);
    }
}

/// The name of the index file [`build`] writes beside the archives: a line
/// per image, its archive's file name and the image's name.
pub const INDEX: &str = "index.txt";

/// Builds every image critest pulls (but the digest-pinned one) as a
/// `docker save` archive in `dir`, and the index of them ([`INDEX`]); the
/// archives and the names to push them under.
pub fn build(dir: &Path, sources: &Sources) -> Vec<(PathBuf, String)> {
    let busybox = busybox_layer(sources);
    let built = std::cell::RefCell::new(Vec::new());
    let push = |name: &str, layers: &[Vec<u8>], cfg: ImageConfig| {
        let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        write_docker_save(&file, layers, &cfg);
        built.borrow_mut().push((file, name.to_string()));
    };
    let sh = config(&["/bin/sh"], None);
    push(
        "e2e-test-images/busybox:1.29-2",
        std::slice::from_ref(&busybox),
        sh.clone(),
    );
    let nginx_cmd = ["/usr/sbin/nginx", "-g", "daemon off;"];
    push(
        "e2e-test-images/nginx:1.14-2",
        &[busybox.clone(), nginx_layer(sources, 80)],
        config(&nginx_cmd, None),
    );
    let tools = "k8s-staging-cri-tools";
    push(
        &format!("{tools}/hostnet-nginx-amd64:latest"),
        &[busybox.clone(), nginx_layer(sources, 12003)],
        config(&nginx_cmd, None),
    );
    let page = files_layer(&[("www/index.html", b"<html><body>httpd</body></html>\n")]);
    push(
        "e2e-test-images/httpd:2.4.39-4",
        &[busybox.clone(), page],
        config(
            &[
                "/bin/sh",
                "-c",
                "echo \"AH00094: Command line: 'httpd -D FOREGROUND'\"; \
                 exec httpd -f -p 80 -h /www",
            ],
            None,
        ),
    );
    let nnp = {
        let mut l = Layer::new();
        let data = std::fs::read(&sources.nnp).expect("nnp");
        l.file("usr/local/bin/nnp", &data, 0o4755);
        l.finish()
    };
    push(
        "e2e-test-images/nonewprivs:1.3",
        &[busybox.clone(), nnp],
        config(&["/usr/local/bin/nnp"], None),
    );
    let marked = |mark: &str| vec![busybox.clone(), files_layer(&[(mark, b"")])];
    push(
        &format!("{tools}/test-image-latest:latest"),
        &marked("test-image-latest"),
        sh.clone(),
    );
    for tag in ["test", "all"] {
        push(
            &format!("{tools}/test-image-tag:{tag}"),
            &marked("test-image-tag"),
            sh.clone(),
        );
    }
    for n in 1..=3 {
        let name = format!("test-image-{n}");
        push(
            &format!("{tools}/{name}:latest"),
            &marked(&name),
            sh.clone(),
        );
        push(
            &format!("{tools}/test-image-tags:{n}"),
            &marked("test-image-tags"),
            sh.clone(),
        );
    }
    let users = files_layer(&[
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n\
              user1000:x:1000:1000::/home:/bin/sh\n",
        ),
        (
            "etc/group",
            b"root:x:0:\nwww-data:x:33:\ngroup1000:x:1000:\ngroup50000:x:50000:user1000\n",
        ),
    ]);
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
        ("test-image-predefined-group", "1000"),
    ] {
        push(
            &format!("{tools}/{name}:latest"),
            &[busybox.clone(), users.clone()],
            config(&["/bin/sh"], Some(user)),
        );
    }
    let built = built.into_inner();
    let index: String = built
        .iter()
        .map(|(file, name)| {
            let file = file.file_name().unwrap_or_default().to_string_lossy();
            format!("{file} {name}\n")
        })
        .collect();
    std::fs::write(dir.join(INDEX), index).expect("the images' index");
    built
}

/// Pushes the archives that [`build`] left in `dir` (after its index) to
/// `registry`: how the QEMU test host gets critest's images, built outside.
pub fn push_built(registry: &Registry, dir: &Path) {
    let index = std::fs::read_to_string(dir.join(INDEX)).expect("the images' index");
    for line in index.lines() {
        let (file, name) = line.split_once(' ').expect("an index line");
        registry.push(&dir.join(file), name);
    }
}

/// One image, `name`, of the busybox layer running `cmd`, pushed to
/// `registry` (for benchmarks: the default image and a pause image).
pub fn push_one(registry: &Registry, dir: &Path, sources: &Sources, name: &str, cmd: &[&str]) {
    let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    write_docker_save(&file, &[busybox_layer(sources)], &config(cmd, None));
    registry.push(&file, name);
}
