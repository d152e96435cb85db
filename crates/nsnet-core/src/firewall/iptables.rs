//! The iptables driver, for hosts on iptables: the same rules as the nftables driver, as `NSNET-*` chains,
//! applied with one `iptables-restore --noflush` per operation.
//!
//! iptables has no maps, so each published port is a rule of its own (the packet path walks them). Deleting a
//! rule that is not there would abort the whole restore, so the driver reads `iptables-save` first and writes
//! only the changes that are still needed: adds are skipped when present, deletes when absent. That keeps every
//! operation idempotent. Rule specs are written the way `iptables-save` prints them, so they compare as text.
//! Anti-spoofing covers IPv4 sources (`physdev` on bridge ports); ARP and IPv6 between sandboxes are not
//! filtered by this driver (the host itself takes no IPv6 from them: its bridges have IPv6 off).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{Batch, Change, FirewallError, Rule, Tables, TablesOwner};

/// The chain the user owns (like Docker's DOCKER-USER); created once, never flushed by nsnet.
pub const USER_CHAIN: &str = "NSNET-USER";

/// nsnet's chains, by table. Deleted in this order (chains that jump first, the user chain last, and only when
/// empty).
const CHAINS: [(&str, &str); 10] = [
    ("raw", "NSNET-GUARD"),
    ("filter", "NSNET-INPUT"),
    ("nat", "NSNET-PORTS"),
    ("nat", "NSNET-POSTROUTING"),
    ("filter", "NSNET-FORWARD"),
    ("filter", "NSNET-INTERNAL"),
    ("filter", "NSNET-ISOLATE"),
    ("filter", "NSNET-ACCEPT"),
    ("filter", "NSNET-INBOUND"),
    ("filter", USER_CHAIN),
];

/// Where a rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Append,
    /// Insert at this 1-based position.
    Insert(u32),
}

/// One iptables rule: table, chain, spec (as `iptables-save` prints it), position.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    table: &'static str,
    chain: &'static str,
    spec: String,
    at: At,
}

fn entry(table: &'static str, chain: &'static str, spec: String, at: At) -> Entry {
    Entry {
        table,
        chain,
        spec,
        at,
    }
}

/// The jumps from the built-in chains, then nsnet's fixed rules. NSNET-FORWARD is fixed: it passes a packet
/// through one chain per purpose, in this order, so rules keep their precedence whatever order networks are
/// made in: the user's rules; internal networks' drops (before anything accepts, published ports
/// included); published ports; isolation; each network's own traffic and replies; and last, the drops for
/// connections routed in from outside to networks in gateway mode nat.
fn skeleton(owner: &str) -> Vec<Entry> {
    use At::*;
    vec![
        // Who the chains belong to: a rule with no target, matched by the first packet of each connection.
        entry("nat", "NSNET-POSTROUTING", owner_mark(owner), Append),
        entry("raw", "PREROUTING", "-j NSNET-GUARD".into(), Insert(1)),
        entry(
            "nat",
            "PREROUTING",
            "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j NSNET-PORTS".into(),
            Append,
        ),
        entry(
            "nat",
            "OUTPUT",
            "-m addrtype --dst-type LOCAL -j NSNET-PORTS".into(),
            Append,
        ),
        entry(
            "nat",
            "POSTROUTING",
            "-j NSNET-POSTROUTING".into(),
            Insert(1),
        ),
        entry(
            "nat",
            "NSNET-POSTROUTING",
            "-s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE".into(),
            Append,
        ),
        entry("filter", "FORWARD", "-j NSNET-FORWARD".into(), Insert(1)),
        entry("filter", "INPUT", "-j NSNET-INPUT".into(), Insert(1)),
        entry(
            "filter",
            "NSNET-FORWARD",
            format!("-j {USER_CHAIN}"),
            Append,
        ),
        entry(
            "filter",
            "NSNET-FORWARD",
            "-j NSNET-INTERNAL".into(),
            Append,
        ),
        entry(
            "filter",
            "NSNET-FORWARD",
            "-m conntrack --ctstate DNAT -j ACCEPT".into(),
            Append,
        ),
        entry("filter", "NSNET-FORWARD", "-j NSNET-ISOLATE".into(), Append),
        entry("filter", "NSNET-FORWARD", "-j NSNET-ACCEPT".into(), Append),
        entry("filter", "NSNET-FORWARD", "-j NSNET-INBOUND".into(), Append),
    ]
}

/// The owner marker as `iptables-save` prints it.
fn owner_mark(owner: &str) -> String {
    format!("-m comment --comment \"{}\"", owner.replace('"', "'"))
}

/// Who made nsnet's chains: the owner marker in NSNET-POSTROUTING.
pub fn tables_owner() -> Result<TablesOwner, FirewallError> {
    let current = Current::parse(&super::run_tool("iptables-save", &["-t", "nat"], None)?);
    if !current
        .chains
        .contains(&("nat".to_string(), "NSNET-POSTROUTING".to_string()))
    {
        return Ok(TablesOwner::Absent);
    }
    let mark = current.rules.iter().find_map(|(t, c, spec)| {
        let owner = spec
            .strip_prefix("-m comment --comment \"")?
            .strip_suffix('"')?;
        (t == "nat" && c == "NSNET-POSTROUTING").then(|| owner.to_string())
    });
    Ok(mark.map_or(TablesOwner::Unknown, TablesOwner::Of))
}

/// The iptables rules a firewall rule stands for.
fn entries(rule: &Rule) -> Vec<Entry> {
    use At::*;
    match rule {
        Rule::Tables(_) | Rule::HostAccept { .. } => vec![],
        // IPv6-only networks are refused on this backend (C14 of issue #19): nothing of theirs reaches here.
        Rule::Interface { subnet: None, .. } | Rule::Endpoint { address: None, .. } => vec![],
        Rule::Interface { interface: i, subnet: Some(s), internal, .. } => {
            let mut out = vec![
                entry("raw", "NSNET-GUARD", format!("-s 127.0.0.0/8 -i {i} -j DROP"), Append),
                entry("raw", "NSNET-GUARD", format!("-d 127.0.0.0/8 -i {i} -j DROP"), Append),
                entry("nat", "NSNET-POSTROUTING", format!("-s {s} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"), Append),
                // iptables' FORWARD may have policy DROP: let the network's own traffic and its replies through.
                entry("filter", "NSNET-ACCEPT", format!("-i {i} -j ACCEPT"), Append),
                entry("filter", "NSNET-ACCEPT", format!("-o {i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"), Append),
            ];
            if *internal {
                out.push(entry("filter", "NSNET-INTERNAL", format!("-i {i} ! -o {i} -j DROP"), Append));
                out.push(entry("filter", "NSNET-INTERNAL", format!("! -i {i} -o {i} -j DROP"), Append));
            }
            out
        }
        // IPv6 is ip6tables' (C9 of issue #19); dual-stack networks are refused on this backend until then.
        Rule::Masquerade { subnet: ipnet::IpNet::V6(_), .. } | Rule::Port { target: std::net::IpAddr::V6(_), .. } => vec![],
        Rule::Masquerade { subnet, interface } => {
            vec![entry("nat", "NSNET-POSTROUTING", format!("-s {subnet} ! -o {interface} -j MASQUERADE"), Append)]
        }
        Rule::Isolate { from, to } => {
            vec![entry("filter", "NSNET-ISOLATE", format!("-i {from} -o {to} -j DROP"), Append)]
        }
        // What is left by here is a new connection that no network of nsnet's accepted as its own.
        Rule::PublishedOnly { interface: i } => {
            vec![entry("filter", "NSNET-INBOUND", format!("-o {i} -j DROP"), Append)]
        }
        Rule::Endpoint { host_interface: h, address: Some(a), .. } => vec![
            entry("raw", "NSNET-GUARD", format!("! -s {a}/32 -m physdev --physdev-in {h} -j DROP"), Append),
            entry("raw", "NSNET-GUARD", format!("! -s {a}/32 -i {h} -j DROP"), Append),
        ],
        // Accepted in NSNET-ACCEPT, which comes before NSNET-INBOUND's drops; hairpin masquerades (DNATed) still
        // apply, so the return leaves them alone.
        Rule::Overlay { device: d, cluster: c, subnet: s } => vec![
            entry("filter", "NSNET-ACCEPT", format!("-s {c} -d {s} -i {d} -j ACCEPT"), Append),
            entry("nat", "NSNET-POSTROUTING", format!("-s {s} -d {c} -m conntrack ! --ctstate DNAT -j RETURN"), Insert(1)),
            // A published port reached from the cluster through the gateway address: its replies must come
            // back to this host (the fast path does no NAT), as with nftables.
            entry("nat", "NSNET-POSTROUTING", format!("-s {c} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"), Insert(1)),
        ],
        // Members' returns are inserted first in NSNET-INPUT, the port's drop appended after them.
        Rule::VxlanPort { port } => {
            vec![entry("filter", "NSNET-INPUT", format!("-p udp -m udp --dport {port} -j DROP"), Append)]
        }
        // Forwarded VXLAN to a member is dropped before anything accepts (NSNET-INTERNAL comes first): a sandbox
        // sending it would be masqueraded to this host's address, a member's, and inject frames into the overlay.
        Rule::VxlanMember { underlay, port } => vec![
            entry("filter", "NSNET-INPUT", format!("-s {underlay}/32 -p udp -m udp --dport {port} -j RETURN"), Insert(1)),
            entry("filter", "NSNET-INTERNAL", format!("-d {underlay}/32 -p udp -m udp --dport {port} -j DROP"), Insert(1)),
        ],
        Rule::Port { mapping, target } => mapping
            .pairs()
            .map(|(host_port, container_port)| {
                let dest = mapping.host_ip.map(|ip| format!("-d {ip}/32 ")).unwrap_or_default();
                let p = mapping.protocol;
                let spec = format!("{dest}-p {p} -m {p} --dport {host_port} -j DNAT --to-destination {target}:{container_port}");
                entry("nat", "NSNET-PORTS", spec, Append)
            })
            .collect(),
    }
}

/// What `iptables-save` shows: chains and rules per table.
#[derive(Debug, Default)]
struct Current {
    chains: BTreeSet<(String, String)>,
    rules: BTreeSet<(String, String, String)>,
}

impl Current {
    fn parse(text: &str) -> Current {
        let mut cur = Current::default();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(chain) = decl.split_whitespace().next() {
                    cur.chains.insert((table.clone(), chain.to_string()));
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                if let Some((chain, spec)) = rule.split_once(' ') {
                    cur.rules
                        .insert((table.clone(), chain.to_string(), spec.to_string()));
                }
            }
        }
        cur
    }

    fn has_rule(&self, e: &Entry) -> bool {
        self.rules
            .contains(&(e.table.into(), e.chain.into(), e.spec.clone()))
    }

    fn chain_is_empty(&self, table: &str, chain: &str) -> bool {
        !self.rules.iter().any(|(t, c, _)| t == table && c == chain)
    }
}

/// Restore lines per table.
#[derive(Default)]
struct Script {
    tables: BTreeMap<&'static str, Vec<String>>,
}

impl Script {
    fn line(&mut self, table: &'static str, line: String) {
        self.tables.entry(table).or_default().push(line);
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (table, lines) in &self.tables {
            let _ = writeln!(out, "*{table}");
            // Chain declarations first: iptables-restore wants them before the rules that use them.
            for l in lines.iter().filter(|l| l.starts_with(':')) {
                let _ = writeln!(out, "{l}");
            }
            for l in lines.iter().filter(|l| !l.starts_with(':')) {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "COMMIT");
        }
        out
    }
}

/// Write the restore script for a batch. With `current` (the live rules), only what is still needed is
/// written and the simulated state follows along; without it (a dry run), everything is written.
fn script(batch: &Batch, mut current: Option<&mut Current>) -> String {
    let mut out = Script::default();
    for change in &batch.0 {
        match change {
            Change::Add(Rule::Tables(Tables { owner, .. })) => {
                for (table, chain) in CHAINS {
                    let key = (table.to_string(), chain.to_string());
                    if current.as_ref().is_none_or(|c| !c.chains.contains(&key)) {
                        out.line(table, format!(":{chain} - [0:0]"));
                        if let Some(c) = current.as_deref_mut() {
                            c.chains.insert(key);
                        }
                    }
                }
                add(&mut out, &mut current, skeleton(owner));
            }
            Change::Delete(Rule::Tables(Tables {
                keep_user_chain,
                owner,
            })) => {
                // The jumps out of the built-in chains first, then nsnet's chains.
                let jumps: Vec<Entry> = skeleton(owner)
                    .into_iter()
                    .filter(|e| !e.chain.starts_with("NSNET"))
                    .collect();
                delete(&mut out, &mut current, jumps);
                for (table, chain) in CHAINS {
                    if chain == USER_CHAIN && *keep_user_chain {
                        continue;
                    }
                    let key = (table.to_string(), chain.to_string());
                    if current.as_ref().is_none_or(|c| c.chains.contains(&key)) {
                        out.line(table, format!("-F {chain}"));
                        out.line(table, format!("-X {chain}"));
                        if let Some(c) = current.as_deref_mut() {
                            c.chains.remove(&key);
                            c.rules.retain(|(t, ch, _)| !(t == table && ch == chain));
                        }
                    }
                }
            }
            Change::Add(rule) => add(&mut out, &mut current, entries(rule)),
            Change::Delete(rule) => delete(&mut out, &mut current, entries(rule)),
        }
    }
    out.text()
}

fn add(out: &mut Script, current: &mut Option<&mut Current>, entries: Vec<Entry>) {
    for e in entries {
        if current.as_ref().is_some_and(|c| c.has_rule(&e)) {
            continue;
        }
        let line = match e.at {
            At::Append => format!("-A {} {}", e.chain, e.spec),
            At::Insert(n) => format!("-I {} {n} {}", e.chain, e.spec),
        };
        out.line(e.table, line);
        if let Some(c) = current.as_deref_mut() {
            c.rules.insert((e.table.into(), e.chain.into(), e.spec));
        }
    }
}

fn delete(out: &mut Script, current: &mut Option<&mut Current>, entries: Vec<Entry>) {
    for e in entries {
        if current.as_ref().is_some_and(|c| !c.has_rule(&e)) {
            continue;
        }
        out.line(e.table, format!("-D {} {}", e.chain, e.spec));
        if let Some(c) = current.as_deref_mut() {
            c.rules.remove(&(e.table.into(), e.chain.into(), e.spec));
        }
    }
}

/// The batch as an `iptables-restore --noflush` script, for display (`--dry-run`).
pub fn render(batch: &Batch) -> String {
    script(batch, None)
}

/// Apply a batch with one `iptables-restore --noflush`: all of it, or none of it.
pub fn apply(batch: &Batch) -> Result<(), FirewallError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut current = Current::parse(&super::run_tool("iptables-save", &[], None)?);
    let text = script(batch, Some(&mut current));
    if text.is_empty() {
        return Ok(());
    }
    super::run_tool("iptables-restore", &["--noflush"], Some(&text)).map(|_| ())
}

/// The rules of `rules` whose iptables rules are not all in place.
pub fn missing(rules: &[Rule]) -> Result<Vec<Rule>, FirewallError> {
    let current = Current::parse(&super::run_tool("iptables-save", &[], None)?);
    Ok(rules
        .iter()
        .filter(|r| !entries(r).iter().all(|e| current.has_rule(e)))
        .cloned()
        .collect())
}

/// Whether the user chain holds rules (then removing the last network keeps it).
pub fn user_chain_has_rules() -> bool {
    super::run_tool("iptables-save", &["-t", "filter"], None)
        .map(|text| !Current::parse(&text).chain_is_empty("filter", USER_CHAIN))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{PortMapping, Proto};
    use std::net::Ipv4Addr;

    fn port() -> Rule {
        Rule::Port {
            mapping: PortMapping {
                host_ip: None,
                host_port: 8088,
                container_port: 80,
                count: 1,
                protocol: Proto::Tcp,
            },
            target: Ipv4Addr::new(10, 89, 0, 2).into(),
        }
    }

    #[test]
    fn renders_one_restore_script() {
        let mut b = Batch::default();
        b.add(Rule::Tables(Tables {
            keep_user_chain: false,
            owner: "nsnet:/s".into(),
        }));
        b.add(Rule::Masquerade {
            subnet: "10.89.0.0/24".parse().unwrap(),
            interface: "nsnet0".into(),
        });
        b.add(port());
        let text = render(&b);
        assert!(
            text.contains("*nat\n:NSNET-PORTS - [0:0]\n:NSNET-POSTROUTING - [0:0]\n"),
            "{text}"
        );
        assert!(text.contains(
            "-A NSNET-PORTS -p tcp -m tcp --dport 8088 -j DNAT --to-destination 10.89.0.2:80\n"
        ));
        assert!(text.contains("-A NSNET-POSTROUTING -s 10.89.0.0/24 ! -o nsnet0 -j MASQUERADE\n"));
        assert_eq!(text.matches("COMMIT").count(), 3);
    }

    #[test]
    fn only_needed_changes_are_written() {
        let live = "*nat\n:PREROUTING ACCEPT [0:0]\n:NSNET-PORTS - [0:0]\n\
                    -A NSNET-PORTS -p tcp -m tcp --dport 8088 -j DNAT --to-destination 10.89.0.2:80\nCOMMIT\n";
        let mut cur = Current::parse(live);
        let mut add = Batch::default();
        add.add(port());
        assert_eq!(script(&add, Some(&mut cur)), "", "already there");
        let mut del = Batch::default();
        del.delete(port());
        del.delete(port());
        assert_eq!(
            script(&del, Some(&mut cur)),
            "*nat\n-D NSNET-PORTS -p tcp -m tcp --dport 8088 -j DNAT --to-destination 10.89.0.2:80\nCOMMIT\n"
        );
    }

    #[test]
    fn the_user_chain_survives_when_kept() {
        let live = "*filter\n:FORWARD ACCEPT [0:0]\n:NSNET-FORWARD - [0:0]\n:NSNET-USER - [0:0]\n\
                    -A FORWARD -j NSNET-FORWARD\n-A NSNET-USER -s 10.0.0.1/32 -j DROP\nCOMMIT\n";
        let mut cur = Current::parse(live);
        let mut b = Batch::default();
        b.delete(Rule::Tables(Tables {
            keep_user_chain: true,
            owner: "nsnet:/s".into(),
        }));
        let text = script(&b, Some(&mut cur));
        assert!(
            text.contains("-D FORWARD -j NSNET-FORWARD\n-F NSNET-FORWARD\n-X NSNET-FORWARD\n"),
            "{text}"
        );
        assert!(!text.contains("NSNET-USER"), "{text}");
    }
}
