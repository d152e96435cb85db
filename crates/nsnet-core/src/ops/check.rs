//! Checking one endpoint against the kernel: what CNI `CHECK` asks.

use std::net::IpAddr;

use super::Host;
use super::Nsnet;
use crate::error::Result;
use crate::firewall::Rule;
use crate::kernel::netlink::DefaultRoute;
use crate::model::Sandbox;
use crate::plan::build;

impl Nsnet {
    /// What is wrong with sandbox `name`'s endpoint on `network`: one line per problem, empty when the records,
    /// the address reservation, the links, addresses, default route, fast path entry and firewall elements are
    /// all in place. With it, the sandbox's record, read under the same shared lock (the caller compares it
    /// with what it was told, as CNI `CHECK` does with `prevResult`).
    pub fn check_endpoint(
        &self,
        name: &str,
        network: &str,
    ) -> Result<(Vec<String>, Option<Sandbox>)> {
        let _read = self.read_lock()?;
        let sb = self.store.sandbox(name)?;
        let problems = match &sb {
            None => vec![format!("nsnet has no sandbox '{name}'")],
            Some(sb) => self.endpoint_problems(sb, network)?,
        };
        Ok((problems, sb))
    }

    /// What is wrong with `sb`'s endpoint on `network` (call under the lock).
    fn endpoint_problems(&self, sb: &Sandbox, network: &str) -> Result<Vec<String>> {
        let name = sb.name.as_str();
        let Some(ep) = sb.endpoints.iter().find(|e| e.network == network) else {
            return Ok(vec![format!(
                "sandbox '{name}' is not on network '{network}'"
            )]);
        };
        let Some(record) = self.store.network_record(network)? else {
            return Ok(vec![format!("nsnet has no network '{network}'")]);
        };
        let (net, allocations) = (&record.settings, &record.allocations);
        let mut problems = Vec::new();
        if let Some(ip) = ep.address.map(|a| a.addr()) {
            if allocations.addresses.get(&ip).map(String::as_str) != Some(name) {
                problems.push(format!(
                    "address {ip} is not reserved for '{name}' on network '{network}'"
                ));
            }
        }
        for m in &ep.ports {
            if !allocations
                .published
                .iter()
                .any(|p| p.sandbox == name && p.mapping == *m)
            {
                problems.push(format!("port {m} is not in network '{network}''s ledger"));
            }
        }

        let mut host = Host::new();
        match host.link(&ep.host_interface)? {
            None => problems.push(format!("host interface {} is missing", ep.host_interface)),
            Some(link) if net.driver == crate::model::Driver::Bridge => {
                let bridge = host.link(&net.interface)?.map(|b| b.index);
                if bridge.is_none() || link.master != bridge {
                    problems.push(format!(
                        "host interface {} is not on bridge {}",
                        ep.host_interface, net.interface
                    ));
                }
                // A bridge without a fast path is a kernel (or caller) that cannot have one, and one made
                // before nsnet carried IPv6 has no IPv6 map: nothing to check there.
                let mut ips: Vec<IpAddr> =
                    ep.address.iter().map(|a| IpAddr::V4(a.addr())).collect();
                ips.extend(ep.ipv6.map(|e6| IpAddr::V6(e6.address.addr())));
                for ip in ips {
                    let fast_path = match bridge {
                        Some(_) if net.fast_path => host.fast_path_entry(&net.interface, ip)?,
                        _ => None,
                    };
                    if let Some(entry) = fast_path {
                        if entry != Some((link.index, ep.mac.0)) {
                            problems.push(format!(
                                "the fast path does not send {ip} to {} ({})",
                                ep.host_interface, ep.mac
                            ));
                        }
                    }
                }
            }
            Some(_) => {}
        }

        if !Host::namespace_is_there(sb) {
            problems.push(format!("namespace {} is gone", sb.netns.display()));
        } else {
            let mut inside = Host::inside(&sb.netns)?;
            match inside.link(&ep.interface)? {
                None => problems.push(format!(
                    "interface {} is missing in {}",
                    ep.interface,
                    sb.netns.display()
                )),
                Some(link) => {
                    if link.mac.is_some_and(|m| m != ep.mac.0) {
                        problems.push(format!(
                            "interface {} has another MAC address than {}",
                            ep.interface, ep.mac
                        ));
                    }
                    if let (Some(address), Some(gateway)) = (ep.address, ep.gateway) {
                        if !inside.addresses_of(&ep.interface)?.contains(&address) {
                            problems.push(format!(
                                "interface {} has lost address {address}",
                                ep.interface
                            ));
                        }
                        let via = DefaultRoute {
                            oif: Some(link.index),
                            gateway: Some(gateway),
                        };
                        if ep.default_route && !inside.default_routes()?.contains(&via) {
                            problems.push(format!(
                                "the default route via {gateway} on {} is missing",
                                ep.interface
                            ));
                        }
                    }
                    if let Some(ep6) = &ep.ipv6 {
                        if !inside.addresses6_of(&ep.interface)?.contains(&ep6.address) {
                            problems.push(format!(
                                "interface {} has lost address {}",
                                ep.interface, ep6.address
                            ));
                        }
                        let via6 = crate::kernel::netlink::DefaultRoute6 {
                            oif: Some(link.index),
                            gateway: Some(ep6.gateway),
                        };
                        if ep.default_route && !inside.default_routes6()?.contains(&via6) {
                            problems.push(format!(
                                "the IPv6 default route via {} on {} is missing",
                                ep6.gateway, ep.interface
                            ));
                        }
                    }
                }
            }
        }

        for rule in Host::firewall_missing(net.firewall, &build::endpoint_rules(ep))? {
            problems.push(match rule {
                Rule::Port { mapping, target } => {
                    format!("the firewall does not publish {mapping} to {target}")
                }
                Rule::Endpoint {
                    host_interface,
                    address,
                    ipv6,
                } => {
                    // Its IPv4 element or one of its IPv6 ones (`endpoints6`): name every address it stands for.
                    let mut addresses: Vec<String> =
                        address.iter().map(|a| a.to_string()).collect();
                    addresses.extend(ipv6.iter().map(|a| a.to_string()));
                    format!(
                        "the firewall lacks the anti-spoofing entry {host_interface} {}",
                        addresses.join(" ")
                    )
                }
                other => format!("the firewall lacks {other:?}"),
            });
        }
        Ok(problems)
    }
}
