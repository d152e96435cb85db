//! nsnet: container networking for Linux from namespaces, veth pairs, bridges, routes and nftables.
//!
//! Every operation flows one way: **request → validate → plan → apply → record**.
//! - [`ops`]: the operations, one method per command;
//! - [`names`], [`ipam`], [`portmap`]: pure validation and allocation;
//! - [`plan`]: the wanted kernel objects and rules as data, printable as `ip`/`nft` commands;
//! - [`apply`]: carries a plan out with undo; the only code that changes the kernel and the firewall (through
//!   [`kernel`] and [`firewall`]);
//! - `ops::host::Host`: the one reader of host facts (links, addresses, routes, namespaces, sockets, sysctls,
//!   the fast path's map, the firewall's contents) for validation, queries, `gc` and CNI `CHECK`; [`probe`]
//!   opens sockets inside namespaces for the demo and the tests;
//! - [`store`]: the records on disk;
//! - [`scenario`]: the seed article's walkthrough, which `nsnet demo` and the article test both run;
//! - [`etcd`]: a small synchronous etcd v3 client (over etcd's JSON gateway) for agents that coordinate through
//!   etcd;
//! - [`agent`]: `nsnet agent`, this host's member of the overlay networks kept in etcd;
//! - [`afterwards`]: what a command leaves to a detached child so that its exit does not wait for the kernel.

pub mod afterwards;
pub mod agent;
pub mod apply;
pub mod dns;
pub mod error;
/// A small synchronous etcd v3 client over etcd's JSON/HTTP gateway.
pub mod etcd;
pub mod explain;
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
pub mod topology;

pub use error::{Error, Result};
pub use kernel::netns;
