//! The dashboard at the proxy's own name (`https://itproxy.test/`): one page (server-sent
//! HTML, a stylesheet and a script, all built in) over the control API's read-only part,
//! served on a loopback listener that the daemon routes that name to, and `/metrics`.
//!
//! The page shows the routes with their source and health, the apps and their state, and the
//! request list, live (it follows `GET /v1/requests?follow=true`), with each request's detail
//! on click. Everything a client sent is set as text, never HTML; the content security policy
//! allows this origin's script and style only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::header;
use tokio_util::sync::CancellationToken;

use crate::control::Control;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page.
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// Its script.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its stylesheet.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// A loopback listener for the dashboard, bound before the routes are built (the route to it
/// needs its port).
pub(crate) fn bind() -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves the dashboard on `listener` until `stop`.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    control: Arc<Control>,
    guard: crate::control::DashboardGuard,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "the dashboard cannot listen; it is not served");
                return;
            }
        };
        let app = crate::control::dashboard_app(control, guard);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    })
}
