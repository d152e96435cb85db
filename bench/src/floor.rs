//! The kernel floor: what one sandbox costs the kernel alone. `nsnet-bench floor up NAME I` makes exactly the
//! objects `nsnet create` makes (a named namespace with `lo` up, a veth pair on the bridge with IPv6 off, the
//! address and the default route, the port on the fast path), through the same netlink and bpf calls in the
//! same order, waiting as it does for the new bridge port to forward, and nothing else: no state, no lock, no
//! firewall, no hairpin, no checks. `floor down NAME I` takes the address off the fast path and removes the
//! namespace as `nsnet rm` does for an idle one; `floor bridge` gives the bridge its fast path, as `nsnet
//! network create` does. The gap between nsnet and this row is nsnet's own work.

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use nsnet_core::kernel::fastpath::FastPath;
use nsnet_core::kernel::{netns, sysctl, Netlink, VethSpec};
use nsnet_core::model::Mac;

/// The bridge the floor's sandboxes join, and its gateway on 10.92.0.0/16.
pub const BRIDGE: &str = "brfloor";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 92, 0, 1);

/// Sandbox `i`'s address: from 10.92.0.10 on.
fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(GATEWAY) + 9 + i)
}

pub fn up(name: &str, i: u32) -> Result<()> {
    let mut inside = netns::create(name, None).context("namespace")?;
    let fd = netns::open(&netns::named_path(name))?;
    let mut host = Netlink::open()?;
    let master = host.link_index(BRIDGE)?;
    let veth = format!("vf{i}");
    let ip = address(i);
    let mac = Mac::for_ipv4(ip);
    host.create_veth(&VethSpec {
        host: &veth,
        peer: "eth0",
        peer_netns: fd.as_fd(),
        master: Some(master),
        mtu: 1500,
        peer_mac: Some(mac.0),
        host_mac: Some(mac.host_end().0),
    })?;
    sysctl::disable_ipv6(&veth)?;
    inside.no_ipv6_link_local("eth0")?;
    inside.add_address("eth0", Ipv4Net::new(ip, 16)?.into())?;
    inside.set_up("eth0")?;
    inside.add_default_route("eth0", GATEWAY.into())?;
    let port = host.link_index(&veth)?;
    if let Some(fp) = FastPath::of_bridge(&mut host, BRIDGE)? {
        fp.add(&mut host, port, ip, mac.0)?;
    }
    host.set_up(&veth)?;
    // As `nsnet create` does before it returns: wait until the new bridge port forwards, so the sandbox is
    // reachable (the kernel's link-watch work moves it there, under RTNL).
    host.wait_forwarding(&veth, std::time::Duration::from_secs(1))?;
    Ok(())
}

pub fn down(name: &str, i: u32) -> Result<()> {
    let mut host = Netlink::open()?;
    if let Some(fp) = FastPath::of_bridge(&mut host, BRIDGE)? {
        fp.remove(address(i))?;
    }
    netns::delete(name)?;
    Ok(())
}

/// The bridge's fast path (its program and empty map), made once before the runs.
pub fn bridge() -> Result<()> {
    FastPath::ensure(&mut Netlink::open()?, BRIDGE)?;
    Ok(())
}
