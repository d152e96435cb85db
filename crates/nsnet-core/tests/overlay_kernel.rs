//! The overlay's netlink primitives (VXLAN device, FDB, permanent neighbours, gateway routes, route and
//! address look-ups) and the retiring of veths, on the real kernel, each checked against what `ip`/`bridge` report. Every test works in
//! named namespaces of its own (`/run/netns/nsovl<pid>-<tag>`), removed by a guard even when the test panics;
//! the host's own namespace is never touched. Needs root; skipped without it.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use ipnet::Ipv4Net;
use nsnet_core::kernel::{
    Netlink, RouteSpec, VethSpec, VxlanSpec, NSNET_ROUTE_PROTOCOL, NUD_PERMANENT,
};
use serde_json::Value;

mod test_ns;
use test_ns::Ns;

/// This file's namespaces: `/run/netns/nsovl<pid>-<tag>`.
const PREFIX: &str = "nsovl";

const VX: &str = "nsvx42";
const VX_MAC: [u8; 6] = [0x02, 0x6e, 0x76, 0x78, 0x00, 0x01];
const PEER_MAC: [u8; 6] = [0x0e, 0x00, 0x00, 0x00, 0x00, 0x01];
const BR_MAC: [u8; 6] = [0x02, 0x6e, 0x62, 0x72, 0x00, 0x01];
const PEER_MAC_STR: &str = "0e:00:00:00:00:01";

/// `nsvx42`: VNI 42 on port 4789, MTU 1450, no underlay link.
fn vxlan_spec() -> VxlanSpec<'static> {
    VxlanSpec {
        name: VX,
        vni: 42,
        port: 4789,
        mtu: 1450,
        mac: VX_MAC,
        underlay_dev: None,
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a CIDR")
}

#[test]
fn vxlan_device_is_created_as_asked_and_read_back() {
    let Some((ns, mut nl)) = Ns::create(PREFIX, "vx") else {
        return;
    };
    nl.create_vxlan(&vxlan_spec()).expect("create vxlan");
    let info = nl.vxlan(VX).unwrap().expect("the vxlan is there");
    assert_eq!(info.index, nl.link_index(VX).unwrap());
    assert_eq!(
        (info.vni, info.port, info.learning, info.mtu, info.mac),
        (42, 4789, false, 1450, VX_MAC)
    );
    assert!(!info.up, "created down");
    assert_eq!((info.underlay_dev, info.local), (None, None));

    let link = &ns.json(&["ip", "-j", "-d", "link", "show", VX])[0];
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["id"], 42);
    assert_eq!(data["port"], 4789);
    assert_eq!(data["learning"], false);
    assert_eq!(data["udp_csum"], false);
    assert!(data.get("local").is_none(), "no local address: {data}");
    assert!(data.get("remote").is_none() && data.get("group").is_none());
    assert!(data.get("link").is_none());
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "02:6e:76:78:00:01");

    let again = nl.create_vxlan(&vxlan_spec()).expect_err("same name twice");
    assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
    let same_vni = nl
        .create_vxlan(&VxlanSpec {
            name: "nsvx42b",
            ..vxlan_spec()
        })
        .expect_err("same VNI and port twice in one namespace");
    assert_eq!(same_vni.errno(), Some(libc::EEXIST), "{same_vni}");

    assert_eq!(nl.vxlan("lo").unwrap(), None, "not a vxlan");
    assert_eq!(nl.vxlan("nothere").unwrap(), None);

    nl.set_mtu(VX, 1400).expect("set mtu");
    assert_eq!(nl.vxlan(VX).unwrap().unwrap().mtu, 1400);
    assert_eq!(ns.json(&["ip", "-j", "link", "show", VX])[0]["mtu"], 1400);
    nl.set_up(VX).unwrap();
    assert!(nl.vxlan(VX).unwrap().unwrap().up);

    // On an underlay link: its MTU less 50 bytes of encapsulation is the most the kernel allows.
    nl.create_bridge("under0", 1500, BR_MAC).unwrap();
    let under = nl.link_index("under0").unwrap();
    nl.create_vxlan(&VxlanSpec {
        name: "nsvx43",
        vni: 43,
        underlay_dev: Some(under),
        ..vxlan_spec()
    })
    .expect("create vxlan on an underlay link");
    let info = nl.vxlan("nsvx43").unwrap().unwrap();
    assert_eq!((info.vni, info.underlay_dev), (43, Some(under)));
    assert_eq!(
        ns.json(&["ip", "-j", "-d", "link", "show", "nsvx43"])[0]["linkinfo"]["info_data"]["link"],
        "under0"
    );
    let too_big = nl.set_mtu("nsvx43", 1451).expect_err("above 1500 - 50");
    assert_eq!(too_big.errno(), Some(libc::EINVAL), "{too_big}");
    assert!(too_big.to_string().contains("nsvx43"), "{too_big}");
    nl.set_mtu("nsvx43", 1300).unwrap();
    assert_eq!(nl.vxlan("nsvx43").unwrap().unwrap().mtu, 1300);

    assert!(nl.delete_link(VX).unwrap());
    assert!(nl.delete_link("nsvx43").unwrap());
    assert_eq!(nl.vxlan(VX).unwrap(), None);
}

#[test]
fn permanent_neighbours_are_replaced_listed_and_deleted() {
    let Some((ns, mut nl)) = Ns::create(PREFIX, "neigh") else {
        return;
    };
    nl.create_vxlan(&vxlan_spec()).unwrap();
    nl.set_up(VX).unwrap();
    let vx = nl.link_index(VX).unwrap();
    let peer = Ipv4Addr::new(10, 244, 2, 0);

    nl.neigh_replace(vx, peer, PEER_MAC).expect("add");
    nl.neigh_replace(vx, peer, PEER_MAC)
        .expect("the same again");
    assert_eq!(
        nl.neighbours(vx).unwrap(),
        [(peer, PEER_MAC, NUD_PERMANENT)]
    );
    let shown = ns.json(&["ip", "-j", "neigh", "show", "dev", VX]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["dst"], "10.244.2.0");
    assert_eq!(shown[0]["lladdr"], PEER_MAC_STR);
    assert_eq!(shown[0]["state"], serde_json::json!(["PERMANENT"]));

    // A new MAC replaces the old one.
    let moved = [0x0e, 0, 0, 0, 0, 0x02];
    nl.neigh_replace(vx, peer, moved).unwrap();
    assert_eq!(nl.neighbours(vx).unwrap(), [(peer, moved, NUD_PERMANENT)]);

    // Only this link's entries: one on another link is not listed.
    nl.create_bridge("other0", 1500, BR_MAC).unwrap();
    let other = nl.link_index("other0").unwrap();
    nl.neigh_replace(other, Ipv4Addr::new(10, 9, 9, 9), PEER_MAC)
        .unwrap();
    assert_eq!(nl.neighbours(vx).unwrap().len(), 1);
    assert_eq!(nl.neighbours(other).unwrap().len(), 1);

    assert!(nl.neigh_delete(vx, peer).unwrap(), "existed");
    assert!(!nl.neigh_delete(vx, peer).unwrap(), "already gone");
    assert_eq!(nl.neighbours(vx).unwrap(), []);
    assert!(ns
        .json(&["ip", "-j", "neigh", "show", "dev", VX])
        .is_empty());
}

#[test]
fn vxlan_fdb_entries_are_replaced_moved_listed_and_deleted() {
    let Some((ns, mut nl)) = Ns::create(PREFIX, "fdb") else {
        return;
    };
    nl.create_vxlan(&vxlan_spec()).unwrap();
    nl.set_up(VX).unwrap();
    let vx = nl.link_index(VX).unwrap();
    let (first, second) = (
        Ipv4Addr::new(192, 168, 50, 11),
        Ipv4Addr::new(192, 168, 50, 12),
    );

    nl.fdb_replace(vx, PEER_MAC, first).expect("add");
    nl.fdb_replace(vx, PEER_MAC, first).expect("the same again");
    assert_eq!(nl.fdb_entries(vx).unwrap(), [(PEER_MAC, Some(first))]);
    let check = |dst: &str| {
        let shown = ns.json(&["bridge", "-j", "fdb", "show", "dev", VX]);
        let ours: Vec<&Value> = shown.iter().filter(|e| e["mac"] == PEER_MAC_STR).collect();
        assert_eq!(ours.len(), 1, "{shown:?}");
        assert_eq!(ours[0]["dst"], dst);
        assert_eq!(ours[0]["state"], "permanent");
        assert!(
            ours[0]["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&Value::from("self"))),
            "{shown:?}"
        );
    };
    check("192.168.50.11");

    // Replace moves the entry: still one, now to the new destination.
    nl.fdb_replace(vx, PEER_MAC, second).expect("move");
    assert_eq!(nl.fdb_entries(vx).unwrap(), [(PEER_MAC, Some(second))]);
    check("192.168.50.12");

    // As a bridge port, the device also shows the bridge's entry for its own MAC (`master`, not `self`),
    // and the bridge its own multicast addresses: neither is the device's.
    let br = nl.create_bridge("br0", 1500, BR_MAC).unwrap();
    ns.ok(&["ip", "link", "set", VX, "master", "br0"]);
    let shown = ns.json(&["bridge", "-j", "fdb", "show", "dev", VX]);
    assert!(shown.iter().any(|e| e["master"] == "br0"), "{shown:?}");
    assert_eq!(nl.fdb_entries(vx).unwrap(), [(PEER_MAC, Some(second))]);
    assert!(nl.fdb_entries(br).unwrap().iter().all(|(_, d)| d.is_none()));

    assert!(nl.fdb_delete(vx, PEER_MAC).unwrap(), "existed");
    assert!(!nl.fdb_delete(vx, PEER_MAC).unwrap(), "already gone");
    assert_eq!(nl.fdb_entries(vx).unwrap(), []);
    assert!(ns
        .json(&["bridge", "-j", "fdb", "show", "dev", VX])
        .iter()
        .all(|e| e["mac"] != PEER_MAC_STR));
}

#[test]
fn overlay_routes_are_replaced_listed_and_deleted_by_protocol() {
    let Some((ns, mut nl)) = Ns::create(PREFIX, "route") else {
        return;
    };
    nl.create_bridge("pods0", 1500, BR_MAC).unwrap();
    nl.add_address("pods0", net("10.244.1.1/24").into())
        .unwrap();
    nl.create_vxlan(&vxlan_spec()).unwrap();
    let vx = nl.link_index(VX).unwrap();
    let route = RouteSpec {
        dst: net("10.244.2.0/24"),
        via: Ipv4Addr::new(10, 244, 2, 0),
        dev_index: vx,
        onlink: true,
        prefsrc: Some(Ipv4Addr::new(10, 244, 1, 1)),
    };

    let down = nl.route_replace(&route).expect_err("device down");
    assert_eq!(down.errno(), Some(libc::ENETDOWN), "{down}");
    nl.set_up(VX).unwrap();
    let foreign_src = nl
        .route_replace(&RouteSpec {
            prefsrc: Some(Ipv4Addr::new(10, 9, 9, 9)),
            ..route
        })
        .expect_err("a source address no link has");
    assert_eq!(foreign_src.errno(), Some(libc::EINVAL), "{foreign_src}");
    assert!(
        foreign_src
            .to_string()
            .contains("add route 10.244.2.0/24 via 10.244.2.0 dev nsvx42"),
        "the error names the device: {foreign_src}"
    );

    nl.route_replace(&route).expect("add");
    nl.route_replace(&route).expect("the same again");
    // Someone else's route elsewhere is not listed, nor deleted by a spec without gateway or device.
    ns.ok(&["ip", "route", "add", "10.245.0.0/24", "dev", "pods0"]);
    assert_eq!(
        nl.routes_with_protocol(NSNET_ROUTE_PROTOCOL).unwrap(),
        [route]
    );
    let shown = ns.json(&["ip", "-j", "route", "show", "proto", "110"]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["dst"], "10.244.2.0/24");
    assert_eq!(shown[0]["gateway"], "10.244.2.0");
    assert_eq!(shown[0]["dev"], VX);
    assert_eq!(shown[0]["prefsrc"], "10.244.1.1");
    assert_eq!(shown[0]["flags"], serde_json::json!(["onlink"]));
    let other = RouteSpec {
        dst: net("10.245.0.0/24"),
        via: Ipv4Addr::UNSPECIFIED,
        dev_index: 0,
        onlink: false,
        prefsrc: None,
    };
    assert!(!nl.route_delete(&other).unwrap(), "not nsnet's route");
    assert_eq!(
        ns.json(&["ip", "-j", "route", "show", "10.245.0.0/24"])
            .len(),
        1
    );

    // Replace goes by destination alone: it takes over a route someone else made to the same prefix.
    ns.ok(&["ip", "route", "add", "10.246.0.0/24", "dev", "pods0"]);
    let taken = RouteSpec {
        dst: net("10.246.0.0/24"),
        ..route
    };
    nl.route_replace(&taken).unwrap();
    let shown = ns.json(&["ip", "-j", "route", "show", "10.246.0.0/24"]);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["dev"], VX);
    assert!(nl.route_delete(&taken).unwrap());

    assert!(nl.route_delete(&route).unwrap(), "existed");
    assert!(!nl.route_delete(&route).unwrap(), "already gone");
    assert_eq!(nl.routes_with_protocol(NSNET_ROUTE_PROTOCOL).unwrap(), []);
    assert!(ns
        .json(&["ip", "-j", "route", "show", "proto", "110"])
        .is_empty());
}

#[test]
fn a_device_going_down_loses_its_neighbours_and_routes_but_keeps_its_fdb() {
    let Some((ns, mut nl)) = Ns::create(PREFIX, "down") else {
        return;
    };
    nl.create_bridge("pods0", 1500, BR_MAC).unwrap();
    nl.add_address("pods0", net("10.244.1.1/24").into())
        .unwrap();
    nl.create_vxlan(&vxlan_spec()).unwrap();
    nl.set_up(VX).unwrap();
    let vx = nl.link_index(VX).unwrap();
    let peer = Ipv4Addr::new(10, 244, 2, 0);
    nl.fdb_replace(vx, PEER_MAC, Ipv4Addr::new(192, 168, 50, 11))
        .unwrap();
    nl.neigh_replace(vx, peer, PEER_MAC).unwrap();
    let route = RouteSpec {
        dst: net("10.244.2.0/24"),
        via: peer,
        dev_index: vx,
        onlink: true,
        prefsrc: Some(Ipv4Addr::new(10, 244, 1, 1)),
    };
    nl.route_replace(&route).unwrap();

    ns.ok(&["ip", "link", "set", VX, "down"]);
    assert_eq!(nl.neighbours(vx).unwrap(), [], "permanent or not");
    assert_eq!(nl.routes_with_protocol(NSNET_ROUTE_PROTOCOL).unwrap(), []);
    assert_eq!(nl.fdb_entries(vx).unwrap().len(), 1, "permanent FDB stays");
}

/// A veth from `nl_a`'s namespace (`va`, 192.168.77.1/24) to `b` (`vb`, .2/24), both ends up.
fn underlay(nl_a: &mut Netlink, b: &Ns, nl_b: &mut Netlink) -> u32 {
    let b_fd = File::open(b.path()).expect("open b");
    nl_a.create_veth(&VethSpec {
        host: "va",
        peer: "vb",
        peer_netns: b_fd.as_fd(),
        master: None,
        mtu: 1500,
        peer_mac: None,
        host_mac: None,
    })
    .expect("veth");
    nl_b.add_address("vb", net("192.168.77.2/24").into())
        .unwrap();
    nl_b.set_up("vb").unwrap();
    nl_a.add_address("va", net("192.168.77.1/24").into())
        .unwrap();
    nl_a.set_up("va").unwrap();
    nl_a.link_index("va").unwrap()
}

#[test]
fn address_owner_and_route_get_across_a_veth() {
    let Some((a, mut nl_a)) = Ns::create(PREFIX, "own-a") else {
        return;
    };
    let Some((b, mut nl_b)) = Ns::create(PREFIX, "own-b") else {
        return;
    };
    let va = underlay(&mut nl_a, &b, &mut nl_b);
    let local = Ipv4Addr::new(192, 168, 77, 1);
    let peer = Ipv4Addr::new(192, 168, 77, 2);

    assert_eq!(
        nl_a.address_owner(local).unwrap(),
        Some(("va".to_string(), va, net("192.168.77.1/24")))
    );
    assert_eq!(nl_a.address_owner(peer).unwrap(), None, "b's, not a's");
    let vb = nl_b.link_index("vb").unwrap();
    assert_eq!(
        nl_b.address_owner(peer).unwrap(),
        Some(("vb".to_string(), vb, net("192.168.77.2/24")))
    );

    // On-link: no gateway.
    assert_eq!(nl_a.route_get(peer).unwrap(), Some((va, None)));
    let got = &a.json(&["ip", "-j", "route", "get", "192.168.77.2"])[0];
    assert_eq!(got["dev"], "va");
    assert!(got.get("gateway").is_none(), "{got}");

    // Behind a gateway.
    a.ok(&["ip", "route", "add", "10.50.0.0/16", "via", "192.168.77.2"]);
    assert_eq!(
        nl_a.route_get(Ipv4Addr::new(10, 50, 1, 1)).unwrap(),
        Some((va, Some(peer)))
    );
    let got = &a.json(&["ip", "-j", "route", "get", "10.50.1.1"])[0];
    assert_eq!(
        (&got["dev"], &got["gateway"]),
        (&"va".into(), &"192.168.77.2".into())
    );

    // A local address answers with lo; no route at all is None.
    let lo = nl_a.link_index("lo").unwrap();
    assert_eq!(nl_a.route_get(local).unwrap(), Some((lo, None)));
    assert_eq!(nl_a.route_get(Ipv4Addr::new(203, 0, 113, 1)).unwrap(), None);
    let unreachable = a.run(&["ip", "route", "get", "203.0.113.1"]);
    assert!(!unreachable.status.success());
}

/// Ping `dst` from inside `ns`, up to three tries of one echo each.
fn pings(ns: &Ns, dst: &str) -> bool {
    (0..3).any(|_| ns.run(&["ping", "-c1", "-W1", dst]).status.success())
}

/// The vxlan's transmitted packet count, as `ip -s` reports it.
fn tx_packets(ns: &Ns) -> u64 {
    ns.json(&["ip", "-j", "-s", "link", "show", VX])[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

#[test]
fn two_namespaces_reach_each_other_over_the_vxlan_overlay() {
    let Some((a, mut nl_a)) = Ns::create(PREFIX, "e2e-a") else {
        return;
    };
    let Some((b, mut nl_b)) = Ns::create(PREFIX, "e2e-b") else {
        return;
    };
    underlay(&mut nl_a, &b, &mut nl_b);
    let vtep_a = [0x0e, 0, 0, 0, 0, 0x0a];
    let vtep_b = [0x0e, 0, 0, 0, 0, 0x0b];
    let sides = [
        (
            &mut nl_a,
            vtep_a,
            "10.244.1.1/24",
            Ipv4Addr::new(192, 168, 77, 1),
        ),
        (
            &mut nl_b,
            vtep_b,
            "10.244.2.1/24",
            Ipv4Addr::new(192, 168, 77, 2),
        ),
    ];
    // Each side's device and pod network first.
    let mut vx = [0u32; 2];
    for (i, (nl, mac, pods, underlay_ip)) in sides.into_iter().enumerate() {
        let (dev_name, under, _) = nl.address_owner(underlay_ip).unwrap().expect("underlay");
        assert_eq!(dev_name, if i == 0 { "va" } else { "vb" });
        nl.create_vxlan(&VxlanSpec {
            mac,
            underlay_dev: Some(under),
            ..vxlan_spec()
        })
        .unwrap();
        nl.set_up(VX).unwrap();
        vx[i] = nl.link_index(VX).unwrap();
        // The pod network's gateway address, on a bridge with no ports (this kernel has no dummy).
        nl.create_bridge("pods0", 1500, BR_MAC).unwrap();
        nl.add_address("pods0", net(pods).into()).unwrap();
    }
    // Then each side's view of the other.
    let plan = |me: usize| -> (RouteSpec, [u8; 6], Ipv4Addr) {
        let (peer_mac, peer_underlay, peer_net, my_ip) = if me == 0 {
            (
                vtep_b,
                Ipv4Addr::new(192, 168, 77, 2),
                "10.244.2.0/24",
                [10, 244, 1, 1],
            )
        } else {
            (
                vtep_a,
                Ipv4Addr::new(192, 168, 77, 1),
                "10.244.1.0/24",
                [10, 244, 2, 1],
            )
        };
        let dst = net(peer_net);
        let route = RouteSpec {
            dst,
            via: dst.network(),
            dev_index: vx[me],
            onlink: true,
            prefsrc: Some(Ipv4Addr::from(my_ip)),
        };
        (route, peer_mac, peer_underlay)
    };
    for (me, nl) in [(0, &mut nl_a), (1, &mut nl_b)] {
        let (route, peer_mac, peer_underlay) = plan(me);
        // The peer's underlay address is on-link (no gateway), as a host-gw peer must be.
        assert_eq!(
            nl.route_get(peer_underlay).unwrap().map(|r| r.1),
            Some(None)
        );
        nl.fdb_replace(vx[me], peer_mac, peer_underlay).unwrap();
        nl.neigh_replace(vx[me], route.via, peer_mac).unwrap();
        nl.route_replace(&route).unwrap();
    }

    let before = tx_packets(&a);
    assert!(pings(&a, "10.244.2.1"), "a reaches b's pod network");
    assert!(pings(&b, "10.244.1.1"), "b reaches a's pod network");
    assert!(tx_packets(&a) > before, "through the vxlan device");

    // Delete everything.
    for (me, nl) in [(0, &mut nl_a), (1, &mut nl_b)] {
        let (route, peer_mac, _) = plan(me);
        assert!(nl.route_delete(&route).unwrap());
        assert!(nl.neigh_delete(vx[me], route.via).unwrap());
        assert!(nl.fdb_delete(vx[me], peer_mac).unwrap());
        assert!(nl.delete_link(VX).unwrap());
        assert!(nl.delete_link("pods0").unwrap());
        assert_eq!(nl.routes_with_protocol(NSNET_ROUTE_PROTOCOL).unwrap(), []);
    }
    let after = a.run(&["ping", "-c1", "-W1", "10.244.2.1"]);
    assert!(!after.status.success(), "gone with the overlay");
}

/// A veth whose peer's namespace is being destroyed vanishes on its own, at a moment the kernel chooses
/// (after `ip netns del`, CNI DEL with the runtime's namespace already gone). Retiring it then is done, never
/// an error, whichever side of that moment the request lands on: CI once saw "retire vethX: No such device".
/// Retiring again and again until the link is gone puts requests on every side of that moment.
#[test]
fn retiring_a_veth_that_vanishes_is_not_an_error() {
    let Some((_a, mut nl_a)) = Ns::create(PREFIX, "rta") else {
        return;
    };
    let mut calls = 0;
    for round in 0..20 {
        let Some((b, nl_b)) = Ns::create(PREFIX, &format!("rtb{round}")) else {
            return;
        };
        let b_fd = File::open(b.path()).expect("open b");
        nl_a.create_veth(&VethSpec {
            host: "vr",
            peer: "vp",
            peer_netns: b_fd.as_fd(),
            master: None,
            mtu: 1500,
            peer_mac: None,
            host_mac: None,
        })
        .expect("veth");
        nl_a.set_up("vr").expect("up");
        // The namespace goes: its last references are the file and the socket, then the kernel's cleanup.
        drop(b_fd);
        drop(nl_b);
        drop(b);
        let start = std::time::Instant::now();
        loop {
            calls += 1;
            match nl_a.retire("vr", None, Some(0x6e73_7274)) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => panic!("round {round}: {e}"),
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "round {round}: the veth outlived its namespace"
            );
        }
    }
    eprintln!("{calls} retire requests");
}
