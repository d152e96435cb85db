//! The iptables driver, for hosts on iptables: the same rules as the nftables driver, as `NSNET-*` chains in
//! both `iptables` and `ip6tables`, applied with one `iptables-restore --noflush` and one
//! `ip6tables-restore --noflush` per operation.
//!
//! iptables has no maps, so each published port is a rule of its own (the packet path walks them). Deleting a
//! rule that is not there would abort the whole restore, so the driver reads `iptables-save` (and
//! `ip6tables-save`) first and writes only the changes that are still needed: adds are skipped when present,
//! deletes when absent. That keeps every operation idempotent. Rule specs are written the way the save tools
//! print them, so they compare as text.
//!
//! A restore commits table by table, and the two families are two restores (IPv6 first). When one is
//! refused, what landed before it is undone by a script written from the same reading of the save tool
//! (every line it wrote, reversed: deleted rules put back at their places, flushed chains refilled), so an
//! operation still lands whole or not at all. Chains an nsnet without the IPv6 side made (none in ip6tables)
//! get their IPv6 side with the next batch that adds anything.
//!
//! Anti-spoofing (`physdev` on bridge ports, the port itself for point-to-point sandboxes): IPv4 sources, and
//! on IPv6 the sandbox's own addresses (link-local and global) and nothing else; a sandbox of an IPv4 network
//! sends no IPv6 at all, and none sends a router solicitation or advertisement, a redirect or MLD. Not
//! filtered: ARP, and the target of an IPv6 neighbour advertisement (iptables cannot match it).
//!
//! The IPv6 drop of an IPv4 network is one rule per network (`-i BRIDGE -j DROP` in ip6tables: with
//! br_netfilter a bridged packet's input device is the bridge, so it covers every port, and what is sent to
//! the bridge itself), made with the network, so a sandbox of an IPv4 network is set up and removed without
//! reading or writing ip6tables at all. Chains an older nsnet made hold one such drop per endpoint instead
//! (no [`GUARD6_MARK`] in iptables): there every operation keeps doing what it did, until a batch that
//! rebuilds everything (`firewall reload`, `gc`, the first network's create) removes the per-endpoint drops
//! and writes the mark.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::restore::{entry, At, Current, Entry, Script};
use super::{Batch, Change, FirewallError, Rule, Tables, TablesOwner};

/// The chain the user owns (like Docker's DOCKER-USER); created once, never flushed by nsnet.
pub const USER_CHAIN: &str = "NSNET-USER";

/// nsnet's chains, by table, the same in both families. Deleted in this order (chains that jump first, the
/// user chain last, and only when empty).
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

/// ICMPv6 types a sandbox never sends: router solicitation and advertisement, redirect, and MLD (query,
/// report, done, MLDv2 report). A neighbour's (or the host's) routes and addresses are not the sandbox's to set.
const ICMPV6_DROPPED: [u8; 7] = [133, 134, 137, 130, 131, 132, 143];

/// Written in iptables' NSNET-POSTROUTING (a rule with no target, as the owner's): ip6tables drops an IPv4
/// network's IPv6 per network, not per endpoint.
pub(super) const GUARD6_MARK: &str = "-m comment --comment \"nsnet:ipv6-guard-per-network\"";

/// Where ip6tables drops the IPv6 of IPv4 networks, as read from iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard6 {
    /// One drop per network (chains this nsnet made, or ones it moved over).
    PerNetwork,
    /// One drop pair per endpoint (chains an older nsnet made): kept as they are.
    PerEndpoint,
    /// Chains an older nsnet made, and a batch that rebuilds everything: the per-endpoint drops go, the
    /// networks' drops come with the batch, and the mark is written.
    Move,
}

impl Guard6 {
    fn of(v4: &Current, batch: &Batch) -> Guard6 {
        let old = v4.has_chain("nat", "NSNET-POSTROUTING")
            && !v4.has_rule(&entry(
                "nat",
                "NSNET-POSTROUTING",
                GUARD6_MARK.into(),
                At::Append,
            ));
        match (
            old,
            batch
                .0
                .iter()
                .any(|c| matches!(c, Change::Add(Rule::Tables(_)))),
        ) {
            (false, _) => Guard6::PerNetwork,
            (true, false) => Guard6::PerEndpoint,
            (true, true) => Guard6::Move,
        }
    }
}

/// Which of the two tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The loopback network, as the save tools print it.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// Whether this kernel has IPv6 at all: without it there is no IPv6 to filter, and no ip6tables to write to.
fn ipv6_kernel() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// The jumps from the built-in chains, then nsnet's fixed rules. NSNET-FORWARD is fixed: it passes a packet
/// through one chain per purpose, in this order, so rules keep their precedence whatever order networks are
/// made in: the user's rules; internal networks' drops (before anything accepts, published ports
/// included); published ports; isolation; each network's own traffic and replies; and last, the drops for
/// connections routed in from outside to networks in gateway mode nat.
fn skeleton(owner: &str, family: Family) -> Vec<Entry> {
    use At::*;
    let lo = family.loopback();
    let mut out = vec![
        // Who the chains belong to: a rule with no target, matched by the first packet of each connection.
        entry("nat", "NSNET-POSTROUTING", owner_mark(owner), Append),
    ];
    if family == Family::V4 {
        out.push(entry(
            "nat",
            "NSNET-POSTROUTING",
            GUARD6_MARK.into(),
            Append,
        ));
    }
    out.extend([
        entry("raw", "PREROUTING", "-j NSNET-GUARD".into(), Insert(1)),
        entry(
            "nat",
            "PREROUTING",
            format!("! -d {lo} -m addrtype --dst-type LOCAL -j NSNET-PORTS"),
            Append,
        ),
        // IPv6 has no route_localnet, and a DNAT of ::1 never completes: ::1 is never DNATed (C10's, issue #19).
        entry(
            "nat",
            "OUTPUT",
            match family {
                Family::V4 => "-m addrtype --dst-type LOCAL -j NSNET-PORTS".into(),
                Family::V6 => format!("! -d {lo} -m addrtype --dst-type LOCAL -j NSNET-PORTS"),
            },
            Append,
        ),
        entry(
            "nat",
            "POSTROUTING",
            "-j NSNET-POSTROUTING".into(),
            Insert(1),
        ),
    ]);
    if family == Family::V4 {
        out.push(entry(
            "nat",
            "NSNET-POSTROUTING",
            "-s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE".into(),
            Append,
        ));
    }
    out.extend([
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
    ]);
    out
}

/// The owner marker as `iptables-save` prints it.
fn owner_mark(owner: &str) -> String {
    format!("-m comment --comment \"{}\"", owner.replace('"', "'"))
}

/// Who made nsnet's chains: the owner marker in NSNET-POSTROUTING (of `iptables`, which always holds them).
pub fn tables_owner() -> Result<TablesOwner, FirewallError> {
    let current = Current::parse(&super::run_tool("iptables-save", &["-t", "nat"], None)?);
    if !current.has_chain("nat", "NSNET-POSTROUTING") {
        return Ok(TablesOwner::Absent);
    }
    Ok(current
        .owner()
        .map_or(TablesOwner::Unknown, TablesOwner::Of))
}

/// The rules of one family a firewall rule stands for, with IPv4 networks' IPv6 dropped per network or (on
/// chains an older nsnet made) per endpoint.
fn entries(rule: &Rule, family: Family, guard6: Guard6) -> Vec<Entry> {
    use At::*;
    use Family::*;
    let per_endpoint = guard6 == Guard6::PerEndpoint;
    match (rule, family) {
        (Rule::Tables(_) | Rule::HostAccept { .. }, _) => vec![],
        (
            Rule::Interface {
                interface: i,
                subnet,
                internal,
                subnet6,
            },
            _,
        ) => {
            let s = match (family, subnet, subnet6) {
                (V4, Some(s), _) => s.to_string(),
                (V6, _, Some(s6)) => s6.to_string(),
                // An IPv4 network's sandboxes send no IPv6: every port's, and what reaches the bridge itself
                // (or the point-to-point host end), dropped at once.
                (V6, _, None) if !per_endpoint => {
                    return vec![entry(
                        "raw",
                        "NSNET-GUARD",
                        format!("-i {i} -j DROP"),
                        Append,
                    )]
                }
                // An IPv6-only network's sandboxes send no IPv4 (see the endpoint's rules).
                _ => return vec![],
            };
            let lo = family.loopback();
            // On IPv6 the loopback guards go first in NSNET-GUARD: an endpoint's rules RETURN from it.
            let at = if family == V6 { Insert(1) } else { Append };
            let mut out = vec![
                entry("raw", "NSNET-GUARD", format!("-s {lo} -i {i} -j DROP"), at),
                entry("raw", "NSNET-GUARD", format!("-d {lo} -i {i} -j DROP"), at),
                entry(
                    "nat",
                    "NSNET-POSTROUTING",
                    format!("-s {s} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"),
                    Append,
                ),
                // iptables' FORWARD may have policy DROP: let the network's own traffic and its replies through.
                entry(
                    "filter",
                    "NSNET-ACCEPT",
                    format!("-i {i} -j ACCEPT"),
                    Append,
                ),
                entry(
                    "filter",
                    "NSNET-ACCEPT",
                    format!("-o {i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                    Append,
                ),
            ];
            if *internal {
                out.push(entry(
                    "filter",
                    "NSNET-INTERNAL",
                    format!("-i {i} ! -o {i} -j DROP"),
                    Append,
                ));
                out.push(entry(
                    "filter",
                    "NSNET-INTERNAL",
                    format!("! -i {i} -o {i} -j DROP"),
                    Append,
                ));
            }
            out
        }
        (Rule::Masquerade { subnet, interface }, _) => match (subnet, family) {
            (IpNet::V4(_), V4) | (IpNet::V6(_), V6) => {
                vec![entry(
                    "nat",
                    "NSNET-POSTROUTING",
                    format!("-s {subnet} ! -o {interface} -j MASQUERADE"),
                    Append,
                )]
            }
            _ => vec![],
        },
        (Rule::Isolate { from, to }, _) => {
            vec![entry(
                "filter",
                "NSNET-ISOLATE",
                format!("-i {from} -o {to} -j DROP"),
                Append,
            )]
        }
        // What is left by here is a new connection that no network of nsnet's accepted as its own.
        (Rule::PublishedOnly { interface: i }, _) => {
            vec![entry(
                "filter",
                "NSNET-INBOUND",
                format!("-o {i} -j DROP"),
                Append,
            )]
        }
        (
            Rule::Endpoint {
                host_interface: h,
                address: Some(a),
                ..
            },
            V4,
        ) => vec![
            entry(
                "raw",
                "NSNET-GUARD",
                format!("! -s {a}/32 -m physdev --physdev-in {h} -j DROP"),
                Append,
            ),
            entry(
                "raw",
                "NSNET-GUARD",
                format!("! -s {a}/32 -i {h} -j DROP"),
                Append,
            ),
        ],
        // An IPv6-only network's sandbox has no IPv4 address: all its IPv4 is dropped.
        (
            Rule::Endpoint {
                host_interface: h,
                address: None,
                ..
            },
            V4,
        ) => vec![
            entry(
                "raw",
                "NSNET-GUARD",
                format!("-m physdev --physdev-in {h} -j DROP"),
                Append,
            ),
            entry("raw", "NSNET-GUARD", format!("-i {h} -j DROP"), Append),
        ],
        // An IPv4 network's sandbox: its network drops all its IPv6 (older chains: these rules did).
        (Rule::Endpoint { ipv6, .. }, V6) if ipv6.is_empty() && !per_endpoint => vec![],
        // One of its own addresses or nothing, first through the bridge (physdev), then on the port itself
        // (point to point). `::` (DAD, early MLD) is none of them.
        (
            Rule::Endpoint {
                host_interface: h,
                ipv6,
                ..
            },
            V6,
        ) => {
            let mut out: Vec<Entry> = ICMPV6_DROPPED
                .iter()
                .filter(|_| !ipv6.is_empty())
                .map(|t| {
                    let spec = format!("-p ipv6-icmp -m physdev --physdev-in {h} -m icmp6 --icmpv6-type {t} -j DROP");
                    entry("raw", "NSNET-GUARD", spec, Append)
                })
                .collect();
            for on in [format!("-m physdev --physdev-in {h}"), format!("-i {h}")] {
                for a in ipv6 {
                    out.push(entry(
                        "raw",
                        "NSNET-GUARD",
                        format!("-s {a}/128 {on} -j RETURN"),
                        Append,
                    ));
                }
                out.push(entry("raw", "NSNET-GUARD", format!("{on} -j DROP"), Append));
            }
            out
        }
        // Accepted in NSNET-ACCEPT, which comes before NSNET-INBOUND's drops; hairpin masquerades (DNATed) still
        // apply, so the return leaves them alone.
        (
            Rule::Overlay {
                device: d,
                cluster: c,
                subnet: s,
            },
            V4,
        ) => vec![
            entry(
                "filter",
                "NSNET-ACCEPT",
                format!("-s {c} -d {s} -i {d} -j ACCEPT"),
                Append,
            ),
            entry(
                "nat",
                "NSNET-POSTROUTING",
                format!("-s {s} -d {c} -m conntrack ! --ctstate DNAT -j RETURN"),
                Insert(1),
            ),
            // A published port reached from the cluster through the gateway address: its replies must come
            // back to this host (the fast path does no NAT), as with nftables.
            entry(
                "nat",
                "NSNET-POSTROUTING",
                format!("-s {c} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"),
                Insert(1),
            ),
        ],
        // Members' returns are inserted first in NSNET-INPUT, the port's drop appended after them.
        (Rule::VxlanPort { port }, V4) => {
            vec![entry(
                "filter",
                "NSNET-INPUT",
                format!("-p udp -m udp --dport {port} -j DROP"),
                Append,
            )]
        }
        // Forwarded VXLAN to a member is dropped before anything accepts (NSNET-INTERNAL comes first): a sandbox
        // sending it would be masqueraded to this host's address, a member's, and inject frames into the overlay.
        (Rule::VxlanMember { underlay, port }, V4) => vec![
            entry(
                "filter",
                "NSNET-INPUT",
                format!("-s {underlay}/32 -p udp -m udp --dport {port} -j RETURN"),
                Insert(1),
            ),
            entry(
                "filter",
                "NSNET-INTERNAL",
                format!("-d {underlay}/32 -p udp -m udp --dport {port} -j DROP"),
                Insert(1),
            ),
        ],
        // A dual-stack overlay's IPv6: the same three entries, in ip6tables.
        (
            Rule::Overlay6 {
                device: d,
                cluster: c,
                subnet: s,
            },
            V6,
        ) => vec![
            entry(
                "filter",
                "NSNET-ACCEPT",
                format!("-s {c} -d {s} -i {d} -j ACCEPT"),
                Append,
            ),
            entry(
                "nat",
                "NSNET-POSTROUTING",
                format!("-s {s} -d {c} -m conntrack ! --ctstate DNAT -j RETURN"),
                Insert(1),
            ),
            entry(
                "nat",
                "NSNET-POSTROUTING",
                format!("-s {c} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"),
                Insert(1),
            ),
        ],
        // VXLAN runs over the IPv4 underlay; an overlay's IPv4 rules are IPv4's.
        (Rule::Overlay { .. } | Rule::VxlanPort { .. } | Rule::VxlanMember { .. }, V6)
        | (Rule::Overlay6 { .. }, V4) => vec![],
        (Rule::Port { mapping, target }, _) => {
            let to = match (target, family) {
                (IpAddr::V4(t), V4) => t.to_string(),
                (IpAddr::V6(t), V6) => format!("[{t}]"),
                _ => return vec![],
            };
            // `::` is every IPv6 address, as no address is.
            let dest = match mapping.host_ip.filter(|ip| !ip.is_unspecified()) {
                Some(IpAddr::V4(ip)) => format!("-d {ip}/32 "),
                Some(IpAddr::V6(ip)) => format!("-d {ip}/128 "),
                None => String::new(),
            };
            mapping
                .pairs()
                .map(|(host_port, container_port)| {
                    let p = mapping.protocol;
                    let spec = format!("{dest}-p {p} -m {p} --dport {host_port} -j DNAT --to-destination {to}:{container_port}");
                    entry("nat", "NSNET-PORTS", spec, Append)
                })
                .collect()
        }
    }
}

/// Write the restore script of one family for a batch. With `current` (the live rules), only what is still
/// needed is written and the simulated state follows along; without it (a dry run), everything is written.
fn script(
    batch: &Batch,
    family: Family,
    mut current: Option<&mut Current>,
    guard6: Guard6,
) -> Script {
    let mut out = Script::default();
    if let (Family::V6, Guard6::Move, Some(c)) = (family, guard6, current.as_deref()) {
        let old = per_endpoint_drops(c);
        delete(&mut out, &mut current, old);
    }
    for change in &batch.0 {
        match change {
            Change::Add(Rule::Tables(Tables { owner, .. })) => {
                for (table, chain) in CHAINS {
                    if current.as_ref().is_none_or(|c| !c.has_chain(table, chain)) {
                        out.line(
                            table,
                            format!(":{chain} - [0:0]"),
                            vec![format!("-X {chain}")],
                        );
                        if let Some(c) = current.as_deref_mut() {
                            c.chains.insert((table.into(), chain.into()), vec![]);
                        }
                    }
                }
                add(&mut out, &mut current, skeleton(owner, family));
            }
            Change::Delete(Rule::Tables(Tables {
                keep_user_chain,
                owner,
            })) => {
                // The jumps out of the built-in chains first, then nsnet's chains.
                let jumps: Vec<Entry> = skeleton(owner, family)
                    .into_iter()
                    .filter(|e| !e.chain.starts_with("NSNET"))
                    .collect();
                delete(&mut out, &mut current, jumps);
                for (table, chain) in CHAINS {
                    if chain == USER_CHAIN && *keep_user_chain {
                        continue;
                    }
                    if current.as_ref().is_none_or(|c| c.has_chain(table, chain)) {
                        let key = (table.to_string(), chain.to_string());
                        let rules = current
                            .as_deref_mut()
                            .and_then(|c| c.chains.remove(&key))
                            .unwrap_or_default();
                        let restore = rules.iter().map(|r| format!("-A {chain} {r}")).collect();
                        out.line(table, format!("-F {chain}"), restore);
                        out.line(
                            table,
                            format!("-X {chain}"),
                            vec![format!(":{chain} - [0:0]")],
                        );
                    }
                }
            }
            Change::Add(rule) => add(&mut out, &mut current, entries(rule, family, guard6)),
            Change::Delete(rule) => delete(&mut out, &mut current, entries(rule, family, guard6)),
        }
    }
    out
}

/// The drop pairs an older nsnet wrote per endpoint of an IPv4 network into ip6tables: a port's physdev
/// drop with no return before it (a dual-stack or IPv6-only endpoint returns its own addresses), and its
/// `-i` drop.
fn per_endpoint_drops(v6: &Current) -> Vec<Entry> {
    let Some(rules) = v6
        .chains
        .get(&("raw".to_string(), "NSNET-GUARD".to_string()))
    else {
        return vec![];
    };
    let guard = |spec: String| entry("raw", "NSNET-GUARD", spec, At::Append);
    rules
        .iter()
        .filter_map(|r| {
            r.strip_prefix("-m physdev --physdev-in ")?
                .strip_suffix(" -j DROP")
        })
        .filter(|h| !h.contains(' '))
        .filter(|h| {
            let returns = format!("-m physdev --physdev-in {h} -j RETURN");
            !rules.iter().any(|r| r.ends_with(&returns))
        })
        .flat_map(|h| {
            [
                guard(format!("-m physdev --physdev-in {h} -j DROP")),
                guard(format!("-i {h} -j DROP")),
            ]
        })
        .collect()
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
        out.line(e.table, line, vec![format!("-D {} {}", e.chain, e.spec)]);
        if let Some(c) = current.as_deref_mut() {
            let rules = c
                .chains
                .entry((e.table.into(), e.chain.into()))
                .or_default();
            match e.at {
                At::Append => rules.push(e.spec),
                At::Insert(n) => {
                    let at = usize::try_from(n.saturating_sub(1))
                        .unwrap_or(0)
                        .min(rules.len());
                    rules.insert(at, e.spec);
                }
            }
        }
    }
}

fn delete(out: &mut Script, current: &mut Option<&mut Current>, entries: Vec<Entry>) {
    for e in entries {
        let at = match current.as_deref_mut() {
            Some(c) => match c.position(&e) {
                Some(at) => {
                    if let Some(rules) = c.chains.get_mut(&(e.table.into(), e.chain.into())) {
                        rules.remove(at);
                    }
                    at
                }
                None => continue,
            },
            None => 0,
        };
        // Put back where it was.
        let undo = format!("-I {} {} {}", e.chain, at + 1, e.spec);
        out.line(e.table, format!("-D {} {}", e.chain, e.spec), vec![undo]);
    }
}

/// The batch as the `iptables-restore --noflush` and `ip6tables-restore --noflush` commands that apply it,
/// for display (`--dry-run`).
pub fn render(batch: &Batch) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let text = Script::text(&script(batch, family, None, Guard6::PerNetwork).tables);
        if !text.is_empty() {
            let tool = family.restore();
            let _ = write!(
                out,
                "{}{tool} --noflush <<'EOF'\n{text}EOF",
                if out.is_empty() { "" } else { "\n" }
            );
        }
    }
    out
}

/// The families this host filters: IPv4, and IPv6 when the kernel has it.
fn families() -> Vec<Family> {
    if ipv6_kernel() {
        vec![Family::V6, Family::V4]
    } else {
        vec![Family::V4]
    }
}

/// The batch for ip6tables on a host whose iptables chains an nsnet without the IPv6 side made (so ip6tables
/// has none of them): it makes them first when it adds anything, for the same owner, as a reset would.
fn with_v6_chains(batch: &Batch, live: &Current, owner: &str) -> Batch {
    let adds = batch.0.iter().any(|c| matches!(c, Change::Add(_)));
    let resets = batch
        .0
        .iter()
        .any(|c| matches!(c, Change::Add(Rule::Tables(_))));
    if !adds || resets || live.has_chain("nat", "NSNET-POSTROUTING") {
        return batch.clone();
    }
    let mut out = Batch::default();
    out.add(Rule::Tables(Tables {
        keep_user_chain: false,
        owner: owner.to_string(),
    }));
    out.0.extend(batch.0.iter().cloned());
    out
}

/// Apply a batch with one `ip6tables-restore --noflush` and one `iptables-restore --noflush`: all of it, or
/// none of it. A restore commits table by table (each `COMMIT`), so a refused one may have committed the
/// tables before the one refused: those are undone (the tables that differ from what was read before), and
/// then every family applied before it. A family the batch has nothing for (ip6tables, for a sandbox of an
/// IPv4 network) is neither read nor written.
pub fn apply(batch: &Batch) -> Result<(), FirewallError> {
    if batch.is_empty() {
        return Ok(());
    }
    // Both read and written before anything is applied: a failure reading leaves everything as it was.
    // iptables first: it says who owns the chains and where IPv4 networks' IPv6 is dropped.
    let v4 = Current::parse(&super::run_tool(Family::V4.save(), &[], None)?);
    let guard6 = Guard6::of(&v4, batch);
    let owner = v4.owner();
    let mut read = Vec::new();
    for family in families() {
        let current = match family {
            Family::V4 => v4.clone(),
            _ if !touches(batch, family, guard6) => continue,
            _ => Current::parse(&super::run_tool(family.save(), &[], None)?),
        };
        read.push((family, current));
    }
    let mut scripts = Vec::new();
    for (family, before) in read {
        let mut after = before.clone();
        let s = match (family, &owner) {
            (Family::V6, Some(owner)) => script(
                &with_v6_chains(batch, &before, owner),
                family,
                Some(&mut after),
                guard6,
            ),
            _ => script(batch, family, Some(&mut after), guard6),
        };
        scripts.push((family, s, before));
    }
    // IPv6 first, as before.
    scripts.sort_by_key(|(f, _, _)| *f == Family::V4);
    let mut done: Vec<(Family, String)> = Vec::new();
    for (family, s, before) in scripts {
        let text = Script::text(&s.tables);
        if text.is_empty() {
            continue;
        }
        if let Err(e) = super::run_tool(family.restore(), &["--noflush"], Some(&text)) {
            let now = super::run_tool(family.save(), &[], None).map(|t| Current::parse(&t));
            if let Ok(now) = now {
                let partial = s.undo_text(|t| now.table(t) != before.table(t));
                done.push((family, partial));
            }
            for (f, undo) in done.iter().rev() {
                if !undo.is_empty() {
                    let _ = super::run_tool(f.restore(), &["--noflush"], Some(undo));
                }
            }
            return Err(e);
        }
        done.push((family, s.undo_text(|_| true)));
    }
    Ok(())
}

/// Whether the batch writes anything to this family (as a dry run would: with nothing read).
fn touches(batch: &Batch, family: Family, guard6: Guard6) -> bool {
    guard6 == Guard6::Move || !script(batch, family, None, guard6).tables.is_empty()
}

/// The rules of `rules` whose iptables (or ip6tables) rules are not all in place.
pub fn missing(rules: &[Rule]) -> Result<Vec<Rule>, FirewallError> {
    let v4 = Current::parse(&super::run_tool(Family::V4.save(), &[], None)?);
    // Not a rebuild: the chains as they are.
    let guard6 = Guard6::of(&v4, &Batch::default());
    let mut live = Vec::new();
    for family in families() {
        let needed = rules.iter().any(|r| !entries(r, family, guard6).is_empty());
        let current = match family {
            Family::V4 => v4.clone(),
            _ if !needed => continue,
            _ => Current::parse(&super::run_tool(family.save(), &[], None)?),
        };
        live.push((family, current));
    }
    Ok(rules
        .iter()
        .filter(|r| {
            !live
                .iter()
                .all(|(f, current)| entries(r, *f, guard6).iter().all(|e| current.has_rule(e)))
        })
        .cloned()
        .collect())
}

/// Whether a user chain (of either family) holds rules (then removing the last network keeps them).
pub fn user_chain_has_rules() -> bool {
    families().iter().any(|f| {
        super::run_tool(f.save(), &["-t", "filter"], None)
            .map(|text| !Current::parse(&text).chain_is_empty("filter", USER_CHAIN))
            .unwrap_or(false)
    })
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
        let (v4, v6) = text.split_once("ip6tables-restore").expect("both families");
        assert_eq!(v4.matches("COMMIT").count(), 3, "{text}");
        // No IPv6 subnet or target: the IPv6 side has nsnet's chains and jumps only.
        assert!(
            !v6.contains("MASQUERADE") && !v6.contains("--to-destination"),
            "{v6}"
        );
        assert!(
            v6.contains("-A PREROUTING ! -d ::1/128 -m addrtype --dst-type LOCAL -j NSNET-PORTS\n"),
            "{v6}"
        );
    }

    #[test]
    fn only_needed_changes_are_written() {
        let live = "*nat\n:PREROUTING ACCEPT [0:0]\n:NSNET-PORTS - [0:0]\n\
                    -A NSNET-PORTS -p tcp -m tcp --dport 8088 -j DNAT --to-destination 10.89.0.2:80\nCOMMIT\n";
        let mut cur = Current::parse(live);
        let mut add = Batch::default();
        add.add(port());
        let text = |b: &Batch, c: &mut Current| {
            Script::text(&script(b, Family::V4, Some(c), Guard6::PerNetwork).tables)
        };
        assert_eq!(text(&add, &mut cur), "", "already there");
        let mut del = Batch::default();
        del.delete(port());
        del.delete(port());
        assert_eq!(
            text(&del, &mut cur),
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
        let text = Script::text(&script(&b, Family::V4, Some(&mut cur), Guard6::PerNetwork).tables);
        assert!(
            text.contains("-D FORWARD -j NSNET-FORWARD\n-F NSNET-FORWARD\n-X NSNET-FORWARD\n"),
            "{text}"
        );
        assert!(!text.contains("NSNET-USER"), "{text}");
    }

    fn endpoint6() -> Rule {
        Rule::Endpoint {
            host_interface: "nsv1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec!["fe80::1".parse().unwrap(), "fd00::2".parse().unwrap()],
        }
    }

    #[test]
    fn an_ipv6_endpoint_returns_its_own_sources_and_drops_the_rest() {
        let specs: Vec<String> = entries(&endpoint6(), Family::V6, Guard6::PerNetwork)
            .into_iter()
            .map(|e| e.spec)
            .collect();
        // Router advertisements and the like go first: a good source must not RETURN them.
        let ra = "-p ipv6-icmp -m physdev --physdev-in nsv1 -m icmp6 --icmpv6-type 134 -j DROP";
        let ret = "-s fe80::1/128 -m physdev --physdev-in nsv1 -j RETURN";
        let pos = |s: &str| specs.iter().position(|x| x == s).expect(s);
        assert!(pos(ra) < pos(ret), "{specs:#?}");
        assert!(
            pos("-s fd00::2/128 -m physdev --physdev-in nsv1 -j RETURN")
                < pos("-m physdev --physdev-in nsv1 -j DROP")
        );
        assert!(pos("-s fd00::2/128 -i nsv1 -j RETURN") < pos("-i nsv1 -j DROP"));
        // An IPv4 network's sandbox: no IPv6 at all.
        let v4only = Rule::Endpoint {
            host_interface: "nsv1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![],
        };
        let specs: Vec<String> = entries(&v4only, Family::V6, Guard6::PerEndpoint)
            .into_iter()
            .map(|e| e.spec)
            .collect();
        assert_eq!(
            specs,
            ["-m physdev --physdev-in nsv1 -j DROP", "-i nsv1 -j DROP"]
        );
    }

    /// An IPv6-only network (C14): its sandbox sends no IPv4 at all, and its bridge has no IPv4 rules.
    #[test]
    fn an_ipv6_only_endpoint_sends_no_ipv4() {
        let only6 = Rule::Endpoint {
            host_interface: "nsv1".into(),
            address: None,
            ipv6: vec!["fe80::1".parse().unwrap(), "fd00::2".parse().unwrap()],
        };
        let specs: Vec<String> = entries(&only6, Family::V4, Guard6::PerNetwork)
            .into_iter()
            .map(|e| e.spec)
            .collect();
        assert_eq!(
            specs,
            ["-m physdev --physdev-in nsv1 -j DROP", "-i nsv1 -j DROP"]
        );
        assert_eq!(
            entries(&only6, Family::V6, Guard6::PerNetwork).len(),
            entries(&endpoint6(), Family::V6, Guard6::PerNetwork).len()
        );
        let bridge = Rule::Interface {
            interface: "nsbr".into(),
            subnet: None,
            internal: false,
            subnet6: Some("fd00::/64".parse().unwrap()),
        };
        assert!(entries(&bridge, Family::V4, Guard6::PerNetwork).is_empty());
        assert!(!entries(&bridge, Family::V6, Guard6::PerNetwork).is_empty());
    }

    #[test]
    fn ipv6_ports_and_nat66_go_to_ip6tables_only() {
        let port6 = Rule::Port {
            mapping: PortMapping {
                host_ip: Some("::".parse().unwrap()),
                host_port: 8088,
                container_port: 80,
                count: 1,
                protocol: Proto::Udp,
            },
            target: "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().into(),
        };
        assert!(entries(&port6, Family::V4, Guard6::PerNetwork).is_empty());
        assert_eq!(
            entries(&port6, Family::V6, Guard6::PerNetwork)[0].spec,
            "-p udp -m udp --dport 8088 -j DNAT --to-destination [fd00::2]:80"
        );
        assert!(entries(&port(), Family::V6, Guard6::PerNetwork).is_empty());
        let masq6 = Rule::Masquerade {
            subnet: "fd00::/64".parse().unwrap(),
            interface: "nsnet0".into(),
        };
        assert!(entries(&masq6, Family::V4, Guard6::PerNetwork).is_empty());
        assert_eq!(
            entries(&masq6, Family::V6, Guard6::PerNetwork)[0].spec,
            "-s fd00::/64 ! -o nsnet0 -j MASQUERADE"
        );
    }

    #[test]
    fn the_undo_script_puts_everything_back() {
        let live = "*raw\n:PREROUTING ACCEPT [0:0]\n:NSNET-GUARD - [0:0]\n-A PREROUTING -j NSNET-GUARD\n\
                    -A NSNET-GUARD -s ::1/128 -i nsnet0 -j DROP\n-A NSNET-GUARD -m physdev --physdev-in old -j DROP\n\
                    -A NSNET-GUARD -i old -j DROP\nCOMMIT\n";
        let before = Current::parse(live);
        let mut cur = before.clone();
        let mut b = Batch::default();
        b.delete(Rule::Endpoint {
            host_interface: "old".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 9)),
            ipv6: vec![],
        });
        b.add(endpoint6());
        let s = script(&b, Family::V6, Some(&mut cur), Guard6::PerEndpoint);
        // Play the undo script on the simulated state: it must come back to what was there.
        let undo = s.undo_text(|_| true);
        for line in undo.lines() {
            let mut words = line.splitn(2, ' ');
            let (op, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let Some((chain, spec)) = rest.split_once(' ') else {
                continue;
            };
            let key = ("raw".to_string(), chain.to_string());
            let rules = cur.chains.entry(key).or_default();
            match op {
                "-D" => {
                    let at = rules.iter().position(|r| r == spec).expect(spec);
                    rules.remove(at);
                }
                "-I" => {
                    let (n, spec) = spec.split_once(' ').unwrap();
                    rules.insert(n.parse::<usize>().unwrap() - 1, spec.to_string());
                }
                _ => panic!("{line}"),
            }
        }
        assert_eq!(cur.chains, before.chains, "{undo}");
    }

    /// An IPv4 network drops its sandboxes' IPv6 with one rule, so its sandboxes' batches have nothing for
    /// ip6tables (and the driver neither reads nor writes it); chains an older nsnet made keep their
    /// per-endpoint drops until a rebuild moves them over.
    #[test]
    fn an_ipv4_network_drops_ipv6_once_and_its_sandboxes_leave_ip6tables_alone() {
        let bridge = Rule::Interface {
            interface: "nsbr".into(),
            subnet: Some("10.89.0.0/24".parse().unwrap()),
            internal: false,
            subnet6: None,
        };
        let specs = |r: &Rule, g| -> Vec<String> {
            entries(r, Family::V6, g)
                .into_iter()
                .map(|e| e.spec)
                .collect()
        };
        assert_eq!(specs(&bridge, Guard6::PerNetwork), ["-i nsbr -j DROP"]);
        assert!(specs(&bridge, Guard6::PerEndpoint).is_empty());
        let v4only = Rule::Endpoint {
            host_interface: "nsv1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![],
        };
        assert!(specs(&v4only, Guard6::PerNetwork).is_empty());
        let mut up = Batch::default();
        up.add(v4only.clone());
        up.add(port());
        assert!(!touches(&up, Family::V6, Guard6::PerNetwork));
        assert!(touches(&up, Family::V6, Guard6::PerEndpoint));
        assert!(touches(&up, Family::V4, Guard6::PerNetwork));
        let mut dual = Batch::default();
        dual.delete(endpoint6());
        assert!(touches(&dual, Family::V6, Guard6::PerNetwork));

        // Which chains: made by this nsnet (marked), by an older one (not), or not made yet.
        let mark = format!(
            "*nat\n:NSNET-POSTROUTING - [0:0]\n-A NSNET-POSTROUTING {}\n-A NSNET-POSTROUTING {GUARD6_MARK}\nCOMMIT\n",
            owner_mark("nsnet:/s")
        );
        let old = format!(
            "*nat\n:NSNET-POSTROUTING - [0:0]\n-A NSNET-POSTROUTING {}\nCOMMIT\n",
            owner_mark("nsnet:/s")
        );
        let mut reload = Batch::default();
        reload.add(Rule::Tables(Tables {
            keep_user_chain: true,
            owner: "nsnet:/s".into(),
        }));
        let of = |t: &str, b: &Batch| Guard6::of(&Current::parse(t), b);
        assert_eq!(of(&mark, &up), Guard6::PerNetwork);
        assert_eq!(of(&old, &up), Guard6::PerEndpoint);
        assert_eq!(of(&old, &reload), Guard6::Move);
        assert_eq!(of("", &reload), Guard6::PerNetwork);
        // The mark is no owner.
        assert_eq!(Current::parse(&mark).owner().as_deref(), Some("nsnet:/s"));
        // A fresh skeleton writes the mark.
        let fresh = Script::text(&script(&reload, Family::V4, None, Guard6::PerNetwork).tables);
        assert!(
            fresh.contains(&format!("-A NSNET-POSTROUTING {GUARD6_MARK}\n")),
            "{fresh}"
        );
    }

    /// A rebuild on older chains deletes the per-endpoint drops of IPv4 networks' endpoints (not a
    /// dual-stack endpoint's drop after its returns), before the batch adds the networks' drops.
    #[test]
    fn a_rebuild_moves_older_chains_to_per_network_drops() {
        let live = "*raw\n:PREROUTING ACCEPT [0:0]\n:NSNET-GUARD - [0:0]\n-A PREROUTING -j NSNET-GUARD\n\
                    -A NSNET-GUARD -m physdev --physdev-in old -j DROP\n-A NSNET-GUARD -i old -j DROP\n\
                    -A NSNET-GUARD -s fe80::1/128 -m physdev --physdev-in ds -j RETURN\n\
                    -A NSNET-GUARD -m physdev --physdev-in ds -j DROP\n-A NSNET-GUARD -i ds -j DROP\n\
                    -A NSNET-GUARD -m physdev --physdev-in nsve-p -j DROP\n-A NSNET-GUARD -i nsve-p -j DROP\nCOMMIT\n";
        let mut cur = Current::parse(live);
        let mut b = Batch::default();
        b.add(Rule::Interface {
            interface: "nsve-p".into(),
            subnet: Some("10.89.0.0/30".parse().unwrap()),
            internal: false,
            subnet6: None,
        });
        b.add(Rule::Endpoint {
            host_interface: "nsve-p".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![],
        });
        script(&b, Family::V6, Some(&mut cur), Guard6::Move);
        let guard = &cur.chains[&("raw".to_string(), "NSNET-GUARD".to_string())];
        assert_eq!(
            guard,
            &[
                "-s fe80::1/128 -m physdev --physdev-in ds -j RETURN",
                "-m physdev --physdev-in ds -j DROP",
                "-i ds -j DROP",
                "-i nsve-p -j DROP",
            ]
        );
    }
}
