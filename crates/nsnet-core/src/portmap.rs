//! Published ports: the `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]` spec and its rules.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port: traffic to `host_ip:host_port` (any host address when `host_ip` is `None`) goes to
/// the sandbox's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
}

impl PortMapping {
    /// Two mappings cannot both exist when they would catch the same packets.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

fn port(spec: &str, what: &str, text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "port spec '{spec}': {what} '{text}' is not a port number; use 1-65535"
        )),
        Ok(p) => Ok(p),
    }
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        const FORM: &str = "use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. 8088:80";
        let (ports, protocol) = match spec.rsplit_once('/') {
            None => (spec, Proto::Tcp),
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "port spec '{spec}': unknown protocol '{other}'; use tcp or udp"
                ))
            }
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [ip, h, c] => {
                let ip = ip.parse::<Ipv4Addr>().map_err(|_| {
                    format!(
                        "port spec '{spec}': host address '{ip}' is not an IPv4 address; {FORM}"
                    )
                })?;
                (Some(ip), *h, *c)
            }
            _ => return Err(format!("port spec '{spec}' is malformed; {FORM}")),
        };
        Ok(PortMapping {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: port(spec, "host port", host_port)?,
            container_port: port(spec, "container port", container_port)?,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<PortMapping, String> {
        s.parse()
    }

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            p("8088:80").unwrap(),
            PortMapping {
                host_ip: None,
                host_port: 8088,
                container_port: 80,
                protocol: Proto::Tcp
            }
        );
        let m = p("10.0.1.48:53:5353/udp").unwrap();
        assert_eq!(m.host_ip, Some(Ipv4Addr::new(10, 0, 1, 48)));
        assert_eq!(
            (m.host_port, m.container_port, m.protocol),
            (53, 5353, Proto::Udp)
        );
        assert_eq!(p("0.0.0.0:1:2/tcp").unwrap().host_ip, None);
        assert_eq!(m.to_string(), "10.0.1.48:53:5353/udp");
        assert_eq!(p(&m.to_string()).unwrap(), m);
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "", "80", "a:80", "80:b", "0:80", "80:0", "70000:80", "1:2/sctp", "x.y:1:2", "1:2:3:4",
            "1:2/",
        ] {
            let err = p(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("port spec '{bad}'")),
                "{bad}: {err}"
            );
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn conflicts() {
        let any = p("8080:80").unwrap();
        let one = p("10.0.0.1:8080:81").unwrap();
        let other = p("10.0.0.2:8080:81").unwrap();
        assert!(any.conflicts_with(&one) && one.conflicts_with(&any));
        assert!(!one.conflicts_with(&other));
        assert!(!any.conflicts_with(&p("8080:80/udp").unwrap()));
        assert!(!any.conflicts_with(&p("8081:80").unwrap()));
    }
}
