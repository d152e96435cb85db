//! IP address management: choosing subnets and handing out addresses. Pure functions over the records.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::{Allocations, Net6, Network};

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

/// The addresses of one family (`A`: IPv4 unless said) a network has handed out, wherever they are read from:
/// the network record's map, its ledger read in place, or the ledger's index (which knows only which
/// addresses are allocated, not by whom).
pub trait Allocated<A: Copy = Ipv4Addr> {
    /// Whether `ip` is allocated.
    fn is_allocated(&self, ip: A) -> bool;
    /// The sandbox that holds `ip`, when this source knows it.
    fn holder(&self, _ip: A) -> Option<&str> {
        None
    }
    /// The address handed out last: the next search starts after it.
    fn cursor(&self) -> Option<A>;
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

impl Allocated<Ipv6Addr> for Allocations {
    fn is_allocated(&self, ip: Ipv6Addr) -> bool {
        self.addresses6.contains_key(&ip)
    }

    fn holder(&self, ip: Ipv6Addr) -> Option<&str> {
        self.addresses6.get(&ip).map(String::as_str)
    }

    fn cursor(&self) -> Option<Ipv6Addr> {
        self.last_allocated6
    }
}

/// Choose the address for a new endpoint on `net`, whose addresses `allocated` tells: `requested` if it is free
/// and usable, else the next free one.
pub fn allocate(
    net: &Network,
    allocated: &impl Allocated,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, String> {
    let (Some(subnet), Some(gateway)) = (net.subnet, net.gateway) else {
        return Err(format!("network {} has no IPv4 subnet", net.name));
    };
    if let Some(ip) = requested {
        if !is_host(&subnet, ip) {
            return Err(format!(
                "address {ip} is outside network {}'s subnet {} (or is its network/broadcast address); \
                 pick one between {} and {}",
                net.name,
                subnet,
                first_host(&subnet),
                last_host(&subnet)
            ));
        }
        if ip == gateway {
            return Err(format!(
                "address {ip} is the gateway of network {}; pick another address",
                net.name
            ));
        }
        check_free(allocated, ip)?;
        return Ok(ip);
    }
    let (first, last) = (
        u32::from(first_host(&subnet)),
        u32::from(last_host(&subnet)),
    );
    next_fit(
        u128::from(first),
        u128::from(last),
        allocated.cursor().map(|c| u128::from(u32::from(c))),
        |n| {
            let ip = Ipv4Addr::from(u32::try_from(n).unwrap_or_default());
            ip != gateway && !allocated.is_allocated(ip)
        },
    )
    .and_then(|n| u32::try_from(n).ok())
    .map(Ipv4Addr::from)
    .ok_or_else(|| {
        format!(
            "network {} has no free address left in {}; remove a sandbox or create a larger network",
            net.name, subnet
        )
    })
}

/// Refuse a requested address that `allocated` holds, naming who holds it.
fn check_free<A: Copy + std::fmt::Display>(
    allocated: &impl Allocated<A>,
    ip: A,
) -> Result<(), String> {
    if !allocated.is_allocated(ip) {
        return Ok(());
    }
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
    Err(format!(
        "address {ip} is already in use{by}; pick another address or leave it out"
    ))
}

/// The first address from `first` to `last` (as numbers, either family) that `free` accepts, searching next
/// fit, like Docker's and host-local's allocators: from just after `cursor` (the address handed out last) to
/// `last`, then from `first`. So a removed sandbox's address is not given out again at once (its veth may
/// still be going away).
fn next_fit(
    first: u128,
    last: u128,
    cursor: Option<u128>,
    free: impl Fn(u128) -> bool,
) -> Option<u128> {
    let after = cursor
        .filter(|c| (first..last).contains(c))
        .map_or(first, |c| c + 1);
    (after..=last).chain(first..after).find(|n| free(*n))
}

/// Choose the IPv6 address for a new endpoint on network `name`, whose IPv6 part is `net`: `requested` if
/// it is free and usable, else the next free one from `::2` (the subnet-router anycast address `::0` and the
/// gateway are never handed out).
pub fn allocate6(
    name: &str,
    net: &Net6,
    allocated: &impl Allocated<Ipv6Addr>,
    requested: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, String> {
    let subnet = net.subnet;
    let (first, last) = (
        u128::from(subnet.network()) + 1,
        u128::from(subnet.broadcast()),
    );
    if let Some(ip) = requested {
        if !subnet.contains(&ip) || ip == subnet.network() {
            return Err(format!(
                "address {ip} is outside network {name}'s IPv6 subnet {subnet} (or is its subnet-router \
                 address); pick one between {} and {}",
                Ipv6Addr::from(first),
                Ipv6Addr::from(last)
            ));
        }
        if ip == net.gateway {
            return Err(format!(
                "address {ip} is the IPv6 gateway of network {name}; pick another address"
            ));
        }
        check_free(allocated, ip)?;
        return Ok(ip);
    }
    next_fit(first, last, allocated.cursor().map(u128::from), |n| {
        let ip = Ipv6Addr::from(n);
        ip != net.gateway && !allocated.is_allocated(ip)
    })
    .map(Ipv6Addr::from)
    .ok_or_else(|| {
        format!(
            "network {name} has no free IPv6 address left in {subnet}; remove a sandbox or create a larger \
             network"
        )
    })
}

/// Prefix lengths an IPv6 subnet may have: from a /48 (a whole ULA prefix) to a /120 (256 addresses).
pub const IPV6_PREFIXES: std::ops::RangeInclusive<u8> = 48..=120;

/// Prefix length of IPv6 subnets nsnet picks itself: a /64 of the host's ULA prefix.
pub const POOL_PREFIX6: u8 = 64;

/// IPv6 ranges a container network cannot be, with why.
const SPECIAL_USE6: [(&str, &str); 4] = [
    (
        "::/8",
        "the range of the unspecified, loopback and IPv4-mapped addresses",
    ),
    (
        "fe80::/10",
        "the link-local range, which every interface has to itself",
    ),
    ("fec0::/10", "the deprecated site-local range (RFC 3879)"),
    (
        "ff00::/8",
        "the multicast range, which no interface can hold as its address",
    ),
];

/// Whether two IPv6 subnets share any address.
pub fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parse an IPv6 `--subnet` value: a /48 to /120 network address outside the special-use ranges.
pub fn parse_subnet6(text: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = text.parse().map_err(|_| {
        format!("subnet '{text}' is not an IPv6 CIDR; write it like fd00:89:7::/64")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "subnet '{text}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    if !IPV6_PREFIXES.contains(&net.prefix_len()) {
        return Err(format!(
            "subnet '{text}' has prefix /{}; an IPv6 subnet takes a prefix from /{} to /{} (/64 is usual)",
            net.prefix_len(),
            IPV6_PREFIXES.start(),
            IPV6_PREFIXES.end()
        ));
    }
    match SPECIAL_USE6
        .iter()
        .find(|(r, _)| overlaps6(&net, &r.parse().unwrap_or_default()))
    {
        Some((range, why)) => Err(format!(
            "subnet '{net}' reaches into {range}, {why}; use a unique local range under fd00::/8 (or a \
             global prefix routed to this host)"
        )),
        None => Ok(net),
    }
}

/// The IPv6 gateway a subnet gets by default: its `::1`.
pub fn default_gateway6(subnet: &Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Check an IPv6 `--gateway` for a subnet: inside it, and not its subnet-router anycast address (`::0`).
pub fn check_gateway6(subnet: &Ipv6Net, gw: Ipv6Addr) -> Result<(), String> {
    if !subnet.contains(&gw) || gw == subnet.network() {
        return Err(format!(
            "gateway {gw} is not a host address of subnet {subnet}; pick one between {} and {}",
            default_gateway6(subnet),
            subnet.broadcast()
        ));
    }
    Ok(())
}

/// The host's unique local /48 (RFC 4193): `fd` and a 40-bit Global ID, the low 40 bits of the SHA-1 of
/// `seed` (the caller's: this host's machine ID and the state dir's tag), so each host, and each state dir
/// on it, gets its own prefix, the same every time (as Docker 27 derives one from its engine ID).
pub fn ula_prefix(seed: &[u8]) -> Ipv6Net {
    let digest = sha1(seed);
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[15..20]);
    Ipv6Net::new(Ipv6Addr::from(octets), 48).unwrap_or_default()
}

/// The first /64 of `prefix` (subnet IDs 0 up) that overlaps nothing in `taken` (host addresses and routes,
/// other networks). A default route (`::/0`) is not in the way: every subnet would overlap it.
pub fn pick_subnet6(prefix: Ipv6Net, taken: &[Ipv6Net]) -> Option<Ipv6Net> {
    let taken: Vec<&Ipv6Net> = taken.iter().filter(|t| t.prefix_len() > 0).collect();
    prefix
        .subnets(POOL_PREFIX6)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| overlaps6(candidate, t)))
}

/// SHA-1 (FIPS 180-4) of `data`: only to spread a seed over a ULA Global ID as RFC 4193 §3.2.2 describes,
/// not for anything that needs a secure hash.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut message = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
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
    fn sha1_matches_the_standard_vectors() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn the_ula_prefix_is_a_stable_fd_48_per_seed() {
        let a = ula_prefix(b"machine-a/tag");
        assert_eq!(a, ula_prefix(b"machine-a/tag"));
        assert_ne!(a, ula_prefix(b"machine-b/tag"));
        assert_eq!(a.prefix_len(), 48);
        assert_eq!(a.network().octets()[0], 0xfd);
        assert_eq!(a.trunc(), a);
        // The Global ID is the digest's low 40 bits.
        let d = sha1(b"abc");
        assert_eq!(&ula_prefix(b"abc").network().octets()[1..6], &d[15..20]);
    }

    fn cidr6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn picks_the_first_free_64_of_the_prefix() {
        let p = cidr6("fd12:3456:789a::/48");
        assert_eq!(pick_subnet6(p, &[]), Some(cidr6("fd12:3456:789a::/64")));
        let taken = [
            cidr6("::/0"),
            cidr6("fe80::/64"),
            cidr6("fd12:3456:789a::/64"),
            cidr6("fd12:3456:789a:1::5/128"),
            cidr6("fd12:3456:789a:2::/63"),
        ];
        assert_eq!(
            pick_subnet6(p, &taken),
            Some(cidr6("fd12:3456:789a:4::/64"))
        );
        // A host route over the whole prefix leaves nothing.
        assert_eq!(pick_subnet6(p, &[cidr6("fd00::/8")]), None);
    }

    #[test]
    fn ipv6_subnet_parsing() {
        assert_eq!(parse_subnet6("fd00:1::/64").unwrap(), cidr6("fd00:1::/64"));
        assert!(parse_subnet6("2001:db8::/48").is_ok());
        assert!(parse_subnet6("fd00::/120").is_ok());
        assert!(parse_subnet6("fd00::1/64")
            .unwrap_err()
            .contains("did you mean fd00::/64"));
        for (bad, why) in [
            ("fd00::/121", "/48 to /120"),
            ("fd00::/40", "/48 to /120"),
            ("fe80::/64", "link-local"),
            ("ff02::/64", "multicast"),
            ("fec0::/64", "site-local"),
            ("::/64", "unspecified"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("10.0.0.0/24", "not an IPv6 CIDR"),
            ("fd00::", "not an IPv6 CIDR"),
        ] {
            let e = parse_subnet6(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn ipv6_gateway_rules() {
        let s = cidr6("fd00:1::/64");
        assert_eq!(
            default_gateway6(&s),
            "fd00:1::1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(check_gateway6(&s, "fd00:1::ffff".parse().unwrap()).is_ok());
        assert!(check_gateway6(&s, "fd00:1::".parse().unwrap()).is_err());
        assert!(check_gateway6(&s, "fd00:2::1".parse().unwrap()).is_err());
    }

    #[test]
    fn ipv6_allocation_is_next_fit_from_2_and_never_twice() {
        let n6 = Net6 {
            subnet: cidr6("fd00::/125"), // ::1-::7, gateway ::1
            gateway: "fd00::1".parse().unwrap(),
            nat: true,
        };
        let mut a = Allocations::default();
        let mut got = vec![];
        while let Ok(ip) = allocate6("n", &n6, &a, None) {
            a.addresses6.insert(ip, format!("s{ip}"));
            a.last_allocated6 = Some(ip);
            got.push(ip.segments()[7]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6, 7]);
        assert!(allocate6("n", &n6, &a, None)
            .unwrap_err()
            .contains("no free IPv6 address"));
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        a.addresses6.remove(&ip("fd00::4"));
        a.addresses6.remove(&ip("fd00::3"));
        a.last_allocated6 = Some(ip("fd00::3"));
        assert_eq!(allocate6("n", &n6, &a, None).unwrap(), ip("fd00::4"));
        a.last_allocated6 = Some(ip("fd00::7"));
        assert_eq!(allocate6("n", &n6, &a, None).unwrap(), ip("fd00::3"));
        // Asked for: free, taken, the gateway, the subnet-router address, outside.
        let mut a = Allocations::default();
        a.addresses6.insert(ip("fd00::5"), "a".into());
        a.addresses6.insert(ip("fd00::6"), "~nsrt1".into());
        assert_eq!(
            allocate6("n", &n6, &a, Some(ip("fd00::7"))).unwrap(),
            ip("fd00::7")
        );
        for (asked, why) in [
            ("fd00::5", "in use by sandbox a"),
            ("fd00::6", "retired moments ago"),
            ("fd00::1", "gateway"),
            ("fd00::", "outside"),
            ("fd00::8", "outside"),
        ] {
            let e = allocate6("n", &n6, &a, Some(ip(asked))).unwrap_err();
            assert!(e.contains(why), "{asked}: {e}");
        }
        // A /64 hands out ::2 first.
        let big = Net6 {
            subnet: cidr6("fd00:9::/64"),
            gateway: "fd00:9::1".parse().unwrap(),
            nat: true,
        };
        assert_eq!(
            allocate6("n", &big, &Allocations::default(), None).unwrap(),
            ip("fd00:9::2")
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
