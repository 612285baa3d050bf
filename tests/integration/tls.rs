//! HTTPS as a user meets it: trusted certificates from the local CA for every route, with the
//! root's name constraints keeping everything else out.

use std::process::Command;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// The daemon's own CA, loaded from its files, to sign test certificates with.
fn ca_issuer(ca: &std::path::Path) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.join("root-key.pem")).unwrap())
        .unwrap();
    rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca.join("root.pem")).unwrap(), key)
        .unwrap()
}

fn root(p: &Itproxy) -> String {
    p.state_dir().join("ca/root.pem").display().to_string()
}

fn openssl(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = output_text(&out);
    (out.status.success(), text)
}

/// curl over HTTPS with `--resolve` and only our root trusted; returns (exit code, status, body).
async fn curl_https(p: &Itproxy, host: &str, path: &str, extra: &[&str]) -> (i32, String, String) {
    let resolve = format!("{host}:{}:127.0.0.1", p.https.port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
            "--cacert",
            &root(p),
        ])
        .args(["--resolve", &resolve])
        .args(extra)
        .arg(format!("https://{host}:{}{path}", p.https.port()))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.to_string(),
        body.to_string(),
    )
}

#[tokio::test]
async fn routes_are_served_over_trusted_https_with_http2() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);

    let (code, status, body) = curl_https(&p, "api.test", "/secure", &["--http1.1"]).await;
    assert_eq!((code, status.as_str()), (0, "200 1.1"), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        seen["headers"]["host"],
        format!("api.test:{}", p.https.port())
    );

    // HTTP/2 by ALPN; the HTTP/1.1 backend still gets a Host header and an origin-form URI.
    let (code, status, body) = curl_https(&p, "api.test", "/h2?q=1", &["--http2"]).await;
    assert_eq!((code, status.as_str()), (0, "200 2"), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["uri"], "/h2?q=1");
    assert_eq!(
        seen["headers"]["host"],
        format!("api.test:{}", p.https.port())
    );

    // A browser's HTTP/2 cookies arrive as one Cookie header, and the forwarded host is set,
    // as over HTTP/1.1 (Django and gunicorn lose the session otherwise).
    let (code, _, body) = curl_https(
        &p,
        "api.test",
        "/login",
        &[
            "--http2",
            "-H",
            "cookie: sessionid=abc",
            "-H",
            "cookie: csrftoken=xyz",
        ],
    )
    .await;
    assert_eq!(code, 0, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["cookie"], "sessionid=abc; csrftoken=xyz");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("api.test:{}", p.https.port())
    );

    let (ok, text) = openssl(
        &[
            "s_client",
            "-connect",
            &p.https.to_string(),
            "-servername",
            "api.test",
            "-verify_return_error",
            "-CAfile",
            &root(&p),
        ],
        "",
    );
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(
        text.contains("CN = api.test") || text.contains("CN=api.test"),
        "{text}"
    );
}

/// A rustls client that trusts only `p`'s root.
fn rustls_client(p: &Itproxy) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(rustls_config(p)))
}

/// The settings of [`rustls_client`].
fn rustls_config(p: &Itproxy) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(root(p)).unwrap())
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn a_rustls_client_trusting_only_our_root_accepts_the_certificate() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "web", &api.target()]);

    let tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    let mut tls = rustls_client(&p)
        .connect(ServerName::try_from("web.test").unwrap(), tcp)
        .await
        .expect("the certificate verifies against our root alone");
    tls.write_all(b"GET /r HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-backend: api"), "{out}");
}

#[tokio::test]
async fn unknown_names_missing_sni_and_plain_http_get_clear_answers() {
    let p = Itproxy::start();
    // A name in our domain with no route: a valid certificate and a 404 page.
    let (code, status, body) = curl_https(&p, "nothing.test", "/", &[]).await;
    assert_eq!((code, &status[..3]), (0, "404"), "{body}");
    assert!(body.contains("nothing.test"));

    // A name outside the constraints: no certificate at all, the handshake fails, and the log says why.
    let (code, _, _) = curl_https(&p, "www.example.com", "/", &["--insecure"]).await;
    assert_eq!(code, 35, "curl reports a TLS handshake failure");
    let log = p.log();
    assert!(
        log.contains("no certificate for \"www.example.com\"") && log.contains("outside"),
        "{log}"
    );

    // No SNI (an IP address): the localhost certificate, which covers 127.0.0.1.
    let (ok, text) = openssl(
        &[
            "s_client",
            "-connect",
            &p.https.to_string(),
            "-noservername",
            "-verify_return_error",
            "-CAfile",
            &root(&p),
            "-verify_ip",
            "127.0.0.1",
        ],
        "",
    );
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "{text}");

    // Plain HTTP on the TLS port is refused without harm.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{}/", p.https)])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let (code, _, _) = curl_https(&p, "nothing.test", "/", &[]).await;
    assert_eq!(code, 0, "the proxy still serves TLS");
}

#[tokio::test]
async fn the_root_is_name_constrained_and_reused_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let mut p = Itproxy::start();
    let ca = p.state_dir().join("ca");
    let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    assert_eq!(mode(&ca), 0o700);
    let root_path = root(&p);
    let fingerprint = || {
        let (ok, text) = openssl(
            &[
                "x509",
                "-noout",
                "-fingerprint",
                "-sha256",
                "-in",
                &root_path,
            ],
            "",
        );
        assert!(ok, "{text}");
        text
    };
    let before = fingerprint();
    let (_, text) = openssl(&["x509", "-noout", "-text", "-in", &root(&p)], "");
    assert!(
        text.contains("Name Constraints: critical") && text.contains("DNS:test"),
        "{text}"
    );
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    p.restart();
    assert_eq!(fingerprint(), before, "the CA is reused, not recreated");

    // A certificate forged with the CA's own key for a real site does not verify.
    let issuer = ca_issuer(&ca);
    // Signs a leaf for `name` with the CA's key and asks `openssl verify` about it.
    let forge_and_verify = |name: &str| {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let path = p.state_dir().join("forged.pem");
        std::fs::write(&path, leaf.pem()).unwrap();
        openssl(
            &["verify", "-CAfile", &root(&p), path.to_str().unwrap()],
            "",
        )
    };
    let (ok, text) = forge_and_verify("www.example.com");
    assert!(!ok, "a forged certificate verified:\n{text}");
    assert!(text.contains("permitted subtree violation"), "{text}");
    // The same CA signing an allowed name verifies, so the failure above is the constraint.
    let (ok, text) = forge_and_verify("ok.test");
    assert!(ok, "{text}");
}

#[tokio::test]
async fn ca_commands_print_paths_and_trust_variables_and_rotate() {
    let p = Itproxy::start();
    let path = p.ok(&["ca", "path"]);
    assert_eq!(path.trim(), root(&p));
    let env = p.ok(&["ca", "env"]);
    let bundle = p.state_dir().join("ca/bundle.pem");
    assert!(
        env.contains(&format!("export SSL_CERT_FILE={}", bundle.display())),
        "{env}"
    );
    assert!(
        env.contains(&format!("export NODE_EXTRA_CA_CERTS={}", root(&p))),
        "{env}"
    );
    let json: serde_json::Value = serde_json::from_str(&p.ok(&["ca", "env", "--json"])).unwrap();
    assert_eq!(json["REQUESTS_CA_BUNDLE"], bundle.display().to_string());
    // The bundle keeps the system's roots and adds ours.
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(text.ends_with(&std::fs::read_to_string(root(&p)).unwrap()));

    let before = std::fs::read_to_string(root(&p)).unwrap();
    let err = p.fails(&["ca", "rotate"]); // no terminal to say yes
    assert!(err.contains("not rotated"), "{err}");
    assert_eq!(std::fs::read_to_string(root(&p)).unwrap(), before);
    let out = p.ok(&[
        "ca", "rotate", "--yes", "--domain", "test", "--domain", "dev",
    ]);
    assert!(out.contains("permits: test, dev, localhost"), "{out}");
    assert_ne!(std::fs::read_to_string(root(&p)).unwrap(), before);
}

#[tokio::test]
async fn redirect_https_sends_plain_http_to_the_tls_port() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target(), "--redirect-https"]);
    let r = get(p.http, "api.test", "/login?next=/").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://api.test:{}/login?next=/", p.https.port())
    );
    let (code, status, _) = curl_https(&p, "api.test", "/login", &[]).await;
    assert_eq!((code, &status[..3]), (0, "200"));
    let routes: serde_json::Value = serde_json::from_str(&p.ok(&["routes", "--json"])).unwrap();
    assert_eq!(routes[0]["redirect_https"], true);
}

/// An HTTPS backend on loopback presenting `cert`.
async fn tls_backend(cert_pem: String, key_pem: String) -> std::net::SocketAddr {
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("x-backend", "secure")
                            .body(Full::new(Bytes::from_static(b"secure hello")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_are_verified_unless_marked_insecure() {
    let p = Itproxy::start();
    let ca = p.state_dir().join("ca");
    // A backend whose certificate our CA issued verifies (the proxy trusts system roots + ours).
    let issuer = ca_issuer(&ca);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let trusted = tls_backend(leaf.pem(), leaf_key.serialize_pem()).await;
    p.ok(&[
        "route",
        "good",
        &format!("https://localhost:{}", trusted.port()),
    ]);
    let r = get(p.http, "good.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "secure hello"));

    // A self-signed backend is refused with a 502 that says why...
    let self_key = rcgen::KeyPair::generate().unwrap();
    let self_signed = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&self_key)
        .unwrap();
    let untrusted = tls_backend(self_signed.pem(), self_key.serialize_pem()).await;
    let target = format!("https://localhost:{}", untrusted.port());
    p.ok(&["route", "dev", &target]);
    let r = get(p.http, "dev.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.json()["detail"].as_str().unwrap().contains("TLS"),
        "{}",
        r.text()
    );
    // ...unless the route says the backend is a self-signed development server.
    p.ok(&["route", "dev", &target, "--insecure-upstream"]);
    let r = get(p.http, "dev.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "secure hello"));
}

/// `ca install` / `ca uninstall` for real, in a throwaway root: a private mount namespace whose
/// system store and `ca-certificates.conf` are copies, and a fresh HOME, so the machine's own
/// store is never touched.
#[test]
fn ca_install_trusts_the_root_everywhere_and_uninstall_removes_it_in_a_throwaway_root() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "update-ca-certificates", "certutil"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !(is_root && tools) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root with unshare, update-ca-certificates and certutil"
        );
        eprintln!("skipped: needs root, unshare, update-ca-certificates and certutil");
        return;
    }
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let before = std::fs::read(bundle).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&home).unwrap();
    let root = run_in(&state, &["ca", "path"]);
    let root = String::from_utf8(root.stdout).unwrap();
    let root = std::fs::read_to_string(root.trim()).unwrap();
    // Two base64 lines of the root identify it in a bundle.
    let id: Vec<&str> = root.lines().skip(1).take(2).collect();
    let script = format!(
        r#"set -e
for d in /etc/ssl/certs /usr/local/share/ca-certificates; do
  t=$(mktemp -d -p {tmp}); cp -a "$d/." "$t/"; mount --bind "$t" "$d"
done
c=$(mktemp -p {tmp}); cp /etc/ca-certificates.conf "$c"; mount --bind "$c" /etc/ca-certificates.conf
in_store() {{ grep -qF '{l1}' {bundle} && grep -qF '{l2}' {bundle} && echo yes || echo no; }}
in_nss() {{ certutil -L -d sql:$HOME/.pki/nssdb 2>/dev/null | grep -q 'itproxy local CA' && echo yes || echo no; }}
echo "before: store=$(in_store)"
{bin} --state-dir {state} ca install
echo "installed: store=$(in_store) nss=$(in_nss)"
{bin} --state-dir {state} ca uninstall
echo "uninstalled: store=$(in_store) nss=$(in_nss)"
"#,
        tmp = dir.path().display(),
        l1 = id[0],
        l2 = id[1],
        bundle = bundle,
        bin = BIN,
        state = state.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HOME", &home)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("before: store=no"), "{said}");
    assert!(
        said.contains("created (Chromium's database)"),
        "a fresh user gets one: {said}"
    );
    assert!(said.contains("installed: store=yes nss=yes"), "{said}");
    assert!(said.contains("uninstalled: store=no nss=no"), "{said}");
    assert_eq!(
        std::fs::read(bundle).unwrap(),
        before,
        "the machine's own store was not touched"
    );
}

/// A TLS handshake (rustls, trusting only our root) for `name`; the certificate's first DNS
/// name, or the handshake error.
async fn handshake(p: &Itproxy, name: &str) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    let tls = rustls_client(p)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .unwrap();
    Ok(san)
}

#[tokio::test]
async fn random_server_names_cannot_make_itproxy_mint_certificates() {
    let api = Backend::start("api").await;
    let p = Itproxy::start();
    p.ok(&["route", "api", &api.target()]);
    let certs = p.state_dir().join("certs");
    let files = || -> Vec<String> {
        walk(&certs)
            .into_iter()
            .filter(|f| f.ends_with(".pem"))
            .collect()
    };

    assert_eq!(handshake(&p, "api.test").await.unwrap(), "api.test");
    let started = std::time::Instant::now();
    let mut served = 0;
    for i in 0..50 {
        let name = format!("r{i}-{}.test", std::process::id());
        if let Ok(san) = handshake(&p, &name).await {
            assert_eq!(san, name);
            served += 1;
        }
    }
    // The budget is per clock second: the run may touch one more second than it lasted.
    let seconds = started.elapsed().as_secs() as usize + 2;
    assert!(
        served >= 1 && served <= 20 * seconds,
        "{served} in {seconds} s"
    );
    let stored = files();
    assert!(
        stored.iter().all(|f| !f.contains("/r")),
        "unrouted names were written to disk: {stored:?}"
    );
    // A route set later gets its own certificate at its next handshake.
    p.ok(&["route", "later", &api.target()]);
    assert_eq!(handshake(&p, "later.test").await.unwrap(), "later.test");
}

#[tokio::test]
async fn mint_any_gives_every_name_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[tls]\nmint = \"any\"\n");
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        handshake(&p, "unrouted.test").await.unwrap(),
        "unrouted.test"
    );
}

/// Every file below `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn an_idle_http2_connection_ends_at_the_keepalive_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[proxy]\nkeepalive_timeout = \"1s\"\n");
    let p = Itproxy::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut config = rustls_config(&p);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The connection preface and an empty SETTINGS frame, then nothing.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("an idle HTTP/2 connection is still open after 5 s"),
        }
    }
}
