//! The `CNI_*` environment, checked: a missing or malformed variable is error 4 naming it.

use std::path::PathBuf;

use crate::error::{code, CniError, CniResult};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

pub fn command() -> CniResult<Command> {
    let text = std::env::var("CNI_COMMAND").unwrap_or_default();
    Ok(match text.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        "VERSION" => Command::Version,
        "" => {
            return Err(bad(
                "CNI_COMMAND is not set; use ADD, DEL, CHECK, GC, STATUS or VERSION",
            ))
        }
        other => {
            return Err(bad(format!(
                "CNI_COMMAND '{other}' is unknown; use ADD, DEL, CHECK, GC, STATUS or VERSION"
            )))
        }
    })
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::new(code::BAD_ENV, msg)
}

/// The per-container variables of ADD, DEL and CHECK.
#[derive(Debug)]
pub struct Env {
    pub container_id: String,
    /// `None` only for DEL, where an empty `CNI_NETNS` is allowed (the namespace is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `IP=` from `CNI_ARGS`.
    pub ip: Option<String>,
}

impl Env {
    pub fn read(command: Command) -> CniResult<Env> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let container_id =
            var("CNI_CONTAINERID").ok_or_else(|| bad("CNI_CONTAINERID is not set"))?;
        let first_ok = container_id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || nsnet_core::names::check_name("container", &container_id).is_err() {
            return Err(bad(format!(
                "CNI_CONTAINERID '{container_id}' is invalid: use 1 to {} letters, digits, _ . -, starting \
                 with a letter or digit",
                nsnet_core::names::MAX_NAME
            )));
        }
        let ifname = var("CNI_IFNAME").ok_or_else(|| bad("CNI_IFNAME is not set"))?;
        nsnet_core::names::check_ifname(&ifname).map_err(|e| bad(format!("CNI_IFNAME: {e}")))?;
        let netns = var("CNI_NETNS").map(PathBuf::from);
        if command != Command::Del {
            match &netns {
                None => {
                    return Err(bad(
                        "CNI_NETNS is not set; give the path of the container's network namespace",
                    ))
                }
                Some(p) if !p.exists() => {
                    return Err(CniError::new(
                        code::UNKNOWN_CONTAINER,
                        format!("CNI_NETNS: no network namespace at {}", p.display()),
                    ))
                }
                // A path that is there but is no network namespace (a plain file, another namespace type)
                // names no container either.
                Some(p) => {
                    if let Err(e) = nsnet_core::netns::open(p) {
                        return Err(CniError::new(
                            code::UNKNOWN_CONTAINER,
                            format!("CNI_NETNS: {e}; give the path of the container's network namespace"),
                        ));
                    }
                }
            }
        }
        let mut ip = None;
        for pair in var("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("CNI_ARGS: '{pair}' is not KEY=VALUE")))?;
            // Other keys (IgnoreUnknown, K8S_POD_NAME, ...) are for other plugins.
            if key == "IP" {
                ip = Some(value.to_string());
            }
        }
        Ok(Env {
            container_id,
            netns,
            ifname,
            ip,
        })
    }

    /// The namespace path, for commands that require one (checked in [`Env::read`]).
    pub fn netns_path(&self) -> CniResult<&PathBuf> {
        self.netns
            .as_ref()
            .ok_or_else(|| bad("CNI_NETNS is not set"))
    }
}
