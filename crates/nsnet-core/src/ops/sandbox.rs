//! `nsnet create | attach | rm`: sandboxes and their endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::network::NetworkRequest;
use super::{no_network, resolver, Host, Nsnet, Terms, DEFAULT_NETWORK};
use crate::error::{Error, Result};
use crate::firewall::Batch;
use crate::invalid;
use crate::ipam::{self, Allocated as _};
use crate::kernel::netns;
use crate::model::{Driver, Endpoint, Ep6, Mac, Network, NetworkRecord, Sandbox};
use crate::names;
use crate::names::short_hash;
use crate::plan::{build, Ns, Plan, Step};
use crate::portmap::{addresses_overlap, PortMapping, PortSpec};
use crate::store::{AllocationsView, Record, Removal};

/// Where a sandbox's network joins: which network, which address, which ports.
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    /// The network; [`DEFAULT_NETWORK`] (created on first use) when `None`.
    pub network: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    /// The interface name inside the sandbox; the lowest free `ethN` when `None`.
    pub interface: Option<String>,
    /// The sandbox end's MAC address; derived from the IPv4 address when `None`.
    pub mac: Option<Mac>,
    /// Made by the CNI plugin (recorded on a new sandbox).
    pub cni: bool,
    /// More names for the sandbox on this network (`--alias`).
    pub aliases: Vec<String>,
    /// The sandbox's own upstream resolvers (`--dns IP`); kept for the sandbox, replacing earlier ones.
    pub dns_servers: Vec<IpAddr>,
    /// The IPv6 address to take on a dual-stack network (`--ip6`) instead of the next free one.
    pub ip6: Option<Ipv6Addr>,
}

/// The namespace `nsnet attach` networks.
#[derive(Debug, Clone)]
pub enum Target {
    /// A sandbox nsnet knows, or a namespace under `/run/netns`.
    Name(String),
    /// Any nsfs path, such as `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl Target {
    /// `NAME` or `PATH`, told apart by a slash.
    pub fn parse(text: &str) -> Target {
        if text.contains('/') {
            Target::Path(PathBuf::from(text))
        } else {
            Target::Name(text.to_string())
        }
    }
}

/// The work of joining one sandbox to one network.
struct Join {
    net: Network,
    new_network: bool,
    endpoint: Endpoint,
}

impl Nsnet {
    /// `nsnet create NAME`: a new named namespace, wired to a network.
    pub fn create(&self, name: &str, req: &AttachRequest) -> Result<Plan> {
        names::check_name("sandbox", name).map_err(Error::Invalid)?;
        let _lock = self.lock()?;
        if let Some(sb) = self.store.sandbox(name)? {
            if !Host::namespace_is_there(&sb) {
                return Err(lost_netns(&sb));
            }
            return Err(invalid!(
                "sandbox '{name}' already exists; pick another name or `nsnet rm {name}` first"
            ));
        }
        let path = netns::named_path(name);
        if Host::namespace_exists(&path) {
            return Err(invalid!(
                "namespace {} already exists; network it with `nsnet attach {name}` or pick another name",
                path.display()
            ));
        }
        let mut sb = Sandbox {
            name: name.into(),
            netns: path,
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![],
            removing: false,
            dns_servers: vec![],
        };
        self.join(
            &mut sb,
            req,
            None,
            vec![Step::CreateNetns {
                name: name.into(),
                owner: self.store.owner_tag(),
            }],
        )
    }

    /// `nsnet attach NAME|PATH`: network a namespace nsnet did not create, or give a sandbox one more network.
    pub fn attach(&self, target: &Target, name: Option<&str>, req: &AttachRequest) -> Result<Plan> {
        let (path, default_name) = match target {
            Target::Name(n) => {
                names::check_name("sandbox", n).map_err(Error::Invalid)?;
                (netns::named_path(n), n.clone())
            }
            Target::Path(p) => {
                let derived = match p.parent() {
                    Some(dir) if dir == Path::new(netns::NETNS_DIR) => {
                        p.file_name().map(|f| f.to_string_lossy().into_owned())
                    }
                    _ => None,
                };
                (p.clone(), derived.unwrap_or_default())
            }
        };
        let name = name.map(str::to_string).unwrap_or(default_name);
        if name.is_empty() {
            return Err(invalid!(
                "give the sandbox a name with --name when attaching {}",
                path.display()
            ));
        }
        names::check_name("sandbox", &name).map_err(Error::Invalid)?;
        let _lock = self.lock()?;

        let known = self.store.sandbox(&name)?;
        let path = match (&known, target) {
            (Some(sb), Target::Name(_)) => sb.netns.clone(),
            _ => path,
        };
        if let Some(sb) = known.as_ref().filter(|sb| !Host::namespace_is_there(sb)) {
            return Err(lost_netns(sb));
        }
        if !Host::namespace_exists(&path) {
            return Err(invalid!(
                "no network namespace at {}; create it first (`nsnet create {name}`, `ip netns add {name}`) \
                 or give the path of a running process's namespace (/proc/PID/ns/net)",
                path.display()
            ));
        }
        let mut in_ns = Host::inside(&path)
            .map_err(|e| invalid!("cannot use {} as a network namespace: {e}", path.display()))?;
        let id = Host::namespace_identity(&path)?;
        // The caller's own namespace is the host: an endpoint there would put eth0 and a default route into
        // the host, and `rm` would delete them.
        if Host::namespace_identity(Path::new("/proc/self/ns/net"))? == id {
            return Err(invalid!(
                "{} is this host's own network namespace, not a sandbox's; give a container's namespace",
                path.display()
            ));
        }
        let mut sb = match known {
            Some(sb) => {
                if Host::namespace_identity(&sb.netns)? != id {
                    return Err(invalid!(
                        "sandbox '{name}' already exists with namespace {}; pick another {}",
                        sb.netns.display(),
                        self.terms.name
                    ));
                }
                // CNI's DEL and GC leave CLI sandboxes alone, so CNI may not add to one either: the endpoint
                // would outlive the container.
                if req.cni && !sb.cni {
                    return Err(invalid!(
                        "sandbox '{name}' was made with the nsnet CLI, not by CNI; pick another {}",
                        self.terms.name
                    ));
                }
                sb
            }
            None => Sandbox {
                name: name.clone(),
                netns: path.clone(),
                owned: false,
                netns_id: Some(id),
                cni: req.cni,
                endpoints: vec![],
                removing: false,
                dns_servers: vec![],
            },
        };
        self.join(&mut sb, req, Some(&mut in_ns), vec![])
    }

    /// Validate, plan and apply one new endpoint for `sb`. `first` holds steps that must come first (creating
    /// the namespace); `in_ns` is a socket inside an existing namespace, to avoid its interface names.
    fn join(
        &self,
        sb: &mut Sandbox,
        req: &AttachRequest,
        in_ns: Option<&mut Host>,
        first: Vec<Step>,
    ) -> Result<Plan> {
        let mut nets = self.store.networks_in_place()?;
        let mut host = Host::new();
        let mut in_ns = in_ns;
        let joined = match self.plan_join(sb, req, &mut nets, &mut host, in_ns.as_deref_mut()) {
            // The pool's last addresses are held by veths retired moments ago, whose reaper has not finished:
            // delete them here and take one, rather than refuse. Never an address whose link is still there.
            Err(Error::Exhausted(why)) => {
                if !self.reclaim_retired()? {
                    return Err(Error::Exhausted(why));
                }
                nets = self.store.networks_in_place()?;
                self.plan_join(sb, req, &mut nets, &mut host, in_ns)?
            }
            other => other?,
        };
        let Join {
            net,
            new_network,
            endpoint,
        } = joined;

        if !req.dns_servers.is_empty() {
            super::network::check_upstreams(&req.dns_servers, &self.terms)?;
            sb.dns_servers = req.dns_servers.clone();
        }
        // The sandbox's first network with names gives a sandbox nsnet made its resolv.conf.
        let named_before = {
            let settings: Vec<&Network> = nets.iter().map(|(n, _)| n).collect();
            resolver::has_names(sb, &settings)
        };
        let mut kernel = Vec::new();
        let mut fw = Batch::default();
        if new_network {
            let others: Vec<Network> = nets.into_iter().map(|(n, _)| n).collect();
            let (mut s, f) = build::network_up(
                &net,
                &others,
                self.tables_change(others.len(), net.firewall)?,
                &self.store.owner_tag(),
            );
            Host::new().keep_router_advertisements(&mut s)?;
            kernel.extend(s);
            fw.0.extend(f.0);
        }
        kernel.extend(first);
        let ns = Ns::Path(sb.netns.clone());
        let (s, f) = build::endpoint_up(&net, &endpoint, &ns, &self.store.owner_tag());
        kernel.extend(s);
        fw.0.extend(f.0);
        if sb.owned && net.dns && !named_before {
            kernel.push(resolver::resolv_conf(sb, &self.store.owner_tag()));
        }

        let firewall = net.firewall;
        let mut records = Vec::new();
        if new_network {
            records.push(Record::Network(NetworkRecord::new(net)));
        }
        // The network's own record stays as it is: the join only adds entries to its ledger.
        records.push(Record::Joined {
            network: endpoint.network.clone(),
            sandbox: sb.name.clone(),
            ip: endpoint.address.map(|a| a.addr()),
            ip6: endpoint.ipv6.map(|e| e.address.addr()),
            ports: endpoint.ports.clone(),
        });
        sb.endpoints.push(endpoint);
        records.push(Record::Sandbox(sb.clone()));
        self.bring_up(Plan::setup(kernel, fw, firewall), records)
    }

    /// Choose the network, address, names and ports of a new endpoint. The network (taken out of `nets`, which
    /// keeps the others) is read, not changed: what is taken is looked up in the indexes, or in the ledgers as
    /// they are, never copied out (at a thousand sandboxes, parsing and copying the entries cost more than the
    /// rest of the planning, and grew with every sandbox).
    fn plan_join(
        &self,
        sb: &Sandbox,
        req: &AttachRequest,
        nets: &mut Vec<(Network, AllocationsView)>,
        host: &mut Host,
        in_ns: Option<&mut Host>,
    ) -> Result<Join> {
        let net_name = req.network.as_deref().unwrap_or(DEFAULT_NETWORK);
        let (net, mut allocated, new_network) =
            match nets.iter().position(|(n, _)| n.name == net_name) {
                Some(i) => {
                    let (net, allocated) = nets.swap_remove(i);
                    (net, allocated, false)
                }
                None if net_name == DEFAULT_NETWORK => {
                    let settings: Vec<Network> = nets.iter().map(|(n, _)| n.clone()).collect();
                    let req = NetworkRequest::default_network();
                    let net = self.validate_network(&req, &settings, host)?;
                    (net, AllocationsView::Ledger(Arc::default()), true)
                }
                None => return Err(no_network(net_name)),
            };
        // An index tells only that an address or a host port is taken: a request that touches one reads the
        // ledgers, which say by whom, and for a port on which host address (which decides a conflict).
        if touches_taken(&net, &allocated, req, nets) {
            if allocated.ledger().is_none() {
                allocated = AllocationsView::Ledger(self.store.ledger_of(&net.name)?);
            }
            for (n, h) in nets.iter_mut().filter(|(_, h)| h.ledger().is_none()) {
                *h = AllocationsView::Ledger(self.store.ledger_of(&n.name)?);
            }
        }
        if net.removing || sb.removing {
            return Err(Error::Busy(format!(
                "{} is being removed by another nsnet command; try again when it is gone",
                if net.removing {
                    format!("network '{}'", net.name)
                } else {
                    format!("sandbox '{}'", sb.name)
                }
            )));
        }
        if sb.endpoints.iter().any(|e| e.network == net.name) {
            return Err(Error::Exists(format!(
                "sandbox '{}' is already on network '{}'; each network joins a sandbox once",
                sb.name, net.name
            )));
        }
        if net.driver == Driver::Veth && allocated.addresses() > 0 {
            let other = allocated
                .ledger()
                .and_then(|l| l.holders().next())
                .map_or("another sandbox", |(_, o)| o);
            return Err(invalid!(
                "network '{}' (driver veth) already links sandbox '{other}'; a veth network joins exactly one \
                 sandbox: create another, or use --driver bridge",
                net.name
            ));
        }
        net.has_room(allocated.addresses())
            .map_err(Error::Exhausted)?;
        if let Some(mac) = req.mac {
            self.check_mac(&net, mac)?;
        }
        check_host_ips(&net, &req.ports, host, &self.terms)?;
        let every: Vec<&AllocationsView> =
            nets.iter().map(|(_, h)| h).chain([&allocated]).collect();
        let ports = resolve_ports(&net, &req.ports, &every, &self.terms)?;
        // With an address asked for, what fails is that address; without, the pool is exhausted.
        let address = match net.subnet {
            // An IPv6-only network: no IPv4 address to hand out, and none may be asked for.
            None => {
                if let Some(ip) = req.ip {
                    return Err(invalid!(
                        "{}: {ip} is IPv4, but network '{}' is IPv6-only; leave it out (or give {})",
                        self.terms.ip,
                        net.name,
                        self.terms.ip6
                    ));
                }
                None
            }
            Some(subnet) => {
                let ip = ipam::allocate(&net, &allocated, req.ip).map_err(|e| match req.ip {
                    Some(_) => invalid!("{}: {e}", self.terms.ip),
                    None => Error::Exhausted(e),
                })?;
                // The prefix is the subnet's own, always valid: a failure here is a bug, not bad input.
                Some(
                    Ipv4Net::new(ip, subnet.prefix_len())
                        .map_err(|e| Error::Internal(format!("address {ip} in {subnet}: {e}")))?,
                )
            }
        };
        let ipv6 = match (net.ipv6, req.ip6) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid!(
                    "{}: network '{}' has no IPv6; leave it out, or use a network made with {}",
                    self.terms.ip6,
                    net.name,
                    self.terms.ipv6
                ))
            }
            (Some(n6), asked) => {
                let ip6 =
                    ipam::allocate6(&net.name, &n6, &allocated, asked).map_err(
                        |e| match asked {
                            Some(_) => invalid!("{}: {e}", self.terms.ip6),
                            None => Error::Exhausted(e),
                        },
                    )?;
                Some(Ep6 {
                    // The prefix is the subnet's own, always valid: a failure here is a bug.
                    address: Ipv6Net::new(ip6, n6.subnet.prefix_len()).map_err(|e| {
                        Error::Internal(format!("address {ip6} in {}: {e}", n6.subnet))
                    })?,
                    gateway: n6.gateway,
                })
            }
        };

        // Interface names: ethN inside (the lowest N free in the namespace), a hashed veth name outside.
        let mut used: Vec<String> = sb.endpoints.iter().map(|e| e.interface.clone()).collect();
        if let Some(inside) = in_ns {
            used.extend(inside.link_names()?);
        }
        let interface = match &req.interface {
            Some(name) => {
                names::check_ifname(name).map_err(|e| invalid!("interface: {e}"))?;
                if used.contains(name) {
                    return Err(Error::Exists(format!(
                        "interface {name} already exists in the namespace of '{}'; pick another name",
                        sb.name
                    )));
                }
                name.clone()
            }
            None => (0..)
                .map(|n| format!("eth{n}"))
                .find(|n| !used.contains(n))
                .unwrap_or_else(|| "eth0".into()),
        };
        let host_interface = match net.driver {
            Driver::Veth => net.interface.clone(),
            Driver::Bridge => {
                let mut chosen = None;
                for salt in 0..16 {
                    let candidate = format!(
                        "veth{:08x}",
                        short_hash(&[&sb.name, &net.name, &salt.to_string()])
                    );
                    if !host.link_exists(&candidate)? {
                        chosen = Some(candidate);
                        break;
                    }
                }
                // Sixteen hashed names all taken on this host: another sandbox name hashes elsewhere.
                chosen.ok_or_else(|| {
                    invalid!(
                        "could not find a free host interface name for '{}' on network '{}' (the 16 \
                         names nsnet derives from it are all taken on this host); use another sandbox name",
                        sb.name,
                        net.name
                    )
                })?
            }
        };
        if net.driver == Driver::Veth && host.link_exists(&host_interface)? {
            return Err(invalid!(
                "interface {host_interface} of network '{}' already exists on this host; remove it first",
                net.name
            ));
        }

        let endpoint = Endpoint {
            network: net.name.clone(),
            interface,
            host_interface,
            mac: match req.mac {
                Some(mac) => mac,
                None => self.derived_mac(&net, address, ipv6.as_ref())?,
            },
            address,
            gateway: net.gateway,
            default_route: !net.internal && !sb.endpoints.iter().any(|e| e.default_route),
            mtu: net.mtu,
            ports,
            removing: false,
            aliases: check_aliases(&req.aliases, &self.terms)?,
            ipv6,
        };
        Ok(Join {
            net,
            new_network,
            endpoint,
        })
    }

    /// The MAC of a new endpoint with none asked for ([`Mac::derived`]). An IPv4 one is unique by
    /// construction; an IPv6-only one is a hash, so it is checked against the network's bridge and other
    /// endpoints (and their host ends) here, at plan time.
    fn derived_mac(
        &self,
        net: &Network,
        address: Option<Ipv4Net>,
        ipv6: Option<&crate::model::Ep6>,
    ) -> Result<Mac> {
        let mac = Mac::derived(address, ipv6);
        if address.is_some() {
            return Ok(mac);
        }
        let ours = [mac, mac.host_end()];
        let clash = ours.contains(&net.gateway_mac())
            || self.store.sandboxes()?.iter().any(|sb| {
                sb.endpoints.iter().any(|e| {
                    e.network == net.name
                        && (ours.contains(&e.mac) || ours.contains(&e.mac.host_end()))
                })
            });
        if clash {
            return Err(invalid!(
                "the MAC address {mac} derived from this sandbox's IPv6 address is already on network '{}'; \
                 ask for another {} or give a {}",
                net.name,
                self.terms.ip6,
                self.terms.mac
            ));
        }
        Ok(mac)
    }

    /// Refuse a MAC address asked for that is not a unicast address, or that is already on `net`'s segment:
    /// the bridge's, another endpoint's, or either's host end (a new endpoint's host end is derived from its
    /// MAC too). Two ports with one MAC make the bridge deliver each one's frames to the other.
    fn check_mac(&self, net: &Network, mac: Mac) -> Result<()> {
        let t = &self.terms;
        mac.check_unicast()
            .map_err(|e| invalid!("{}: {e}", t.mac))?;
        let ours = [mac, mac.host_end()];
        if ours.contains(&net.gateway_mac()) {
            return Err(invalid!(
                "{}: {mac} is the MAC address of network '{}''s bridge {}; pick another or leave it out",
                t.mac,
                net.name,
                net.interface
            ));
        }
        // nsnet derives MACs from addresses, in 02:6e (sandbox ends) and 02:6f (host ends), and 02:6c and
        // 02:6d for IPv6-only ones: one asked for there could be derived again for a later sandbox, and the
        // two bridge ports would fight over it.
        if mac.0[0] == 0x02 && matches!(mac.0[1], 0x6c..=0x6f) {
            return Err(invalid!(
                "{}: {mac} is in the range nsnet derives sandbox MACs from (02:6c:... to 02:6f:...); pick \
                 another or leave it out",
                t.mac
            ));
        }
        // Only a request with a MAC reads every sandbox record: derived MACs are unique by construction.
        for sb in self.store.sandboxes()? {
            let clash = sb.endpoints.iter().find(|e| {
                e.network == net.name && (ours.contains(&e.mac) || ours.contains(&e.mac.host_end()))
            });
            if let Some(e) = clash {
                return Err(invalid!(
                    "{}: {mac} is already used by sandbox '{}' on network '{}' (its {} is {}); pick another \
                     MAC address or leave it out",
                    t.mac,
                    sb.name,
                    net.name,
                    e.interface,
                    e.mac
                ));
            }
        }
        Ok(())
    }

    /// `nsnet rm NAME`: remove the sandbox's endpoints, rules and addresses, and its namespace if nsnet made it.
    pub fn remove(&self, name: &str) -> Result<Plan> {
        names::check_name("sandbox", name).map_err(Error::Invalid)?;
        let lock = self.lock()?;
        let mut sb = self
            .store
            .sandbox(name)?
            .ok_or_else(|| invalid!("no sandbox named '{name}'; `nsnet ls` lists them"))?;
        if sb.removing {
            return Err(Error::Busy(format!(
                "sandbox '{name}' is already being removed by another nsnet command"
            )));
        }
        // Unmounting alone tears an idle namespace down, veths and all, without waiting; a namespace a process
        // is in would keep its veths alive, so those are deleted one by one.
        let veths = if sb.owned && !Host::namespace_in_use(&sb.netns) {
            build::VethRemoval::WithNamespace
        } else {
            build::VethRemoval::OneByOne
        };
        // A namespace that is gone (or that its path no longer names) gets nothing put back into it should the
        // removal fail: without the networks' records there is nothing to restore.
        let nets = if Host::namespace_is_there(&sb) {
            self.store.networks()?
        } else {
            vec![]
        };
        // Its resolv.conf first, when it has one (with its namespace gone, the networks are not read: any):
        // deleting the namespace must be the last kernel step, since the kernel destroys it in the background
        // and a rollback after it could not re-create its veths under their names yet.
        let mut kernel = Plan::default();
        let settings: Vec<&Network> = nets.iter().collect();
        if sb.owned && (nets.is_empty() || resolver::has_names(&sb, &settings)) {
            resolver::remove_resolv_conf(&mut kernel, &sb, &self.store.owner_tag());
        }
        let kernel = kernel.then(build::sandbox_teardown(
            &sb,
            &nets,
            &self.store.owner_tag(),
            veths,
        ));
        sb.removing = true;
        self.take_down(
            lock,
            Removal::Sandbox(name.into()),
            Record::Sandbox(sb),
            kernel,
            None,
        )
    }

    /// What finishes removing sandbox `name`: its firewall elements, and its records released (addresses and
    /// ports back to its networks).
    pub(super) fn finish_sandbox_removal(&self, name: &str) -> Result<(Plan, Vec<Record>)> {
        let Some(sb) = self.store.sandbox(name)? else {
            return Ok((Plan::default(), vec![]));
        };
        let mut fw = Batch::default();
        let mut records = Vec::new();
        let mut backend = None;
        let mut host = Host::new();
        for ep in &sb.endpoints {
            fw.0.extend(build::endpoint_down(ep).0);
            if let Some(mut net) = self.store.network_record(&ep.network)? {
                hand_back(&mut host, &mut net.allocations, name, ep)?;
                // One backend per host: any of the sandbox's networks names it.
                backend.get_or_insert(net.settings.firewall);
                records.push(Record::Network(net));
            }
        }
        records.push(Record::NoSandbox(name.to_string()));
        Ok((
            Plan::setup(vec![], fw, backend.unwrap_or_default()),
            records,
        ))
    }

    /// `nsnet detach NAME --network NET`: take one endpoint away, keeping the sandbox's others. A sandbox nsnet
    /// did not create goes from the records with its last endpoint. With `missing_ok`, a sandbox or endpoint
    /// that is not there is success with an empty plan (CNI `DEL` must succeed twice).
    pub fn detach(&self, name: &str, network: &str, missing_ok: bool) -> Result<Plan> {
        self.detach_where(name, network, missing_ok, |_| true)
    }

    /// CNI `DEL`: [`Nsnet::detach`] of a container's attachment, only when the sandbox is CNI's and its endpoint
    /// on `network` is the interface `ifname`; anything else is not this attachment, and there is nothing to do.
    /// Checked under the writer lock, so a `DEL` takes the lock once.
    pub fn detach_cni(&self, name: &str, network: &str, ifname: &str) -> Result<Plan> {
        self.detach_where(name, network, true, |sb| {
            sb.cni
                && sb
                    .endpoints
                    .iter()
                    .any(|e| e.network == network && e.interface == ifname)
        })
    }

    /// [`Nsnet::detach`] of a sandbox for which `ours` holds; one for which it does not counts as missing.
    fn detach_where(
        &self,
        name: &str,
        network: &str,
        missing_ok: bool,
        ours: impl Fn(&Sandbox) -> bool,
    ) -> Result<Plan> {
        names::check_name("sandbox", name).map_err(Error::Invalid)?;
        let lock = self.lock()?;
        let sb = match self.store.sandbox(name)?.filter(|sb| ours(sb)) {
            Some(sb) if sb.endpoints.iter().any(|e| e.network == network) => sb,
            _ if missing_ok => return Ok(Plan::default()),
            None => return Err(invalid!("no sandbox named '{name}'; `nsnet ls` lists them")),
            Some(_) => {
                return Err(invalid!(
                    "sandbox '{name}' is not on network '{network}'; `nsnet inspect {name}` shows its networks"
                ))
            }
        };
        if sb.removing
            || sb
                .endpoints
                .iter()
                .any(|e| e.network == network && e.removing)
        {
            return Err(Error::Busy(format!(
                "sandbox '{name}' is being changed by another nsnet command; try again"
            )));
        }
        let nets = self.store.networks()?;
        let kernel = match (
            sb.endpoints.iter().find(|e| e.network == network),
            nets.iter().find(|n| n.name == network),
        ) {
            (Some(ep), Some(net)) => build::endpoint_teardown(
                &sb,
                ep,
                Some(net),
                &self.store.owner_tag(),
                build::EndpointRemoval::Retire,
            ),
            _ => Plan::default(),
        };
        let mut kernel = kernel;
        let settings: Vec<&Network> = nets.iter().collect();
        let named_before = resolver::has_names(&sb, &settings);
        let mut marked = sb;
        for ep in marked.endpoints.iter_mut().filter(|e| e.network == network) {
            ep.removing = true;
        }
        // Off its last network with names: its resolv.conf goes too.
        if marked.owned && named_before && !resolver::has_names(&marked, &settings) {
            resolver::remove_resolv_conf(&mut kernel, &marked, &self.store.owner_tag());
        }
        self.take_down(
            lock,
            Removal::Endpoint {
                sandbox: name.into(),
                network: network.into(),
            },
            Record::Sandbox(marked),
            kernel,
            None,
        )
    }

    /// What finishes detaching `name` from `network`: the endpoint's firewall elements, its address and ports
    /// back to the network, and the sandbox record without it (gone, if nsnet did not create the namespace and
    /// nothing else is left).
    pub(super) fn finish_endpoint_removal(
        &self,
        name: &str,
        network: &str,
    ) -> Result<(Plan, Vec<Record>)> {
        let Some(mut sb) = self.store.sandbox(name)? else {
            return Ok((Plan::default(), vec![]));
        };
        let mut records = Vec::new();
        let mut fw = Batch::default();
        let mut backend = Default::default();
        if let Some(ep) = sb.endpoints.iter().find(|e| e.network == network) {
            fw = build::endpoint_down(ep);
            if let Some(mut net) = self.store.network_record(network)? {
                hand_back(&mut Host::new(), &mut net.allocations, name, ep)?;
                backend = net.settings.firewall;
                records.push(Record::Network(net));
            }
        }
        sb.endpoints.retain(|e| e.network != network);
        sb.removing = false;
        records.push(super::left_with(sb));
        Ok((Plan::setup(vec![], fw, backend), records))
    }

    /// The namespace of a sandbox, for `nsnet exec`; an error if it is gone.
    pub fn sandbox_netns(&self, name: &str) -> Result<PathBuf> {
        names::check_name("sandbox", name).map_err(Error::Invalid)?;
        let sb = self
            .sandbox(name)?
            .ok_or_else(|| invalid!("no sandbox named '{name}'; `nsnet ls` lists them"))?;
        if !Host::namespace_is_there(&sb) {
            return Err(lost_netns(&sb));
        }
        Ok(sb.netns)
    }
}

/// A sandbox whose namespace vanished behind nsnet's back (`ip netns del`, its process exited): what to do is
/// `nsnet gc`, which releases its records, addresses and ports, not creating it again.
/// Give back what sandbox `name` holds through endpoint `ep`: its ports, and its address, unless its veth was
/// retired and is not gone yet: then the retired link holds the address until it is (no one else may have an
/// address a link still carries), and [`Nsnet::reap`] gives it back.
fn hand_back(
    host: &mut Host,
    allocations: &mut crate::model::Allocations,
    name: &str,
    ep: &Endpoint,
) -> Result<()> {
    let retired = host
        .link(&ep.host_interface)?
        .is_some_and(|l| l.group == crate::kernel::netlink::RETIRED_GROUP);
    if retired {
        allocations.retire(name, &build::retired_holder_of(&ep.host_interface));
    } else {
        allocations.release(name);
    }
    // Earlier removals' retired veths that are gone by now give their addresses back with this write, so
    // their reaper finds nothing left to do and does not take the lock while commands run.
    release_gone_retired(host, allocations).map(|_| ())
}

/// Give back the addresses of `allocations`' retired veths whose link is gone (or is no longer a retired
/// link: the name was taken again since). Returns whether any were.
pub(super) fn release_gone_retired(
    host: &mut Host,
    allocations: &mut crate::model::Allocations,
) -> Result<bool> {
    let mut holders: Vec<String> = allocations
        .addresses
        .values()
        .chain(allocations.addresses6.values())
        .filter(|o| build::retired_holder(o).is_some())
        .cloned()
        .collect();
    holders.sort_unstable();
    holders.dedup();
    let mut any = false;
    for holder in holders {
        let link = build::retired_holder(&holder).unwrap_or_default();
        let still = host
            .link(link)?
            .is_some_and(|l| l.group == crate::kernel::netlink::RETIRED_GROUP);
        if !still {
            allocations.release(&holder);
            any = true;
        }
    }
    Ok(any)
}

fn lost_netns(sb: &Sandbox) -> Error {
    invalid!(
        "sandbox '{}' has lost its network namespace ({} is gone); `nsnet gc` releases what is left of it",
        sb.name,
        sb.netns.display()
    )
}

/// The aliases asked for, each a DNS name, none twice.
fn check_aliases(aliases: &[String], t: &Terms) -> Result<Vec<String>> {
    for (i, a) in aliases.iter().enumerate() {
        names::check_alias(a).map_err(|e| invalid!("{}: {e}", t.alias))?;
        if aliases[..i].iter().any(|b| b.eq_ignore_ascii_case(a)) {
            return Err(invalid!(
                "{} {a} is given twice; give each alias once",
                t.alias
            ));
        }
    }
    Ok(aliases.to_vec())
}

/// Fix every requested port: check it against the ports already published and the sockets host processes
/// hold, and choose free host ports where none was given (the lowest free ones in the kernel's local port
/// range, like Docker).
/// Whether a join's request touches an address or host port that an index shows taken (or, read from a
/// ledger, that is taken): then the join must read the ledgers to say by whom, or whether it conflicts.
fn touches_taken(
    net: &Network,
    allocated: &AllocationsView,
    req: &AttachRequest,
    others: &[(Network, AllocationsView)],
) -> bool {
    req.ip.is_some_and(|ip| allocated.is_allocated(ip))
        || req.ip6.is_some_and(|ip| allocated.is_allocated(ip))
        || (net.driver == Driver::Veth && allocated.addresses() > 0)
        || req.ports.iter().any(|spec| match spec.host_port {
            // A host port left to nsnet is searched for among the published ones.
            None => true,
            Some(port) => {
                let m = spec.with_host_port(port);
                allocated.may_conflict(&m) || others.iter().any(|(_, h)| h.may_conflict(&m))
            }
        })
}

/// Refuse a published port on a host address this host does not have: its DNAT would catch nothing, silently
/// (a typo, or an address that moved). 127.0.0.1 and ::1 are always the host's (even before `lo` is up); no
/// address (0.0.0.0) means all of them, and `::` all IPv6 ones. An IPv6 address needs a network with IPv6.
fn check_host_ips(net: &Network, specs: &[PortSpec], host: &mut Host, t: &Terms) -> Result<()> {
    // An IPv6-only sandbox has no IPv4 address to forward an IPv4 host address's port to.
    if let Some(ip) = specs
        .iter()
        .filter(|_| net.ipv6_only())
        .find_map(|s| s.host_ip.filter(std::net::IpAddr::is_ipv4))
    {
        return Err(invalid!(
            "{}: {ip} is an IPv4 address, and network '{}' is IPv6-only; publish on [::] or a host IPv6 \
             address, or leave the address out",
            t.host_ip,
            net.name
        ));
    }
    let asked6: Vec<Ipv6Addr> = specs
        .iter()
        .filter_map(|s| match s.host_ip {
            Some(std::net::IpAddr::V6(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    if let Some(ip) = asked6.first() {
        if net.ipv6.is_none() {
            return Err(invalid!(
                "{}: {ip} is an IPv6 address, and network '{}' has no IPv6; use an IPv4 address, or a network \
                 made with {}",
                t.host_ip,
                net.name,
                t.ipv6
            ));
        }
        let own = host.ipv6_addresses()?;
        let theirs = |ip: &Ipv6Addr| {
            ip.is_loopback() || ip.is_unspecified() || own.iter().any(|a| a.addr() == *ip)
        };
        if let Some(ip) = asked6.iter().find(|ip| !theirs(ip)) {
            return Err(invalid!(
                "{}: {ip} is not an address of this host; use one of its addresses (`ip -6 addr` lists them), \
                 ::1, or :: for all of them",
                t.host_ip
            ));
        }
        // [::1] is served by translating the host's own sockets (kernel::loopback6): a DNAT of ::1 never
        // completes (IPv6 has no route_localnet).
        if asked6.iter().any(|ip| ip.is_loopback()) {
            if let Some(why) = crate::kernel::loopback6::unsupported_reason() {
                return Err(invalid!(
                    "{}: [::1] needs cgroup2 and bpf on this host, and {why}; publish on :: or on one of the \
                     host's IPv6 addresses instead",
                    t.host_ip
                ));
            }
        }
    }
    let asked: Vec<Ipv4Addr> = specs
        .iter()
        .filter_map(|s| match s.host_ip {
            Some(std::net::IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .filter(|ip| *ip != Ipv4Addr::LOCALHOST)
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let own = host.ipv4_addresses()?;
    match asked.iter().find(|ip| !own.iter().any(|a| a.addr() == **ip)) {
        None => Ok(()),
        Some(ip) => Err(invalid!(
            "{}: {ip} is not an address of this host; use one of its addresses (`ip -4 addr` lists them), \
             127.0.0.1, or no address (0.0.0.0) for all of them",
            t.host_ip
        )),
    }
}

/// The host ports of a new endpoint's `-p` specs on `net`, checked against every port published on this host
/// (every network's `allocated`). A network read from its index lists no ports: [`touches_taken`] has made sure
/// none of its ports can conflict.
fn resolve_ports(
    net: &Network,
    specs: &[PortSpec],
    allocated: &[&AllocationsView],
    t: &Terms,
) -> Result<Vec<PortMapping>> {
    if specs.is_empty() {
        return Ok(vec![]);
    }
    if net.internal {
        return Err(invalid!(
            "network '{}' is --internal, so it has no published ports; drop {} or use another network",
            net.name,
            t.port
        ));
    }
    if net.firewall == crate::firewall::Backend::None {
        return Err(invalid!(
            "network '{}' has {} none, so nsnet writes no DNAT rules for it; drop {} or use nftables",
            net.name,
            t.firewall,
            t.port
        ));
    }
    let families = (net.subnet.is_some(), net.ipv6.is_some());
    let published: Vec<(&str, &PortMapping)> = allocated
        .iter()
        .filter_map(|h| h.ledger())
        .flat_map(|l| l.published())
        .collect();
    let mut out: Vec<PortMapping> = Vec::new();
    for spec in specs {
        let mapping = match spec.host_port {
            Some(port) => {
                let m = spec.with_host_port(port);
                if let Some(why) = conflict(&m, &out, &published, t) {
                    return Err(Error::Invalid(why));
                }
                if let Some(why) = held_by_host(&m, families)? {
                    return Err(Error::Invalid(why));
                }
                m
            }
            None => {
                let (low, high) = Host::local_port_range();
                let last_start = high.saturating_sub(spec.count - 1);
                let mut found = None;
                for start in low..=last_start {
                    let m = spec.with_host_port(start);
                    if conflict(&m, &out, &published, t).is_none()
                        && held_by_host(&m, families)?.is_none()
                    {
                        found = Some(m);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    Error::Exhausted(format!(
                        "no free host port left in {low}-{high} for {} {}; give one",
                        t.port, spec.container_port
                    ))
                })?
            }
        };
        out.push(mapping);
    }
    Ok(out)
}

/// Why `m` cannot be published: it overlaps another port of the same request, or a published port. The message
/// names the lowest port that clashes (for `-p 1-65535:1-65535`, not port 1).
fn conflict(
    m: &PortMapping,
    same_request: &[PortMapping],
    published: &[(&str, &PortMapping)],
    t: &Terms,
) -> Option<String> {
    if let Some((port, ((), other))) = lowest_clash(m, same_request.iter().map(|o| ((), o))) {
        return Some(format!(
            "{p} {m} and {p} {other} publish the same host port {port}/{}; keep one",
            m.protocol,
            p = t.port
        ));
    }
    let (port, (sandbox, other)) = lowest_clash(m, published.iter().map(|(s, o)| (*s, *o)))?;
    Some(format!(
        "host port {port}/{} is already published by sandbox '{sandbox}' ({other}); pick another host port",
        m.protocol
    ))
}

/// The mapping among `others` (each with a tag: who publishes it) that clashes with `m` at the lowest host port,
/// and that port.
fn lowest_clash<'a, T>(
    m: &PortMapping,
    others: impl Iterator<Item = (T, &'a PortMapping)>,
) -> Option<(u16, (T, &'a PortMapping))> {
    others
        .filter_map(|(tag, o)| m.first_clash(o).map(|port| (port, (tag, o))))
        .min_by_key(|(port, _)| *port)
}

/// Where a bind probe looks for a host process holding `port` of `m`, on a network with IPv4 and/or IPv6
/// (`families`): `m`'s own address; on every address, IPv4's any-address on a network with IPv4 (which also
/// meets a dual-stack `[::]` socket) and IPv6's (`[::]`, probed v6only) on a network with IPv6, since the
/// port is taken on each family the network has. `None` is IPv4's any-address ([`Host::port_in_use`]).
pub(crate) fn host_probes(m: &PortMapping, families: (bool, bool)) -> Vec<Option<IpAddr>> {
    match m.host_ip {
        Some(ip) => vec![Some(ip)],
        None => {
            let (v4, v6) = families;
            let mut out = Vec::new();
            if v4 {
                out.push(None);
            }
            if v6 {
                out.push(Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
            }
            out
        }
    }
}

/// Why `m` cannot be published because a host process holds one of its ports (the DNAT would silently shadow
/// it). A bind probe per port answers in microseconds; only a taken port costs a read of /proc/net (a
/// millisecond a read: the kernel walks its whole socket hash) to say who holds it. `families`: whether the
/// network has IPv4 and IPv6 ([`host_probes`]).
fn held_by_host(m: &PortMapping, families: (bool, bool)) -> Result<Option<String>> {
    let probes = host_probes(m, families);
    for port in m.host_ports() {
        let mut in_use = false;
        for ip in &probes {
            in_use = in_use || Host::port_in_use(m.protocol, *ip, port)?;
        }
        if !in_use {
            continue;
        }
        let holder = Host::bound(m.protocol)?
            .into_iter()
            .find(|b| b.port == port && addresses_overlap(b.address.map(Into::into), m.host_ip));
        let at = holder
            .map(|b| {
                let addr = b.address.map_or("*".to_string(), |a| a.to_string());
                format!(" (bound to {addr}:{port})")
            })
            .unwrap_or_default();
        return Ok(Some(format!(
            "host port {port}/{} is already in use by a process on this host{at}; pick another host port",
            m.protocol
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Index;
    use crate::store::ledger::Ledger;

    fn net() -> Network {
        Network::bridge(
            "n",
            "10.89.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 89, 0, 1),
            "br0",
        )
    }

    fn request(ip: Option<Ipv4Addr>, ports: &[&str]) -> AttachRequest {
        AttachRequest {
            ip,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_port_on_every_address_is_probed_on_each_family_the_network_has() {
        let mapping = |text: &str| text.parse::<PortSpec>().unwrap().with_host_port(8080);
        let every = mapping("8080:80");
        let any6 = Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(host_probes(&every, (true, false)), vec![None]);
        assert_eq!(host_probes(&every, (true, true)), vec![None, any6]);
        assert_eq!(host_probes(&every, (false, true)), vec![any6]);
        for one in ["[::1]:8080:80", "10.0.0.1:8080:80", "[::]:8080:80"] {
            let m = mapping(one);
            assert_eq!(host_probes(&m, (true, true)), vec![m.host_ip], "{one}");
        }
    }

    #[test]
    fn a_request_touching_what_an_index_shows_taken_reads_the_ledgers() {
        let ledger =
            Ledger::parse("+ip 10.89.0.2 a\n+port a tcp 127.0.0.1 8080 80 1\n".into()).unwrap();
        let index = AllocationsView::Index(Index::of(&ledger, [0; 4]));
        let other = vec![(
            net(),
            AllocationsView::Index(Index::of(&Ledger::default(), [0; 4])),
        )];
        let n = net();
        let touches = |h: &AllocationsView, ip, ports: &[&str]| {
            touches_taken(&n, h, &request(ip, ports), &other)
        };
        let ip = |last| Some(Ipv4Addr::new(10, 89, 0, last));
        // Free address, free port: the index answers.
        assert!(!touches(&index, None, &["8081:80"]));
        assert!(!touches(&index, ip(3), &[]));
        // An allocated address, a host port in use on some address, or a host port left to nsnet: the ledgers say.
        assert!(touches(&index, ip(2), &[]));
        assert!(touches(&index, None, &["10.0.0.1:8080:80"]));
        assert!(touches(&index, None, &["80"]));
        // Read from the ledger, the port on another host address does not conflict.
        let exact = AllocationsView::Ledger(std::sync::Arc::new(ledger));
        assert!(!touches(&exact, None, &["10.0.0.1:8080:80"]));
        assert!(touches(&exact, None, &["8080:80"]));
        // A port taken on another network counts too.
        assert!(touches_taken(
            &net(),
            &other[0].1,
            &request(None, &["8080:80"]),
            &[(n, index)]
        ));
    }
}
