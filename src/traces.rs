//! Logs and OpenTelemetry traces: one `tracing` subscriber for the process.
//!
//! Logs go to stderr as text or JSON (`RUST_LOG` filters them). Traces are exported over
//! OTLP when an endpoint is configured with the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, protocol from
//! `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `http/protobuf` (default) or `grpc`), and are
//! off otherwise (or with `OTEL_SDK_DISABLED=true`). Sampling, resource attributes,
//! headers and timeouts are read by the SDK from the other `OTEL_*` variables.
//!
//! The pipeline's spans are ordinary `tracing` spans (bridged by
//! `tracing-opentelemetry`); this module adds what the bridge leaves to us: parsing an
//! event's `traceparent` into a link target, rendering a span's context as a
//! `traceparent` for the events we publish, and trace ids for log lines. Span names and
//! attributes follow the OpenTelemetry messaging and S3 conventions (see
//! `docs/operations.md`, "Traces and logs").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

static ENABLED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("{var}={value} is not supported: use http/protobuf or grpc")]
    Protocol { var: &'static str, value: String },
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Keeps the trace exporter alive; [`TracingGuard::shutdown`] (or drop) flushes the
/// spans still queued. Call it while the async runtime still runs: the gRPC exporter
/// uses it.
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: flushing traces failed: {e}");
            }
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether spans are exported (decides whether per-event work such as parsing every
/// `traceparent` of a batch is worth doing).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The protocol the standard variables ask for, when an endpoint is configured.
fn requested_protocol() -> Result<Option<Protocol>, TracesError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let (name, value) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
        ),
    };
    match value.trim() {
        "http/protobuf" => Ok(Some(Protocol::HttpBinary)),
        "grpc" => Ok(Some(Protocol::Grpc)),
        other => Err(TracesError::Protocol {
            var: name,
            value: other.to_string(),
        }),
    }
}

fn provider(protocol: Protocol) -> Result<SdkTracerProvider, TracesError> {
    crate::tls::install_crypto_provider();
    let exporter = match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
    }
    .map_err(|e| TracesError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    // Values set in code override the environment, so name the service only when the
    // operator did not.
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("flow-archiver");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the process-wide subscriber: logs on stderr (`json` or text, filtered by
/// `RUST_LOG`, default `warn,flow_archiver=info`) and, when configured, the OTLP trace
/// exporter (fed with this crate's spans at info and above, whatever `RUST_LOG` says).
/// Call from inside the tokio runtime.
pub fn init(json: bool) -> Result<TracingGuard, TracesError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,flow_archiver=info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }
    .with_filter(filter);
    let protocol = requested_protocol()?;
    let provider = protocol.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("flow-archiver"))
            .with_filter(
                Targets::new()
                    .with_target("flow_archiver", LevelFilter::INFO)
                    .with_default(LevelFilter::OFF),
            )
    });
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    // A second init (tests calling into the library) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TracingGuard { provider })
}

/// Whether `t` is a well-formed W3C `traceparent` (version 00 layout, lower-case hex,
/// non-zero ids); cheap enough to run on every event.
pub fn valid_traceparent(t: &str) -> bool {
    let b = t.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |r: std::ops::Range<usize>| b[r].iter().any(|&c| c != b'0');
    (b.len() == 55 || (b.len() > 55 && b[55] == b'-' && &b[..2] != b"00"))
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && &b[..2] != b"ff"
        && hex(3..35)
        && nonzero(3..35)
        && hex(36..52)
        && nonzero(36..52)
        && hex(53..55)
}

/// The span context a W3C `traceparent` names, if it is valid.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The `traceparent` of a span, for the events it publishes (`None` when traces are
/// off or the span is disabled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// Links `span` to the trace a `traceparent` names (ignored when invalid).
pub fn link(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(sc) = traceparent.and_then(|t| parse_traceparent(t, tracestate)) {
        span.add_link(sc);
    }
}

/// Marks `span` failed with the error's message (an `exception` event and status).
pub fn record_error(span: &tracing::Span, error: &dyn std::fmt::Display) {
    if !enabled() {
        return;
    }
    let message = error.to_string();
    span.add_event(
        "exception",
        vec![opentelemetry::KeyValue::new(
            "exception.message",
            message.clone(),
        )],
    );
    span.set_status(opentelemetry::trace::Status::error(message));
}

/// The trace id of a span as hex, for log lines (empty when traces are off).
pub fn trace_id(span: &tracing::Span) -> String {
    if !enabled() {
        return String::new();
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_traceparents_only() {
        let sc = parse_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("vendor=1"),
        )
        .expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled());
        for bad in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-../../etc/passwd-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319ć-b7ad6b716920333-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
            assert!(!valid_traceparent(bad), "{bad}");
        }
        assert!(valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!valid_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(!valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
        ));
    }

    #[test]
    fn disabled_spans_have_no_traceparent() {
        let span = tracing::Span::none();
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), "");
    }
}
