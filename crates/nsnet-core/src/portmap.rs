//! Published ports: the `-p [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]` spec and its rules. An
//! IPv6 host address is written in brackets: `-p [2001:db8::5]:80:80`.
//!
//! A [`PortSpec`] is what the user asked for (the host port may be left to nsnet); a [`PortMapping`] is what is
//! in force, with every number fixed.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::RangeInclusive;
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

fn one() -> u16 {
    1
}

fn is_one(n: &u16) -> bool {
    *n == 1
}

/// Published ports in force: `count` consecutive host ports from `host_port` on `host_ip` lead to as many
/// consecutive ports from `container_port` in the sandbox. `host_ip` `None` is every host address of every
/// family the network has; `::` is every IPv6 one (IPv4's 0.0.0.0 reads as `None`, as it always has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u16,
    pub protocol: Proto,
}

/// Whether two host addresses catch the same packets (`None` is every address of either family; an
/// unspecified address, every address of its own family). Addresses of different families never do.
pub fn addresses_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
        }
        _ => true,
    }
}

fn ranges_overlap(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

impl PortMapping {
    /// The host ports this mapping takes.
    pub fn host_ports(&self) -> RangeInclusive<u16> {
        self.host_port..=self.host_port.saturating_add(self.count.saturating_sub(1))
    }

    /// Each single port pair of the mapping: (host port, container port).
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        (0..self.count).map(move |i| (self.host_port + i, self.container_port + i))
    }

    /// Two mappings cannot both exist when they would catch the same packets.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.first_clash(other).is_some()
    }

    /// The lowest host port both mappings would catch packets for, if any: the port a refusal names (for a
    /// range, its first port may well be free).
    pub fn first_clash(&self, other: &PortMapping) -> Option<u16> {
        let (a, b) = (self.host_ports(), other.host_ports());
        (self.protocol == other.protocol
            && ranges_overlap(&a, &b)
            && addresses_overlap(self.host_ip, other.host_ip))
        .then(|| *a.start().max(b.start()))
    }
}

fn fmt_range(f: &mut fmt::Formatter<'_>, start: u16, count: u16) -> fmt::Result {
    if count > 1 {
        write!(f, "{start}-{}", start + (count - 1))
    } else {
        write!(f, "{start}")
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        fmt_range(f, self.host_port, self.count)?;
        f.write_str(":")?;
        fmt_range(f, self.container_port, self.count)?;
        write!(f, "/{}", self.protocol)
    }
}

/// A `-p` request: like a [`PortMapping`], but the host port may be left for nsnet to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub count: u16,
    pub protocol: Proto,
}

impl PortSpec {
    /// The mapping this spec becomes once its host port is fixed.
    pub fn with_host_port(&self, host_port: u16) -> PortMapping {
        PortMapping {
            host_ip: self.host_ip,
            host_port,
            container_port: self.container_port,
            count: self.count,
            protocol: self.protocol,
        }
    }
}

impl From<PortMapping> for PortSpec {
    fn from(m: PortMapping) -> PortSpec {
        PortSpec {
            host_ip: m.host_ip,
            host_port: Some(m.host_port),
            container_port: m.container_port,
            count: m.count,
            protocol: m.protocol,
        }
    }
}

const FORM: &str =
    "use [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp], e.g. 8088:80 (an IPv6 \
                    HOST_IP in brackets: [2001:db8::5]:8088:80)";

fn port(spec: &str, what: &str, text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "port spec '{spec}': {what} '{text}' is not a port number; use 1-65535"
        )),
        Ok(p) => Ok(p),
    }
}

/// `N` or `N-M`: the first port and how many.
fn range(spec: &str, what: &str, text: &str) -> Result<(u16, u16), String> {
    match text.split_once('-') {
        None => Ok((port(spec, what, text)?, 1)),
        Some((a, b)) => {
            let (a, b) = (port(spec, what, a)?, port(spec, what, b)?);
            if b < a {
                return Err(format!(
                    "port spec '{spec}': {what} range {a}-{b} runs backwards; write {b}-{a}"
                ));
            }
            Ok((a, b - a + 1))
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
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
        // An IPv6 host address comes first, in brackets (its colons would read as separators).
        let (bracketed, ports) = match ports.strip_prefix('[') {
            None => (None, ports),
            Some(rest) => {
                let (ip, rest) = rest
                    .split_once("]:")
                    .ok_or_else(|| format!("port spec '{spec}' is malformed; {FORM}"))?;
                let ip = ip.parse::<Ipv6Addr>().map_err(|_| {
                    format!(
                        "port spec '{spec}': host address '[{ip}]' is not an IPv6 address; {FORM}"
                    )
                })?;
                (Some(ip), rest)
            }
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host, container) = match (bracketed, parts.as_slice()) {
            (None, [c]) => (None, None, *c),
            (None, [h, c]) => (None, Some(*h), *c),
            (Some(ip), [h, c]) => (Some(IpAddr::V6(ip)), Some(*h), *c),
            (None, [ip, h, c]) => {
                let ip = ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                    format!(
                        "port spec '{spec}': host address '{ip}' is not an IPv4 address (write an IPv6 one \
                         in brackets); {FORM}"
                    )
                })?;
                (Some(IpAddr::V4(ip)), Some(*h), *c)
            }
            _ => return Err(format!("port spec '{spec}' is malformed; {FORM}")),
        };
        let (container_port, count) = range(spec, "container port", container)?;
        let host_port = match host {
            None => None,
            Some(h) => {
                let (h, n) = range(spec, "host port", h)?;
                if n != count {
                    return Err(format!(
                        "port spec '{spec}': the host range has {n} ports and the container range {count}; \
                         make them the same length"
                    ));
                }
                Some(h)
            }
        };
        if u32::from(container_port) + u32::from(count) - 1 > 65535
            || host_port.is_some_and(|h| u32::from(h) + u32::from(count) - 1 > 65535)
        {
            return Err(format!(
                "port spec '{spec}': the range runs past port 65535"
            ));
        }
        Ok(PortSpec {
            // 0.0.0.0 has always meant every address; `[::]` means every IPv6 one, so it stays.
            host_ip: host_ip.filter(|ip| !(ip.is_ipv4() && ip.is_unspecified())),
            host_port,
            container_port,
            count,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<PortSpec, String> {
        s.parse()
    }

    fn m(s: &str) -> PortMapping {
        let spec = p(s).unwrap();
        spec.with_host_port(spec.host_port.unwrap())
    }

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            m("8088:80"),
            PortMapping {
                host_ip: None,
                host_port: 8088,
                container_port: 80,
                count: 1,
                protocol: Proto::Tcp
            }
        );
        let x = m("10.0.1.48:53:5353/udp");
        assert_eq!(
            x.host_ip,
            Some(std::net::Ipv4Addr::new(10, 0, 1, 48).into())
        );
        assert_eq!(
            (x.host_port, x.container_port, x.protocol),
            (53, 5353, Proto::Udp)
        );
        assert_eq!(m("0.0.0.0:1:2/tcp").host_ip, None);
        assert_eq!(x.to_string(), "10.0.1.48:53:5353/udp");
        assert_eq!(m(&x.to_string()), x);
    }

    #[test]
    fn ranges_and_automatic_host_ports() {
        let r = m("8000-8010:80-90");
        assert_eq!((r.host_port, r.container_port, r.count), (8000, 80, 11));
        assert_eq!(r.to_string(), "8000-8010:80-90/tcp");
        assert_eq!(r.pairs().last(), Some((8010, 90)));
        let auto = p("80").unwrap();
        assert_eq!(
            (auto.host_port, auto.container_port, auto.count),
            (None, 80, 1)
        );
        let auto = p("53-54/udp").unwrap();
        assert_eq!(
            (auto.host_port, auto.count, auto.protocol),
            (None, 2, Proto::Udp)
        );
        assert!(p("8000-8010:80-85").unwrap_err().contains("same length"));
        assert!(p("90-80:80-90").unwrap_err().contains("backwards"));
        assert!(p("65535-65535:1").is_ok());
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "", "a:80", "80:b", "0:80", "80:0", "70000:80", "1:2/sctp", "x.y:1:2", "1:2:3:4",
            "1:2/", "1-:2",
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
    fn ipv6_host_addresses_go_in_brackets() {
        let x = m("[2001:db8::5]:8080:80");
        assert_eq!(x.host_ip, Some("2001:db8::5".parse::<IpAddr>().unwrap()));
        assert_eq!((x.host_port, x.container_port), (8080, 80));
        assert_eq!(x.to_string(), "[2001:db8::5]:8080:80/tcp");
        assert_eq!(m(&x.to_string()), x);
        let lo = p("[::1]:53-54:53-54/udp").unwrap();
        assert_eq!(lo.host_ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!((lo.count, lo.protocol), (2, Proto::Udp));
        // `[::]` is every IPv6 address, not every address.
        assert_eq!(
            m("[::]:1:2").host_ip,
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
        for bad in [
            "[::1]:80",
            "[::1]8080:80",
            "[::1:8080:80",
            "[10.0.0.1]:1:2",
            "[zz::1]:1:2",
            "::1:8080:80",
            "[::1]:1:2:3",
            "[]:1:2",
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
    fn families_conflict_only_where_they_meet() {
        let any = m("8080:80");
        let v4 = m("10.0.0.1:8080:80");
        let v6 = m("[2001:db8::5]:8080:80");
        let all6 = m("[::]:8080:80");
        assert!(any.conflicts_with(&v6) && v6.conflicts_with(&any));
        assert!(!v4.conflicts_with(&v6) && !v6.conflicts_with(&v4));
        assert!(all6.conflicts_with(&v6) && v6.conflicts_with(&all6));
        assert!(!all6.conflicts_with(&v4));
        assert!(all6.conflicts_with(&any));
        assert!(!v6.conflicts_with(&m("[2001:db8::6]:8080:80")));
    }

    #[test]
    fn conflicts() {
        let any = m("8080:80");
        let one = m("10.0.0.1:8080:81");
        let other = m("10.0.0.2:8080:81");
        assert!(any.conflicts_with(&one) && one.conflicts_with(&any));
        assert!(!one.conflicts_with(&other));
        assert!(!any.conflicts_with(&m("8080:80/udp")));
        assert!(!any.conflicts_with(&m("8081:80")));
        assert!(m("8075-8085:75-85").conflicts_with(&any));
        assert!(!m("8070-8079:70-79").conflicts_with(&any));
        // The port named is the one both take, not the first of the range.
        assert_eq!(m("1-65535:1-65535").first_clash(&any), Some(8080));
        assert_eq!(any.first_clash(&m("8075-8085:75-85")), Some(8080));
        assert_eq!(m("8081-8090:1-10").first_clash(&m("8085:80")), Some(8085));
        assert_eq!(one.first_clash(&other), None);
    }
}
