//! Against the real Docker engine: an environment's network is created once, reused, and removed.
//! With CI=true an unreachable engine fails the test; elsewhere it is skipped with the reason.

use itproxy_orchestrator::{Engine, EnvName};

async fn engine() -> Option<Engine> {
    match Engine::connect().await {
        Ok(e) => Some(e),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs Docker: {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[tokio::test]
async fn the_environment_network_is_created_once_reused_and_removed() {
    let Some(engine) = engine().await else { return };
    let env = EnvName::parse(&format!("t{}-{}", std::process::id(), line!())).unwrap();
    let _ = engine.remove_network(&env).await;

    let first = engine.ensure_network(&env).await.unwrap();
    assert!(first.created);
    assert_eq!(first.name, format!("itproxy-{env}"));
    assert!(
        first.gateway.is_some(),
        "a bridge network has a gateway: {first:?}"
    );
    let again = engine.ensure_network(&env).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.id, first.id, "reused, not recreated");

    // The docker CLI sees our label on it.
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{index .Labels \"itproxy.env\"}}",
            &first.name,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), env.to_string());

    assert!(engine.remove_network(&env).await.unwrap());
    assert!(!engine.remove_network(&env).await.unwrap(), "already gone");
}

#[tokio::test]
async fn a_foreign_network_with_our_name_is_left_alone() {
    let Some(engine) = engine().await else { return };
    let env = EnvName::parse(&format!("t{}-{}", std::process::id(), line!())).unwrap();
    let name = env.network_name();
    let status = std::process::Command::new("docker")
        .args(["network", "create", &name])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let err = engine.ensure_network(&env).await.unwrap_err().to_string();
    let removed = engine.remove_network(&env).await;
    let _ = std::process::Command::new("docker")
        .args(["network", "rm", &name])
        .output();
    assert!(err.contains("not created by itproxy"), "{err}");
    assert!(
        removed.is_err(),
        "a network without our label is never removed"
    );
}
