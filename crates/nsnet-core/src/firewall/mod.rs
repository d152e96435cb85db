//! Firewall changes as data, and the driver that applies them.
//!
//! A command's firewall work is one [`Batch`]: applied as a single atomic transaction, undone by its
//! [`Batch::inverse`]. nsnet only ever touches its own table; everything else on the host stays as it is.

pub mod element;
pub mod iptables;
mod nft_netlink;
pub mod nftables;
mod restore;
pub mod trace;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::portmap::PortMapping;

/// One thing nsnet keeps in the firewall. Everything but [`Rule::Tables`] is a set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// nsnet's tables with their chains, sets and maps, holding no elements. Adding resets them (so it also
    /// repairs a damaged ruleset) but never touches the `user` chain. Deleting keeps the `user` chain, and so
    /// the `inet nsnet` table, when it holds the user's rules.
    Tables(Tables),
    /// A network's host interface: no loopback traffic may enter from it, traffic that is DNATed back into
    /// its own subnet is masqueraded (hairpin), and an internal network forwards to nothing else.
    /// `subnet6`: a dual-stack network's IPv6 subnet, for the same hairpin masquerade.
    Interface {
        interface: String,
        /// None on an IPv6-only network.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet: Option<Ipv4Net>,
        internal: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet6: Option<Ipv6Net>,
    },
    /// Masquerade traffic from `subnet` that leaves through any interface but `interface`
    /// (the article's `-s SUBNET ! -o br0 -j MASQUERADE`); an IPv6 subnet is NAT66.
    Masquerade { subnet: IpNet, interface: String },
    /// Connections from beyond nsnet's interfaces reach `interface` only through published ports: one routed
    /// in to a sandbox's own address is dropped unless DNATed (gateway mode nat).
    PublishedOnly { interface: String },
    /// Traffic entering from `from` may not be forwarded out of `to` (network isolation), unless it belongs
    /// to a published port.
    Isolate { from: String, to: String },
    /// A sandbox's endpoint: packets entering from `host_interface` must carry `address` as their source.
    /// `ipv6`: its IPv6 addresses (link-local, then global) on a dual-stack network, the only IPv6 sources it
    /// may send from and the only targets its neighbour advertisements may name; router advertisements,
    /// redirects and MLD from it never pass. On an IPv4 network (empty) every IPv6 frame from it is dropped.
    Endpoint {
        host_interface: String,
        /// None on an IPv6-only network: the port is then in no IPv4 set, so all its IPv4 and ARP is dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ipv6: Vec<Ipv6Addr>,
    },
    /// DNAT a published port (every port of its range) on the host's addresses of `target`'s family to
    /// `target` (a dual-stack sandbox's port on every address has one rule per family).
    Port {
        mapping: PortMapping,
        target: IpAddr,
    },
    /// Narrow accepts for a network's interface in a host forward chain whose policy is drop: the only rules
    /// nsnet puts outside its own tables, each tagged with a comment naming the interface.
    HostAccept { chain: HostChain, interface: String },
    /// This host's part of an overlay network: traffic from the cluster's sandboxes entering from `device`
    /// (the VXLAN device, or the underlay interface for host-gw) may reach `subnet`, and traffic from `subnet`
    /// to the cluster keeps its source address (no masquerade): the Kubernetes network model.
    Overlay {
        device: String,
        cluster: Ipv4Net,
        subnet: Ipv4Net,
    },
    /// [`Rule::Overlay`] for a dual-stack overlay's IPv6: the cluster's IPv6 prefix and this host's block.
    Overlay6 {
        device: String,
        cluster: Ipv6Net,
        subnet: Ipv6Net,
    },
    /// VXLAN to UDP `port` is dropped unless it comes from a member host ([`Rule::VxlanMember`]): VXLAN has
    /// no authentication, so without this anyone who can send UDP to the host can inject frames.
    VxlanPort { port: u16 },
    /// A member host of an overlay network may send VXLAN to `port` from `underlay`.
    VxlanMember { underlay: Ipv4Addr, port: u16 },
}

/// nsnet's tables (or chains), as one state dir holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    /// Deleting keeps the user chain (and the table holding it): the user has rules there.
    pub keep_user_chain: bool,
    /// The state dir whose networks the tables serve ([`crate::store::Store::owner_tag`]), written into the
    /// tables when they are made. One state dir per host holds nsnet's firewall: another one's commands
    /// would rewrite its tables and flush its sets.
    #[serde(default)]
    pub owner: String,
}

/// Who holds nsnet's firewall tables on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TablesOwner {
    /// There are none.
    Absent,
    /// Made by an nsnet that did not write its owner down.
    Unknown,
    /// The state dir with this tag.
    Of(String),
}

/// Add or delete one [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Add(Rule),
    Delete(Rule),
}

/// The firewall part of one operation, applied all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// A base chain of someone else's ruleset (e.g. iptables-nft's `ip filter FORWARD`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostChain {
    pub family: String,
    pub table: String,
    pub chain: String,
}

impl fmt::Display for HostChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

/// Make a firewall tool die with nsnet: if nsnet is killed mid-command, a still-running `nft -f` or
/// `iptables-restore` must not land its transaction after recovery has rolled the command back.
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; prctl(2) is async-signal-safe and nothing is
    // allocated.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Run a firewall tool that dies with nsnet, feed it `input`, and return its stdout. A failure carries the
/// tool's first error line (nft may print warnings before it).
fn run_tool(
    tool: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, FirewallError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let package = if tool.starts_with("iptables") || tool.starts_with("ip6tables") {
        "iptables"
    } else {
        "nftables"
    };
    let spawn = |error| FirewallError::Spawn {
        tool,
        package,
        error,
    };
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("Error"))
            .or_else(|| stderr.lines().next());
        let message = line.unwrap_or("no message").trim().to_string();
        return Err(FirewallError::Refused { tool, message });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which firewall nsnet writes its rules to. One per host: recorded with every network, used to tear down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// nftables tables `inet nsnet` and `bridge nsnet`, element changes (the default).
    #[default]
    Nftables,
    /// `NSNET-*` iptables and ip6tables chains, one `iptables-restore --noflush` and one
    /// `ip6tables-restore --noflush` per operation (hosts on iptables).
    Iptables,
    /// No rules at all: no masquerade, no published ports, no isolation; the user manages the firewall.
    None,
}

impl Backend {
    /// Apply a batch as one transaction.
    pub fn apply(self, batch: &Batch) -> Result<(), FirewallError> {
        match self {
            Backend::Nftables => nftables::apply(batch),
            Backend::Iptables => iptables::apply(batch),
            Backend::None => Ok(()),
        }
    }

    /// The batch as the shell command that applies it.
    pub fn render(self, batch: &Batch) -> String {
        match self {
            Backend::Nftables => format!("nft -f - <<'EOF'\n{}EOF", nftables::render(batch)),
            Backend::Iptables => iptables::render(batch),
            Backend::None => "# --firewall none: no firewall rules".into(),
        }
    }

    /// Which of these rules are not (all) in the firewall now: endpoint and port rules are checked, for CNI
    /// `CHECK`; others count as present.
    pub fn missing(self, rules: &[Rule]) -> Result<Vec<Rule>, FirewallError> {
        match self {
            Backend::Nftables => nftables::missing(rules),
            Backend::Iptables => iptables::missing(rules),
            Backend::None => Ok(vec![]),
        }
    }

    /// Who holds nsnet's tables (or chains) now.
    pub fn tables_owner(self) -> Result<TablesOwner, FirewallError> {
        match self {
            Backend::Nftables => nftables::tables_owner(),
            Backend::Iptables => iptables::tables_owner(),
            Backend::None => Ok(TablesOwner::Absent),
        }
    }

    /// Whether the user chain holds the user's rules.
    pub fn user_chain_has_rules(self) -> bool {
        match self {
            Backend::Nftables => nftables::user_chain_has_rules(),
            Backend::Iptables => iptables::user_chain_has_rules(),
            Backend::None => false,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
            Backend::None => "none",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nftables" => Ok(Backend::Nftables),
            "iptables" => Ok(Backend::Iptables),
            "none" => Ok(Backend::None),
            _ => Err(format!(
                "unknown firewall '{s}'; use nftables, iptables or none"
            )),
        }
    }
}

/// A firewall transaction that the kernel (or the `nft` tool) refused.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("could not run {tool}: {error}; install it (apt-get install {package})")]
    Spawn {
        tool: &'static str,
        package: &'static str,
        error: std::io::Error,
    },
    #[error("{tool} refused the change: {message}")]
    Refused { tool: &'static str, message: String },
}
