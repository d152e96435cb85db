//! Names: sandboxes find each other by name on the networks they share.
//!
//! One resolver per state dir ([`server`]), a process of its own (the nsnet binary started again with
//! [`RESOLVER_ENV`]). It answers on 127.0.0.11:53, UDP and TCP, inside each sandbox's own namespace, as Docker's
//! embedded resolver does, and not on the gateway address as aardvark-dns does. Why:
//!
//! - the socket a query arrives on says which sandbox asks, so no sandbox can ask as another, and a name on a
//!   network the asker is not on is never answered (nothing to spoof: no source address is trusted);
//! - it works whatever already listens on the host's port 53 (dnsmasq on 0.0.0.0:53, say), with no DNAT rule
//!   and nothing in the firewall at all;
//! - the resolver's own traffic upstream leaves from the host's namespace, so a host resolver on loopback is
//!   as reachable to it as to any host process.
//!
//! The cost: a socket pair per sandbox, which holds the sandbox's namespace until the resolver lets go. So a
//! removal tells the resolver first, and waits for it, before it deletes the namespace.
//!
//! **Learning of changes.** Every command tells the resolver about the sandboxes whose records it wrote, over
//! a unix socket in the state dir ([`client`]), and waits for the answer: a name answers as soon as `create`
//! returns, and is gone as soon as `rm` returns. The message carries all the resolver needs ([`Member`]), so
//! it never reads the state under a command's lock. A command that finds no resolver starts one; the resolver
//! reads the whole state when it starts, every few seconds after that (so a change it missed is made up for),
//! and stops once no sandbox is on a network with names. Nothing restarts, so no query is dropped for an update.
//!
//! **What it answers** ([`names`]): A records for the names and aliases of the sandboxes on the asker's
//! networks (several sandboxes with one alias: every address, rotated one place per answer), AAAA records for
//! their IPv6 addresses on dual-stack networks, PTR records for their addresses (`in-addr.arpa` and
//! `ip6.arpa`), an empty answer for any other type of a local name. Everything else goes upstream
//! ([`upstream`]), unless every network of the asker is `--internal` (then: NXDOMAIN).

pub mod client;
pub mod names;
pub mod server;
pub mod upstream;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{Network, Sandbox};

/// The address the resolver answers on inside every sandbox (Docker's, so tools that know it keep working).
pub const RESOLVER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The environment variable that makes `nsnet` (or `nsnet-cni`) the resolver for the state dir it names.
pub const RESOLVER_ENV: &str = "NSNET_RESOLVER";

/// The state dir a resolver was started for, when this process is one ([`RESOLVER_ENV`]).
pub fn resolver_for() -> Option<PathBuf> {
    std::env::var_os(RESOLVER_ENV).map(PathBuf::from)
}

/// A sandbox as the resolver needs it: where to listen, and its names and addresses on each network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub netns: PathBuf,
    /// The namespace's identity when attached (see [`Sandbox::netns_id`]): the resolver refuses to listen in a
    /// namespace the path names now if it is another one.
    #[serde(default)]
    pub netns_id: Option<(u64, u64)>,
    /// The sandbox's own upstream resolvers (`--dns IP`).
    #[serde(default)]
    pub servers: Vec<IpAddr>,
    /// Its endpoints on networks with names (and only those).
    pub networks: Vec<OnNetwork>,
}

/// One endpoint of a [`Member`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnNetwork {
    pub network: String,
    /// Its IPv4 address; absent on an IPv6-only network (where an A question gets no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Its global IPv6 address on a dual-stack network. Absent (and read as none) otherwise, so updates to
    /// and from a resolver of the version before IPv6 read as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The network forwards nothing upstream.
    #[serde(default)]
    pub internal: bool,
    /// The network's upstream resolvers (`network create --dns IP`).
    #[serde(default)]
    pub servers: Vec<IpAddr>,
}

impl Member {
    /// The sandbox as the resolver serves it, with the settings of its networks (`nets`; an endpoint whose
    /// network is missing there, or has no names, or is going away, is left out). `None`: nothing to serve.
    pub fn of(sb: &Sandbox, nets: &[&Network]) -> Option<Member> {
        if sb.removing {
            return None;
        }
        let networks: Vec<OnNetwork> = sb
            .endpoints
            .iter()
            .filter(|ep| !ep.removing)
            .filter_map(|ep| {
                let net = nets.iter().find(|n| n.name == ep.network && n.dns)?;
                Some(OnNetwork {
                    network: ep.network.clone(),
                    address: ep.address.map(|a| a.addr()),
                    address6: ep.ipv6.map(|v6| v6.address.addr()),
                    aliases: ep.aliases.clone(),
                    internal: net.internal,
                    servers: net.dns_servers.clone(),
                })
            })
            .collect();
        (!networks.is_empty()).then(|| Member {
            name: sb.name.clone(),
            netns: sb.netns.clone(),
            netns_id: sb.netns_id,
            servers: sb.dns_servers.clone(),
            networks,
        })
    }
}

/// What a command tells the resolver, one JSON line each; the resolver answers each with one line, `ok` or
/// the reason it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Update {
    /// Serve this sandbox as it is now (new, or changed).
    Up(Member),
    /// Forget the sandbox named (removed, or off its last network with names).
    Down(String),
}

/// Refuse an upstream resolver nothing can be sent to: not unicast, or IPv6 link-local (`fe80::/10`), whose
/// address means nothing without the interface it is on (the resolver keeps no scope).
pub fn check_servers(servers: &[IpAddr]) -> Result<(), String> {
    for bad in servers {
        let unusable = match bad {
            IpAddr::V4(ip) => ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast(),
            IpAddr::V6(ip) => ip.is_unspecified() || ip.is_multicast(),
        };
        if unusable {
            return Err(format!(
                "{bad}: not the address of a DNS server; give a unicast address like 192.0.2.53"
            ));
        }
        if let IpAddr::V6(ip) = bad {
            // Checked (and recorded) as what it is, so no IPv4 address passes in IPv6 clothes.
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Err(format!("{bad}: an IPv4-mapped address; give it as {v4}"));
            }
            if ip.segments()[0] & 0xffc0 == 0xfe80 {
                return Err(format!(
                    "{bad}: a link-local address needs an interface, which an upstream server cannot name; give a global address like 2001:db8::53"
                ));
            }
        }
    }
    Ok(())
}

/// Read one upstream server (`--dns IP`), of either family; a scoped IPv6 address (`fe80::1%eth0`) is
/// refused by name rather than as "not an address".
pub fn parse_server(text: &str) -> Result<IpAddr, String> {
    if text.contains(':') && text.contains('%') {
        return Err(format!(
            "'{text}': a scoped IPv6 address cannot name an upstream server; give a global address like 2001:db8::53"
        ));
    }
    text.parse()
        .map_err(|_| format!("'{text}' is not an IP address like 192.0.2.53 or 2001:db8::53"))
}

/// The text nsnet puts in `/etc/netns/NAME/resolv.conf` for a sandbox with names (used by `ip netns exec`,
/// `nsnet exec` and `nsnet run`): the resolver, and the host's `search` and `options` lines as they are. The
/// first line names the state dir (`owner`, its tag), so `nsnet gc` finds the files whose record was lost.
pub fn sandbox_resolv_conf(host: &upstream::ResolvConf, owner: &str) -> String {
    let mut text = format!(
        "# written by nsnet ({owner}): the sandbox's names, then the host's resolvers\nnameserver {RESOLVER_ADDR}\n"
    );
    if !host.search.is_empty() {
        text.push_str(&format!("search {}\n", host.search.join(" ")));
    }
    if !host.options.is_empty() {
        text.push_str(&format!("options {}\n", host.options.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Mac};

    fn net(name: &str, dns: bool, internal: bool) -> Network {
        Network {
            dns,
            internal,
            ..Network::bridge(
                name,
                "10.89.0.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 89, 0, 1),
                "br0",
            )
        }
    }

    fn endpoint(network: &str, last: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, 89, 0, last);
        Endpoint {
            network: network.into(),
            interface: "eth0".into(),
            host_interface: "vethx".into(),
            mac: Mac::for_ipv4(ip),
            address: Some(ipnet::Ipv4Net::new(ip, 24).unwrap()),
            gateway: Some(Ipv4Addr::new(10, 89, 0, 1)),
            default_route: true,
            mtu: 1500,
            ports: vec![],
            removing: false,
            aliases: vec!["db".into()],
            ipv6: None,
        }
    }

    fn sandbox(endpoints: Vec<Endpoint>) -> Sandbox {
        Sandbox {
            name: "app".into(),
            netns: "/run/netns/app".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints,
            removing: false,
            dns_servers: vec![],
        }
    }

    #[test]
    fn a_member_holds_only_its_endpoints_on_networks_with_names() {
        let (a, b, c) = (
            net("a", true, false),
            net("b", false, false),
            net("c", true, true),
        );
        let mut going = endpoint("c", 4);
        going.removing = true;
        let sb = sandbox(vec![endpoint("a", 2), endpoint("b", 3), going]);
        let m = Member::of(&sb, &[&a, &b, &c]).expect("on a network with names");
        assert_eq!(m.networks.len(), 1);
        assert_eq!(m.networks[0].network, "a");
        assert_eq!(m.networks[0].aliases, vec!["db".to_string()]);
        // No network with names, or the sandbox going: nothing to serve.
        assert!(Member::of(&sandbox(vec![endpoint("b", 3)]), &[&b]).is_none());
        let mut gone = sandbox(vec![endpoint("a", 2)]);
        gone.removing = true;
        assert!(Member::of(&gone, &[&a]).is_none());
    }

    #[test]
    fn updates_are_one_json_line_each() {
        let line = serde_json::to_string(&Update::Down("app".into())).unwrap();
        assert_eq!(line, r#"{"down":"app"}"#);
        let back: Update = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Update::Down("app".into()));
    }

    #[test]
    fn bad_upstream_servers_are_refused_by_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(check_servers(&[ip("192.0.2.53"), ip("2001:db8::53"), ip("::1")]).is_ok());
        let e = check_servers(&[ip("224.0.0.1")]).unwrap_err();
        assert!(e.contains("224.0.0.1"), "{e}");
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "ff02::1",
            "fe80::1",
            "febf::1",
            "::ffff:224.0.0.1",
            "::ffff:192.0.2.53",
        ] {
            let e = check_servers(&[ip("192.0.2.53"), ip(bad)]).unwrap_err();
            assert!(e.starts_with(bad) && !e.contains('\n'), "{e}");
        }
        // Just outside fe80::/10: a (deprecated site-local) address, not refused as link-local.
        assert!(check_servers(&[ip("fec0::1")]).is_ok());
    }

    #[test]
    fn upstream_servers_parse_in_either_family_and_scoped_ones_are_named() {
        assert_eq!(
            parse_server("192.0.2.53"),
            Ok(IpAddr::from([192, 0, 2, 53]))
        );
        assert_eq!(
            parse_server("2001:db8::53"),
            Ok("2001:db8::53".parse().unwrap())
        );
        let e = parse_server("fe80::1%eth0").unwrap_err();
        assert!(e.contains("scoped"), "{e}");
        let e = parse_server("not-an-ip").unwrap_err();
        assert!(e.contains("'not-an-ip'"), "{e}");
    }

    #[test]
    fn a_dual_stack_endpoint_gives_its_ipv6_address_and_older_updates_still_read() {
        let a = net("a", true, false);
        let mut ep = endpoint("a", 2);
        ep.ipv6 = Some(crate::model::Ep6 {
            address: "fd00:1::2/64".parse().unwrap(),
            gateway: "fd00:1::1".parse().unwrap(),
        });
        let m = Member::of(&sandbox(vec![ep]), &[&a]).expect("on a network with names");
        assert_eq!(m.networks[0].address6, Some("fd00:1::2".parse().unwrap()));
        // An IPv4 endpoint's update is written as before IPv6, and one from then reads with no IPv6 address.
        let m4 = Member::of(&sandbox(vec![endpoint("a", 3)]), &[&a]).unwrap();
        let line = serde_json::to_string(&Update::Up(m4.clone())).unwrap();
        assert!(!line.contains("address6"), "{line}");
        let old = r#"{"up":{"name":"app","netns":"/run/netns/app","servers":["192.0.2.1"],"networks":[{"network":"a","address":"10.89.0.3","aliases":["db"],"internal":false,"servers":[]}]}}"#;
        let Update::Up(back) = serde_json::from_str(old).unwrap() else {
            panic!("an up");
        };
        assert_eq!(back.networks[0].address6, None);
        assert_eq!(back.servers, vec![IpAddr::from([192, 0, 2, 1])]);
    }

    #[test]
    fn the_sandbox_file_points_at_the_resolver_and_keeps_the_hosts_search_and_options() {
        let host = upstream::ResolvConf::parse(
            "nameserver 10.0.0.2\nsearch corp.example\noptions ndots:2\n",
        );
        let text = sandbox_resolv_conf(&host, "nsnet:/var/lib/nsnet");
        assert!(
            text.starts_with("# written by nsnet (nsnet:/var/lib/nsnet)"),
            "{text}"
        );
        assert!(text.contains("nameserver 127.0.0.11\n"), "{text}");
        assert!(!text.contains("10.0.0.2"), "{text}");
        assert!(text.contains("search corp.example\n"), "{text}");
        assert!(text.contains("options ndots:2\n"), "{text}");
    }
}
