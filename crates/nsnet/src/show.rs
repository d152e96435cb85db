//! Listings and inspections, as tables or JSON.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use nsnet_core::model::{or_none, Endpoint, NetworkRecord, Sandbox};
use nsnet_core::ops::{Nsnet, SandboxStatus};

/// Print `value` as pretty JSON, the shape every `--json` output has.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// Print a table: each column as wide as its widest cell (names run up to 64 characters), two spaces between
/// columns, the last one unpadded.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: String = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}  ")
                }
            })
            .collect();
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `nsnet network ls`. With IPv6 on some network, SUBNET and GATEWAY are the IPv4 ones (`-` for none) and
/// SUBNET6 and GATEWAY6 follow them; with none, the table is exactly as before IPv6 (scripts parse it).
pub fn networks(nsnet: &Nsnet, as_json: bool) -> Result<ExitCode> {
    let nets = nsnet.networks()?;
    if as_json {
        return json(&nets);
    }
    let six = nets.iter().any(|r| r.settings.ipv6.is_some());
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|record| {
            let n = &record.settings;
            let flag = if n.internal { " (internal)" } else { "" };
            let driver = match &n.overlay {
                Some(o) => format!("overlay/{}", o.backend),
                None => n.driver.to_string(),
            };
            let mut row = vec![n.name.clone(), driver];
            if six {
                row.extend([dash(n.subnet), dash(n.gateway)]);
                row.extend([
                    dash(n.ipv6.map(|v6| v6.subnet)),
                    dash(n.ipv6.map(|v6| v6.gateway)),
                ]);
            } else {
                row.extend([subnet_of(n), gateway_of(n)]);
            }
            row.extend([
                n.interface.clone(),
                format!("{}{flag}", record.allocations.users().len()),
            ]);
            row
        })
        .collect();
    let header: &[&str] = if six {
        &[
            "NAME",
            "DRIVER",
            "SUBNET",
            "GATEWAY",
            "SUBNET6",
            "GATEWAY6",
            "INTERFACE",
            "SANDBOXES",
        ]
    } else {
        &[
            "NAME",
            "DRIVER",
            "SUBNET",
            "GATEWAY",
            "INTERFACE",
            "SANDBOXES",
        ]
    };
    table(header, &rows);
    Ok(ExitCode::SUCCESS)
}

/// A value, or `-` in a table cell where it is absent.
fn dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn find_network(nsnet: &Nsnet, name: &str) -> Result<NetworkRecord> {
    nsnet
        .network(name)?
        .with_context(|| format!("no network named '{name}'; `nsnet network ls` lists them"))
}

/// A network's IPv4 subnet, or its IPv6 one on an IPv6-only network.
fn subnet_of(n: &nsnet_core::model::Network) -> String {
    n.subnet
        .map(|s| s.to_string())
        .or(n.ipv6.map(|v6| v6.subnet.to_string()))
        .unwrap_or_default()
}

/// A network's IPv4 gateway, or its IPv6 one on an IPv6-only network.
fn gateway_of(n: &nsnet_core::model::Network) -> String {
    n.gateway
        .map(|g| g.to_string())
        .or(n.ipv6.map(|v6| v6.gateway.to_string()))
        .unwrap_or_default()
}

/// An endpoint's IPv4 address, or its IPv6 one on an IPv6-only network.
fn address_of(e: &Endpoint) -> String {
    e.address
        .map(|a| a.to_string())
        .or(e.ipv6.map(|e6| e6.address.to_string()))
        .unwrap_or_default()
}

/// `nsnet network inspect NAME`.
pub fn network(nsnet: &Nsnet, name: &str, as_json: bool) -> Result<ExitCode> {
    let record = find_network(nsnet, name)?;
    if as_json {
        return json(&record);
    }
    let n = &record.settings;
    println!("name:       {}", n.name);
    println!("driver:     {}", n.driver);
    match &n.ipv6 {
        None => {
            println!("subnet:     {}", subnet_of(n));
            println!("gateway:    {}", gateway_of(n));
        }
        Some(v6) => {
            println!("subnet:     {}", or_none(n.subnet));
            println!("gateway:    {}", or_none(n.gateway));
            println!("subnet6:    {}", v6.subnet);
            println!(
                "gateway6:   {} ({})",
                v6.gateway,
                nsnet_core::plan::build::GATEWAY_LINK_LOCAL6
            );
            println!("nat66:      {}", v6.nat);
        }
    }
    println!("interface:  {}", n.interface);
    println!("internal:   {}", n.internal);
    println!("isolate:    {}", n.isolate);
    if n.driver == nsnet_core::model::Driver::Bridge {
        println!("fast path:  {}", n.fast_path);
    }
    println!("mtu:        {}", n.mtu);
    let servers: Vec<String> = n.dns_servers.iter().map(|s| s.to_string()).collect();
    match (n.dns, servers.is_empty()) {
        (false, _) => println!("names:      off"),
        (true, true) => println!("names:      on (upstream: the host's resolvers)"),
        (true, false) => println!("names:      on (upstream: {})", servers.join(", ")),
    }
    if let Some(o) = &n.overlay {
        println!(
            "overlay:    {} of cluster {}, vni {} port {}, via {}",
            o.backend, o.cluster, o.vni, o.port, o.device
        );
        for p in &o.peers {
            println!("peer:       {} at {}", p.subnet, p.underlay);
        }
    }
    for (ip, sb) in &record.allocations.addresses {
        println!("address:    {ip} -> {sb}");
    }
    for p in &record.allocations.published {
        println!("published:  {} -> {}", p.mapping, p.sandbox);
    }
    Ok(ExitCode::SUCCESS)
}

/// `nsnet ls`. With IPv6 on some sandbox, ADDRESSES holds the IPv4 addresses (`-` for none) and IPV6 the
/// global IPv6 ones, one per network each; with none, the table is exactly as before IPv6.
pub fn sandboxes(nsnet: &Nsnet, as_json: bool) -> Result<ExitCode> {
    let sbs = nsnet.sandboxes()?;
    if as_json {
        return json(&sbs);
    }
    let joined = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let six = sbs
        .iter()
        .any(|sb| sb.endpoints.iter().any(|e| e.ipv6.is_some()));
    let statuses: Vec<SandboxStatus> = sbs.iter().map(|sb| nsnet.status(sb)).collect();
    let rows: Vec<Vec<String>> = sbs
        .iter()
        .zip(&statuses)
        .map(|(sb, status)| {
            let each = |f: &dyn Fn(&Endpoint) -> String| sb.endpoints.iter().map(f).collect();
            let ports = sb
                .endpoints
                .iter()
                .flat_map(|e| e.ports.iter().map(|p| p.to_string()))
                .collect();
            let mut row = vec![
                sb.name.clone(),
                sb.netns.display().to_string(),
                joined(each(&|e| e.network.clone())),
            ];
            if six {
                row.push(joined(each(&|e| dash(e.address))));
                row.push(joined(each(&|e| dash(e.ipv6.map(|e6| e6.address)))));
            } else {
                row.push(joined(each(&address_of)));
            }
            row.extend([joined(ports), status.to_string()]);
            row
        })
        .collect();
    let header: &[&str] = if six {
        &[
            "NAME",
            "NETNS",
            "NETWORKS",
            "ADDRESSES",
            "IPV6",
            "PORTS",
            "STATUS",
        ]
    } else {
        &["NAME", "NETNS", "NETWORKS", "ADDRESSES", "PORTS", "STATUS"]
    };
    table(header, &rows);
    if statuses.contains(&SandboxStatus::NamespaceGone) {
        // On stderr, so the table on stdout stays as it is for scripts.
        eprintln!(
            "nsnet: a sandbox whose namespace is gone keeps its addresses and ports until \
             `nsnet gc` releases it"
        );
    }
    let networks: Vec<_> = nsnet.networks()?.into_iter().map(|n| n.settings).collect();
    if nsnet.resolver_status(&sbs, &networks) == nsnet_core::ops::ResolverStatus::Down {
        eprintln!(
            "nsnet: names: the resolver is down, so sandboxes cannot look each other up; the next nsnet \
             command that changes something, or `nsnet gc`, starts it again"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An endpoint's aliases and published ports, under its line in `nsnet inspect`.
fn print_extras(e: &Endpoint) {
    if !e.aliases.is_empty() {
        println!("  aliases {}", e.aliases.join(", "));
    }
    for p in &e.ports {
        println!("  publish {p}");
    }
}

fn find_sandbox(nsnet: &Nsnet, name: &str) -> Result<Sandbox> {
    nsnet
        .sandbox(name)?
        .with_context(|| format!("no sandbox named '{name}'; `nsnet ls` lists them"))
}

/// `nsnet inspect NAME`.
pub fn sandbox(nsnet: &Nsnet, name: &str, as_json: bool) -> Result<ExitCode> {
    let sb = find_sandbox(nsnet, name)?;
    if as_json {
        return json(&sb);
    }
    println!("name:   {}", sb.name);
    println!(
        "netns:  {}{}",
        sb.netns.display(),
        if sb.owned { "" } else { " (attached)" }
    );
    for e in &sb.endpoints {
        if let Some(e6) = e.ipv6 {
            // Both families: the IPv4 line as always (`none` on an IPv6-only network), the IPv6 one under it.
            println!(
                "{}: network {} address {} mac {} gateway {}{} host {}",
                e.interface,
                e.network,
                or_none(e.address),
                e.mac,
                or_none(e.gateway),
                if e.default_route {
                    " (default route)"
                } else {
                    ""
                },
                e.host_interface
            );
            println!(
                "  ipv6 {} link-local {} gateway {}",
                e6.address,
                e.mac.link_local6(),
                e6.gateway
            );
            print_extras(e);
            continue;
        }
        println!(
            "{}: network {} address {} mac {} gateway {}{} host {}",
            e.interface,
            e.network,
            address_of(e),
            e.mac,
            e.gateway
                .map(|g| g.to_string())
                .or(e.ipv6.map(|e6| e6.gateway.to_string()))
                .unwrap_or_default(),
            if e.default_route {
                " (default route)"
            } else {
                ""
            },
            e.host_interface
        );
        print_extras(e);
    }
    if !sb.dns_servers.is_empty() {
        let servers: Vec<String> = sb.dns_servers.iter().map(|s| s.to_string()).collect();
        println!("dns:    {}", servers.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `nsnet port` says a port of endpoint `ep` is published: its host address, an IPv6 one in brackets
/// (`[::1]:8080`, as `docker port` writes it); on every address `0.0.0.0`, which in nsnet means both
/// families on a dual-stack network, and `[::]` on an IPv6-only one, which has no IPv4 to publish on.
fn port_host(ep: &Endpoint, host_ip: Option<std::net::IpAddr>) -> String {
    match host_ip {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None if ep.address.is_none() => "[::]".to_string(),
        None => "0.0.0.0".to_string(),
    }
}

/// `nsnet port NAME`: one line per published port, like `docker port`.
pub fn ports(nsnet: &Nsnet, name: &str, as_json: bool) -> Result<ExitCode> {
    let sb = find_sandbox(nsnet, name)?;
    if as_json {
        let mappings: Vec<_> = sb.endpoints.iter().flat_map(|e| e.ports.iter()).collect();
        return json(&mappings);
    }
    for e in &sb.endpoints {
        for m in &e.ports {
            let host = port_host(e, m.host_ip);
            for (host_port, container_port) in m.pairs() {
                // nsnet refuses a port a host process holds, but cannot stop one from binding it afterwards;
                // the DNAT then sends that process's connections to the sandbox, so say so where the user
                // looks.
                let note = if nsnet.port_shadowed(e, m, host_port) {
                    "  (a host process listens here too; it gets no connections, the sandbox gets them all)"
                } else {
                    ""
                };
                println!(
                    "{container_port}/{} -> {host}:{host_port}{note}",
                    m.protocol
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
