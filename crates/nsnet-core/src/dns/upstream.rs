//! Where names that are not local go: the sandbox's own servers, else its networks', else the host's.
//!
//! The host's come from its resolv.conf. When that names only a resolver on loopback (systemd-resolved's
//! stub, 127.0.0.53), the servers behind it are in `/run/systemd/resolve/resolv.conf`, and those are the ones
//! used: the failure Docker shipped for years (moby#38243) was to copy the stub's address into containers,
//! where nothing listens on it. Only if that file is missing does the stub itself serve (the resolver runs in
//! the host's namespace, where the stub answers).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Overrides the host's resolv.conf the resolver reads (for packagers, and for tests' throwaway worlds).
pub const RESOLV_CONF_ENV: &str = "NSNET_RESOLV_CONF";
/// Overrides where the servers behind a loopback stub are listed.
pub const RESOLVED_CONF_ENV: &str = "NSNET_RESOLVED_CONF";

/// At most this many upstream servers are tried per query, each for [`TRY_FOR`], as glibc does.
pub const MAX_SERVERS: usize = 3;
/// How long one upstream server has to answer before the next is tried.
pub const TRY_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// What a resolv.conf says (the lines nsnet uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parse resolv.conf text; lines it does not know, and servers that do not parse, are skipped (as the C
    /// library does).
    pub fn parse(text: &str) -> ResolvConf {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (fe80::1%eth0) is not usable from elsewhere: skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        out.nameservers.push(ip);
                    }
                }
                // The last search (or domain) line wins.
                Some("search" | "domain") => out.search = words.map(str::to_string).collect(),
                Some("options") => out.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        out
    }

    /// Whether every server is on loopback: a local stub that forwards elsewhere.
    pub fn only_loopback(&self) -> bool {
        !self.nameservers.is_empty() && self.nameservers.iter().all(IpAddr::is_loopback)
    }
}

/// The host's resolv.conf path ([`RESOLV_CONF_ENV`] or `/etc/resolv.conf`).
pub fn host_conf_path() -> PathBuf {
    std::env::var_os(RESOLV_CONF_ENV).map_or_else(|| "/etc/resolv.conf".into(), PathBuf::from)
}

/// The host's resolv.conf as it is now (empty when unreadable).
pub fn host_conf() -> ResolvConf {
    ResolvConf::parse(&std::fs::read_to_string(host_conf_path()).unwrap_or_default())
}

/// The host's upstream servers: its resolv.conf's, or, behind a loopback stub, the stub's own.
pub fn host_servers() -> Vec<SocketAddr> {
    let conf = host_conf();
    let chosen = if conf.only_loopback() {
        let behind = std::env::var_os(RESOLVED_CONF_ENV)
            .map_or_else(|| "/run/systemd/resolve/resolv.conf".into(), PathBuf::from);
        let real = ResolvConf::parse(&std::fs::read_to_string(behind).unwrap_or_default());
        if real.nameservers.is_empty() || real.only_loopback() {
            conf
        } else {
            real
        }
    } else {
        conf
    };
    chosen
        .nameservers
        .into_iter()
        .take(MAX_SERVERS)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The servers for one query: the first non-empty of the sandbox's, its networks' (in order), the host's.
pub fn choose(sandbox: &[IpAddr], networks: &[&[IpAddr]], host: &[SocketAddr]) -> Vec<SocketAddr> {
    let own = std::iter::once(sandbox)
        .chain(networks.iter().copied())
        .find(|s| !s.is_empty());
    match own {
        Some(servers) => servers
            .iter()
            .take(MAX_SERVERS)
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect(),
        None => host.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines_are_read_as_the_c_library_reads_them() {
        let c = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 2001:db8::53 # v6\n\
             domain old.example\nsearch a.example b.example\noptions ndots:2\noptions edns0\nsortlist x\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
        assert_eq!(c.search, vec!["a.example", "b.example"]);
        assert_eq!(c.options, vec!["ndots:2", "edns0"]);
        assert!(!c.only_loopback());
        assert!(ResolvConf::parse("nameserver 127.0.0.53\n").only_loopback());
        assert!(!ResolvConf::parse("").only_loopback());
    }

    #[test]
    fn the_sandboxs_servers_come_first_then_its_networks_then_the_hosts() {
        let host = vec![SocketAddr::from(([10, 0, 0, 2], 53))];
        let own = [IpAddr::from([192, 0, 2, 1])];
        let net = [IpAddr::from([192, 0, 2, 2])];
        let at = |ip: [u8; 4]| SocketAddr::from((ip, 53));
        assert_eq!(choose(&own, &[&net], &host), vec![at([192, 0, 2, 1])]);
        assert_eq!(choose(&[], &[&[], &net], &host), vec![at([192, 0, 2, 2])]);
        assert_eq!(choose(&[], &[&[]], &host), host);
        // An IPv6 server is asked on port 53 of its own family.
        let v6: [IpAddr; 1] = ["2001:db8::53".parse().unwrap()];
        assert_eq!(
            choose(&v6, &[&net], &host),
            vec!["[2001:db8::53]:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
