//! An OTLP trace receiver for tests: real OTLP protobuf over HTTP (`POST /v1/traces`)
//! and over gRPC (`TraceService/Export`), decoded with the official generated types,
//! on free loopback ports, in a runtime of its own that stops on drop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One received span, flattened for assertions. Ids are lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    /// `http` or `grpc`: how it arrived.
    pub transport: &'static str,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub event_names: Vec<String>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

pub struct OtlpReceiver {
    pub http_endpoint: String,
    pub grpc_endpoint: String,
    spans: Spans,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn value_text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(&kv.value)))
        .collect()
}

fn collect(request: ExportTraceServiceRequest, transport: &'static str, into: &Spans) {
    let mut out = into.lock().expect("spans lock");
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    transport,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: attributes(&s.attributes),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    event_names: s.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(request.into_inner(), "grpc", &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(
    axum::extract::State(spans): axum::extract::State<Spans>,
    body: axum::body::Bytes,
) -> Result<([(&'static str, &'static str); 1], Vec<u8>), (axum::http::StatusCode, String)> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("not OTLP protobuf: {e}"),
        )
    })?;
    collect(request, "http", &spans);
    Ok((
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let spans: Spans = Arc::default();
        let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind OTLP/HTTP");
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").expect("bind OTLP/gRPC");
        let http_endpoint = format!("http://{}", http.local_addr().expect("addr"));
        let grpc_endpoint = format!("http://{}", grpc.local_addr().expect("addr"));
        for l in [&http, &grpc] {
            l.set_nonblocking(true).expect("nonblocking");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = spans.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let http = tokio::net::TcpListener::from_std(http).expect("http listener");
                let grpc = tokio::net::TcpListener::from_std(grpc).expect("grpc listener");
                let app = axum::Router::new()
                    .route("/v1/traces", axum::routing::post(http_export))
                    .with_state(shared.clone());
                let grpc_server = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(Grpc(shared)))
                    .serve_with_incoming(tokio_stream_of(grpc));
                tokio::select! {
                    _ = stopped => {}
                    r = axum::serve(http, app) => { r.expect("OTLP/HTTP server"); }
                    r = grpc_server => { r.expect("OTLP/gRPC server"); }
                }
            });
        });
        OtlpReceiver {
            http_endpoint,
            grpc_endpoint,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans lock").clone()
    }

    /// Waits until `check` holds for the received spans.
    pub fn wait_for(&self, limit: Duration, what: &str, check: impl Fn(&[ReceivedSpan]) -> bool) {
        let deadline = std::time::Instant::now() + limit;
        while !check(&self.spans()) {
            if std::time::Instant::now() > deadline {
                let names: BTreeMap<String, usize> =
                    self.spans().iter().fold(BTreeMap::new(), |mut m, s| {
                        *m.entry(s.name.clone()).or_default() += 1;
                        m
                    });
                panic!("timed out waiting for {what}; spans received: {names:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Accepted connections as the stream tonic's server takes.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    })
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
