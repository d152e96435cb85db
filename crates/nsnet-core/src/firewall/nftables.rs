//! The nftables driver: renders a [`Batch`] as `nft -f` text and applies it as one transaction.
//!
//! nsnet owns two tables. `inet nsnet` does NAT, forwarding policy and loopback guards for both IP families
//! (the rules that do not depend on the family exist once; a rule per family says so with an address match or
//! `meta nfproto`); `bridge nsnet` stops sandboxes on a bridge from sending with another source address or
//! advertising another's IPv6 address, and IPv4 networks' sandboxes from sending IPv6 at all (a router
//! advertisement would otherwise configure the neighbours). Networks, endpoints and published ports are elements of their sets and maps, so adding or
//! removing one is an element change, and the packet path does one hash lookup per set, whatever the number
//! of entries. The rules are written as nft text: Debian 12's nft 1.0.6 cannot load maps with concatenated
//! values from JSON.
//!
//! The chain `inet nsnet user` belongs to the user (like Docker's DOCKER-USER): forwarded traffic passes it
//! before nsnet's own forwarding rules, and nsnet creates it once and never flushes it.
//!
//! Older nsnets kept the main table as `ip nsnet`. Such a table keeps serving element changes until the next
//! reset (the first network's create, `firewall reload`, `gc`), which migrates it in its one transaction: it
//! declares `inet nsnet`, carries the rules of `ip nsnet user` over into `inet nsnet user` and deletes
//! `ip nsnet`. A user rule that does not load fails the command, naming the rule, with nothing changed.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use super::element::elements;
use super::HostChain;
use super::{Batch, Change, FirewallError, Rule, Tables, TablesOwner};

/// nsnet's main table.
pub const TABLE: &str = "inet nsnet";
/// The main table as older nsnets made it (IPv4 only), migrated by the next reset.
pub const LEGACY_TABLE: &str = "ip nsnet";
/// nsnet's bridge-family table (anti-spoofing on bridge ports).
pub const BRIDGE_TABLE: &str = "bridge nsnet";
/// The chain the user owns.
pub const USER_CHAIN: &str = "user";

/// The tables' comment, written when they are made (the kernel keeps the first one): the owner, then this.
const COMMENT_TAIL: &str = ": managed by nsnet, everything but chain user is rewritten";

const DECLARE: &str = r#"table inet nsnet {
	chain user {
	}
	set ifaces {
		type ifname
	}
	set internal {
		type ifname
	}
	set internal_self {
		type ifname . ifname
	}
	set same_net {
		type ipv4_addr . ipv4_addr
		flags interval
	}
	set masq_nets {
		type ipv4_addr
		flags interval
	}
	set own_nets {
		type ifname . ipv4_addr
		flags interval
	}
	set same_net6 {
		type ipv6_addr . ipv6_addr
		flags interval
	}
	set masq_nets6 {
		type ipv6_addr
		flags interval
	}
	set own_nets6 {
		type ifname . ipv6_addr
		flags interval
	}
	set isolation {
		type ifname . ifname
	}
	set published_only {
		type ifname
	}
	set endpoint_ifs {
		type ifname
	}
	set endpoints {
		type ifname . ipv4_addr
	}
	set endpoints6 {
		type ifname . ipv6_addr
	}
	map ports {
		type inet_proto . inet_service : ipv4_addr . inet_service
	}
	map ports_ip {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
	}
	map ports6 {
		type inet_proto . inet_service : ipv6_addr . inet_service
	}
	map ports6_ip {
		type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
	}
	set overlay_in {
		type ifname . ipv4_addr . ipv4_addr
		flags interval
	}
	set no_masq {
		type ipv4_addr . ipv4_addr
		flags interval
	}
	set overlay_in6 {
		type ifname . ipv6_addr . ipv6_addr
		flags interval
	}
	set no_masq6 {
		type ipv6_addr . ipv6_addr
		flags interval
	}
	set vxlan_ports {
		type inet_service
	}
	set vxlan_members {
		type ipv4_addr . inet_service
	}
	chain guard {
		type filter hook prerouting priority raw; policy accept;
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain output {
		type nat hook output priority -100; policy accept;
	}
	chain published {
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
	}
	chain input {
		type filter hook input priority filter; policy accept;
	}
}
table bridge nsnet {
	set endpoint_ifs {
		type ifname
	}
	set endpoint_ifs6 {
		type ifname
	}
	set endpoints {
		type ifname . ipv4_addr
	}
	set endpoints6 {
		type ifname . ipv6_addr
	}
	set nd_targets {
		typeof iifname . @th,64,128
	}
	chain prerouting {
		type filter hook prerouting priority -200; policy accept;
	}
}
"#;

/// nsnet's own sets and maps in `inet nsnet`, as (kind, name): everything is flushed on reset, nothing else is.
const SETS: [(&str, &str); 24] = [
    ("set", "ifaces"),
    ("set", "internal"),
    ("set", "internal_self"),
    ("set", "same_net"),
    ("set", "masq_nets"),
    ("set", "own_nets"),
    ("set", "same_net6"),
    ("set", "masq_nets6"),
    ("set", "own_nets6"),
    ("set", "isolation"),
    ("set", "published_only"),
    ("set", "endpoint_ifs"),
    ("set", "endpoints"),
    ("set", "endpoints6"),
    ("map", "ports"),
    ("map", "ports_ip"),
    ("map", "ports6"),
    ("map", "ports6_ip"),
    ("set", "overlay_in"),
    ("set", "no_masq"),
    ("set", "overlay_in6"),
    ("set", "no_masq6"),
    ("set", "vxlan_ports"),
    ("set", "vxlan_members"),
];
/// nsnet's own chains in `inet nsnet`, in an order that may be deleted (jumping chains first).
const CHAINS: [&str; 7] = [
    "guard",
    "input",
    "prerouting",
    "output",
    "forward",
    "postrouting",
    "published",
];

/// The rules of nsnet's chains: (table, chain, rule).
const RULES: &[(&str, &str, &str)] = &[
    // Nothing from a sandbox may claim or target the host's loopback range: with route_localnet on (needed
    // for `-p 127.0.0.1:...`), the kernel no longer drops such packets as martians on nsnet's interfaces.
    // Every packet (bridged ones too, through br_netfilter) passes here: the address test comes first, so
    // ordinary traffic costs one compare per rule and no set lookup.
    (TABLE, "guard", "ip saddr 127.0.0.0/8 iifname @ifaces drop"),
    (TABLE, "guard", "ip daddr 127.0.0.0/8 iifname @ifaces drop"),
    (TABLE, "guard", "ip6 saddr ::1 iifname @ifaces drop"),
    (TABLE, "guard", "ip6 daddr ::1 iifname @ifaces drop"),
    // A point-to-point sandbox's packets arrive on its host veth; bridged ones are checked in `bridge nsnet`.
    (
        TABLE,
        "guard",
        "iifname @endpoint_ifs iifname . ip saddr != @endpoints drop",
    ),
    (
        TABLE,
        "guard",
        "iifname @endpoint_ifs iifname . ip6 saddr != @endpoints6 drop",
    ),
    // Published ports: (`dnat ip` in `inet` gets no `meta nfproto ipv4` from nft, so the rules state it)
    // from outside, never for loopback destinations (a LAN peer that routes 127.0.0.0/8 to
    // this host must not reach `-p 127.0.0.1:...`; moby#45610); from the host itself, loopback included.
    (
        TABLE,
        "prerouting",
        "ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto { tcp, udp } jump published",
    ),
    // IPv6 has no route_localnet, and a DNAT of ::1 never completes: ::1 is C10's (issue #19), never DNATed.
    (
        TABLE,
        "prerouting",
        "meta nfproto ipv6 fib daddr type local meta l4proto { tcp, udp } jump published",
    ),
    (
        TABLE,
        "output",
        "fib daddr type local meta l4proto { tcp, udp } jump published",
    ),
    (
        TABLE,
        "published",
        "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @ports_ip",
    ),
    (
        TABLE,
        "published",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports",
    ),
    (
        TABLE,
        "published",
        "meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports6_ip",
    ),
    (
        TABLE,
        "published",
        "meta nfproto ipv6 ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @ports6",
    ),
    (TABLE, "forward", "jump user"),
    // A sandbox never sends VXLAN to a member host: masqueraded, it would carry this host's (a member's)
    // address, and inject any inner frame into the overlay.
    (
        TABLE,
        "forward",
        "iifname @ifaces ip daddr . udp dport @vxlan_members drop",
    ),
    // A packet of an open connection costs one rule: its first packet already passed isolation and internal.
    (TABLE, "forward", "ct state established,related accept"),
    // An internal network forwards to nothing else (another internal network included), published ports
    // included: before the DNAT accept. `internal_self` holds `i . i` for each internal interface.
    (
        TABLE,
        "forward",
        "iifname @internal iifname . oifname != @internal_self drop",
    ),
    (
        TABLE,
        "forward",
        "oifname @internal iifname . oifname != @internal_self drop",
    ),
    // Published ports cross networks (through the host's address); direct addresses do not.
    (TABLE, "forward", "ct status dnat accept"),
    (TABLE, "forward", "iifname . oifname @isolation drop"),
    // Other hosts' sandboxes reach this host's part of an overlay network by their own addresses.
    (
        TABLE,
        "forward",
        "iifname . ip saddr . ip daddr @overlay_in accept",
    ),
    // The same over IPv6 (dual-stack overlays): from the cluster's prefix to this host's block only, so the
    // underlay (host-gw) or a member's tunnel cannot bring in other sources.
    (
        TABLE,
        "forward",
        "iifname . ip6 saddr . ip6 daddr @overlay_in6 accept",
    ),
    // A LAN peer that routes a subnet via this host reaches its sandboxes only through published ports,
    // unless the network is routed. Other nsnet networks are isolation's business.
    (
        TABLE,
        "forward",
        "oifname @published_only iifname != @ifaces drop",
    ),
    // The host reaching a published port through 127.0.0.1: the sandbox must see a routable source.
    (
        TABLE,
        "postrouting",
        "ct status dnat ip saddr 127.0.0.0/8 masquerade",
    ),
    // Hairpin: a sandbox reaching a published port of its own network through the host's address.
    (
        TABLE,
        "postrouting",
        "ct status dnat ip saddr . ip daddr @same_net masquerade",
    ),
    // Another host's sandbox reaching a published port through this host's gateway address: the replies
    // would go from sandbox to sandbox, on the fast path, which does no NAT. Masqueraded to the gateway,
    // they come back to this host, which undoes the DNAT. (Through the host's own address, the usual way,
    // the client arrives masqueraded by its own host already.)
    (
        TABLE,
        "postrouting",
        "ct status dnat iifname . ip saddr . ip daddr @overlay_in masquerade",
    ),
    // Between an overlay network's hosts, sandboxes keep their addresses.
    (TABLE, "postrouting", "ip saddr . ip daddr @no_masq return"),
    (TABLE, "postrouting", "oifname . ip saddr @own_nets return"),
    // VXLAN is unauthenticated: only member hosts may send it.
    (
        TABLE,
        "input",
        "udp dport @vxlan_ports ip saddr . udp dport != @vxlan_members drop",
    ),
    (TABLE, "postrouting", "ip saddr @masq_nets masquerade"),
    // The same for IPv6: hairpin, a network's own traffic, then NAT66 of the networks that have it (ULA
    // subnets by default; `--ipv6-nat=false` puts a network in none of these).
    (
        TABLE,
        "postrouting",
        "ct status dnat ip6 saddr . ip6 daddr @same_net6 masquerade",
    ),
    (
        TABLE,
        "postrouting",
        "ct status dnat iifname . ip6 saddr . ip6 daddr @overlay_in6 masquerade",
    ),
    // Between a dual-stack overlay's hosts, sandboxes keep their IPv6 addresses: no NAT66 in the cluster.
    (TABLE, "postrouting", "ip6 saddr . ip6 daddr @no_masq6 return"),
    (TABLE, "postrouting", "oifname . ip6 saddr @own_nets6 return"),
    (TABLE, "postrouting", "ip6 saddr @masq_nets6 masquerade"),
    (
        BRIDGE_TABLE,
        "prerouting",
        "ether type ip iifname @endpoint_ifs iifname . ip saddr != @endpoints drop",
    ),
    (
        BRIDGE_TABLE,
        "prerouting",
        "ether type arp iifname @endpoint_ifs iifname . arp saddr ip != @endpoints drop",
    ),
    // IPv6 from a sandbox port carries one of its own addresses (link-local or global) as its source: `::`
    // (DAD, MLD before a link-local address) and every IPv6 frame of an IPv4 network's sandbox have none.
    (
        BRIDGE_TABLE,
        "prerouting",
        "ether type ip6 iifname @endpoint_ifs iifname . ip6 saddr != @endpoints6 drop",
    ),
    // Never a router advertisement, a router solicitation, a redirect or an MLD message: a sandbox must not
    // give a neighbour (or, if its bridge took them, the host) a route or an address. Written `icmpv6 type`,
    // which also matches behind extension headers (`ip6 nexthdr` would not).
    (
        BRIDGE_TABLE,
        "prerouting",
        "iifname @endpoint_ifs6 icmpv6 type { nd-router-solicit, nd-router-advert, nd-redirect, \
         mld-listener-query, mld-listener-report, mld2-listener-report, mld-listener-done } drop",
    ),
    // A neighbour advertisement names only the sandbox's own addresses as its target (bytes 8..24 of the
    // ICMPv6 message; nft 1.0.6 has no `icmpv6 taddr`): no taking over a neighbour's or the gateway's.
    (
        BRIDGE_TABLE,
        "prerouting",
        "iifname @endpoint_ifs icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd_targets drop",
    ),
];

/// Declare everything, then empty nsnet's own sets and chains and write the rules again: safe to run on a
/// missing, a half-flushed or an intact ruleset, and never touches the `user` chain. New tables carry their
/// owner in their comment.
fn render_reset(out: &mut String, owner: &str) {
    let comment = format!("comment \"{}{COMMENT_TAIL}\"", owner.replace('"', "'"));
    let _ = writeln!(
        out,
        "table inet nsnet {{ {comment}; }}\ntable bridge nsnet {{ {comment}; }}"
    );
    out.push_str(DECLARE);
    for (kind, set) in SETS {
        let _ = writeln!(out, "flush {kind} {TABLE} {set}");
    }
    for chain in CHAINS {
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
    }
    let _ = writeln!(
        out,
        "flush set {BRIDGE_TABLE} endpoint_ifs\nflush set {BRIDGE_TABLE} endpoints\n\
         flush set {BRIDGE_TABLE} endpoint_ifs6\nflush set {BRIDGE_TABLE} endpoints6\n\
         flush set {BRIDGE_TABLE} nd_targets"
    );
    let _ = writeln!(out, "flush chain {BRIDGE_TABLE} prerouting");
    for (table, chain, rule) in RULES {
        let _ = writeln!(out, "add rule {table} {chain} {rule}");
    }
}

/// The accepts nsnet inserts into a host forward chain for one interface: traffic from the network, replies
/// to it, and connections to its published ports.
fn host_accepts(interface: &str) -> [String; 3] {
    let tag = host_tag(interface);
    [
        format!("iifname \"{interface}\" accept comment \"{tag}\""),
        format!("oifname \"{interface}\" ct state established,related accept comment \"{tag}\""),
        format!("oifname \"{interface}\" ct status dnat accept comment \"{tag}\""),
    ]
}

fn host_tag(interface: &str) -> String {
    format!("nsnet {interface}")
}

/// Handles of rules already in host chains, by (chain, interface): what a delete of [`Rule::HostAccept`]
/// removes. Looked up just before applying; empty for a dry run.
pub type HostHandles = Vec<((HostChain, String), Vec<u64>)>;

/// An older nsnet's `ip nsnet` table, as found when a batch is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Legacy {
    /// There is none (or the batch is only displayed).
    None,
    /// It still serves nsnet's networks: element changes go there until a reset migrates it.
    Elements,
    /// The batch resets the tables, which migrates it: the rules of its user chain (as `nft -s` prints them)
    /// go into `inet nsnet user`, then it is deleted, in the same transaction.
    Migrate(Vec<String>),
}

/// Render a batch as an `nft -f` script, for display (`--dry-run`).
pub fn render(batch: &Batch) -> String {
    render_with(batch, &Vec::new(), &Legacy::None)
}

/// The end of a reset that migrates `ip nsnet`: its user rules into `inet nsnet user`, then the table goes.
fn render_migration(out: &mut String, legacy: &Legacy) {
    if let Legacy::Migrate(rules) = legacy {
        for rule in rules {
            let _ = writeln!(out, "add rule {TABLE} {USER_CHAIN} {rule}");
        }
        let _ = writeln!(out, "delete table {LEGACY_TABLE}");
    }
}

/// Render a batch as an `nft -f` script. Deletions are written as add-then-delete so that deleting something
/// already gone is not an error (nft 1.0.6 has no `destroy`), which keeps teardown idempotent. Rules in host
/// chains are deleted by the handles in `handles`. `legacy`: what of an older nsnet's `ip nsnet` is there.
fn render_with(batch: &Batch, handles: &HostHandles, legacy: &Legacy) -> String {
    let mut out = String::new();
    // Elements before a migrating reset (a teardown's, ahead of the tables' delete) are still in `ip nsnet`.
    let mut on_legacy = *legacy != Legacy::None;
    for change in &batch.0 {
        if matches!(
            change,
            Change::Add(Rule::Tables(_)) | Change::Delete(Rule::Tables(_))
        ) {
            on_legacy = false;
        }
        match change {
            Change::Add(Rule::HostAccept { chain, interface })
            | Change::Delete(Rule::HostAccept { chain, interface }) => {
                let known = handles
                    .iter()
                    .find(|(k, _)| k.0 == *chain && k.1 == *interface)
                    .map(|(_, h)| h.as_slice());
                match known {
                    Some(found) => {
                        for handle in found {
                            let _ = writeln!(out, "delete rule {chain} handle {handle}");
                        }
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "# delete the rules commented \"{}\" in {chain}",
                            host_tag(interface)
                        );
                    }
                }
                if matches!(change, Change::Add(_)) {
                    for rule in host_accepts(interface).iter().rev() {
                        let _ = writeln!(out, "insert rule {chain} {rule}");
                    }
                }
            }
            Change::Add(Rule::Tables(t)) => {
                render_reset(&mut out, &t.owner);
                render_migration(&mut out, legacy);
            }
            Change::Delete(Rule::Tables(Tables {
                keep_user_chain: false,
                ..
            })) => {
                for table in [TABLE, BRIDGE_TABLE] {
                    let _ = writeln!(out, "add table {table}\ndelete table {table}");
                }
                if matches!(legacy, Legacy::Migrate(_)) {
                    let _ = writeln!(out, "delete table {LEGACY_TABLE}");
                }
            }
            Change::Delete(Rule::Tables(Tables {
                keep_user_chain: true,
                owner,
            })) => {
                // Everything of nsnet's goes; the user chain, and the table holding it, stay.
                render_reset(&mut out, owner);
                render_migration(&mut out, legacy);
                for chain in CHAINS {
                    let _ = writeln!(out, "flush chain {TABLE} {chain}");
                }
                for chain in CHAINS {
                    let _ = writeln!(out, "delete chain {TABLE} {chain}");
                }
                for (kind, set) in SETS {
                    let _ = writeln!(out, "delete {kind} {TABLE} {set}");
                }
                let _ = writeln!(out, "delete table {BRIDGE_TABLE}");
            }
            Change::Add(rule) => {
                for e in elements(rule) {
                    let (table, set) = (e.family.table(on_legacy), e.set);
                    let _ = writeln!(out, "add element {table} {set} {{ {} }}", e.text());
                }
            }
            Change::Delete(rule) => {
                for e in elements(rule) {
                    let (table, set) = (e.family.table(on_legacy), e.set);
                    let _ = writeln!(out, "add element {table} {set} {{ {} }}", e.text());
                    let _ = writeln!(out, "delete element {table} {set} {{ {} }}", e.key_text());
                }
            }
        }
    }
    out
}

/// The terse text listing (no set elements) of table `family nsnet`; `None` when there is no such table. Any
/// other failure is an error.
fn list_table(family: &str) -> Result<Option<String>, FirewallError> {
    match super::run_tool("nft", &["-t", "-s", "list", "table", family, "nsnet"], None) {
        Ok(text) => Ok(Some(text)),
        Err(FirewallError::Refused { message, .. }) if message.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Who made `inet nsnet` (or an older nsnet's `ip nsnet`): the owner in its comment. JSON listings of nft 1.0.6
/// leave table comments out, so this reads the terse text listing, whose first lines are the table's.
pub fn tables_owner() -> Result<TablesOwner, FirewallError> {
    // A missing table is the one failure that means "nobody's"; any other is an error, never taken for
    // "nobody's" (which would let this state dir reset another's tables).
    let text = match list_table("inet")? {
        Some(text) => text,
        None => match list_table("ip")? {
            Some(text) => text,
            None => return Ok(TablesOwner::Absent),
        },
    };
    let comment = text
        .lines()
        .take(3)
        .find_map(|l| l.trim().strip_prefix("comment \""))
        .and_then(|c| c.strip_suffix('"'));
    Ok(match comment.and_then(|c| c.strip_suffix(COMMENT_TAIL)) {
        Some(owner) => TablesOwner::Of(owner.to_string()),
        None => TablesOwner::Unknown,
    })
}

/// Sets that only the newest tables have, as (family, set): tables that lack one were made by an older nsnet
/// and are brought up to date by a reset ([`render_reset`]).
const NEWEST_SETS: [(&str, &str); 6] = [
    ("inet", "endpoints6"),
    ("inet", "overlay_in6"),
    ("inet", "no_masq6"),
    ("inet", "ports6_ip"),
    ("bridge", "endpoint_ifs6"),
    ("bridge", "nd_targets"),
];

/// Whether nsnet's tables are the newest kind (no `ip nsnet` of an older nsnet, and every set of
/// [`NEWEST_SETS`]): a dual-stack network needs them. One terse listing of every set on the host.
pub fn tables_current() -> Result<bool, FirewallError> {
    let text = nft(&["-j", "-t", "list", "sets"])?;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let sets: Vec<(&str, &str)> = json["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|item| {
            let set = item.get("set").or_else(|| item.get("map"))?;
            (set["table"] == "nsnet").then_some((set["family"].as_str()?, set["name"].as_str()?))
        })
        .collect();
    Ok(!sets.iter().any(|(family, _)| *family == "ip")
        && NEWEST_SETS.iter().all(|want| sets.contains(want)))
}

/// Whether the user chain (in `inet nsnet`, or an older nsnet's `ip nsnet`) holds rules: then removing the
/// last network keeps it, and its table.
pub fn user_chain_has_rules() -> bool {
    // No chain (or no table) prints nothing, which parses to no rules.
    ["inet", "ip"].iter().any(|family| {
        let text = nft(&["-j", "list", "chain", family, "nsnet", USER_CHAIN]).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        json["nftables"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i.get("rule").is_some()))
    })
}

/// The rules of an older nsnet's `ip nsnet user`, as `nft -s` prints them (one a line); `None` when there is no
/// `ip nsnet`.
fn legacy_user_rules() -> Result<Option<Vec<String>>, FirewallError> {
    let Some(text) = list_table("ip")? else {
        return Ok(None);
    };
    let mut lines = text.lines().map(str::trim);
    let in_chain = lines
        .by_ref()
        .any(|l| l == format!("chain {USER_CHAIN} {{"));
    let rules = if in_chain {
        lines
            .take_while(|l| *l != "}")
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else {
        vec![]
    };
    Ok(Some(rules))
}

/// Whether an older nsnet's `ip nsnet` serves the networks (there is no `inet nsnet`).
fn legacy_in_use() -> bool {
    !table_exists(TABLE) && table_exists(LEGACY_TABLE)
}

/// Run `nft ARGS` and return its stdout.
fn nft(args: &[&str]) -> Result<String, FirewallError> {
    let out = Command::new("nft")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map_err(|error| FirewallError::Spawn {
            tool: "nft",
            package: "nftables",
            error,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The endpoint and port rules of `rules` whose elements are not all in `inet nsnet` (or an older nsnet's
/// `ip nsnet`; other rules are not checked). One listing of the table, read as JSON.
pub fn missing(rules: &[Rule]) -> Result<Vec<Rule>, FirewallError> {
    let mut text = nft(&["-j", "list", "table", "inet", "nsnet"])?;
    if text.trim().is_empty() {
        text = nft(&["-j", "list", "table", "ip", "nsnet"])?;
    }
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut elements: Vec<(String, serde_json::Value)> = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for kind in ["set", "map"] {
            let set = &item[kind];
            if let Some(name) = set["name"].as_str() {
                for e in set["elem"].as_array().into_iter().flatten() {
                    elements.push((name.to_string(), e.clone()));
                }
            }
        }
    }
    let has = |set: &str, e: serde_json::Value| elements.iter().any(|(s, v)| s == set && *v == e);
    Ok(rules
        .iter()
        .filter(|r| match r {
            // Its IPv4 element, and one per IPv6 address (link-local and global).
            Rule::Endpoint {
                host_interface,
                address,
                ipv6,
            } => {
                address.is_some_and(|a| {
                    !has(
                        "endpoints",
                        serde_json::json!({"concat": [host_interface, a.to_string()]}),
                    )
                }) || ipv6.iter().any(|a| {
                    !has(
                        "endpoints6",
                        serde_json::json!({"concat": [host_interface, a.to_string()]}),
                    )
                })
            }
            Rule::Port { mapping, target } => mapping.pairs().any(|(host, container)| {
                let to = serde_json::json!({"concat": [target.to_string(), container]});
                let proto = mapping.protocol.to_string();
                let (plain, keyed) = match target {
                    std::net::IpAddr::V4(_) => ("ports", "ports_ip"),
                    std::net::IpAddr::V6(_) => ("ports6", "ports6_ip"),
                };
                match mapping.host_ip.filter(|ip| !ip.is_unspecified()) {
                    None => !has(plain, serde_json::json!([{"concat": [proto, host]}, to])),
                    Some(ip) => !has(
                        keyed,
                        serde_json::json!([{"concat": [ip.to_string(), proto, host]}, to]),
                    ),
                }
            }),
            Rule::VxlanMember { underlay, port } => !has(
                "vxlan_members",
                serde_json::json!({"concat": [underlay.to_string(), port]}),
            ),
            Rule::VxlanPort { port } => !has("vxlan_ports", serde_json::json!(port)),
            _ => false,
        })
        .cloned()
        .collect())
}

/// Base chains of other tables on the forward hook whose policy is drop (an iptables-nft `FORWARD -P DROP`,
/// a hand-written nft firewall): forwarded sandbox traffic dies there whatever nsnet's own chains say.
pub fn forward_drop_chains() -> Result<Vec<HostChain>, FirewallError> {
    Ok(forward_chains()?
        .into_iter()
        .filter_map(|(chain, drop)| drop.then_some(chain))
        .collect())
}

/// Base chains of other tables on the forward hook (families ip, ip6 and inet), each with whether its policy
/// is drop.
pub fn forward_chains() -> Result<Vec<(HostChain, bool)>, FirewallError> {
    let text = nft(&["-j", "list", "chains"])?;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let chains = json["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    Ok(chains
        .iter()
        .filter_map(|item| {
            let c = &item["chain"];
            let family = c["family"].as_str()?;
            let table = c["table"].as_str()?;
            let ours = table == "nsnet" && matches!(family, "inet" | "ip" | "bridge");
            let forward = c["hook"] == "forward" && matches!(family, "ip" | "ip6" | "inet");
            let name = c["name"].as_str()?;
            let chain = HostChain {
                family: family.into(),
                table: table.into(),
                chain: name.into(),
            };
            (forward && !ours).then_some((chain, c["policy"] == "drop"))
        })
        .collect())
}

/// The handles of nsnet's rules in the host chains a batch touches.
fn host_handles(batch: &Batch) -> Result<HostHandles, FirewallError> {
    let mut out: HostHandles = Vec::new();
    for change in &batch.0 {
        let (Change::Add(Rule::HostAccept { chain, interface })
        | Change::Delete(Rule::HostAccept { chain, interface })) = change
        else {
            continue;
        };
        let text = nft(&[
            "-j",
            "-a",
            "list",
            "chain",
            &chain.family,
            &chain.table,
            &chain.chain,
        ])?;
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let tag = host_tag(interface);
        let handles = json["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(|item| item["rule"]["comment"] == tag.as_str())
            .filter_map(|item| item["rule"]["handle"].as_u64())
            .collect();
        out.push(((chain.clone(), interface.clone()), handles));
    }
    Ok(out)
}

/// Apply an element batch over netlink; `None` when the kernel cannot (the `nft` tool does it instead).
fn apply_netlink(batch: &Batch, legacy: bool) -> Option<Result<(), FirewallError>> {
    let deletes_only = batch.0.iter().all(|c| matches!(c, Change::Delete(_)));
    match super::nft_netlink::apply(batch, legacy) {
        Ok(()) => Some(Ok(())),
        // No `inet nsnet`: an older nsnet's `ip nsnet` still serves the networks until a reset migrates it
        // (recovering a command of that nsnet, or one before the next reset).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !legacy && legacy_in_use() => {
            apply_netlink(batch, true)
        }
        // Nothing left to delete from: the table or set is already gone.
        Err(e) if deletes_only && e.raw_os_error() == Some(libc::ENOENT) => Some(Ok(())),
        // A kernel without NFT_MSG_DESTROYSETELEM (before 6.3): the nft tool does the same.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            None
        }
        Err(e) => Some(Err(FirewallError::Refused {
            tool: "nf_tables",
            message: e.to_string(),
        })),
    }
}

/// The user rule an `nft -f` failure points at (its message starts `/dev/stdin:LINE:...`), when the script
/// carried it over from `ip nsnet user`.
fn failing_user_rule<'a>(script: &str, message: &str, rules: &'a [String]) -> Option<&'a String> {
    let line: usize = message.split(':').find_map(|p| p.trim().parse().ok())?;
    let text = script.lines().nth(line.checked_sub(1)?)?;
    let rule = text.strip_prefix(&format!("add rule {TABLE} {USER_CHAIN} "))?;
    rules.iter().find(|r| *r == rule)
}

/// Apply a batch in one `nft -f -` transaction: all of it, or none of it.
pub fn apply(batch: &Batch) -> Result<(), FirewallError> {
    if batch.is_empty() {
        return Ok(());
    }
    // Endpoints and published ports: straight over netlink, no process, no set dump.
    if super::nft_netlink::handles(batch) {
        if let Some(done) = apply_netlink(batch, false) {
            return done;
        }
    }
    // A reset migrates an older nsnet's `ip nsnet` in the same transaction.
    let resets = batch.0.iter().any(|c| {
        matches!(
            c,
            Change::Add(Rule::Tables(_)) | Change::Delete(Rule::Tables(_))
        )
    });
    let legacy = match resets.then(legacy_user_rules).transpose()?.flatten() {
        Some(rules) => Legacy::Migrate(rules),
        None => Legacy::None,
    };
    let handles = host_handles(batch)?;
    let script = render_with(batch, &handles, &legacy);
    match super::run_tool("nft", &["-f", "-"], Some(&script)) {
        Ok(_) => Ok(()),
        Err(FirewallError::Refused { tool, message }) => {
            if let Legacy::Migrate(rules) = &legacy {
                if let Some(rule) = failing_user_rule(&script, &message, rules) {
                    return Err(FirewallError::Refused {
                        tool,
                        message: format!(
                            "your rule `{rule}` in {LEGACY_TABLE} {USER_CHAIN} does not load into {TABLE}                              {USER_CHAIN}, where nsnet moves it now ({message}); change or delete it there,                              then run the command again"
                        ),
                    });
                }
            }
            if !resets && legacy_in_use() {
                let script = render_with(batch, &handles, &Legacy::Elements);
                return super::run_tool("nft", &["-f", "-"], Some(&script)).map(|_| ());
            }
            // Someone removed nsnet's tables (`nft flush ruleset`): what was to be deleted is gone already,
            // and what was to be added needs the tables back first.
            if tables_exist() {
                return Err(FirewallError::Refused { tool, message });
            }
            if batch.0.iter().all(|c| matches!(c, Change::Delete(_))) {
                Ok(())
            } else {
                Err(FirewallError::Refused {
                    tool,
                    message: format!(
                        "{message} (nsnet's tables are gone: was the ruleset flushed? `nsnet firewall reload` \
                         restores them)"
                    ),
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether a table (`family name`) is there.
fn table_exists(table: &str) -> bool {
    let (family, name) = table.split_once(' ').unwrap_or((table, ""));
    !nft(&["-t", "list", "table", family, name])
        .unwrap_or_default()
        .trim()
        .is_empty()
}

/// Whether both of nsnet's tables are there (the main one as `inet nsnet` or an older nsnet's `ip nsnet`).
fn tables_exist() -> bool {
    (table_exists(TABLE) || table_exists(LEGACY_TABLE)) && table_exists(BRIDGE_TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{PortMapping, Proto};
    use std::net::Ipv4Addr;

    fn masq() -> Rule {
        Rule::Masquerade {
            subnet: "10.89.0.0/24".parse().unwrap(),
            interface: "nsnet0".into(),
        }
    }

    fn port(host_ip: Option<Ipv4Addr>, count: u16) -> Rule {
        Rule::Port {
            mapping: PortMapping {
                host_ip: host_ip.map(Into::into),
                host_port: 8088,
                container_port: 80,
                count,
                protocol: Proto::Tcp,
            },
            target: Ipv4Addr::new(10, 89, 0, 2).into(),
        }
    }

    #[test]
    fn adds_are_elements() {
        let mut b = Batch::default();
        b.add(masq());
        b.add(port(None, 1));
        b.add(port(Some(Ipv4Addr::new(10, 0, 1, 48)), 1));
        b.add(Rule::Isolate {
            from: "a".into(),
            to: "b".into(),
        });
        assert_eq!(
            render(&b),
            "add element inet nsnet masq_nets { 10.89.0.0/24 }\n\
             add element inet nsnet own_nets { \"nsnet0\" . 10.89.0.0/24 }\n\
             add element inet nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }\n\
             add element inet nsnet ports_ip { 10.0.1.48 . tcp . 8088 : 10.89.0.2 . 80 }\n\
             add element inet nsnet isolation { \"a\" . \"b\" }\n"
        );
    }

    #[test]
    fn a_range_is_one_element_per_port() {
        let mut b = Batch::default();
        b.add(port(None, 3));
        let text = render(&b);
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("add element inet nsnet ports { tcp . 8090 : 10.89.0.2 . 82 }\n"));
    }

    #[test]
    fn endpoints_are_guarded_in_both_tables() {
        let mut b = Batch::default();
        b.add(Rule::Endpoint {
            host_interface: "veth1".into(),
            address: Some(Ipv4Addr::new(10, 89, 0, 2)),
            ipv6: vec![],
        });
        let text = render(&b);
        assert!(text.contains("add element inet nsnet endpoints { \"veth1\" . 10.89.0.2 }"));
        assert!(text.contains("add element bridge nsnet endpoints { \"veth1\" . 10.89.0.2 }"));
    }

    #[test]
    fn deletes_are_idempotent_and_keyed() {
        let mut b = Batch::default();
        b.delete(port(None, 1));
        assert_eq!(
            render(&b),
            "add element inet nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }\n\
             delete element inet nsnet ports { tcp . 8088 }\n"
        );
    }

    #[test]
    fn reset_never_flushes_the_user_chain() {
        let mut b = Batch::default();
        b.add(Rule::Tables(Tables {
            keep_user_chain: false,
            owner: "nsnet:/var/lib/nsnet".into(),
        }));
        let text = render(&b);
        assert!(text.starts_with(
            "table inet nsnet { comment \"nsnet:/var/lib/nsnet: managed by nsnet, everything but chain user is \
             rewritten\"; }"
        ));
        assert!(!text.contains("flush chain inet nsnet user"));
        assert!(!text.contains("delete table"));
        let keep = render(&Batch(vec![Change::Delete(Rule::Tables(Tables {
            keep_user_chain: true,
            owner: String::new(),
        }))]));
        assert!(
            !keep.contains("delete table inet nsnet")
                && !keep.contains("delete chain inet nsnet user")
        );
        let all = render(&Batch(vec![Change::Delete(Rule::Tables(Tables {
            keep_user_chain: false,
            owner: String::new(),
        }))]));
        assert!(
            all.contains("delete table inet nsnet") && all.contains("delete table bridge nsnet")
        );
    }

    #[test]
    fn a_reset_migrates_the_legacy_table_with_the_users_rules() {
        let reset = Batch(vec![Change::Add(Rule::Tables(Tables {
            keep_user_chain: true,
            owner: String::new(),
        }))]);
        let rules = vec!["ip saddr 10.0.1.26 tcp dport 80 drop".to_string()];
        let text = render_with(&reset, &Vec::new(), &Legacy::Migrate(rules.clone()));
        let (declare, carried, gone) = (
            text.find("table inet nsnet {\n").unwrap(),
            text.find("add rule inet nsnet user ip saddr 10.0.1.26 tcp dport 80 drop\n")
                .unwrap(),
            text.find("delete table ip nsnet\n").unwrap(),
        );
        assert!(declare < carried && carried < gone && text.ends_with("delete table ip nsnet\n"));
        // The failing line an nft error names maps back to the user's rule, and only to it.
        let line = text
            .lines()
            .position(|l| l.starts_with("add rule inet nsnet user"))
            .unwrap()
            + 1;
        let message =
            format!("/dev/stdin:{line}:31-34: Error: Could not process rule: No such file");
        assert_eq!(failing_user_rule(&text, &message, &rules), Some(&rules[0]));
        assert_eq!(
            failing_user_rule(&text, "/dev/stdin:1:1: Error: x", &rules),
            None
        );
        // The last network going takes the legacy table along too; its elements are deleted there first.
        let all = render_with(
            &Batch(vec![
                Change::Delete(port(None, 1)),
                Change::Delete(Rule::Tables(Tables {
                    keep_user_chain: false,
                    owner: String::new(),
                })),
            ]),
            &Vec::new(),
            &Legacy::Migrate(vec![]),
        );
        assert!(all.starts_with("add element ip nsnet ports"));
        assert!(all.ends_with("delete table ip nsnet\n"));
        // Elements go to the legacy table while it still serves the networks.
        let mut b = Batch::default();
        b.add(port(None, 1));
        assert_eq!(
            render_with(&b, &Vec::new(), &Legacy::Elements),
            "add element ip nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }\n"
        );
    }

    #[test]
    fn per_family_rules_state_their_family() {
        // nft adds no `meta nfproto` to `dnat ip` in an inet table: the rule must say it.
        assert!(RULES
            .iter()
            .filter(|(_, _, r)| r.contains("dnat ip to"))
            .all(|(_, _, r)| r.starts_with("meta nfproto ipv4 ")));
    }

    #[test]
    fn inverse_reverses() {
        let mut b = Batch::default();
        let tables = Rule::Tables(Tables {
            keep_user_chain: true,
            owner: String::new(),
        });
        b.add(tables.clone());
        b.add(masq());
        assert_eq!(
            b.inverse().0,
            vec![Change::Delete(masq()), Change::Delete(tables)]
        );
    }
}
