//! `soak`: create and remove a sandbox with a published port, again and again.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::world::World;
use crate::{f64_of_i64, machine, median, sh};

/// Create and remove a sandbox with a published port, `cycles` times, in one throwaway host: time per cycle
/// by blocks, peak memory of any nsnet process, and what is left at the end.
pub fn soak(cycles: usize) -> Result<()> {
    let w = World::new("soak", "nftables")?;
    let nsnet = std::env::var("NSNET").unwrap_or_else(|_| "target/release/nsnet".into());
    let net = format!("--net=/run/netns/{}", w.host);
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("nsenter")
            .args([net.as_str(), "--", &nsnet])
            .args(args)
            .env("NSNET_STATE_DIR", &w.state)
            .output()?;
        if !out.status.success() {
            bail!(
                "nsnet {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let block = (cycles / 10).max(1);
    let mut times = Vec::with_capacity(block);
    println!(
        "Soak: {cycles} cycles of `nsnet create -p PORT:80` + `nsnet rm`. Machine: {}\n",
        machine()
    );
    println!("| cycles | median ms per cycle | slowest ms | peak RSS of any nsnet process |");
    println!("|---:|---:|---:|---:|");
    for i in 0..cycles {
        let name = format!("soak{i}");
        let port = format!("{}:80", 20000 + (i % 1000));
        let t = Instant::now();
        run(&["create", &name, "-p", &port])?;
        run(&["rm", &name])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() == block {
            let slowest = times.iter().copied().fold(0.0, f64::max);
            let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
                .map(|u| u.max_rss())
                .unwrap_or(0);
            println!(
                "| {} | {:.1} | {:.1} | {:.1} MiB |",
                i + 1,
                median(std::mem::take(&mut times)),
                slowest,
                f64_of_i64(rss) / 1024.0
            );
        }
    }
    // Residue: no sandbox namespace, record, element or link may outlive the cycles.
    run(&["rm", &w.sandbox])?;
    run(&["network", "rm", "nsnet0"])?;
    let links: Vec<String> = sh(&["ip", "-n", &w.host, "-o", "link"])?
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect();
    let leftover_ns = sh(&["ip", "netns", "list"])?
        .lines()
        .filter(|l| l.starts_with("soak"))
        .count();
    let net_arg = format!("--net=/run/netns/{}", w.host);
    let tables = sh(&["nsenter", &net_arg, "nft", "list", "tables"])?;
    println!(
        "\nResidue after the last cycle and `network rm`: host links {links:?} (lo and the uplink were there \
         before), {leftover_ns} sandbox namespaces, nft tables: {:?}, state dir exists: {}",
        tables.trim(),
        w.state.exists()
    );
    Ok(())
}
