//! What a spawned instance finds in its overlay: its identity, the trust
//! bundle, the signing material it delegates to its own children, its
//! auraed config and its `aurae.*` parameters. Private keys live only here
//! (the instance's writable layer, on auraed's tmpfs), never on the
//! parent's disk, and go with the instance.

use std::net::Ipv6Addr;
use std::path::PathBuf;

use crate::cells::SeedFile;

/// Where the instance's auraed finds its files.
pub const PKI: &str = "/etc/aurae/pki";
/// Where the image its own children boot is: bound read-only into a cell;
/// in a microVM's overlay, with the kernel and a static aurae-vmm when it
/// was spawned nested (without them, its children are cells).
pub const IMAGE: &str = "/etc/aurae/image";

/// An instance's identity, as its parent issued it (PEM).
#[derive(Debug, Clone)]
pub struct Identity {
    pub spiffe_id: String,
    /// The leaf SVID, then the intermediates above it.
    pub leaf_chain_pem: String,
    pub leaf_key_pem: String,
    /// The instance's own intermediate CA, then the ones above it.
    pub ca_chain_pem: String,
    pub ca_key_pem: String,
    /// The trust domain's root.
    pub trust_bundle_pem: String,
}

/// What the instance is told about itself and its parent.
#[derive(Debug, Clone)]
pub struct Params {
    pub name: String,
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub port: u16,
    /// SPIFFE IDs allowed to manage the instance: its parent and the
    /// parent's own admins.
    pub allowed: Vec<String>,
    /// Its path in the instance tree ("a/b").
    pub path: String,
    /// Its parent's metadata endpoint, and the parent's SPIFFE ID.
    pub parent: std::net::SocketAddr,
    pub parent_id: String,
    /// The instance's auraed serves 169.254.169.254 itself (a microVM).
    pub link_local_metadata: bool,
    /// It shares its parent's network namespace: it makes nothing there.
    pub in_host_network: bool,
    /// A pre-started instance: it takes its identity from its parent once
    /// claimed (`Metadata.Assume`).
    pub pre_started: bool,
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The seed files of an instance's overlay.
pub fn seed(identity: &Identity, params: &Params) -> Vec<SeedFile> {
    let file = |path: &str, contents: String, mode: u32| SeedFile {
        path: PathBuf::from(path.trim_start_matches('/')),
        contents: contents.into_bytes(),
        mode,
    };
    let config = format!(
        "[server]\nsocket = \"/run/aurae/aurae.sock\"\n\n\
         [auth]\nca_crt = \"{PKI}/ca.crt\"\nserver_crt = \"{PKI}/server.crt\"\n\
         server_key = \"{PKI}/server.key\"\nallowed_spiffe_ids = {allowed}\n\n\
         [runtime]\nstate_dir = \"/var/lib/aurae\"\ncgroup_root = \"aurae\"\n\n\
         [instances]\nimage_dir = \"{IMAGE}\"\nsigning_key = \"{PKI}/signing.key\"\n\
         signing_chain = \"{PKI}/signing.crt\"\nvmm = \"{IMAGE}/aurae-vmm\"\n\
         path = {path:?}\nparent = \"{parent}\"\nparent_id = {parent_id:?}\n\
         link_local_metadata = {lm}\npre_started = {pre}\nin_host_network = {hn}\n",
        allowed = toml_list(&params.allowed),
        path = params.path,
        parent = params.parent,
        parent_id = params.parent_id,
        lm = params.link_local_metadata,
        pre = params.pre_started,
        hn = params.in_host_network,
    );
    let boot = format!(
        "aurae.name={} aurae.ip={}/{} aurae.port={}\n",
        params.name, params.address, params.prefix_len, params.port
    );
    vec![
        file(
            &format!("{PKI}/ca.crt"),
            identity.trust_bundle_pem.clone(),
            0o644,
        ),
        file(
            &format!("{PKI}/server.crt"),
            identity.leaf_chain_pem.clone(),
            0o644,
        ),
        file(
            &format!("{PKI}/server.key"),
            identity.leaf_key_pem.clone(),
            0o600,
        ),
        file(
            &format!("{PKI}/signing.crt"),
            identity.ca_chain_pem.clone(),
            0o644,
        ),
        file(
            &format!("{PKI}/signing.key"),
            identity.ca_key_pem.clone(),
            0o600,
        ),
        file("/etc/aurae/auraed.toml", config, 0o644),
        file("/etc/aurae/bootparams", boot, 0o644),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_and_the_config_names_the_parent() {
        let identity = Identity {
            spiffe_id: "spiffe://td/auraed/a".into(),
            leaf_chain_pem: "LEAF".into(),
            leaf_key_pem: "KEY".into(),
            ca_chain_pem: "CA".into(),
            ca_key_pem: "CAKEY".into(),
            trust_bundle_pem: "ROOT".into(),
        };
        let params = Params {
            name: "a".into(),
            address: "fd00::2".parse().expect("addr"),
            prefix_len: 64,
            port: 8443,
            allowed: vec!["spiffe://td/auraed".into()],
            path: "a".into(),
            parent: "[fd00::1]:8444".parse().expect("parent"),
            parent_id: "spiffe://td/auraed".into(),
            link_local_metadata: false,
            in_host_network: false,
            pre_started: false,
        };
        let files = seed(&identity, &params);
        for f in &files {
            let private = f.path.to_string_lossy().ends_with(".key");
            assert_eq!(f.mode & 0o077 == 0, private, "{:?}", f.path);
            assert!(f.path.is_relative());
        }
        let config = files
            .iter()
            .find(|f| f.path.ends_with("auraed.toml"))
            .expect("config");
        let text = String::from_utf8_lossy(&config.contents);
        let parsed: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed["auth"]["allowed_spiffe_ids"][0].as_str(),
            Some("spiffe://td/auraed")
        );
        assert_eq!(
            parsed["instances"]["vmm"].as_str(),
            Some("/etc/aurae/image/aurae-vmm")
        );
        let boot = files
            .iter()
            .find(|f| f.path.ends_with("bootparams"))
            .expect("bootparams");
        assert_eq!(
            String::from_utf8_lossy(&boot.contents),
            "aurae.name=a aurae.ip=fd00::2/64 aurae.port=8443\n"
        );
    }
}
