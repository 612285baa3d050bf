//! The backend sees the request as production would deliver it.

use crate::util::*;

#[tokio::test]
async fn backend_sees_original_host_and_fresh_forwarded_headers() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    let host = format!("api.test:{}", p.http.port());

    let mut c = Client::connect(p.http).await;
    let r = c
        .send(
            &host,
            "/x",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["host"], host);
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a spoofed X-Forwarded-For is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], host);
}

#[tokio::test]
async fn trusted_proxies_extend_the_forwarded_chain() {
    let api = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    p.ok(&["route", "api", &api.target()]);

    let mut c = Client::connect(p.http).await;
    let r = c
        .send(
            "api.test",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "shop.example"),
            ],
        )
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["host"], "api.test");
}
