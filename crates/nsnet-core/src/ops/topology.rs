//! `nsnet topology`'s read: the records, and what the kernel holds of them, read through [`Host`] under the
//! shared lock, handed to the pure [`crate::topology::build`].

use std::collections::BTreeMap;

use super::{Host, Nsnet};
use crate::error::Result;
use crate::firewall::Backend;
use crate::plan::build as plans;
use crate::topology::{build, Facts, Inside, InsideLink, Overlay6, Topology, Uplink};

impl Nsnet {
    /// What exists now: every network and sandbox as the records have them, each checked against the kernel
    /// (links, bridge ports, inside each namespace, the firewall's endpoint and port elements, overlay
    /// routes), and the tagged links and namespaces no record owns. The shared lock is held while the kernel
    /// is read too, so no command changes the two in between: a half-done command would look broken.
    pub fn topology(&self) -> Result<Topology> {
        let _read = self.read_lock()?;
        let networks = self.store.network_records()?;
        let sandboxes = self.store.sandboxes()?;
        let tag = self.store.owner_tag();
        let mut host = Host::new();
        let links = host.links()?;
        // The IPv4 default route's link, else the IPv6 one's (an IPv6-only host).
        let routes6: Vec<(u32, Option<std::net::Ipv6Addr>)> = host
            .default_routes6()?
            .into_iter()
            .filter_map(|r| r.oif.map(|i| (i, r.gateway)))
            .collect();
        let route4 = host
            .default_routes()?
            .into_iter()
            .find_map(|r| r.oif.map(|i| (i, r.gateway)));
        let index = route4.map(|(i, _)| i).or(routes6.first().map(|(i, _)| *i));
        let uplink = match index.and_then(|i| links.iter().find(|l| l.index == i)) {
            Some(link) => Some(Uplink {
                interface: link.name.clone(),
                addresses: host.addresses_of(&link.name)?,
                gateway: route4.and_then(|(_, g)| g),
                addresses6: host
                    .addresses6_of(&link.name)?
                    .into_iter()
                    .filter(|a| a.addr().segments()[0] & 0xffc0 != 0xfe80)
                    .collect(),
                gateway6: routes6
                    .iter()
                    .find(|(i, _)| *i == link.index)
                    .and_then(|(_, g)| *g),
            }),
            None => None,
        };

        let mut inside = BTreeMap::new();
        for sb in sandboxes.iter().filter(|s| !s.removing) {
            let seen = if !Host::namespace_is_there(sb) {
                Inside::Gone
            } else {
                match read_inside(sb) {
                    Ok(links) => Inside::Links(links),
                    Err(e) => Inside::Unreadable(e.to_string()),
                }
            };
            inside.insert(sb.name.clone(), seen);
        }

        // The firewall's endpoint and port elements, one read per backend in use.
        let mut missing_rules = Vec::new();
        let mut firewall_unread = None;
        let mut by_backend: BTreeMap<String, (Backend, Vec<crate::firewall::Rule>)> =
            BTreeMap::new();
        for sb in sandboxes.iter().filter(|s| !s.removing) {
            for ep in sb.endpoints.iter().filter(|e| !e.removing) {
                let Some(net) = networks.iter().find(|n| n.settings.name == ep.network) else {
                    continue;
                };
                let backend = net.settings.firewall;
                by_backend
                    .entry(backend.to_string())
                    .or_insert_with(|| (backend, Vec::new()))
                    .1
                    .extend(plans::endpoint_rules(ep));
            }
        }
        for (backend, rules) in by_backend.into_values() {
            match Host::firewall_missing(backend, &rules) {
                Ok(missing) => missing_rules.extend(missing),
                Err(e) => firewall_unread = Some(format!("{backend}: {e}")),
            }
        }

        // The IPv6 gateway side: on the bridge, or on each point-to-point host end.
        let mut gateway_addresses6 = BTreeMap::new();
        for n in networks
            .iter()
            .map(|r| &r.settings)
            .filter(|n| n.ipv6.is_some())
        {
            let mut gateway_links = vec![n.interface.clone()];
            if n.driver == crate::model::Driver::Veth {
                gateway_links = sandboxes
                    .iter()
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.network == n.name)
                    .map(|e| e.host_interface.clone())
                    .collect();
            }
            for link in gateway_links {
                if links.iter().any(|l| l.name == link) {
                    gateway_addresses6.insert(link.clone(), host.addresses6_of(&link)?);
                }
            }
        }
        // The `[::1]` translation's map, read only when some port needs it.
        // An IPv6 port on every address is in that map too.
        let loopback6 = sandboxes.iter().flat_map(|s| s.endpoints.iter()).any(|e| {
            e.ipv6.is_some()
                && e.ports.iter().any(|m| match m.host_ip {
                    None => true,
                    Some(ip) => ip.is_ipv6() && (ip.is_loopback() || ip.is_unspecified()),
                })
        });
        let (loopback6_ports, loopback6_supported) = if loopback6 {
            (Host::loopback6_ports()?, Host::loopback6_supported())
        } else {
            (None, false)
        };

        let mut overlay_routes = BTreeMap::new();
        let mut overlay6 = BTreeMap::new();
        for o in networks.iter().filter_map(|n| n.settings.overlay.as_ref()) {
            let entries = host.overlay_entries(&o.device)?;
            if let (Some(e), Some(_)) = (&entries, o.cluster6) {
                overlay6.insert(
                    o.device.clone(),
                    Overlay6 {
                        routes: e.routes6.iter().map(|r| (r.dst, r.via)).collect(),
                        neighbours: e.neighbours6.clone(),
                    },
                );
            }
            let routes = entries.map(|e| e.routes.into_iter().map(|r| r.dst).collect());
            overlay_routes.insert(o.device.clone(), routes);
        }

        let facts = Facts {
            hostname: Host::hostname(),
            links,
            uplink,
            inside,
            // Another namespace that cannot be read is not one of ours to report.
            tagged_namespaces: Host::tagged_namespaces(&tag).unwrap_or_default(),
            missing_rules,
            firewall_unread,
            overlay_routes,
            overlay6,
            gateway_addresses6,
            loopback6_ports,
            loopback6_supported,
        };
        Ok(build(&networks, &sandboxes, &facts, &tag))
    }
}

/// The links of a sandbox's namespace, with their MACs and (for the links its endpoints name) addresses.
fn read_inside(sb: &crate::model::Sandbox) -> Result<Vec<InsideLink>> {
    let mut view = Host::inside(&sb.netns)?;
    let mut out = Vec::new();
    for link in view.links()? {
        let ep = sb.endpoints.iter().find(|e| e.interface == link.name);
        let addresses = match ep {
            Some(_) => view.addresses_of(&link.name)?,
            None => vec![],
        };
        let addresses6 = match ep {
            Some(e) if e.ipv6.is_some() => view.addresses6_of(&link.name)?,
            _ => vec![],
        };
        out.push(InsideLink {
            name: link.name,
            mac: link.mac,
            addresses,
            addresses6,
        });
    }
    Ok(out)
}
