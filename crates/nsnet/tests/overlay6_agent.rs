//! Dual-stack overlay networks when their agents, etcd or the underlay change under them (issue #19, Phase 4):
//! the IPv6 twins of `overlay.rs`'s restart, etcd-away and underlay tests. IPv6 between hosts keeps working
//! while an agent or etcd is away; a restarted agent finds its IPv6 routes, permanent neighbours and fast
//! path blocks (`remote6`) as they are and changes nothing; a peer that leaves takes all three with it and
//! puts them back once when it returns; a peer's new underlay address (vxlan) or MAC (host-gw) is followed.

mod world;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::path::Path;
use std::time::Duration;

use nsnet_core::kernel::{fastpath::FastPath, netns, Netlink};
use nsnet_core::probe;
use world::six::{lines, local, pings6, sandbox, CLUSTER, CLUSTER6, CONVERGE, NET, TTL};
use world::{in_ns, wait_until, Signal, World};

/// A dual-stack world of `hosts` hosts, the overlay network made with `extra`, the first `joined` hosts'
/// agents joined.
fn cluster(test: &str, hosts: usize, joined: usize, extra: &[&str]) -> World {
    let w = World::new6(test, hosts);
    let url = w.etcd_url();
    let mut args = vec![
        "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--subnet", CLUSTER6,
        "--etcd", &url,
    ];
    args.extend_from_slice(extra);
    w.ok(1, &args);
    for i in 1..=joined {
        w.start_agent(i, &["--lease-ttl", TTL]);
    }
    let all: Vec<usize> = (1..=joined).collect();
    wait_joined(&w, &all, joined - 1);
    w
}

/// Wait until each of `hosts` has made the network and has `peers` peers.
fn wait_joined(w: &World, hosts: &[usize], peers: usize) {
    for &i in hosts {
        let ok = wait_until(CONVERGE, || {
            local(w, i)
                .is_some_and(|v| v["overlay"]["peers"].as_array().map(Vec::len) == Some(peers))
        });
        assert!(ok, "host {i} has not {peers} peer(s):\n{}", w.agent_log(i));
    }
}

fn routes6(w: &World, i: usize) -> Vec<String> {
    lines(w, i, &["ip", "-6", "route", "show", "proto", "110"])
}

fn neigh6(w: &World, i: usize) -> Vec<String> {
    lines(w, i, &["ip", "-6", "neigh", "show", "nud", "permanent"])
}

/// The remote IPv6 blocks in host `i`'s fast path (`remote6`), with their next hops, sorted.
fn remote6(w: &World, i: usize) -> Vec<String> {
    let bridge = local(w, i).expect("joined")["interface"]
        .as_str()
        .expect("a bridge")
        .to_string();
    let fd = netns::open(&w.host_path(i)).expect("open the host namespace");
    let mut out = netns::run_in(&fd, || {
        let mut nl = Netlink::open().expect("netlink");
        FastPath::of_bridge(&mut nl, &bridge)
            .expect("find the fast path")
            .expect("the bridge has a fast path")
            .remotes6()
            .expect("read remote6")
    })
    .expect("enter the host namespace")
    .into_iter()
    .map(|(block, via)| format!("{block} via {via}"))
    .collect::<Vec<_>>();
    out.sort();
    out
}

/// Empty host `i`'s fast path's remote IPv6 blocks, as a hand (or a crash) might.
fn set_remote6_empty(w: &World, i: usize) {
    let bridge = local(w, i).expect("joined")["interface"]
        .as_str()
        .expect("a bridge")
        .to_string();
    let fd = netns::open(&w.host_path(i)).expect("open the host namespace");
    netns::run_in(&fd, || {
        let mut nl = Netlink::open().expect("netlink");
        FastPath::of_bridge(&mut nl, &bridge)
            .expect("find the fast path")
            .expect("the bridge has a fast path")
            .set_remotes6(&[])
            .expect("empty remote6")
    })
    .expect("enter the host namespace");
}

/// Host `i`'s IPv6 block, from its record.
fn block6(w: &World, i: usize) -> String {
    local(w, i).expect("joined")["ipv6"]["subnet"]
        .as_str()
        .expect("an IPv6 block")
        .to_string()
}

/// The kernel objects whose identity a restart must keep: the devices' ifindexes, and every entry of both
/// families (FDB, neighbours, routes) and of the fast path's remote IPv6 blocks.
fn kernel_state(w: &World, i: usize) -> Vec<String> {
    let mut out = lines(w, i, &["ip", "-o", "link", "show", "type", "vxlan"]);
    out.extend(lines(w, i, &["ip", "-o", "link", "show", "type", "bridge"]));
    out.extend(lines(w, i, &["bridge", "fdb", "show", "dev", "nsvx1"]));
    out.extend(lines(w, i, &["ip", "neigh", "show", "dev", "nsvx1"]));
    out.extend(lines(w, i, &["ip", "route", "show", "proto", "110"]));
    out.extend(routes6(w, i));
    out.extend(neigh6(w, i));
    out.extend(remote6(w, i));
    // Counters and flags that move on their own are not identity.
    out.iter()
        .map(|l| {
            l.split_whitespace()
                .filter(|t| !matches!(*t, "state" | "UP" | "DOWN" | "UNKNOWN" | "LOWER_UP"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A line-echo server on `addr` in the namespace at `ns`, for one connection.
fn echo_server(ns: &Path, addr: SocketAddrV6) -> std::thread::JoinHandle<std::io::Result<()>> {
    let fd = netns::open(ns).expect("open the namespace");
    let listener = netns::run_in(&fd, || TcpListener::bind(addr))
        .expect("enter the namespace")
        .expect("listen");
    std::thread::spawn(move || -> std::io::Result<()> {
        let (conn, _) = listener.accept()?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut conn = conn;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            conn.write_all(line.as_bytes())?;
            line.clear();
        }
        Ok(())
    })
}

/// `ping -6 -c N -i 0.1` from `from` to `to`, running.
fn ping_many(from: &Path, to: Ipv6Addr, n: u32) -> std::process::Child {
    let ns = format!("--net={}", from.display());
    std::process::Command::new("nsenter")
        .args([
            ns.as_str(),
            "--",
            "ping",
            "-6",
            "-q",
            "-c",
            &n.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
        ])
        .arg(to.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping")
}

/// Remove the sandboxes `names` (host, name) and the overlay network; every host lets it go with its IPv6
/// routes and neighbours.
fn teardown(w: &World, names: &[(usize, &str)]) {
    for (i, name) in names {
        w.ok(*i, &["rm", &w.sb(name)]);
    }
    w.ok(1, &["network", "rm", NET, "--etcd", &w.etcd_url()]);
    for i in 1..=w.hosts() {
        assert!(
            wait_until(CONVERGE, || local(w, i).is_none()),
            "host {i} kept its part of the network:\n{}",
            w.agent_log(i)
        );
        assert_eq!(
            routes6(w, i),
            Vec::<String>::new(),
            "host {i}'s IPv6 routes"
        );
        assert_eq!(neigh6(w, i), Vec::<String>::new(), "host {i}'s neighbours");
    }
}

/// An IPv6 TCP connection across hosts survives host 1's agent being SIGKILLed and SIGTERMed and started
/// again; the restarted agent finds its IPv6 routes, permanent neighbours and `remote6` blocks as they are and
/// changes none (nor does gc); entries lost while it is away it puts back, once. Host 2's agent stopped, its
/// lease expires: host 1 withdraws host 2's IPv6 route, neighbour and `remote6` block; back, each is there
/// once, and IPv6 works again.
#[test]
fn an_agent_restart_or_crash_changes_no_ipv6_entry_and_a_leaving_peer_takes_its_own() {
    let w = cluster("ov6rst", 2, 2, &[]);
    let _a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    let block2 = block6(&w, 2);
    assert_eq!(routes6(&w, 1).len(), 1, "{:?}", routes6(&w, 1));
    assert_eq!(neigh6(&w, 1).len(), 1, "{:?}", neigh6(&w, 1));
    assert_eq!(remote6(&w, 1).len(), 1, "{:?}", remote6(&w, 1));
    assert!(
        remote6(&w, 1)[0].starts_with(&block2),
        "{:?}",
        remote6(&w, 1)
    );

    let to = SocketAddrV6::new(b, 7000, 0, 0);
    let server = echo_server(&pb, to);
    let mut client = probe::tcp_connect(&pa, to).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let mut echo = |text: &str| {
        client
            .write_all(format!("{text}\n").as_bytes())
            .expect("send");
        let mut line = String::new();
        reader.read_line(&mut line).expect("echo back");
        assert_eq!(line.trim(), text);
    };
    echo("before");

    let before = kernel_state(&w, 1);
    for signal in [Signal::SIGKILL, Signal::SIGTERM] {
        w.kill_agent(1, signal);
        echo("agent away");
        w.start_agent(1, &["--lease-ttl", TTL]);
        std::thread::sleep(Duration::from_secs(3));
        assert!(w.agent_running(1), "{}", w.agent_log(1));
        assert_eq!(
            kernel_state(&w, 1),
            before,
            "{signal:?}: the kernel changed across the restart"
        );
        echo("after restart");
    }
    w.ok(1, &["gc"]);
    assert_eq!(kernel_state(&w, 1), before, "gc changed the overlay");
    echo("after gc");
    drop(client);
    drop(reader);
    let _ = server.join();

    // Lost while the agent is away (deleted by hand): the agent, started, puts each back, once.
    w.kill_agent(1, Signal::SIGKILL);
    in_ns(
        &w.host_path(1),
        &["ip", "-6", "route", "flush", "proto", "110"],
    );
    in_ns(
        &w.host_path(1),
        &["ip", "-6", "neigh", "flush", "nud", "permanent"],
    );
    set_remote6_empty(&w, 1);
    assert!(routes6(&w, 1).is_empty() && neigh6(&w, 1).is_empty() && remote6(&w, 1).is_empty());
    w.start_agent(1, &["--lease-ttl", TTL]);
    assert!(
        wait_until(CONVERGE, || kernel_state(&w, 1) == before),
        "the agent did not put back its IPv6 entries as they were: {:?}\n{}",
        kernel_state(&w, 1),
        w.agent_log(1)
    );
    assert!(pings6(&pa, b), "a -> b, entries put back");
    // Said once: put back, the blocks are as wanted (no rewriting them every round).
    std::thread::sleep(Duration::from_secs(2));
    let log = w.agent_log(1);
    assert_eq!(
        log.matches("put back fast path's remote blocks").count(),
        1,
        "{log}"
    );

    // Host 2 leaves: host 1 withdraws all three of its IPv6 entries.
    w.kill_agent(2, Signal::SIGKILL);
    wait_joined(&w, &[1], 0);
    assert!(
        wait_until(CONVERGE, || routes6(&w, 1).is_empty()
            && neigh6(&w, 1).is_empty()
            && remote6(&w, 1).is_empty()),
        "host 1 kept host 2's IPv6 entries: {:?} {:?} {:?}",
        routes6(&w, 1),
        neigh6(&w, 1),
        remote6(&w, 1)
    );
    assert!(!pings6(&pa, b), "a -> b, host 2 gone");
    // Back: once each, the same block, and IPv6 works again.
    w.start_agent(2, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1, 2], 1);
    assert_eq!(block6(&w, 2), block2, "host 2 came back with another block");
    assert!(
        wait_until(CONVERGE, || pings6(&pa, b)),
        "a -> b, host 2 back"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(routes6(&w, 1).len(), 1, "{:?}", routes6(&w, 1));
    assert_eq!(neigh6(&w, 1).len(), 1, "{:?}", neigh6(&w, 1));
    assert_eq!(remote6(&w, 1).len(), 1, "{:?}", remote6(&w, 1));
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// etcd stops while IPv6 flows between hosts: not one echo is lost; with etcd away, host 1's agent restarts
/// and changes nothing, and a sandbox made on host 1 is reached over IPv6 from host 2. etcd back, a host that
/// joins then is reached over IPv6 too.
#[test]
fn etcd_away_hurts_no_ipv6_between_hosts() {
    let w = cluster("ov6etd", 3, 2, &[]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings6(&pa, b), "a -> b");

    let pinger = ping_many(&pa, b, 40);
    std::thread::sleep(Duration::from_millis(500));
    w.stop_etcd();
    let out = pinger.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");

    let before = kernel_state(&w, 1);
    w.kill_agent(1, Signal::SIGKILL);
    w.start_agent(1, &["--lease-ttl", TTL]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(kernel_state(&w, 1), before, "the restart with etcd away");
    let a2 = sandbox(&w, 1, "a2");
    assert!(pings6(&pb, a2), "b -> a2 with etcd down");
    assert!(pings6(&pb, a), "b -> a with etcd down");

    w.start_etcd();
    w.start_agent(3, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1, 2, 3], 2);
    let c = sandbox(&w, 3, "c");
    assert!(
        wait_until(CONVERGE, || pings6(&pa, c)),
        "a -> c:\n{}",
        w.agent_log(1)
    );
    assert!(pings6(&w.sb_path("c"), b), "c -> b");
    teardown(&w, &[(1, "a"), (1, "a2"), (2, "b"), (3, "c")]);
}

/// vxlan: host 2's underlay address changes; host 1's FDB entry follows, and IPv6 (which rides the same
/// tunnel, via the peer block's permanent neighbour, the VTEP MAC) works again, its entries unchanged.
#[test]
fn ipv6_follows_an_underlay_address_change() {
    let w = cluster("ov6rea", 2, 2, &[]);
    let _a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let pa = w.sb_path("a");
    assert!(pings6(&pa, b), "a -> b");
    let (routes, neigh) = (routes6(&w, 1), neigh6(&w, 1));
    w.set_host_ip(2, std::net::Ipv4Addr::new(192, 168, 200, 99));
    let follows = wait_until(CONVERGE, || {
        lines(&w, 1, &["bridge", "fdb", "show", "dev", "nsvx1"])
            .iter()
            .any(|l| l.contains("dst 192.168.200.99"))
    });
    assert!(follows, "host 1 kept the old address:\n{}", w.agent_log(2));
    assert!(
        wait_until(CONVERGE, || pings6(&pa, b)),
        "a -> b over IPv6 after host 2 moved"
    );
    assert_eq!((routes6(&w, 1), neigh6(&w, 1)), (routes, neigh));
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// host-gw: host 1 binds host 2's IPv6 block to host 2's underlay MAC. When that MAC changes, IPv6 to host 2
/// is black-holed (the frames go to the old MAC) until host 2's agent publishes the new one with its lease
/// (at once when it runs; here it is away at first, to show the hole); then host 1's neighbour entry
/// follows, one entry, and IPv6 works both ways again; IPv4 too.
#[test]
fn host_gw_ipv6_follows_a_peer_s_new_underlay_mac() {
    let w = cluster(
        "ov6mac",
        2,
        2,
        &["--backend", "host-gw", "--ipv6-nat=false"],
    );
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings6(&pa, b) && pings6(&pb, a), "a <-> b");
    // The MAC changes while host 2's agent is away: IPv6 to host 2 is black-holed (host 1 binds host 2's block
    // to the old MAC, which host 2 no longer takes); IPv4 re-resolves it by ARP.
    w.kill_agent(2, Signal::SIGKILL);
    let new_mac = "02:6e:00:00:02:99";
    in_ns(
        &w.host_path(2),
        &["ip", "link", "set", "dev", "eth0", "address", new_mac],
    );
    assert!(!pings6(&pa, b), "a -> b with host 1 binding the old MAC");
    w.start_agent(2, &["--lease-ttl", TTL]);
    let follows = wait_until(CONVERGE, || {
        neigh6(&w, 1).iter().any(|n| n.contains(new_mac))
    });
    assert!(
        follows,
        "host 1 kept host 2's old MAC: {:?}\n{}",
        neigh6(&w, 1),
        w.agent_log(2)
    );
    assert_eq!(neigh6(&w, 1).len(), 1, "{:?}", neigh6(&w, 1));
    // It is host 2's lease that carries it: host 2's agent republished it.
    let leases = w.etcdctl(&["get", "--prefix", "/nsnet/leases/pods/"]);
    assert!(leases.contains(new_mac), "{leases}");
    assert!(
        wait_until(CONVERGE, || pings6(&pa, b) && pings6(&pb, a)),
        "a <-> b over IPv6 after host 2's MAC changed"
    );
    for i in [1, 2] {
        let log = w.agent_log(i);
        assert!(!log.contains("remote blocks"), "host {i}: {log}");
    }
    // IPv4 (a route via host 2's address, its MAC from ARP) follows on its own.
    let b4 = w.address(2, "b");
    assert!(
        wait_until(CONVERGE, || probe::ping(&pa, b4).unwrap_or(false)),
        "a -> b over IPv4 after host 2's MAC changed"
    );
    teardown(&w, &[(1, "a"), (2, "b")]);
}
