//! nsnet: container networking for Linux from namespaces, veth pairs, bridges, routes and nftables.
//!
//! Every operation flows one way: **request → validate → plan → apply → record**.
//! - [`ops`]: the operations, one method per command;
//! - [`names`], [`ipam`], [`portmap`]: pure validation and allocation;
//! - [`plan`]: the wanted kernel objects and rules as data, printable as `ip`/`nft` commands;
//! - [`apply`]: carries a plan out with undo; the only callers of [`kernel`] and [`firewall`];
//! - [`store`]: the records on disk;
//! - [`scenario`]: the seed article's walkthrough, which `nsnet demo` and the article test both run.

pub mod apply;
pub mod error;
pub mod firewall;
pub mod ipam;
pub mod kernel;
pub mod model;
pub mod names;
pub mod ops;
pub mod plan;
pub mod portmap;
pub mod probe;
pub mod scenario;
pub mod store;

pub use error::{Error, Result};
pub use kernel::netns;
