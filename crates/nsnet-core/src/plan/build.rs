//! Pure plan builders: from records to the steps that bring them up or take them down.
//! Nothing here reads or changes the system, so every rule is checked by unit tests without root.

use crate::firewall::{Batch, Rule};
use crate::model::{Driver, Endpoint, Network};
use crate::plan::{Ns, Step};
use ipnet::Ipv4Net;

fn gateway_cidr(net: &Network) -> Ipv4Net {
    // The subnet is valid, so the gateway with its prefix length is too.
    Ipv4Net::new(net.gateway, net.subnet.prefix_len()).unwrap_or(net.subnet)
}

/// Bring a network up. `table_exists` says whether nsnet's firewall table is already there (another network
/// exists); if not, the batch creates it.
pub fn network_up(net: &Network, table_exists: bool) -> (Vec<Step>, Batch) {
    let mut steps = Vec::new();
    let mut fw = Batch::default();
    if !net.internal {
        steps.push(Step::EnableForwarding);
    }
    if net.driver == Driver::Bridge {
        steps.push(Step::CreateBridge {
            name: net.interface.clone(),
            mtu: net.mtu,
        });
        steps.push(Step::AddAddress {
            ns: Ns::Host,
            dev: net.interface.clone(),
            addr: gateway_cidr(net),
        });
    }
    if !table_exists {
        fw.add(Rule::Table);
    }
    if !net.internal {
        fw.add(Rule::Masquerade {
            subnet: net.subnet,
            interface: net.interface.clone(),
        });
    }
    (steps, fw)
}

/// Take a network down. `last` says it is the last network, so nsnet's table goes too.
pub fn network_down(net: &Network, last: bool) -> (Batch, Vec<Step>) {
    let mut fw = Batch::default();
    if !net.internal {
        fw.delete(Rule::Masquerade {
            subnet: net.subnet,
            interface: net.interface.clone(),
        });
    }
    if last {
        fw.delete(Rule::Table);
    }
    let mut steps = Vec::new();
    if net.driver == Driver::Bridge {
        steps.push(Step::DeleteLink {
            ns: Ns::Host,
            name: net.interface.clone(),
        });
    }
    (fw, steps)
}

/// Join a sandbox (namespace `ns`) to a network through `ep`.
pub fn endpoint_up(net: &Network, ep: &Endpoint, ns: &Ns) -> (Vec<Step>, Batch) {
    let mut steps = vec![Step::CreateVeth {
        host: ep.host_interface.clone(),
        peer: ep.interface.clone(),
        peer_ns: ns.clone(),
        master: (net.driver == Driver::Bridge).then(|| net.interface.clone()),
        mtu: ep.mtu,
        peer_mac: ep.mac,
    }];
    if net.driver == Driver::Veth {
        // Point to point: the host end itself holds the gateway address.
        steps.push(Step::AddAddress {
            ns: Ns::Host,
            dev: ep.host_interface.clone(),
            addr: gateway_cidr(net),
        });
    }
    steps.push(Step::AddAddress {
        ns: ns.clone(),
        dev: ep.interface.clone(),
        addr: ep.address,
    });
    if ep.default_route {
        steps.push(Step::AddDefaultRoute {
            ns: ns.clone(),
            dev: ep.interface.clone(),
            via: ep.gateway,
        });
    }
    let mut fw = Batch::default();
    for mapping in &ep.ports {
        fw.add(Rule::Port {
            mapping: *mapping,
            target: ep.address.addr(),
        });
    }
    (steps, fw)
}

/// Undo [`endpoint_up`]: drop its port mappings and delete the veth (both ends go with the host end).
pub fn endpoint_down(ep: &Endpoint) -> (Batch, Vec<Step>) {
    let mut fw = Batch::default();
    for mapping in &ep.ports {
        fw.delete(Rule::Port {
            mapping: *mapping,
            target: ep.address.addr(),
        });
    }
    (
        fw,
        vec![Step::DeleteLink {
            ns: Ns::Host,
            name: ep.host_interface.clone(),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::Change;
    use crate::model::Mac;
    use crate::plan::Plan;
    use crate::portmap::PortMapping;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    fn net(driver: Driver, internal: bool) -> Network {
        Network {
            name: "n1".into(),
            driver,
            subnet: "172.16.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 16, 0, 100),
            interface: "br0".into(),
            internal,
            mtu: 1500,
            allocations: Default::default(),
            published: vec![],
        }
    }

    fn ep(ports: Vec<PortMapping>) -> Endpoint {
        let ip = Ipv4Addr::new(172, 16, 0, 102);
        Endpoint {
            network: "n1".into(),
            interface: "eth0".into(),
            host_interface: "veth12345678".into(),
            mac: Mac::for_ipv4(ip),
            address: Ipv4Net::new(ip, 24).unwrap(),
            gateway: Ipv4Addr::new(172, 16, 0, 100),
            default_route: true,
            mtu: 1500,
            ports,
        }
    }

    fn ns() -> Ns {
        Ns::Path(PathBuf::from("/run/netns/netns2"))
    }

    #[test]
    fn bridge_network_is_the_articles_br0() {
        let (steps, fw) = network_up(&net(Driver::Bridge, false), false);
        let text = Plan::setup(steps, fw).render();
        assert!(text.starts_with(
            "sysctl -w net.ipv4.ip_forward=1\n\
             ip link add br0 mtu 1500 type bridge\nip link set br0 up\n\
             ip addr add 172.16.0.100/24 dev br0\n\
             nft -f - <<'EOF'\nadd table ip nsnet\n"
        ));
        assert!(text.contains("add element ip nsnet masq_nets { 172.16.0.0/24 }\n"));
    }

    #[test]
    fn internal_network_has_no_masquerade_or_forwarding() {
        let (steps, fw) = network_up(&net(Driver::Bridge, true), true);
        assert!(!steps.contains(&Step::EnableForwarding));
        assert!(fw.is_empty());
    }

    #[test]
    fn endpoint_on_bridge() {
        let p: PortMapping = "8088:80".parse().unwrap();
        let (steps, fw) = endpoint_up(&net(Driver::Bridge, false), &ep(vec![p]), &ns());
        assert_eq!(
            Plan::setup(steps, fw).render(),
            "ip link add veth12345678 mtu 1500 master br0 up type veth peer name eth0 address 02:6e:ac:10:00:66 netns netns2\n\
             ip -n netns2 link set eth0 up\n\
             ip -n netns2 addr add 172.16.0.102/24 dev eth0\n\
             ip -n netns2 route add default via 172.16.0.100 dev eth0\n\
             nft -f - <<'EOF'\nadd element ip nsnet ports { tcp . 8088 : 172.16.0.102 . 80 }\nEOF\n"
        );
    }

    #[test]
    fn endpoint_point_to_point_puts_gateway_on_host_end() {
        let mut e = ep(vec![]);
        e.host_interface = "br0".into();
        e.default_route = false;
        let (steps, _) = endpoint_up(&net(Driver::Veth, false), &e, &ns());
        assert!(matches!(&steps[0], Step::CreateVeth { master: None, .. }));
        assert_eq!(
            steps[1],
            Step::AddAddress {
                ns: Ns::Host,
                dev: "br0".into(),
                addr: "172.16.0.100/24".parse().unwrap()
            }
        );
        assert!(!steps
            .iter()
            .any(|s| matches!(s, Step::AddDefaultRoute { .. })));
    }

    #[test]
    fn teardown_mirrors_setup() {
        let p: PortMapping = "8088:80".parse().unwrap();
        let e = ep(vec![p]);
        let (fw, steps) = endpoint_down(&e);
        assert_eq!(fw.0.len(), 1);
        assert!(matches!(fw.0[0], Change::Delete(Rule::Port { .. })));
        assert_eq!(
            steps,
            vec![Step::DeleteLink {
                ns: Ns::Host,
                name: "veth12345678".into()
            }]
        );
        let (fw, steps) = network_down(&net(Driver::Bridge, false), true);
        assert_eq!(fw.0.last(), Some(&Change::Delete(Rule::Table)));
        assert_eq!(
            steps,
            vec![Step::DeleteLink {
                ns: Ns::Host,
                name: "br0".into()
            }]
        );
    }

    #[test]
    fn undo_of_setup_steps() {
        let (steps, fw) = network_up(&net(Driver::Bridge, false), false);
        let plan = Plan::setup(steps, fw);
        let undos: Vec<Step> = plan.steps.iter().rev().filter_map(Step::undo).collect();
        assert!(
            matches!(&undos[0], Step::Firewall(b) if b.0.last() == Some(&Change::Delete(Rule::Table)))
        );
        assert_eq!(
            undos[1],
            Step::DeleteLink {
                ns: Ns::Host,
                name: "br0".into()
            }
        );
        assert_eq!(undos.len(), 2);
    }
}
