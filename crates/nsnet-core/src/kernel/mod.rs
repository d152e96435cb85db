//! The only code that changes the host: netlink, network namespaces, sysctls and the fast path's bpf.
//!
//! Everything above this layer works on plain data; the applier in [`crate::apply`] turns plan steps into
//! calls here and keeps the undo list.

pub mod bpf;
pub mod dnsport;
pub mod fastpath;
pub mod loopback6;
pub mod netlink;
pub mod netns;
pub mod sockets;
pub mod sysctl;

use std::io;

pub use netlink::{
    BpfFilter, FdbEntry, FilterAt, IngressQdisc, Link, Neighbour, Netlink, RouteSpec, TcHook,
    VethSpec, VxlanInfo, VxlanSpec, NSNET_ROUTE_PROTOCOL, NUD_PERMANENT,
};

/// A failure talking to the kernel, with what nsnet was doing at the time.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("netlink reply could not be decoded: {0}")]
    Decode(String),
    #[error("{0} does not exist")]
    Missing(String),
    /// Not the kernel's doing but nsnet's: a thread that entered a namespace panicked. Becomes
    /// [`crate::Error::Internal`].
    #[error("{0}")]
    Internal(String),
}

impl KernelError {
    pub fn io(what: impl Into<String>, error: io::Error) -> Self {
        KernelError::Io {
            what: what.into(),
            error,
        }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Io { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    /// "Already gone": teardown treats these as success.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KernelError::Missing(_))
            || matches!(
                self.errno(),
                Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
            )
    }
}
