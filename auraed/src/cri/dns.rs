//! A pod's DNS configuration as the `/etc/resolv.conf` its containers see:
//! written once per sandbox on this host, bound read-only into each
//! container.

use aurae_proto::cri;
use tonic::Status;

/// Whether `s` is safe on a resolv.conf line: printable, no spaces.
fn token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The resolv.conf of `dns`, each field checked; `None` when it sets
/// nothing (the image's own file stays).
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Option<String>, Status> {
    let Some(dns) = dns else {
        return Ok(None);
    };
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return Ok(None);
    }
    let bad = |field: &str, i: usize, v: &str, what: &str| {
        Status::invalid_argument(format!(
            "config.dns_config.{field}[{i}]: {} is not {what}",
            crate::validation::shown(v)
        ))
    };
    let mut out = String::new();
    for (i, s) in dns.servers.iter().enumerate() {
        s.parse::<std::net::IpAddr>()
            .map_err(|_| bad("servers", i, s, "an IP address"))?;
        out.push_str(&format!("nameserver {s}\n"));
    }
    for (i, s) in dns.searches.iter().enumerate() {
        if !token(s) {
            return Err(bad("searches", i, s, "a domain"));
        }
    }
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for (i, o) in dns.options.iter().enumerate() {
        if !token(o) {
            return Err(bad("options", i, o, "an option"));
        }
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_config_becomes_resolv_conf_and_bad_entries_are_named() {
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into(), "fd00::53".into()],
            searches: vec!["svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap().unwrap(),
            "nameserver 10.0.0.10\nnameserver fd00::53\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert!(resolv_conf(None).unwrap().is_none());
        let bad = cri::DnsConfig {
            servers: vec!["not-an-ip".into()],
            ..Default::default()
        };
        let e = resolv_conf(Some(&bad)).unwrap_err();
        assert!(
            e.message().starts_with("config.dns_config.servers[0]"),
            "{}",
            e.message()
        );
        let bad = cri::DnsConfig {
            searches: vec!["a\nnameserver 1.2.3.4".into()],
            ..Default::default()
        };
        assert!(resolv_conf(Some(&bad)).is_err());
    }
}
