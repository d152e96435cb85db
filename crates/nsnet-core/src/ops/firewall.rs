//! `nsnet firewall reload`.

use super::Nsnet;
use crate::error::Result;
use crate::plan::{build, Plan};

impl Nsnet {
    /// Re-apply every firewall rule from the state in one transaction: after something flushed the ruleset
    /// (`nft flush ruleset`, a firewall service restart), or at any time; running it twice changes nothing.
    pub fn firewall_reload(&self) -> Result<Plan> {
        let _lock = self.lock()?;
        let nets = self.store.networks()?;
        if let Some(net) = nets.first() {
            self.check_tables_owner(net.firewall)?;
        }
        let plan = build::firewall_reload(&nets, &self.store.sandboxes()?, &self.store.owner_tag());
        self.setup(plan, vec![])
    }
}
