//! Sockets the host's own processes hold, read from `/proc/net/{tcp,udp}{,6}` (which show the reader's
//! network namespace): a published port must not silently shadow one of them.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
};

use super::KernelError;
use crate::portmap::Proto;

/// A socket bound on the host: its IPv4 address (`None` for any address, including IPv6 `::`) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub address: Option<Ipv4Addr>,
    pub port: u16,
}

/// Whether a socket of this namespace holds `port` on `ip` (any address when `None`), as a bind probe: TCP
/// with SO_REUSEADDR, which the kernel refuses only for a listener (or a socket bound without it), UDP without
/// it, which any bound socket refuses. An address that is not the host's holds nothing. An IPv6 address is
/// probed with `IPV6_V6ONLY`, so only IPv6 sockets count (and `::` is every IPv6 address).
pub fn port_in_use(proto: Proto, ip: Option<IpAddr>, port: u16) -> Result<bool, KernelError> {
    let kind = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let family = match ip {
        Some(IpAddr::V6(_)) => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| KernelError::io("open a probe socket", e.into()))?;
    if proto == Proto::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| KernelError::io("set SO_REUSEADDR", e.into()))?;
    }
    let bound = match ip {
        Some(IpAddr::V6(ip)) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                .map_err(|e| KernelError::io("set IPV6_V6ONLY", e.into()))?;
            bind(
                fd.as_raw_fd(),
                &SockaddrIn6::from(SocketAddrV6::new(ip, port, 0, 0)),
            )
        }
        Some(IpAddr::V4(ip)) => bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(ip, port)),
        ),
        None => bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        ),
    };
    match bound {
        Ok(()) => Ok(false),
        Err(Errno::EADDRINUSE) => Ok(true),
        Err(Errno::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(KernelError::io(
            format!("probe port {port}/{proto}"),
            e.into(),
        )),
    }
}

/// TCP sockets in LISTEN, or every bound UDP socket, in this namespace.
pub fn bound(proto: Proto) -> Result<Vec<Bound>, KernelError> {
    let (files, state) = match proto {
        Proto::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], Some("0A")),
        Proto::Udp => (["/proc/net/udp", "/proc/net/udp6"], None),
    };
    let mut out = Vec::new();
    for file in files {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            // No IPv6 in this kernel: nothing bound there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(KernelError::io(format!("read {file}"), e)),
        };
        out.extend(parse(&text, state));
    }
    Ok(out)
}

/// Parse one `/proc/net/*` table; keep rows in `state` (all rows when `None`).
fn parse(text: &str, state: Option<&str>) -> Vec<Bound> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            if state.is_some_and(|s| s != st) {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let address = match addr.len() {
                // IPv4: one 32-bit word in host (little-endian) order.
                8 => Some(Ipv4Addr::from(
                    u32::from_str_radix(addr, 16).ok()?.swap_bytes(),
                )),
                // IPv6: four 32-bit words; `::` means any address, `::ffff:a.b.c.d` an IPv4 one.
                32 => {
                    if addr.chars().all(|c| c == '0') {
                        None
                    } else if &addr[..16] == "0000000000000000" && &addr[16..24] == "FFFF0000" {
                        Some(Ipv4Addr::from(
                            u32::from_str_radix(&addr[24..], 16).ok()?.swap_bytes(),
                        ))
                    } else {
                        return None;
                    }
                }
                _ => return None,
            };
            Some(Bound {
                address: address.filter(|a| !a.is_unspecified()),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
           2: 3001000A:0016 1A01000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        let got = parse(tcp, Some("0A"));
        assert_eq!(
            got,
            vec![
                Bound {
                    address: Some(Ipv4Addr::LOCALHOST),
                    port: 8080
                },
                Bound {
                    address: None,
                    port: 22
                },
            ]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A\n\
           1: 0000000000000000FFFF00003001000A:1F92 00000000000000000000000000000000:0000 0A\n\
           2: 20010DB8000000000000000000000001:1F93 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(
            parse(tcp6, Some("0A")),
            vec![
                Bound {
                    address: None,
                    port: 8081
                },
                Bound {
                    address: Some(Ipv4Addr::new(10, 0, 1, 48)),
                    port: 8082
                },
            ]
        );
    }
}
