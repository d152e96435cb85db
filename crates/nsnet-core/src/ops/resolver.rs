//! Keeping the resolver ([`crate::dns`]) in step with the records, and the sandboxes' resolv.conf files.

use std::collections::HashMap;

use super::{Host, Nsnet};
use crate::dns::{self, client, Member, Update};
use crate::model::{Network, Sandbox};
use crate::plan::Step;
use crate::store::Record;

/// Whether a resolver serves this state dir's names, as `nsnet ls` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverStatus {
    Running,
    /// Sandboxes need it, and none answers: the next command that changes something, or `nsnet gc`, starts
    /// one.
    Down,
    /// No sandbox is on a network with names.
    NotNeeded,
}

impl Nsnet {
    /// Tell the resolver about the sandboxes `records` (just written) change, waiting for it, and starting
    /// one if a sandbox needs it. Best effort: a failure is a warning, since the records are right and the
    /// resolver reads them when it starts and every few seconds.
    pub(super) fn tell_resolver(&self, records: &[Record]) {
        if self.dry_run {
            return;
        }
        let mut nets: HashMap<String, Option<Network>> = HashMap::new();
        let mut updates = Vec::new();
        for r in records {
            match r {
                Record::Sandbox(sb) => {
                    for ep in &sb.endpoints {
                        if !nets.contains_key(&ep.network) {
                            let net = self.store.network(&ep.network).ok().flatten();
                            nets.insert(ep.network.clone(), net);
                        }
                    }
                    let known: Vec<&Network> = nets.values().flatten().collect();
                    updates.push(match Member::of(sb, &known) {
                        Some(m) => Update::Up(m),
                        None => Update::Down(sb.name.clone()),
                    });
                }
                Record::NoSandbox(name) => updates.push(Update::Down(name.clone())),
                _ => {}
            }
        }
        if let Err(e) = client::tell(self.store.dir(), self.reaper.as_deref(), &updates) {
            eprintln!("nsnet: warning: names: {e} (`nsnet gc` tries again)");
        }
    }

    /// Start a resolver if one served this state dir and died (its socket is left behind), or `wanted` says
    /// sandboxes need one and none answers. Best effort, like [`Nsnet::tell_resolver`].
    pub(super) fn revive_resolver(&self, wanted: bool) {
        let dir = self.store.dir();
        let died = dir.join(dns::server::SOCKET).exists();
        if self.dry_run || !(died || wanted) || client::running(dir) {
            return;
        }
        if let Some(program) = self.reaper.as_deref() {
            if let Err(e) = client::start(dir, program) {
                eprintln!("nsnet: warning: names: {e}");
            }
        }
    }

    /// The resolver's state, for `nsnet ls`: `sandboxes` and `networks` are what the listing read.
    pub fn resolver_status(&self, sandboxes: &[Sandbox], networks: &[Network]) -> ResolverStatus {
        let nets: Vec<&Network> = networks.iter().collect();
        let needed = sandboxes.iter().any(|sb| Member::of(sb, &nets).is_some());
        match (client::running(self.store.dir()), needed) {
            (true, _) => ResolverStatus::Running,
            (false, true) => ResolverStatus::Down,
            (false, false) => ResolverStatus::NotNeeded,
        }
    }
}

/// The sandbox's resolv.conf, as a step: for a sandbox nsnet made (its namespace is `/run/netns/NAME`) in the
/// state dir tagged `owner`.
pub(super) fn resolv_conf(sb: &Sandbox, owner: &str) -> Step {
    Step::WriteResolvConf {
        netns: sb.name.clone(),
        text: dns::sandbox_resolv_conf(&Host::resolv_conf(), owner),
    }
}

/// Add the removal of `sb`'s resolv.conf to `plan`, with its rewrite as what restores it.
pub(super) fn remove_resolv_conf(plan: &mut crate::plan::Plan, sb: &Sandbox, owner: &str) {
    let write = resolv_conf(sb, owner);
    if let Some(remove) = write.undo() {
        plan.push_teardown(remove, vec![write]);
    }
}

/// Whether `sb` has an endpoint on a network with names among `nets` (endpoints being removed count not).
pub(super) fn has_names(sb: &Sandbox, nets: &[&Network]) -> bool {
    sb.endpoints
        .iter()
        .filter(|ep| !ep.removing)
        .any(|ep| nets.iter().any(|n| n.name == ep.network && n.dns))
}
