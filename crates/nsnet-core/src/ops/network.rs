//! `nsnet network create | rm`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Host, Nsnet, DEFAULT_NETWORK};
use crate::error::{Error, Result};
use crate::firewall::Backend;
use crate::invalid;
use crate::ipam;
use crate::model::{
    or_none, Allocations, Driver, Net6, NetOptions, Network, NetworkRecord, Overlay, Sandbox,
};
use crate::names;
use crate::names::short_hash;
use crate::plan::{build, Plan, Step};
use crate::store::{Record, Removal};

/// What `nsnet network create` asks for.
#[derive(Debug, Clone)]
pub struct NetworkRequest {
    pub name: String,
    pub driver: Driver,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// The bridge (or, for `veth`, the host end) name.
    pub interface: Option<String>,
    pub internal: bool,
    /// Keep sandboxes on other networks from reaching this network's addresses directly.
    pub isolate: bool,
    /// Sandbox-to-sandbox IPv4, and IPv6 TCP and UDP, skip the bridge (bridge networks; see
    /// [`crate::kernel::fastpath`]).
    pub fast_path: bool,
    pub mtu: Option<u32>,
    pub options: NetOptions,
    /// This host's part of an overlay network (only `nsnet agent` asks for one).
    pub overlay: Option<Overlay>,
    /// Sandboxes find each other by name ([`crate::dns`]).
    pub dns: bool,
    /// Upstream resolvers for the network's sandboxes (`--dns IP`, either family); empty: the host's.
    pub dns_servers: Vec<IpAddr>,
    /// The network's IPv6 part (`--ipv6`, or an IPv6 `--subnet`); `None`: IPv4 only.
    pub ipv6: Option<Ipv6Request>,
}

/// What a network request asks of IPv6 ([`NetworkRequest::ipv6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Request {
    /// `None`: a free /64 of the host's unique local prefix ([`ipam::ula_prefix`]).
    pub subnet: Option<Ipv6Net>,
    /// `None`: the subnet's `::1`.
    pub gateway: Option<Ipv6Addr>,
    /// Masquerade IPv6 leaving the host (NAT66); `--ipv6-nat=false` turns it off.
    pub nat: bool,
    /// No IPv4 part at all: an IPv6-only network (`--ipv4=false`, or a CNI configuration whose only subnet
    /// is IPv6).
    pub only: bool,
}

impl Default for Ipv6Request {
    fn default() -> Ipv6Request {
        Ipv6Request {
            subnet: None,
            gateway: None,
            nat: true,
            only: false,
        }
    }
}

impl NetworkRequest {
    /// The request behind the default network.
    pub fn default_network() -> NetworkRequest {
        NetworkRequest {
            name: DEFAULT_NETWORK.into(),
            driver: Driver::Bridge,
            subnet: None,
            gateway: None,
            interface: Some(DEFAULT_NETWORK.into()),
            internal: false,
            isolate: true,
            fast_path: true,
            options: Default::default(),
            mtu: None,
            overlay: None,
            // As Docker's default bridge and Podman's default network: names are for networks made for them.
            dns: false,
            dns_servers: vec![],
            ipv6: None,
        }
    }
}

/// The MTU of a network that asks for none.
const DEFAULT_MTU: u32 = 1500;

impl Nsnet {
    /// `nsnet network create`.
    pub fn network_create(&self, req: &NetworkRequest) -> Result<Plan> {
        let _lock = self.lock()?;
        let nets = self.store.networks()?;
        self.create_network(req, &nets).map(|(plan, _)| plan)
    }

    /// Validate, plan and bring up a new network next to `nets` (the caller holds the lock).
    pub(super) fn create_network(
        &self,
        req: &NetworkRequest,
        nets: &[Network],
    ) -> Result<(Plan, Network)> {
        let mut host = Host::new();
        let net = self.validate_network(req, nets, &mut host)?;
        let tables = self.tables_change(nets.len(), net.firewall)?;
        // Tables an older nsnet made drop all IPv6 from sandbox ports, and lack the sets dual-stack ports go
        // in: a reload brings them up to date first (migrating `ip nsnet` too), committed on its own, as
        // `nsnet firewall reload` does; it changes nothing the other networks rely on.
        let reload =
            if tables.is_none() && net.ipv6.is_some() && !Host::firewall_current(net.firewall)? {
                self.reload_locked()?
            } else {
                Plan::default()
            };
        let (mut steps, fw) = build::network_up(&net, nets, tables, &self.store.owner_tag());
        host.keep_router_advertisements(&mut steps)?;
        let plan = Plan::setup(steps, fw, net.firewall);
        let mut plan =
            self.bring_up(plan, vec![Record::Network(NetworkRecord::new(net.clone()))])?;
        if !reload.steps.is_empty() {
            plan.steps.splice(0..0, reload.steps);
            plan.restore.clear();
        }
        Ok((plan, net))
    }

    /// The network `req` names, created from `req` if it does not exist yet (one lock, so concurrent callers
    /// agree); an existing network must match every setting `req` gives (subnet, gateway and bridge when given;
    /// driver, MTU, isolation, fast path, options, and the firewall when `self.firewall` names one), and comes
    /// back with its settings only (no addresses or ports). The flag says whether this call created it.
    pub fn ensure_network(&self, req: &NetworkRequest) -> Result<(Network, bool)> {
        let _lock = self.lock()?;
        // The settings decide; the network's addresses and ports are not needed, and not read.
        if let Some(net) = self.store.network(&req.name)? {
            // This host's part of an overlay network has the cluster's settings, which the agent keeps: a
            // runtime's configuration names it, and only a subnet it gives must agree.
            match &net.overlay {
                Some(o) => {
                    if let Some(s) = req
                        .subnet
                        .filter(|s| Some(*s) != net.subnet && *s != o.cluster)
                    {
                        return Err(invalid!(
                            "network '{}' is an overlay network of {} (this host: {}), not {s}; leave the \
                             subnet out or give one of those",
                            req.name,
                            o.cluster,
                            or_none(net.subnet)
                        ));
                    }
                }
                None => self.same_settings(req, &net)?,
            }
            if net.removing {
                return Err(Error::Busy(format!(
                    "network '{}' is being removed by another nsnet command; try again",
                    req.name
                )));
            }
            return Ok((net, false));
        }
        self.create_network(req, &self.store.networks()?)
            .map(|(_, net)| (net, true))
    }

    /// Refuse a request for an existing network that asks for other settings than it has: they would be
    /// silently ignored (the network is not rebuilt), so the caller would get what it did not ask for.
    fn same_settings(&self, req: &NetworkRequest, net: &Network) -> Result<()> {
        let t = &self.terms;
        let differs = |what: &str, want: String, have: String| {
            invalid!(
                "network '{}' already exists with {what} {have}, not {want}; use the same {what} or another \
                 network name",
                req.name
            )
        };
        let check = |what: &str, want: String, have: String| {
            if want == have {
                Ok(())
            } else {
                Err(differs(what, want, have))
            }
        };
        if let Some(s) = req.subnet {
            check(t.subnet, s.to_string(), or_none(net.subnet))?;
        }
        if let Some(g) = req.gateway {
            check("gateway", g.to_string(), or_none(net.gateway))?;
        }
        if let Some(i) = &req.interface {
            check(t.bridge, i.clone(), net.interface.clone())?;
        }
        check("driver", req.driver.to_string(), net.driver.to_string())?;
        check(
            "internal",
            req.internal.to_string(),
            net.internal.to_string(),
        )?;
        check(
            t.mtu,
            req.mtu.unwrap_or(DEFAULT_MTU).to_string(),
            net.mtu.to_string(),
        )?;
        check(t.isolate, req.isolate.to_string(), net.isolate.to_string())?;
        // A veth network never has the fast path, whatever was asked.
        let fast_path = req.fast_path && req.driver == Driver::Bridge;
        check(
            t.fast_path,
            fast_path.to_string(),
            net.fast_path.to_string(),
        )?;
        let (want, have) = (req.options, net.options);
        check(
            t.masquerade,
            want.masquerade.to_string(),
            have.masquerade.to_string(),
        )?;
        check(
            t.host_gateway,
            want.host_gateway.to_string(),
            have.host_gateway.to_string(),
        )?;
        check(
            t.hairpin,
            want.hairpin.to_string(),
            have.hairpin.to_string(),
        )?;
        check(
            t.gateway_mode,
            want.gateway_mode.to_string(),
            have.gateway_mode.to_string(),
        )?;
        if let Some(f) = self.firewall {
            check(t.firewall, f.to_string(), net.firewall.to_string())?;
        }
        let on = |yes: bool| if yes { "on" } else { "off" }.to_string();
        check(t.ipv6, on(req.ipv6.is_some()), on(net.ipv6.is_some()))?;
        // An IPv6-only request for a network with IPv4 (or the reverse) would get an address it did not ask
        // for (or none it did).
        let only = req.ipv6.is_some_and(|r6| r6.only);
        check("IPv4", on(!only), on(!net.ipv6_only()))?;
        if let (Some(r6), Some(n6)) = (req.ipv6, net.ipv6) {
            if let Some(s) = r6.subnet {
                check(t.subnet, s.to_string(), n6.subnet.to_string())?;
            }
            if let Some(g) = r6.gateway {
                check("IPv6 gateway", g.to_string(), n6.gateway.to_string())?;
            }
        }
        Ok(())
    }

    /// Check a network request against the state and the host, and build its record.
    pub(super) fn validate_network(
        &self,
        req: &NetworkRequest,
        nets: &[Network],
        host: &mut Host,
    ) -> Result<Network> {
        names::check_name("network", &req.name).map_err(Error::Invalid)?;
        if nets.iter().any(|n| n.name == req.name) {
            return Err(invalid!(
                "network '{}' already exists; pick another name or `nsnet network rm {}` first",
                req.name,
                req.name
            ));
        }
        let mtu = req.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(invalid!(
                "{} {mtu} is out of range; use 68 to 65535 (1500 is usual)",
                self.terms.mtu
            ));
        }

        let interface = match &req.interface {
            Some(i) => {
                names::check_ifname(i).map_err(|e| invalid!("{}: {e}", self.terms.bridge))?;
                i.clone()
            }
            None => default_interface(req.driver, &req.name),
        };
        if let Some(other) = nets.iter().find(|n| n.interface == interface) {
            return Err(invalid!(
                "interface {interface} already belongs to network '{}'; choose another with {}",
                other.name,
                self.terms.bridge
            ));
        }
        if host.link_exists(&interface)? {
            return Err(invalid!(
                "interface {interface} already exists on this host; choose another with {}",
                self.terms.bridge
            ));
        }

        // nsnet's own subnets first (the better message), then the host's addresses and routes: a new subnet
        // may overlap none of them.
        let ipv6_only = req.ipv6.is_some_and(|r6| r6.only);
        if ipv6_only {
            if let Some(what) = req
                .subnet
                .map(|s| s.to_string())
                .or(req.gateway.map(|g| g.to_string()))
            {
                return Err(invalid!(
                    "{what} is IPv4, but the network is IPv6-only; leave it out"
                ));
            }
        }
        let mut taken: Vec<(Ipv4Net, String)> = Vec::new();
        for n in nets {
            if let Some(subnet) = n.subnet {
                taken.push((subnet, format!("network '{}' ({subnet})", n.name)));
            }
        }
        for a in host.ipv4_addresses()? {
            if !a.addr().is_loopback() {
                taken.push((a.trunc(), format!("host address {a}")));
            }
        }
        for r in host.ipv4_routes()? {
            if !r.addr().is_loopback() {
                taken.push((r, format!("host route {r}")));
            }
        }
        let subnet = match req.subnet {
            _ if ipv6_only => None,
            Some(s) => {
                ipam::check_usable(&s).map_err(Error::Invalid)?;
                if let Some((_, what)) = taken.iter().find(|(t, _)| ipam::overlaps(&s, t)) {
                    return Err(invalid!(
                        "subnet {s} overlaps {what}; choose another {} or leave it out to get a free one",
                        self.terms.subnet
                    ));
                }
                Some(s)
            }
            None => {
                let nets: Vec<Ipv4Net> = taken.iter().map(|(t, _)| *t).collect();
                ipam::pick_subnet(ipam::DEFAULT_POOL, ipam::POOL_PREFIX, &nets)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::Exhausted(format!(
                            "no free /{} left in {}; give one with {}",
                            ipam::POOL_PREFIX,
                            ipam::DEFAULT_POOL,
                            self.terms.subnet
                        ))
                    })?
            }
        };
        // One backend per host: nsnet's chains and tables are shared by all its networks.
        let firewall = match (self.firewall, nets.first()) {
            (Some(wanted), Some(n)) if wanted != n.firewall => {
                return Err(invalid!(
                    "this host's networks use the {} firewall; nsnet uses one per host: use {} {} \
                     or remove the other networks first",
                    n.firewall,
                    self.terms.firewall,
                    n.firewall
                ))
            }
            (Some(wanted), _) => wanted,
            (None, Some(n)) => n.firewall,
            (None, None) => Backend::default(),
        };
        let host_chains = match firewall {
            // An ip6 family chain drops only what an IPv4 network never forwards.
            Backend::Nftables => Host::forward_drop_chains()?
                .into_iter()
                .filter(|c| c.family != "ip6" || req.ipv6.is_some())
                .collect(),
            // iptables: nsnet's own accepts sit in FORWARD itself; none: the user manages the firewall.
            Backend::Iptables | Backend::None => vec![],
        };
        let gateway = match (subnet, req.gateway) {
            (None, _) => None,
            (Some(subnet), Some(g)) => {
                ipam::check_gateway(&subnet, g).map_err(Error::Invalid)?;
                Some(g)
            }
            (Some(subnet), None) => Some(ipam::default_gateway(&subnet)),
        };
        let mut net = Network {
            name: req.name.clone(),
            driver: req.driver,
            subnet,
            gateway,
            interface,
            internal: req.internal,
            isolate: req.isolate,
            fast_path: req.fast_path && req.driver == Driver::Bridge,
            options: req.options,
            mtu,
            firewall,
            host_chains,
            removing: false,
            overlay: req.overlay.clone(),
            dns: req.dns,
            dns_servers: check_dns_servers(&req.dns_servers, req.dns, req.internal, &self.terms)?,
            ipv6: match &req.ipv6 {
                Some(r6) => Some(self.validate_ipv6(r6, mtu, nets, host)?),
                None => None,
            },
        };
        // host-gw's fast path hangs a filter on the underlay's ingress: the qdisc is nsnet's to make (and to
        // remove) only when there is none.
        if crate::plan::build::underlay_filter(&net).is_some() {
            if let Some(o) = net.overlay.as_mut() {
                o.underlay_qdisc = !host.has_ingress_qdisc(&o.device)?;
            }
        }
        Ok(net)
    }

    /// Check a network request's IPv6 part against the host and the other networks, and build it. Checked
    /// after the IPv4 part, whose messages come first.
    fn validate_ipv6(
        &self,
        r6: &Ipv6Request,
        mtu: u32,
        nets: &[Network],
        host: &mut Host,
    ) -> Result<Net6> {
        let t = &self.terms;
        if !Host::has_ipv6() {
            return Err(invalid!(
                "{}: this host has IPv6 turned off (net.ipv6.conf.all.disable_ipv6 is not 0, or the kernel \
                 has no IPv6); turn it on, or leave out {}",
                t.ipv6,
                t.ipv6
            ));
        }
        // The kernel turns IPv6 off on a link whose MTU drops below the least IPv6 allows.
        if mtu < 1280 {
            return Err(invalid!(
                "{} {mtu} is below 1280, the least IPv6 works with; use 1280 or more, or leave out {}",
                t.mtu,
                t.ipv6
            ));
        }
        // nsnet's own IPv6 subnets first (the better message), then the host's addresses and routes.
        let mut taken: Vec<(Ipv6Net, String)> = Vec::new();
        for (n, n6) in nets.iter().filter_map(|n| Some((n, n.ipv6?))) {
            taken.push((n6.subnet, format!("network '{}' ({})", n.name, n6.subnet)));
        }
        // Link-local, multicast and loopback addresses are every host's; no subnet nsnet takes reaches them.
        let special =
            |a: &Ipv6Addr| a.is_loopback() || a.is_multicast() || a.is_unicast_link_local();
        for a in host.ipv6_addresses()? {
            if !special(&a.addr()) {
                taken.push((a.trunc(), format!("host address {a}")));
            }
        }
        for r in host.ipv6_routes()? {
            if !special(&r.addr()) {
                taken.push((r, format!("host route {r}")));
            }
        }
        let subnet = match r6.subnet {
            Some(s) => {
                let s = ipam::parse_subnet6(&s.to_string()).map_err(Error::Invalid)?;
                if let Some((_, what)) = taken.iter().find(|(t, _)| ipam::overlaps6(&s, t)) {
                    return Err(invalid!(
                        "subnet {s} overlaps {what}; choose another {} or leave it out to get a free one",
                        t.subnet
                    ));
                }
                s
            }
            None => {
                let seed = format!("{}/{}", Host::machine_id(), self.store.owner_tag());
                let prefix = ipam::ula_prefix(seed.as_bytes());
                let nets: Vec<Ipv6Net> = taken.iter().map(|(t, _)| *t).collect();
                ipam::pick_subnet6(prefix, &nets).ok_or_else(|| {
                    Error::Exhausted(format!(
                        "no free /{} left in this host's IPv6 prefix {prefix}; give one with {}",
                        ipam::POOL_PREFIX6,
                        t.subnet
                    ))
                })?
            }
        };
        let gateway = match r6.gateway {
            Some(g) => {
                ipam::check_gateway6(&subnet, g).map_err(Error::Invalid)?;
                g
            }
            None => ipam::default_gateway6(&subnet),
        };
        Ok(Net6 {
            subnet,
            gateway,
            nat: r6.nat,
        })
    }

    /// `nsnet network rm`. With `force`, first detaches every sandbox still on the network. This host's part
    /// of an overlay network is the agent's to remove (when the network leaves the cluster).
    pub fn network_rm(&self, name: &str, force: bool) -> Result<Plan> {
        self.remove_network(name, force, false)
    }

    /// Remove network `name`; `overlay`: the caller is the agent, which may remove an overlay network's part.
    pub(super) fn remove_network(&self, name: &str, force: bool, overlay: bool) -> Result<Plan> {
        let lock = self.lock()?;
        let NetworkRecord {
            settings: mut net,
            allocations,
        } = self
            .store
            .network_record(name)?
            .ok_or_else(|| super::no_network(name))?;
        if net.removing {
            return Err(Error::Busy(format!(
                "network '{name}' is already being removed by another nsnet command"
            )));
        }
        if net.overlay.is_some() && !overlay {
            return Err(invalid!(
                "network '{name}' is this host's part of an overlay network, kept by nsnet agent; remove it \
                 from the cluster with `nsnet network rm {name} --etcd URL`"
            ));
        }
        // The last network takes nsnet's tables with it: refuse now, before anything is deleted, if they are
        // another state dir's.
        if self.store.networks()?.len() == 1 {
            self.check_tables_owner(net.firewall)?;
        }
        let users = allocations.users();
        if !users.is_empty() && !force {
            return Err(invalid!(
                "network '{name}' is in use by sandbox{} {}; remove {} first, or use --force to detach {}",
                if users.len() == 1 { "" } else { "es" },
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" },
                if users.len() == 1 { "it" } else { "them" },
            ));
        }
        let users = self.users_of(&allocations)?;
        // Sandboxes nsnet made that this was the last network with names of lose their resolv.conf.
        let mut kernel = Plan::default();
        if net.dns {
            let others: Vec<Network> = self
                .store
                .networks()?
                .into_iter()
                .filter(|n| n.name != name)
                .collect();
            let others: Vec<&Network> = others.iter().collect();
            for sb in users.iter().filter(|sb| sb.owned) {
                if !super::resolver::has_names(sb, &others) {
                    super::resolver::remove_resolv_conf(&mut kernel, sb, &self.store.owner_tag());
                }
            }
        }
        let kernel = kernel.then(build::network_teardown(
            &net,
            &users,
            &self.store.owner_tag(),
        ));
        // Each sandbox's endpoint ends with the deletion (or retirement) of its host veth: one step to count.
        let ends: std::collections::HashSet<String> = users
            .iter()
            .flat_map(|sb| sb.endpoints.iter().filter(|e| e.network == name))
            .map(|e| e.host_interface.clone())
            .collect();
        let tally = super::Tally {
            what: format!("detaching sandboxes from {name}"),
            total: ends.len(),
            counts: Box::new(move |step| match step {
                Step::DeleteLink { name, .. } => ends.contains(name),
                Step::RetireVeth { host, .. } => ends.contains(host),
                _ => false,
            }),
        };
        net.removing = true;
        self.take_down(
            lock,
            Removal::Network(name.into()),
            Record::Settings(net),
            kernel,
            Some(tally),
        )
    }

    /// The records of the sandboxes that hold something of a network's `allocations`.
    fn users_of(&self, allocations: &Allocations) -> Result<Vec<Sandbox>> {
        let mut sandboxes = Vec::new();
        for user in allocations.users() {
            if let Some(sb) = self.store.sandbox(user)? {
                sandboxes.push(sb);
            }
        }
        Ok(sandboxes)
    }

    /// What finishes removing network `name`: the firewall elements of its remaining endpoints and its own
    /// (and nsnet's tables, if it is the last network); its sandboxes' records without it; its record gone.
    pub(super) fn finish_network_removal(&self, name: &str) -> Result<(Plan, Vec<Record>)> {
        let Some(record) = self.store.network_record(name)? else {
            return Ok((Plan::default(), vec![]));
        };
        let (net, nets) = (&record.settings, self.store.networks()?);
        let mut fw = crate::firewall::Batch::default();
        let mut records = Vec::new();
        for mut sb in self.users_of(&record.allocations)? {
            for ep in sb.endpoints.iter().filter(|e| e.network == name) {
                fw.0.extend(build::endpoint_down(ep).0);
            }
            sb.endpoints.retain(|e| e.network != name);
            records.push(super::left_with(sb));
        }
        let tables = self.tables_change(nets.len() - 1, net.firewall)?;
        fw.0.extend(build::network_down(net, &nets, tables).0);
        records.push(Record::NoNetwork(name.to_string()));
        Ok((Plan::setup(vec![], fw, net.firewall), records))
    }
}

/// The interface a network gets when `--bridge` is not given: the network's own name for the default network,
/// `nsbr-NAME` / `nsve-NAME` when that fits in 15 bytes, else a hash of the name.
fn default_interface(driver: Driver, name: &str) -> String {
    if name == DEFAULT_NETWORK {
        return name.into();
    }
    let prefix = match driver {
        Driver::Bridge => "nsbr-",
        Driver::Veth => "nsve-",
    };
    let plain = format!("{prefix}{name}");
    if plain.len() <= crate::names::MAX_IFNAME && names::check_ifname(&plain).is_ok() {
        plain
    } else {
        format!("{prefix}{:08x}", short_hash(&[name]))
    }
}

/// Refuse upstream resolvers nothing can be sent to, and servers for a network that would never use them.
pub(super) fn check_dns_servers(
    servers: &[IpAddr],
    dns: bool,
    internal: bool,
    t: &super::Terms,
) -> Result<Vec<IpAddr>> {
    if servers.is_empty() {
        return Ok(vec![]);
    }
    if !dns {
        return Err(invalid!(
            "{} IP needs the network's names on; drop {}=false or the servers",
            t.dns,
            t.dns
        ));
    }
    if internal {
        return Err(invalid!(
            "an --internal network resolves only its own names and forwards nothing; drop {} IP",
            t.dns
        ));
    }
    check_upstreams(servers, t)?;
    Ok(servers.to_vec())
}

/// Refuse upstream resolvers nothing can be sent to.
pub(super) fn check_upstreams(servers: &[IpAddr], t: &super::Terms) -> Result<()> {
    crate::dns::check_servers(servers).map_err(|e| invalid!("{} {e}", t.dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_interfaces_fit() {
        assert_eq!(default_interface(Driver::Bridge, "nsnet0"), "nsnet0");
        assert_eq!(default_interface(Driver::Bridge, "web"), "nsbr-web");
        assert_eq!(default_interface(Driver::Veth, "p2p"), "nsve-p2p");
        let long = default_interface(Driver::Bridge, "a-much-longer-network-name");
        assert!(long.starts_with("nsbr-") && long.len() == 13, "{long}");
    }
}
