//! `nsnet firewall reload`.

use super::Nsnet;
use crate::error::Result;
use crate::plan::{build, Plan};

impl Nsnet {
    /// Re-apply every firewall rule from the state in one transaction: after something flushed the ruleset
    /// (`nft flush ruleset`, a firewall service restart), or at any time; running it twice changes nothing.
    pub fn firewall_reload(&self) -> Result<Plan> {
        let _lock = self.lock()?;
        let plan = build::firewall_reload(&self.store.networks()?, &self.store.sandboxes()?);
        self.setup(plan, vec![])
    }
}
