//! The network configuration on stdin, typed, and turned into nsnet requests. Every check that can fail does
//! so here, before anything changes, with a message naming the field.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use nsnet_core::firewall::Backend;
use nsnet_core::model::{Driver, GatewayMode, Mac, NetOptions};
use nsnet_core::ops::NetworkRequest;
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
    pub gateway: Option<Ipv4Addr>,
    pub ranges: Option<Vec<Vec<Range>>>,
}

/// One host-local style range.
#[derive(Debug, Deserialize)]
pub struct Range {
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
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
    /// The IPv4 `dns.nameservers` of the configuration (others are not servers the resolver can use).
    fn nameservers(&self) -> Vec<Ipv4Addr> {
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

    /// The subnet and gateway nsnet's own IPAM uses: `ipam.ranges[0][0]` or `ipam.subnet`; `None` picks a free
    /// subnet from nsnet's pool.
    fn own_subnet(&self) -> CniResult<(Option<Ipv4Net>, Option<Ipv4Addr>)> {
        let Some(ipam) = &self.ipam else {
            return Ok((None, None));
        };
        let (text, gateway, field) = match (&ipam.ranges, &ipam.subnet) {
            (Some(ranges), _) => {
                let all: Vec<&Range> = ranges.iter().flatten().collect();
                match all.as_slice() {
                    [] => return Err(bad("ipam.ranges", "is empty; give one range or leave it out")),
                    [one] => (one.subnet.as_str(), one.gateway, "ipam.ranges[0][0].subnet"),
                    _ => {
                        return Err(CniError::new(
                            code::UNSUPPORTED_FIELD,
                            format!(
                                "ipam.ranges: {} ranges given; nsnet's IPAM serves one IPv4 subnet per network \
                                 (use host-local as the ipam type for several)",
                                all.len()
                            ),
                        ))
                    }
                }
            }
            (None, Some(s)) => (s.as_str(), ipam.gateway, "ipam.subnet"),
            (None, None) => return Ok((None, ipam.gateway)),
        };
        let subnet = nsnet_core::ipam::parse_subnet(text).map_err(|e| bad(field, e))?;
        Ok((Some(subnet), gateway))
    }

    /// The nsnet network this configuration stands for. `delegated` is the subnet and gateway a delegated IPAM
    /// plugin handed out.
    pub fn network_request(
        &self,
        delegated: Option<(Ipv4Net, Option<Ipv4Addr>)>,
    ) -> CniResult<NetworkRequest> {
        nsnet_core::names::check_name("network", &self.name).map_err(|e| bad("name", e))?;
        if let Some(b) = &self.bridge {
            nsnet_core::names::check_ifname(b).map_err(|e| bad("bridge", e))?;
        }
        if let Some(m) = self.mtu {
            if !(68..=65535).contains(&m) {
                return Err(bad("mtu", format!("{m} is out of range; use 68 to 65535")));
            }
        }
        let (subnet, gateway) = match delegated {
            Some((s, g)) => (Some(s), g),
            None => self.own_subnet()?,
        };
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
            // With the resolver on, the configuration's own nameservers are where it forwards.
            // IPv4 ones only until issue #19's CNI step (an IPv6 one is dropped, as it always was).
            dns_servers: match self.resolver {
                Some(true) => self.nameservers().into_iter().map(IpAddr::V4).collect(),
                _ => vec![],
            },
            // Dual-stack ranges come with issue #19's CNI step.
            ipv6: None,
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
            let host_ip = match p.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => None,
                Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                    bad(
                        &field("hostIP"),
                        format!("'{text}' is not an IPv4 address (nsnet publishes IPv4 only)"),
                    )
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
                host_ip: host_ip.map(Into::into),
                host_port: Some(p.host_port),
                container_port: p.container_port,
                count: 1,
                protocol,
            });
        }
        Ok(out)
    }

    /// The address asked for: the `ips` capability, then `args.cni.ips`, then `CNI_ARGS` `IP=`; with the field
    /// it came from, for messages about it.
    pub fn requested_ip(
        &self,
        cni_args_ip: Option<&str>,
    ) -> CniResult<Option<(Ipv4Addr, &'static str)>> {
        let (text, field) = if let Some(ip) = self.runtime_config.ips.first() {
            (ip.as_str(), "runtimeConfig.ips")
        } else if let Some(ip) = self
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .and_then(|c| c.ips.first())
        {
            (ip.as_str(), "args.cni.ips")
        } else if let Some(ip) = cni_args_ip {
            (ip, "CNI_ARGS IP")
        } else {
            return Ok(None);
        };
        let addr = text.split('/').next().unwrap_or(text);
        addr.parse::<Ipv4Addr>()
            .map(|ip| Some((ip, field)))
            .map_err(|_| bad(field, format!("'{text}' is not an IPv4 address")))
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
            c.requested_ip(None).unwrap(),
            Some(("10.7.0.9".parse().unwrap(), "runtimeConfig.ips"))
        );
        assert!(c.mac().unwrap().is_some());
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
