//! The nftables driver: renders a [`Batch`] as `nft -f` text and applies it as one transaction.
//!
//! Layout of nsnet's table (`ip nsnet`): published ports are elements of two maps and networks are elements
//! of two sets, so adding or removing one is an element change, and the packet path does one lookup whatever
//! the number of entries. Text, not JSON: Debian 12's nft 1.0.6 cannot load maps with concatenated values
//! from JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use super::{Batch, Change, FirewallError, Rule};
use crate::portmap::PortMapping;

/// nsnet's table: family and name.
pub const TABLE: &str = "ip nsnet";

const SKELETON: &str = r#"table ip nsnet {
	comment "managed by nsnet: changes here are overwritten"
	set masq_nets {
		type ipv4_addr
		flags interval
	}
	set own_nets {
		type ifname . ipv4_addr
		flags interval
	}
	map ports {
		type inet_proto . inet_service : ipv4_addr . inet_service
	}
	map ports_ip {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local meta l4proto { tcp, udp } jump published
	}
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto { tcp, udp } jump published
	}
	chain published {
		dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
		dnat ip to meta l4proto . th dport map @ports
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat oifname . ip saddr @own_nets masquerade
		oifname . ip saddr @own_nets return
		ip saddr @masq_nets masquerade
	}
}
"#;

/// Render a batch as an `nft -f` script. Deletions are written as add-then-delete so that deleting something
/// already gone is not an error (nft 1.0.6 has no `destroy`), which keeps teardown idempotent.
pub fn render(batch: &Batch) -> String {
    let mut out = String::new();
    for change in &batch.0 {
        match change {
            // A fresh table: wipe any stale copy first, in the same transaction.
            Change::Add(Rule::Table) => {
                let _ = writeln!(out, "add table {TABLE}\ndelete table {TABLE}");
                out.push_str(SKELETON);
            }
            Change::Delete(Rule::Table) => {
                let _ = writeln!(out, "add table {TABLE}\ndelete table {TABLE}");
            }
            Change::Add(rule) => {
                for (set, element, _) in elements(rule) {
                    let _ = writeln!(out, "add element {TABLE} {set} {{ {element} }}");
                }
            }
            Change::Delete(rule) => {
                for (set, element, key) in elements(rule) {
                    let _ = writeln!(out, "add element {TABLE} {set} {{ {element} }}");
                    let _ = writeln!(out, "delete element {TABLE} {set} {{ {key} }}");
                }
            }
        }
    }
    out
}

/// The (set, full element, key) triples a rule stands for.
fn elements(rule: &Rule) -> Vec<(&'static str, String, String)> {
    match rule {
        Rule::Table => vec![],
        Rule::Masquerade { subnet, interface } => {
            let own = format!("\"{interface}\" . {subnet}");
            vec![
                ("masq_nets", subnet.to_string(), subnet.to_string()),
                ("own_nets", own.clone(), own),
            ]
        }
        Rule::Port { mapping, target } => {
            let PortMapping {
                host_ip,
                host_port,
                container_port,
                protocol,
            } = mapping;
            let (set, key) = match host_ip {
                Some(ip) => ("ports_ip", format!("{ip} . {protocol} . {host_port}")),
                None => ("ports", format!("{protocol} . {host_port}")),
            };
            vec![(set, format!("{key} : {target} . {container_port}"), key)]
        }
    }
}

/// Apply a batch in one `nft -f -` transaction: all of it, or none of it.
pub fn apply(batch: &Batch) -> Result<(), FirewallError> {
    if batch.is_empty() {
        return Ok(());
    }
    let script = render(batch);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn {
            tool: "nft",
            error: source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| FirewallError::Spawn {
                tool: "nft",
                error: source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            tool: "nft",
            error: source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find(|l| l.contains("Error"))
        .or_else(|| stderr.lines().next())
        .unwrap_or("no message")
        .trim()
        .to_string();
    Err(FirewallError::Refused(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::Proto;
    use std::net::Ipv4Addr;

    fn masq() -> Rule {
        Rule::Masquerade {
            subnet: "10.89.0.0/24".parse().unwrap(),
            interface: "nsnet0".into(),
        }
    }

    fn port(host_ip: Option<Ipv4Addr>) -> Rule {
        Rule::Port {
            mapping: PortMapping {
                host_ip,
                host_port: 8088,
                container_port: 80,
                protocol: Proto::Tcp,
            },
            target: Ipv4Addr::new(10, 89, 0, 2),
        }
    }

    #[test]
    fn adds_are_elements() {
        let mut b = Batch::default();
        b.add(masq());
        b.add(port(None));
        b.add(port(Some(Ipv4Addr::new(10, 0, 1, 48))));
        assert_eq!(
            render(&b),
            "add element ip nsnet masq_nets { 10.89.0.0/24 }\n\
             add element ip nsnet own_nets { \"nsnet0\" . 10.89.0.0/24 }\n\
             add element ip nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }\n\
             add element ip nsnet ports_ip { 10.0.1.48 . tcp . 8088 : 10.89.0.2 . 80 }\n"
        );
    }

    #[test]
    fn deletes_are_idempotent_and_keyed() {
        let mut b = Batch::default();
        b.delete(port(None));
        assert_eq!(
            render(&b),
            "add element ip nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }\n\
             delete element ip nsnet ports { tcp . 8088 }\n"
        );
    }

    #[test]
    fn table_is_created_fresh_and_inverse_reverses() {
        let mut b = Batch::default();
        b.add(Rule::Table);
        b.add(masq());
        let text = render(&b);
        assert!(text.starts_with("add table ip nsnet\ndelete table ip nsnet\ntable ip nsnet {"));
        let inv = b.inverse();
        assert_eq!(
            inv.0,
            vec![Change::Delete(masq()), Change::Delete(Rule::Table)]
        );
        assert!(render(&inv).ends_with("add table ip nsnet\ndelete table ip nsnet\n"));
    }
}
