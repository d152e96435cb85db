//! The data path: TCP throughput (iperf3) and round-trip latency (ping) sandbox to sandbox over an nsnet
//! bridge, and sandbox to an outside peer through masquerade, against a bare veth pair as the ceiling.

use std::fmt::Write as _;
use std::process::Command;
use std::thread;

use anyhow::{bail, Context as _, Result};

use crate::overlay::iperf_run;
use crate::world::{Host, World, LAN_IP};
use crate::{median, quantile, sh};

/// Average round-trip time in µs, 500 pings 2 ms apart.
fn rtt(client: &str, ip: &str) -> Result<f64> {
    let out = sh(&[
        "nsenter",
        &format!("--net=/run/netns/{client}"),
        "--",
        "ping",
        "-q",
        "-c",
        "500",
        "-i",
        "0.002",
        ip,
    ])?;
    // rtt min/avg/max/mdev = 0.031/0.045/0.090/0.010 ms
    let line = out
        .lines()
        .find(|l| l.contains("min/avg"))
        .context("ping summary")?;
    let avg = line
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .context("ping avg")?;
    Ok(avg * 1000.0)
}

struct Path {
    name: &'static str,
    gbps: f64,
    p10: f64,
    p90: f64,
    /// Each round's throughput over the ceiling's in the same round.
    same_round: Vec<f64>,
    /// The sender's retransmitted segments per run (median).
    retransmits: f64,
    rtt_us: f64,
}

fn nsnet(w_host: &str, state: &std::path::Path, args: &[&str]) -> Result<()> {
    let nsnet =
        std::env::var("NSNET_BIN_DIR").unwrap_or_else(|_| "target/release".into()) + "/nsnet";
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{w_host}"))
        .arg("--")
        .arg(&nsnet)
        .args(args)
        .env("NSNET_STATE_DIR", state)
        .output()?;
    if !out.status.success() {
        bail!("nsnet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(secs: u32, reps: usize) -> Result<String> {
    run_with(secs, reps, true)
}

/// [`run`], with iperf3's ends pinned to CPUs 0 and 1 (`pin`, where there are two) or left to the scheduler.
pub fn run_with(secs: u32, reps: usize, pin: bool) -> Result<String> {
    // Ceiling: two namespaces joined by a bare veth pair, no bridge, no rules.
    let (hv, a, b) = bare_veth("dpv", ["10.250.0.1/30", "10.250.0.2/30"])?;
    // Reference: the same two namespaces' worth of veths on a plain Linux bridge, no firewall at all.
    let hb = Host::new("dpb")?;
    let (c, d) = (format!("{}-c", hb.prefix), format!("{}-d", hb.prefix));
    sh(&["ip", "-n", &hb.name, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &hb.name, "link", "set", "br0", "up"])?;
    for (ns, ip, port) in [(&c, "10.251.0.1/24", "vc"), (&d, "10.251.0.2/24", "vd")] {
        sh(&["ip", "netns", "add", ns])?;
        sh(&[
            "ip", "-n", &hb.name, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])?;
        sh(&[
            "ip", "-n", &hb.name, "link", "set", port, "master", "br0", "up",
        ])?;
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    // nsnet: two sandboxes on one bridge network with nsnet's rules in place, and a LAN peer outside.
    let w = World::new("dpn", "nftables")?;
    let other = format!("{}-2", w.sandbox);
    nsnet(&w.host, &w.state, &["create", &other, "-p", "8080:80"])?;
    // The same two sandboxes' worth on a network without the fast path: nsnet's bridge path.
    let (s1, s2) = (format!("{}-s1", w.sandbox), format!("{}-s2", w.sandbox));
    nsnet(
        &w.host,
        &w.state,
        &[
            "network",
            "create",
            "slow",
            "--subnet",
            "10.93.0.0/24",
            "--fast-path=false",
        ],
    )?;
    for s in [&s1, &s2] {
        nsnet(&w.host, &w.state, &["create", s, "--network", "slow"])?;
    }
    let lan = LAN_IP.to_string();
    // (name, server namespace, client namespace, server address). World's sandbox is 10.89.0.2, the new
    // one 10.89.0.3.
    let cases: [(&'static str, &str, &str, &str); 5] = [
        ("bare veth pair (ceiling)", &b, &a, "10.250.0.2"),
        (
            "plain Linux bridge, no firewall (reference)",
            &d,
            &c,
            "10.251.0.2",
        ),
        (
            "nsnet: sandbox -> sandbox (fast path, the default)",
            &other,
            &w.sandbox,
            "10.89.0.3",
        ),
        (
            "nsnet --fast-path=false: sandbox -> sandbox over the bridge",
            &s2,
            &s1,
            "10.93.0.3",
        ),
        (
            "nsnet: sandbox -> outside peer, masqueraded",
            &w.lan,
            &w.sandbox,
            &lan,
        ),
    ];
    let pin = pin && thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let paths = measure(&cases, secs, reps, pin)?;
    for s in [&other, &s1, &s2] {
        nsnet(&w.host, &w.state, &["rm", s])?;
    }
    nsnet(&w.host, &w.state, &["network", "rm", "slow"])?;
    drop(w);
    drop(hb);
    drop(hv);
    Ok(table("", &paths, secs, reps, pin))
}

/// Each case's throughput, interleaved over `reps` rounds, and its round trip; the first case is the ceiling.
fn measure(
    cases: &[(&'static str, &str, &str, &str)],
    secs: u32,
    reps: usize,
    pin: bool,
) -> Result<Vec<Path>> {
    // Interleaved (A B C D, A B C D, ...), so the machine's drift hits every path alike; each path's
    // same-round ratio to the ceiling cancels what drift is left. iperf3's two ends pinned to two CPUs, the
    // client to CPU 0 and the server to CPU 1: with veths the sender's CPU carries the whole path in softirq
    // and the receiver's the copy to user space, and left to the scheduler that split changes from run to
    // run (both ends on one CPU is another path altogether).
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut retrans: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..reps {
        for (i, (name, server, client, ip)) in cases.iter().enumerate() {
            let (g, r) = iperf_run(server, client, ip, secs, pin)?;
            eprintln!(
                "datapath: round {}: {name}: {g:.2} Gbit/s, {r} retransmits",
                round + 1
            );
            gbps[i].push(g);
            retrans[i].push(f64::from(u32::try_from(r).unwrap_or(u32::MAX)));
        }
    }
    let mut paths = Vec::new();
    for (i, (name, _, client, ip)) in cases.iter().enumerate() {
        let same_round: Vec<f64> = gbps[i].iter().zip(&gbps[0]).map(|(g, c)| g / c).collect();
        paths.push(Path {
            name,
            gbps: median(gbps[i].clone()),
            p10: quantile(&gbps[i], 0.1),
            p90: quantile(&gbps[i], 0.9),
            same_round,
            retransmits: median(retrans[i].clone()),
            rtt_us: rtt(client, ip)?,
        });
    }
    Ok(paths)
}

/// The results table; `family` goes into its title (" over IPv6", or nothing).
fn table(family: &str, paths: &[Path], secs: u32, reps: usize, pin: bool) -> String {
    let mut s = String::new();
    let pinned = if pin {
        "iperf3's client on CPU 0, its server on CPU 1"
    } else {
        "iperf3 not pinned"
    };
    let _ = writeln!(
        s,
        "### Data path{family}: one TCP stream (iperf3, {secs} s, {reps} runs per path, paths interleaved; {pinned}) \
         and ping round trip (500 pings)\n"
    );
    let _ = writeln!(
        s,
        "| path | throughput (median) | p10–p90 | vs bare veth | same round vs bare veth: median (p10–p90) | retransmits per run (median) | round trip |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let ceiling = paths.first().map(|p| p.gbps).unwrap_or(f64::NAN);
    for p in paths {
        let _ = writeln!(
            s,
            "| {} | {:.1} Gbit/s | {:.1}–{:.1} | {:.1}% | {:.1}% ({:.1}–{:.1}%) | {:.0} | {:.0} µs |",
            p.name,
            p.gbps,
            p.p10,
            p.p90,
            100.0 * p.gbps / ceiling,
            100.0 * quantile(&p.same_round, 0.5),
            100.0 * quantile(&p.same_round, 0.1),
            100.0 * quantile(&p.same_round, 0.9),
            p.retransmits,
            p.rtt_us
        );
    }
    s
}

/// The IPv6 data path (issue #19): sandbox to sandbox on a dual-stack network, with and without the fast
/// path, against a bare veth pair carrying IPv6 (target: the fast path at 95% of it or more).
pub fn run6(secs: u32, reps: usize, pin: bool) -> Result<String> {
    let (hv, a, b) = bare_veth("dp6v", ["fd00:250::1/64", "fd00:250::2/64"])?;
    // nsnet: two dual-stack networks, one with the fast path (the default), one without.
    let h = Host::new("dp6n")?;
    let gate = |args: &[&str]| -> Result<String> {
        let nsnet =
            std::env::var("NSNET_BIN_DIR").unwrap_or_else(|_| "target/release".into()) + "/nsnet";
        let out = h
            .cmd(&nsnet)
            .args(args)
            .env("NSNET_STATE_DIR", &h.state)
            .output()?;
        if !out.status.success() {
            bail!("nsnet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let names: Vec<String> = ["f1", "f2", "s1", "s2"]
        .iter()
        .map(|n| format!("{}-{n}", h.prefix))
        .collect();
    gate(&[
        "network",
        "create",
        "fast",
        "--ipv6",
        "--subnet",
        "fd00:251::/64",
        "--dns=false",
    ])?;
    gate(&[
        "network",
        "create",
        "slow",
        "--ipv6",
        "--subnet",
        "fd00:252::/64",
        "--fast-path=false",
        "--dns=false",
    ])?;
    for (name, net) in names.iter().zip(["fast", "fast", "slow", "slow"]) {
        gate(&["create", name, "--network", net])?;
    }
    // Addresses are handed out from ::2 in order: the second sandbox of each network is ::3.
    let cases: [(&'static str, &str, &str, &str); 3] = [
        ("bare veth pair over IPv6 (ceiling)", &b, &a, "fd00:250::2"),
        (
            "nsnet: sandbox -> sandbox over IPv6 (fast path, the default)",
            &names[1],
            &names[0],
            "fd00:251::3",
        ),
        (
            "nsnet --fast-path=false: sandbox -> sandbox over IPv6, over the bridge",
            &names[3],
            &names[2],
            "fd00:252::3",
        ),
    ];
    let pin = pin && thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let paths = measure(&cases, secs, reps, pin)?;
    for name in &names {
        gate(&["rm", name])?;
    }
    gate(&["network", "rm", "fast"])?;
    gate(&["network", "rm", "slow"])?;
    drop(h);
    drop(hv);
    Ok(table(" over IPv6", &paths, secs, reps, pin))
}

/// The ceiling: two namespaces (`-a`, `-b` under a throwaway host `tag`) joined by a bare veth pair with
/// `addrs`, no bridge, no rules. IPv6 ends are set up as nsnet sets up a sandbox's `eth0`: no generated
/// link-local address (`addrgenmode none`), a link-local one added without DAD, and the address without DAD,
/// so neither side of the comparison has a tentative address (or its DAD and MLD traffic) at the start.
fn bare_veth(tag: &str, addrs: [&str; 2]) -> Result<(Host, String, String)> {
    let hv = Host::new(tag)?;
    let (a, b) = (format!("{}-a", hv.prefix), format!("{}-b", hv.prefix));
    sh(&["ip", "netns", "add", &a])?;
    sh(&["ip", "netns", "add", &b])?;
    sh(&[
        "ip", "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
    ])?;
    for ((ns, ip), link_local) in [(&a, addrs[0]), (&b, addrs[1])]
        .into_iter()
        .zip(["fe80::1/64", "fe80::2/64"])
    {
        let mut add = vec!["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"];
        if ip.contains(':') {
            add.push("nodad");
            sh(&["ip", "-n", ns, "link", "set", "eth0", "addrgenmode", "none"])?;
            sh(&[
                "ip", "-n", ns, "addr", "add", link_local, "dev", "eth0", "nodad",
            ])?;
        }
        sh(&add)?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok((hv, a, b))
}
