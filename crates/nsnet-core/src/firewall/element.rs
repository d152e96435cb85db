//! The set and map elements each [`Rule`] stands for, described once and written two ways: as `nft` text
//! ([`super::nftables`]) and as nf_tables netlink bytes ([`super::nft_netlink`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Rule;
use crate::portmap::Proto;

/// Which of nsnet's two nftables tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet nsnet` (both IP families; `ip nsnet` on a host an older nsnet set up, until a reset migrates it).
    Inet,
    /// `bridge nsnet`.
    Bridge,
}

impl Family {
    /// The table as `nft` names it; with `legacy`, the main table is an older nsnet's `ip nsnet`.
    pub fn table(self, legacy: bool) -> &'static str {
        match (self, legacy) {
            (Family::Inet, false) => "inet nsnet",
            (Family::Inet, true) => "ip nsnet",
            (Family::Bridge, _) => "bridge nsnet",
        }
    }

    /// The netfilter protocol family (NFPROTO_INET, NFPROTO_BRIDGE; NFPROTO_IPV4 for `ip nsnet`).
    pub fn nfproto(self, legacy: bool) -> u8 {
        match (self, legacy) {
            (Family::Inet, false) => 1,
            (Family::Inet, true) => 2,
            (Family::Bridge, _) => 7,
        }
    }
}

/// One field of a (possibly concatenated) key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Ifname(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// An IPv6 address as a 128-bit raw payload field (`@th,64,128`: a neighbour advertisement's target),
    /// which nft writes as an integer; the same bytes as [`Field::Ipv6`].
    Raw128(Ipv6Addr),
    /// A prefix: only in interval sets, which have no netlink encoding here.
    Net(Ipv4Net),
    Net6(Ipv6Net),
    Proto(Proto),
    Port(u16),
}

impl Field {
    fn text(&self) -> String {
        match self {
            Field::Ifname(name) => format!("\"{name}\""),
            Field::Ipv4(ip) => ip.to_string(),
            Field::Ipv6(ip) => ip.to_string(),
            Field::Raw128(ip) => format!("0x{:032x}", u128::from(*ip)),
            Field::Net(net) => net.to_string(),
            Field::Net6(net) => net.to_string(),
            Field::Proto(p) => p.to_string(),
            Field::Port(p) => p.to_string(),
        }
    }

    /// As nftables stores it: padded to 4 bytes, integers in network order, names as 16 zero-padded bytes.
    fn bytes(&self) -> Option<Vec<u8>> {
        let mut v = match self {
            Field::Ifname(name) => {
                let mut v = name.as_bytes().to_vec();
                v.resize(16, 0);
                v
            }
            Field::Ipv4(ip) => ip.octets().to_vec(),
            Field::Ipv6(ip) | Field::Raw128(ip) => ip.octets().to_vec(),
            Field::Net(_) | Field::Net6(_) => return None,
            Field::Proto(Proto::Tcp) => vec![6],
            Field::Proto(Proto::Udp) => vec![17],
            Field::Port(p) => p.to_be_bytes().to_vec(),
        };
        v.resize(v.len().div_ceil(4) * 4, 0);
        Some(v)
    }
}

/// One element: its table, set, key and (for maps) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub family: Family,
    pub set: &'static str,
    pub key: Vec<Field>,
    pub value: Vec<Field>,
}

fn join_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(Field::text)
        .collect::<Vec<_>>()
        .join(" . ")
}

fn join_bytes(fields: &[Field]) -> Option<Vec<u8>> {
    fields
        .iter()
        .map(Field::bytes)
        .collect::<Option<Vec<_>>>()
        .map(|v| v.concat())
}

impl Element {
    fn new(family: Family, set: &'static str, key: Vec<Field>) -> Element {
        Element {
            family,
            set,
            key,
            value: vec![],
        }
    }

    /// The key as `nft` writes it, e.g. `tcp . 8088`.
    pub fn key_text(&self) -> String {
        join_text(&self.key)
    }

    /// The whole element as `nft` writes it, e.g. `tcp . 8088 : 10.89.0.2 . 80`.
    pub fn text(&self) -> String {
        if self.value.is_empty() {
            self.key_text()
        } else {
            format!("{} : {}", self.key_text(), join_text(&self.value))
        }
    }

    /// The key as netlink bytes; `None` for interval keys.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        join_bytes(&self.key)
    }

    /// The value as netlink bytes (`None` when the element has no value).
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        if self.value.is_empty() {
            None
        } else {
            join_bytes(&self.value)
        }
    }
}

/// The elements a rule stands for ([`Rule::Tables`] and [`Rule::HostAccept`] are rules, not elements).
pub fn elements(rule: &Rule) -> Vec<Element> {
    use Family::*;
    use Field::*;
    match rule {
        Rule::Tables(_) | Rule::HostAccept { .. } => vec![],
        Rule::Interface {
            interface,
            subnet,
            internal,
            subnet6,
        } => {
            let mut out = vec![Element::new(
                Inet,
                "ifaces",
                vec![Ifname(interface.clone())],
            )];
            if let Some(subnet) = subnet {
                out.push(Element::new(
                    Inet,
                    "same_net",
                    vec![Net(*subnet), Net(*subnet)],
                ));
            }
            if let Some(net6) = subnet6 {
                out.push(Element::new(
                    Inet,
                    "same_net6",
                    vec![Net6(*net6), Net6(*net6)],
                ));
            }
            if *internal {
                out.push(Element::new(
                    Inet,
                    "internal",
                    vec![Ifname(interface.clone())],
                ));
                out.push(Element::new(
                    Inet,
                    "internal_self",
                    vec![Ifname(interface.clone()), Ifname(interface.clone())],
                ));
            }
            out
        }
        Rule::Masquerade { subnet, interface } => {
            let (masq, own, net) = match subnet {
                IpNet::V4(n) => ("masq_nets", "own_nets", Net(*n)),
                IpNet::V6(n) => ("masq_nets6", "own_nets6", Net6(*n)),
            };
            vec![
                Element::new(Inet, masq, vec![net.clone()]),
                Element::new(Inet, own, vec![Ifname(interface.clone()), net]),
            ]
        }
        Rule::PublishedOnly { interface } => vec![Element::new(
            Inet,
            "published_only",
            vec![Ifname(interface.clone())],
        )],
        Rule::Isolate { from, to } => {
            vec![Element::new(
                Inet,
                "isolation",
                vec![Ifname(from.clone()), Ifname(to.clone())],
            )]
        }
        // Checked in both tables: bridged packets in `bridge nsnet`, point-to-point ones in `inet nsnet`.
        // A dual-stack port's IPv6 addresses (link-local and global) are the only sources it may send from
        // and the only targets it may advertise (`nd_targets`, the same bytes as a 128-bit payload field);
        // every other port's IPv6 is dropped, having no addresses there.
        Rule::Endpoint {
            host_interface,
            address,
            ipv6,
        } => {
            let port = || Ifname(host_interface.clone());
            let mut out: Vec<Element> = [Inet, Bridge]
                .into_iter()
                .flat_map(|family| {
                    std::iter::once(Element::new(family, "endpoint_ifs", vec![port()])).chain(
                        address.map(|a| Element::new(family, "endpoints", vec![port(), Ipv4(a)])),
                    )
                })
                .collect();
            if !ipv6.is_empty() {
                out.push(Element::new(Bridge, "endpoint_ifs6", vec![port()]));
            }
            for family in [Inet, Bridge] {
                for ip in ipv6 {
                    out.push(Element::new(family, "endpoints6", vec![port(), Ipv6(*ip)]));
                }
            }
            for ip in ipv6 {
                out.push(Element::new(
                    Bridge,
                    "nd_targets",
                    vec![port(), Raw128(*ip)],
                ));
            }
            out
        }
        Rule::Overlay {
            device,
            cluster,
            subnet,
        } => vec![
            Element::new(
                Inet,
                "overlay_in",
                vec![Ifname(device.clone()), Net(*cluster), Net(*subnet)],
            ),
            Element::new(Inet, "no_masq", vec![Net(*subnet), Net(*cluster)]),
        ],
        Rule::Overlay6 {
            device,
            cluster,
            subnet,
        } => vec![
            Element::new(
                Inet,
                "overlay_in6",
                vec![Ifname(device.clone()), Net6(*cluster), Net6(*subnet)],
            ),
            Element::new(Inet, "no_masq6", vec![Net6(*subnet), Net6(*cluster)]),
        ],
        Rule::VxlanPort { port } => vec![Element::new(Inet, "vxlan_ports", vec![Port(*port)])],
        Rule::VxlanMember { underlay, port } => vec![Element::new(
            Inet,
            "vxlan_members",
            vec![Ipv4(*underlay), Port(*port)],
        )],
        // A port on every address of the target's family (`-p 8080:80`, or `[::]` for IPv6) is keyed by protocol
        // and port; one on a host address by that address too.
        Rule::Port { mapping, target } => mapping
            .pairs()
            .filter_map(|(host_port, container_port)| {
                let (set, mut key, value) = match (mapping.host_ip, target) {
                    (None, IpAddr::V4(t)) => ("ports", vec![], Ipv4(*t)),
                    (Some(IpAddr::V4(ip)), IpAddr::V4(t)) => ("ports_ip", vec![Ipv4(ip)], Ipv4(*t)),
                    (None, IpAddr::V6(t)) => ("ports6", vec![], Ipv6(*t)),
                    (Some(IpAddr::V6(ip)), IpAddr::V6(t)) if ip.is_unspecified() => {
                        ("ports6", vec![], Ipv6(*t))
                    }
                    (Some(IpAddr::V6(ip)), IpAddr::V6(t)) => {
                        ("ports6_ip", vec![Ipv6(ip)], Ipv6(*t))
                    }
                    // A host address of the other family: never planned.
                    (Some(_), _) => return None,
                };
                key.extend([Proto(mapping.protocol), Port(host_port)]);
                Some(Element {
                    family: Inet,
                    set,
                    key,
                    value: vec![value, Port(container_port)],
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::PortMapping;

    #[test]
    fn one_description_two_encodings() {
        let rule = Rule::Port {
            mapping: PortMapping {
                host_ip: Some(Ipv4Addr::new(10, 0, 1, 48).into()),
                host_port: 8088,
                container_port: 80,
                count: 1,
                protocol: Proto::Tcp,
            },
            target: Ipv4Addr::new(10, 89, 0, 2).into(),
        };
        let e = &elements(&rule)[0];
        assert_eq!(e.set, "ports_ip");
        assert_eq!(e.text(), "10.0.1.48 . tcp . 8088 : 10.89.0.2 . 80");
        assert_eq!(
            e.key_bytes(),
            Some(vec![10, 0, 1, 48, 6, 0, 0, 0, 0x1f, 0x98, 0, 0])
        );
        assert_eq!(e.value_bytes(), Some(vec![10, 89, 0, 2, 0, 80, 0, 0]));
        let ep = elements(&Rule::Endpoint {
            host_interface: "veth1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![],
        });
        assert_eq!(ep.len(), 4);
        assert_eq!(ep[1].text(), "\"veth1\" . 10.89.0.2");
        assert_eq!(ep[1].key_bytes().map(|k| k.len()), Some(20));
        assert_eq!(ep[2].family, Family::Bridge);
        let net = elements(&Rule::Masquerade {
            subnet: "10.89.0.0/24".parse().unwrap(),
            interface: "br".into(),
        });
        assert_eq!(net[1].text(), "\"br\" . 10.89.0.0/24");
        assert_eq!(net[1].key_bytes(), None);
    }

    #[test]
    fn a_dual_stack_endpoint_guards_its_ipv6_addresses() {
        let (ll, global): (Ipv6Addr, Ipv6Addr) = (
            "fe80::6e:aff:fe59:2".parse().unwrap(),
            "fd89::2".parse().unwrap(),
        );
        let ep = elements(&Rule::Endpoint {
            host_interface: "veth1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![ll, global],
        });
        let in_set = |family, set| {
            ep.iter()
                .filter(|e| e.family == family && e.set == set)
                .map(Element::text)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            in_set(Family::Bridge, "endpoints6"),
            ["\"veth1\" . fe80::6e:aff:fe59:2", "\"veth1\" . fd89::2"]
        );
        assert_eq!(in_set(Family::Inet, "endpoints6").len(), 2);
        let targets = in_set(Family::Bridge, "nd_targets");
        assert_eq!(targets[1], "\"veth1\" . 0xfd890000000000000000000000000002");
        // Over netlink, a target is the address's own bytes, as in endpoints6.
        let bytes = |set| {
            ep.iter()
                .find(|e| e.family == Family::Bridge && e.set == set)
                .and_then(Element::key_bytes)
        };
        assert_eq!(bytes("nd_targets"), bytes("endpoints6"));
        assert_eq!(bytes("nd_targets").map(|b| b.len()), Some(32));
    }

    #[test]
    fn ipv6_ports_and_nat66_have_their_own_sets() {
        let to: Ipv6Addr = "fd89::2".parse().unwrap();
        let port = |host_ip: Option<IpAddr>| {
            elements(&Rule::Port {
                mapping: PortMapping {
                    host_ip,
                    host_port: 8080,
                    container_port: 80,
                    count: 1,
                    protocol: Proto::Tcp,
                },
                target: to.into(),
            })
            .into_iter()
            .map(|e| (e.set, e.text()))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            port(None),
            [("ports6", "tcp . 8080 : fd89::2 . 80".to_string())]
        );
        assert_eq!(port(Some("::".parse().unwrap())), port(None));
        assert_eq!(
            port(Some("2001:db8::5".parse().unwrap())),
            [(
                "ports6_ip",
                "2001:db8::5 . tcp . 8080 : fd89::2 . 80".to_string()
            )]
        );
        assert!(port(Some("10.0.1.48".parse().unwrap())).is_empty());
        let e = &elements(&Rule::Port {
            mapping: PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                count: 1,
                protocol: Proto::Tcp,
            },
            target: to.into(),
        })[0];
        assert_eq!(e.value_bytes().map(|v| v.len()), Some(20));
        let nat = elements(&Rule::Masquerade {
            subnet: "fd89::/64".parse().unwrap(),
            interface: "br".into(),
        });
        assert_eq!((nat[0].set, nat[1].set), ("masq_nets6", "own_nets6"));
        assert_eq!(nat[1].text(), "\"br\" . fd89::/64");
    }

    #[test]
    fn overlay_rules_are_elements_too() {
        let cluster: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let subnet: ipnet::Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let e = elements(&Rule::Overlay {
            device: "nsvx1".into(),
            cluster,
            subnet,
        });
        assert_eq!(e[0].text(), "\"nsvx1\" . 10.244.0.0/16 . 10.244.3.0/24");
        assert_eq!(e[1].text(), "10.244.3.0/24 . 10.244.0.0/16");
        let e6 = elements(&Rule::Overlay6 {
            device: "eth0".into(),
            cluster: "fd00:10:244::/56".parse().unwrap(),
            subnet: "fd00:10:244:3::/64".parse().unwrap(),
        });
        assert_eq!((e6[0].set, e6[1].set), ("overlay_in6", "no_masq6"));
        assert_eq!(
            e6[0].text(),
            "\"eth0\" . fd00:10:244::/56 . fd00:10:244:3::/64"
        );
        assert_eq!(e6[1].text(), "fd00:10:244:3::/64 . fd00:10:244::/56");
        let m = &elements(&Rule::VxlanMember {
            underlay: Ipv4Addr::new(192, 168, 200, 12),
            port: 4789,
        })[0];
        assert_eq!(
            (m.set, m.text()),
            ("vxlan_members", "192.168.200.12 . 4789".into())
        );
        assert_eq!(
            m.key_bytes(),
            Some(vec![192, 168, 200, 12, 0x12, 0xb5, 0, 0])
        );
    }
}
