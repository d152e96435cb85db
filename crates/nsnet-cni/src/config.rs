//! The network configuration on stdin, typed, and turned into nsnet requests. Every check that can fail does
//! so here, before anything changes, with a message naming the field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use nsnet_core::firewall::Backend;
use nsnet_core::model::{Driver, GatewayMode, Mac, NetOptions};
use nsnet_core::ops::{Ipv6Request, NetworkRequest};
use nsnet_core::portmap::{PortSpec, Proto};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError, CniResult};

/// The plugin configuration object (CNI spec section 1), with nsnet's keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// Bridge name; `nsbr-NAME` when absent.
    pub bridge: Option<String>,
    /// The bridge holds the gateway address (default true).
    pub is_gateway: Option<bool>,
    /// Masquerade traffic leaving the subnet (default true).
    pub ip_masq: Option<bool>,
    pub mtu: Option<u32>,
    /// Hairpin mode on bridge ports (default true).
    pub hairpin_mode: Option<bool>,
    /// Keep other networks' sandboxes out (default true).
    pub isolate: Option<bool>,
    /// Pod-to-pod IPv4 on the bridge goes veth to veth, skipping the bridge (default true).
    pub fast_path: Option<bool>,
    /// `nat` (default: from outside the host, pods are reached through published ports only) or `routed`
    /// (direct routing to pod addresses, no masquerade).
    pub gateway_mode: Option<GatewayMode>,
    /// `nftables` (default), `iptables` or `none`.
    pub firewall: Option<String>,
    /// nsnet's state dir; `NSNET_STATE_DIR`, then /var/lib/nsnet, when absent (shared with the CLI).
    pub state_dir: Option<PathBuf>,
    pub ipam: Option<IpamConf>,
    /// Passed through to the result (with nsnet's resolver first when `resolver` is on).
    pub dns: Option<Value>,
    /// nsnet's resolver answers the containers' names on 127.0.0.11 (default false: Kubernetes brings its own
    /// DNS, and a runtime that wants names turns it on).
    pub resolver: Option<bool>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    pub args: Option<Args>,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `ipam` section: nsnet's own (no `type`, or `"nsnet"`), or a plugin to delegate to.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub plugin: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<IpAddr>,
    /// One range set per IP family (host-local's shape), each with one range: `[[{v4}], [{v6}]]` is dual stack.
    pub ranges: Option<Vec<Vec<Range>>>,
}

/// One host-local style range.
#[derive(Debug, Deserialize)]
pub struct Range {
    pub subnet: String,
    pub gateway: Option<IpAddr>,
}

/// The subnets a configuration asks nsnet's IPAM for, or a delegated plugin handed out: IPv4 (`None` picks a
/// free one from nsnet's pool) and, for a dual-stack network, IPv6.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subnets {
    pub v4: Option<Ipv4Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub v6: Option<(Ipv6Net, Option<Ipv6Addr>)>,
    /// Only an IPv6 subnet was given (or handed out): an IPv6-only network, with no IPv4 at all.
    pub ipv6_only: bool,
}

/// The addresses a runtime asks for, at most one per family, each with the field it came from (for messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    pub v4: Option<(Ipv4Addr, &'static str)>,
    pub v6: Option<(Ipv6Addr, &'static str)>,
}

/// Capability arguments from the runtime.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMap>,
    #[serde(default)]
    pub ips: Vec<String>,
    pub mac: Option<String>,
    /// The `aliases` capability (Podman's): more names for the container, by network name.
    #[serde(default)]
    pub aliases: std::collections::HashMap<String, Vec<String>>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMap {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Option<String>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Args {
    pub cni: Option<ArgsCni>,
}

/// `args.cni`: the conventions doc's `ips`.
#[derive(Debug, Deserialize)]
pub struct ArgsCni {
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Decode the configuration: malformed JSON or a field of the wrong type is a decode error naming the field.
pub fn parse(raw: &[u8]) -> CniResult<(NetConf, Value)> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the network configuration on stdin is not JSON: {e}"),
        )
    })?;
    let conf: NetConf = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| CniError::new(code::DECODE, format!("{}: {}", e.path(), e.inner())))?;
    Ok((conf, value))
}

fn bad(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(code::BAD_CONFIG, format!("{field}: {why}"))
}

impl NetConf {
    /// The `dns.nameservers` of the configuration that are IP addresses (others are not servers the resolver
    /// can use).
    fn nameservers(&self) -> Vec<IpAddr> {
        self.dns
            .as_ref()
            .and_then(|d| d["nameservers"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect()
    }

    /// The delegated IPAM plugin, if `ipam.type` names one other than nsnet.
    pub fn ipam_plugin(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .and_then(|i| i.plugin.as_deref())
            .filter(|p| *p != "nsnet")
    }

    /// The subnets nsnet's own IPAM uses: `ipam.ranges` (one range set per family) or `ipam.subnet`; no IPv4
    /// subnet picks a free one from nsnet's pool.
    fn own_subnets(&self) -> CniResult<Subnets> {
        let Some(ipam) = &self.ipam else {
            return Ok(Subnets::default());
        };
        let mut out = Subnets::default();
        let given: Vec<(&str, Option<IpAddr>, String)> = match (&ipam.ranges, &ipam.subnet) {
            (Some(ranges), _) => {
                if ranges.iter().all(Vec::is_empty) {
                    return Err(bad(
                        "ipam.ranges",
                        "is empty; give one range or leave it out",
                    ));
                }
                let mut given = Vec::new();
                for (i, set) in ranges.iter().enumerate() {
                    if set.len() > 1 {
                        return Err(CniError::new(
                            code::UNSUPPORTED_FIELD,
                            format!(
                                "ipam.ranges[{i}]: {} ranges in one range set; nsnet's IPAM serves one subnet \
                                 per IP family (use host-local as the ipam type for several)",
                                set.len()
                            ),
                        ));
                    }
                    if let Some(r) = set.first() {
                        given.push((r.subnet.as_str(), r.gateway, format!("ipam.ranges[{i}][0]")));
                    }
                }
                given
            }
            (None, Some(s)) => vec![(s.as_str(), ipam.gateway, "ipam".to_string())],
            (None, None) => {
                return match ipam.gateway {
                    None => Ok(out),
                    Some(IpAddr::V4(g)) => Ok(Subnets {
                        gateway4: Some(g),
                        ..out
                    }),
                    Some(IpAddr::V6(g)) => Err(bad(
                        "ipam.gateway",
                        format!("{g} is IPv6, and no IPv6 subnet is given; add one in ipam.ranges"),
                    )),
                };
            }
        };
        for (text, gateway, field) in given {
            let subnet_field = format!("{field}.subnet");
            let gateway_field = format!("{field}.gateway");
            let family_twice = |family: &str| {
                CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "{subnet_field}: a second {family} subnet; nsnet's IPAM serves one subnet per IP family \
                         (use host-local as the ipam type for several)"
                    ),
                )
            };
            if text.contains(':') {
                let subnet =
                    nsnet_core::ipam::parse_subnet6(text).map_err(|e| bad(&subnet_field, e))?;
                let gateway = match gateway {
                    None => None,
                    Some(IpAddr::V6(g)) => {
                        nsnet_core::ipam::check_gateway6(&subnet, g)
                            .map_err(|e| bad(&gateway_field, e))?;
                        Some(g)
                    }
                    Some(IpAddr::V4(g)) => {
                        return Err(bad(
                            &gateway_field,
                            format!("{g} is not an IPv6 address, as {subnet} is"),
                        ))
                    }
                };
                if out.v6.replace((subnet, gateway)).is_some() {
                    return Err(family_twice("IPv6"));
                }
            } else {
                let subnet =
                    nsnet_core::ipam::parse_subnet(text).map_err(|e| bad(&subnet_field, e))?;
                let gateway = match gateway {
                    None => None,
                    Some(IpAddr::V4(g)) => {
                        nsnet_core::ipam::check_gateway(&subnet, g)
                            .map_err(|e| bad(&gateway_field, e))?;
                        Some(g)
                    }
                    Some(IpAddr::V6(g)) => {
                        return Err(bad(
                            &gateway_field,
                            format!("{g} is not an IPv4 address, as {subnet} is"),
                        ))
                    }
                };
                if out.v4.replace(subnet).is_some() {
                    return Err(family_twice("IPv4"));
                }
                out.gateway4 = gateway;
            }
        }
        // Only an IPv6 subnet given: an IPv6-only network (taking it as dual stack would hand out an IPv4
        // address nobody asked for).
        out.ipv6_only = out.v4.is_none();
        Ok(out)
    }

    /// The nsnet network this configuration stands for. `delegated` is the subnet and gateway a delegated IPAM
    /// plugin handed out.
    pub fn network_request(&self, delegated: Option<Subnets>) -> CniResult<NetworkRequest> {
        nsnet_core::names::check_name("network", &self.name).map_err(|e| bad("name", e))?;
        if let Some(b) = &self.bridge {
            nsnet_core::names::check_ifname(b).map_err(|e| bad("bridge", e))?;
        }
        if let Some(m) = self.mtu {
            if !(68..=65535).contains(&m) {
                return Err(bad("mtu", format!("{m} is out of range; use 68 to 65535")));
            }
        }
        let subnets = match delegated {
            Some(d) => d,
            None => self.own_subnets()?,
        };
        let (subnet, gateway) = (subnets.v4, subnets.gateway4);
        if let (Some(s), Some(g)) = (subnet, gateway) {
            nsnet_core::ipam::check_gateway(&s, g).map_err(|e| bad("gateway", e))?;
        }
        Ok(NetworkRequest {
            name: self.name.clone(),
            driver: Driver::Bridge,
            subnet,
            gateway,
            interface: self.bridge.clone(),
            internal: false,
            isolate: self.isolate.unwrap_or(true),
            fast_path: self.fast_path.unwrap_or(true),
            mtu: self.mtu,
            options: NetOptions {
                masquerade: self.ip_masq.unwrap_or(true),
                host_gateway: self.is_gateway.unwrap_or(true),
                hairpin: self.hairpin_mode.unwrap_or(true),
                gateway_mode: self.gateway_mode.unwrap_or_default(),
            },
            overlay: None,
            dns: self.resolver.unwrap_or(false),
            // With the resolver on, the configuration's own nameservers are where it forwards. IPv6 ones only
            // on a dual-stack network: an IPv4-only configuration keeps dropping them, as it always has.
            dns_servers: match self.resolver {
                Some(true) => self
                    .nameservers()
                    .into_iter()
                    .filter(|ip| ip.is_ipv4() || subnets.v6.is_some())
                    .collect(),
                _ => vec![],
            },
            // As the reference bridge plugin: ipMasq covers both families.
            ipv6: subnets.v6.map(|(subnet, gateway)| Ipv6Request {
                subnet: Some(subnet),
                gateway,
                nat: self.ip_masq.unwrap_or(true),
                only: subnets.ipv6_only,
            }),
        })
    }

    /// The firewall backend, if the configuration names one.
    pub fn backend(&self) -> CniResult<Option<Backend>> {
        self.firewall
            .as_deref()
            .map(|f| f.parse().map_err(|e: String| bad("firewall", e)))
            .transpose()
    }

    /// The published ports of the `portMappings` capability.
    pub fn ports(&self) -> CniResult<Vec<PortSpec>> {
        let mut out = Vec::new();
        for (i, p) in self.runtime_config.port_mappings.iter().enumerate() {
            let field = |f: &str| format!("runtimeConfig.portMappings[{i}].{f}");
            let protocol = match p
                .protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some(other) => {
                    return Err(bad(
                        &field("protocol"),
                        format!("'{other}' is not tcp or udp"),
                    ))
                }
            };
            // `::` is every IPv6 address, as `-p [::]:…`; whether an address is one nsnet can publish on is
            // the library's check, on ADD.
            let host_ip = match p.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => None,
                Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                    bad(&field("hostIP"), format!("'{text}' is not an IP address"))
                })?),
            };
            if p.container_port == 0 {
                return Err(bad(&field("containerPort"), "must be 1 to 65535"));
            }
            // The reference portmap plugin refuses 0 too: it would publish on a port nobody chose.
            if p.host_port == 0 {
                return Err(bad(
                    &field("hostPort"),
                    "0 would publish on a random host port; give one from 1 to 65535",
                ));
            }
            out.push(PortSpec {
                host_ip,
                host_port: Some(p.host_port),
                container_port: p.container_port,
                count: 1,
                protocol,
            });
        }
        Ok(out)
    }

    /// The addresses asked for, at most one per family: from the `ips` capability, else `args.cni.ips`, else
    /// `CNI_ARGS` `IP=` (comma-separated, as host-local reads it).
    pub fn requested_ips(&self, cni_args_ip: Option<&str>) -> CniResult<Requested> {
        let from_args = self
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .map(|c| c.ips.as_slice())
            .unwrap_or_default();
        let (texts, field): (Vec<&str>, &'static str) = if !self.runtime_config.ips.is_empty() {
            let ips = self.runtime_config.ips.iter().map(String::as_str);
            (ips.collect(), "runtimeConfig.ips")
        } else if !from_args.is_empty() {
            (
                from_args.iter().map(String::as_str).collect(),
                "args.cni.ips",
            )
        } else if let Some(ip) = cni_args_ip {
            (ip.split(',').map(str::trim).collect(), "CNI_ARGS IP")
        } else {
            return Ok(Requested::default());
        };
        let mut out = Requested::default();
        for text in texts {
            let addr = text.split('/').next().unwrap_or(text);
            let twice = |family: &str| {
                bad(
                    field,
                    format!(
                        "gives a second {family} address ({text}); give at most one per family"
                    ),
                )
            };
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => {
                    if out.v4.replace((ip, field)).is_some() {
                        return Err(twice("IPv4"));
                    }
                }
                Ok(IpAddr::V6(ip)) => {
                    if out.v6.replace((ip, field)).is_some() {
                        return Err(twice("IPv6"));
                    }
                }
                Err(_) => return Err(bad(field, format!("'{text}' is not an IP address"))),
            }
        }
        Ok(out)
    }

    /// The `mac` capability: a unicast address (whether another endpoint has it is nsnet's check, on ADD).
    pub fn mac(&self) -> CniResult<Option<Mac>> {
        let Some(text) = self.runtime_config.mac.as_deref() else {
            return Ok(None);
        };
        let mac = text
            .parse::<Mac>()
            .map_err(|e| bad("runtimeConfig.mac", e))?;
        mac.check_unicast()
            .map_err(|e| bad("runtimeConfig.mac", e))?;
        Ok(Some(mac))
    }

    /// Where nsnet keeps its state.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("NSNET_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/nsnet"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> CniResult<NetConf> {
        parse(text.as_bytes()).map(|(c, _)| c)
    }

    #[test]
    fn decodes_a_full_config() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","bridge":"br9","ipMasq":false,
                "ipam":{"ranges":[[{"subnet":"10.7.0.0/24","gateway":"10.7.0.254"}]]},
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"UDP"}],
                                 "ips":["10.7.0.9/24"],"mac":"02:00:00:00:00:09"}}"#,
        )
        .unwrap();
        let req = c.network_request(None).unwrap();
        assert_eq!(req.subnet, Some("10.7.0.0/24".parse().unwrap()));
        assert_eq!(req.gateway, Some("10.7.0.254".parse().unwrap()));
        assert!(!req.options.masquerade && req.options.hairpin);
        let ports = c.ports().unwrap();
        assert_eq!(
            (ports[0].host_port, ports[0].protocol),
            (Some(8080), Proto::Udp)
        );
        assert_eq!(
            c.requested_ips(None).unwrap(),
            Requested {
                v4: Some(("10.7.0.9".parse().unwrap(), "runtimeConfig.ips")),
                v6: None
            }
        );
        assert!(c.mac().unwrap().is_some());
        assert!(req.ipv6.is_none());
    }

    #[test]
    fn dual_stack_ranges_addresses_and_ports() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","ipMasq":false,
                "ipam":{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd07::/64","gateway":"fd07::fe"}]]},
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"hostIP":"::"}],
                                 "ips":["fd07::9/64","10.7.0.9/24"]}}"#,
        )
        .unwrap();
        let req = c.network_request(None).unwrap();
        assert_eq!(req.subnet, Some("10.7.0.0/24".parse().unwrap()));
        let v6 = req.ipv6.unwrap();
        assert_eq!(v6.subnet, Some("fd07::/64".parse().unwrap()));
        assert_eq!(v6.gateway, Some("fd07::fe".parse().unwrap()));
        // ipMasq covers NAT66 too, as in the reference bridge plugin.
        assert!(!v6.nat);
        assert_eq!(c.ports().unwrap()[0].host_ip, Some("::".parse().unwrap()));
        let r = c.requested_ips(None).unwrap();
        assert_eq!(r.v4.map(|a| a.0), Some("10.7.0.9".parse().unwrap()));
        assert_eq!(r.v6.map(|a| a.0), Some("fd07::9".parse().unwrap()));
        // CNI_ARGS IP= takes one address per family, comma-separated.
        let plain = conf(r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet"}"#).unwrap();
        let r = plain.requested_ips(Some("10.7.0.3,fd07::3")).unwrap();
        assert_eq!(r.v6, Some(("fd07::3".parse().unwrap(), "CNI_ARGS IP")));
    }

    #[test]
    fn ipv6_nameservers_go_to_the_resolver_of_a_dual_stack_network_only() {
        let with = |ipam: &str| {
            conf(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"nsnet","resolver":true,
                     "dns":{{"nameservers":["10.0.0.53","fd00::53","not-an-ip"]}},"ipam":{ipam}}}"#
            ))
            .unwrap()
            .network_request(None)
            .unwrap()
            .dns_servers
        };
        let v4: IpAddr = "10.0.0.53".parse().unwrap();
        let v6: IpAddr = "fd00::53".parse().unwrap();
        assert_eq!(with(r#"{"subnet":"10.7.0.0/24"}"#), [v4]);
        assert_eq!(
            with(r#"{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd07::/64"}]]}"#),
            [v4, v6]
        );
    }

    #[test]
    fn dual_stack_refusals_name_the_field() {
        let refused = |ipam: &str| {
            let c = conf(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"nsnet","ipam":{ipam}}}"#
            ))
            .unwrap();
            c.network_request(None).unwrap_err()
        };
        let e = refused(r#"{"ranges":[[{"subnet":"10.7.0.0/24"},{"subnet":"10.8.0.0/24"}]]}"#);
        assert!(
            e.code == code::UNSUPPORTED_FIELD && e.msg.starts_with("ipam.ranges[0]:"),
            "{e}"
        );
        let e = refused(r#"{"ranges":[[{"subnet":"fd07::/64"}],[{"subnet":"fd08::/64"}]]}"#);
        assert_eq!(e.code, code::UNSUPPORTED_FIELD, "{e}");
        let e = refused(
            r#"{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd08::/64"}],[{"subnet":"fd09::/64"}]]}"#,
        );
        assert!(
            e.msg.starts_with("ipam.ranges[2][0].subnet: a second IPv6"),
            "{e}"
        );
        // Only an IPv6 subnet: an IPv6-only network, with no IPv4 subnet picked for it.
        let only6 = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","ipam":{"subnet":"fd07::/64"}}"#,
        )
        .unwrap()
        .network_request(None)
        .unwrap();
        assert_eq!(only6.subnet, None);
        assert!(only6.ipv6.is_some_and(|r6| r6.only), "{:?}", only6.ipv6);
        let e = refused(
            r#"{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd07::/64","gateway":"10.7.0.1"}]]}"#,
        );
        assert!(
            e.msg
                .starts_with("ipam.ranges[1][0].gateway: 10.7.0.1 is not an IPv6"),
            "{e}"
        );
        let e = refused(r#"{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fe80::/64"}]]}"#);
        assert!(e.msg.starts_with("ipam.ranges[1][0].subnet:"), "{e}");
        let twice = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","runtimeConfig":{"ips":["fd07::2","fd07::3"]}}"#,
        )
        .unwrap();
        let e = twice.requested_ips(None).unwrap_err();
        assert!(
            e.msg.starts_with("runtimeConfig.ips: gives a second IPv6"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = conf(r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","mtu":"x"}"#).unwrap_err();
        assert!(e.code == code::DECODE && e.msg.starts_with("mtu: "), "{e}");
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet","ipam":{"subnet":"10.0.0.0/33"}}"#,
        )
        .unwrap();
        let e = c.network_request(None).unwrap_err();
        assert!(
            e.code == code::BAD_CONFIG && e.msg.starts_with("ipam.subnet"),
            "{e}"
        );
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"nsnet",
                "runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"sctp"}]}}"#,
        )
        .unwrap();
        assert!(c
            .ports()
            .unwrap_err()
            .msg
            .contains("portMappings[0].protocol"));
        let e = conf("{").unwrap_err();
        assert_eq!(e.code, code::DECODE);
    }
}
