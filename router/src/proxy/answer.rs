//! The answers Pingora's pipeline gives itself, without an upstream: the HTTPS redirect and
//! itproxy's pages (`pages`), HTML for browsers and JSON for everyone else. The HTTP/1.1 front
//! writes the same pages its own way (`Page::write_h1`).

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result as PResult;

use crate::pages::Page;

/// 308 to the same host and path over HTTPS.
pub(super) async fn redirect_https(session: &mut Session, host: &str, port: u16) -> PResult<()> {
    let path = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut resp = ResponseHeader::build(308, Some(3))?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CONTENT_LENGTH, 0)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    answer(session, resp, Bytes::new()).await
}

/// Sends a complete answer of our own. Unlike Pingora's `write_error_response`, the client
/// keeps its connection for the next request (as nginx does after a 404 or a redirect), unless
/// the request was bad (4xx other than 404) or a proxying error occurred.
async fn answer(session: &mut Session, resp: ResponseHeader, body: Bytes) -> PResult<()> {
    // A HEAD answer has the GET's headers (its Content-Length too) and no body: HTTP/1.1
    // would drop one, HTTP/2 would send it and break the stream.
    let body = if session.req_header().method == http::Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let status = resp.status.as_u16();
    if (400..500).contains(&status) && status != 404 || status >= 500 {
        return session.write_error_response(resp, body).await;
    }
    let empty = body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn wants_html(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

pub(super) async fn send_page(session: &mut Session, page: Page) -> PResult<()> {
    let (content_type, body) = page.render(wants_html(session));
    let mut resp = ResponseHeader::build(page.status(), Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(seconds) = page.retry_after() {
        resp.insert_header(header::RETRY_AFTER, seconds)?;
    }
    answer(session, resp, Bytes::from(body)).await
}
