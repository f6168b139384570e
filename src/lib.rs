//! flow-archiver: keeps workflow event stores bounded without losing a flow's history.
//!
//! The pipeline (DESIGN.md §2), one module per stage, data flowing one way:
//! [`source`] → [`event`] (decode, validate) → [`state`] ← [`pipeline`] scheduler →
//! [`archive`] (segments, upload, verify) → [`publish`] (`flow.archived`) → state
//! deletion. [`config`] and [`policy`] are read by every stage; [`ops`] holds the
//! operations the CLI offers, so tests call exactly what users run.

pub mod api;
pub mod archive;
pub mod audit;
pub mod bench;
pub mod config;
pub mod demo;
mod durable;
pub mod event;
pub mod failpoint;
pub mod flow;
pub mod index;
pub mod kafka;
pub mod nats;
pub mod pipeline;
pub mod policy;
pub mod publish;
pub mod read;
pub mod replay;
pub mod service;
pub mod settings;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod time;
pub mod traces;
pub mod units;
pub mod workload;
