//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (the process runs) and
//! `/readyz` (the operator reached the API server and runs its controllers or waits as a
//! standby replica).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Metrics;

/// What the endpoint reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Whether the operator is ready.
    pub ready: AtomicBool,
    /// Whether this replica holds the leader Lease.
    pub leader: AtomicBool,
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    match shared.metrics.encode() {
        Ok(mut text) => {
            let leader = u8::from(shared.health.leader.load(Ordering::Relaxed));
            text = text.replace(
                "# EOF\n",
                &format!(
                    "# HELP kubekms_operator_leader Whether this replica holds the leader Lease.\n# TYPE kubekms_operator_leader gauge\nkubekms_operator_leader {leader}\n# EOF\n"
                ),
            );
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    if shared.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves the endpoint on `addr` until `shutdown` completes.
///
/// # Errors
/// When the address cannot be bound or serving fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
