//! Operations: each public method is one command, written as request → validate → plan → apply → record.
//!
//! Validation reads the state and the host (addresses, routes, link names) and fails with
//! [`Error::Invalid`] before anything changes. The plan comes from the pure builders in [`crate::plan::build`].
//! With `dry_run` the plan is returned unapplied; otherwise [`crate::apply`] carries it out and the records are
//! written last; a failed write rolls the kernel back.

mod firewall;
mod network;
mod sandbox;

pub use network::NetworkRequest;
pub use sandbox::{AttachRequest, Target};

use crate::apply::Applier;
use crate::error::{Error, Result};
use crate::firewall::Backend;
use crate::kernel::Netlink;
use crate::model::Network;
use crate::plan::Plan;
use crate::store::{Lock, Store};

/// Name of the network `create`/`run`/`attach` use when none is given; created on first use.
pub const DEFAULT_NETWORK: &str = "nsnet0";

/// nsnet's operations over one state dir.
pub struct Nsnet {
    pub store: Store,
    /// Plan only: return the plan, change nothing (no state dir, no lock file, no kernel change).
    pub dry_run: bool,
    /// The firewall backend new networks use (`--firewall`); `None` takes the one the host's networks
    /// already use, or nftables.
    pub firewall: Option<Backend>,
}

impl Nsnet {
    pub fn new(store: Store, dry_run: bool) -> Nsnet {
        Nsnet {
            store,
            dry_run,
            firewall: None,
        }
    }

    /// The writer lock, except for dry runs, which only read.
    fn lock(&self) -> Result<Option<Lock>> {
        if self.dry_run {
            Ok(None)
        } else {
            Ok(Some(self.store.lock()?))
        }
    }

    /// Apply a set-up plan, then write the records; if writing fails, undo the plan.
    fn setup(&self, plan: Plan, record: impl FnOnce(&Store) -> Result<()>) -> Result<Plan> {
        if self.dry_run {
            return Ok(plan);
        }
        let mut applier = Applier::new();
        let undo = applier.apply(&plan)?;
        if let Err(cause) = record(&self.store) {
            let rollback = undo.rollback(&mut applier);
            return Err(Error::RolledBack {
                cause: Box::new(cause),
                rollback,
            });
        }
        Ok(plan)
    }

    /// Apply a teardown plan (best effort, every step tried), then write the records. On failure the records
    /// stay, so running the command again finishes the job: every teardown step is idempotent.
    fn teardown(&self, plan: Plan, record: impl FnOnce(&Store) -> Result<()>) -> Result<Plan> {
        if self.dry_run {
            return Ok(plan);
        }
        Applier::new().teardown(&plan)?;
        record(&self.store)?;
        Ok(plan)
    }
}

/// What validation needs to know about the host, read once per command.
struct Host {
    nl: Netlink,
}

impl Host {
    fn open() -> Result<Host> {
        Ok(Host {
            nl: Netlink::open()?,
        })
    }

    fn link_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self.nl.link(name)?.is_some())
    }
}

/// Whether a command that creates the first network, or removes the last, must also create or delete nsnet's
/// firewall tables: `Some(keep_user_chain)` then (it reads the user chain), `None` when other networks stay.
fn tables_change(networks_left: usize, backend: Backend) -> Option<bool> {
    (networks_left == 0).then(|| backend.user_chain_has_rules())
}

/// Find a network by name in the loaded records.
fn find<'a>(nets: &'a [Network], name: &str) -> Result<&'a Network> {
    nets.iter()
        .find(|n| n.name == name)
        .ok_or_else(|| no_network(name))
}

fn no_network(name: &str) -> Error {
    Error::Invalid(format!(
        "no network named '{name}'; `nsnet network ls` lists them, `nsnet network create {name}` makes it"
    ))
}

/// A short stable hash for generated interface names (FNV-1a).
fn short_hash(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}
