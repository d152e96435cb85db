//! The throwaway host every benchmark runs in: a host namespace with an uplink to a LAN peer, and one nsnet
//! sandbox on the default network.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use nsnet_core::netns;

use crate::sh;

pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 48);
pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 26);

/// A LAN peer namespace `lan` (LAN_IP on `lan0`) on a veth from `host` (HOST_IP on `uplink0`), both ends
/// and both `lo`s up.
pub fn add_lan(host: &str, lan: &str) -> Result<()> {
    sh(&["ip", "netns", "add", lan])?;
    sh(&[
        "ip", "-n", host, "link", "add", "uplink0", "type", "veth", "peer", "name", "lan0",
        "netns", lan,
    ])?;
    for (ns, dev, addr) in [(host, "uplink0", HOST_IP), (lan, "lan0", LAN_IP)] {
        let addr = format!("{addr}/24");
        sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev])?;
        sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// A throwaway host with an uplink to a LAN peer, and one nsnet sandbox on the default network.
pub struct World {
    pub host: String,
    pub lan: String,
    pub sandbox: String,
    pub state: PathBuf,
}

impl World {
    pub fn new(tag: &str, firewall: &str) -> Result<World> {
        let pid = std::process::id();
        let w = World {
            host: format!("nsb-{pid}-{tag}-h"),
            lan: format!("nsb-{pid}-{tag}-l"),
            sandbox: format!("nsb-{pid}-{tag}-s"),
            state: std::env::temp_dir().join(format!("nsnet-bench-{pid}-{tag}")),
        };
        sh(&["ip", "netns", "add", &w.host])?;
        add_lan(&w.host, &w.lan)?;
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

    pub fn path(name: &str) -> PathBuf {
        netns::named_path(name)
    }

    pub fn host_fd(&self) -> Result<OwnedFd> {
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

/// A bare throwaway host namespace (with `lo` up) and a state dir; every namespace whose name starts with
/// its prefix is deleted with it.
pub struct Host {
    pub name: String,
    pub prefix: String,
    pub state: PathBuf,
    /// A throwaway cgroup for nsnet's `[::1]` translation programs (`NSNET_CGROUP`), so they never go on
    /// this machine's own cgroup root; `None` without cgroup2.
    cgroup: Option<PathBuf>,
}

impl Host {
    pub fn new(tag: &str) -> Result<Host> {
        let pid = std::process::id();
        let prefix = format!("nsb{pid}{tag}");
        let cgroup = nsnet_core::kernel::loopback6::cgroup()
            .map(|root| root.join(format!("nsnet-bench-{prefix}")))
            .filter(|dir| std::fs::create_dir(dir).is_ok());
        let h = Host {
            name: format!("{prefix}-host"),
            state: std::env::temp_dir().join(format!("nsnet-bench-{prefix}")),
            prefix,
            cgroup,
        };
        sh(&["ip", "netns", "add", &h.name])?;
        sh(&["ip", "-n", &h.name, "link", "set", "lo", "up"])?;
        Ok(h)
    }

    /// A command that runs inside the host namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        // A path that is no cgroup, where there is none: nsnet then refuses `[::1]` ports rather than use the
        // machine's root.
        let cgroup = self
            .cgroup
            .clone()
            .unwrap_or_else(|| self.state.join("no-cgroup"));
        c.env("NSNET_CGROUP", cgroup);
        c
    }

    /// This host's name for sandbox `i`.
    pub fn sandbox(&self, i: usize) -> String {
        format!("{}-s{i}", self.prefix)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default();
        // Sandboxes first, the host (with the bridge, veths and rules in it) last.
        for n in names.iter().filter(|n| **n != self.name) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.state);
        // Removing the cgroup releases whatever is still attached to it.
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}
