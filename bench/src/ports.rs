//! `ports`: published ports at scale. With N mappings already in place, how long adding and removing one more
//! takes, and how many TCP connections per second reach the last-added port, for nsnet's nftables driver (map
//! elements), nsnet's iptables driver (one DNAT rule per port, one iptables-restore per change) and the CNI
//! reference `portmap` plugin (Debian's containernetworking-plugins), the iptables way most runtimes use.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nsnet_core::firewall::{Backend, Batch, Rule};
use nsnet_core::netns;
use nsnet_core::portmap::{PortMapping, Proto};

use crate::world::{World, HOST_IP};
use crate::{f64_of_u64, machine, median};

/// The sandbox's address on the default network (the first one handed out).
const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
pub const PORTMAP: &str = "/usr/lib/cni/portmap";
/// The host port of the "one more" mapping; the bulk ones start at 20000.
const ONE_MORE: u16 = 40000;

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
                    target: SANDBOX_IP.into(),
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
    Ok(f64_of_u64(count) / secs)
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
        // Each change measured on its own, as separate commands are: right after a deletion, the kernel is
        // still freeing the deleted element (one RCU grace period, under nf_tables' commit lock), and the next
        // change in the same namespace would wait for that.
        thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        peer.publish(&w, "one", ONE_MORE, 1, true)?;
        adds.push(t.elapsed().as_secs_f64() * 1e3);
        thread::sleep(Duration::from_millis(30));
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

pub fn ports(sizes: &[u16], reps: usize, portmap_max: u16) -> Result<String> {
    let mut out = String::new();
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
    let _ = writeln!(
        out,
        "Published ports at scale ({reps} repetitions, medians). Machine: {}\n",
        machine()
    );
    let _ = writeln!(out, "| publisher | mappings already there | publishing them took | add one more | remove it | new TCP connections/s to the last port |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} s | {:.2} ms | {:.2} ms | {:.0} |",
            r.peer, r.mappings, r.setup_s, r.add_ms, r.del_ms, r.conns
        );
    }
    for n in skipped {
        let _ = writeln!(out, "| {} | {n} | not run: one iptables process per rule takes minutes to set up (raise --portmap-max) | | | |",
            Peer::Portmap.name()
        );
    }
    // Ratios against nsnet's nftables driver at each size.
    let _ = writeln!(out, "\nRatios (peer / nsnet nftables) at each size:\n");
    let _ = writeln!(
        out,
        "| publisher | mappings | add one | remove one | connections/s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| !r.peer.contains("nftables")) {
        if let Some(base) = rows
            .iter()
            .find(|b| b.mappings == r.mappings && b.peer.contains("nftables"))
        {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1}x | {:.1}x | {:.2}x |",
                r.peer,
                r.mappings,
                r.add_ms / base.add_ms,
                r.del_ms / base.del_ms,
                r.conns / base.conns
            );
        }
    }
    Ok(out)
}
