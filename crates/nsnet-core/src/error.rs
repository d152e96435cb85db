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
    // Transparent, not "{0}": a wrapper that printed its source's text and also named it as its source made
    // the CLI's error line (which prints the chain) say everything twice.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The CLI prints an error with its chain of sources (`{:#}`): a wrapper that shows its source's text as its
    /// own must not also name it as its source, or the line reads "X: X".
    #[test]
    fn a_wrapped_error_is_printed_once() {
        let wrapped = [
            Error::from(StoreError::Corrupt {
                path: "networks/n.json".into(),
                reason: "bad".into(),
            }),
            Error::from(KernelError::Missing("eth0".into())),
        ];
        for e in wrapped {
            let mut line = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                line = format!("{line}: {s}");
                source = s.source();
            }
            assert_eq!(line, e.to_string(), "the chain repeats itself");
        }
    }
}
