//! `nsnet-cni`: nsnet as a CNI plugin (specification 1.1.0; results also in the 0.3.0–1.0.0 shapes).
//!
//! The runtime runs it with `CNI_*` variables and the network configuration on stdin; it prints a result, or
//! an error object with a code from the spec, on stdout. The networks and sandboxes it makes are ordinary
//! nsnet records, so `nsnet ls` and `nsnet inspect` show CNI containers too.

mod commands;
mod config;
mod delegate;
mod env;
mod error;
mod result;

use std::io::Read as _;
use std::process::ExitCode;

use error::{code, CniError, CniResult};

fn main() -> ExitCode {
    // Started by a DEL to delete the veths it retired (see nsnet_core::ops::reaper_for).
    if let Some(dir) = nsnet_core::ops::reaper_for() {
        let reaped = nsnet_core::ops::Nsnet::new(dir, false).reap();
        return if reaped.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // Started by a command to answer names (see nsnet_core::dns).
    if let Some(dir) = nsnet_core::dns::resolver_for() {
        return ExitCode::from(nsnet_core::dns::server::main(&dir));
    }
    // Its slow leftovers (sockets whose close waits for the kernel, the reaper) go to one child forked at the
    // end, after the result is printed.
    nsnet_core::afterwards::enable();
    let code = cni_main();
    nsnet_core::afterwards::finish();
    code
}

/// The plugin proper: read the configuration, run the command, print its result.
fn cni_main() -> ExitCode {
    let mut raw = Vec::new();
    let read = std::io::stdin().read_to_end(&mut raw);
    // Errors answer in the runtime's version when the input says which.
    let version = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| result::Version::parse(v).is_ok())
        .unwrap_or_else(|| "1.1.0".to_string());
    let outcome = match read {
        Ok(_) => run(&raw),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("cannot read the configuration on stdin: {e}"),
        )),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            eprintln!("nsnet-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(raw: &[u8]) -> CniResult<Option<serde_json::Value>> {
    let command = env::command()?;
    if command == env::Command::Version {
        return Ok(Some(commands::version(raw)));
    }
    let (conf, value) = config::parse(raw)?;
    result::Version::parse(&conf.cni_version)?;
    if conf.plugin != "nsnet" {
        return Err(CniError::new(
            code::BAD_CONFIG,
            format!(
                "type: '{}' is not nsnet; this is the nsnet plugin",
                conf.plugin
            ),
        ));
    }
    match command {
        env::Command::Add => commands::add(&conf, &value, &env::Env::read(command)?).map(Some),
        env::Command::Del => commands::del(&conf, &value, &env::Env::read(command)?).map(|()| None),
        env::Command::Check => {
            commands::check(&conf, &value, &env::Env::read(command)?).map(|()| None)
        }
        env::Command::Gc => commands::gc(&conf, &value).map(|()| None),
        env::Command::Status => commands::status(&conf, &value).map(|()| None),
        env::Command::Version => Ok(Some(commands::version(raw))),
    }
}
