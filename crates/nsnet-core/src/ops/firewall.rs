//! `nsnet firewall reload`.

use super::Host;
use super::Nsnet;
use crate::error::Result;
use crate::firewall::Backend;
use crate::model::Network;
use crate::plan::{build, Plan};
use crate::store::Record;

impl Nsnet {
    /// Re-apply every firewall rule from the state in one transaction: after something flushed the ruleset
    /// (`nft flush ruleset`, a firewall service restart), or at any time; running it twice changes nothing.
    /// Host forward chains that turned `policy drop` since a network was made get its accepts too.
    pub fn firewall_reload(&self) -> Result<Plan> {
        let _lock = self.lock()?;
        self.reload_locked()
    }

    /// [`Nsnet::firewall_reload`], for a caller that holds the lock.
    pub(super) fn reload_locked(&self) -> Result<Plan> {
        let mut nets = self.store.networks()?;
        if let Some(net) = nets.first() {
            self.check_tables_owner(net.firewall)?;
        }
        let changed = refresh_host_chains(&mut nets)?;
        let mut plan =
            build::firewall_reload(&nets, &self.store.sandboxes()?, &self.store.owner_tag());
        Host::new().keep_router_advertisements(&mut plan.steps)?;
        let plan = self.bring_up(plan, vec![])?;
        self.record_host_chains(changed)?;
        Ok(plan)
    }

    /// Write the networks whose host chains [`refresh_host_chains`] changed, after the firewall has them: a
    /// kill in between leaves accepts the record does not name yet, which the next reload records.
    pub(super) fn record_host_chains(&self, changed: Vec<Network>) -> Result<()> {
        if self.dry_run || changed.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = changed.into_iter().map(Record::Settings).collect();
        let (_, after) = self.store.file_states(&records)?;
        self.store.set_files(&after)?;
        Ok(())
    }
}

/// Bring each nftables network's host chains up to date with the host: every forward chain with a drop policy
/// now (one that turned drop after the network was made included), and the recorded ones that still exist
/// (their accepts stay until the network goes). Returns the networks whose list changed.
pub(super) fn refresh_host_chains(nets: &mut [Network]) -> Result<Vec<Network>> {
    if !nets.iter().any(|n| n.firewall == Backend::Nftables) {
        return Ok(vec![]);
    }
    let chains = Host::forward_chains()?;
    let mut changed = Vec::new();
    for net in nets.iter_mut().filter(|n| n.firewall == Backend::Nftables) {
        let wanted: Vec<_> = chains
            .iter()
            .filter(|(c, drop)| *drop || net.host_chains.contains(c))
            .filter(|(c, _)| c.family != "ip6" || net.ipv6.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        if wanted != net.host_chains {
            net.host_chains = wanted;
            changed.push(net.clone());
        }
    }
    Ok(changed)
}
