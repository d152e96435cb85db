//! CNI results: the ADD success object, read from a `prevResult` and written in the shape of the version the
//! runtime asked for.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{code, CniError, CniResult};

/// The specification versions nsnet-cni speaks.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A version the runtime asked for, checked against [`SUPPORTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u8, u8, u8);

impl Version {
    pub fn parse(text: &str) -> CniResult<Version> {
        let parts: Vec<u8> = text.split('.').filter_map(|p| p.parse().ok()).collect();
        match (SUPPORTED.contains(&text), parts.as_slice()) {
            (true, [a, b, c]) => Ok(Version(*a, *b, *c)),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion '{text}' is not supported; nsnet-cni speaks {}",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    pub const fn new(a: u8, b: u8, c: u8) -> Version {
        Version(a, b, c)
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result; `interface` indexes `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The ADD success object, version-neutral.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Option<Value>,
}

impl AddResult {
    /// Read a `prevResult` or a delegated plugin's result, in any supported version's shape.
    pub fn from_value(v: &Value) -> CniResult<AddResult> {
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("prevResult: cannot decode it: {e}")))
    }

    /// The result as `version` writes it: before 1.0.0 every address carries its family, `"version": "4"` or
    /// `"6"`.
    pub fn to_json(&self, version: &str) -> Value {
        let old = Version::parse(version).is_ok_and(|v| v < Version::new(1, 0, 0));
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or_default();
                if old {
                    let six = ip.address.contains(':');
                    v["version"] = if six { "6" } else { "4" }.into();
                }
                v
            })
            .collect();
        let mut out = serde_json::json!({
            "cniVersion": version,
            "interfaces": self.interfaces,
            "ips": ips,
        });
        if !self.routes.is_empty() {
            out["routes"] = serde_json::to_value(&self.routes).unwrap_or_default();
        }
        if let Some(dns) = &self.dns {
            out["dns"] = dns.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(Version::parse("1.1.0").is_ok() && Version::parse("0.3.0").is_ok());
        assert_eq!(
            Version::parse("0.2.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            Version::parse("2.0.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn shapes_follow_the_version() {
        let r = AddResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: None,
                sandbox: "/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/24".into(),
                gateway: Some("10.0.0.1".into()),
                interface: Some(0),
            }],
            routes: vec![],
            dns: None,
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none() && new.get("routes").is_none());
        // Reading either shape back gives the same result.
        assert_eq!(AddResult::from_value(&old).unwrap(), r);
        assert_eq!(AddResult::from_value(&new).unwrap(), r);
    }
}
