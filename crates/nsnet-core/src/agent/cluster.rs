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
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
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
}

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
        Ok(())
    }

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

    /// Every other host of network `name`, as this host programs it.
    pub fn peers(&self, name: &str, me: &str) -> Vec<Peer> {
        self.leases(name)
            .into_iter()
            .filter(|(_, v)| v.host != me)
            .map(|(subnet, v)| Peer {
                subnet,
                underlay: v.underlay,
                vtep_mac: v.vtep_mac,
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
        }
    }

    fn lease(host: &str, ip: [u8; 4]) -> Vec<u8> {
        serde_json::to_vec(&LeaseValue {
            host: host.into(),
            hostname: String::new(),
            underlay: Ipv4Addr::from(ip),
            vtep_mac: Some(Mac([0x0e, 0x6e, 0, 0, 0, ip[3]])),
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
        let peers = view.peers("pods", "a");
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
