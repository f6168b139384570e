//! `[input]`: how records become events — the format, its field mapping, and limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{duration_text, invalid, ConfigError};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// CloudEvents 1.0, structured mode JSON.
    Cloudevents,
    /// `{"flow_id","tenant","seq","type","status","time","labels","data"}`.
    Plain,
    /// Argo Workflows `Workflow` objects, as a resource watch (e.g. Argo Events)
    /// forwards them: uid → flow id, namespace → tenant, phase → status,
    /// resourceVersion → order and dedupe, finishedAt → time, labels.
    Argo,
}

/// Decoding of input events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `cloudevents` (default), `plain` or `argo`; selects the default field mapping.
    pub format: InputFormat,
    /// Larger records are dead-lettered (reason `oversize`). Default 1 MiB.
    pub max_event_bytes: usize,
    /// Events whose `time` is further ahead of ingest time are dead-lettered. Default `5m`.
    #[serde(with = "duration_text")]
    pub max_future_skew: Duration,
    /// Events written to the state store per transaction. Default 4096.
    pub batch_size: usize,
    /// JSON pointers overriding the format's default mapping.
    pub mapping: MappingOverrides,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            format: InputFormat::Cloudevents,
            max_event_bytes: 1 << 20,
            max_future_skew: Duration::from_secs(300),
            batch_size: 4096,
            mapping: MappingOverrides::default(),
        }
    }
}

/// JSON pointers (RFC 6901) into the event; unset fields keep the format's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MappingOverrides {
    /// The event is the object at this pointer, e.g. `/workflow` when an Argo Events
    /// sensor wraps the Workflow as `{"workflow": …}`: the format's default pointers
    /// are taken relative to it (explicit overrides below stay absolute).
    pub root: Option<String>,
    pub flow_id: Option<String>,
    pub tenant: Option<String>,
    /// Tenant used when the event has none. Default `default`.
    pub default_tenant: Option<String>,
    pub sequence: Option<String>,
    pub event_type: Option<String>,
    /// A field holding a status word; when unset the status comes from the type suffix.
    pub status: Option<String>,
    pub time: Option<String>,
    pub labels: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Two pointers forming the dedupe key; `[]` turns deduplication off.
    pub dedupe: Option<Vec<String>>,
}

/// The mapping the decoder applies, after presets and overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    pub flow_id: String,
    pub tenant: String,
    pub default_tenant: String,
    pub sequence: String,
    pub event_type: String,
    pub status: Option<String>,
    pub time: String,
    /// Tried in order when `time` is absent or null (before falling back to ingest time).
    pub time_fallbacks: Vec<String>,
    pub labels: String,
    pub traceparent: String,
    pub tracestate: String,
    pub dedupe: Option<(String, String)>,
}

impl InputConfig {
    pub fn effective_mapping(&self) -> FieldMapping {
        let s = |v: &str| v.to_string();
        let mut m = match self.format {
            InputFormat::Cloudevents => FieldMapping {
                flow_id: s("/subject"),
                tenant: s("/tenant"),
                default_tenant: s("default"),
                sequence: s("/sequence"),
                event_type: s("/type"),
                status: None,
                time: s("/time"),
                time_fallbacks: Vec::new(),
                labels: s("/data/labels"),
                traceparent: s("/traceparent"),
                tracestate: s("/tracestate"),
                dedupe: Some((s("/source"), s("/id"))),
            },
            InputFormat::Plain => FieldMapping {
                flow_id: s("/flow_id"),
                tenant: s("/tenant"),
                default_tenant: s("default"),
                sequence: s("/seq"),
                event_type: s("/type"),
                status: Some(s("/status")),
                time: s("/time"),
                time_fallbacks: Vec::new(),
                labels: s("/labels"),
                traceparent: s("/traceparent"),
                tracestate: s("/tracestate"),
                dedupe: Some((s("/type"), s("/seq"))),
            },
            InputFormat::Argo => FieldMapping {
                flow_id: s("/metadata/uid"),
                tenant: s("/metadata/namespace"),
                default_tenant: s("default"),
                // Kubernetes bumps it on every change; digit strings compare numerically.
                sequence: s("/metadata/resourceVersion"),
                event_type: s("/kind"),
                status: Some(s("/status/phase")),
                // Absent until the workflow finishes: until then, when it started.
                time: s("/status/finishedAt"),
                time_fallbacks: vec![s("/status/startedAt"), s("/metadata/creationTimestamp")],
                labels: s("/metadata/labels"),
                traceparent: s("/metadata/annotations/traceparent"),
                tracestate: s("/metadata/annotations/tracestate"),
                // A watch may deliver the same object version twice.
                dedupe: Some((s("/metadata/uid"), s("/metadata/resourceVersion"))),
            },
        };
        let o = &self.mapping;
        if let Some(root) = o.root.as_deref().filter(|r| !r.is_empty()) {
            let root = root.trim_end_matches('/');
            for p in [
                &mut m.flow_id,
                &mut m.tenant,
                &mut m.sequence,
                &mut m.event_type,
                &mut m.time,
                &mut m.labels,
                &mut m.traceparent,
                &mut m.tracestate,
            ]
            .into_iter()
            .chain(m.status.as_mut())
            .chain(m.time_fallbacks.iter_mut())
            .chain(m.dedupe.iter_mut().flat_map(|(a, b)| [a, b]))
            {
                *p = format!("{root}{p}");
            }
        }
        let set = |target: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                *target = v.clone();
            }
        };
        set(&mut m.flow_id, &o.flow_id);
        set(&mut m.tenant, &o.tenant);
        set(&mut m.default_tenant, &o.default_tenant);
        set(&mut m.sequence, &o.sequence);
        set(&mut m.event_type, &o.event_type);
        if o.time.is_some() {
            m.time_fallbacks.clear();
        }
        set(&mut m.time, &o.time);
        set(&mut m.labels, &o.labels);
        set(&mut m.traceparent, &o.traceparent);
        set(&mut m.tracestate, &o.tracestate);
        if o.status.is_some() {
            m.status = o.status.clone();
        }
        if let Some(d) = &o.dedupe {
            m.dedupe = match d.as_slice() {
                [a, b] => Some((a.clone(), b.clone())),
                _ => None,
            };
        }
        m
    }
}

impl InputConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(invalid(
                "input.batch_size",
                "must be at least 1",
                "use e.g. 4096",
            ));
        }
        if self.max_event_bytes < 256 {
            return Err(invalid(
                "input.max_event_bytes",
                format!("{} is too small for any event", self.max_event_bytes),
                "use at least 256, e.g. 1048576",
            ));
        }
        let m = &self.mapping;
        let pointers = [
            ("input.mapping.root", &m.root),
            ("input.mapping.flow_id", &m.flow_id),
            ("input.mapping.tenant", &m.tenant),
            ("input.mapping.sequence", &m.sequence),
            ("input.mapping.event_type", &m.event_type),
            ("input.mapping.status", &m.status),
            ("input.mapping.time", &m.time),
            ("input.mapping.labels", &m.labels),
            ("input.mapping.traceparent", &m.traceparent),
            ("input.mapping.tracestate", &m.tracestate),
        ];
        for (key, value) in pointers {
            if let Some(p) = value {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a JSON pointer"),
                        "write a pointer such as \"/subject\" or \"/data/flow\"",
                    ));
                }
            }
        }
        if let Some(d) = &m.dedupe {
            if !(d.is_empty() || d.len() == 2) {
                return Err(invalid(
                    "input.mapping.dedupe",
                    format!("{} pointers given", d.len()),
                    "give two pointers, e.g. [\"/source\", \"/id\"], or [] to turn dedupe off",
                ));
            }
        }
        if let Some(t) = &m.default_tenant {
            crate::flow::validate_identifier("tenant", t).map_err(|e| {
                invalid(
                    "input.mapping.default_tenant",
                    e,
                    "use a plain name like \"default\"",
                )
            })?;
        }
        Ok(())
    }
}
