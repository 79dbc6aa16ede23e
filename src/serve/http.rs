//! The HTTP front: axum routes over a [`Service`], API-key check, one log line and the metrics
//! of every request, graceful drain on SIGTERM/SIGINT.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::api::{self, ApiError, Route, Timeout};
use super::{log_request, Served, Service};
use crate::error::{Error, Result};

/// Binds `--host:--port`, prints the address, serves until SIGTERM or SIGINT, then drains.
pub async fn run(service: Arc<Service>) -> Result<()> {
    let (host, port) = (service.opts.host.clone(), service.opts.port);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| Error::input(format!("cannot listen on {host}:{port}: {e}")))?;
    serve(listener, service, shutdown_signal()).await
}

/// Serves on a bound listener until `shutdown` resolves; then stops accepting, lets every
/// request in progress finish, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    eprintln!("crossrank serve: listening on http://{addr}");
    let app = router(service.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("http server: {e}")))?;
    let left = service
        .metrics
        .queue_depth
        .load(std::sync::atomic::Ordering::Acquire);
    eprintln!("crossrank serve: stopped; {left} accepted requests unanswered");
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    eprintln!("crossrank serve: signal received; no longer accepting, finishing what was accepted");
}

/// The routes, the body limit, and the middleware that authenticates, logs and counts.
pub fn router(service: Arc<Service>) -> Router {
    let score = |route: Route| {
        post(
            move |State(s): State<Arc<Service>>,
                  headers: HeaderMap,
                  body: std::result::Result<Bytes, BytesRejection>| {
                score(s, route, headers, body)
            },
        )
    };
    let limit = service.opts.max_body_bytes;
    Router::new()
        .route("/rerank", score(Route::Tei))
        .route("/v1/rerank", score(Route::Cohere { version: 1 }))
        .route("/v2/rerank", score(Route::Cohere { version: 2 }))
        .route("/rerank/batch", score(Route::Batch))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route(
            "/admin/models/{name}",
            post(admin_load).delete(admin_remove),
        )
        .fallback(|| async { error(&ApiError::new(404, "not_found", "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(&ApiError::new(
                405,
                "method_not_allowed",
                "method not allowed on this route",
            ))
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(service.clone(), around))
        .with_state(service)
}

/// The headers of a scored answer that name the model that scored it and its revision (a
/// number that grows with every load, so an answer from a swapped-in model tells itself apart).
pub const MODEL_HEADER: &str = "x-crossrank-model";
pub const REVISION_HEADER: &str = "x-crossrank-model-revision";

/// The header that carries a request's latency budget; the body's `timeout_ms` wins over it.
pub const TIMEOUT_HEADER: &str = "X-Request-Timeout-Ms";

/// The budget in `X-Request-Timeout-Ms`, if sent; a value that is not a positive integer is a
/// 400 naming the header.
fn header_timeout(headers: &HeaderMap) -> std::result::Result<Option<Timeout>, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::new(
            400,
            "invalid_header",
            format!("{TIMEOUT_HEADER} must be a positive integer of milliseconds"),
        )
    })?;
    Timeout::parse(text, TIMEOUT_HEADER).map(Some)
}

async fn score(
    service: Arc<Service>,
    route: Route,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status().as_u16();
            let err = if status == 413 {
                ApiError::too_large(format!(
                    "the body is larger than --max-body-bytes {}",
                    service.opts.max_body_bytes
                ))
            } else {
                ApiError::new(status, "invalid_body", rejection.body_text())
            };
            return error(&err);
        }
    };
    let mut call = match api::parse_body(route, &body, &service.limits) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    match header_timeout(&headers) {
        Ok(t) => call.timeout = call.timeout.or(t),
        Err(e) => return error(&e),
    }
    let mut served = Served::default();
    let mut r = match service.rerank(call, &mut served).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => error(&e),
    };
    if let Some(m) = &served.model {
        // Names are checked to be header-safe; the revision is a number.
        if let Ok(v) = HeaderValue::from_str(&m.name) {
            r.headers_mut().insert(MODEL_HEADER, v);
        }
        r.headers_mut()
            .insert(REVISION_HEADER, HeaderValue::from(m.revision));
    }
    r.extensions_mut().insert(served);
    r
}

/// The `{name}` of an admin route.
fn model_name(
    name: std::result::Result<Path<String>, PathRejection>,
) -> std::result::Result<String, ApiError> {
    name.map(|Path(n)| n)
        .map_err(|e| ApiError::validation(format!("the model name in the path: {e}")))
}

/// `POST /admin/models/{name}` with `{"path": DIR}` (optional for a model already served: its
/// own path): load, warm up, swap.
async fn admin_load(
    State(s): State<Arc<Service>>,
    name: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let name = model_name(name)?;
        let body =
            body.map_err(|r| ApiError::new(r.status().as_u16(), "invalid_body", r.body_text()))?;
        let path = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            let value = api::parse_json(&body, "body")?;
            let obj = value.as_object().ok_or_else(|| {
                ApiError::validation("the body must be a JSON object: {\"path\": DIR}")
            })?;
            match obj.get("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if !p.is_empty() => Some(std::path::PathBuf::from(p)),
                Some(other) => {
                    return Err(ApiError::validation(format!(
                        "\"path\" must be a model directory, got {other}"
                    )))
                }
            }
        };
        s.load_model(&name, path).await
    }
    .await;
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

/// `DELETE /admin/models/{name}`.
async fn admin_remove(
    State(s): State<Arc<Service>>,
    name: std::result::Result<Path<String>, PathRejection>,
) -> Response {
    let result = match model_name(name) {
        Ok(name) => s.remove_model(&name).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

async fn health(State(s): State<Arc<Service>>) -> Response {
    if s.healthy() {
        json_response(StatusCode::OK, &json!({ "status": "ok" }))
    } else {
        error(&ApiError::new(
            503,
            "unhealthy",
            "the inference thread has stopped or a forward panicked (see the server log)",
        ))
    }
}

async fn info(State(s): State<Arc<Service>>) -> Response {
    json_response(StatusCode::OK, &s.info())
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    let mut r = Response::new(Body::from(s.render_metrics()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Checks the API key, then logs and counts the answer.
async fn around(State(s): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let given: Option<String> = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string());
    let bearer = |key: &str| {
        given
            .as_deref()
            .is_some_and(|g| same(g.as_bytes(), key.as_bytes()))
    };
    let admin = path == "/admin" || path.starts_with("/admin/");
    // The admin routes take the admin key only, and are off without one.
    let authorized = match (admin, &s.opts.admin_key, &s.opts.api_key) {
        (true, Some(key), _) => Some(bearer(key)),
        (true, None, _) => None,
        (false, _, None) => Some(true),
        (false, _, Some(_)) if path == "/health" => Some(true),
        (false, _, Some(key)) => Some(bearer(key)),
    };
    let response = if authorized == Some(true) {
        next.run(req).await
    } else if authorized.is_none() {
        error(&ApiError::new(
            404,
            "not_found",
            "the admin routes are off: start crossrank serve with --admin-key",
        ))
    } else {
        let which = if admin { "admin key" } else { "API key" };
        let mut r = error(&ApiError::new(
            401,
            "unauthorized",
            format!("missing or wrong {which}: send `Authorization: Bearer KEY`"),
        ));
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let status = response.status().as_u16();
    let served = response
        .extensions()
        .get::<Served>()
        .cloned()
        .unwrap_or_default();
    let elapsed = start.elapsed();
    // Label known routes only: unknown paths must not grow the metrics without bound.
    let label = match (path.as_str(), Route::from_path(&path)) {
        (_, Some(r)) => r.path(),
        ("/health", _) => "/health",
        ("/info", _) => "/info",
        ("/metrics", _) => "/metrics",
        _ if admin => "/admin/models",
        _ => "other",
    };
    let model = served.model.as_ref().map_or("", |m| m.name.as_str());
    s.metrics
        .request(label, status, model, elapsed.as_secs_f64());
    log_request(method.as_str(), &path, status, &served, elapsed);
    response
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer; 503 carries Retry-After.
pub fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &e.body());
    if e.status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}
