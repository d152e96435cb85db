//! The library's error: bad input, a layer's failure with its context, or a bug of nsnet's own.

use crate::firewall::FirewallError;
use crate::kernel::KernelError;
use crate::store::StoreError;

/// Everything an nsnet operation can fail with. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message says what is wrong and how to fix it. Nothing was changed. Only for what the user
    /// can change (arguments, configuration, the state dir they point at): CNI reports it as a configuration
    /// error (code 7), so a failure of nsnet itself must not be one.
    #[error("{0}")]
    Invalid(String),
    /// Something that cannot happen did: a thread panicked, an invariant of nsnet's own code did not hold. No
    /// input can fix it, so the message asks for a bug report (CNI code 100).
    #[error(
        "internal error: {0}; this is a bug: please report it with the output of the same command with --dry-run"
    )]
    Internal(String),
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
    /// Not `#[from]`: a kernel-layer failure that is a bug of nsnet's own (a panicked namespace thread)
    /// becomes [`Error::Internal`], see the `From` impl below.
    #[error(transparent)]
    Kernel(KernelError),
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
    /// Removal went through every step, and these failed.
    #[error("teardown incomplete: {}", join(.0))]
    Removal(Vec<Error>),
    /// Recovery could not roll back the set-up a killed command left: these undo steps failed. Its intent stays
    /// on disk, so the next command (or `nsnet gc`) tries again.
    #[error(
        "could not roll back the interrupted `{command}` ({}); fix that and run `nsnet gc` again",
        join(.failed)
    )]
    Recovery { command: String, failed: Vec<Error> },
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        match e {
            KernelError::Internal(what) => Error::Internal(what),
            e => Error::Kernel(e),
        }
    }
}

/// Shorthand for `Error::Invalid(...)` with a formatted message: bad input only (see [`Error::Invalid`]).
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
