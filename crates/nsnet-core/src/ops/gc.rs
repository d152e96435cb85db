//! `nsnet gc`: reconcile the records and the kernel, both ways.

use std::collections::HashSet;

use super::Nsnet;
use crate::apply::Applier;
use crate::error::Result;
use crate::kernel::{netns, Netlink};
use crate::model::Driver;
use crate::plan::{build, Ns, Step};
use crate::store::Record;

/// Whether nsnet would have named a host link this way: its bridges and point-to-point host ends, and the
/// `vethXXXXXXXX` host ends of endpoints.
fn nsnet_bridge_name(name: &str) -> bool {
    name == super::DEFAULT_NETWORK || name.starts_with("nsbr-") || name.starts_with("nsve-")
}

fn nsnet_veth_name(name: &str) -> bool {
    name.len() == 12 && name.starts_with("veth") && name[4..].chars().all(|c| c.is_ascii_hexdigit())
}

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
            if sb.netns.exists() || sb.removing {
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
        let bridges: HashSet<u32> = links
            .iter()
            .filter(|l| {
                nets.iter()
                    .any(|n| n.driver == Driver::Bridge && n.interface == l.name)
            })
            .map(|l| l.index)
            .collect();
        let mut applier = Applier::new();
        for link in &links {
            let ours = nsnet_bridge_name(&link.name)
                || (nsnet_veth_name(&link.name)
                    && link.master.is_some_and(|m| bridges.contains(&m)));
            if !ours || owned.contains(link.name.as_str()) {
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
                })?;
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
            let _kept = applier.apply(&build::firewall_reload(&nets, &sandboxes))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_nsnet_link_names() {
        assert!(nsnet_veth_name("veth0bce226a"));
        assert!(!nsnet_veth_name("veth0"));
        assert!(!nsnet_veth_name("vethzzzzzzzz"));
        assert!(nsnet_bridge_name("nsbr-web") && nsnet_bridge_name("nsnet0"));
        assert!(!nsnet_bridge_name("docker0") && !nsnet_bridge_name("br0"));
    }
}
