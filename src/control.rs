//! The control API over the Unix socket: HTTP+JSON, documented in `docs/api.yaml`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;

use crate::api::{self, ErrorBody, ErrorDetail, PutRoute};
use crate::daemon::{ApiError, Daemon};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type Shared = State<Arc<Daemon>>;

/// The API's routes.
pub fn app(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/routes", get(list))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/routes/{name}/restore", post(restore_route))
        .route("/v1/apps", get(apps))
        .route("/v1/apps/{name}", get(get_app))
        .route("/v1/apps/{name}/{action}", post(app_action))
        .route("/v1/shutdown", post(shutdown))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
        .with_state(daemon)
}

async fn status(State(d): Shared) -> Json<api::Status> {
    Json(d.status().await)
}

async fn list(State(d): Shared) -> Json<Vec<api::RouteView>> {
    Json(d.list().await)
}

async fn get_route(
    State(d): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::RouteView>, ApiError> {
    d.get(&name).await.map(Json)
}

async fn put_route(
    State(d): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<api::RouteView>, ApiError> {
    let body = read_body(body)?;
    let put = PutRoute::from_body(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("the body must be JSON like {{\"target\": \"localhost:8000\"}}: {e}"),
        )
    })?;
    d.put(&name, put).await.map(Json)
}

async fn delete_route(
    State(d): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::Removed>, ApiError> {
    d.delete(&name).await.map(Json)
}

async fn restore_route(
    State(d): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::Restored>, ApiError> {
    d.restore(&name).await.map(Json)
}

async fn apps(State(d): Shared) -> Json<api::AppsView> {
    Json(d.apps_view().await)
}

async fn get_app(
    State(d): Shared,
    Path(name): Path<String>,
) -> Result<Json<api::AppView>, ApiError> {
    d.app(&name).await.map(Json)
}

async fn app_action(
    State(d): Shared,
    Path((name, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<api::AppView>), ApiError> {
    let body = read_body(body)?;
    let action_body = api::AppAction::from_body(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!(
                "the body must be empty or JSON like {{\"wait\": true, \"timeout\": \"30s\"}}: {e}"
            ),
        )
    })?;
    let (status, view) = d.app_action(&name, &action, action_body).await?;
    Ok((status, Json(view)))
}

async fn shutdown(State(d): Shared) -> (StatusCode, Json<serde_json::Value>) {
    d.stop();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stopping": true, "pid": std::process::id() })),
    )
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        ApiError::new(
            e.status(),
            "bad_body",
            format!("cannot read the request body: {}", e.body_text()),
        )
    })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.yaml",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see docs/api.yaml",
    )
}
