//! `nsnet topology`'s read: the records, and what the kernel holds of them, read through [`Host`] under the
//! shared lock, handed to the pure [`crate::topology::build`].

use std::collections::BTreeMap;

use super::{Host, Nsnet};
use crate::error::Result;
use crate::firewall::Backend;
use crate::plan::build as plans;
use crate::topology::{build, Facts, Inside, Topology, Uplink};

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
        let uplink = match host
            .default_routes()?
            .into_iter()
            .find_map(|r| r.oif.map(|i| (i, r.gateway)))
        {
            Some((index, gateway)) => match links.iter().find(|l| l.index == index) {
                Some(link) => Some(Uplink {
                    interface: link.name.clone(),
                    addresses: host.addresses_of(&link.name)?,
                    gateway,
                }),
                None => None,
            },
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

        let mut overlay_routes = BTreeMap::new();
        for o in networks.iter().filter_map(|n| n.settings.overlay.as_ref()) {
            let routes = host
                .overlay_entries(&o.device)?
                .map(|e| e.routes.into_iter().map(|r| r.dst).collect());
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
        };
        Ok(build(&networks, &sandboxes, &facts, &tag))
    }
}

/// The links of a sandbox's namespace that its endpoints name, with their MACs and addresses.
type InsideLinks = Vec<(String, Option<[u8; 6]>, Vec<ipnet::Ipv4Net>)>;

fn read_inside(sb: &crate::model::Sandbox) -> Result<InsideLinks> {
    let mut view = Host::inside(&sb.netns)?;
    let mut out = Vec::new();
    for link in view.links()? {
        let addresses = if sb.endpoints.iter().any(|e| e.interface == link.name) {
            view.addresses_of(&link.name)?
        } else {
            vec![]
        };
        out.push((link.name, link.mac, addresses));
    }
    Ok(out)
}
