//! The command line of multi-host overlay networks: `nsnet agent`, and `network create|rm|ls|inspect` with
//! `--etcd`, which work on the settings the cluster keeps in etcd.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use ipnet::Ipv4Net;
use nsnet_core::agent::cluster::{self, NetworkSpec, DEFAULT_VXLAN_PORT};
use nsnet_core::agent::{self, Agent, AgentConfig, DEFAULT_LEASE_TTL};
use nsnet_core::etcd::Etcd;
use nsnet_core::model::OverlayBackend;
use nsnet_core::ops::{Ipv6Request, Nsnet};

/// `nsnet network create --driver overlay` options.
#[derive(Args, Default)]
pub struct OverlayArgs {
    /// etcd's client URLs (http://IP:PORT, comma-separated): where an overlay network's settings live.
    #[arg(long, env = "NSNET_ETCD", value_name = "URLS")]
    pub etcd: Option<String>,
    /// Overlay: the prefix length of each host's block of the subnet (default 24).
    #[arg(long, value_name = "LEN")]
    pub host_subnet_len: Option<u8>,
    /// Overlay: vxlan (default; any underlay) or host-gw (plain routes; every host on one L2 segment).
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<OverlayBackend>,
    /// Overlay: the VXLAN network identifier (1-16777215, default 1).
    #[arg(long)]
    pub vni: Option<u32>,
    /// Overlay: the VXLAN UDP port (default 4789).
    #[arg(long, value_name = "PORT")]
    pub vxlan_port: Option<u16>,
    /// Overlay with IPv6: the prefix length of each host's block of the IPv6 --subnet (default 64).
    #[arg(long, value_name = "LEN")]
    pub host_subnet6_len: Option<u8>,
}

impl OverlayArgs {
    fn given(&self) -> Option<&'static str> {
        [
            (self.host_subnet_len.is_some(), "--host-subnet-len"),
            (self.backend.is_some(), "--backend"),
            (self.vni.is_some(), "--vni"),
            (self.vxlan_port.is_some(), "--vxlan-port"),
            (self.host_subnet6_len.is_some(), "--host-subnet6-len"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// `nsnet agent` options.
#[derive(Args)]
pub struct AgentArgs {
    /// etcd's client URLs (http://IP:PORT, comma-separated).
    #[arg(long, env = "NSNET_ETCD", value_name = "URLS")]
    etcd: String,
    /// The interface the other hosts reach this one by (default: the default route's).
    #[arg(long, value_name = "IF", conflicts_with = "underlay_ip")]
    iface: Option<String>,
    /// The address the other hosts reach this one by.
    #[arg(long, value_name = "IP")]
    underlay_ip: Option<Ipv4Addr>,
    /// Seconds this host's subnets outlive its last renewal of its etcd lease (default 15).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LEASE_TTL)]
    lease_ttl: i64,
}

fn etcd_of(urls: &str) -> Result<Etcd> {
    let urls: Vec<String> = urls.split(',').map(|s| s.trim().to_string()).collect();
    Ok(Etcd::new(&urls)?)
}

/// Refuse overlay-only options on another driver.
pub fn check_not_overlay(args: &OverlayArgs) -> Result<()> {
    if let Some(flag) = args.given().or(args.etcd.as_ref().map(|_| "--etcd")) {
        bail!("{flag} is for --driver overlay only; leave it out, or add --driver overlay");
    }
    Ok(())
}

/// What `network create --driver overlay` was given besides its own options.
pub struct Common<'a> {
    pub name: &'a str,
    pub subnet: Option<Ipv4Net>,
    /// `--ipv6` (or an IPv6 `--subnet`): dual stack.
    pub ipv6: Option<Ipv6Request>,
    pub mtu: Option<u32>,
    /// A bridge-only option that was given, to refuse.
    pub bridge_only: Option<&'static str>,
}

/// `nsnet network create NAME --driver overlay ...`.
pub fn create(args: &OverlayArgs, c: &Common<'_>, dry_run: bool, json: bool) -> Result<ExitCode> {
    if let Some(flag) = c.bridge_only {
        bail!("{flag} does not apply to --driver overlay (each host's part is made by nsnet agent); leave it out");
    }
    if c.ipv6.is_some_and(|r6| r6.only) {
        bail!("--driver overlay needs IPv4 (hosts lease IPv4 blocks, and VXLAN runs over IPv4): leave out --ipv4=false, and give an IPv4 --subnet too");
    }
    let Some(subnet) = c.subnet else {
        bail!("--driver overlay needs --subnet, the whole cluster's range (e.g. --subnet 10.244.0.0/16)");
    };
    let subnet6 = match c.ipv6 {
        None => {
            if args.host_subnet6_len.is_some() {
                bail!("--host-subnet6-len needs an IPv6 --subnet, the cluster's IPv6 prefix");
            }
            None
        }
        Some(r6) => {
            let Some(s6) = r6.subnet else {
                bail!("--driver overlay --ipv6 needs an IPv6 --subnet too, the whole cluster's IPv6 prefix (e.g. --subnet fd00:10:244::/56): every host takes a block of it");
            };
            Some(s6)
        }
    };
    let Some(urls) = &args.etcd else {
        bail!("--driver overlay needs --etcd http://IP:2379 (or NSNET_ETCD): the network's settings live in etcd");
    };
    let spec = NetworkSpec {
        name: c.name.to_string(),
        subnet,
        host_subnet_len: args.host_subnet_len.unwrap_or(24),
        backend: args.backend.unwrap_or_default(),
        vni: args.vni.unwrap_or(1),
        port: args.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT),
        mtu: c.mtu,
        subnet6,
        host_subnet6_len: subnet6.map(|_| {
            args.host_subnet6_len
                .unwrap_or(cluster::DEFAULT_HOST_SUBNET6_LEN)
        }),
        ipv6_nat: c.ipv6.is_none_or(|r6| r6.nat),
    };
    if let Err(e) = spec.validate() {
        bail!("{e}");
    }
    let etcd = etcd_of(urls)?;
    let text = serde_json::to_string(&spec)?;
    if dry_run {
        println!(
            "# etcd at {urls}: create {} = {text}",
            cluster::network_key(&spec.name)
        );
        return Ok(ExitCode::SUCCESS);
    }
    agent::create_network(&etcd, &spec)?;
    if json {
        println!("{text}");
    } else {
        let six = match (spec.subnet6, spec.host_subnet6_len) {
            (Some(s6), Some(len6)) => format!(" and {s6} /{len6} per host"),
            _ => String::new(),
        };
        println!(
            "overlay network {} ({}, {} /{} per host{six}); start `nsnet agent --etcd {urls}` on every host",
            spec.name, spec.subnet, spec.backend, spec.host_subnet_len
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `nsnet network rm NAME --etcd URLS`.
pub fn remove(urls: &str, name: &str, dry_run: bool) -> Result<ExitCode> {
    let etcd = etcd_of(urls)?;
    if dry_run {
        println!("# etcd at {urls}: delete {}", cluster::network_key(name));
        for p in cluster::network_prefixes(name) {
            println!("# etcd at {urls}: delete every key under {p}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    agent::remove_network(&etcd, name)?;
    println!("removed overlay network {name} from the cluster; each host's agent removes its part");
    Ok(ExitCode::SUCCESS)
}

/// `nsnet network ls --etcd URLS` and `network inspect NAME --etcd URLS`.
pub fn show(urls: &str, name: Option<&str>, json: bool) -> Result<ExitCode> {
    let etcd = etcd_of(urls)?;
    let mut nets = agent::describe(&etcd)?;
    if let Some(name) = name {
        nets.retain(|n| n.spec.name == name);
        if nets.is_empty() {
            bail!("there is no overlay network '{name}' in etcd; `nsnet network ls --etcd {urls}` lists them");
        }
    }
    if json {
        let text = match name {
            Some(_) => serde_json::to_string_pretty(&nets[0])?,
            None => serde_json::to_string_pretty(&nets)?,
        };
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if name.is_none() {
        println!(
            "{:<16} {:<18} {:<8} {:>8} {:>6} {:>5}",
            "NAME", "SUBNET", "BACKEND", "VNI", "PORT", "HOSTS"
        );
        for n in &nets {
            let s = &n.spec;
            println!(
                "{:<16} {:<18} {:<8} {:>8} {:>6} {:>5}",
                s.name,
                s.subnet.to_string(),
                s.backend.to_string(),
                s.vni,
                s.port,
                n.hosts.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = &nets[0];
    let s = &n.spec;
    println!("name:       {}", s.name);
    println!("driver:     overlay ({})", s.backend);
    println!("subnet:     {} (/{} per host)", s.subnet, s.host_subnet_len);
    if let (Some(s6), Some(len6)) = (s.subnet6, s.host_subnet6_len) {
        let nat = if s.ipv6_nat { "" } else { ", no NAT66" };
        println!("subnet6:    {s6} (/{len6} per host{nat})");
    }
    println!("vni:        {} (UDP port {})", s.vni, s.port);
    if let Some(mtu) = s.mtu {
        println!("mtu:        {mtu}");
    }
    println!("hosts:");
    for h in &n.hosts {
        let six = h
            .lease
            .subnet6
            .map(|s6| format!(" {s6}"))
            .unwrap_or_default();
        println!(
            "  {:<18}{six} {:<15} {} {}",
            h.subnet.to_string(),
            h.lease.underlay.to_string(),
            h.lease.hostname,
            h.lease.host
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `nsnet agent`: run in the foreground until SIGTERM or SIGINT. With `--dry-run`, print what it would do now.
pub fn agent(nsnet: Nsnet, args: &AgentArgs, dry_run: bool) -> Result<ExitCode> {
    let cfg = AgentConfig {
        etcd: args.etcd.split(',').map(|s| s.trim().to_string()).collect(),
        iface: args.iface.clone(),
        underlay_ip: args.underlay_ip,
        lease_ttl: args.lease_ttl,
        resync: Duration::from_secs(1),
    };
    let mut agent = Agent::new(nsnet, cfg)?;
    if dry_run {
        print!("{}", agent.plan_once()?);
        return Ok(ExitCode::SUCCESS);
    }
    stop_on_signals()?;
    agent.run();
    Ok(ExitCode::SUCCESS)
}

extern "C" fn on_stop(_: libc::c_int) {
    agent::STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGTERM and SIGINT end the agent at its next safe point (a kill at any other moment is safe too: every
/// change goes through an intent).
fn stop_on_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; no other handler is
        // replaced that anything relies on.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}
