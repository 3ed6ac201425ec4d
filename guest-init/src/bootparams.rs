//! Instance parameters from the kernel command line:
//! `aurae.name=<hostname> aurae.ip=<addr>/<prefix> aurae.gw=<addr>
//! aurae.port=<port> aurae.vsock=<port> aurae.exit=reboot|poweroff
//! aurae.bootlog=0|1 aurae.pod=<iface>,<addr>/<prefix>[,<gateway>][,mtu=<n>]
//! aurae.volumes=<virtio-fs tag>`.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub name: String,
    /// eth0's address and prefix length.
    pub ip: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// The port the guest auraed serves on.
    pub port: u16,
    /// A virtio-vsock port the guest auraed serves on too (mTLS as well).
    pub vsock_port: Option<u32>,
    pub poweroff: bool,
    /// Print the kernel's timestamped log once /init runs: a quiet boot
    /// (no console output to slow it) can still be profiled.
    pub bootlog: bool,
    /// A pod's network (a CRI pod's CNI address, on its own device).
    pub pod: Option<PodNet>,
    /// The virtio-fs tag of the host's folder for a pod's volumes.
    pub volumes: Option<String>,
}

/// A pod network device's address and its default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub iface: String,
    pub ip: (IpAddr, u8),
    pub gateway: Option<IpAddr>,
    pub mtu: Option<u32>,
}

/// `<address>/<prefix>`, for parameter `key`.
fn cidr(key: &str, value: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = value
        .split_once('/')
        .ok_or_else(|| format!("{key}={value:?}: expected <address>/<prefix>"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{key}={value:?}: bad address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("{key}={value:?}: bad prefix length"))?;
    Ok((addr, prefix))
}

fn pod_net(value: &str) -> Result<PodNet, String> {
    let mut parts = value.split(',');
    let iface = parts.next().unwrap_or_default();
    let ok = iface.len() > 3
        && iface.len() <= 15
        && iface.starts_with("eth")
        && iface[3..].bytes().all(|b| b.is_ascii_digit())
        && iface != "eth0";
    if !ok {
        return Err(format!(
            "aurae.pod={value:?}: {iface:?} is not eth1, eth2..."
        ));
    }
    let ip = cidr("aurae.pod", parts.next().unwrap_or_default())?;
    let (mut gateway, mut mtu) = (None, None);
    for part in parts {
        if let Some(m) = part.strip_prefix("mtu=") {
            let m: u32 = m
                .parse()
                .ok()
                .filter(|m| (68..=65535).contains(m))
                .ok_or_else(|| format!("aurae.pod={value:?}: bad MTU"))?;
            mtu = Some(m);
        } else if gateway.is_none() {
            gateway = Some(
                part.parse()
                    .map_err(|_| format!("aurae.pod={value:?}: bad gateway"))?,
            );
        } else {
            return Err(format!(
                "aurae.pod={value:?}: more than <iface>,<cidr>[,<gateway>][,mtu=<n>]"
            ));
        }
    }
    Ok(PodNet {
        iface: iface.into(),
        ip,
        gateway,
        mtu,
    })
}

pub const DEFAULT_PORT: u16 = 8443;

impl BootParams {
    pub fn parse(cmdline: &str) -> Result<Self, String> {
        let mut p = BootParams {
            name: "aurae-guest".into(),
            ip: None,
            gateway: None,
            port: DEFAULT_PORT,
            vsock_port: None,
            poweroff: false,
            bootlog: false,
            pod: None,
            volumes: None,
        };
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "aurae.name" => {
                    let ok = !value.is_empty()
                        && value.len() <= 63
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !ok {
                        return Err(format!("aurae.name={value:?} is not a valid hostname"));
                    }
                    p.name = value.into();
                }
                "aurae.ip" => p.ip = Some(cidr("aurae.ip", value)?),
                "aurae.pod" => p.pod = Some(pod_net(value)?),
                "aurae.volumes" => {
                    // The device's tag field: 36 bytes.
                    if value.is_empty() || value.len() > 36 {
                        return Err(format!("aurae.volumes={value:?}: 1 to 36 bytes"));
                    }
                    p.volumes = Some(value.into());
                }
                "aurae.gw" => {
                    p.gateway = Some(
                        value
                            .parse()
                            .map_err(|_| format!("aurae.gw={value:?}: bad address"))?,
                    )
                }
                "aurae.port" => {
                    p.port = value
                        .parse()
                        .map_err(|_| format!("aurae.port={value:?}: bad port"))?
                }
                "aurae.vsock" => {
                    p.vsock_port = Some(
                        value
                            .parse()
                            .ok()
                            // -1 is VMADDR_PORT_ANY, not a port.
                            .filter(|p| *p != u32::MAX)
                            .ok_or_else(|| format!("aurae.vsock={value:?}: bad port"))?,
                    )
                }
                "aurae.exit" => {
                    p.poweroff = match value {
                        "poweroff" => true,
                        "reboot" => false,
                        _ => return Err(format!("aurae.exit={value:?}: use reboot or poweroff")),
                    }
                }
                "aurae.bootlog" => {
                    p.bootlog = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(format!("aurae.bootlog={value:?}: use 0 or 1")),
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_instance_parameters() {
        let p = BootParams::parse("console=ttyS0 aurae.name=web-1 aurae.ip=10.0.2.15/24 aurae.gw=10.0.2.2 aurae.port=9000 quiet")
            .expect("parse");
        assert_eq!(p.name, "web-1");
        assert_eq!(p.ip, Some(("10.0.2.15".parse().expect("ip"), 24)));
        assert_eq!(p.gateway, Some("10.0.2.2".parse().expect("gw")));
        assert_eq!(p.port, 9000);
        assert_eq!(p.vsock_port, None);
        let p = BootParams::parse("aurae.vsock=8443").expect("vsock");
        assert_eq!(p.vsock_port, Some(8443));
        let p = BootParams::parse("aurae.ip=fd00:a::2/64").expect("v6");
        assert_eq!(p.ip.map(|(_, n)| n), Some(64));
        assert_eq!(p.port, DEFAULT_PORT);
        assert!(!p.bootlog);
        let p = BootParams::parse("aurae.pod=eth1,10.88.0.5/16,10.88.0.1,mtu=1450").expect("pod");
        assert_eq!(
            p.pod,
            Some(PodNet {
                iface: "eth1".into(),
                ip: ("10.88.0.5".parse().expect("ip"), 16),
                gateway: Some("10.88.0.1".parse().expect("gw")),
                mtu: Some(1450),
            })
        );
        let p = BootParams::parse("aurae.pod=eth2,fd10::5/64").expect("pod v6");
        assert_eq!(
            p.pod.map(|n| (n.iface, n.gateway)),
            Some(("eth2".into(), None))
        );
        assert!(
            BootParams::parse("aurae.bootlog=1")
                .expect("bootlog")
                .bootlog
        );
        assert_eq!(
            BootParams::parse("aurae.volumes=aurae-volumes")
                .expect("volumes")
                .volumes
                .as_deref(),
            Some("aurae-volumes")
        );
    }

    #[test]
    fn rejects_bad_values_by_name() {
        for bad in [
            "aurae.ip=10.0.0.1",
            "aurae.ip=10.0.0.1/33",
            "aurae.gw=x",
            "aurae.name=a/b",
            "aurae.port=99999",
            "aurae.exit=halt",
            "aurae.vsock=-1",
            "aurae.vsock=4294967295",
            "aurae.bootlog=yes",
            "aurae.pod=eth0,10.0.0.2/24",
            "aurae.pod=lo,10.0.0.2/24",
            "aurae.pod=eth1,10.0.0.2",
            "aurae.pod=eth1,10.0.0.2/24,x",
            "aurae.pod=eth1,10.0.0.2/24,10.0.0.1,more",
            "aurae.pod=eth,10.0.0.2/24",
            "aurae.pod=eth1,10.0.0.2/24,mtu=9",
            "aurae.volumes=",
            "aurae.volumes=0123456789012345678901234567890123456",
        ] {
            let err = BootParams::parse(bad).unwrap_err();
            let key = bad.split('=').next().unwrap_or_default();
            assert!(err.starts_with(key), "{err}");
        }
    }
}
