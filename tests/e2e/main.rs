//! flow-archiver's end-to-end suites, built as one test binary: one link of the crate
//! instead of one per suite, and one harness whose every helper some suite uses.
//!
//! Each suite drives the real binary (or the library, where a test needs a clock it
//! controls) against real servers that `support` starts on free loopback ports. Run
//! one suite with `cargo test --test e2e kafka::`, one test by its name.

mod support;

mod api;
mod argo;
mod bad_input;
mod cli;
mod compliance;
mod console;
mod crash;
mod damaged_state;
mod deploy;
mod dev_stack;
mod disk_full;
mod durability;
mod erase;
mod format;
mod kafka;
mod layout;
mod nats;
mod outage;
mod policy;
mod purge;
mod round_trip;
mod s3;
mod scale;
mod service;
mod state_cli;
mod state_store;
mod traces;
