//! What the cluster keeps in etcd, as plain data, and the pure decisions made from it (which subnet a host
//! takes, who its peers are). Nothing here talks to etcd or the kernel, so it is all unit-tested.
//!
//! Keys, under [`PREFIX`]:
//! - `networks/NAME`: the overlay network's settings ([`NetworkSpec`]), written once by `network create`;
//! - `leases/NAME/A.B.C.D-LEN`: a host's subnet ([`LeaseValue`]), attached to the host's etcd lease, so it
//!   goes when the host stops renewing;
//! - `owners/NAME/A.B.C.D-LEN`: the host id that last held the subnet, with no lease: a host that comes back
//!   gets its old subnet if nobody took it, and others take never-used subnets before someone's old one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::model::{Mac, OverlayBackend, Peer};

/// Every key nsnet keeps in etcd starts with this.
pub const PREFIX: &str = "/nsnet/";

/// The VXLAN port when none is given: IANA's (RFC 7348), not Linux's historical 8472.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// An overlay network's settings, as `nsnet network create --driver overlay` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// The cluster subnet: every host's block comes out of it.
    pub subnet: Ipv4Net,
    /// The prefix length of each host's block.
    pub host_subnet_len: u8,
    pub backend: OverlayBackend,
    pub vni: u32,
    pub port: u16,
    /// The MTU of sandboxes' interfaces; when absent each host derives it from its underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Dual stack: the cluster's IPv6 prefix (flannel's `IPv6Network`). Host `n`'s IPv6 block is block `n`
    /// of it, `n` being its IPv4 block's index in `subnet` ([`NetworkSpec::block6`]). Absent (and left out
    /// of the JSON) on an IPv4-only network, whose settings read and write as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The prefix length of each host's IPv6 block (64 by default); set exactly when `subnet6` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_subnet6_len: Option<u8>,
    /// Masquerade IPv6 leaving the cluster (NAT66, the default, as on a single-host dual-stack network);
    /// `--ipv6-nat=false` for routed global prefixes.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ipv6_nat: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The host block length of an IPv6 cluster prefix when none is given: a /64 per host, as flannel's default.
pub const DEFAULT_HOST_SUBNET6_LEN: u8 = 64;

impl NetworkSpec {
    /// Check the settings; the error says what is wrong and what to give instead.
    pub fn validate(&self) -> Result<(), String> {
        crate::names::check_name("network", &self.name)?;
        let len = self.host_subnet_len;
        if !(self.subnet.prefix_len() < len && len <= 30) {
            return Err(format!(
                "--host-subnet-len {len} does not fit the cluster subnet {}: give a length longer than {} \
                 and at most 30",
                self.subnet,
                self.subnet.prefix_len()
            ));
        }
        if self.subnet.network() != self.subnet.addr() {
            return Err(format!(
                "{} is not a subnet's first address; use {}",
                self.subnet,
                self.subnet.trunc()
            ));
        }
        if !(1..=16_777_215).contains(&self.vni) {
            return Err(format!(
                "VNI {} is out of range; use 1 to 16777215",
                self.vni
            ));
        }
        if self.port == 0 {
            return Err("--vxlan-port 0 is not a port; use 1 to 65535 (default 4789)".into());
        }
        if let Some(m) = self.mtu {
            if !(68..=65535).contains(&m) {
                return Err(format!("--mtu {m} is out of range; use 68 to 65535"));
            }
        }
        self.validate6()
    }

    /// The IPv6 part of [`NetworkSpec::validate`]: every IPv4 block must have an IPv6 block of its own.
    fn validate6(&self) -> Result<(), String> {
        let (net6, len6) = match (self.subnet6, self.host_subnet6_len) {
            (None, None) => return Ok(()),
            (Some(net6), Some(len6)) => (net6, len6),
            (None, Some(len6)) => {
                return Err(format!(
                    "--host-subnet6-len {len6} needs an IPv6 --subnet, the cluster's IPv6 prefix"
                ))
            }
            // Only settings written into etcd by hand get here: the CLI always gives both.
            (Some(net6), None) => {
                return Err(format!(
                    "the IPv6 cluster prefix {net6} has no host_subnet6_len; set it (nsnet's default is \
                     {DEFAULT_HOST_SUBNET6_LEN})"
                ))
            }
        };
        // A sandbox's block is a /48 to /120, as on a single-host network.
        if !(net6.prefix_len() < len6 && (48..=120).contains(&len6)) {
            return Err(format!(
                "--host-subnet6-len {len6} does not fit the IPv6 cluster prefix {net6}: give a length longer \
                 than {} and from 48 to 120 (default {DEFAULT_HOST_SUBNET6_LEN})",
                net6.prefix_len()
            ));
        }
        if net6.network() != net6.addr() {
            return Err(format!(
                "{net6} is not a prefix's first address; use {}",
                net6.trunc()
            ));
        }
        let bits4 = self.host_subnet_len - self.subnet.prefix_len();
        let bits6 = len6 - net6.prefix_len();
        if bits6 < bits4 {
            return Err(format!(
                "the IPv6 cluster prefix {net6} has {} /{len6} blocks, fewer than the {} /{} blocks of {}: every \
                 host needs one of each; give a shorter IPv6 prefix (at most /{}) or a longer --host-subnet6-len",
                blocks(bits6),
                blocks(bits4),
                self.host_subnet_len,
                self.subnet,
                u32::from(len6).saturating_sub(u32::from(bits4))
            ));
        }
        Ok(())
    }

    /// The IPv6 block that goes with IPv4 block `block` (a host leases both as one): block `n` of the IPv6
    /// prefix for block `n` of the IPv4 subnet. A lease is created for the IPv4 block, so IPv6 blocks are as
    /// unique as IPv4 ones, with no second key to race for. `None` on an IPv4-only network, or for a block
    /// not of this network.
    pub fn block6(&self, block: Ipv4Net) -> Option<Ipv6Net> {
        let (net6, len6) = (self.subnet6?, self.host_subnet6_len?);
        if !self.subnet.contains(&block) || block.prefix_len() != self.host_subnet_len {
            return None;
        }
        let index = (u32::from(block.network()) - u32::from(self.subnet.network()))
            >> (32 - u32::from(self.host_subnet_len));
        let offset = u128::from(index).checked_shl(128 - u32::from(len6))?;
        Ipv6Net::new(Ipv6Addr::from(u128::from(net6.network()) + offset), len6).ok()
    }
}

/// `2^bits`, as people read a count of blocks.
fn blocks(bits: u8) -> String {
    1u128
        .checked_shl(u32::from(bits))
        .map_or_else(|| format!("2^{bits}"), |n| n.to_string())
}

impl NetworkSpec {
    /// Every host block of the cluster subnet, in order.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.subnet
            .subnets(self.host_subnet_len)
            .into_iter()
            .flatten()
    }
}

/// What a host publishes with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The host's id ([`crate::store::Store::host_id`]).
    pub host: String,
    /// Its name, for people reading `network inspect`.
    #[serde(default)]
    pub hostname: String,
    /// Where its VXLAN packets (or host-gw routes) go.
    pub underlay: Ipv4Addr,
    /// Its VTEP MAC (vxlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
    /// Its IPv6 block, on a dual-stack network ([`NetworkSpec::block6`] of its IPv4 block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// host-gw on a dual-stack network: its underlay interface's MAC (see [`Peer::underlay_mac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mac: Option<Mac>,
}

/// The network settings key.
pub fn network_key(name: &str) -> String {
    format!("{PREFIX}networks/{name}")
}

/// The key of `subnet`'s lease in network `name`.
pub fn lease_key(name: &str, subnet: Ipv4Net) -> String {
    format!("{PREFIX}leases/{name}/{}", block_name(subnet))
}

/// The key of `subnet`'s last holder in network `name`.
pub fn owner_key(name: &str, subnet: Ipv4Net) -> String {
    format!("{PREFIX}owners/{name}/{}", block_name(subnet))
}

/// Every key of network `name`, to delete it: (prefix, …).
pub fn network_prefixes(name: &str) -> [String; 2] {
    [
        format!("{PREFIX}leases/{name}/"),
        format!("{PREFIX}owners/{name}/"),
    ]
}

/// `10.244.3.0/24` as a key part: `10.244.3.0-24` (no slash, which would read as a path).
fn block_name(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

fn parse_block(s: &str) -> Option<Ipv4Net> {
    let (ip, len) = s.split_once('-')?;
    Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()
}

/// A consistent copy of everything under [`PREFIX`]: key → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub keys: BTreeMap<String, Vec<u8>>,
}

impl View {
    /// The view of a listing.
    pub fn of(kvs: Vec<crate::etcd::Kv>) -> View {
        View {
            keys: kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        }
    }

    /// The overlay networks, skipping (and naming) any value that does not parse.
    pub fn networks(&self) -> (Vec<NetworkSpec>, Vec<String>) {
        let mut nets = Vec::new();
        let mut bad = Vec::new();
        let prefix = format!("{PREFIX}networks/");
        for (key, value) in self.keys.range(prefix.clone()..) {
            let Some(name) = key.strip_prefix(&prefix) else {
                break;
            };
            match serde_json::from_slice::<NetworkSpec>(value) {
                Ok(spec) if spec.name == name && spec.validate().is_ok() => nets.push(spec),
                _ => bad.push(key.clone()),
            }
        }
        (nets, bad)
    }

    /// The leases of network `name`: subnet → what its holder published.
    pub fn leases(&self, name: &str) -> BTreeMap<Ipv4Net, LeaseValue> {
        self.blocks(&format!("{PREFIX}leases/{name}/"))
            .filter_map(|(subnet, v)| Some((subnet, serde_json::from_slice(v).ok()?)))
            .collect()
    }

    /// The last holder of each subnet of network `name` that had one.
    pub fn owners(&self, name: &str) -> BTreeMap<Ipv4Net, String> {
        self.blocks(&format!("{PREFIX}owners/{name}/"))
            .map(|(subnet, v)| (subnet, String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn blocks<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (Ipv4Net, &'a Vec<u8>)> + 'a {
        self.keys
            .range(prefix.to_string()..)
            .map_while(move |(k, v)| Some((k.strip_prefix(prefix)?, v)))
            .filter_map(|(block, v)| Some((parse_block(block)?, v)))
    }

    /// The subnet host `me` holds in network `name`, if it holds one.
    pub fn held_by(&self, name: &str, me: &str) -> Option<(Ipv4Net, LeaseValue)> {
        self.leases(name).into_iter().find(|(_, v)| v.host == me)
    }

    /// Every other host of network `spec`, as this host programs it. An IPv6 block is taken only when it is
    /// the one that goes with the host's IPv4 block ([`NetworkSpec::block6`]): a host cannot claim another's.
    pub fn peers(&self, spec: &NetworkSpec, me: &str) -> Vec<Peer> {
        self.leases(&spec.name)
            .into_iter()
            .filter(|(_, v)| v.host != me)
            .map(|(subnet, v)| {
                let subnet6 = v.subnet6.filter(|s| Some(*s) == spec.block6(subnet));
                Peer {
                    subnet,
                    underlay: v.underlay,
                    vtep_mac: v.vtep_mac,
                    subnet6,
                    underlay_mac: v.underlay_mac.filter(|_| subnet6.is_some()),
                }
            })
            .collect()
    }
}

/// The subnets host `me` should try for, best first: the one it remembers (its local record), then those it
/// held before, then never-used ones, then others' old ones; none that is leased now. Empty: the cluster
/// subnet is full.
pub fn candidates(
    spec: &NetworkSpec,
    view: &View,
    me: &str,
    remembered: Option<Ipv4Net>,
) -> Vec<Ipv4Net> {
    let leases = view.leases(&spec.name);
    let owners = view.owners(&spec.name);
    let free = |s: &Ipv4Net| !leases.contains_key(s);
    let mut out: Vec<Ipv4Net> = remembered
        .filter(|s| spec.subnet.contains(s) && s.prefix_len() == spec.host_subnet_len && free(s))
        .into_iter()
        .collect();
    out.extend(
        owners
            .iter()
            .filter(|(s, o)| *o == me && free(s))
            .map(|(s, _)| *s),
    );
    // A block of a handful of first ones is enough: a create race loser tries the next.
    out.extend(
        spec.blocks()
            .filter(|s| free(s) && !owners.contains_key(s))
            .take(8),
    );
    out.extend(
        owners
            .iter()
            .filter(|(s, o)| *o != me && free(s))
            .map(|(s, _)| *s),
    );
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|s| seen.insert(*s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            name: "pods".into(),
            subnet: "10.244.0.0/22".parse().unwrap(),
            host_subnet_len: 24,
            backend: OverlayBackend::Vxlan,
            vni: 1,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
            subnet6: None,
            host_subnet6_len: None,
            ipv6_nat: true,
        }
    }

    fn lease(host: &str, ip: [u8; 4]) -> Vec<u8> {
        serde_json::to_vec(&LeaseValue {
            host: host.into(),
            hostname: String::new(),
            underlay: Ipv4Addr::from(ip),
            vtep_mac: Some(Mac([0x0e, 0x6e, 0, 0, 0, ip[3]])),
            subnet6: None,
            underlay_mac: None,
        })
        .unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn settings_are_checked() {
        assert!(spec().validate().is_ok());
        let bad = |f: fn(&mut NetworkSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(bad(|s| s.host_subnet_len = 22).contains("host-subnet-len"));
        assert!(bad(|s| s.host_subnet_len = 31).contains("at most 30"));
        assert!(bad(|s| s.vni = 0).contains("VNI"));
        assert!(bad(|s| s.vni = 1 << 24).contains("VNI"));
        assert!(bad(|s| s.port = 0).contains("port"));
        assert!(bad(|s| s.mtu = Some(20)).contains("mtu"));
        assert!(bad(|s| s.subnet = net("10.244.1.0/22")).contains("10.244.0.0/22"));
        assert!(bad(|s| s.name = "a/b".into()).contains("a/b"));
    }

    fn spec6() -> NetworkSpec {
        NetworkSpec {
            subnet: net("10.244.0.0/16"),
            subnet6: Some("fd00:10:244::/56".parse().unwrap()),
            host_subnet6_len: Some(DEFAULT_HOST_SUBNET6_LEN),
            ..spec()
        }
    }

    #[test]
    fn dual_stack_settings_are_checked() {
        assert!(spec6().validate().is_ok());
        let bad = |f: fn(&mut NetworkSpec)| {
            let mut s = spec6();
            f(&mut s);
            s.validate().unwrap_err()
        };
        // An IPv6 prefix no longer than the block it is to be cut into.
        assert!(
            bad(|s| s.subnet6 = Some("fd00:10:244::/64".parse().unwrap()))
                .contains("--host-subnet6-len 64 does not fit")
        );
        assert!(bad(|s| s.host_subnet6_len = Some(121)).contains("from 48 to 120"));
        // 256 IPv4 blocks, 16 IPv6 ones.
        let few = bad(|s| s.subnet6 = Some("fd00:10:244::/60".parse().unwrap()));
        assert!(
            few.contains("16 /64 blocks, fewer than the 256 /24 blocks")
                && few.contains("at most /56"),
            "{few}"
        );
        assert!(
            bad(|s| s.subnet6 = Some("fd00:10:244::1/56".parse().unwrap()))
                .contains("fd00:10:244::/56")
        );
        let no_prefix = bad(|s| s.subnet6 = None);
        assert!(no_prefix.contains("needs an IPv6 --subnet"), "{no_prefix}");
        // Settings written by hand with a prefix and no block length: refused, not run as IPv4 only.
        let no_len = bad(|s| s.host_subnet6_len = None);
        assert!(no_len.contains("has no host_subnet6_len"), "{no_len}");
        // Messages are one line with single spaces (a string continued without `\` keeps the indent).
        for m in [few, no_len] {
            assert!(!m.contains("  "), "{m:?}");
        }
    }

    #[test]
    fn each_ipv4_block_has_the_ipv6_block_of_the_same_number() {
        let s = spec6();
        let b6 = |b: &str| s.block6(net(b)).map(|n| n.to_string());
        assert_eq!(b6("10.244.0.0/24").as_deref(), Some("fd00:10:244::/64"));
        assert_eq!(b6("10.244.3.0/24").as_deref(), Some("fd00:10:244:3::/64"));
        assert_eq!(
            b6("10.244.255.0/24").as_deref(),
            Some("fd00:10:244:ff::/64")
        );
        assert_eq!(b6("10.245.0.0/24"), None, "not a block of the network");
        assert_eq!(b6("10.244.0.0/25"), None, "not a block's length");
        assert_eq!(spec().block6(net("10.244.1.0/24")), None, "IPv4 only");
        let mut small = spec6();
        small.host_subnet6_len = Some(120);
        assert_eq!(
            small
                .block6(net("10.244.2.0/24"))
                .map(|n| n.to_string())
                .as_deref(),
            Some("fd00:10:244::200/120")
        );
    }

    #[test]
    fn ipv4_only_settings_and_leases_read_and_write_as_before() {
        // What an IPv4-only nsnet wrote, byte for byte, and reads back.
        let old = r#"{"name":"pods","subnet":"10.244.0.0/22","host_subnet_len":24,"backend":"vxlan","vni":1,"port":4789}"#;
        assert_eq!(serde_json::to_string(&spec()).unwrap(), old);
        assert_eq!(serde_json::from_str::<NetworkSpec>(old).unwrap(), spec());
        let lease = r#"{"host":"a","hostname":"","underlay":"192.168.200.11","vtep_mac":"0e:6e:00:00:00:0b"}"#;
        let v: LeaseValue = serde_json::from_str(lease).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), lease);
        assert_eq!(v.subnet6, None);
        let dual = serde_json::to_string(&spec6()).unwrap();
        assert!(
            dual.ends_with(r#""subnet6":"fd00:10:244::/56","host_subnet6_len":64}"#),
            "{dual}"
        );
        let mut no_nat = spec6();
        no_nat.ipv6_nat = false;
        assert!(serde_json::to_string(&no_nat)
            .unwrap()
            .contains(r#""ipv6_nat":false"#));
    }

    #[test]
    fn a_peer_s_ipv6_block_is_taken_only_when_it_goes_with_its_ipv4_block() {
        let s = spec6();
        let mut view = View::default();
        let put = |view: &mut View, host: &str, block: &str, six: &str, last: u8| {
            let value = LeaseValue {
                host: host.into(),
                hostname: String::new(),
                underlay: Ipv4Addr::new(192, 168, 200, last),
                vtep_mac: Some(Mac([0x0e, 0x6e, 0, 0, 0, last])),
                subnet6: six.parse().ok(),
                underlay_mac: Some(Mac([2, 0, 0, 0, 0, last])),
            };
            view.keys.insert(
                lease_key("pods", net(block)),
                serde_json::to_vec(&value).unwrap(),
            );
        };
        put(&mut view, "b", "10.244.2.0/24", "fd00:10:244:2::/64", 12);
        // Claims host b's IPv6 block for its own IPv4 block.
        put(&mut view, "c", "10.244.3.0/24", "fd00:10:244:2::/64", 13);
        // An older agent: no IPv6 block.
        put(&mut view, "d", "10.244.4.0/24", "none", 14);
        let peers = view.peers(&s, "a");
        let six: Vec<Option<String>> = peers
            .iter()
            .map(|p| p.subnet6.map(|n| n.to_string()))
            .collect();
        assert_eq!(six, vec![Some("fd00:10:244:2::/64".into()), None, None]);
        assert!(peers[0].underlay_mac.is_some() && peers[1].underlay_mac.is_none());
    }

    #[test]
    fn keys_round_trip() {
        let mut view = View::default();
        view.keys.insert(
            lease_key("pods", net("10.244.1.0/24")),
            lease("a", [192, 168, 200, 11]),
        );
        view.keys.insert(
            lease_key("pods", net("10.244.2.0/24")),
            lease("b", [192, 168, 200, 12]),
        );
        view.keys.insert(
            lease_key("podsx", net("10.9.0.0/24")),
            lease("c", [192, 168, 200, 13]),
        );
        view.keys
            .insert(owner_key("pods", net("10.244.0.0/24")), b"c".to_vec());
        view.keys
            .insert(network_key("pods"), serde_json::to_vec(&spec()).unwrap());
        view.keys.insert(network_key("broken"), b"{".to_vec());
        let (nets, bad) = view.networks();
        assert_eq!(nets, vec![spec()]);
        assert_eq!(bad, vec![network_key("broken")]);
        assert_eq!(
            view.leases("pods").len(),
            2,
            "another network's lease is not this one's"
        );
        assert_eq!(
            view.held_by("pods", "b").map(|l| l.0),
            Some(net("10.244.2.0/24"))
        );
        let peers = view.peers(&spec(), "a");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].underlay, Ipv4Addr::new(192, 168, 200, 12));
        assert_eq!(
            view.owners("pods")
                .get(&net("10.244.0.0/24"))
                .map(String::as_str),
            Some("c")
        );
    }

    #[test]
    fn a_host_gets_back_what_it_had_and_others_take_fresh_blocks_first() {
        let s = spec();
        let mut view = View::default();
        view.keys.insert(
            lease_key("pods", net("10.244.1.0/24")),
            lease("a", [192, 168, 200, 11]),
        );
        view.keys
            .insert(owner_key("pods", net("10.244.0.0/24")), b"gone".to_vec());
        view.keys
            .insert(owner_key("pods", net("10.244.2.0/24")), b"me".to_vec());
        // Its own old block first, then never-used ones, then someone else's old one; never a leased one.
        assert_eq!(
            candidates(&s, &view, "me", None),
            vec![
                net("10.244.2.0/24"),
                net("10.244.3.0/24"),
                net("10.244.0.0/24")
            ]
        );
        // What it remembers locally comes first, when free.
        assert_eq!(
            candidates(&s, &view, "me", Some(net("10.244.3.0/24")))[0],
            net("10.244.3.0/24")
        );
        assert_eq!(
            candidates(&s, &view, "me", Some(net("10.244.1.0/24")))[0],
            net("10.244.2.0/24"),
            "a remembered block someone else leases now is not taken"
        );
        // A full cluster subnet: nothing to try.
        for i in [0u8, 2, 3] {
            view.keys.insert(
                lease_key("pods", net(&format!("10.244.{i}.0/24"))),
                lease(&format!("h{i}"), [192, 168, 200, 20 + i]),
            );
        }
        assert!(candidates(&s, &view, "me", None).is_empty());
    }
}
