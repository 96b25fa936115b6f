//! The agent's HTTP side, on axum: the probes and metrics (`/healthz`, `/readyz`, `/metrics`)
//! on TCP for kubelet and Prometheus, and the same routes plus the debug API (`/v1/...`) on a
//! Unix socket only root on the node can reach (not pods, not other hosts).
//!
//! The debug API only reads: it answers from [`Metrics`] and asks the runtime the rest
//! ([`Query`]); nothing it does changes enforcement.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    extract::{Query as UrlQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    debug::report::{EndpointReport, Reference, StatusReport},
    metrics::Metrics,
    monitor::{EventHub, MonitorEvent, RawEvent},
    policy::{Flow, Names},
    runtime::Query,
};

/// How long the debug API waits for the runtime (busy with a large converge, say).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent knows about itself at start, for `status`.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub node: String,
    pub backend_reason: String,
    pub kernel: String,
    pub attach_mode: Option<String>,
    pub source: String,
}

#[derive(Clone)]
struct ApiState {
    metrics: Arc<Metrics>,
    info: Arc<AgentInfo>,
    queries: mpsc::Sender<Query>,
    /// The drop and audit events (`None`: their source could not be opened).
    events: Option<Arc<EventHub>>,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn probes(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

/// The probes and the debug API.
pub fn debug_api(
    metrics: Arc<Metrics>,
    info: AgentInfo,
    queries: mpsc::Sender<Query>,
    events: Option<Arc<EventHub>>,
) -> Router {
    let state = ApiState {
        metrics: Arc::clone(&metrics),
        info: Arc::new(info),
        queries,
        events,
    };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/names", get(names))
        .route("/v1/explain", get(explain))
        .route("/v1/monitor", get(monitor))
        .with_state(state)
        .merge(probes(metrics))
}

async fn healthz(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.dead_reason() {
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("dead: {reason}\n")).into_response()
        }
        None => "ok\n".into_response(),
    }
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> Response {
    if metrics.is_ready() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", metrics.not_ready_reason()),
        )
            .into_response()
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<ApiState>) -> Json<StatusReport> {
    let info = &state.info;
    let mut report = StatusReport {
        agent_running: true,
        node: info.node.clone(),
        pid: Some(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend_reason: info.backend_reason.clone(),
        kernel: info.kernel.clone(),
        attach_mode: info.attach_mode.clone(),
        source: info.source.clone(),
        ..StatusReport::default()
    };
    state.metrics.fill_status(&mut report);
    Json(report)
}

/// Asks the runtime; a runtime that does not answer in time is a 503 naming why.
async fn ask<T>(
    state: &ApiState,
    query: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, (StatusCode, String)> {
    let (reply, answer) = oneshot::channel();
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    state
        .queries
        .send_timeout(query(reply), QUERY_TIMEOUT)
        .await
        .map_err(|_| unavailable("the agent's runtime does not take questions"))?;
    tokio::time::timeout(QUERY_TIMEOUT, answer)
        .await
        .map_err(|_| unavailable("the agent's runtime did not answer in time"))?
        .map_err(|_| unavailable("the agent's runtime dropped the question"))
}

async fn endpoints(
    State(state): State<ApiState>,
) -> Result<Json<Vec<EndpointReport>>, (StatusCode, String)> {
    ask(&state, Query::Endpoints).await.map(Json)
}

async fn names(State(state): State<ApiState>) -> Result<Json<Names>, (StatusCode, String)> {
    ask(&state, Query::Names).await.map(Json)
}

#[derive(Deserialize)]
struct FlowParams {
    from: std::net::IpAddr,
    to: std::net::IpAddr,
    protocol: u8,
    port: u16,
}

async fn explain(
    State(state): State<ApiState>,
    UrlQuery(params): UrlQuery<FlowParams>,
) -> Result<Json<Reference>, (StatusCode, String)> {
    let flow = Flow::new(params.from, params.to, params.protocol, params.port);
    match ask(&state, |reply| Query::Explain(flow, reply)).await? {
        Some(reference) => Ok(Json(reference)),
        None => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not synced yet\n".to_owned(),
        )),
    }
}

#[derive(Deserialize)]
struct MonitorParams {
    /// Send the kept events of the last this many seconds first.
    since: Option<f64>,
    /// `false`: end after the kept events instead of following.
    follow: Option<bool>,
}

/// How often a subscriber's names are refreshed from the runtime (pods come and go).
const NAMES_REFRESH: Duration = Duration::from_secs(1);

/// `GET /v1/monitor`: the events as they happen, one JSON object per line, named. A
/// subscriber that falls behind gets a `lost` line instead of what it missed.
async fn monitor(
    State(state): State<ApiState>,
    UrlQuery(params): UrlQuery<MonitorParams>,
) -> Result<Response, (StatusCode, String)> {
    let Some(hub) = state.events.clone() else {
        return Err((
            StatusCode::NOT_IMPLEMENTED,
            "the agent could not open its drop event source (see its log)\n".to_owned(),
        ));
    };
    let since = params
        .since
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map(Duration::from_secs_f64);
    let (past, receiver) = hub.subscribe(since);
    let names = ask(&state, Query::Names).await?;
    let subscriber = Subscriber {
        state,
        past: past.into(),
        receiver: params.follow.unwrap_or(true).then_some(receiver),
        names,
        named_at: tokio::time::Instant::now(),
    };
    let lines = futures::stream::unfold(subscriber, |mut subscriber| async move {
        let line = subscriber.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(line), subscriber))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

struct Subscriber {
    state: ApiState,
    past: std::collections::VecDeque<RawEvent>,
    /// `None`: only the kept events.
    receiver: Option<tokio::sync::broadcast::Receiver<RawEvent>>,
    names: Names,
    named_at: tokio::time::Instant,
}

impl Subscriber {
    /// The next line to send; `None` ends the stream (the agent is stopping).
    async fn next_line(&mut self) -> Option<String> {
        use tokio::sync::broadcast::error::RecvError;
        let event = match self.past.pop_front() {
            Some(event) => event,
            None => match self.receiver.as_mut()?.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    self.state.metrics.count_monitor_lost(missed);
                    return Some(json_line(&MonitorEvent::lost(missed)));
                }
                Err(RecvError::Closed) => return None,
            },
        };
        if self.named_at.elapsed() >= NAMES_REFRESH {
            if let Ok(names) = ask(&self.state, Query::Names).await {
                self.names = names;
            }
            self.named_at = tokio::time::Instant::now();
        }
        Some(json_line(&MonitorEvent::named(&event, &self.names)))
    }
}

fn json_line(event: &MonitorEvent) -> String {
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    line
}

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve_tcp(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("serving on {addr}"))
}

/// Serves `router` on the Unix socket `path` (replacing a stale one; mode 0600) until
/// `shutdown` resolves.
pub async fn serve_unix(
    path: &Path,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing the stale {}", path.display()));
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    tracing::info!(socket = %path.display(), "serving the debug API");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("serving on {}", path.display()))
}
