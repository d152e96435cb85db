//! `nsnet agent`: this host's member of the overlay networks kept in etcd.
//!
//! The agent is a loop around the same flow as every command. Its request is what etcd says (the overlay
//! networks, every host's lease); for each network it takes this host a subnet (create-if-absent, attached to
//! an etcd lease it keeps alive), makes this host's part of the network ([`Nsnet::overlay_join`]), and brings
//! the peers to what the leases list ([`Nsnet::overlay_sync`]: validate, plan, apply, record). It follows etcd
//! with a watch, and checks the kernel against its records every second, so entries someone deleted come
//! back.
//!
//! What it never does: delete and re-create what is already right (a restart changes nothing in the kernel),
//! or withdraw peers because etcd is unreachable (the last view stays programmed; traffic keeps flowing).

pub mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::etcd::{Change, Etcd, EtcdError, WatchEvent, WatchStopper};
use crate::model::OverlayBackend;
use crate::ops::{vtep_mac, Nsnet, OverlayJoin, Underlay};
use cluster::{LeaseValue, NetworkSpec, View, PREFIX};

/// How long a host's subnets outlive its last renewal, when `--lease-ttl` is not given. 15 s: short enough
/// that a lost host's subnet stops black-holing traffic quickly, long enough to ride out a few missed
/// renewals (one every 5 s) and an etcd leader election (which re-arms every lease anyway).
pub const DEFAULT_LEASE_TTL: i64 = 15;

/// The agent layer's errors: etcd's, the library's, and settings that make no sense.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Nsnet(#[from] crate::Error),
    #[error("{0}")]
    Invalid(String),
}

/// How `nsnet agent` runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub etcd: Vec<String>,
    /// The underlay interface (`--iface`), or address (`--underlay-ip`); neither: the default route's.
    pub iface: Option<String>,
    pub underlay_ip: Option<Ipv4Addr>,
    pub lease_ttl: i64,
    /// How often the kernel is checked against the records.
    pub resync: Duration,
}

/// Set by SIGTERM / SIGINT: the loop ends at its next safe point.
pub static STOP: AtomicBool = AtomicBool::new(false);

enum Event {
    Changes(Vec<Change>, i64),
    Compacted,
    Broken(String),
}

struct Watching {
    rx: Receiver<Event>,
    stopper: WatchStopper,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}

/// The running agent.
pub struct Agent {
    nsnet: Nsnet,
    etcd: Etcd,
    cfg: AgentConfig,
    me: String,
    hostname: String,
    view: Option<View>,
    watch: Option<Watching>,
    /// The newest etcd revision the view holds: a broken watch resumes after it, without listing again.
    revision: i64,
    /// Set when a watch broke: the next one resumes from here (a compacted one makes the agent list again).
    resume: bool,
    lease: Option<i64>,
    next_keepalive: Instant,
    retry_at: Instant,
    backoff: Duration,
    /// What this agent put with its current lease: key → value.
    published: HashMap<String, Vec<u8>>,
    /// The underlay address last seen: when it changes, the watch's connection (from the old address) is
    /// dead without knowing it, and is made again at once.
    underlay_ip: Option<Ipv4Addr>,
    /// The last message per topic, so a condition that lasts is said once, and its end too.
    said: BTreeMap<String, String>,
    ticks: u64,
}

impl Agent {
    /// An agent for the state dir `nsnet` works on.
    pub fn new(nsnet: Nsnet, cfg: AgentConfig) -> Result<Agent, AgentError> {
        if cfg.lease_ttl < 2 {
            return Err(AgentError::Invalid(format!(
                "--lease-ttl {} is too short; etcd's minimum is about 2 seconds (default {DEFAULT_LEASE_TTL})",
                cfg.lease_ttl
            )));
        }
        let etcd = Etcd::new(&cfg.etcd)?;
        // The underlay must make sense now, not at the first reconcile.
        nsnet.underlay(cfg.iface.as_deref(), cfg.underlay_ip)?;
        let me = nsnet.host_id()?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let now = Instant::now();
        Ok(Agent {
            nsnet,
            etcd,
            cfg,
            me,
            hostname,
            view: None,
            watch: None,
            revision: 0,
            resume: false,
            lease: None,
            next_keepalive: now,
            retry_at: now,
            backoff: Duration::from_millis(250),
            published: HashMap::new(),
            underlay_ip: None,
            said: BTreeMap::new(),
            ticks: 0,
        })
    }

    /// Run until [`STOP`] is set.
    pub fn run(&mut self) {
        self.say(
            "host",
            format!("host id {}, etcd {}", self.me, self.cfg.etcd.join(",")),
        );
        while !STOP.load(Ordering::Relaxed) {
            if self.watch.is_none() && Instant::now() >= self.retry_at {
                if self.resume && self.view.is_some() {
                    self.resume_watch();
                } else {
                    self.resync();
                }
            }
            self.keep_lease();
            if self.view.is_some() {
                self.reconcile();
            }
            self.ticks += 1;
            self.wait(self.cfg.resync);
        }
        self.say("host", "stopping; the kernel keeps what it has".into());
    }

    fn fail_etcd(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.say(
            "etcd",
            format!(
                "{what}: {e}; peers stay as programmed, retrying in {:?}",
                self.backoff
            ),
        );
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(8));
    }

    /// List everything, then watch from just after the listing.
    fn resync(&mut self) {
        let (kvs, revision) = match self.etcd.get_prefix(PREFIX) {
            Ok(r) => r,
            Err(e) => return self.fail_etcd("cannot list the cluster", &e),
        };
        let view = View::of(kvs);
        match self.start_watch(revision + 1) {
            Ok(w) => self.watch = Some(w),
            Err(e) => return self.fail_etcd("cannot watch the cluster", &e),
        }
        self.view = Some(view);
        self.revision = revision;
        self.resume = false;
        self.backoff = Duration::from_millis(250);
        self.say(
            "etcd",
            format!("following the cluster at revision {revision}"),
        );
    }

    /// Watch again from just after the newest revision the view holds: what changed meanwhile comes as
    /// events. If etcd compacted that revision away, the watch says so and the agent lists again.
    fn resume_watch(&mut self) {
        match self.start_watch(self.revision + 1) {
            Ok(w) => {
                self.watch = Some(w);
                self.backoff = Duration::from_millis(250);
                let line = format!(
                    "following the cluster again from revision {}",
                    self.revision + 1
                );
                self.say("etcd", line);
            }
            Err(e) => self.fail_etcd("cannot watch the cluster", &e),
        }
    }

    fn start_watch(&self, from: i64) -> Result<Watching, EtcdError> {
        let mut watch = self.etcd.watch(PREFIX, from)?;
        let stopper = watch.stopper();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || loop {
            let event = match watch.next() {
                Ok(WatchEvent::Changes { events, revision }) => Event::Changes(events, revision),
                Ok(WatchEvent::Progress { .. }) => continue,
                Ok(WatchEvent::Compacted { .. }) => Event::Compacted,
                Err(e) => Event::Broken(e.to_string()),
            };
            let last = !matches!(event, Event::Changes(..));
            if tx.send(event).is_err() || last {
                return;
            }
        });
        Ok(Watching { rx, stopper })
    }

    /// Wait up to `timeout` for changes from the watch, applying every one that arrived.
    fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || STOP.load(Ordering::Relaxed) {
                return;
            }
            let Some(w) = &self.watch else {
                thread::sleep(left.min(Duration::from_millis(100)));
                continue;
            };
            let event = match w.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Event::Broken("the watch ended".into()),
            };
            match event {
                Event::Changes(changes, revision) => {
                    self.apply_changes(changes, revision);
                    // Act on a change at once; more that came with it are applied first.
                    while let Some(Ok(Event::Changes(more, revision))) =
                        self.watch.as_ref().map(|w| w.rx.try_recv())
                    {
                        self.apply_changes(more, revision);
                    }
                    return;
                }
                Event::Compacted => {
                    // etcd cancelled the watch: its revision is gone. List again and watch from there.
                    self.say(
                        "etcd",
                        "the watch's revision was compacted away; listing again".into(),
                    );
                    self.watch = None;
                    self.resume = false;
                    return;
                }
                Event::Broken(why) => {
                    self.watch = None;
                    self.resume = true;
                    return self.fail_etcd("the watch broke", &why);
                }
            }
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>, revision: i64) {
        if let Some(view) = self.view.as_mut() {
            for c in changes {
                match c {
                    Change::Put(kv) => view.keys.insert(kv.key, kv.value),
                    Change::Delete { key, .. } => view.keys.remove(&key),
                };
            }
        }
        self.revision = self.revision.max(revision);
    }

    /// Keep this host's etcd lease alive; take a new one when it expired (etcd then deleted our keys, and the
    /// next reconcile puts them back, with the same subnets when still free).
    fn keep_lease(&mut self) {
        let now = Instant::now();
        let every = Duration::from_secs(u64::try_from(self.cfg.lease_ttl / 3).unwrap_or(1).max(1));
        match self.lease {
            None if now >= self.retry_at || self.watch.is_some() => {
                match self.etcd.lease_grant(self.cfg.lease_ttl) {
                    Ok(l) => {
                        self.lease = Some(l.id);
                        self.published.clear();
                        self.next_keepalive = now + every;
                    }
                    Err(e) => self.fail_etcd("cannot take a lease", &e),
                }
            }
            Some(id) if now >= self.next_keepalive => match self.etcd.lease_keepalive(id) {
                Ok(Some(_)) => self.next_keepalive = now + every,
                Ok(None) => {
                    self.say(
                        "lease",
                        "the etcd lease expired; taking a new one and publishing this host's subnets again"
                            .into(),
                    );
                    self.lease = None;
                    self.published.clear();
                }
                Err(e) => {
                    self.next_keepalive = now + Duration::from_secs(1);
                    self.fail_etcd("cannot renew the lease", &e);
                }
            },
            _ => {}
        }
    }

    fn reconcile(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let (specs, bad) = view.networks();
        for key in bad {
            self.say(
                &key,
                format!("{key} does not hold valid overlay settings; skipped"),
            );
        }
        let underlay = match self
            .nsnet
            .underlay(self.cfg.iface.as_deref(), self.cfg.underlay_ip)
        {
            Ok(u) => u,
            Err(e) => return self.say("underlay", format!("{e}")),
        };
        self.say(
            "underlay",
            format!("underlay {} on {}", underlay.ip, underlay.interface),
        );
        if self.underlay_ip.is_some_and(|old| old != underlay.ip) && self.watch.is_some() {
            self.watch = None;
            self.resume = true;
            self.retry_at = Instant::now();
        }
        self.underlay_ip = Some(underlay.ip);
        for spec in &specs {
            let topic = format!("network {}", spec.name);
            match self.reconcile_network(&view, spec, &underlay) {
                Ok(line) => self.say(&topic, line),
                Err(e) => self.say(&topic, format!("network {}: {e}", spec.name)),
            }
        }
        // Networks that left the cluster leave this host, but only on a view that is current: a stale one
        // (etcd away) keeps everything as it was.
        if self.watch.is_none() {
            return;
        }
        let local = match self.nsnet.networks() {
            Ok(nets) => nets,
            Err(e) => return self.say("local", format!("cannot read the state: {e}")),
        };
        for rec in local.iter().filter(|r| r.settings.overlay.is_some()) {
            let name = &rec.settings.name;
            if specs.iter().any(|s| &s.name == name) {
                continue;
            }
            let line = match self.nsnet.overlay_leave(name) {
                Ok(true) => format!("network {name} left the cluster; removed here"),
                Ok(false) => format!(
                    "network {name} left the cluster; its peers are gone, and it stays here while \
                     sandboxes use it"
                ),
                Err(e) => format!("network {name}: cannot leave: {e}"),
            };
            self.say(&format!("network {name}"), line);
        }
    }

    /// One network: this host's lease, its part of the network, its peers. Returns a line saying how it stands.
    fn reconcile_network(
        &mut self,
        view: &View,
        spec: &NetworkSpec,
        underlay: &Underlay,
    ) -> Result<String, AgentError> {
        let local = self.nsnet.network(&spec.name)?;
        let remembered = local
            .as_ref()
            .filter(|r| r.settings.overlay.is_some())
            .and_then(|r| r.settings.subnet);
        let (me, hostname) = (self.me.clone(), self.hostname.clone());
        let value = |subnet: Ipv4Net| lease_value(spec, subnet, &me, &hostname, underlay);
        let subnet = match view.held_by(&spec.name, &self.me) {
            Some((subnet, _)) => {
                // Not being able to publish (etcd away) stops nothing here: the block is this host's.
                let key = cluster::lease_key(&spec.name, subnet);
                match self.publish(&key, &value(subnet)) {
                    Ok(()) => self.say(&key, format!("published {key}")),
                    Err(e) => self.say(&key, format!("cannot publish {key}: {e}")),
                }
                subnet
            }
            None => match self.acquire(view, spec, remembered, &value)? {
                Some(s) => s,
                // No lease to be had now (etcd away): what this host already has keeps working.
                None => match remembered {
                    Some(s) => s,
                    None => return Ok(format!("network {}: waiting for a lease", spec.name)),
                },
            },
        };
        let peers = view.peers(spec, &self.me);
        let (_, made) = self
            .nsnet
            .overlay_join(&join_of(spec, subnet, underlay, &peers))?;
        if !made.is_empty() {
            self.say(
                &format!("joined {}", spec.name),
                format!("network {}: this host holds {subnet}", spec.name),
            );
        }
        let check_firewall = self.ticks.is_multiple_of(10);
        let sync = self
            .nsnet
            .overlay_sync(&spec.name, &peers, check_firewall)?;
        for line in &sync.refused {
            self.say(
                &format!("refused {line}"),
                format!("network {}: {line}", spec.name),
            );
        }
        for line in &sync.repaired {
            eprintln!("nsnet agent: network {}: put back {line}", spec.name);
        }
        if sync.needs_gc {
            eprintln!(
                "nsnet agent: network {}: its bridge is gone; running gc",
                spec.name
            );
            self.nsnet.gc()?;
        }
        for step in &sync.plan.steps {
            if let crate::plan::Step::SetPeer { peer, .. }
            | crate::plan::Step::RemovePeer { peer, .. } = step
            {
                let verb = if matches!(step, crate::plan::Step::SetPeer { .. }) {
                    "programmed"
                } else {
                    "removed"
                };
                eprintln!(
                    "nsnet agent: network {}: {verb} peer {} at {}",
                    spec.name, peer.subnet, peer.underlay
                );
            }
        }
        Ok(format!(
            "network {}: this host holds {subnet}, {} peer(s)",
            spec.name,
            peers.len() - sync.refused.len().min(peers.len())
        ))
    }

    /// What the agent would do now, as `ip`/`nft` commands (`nsnet agent --dry-run`): the subnet each network
    /// would take, the network's set-up, and its peers. Reads etcd, writes nothing.
    pub fn plan_once(&mut self) -> Result<String, AgentError> {
        let (kvs, revision) = self.etcd.get_prefix(PREFIX)?;
        let view = View::of(kvs);
        let underlay = self
            .nsnet
            .underlay(self.cfg.iface.as_deref(), self.cfg.underlay_ip)?;
        let mut out = format!(
            "# etcd revision {revision}; this host {} reached at {} on {}\n",
            self.me, underlay.ip, underlay.interface
        );
        let (specs, _) = view.networks();
        for spec in &specs {
            let local = self.nsnet.network(&spec.name)?;
            let remembered = local
                .as_ref()
                .filter(|r| r.settings.overlay.is_some())
                .and_then(|r| r.settings.subnet);
            let subnet = match view.held_by(&spec.name, &self.me) {
                Some((s, _)) => s,
                None => match cluster::candidates(spec, &view, &self.me, remembered).first() {
                    Some(s) => *s,
                    None => {
                        out.push_str(&format!(
                            "# network {}: the cluster subnet is full\n",
                            spec.name
                        ));
                        continue;
                    }
                },
            };
            out.push_str(&format!(
                "# network {}: this host holds {subnet}\n",
                spec.name
            ));
            let peers = view.peers(spec, &self.me);
            let (_, plan) = self
                .nsnet
                .overlay_join(&join_of(spec, subnet, &underlay, &peers))?;
            out.push_str(&plan.render());
            if plan.is_empty() {
                let sync = self.nsnet.overlay_sync(&spec.name, &peers, false)?;
                for line in sync.refused {
                    out.push_str(&format!("# refused: {line}\n"));
                }
                out.push_str(&sync.plan.render());
            }
        }
        Ok(out)
    }

    /// Put `value` at `key` with the current lease, unless this agent already did.
    fn publish(&mut self, key: &str, value: &LeaseValue) -> Result<(), AgentError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(value).map_err(|e| AgentError::Invalid(e.to_string()))?;
        if self.published.get(key) == Some(&bytes) {
            return Ok(());
        }
        self.etcd.put(key, &bytes, Some(lease))?;
        self.published.insert(key.to_string(), bytes);
        Ok(())
    }

    /// Take a subnet of `spec` for this host: the best free candidate that nobody creates first. `None` when
    /// there is no lease to attach it to (etcd away).
    fn acquire(
        &mut self,
        view: &View,
        spec: &NetworkSpec,
        remembered: Option<Ipv4Net>,
        value: &dyn Fn(Ipv4Net) -> LeaseValue,
    ) -> Result<Option<Ipv4Net>, AgentError> {
        let Some(lease) = self.lease else {
            return Ok(None);
        };
        if self.watch.is_none() {
            return Ok(None);
        }
        let candidates = cluster::candidates(spec, view, &self.me, remembered);
        if candidates.is_empty() {
            return Err(AgentError::Invalid(format!(
                "the cluster subnet {} is full: every /{} block is leased by a host; make the network with a \
                 larger --subnet or a longer --host-subnet-len",
                spec.subnet, spec.host_subnet_len
            )));
        }
        for subnet in candidates {
            let key = cluster::lease_key(&spec.name, subnet);
            let bytes = serde_json::to_vec(&value(subnet))
                .map_err(|e| AgentError::Invalid(e.to_string()))?;
            if self.etcd.create(&key, &bytes, Some(lease))? {
                self.etcd.put(
                    &cluster::owner_key(&spec.name, subnet),
                    self.me.as_bytes(),
                    None,
                )?;
                self.published.insert(key, bytes);
                return Ok(Some(subnet));
            }
        }
        // Every candidate went to someone faster: the watch brings their leases, and the next round tries
        // the next blocks.
        Ok(None)
    }

    /// Say `line` about `topic`, unless it is what was last said about it.
    fn say(&mut self, topic: &str, line: String) {
        if self.said.get(topic) != Some(&line) {
            eprintln!("nsnet agent: {line}");
            self.said.insert(topic.to_string(), line);
        }
    }
}

/// What host `me` publishes with its lease of block `subnet` of network `spec`: with the IPv6 block that goes
/// with it on a dual-stack network (and, for host-gw, the underlay MAC its IPv6 route is bound to).
pub fn lease_value(
    spec: &NetworkSpec,
    subnet: Ipv4Net,
    me: &str,
    hostname: &str,
    underlay: &Underlay,
) -> LeaseValue {
    let subnet6 = spec.block6(subnet);
    LeaseValue {
        host: me.to_string(),
        hostname: hostname.to_string(),
        underlay: underlay.ip,
        vtep_mac: (spec.backend == OverlayBackend::Vxlan).then(|| vtep_mac(subnet)),
        subnet6,
        underlay_mac: underlay
            .mac
            .filter(|_| subnet6.is_some() && spec.backend == OverlayBackend::HostGw),
    }
}

/// The join request for network `spec` on this host.
fn join_of(
    spec: &NetworkSpec,
    subnet: Ipv4Net,
    underlay: &Underlay,
    peers: &[crate::model::Peer],
) -> OverlayJoin {
    OverlayJoin {
        name: spec.name.clone(),
        subnet,
        subnet6: spec.block6(subnet),
        cluster6: spec.subnet6,
        ipv6_nat: spec.ipv6_nat,
        cluster: spec.subnet,
        backend: spec.backend,
        vni: spec.vni,
        port: spec.port,
        mtu: spec.mtu,
        underlay: underlay.clone(),
        peers: peers.to_vec(),
    }
}

/// `nsnet network create --driver overlay`: write the settings to etcd, once. Refuses a name that exists and a
/// VNI and port another overlay network uses.
pub fn create_network(etcd: &Etcd, spec: &NetworkSpec) -> Result<(), AgentError> {
    spec.validate().map_err(AgentError::Invalid)?;
    let (kvs, _) = etcd.get_prefix(&format!("{PREFIX}networks/"))?;
    let view = View::of(kvs);
    let (nets, _) = view.networks();
    // VNI and port matter between two vxlan networks only: host-gw uses neither.
    let vxlan = |n: &NetworkSpec| n.backend == OverlayBackend::Vxlan;
    if let Some(other) = nets.iter().find(|n| {
        vxlan(n) && vxlan(spec) && n.vni == spec.vni && n.port == spec.port && n.name != spec.name
    }) {
        return Err(AgentError::Invalid(format!(
            "overlay network '{}' already uses VNI {} on port {}; give another --vni",
            other.name, spec.vni, spec.port
        )));
    }
    if let Some(other) = nets.iter().find(|n| {
        n.name != spec.name && (n.subnet.contains(&spec.subnet) || spec.subnet.contains(&n.subnet))
    }) {
        return Err(AgentError::Invalid(format!(
            "overlay network '{}' already has {}, which overlaps {}; give another --subnet",
            other.name, other.subnet, spec.subnet
        )));
    }
    let bytes = serde_json::to_vec(spec).map_err(|e| AgentError::Invalid(e.to_string()))?;
    if !etcd.create(&cluster::network_key(&spec.name), &bytes, None)? {
        return Err(AgentError::Invalid(format!(
            "overlay network '{}' already exists in etcd; use another name, or remove it first (nsnet network rm \
             {} --etcd URL)",
            spec.name, spec.name
        )));
    }
    Ok(())
}

/// `nsnet network rm NAME --etcd URL`: take an overlay network out of the cluster with every key it has; each
/// host's agent then removes its part.
pub fn remove_network(etcd: &Etcd, name: &str) -> Result<(), AgentError> {
    if !etcd.delete(&cluster::network_key(name))? {
        return Err(AgentError::Invalid(format!(
            "there is no overlay network '{name}' in etcd; `nsnet network ls --etcd URL` lists them"
        )));
    }
    for prefix in cluster::network_prefixes(name) {
        etcd.delete_prefix(&prefix)?;
    }
    Ok(())
}

/// An overlay network as the cluster has it: its settings and every host's lease.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterNetwork {
    #[serde(flatten)]
    pub spec: NetworkSpec,
    pub hosts: Vec<ClusterHost>,
}

/// One host's lease, for `network ls|inspect --etcd`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterHost {
    pub subnet: Ipv4Net,
    #[serde(flatten)]
    pub lease: LeaseValue,
}

/// Every overlay network in etcd, with its hosts.
pub fn describe(etcd: &Etcd) -> Result<Vec<ClusterNetwork>, AgentError> {
    let (kvs, _) = etcd.get_prefix(PREFIX)?;
    let view = View::of(kvs);
    let (nets, _) = view.networks();
    Ok(nets
        .into_iter()
        .map(|spec| {
            let hosts = view
                .leases(&spec.name)
                .into_iter()
                .map(|(subnet, lease)| ClusterHost { subnet, lease })
                .collect();
            ClusterNetwork { spec, hosts }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    #[test]
    fn a_lease_carries_the_ipv6_block_and_host_gw_s_underlay_mac_only_on_dual_stack() {
        let mut spec = NetworkSpec {
            name: "pods".into(),
            subnet: "10.244.0.0/16".parse().unwrap(),
            host_subnet_len: 24,
            backend: OverlayBackend::HostGw,
            vni: 1,
            port: cluster::DEFAULT_VXLAN_PORT,
            mtu: None,
            subnet6: None,
            host_subnet6_len: None,
            ipv6_nat: true,
        };
        let underlay = Underlay {
            ip: Ipv4Addr::new(192, 168, 200, 11),
            interface: "eth0".into(),
            mtu: 1500,
            mac: Some(Mac([2, 0, 0, 0, 0, 0x11])),
        };
        let block: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        // IPv4 only: what an IPv4-only agent published, byte for byte.
        let v = lease_value(&spec, block, "me", "h1", &underlay);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"host":"me","hostname":"h1","underlay":"192.168.200.11"}"#
        );
        spec.subnet6 = Some("fd00:10:244::/56".parse().unwrap());
        spec.host_subnet6_len = Some(64);
        let v = lease_value(&spec, block, "me", "h1", &underlay);
        assert_eq!(v.subnet6, Some("fd00:10:244:7::/64".parse().unwrap()));
        assert_eq!(v.underlay_mac, underlay.mac);
        assert_eq!(v.vtep_mac, None);
        // vxlan binds the IPv6 next hop to the VTEP MAC, which the lease has already.
        spec.backend = OverlayBackend::Vxlan;
        let v = lease_value(&spec, block, "me", "h1", &underlay);
        assert_eq!((v.underlay_mac, v.vtep_mac), (None, Some(vtep_mac(block))));
        let join = join_of(&spec, block, &underlay, &[]);
        assert_eq!(join.subnet6, v.subnet6);
        assert_eq!(join.cluster6, spec.subnet6);
    }
}
