//! Listings and inspections, as tables or JSON.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use nsnet_core::model::{Network, Sandbox};
use nsnet_core::store::Store;

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// `nsnet network ls`.
pub fn networks(store: &Store, as_json: bool) -> Result<ExitCode> {
    let nets = store.networks()?;
    if as_json {
        return json(&nets);
    }
    println!(
        "{:<16} {:<7} {:<18} {:<16} {:<16} SANDBOXES",
        "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERFACE"
    );
    for n in &nets {
        let flag = if n.internal { " (internal)" } else { "" };
        println!(
            "{:<16} {:<7} {:<18} {:<16} {:<16} {}{flag}",
            n.name,
            n.driver,
            n.subnet,
            n.gateway,
            n.interface,
            n.users().len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn find_network(store: &Store, name: &str) -> Result<Network> {
    store
        .network(name)?
        .with_context(|| format!("no network named '{name}'; `nsnet network ls` lists them"))
}

/// `nsnet network inspect NAME`.
pub fn network(store: &Store, name: &str, as_json: bool) -> Result<ExitCode> {
    let n = find_network(store, name)?;
    if as_json {
        return json(&n);
    }
    println!("name:       {}", n.name);
    println!("driver:     {}", n.driver);
    println!("subnet:     {}", n.subnet);
    println!("gateway:    {}", n.gateway);
    println!("interface:  {}", n.interface);
    println!("internal:   {}", n.internal);
    println!("isolate:    {}", n.isolate);
    if n.driver == nsnet_core::model::Driver::Bridge {
        println!("fast path:  {}", n.fast_path);
    }
    println!("mtu:        {}", n.mtu);
    for (ip, sb) in &n.allocations {
        println!("address:    {ip} -> {sb}");
    }
    for p in &n.published {
        println!("published:  {} -> {}", p.mapping, p.sandbox);
    }
    Ok(ExitCode::SUCCESS)
}

/// `nsnet ls`.
pub fn sandboxes(store: &Store, as_json: bool) -> Result<ExitCode> {
    let sbs = store.sandboxes()?;
    if as_json {
        return json(&sbs);
    }
    println!("{:<20} {:<28} {:<24} PORTS", "NAME", "NETNS", "ADDRESSES");
    for sb in &sbs {
        let addrs: Vec<String> = sb
            .endpoints
            .iter()
            .map(|e| format!("{}", e.address))
            .collect();
        let ports: Vec<String> = sb
            .endpoints
            .iter()
            .flat_map(|e| e.ports.iter().map(|p| p.to_string()))
            .collect();
        println!(
            "{:<20} {:<28} {:<24} {}",
            sb.name,
            sb.netns.display(),
            addrs.join(","),
            ports.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn find_sandbox(store: &Store, name: &str) -> Result<Sandbox> {
    store
        .sandbox(name)?
        .with_context(|| format!("no sandbox named '{name}'; `nsnet ls` lists them"))
}

/// `nsnet inspect NAME`.
pub fn sandbox(store: &Store, name: &str, as_json: bool) -> Result<ExitCode> {
    let sb = find_sandbox(store, name)?;
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
        println!(
            "{}: network {} address {} mac {} gateway {}{} host {}",
            e.interface,
            e.network,
            e.address,
            e.mac,
            e.gateway,
            if e.default_route {
                " (default route)"
            } else {
                ""
            },
            e.host_interface
        );
        for p in &e.ports {
            println!("  publish {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nsnet port NAME`: one line per published port, like `docker port`.
pub fn ports(store: &Store, name: &str, as_json: bool) -> Result<ExitCode> {
    let sb = find_sandbox(store, name)?;
    let mappings: Vec<_> = sb
        .endpoints
        .iter()
        .flat_map(|e| e.ports.iter().copied())
        .collect();
    if as_json {
        return json(&mappings);
    }
    for m in &mappings {
        let host = m.host_ip.map_or("0.0.0.0".to_string(), |ip| ip.to_string());
        for (host_port, container_port) in m.pairs() {
            println!("{container_port}/{} -> {host}:{host_port}", m.protocol);
        }
    }
    Ok(ExitCode::SUCCESS)
}
