//! `nsnet gc`: reconcile the records and the kernel, both ways.

use std::collections::HashSet;

use super::Nsnet;
use crate::apply::Applier;
use crate::error::Result;
use crate::kernel::{netns, Netlink};
use crate::model::{Driver, Network, Sandbox};
use crate::plan::{build, Ns, Plan, Step};
use crate::store::Record;

impl Nsnet {
    /// `nsnet gc`: finish or roll back interrupted commands; release sandboxes whose namespace is gone (a
    /// container that exited), with their addresses and rules; delete host links nsnet made that no record
    /// owns; and rebuild the firewall from the records, which drops elements no record owns. With `dry_run`,
    /// only says what it would do. Returns one line per thing done.
    pub fn gc(&self) -> Result<Vec<String>> {
        let verb = |done: &str, would: &str| {
            if self.dry_run {
                would.to_string()
            } else {
                done.to_string()
            }
        };
        let mut report = Vec::new();
        if self.dry_run {
            for (_, i) in self.store.intents()? {
                let what = if i.setup {
                    "roll back or keep"
                } else {
                    "finish"
                };
                report.push(format!("would {what} the interrupted `{}`", i.command));
            }
        } else {
            let _lock = self.store.lock()?;
            report.extend(self.recover()?);
        }

        for sb in self.store.sandboxes()? {
            // A sandbox being removed belongs to the command removing it.
            if sb.namespace_is_there() || sb.removing {
                continue;
            }
            report.push(format!(
                "{} sandbox '{}': its namespace {} is gone",
                verb("released", "would release"),
                sb.name,
                sb.netns.display()
            ));
            if !self.dry_run {
                self.remove(&sb.name)?;
            }
        }

        let _lock = if self.dry_run {
            None
        } else {
            Some(self.store.lock()?)
        };
        let mut nets = self.store.networks()?;
        let sandboxes = self.store.sandboxes()?;
        // A record in quarantine may own what looks like nobody's from here on: its addresses, links,
        // namespace and firewall elements. Reaping them would destroy what a human may still restore.
        let quarantined = self.store.quarantined();
        if !quarantined.is_empty() {
            report.push(format!(
                "left addresses, links, namespaces and firewall elements no record owns alone: {} holds {} \
                 record file(s) that could not be read; repair and move them back, or delete them, then run \
                 `nsnet gc` again",
                self.store.dir().join("quarantine").display(),
                quarantined.len()
            ));
            return Ok(report);
        }
        // Addresses and ports held for sandboxes that have no record any more go back to their network.
        let names: HashSet<&str> = sandboxes.iter().map(|s| s.name.as_str()).collect();
        for net in &mut nets {
            let stale: Vec<String> = net
                .users()
                .into_iter()
                .filter(|u| !names.contains(u))
                .map(str::to_string)
                .collect();
            if stale.is_empty() {
                continue;
            }
            report.push(format!(
                "{} the addresses of {} on network '{}': no such sandbox",
                verb("released", "would release"),
                stale.join(", "),
                net.name
            ));
            for sandbox in &stale {
                net.release(sandbox);
            }
            if !self.dry_run {
                let (_, after) = self.store.file_states(&[Record::Network(net.clone())])?;
                self.store.set_files(&after)?;
            }
        }
        let mut owned: HashSet<&str> = nets.iter().map(|n| n.interface.as_str()).collect();
        owned.extend(
            sandboxes
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.host_interface.as_str())),
        );
        let mut nl = Netlink::open()?;
        let links = nl.links()?;
        let tag = self.store.owner_tag();
        let mut applier = Applier::new();
        // Host links this state dir made carry its tag; anyone else's (another state dir's included) are left
        // alone whatever their names.
        for link in &links {
            if link.alias.as_deref() != Some(tag.as_str()) || owned.contains(link.name.as_str()) {
                continue;
            }
            report.push(format!(
                "{} link {}: no record owns it",
                verb("deleted", "would delete"),
                link.name
            ));
            if !self.dry_run {
                applier.run(&Step::DeleteLink {
                    ns: Ns::Host,
                    name: link.name.clone(),
                    tag: tag.clone(),
                    made_with: None,
                })?;
            }
        }

        // The reverse: links the records want that the kernel lacks (a bridge or a host veth deleted by hand).
        let present: HashSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        for net in nets.iter().filter(|n| !n.removing) {
            let (lines, plan) = repair_network(net, &sandboxes, &present, &tag);
            for line in lines {
                report.push(format!("{} {line}", verb("re-created", "would re-create")));
            }
            if !self.dry_run && !plan.is_empty() {
                let _kept = applier.apply(&plan)?;
            }
        }

        // Namespaces this store made (tagged with its owner tag) that no sandbox record holds: their record was
        // lost (a state dir restored from backup, a hand-deleted file). Anyone else's namespaces are left alone.
        let tag = self.store.owner_tag();
        let held: HashSet<&std::path::Path> = sandboxes.iter().map(|s| s.netns.as_path()).collect();
        for name in netns::named()? {
            let path = netns::named_path(&name);
            if held.contains(path.as_path()) || !netns::has_tag(&path, &tag) {
                continue;
            }
            report.push(format!(
                "{} namespace {name}: nsnet made it, no record owns it",
                verb("deleted", "would delete")
            ));
            if !self.dry_run {
                applier.run(&Step::DeleteNetns { name })?;
            }
        }

        // Rebuilding is idempotent; it drops any element no record stands for.
        if !self.dry_run {
            let changed = super::firewall::refresh_host_chains(&mut nets)?;
            let plan = build::firewall_reload(&nets, &sandboxes, &self.store.owner_tag());
            let _kept = applier.apply(&plan)?;
            self.record_host_chains(changed)?;
        }
        Ok(report)
    }
}

/// What brings back the kernel objects of `net` that are missing (`present`: the host's link names): its
/// bridge, and the veth pair of each endpoint whose host end is gone. A bridge deleted by hand left its ports
/// loose, so those veths are made again too. Returns a line per object, and the plan (kernel only: the
/// firewall is rebuilt from the records afterwards).
fn repair_network(
    net: &Network,
    sandboxes: &[Sandbox],
    present: &HashSet<&str>,
    tag: &str,
) -> (Vec<String>, Plan) {
    let mut lines = Vec::new();
    let mut plan = Plan::default();
    let bridge_gone = net.driver == Driver::Bridge && !present.contains(net.interface.as_str());
    // The live endpoints on this network, of sandboxes whose namespace is there to put a veth back into.
    let endpoints: Vec<(&Sandbox, &crate::model::Endpoint)> = sandboxes
        .iter()
        .filter(|s| !s.removing && s.namespace_is_there())
        .flat_map(|sb| sb.endpoints.iter().map(move |ep| (sb, ep)))
        .filter(|(_, ep)| ep.network == net.name && !ep.removing)
        .collect();
    if bridge_gone {
        lines.push(format!(
            "bridge {} of network '{}': it was missing",
            net.interface, net.name
        ));
        // Its loose ports go first: their qdiscs keep the old fast path's block alive, with a program made
        // for the old bridge, which the new bridge must not inherit.
        for (_, ep) in endpoints
            .iter()
            .filter(|(_, ep)| present.contains(ep.host_interface.as_str()))
        {
            plan.steps.push(Step::DeleteLink {
                ns: Ns::Host,
                name: ep.host_interface.clone(),
                tag: tag.to_string(),
                made_with: None,
            });
        }
        let (steps, _) = build::network_up(net, &[], None, tag);
        plan.steps
            .extend(steps.into_iter().filter(|s| *s != Step::forwarding()));
    }
    for (sb, ep) in endpoints {
        let veth_gone = !present.contains(ep.host_interface.as_str());
        if !veth_gone && !bridge_gone {
            continue;
        }
        let why = if veth_gone {
            "it was missing"
        } else {
            "its bridge was missing"
        };
        lines.push(format!(
            "veth {} of sandbox '{}' on network '{}': {why}",
            ep.host_interface, sb.name, net.name
        ));
        let ns = Ns::Path(sb.netns.clone());
        plan.steps.extend(build::endpoint_up(net, ep, &ns, tag).0);
    }
    (lines, plan)
}
