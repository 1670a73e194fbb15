//! The operator CLI against a running control plane (`--data-dir` and
//! `--control` discovery), and its errors when none is running.

mod common;

use std::process::Output;

use common::*;

fn tappass(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(args)
        .env_remove("TAPPASS_ADMIN_TOKEN")
        .output()
        .expect("run tappass")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_against_a_running_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    let d = data.to_str().unwrap().to_string();
    let run = |args: Vec<&str>| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--data-dir".to_string(), d.clone()]);
        async move {
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                tappass(&refs)
            })
            .await
            .unwrap()
        }
    };

    let o = run(vec!["agent", "create", "bot", "--project", "payments"]).await;
    assert!(o.status.success(), "{}", err(&o));
    // A policy directory at the project level, a file at the agent level.
    let pol = dir.path().join("pol");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::write(pol.join("p.yaml"), "budget:\n  tokens_per_day: 9000\n").unwrap();
    let o = run(vec![
        "policy",
        "apply",
        "--level",
        "project=payments",
        pol.to_str().unwrap(),
    ])
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("pushed bot v2"), "{}", out(&o));
    let f = dir.path().join("agent.yaml");
    std::fs::write(&f, "budget:\n  tokens_per_day: 90000\n").unwrap();
    let o = run(vec![
        "policy",
        "apply",
        "--level",
        "agent=bot",
        f.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(2), "relaxing a ceiling is refused");
    assert!(err(&o).contains("tokens_per_day"), "{}", err(&o));
    let o = run(vec![
        "policy",
        "apply",
        "--pack",
        "gdpr-baseline",
        "--level",
        "org",
    ])
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("bot v3"), "{}", out(&o));
    let o = run(vec!["policy", "preview", "--agent", "bot"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("budget.tokens_per_day = ≤ 9000"),
        "{}",
        out(&o)
    );

    let o = run(vec!["key", "create", "--agent", "bot"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let key = out(&o).trim().to_string();
    assert!(key.starts_with("tpk_"), "{key}");
    let listed = run(vec!["key", "list"]).await;
    assert!(!out(&listed).contains(&key));

    let o = run(vec!["token", "mint", "--agent", "bot", "--ttl", "60"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let token = out(&o).trim().to_string();
    let v = cp
        .call_as(
            None,
            "POST",
            "/v1/tokens/verify",
            Some(serde_json::json!({"token": token})),
        )
        .await
        .1;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["claims"]["project"], "payments");
    assert_eq!(v["claims"]["policy_version"], 3);

    let o = run(vec!["keys", "rotate"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("active") && out(&o).contains("retired"),
        "{}",
        out(&o)
    );
    let o = run(vec!["status"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("no gateway has connected"), "{}", out(&o));
    assert!(out(&o).contains("PolicySnapshot="), "{}", out(&o));

    // --control with a token file; a wrong token is refused.
    let tf = dir.path().join("tok");
    std::fs::write(&tf, cp.token.clone()).unwrap();
    let url = cp.admin_url.clone();
    let o = tokio::task::spawn_blocking({
        let (url, tf) = (url.clone(), tf.clone());
        move || {
            tappass(&[
                "agent",
                "list",
                "--control",
                &url,
                "--admin-token-file",
                tf.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("bot\tproject=payments"));
    std::fs::write(&tf, "tpa_wrong").unwrap();
    let o = tokio::task::spawn_blocking(move || {
        tappass(&[
            "status",
            "--control",
            &url,
            "--admin-token-file",
            tf.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not the admin token"), "{}", err(&o));

    cp.stop().await;
    // Stopped: the discovery file is gone and the CLI says so.
    let o = run(vec!["status"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("no control plane is running"),
        "{}",
        err(&o)
    );
}

#[test]
fn cli_reports_an_unreachable_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("tok");
    std::fs::write(&tf, "x").unwrap();
    // A port nothing listens on.
    let port = tappass_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let o = tappass(&[
        "status",
        "--control",
        &url,
        "--admin-token-file",
        tf.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not reachable"), "{}", err(&o));
    let o = tappass(&[
        "token",
        "mint",
        "--agent",
        "a",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("no control plane is running"),
        "{}",
        err(&o)
    );
}
