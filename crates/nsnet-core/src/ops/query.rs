//! Reads: what `ls`, `inspect`, `port`, `network ls|inspect` and the CNI plugin's `CHECK`, `GC`, `STATUS` (and
//! the lookups in `ADD` and `DEL`) see. Each takes the shared lock for its read ([`Nsnet::read_lock`]), so no
//! reader ever meets another command's records half written (a ledger line half appended reads as a corrupt
//! ledger, and a corrupt network may even be set aside), and each first finishes what a killed command left,
//! as every changing command does. The store itself is the library's: callers read through these.

use std::path::Path;

use super::sandbox::host_probes;
use super::{Host, Nsnet};
use crate::error::Result;
use crate::model::{Endpoint, NetworkRecord, Sandbox};
use crate::portmap::PortMapping;

/// What `nsnet ls` says of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Its namespace is there and nothing is removing it.
    Up,
    /// An `rm` or `detach` is at work on it (it comes first: `rm` unmounts the namespace before it releases
    /// the record).
    Removing,
    /// Its namespace vanished behind nsnet's back (`ip netns del`, its process exited); only `nsnet gc` helps.
    NamespaceGone,
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxStatus::Up => "up",
            SandboxStatus::Removing => "removing",
            SandboxStatus::NamespaceGone => "namespace gone",
        })
    }
}

impl Nsnet {
    /// Every network, by name, with its addresses and published ports.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>> {
        let _read = self.read_lock()?;
        Ok(self.store.network_records()?)
    }

    /// One network, with its addresses and published ports; `None` when there is no such network.
    pub fn network(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let _read = self.read_lock()?;
        Ok(self.store.network_record(name)?)
    }

    /// Every sandbox, by name.
    pub fn sandboxes(&self) -> Result<Vec<Sandbox>> {
        let _read = self.read_lock()?;
        Ok(self.store.sandboxes()?)
    }

    /// One sandbox; `None` when there is no such sandbox.
    pub fn sandbox(&self, name: &str) -> Result<Option<Sandbox>> {
        let _read = self.read_lock()?;
        Ok(self.store.sandbox(name)?)
    }

    /// A sandbox's published ports, over all its networks; `None` when there is no such sandbox.
    pub fn ports(&self, name: &str) -> Result<Option<Vec<PortMapping>>> {
        Ok(self.sandbox(name)?.map(|sb| {
            sb.endpoints
                .iter()
                .flat_map(|e| e.ports.iter().copied())
                .collect()
        }))
    }

    /// Whether a host process listens on `host_port` of published port `m` (of endpoint `ep`) too: nsnet
    /// refuses such a port, but cannot stop a process from binding it afterwards, and the DNAT then sends that
    /// process's connections to the sandbox. On every address, that is on each family `ep` has (a process on
    /// `[::]` alone is shadowed on a dual-stack or IPv6-only network, not on an IPv4 one). False when the host
    /// cannot say.
    pub fn port_shadowed(&self, ep: &Endpoint, m: &PortMapping, host_port: u16) -> bool {
        host_probes(m, (ep.address.is_some(), ep.ipv6.is_some()))
            .into_iter()
            .any(|ip| Host::port_in_use(m.protocol, ip, host_port).unwrap_or(false))
    }

    /// What `nsnet ls` says of `sb`: removing, its namespace gone, or up.
    pub fn status(&self, sb: &Sandbox) -> SandboxStatus {
        status_of(sb, Host::namespace_is_there(sb))
    }

    /// Whether `path` names the namespace sandbox `sb` is in (CNI `CHECK`: is `CNI_NETNS` the namespace the
    /// `ADD` joined?).
    pub fn same_namespace(&self, sb: &Sandbox, path: &Path) -> bool {
        Host::same_namespace(&sb.netns, path)
    }
}

/// [`SandboxStatus`] of `sb`, whose namespace is (or is not) `there`.
fn status_of(sb: &Sandbox, there: bool) -> SandboxStatus {
    if sb.removing || sb.endpoints.iter().any(|e| e.removing) {
        SandboxStatus::Removing
    } else if !there {
        SandboxStatus::NamespaceGone
    } else {
        SandboxStatus::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(removing: bool) -> Sandbox {
        Sandbox {
            name: "s".into(),
            netns: "/run/netns/s".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![],
            removing,
            dns_servers: vec![],
        }
    }

    #[test]
    fn status_says_up_gone_or_removing() {
        assert_eq!(status_of(&sandbox(false), true), SandboxStatus::Up);
        assert_eq!(
            status_of(&sandbox(false), false),
            SandboxStatus::NamespaceGone
        );
        assert_eq!(status_of(&sandbox(true), false), SandboxStatus::Removing);
        assert_eq!(SandboxStatus::NamespaceGone.to_string(), "namespace gone");
    }
}
