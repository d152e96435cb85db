//! The library's error: bad input, or a layer's failure with its context.

use crate::firewall::FirewallError;
use crate::kernel::KernelError;
use crate::store::StoreError;

/// Everything an nsnet operation can fail with. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message says what is wrong and how to fix it. Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// Another nsnet command is working on the same object; trying again later will do. Nothing was changed.
    #[error("{0}")]
    Busy(String),
    /// What the request would add is already there: the sandbox is on the network, or has an interface by that
    /// name. Nothing was changed. (Apart from [`Error::Invalid`] so that CNI can tell a repeated ADD from a bad
    /// configuration.)
    #[error("{0}")]
    Exists(String),
    /// The request is fine but there is no room for it: no free address, bridge port or subnet is left.
    /// Nothing was changed.
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Firewall(#[from] FirewallError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A step failed; the steps before it were undone (and these undo steps failed too, if any).
    #[error("{cause}{}", rollback_note(.rollback))]
    RolledBack {
        cause: Box<Error>,
        rollback: Vec<Error>,
    },
    /// Teardown went through every step, and these failed.
    #[error("teardown incomplete: {}", join(.0))]
    Teardown(Vec<Error>),
}

/// Shorthand for `Err(Error::Invalid(...))` with a formatted message.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::Error::Invalid(format!($($arg)*)) };
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn rollback_note(rollback: &[Error]) -> String {
    if rollback.is_empty() {
        " (everything done before it was undone)".into()
    } else {
        format!(
            " (undoing the steps before it also failed: {})",
            join(rollback)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
