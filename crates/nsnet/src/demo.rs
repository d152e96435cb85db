//! `nsnet demo`: the seed article's walkthrough ([`nsnet_core::scenario`], which `tests/article.rs` runs too),
//! built with nsnet's own commands inside a throwaway host namespace, each step checked with real packets, then
//! everything removed.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use nsnet_core::kernel::loopback6;
use nsnet_core::kernel::{netns, Netlink, VethSpec};
use nsnet_core::scenario::{self, Runner, HOST_IP, HOST_IP6, LAN_IP, LAN_IP6};

/// The throwaway world: a "host" namespace with an uplink to a "LAN peer" namespace.
struct World {
    host: String,
    lan: String,
    state: PathBuf,
    /// A cgroup of the demo's own for nsnet's `[::1]` translation programs (`NSNET_CGROUP`), so they never
    /// go on this machine's cgroup root; `None` without cgroup2 (nsnet then goes without them).
    cgroup: Option<PathBuf>,
    passed: usize,
    failed: usize,
}

impl Drop for World {
    fn drop(&mut self) {
        // Deleting the host namespace takes the uplink and anything left inside with it.
        let _ = netns::delete(&self.lan);
        let _ = netns::delete(&self.host);
        let _ = std::fs::remove_dir_all(&self.state);
        // Removing the cgroup releases whatever is still attached to it.
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}

impl World {
    fn new() -> Result<World> {
        let pid = std::process::id();
        let world = World {
            host: format!("nsnet-demo-{pid}"),
            lan: format!("nsnet-demo-{pid}-lan"),
            state: std::env::temp_dir().join(format!("nsnet-demo-{pid}")),
            cgroup: loopback6::cgroup()
                .map(|root| root.join(format!("nsnet-demo-{pid}")))
                .filter(|dir| std::fs::create_dir(dir).is_ok()),
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
        host.add_address("uplink0", ipnet::Ipv4Net::new(HOST_IP, 24)?.into())?;
        host.add_address("uplink0", ipnet::Ipv6Net::new(HOST_IP6, 64)?.into())?;
        lan.set_up("lan0")?;
        lan.add_address("lan0", ipnet::Ipv4Net::new(LAN_IP, 24)?.into())?;
        lan.add_address("lan0", ipnet::Ipv6Net::new(LAN_IP6, 64)?.into())?;
        Ok(world)
    }

    /// Run `nsnet ARGS` inside the demo host, showing the command and its output.
    fn run_nsnet(&mut self, args: &[&str]) -> Result<Option<String>> {
        println!("$ nsnet {}", args.join(" "));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        // Where there is no cgroup of the demo's own, a path that is no cgroup: nsnet then goes without the
        // `[::1]` translation rather than use this machine's cgroup root.
        let cgroup = self.cgroup.clone();
        cmd.env(
            loopback6::CGROUP_ENV,
            cgroup.unwrap_or_else(|| self.state.join("no-cgroup")),
        );
        netns::command_in(&mut cmd, netns::open(&self.host())?);
        let out = cmd.output().context("running nsnet")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in stdout.lines() {
            println!("  {line}");
        }
        let ok = out.status.success();
        if !ok {
            println!("  {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        self.check(ok, "the command succeeded");
        Ok(ok.then_some(stdout))
    }

    /// The host's links, by name.
    fn host_links(&self) -> Result<Vec<String>> {
        let fd = netns::open(&self.host())?;
        Ok(
            netns::run_in(&fd, || Netlink::open().and_then(|mut nl| nl.links()))??
                .into_iter()
                .map(|l| l.name)
                .collect(),
        )
    }

    /// What `nft list tables` prints in the host.
    fn host_tables(&self) -> Result<String> {
        let mut nft = Command::new("nft");
        nft.args(["list", "tables"]);
        netns::command_in(&mut nft, netns::open(&self.host())?);
        Ok(nft
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default())
    }
}

impl Runner for World {
    fn host(&self) -> PathBuf {
        netns::named_path(&self.host)
    }

    fn lan(&self) -> PathBuf {
        netns::named_path(&self.lan)
    }

    fn sandbox(&self, name: &str) -> String {
        format!("{name}-{}", std::process::id())
    }

    fn step(&mut self, title: &str) {
        println!("\n{title}");
    }

    fn nsnet(&mut self, args: &[&str]) -> Option<String> {
        self.run_nsnet(args).unwrap_or_else(|e| {
            self.check(false, &format!("nsnet ran: {e:#}"));
            None
        })
    }

    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
    }

    fn clean(&mut self, after: &str) {
        let links = self.host_links().unwrap_or_default();
        self.check(
            links == ["lo", "uplink0"],
            &format!("after {after}, host links are back to {links:?}"),
        );
        let tables = self.host_tables().unwrap_or_default();
        self.check(tables.trim().is_empty(), "no nftables table left");
        let left = ["netns1", "netns2", "netns3"]
            .iter()
            .any(|n| netns::named_path(&self.sandbox(n)).exists());
        self.check(!left, "the sandboxes' namespaces are gone");
        self.check(!self.state.exists(), "the state dir is gone");
    }
}

/// `nsnet demo`.
pub fn run() -> Result<ExitCode> {
    let mut w = World::new()?;
    println!(
        "The seed article's topology, inside throwaway namespace {} (host {HOST_IP} and {HOST_IP6}, uplink0) with a LAN peer {} ({LAN_IP}, {LAN_IP6}).",
        w.host, w.lan
    );
    scenario::run(&mut w);
    let (passed, failed) = (w.passed, w.failed);
    drop(w);
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
