//! The one reader of host facts for the operations: links, addresses and routes (over netlink, in the host or
//! inside a sandbox's namespace), namespaces' identity, bound sockets, sysctls, the fast path's map, and what
//! the firewall holds (nsnet's tables' owner, the user chain, host forward chains, endpoint and port
//! elements). Validation and CNI `CHECK` ask these; [`crate::apply`] is the only code that changes the kernel
//! or the firewall.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::firewall::{nftables, Backend, HostChain, Rule, TablesOwner};
use crate::kernel::fastpath::{self, FastPath, OnUnderlay};
use crate::kernel::netlink::{DefaultRoute, RouteSpec, NSNET_ROUTE_PROTOCOL};
use crate::kernel::sockets::{self, Bound};
use crate::kernel::{netns, sysctl, Link, Netlink};
use crate::model::Sandbox;
use crate::plan::Step;
use crate::portmap::Proto;

/// A fast path map entry: the host port's ifindex and the sandbox's MAC.
pub(crate) type FastPathEntry = (u32, [u8; 6]);

/// One namespace's view: the host's ([`Host::new`]) or a sandbox's ([`Host::inside`]). Its netlink socket is
/// opened on first use and kept for the command.
pub(crate) struct Host {
    nl: Option<Netlink>,
}

/// An overlay device's entries, as the kernel holds them ([`Host::overlay_entries`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct OverlayEntries {
    /// FDB entries: VTEP MAC, and the underlay address it points at.
    pub fdb: Vec<([u8; 6], Option<Ipv4Addr>)>,
    /// Neighbour entries: address, MAC.
    pub neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    /// nsnet's overlay routes through the device.
    pub routes: Vec<RouteSpec>,
    /// The IPv6 twins (dual-stack overlays): neighbour entries, and nsnet's routes through the device.
    pub neighbours6: Vec<(std::net::Ipv6Addr, [u8; 6])>,
    pub routes6: Vec<crate::kernel::netlink::RouteSpec6>,
}

/// The host's underlay ([`Host::underlay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ip: Ipv4Addr,
    pub interface: String,
    pub mtu: u32,
    /// The interface's MAC: host-gw peers bind this host's IPv6 block to it (dual-stack overlays).
    pub mac: Option<crate::model::Mac>,
}

impl Host {
    /// The host's view (the namespace nsnet runs in).
    pub(crate) fn new() -> Host {
        Host { nl: None }
    }

    /// The view from inside the namespace at `path`.
    pub(crate) fn inside(path: &Path) -> Result<Host> {
        Ok(Host {
            nl: Some(netns::netlink_in(path)?),
        })
    }

    fn nl(&mut self) -> Result<&mut Netlink> {
        let nl = match self.nl.take() {
            Some(nl) => nl,
            None => Netlink::open()?,
        };
        Ok(self.nl.insert(nl))
    }

    /// The link named `name`, if there is one.
    pub(crate) fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.nl()?.link(name)?)
    }

    pub(crate) fn link_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self.link(name)?.is_some())
    }

    /// Every link, with its alias (nsnet's tag) and master.
    pub(crate) fn links(&mut self) -> Result<Vec<Link>> {
        Ok(self.nl()?.links()?)
    }

    /// The names of every link.
    pub(crate) fn link_names(&mut self) -> Result<Vec<String>> {
        Ok(self.nl()?.links()?.into_iter().map(|l| l.name).collect())
    }

    /// Every IPv4 address, with its prefix.
    pub(crate) fn ipv4_addresses(&mut self) -> Result<Vec<Ipv4Net>> {
        Ok(self.nl()?.ipv4_addresses()?)
    }

    /// The IPv4 addresses of link `name`.
    pub(crate) fn addresses_of(&mut self, name: &str) -> Result<Vec<Ipv4Net>> {
        Ok(self.nl()?.addresses_of(name)?)
    }

    /// Every IPv4 address, with its link's name.
    pub(crate) fn addresses_by_link(&mut self) -> Result<Vec<(String, Ipv4Net)>> {
        Ok(self.nl()?.addresses_by_link()?)
    }

    /// The link and gateway the kernel would route `ip` by; `None` when it is unreachable.
    pub(crate) fn route_to(&mut self, ip: Ipv4Addr) -> Result<Option<(String, Option<Ipv4Addr>)>> {
        Ok(self.nl()?.route_get_named(ip)?)
    }

    /// Every IPv6 address, with its prefix.
    pub(crate) fn ipv6_addresses(&mut self) -> Result<Vec<ipnet::Ipv6Net>> {
        Ok(self.nl()?.ipv6_addresses()?)
    }

    /// Every IPv6 address, with its link's name (link-local ones included).
    pub(crate) fn addresses6_by_link(&mut self) -> Result<Vec<(String, ipnet::Ipv6Net)>> {
        Ok(self.nl()?.ipv6_addresses_by_link()?)
    }

    /// The link and gateway the kernel would route IPv6 address `ip` by; `None` when it is unreachable.
    pub(crate) fn route6_to(
        &mut self,
        ip: std::net::Ipv6Addr,
    ) -> Result<Option<(String, Option<std::net::Ipv6Addr>)>> {
        Ok(self.nl()?.route_get6_named(ip)?)
    }

    /// The IPv6 addresses of link `name` (link-local ones included).
    pub(crate) fn addresses6_of(&mut self, name: &str) -> Result<Vec<ipnet::Ipv6Net>> {
        Ok(self.nl()?.ipv6_addresses_of(name)?)
    }

    /// The IPv6 default routes of the main table: output link and gateway.
    pub(crate) fn default_routes6(&mut self) -> Result<Vec<crate::kernel::netlink::DefaultRoute6>> {
        Ok(self.nl()?.ipv6_default_routes()?)
    }

    /// The destinations of every IPv6 route of the main table (default routes left out).
    pub(crate) fn ipv6_routes(&mut self) -> Result<Vec<ipnet::Ipv6Net>> {
        Ok(self.nl()?.ipv6_routes()?)
    }

    /// Whether this namespace has IPv6: the kernel has it (`/proc/sys/net/ipv6`) and it is not turned off
    /// for every interface (`net.ipv6.conf.all.disable_ipv6`).
    pub(crate) fn has_ipv6() -> bool {
        sysctl::get("net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.trim() == "0")
    }

    /// Whether interface `name` has IPv6 on (`disable_ipv6` is 0): the kernel routes no IPv6 through one
    /// that has it off.
    pub(crate) fn ipv6_on(name: &str) -> bool {
        sysctl::get(&format!("net/ipv6/conf/{name}/disable_ipv6")).is_ok_and(|v| v.trim() == "0")
    }

    /// The machine's identity (`/etc/machine-id`), empty when there is none: the seed of the host's ULA
    /// prefix, with the state dir's tag.
    pub(crate) fn machine_id() -> String {
        std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The links that would lose their router advertisements when IPv6 forwarding comes on: with
    /// `net.ipv6.conf.all.forwarding` at 0, those taking RAs as a host does (`accept_ra=1`) and holding a
    /// route learnt from one. Switching forwarding on purges such routes and ignores later RAs unless the
    /// link says `accept_ra=2` first (moby#43466). Empty once forwarding is on, or on a host without IPv6.
    pub(crate) fn ra_uplinks(&mut self) -> Result<Vec<String>> {
        if !Host::has_ipv6() || sysctl::get("net/ipv6/conf/all/forwarding")? != "0" {
            return Ok(Vec::new());
        }
        let holders = self.nl()?.ipv6_ra_route_links()?;
        let links = self.links()?;
        Ok(links
            .into_iter()
            .filter(|l| holders.contains(&l.index))
            .filter(|l| {
                sysctl::get(&format!("net/ipv6/conf/{}/accept_ra", l.name)).is_ok_and(|v| v == "1")
            })
            .map(|l| l.name)
            .collect())
    }

    /// [`crate::plan::build::keep_router_advertisements`] for `steps`, with this host's uplinks; looks at the
    /// host only when the steps switch IPv6 forwarding on.
    pub(crate) fn keep_router_advertisements(&mut self, steps: &mut Vec<Step>) -> Result<()> {
        if steps.contains(&Step::forwarding6()) {
            let uplinks = self.ra_uplinks()?;
            crate::plan::build::keep_router_advertisements(steps, &uplinks);
        }
        Ok(())
    }

    /// The destinations of every IPv4 route.
    pub(crate) fn ipv4_routes(&mut self) -> Result<Vec<Ipv4Net>> {
        Ok(self.nl()?.ipv4_routes()?)
    }

    /// The default routes.
    pub(crate) fn default_routes(&mut self) -> Result<Vec<DefaultRoute>> {
        Ok(self.nl()?.default_routes()?)
    }

    /// What the kernel holds for the peers of an overlay network programmed on `device`: its FDB entries and
    /// neighbour entries, and nsnet's overlay routes through it. `None` when the device is not there.
    pub(crate) fn overlay_entries(&mut self, device: &str) -> Result<Option<OverlayEntries>> {
        let nl = self.nl()?;
        let Some(link) = nl.link(device)? else {
            return Ok(None);
        };
        let routes = nl
            .routes_with_protocol(NSNET_ROUTE_PROTOCOL)?
            .into_iter()
            .filter(|r| r.dev_index == link.index)
            .collect();
        Ok(Some(OverlayEntries {
            fdb: nl.fdb_entries(link.index)?,
            neighbours: nl
                .neighbours(link.index)?
                .into_iter()
                .map(|(ip, mac, _)| (ip, mac))
                .collect(),
            routes,
            neighbours6: nl
                .neighbours6(link.index)?
                .into_iter()
                .map(|(ip, mac, _)| (ip, mac))
                .collect(),
            routes6: nl
                .routes6_with_protocol(NSNET_ROUTE_PROTOCOL)?
                .into_iter()
                .filter(|r| r.dev_index == link.index)
                .collect(),
        }))
    }

    /// Whether `ip` is on a link of this host (no router between): host-gw can only route to such peers.
    pub(crate) fn on_link(&mut self, ip: Ipv4Addr) -> Result<bool> {
        Ok(matches!(self.nl()?.route_get(ip)?, Some((_, None))))
    }

    /// The underlay: the address this host is reached by and its interface (with its MTU), from the
    /// interface given, or the address given, or the interface of the default route.
    pub(crate) fn underlay(
        &mut self,
        iface: Option<&str>,
        ip: Option<Ipv4Addr>,
    ) -> Result<Underlay> {
        let nl = self.nl()?;
        let (name, address) = match (iface, ip) {
            (_, Some(ip)) => match nl.address_owner(ip)? {
                Some((name, _, _)) => (name, ip),
                None => {
                    return Err(Error::Invalid(format!(
                        "no interface of this host has the underlay address {ip}; give one it has \
                         (--underlay-ip) or the interface (--iface)"
                    )))
                }
            },
            (Some(name), None) => {
                let first = nl.addresses_of(name)?.into_iter().next();
                match first {
                    Some(a) => (name.to_string(), a.addr()),
                    None => {
                        return Err(Error::Invalid(format!(
                            "interface {name} has no IPv4 address to reach the other hosts by; give one \
                             with an address (--iface) or the address (--underlay-ip)"
                        )))
                    }
                }
            }
            (None, None) => {
                let links = nl.links()?;
                let oif = nl.default_routes()?.into_iter().find_map(|r| r.oif);
                let Some(link) = oif.and_then(|i| links.into_iter().find(|l| l.index == i)) else {
                    return Err(Error::Invalid(
                        "this host has no default route to find its underlay interface by; name it with \
                         --iface or --underlay-ip"
                            .into(),
                    ));
                };
                let Some(a) = nl.addresses_of(&link.name)?.into_iter().next() else {
                    return Err(Error::Invalid(format!(
                        "the default route's interface {} has no IPv4 address; name the underlay with \
                         --iface or --underlay-ip",
                        link.name
                    )));
                };
                (link.name, a.addr())
            }
        };
        let link = nl.link(&name)?;
        let mtu = link.as_ref().and_then(|l| l.mtu).unwrap_or(1500);
        let mac = link.and_then(|l| l.mac).map(crate::model::Mac);
        Ok(Underlay {
            ip: address,
            interface: name,
            mtu,
            mac,
        })
    }

    /// Whether `device` has an ingress qdisc (`ingress` or `clsact`, anyone's); a missing device has none.
    pub(crate) fn has_ingress_qdisc(&mut self, device: &str) -> Result<bool> {
        let nl = self.nl()?;
        let Some(link) = nl.link(device)? else {
            return Ok(false);
        };
        Ok(nl.ingress_qdisc(link.index)?.is_some())
    }

    /// Where bridge `bridge`'s fast path stands on underlay `device` ([`crate::plan::Step::UnderlayFilter`]):
    /// `None` when the bridge has no fast path (nothing to run there).
    pub(crate) fn underlay_filter_there(
        &mut self,
        bridge: &str,
        device: &str,
    ) -> Result<Option<OnUnderlay>> {
        let nl = self.nl()?;
        let Some(link) = nl.link(device)? else {
            return Ok(Some(OnUnderlay::Blocked));
        };
        Ok(fastpath::on_underlay(nl, bridge, link.index)?)
    }

    /// `tunnel` (an overlay network's [`Step::FastPathTunnel`]), with its bridge, when that bridge's fast path
    /// holds other remote blocks than it writes ([`FastPath::remotes_are`]); `None` when they are right, the
    /// bridge has no fast path, or `plan` writes them anyway.
    pub(crate) fn lost_fast_path_remotes(
        &mut self,
        plan: &crate::plan::Plan,
        tunnel: Option<Step>,
    ) -> Result<Option<(String, Step)>> {
        if plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::FastPathTunnel { .. }))
        {
            return Ok(None);
        }
        let Some(Step::FastPathTunnel {
            bridge,
            routes,
            routes6,
            ..
        }) = &tunnel
        else {
            return Ok(None);
        };
        let lost = match FastPath::of_bridge(self.nl()?, bridge)? {
            Some(fp) => !fp.remotes_are(routes, routes6)?,
            None => false,
        };
        Ok(lost.then(|| bridge.clone()).zip(tunnel))
    }

    /// Fast path filters on underlay devices whose bridge is gone: (device, handle).
    pub(crate) fn stale_underlay_filters(&mut self, links: &[Link]) -> Result<Vec<(String, u32)>> {
        Ok(fastpath::stale_underlay_filters(self.nl()?, links)?)
    }

    /// Where bridge `bridge`'s fast path sends `ip` (host port ifindex, sandbox MAC): `None` inside when the
    /// map has no entry, `None` outside when the bridge has no fast path for `ip`'s family (none at all, or
    /// one made before nsnet carried IPv6).
    pub(crate) fn fast_path_entry(
        &mut self,
        bridge: &str,
        ip: impl Into<IpAddr>,
    ) -> Result<Option<Option<FastPathEntry>>> {
        let ip = ip.into();
        match FastPath::of_bridge(self.nl()?, bridge)? {
            Some(fp) if fp.carries(ip) => Ok(Some(fp.entry(ip)?)),
            _ => Ok(None),
        }
    }

    /// The remote IPv6 blocks (block, next hop) in `bridge`'s fast path (`remote6`); `None` when the bridge
    /// has no fast path, or one made without `remote6`.
    pub(crate) fn fast_path_remotes6(
        &mut self,
        bridge: &str,
    ) -> Result<Option<Vec<(ipnet::Ipv6Net, std::net::Ipv6Addr)>>> {
        match FastPath::of_bridge(self.nl()?, bridge)? {
            Some(fp) if fp.has_remote6() => Ok(Some(fp.remotes6()?)),
            _ => Ok(None),
        }
    }

    /// The ports the `[::1]` translation's programs carry, as (protocol number, port); `None` when this
    /// namespace has no such programs, or not all of them.
    pub(crate) fn loopback6_ports() -> Result<Option<Vec<(u32, u16)>>> {
        match crate::kernel::loopback6::existing()? {
            Some(lo) if lo.is_complete() => Ok(Some(lo.ports()?)),
            _ => Ok(None),
        }
    }

    /// Whether this host can have the `[::1]` translation's programs (cgroup2, bpf maps, namespace cookies).
    pub(crate) fn loopback6_supported() -> bool {
        crate::kernel::loopback6::unsupported_reason().is_none()
    }

    /// The host's name (the UTS namespace's), or `?` when it cannot be read.
    pub(crate) fn hostname() -> String {
        sysctl::get("kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    }

    /// The identity (device, inode) of the namespace at `path`.
    pub(crate) fn namespace_identity(path: &Path) -> Result<(u64, u64)> {
        Ok(netns::identity(path)?)
    }

    /// Whether `a` and `b` name the same namespace (false when either cannot be read).
    pub(crate) fn same_namespace(a: &Path, b: &Path) -> bool {
        matches!((netns::identity(a), netns::identity(b)), (Ok(x), Ok(y)) if x == y)
    }

    /// The sandboxes under /etc/netns whose resolv.conf the state dir tagged `tag` wrote, with its text.
    pub(crate) fn tagged_resolv_confs(tag: &str) -> Vec<(String, String)> {
        netns::tagged_resolv_confs(tag)
    }

    /// The host's resolv.conf (its `search` and `options` go into the sandboxes' own).
    pub(crate) fn resolv_conf() -> crate::dns::upstream::ResolvConf {
        crate::dns::upstream::host_conf()
    }

    /// Whether there is a file at `path` (a namespace's mount point, or a /proc path to one).
    pub(crate) fn namespace_exists(path: &Path) -> bool {
        path.exists()
    }

    /// The namespaces mounted under /run/netns that carry `tag` (their `lo`'s alias), by name.
    pub(crate) fn tagged_namespaces(tag: &str) -> Result<Vec<String>> {
        Ok(netns::named()?
            .into_iter()
            .filter(|name| netns::has_tag(&netns::named_path(name), tag))
            .collect())
    }

    /// Whether a process is in the namespace at `path`.
    pub(crate) fn namespace_in_use(path: &Path) -> bool {
        netns::in_use(path)
    }

    /// Whether `sb`'s namespace is still there: its path exists and, when recorded, names the same namespace
    /// as when it was attached.
    pub(crate) fn namespace_is_there(sb: &Sandbox) -> bool {
        match sb.netns_id {
            None => sb.netns.exists(),
            Some(id) => netns::identity(&sb.netns).is_ok_and(|now| now == id),
        }
    }

    /// Whether a host socket holds `port` (on `ip`, or on any address).
    pub(crate) fn port_in_use(
        proto: Proto,
        ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> Result<bool> {
        Ok(sockets::port_in_use(proto, ip, port)?)
    }

    /// The host's bound sockets of `proto` (from /proc/net: a millisecond a read).
    pub(crate) fn bound(proto: Proto) -> Result<Vec<Bound>> {
        Ok(sockets::bound(proto)?)
    }

    /// The kernel's local port range (`net.ipv4.ip_local_port_range`), where automatic host ports come from.
    pub(crate) fn local_port_range() -> (u16, u16) {
        sysctl::get("net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text
                    .split_whitespace()
                    .filter_map(|n| n.parse::<u16>().ok());
                Some((it.next()?, it.next()?))
            })
            .unwrap_or((32768, 60999))
    }

    /// Every nftables forward chain outside nsnet's tables, each with whether its policy is drop.
    pub(crate) fn forward_chains() -> Result<Vec<(HostChain, bool)>> {
        Ok(nftables::forward_chains()?)
    }

    /// The nftables forward chains outside nsnet's tables whose policy is drop.
    pub(crate) fn forward_drop_chains() -> Result<Vec<HostChain>> {
        Ok(nftables::forward_drop_chains()?)
    }

    /// Who holds nsnet's tables (or chains) on `backend` now.
    pub(crate) fn tables_owner(backend: Backend) -> Result<TablesOwner> {
        Ok(backend.tables_owner()?)
    }

    /// Whether the user chain on `backend` holds the user's rules.
    pub(crate) fn user_chain_has_rules(backend: Backend) -> bool {
        backend.user_chain_has_rules()
    }

    /// Whether nsnet's nftables tables are the newest kind, which dual-stack networks need
    /// ([`nftables::tables_current`]); other backends have nothing to bring up to date.
    pub(crate) fn firewall_current(backend: Backend) -> Result<bool> {
        match backend {
            Backend::Nftables => Ok(nftables::tables_current()?),
            Backend::Iptables | Backend::None => Ok(true),
        }
    }

    /// Which of `rules` are not (all) in `backend`'s firewall now.
    pub(crate) fn firewall_missing(backend: Backend, rules: &[Rule]) -> Result<Vec<Rule>> {
        Ok(backend.missing(rules)?)
    }
}

#[cfg(test)]
mod tests {
    /// The claim in lib.rs and ARCHITECTURE.md, kept true: no operation reads the host around [`super::Host`]
    /// and the CLI's listings read none either.
    #[test]
    fn ops_read_the_host_only_through_host() {
        let sources = [
            ("ops/mod.rs", include_str!("mod.rs")),
            ("ops/check.rs", include_str!("check.rs")),
            ("ops/explain.rs", include_str!("explain.rs")),
            ("ops/firewall.rs", include_str!("firewall.rs")),
            ("ops/gc.rs", include_str!("gc.rs")),
            ("ops/network.rs", include_str!("network.rs")),
            ("ops/overlay.rs", include_str!("overlay.rs")),
            ("ops/query.rs", include_str!("query.rs")),
            ("ops/sandbox.rs", include_str!("sandbox.rs")),
            ("ops/topology.rs", include_str!("topology.rs")),
            ("topology.rs", include_str!("../topology.rs")),
            ("model.rs", include_str!("../model.rs")),
            (
                "nsnet/src/show.rs",
                include_str!("../../../nsnet/src/show.rs"),
            ),
        ];
        let reads = [
            "Netlink",
            "netlink_in",
            "FastPath",
            "sockets::",
            "sysctl::",
            "netns::identity",
            "netns::in_use",
            "netns::open",
            "netns::run_in",
            "nftables::",
            "iptables::",
            ".tables_owner()",
            ".user_chain_has_rules()",
            ".missing(",
            "namespace_is_there()",
        ];
        let mut found = Vec::new();
        for (file, text) in sources {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for read in reads.iter().filter(|r| code.contains(**r)) {
                    found.push(format!("{file}:{}: {read}", n + 1));
                }
            }
        }
        assert!(found.is_empty(), "host reads around Host: {found:#?}");
    }
}
