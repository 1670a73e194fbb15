//! `tappass up`: the control plane and a gateway in one process, with the
//! default agent, its printed key, minted tokens and the audit trail.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tappass_testkit::free_port;

#[test]
fn up_serves_the_default_agent_with_key_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (gw, admin, xds, control) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tappass"))
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{gw}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--xds-listen", &format!("127.0.0.1:{xds}")])
        .args(["--control-listen", &format!("127.0.0.1:{control}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    while key.is_none() {
        let line = lines.next().expect("banner").unwrap();
        if let Some(k) = line.strip_prefix("export OPENAI_API_KEY=") {
            key = Some(k.to_string());
        }
    }
    let key = key.unwrap();
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{gw}/v1/chat/completions");
    let body = serde_json::json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hello up"}]});
    // The gateway takes its keys from the control plane: wait for them.
    let mut status = 0;
    for _ in 0..100 {
        status = c
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 200, "the printed key works");
    // A token minted through the same data directory is accepted.
    let out = Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(["token", "mint", "--agent", "default", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = c.post(&url).bearer_auth(&token).json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hello up");
    // A token for an agent that does not exist is refused by the control plane.
    let out = Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(["token", "mint", "--agent", "nobody", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // SIGTERM stops both cleanly; the audit trail verifies.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    let out = Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(["audit", "verify", "--wal"])
        .arg(data.join("audit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 rows"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
