//! `nsnet demo`: the seed article's walkthrough, built with nsnet's own commands inside a throwaway host
//! namespace, each step checked with real packets, then everything removed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use nsnet_core::kernel::{netns, Netlink, VethSpec};
use nsnet_core::probe;

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 48);
const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 26);

/// The throwaway world: a "host" namespace with an uplink to a "LAN peer" namespace.
struct World {
    host: String,
    lan: String,
    state: PathBuf,
    passed: usize,
    failed: usize,
}

impl Drop for World {
    fn drop(&mut self) {
        // Deleting the host namespace takes the uplink and anything left inside with it.
        let _ = netns::delete(&self.lan);
        let _ = netns::delete(&self.host);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl World {
    fn new() -> Result<World> {
        let pid = std::process::id();
        let world = World {
            host: format!("nsnet-demo-{pid}"),
            lan: format!("nsnet-demo-{pid}-lan"),
            state: std::env::temp_dir().join(format!("nsnet-demo-{pid}")),
            passed: 0,
            failed: 0,
        };
        let mut host =
            netns::create(&world.host, None).context("creating the demo host namespace")?;
        let mut lan = netns::create(&world.lan, None).context("creating the demo LAN namespace")?;
        let lan_fd = netns::open(&netns::named_path(&world.lan))?;
        host.create_veth(&VethSpec {
            host: "uplink0",
            peer: "lan0",
            peer_netns: lan_fd.as_fd(),
            master: None,
            mtu: 1500,
            peer_mac: None,
            host_mac: None,
        })?;
        host.set_up("uplink0")?;
        host.add_address("uplink0", ipnet::Ipv4Net::new(HOST_IP, 24)?)?;
        lan.set_up("lan0")?;
        lan.add_address("lan0", ipnet::Ipv4Net::new(LAN_IP, 24)?)?;
        Ok(world)
    }

    fn host_path(&self) -> PathBuf {
        netns::named_path(&self.host)
    }

    /// Run `nsnet ARGS` inside the demo host, showing the command and its output.
    fn nsnet(&mut self, args: &[&str]) -> Result<()> {
        println!("$ nsnet {}", args.join(" "));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        netns::command_in(&mut cmd, netns::open(&self.host_path())?);
        let out = cmd.output().context("running nsnet")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("  {line}");
        }
        let ok = out.status.success();
        if !ok {
            println!("  {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        self.check(ok, "the command succeeded");
        Ok(())
    }

    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
    }

    fn ping(&mut self, from: &Path, label: &str, ip: Ipv4Addr) -> Result<()> {
        let ok = probe::ping(from, ip)?;
        self.check(ok, &format!("{label}: ping {ip}"));
        Ok(())
    }
}

fn sandbox(name: &str) -> PathBuf {
    netns::named_path(name)
}

pub fn run() -> Result<ExitCode> {
    let mut w = World::new()?;
    let pid = std::process::id();
    let (ns1, ns2, ns3) = (
        format!("netns1-{pid}"),
        format!("netns2-{pid}"),
        format!("netns3-{pid}"),
    );
    let host = w.host_path();
    let lan = netns::named_path(&w.lan);
    println!(
        "The seed article's topology, inside throwaway namespace {} (host {HOST_IP}, uplink0) with a LAN peer {} ({LAN_IP}).\n",
        w.host, w.lan
    );

    println!("1. A veth pair, point to point: host end 172.16.0.1, sandbox end 172.16.0.2");
    w.nsnet(&[
        "network",
        "create",
        "p2p",
        "--driver",
        "veth",
        "--subnet",
        "172.16.0.0/24",
        "--bridge",
        "veth1",
    ])?;
    w.nsnet(&["create", &ns1, "--network", "p2p", "--ip", "172.16.0.2"])?;
    w.ping(&host, "host -> sandbox", Ipv4Addr::new(172, 16, 0, 2))?;
    w.ping(
        &sandbox(&ns1),
        "sandbox -> host",
        Ipv4Addr::new(172, 16, 0, 1),
    )?;
    w.nsnet(&["rm", &ns1])?;
    w.nsnet(&["network", "rm", "p2p"])?;

    println!(
        "\n2. A bridge br0 (172.16.0.100) joining two sandboxes, 172.16.0.102 and 172.16.0.103"
    );
    w.nsnet(&[
        "network",
        "create",
        "br0net",
        "--subnet",
        "172.16.0.0/24",
        "--gateway",
        "172.16.0.100",
        "--bridge",
        "br0",
    ])?;
    w.nsnet(&[
        "create",
        &ns2,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.102",
        "-p",
        "8088:80",
    ])?;
    w.nsnet(&[
        "create",
        &ns3,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.103",
    ])?;
    w.ping(
        &sandbox(&ns2),
        "netns2 -> netns3",
        Ipv4Addr::new(172, 16, 0, 103),
    )?;
    w.ping(
        &sandbox(&ns3),
        "netns3 -> netns2",
        Ipv4Addr::new(172, 16, 0, 102),
    )?;

    println!("\n3. Out to the LAN: default route via br0, forwarding, masquerade");
    let server = probe::tcp_server(&lan, SocketAddrV4::new(LAN_IP, 9000))?;
    let hello = probe::tcp_hello(&sandbox(&ns2), SocketAddrV4::new(LAN_IP, 9000));
    let seen = server.wait();
    w.check(
        hello.is_ok(),
        &format!("netns2 -> LAN peer {LAN_IP}:9000 connected"),
    );
    let seen_ip = seen
        .as_ref()
        .ok()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    w.check(
        seen_ip == HOST_IP.to_string(),
        &format!("the LAN peer saw the host's address {HOST_IP} (saw {seen_ip:?})"),
    );

    println!("\n4. A published port: LAN peer -> {HOST_IP}:8088 reaches netns2:80");
    let server = probe::tcp_server(&sandbox(&ns2), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80))?;
    let hello = probe::tcp_hello(&lan, SocketAddrV4::new(HOST_IP, 8088));
    let seen = server.wait();
    w.check(
        hello.is_ok(),
        &format!(
            "LAN peer -> {HOST_IP}:8088 answered: {:?}",
            hello.unwrap_or_default()
        ),
    );
    let seen_ip = seen
        .as_ref()
        .ok()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    w.check(
        seen_ip == LAN_IP.to_string(),
        &format!("netns2 saw the real client {LAN_IP} (saw {seen_ip:?})"),
    );

    println!("\n5. Teardown");
    w.nsnet(&["rm", &ns2])?;
    w.nsnet(&["rm", &ns3])?;
    w.nsnet(&["network", "rm", "br0net"])?;
    let fd = netns::open(&host)?;
    let links: Vec<String> = netns::run_in(&fd, || Netlink::open().and_then(|mut nl| nl.links()))??
        .into_iter()
        .map(|l| l.name)
        .collect();
    w.check(
        links == ["lo", "uplink0"],
        &format!("host links are back to {links:?}"),
    );
    let mut nft = Command::new("nft");
    nft.args(["list", "tables"]);
    netns::command_in(&mut nft, netns::open(&host)?);
    let tables = nft
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    w.check(tables.trim().is_empty(), "no nftables table left");
    w.check(
        !sandbox(&ns2).exists() && !sandbox(&ns3).exists(),
        "the sandboxes' namespaces are gone",
    );
    w.check(!w.state.exists(), "the state dir is gone");

    let (passed, failed) = (w.passed, w.failed);
    drop(w);
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
