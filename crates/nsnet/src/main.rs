//! The `nsnet` command line: parses a request, hands it to the library, prints the result.

mod child;
mod cluster;
mod demo;
mod explain;
mod polish;
mod show;
mod topology;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nsnet_core::apply::Phase;
use nsnet_core::firewall::Backend;
use nsnet_core::model::{Driver, GatewayMode, NetOptions};
use nsnet_core::ops::{AttachRequest, Ipv6Request, NetworkRequest, Nsnet, Target};
use nsnet_core::plan::{Plan, Step};
use nsnet_core::portmap::PortSpec;
use nsnet_core::{ipam, netns};

/// Container networking for Linux: namespaces, veth pairs, bridges, NAT and published ports.
#[derive(Parser)]
#[command(name = "nsnet", version = polish::VERSION, about)]
struct Cli {
    /// Where nsnet keeps its records.
    #[arg(
        long,
        global = true,
        env = "NSNET_STATE_DIR",
        default_value = "/var/lib/nsnet"
    )]
    state_dir: PathBuf,
    /// Print JSON: listings and inspections; the record a create, attach, detach or network create leaves;
    /// a summary of rm, network rm, gc and firewall reload.
    #[arg(long, global = true)]
    json: bool,
    /// Print what would be done, as ip / nft / sysctl commands, and change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Firewall for new networks: nftables (default), iptables (hosts on iptables), or none. One per host;
    /// later commands use the one recorded with each network.
    #[arg(long, global = true, env = "NSNET_FIREWALL", value_name = "BACKEND")]
    firewall: Option<Backend>,
    /// Print each step to stderr, as ip / nft / sysctl commands, just before it is applied (and each step
    /// that undoes one, after a failure).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Create a sandbox: a new named network namespace, wired to a network.
    Create {
        /// Sandbox name, also its namespace's (/run/netns/NAME): 1-64 of [A-Za-z0-9_.-], with no . or -
        /// first and no . last.
        name: String,
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// Network an existing namespace (NAME under /run/netns, or a path such as /proc/PID/ns/net), or add a
    /// further network to a sandbox.
    Attach {
        /// A sandbox or a namespace under /run/netns by name, or a namespace's path (/proc/PID/ns/net).
        target: String,
        /// Sandbox name to record it under (default: the namespace's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// Create a sandbox and run a command inside it.
    Run {
        /// Sandbox name (default: run-<random>).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        attach: AttachArgs,
        /// Remove the sandbox when the command exits.
        #[arg(long)]
        rm: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run a command inside a sandbox's network namespace.
    Exec {
        /// The sandbox.
        name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List sandboxes.
    Ls,
    /// Show one sandbox.
    Inspect {
        /// The sandbox.
        name: String,
    },
    /// List a sandbox's published ports.
    Port {
        /// The sandbox.
        name: String,
    },
    /// Remove a sandbox: its endpoints, rules, addresses and (if nsnet made it) its namespace.
    Rm {
        /// The sandbox.
        name: String,
    },
    /// Take a sandbox off one network, keeping its others (a sandbox nsnet did not create is forgotten
    /// with its last network).
    Detach {
        /// The sandbox.
        name: String,
        /// The network to take it off.
        #[arg(long)]
        network: String,
    },
    /// Finish or roll back what an interrupted (killed) nsnet command left; every command also does this
    /// first.
    Gc,
    /// Manage nsnet's firewall rules.
    #[command(subcommand)]
    Firewall(FirewallCmd),
    /// Build the seed article's topology in a throwaway namespace, check every step, remove it all.
    Demo,
    /// Explain the path and verdict of one packet: FROM TO[:PORT[/PROTO]] (exit 0 delivered, 1 dropped, 2 bad
    /// input); --probe sends a real one.
    Explain(explain::ExplainArgs),
    /// Keep this host in the cluster's overlay networks (etcd): lease a subnet of each, build its bridge and
    /// VXLAN device, program every other host, follow changes. Runs in the foreground.
    Agent(cluster::AgentArgs),
    /// Draw what exists now (host, networks, sandboxes, veth pairs, published ports), checked against the
    /// kernel: anything broken is marked.
    Topology(TopologyArgs),
    /// Print a shell completion script for bash, zsh or fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: polish::Shell,
    },
    /// Print the manual page (roff), or with --dir write one page per command there.
    Man {
        /// Write nsnet.1 and one nsnet-COMMAND.1 per (sub)command into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct TopologyArgs {
    /// Only this network (with its sandboxes) or this sandbox (with its networks).
    name: Option<String>,
    /// text (the default), dot (Graphviz) or svg (a picture, self-contained).
    #[arg(long, value_enum)]
    format: Option<topology::Format>,
}

#[derive(Args)]
struct AttachArgs {
    /// Network to join (default: nsnet0, created on first use).
    #[arg(long)]
    network: Option<String>,
    /// Address to take instead of the next free one.
    #[arg(long, value_name = "IP")]
    ip: Option<Ipv4Addr>,
    /// IPv6 address to take on a network with IPv6 instead of the next free one.
    #[arg(long, value_name = "IP6")]
    ip6: Option<Ipv6Addr>,
    /// Publish ports: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp]; without HOST_PORT, a free
    /// one is chosen.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    ports: Vec<PortSpec>,
    /// Another name the sandbox answers to on this network (repeatable), besides its own.
    #[arg(long = "alias", value_name = "NAME")]
    aliases: Vec<String>,
    /// An upstream resolver for this sandbox's other names (repeatable), instead of its network's or the
    /// host's.
    #[arg(long = "dns", value_name = "IP", value_parser = nsnet_core::dns::parse_server)]
    dns: Vec<IpAddr>,
}

impl AttachArgs {
    fn request(&self) -> AttachRequest {
        AttachRequest {
            network: self.network.clone(),
            ip: self.ip,
            ports: self.ports.clone(),
            aliases: self.aliases.clone(),
            dns_servers: self.dns.clone(),
            ip6: self.ip6,
            ..Default::default()
        }
    }
}

/// One `network create --dns` value.
#[derive(Clone, Copy)]
enum DnsArg {
    On(bool),
    Server(IpAddr),
}

fn parse_dns(text: &str) -> std::result::Result<DnsArg, String> {
    match text {
        "true" => Ok(DnsArg::On(true)),
        "false" => Ok(DnsArg::On(false)),
        _ if text.contains('%') => nsnet_core::dns::parse_server(text).map(DnsArg::Server),
        _ => text.parse().map(DnsArg::Server).map_err(|_| {
            format!("'{text}' is neither true, false nor an IP address like 192.0.2.53")
        }),
    }
}

/// A `--subnet` of either family: IPv6 when it has a colon.
fn parse_subnet(text: &str) -> std::result::Result<IpNet, String> {
    if text.contains(':') {
        ipam::parse_subnet6(text).map(IpNet::V6)
    } else {
        ipam::parse_subnet(text).map(IpNet::V4)
    }
}

/// At most one of each family among `values` (`flag`'s): the IPv4 one and the IPv6 one.
fn per_family<T: Copy + std::fmt::Display, V4, V6>(
    flag: &str,
    values: &[T],
    split: impl Fn(T) -> (Option<V4>, Option<V6>),
) -> Result<(Option<V4>, Option<V6>)> {
    let (mut v4, mut v6) = (None, None);
    let (mut seen4, mut seen6): (Option<T>, Option<T>) = (None, None);
    for &v in values {
        let (a, b) = split(v);
        let seen = if a.is_some() { &mut seen4 } else { &mut seen6 };
        if let Some(first) = seen.replace(v) {
            let family = if a.is_some() { "IPv4" } else { "IPv6" };
            bail!(
                "{flag} is given twice for {family} ({first} and {v}); give at most one per family"
            );
        }
        v4 = v4.or(a);
        v6 = v6.or(b);
    }
    Ok((v4, v6))
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network.
    Create {
        /// Network name: 1-64 of [A-Za-z0-9_.-], with no . or - first and no . last.
        name: String,
        /// How sandboxes are linked: bridge (any number) or veth (one sandbox, point to point).
        #[arg(long, value_enum, default_value = "bridge")]
        driver: DriverArg,
        /// Subnet, at most one per family (default: a free /24 from 10.89.0.0/16; with --ipv6, a free /64 of
        /// this host's unique local prefix).
        #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
        subnet: Vec<IpNet>,
        /// Gateway address, at most one per family (default: the subnet's first address, ::1 for IPv6).
        #[arg(long, value_name = "IP")]
        gateway: Vec<IpAddr>,
        /// Dual stack: give the network an IPv6 subnet too (a free ULA /64 unless --subnet names one).
        #[arg(long)]
        ipv6: bool,
        /// false: an IPv6-only network, with no IPv4 subnet (needs --ipv6 or an IPv6 --subnet). The default
        /// is true, except with an IPv6 --subnet and neither --ipv6 nor an IPv4 --subnet or --gateway, which
        /// asks for IPv6 only.
        #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
        ipv4: Option<bool>,
        /// Masquerade IPv6 leaving the host (NAT66, the default); false for routed global addresses.
        #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
        ipv6_nat: Option<bool>,
        /// Name of the bridge, or for --driver veth of the host end (default: nsbr-NAME / nsve-NAME, or
        /// nsbr-HASH when that is over 15 characters).
        #[arg(long, value_name = "IFNAME")]
        bridge: Option<String>,
        /// No route out, no masquerade, no published ports.
        #[arg(long)]
        internal: bool,
        /// Keep sandboxes on other networks from reaching this one directly (published ports stay
        /// reachable through the host's addresses); --isolate=false opts out.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        isolate: bool,
        /// IPv4 between two sandboxes of the network goes veth to veth, skipping the bridge and its netfilter
        /// hooks (a bpf program on the bridge's ports); --fast-path=false sends it all through the bridge.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        fast_path: bool,
        /// nat: machines beyond the host reach sandboxes only through published ports, and traffic leaving is
        /// masqueraded; routed: a peer that routes the subnet via this host reaches every sandbox port
        /// directly, and traffic leaves with the sandbox's own address.
        #[arg(long, value_enum, default_value = "nat", value_name = "MODE")]
        gateway_mode: GatewayModeArg,
        /// MTU of the bridge and of every veth on the network (68-65535, default 1500; overlay: the underlay's
        /// less 50 for VXLAN).
        #[arg(long)]
        mtu: Option<u32>,
        /// Names: on (the default) the network's sandboxes find each other by name; false turns that off; an
        /// IP (repeatable) is an upstream resolver for the network's sandboxes instead of the host's.
        #[arg(long = "dns", value_name = "true|false|IP", value_parser = parse_dns)]
        dns: Vec<DnsArg>,
        #[command(flatten)]
        overlay: cluster::OverlayArgs,
    },
    /// List networks (with --etcd, the cluster's overlay networks).
    Ls {
        /// etcd's client URLs: list the overlay networks the cluster has, with their hosts.
        #[arg(long, value_name = "URLS")]
        etcd: Option<String>,
    },
    /// Show one network (with --etcd, an overlay network and every host's subnet).
    Inspect {
        /// The network.
        name: String,
        /// etcd's client URLs: show the overlay network as the cluster has it.
        #[arg(long, value_name = "URLS")]
        etcd: Option<String>,
    },
    /// Remove a network: its bridge, rules and records (with --etcd, an overlay network from the cluster).
    Rm {
        /// The network.
        name: String,
        /// Detach the sandboxes still on it first.
        #[arg(long)]
        force: bool,
        /// etcd's client URLs: remove the overlay network from the cluster; every agent removes its part.
        #[arg(long, value_name = "URLS")]
        etcd: Option<String>,
    },
}

#[derive(Subcommand)]
enum FirewallCmd {
    /// Re-apply every rule from the state (after something flushed the ruleset); safe to repeat.
    Reload,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DriverArg {
    Bridge,
    Veth,
    /// Across hosts, kept in etcd (see `nsnet agent`).
    Overlay,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GatewayModeArg {
    Nat,
    Routed,
}

fn main() -> ExitCode {
    // Started by a removal to delete the veths it retired, off its path (see nsnet_core::ops::reaper_for).
    if let Some(dir) = nsnet_core::ops::reaper_for() {
        return match Nsnet::new(dir, false).reap() {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nsnet: reaper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Started by a command to answer names (see nsnet_core::dns).
    if let Some(dir) = nsnet_core::dns::resolver_for() {
        return ExitCode::from(nsnet_core::dns::server::main(&dir));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: what is wrong; clap's usage hint follows only with --help.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("nsnet: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // A command leaves its slow leftovers (sockets whose close waits for the kernel, the reaper) to one child
    // forked at its end; the agent runs for good, so it closes and starts them as it goes.
    if !matches!(cli.command, Cmd::Agent(_)) {
        nsnet_core::afterwards::enable();
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            polish::clear_progress();
            // A bug of nsnet's says so itself ("internal error: ...; this is a bug: ..."), not "error: internal error".
            match e.downcast_ref::<nsnet_core::Error>() {
                Some(nsnet_core::Error::Internal(_)) => eprintln!("nsnet: {e:#}"),
                _ => eprintln!("nsnet: error: {e:#}"),
            }
            match e.downcast_ref::<Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    };
    nsnet_core::afterwards::finish();
    code
}

/// An error that ends nsnet with an exit status of its own instead of 1 (127 for a command that is not there,
/// as a shell does).
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn run(cli: Cli) -> Result<ExitCode> {
    let changes = !matches!(
        cli.command,
        Cmd::Ls
            | Cmd::Inspect { .. }
            | Cmd::Port { .. }
            | Cmd::Explain(_)
            | Cmd::Network(NetworkCmd::Ls { .. } | NetworkCmd::Inspect { .. })
            | Cmd::Topology(_)
            | Cmd::Completions { .. }
            | Cmd::Man { .. }
    );
    if changes && !cli.dry_run && !nix::unistd::geteuid().is_root() {
        bail!(
            "nsnet must run as root to change namespaces, links and firewall rules; \
             run it with sudo, or add --dry-run to see the plan"
        );
    }
    check_json(&cli, changes)?;
    // Listings and inspections read through nsnet's queries, which share the lock, so they never see a
    // command's records half written (and finish what a killed command left half written before they read).
    let mut nsnet = Nsnet::new(&cli.state_dir, cli.dry_run);
    nsnet.firewall = cli.firewall;
    // A removal that retires veths (a sandbox a process keeps alive) starts this binary again to delete them.
    nsnet.reaper = std::env::current_exe().ok();
    if cli.verbose && !cli.dry_run {
        nsnet.observer = Some(Arc::new(print_step));
    } else {
        // Not with -v: its lines would break a line rewritten in place.
        nsnet.progress = polish::progress();
    }
    let done = |plan: Plan, report: Report| -> Result<ExitCode> {
        if cli.dry_run {
            print!("{}", plan.render());
            return Ok(ExitCode::SUCCESS);
        }
        report.print(&nsnet, cli.json)
    };
    match &cli.command {
        Cmd::Network(NetworkCmd::Create {
            name,
            driver,
            subnet,
            gateway,
            ipv6,
            ipv4,
            ipv6_nat,
            bridge,
            internal,
            isolate,
            fast_path,
            gateway_mode,
            mtu,
            dns,
            overlay,
        }) => {
            let (subnet, subnet6): (Option<Ipv4Net>, Option<Ipv6Net>) =
                per_family("--subnet", subnet, |s| match s {
                    IpNet::V4(n) => (Some(n), None),
                    IpNet::V6(n) => (None, Some(n)),
                })?;
            let (gateway, gateway6): (Option<Ipv4Addr>, Option<Ipv6Addr>) =
                per_family("--gateway", gateway, |g| match g {
                    IpAddr::V4(a) => (Some(a), None),
                    IpAddr::V6(a) => (None, Some(a)),
                })?;
            // IPv6 is asked for with --ipv6 or an IPv6 subnet; its other settings need one of them.
            let wants6 = *ipv6 || subnet6.is_some();
            // Only an IPv6 subnet given (no --ipv6, nothing IPv4): IPv6 only, rather than an IPv4 subnet
            // nobody asked for (as a CNI configuration with only an IPv6 range).
            let ipv4 =
                ipv4.unwrap_or(*ipv6 || subnet6.is_none() || subnet.is_some() || gateway.is_some());
            if !ipv4 {
                if !wants6 {
                    bail!("--ipv4=false leaves the network no address family; add --ipv6 (or an IPv6 --subnet) for an IPv6-only network");
                }
                if let Some(what) = subnet
                    .map(|s| format!("--subnet {s}"))
                    .or(gateway.map(|g| format!("--gateway {g}")))
                {
                    bail!("{what} is IPv4, but --ipv4=false makes the network IPv6-only; leave one of them out");
                }
            }
            if !wants6 {
                if let Some(g) = gateway6 {
                    bail!("--gateway {g} is IPv6, but the network has no IPv6; add --ipv6 (or an IPv6 --subnet)");
                }
                if ipv6_nat.is_some() {
                    bail!("--ipv6-nat applies to networks with IPv6; add --ipv6 or leave it out");
                }
            }
            let ipv6 = wants6.then_some(Ipv6Request {
                subnet: subnet6,
                gateway: gateway6,
                nat: ipv6_nat.unwrap_or(true),
                only: !ipv4,
            });
            let servers: Vec<IpAddr> = dns
                .iter()
                .filter_map(|d| match d {
                    DnsArg::Server(ip) => Some(*ip),
                    DnsArg::On(_) => None,
                })
                .collect();
            let names = !dns.iter().any(|d| matches!(d, DnsArg::On(false)));
            if matches!(driver, DriverArg::Overlay) {
                let bridge_only = [
                    (!dns.is_empty(), "--dns"),
                    (gateway.is_some() || gateway6.is_some(), "--gateway"),
                    (bridge.is_some(), "--bridge"),
                    (*internal, "--internal"),
                    (
                        matches!(gateway_mode, GatewayModeArg::Routed),
                        "--gateway-mode",
                    ),
                ]
                .into_iter()
                .find_map(|(given, flag)| given.then_some(flag));
                let common = cluster::Common {
                    name,
                    subnet,
                    ipv6,
                    mtu: *mtu,
                    bridge_only,
                };
                return cluster::create(overlay, &common, cli.dry_run, cli.json);
            }
            cluster::check_not_overlay(overlay)?;
            let req = NetworkRequest {
                name: name.clone(),
                driver: match driver {
                    DriverArg::Bridge => Driver::Bridge,
                    DriverArg::Veth | DriverArg::Overlay => Driver::Veth,
                },
                subnet,
                gateway,
                interface: bridge.clone(),
                internal: *internal,
                isolate: *isolate,
                fast_path: *fast_path,
                options: NetOptions {
                    gateway_mode: match gateway_mode {
                        GatewayModeArg::Nat => GatewayMode::Nat,
                        GatewayModeArg::Routed => GatewayMode::Routed,
                    },
                    ..Default::default()
                },
                mtu: *mtu,
                overlay: None,
                dns: names,
                dns_servers: servers,
                ipv6,
            };
            let plan = nsnet.network_create(&req)?;
            done(plan, Report::Network(name.clone()))
        }
        Cmd::Network(NetworkCmd::Ls { etcd: Some(urls) }) => cluster::show(urls, None, cli.json),
        Cmd::Network(NetworkCmd::Ls { etcd: None }) => show::networks(&nsnet, cli.json),
        Cmd::Network(NetworkCmd::Inspect {
            name,
            etcd: Some(urls),
        }) => cluster::show(urls, Some(name), cli.json),
        Cmd::Network(NetworkCmd::Inspect { name, etcd: None }) => {
            show::network(&nsnet, name, cli.json)
        }
        Cmd::Network(NetworkCmd::Rm {
            name,
            etcd: Some(urls),
            ..
        }) => cluster::remove(urls, name, cli.dry_run),
        Cmd::Agent(args) => cluster::agent(nsnet, args, cli.dry_run),
        Cmd::Network(NetworkCmd::Rm {
            name,
            force,
            etcd: None,
        }) => {
            let plan = nsnet.network_rm(name, *force)?;
            done(plan, Report::Removed("network", name.clone()))
        }
        Cmd::Create { name, attach } => {
            let plan = nsnet.create(name, &attach.request())?;
            done(plan, Report::sandbox(name, name))
        }
        Cmd::Attach {
            target,
            name,
            attach,
        } => {
            let target = Target::parse(target);
            let plan = nsnet.attach(&target, name.as_deref(), &attach.request())?;
            let report = match (name, &target) {
                (Some(n), _) | (None, Target::Name(n)) => Report::sandbox(n, n),
                // Attached by a path under /run/netns: the sandbox is named after the file.
                (None, Target::Path(p)) => Report::Sandbox {
                    name: p
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    shown: p.display().to_string(),
                },
            };
            done(plan, report)
        }
        Cmd::Run {
            name,
            attach,
            rm,
            cmd,
        } => {
            let name = name.clone().unwrap_or_else(generated_name);
            // From before the sandbox exists: a signal meanwhile must not leave it behind (see child.rs).
            let supervisor = (!cli.dry_run).then(child::Supervisor::start).transpose()?;
            let plan = nsnet.create(&name, &attach.request())?;
            let Some(supervisor) = supervisor else {
                print!("{}", plan.render());
                println!("{}", nsenter_line(&netns::named_path(&name), cmd));
                if *rm {
                    println!("# then, when it exits: nsnet rm {name}");
                }
                return Ok(ExitCode::SUCCESS);
            };
            let status = exec_in(&nsnet, &supervisor, &name, cmd);
            if *rm {
                nsnet
                    .remove(&name)
                    .with_context(|| format!("removing sandbox {name}"))?;
            }
            status
        }
        Cmd::Exec { name, cmd } if cli.dry_run => {
            let path = nsnet.sandbox_netns(name)?;
            println!("{}", nsenter_line(&path, cmd));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { name, cmd } => {
            let supervisor = child::Supervisor::start()?;
            exec_in(&nsnet, &supervisor, name, cmd)
        }
        Cmd::Ls => show::sandboxes(&nsnet, cli.json),
        Cmd::Inspect { name } => show::sandbox(&nsnet, name, cli.json),
        Cmd::Port { name } => show::ports(&nsnet, name, cli.json),
        Cmd::Rm { name } => {
            let plan = nsnet.remove(name)?;
            done(plan, Report::Removed("sandbox", name.clone()))
        }
        Cmd::Detach { name, network } => {
            let plan = nsnet.detach(name, network, false)?;
            done(plan, Report::sandbox(name, name))
        }
        Cmd::Firewall(FirewallCmd::Reload) => {
            let plan = nsnet.firewall_reload()?;
            done(plan, Report::Reloaded)
        }
        Cmd::Gc => {
            let found = nsnet.gc()?;
            if cli.dry_run {
                // What it found, then the same steps a real run applies.
                for line in &found.lines {
                    println!("# would {line}");
                }
                print!("{}", found.plan.render());
                return Ok(ExitCode::SUCCESS);
            }
            if cli.json {
                return show::json(&serde_json::json!({ "done": found.lines }));
            }
            if found.lines.is_empty() {
                println!("nothing to do: records and kernel agree");
            }
            for line in found.lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo => demo::run(),
        Cmd::Topology(args) => topology::run(&nsnet, args.name.as_deref(), args.format, cli.json),
        Cmd::Completions { shell } => polish::completions(*shell),
        Cmd::Man { dir } => polish::man(dir.as_deref()),
        Cmd::Explain(args) => explain::run(&nsnet, args, cli.json),
    }
}

/// `-v`: a step on stderr just before it runs, as the commands that do the same; one that undoes an earlier
/// step is marked so. One `eprint!` per step, so the steps of two threads do not interleave.
fn print_step(step: &Step, phase: Phase) {
    match phase {
        Phase::Do => eprintln!("{}", step.render()),
        Phase::Undo => eprintln!("# undo:\n{}", step.render()),
    }
}

/// `--json` where it means something, else a clear refusal rather than silence. `changes`: the command changes
/// something (so `--dry-run` applies to it).
fn check_json(cli: &Cli, changes: bool) -> Result<()> {
    if !cli.json {
        return Ok(());
    }
    let what = match cli.command {
        Cmd::Run { .. } | Cmd::Exec { .. } => "run and exec print the command's own output",
        Cmd::Demo => "demo prints its checks as text",
        Cmd::Completions { .. } | Cmd::Man { .. } => "completions and man print scripts and roff",
        _ if cli.dry_run && changes => "--dry-run prints the plan as ip / nft / sysctl commands",
        _ => return Ok(()),
    };
    bail!("--json does not apply here: {what}; drop --json")
}

/// What a changing command prints when it is done: the object's name, or with `--json` the record it left (as
/// `inspect --json` shows it) or a summary of what went.
enum Report {
    /// A sandbox (`shown` is what the text line says: the name, or the path given to `attach`).
    Sandbox {
        name: String,
        shown: String,
    },
    Network(String),
    /// A removed object: its kind and name.
    Removed(&'static str, String),
    Reloaded,
}

impl Report {
    fn sandbox(name: &str, shown: &str) -> Report {
        Report::Sandbox {
            name: name.into(),
            shown: shown.into(),
        }
    }

    fn print(self, nsnet: &Nsnet, as_json: bool) -> Result<ExitCode> {
        if !as_json {
            println!(
                "{}",
                match self {
                    Report::Sandbox { shown, .. } => shown,
                    Report::Network(name) | Report::Removed(_, name) => name,
                    Report::Reloaded => "firewall reloaded".into(),
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        match self {
            // `detach` forgets a sandbox nsnet did not create with its last network.
            Report::Sandbox { name, .. } => match nsnet.sandbox(&name)? {
                Some(sb) => show::json(&sb),
                None => show::json(&serde_json::json!({ "sandbox": name, "removed": true })),
            },
            Report::Network(name) => match nsnet.network(&name)? {
                Some(net) => show::json(&net),
                None => bail!("network '{name}' is not in the records after creating it"),
            },
            Report::Removed(kind, name) => {
                show::json(&serde_json::json!({ kind: name, "removed": true }))
            }
            Report::Reloaded => show::json(&serde_json::json!({ "firewall": "reloaded" })),
        }
    }
}

/// Run `cmd` inside the sandbox's namespace, passing signals on to it, and pass its exit status on.
fn exec_in(
    nsnet: &Nsnet,
    supervisor: &child::Supervisor,
    name: &str,
    cmd: &[String],
) -> Result<ExitCode> {
    let path = nsnet.sandbox_netns(name)?;
    let fd = netns::open(&path)?;
    let (prog, args) = cmd.split_first().context("no command given after --")?;
    let mut command = Command::new(prog);
    command.args(args);
    netns::command_in(&mut command, fd);
    // As `ip netns exec` does: the sandbox's own resolv.conf (its names), when it has one.
    let resolv = netns::etc_dir(name).join("resolv.conf");
    if path == netns::named_path(name) && resolv.exists() {
        netns::resolv_conf_in(&mut command, &resolv)?;
    }
    Ok(ExitCode::from(supervisor.run(&mut command, prog)?))
}

/// The command that runs `cmd` in the namespace at `path` as nsnet does: only the network namespace changes
/// (`ip netns exec` would also remount /sys and apply /etc/netns).
fn nsenter_line(path: &std::path::Path, cmd: &[String]) -> String {
    let words: Vec<String> = cmd.iter().map(|w| shell_word(w)).collect();
    format!("nsenter --net={} -- {}", path.display(), words.join(" "))
}

/// `word` as a shell reads it back: as it is when it holds nothing special, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A name for `nsnet run` without `--name`.
fn generated_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument and option of every (sub)command, as `--help` shows them, has a description.
    fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                out.push(format!("{path} {} (the command)", sub.get_name()));
            }
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_is_described() {
        let mut missing = Vec::new();
        undescribed(&Cli::command(), "nsnet", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn shell_words_read_back() {
        assert_eq!(shell_word("ip"), "ip");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
