//! IP address management: choosing subnets and handing out addresses. Pure functions over the records.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{Allocations, Network};

/// Where subnets come from when the user gives none: 10.89.0.0/16, one /24 per network.
pub const DEFAULT_POOL: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 89, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("constant pool is valid"),
};
/// Prefix length of subnets taken from the pool.
pub const POOL_PREFIX: u8 = 24;

/// Whether two subnets share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parse a `--subnet` value and check that it can hold a network: a network address, a gateway and at least
/// one sandbox.
pub fn parse_subnet(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("subnet '{text}' is not an IPv4 CIDR; write it like 10.89.7.0/24"))?;
    if net.trunc() != net {
        return Err(format!(
            "subnet '{text}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    if net.prefix_len() > 30 {
        return Err(format!(
            "subnet '{text}' is too small for a gateway and a sandbox; use a prefix of /30 or shorter"
        ));
    }
    check_usable(&net)?;
    Ok(net)
}

/// Refuse a subnet that reaches into a special-use range (see [`SPECIAL_USE`]).
pub fn check_usable(net: &Ipv4Net) -> Result<(), String> {
    match SPECIAL_USE.iter().find(|(r, _)| overlaps(net, &special(r))) {
        Some((range, why)) => Err(format!(
            "subnet '{net}' reaches into {range}, {why}; use a private range such as 10.0.0.0/8, \
             172.16.0.0/12 or 192.168.0.0/16"
        )),
        None => Ok(()),
    }
}

/// IPv4 ranges a container network cannot be (RFC 6890 and the kernel's own rules), with why.
const SPECIAL_USE: [(&str, &str); 5] = [
    (
        "0.0.0.0/8",
        "'this network', which no packet may carry as an address",
    ),
    (
        "127.0.0.0/8",
        "the loopback range, which the host keeps for itself (every address there is the host's own)",
    ),
    (
        "169.254.0.0/16",
        "the link-local range, which is never routed (and holds cloud metadata services)",
    ),
    (
        "224.0.0.0/4",
        "the multicast range, which no interface can hold as its address",
    ),
    (
        "240.0.0.0/4",
        "the reserved range (with the broadcast address 255.255.255.255), which hosts drop",
    ),
];

fn special(range: &str) -> Ipv4Net {
    // The table above holds valid CIDRs only; the unit test parses every one.
    range.parse().unwrap_or_default()
}

/// The first free pool subnet that overlaps nothing in `taken` (host addresses, host routes, other networks).
pub fn pick_subnet(pool: Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(prefix)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| overlaps(candidate, t)))
}

/// The gateway a subnet gets by default: its first host address.
pub fn default_gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Check a `--gateway` for a subnet.
pub fn check_gateway(subnet: &Ipv4Net, gw: Ipv4Addr) -> Result<(), String> {
    if !is_host(subnet, gw) {
        return Err(format!(
            "gateway {gw} is not a host address of subnet {subnet}; pick one between {} and {}",
            first_host(subnet),
            last_host(subnet)
        ));
    }
    Ok(())
}

fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn last_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)
}

fn is_host(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// The addresses a network has handed out, wherever they are read from: the network record's map, its ledger
/// read in place, or the ledger's index (which knows only which addresses are allocated, not by whom).
pub trait Allocated {
    /// Whether `ip` is allocated.
    fn is_allocated(&self, ip: Ipv4Addr) -> bool;
    /// The sandbox that holds `ip`, when this source knows it.
    fn holder(&self, _ip: Ipv4Addr) -> Option<&str> {
        None
    }
    /// The address handed out last: the next search starts after it.
    fn cursor(&self) -> Option<Ipv4Addr>;
}

impl Allocated for Allocations {
    fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.addresses.contains_key(&ip)
    }

    fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.addresses.get(&ip).map(String::as_str)
    }

    fn cursor(&self) -> Option<Ipv4Addr> {
        self.last_allocated
    }
}

/// Choose the address for a new endpoint on `net`, whose addresses `allocated` tells: `requested` if it is free
/// and usable, else the next free one.
pub fn allocate(
    net: &Network,
    allocated: &impl Allocated,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, String> {
    if let Some(ip) = requested {
        if !is_host(&net.subnet, ip) {
            return Err(format!(
                "address {ip} is outside network {}'s subnet {} (or is its network/broadcast address); \
                 pick one between {} and {}",
                net.name,
                net.subnet,
                first_host(&net.subnet),
                last_host(&net.subnet)
            ));
        }
        if ip == net.gateway {
            return Err(format!(
                "address {ip} is the gateway of network {}; pick another address",
                net.name
            ));
        }
        if allocated.is_allocated(ip) {
            let holder = allocated.holder(ip);
            // A veth retired moments ago (`~NAME`) holds its address until its reaper deletes it.
            if let Some(link) = holder.and_then(|h| h.strip_prefix('~')) {
                return Err(format!(
                    "address {ip} is still held by veth {link}, retired moments ago and being deleted; try \
                     again in a moment (or run `nsnet gc`)"
                ));
            }
            let by = holder
                .map(|owner| format!(" by sandbox {owner}"))
                .unwrap_or_default();
            return Err(format!(
                "address {ip} is already in use{by}; pick another address or leave it out"
            ));
        }
        return Ok(ip);
    }
    let (first, last) = (
        u32::from(first_host(&net.subnet)),
        u32::from(last_host(&net.subnet)),
    );
    // Next fit, like Docker's and host-local's allocators: start after the address handed out last, so a
    // removed sandbox's address is not given out again at once (its veth may still be going away).
    let after = allocated
        .cursor()
        .map(u32::from)
        .filter(|a| (first..=last).contains(a))
        .map_or(first, |a| a + 1);
    (after..=last)
        .chain(first..after)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != net.gateway && !allocated.is_allocated(*ip))
        .ok_or_else(|| {
            format!(
                "network {} has no free address left in {}; remove a sandbox or create a larger network",
                net.name, net.subnet
            )
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn special_use_ranges_are_refused() {
        for (range, _) in SPECIAL_USE {
            assert!(range.parse::<Ipv4Net>().is_ok(), "{range}");
        }
        for bad in [
            "127.0.0.0/24",
            "224.0.0.0/24",
            "0.0.0.0/8",
            "255.255.255.0/24",
            "169.254.1.0/24",
            "240.1.0.0/16",
            "0.0.0.0/1",
        ] {
            let e = parse_subnet(bad).unwrap_err();
            assert!(e.contains("private range"), "{bad}: {e}");
        }
        let e = parse_subnet("127.0.0.0/24").unwrap_err();
        assert!(e.contains("127.0.0.0/8, the loopback range"), "{e}");
        for good in [
            "10.89.0.0/24",
            "172.16.0.0/12",
            "192.168.1.0/24",
            "100.64.0.0/24",
        ] {
            assert!(parse_subnet(good).is_ok(), "{good}");
        }
    }

    use super::*;

    fn net(subnet: &str) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network::bridge("n", subnet, default_gateway(&subnet), "br")
    }

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn picks_first_free_subnet_skipping_overlaps() {
        let taken = [
            cidr("10.89.0.0/24"),
            cidr("10.89.1.77/32"),
            cidr("10.89.2.0/23"),
        ];
        assert_eq!(
            pick_subnet(DEFAULT_POOL, 24, &taken),
            Some(cidr("10.89.4.0/24"))
        );
        assert_eq!(
            pick_subnet(DEFAULT_POOL, 24, &[]),
            Some(cidr("10.89.0.0/24"))
        );
        // A host route covering the whole pool leaves nothing.
        assert_eq!(pick_subnet(DEFAULT_POOL, 24, &[cidr("10.0.0.0/8")]), None);
    }

    #[test]
    fn subnet_parsing() {
        assert_eq!(
            parse_subnet("172.16.0.0/24").unwrap(),
            cidr("172.16.0.0/24")
        );
        assert!(parse_subnet("172.16.0.1/24")
            .unwrap_err()
            .contains("did you mean 172.16.0.0/24"));
        assert!(parse_subnet("10.0.0.0/31").is_err());
        assert!(parse_subnet("10.0.0.0").is_err());
        assert!(parse_subnet("10.0.0.0/33").is_err());
        assert!(parse_subnet("banana").is_err());
    }

    #[test]
    fn gateway_rules() {
        let s = cidr("172.16.0.0/24");
        assert_eq!(default_gateway(&s), Ipv4Addr::new(172, 16, 0, 1));
        assert!(check_gateway(&s, Ipv4Addr::new(172, 16, 0, 100)).is_ok());
        assert!(check_gateway(&s, Ipv4Addr::new(172, 16, 1, 1)).is_err());
        assert!(check_gateway(&s, Ipv4Addr::new(172, 16, 0, 255)).is_err());
        assert!(check_gateway(&s, Ipv4Addr::new(172, 16, 0, 0)).is_err());
    }

    #[test]
    fn allocation_is_next_fit_and_never_twice() {
        let n = net("172.16.0.0/29"); // hosts .1-.6, gateway .1
        let mut a = Allocations::default();
        let mut got = vec![];
        while let Ok(ip) = allocate(&n, &a, None) {
            a.addresses.insert(ip, format!("s{ip}"));
            a.last_allocated = Some(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert!(allocate(&n, &a, None)
            .unwrap_err()
            .contains("no free address"));
        // Freed addresses come back only once the search wraps around past the last one handed out.
        a.addresses.remove(&Ipv4Addr::new(172, 16, 0, 4));
        a.addresses.remove(&Ipv4Addr::new(172, 16, 0, 3));
        a.last_allocated = Some(Ipv4Addr::new(172, 16, 0, 3));
        assert_eq!(
            allocate(&n, &a, None).unwrap(),
            Ipv4Addr::new(172, 16, 0, 4)
        );
        a.last_allocated = Some(Ipv4Addr::new(172, 16, 0, 6));
        assert_eq!(
            allocate(&n, &a, None).unwrap(),
            Ipv4Addr::new(172, 16, 0, 3)
        );
    }

    #[test]
    fn requested_addresses() {
        let n = net("172.16.0.0/24");
        let mut a = Allocations::default();
        a.addresses.insert(Ipv4Addr::new(172, 16, 0, 9), "a".into());
        assert_eq!(
            allocate(&n, &a, Some(Ipv4Addr::new(172, 16, 0, 102))).unwrap(),
            Ipv4Addr::new(172, 16, 0, 102)
        );
        assert!(allocate(&n, &a, Some(Ipv4Addr::new(172, 16, 0, 9)))
            .unwrap_err()
            .contains("in use by sandbox a"));
        assert!(allocate(&n, &a, Some(Ipv4Addr::new(172, 16, 0, 1)))
            .unwrap_err()
            .contains("gateway"));
        assert!(allocate(&n, &a, Some(Ipv4Addr::new(172, 16, 1, 1)))
            .unwrap_err()
            .contains("outside"));
        assert!(allocate(&n, &a, Some(Ipv4Addr::new(172, 16, 0, 255))).is_err());
    }
}
