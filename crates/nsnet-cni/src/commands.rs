//! The CNI commands on top of nsnet's operations. Each validates all it can before anything changes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use nsnet_core::model::{Network, Sandbox};
use nsnet_core::ops::{AttachRequest, Nsnet, Target, Terms};
use serde_json::Value;

use crate::config::{NetConf, Subnets};
use crate::delegate::Delegate;
use crate::env::Env;
use crate::error::{code, CniError, CniResult};
use crate::result::{AddResult, Interface, IpConfig, Route, Version, SUPPORTED};

/// nsnet over the configuration's state dir; its messages name the configuration's fields, not CLI flags.
fn nsnet(conf: &NetConf) -> CniResult<Nsnet> {
    let mut n = Nsnet::new(conf.state_dir(), false);
    n.firewall = conf.backend()?;
    n.terms = Terms::CNI;
    // DEL retires the container's veth and leaves its deletion to a reaper: this binary, started again.
    n.reaper = std::env::current_exe().ok();
    Ok(n)
}

fn needs(conf: &NetConf, at_least: Version, command: &str) -> CniResult<()> {
    if Version::parse(&conf.cni_version)? < at_least {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{command} needs a newer cniVersion than {}",
                conf.cni_version
            ),
        ));
    }
    Ok(())
}

/// `VERSION`.
pub fn version(raw: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.1.0".into());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED })
}

/// `ADD`: join the container's namespace to the network (made on first use), and return the result, after any
/// `prevResult`. On failure nothing is left: the network if this ADD made it, the delegated IPAM lease.
pub fn add(conf: &NetConf, raw: &Value, env: &Env) -> CniResult<Value> {
    let netns = env.netns_path()?;
    let ports = conf.ports()?;
    let mac = conf.mac()?;
    let requested = conf.requested_ips(env.ip.as_deref())?;
    let prev = match &conf.prev_result {
        Some(v) => AddResult::from_value(v)?,
        None => AddResult::default(),
    };
    let mut nsnet = nsnet(conf)?;
    if let Some((_, field)) = requested.v4 {
        nsnet.terms.ip = field;
    }
    if let Some((_, field)) = requested.v6 {
        nsnet.terms.ip6 = field;
    }
    let delegate = conf.ipam_plugin().map(Delegate::find).transpose()?;
    if delegate.is_none() {
        conf.network_request(None)?;
    }

    let mut ipam_dns = None;
    let (ip, ip6, delegated) = match &delegate {
        None => (
            requested.v4.map(|(ip, _)| ip),
            requested.v6.map(|(ip, _)| ip),
            None,
        ),
        Some(d) => {
            let lease = AddResult::from_value(&d.run("ADD", raw)?)?;
            match lease_addresses(&lease) {
                (None, None) => {
                    let _ = d.run("DEL", raw);
                    return Err(CniError::new(
                        code::FAILED,
                        "the ipam plugin handed out no address; nsnet networks need an IPv4 or an IPv6 one",
                    ));
                }
                // No IPv4 address handed out: an IPv6-only network.
                (v4, v6) => {
                    ipam_dns = lease.dns;
                    let subnets = Subnets {
                        v4: v4.map(|(a, _)| a.trunc()),
                        gateway4: v4.and_then(|(_, g)| g),
                        v6: v6.map(|(a, g)| (a.trunc(), g)),
                        ipv6_only: v4.is_none(),
                    };
                    (
                        v4.map(|(a, _)| a.addr()),
                        v6.map(|(a, _)| a.addr()),
                        Some(subnets),
                    )
                }
            }
        }
    };

    let attached = (|| -> CniResult<Value> {
        let (net, created) = nsnet.ensure_network(&conf.network_request(delegated)?)?;
        let req = AttachRequest {
            network: Some(conf.name.clone()),
            ip,
            ports,
            interface: Some(env.ifname.clone()),
            mac,
            cni: true,
            aliases: conf
                .runtime_config
                .aliases
                .get(&conf.name)
                .cloned()
                .unwrap_or_default(),
            dns_servers: vec![],
            ip6,
        };
        if let Err(e) = nsnet.attach(&Target::Path(netns.clone()), Some(&env.container_id), &req) {
            if created {
                // Someone else may have joined it meanwhile: then it stays.
                let _ = nsnet.network_rm(&net.name, false);
            }
            return Err(e.into());
        }
        let sb = nsnet.sandbox(&env.container_id)?;
        let dns = conf.dns.clone().or(ipam_dns).or(prev.dns.clone());
        let dns = if net.dns {
            Some(with_resolver(dns))
        } else {
            dns
        };
        Ok(result_for(
            prev.clone(),
            &net,
            sb.as_ref(),
            &env.ifname,
            &netns.to_string_lossy(),
            dns,
        )
        .to_json(&conf.cni_version))
    })();
    if attached.is_err() {
        if let Some(d) = &delegate {
            let _ = d.run("DEL", raw);
        }
    }
    attached
}

/// The first address of each family in an IPAM result, with its gateway.
type Lease4 = (Ipv4Net, Option<Ipv4Addr>);
type Lease6 = (Ipv6Net, Option<Ipv6Addr>);
fn lease_addresses(r: &AddResult) -> (Option<Lease4>, Option<Lease6>) {
    fn gateway<A: std::str::FromStr>(ip: &crate::result::IpConfig) -> Option<A> {
        ip.gateway.as_deref().and_then(|g| g.parse().ok())
    }
    let v4 = r.ips.iter().find_map(|ip| {
        let addr = ip.address.parse::<Ipv4Net>().ok()?;
        Some((addr, gateway(ip)))
    });
    let v6 = r.ips.iter().find_map(|ip| {
        let addr = ip.address.parse::<Ipv6Net>().ok()?;
        Some((addr, gateway(ip)))
    });
    (v4, v6)
}

/// `prev` with this attachment's interfaces (bridge, host veth, container side), address and default route.
fn result_for(
    mut prev: AddResult,
    net: &Network,
    sb: Option<&Sandbox>,
    ifname: &str,
    netns: &str,
    dns: Option<Value>,
) -> AddResult {
    let Some(ep) = sb.and_then(|s| s.endpoints.iter().find(|e| e.network == net.name)) else {
        return prev;
    };
    let base = prev.interfaces.len();
    prev.interfaces.extend([
        Interface {
            name: net.interface.clone(),
            mac: net.gateway_mac().to_string(),
            mtu: Some(net.mtu),
            sandbox: String::new(),
        },
        Interface {
            name: ep.host_interface.clone(),
            mac: ep.mac.host_end().to_string(),
            mtu: Some(ep.mtu),
            sandbox: String::new(),
        },
        Interface {
            name: ifname.to_string(),
            mac: ep.mac.to_string(),
            mtu: Some(ep.mtu),
            sandbox: netns.to_string(),
        },
    ]);
    if let Some(address) = ep.address {
        prev.ips.push(IpConfig {
            address: address.to_string(),
            gateway: ep.gateway.map(|g| g.to_string()),
            interface: Some(base + 2),
        });
    }
    if let Some(ep6) = &ep.ipv6 {
        prev.ips.push(IpConfig {
            address: ep6.address.to_string(),
            gateway: Some(ep6.gateway.to_string()),
            interface: Some(base + 2),
        });
    }
    if ep.default_route {
        if let Some(gateway) = ep.gateway {
            prev.routes.push(Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(gateway.to_string()),
            });
        }
        if let Some(ep6) = &ep.ipv6 {
            prev.routes.push(Route {
                dst: "::/0".into(),
                gw: Some(ep6.gateway.to_string()),
            });
        }
    }
    prev.dns = dns;
    prev
}

/// `DEL`: best effort and idempotent. Removes this attachment (the container's endpoint on this network with
/// this interface name) if it is there, whatever became of the namespace, then releases the delegated lease.
/// A sandbox made with the CLI is never CNI's to remove, even when the container ID names it (as for GC).
pub fn del(conf: &NetConf, raw: &Value, env: &Env) -> CniResult<()> {
    let nsnet = nsnet(conf)?;
    let mut errors: Vec<CniError> = Vec::new();
    // Only this container's attachment, and only if CNI made it (a CLI sandbox of the same name is left alone).
    if let Err(e) = nsnet.detach_cni(&env.container_id, &conf.name, &env.ifname) {
        errors.push(e.into());
    }
    if let Some(name) = conf.ipam_plugin() {
        if let Err(e) = Delegate::find(name).and_then(|d| d.run("DEL", raw)) {
            errors.push(e);
        }
    }
    first_of(errors)
}

fn first_of(errors: Vec<CniError>) -> CniResult<()> {
    let mut it = errors.into_iter();
    match it.next() {
        None => Ok(()),
        Some(first) => {
            let rest: Vec<String> = it.map(|e| e.to_string()).collect();
            Err(if rest.is_empty() {
                first
            } else {
                first.with_details(format!("also: {}", rest.join("; ")))
            })
        }
    }
}

/// `CHECK`: the attachment in `prevResult` against nsnet's records and the kernel, and the port mappings asked
/// for; then the delegated IPAM plugin's own CHECK.
pub fn check(conf: &NetConf, raw: &Value, env: &Env) -> CniResult<()> {
    needs(conf, Version::new(0, 4, 0), "CHECK")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::BAD_CONFIG,
            "prevResult: CHECK needs the result of the ADD it checks",
        )
    })?;
    let prev = AddResult::from_value(prev)?;
    let netns = env.netns_path()?;
    let ports = conf.ports()?;
    let nsnet = nsnet(conf)?;
    // The problems and the record come from one read under the shared lock: they agree with each other.
    let (mut problems, sb) = nsnet.check_endpoint(&env.container_id, &conf.name)?;
    if let Some(ep) = sb
        .as_ref()
        .and_then(|s| s.endpoints.iter().find(|e| e.network == conf.name))
    {
        if ep.interface != env.ifname {
            problems.push(format!(
                "the attachment's interface is {}, not {}",
                ep.interface, env.ifname
            ));
        }
        let same_ns = sb.as_ref().is_some_and(|s| nsnet.same_namespace(s, netns));
        if !same_ns {
            problems.push(format!(
                "CNI_NETNS {} is not the namespace the ADD joined",
                netns.display()
            ));
        }
        let netns_text = netns.to_string_lossy();
        match prev
            .interfaces
            .iter()
            .position(|i| i.name == env.ifname && i.sandbox == netns_text)
        {
            None => problems.push(format!(
                "prevResult has no interface {} in {netns_text}",
                env.ifname
            )),
            Some(index) => {
                if !prev.interfaces[index]
                    .mac
                    .eq_ignore_ascii_case(&ep.mac.to_string())
                {
                    problems.push(format!(
                        "interface {} has MAC {}, prevResult says {}",
                        env.ifname, ep.mac, prev.interfaces[index].mac
                    ));
                }
                if let Some(address) = ep.address {
                    let listed = prev
                        .ips
                        .iter()
                        .any(|ip| ip.interface == Some(index) && ip.address == address.to_string());
                    if !listed {
                        problems.push(format!(
                            "address {address} of {} is not in prevResult",
                            env.ifname
                        ));
                    }
                }
                if let Some(ep6) = &ep.ipv6 {
                    let listed = prev.ips.iter().any(|ip| {
                        ip.interface == Some(index)
                            && ip.address.parse::<Ipv6Net>().ok() == Some(ep6.address)
                    });
                    if !listed {
                        problems.push(format!(
                            "address {} of {} is not in prevResult",
                            ep6.address, env.ifname
                        ));
                    }
                }
            }
        }
        for spec in ports.iter().filter(|p| p.host_port.is_some()) {
            if !ep
                .ports
                .iter()
                .any(|m| nsnet_core::portmap::PortSpec::from(*m) == *spec)
            {
                let m = spec.with_host_port(spec.host_port.unwrap_or_default());
                problems.push(format!("port mapping {m} is not published"));
            }
        }
    }
    if let Some(name) = conf.ipam_plugin() {
        if let Err(e) = Delegate::find(name).and_then(|d| d.run("CHECK", raw)) {
            problems.push(e.msg);
        }
    }
    match problems.split_first() {
        None => Ok(()),
        Some((first, _)) => Err(
            CniError::new(code::FAILED, format!("CHECK failed: {first}"))
                .with_details(problems.join("; ")),
        ),
    }
}

/// `GC`: detach every CNI attachment on this network that `cni.dev/valid-attachments` does not list (best
/// effort, all errors reported), then pass GC on to a delegated IPAM plugin that speaks 1.1.0.
pub fn gc(conf: &NetConf, raw: &Value) -> CniResult<()> {
    needs(conf, Version::new(1, 1, 0), "GC")?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::BAD_CONFIG,
            "cni.dev/valid-attachments is missing; GC needs the list of attachments to keep",
        )
    })?;
    let nsnet = nsnet(conf)?;
    let mut errors = Vec::new();
    for sb in nsnet.sandboxes()? {
        if !sb.cni {
            continue;
        }
        let stale = sb.endpoints.iter().any(|e| {
            e.network == conf.name
                && !valid
                    .iter()
                    .any(|a| a.container_id == sb.name && a.ifname == e.interface)
        });
        if stale {
            if let Err(e) = nsnet.detach(&sb.name, &conf.name, true) {
                errors.push(CniError::from(e));
            }
        }
    }
    if let Some(name) = conf.ipam_plugin() {
        match Delegate::find(name) {
            Ok(d) if d.speaks("1.1.0") => {
                if let Err(e) = d.run("GC", raw) {
                    errors.push(e);
                }
            }
            Ok(_) => eprintln!(
                "nsnet-cni: ipam plugin {name} predates GC (CNI 1.1.0); its leases are its own"
            ),
            Err(e) => errors.push(e),
        }
    }
    first_of(errors)
}

/// `STATUS`: can this network take another ADD? Not when its address pool is exhausted (code 50), nor when a
/// delegated IPAM plugin says it cannot.
pub fn status(conf: &NetConf, raw: &Value) -> CniResult<()> {
    needs(conf, Version::new(1, 1, 0), "STATUS")?;
    let delegate = conf.ipam_plugin().map(Delegate::find).transpose()?;
    if delegate.is_none() {
        conf.network_request(None)?;
    }
    let nsnet = nsnet(conf)?;
    if let Some(record) = nsnet.network(&conf.name)? {
        let net = &record.settings;
        // Addresses of veths retired moments ago count as free: an ADD deletes them and takes one.
        let allocations = record.allocations.without_retired();
        let exhausted = |subnet: String| {
            CniError::new(
                code::UNAVAILABLE,
                format!(
                    "network '{}' has no free address left in {subnet}; remove containers or use a larger subnet",
                    net.name
                ),
            )
        };
        if delegate.is_none() {
            if let Some(subnet) = net.subnet {
                if nsnet_core::ipam::allocate(net, &allocations, None).is_err() {
                    return Err(exhausted(subnet.to_string()));
                }
            }
            if let Some(n6) = &net.ipv6 {
                if nsnet_core::ipam::allocate6(&net.name, n6, &allocations, None).is_err() {
                    return Err(exhausted(n6.subnet.to_string()));
                }
            }
        }
    }
    match delegate {
        Some(d) if d.speaks("1.1.0") => d.run("STATUS", raw).map(|_| ()),
        _ => Ok(()),
    }
}

/// The result's `dns` with nsnet's resolver as the one nameserver (it forwards what is not local to the
/// upstream servers; `search` and `options` stay as configured).
fn with_resolver(dns: Option<Value>) -> Value {
    let mut v = dns
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    v["nameservers"] = serde_json::json!([nsnet_core::dns::RESOLVER_ADDR.to_string()]);
    v
}
