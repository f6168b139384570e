//! `/graphql`: the REST API's data as one GraphQL schema (`schemas/schema.graphql`),
//! which the web console reads through too (docs/console.md).
//!
//! Guarantees:
//! - the same tokens as REST: a request without a known token is refused (401) before
//!   anything runs, and every resolver scopes by the token's tenant (a tenant token
//!   names only its own tenant, and listings are narrowed to it);
//! - holds and replays are mutations open only to the admin token, on a server that
//!   owns the state store, exactly as their REST routes;
//! - a query deeper than [`MAX_DEPTH`] or costlier than [`MAX_COMPLEXITY`] (paged
//!   fields cost their page size times their selection) is refused before it runs;
//! - introspection is off when `api.graphql_introspection = false`.

mod flow;
mod types;

use std::sync::Arc;

use async_graphql::{
    Context, EmptySubscription, Error, ErrorExtensions, Object, Result, Schema, SchemaBuilder,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{access, api_actor, caller, ApiError, ApiState};
use crate::flow::FlowRef;
use crate::index::{ListParams, ListQuery};
use crate::read::ReadError;
use types::*;

/// Deepest selection accepted; the standard introspection query is 13 deep.
pub const MAX_DEPTH: usize = 15;
/// Costliest query accepted: each field costs 1, a paged field its page size times
/// its selection's cost.
pub const MAX_COMPLEXITY: usize = 5_000;
/// Default and largest page of `archivedFlows` and `liveFlows`, as REST's `limit`.
const DEFAULT_PAGE: i32 = 100;
const MAX_PAGE: i32 = 1000;

pub type FlowSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

fn builder() -> SchemaBuilder<QueryRoot, MutationRoot, EmptySubscription> {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
}

/// The schema as this server runs it.
pub fn schema(introspection: bool) -> FlowSchema {
    let b = builder();
    if introspection {
        b.finish()
    } else {
        b.disable_introspection().finish()
    }
}

/// The schema in SDL, as `schemas/schema.graphql` holds it.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// Who asks, as resolvers see it.
struct Caller {
    /// `None`: every tenant (the admin token, or no tokens configured).
    scope: Option<String>,
    role: &'static str,
}

impl Caller {
    fn allow(&self, tenant: &str) -> Result<()> {
        access::allow(&self.scope, tenant).map_err(refused)
    }

    /// The tenant a listing is narrowed to (an empty one is no tenant).
    fn narrow(&self, asked: Option<String>) -> Result<Option<String>> {
        access::narrow(&self.scope, asked.filter(|t| !t.is_empty())).map_err(refused)
    }
}

fn refused(r: access::Refusal) -> Error {
    coded(r.code, r.message)
}

fn coded(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

pub(super) fn bad_request(message: impl Into<String>) -> Error {
    coded("BAD_REQUEST", message)
}

fn internal(e: impl std::fmt::Display) -> Error {
    coded("INTERNAL", e.to_string())
}

fn read_error(e: ReadError) -> Error {
    match e {
        ReadError::Archive(e @ crate::archive::ArchiveError::RestoreRequired { .. }) => {
            coded("RESTORE_REQUIRED", e.to_string())
        }
        ReadError::Cursor(m) => bad_request(m),
        e => internal(e),
    }
}

fn ids(tenant: &str, flow_id: &str) -> Result<FlowRef> {
    FlowRef::new(tenant, flow_id).map_err(bad_request)
}

fn context<'a>(ctx: &Context<'a>) -> (&'a Arc<ApiState>, &'a Caller) {
    (
        ctx.data_unchecked::<Arc<ApiState>>(),
        ctx.data_unchecked::<Caller>(),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

/// Every hold this server knows, narrowed to the caller's tenant: the state store's
/// when it owns it (with reasons), else the index's replay of `flow.hold`.
async fn holds_of(state: &ApiState, caller: &Caller) -> Result<Vec<Hold>> {
    let all: Vec<Hold> = match &state.pipeline {
        Some(p) => p
            .holds()
            .await
            .map_err(internal)?
            .into_iter()
            .map(Hold::from)
            .collect(),
        None => {
            let index = state.reader.index().clone();
            blocking(move || index.holds())
                .await?
                .map_err(internal)?
                .into_iter()
                .map(|(tenant, flow_id)| Hold {
                    tenant,
                    flow_id,
                    reason: None,
                    actor: None,
                    since: None,
                })
                .collect()
        }
    };
    Ok(all
        .into_iter()
        .filter(|h| caller.allow(&h.tenant).is_ok())
        .collect())
}

/// A listing's query: the filter narrowed to the caller's tenant, a page of `first`
/// (default 100, at most 1000) after the cursor `after`.
fn search_query(
    caller: &Caller,
    filter: Option<FlowFilter>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<ListQuery> {
    let f = filter.unwrap_or_default();
    ListParams {
        tenant: caller.narrow(f.tenant)?,
        flow_id_prefix: f.flow_id_prefix,
        status: f.status.filter(|s| !s.is_empty()),
        label: None,
        labels: f
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.key, l.value))
            .collect(),
        archived_after: f.from.filter(|s| !s.is_empty()),
        archived_before: f.until.filter(|s| !s.is_empty()),
        limit: Some(first.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize),
        cursor: after,
    }
    .parse()
    .map_err(|e| bad_request(e.to_string()))
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Who the token belongs to, and what it may do here.
    async fn viewer(&self, ctx: &Context<'_>) -> Viewer {
        let (state, caller) = context(ctx);
        Viewer {
            role: caller.role.to_string(),
            tenant: caller.scope.clone(),
            can_act: caller.role == "admin" && state.pipeline.is_some(),
            sees_live_flows: state.reader.sees_live_flows(),
        }
    }

    /// A flow, live and archived parts together; null when neither exists. Archived
    /// events are read back and verified only when `events` is selected.
    #[graphql(complexity = "10 + child_complexity")]
    async fn flow(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        flow_id: String,
    ) -> Result<Option<Flow>> {
        let (state, caller) = context(ctx);
        ids(&tenant, &flow_id)?;
        caller.allow(&tenant)?;
        let with_events = ctx.look_ahead().field("events").exists();
        let Some(mut flow) = flow::read(&state.reader, &tenant, &flow_id, with_events)
            .await
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        flow.hold = holds_of(state, caller)
            .await?
            .into_iter()
            .find(|h| h.tenant == tenant && h.flow_id == flow_id);
        Ok(Some(flow))
    }

    /// Archived flow parts, newest archival last, in the REST listing's order and with
    /// its cursors: `first` (default 100, at most 1000) after `after`.
    #[graphql(complexity = "first.unwrap_or(100).clamp(1, 1000) as usize * child_complexity")]
    async fn archived_flows(
        &self,
        ctx: &Context<'_>,
        filter: Option<FlowFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<ArchivedConnection> {
        let (state, caller) = context(ctx);
        let query = search_query(caller, filter, first, after)?;
        let index = state.reader.index().clone();
        let page = blocking(move || index.list(&query))
            .await?
            .map_err(|e| match e {
                crate::index::IndexError::Cursor(_) => bad_request(e.to_string()),
                e => internal(e),
            })?;
        Ok(ArchivedConnection {
            edges: page
                .cursors
                .into_iter()
                .zip(page.items)
                .map(|(cursor, p)| ArchivedEdge {
                    cursor,
                    node: p.into(),
                })
                .collect(),
            page_info: PageInfo {
                has_next_page: page.next_cursor.is_some(),
                end_cursor: page.next_cursor,
            },
        })
    }

    /// Live flows (open parts), in the state store's order: `first` (default 100)
    /// after `after`. A page may be short while `hasNextPage` is true (each page does
    /// bounded work); empty when this server does not hold the state store.
    #[graphql(complexity = "first.unwrap_or(100).clamp(1, 1000) as usize * child_complexity")]
    async fn live_flows(
        &self,
        ctx: &Context<'_>,
        filter: Option<FlowFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<LiveConnection> {
        let (state, caller) = context(ctx);
        let query = search_query(caller, filter, first, after)?;
        let page = state.reader.search_live(&query).await.map_err(read_error)?;
        Ok(LiveConnection {
            edges: page
                .items
                .into_iter()
                .map(|i| LiveEdge {
                    cursor: i.cursor.clone(),
                    node: i.into(),
                })
                .collect(),
            page_info: PageInfo {
                has_next_page: page.next_cursor.is_some(),
                end_cursor: page.next_cursor,
            },
        })
    }

    /// Archive counts and bytes, in total and by tenant, status and day; a tenant
    /// token's are its own.
    async fn stats(&self, ctx: &Context<'_>, tenant: Option<String>) -> Result<Stats> {
        let (state, caller) = context(ctx);
        let tenant = caller.narrow(tenant)?;
        let index = state.reader.index().clone();
        let t = tenant.clone();
        let s = blocking(move || index.stats(t.as_deref()))
            .await?
            .map_err(internal)?;
        let live_flows = state
            .reader
            .live_flow_count(tenant.as_deref())
            .await
            .map_err(read_error)?;
        let holds = holds_of(state, caller)
            .await?
            .into_iter()
            .filter(|h| tenant.as_ref().is_none_or(|t| *t == h.tenant))
            .count() as u64;
        Ok(Stats {
            flow_parts: s.flow_parts,
            events: s.events,
            raw_bytes: s.raw_bytes,
            stored_bytes: s.stored_bytes,
            compression_ratio: s.compression_ratio,
            groups: s.by_tenant_status_day.into_iter().map(Into::into).collect(),
            live_flows,
            holds,
        })
    }

    /// Flows on hold (a tenant token's own), by tenant and flow id.
    async fn holds(&self, ctx: &Context<'_>) -> Result<Vec<Hold>> {
        let (state, caller) = context(ctx);
        holds_of(state, caller).await
    }

    /// The latest audit records, newest first: `last` (default 20, at most 200). A
    /// tenant token sees those naming its tenant.
    async fn activity(&self, ctx: &Context<'_>, last: Option<i32>) -> Result<Vec<Activity>> {
        let (state, caller) = context(ctx);
        let last = last.unwrap_or(20).clamp(1, 200) as usize;
        let path = state.reader.config().audit.path.clone();
        let records = blocking(move || crate::audit::read(&path, None))
            .await?
            .map_err(internal)?;
        Ok(records
            .into_iter()
            .rev()
            .filter(|r| match &caller.scope {
                None => true,
                Some(own) => r.tenant.as_deref() == Some(own.as_str()),
            })
            .take(last)
            .map(Into::into)
            .collect())
    }

    /// Re-reads every object holding a part of the flow and checks its checksums.
    #[graphql(complexity = 50)]
    async fn verify_flow(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        flow_id: String,
    ) -> Result<VerifyResult> {
        let (state, caller) = context(ctx);
        ids(&tenant, &flow_id)?;
        caller.allow(&tenant)?;
        let report = state
            .reader
            .verify_flow(&tenant, &flow_id)
            .await
            .map_err(read_error)?;
        Ok(VerifyResult {
            ok: report.ok(),
            objects: report.objects,
            flow_parts: report.flow_parts,
            problems: report
                .problems
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.problem))
                .collect(),
        })
    }
}

#[derive(async_graphql::SimpleObject)]
pub struct PageInfo {
    pub has_next_page: bool,
    /// Pass as `after` for the next page.
    pub end_cursor: Option<String>,
}

#[derive(async_graphql::SimpleObject)]
pub struct ArchivedEdge {
    pub cursor: String,
    pub node: ArchivedPart,
}

#[derive(async_graphql::SimpleObject)]
pub struct ArchivedConnection {
    pub edges: Vec<ArchivedEdge>,
    pub page_info: PageInfo,
}

#[derive(async_graphql::SimpleObject)]
pub struct LiveEdge {
    pub cursor: String,
    pub node: LiveFlow,
}

#[derive(async_graphql::SimpleObject)]
pub struct LiveConnection {
    pub edges: Vec<LiveEdge>,
    pub page_info: PageInfo,
}

pub struct MutationRoot;

/// The running pipeline, for the admin token only (as REST's hold routes).
fn acting<'a>(ctx: &Context<'a>) -> Result<&'a Arc<crate::pipeline::Pipeline>> {
    let (state, caller) = context(ctx);
    access::admin_only(&state.auth, &caller.scope).map_err(refused)?;
    access::acting_pipeline(state).map_err(refused)
}

fn not_found_or_internal(e: crate::pipeline::PipelineError) -> Error {
    match e {
        crate::pipeline::PipelineError::NotFound(m) => coded("NOT_FOUND", m),
        e => internal(e),
    }
}

#[Object]
impl MutationRoot {
    /// Places a legal hold on every part of a flow, live and archived (admin only).
    async fn place_hold(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        flow_id: String,
        reason: String,
        actor: Option<String>,
    ) -> Result<Hold> {
        let pipeline = acting(ctx)?;
        ids(&tenant, &flow_id)?;
        if reason.trim().is_empty() {
            return Err(bad_request("reason must say why the flow is held"));
        }
        let actor = api_actor(actor.as_deref());
        pipeline
            .hold(&tenant, &flow_id, &reason, &actor)
            .await
            .map_err(not_found_or_internal)?;
        let holds = pipeline.holds().await.map_err(internal)?;
        holds
            .into_iter()
            .find(|h| h.tenant == tenant && h.flow_id == flow_id)
            .map(Hold::from)
            .ok_or_else(|| internal("the hold was placed but is not listed"))
    }

    /// Releases a flow's legal hold (admin only); an error when there is none.
    async fn release_hold(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        flow_id: String,
        reason: Option<String>,
        actor: Option<String>,
    ) -> Result<bool> {
        let pipeline = acting(ctx)?;
        ids(&tenant, &flow_id)?;
        let reason = reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "released".into());
        pipeline
            .release(&tenant, &flow_id, &reason, &api_actor(actor.as_deref()))
            .await
            .map_err(not_found_or_internal)?;
        Ok(true)
    }

    /// Re-publishes an archived flow's events, in order, to `kafka:TOPIC` or
    /// `nats:SUBJECT` (admin only).
    #[graphql(complexity = 50)]
    async fn replay_flow(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        flow_id: String,
        to: String,
        actor: Option<String>,
    ) -> Result<ReplayResult> {
        let pipeline = acting(ctx)?;
        ids(&tenant, &flow_id)?;
        let target = match crate::replay::ReplayTarget::parse(&to).map_err(bad_request)? {
            crate::replay::ReplayTarget::Stdout => {
                return Err(bad_request(
                    "stdout is the server's own output: replay over the API to kafka:TOPIC or nats:SUBJECT",
                ))
            }
            t => t,
        };
        let report = crate::replay::replay(
            pipeline,
            &tenant,
            &flow_id,
            &target,
            &api_actor(actor.as_deref()),
        )
        .await
        .map_err(|e| match e {
            crate::replay::ReplayError::NotFound(m) => coded("NOT_FOUND", m),
            e => internal(e),
        })?;
        Ok(ReplayResult {
            target: report.target,
            parts: report.parts,
            events: report.events,
            bytes: report.bytes,
        })
    }
}

/// `POST /graphql` with `{"query", "variables", "operationName"}`.
pub(super) async fn handle(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let scope = caller(&state, &headers)?;
    let role = match (&scope, state.auth.has_tokens()) {
        (Some(_), _) => "tenant",
        (None, true) => "admin",
        (None, false) => "open",
    };
    let request: async_graphql::Request = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a GraphQL request ({{\"query\": …}}): {e}"),
        )
    })?;
    let request = request.data(state.clone()).data(Caller { scope, role });
    let response = state.graphql.execute(request).await;
    Ok(Json(response).into_response())
}
