//! Running a delegated plugin (an IPAM plugin such as host-local), as CNI spec section 4 describes: found in
//! `CNI_PATH`, given the same environment and the whole configuration, its stderr passed through.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError, CniResult};
use crate::result::{Version, SUPPORTED};

/// A delegated plugin binary.
pub struct Delegate {
    name: String,
    path: PathBuf,
}

impl Delegate {
    /// Find `name` in `CNI_PATH`.
    pub fn find(name: &str) -> CniResult<Delegate> {
        if name.is_empty() || name.contains('/') {
            return Err(CniError::new(
                code::BAD_CONFIG,
                format!("ipam.type: '{name}' is not a plugin name"),
            ));
        }
        let dirs = std::env::var("CNI_PATH").unwrap_or_default();
        dirs.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
            .map(|path| Delegate {
                name: name.to_string(),
                path,
            })
            .ok_or_else(|| {
                CniError::new(
                    code::BAD_CONFIG,
                    format!("ipam.type: no plugin '{name}' in CNI_PATH ({dirs}); install it there"),
                )
            })
    }

    /// Run `command` with `config` on stdin. A plugin that does not speak the configuration's version (Debian's
    /// plugins stop at 1.0.0) is asked again in the newest version it shares with nsnet-cni, not newer than
    /// the runtime's; what it returns is read version-neutrally anyway.
    pub fn run(&self, command: &str, config: &Value) -> CniResult<Value> {
        match self.exec(command, config) {
            Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
                let asked = config["cniVersion"].as_str().unwrap_or("1.1.0");
                let version = self.best_version(asked)?;
                let mut older = config.clone();
                older["cniVersion"] = version.clone().into();
                if let Some(prev) = older.get_mut("prevResult") {
                    prev["cniVersion"] = version.into();
                }
                self.exec(command, &older)
            }
            other => other,
        }
    }

    /// Whether the plugin speaks `version` at all (GC and STATUS exist only from 1.1.0).
    pub fn speaks(&self, version: &str) -> bool {
        self.supported()
            .is_ok_and(|v| v.iter().any(|s| s == version))
    }

    fn supported(&self) -> CniResult<Vec<String>> {
        let out = self.exec("VERSION", &serde_json::json!({"cniVersion": "0.4.0"}))?;
        Ok(out["supportedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    fn best_version(&self, asked: &str) -> CniResult<String> {
        let limit = Version::parse(asked)?;
        let theirs = self.supported()?;
        SUPPORTED
            .iter()
            .rev()
            .filter(|v| Version::parse(v).is_ok_and(|x| x <= limit))
            .find(|v| theirs.iter().any(|t| t == *v))
            .map(|v| v.to_string())
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "ipam plugin {} speaks {}, none of which nsnet-cni can use with cniVersion {asked}",
                        self.name,
                        theirs.join(", ")
                    ),
                )
            })
    }

    fn exec(&self, command: &str, config: &Value) -> CniResult<Value> {
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::new(
                    code::IO,
                    format!("cannot run ipam plugin {}: {e}", self.path.display()),
                )
            })?;
        let input = serde_json::to_vec(config).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin may exit without reading everything; its exit status tells what happened.
            let _ = stdin.write_all(&input);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(code::IO, format!("ipam plugin {}: {e}", self.name)))?;
        let value: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).map_err(|e| {
                CniError::new(
                    code::DECODE,
                    format!(
                        "ipam plugin {} printed something other than JSON: {e}",
                        self.name
                    ),
                )
            })?
        };
        if out.status.success() {
            return Ok(value);
        }
        let code = value["code"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(code::FAILED);
        let msg = value["msg"].as_str().unwrap_or("failed without a message");
        let details = value["details"].as_str().unwrap_or_default();
        Err(CniError::new(code, format!("ipam plugin {}: {msg}", self.name)).with_details(details))
    }
}
