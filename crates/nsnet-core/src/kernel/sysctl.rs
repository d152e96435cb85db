//! Sysctls of the calling process's network namespace, through `/proc/sys` (which, unlike `/sys`, follows the
//! opener's namespace).

use std::fs;
use std::path::PathBuf;

use super::KernelError;

/// `key` is written with `/` between components (`net/ipv4/conf/br0/route_localnet`), since interface names
/// may contain dots.
fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

/// Read a sysctl such as `net/ipv4/ip_forward`.
pub fn get(key: &str) -> Result<String, KernelError> {
    fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| KernelError::io(format!("read sysctl {key}"), e))
}

/// Write a sysctl; skips the write when it already holds the value.
pub fn set(key: &str, value: &str) -> Result<(), KernelError> {
    if get(key)? == value {
        return Ok(());
    }
    fs::write(path(key), value)
        .map_err(|e| KernelError::io(format!("write sysctl {key}={value}"), e))
}

/// `net.ipv6.conf.IFNAME.disable_ipv6=1`, for an interface that is still down. nsnet's networks are IPv4:
/// an IPv6 link-local address on a veth would only make it send DAD and MLD multicast as it comes up, which
/// the bridge floods to every other port (every sandbox), so each new sandbox would cost all the others
/// work. A kernel booted without IPv6 has nothing to turn off.
pub fn disable_ipv6(interface: &str) -> Result<(), KernelError> {
    if !path("net/ipv6").exists() {
        return Ok(());
    }
    set(&format!("net/ipv6/conf/{interface}/disable_ipv6"), "1")
}
