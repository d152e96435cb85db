//! nftables tracing of one probe packet (`nsnet explain --probe`).
//!
//! [`Tracer::start`] subscribes to the kernel's trace events (nfnetlink group `NFNLGRP_NFTRACE`) first, then
//! adds two short-lived tables of nsnet's own, `ip nsnet_probe_PID` (`ip6` for an IPv6 probe) and
//! `bridge nsnet_probe_PID`, whose only rules set `meta nftrace` on packets of the probe's exact addresses,
//! protocol and ports, at a priority before every other chain. Only that packet is traced; nothing else in the ruleset is touched. The tables go when
//! the tracer is dropped (on error too), and a later probe deletes those of a probe that was killed.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::FirewallError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_TRACE: u16 = 17;
const NFNLGRP_NFTRACE: u32 = 9;
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The prefix of the probe tables' names; the rest is the probing process's pid.
const TABLE_PREFIX: &str = "nsnet_probe_";

/// The packet to trace: an IPv4 or IPv6 5-tuple (ports for TCP and UDP, an echo request for ICMP or ICMPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceMatch {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: &'static str,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl TraceMatch {
    /// The nftables family of the packet's IP layer: `ip` or `ip6`.
    pub fn family(&self) -> &'static str {
        if self.dst.is_ipv6() {
            "ip6"
        } else {
            "ip"
        }
    }

    /// The match as nft rule text.
    pub fn text(&self) -> String {
        let ip = self.family();
        let mut out = format!("{ip} saddr {} {ip} daddr {}", self.src, self.dst);
        if self.protocol == "icmp" {
            out.push_str(if self.dst.is_ipv6() {
                " icmpv6 type echo-request"
            } else {
                " icmp type echo-request"
            });
        } else {
            out.push_str(&format!(" meta l4proto {}", self.protocol));
            if let Some(p) = self.sport {
                out.push_str(&format!(" th sport {p}"));
            }
            if let Some(p) = self.dport {
                out.push_str(&format!(" th dport {p}"));
            }
        }
        out
    }
}

/// One trace event: a rule the packet met (and its verdict), a chain's policy, or a return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// The same for every event of one packet (skb).
    pub id: u32,
    /// `ip`, `bridge`, `inet`, ...
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    /// `rule`, `policy` or `return`.
    pub kind: String,
    /// `accept`, `drop`, `continue`, `jump CHAIN`, ...
    pub verdict: String,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
}

/// A trace in progress; dropping it removes its tables.
pub struct Tracer {
    sock: Socket,
    table: String,
    /// The IP family of its tables besides `bridge`: `ip` or `ip6`.
    family: &'static str,
}

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unknown",
    }
}

fn verdict_name(code: i32, chain: Option<&str>) -> String {
    let target = chain.unwrap_or("?");
    match code {
        0 => "drop".into(),
        1 => "accept".into(),
        2 => "stolen".into(),
        3 => "queue".into(),
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => format!("jump {target}"),
        -4 => format!("goto {target}"),
        -5 => "return".into(),
        n => format!("verdict {n}"),
    }
}

/// The attributes of a netlink message body: (type, payload).
fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        let next = len.div_ceil(4) * 4;
        data = data.get(next..).unwrap_or(&[]);
    }
    out
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parse one datagram of trace messages (anything else in it is skipped).
pub fn parse(data: &[u8]) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 20 <= data.len() {
        let Some(len) = data
            .get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .and_then(|l| usize::try_from(l).ok())
        else {
            break;
        };
        if len < 20 || off + len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE {
            let family = family_name(data[off + 16]);
            let mut e = TraceEvent {
                family: family.into(),
                ..Default::default()
            };
            let (mut code, mut target) = (None, None);
            let mut policy = None;
            let mut trace_type = 0;
            for (t, p) in attributes(&data[off + 20..off + len]) {
                match t {
                    NFTA_TRACE_TABLE => e.table = string(p),
                    NFTA_TRACE_CHAIN => e.chain = string(p),
                    NFTA_TRACE_RULE_HANDLE => e.handle = be_u64(p),
                    NFTA_TRACE_TYPE => trace_type = be_u32(p).unwrap_or(0),
                    NFTA_TRACE_ID => e.id = be_u32(p).unwrap_or(0),
                    NFTA_TRACE_IIF => e.iif = be_u32(p),
                    NFTA_TRACE_OIF => e.oif = be_u32(p),
                    NFTA_TRACE_POLICY => policy = be_u32(p),
                    NFTA_TRACE_VERDICT => {
                        for (vt, vp) in attributes(p) {
                            match vt {
                                NFTA_VERDICT_CODE => {
                                    code = be_u32(vp).map(|c| i32::from_ne_bytes(c.to_ne_bytes()))
                                }
                                NFTA_VERDICT_CHAIN => target = Some(string(vp)),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            e.kind = match trace_type {
                1 => "policy",
                2 => "return",
                3 => "rule",
                _ => "unknown",
            }
            .into();
            e.verdict = match (code, policy) {
                (Some(c), _) => verdict_name(c, target.as_deref()),
                (None, Some(p)) => verdict_name(i32::try_from(p).unwrap_or(-99), None),
                (None, None) => String::new(),
            };
            out.push(e);
        }
        off += len.div_ceil(4) * 4;
    }
    out
}

/// Delete the probe tables of probes that are no longer running (killed before they cleaned up).
fn delete_stale_tables() {
    let Ok(text) = super::run_tool("nft", &["list", "tables"], None) else {
        return;
    };
    for line in text.lines() {
        let mut words = line.split_whitespace().skip(1);
        let (Some(family), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = super::run_tool("nft", &["delete", "table", family, name], None);
        }
    }
}

impl Tracer {
    /// Subscribe to trace events, then add the tables that mark the packets `m` describes.
    pub fn start(m: &TraceMatch) -> Result<Tracer, FirewallError> {
        delete_stale_tables();
        let refused = |e: io::Error| FirewallError::Refused {
            tool: "nf_tables trace",
            message: e.to_string(),
        };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(refused)?;
        sock.bind_auto().map_err(refused)?;
        sock.add_membership(NFNLGRP_NFTRACE).map_err(refused)?;
        sock.set_rx_buf_sz(1 << 20).map_err(refused)?;
        let table = format!("{TABLE_PREFIX}{}", std::process::id());
        let tracer = Tracer {
            sock,
            table,
            family: m.family(),
        };
        let rule = m.text();
        let script = format!(
            "table {family} {t} {{\n\
             \tchain pre {{ type filter hook prerouting priority -350; policy accept; {rule} meta nftrace set 1; }}\n\
             \tchain out {{ type filter hook output priority -350; policy accept; {rule} meta nftrace set 1; }}\n\
             }}\n\
             table bridge {t} {{\n\
             \tchain pre {{ type filter hook prerouting priority -350; policy accept; {rule} meta nftrace set 1; }}\n\
             }}\n",
            t = tracer.table,
            family = m.family()
        );
        // On failure the tracer's drop deletes whatever part was made.
        super::run_tool("nft", &["-f", "-"], Some(&script))?;
        Ok(tracer)
    }

    /// The events received so far, the probe tables' own left out; then the tables go.
    pub fn finish(self) -> Vec<TraceEvent> {
        let mut out = Vec::new();
        // Events are sent as the packet passes each hook; the probe has finished by now, so they are queued.
        let _ = self.sock.set_non_blocking(true);
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.sock.recv(&mut buf, 0) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend(parse(&buf[..n.min(buf.len())])),
            }
        }
        out.retain(|e| e.table != self.table);
        out
    }

    /// The name of the probe tables.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        for family in [self.family, "bridge"] {
            let _ = super::run_tool(
                "nft",
                &["delete", "table", family, self.table.as_str()],
                None,
            );
        }
    }
}

/// The rules of one chain by handle, as `nft -a` prints them: (handle, text).
pub fn chain_rules(family: &str, table: &str, chain: &str) -> Vec<(u64, String)> {
    let Ok(text) = super::run_tool("nft", &["-a", "list", "chain", family, table, chain], None)
    else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            Some((handle.trim().parse().ok()?, rule.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(4 + payload.len())
            .unwrap()
            .to_ne_bytes()
            .to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(payload);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn a_trace_message_parses() {
        let mut body = Vec::new();
        body.extend(attr(NFTA_TRACE_TABLE, b"nsnet\0"));
        body.extend(attr(NFTA_TRACE_CHAIN, b"forward\0"));
        body.extend(attr(NFTA_TRACE_RULE_HANDLE, &7u64.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_TYPE, &3u32.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_ID, &0xabcdu32.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_IIF, &4u32.to_be_bytes()));
        let verdict = attr(NFTA_VERDICT_CODE, &0u32.to_be_bytes());
        body.extend(attr(NFTA_TRACE_VERDICT | 0x8000, &verdict));
        let len = u32::try_from(20 + body.len()).unwrap();
        let mut msg = len.to_ne_bytes().to_vec();
        msg.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE).to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend([2, 0, 0, 0]);
        msg.extend(body);
        let events = parse(&msg);
        assert_eq!(
            events,
            vec![TraceEvent {
                id: 0xabcd,
                family: "ip".into(),
                table: "nsnet".into(),
                chain: "forward".into(),
                handle: Some(7),
                kind: "rule".into(),
                verdict: "drop".into(),
                iif: Some(4),
                oif: None,
            }]
        );
        // A truncated message is skipped, not read past its end.
        assert!(parse(&msg[..msg.len() - 3]).is_empty());
    }

    #[test]
    fn the_match_is_the_probes_five_tuple() {
        let m = TraceMatch {
            src: "172.16.1.2".parse().unwrap(),
            dst: "10.0.1.48".parse().unwrap(),
            protocol: "tcp",
            sport: Some(40000),
            dport: Some(8080),
        };
        assert_eq!(
            m.text(),
            "ip saddr 172.16.1.2 ip daddr 10.0.1.48 meta l4proto tcp th sport 40000 th dport 8080"
        );
        let m6 = TraceMatch {
            src: "fd00:1::2".parse().unwrap(),
            dst: "fd00:2::3".parse().unwrap(),
            protocol: "icmp",
            sport: None,
            dport: None,
        };
        assert_eq!(m6.family(), "ip6");
        assert_eq!(
            m6.text(),
            "ip6 saddr fd00:1::2 ip6 daddr fd00:2::3 icmpv6 type echo-request"
        );
    }
}
