//! CNI errors: a code from the spec's table, a one-line message naming what is wrong, and details.

use std::fmt;

/// Codes from the CNI specification (section 5, "Error"), and nsnet's own above 100.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace) does not exist, or `CNI_NETNS` is not a network namespace.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const BAD_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const BAD_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin cannot serve ADD: STATUS, and an ADD that finds the address pool (or the bridge's ports, or
    /// the subnets to pick from) exhausted.
    pub const UNAVAILABLE: u32 = 50;
    /// nsnet could not do what was asked (a kernel, firewall or state failure), or CHECK found a problem.
    pub const FAILED: u32 = 100;
    /// nsnet's own: the attachment is already there (an ADD repeated for the same container and network), or
    /// the container already has an interface named `CNI_IFNAME`. Nothing was changed.
    pub const ALREADY_EXISTS: u32 = 101;
}

/// An error as the runtime receives it on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object, in the version the runtime asked for.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)
    }
}

/// Library errors: refused input is a configuration error, a busy object is "try again", an attachment that is
/// already there is nsnet's own code, an exhausted pool "unavailable", anything else (a bug of nsnet's included:
/// no configuration fixes that) a failure of nsnet itself.
impl From<nsnet_core::Error> for CniError {
    fn from(e: nsnet_core::Error) -> CniError {
        let code = match &e {
            nsnet_core::Error::Invalid(_) => code::BAD_CONFIG,
            nsnet_core::Error::Busy(_) => code::TRY_AGAIN,
            nsnet_core::Error::Exists(_) => code::ALREADY_EXISTS,
            nsnet_core::Error::Exhausted(_) => code::UNAVAILABLE,
            nsnet_core::Error::Internal(_) => code::FAILED,
            _ => code::FAILED,
        };
        CniError::new(code, e.to_string())
    }
}

/// Reading nsnet's state failed: a failure of nsnet itself.
impl From<nsnet_core::store::StoreError> for CniError {
    fn from(e: nsnet_core::store::StoreError) -> CniError {
        nsnet_core::Error::from(e).into()
    }
}

pub type CniResult<T> = Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A bug of nsnet's (here a panicked namespace thread) is no configuration error: code 100, and a message
    /// that asks for a bug report.
    #[test]
    fn an_internal_error_is_a_failure_not_bad_configuration() {
        let fd =
            nsnet_core::netns::open(std::path::Path::new("/proc/self/ns/net")).expect("own ns");
        let panicked = nsnet_core::netns::run_in(&fd, || -> u8 { panic!("boom") })
            .expect_err("the thread panicked");
        let e = CniError::from(nsnet_core::Error::from(panicked));
        assert_eq!(e.code, code::FAILED, "{e}");
        assert!(e.msg.contains("this is a bug"), "{e}");
        let refused = CniError::from(nsnet_core::Error::Invalid("bad subnet".into()));
        assert_eq!(refused.code, code::BAD_CONFIG);
    }
}
