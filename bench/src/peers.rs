//! The tools compared, each behind one interface: bring a sandbox with one published port up, take it down.
//! Every peer runs in a throwaway host of its own; the namespace a runtime would create is made before the
//! clock starts (nsnet's CLI makes its own, inside the timed `create`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::world::Host;
use crate::{measured, sh, Run};

pub const NETAVARK: &str = "/usr/lib/podman/netavark";
/// Where `bench/setup-peers` builds the newest netavark from crates.io (it needs `protobuf-compiler`).
pub const NETAVARK_BUILT: &str = "/var/cache/nsnet-bench/netavark/bin/netavark";
pub const CNI_DIR: &str = "/usr/lib/cni";

/// Which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The nsnet CLI: `nsnet create -p` / `nsnet rm`, with the given firewall backend.
    Nsnet(&'static str),
    /// nsnet-cni ADD / DEL, as a runtime runs it.
    NsnetCni,
    /// `nsnet attach NS -p` / `nsnet rm`: the CLI on a namespace the runtime made (like for like with the
    /// CNI-style peers).
    NsnetAttach,
    /// `nsnet create -p` / `nsnet rm` on a dual-stack network (nftables): what IPv6 adds to a sandbox
    /// (issue #19).
    NsnetDualStack,
    /// netavark `setup` / `teardown`: the binary, and the firewall driver it is told to use (`NETAVARK_FW`;
    /// `None` for Debian's 1.4, whose only driver is iptables and which has no such setting).
    Netavark(&'static str, Option<&'static str>),
    /// The CNI reference chain: bridge + host-local, then portmap.
    CniChain,
    /// The kernel floor: the kernel objects of `nsnet create` and nothing else (see `floor.rs`).
    Floor,
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Kind::Nsnet(fw) => format!("nsnet ({fw})"),
            Kind::NsnetCni => "nsnet-cni (ADD/DEL)".into(),
            Kind::NsnetAttach => "nsnet attach + rm (runtime's namespace)".into(),
            Kind::NsnetDualStack => "nsnet (nftables), dual stack".into(),
            // Named by what ran: the binary's own version, and the driver it used.
            Kind::Netavark(path, driver) => {
                let v = sh(&[path, "--version"]).unwrap_or_default();
                format!("{} ({})", v.trim(), driver.unwrap_or("iptables"))
            }
            Kind::CniChain => "CNI bridge + host-local + portmap 1.1.1".into(),
            Kind::Floor => "kernel floor (nsnet's netlink and bpf calls only, no port)".into(),
        }
    }

    /// The firewall backend of an nsnet row that makes its own network (`None`: not such a row).
    pub fn nsnet_firewall(self) -> Option<&'static str> {
        match self {
            Kind::Nsnet(fw) => Some(fw),
            Kind::NsnetAttach | Kind::NsnetDualStack => Some("nftables"),
            _ => None,
        }
    }

    /// The peers this machine has, nsnet first.
    pub fn available() -> Vec<Kind> {
        let mut out = vec![
            Kind::Nsnet("nftables"),
            Kind::Nsnet("iptables"),
            Kind::NsnetCni,
            Kind::NsnetAttach,
            Kind::NsnetDualStack,
        ];
        if Path::new(NETAVARK).exists() {
            out.push(Kind::Netavark(NETAVARK, None));
        } else {
            eprintln!("{NETAVARK} not found (apt-get install netavark): skipping netavark");
        }
        // The newest netavark (2.x), built by bench/setup-peers: its only kernel firewall driver is nftables
        // (2.0 dropped iptables), asked for by name so that the row cannot silently be another.
        if Path::new(NETAVARK_BUILT).exists() {
            out.push(Kind::Netavark(NETAVARK_BUILT, Some("nftables")));
        } else {
            eprintln!(
                "{NETAVARK_BUILT} not found (bench/setup-peers builds it): skipping netavark 2.x"
            );
        }
        if Path::new(CNI_DIR).join("bridge").exists() {
            out.push(Kind::CniChain);
        } else {
            eprintln!("{CNI_DIR}/bridge not found (apt-get install containernetworking-plugins): skipping CNI");
        }
        out.push(Kind::Floor);
        out
    }
}

/// One peer set up in its own host, on a subnet big enough for `capacity` sandboxes.
pub struct Peer {
    pub kind: Kind,
    pub host: Host,
    nsnet: PathBuf,
    nsnet_cni: PathBuf,
}

fn release_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("NSNET_BIN_DIR")
        .map_or_else(|| PathBuf::from("target/release"), PathBuf::from);
    dir.join(name)
}

/// The address of sandbox `i` (from .10 on, in a /16), for the peers that take static addresses.
fn addr(base: [u8; 2], i: usize) -> String {
    let n = i + 10;
    format!("{}.{}.{}.{}", base[0], base[1], n / 250, n % 250 + 2)
}

impl Peer {
    pub fn new(kind: Kind, tag: &str) -> Result<Peer> {
        let p = Peer {
            kind,
            host: Host::new(tag)?,
            nsnet: release_bin("nsnet"),
            nsnet_cni: release_bin("nsnet-cni"),
        };
        if !p.nsnet.exists() {
            bail!(
                "{} is missing: run cargo build --release first",
                p.nsnet.display()
            );
        }
        if let Some(fw) = kind.nsnet_firewall() {
            let mut create = p.nsnet_cmd(fw);
            // Like for like: the peers run without names (netavark's `dns_enabled: false`); the names'
            // cost is `nsnet-bench dns`'s business.
            create.args([
                "network",
                "create",
                "bench",
                "--subnet",
                "10.90.0.0/16",
                "--dns=false",
            ]);
            if kind == Kind::NsnetDualStack {
                create.arg("--ipv6");
            }
            let out = create.output()?;
            if !out.status.success() {
                bail!(
                    "nsnet network create: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if kind == Kind::Floor {
            let gw = format!("{}/16", crate::floor::GATEWAY);
            let bridge = crate::floor::BRIDGE;
            for args in [
                ["link", "add", bridge, "type", "bridge"].as_slice(),
                &["addr", "add", &gw, "dev", bridge],
                &["link", "set", bridge, "up"],
            ] {
                let mut cmd = vec!["ip", "-n", p.host.name.as_str()];
                cmd.extend_from_slice(args);
                sh(&cmd)?;
            }
            let out = p.floor_cmd().arg("bridge").output()?;
            if !out.status.success() {
                bail!("floor bridge: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(p)
    }

    fn nsnet_cmd(&self, fw: &str) -> Command {
        let mut c = self.host.cmd(&self.nsnet.to_string_lossy());
        c.env("NSNET_STATE_DIR", &self.host.state)
            .env("NSNET_FIREWALL", fw);
        c
    }

    /// This benchmark's own `floor` subcommand, in the host.
    fn floor_cmd(&self) -> Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nsnet-bench"));
        let mut c = self.host.cmd(&exe.to_string_lossy());
        c.arg("floor");
        c
    }

    fn netns(&self, i: usize) -> String {
        format!("/run/netns/{}", self.host.sandbox(i))
    }

    /// What the runtime does before asking for a network: make the namespace (not timed).
    pub fn prepare(&self, i: usize) -> Result<()> {
        if !matches!(
            self.kind,
            Kind::Nsnet(_) | Kind::NsnetDualStack | Kind::Floor
        ) {
            sh(&["ip", "netns", "add", &self.host.sandbox(i)])?;
        }
        Ok(())
    }

    /// After the teardown: remove the namespace the runtime made (not timed).
    pub fn cleanup(&self, i: usize) -> Result<()> {
        if !matches!(
            self.kind,
            Kind::Nsnet(_) | Kind::NsnetDualStack | Kind::Floor
        ) {
            sh(&["ip", "netns", "del", &self.host.sandbox(i)])?;
        }
        Ok(())
    }

    /// Network sandbox `i`, publishing host port `port` to its port 80. Returns every process the tool ran.
    pub fn up(&self, i: usize, port: u16) -> Result<Vec<Run>> {
        let name = self.host.sandbox(i);
        let runs = match self.kind {
            Kind::Nsnet(_) | Kind::NsnetDualStack => {
                let fw = self.kind.nsnet_firewall().unwrap_or("nftables");
                let p = format!("{port}:80");
                vec![measured(
                    self.nsnet_cmd(fw)
                        .args(["create", &name, "--network", "bench", "-p", &p]),
                    None,
                )?]
            }
            Kind::NsnetCni => vec![self.nsnet_cni("ADD", i, port)?],
            Kind::NsnetAttach => {
                let p = format!("{port}:80");
                vec![measured(
                    self.nsnet_cmd("nftables").args([
                        "attach",
                        &name,
                        "--network",
                        "bench",
                        "-p",
                        &p,
                    ]),
                    None,
                )?]
            }
            Kind::Netavark(bin, driver) => vec![self.netavark(bin, driver, "setup", i, port)?],
            Kind::CniChain => self.cni_chain_add(i, port)?,
            Kind::Floor => vec![measured(
                self.floor_cmd().args(["up", &name, &i.to_string()]),
                None,
            )?],
        };
        check(&runs, "up")?;
        if i == 0 {
            self.driver_check()?;
        }
        Ok(runs)
    }

    /// Take sandbox `i` down again.
    pub fn down(&self, i: usize, port: u16) -> Result<Vec<Run>> {
        let runs = match self.kind {
            Kind::Nsnet(fw) => vec![measured(
                self.nsnet_cmd(fw).args(["rm", &self.host.sandbox(i)]),
                None,
            )?],
            Kind::NsnetDualStack => vec![measured(
                self.nsnet_cmd("nftables")
                    .args(["rm", &self.host.sandbox(i)]),
                None,
            )?],
            Kind::NsnetCni => vec![self.nsnet_cni("DEL", i, port)?],
            Kind::NsnetAttach => vec![measured(
                self.nsnet_cmd("nftables")
                    .args(["rm", &self.host.sandbox(i)]),
                None,
            )?],
            Kind::Netavark(bin, driver) => {
                vec![self.netavark(bin, driver, "teardown", i, port)?]
            }
            Kind::CniChain => self.cni_chain_del(i, port)?,
            Kind::Floor => vec![measured(
                self.floor_cmd()
                    .args(["down", &self.host.sandbox(i), &i.to_string()]),
                None,
            )?],
        };
        check(&runs, "down")?;
        Ok(runs)
    }

    /// A netavark row must be named by the driver that really ran: after its first set-up, its rules are
    /// where that driver puts them (nftables: `table inet netavark`; iptables: `NETAVARK-*` chains).
    fn driver_check(&self) -> Result<()> {
        let Kind::Netavark(_, driver) = self.kind else {
            return Ok(());
        };
        let (listing, want) = match driver {
            Some("nftables") => (
                sh(&[
                    "nsenter",
                    &format!("--net=/run/netns/{}", self.host.name),
                    "nft",
                    "list",
                    "tables",
                ])?,
                "netavark",
            ),
            _ => (
                sh(&[
                    "nsenter",
                    &format!("--net=/run/netns/{}", self.host.name),
                    "iptables-save",
                ])?,
                "NETAVARK",
            ),
        };
        if !listing.contains(want) {
            bail!(
                "{} claims the {} driver, but its host shows none of that driver's rules:\n{listing}",
                self.kind.name(),
                driver.unwrap_or("iptables")
            );
        }
        Ok(())
    }

    fn cni_env(&self, cmd: &mut Command, command: &str, i: usize) {
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("bench{i}"))
            .env("CNI_NETNS", self.netns(i))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR);
    }

    fn nsnet_cni(&self, command: &str, i: usize, port: u16) -> Result<Run> {
        let conf = json!({
            "cniVersion": "1.1.0", "name": "bench", "type": "nsnet", "stateDir": self.host.state,
            "ipam": {"subnet": "10.91.0.0/16"},
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        });
        let mut cmd = self.host.cmd(&self.nsnet_cni.to_string_lossy());
        self.cni_env(&mut cmd, command, i);
        measured(&mut cmd, Some(conf.to_string().as_bytes()))
    }

    fn netavark(
        &self,
        bin: &str,
        driver: Option<&str>,
        command: &str,
        i: usize,
        port: u16,
    ) -> Result<Run> {
        let opts = json!({
            "container_id": format!("{:064x}", i + 1),
            "container_name": format!("bench{i}"),
            "networks": {"bench": {"static_ips": [addr([10, 88], i)], "interface_name": "eth0"}},
            "network_info": {"bench": {
                "dns_enabled": false, "driver": "bridge", "id": format!("{:064x}", 7),
                "internal": false, "ipv6_enabled": false, "name": "bench", "network_interface": "podman0",
                "subnets": [{"gateway": "10.88.0.1", "subnet": "10.88.0.0/16"}],
            }},
            "port_mappings": [{"container_port": 80, "host_ip": "", "host_port": port, "protocol": "tcp", "range": 1}],
        });
        let conf_dir = self.host.state.join("netavark");
        std::fs::create_dir_all(&conf_dir)?;
        let mut cmd = self.host.cmd(bin);
        if let Some(driver) = driver {
            cmd.env("NETAVARK_FW", driver);
        }
        cmd.arg("--config")
            .arg(&conf_dir)
            .args([command, &self.netns(i)]);
        measured(&mut cmd, Some(opts.to_string().as_bytes()))
    }

    fn chain_conf(&self) -> (Value, Value) {
        let bridge = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": "10.87.0.0/16", "dataDir": self.host.state.join("ipam")},
        });
        let portmap = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "portmap", "capabilities": {"portMappings": true},
        });
        (bridge, portmap)
    }

    fn plugin(&self, plugin: &str, command: &str, i: usize, conf: &Value) -> Result<Run> {
        let mut cmd = self.host.cmd(&format!("{CNI_DIR}/{plugin}"));
        self.cni_env(&mut cmd, command, i);
        measured(&mut cmd, Some(conf.to_string().as_bytes()))
    }

    /// As a runtime runs a conflist: bridge (which runs host-local), then portmap with the bridge's result.
    fn cni_chain_add(&self, i: usize, port: u16) -> Result<Vec<Run>> {
        let (bridge, mut portmap) = self.chain_conf();
        let b = self.plugin("bridge", "ADD", i, &bridge)?;
        let result: Value = serde_json::from_slice(&b.stdout).context("bridge result")?;
        portmap["prevResult"] = result;
        portmap["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
        let p = self.plugin("portmap", "ADD", i, &portmap)?;
        Ok(vec![b, p])
    }

    /// DEL in reverse order: portmap, then bridge (which runs host-local).
    fn cni_chain_del(&self, i: usize, port: u16) -> Result<Vec<Run>> {
        let (bridge, mut portmap) = self.chain_conf();
        portmap["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
        let p = self.plugin("portmap", "DEL", i, &portmap)?;
        let b = self.plugin("bridge", "DEL", i, &bridge)?;
        Ok(vec![p, b])
    }
}

fn check(runs: &[Run], what: &str) -> Result<()> {
    for r in runs {
        if !r.ok {
            bail!(
                "{what} failed: {} {}",
                String::from_utf8_lossy(&r.stdout).trim(),
                r.stderr.trim()
            );
        }
    }
    Ok(())
}

/// Wall time of a step that ran several processes one after another.
pub fn total_ms(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.ms).sum()
}

/// Largest peak RSS of the processes, in KiB.
pub fn peak_kib(runs: &[Run]) -> i64 {
    runs.iter().map(|r| r.rss_kib).max().unwrap_or(0)
}
