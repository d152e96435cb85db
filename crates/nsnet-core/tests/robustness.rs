//! Bad input at scale: the parsers and the state loader take any input without panicking, and whatever they
//! accept round-trips.

use std::fs;

use nsnet_core::ipam;
use nsnet_core::model::Mac;
use nsnet_core::portmap::PortSpec;
use nsnet_core::store::Store;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn port_specs_never_panic(text in "\\PC{0,40}") {
        let _ = text.parse::<PortSpec>();
    }

    #[test]
    fn port_specs_that_parse_round_trip(
        ip in proptest::option::of(any::<[u8; 4]>()),
        host in 1u16..60000,
        container in 1u16..60000,
        count in 1u16..100,
        udp in any::<bool>(),
    ) {
        let ip = ip.map(|o| format!("{}.{}.{}.{}:", o[0], o[1], o[2], o[3])).unwrap_or_default();
        let range = |p: u16| if count > 1 { format!("{p}-{}", p + count - 1) } else { p.to_string() };
        let text = format!("{ip}{}:{}/{}", range(host), range(container), if udp { "udp" } else { "tcp" });
        let spec: PortSpec = text.parse().map_err(|e: String| TestCaseError::fail(e))?;
        let mapping = spec.with_host_port(spec.host_port.unwrap_or(host));
        let again: PortSpec = mapping.to_string().parse().map_err(|e: String| TestCaseError::fail(e))?;
        prop_assert_eq!(again.with_host_port(host), mapping);
    }

    #[test]
    fn subnets_never_panic_and_accepted_ones_are_usable(text in "[0-9./a-z]{0,24}") {
        if let Ok(net) = ipam::parse_subnet(&text) {
            prop_assert_eq!(net.trunc(), net);
            prop_assert!(net.prefix_len() <= 30);
            ipam::check_gateway(&net, ipam::default_gateway(&net)).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn ipv6_port_specs_never_panic(text in "\\[[0-9a-f:.]{0,20}\\]?:?[0-9:/a-z-]{0,14}") {
        let _ = text.parse::<PortSpec>();
    }

    #[test]
    fn ipv6_port_specs_that_parse_round_trip(
        ip in any::<[u16; 8]>(),
        host in 1u16..60000,
        container in 1u16..60000,
        udp in any::<bool>(),
    ) {
        let ip = std::net::Ipv6Addr::from(ip);
        let text = format!("[{ip}]:{host}:{container}/{}", if udp { "udp" } else { "tcp" });
        let spec: PortSpec = text.parse().map_err(|e: String| TestCaseError::fail(e))?;
        prop_assert_eq!(spec.host_ip, Some(std::net::IpAddr::V6(ip)));
        let mapping = spec.with_host_port(host);
        let again: PortSpec = mapping.to_string().parse().map_err(|e: String| TestCaseError::fail(e))?;
        prop_assert_eq!(again.with_host_port(host), mapping);
    }

    #[test]
    fn ipv6_subnets_never_panic_and_accepted_ones_are_usable(text in "[0-9a-f:/]{0,44}") {
        if let Ok(net) = ipam::parse_subnet6(&text) {
            prop_assert_eq!(net.trunc(), net);
            prop_assert!(ipam::IPV6_PREFIXES.contains(&net.prefix_len()));
            ipam::check_gateway6(&net, ipam::default_gateway6(&net)).map_err(TestCaseError::fail)?;
            let again = ipam::parse_subnet6(&net.to_string()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(again, net);
        }
    }

    /// Whatever a sandbox asks under ip6.arpa, the table never panics, and answers a pointer only for the
    /// exact name (in any case) of an address it holds; the name of any address reads back to it.
    #[test]
    fn ip6_arpa_questions_never_panic_and_name_only_their_address(
        text in "([0-9a-gA-G.\\\\]{0,3}\\.){0,40}ip6\\.arpa\\.?",
        ip in any::<u128>(),
        upper in any::<bool>(),
    ) {
        use std::net::{Ipv4Addr, Ipv6Addr};
        use nsnet_core::dns::names::{Answer, Kind, Names};
        use nsnet_core::dns::{Member, OnNetwork};
        let held = Ipv6Addr::from(ip);
        let mut t = Names::default();
        for (name, address6) in [("asker", Ipv6Addr::LOCALHOST), ("held", held)] {
            t.up(Member {
                name: name.into(),
                netns: "/run/netns/x".into(),
                netns_id: None,
                servers: vec![],
                networks: vec![OnNetwork {
                    network: "n".into(),
                    address: Some(Ipv4Addr::new(10, 0, 0, if name == "held" { 2 } else { 3 })),
                    address6: Some(address6),
                    aliases: vec![],
                    internal: false,
                    servers: vec![],
                }],
            });
        }
        let nibbles: Vec<String> = (0..32).map(|i| format!("{:x}", (ip >> (4 * i)) & 0xf)).collect();
        let mut exact = format!("{}.ip6.arpa", nibbles.join("."));
        if upper {
            exact = exact.to_uppercase();
        }
        let held_name = exact.clone();
        for (q, want) in [(text, None), (exact, Some("held"))] {
            let answer = t.lookup("asker", &q, Kind::Ptr, &[]);
            match (&answer, want) {
                (Answer::Pointer(p), Some(w)) => prop_assert_eq!(p.as_str(), w),
                // A random name may happen to be the exact one (then it must point at held).
                (Answer::Pointer(p), None) => {
                    let q = q.trim_end_matches('.');
                    let own = format!("1{}.ip6.arpa", ".0".repeat(31));
                    let exact = (p == "held" && q.eq_ignore_ascii_case(&held_name))
                        || (p == "asker" && q.eq_ignore_ascii_case(&own));
                    prop_assert!(exact, "{q} -> {p}");
                }
                (other, Some(_)) => prop_assert!(false, "{q}: {other:?}"),
                (_, None) => {}
            }
        }
    }

    #[test]
    fn macs_never_panic(text in "\\PC{0,30}") {
        let _ = text.parse::<Mac>();
    }

    #[test]
    fn a_corrupt_state_file_is_set_aside_never_reset(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let store = Store::new(dir.path());
        fs::create_dir_all(dir.path().join("networks")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file = dir.path().join("networks/n.json");
        fs::write(&file, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let nets = store.networks().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(nets.is_empty(), "random bytes made a valid network?");
        // The file is moved to quarantine/ as it was: a bad file is set aside, never replaced.
        let moved = store.quarantined();
        prop_assert_eq!(moved.len(), 1);
        prop_assert_eq!(fs::read(&moved[0]).map_err(|e| TestCaseError::fail(e.to_string()))?, bytes);
        prop_assert!(!file.exists());
    }
}

#[test]
fn a_truncated_state_file_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(dir.path());
    let net = r#"{"name":"n","driver":"bridge","subnet":"10.89.0.0/24","gateway":"10.89.0.1","interface":"nsnet0","internal":false,"mtu":1500}"#;
    fs::create_dir_all(dir.path().join("networks")).expect("mkdir");
    fs::write(dir.path().join("networks/n.json"), net).expect("write");
    assert_eq!(store.networks().expect("valid").len(), 1);
    for cut in [1, net.len() / 2, net.len() - 1] {
        fs::write(dir.path().join("networks/n.json"), &net[..cut]).expect("write");
        assert!(store.networks().expect("set aside").is_empty());
    }
    let mut kept: Vec<String> = store
        .quarantined()
        .iter()
        .map(|p| fs::read_to_string(p).expect("quarantined file"))
        .collect();
    kept.sort_by_key(|t| t.len());
    let cuts: Vec<&str> = [1, net.len() / 2, net.len() - 1]
        .map(|c| &net[..c])
        .to_vec();
    assert_eq!(kept, cuts);
}
