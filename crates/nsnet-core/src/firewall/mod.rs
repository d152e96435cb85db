//! Firewall changes as data, and the driver that applies them.
//!
//! A command's firewall work is one [`Batch`]: applied as a single atomic transaction, undone by its
//! [`Batch::inverse`]. nsnet only ever touches its own table; everything else on the host stays as it is.

pub mod nftables;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::portmap::PortMapping;

/// One thing nsnet keeps in the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// nsnet's own table with its chains, sets and maps, holding no elements.
    Table,
    /// Masquerade traffic from `subnet` that leaves through any interface but `interface`
    /// (the article's `-s SUBNET ! -o br0 -j MASQUERADE`).
    Masquerade { subnet: Ipv4Net, interface: String },
    /// DNAT a published port on the host's addresses to `target`.
    Port {
        mapping: PortMapping,
        target: Ipv4Addr,
    },
}

/// Add or delete one [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Rule),
    Delete(Rule),
}

/// The firewall part of one operation, applied all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch(pub Vec<Change>);

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn add(&mut self, rule: Rule) {
        self.0.push(Change::Add(rule));
    }

    pub fn delete(&mut self, rule: Rule) {
        self.0.push(Change::Delete(rule));
    }

    /// The batch that undoes this one.
    pub fn inverse(&self) -> Batch {
        Batch(
            self.0
                .iter()
                .rev()
                .map(|c| match c {
                    Change::Add(r) => Change::Delete(r.clone()),
                    Change::Delete(r) => Change::Add(r.clone()),
                })
                .collect(),
        )
    }
}

/// A firewall transaction that the kernel (or the `nft` tool) refused.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("could not run {tool}: {error}; install it (apt-get install nftables)")]
    Spawn {
        tool: &'static str,
        error: std::io::Error,
    },
    #[error("nftables refused the change: {0}")]
    Refused(String),
}
