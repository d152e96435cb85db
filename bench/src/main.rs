//! nsnet's benchmarks against its peers. Each case runs in throwaway namespaces of its own and removes them.
//!
//! `nsnet-bench ports [--sizes 1,1000,10000] [--reps 15]`: published ports at scale. With N mappings already
//! in place, how long adding and removing one more takes, and how many TCP connections per second reach the
//! last-added port, for nsnet's nftables driver (map elements), nsnet's iptables driver (one DNAT rule per
//! port, one iptables-restore per change) and the CNI reference `portmap` plugin (Debian's
//! containernetworking-plugins), the iptables way most runtimes use.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nsnet_core::firewall::{Backend, Batch, Rule};
use nsnet_core::netns;
use nsnet_core::portmap::{PortMapping, Proto};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 48);
const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 26);
/// The sandbox's address on the default network (the first one handed out).
const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
const PORTMAP: &str = "/usr/lib/cni/portmap";
/// The host port of the "one more" mapping; the bulk ones start at 20000.
const ONE_MORE: u16 = 40000;

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A throwaway host with an uplink to a LAN peer, and one nsnet sandbox on the default network.
struct World {
    host: String,
    lan: String,
    sandbox: String,
    state: PathBuf,
}

impl World {
    fn new(tag: &str, firewall: &str) -> Result<World> {
        let pid = std::process::id();
        let w = World {
            host: format!("nsb-{pid}-{tag}-h"),
            lan: format!("nsb-{pid}-{tag}-l"),
            sandbox: format!("nsb-{pid}-{tag}-s"),
            state: std::env::temp_dir().join(format!("nsnet-bench-{pid}-{tag}")),
        };
        sh(&["ip", "netns", "add", &w.host])?;
        sh(&["ip", "netns", "add", &w.lan])?;
        sh(&[
            "ip", "-n", &w.host, "link", "add", "uplink0", "type", "veth", "peer", "name", "lan0",
            "netns", &w.lan,
        ])?;
        for (ns, dev, addr) in [(&w.host, "uplink0", HOST_IP), (&w.lan, "lan0", LAN_IP)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let nsnet = std::env::var("NSNET").unwrap_or_else(|_| "target/release/nsnet".into());
        let net = format!("--net=/run/netns/{}", w.host);
        let out = Command::new("nsenter")
            .args([net.as_str(), "--", &nsnet, "create", &w.sandbox])
            .env("NSNET_STATE_DIR", &w.state)
            .env("NSNET_FIREWALL", firewall)
            .output()
            .context("run nsnet (build it first: cargo build --release)")?;
        if !out.status.success() {
            bail!(
                "nsnet create: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(w)
    }

    fn path(name: &str) -> PathBuf {
        netns::named_path(name)
    }

    fn host_fd(&self) -> Result<OwnedFd> {
        Ok(netns::open(&World::path(&self.host))?)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The host namespace takes the bridge, the veths and every rule with it.
        for ns in [&self.sandbox, &self.lan, &self.host] {
            // The sandbox may be gone already (the soak removes it).
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Who publishes the ports.
#[derive(Clone, Copy)]
enum Peer {
    Nsnet(Backend),
    Portmap,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Nsnet(Backend::Nftables) => "nsnet, nftables (map elements)",
            Peer::Nsnet(Backend::Iptables) => "nsnet, iptables (rule per port)",
            Peer::Nsnet(Backend::None) => "nsnet, no firewall",
            Peer::Portmap => "CNI portmap 1.1.1 (iptables)",
        }
    }

    /// Publish host ports `first..first+count` to the same ports of the sandbox.
    fn publish(self, w: &World, container: &str, first: u16, count: u16, add: bool) -> Result<()> {
        match self {
            Peer::Nsnet(backend) => {
                let mapping = PortMapping {
                    host_ip: None,
                    host_port: first,
                    container_port: first,
                    count,
                    protocol: Proto::Tcp,
                };
                let mut batch = Batch::default();
                let rule = Rule::Port {
                    mapping,
                    target: SANDBOX_IP,
                };
                if add {
                    batch.add(rule);
                } else {
                    batch.delete(rule);
                }
                // The driver's tools are spawned from a thread inside the host namespace, so they act there.
                netns::run_in(&w.host_fd()?, || backend.apply(&batch))??;
                Ok(())
            }
            Peer::Portmap => portmap(w, if add { "ADD" } else { "DEL" }, container, first, count),
        }
    }
}

/// Run the CNI portmap plugin as a runtime would: environment, config on stdin, inside the host namespace.
fn portmap(w: &World, command: &str, container: &str, first: u16, count: u16) -> Result<()> {
    let mappings: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"hostPort": first + i, "containerPort": first + i, "protocol": "tcp"}))
        .collect();
    let sandbox = World::path(&w.sandbox);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": sandbox}],
            "ips": [{"address": format!("{SANDBOX_IP}/24"), "interface": 0}],
        },
    });
    let mut cmd = Command::new(PORTMAP);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", &sandbox)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    netns::command_in(&mut cmd, w.host_fd()?);
    let mut child = cmd
        .spawn()
        .context("run the CNI portmap plugin (apt-get install containernetworking-plugins)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "portmap {command}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// New TCP connections per second from the LAN peer to the host's published port, over `secs`.
fn connection_rate(w: &World, port: u16, secs: f64) -> Result<f64> {
    let listener = netns::run_in(&netns::open(&World::path(&w.sandbox))?, || {
        TcpListener::bind(("0.0.0.0", port))
    })??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = thread::spawn(move || {
        while !server_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let lan = netns::open(&World::path(&w.lan))?;
    let to = SocketAddrV4::new(HOST_IP, port);
    let count = netns::run_in(&lan, || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        n
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(count as f64 / secs)
}

struct Row {
    peer: &'static str,
    mappings: u32,
    setup_s: f64,
    add_ms: f64,
    del_ms: f64,
    conns: f64,
}

fn measure(peer: Peer, n: u16, reps: usize) -> Result<Row> {
    let firewall = match peer {
        Peer::Nsnet(b) => b.to_string(),
        Peer::Portmap => "none".into(),
    };
    let tag = format!("{}{n}", &firewall[..3]);
    let w = World::new(&tag, &firewall)?;
    let t = Instant::now();
    peer.publish(&w, "bulk", 20000, n, true)?;
    let setup_s = t.elapsed().as_secs_f64();
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        peer.publish(&w, "one", ONE_MORE, 1, true)?;
        adds.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        peer.publish(&w, "one", ONE_MORE, 1, false)?;
        dels.push(t.elapsed().as_secs_f64() * 1e3);
    }
    peer.publish(&w, "one", ONE_MORE, 1, true)?;
    let conns = connection_rate(&w, ONE_MORE, 2.0)?;
    Ok(Row {
        peer: peer.name(),
        mappings: u32::from(n),
        setup_s,
        add_ms: median(adds),
        del_ms: median(dels),
        conns,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = sh(&["uname", "-r"]).unwrap_or_default();
    let nft = sh(&["nft", "--version"]).unwrap_or_default();
    let ipt = sh(&["iptables", "--version"]).unwrap_or_default();
    format!(
        "{cpu}, {cores} cores; Linux {}; {}; {}",
        kernel.trim(),
        nft.trim(),
        ipt.trim()
    )
}

fn ports(sizes: &[u16], reps: usize, portmap_max: u16) -> Result<()> {
    let mut peers = vec![
        Peer::Nsnet(Backend::Nftables),
        Peer::Nsnet(Backend::Iptables),
    ];
    if Path::new(PORTMAP).exists() {
        peers.push(Peer::Portmap);
    } else {
        eprintln!("{PORTMAP} not found (apt-get install containernetworking-plugins): skipping the CNI peer");
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &n in sizes {
        for &peer in &peers {
            if matches!(peer, Peer::Portmap) && n > portmap_max {
                skipped.push(n);
                continue;
            }
            eprintln!("{} with {n} mappings...", peer.name());
            rows.push(measure(peer, n, reps)?);
        }
    }
    println!(
        "Published ports at scale ({reps} repetitions, medians). Machine: {}\n",
        machine()
    );
    println!("| publisher | mappings already there | publishing them took | add one more | remove it | new TCP connections/s to the last port |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} s | {:.2} ms | {:.2} ms | {:.0} |",
            r.peer, r.mappings, r.setup_s, r.add_ms, r.del_ms, r.conns
        );
    }
    for n in skipped {
        println!(
            "| {} | {n} | not run: one iptables process per rule takes minutes to set up (raise --portmap-max) | | | |",
            Peer::Portmap.name()
        );
    }
    // Ratios against nsnet's nftables driver at each size.
    println!("\nRatios (peer / nsnet nftables) at each size:\n");
    println!("| publisher | mappings | add one | remove one | connections/s |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| !r.peer.contains("nftables")) {
        if let Some(base) = rows
            .iter()
            .find(|b| b.mappings == r.mappings && b.peer.contains("nftables"))
        {
            println!(
                "| {} | {} | {:.1}x | {:.1}x | {:.2}x |",
                r.peer,
                r.mappings,
                r.add_ms / base.add_ms,
                r.del_ms / base.del_ms,
                r.conns / base.conns
            );
        }
    }
    Ok(())
}

/// Create and remove a sandbox with a published port, `cycles` times, in one throwaway host: time per cycle
/// by blocks, peak memory of any nsnet process, and what is left at the end.
fn soak(cycles: usize) -> Result<()> {
    let w = World::new("soak", "nftables")?;
    let nsnet = std::env::var("NSNET").unwrap_or_else(|_| "target/release/nsnet".into());
    let net = format!("--net=/run/netns/{}", w.host);
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("nsenter")
            .args([net.as_str(), "--", &nsnet])
            .args(args)
            .env("NSNET_STATE_DIR", &w.state)
            .output()?;
        if !out.status.success() {
            bail!(
                "nsnet {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let block = (cycles / 10).max(1);
    let mut times = Vec::with_capacity(block);
    println!(
        "Soak: {cycles} cycles of `nsnet create -p PORT:80` + `nsnet rm`. Machine: {}\n",
        machine()
    );
    println!("| cycles | median ms per cycle | slowest ms | peak RSS of any nsnet process |");
    println!("|---:|---:|---:|---:|");
    for i in 0..cycles {
        let name = format!("soak{i}");
        let port = format!("{}:80", 20000 + (i % 1000));
        let t = Instant::now();
        run(&["create", &name, "-p", &port])?;
        run(&["rm", &name])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() == block {
            let slowest = times.iter().copied().fold(0.0, f64::max);
            let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
                .map(|u| u.max_rss())
                .unwrap_or(0);
            println!(
                "| {} | {:.1} | {:.1} | {:.1} MiB |",
                i + 1,
                median(std::mem::take(&mut times)),
                slowest,
                rss as f64 / 1024.0
            );
        }
    }
    // Residue: no sandbox namespace, record, element or link may outlive the cycles.
    run(&["rm", &w.sandbox])?;
    run(&["network", "rm", "nsnet0"])?;
    let links: Vec<String> = sh(&["ip", "-n", &w.host, "-o", "link"])?
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect();
    let leftover_ns = sh(&["ip", "netns", "list"])?
        .lines()
        .filter(|l| l.starts_with("soak"))
        .count();
    let net_arg = format!("--net=/run/netns/{}", w.host);
    let tables = sh(&["nsenter", &net_arg, "nft", "list", "tables"])?;
    println!(
        "\nResidue after the last cycle and `network rm`: host links {links:?} (lo and the uplink were there \
         before), {leftover_ns} sandbox namespaces, nft tables: {:?}, state dir exists: {}",
        tables.trim(),
        w.state.exists()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the benchmark creates network namespaces");
    }
    match args.first().map(String::as_str) {
        Some("ports") => {
            let sizes: Vec<u16> = value("--sizes")
                .unwrap_or_else(|| "1,1000,10000".into())
                .split(',')
                .map(|s| s.parse().context("--sizes takes numbers like 1,1000,10000"))
                .collect::<Result<_>>()?;
            let reps = value("--reps")
                .map(|r| r.parse())
                .transpose()?
                .unwrap_or(15);
            let portmap_max = value("--portmap-max")
                .map(|r| r.parse())
                .transpose()?
                .unwrap_or(1000);
            ports(&sizes, reps, portmap_max)
        }
        Some("soak") => soak(value("--cycles").map(|c| c.parse()).transpose()?.unwrap_or(2000)),
        _ => bail!(
            "usage: nsnet-bench ports [--sizes 1,1000,10000] [--reps 15] [--portmap-max 1000]              | soak [--cycles 2000]"
        ),
    }
}
