//! The services the binary starts, as library calls: [`run`], the pipeline (ingest,
//! scheduler, archive, purge), the index follower and, when `api.listen` is set, the
//! HTTP API; and [`serve`], the API alone with its index follower. Each is stopped by
//! one [`CancellationToken`]. Tests call them exactly as the binary does.
//!
//! Shutdown: when `cancel` fires (a signal, `--until-idle`, or a failed stage), the
//! pipeline drains its in-flight work, then the follower and the API stop, and every
//! task is awaited before [`run`] returns; an error of any of them is returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::config::{check_listen, Config, ConfigError};
use crate::index::builder::BuildError;
use crate::index::{Index, IndexError};
use crate::pipeline::{Pipeline, PipelineError, RunReport};
use crate::policy::SystemClock;
use crate::read::Reader;
use crate::source::{open_for_run, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    IndexFollower(#[from] BuildError),
    #[error(transparent)]
    Read(#[from] crate::read::ReadError),
    #[error("cannot serve on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("a service task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How `run` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `nats`, `kafka`, `kafka:TOPIC[,TOPIC]`, `file:PATH` or `stdin`; `None` archives
    /// only.
    pub source: Option<String>,
    /// Stop once no input has arrived for this long (cron-style operation).
    pub until_idle: Option<Duration>,
}

/// Runs the service until `cancel` fires (or, with `until_idle`, the input goes quiet),
/// then drains and returns what it did.
pub async fn run(
    config: Config,
    options: RunOptions,
    cancel: CancellationToken,
) -> Result<RunReport, ServiceError> {
    let source = match options.source.as_deref() {
        Some(spec) => Some(open_for_run(spec, &config).await?),
        None => None,
    };
    // Checked before anything starts, so a bad address fails fast.
    let api_addr = match &config.api.listen {
        Some(listen) => Some(check_listen(&config.api, listen)?),
        None => None,
    };
    let index = Arc::new(Index::open(&config.index.path)?);
    let pipeline = Arc::new(Pipeline::open(config, Arc::new(SystemClock)).await?);

    let follower = spawn_index_follower(pipeline.config(), index.clone(), cancel.clone());
    let api = api_addr.map(|addr| {
        let state = Arc::new(ApiState::for_pipeline(pipeline.clone(), index.clone()));
        let cancel = cancel.clone();
        tokio::spawn(async move {
            crate::api::serve(state, addr, cancel)
                .await
                .map_err(|source| ServiceError::Api { addr, source })
        })
    });
    let idle_watch = options
        .until_idle
        .map(|idle| spawn_idle_watch(&pipeline, idle, cancel.clone()));

    let report = pipeline.clone().run(source, cancel.clone()).await;
    cancel.cancel();
    follower.await??;
    if let Some(api) = api {
        api.await??;
    }
    if let Some(watch) = idle_watch {
        watch.await?;
    }
    Ok(report?)
}

/// What `serve` starts: the HTTP API and web console alone on `listen` (default
/// `api.listen`, else `127.0.0.1:8080`), with its own index follower, until `cancel`
/// fires. With no archiver running it owns the state store as the CLI does: live
/// flows are served and holds can be placed. Beside a running archiver the store is
/// held, and only archived flows are served.
pub async fn serve(
    config: Config,
    listen: Option<String>,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    let listen = listen
        .or_else(|| config.api.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let addr = check_listen(&config.api, &listen)?;
    let state = match Pipeline::open(config.clone(), Arc::new(SystemClock)).await {
        Ok(pipeline) => {
            let index = Arc::new(Index::open(&config.index.path)?);
            ApiState::for_pipeline(Arc::new(pipeline), index)
        }
        Err(e) => {
            match e {
                PipelineError::State(crate::state::StateError::Locked { .. }) => tracing::warn!(
                    "The state store is held by a running archiver: serving archived flows only."
                ),
                e => tracing::warn!(
                    error = %e,
                    "Cannot open the pipeline (holds need it): serving reads only."
                ),
            }
            ApiState::for_reader(Reader::open(config)?)
        }
    };
    let follower = spawn_index_follower(state.config(), state.index().clone(), cancel.clone());
    let state = Arc::new(state);
    let served = crate::api::serve(state, addr, cancel.clone())
        .await
        .map_err(|source| ServiceError::Api { addr, source });
    cancel.cancel();
    follower.await??;
    served
}

/// Keeps the index up to date with the `flow.archived` records as they are published.
fn spawn_index_follower(
    config: &Config,
    index: Arc<Index>,
    cancel: CancellationToken,
) -> JoinHandle<Result<(), ServiceError>> {
    let config = config.clone();
    tokio::spawn(async move {
        crate::index::builder::from_destination(index, &config, false, Some(cancel)).await?;
        Ok(())
    })
}

/// Cancels the service once no input has been stored for `idle`.
fn spawn_idle_watch(
    pipeline: &Arc<Pipeline>,
    idle: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let pipeline = pipeline.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if pipeline.input_idle_for() >= idle {
                tracing::info!(?idle, "No input for the idle period; stopping.");
                cancel.cancel();
            }
        }
    })
}
