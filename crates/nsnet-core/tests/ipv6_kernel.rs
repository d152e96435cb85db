//! IPv6 netlink primitives on the real kernel (issue #19): addresses added without DAD, IPv6 default routes,
//! the IPv6 address and route dumps, and what the kernel does with them as a link goes down. Each checked
//! against what `ip` reports. Every test works in named namespaces of its own (`/run/netns/nsv6<pid>-<tag>`),
//! removed by a guard even when the test panics; the host's own namespace is never touched. Needs root;
//! skipped without it.

use std::fs::File;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsFd;

use ipnet::{IpNet, Ipv6Net};
use nsnet_core::kernel::{Netlink, VethSpec};
use nsnet_core::model::Mac;
use serde_json::Value;

mod test_ns;
use test_ns::Ns;

/// This file's namespaces: `/run/netns/nsv6<pid>-<tag>`.
const PREFIX: &str = "nsv6";

/// The IPv6 addresses of `dev` in `ns` as `ip -j -6 addr` reports them: (address/prefix, tentative).
fn addresses6(ns: &Ns, dev: &str) -> Vec<(String, bool)> {
    let out = ns.ok(&["ip", "-j", "-6", "addr", "show", "dev", dev]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]),
                a["tentative"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

const MAC_A: [u8; 6] = [0x02, 0x6e, 0x0a, 0x59, 0x00, 0x02];
const MAC_B: [u8; 6] = [0x02, 0x6e, 0x0a, 0x59, 0x00, 0x03];

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

/// A veth from `nl_a`'s namespace (`va`) to `b` (`vb`), both ends down and without automatic link-local
/// addresses, as nsnet makes a sandbox's end.
fn veth(nl_a: &mut Netlink, b: &Ns, nl_b: &mut Netlink) {
    let b_fd = File::open(b.path()).expect("open b");
    nl_a.create_veth(&VethSpec {
        host: "va",
        peer: "vb",
        peer_netns: b_fd.as_fd(),
        master: None,
        mtu: 1500,
        peer_mac: Some(MAC_B),
        host_mac: Some(MAC_A),
    })
    .expect("veth");
    nl_a.no_ipv6_link_local("va").expect("addrgenmode none");
    nl_b.no_ipv6_link_local("vb").expect("addrgenmode none");
}

/// Ping `dst` from inside `ns`, up to three tries of one echo each.
fn pings6(ns: &Ns, dst: &str) -> bool {
    (0..3).any(|_| ns.run(&["ping", "-6", "-c1", "-W1", dst]).status.success())
}

/// Facts 1 and 3 of the plan: an address added with `IFA_F_NODAD` is never tentative and answers at once;
/// one added with DAD is tentative first. Every IPv6 address goes when its link goes down.
#[test]
fn a_nodad_address_is_never_tentative_answers_and_goes_with_the_link() {
    let Some((a, mut nl_a)) = Ns::create(PREFIX, "nodad-a") else {
        return;
    };
    let Some((b, mut nl_b)) = Ns::create(PREFIX, "nodad-b") else {
        return;
    };
    veth(&mut nl_a, &b, &mut nl_b);
    let ll_a = Mac(MAC_A).link_local6();
    let ll_b = Mac(MAC_B).link_local6();
    for (nl, dev, ll, global) in [
        (&mut nl_a, "va", ll_a, "fd00:1::1/64"),
        (&mut nl_b, "vb", ll_b, "fd00:1::2/64"),
    ] {
        nl.add_address(dev, IpNet::V6(Ipv6Net::new(ll, 64).expect("/64")))
            .expect("link-local");
        nl.add_address(dev, net(global)).expect("global");
        nl.set_up(dev).expect("up");
    }
    // For contrast, an address `ip` adds with DAD on.
    a.ok(&["ip", "addr", "add", "fd00:2::1/64", "dev", "va"]);
    let listed = addresses6(&a, "va");
    assert!(
        listed.contains(&("fd00:1::1/64".into(), false)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(format!("{ll_a}/64"), false)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("fd00:2::1/64".into(), true)),
        "DAD makes an address tentative first: {listed:?}"
    );
    // Usable without waiting for DAD: echoes are answered, to the global and to the link-local address
    // (a few tries: the veth's carrier comes up asynchronously).
    assert!(pings6(&a, "fd00:1::2"));
    assert!(pings6(&a, &format!("{ll_b}%va")));

    // The dumps nsnet validates against see them (link-local included), and the prefix route.
    let addrs = nl_a.ipv6_addresses().expect("addresses");
    assert!(
        addrs.contains(&"fd00:1::1/64".parse().expect("CIDR")),
        "{addrs:?}"
    );
    assert!(addrs.iter().any(|a| a.addr() == ll_a), "{addrs:?}");
    let routes = nl_a.ipv6_routes().expect("routes");
    assert!(
        routes.contains(&"fd00:1::/64".parse().expect("CIDR")),
        "{routes:?}"
    );

    // Down, the link loses every IPv6 address (keep_addr_on_down is 0): a restore must add them again.
    a.ok(&["ip", "link", "set", "va", "down"]);
    assert_eq!(addresses6(&a, "va"), vec![]);
    let addrs = nl_a.ipv6_addresses().expect("addresses");
    assert!(
        !addrs.iter().any(|a| a.addr() == v6("fd00:1::1")),
        "{addrs:?}"
    );
}

/// Fact 10 of the plan: an IPv6 default route needs its link up, but not its carrier.
#[test]
fn an_ipv6_default_route_needs_the_link_up_not_its_carrier() {
    let Some((a, mut nl_a)) = Ns::create(PREFIX, "route-a") else {
        return;
    };
    let Some((b, mut nl_b)) = Ns::create(PREFIX, "route-b") else {
        return;
    };
    veth(&mut nl_a, &b, &mut nl_b);
    let gw = IpAddr::V6(v6("fd00:1::1"));
    nl_a.add_address("va", net("fd00:1::2/64"))
        .expect("address");
    // Down: no prefix route, so the gateway is unreachable.
    let err = nl_a
        .add_default_route("va", gw)
        .expect_err("refused while down");
    assert!(
        err.to_string().contains("default route via fd00:1::1"),
        "{err}"
    );
    // Up with the peer still down (no carrier): accepted.
    nl_a.set_up("va").expect("up");
    nl_a.add_default_route("va", gw)
        .expect("accepted without carrier");
    let out = a.ok(&["ip", "-j", "-6", "route", "show", "default"]);
    let routes: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(routes.len(), 1, "{out}");
    assert_eq!(
        (&routes[0]["gateway"], &routes[0]["dev"]),
        (&"fd00:1::1".into(), &"va".into()),
        "{out}"
    );
    // The dump nsnet validates against leaves default routes out.
    let listed = nl_a.ipv6_routes().expect("routes");
    assert!(listed.iter().all(|r| r.prefix_len() > 0), "{listed:?}");
    // An IPv4 default route still goes the way it always has.
    nl_a.add_address("va", net("10.9.0.2/24"))
        .expect("IPv4 address");
    nl_a.add_default_route("va", "10.9.0.1".parse().expect("address"))
        .expect("IPv4 default route");
    let out = a.ok(&["ip", "-j", "route", "show", "default"]);
    assert!(out.contains("10.9.0.1"), "{out}");
}

/// The steps themselves, through the applier: an IPv6 address and default route inside a namespace, and a
/// sysctl written there (not on the host, which this test process is in).
#[test]
fn ipv6_steps_apply_inside_their_namespace() {
    use nsnet_core::apply::Applier;
    use nsnet_core::plan::{Ns as StepNs, Step};
    let Some((a, mut nl_a)) = Ns::create(PREFIX, "steps-a") else {
        return;
    };
    let Some((b, mut nl_b)) = Ns::create(PREFIX, "steps-b") else {
        return;
    };
    veth(&mut nl_a, &b, &mut nl_b);
    nl_b.set_up("vb").expect("peer up");
    let ns = StepNs::Path(a.path().into());
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_ra").ok();
    let mut applier = Applier::new();
    for step in [
        Step::Sysctl {
            ns: ns.clone(),
            key: "net/ipv6/conf/va/accept_ra".into(),
            value: "0".into(),
        },
        Step::AddAddress {
            ns: ns.clone(),
            dev: "va".into(),
            addr: net("fd00:7::2/64"),
        },
        Step::LinkUp {
            ns: ns.clone(),
            name: "va".into(),
        },
        Step::AddDefaultRoute {
            ns: ns.clone(),
            dev: "va".into(),
            via: "fd00:7::1".parse().expect("address"),
        },
    ] {
        applier
            .run(&step)
            .unwrap_or_else(|e| panic!("{step:?}: {e}"));
    }
    assert_eq!(
        a.ok(&["sysctl", "-n", "net.ipv6.conf.va.accept_ra"]).trim(),
        "0"
    );
    assert_eq!(
        addresses6(&a, "va"),
        vec![("fd00:7::2/64".to_string(), false)]
    );
    let out = a.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(out.contains("default via fd00:7::1 dev va"), "{out}");
    // The host's own settings are untouched (there is no `va` on the host at all).
    assert!(!std::path::Path::new("/proc/sys/net/ipv6/conf/va").exists());
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_ra").ok(),
        host_before
    );
}
