//! WebSocket upgrades pass through the proxy.

use futures_util::{SinkExt, StreamExt};

use crate::util::*;

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let (addr, _task) = websocket_backend("ws").await;
    let p = Itproxy::start();
    p.ok(&["route", "chat", &addr.to_string()]);

    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", stream)
        .await
        .expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        assert_eq!(msg.to_text().unwrap(), format!("ws: hello {i}"));
    }
    ws.close(None).await.unwrap();
}
