//! A network's ledger index: the allocated addresses and the host ports in use, as sorted numbers in a small
//! binary file (`networks/NAME.index`), so a join reads a few KiB of numbers instead of parsing a line per
//! sandbox.
//!
//! The index is a cache, never the truth. It is stamped with the identity of the ledger file it describes
//! (inode, length, modification time) and carries a checksum; a stale, torn or missing index is simply not
//! used, and the next command that parses the ledger writes a fresh one. The store keeps it current as lines
//! are appended to the ledger (it applies the same lines to the numbers). Nothing is fsynced: losing it
//! costs one parse.
//!
//! Format 2 added the IPv6 addresses of dual-stack networks (a section of 128-bit numbers and their own
//! cursor); an index of format 1 reads as no index, and is rebuilt.
//!
//! It knows *that* an address or a host port is taken, not by whom or on which host address: a join whose
//! request touches anything the index shows taken reads the ledgers, which say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ledger::{worth_compacting, Entry, Ledger};
use crate::ipam::Allocated;
use crate::portmap::{PortMapping, Proto};

/// The file identity an index was built for: inode, length, modification time (seconds, nanoseconds).
pub type Stamp = [u64; 4];

const MAGIC: u64 = u64::from_le_bytes(*b"nsnetix2");
/// Words before the numbers: magic, stamp (4), cursor, lines, address count, port count, IPv6 cursor (3:
/// present, high and low half), IPv6 address count, checksum.
const HEADER: usize = 14;

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub stamp: Stamp,
    cursor: Option<Ipv4Addr>,
    lines: u64,
    /// Allocated addresses, sorted, each once.
    addresses: Vec<u32>,
    cursor6: Option<Ipv6Addr>,
    /// Allocated IPv6 addresses, sorted, each once.
    addresses6: Vec<u128>,
    /// Each live mapping's host ports as `protocol << 16 | port`, sorted; a port two mappings share (on
    /// different host addresses) is in twice, so removing one mapping leaves the other's.
    ports: Vec<u32>,
}

fn key(protocol: Proto, port: u16) -> u32 {
    let p = match protocol {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    };
    p << 16 | u32::from(port)
}

fn keys(m: &PortMapping) -> impl Iterator<Item = u32> + '_ {
    m.host_ports().map(|p| key(m.protocol, p))
}

impl Index {
    /// The index of a parsed ledger.
    pub fn of(ledger: &Ledger, stamp: Stamp) -> Index {
        let addresses = ledger.holders().map(|(ip, _)| u32::from(ip)).collect();
        let mut ports: Vec<u32> = ledger.published().flat_map(|(_, m)| keys(m)).collect();
        ports.sort_unstable();
        Index {
            stamp,
            cursor: Allocated::<Ipv4Addr>::cursor(ledger),
            lines: ledger.lines() as u64,
            addresses,
            cursor6: ledger.cursor6(),
            addresses6: ledger.holders6().map(|(ip, _)| u128::from(ip)).collect(),
            ports,
        }
    }

    /// Whether `ip` is allocated.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.addresses.binary_search(&u32::from(ip)).is_ok()
    }

    /// Whether IPv6 `ip` is allocated.
    pub fn is_allocated6(&self, ip: Ipv6Addr) -> bool {
        self.addresses6.binary_search(&u128::from(ip)).is_ok()
    }

    /// How many addresses are allocated.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    /// How many IPv6 addresses are allocated.
    pub fn addresses6(&self) -> usize {
        self.addresses6.len()
    }

    /// The address handed out last.
    pub fn cursor(&self) -> Option<Ipv4Addr> {
        self.cursor
    }

    /// Whether a published mapping uses any host port of `m` (on any host address, so it may or may not
    /// conflict: the ledger says).
    pub fn port_taken(&self, m: &PortMapping) -> bool {
        keys(m).any(|k| self.ports.binary_search(&k).is_ok())
    }

    /// Apply lines appended to the ledger. Errors name the bad line (the caller then drops the index).
    pub fn follow(&mut self, text: &str) -> Result<(), String> {
        for line in text.lines() {
            match Entry::parse(line)? {
                Entry::Hold(IpAddr::V4(ip), _) => {
                    let n = u32::from(ip);
                    if let Err(i) = self.addresses.binary_search(&n) {
                        self.addresses.insert(i, n);
                    }
                    self.cursor = Some(ip);
                }
                Entry::Hold(IpAddr::V6(ip), _) => {
                    let n = u128::from(ip);
                    if let Err(i) = self.addresses6.binary_search(&n) {
                        self.addresses6.insert(i, n);
                    }
                    self.cursor6 = Some(ip);
                }
                Entry::Free(IpAddr::V4(ip)) => {
                    if let Ok(i) = self.addresses.binary_search(&u32::from(ip)) {
                        self.addresses.remove(i);
                    }
                }
                Entry::Free(IpAddr::V6(ip)) => {
                    if let Ok(i) = self.addresses6.binary_search(&u128::from(ip)) {
                        self.addresses6.remove(i);
                    }
                }
                Entry::Publish(_, m) => {
                    for k in keys(&m) {
                        let i = self.ports.partition_point(|&p| p < k);
                        self.ports.insert(i, k);
                    }
                }
                Entry::Unpublish(_, m) => {
                    for k in keys(&m) {
                        if let Ok(i) = self.ports.binary_search(&k) {
                            self.ports.remove(i);
                        }
                    }
                }
                Entry::Cursor(IpAddr::V4(ip)) => self.cursor = Some(ip),
                Entry::Cursor(IpAddr::V6(ip)) => self.cursor6 = Some(ip),
            }
            self.lines += 1;
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let c6 = self.cursor6.map_or(0, u128::from);
        let mut words = vec![
            MAGIC,
            self.stamp[0],
            self.stamp[1],
            self.stamp[2],
            self.stamp[3],
            self.cursor.map_or(0, |c| u64::from(u32::from(c)) + 1),
            self.lines,
            self.addresses.len() as u64,
            self.ports.len() as u64,
            u64::from(self.cursor6.is_some()),
            high(c6),
            low(c6),
            self.addresses6.len() as u64,
            0,
        ];
        let mut out = Vec::with_capacity(
            8 * HEADER + 4 * (self.addresses.len() + self.ports.len()) + 16 * self.addresses6.len(),
        );
        words[HEADER - 1] = checksum(
            &words[..HEADER - 1],
            &self.addresses,
            &self.ports,
            &self.addresses6,
        );
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for n in self.addresses.iter().chain(&self.ports) {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in &self.addresses6 {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Read a file's bytes; `None` unless they are a whole, intact index.
    pub fn decode(bytes: &[u8]) -> Option<Index> {
        let (head, rest) = bytes.split_at_checked(8 * HEADER)?;
        let words: Vec<u64> = head
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if words[0] != MAGIC {
            return None;
        }
        let (na, np, na6) = (
            usize::try_from(words[7]).ok()?,
            usize::try_from(words[8]).ok()?,
            usize::try_from(words[12]).ok()?,
        );
        let short = 4usize.checked_mul(na.checked_add(np)?)?;
        if rest.len() != short.checked_add(16usize.checked_mul(na6)?)? {
            return None;
        }
        let (rest, rest6) = rest.split_at(short);
        let numbers: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let addresses6: Vec<u128> = rest6
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let (addresses, ports) = numbers.split_at(na);
        if checksum(&words[..HEADER - 1], addresses, ports, &addresses6) != words[HEADER - 1] {
            return None;
        }
        let cursor6 = match words[9] {
            0 => None,
            1 => Some(Ipv6Addr::from(
                u128::from(words[10]) << 64 | u128::from(words[11]),
            )),
            _ => return None,
        };
        let cursor = match words[5] {
            0 => None,
            c => Some(Ipv4Addr::from(u32::try_from(c - 1).ok()?)),
        };
        Some(Index {
            stamp: [words[1], words[2], words[3], words[4]],
            cursor,
            lines: words[6],
            addresses: addresses.to_vec(),
            cursor6,
            addresses6,
            ports: ports.to_vec(),
        })
    }

    /// Whether rewriting the ledger would drop more lines than it keeps, by the ledger's own rule. The index
    /// counts host ports, not mappings, so a port range counts as many lines as ports: compaction may come a
    /// little later than [`Ledger::wants_compaction`] would have it, never sooner.
    pub fn wants_compaction(&self) -> bool {
        let lines = usize::try_from(self.lines).unwrap_or(usize::MAX);
        worth_compacting(
            lines,
            self.addresses.len() + self.addresses6.len() + self.ports.len(),
        )
    }
}

impl Allocated for Index {
    fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        Index::is_allocated(self, ip)
    }

    fn cursor(&self) -> Option<Ipv4Addr> {
        self.cursor
    }
}

impl Allocated<Ipv6Addr> for Index {
    fn is_allocated(&self, ip: Ipv6Addr) -> bool {
        self.is_allocated6(ip)
    }

    fn cursor(&self) -> Option<Ipv6Addr> {
        self.cursor6
    }
}

/// FNV-1a over the words, 64 bits at a time: it catches a torn or truncated write, nothing more.
fn checksum(head: &[u64], addresses: &[u32], ports: &[u32], addresses6: &[u128]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |w: u64| {
        h ^= w;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    head.iter().for_each(|&w| mix(w));
    addresses.iter().for_each(|&n| mix(u64::from(n)));
    mix(u64::MAX);
    ports.iter().for_each(|&n| mix(u64::from(n)));
    mix(u64::MAX);
    addresses6.iter().for_each(|&n| {
        mix(high(n));
        mix(low(n));
    });
    h
}

/// The high 64 bits of `n`.
fn high(n: u128) -> u64 {
    u64::try_from(n >> 64).unwrap_or_default()
}

/// The low 64 bits of `n`.
fn low(n: u128) -> u64 {
    u64::try_from(n & u128::from(u64::MAX)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(text: &str) -> Ledger {
        Ledger::parse(text.to_string()).unwrap()
    }

    const TEXT: &str = "+ip 10.89.0.2 a\n+port a tcp * 8080 80 1\n+ip 10.89.0.3 b\n\
                        +port b tcp 127.0.0.1 8080 80 1\n+port b udp * 53 53 2\n";

    #[test]
    fn follows_the_ledger_line_by_line() {
        // The index of a ledger, then of that ledger with more lines, equals the first one following them.
        let more =
            "-ip 10.89.0.2\n-port a tcp * 8080 80 1\n+ip 10.89.0.9 c\n+port c tcp * 9000 90 3\n\
                    cursor 10.89.0.4\n+ip 10.89.0.2 d\n-port b udp * 53 53 2\n";
        let mut followed = Index::of(&ledger(TEXT), [0; 4]);
        followed.follow(more).unwrap();
        let whole = Index::of(&ledger(&format!("{TEXT}{more}")), [0; 4]);
        assert_eq!(followed, whole);
        assert!(
            whole.is_allocated(Ipv4Addr::new(10, 89, 0, 2))
                && !whole.is_allocated(Ipv4Addr::new(10, 89, 0, 4))
        );
        assert_eq!(whole.addresses(), 3);
        assert_eq!(whole.cursor(), Some(Ipv4Addr::new(10, 89, 0, 2)));
    }

    #[test]
    fn a_shared_port_stays_taken_until_its_last_mapping_goes() {
        let mut ix = Index::of(&ledger(TEXT), [0; 4]);
        let tcp8080 = PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 1,
            count: 1,
            protocol: Proto::Tcp,
        };
        let udp = |port| PortMapping {
            protocol: Proto::Udp,
            host_port: port,
            ..tcp8080
        };
        assert!(ix.port_taken(&tcp8080));
        assert!(ix.port_taken(&udp(54)) && !ix.port_taken(&udp(55)) && !ix.port_taken(&udp(8080)));
        ix.follow("-port a tcp * 8080 80 1\n").unwrap();
        assert!(ix.port_taken(&tcp8080));
        ix.follow("-port b tcp 127.0.0.1 8080 80 1\n").unwrap();
        assert!(!ix.port_taken(&tcp8080));
        assert!(ix.follow("+port x sctp * 1 1 1\n").is_err());
    }

    #[test]
    fn ipv6_addresses_and_ports_are_followed_too() {
        let dual = "+ip 10.89.0.2 a\n+ip fd00::2 a\n+port a tcp * 8080 80 1\n\
                    +port a tcp ::1 9090 90 1\n+ip fd00::3 b\n";
        let more = "-ip fd00::2\n+ip fd00::9 c\ncursor fd00::4\n-port a tcp ::1 9090 90 1\n\
                    +port c udp 2001:db8::5 53 53 1\n";
        let mut followed = Index::of(&ledger(dual), [0; 4]);
        followed.follow(more).unwrap();
        let whole = Index::of(&ledger(&format!("{dual}{more}")), [0; 4]);
        assert_eq!(followed, whole);
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert!(whole.is_allocated6(ip("fd00::3")) && whole.is_allocated6(ip("fd00::9")));
        assert!(!whole.is_allocated6(ip("fd00::2")));
        assert!(whole.is_allocated(Ipv4Addr::new(10, 89, 0, 2)));
        assert_eq!(Allocated::<Ipv6Addr>::cursor(&whole), Some(ip("fd00::4")));
        assert_eq!(whole.cursor(), Some(Ipv4Addr::new(10, 89, 0, 2)));
        let udp53 = PortMapping {
            host_ip: None,
            host_port: 53,
            container_port: 53,
            count: 1,
            protocol: Proto::Udp,
        };
        assert!(whole.port_taken(&udp53));
        let tcp9090 = PortMapping {
            host_port: 9090,
            protocol: Proto::Tcp,
            ..udp53
        };
        assert!(!whole.port_taken(&tcp9090));
        let bytes = whole.encode();
        assert_eq!(Index::decode(&bytes), Some(whole.clone()));
        let last = bytes.len() - 1;
        let mut bad = bytes.clone();
        bad[last] ^= 1;
        assert_eq!(Index::decode(&bad), None, "a flipped IPv6 address");
        assert_eq!(Index::decode(&bytes[..last]), None);
        // An index of the format before IPv6 is no index.
        let mut old = bytes;
        old[..8].copy_from_slice(b"nsnetix1");
        assert_eq!(Index::decode(&old), None);
    }

    #[test]
    fn round_trips_and_refuses_anything_torn() {
        let mut ix = Index::of(&ledger(TEXT), [7, 100, 3, 4]);
        ix.follow("cursor 10.89.0.200\n").unwrap();
        let bytes = ix.encode();
        assert_eq!(Index::decode(&bytes), Some(ix));
        assert_eq!(Index::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Index::decode(&[]), None);
        for at in [0, 9, 8 * HEADER + 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(Index::decode(&bad), None, "flipped byte {at}");
        }
    }
}
