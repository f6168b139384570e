//! flow-archiver: keeps workflow event stores bounded without losing a flow's history.
//!
//! The modules follow the pipeline (`docs/design.md`, "Layers"); data flows one way
//! and no module imports one above it:
//!
//! - ground floor, importing nothing of the crate: [`flow`] (domain types), [`time`],
//!   [`units`], [`failpoint`], [`settings`], [`tls`], [`telemetry`] (metrics);
//! - then [`traces`] (logs and OpenTelemetry) and the configuration: [`config`] with
//!   its connector sections in [`kafka`] and [`nats`];
//! - the stages: [`source`] → [`event`] (decode, validate) → [`state`] (durable
//!   store) ← [`policy`]; [`archive`] (segments, upload, verify) → [`publish`]
//!   (`flow.archived`, dead letters) and [`audit`];
//! - [`pipeline`] wires the stages: ingest, scheduler, the archive commit protocol,
//!   purge, erasure, holds;
//! - the read side: [`index`] (built from published records), [`read`] (a flow live
//!   or archived, verify), [`replay`], and the HTTP [`api`];
//! - on top: [`service`] (what `run` and `serve` start), [`demo`], [`bench`](mod@bench), and
//!   [`cli`], which the binary's `main` parses arguments for and runs.
//!
//! `tests/e2e/layout.rs` holds the exact order and fails on an import that goes up.

pub mod api;
pub mod archive;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
mod durable;
pub mod event;
pub mod failpoint;
pub mod flow;
pub mod hold_check;
pub mod index;
pub mod kafka;
pub mod lifecycle;
pub mod nats;
pub mod pipeline;
pub mod policy;
pub mod publish;
pub mod read;
pub mod replay;
pub mod restore;
pub mod service;
pub mod settings;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod traces;
pub mod units;
pub mod workload;
