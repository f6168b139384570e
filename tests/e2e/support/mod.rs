//! The end-to-end harness: the real binary in a temporary directory ([`env`]), real
//! servers on free loopback ports ([`servers`]), independent clients ([`clients`],
//! [`http`]), readers of what was written ([`records`]), the broker suites' shared
//! configuration ([`config`]), an OTLP receiver ([`otlp`]), TLS certificates
//! ([`certs`]), a proxy that makes an HTTP server fail ([`fault_proxy`]) and a real
//! browser for the web console ([`browser`]).

pub mod browser;
pub mod certs;
pub mod clients;
pub mod config;
pub mod env;
pub mod fault_proxy;
pub mod http;
pub mod otlp;
pub mod records;
pub mod servers;

pub use certs::*;
pub use clients::*;
pub use env::*;
pub use fault_proxy::FaultProxy;
pub use http::*;
pub use records::*;
pub use servers::*;
