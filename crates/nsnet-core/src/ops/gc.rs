//! `nsnet gc`: reconcile the records and the kernel, both ways.

use std::collections::HashSet;

use super::host::Host;
use super::Nsnet;
use crate::error::Result;
use crate::kernel::fastpath::OnUnderlay;
use crate::kernel::netns;
use crate::model::{Driver, Network, NetworkRecord, Sandbox};
use crate::plan::{build, Ns, Plan, Step};
use crate::store::Record;

/// What `nsnet gc` found and will do: a line per thing, the kernel steps (deletions and re-creations first,
/// the firewall rebuilt from the records last) and the records as they will be.
#[derive(Debug, Default)]
pub struct Reconcile {
    /// One line per thing found, saying what will be (or was) done about it.
    pub lines: Vec<String>,
    /// The kernel and firewall steps, as every other command's plan (`--dry-run` prints them).
    pub plan: Plan,
    records: Vec<Record>,
}

impl Nsnet {
    /// `nsnet gc`: finish or roll back interrupted commands; release sandboxes whose namespace is gone (a
    /// container that exited), with their addresses and ports; delete host links and namespaces this state
    /// dir made that no record owns; re-create the links the records want that are missing; rebuild the
    /// firewall from the records, which drops elements no record owns. One flow, as every command: validate
    /// (read the state and the host), plan ([`Reconcile`]), apply, record. With `dry_run`, only the plan.
    pub fn gc(&self) -> Result<Reconcile> {
        let mut lines = Vec::new();
        let _lock = if self.dry_run {
            for (_, i) in self.store.intents()? {
                let what = if i.setup {
                    "roll back or keep"
                } else {
                    "finish"
                };
                lines.push(format!("{what} the interrupted `{}`", i.command));
            }
            None
        } else {
            let lock = self.store.lock()?;
            lines.extend(self.recover()?);
            Some(lock)
        };
        // A record in quarantine may own what looks like nobody's from here on: its addresses, links,
        // namespace and firewall elements. Reaping them would destroy what a human may still restore.
        let quarantined = self.store.quarantined();
        if !quarantined.is_empty() {
            lines.push(format!(
                "left addresses, links, namespaces and firewall elements no record owns alone: {} holds {} \
                 record file(s) that could not be read; repair and move them back, or delete them, then run \
                 `nsnet gc` again",
                self.store.dir().join("quarantine").display(),
                quarantined.len()
            ));
            return Ok(Reconcile {
                lines,
                ..Default::default()
            });
        }
        let mut r = self.reconcile()?;
        lines.append(&mut r.lines);
        r.lines = lines;
        if !self.dry_run {
            // All or nothing, as every plan: should a step fail, the links this gc re-created go again (what it
            // deleted was nobody's, and stays deleted), no record is written, and the next gc starts afresh.
            let tally = super::Tally {
                what: "gc: step".into(),
                total: r.plan.steps.len(),
                counts: Box::new(|_| true),
            };
            let _kept = self.applier_with(Some(tally)).apply(&r.plan)?;
            let (_, after) = self.store.file_states(&r.records)?;
            self.store.set_files(&after)?;
            self.tell_resolver(&r.records);
            // A resolver that died comes back, if any sandbox needs one.
            let (sandboxes, networks) = (self.store.sandboxes()?, self.store.networks()?);
            if self.resolver_status(&sandboxes, &networks) == super::ResolverStatus::Down {
                self.revive_resolver(true);
                r.lines
                    .push("start the resolver: sandboxes need names and none answered".into());
            }
            self.compact(&after);
            r.lines = r.lines.iter().map(|l| done(l)).collect();
            // Retired veths this gc deleted (no record names them) give their addresses back.
            for link in self.release_retired()? {
                r.lines
                    .push(done(&format!("address of retired veth {link}: released")));
            }
        }
        Ok(r)
    }

    /// Compare the records and the host, and plan what makes them agree (the caller holds the lock).
    fn reconcile(&self) -> Result<Reconcile> {
        let mut r = Reconcile::default();
        let tag = self.store.owner_tag();
        let mut ledgers = self.store.network_records()?;
        let mut nets: Vec<Network> = ledgers.iter().map(|n| n.settings.clone()).collect();
        let all = self.store.sandboxes()?;
        // A sandbox whose namespace is gone goes (one being removed belongs to the command removing it).
        let (sandboxes, gone): (Vec<Sandbox>, Vec<Sandbox>) = all
            .into_iter()
            .partition(|sb| sb.removing || Host::namespace_is_there(sb));
        for sb in &gone {
            r.lines.push(format!(
                "release sandbox '{}': its namespace {} is gone",
                sb.name,
                sb.netns.display()
            ));
            r.records.push(Record::NoSandbox(sb.name.clone()));
            r.plan.steps.extend(build::sandbox_gone(sb, &nets).steps);
            let settings: Vec<&Network> = nets.iter().collect();
            if sb.owned && super::resolver::has_names(sb, &settings) {
                r.plan
                    .steps
                    .extend(super::resolver::resolv_conf(sb, &tag).undo());
            }
        }
        // Addresses and ports held for sandboxes that have no record (any more) go back to their network.
        let names: HashSet<&str> = sandboxes.iter().map(|s| s.name.as_str()).collect();
        let mut released: HashSet<String> = HashSet::new();
        for net in &mut ledgers {
            let stale: Vec<String> = net
                .allocations
                .users()
                .into_iter()
                .filter(|u| !names.contains(u))
                .map(str::to_string)
                .collect();
            let unrecorded: Vec<&str> = stale
                .iter()
                .map(String::as_str)
                .filter(|u| !gone.iter().any(|g| g.name == *u))
                .collect();
            if !unrecorded.is_empty() {
                r.lines.push(format!(
                    "release the addresses of {} on network '{}': no such sandbox",
                    unrecorded.join(", "),
                    net.settings.name
                ));
            }
            for sandbox in &stale {
                net.allocations.release(sandbox);
                released.insert(net.settings.name.clone());
            }
        }

        // Host links this state dir made carry its tag; anyone else's (another state dir's included) are left
        // alone whatever their names.
        let mut owned: HashSet<&str> = nets.iter().map(|n| n.interface.as_str()).collect();
        owned.extend(nets.iter().filter_map(Network::overlay_device));
        owned.extend(
            sandboxes
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.host_interface.as_str())),
        );
        let links = Host::new().links()?;
        for link in &links {
            if link.alias.as_deref() != Some(tag.as_str()) || owned.contains(link.name.as_str()) {
                continue;
            }
            r.lines
                .push(format!("delete link {}: no record owns it", link.name));
            r.plan.steps.push(Step::DeleteLink {
                ns: Ns::Host,
                name: link.name.clone(),
                tag: tag.clone(),
                made_with: None,
            });
        }
        // host-gw's fast path filters on the underlay whose bridge is gone (whichever state dir made it): they
        // would keep delivering to ports that are no more. Only the filter: whose the qdisc is, no record says.
        let mut host = Host::new();
        for (device, handle) in host.stale_underlay_filters(&links)? {
            r.lines.push(format!(
                "delete fast path filter {handle:#x} on {device}: its bridge is gone"
            ));
            r.plan.steps.push(Step::RemoveUnderlayFilter {
                device,
                handle,
                qdisc: false,
            });
        }
        // The reverse: links the records want that the kernel lacks (a bridge or a host veth deleted by hand).
        let present: HashSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let mut refiltered = Vec::new();
        for net in nets.iter().filter(|n| !n.removing) {
            let (lines, plan) = repair_network(net, &sandboxes, &present, &tag);
            let remade = !plan.is_empty();
            r.lines
                .extend(lines.into_iter().map(|l| format!("re-create {l}")));
            r.plan.steps.extend(plan.steps);
            // A bridge that is there and the fast path filter on its underlay that is not.
            if let (false, Some(Step::UnderlayFilter { device, .. })) =
                (remade, build::underlay_filter(net))
            {
                if host.underlay_filter_there(&net.interface, &device)? == Some(OnUnderlay::Missing)
                {
                    let mut net = net.clone();
                    if let Some(o) = net.overlay.as_mut() {
                        o.underlay_qdisc |= !host.has_ingress_qdisc(&device)?;
                    }
                    r.lines.push(format!(
                        "re-create fast path filter of network '{}' on {device}: it was missing",
                        net.name
                    ));
                    r.plan.steps.extend(build::underlay_filter(&net));
                    refiltered.push(net);
                }
            }
        }
        // Their records say now whether nsnet owns the qdisc.
        let refiltered: HashSet<String> = refiltered
            .into_iter()
            .filter_map(|net| {
                let n = nets.iter_mut().find(|n| n.name == net.name)?;
                *n = net;
                Some(n.name.clone())
            })
            .collect();
        // Namespaces this store made (tagged with its owner tag) that no sandbox record holds: their record was
        // lost (a state dir restored from backup, a hand-deleted file). Anyone else's namespaces are left alone.
        let recorded: HashSet<&std::path::Path> =
            sandboxes.iter().map(|s| s.netns.as_path()).collect();
        for name in Host::tagged_namespaces(&tag)? {
            if recorded.contains(netns::named_path(&name).as_path()) {
                continue;
            }
            r.lines.push(format!(
                "delete namespace {name}: nsnet made it, no record owns it"
            ));
            r.plan.steps.push(Step::DeleteNetns { name });
        }
        // This store's sandboxes' resolv.conf files (the owner tag in their first line) that no record holds.
        let named: HashSet<&str> = sandboxes.iter().map(|s| s.name.as_str()).collect();
        for (name, text) in Host::tagged_resolv_confs(&tag) {
            if named.contains(name.as_str()) || gone.iter().any(|g| g.name == name) {
                continue;
            }
            r.lines.push(format!(
                "remove /etc/netns/{name}/resolv.conf: nsnet wrote it, no record owns it"
            ));
            r.plan
                .steps
                .push(Step::RemoveResolvConf { netns: name, text });
        }

        // Last, the firewall from the records as they will be: idempotent, and it drops any element no record
        // stands for. Host forward chains that turned `policy drop` get the networks' accepts.
        if let Some(net) = nets.first() {
            // The rebuild resets the tables: never another state dir's.
            self.check_tables_owner(net.firewall)?;
        }
        let rechained = super::firewall::refresh_host_chains(&mut nets)?;
        let mut reload = build::firewall_reload(&nets, &sandboxes, &tag);
        Host::new().keep_router_advertisements(&mut reload.steps)?;
        r.plan.steps.extend(reload.steps);
        // What changed of each network: its ledger (with its settings, new host chains and all), or only its
        // settings.
        for (net, ledger) in nets.into_iter().zip(ledgers) {
            if released.contains(&net.name) {
                r.records.push(Record::Network(NetworkRecord {
                    settings: net,
                    allocations: ledger.allocations,
                }));
            } else if rechained.iter().any(|n| n.name == net.name) || refiltered.contains(&net.name)
            {
                r.records.push(Record::Settings(net));
            }
        }
        Ok(r)
    }
}

/// A planned line ("delete link X: ...") as done ("deleted link X: ..."); recovery's lines are done already.
fn done(line: &str) -> String {
    for (verb, past) in [
        ("release ", "released "),
        ("delete ", "deleted "),
        ("re-create ", "re-created "),
    ] {
        if let Some(rest) = line.strip_prefix(verb) {
            return format!("{past}{rest}");
        }
    }
    line.to_string()
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
    // The live endpoints on this network. `sandboxes` are those whose namespace is there (the caller left the
    // others out) or that are being removed: those belong to the command removing them.
    let endpoints: Vec<(&Sandbox, &crate::model::Endpoint)> = sandboxes
        .iter()
        .filter(|s| !s.removing)
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
        // An overlay's VXLAN device comes back with the bridge (its peers' routes leave from the bridge's
        // address): one still there goes first.
        if let Some(dev) = net.overlay_device().filter(|d| present.contains(d)) {
            plan.steps.push(Step::DeleteLink {
                ns: Ns::Host,
                name: dev.to_string(),
                tag: tag.to_string(),
                made_with: net.overlay.as_ref().map(|o| o.vtep_mac),
            });
        }
        let (steps, _) = build::network_up(net, &[], None, tag);
        plan.steps
            .extend(steps.into_iter().filter(|s| !s.is_forwarding()));
    } else if let Some(dev) = net.overlay_device().filter(|d| !present.contains(d)) {
        lines.push(format!(
            "VXLAN device {dev} of network '{}': it was missing",
            net.name
        ));
        plan.steps.extend(build::overlay_up(net, tag));
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
