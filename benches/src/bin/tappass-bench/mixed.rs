//! The mixed workload: 1 KiB chat prompts of which 10% carry a secret (an
//! access key or token inside the prompt) and 5% carry a tool call (tool
//! definitions, an earlier assistant tool call and its result in the
//! history, and a reply that is itself a tool call). The bodies are drawn
//! deterministically from a seed and sent, in their fixed order, by the
//! harness's own client, so one set of latency samples holds all three kinds
//! interleaved and the percentiles are of the combined traffic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::KEY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Secret,
    Tool,
}

pub struct Body {
    pub kind: Kind,
    pub json: String,
}

/// How many bodies one cycle of the workload holds (10% and 5% exactly).
const CYCLE: usize = 1000;

const SENTENCES: [&str; 8] = [
    "The gateway inspects every prompt and response as it streams. ",
    "Summarize the incident report and list the follow-up actions with owners. ",
    "Rewrite the paragraph below for a reader who is new to the product. ",
    "Which of the two designs handles many small writes better, and why? ",
    "Draft a short reply that declines the meeting and proposes two other times. ",
    "Explain the difference between a mutex and a read-write lock. ",
    "List the steps to rotate a TLS certificate without downtime. ",
    "Turn these notes into action items with a due date for each. ",
];

const SECRETS: [&str; 4] = [
    "aws_access_key_id=AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN=ghp_1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
    "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBQ -----END OPENSSH PRIVATE KEY-----",
    "stripe api key sk_live_4eC39HqLyjWDarjtT1zdp7dcXyZ",
];

/// About `n` bytes of prose drawn from the sentences.
fn prose(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::with_capacity(n + 96);
    while s.len() < n {
        s.push_str(SENTENCES[rng.random_range(0..SENTENCES.len())]);
    }
    s.truncate(n);
    s
}

/// One cycle of bodies for `model`, in a fixed order given by `seed`.
pub fn bodies(model: &str, seed: u64) -> Vec<Body> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = vec![Kind::Plain; CYCLE];
    for k in kinds.iter_mut().take(CYCLE / 10) {
        *k = Kind::Secret;
    }
    for k in kinds.iter_mut().skip(CYCLE / 10).take(CYCLE / 20) {
        *k = Kind::Tool;
    }
    kinds.shuffle(&mut rng);
    kinds
        .into_iter()
        .map(|kind| {
            let json = match kind {
                Kind::Plain => json!({"model": model, "stream": false,
                    "messages": [{"role": "user", "content": prose(&mut rng, 1024)}]}),
                Kind::Secret => {
                    let secret = SECRETS[rng.random_range(0..SECRETS.len())];
                    let before = prose(&mut rng, 512);
                    let after = prose(&mut rng, 1024usize.saturating_sub(512 + secret.len() + 2));
                    json!({"model": model, "stream": false, "messages": [{"role": "user",
                        "content": format!("{before} {secret} {after}")}]})
                }
                Kind::Tool => {
                    let city = ["Lyon", "Ghent", "Porto", "Graz"][rng.random_range(0..4)];
                    let script = json!({"tool_call": {"name": "get_weather",
                        "arguments": json!({"city": city}).to_string()}});
                    json!({"model": model, "stream": false,
                    "tools": [{"type": "function", "function": {"name": "get_weather",
                        "description": "Current weather for a city.",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}}],
                    "messages": [
                        {"role": "user", "content": prose(&mut rng, 900)},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                            "type": "function", "function": {"name": "get_weather",
                            "arguments": "{\"city\":\"Paris\"}"}}]},
                        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, light rain"},
                        {"role": "user", "content": format!("MOCK:{script}")}
                    ]})
                }
            };
            Body {
                kind,
                json: json.to_string(),
            }
        })
        .collect()
}

struct Sample {
    kind: Kind,
    ms: f64,
    status: u16,
    tool_call: bool,
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[String],
    body: &Body,
    t0: Instant,
) -> Sample {
    let mut req = client
        .post(url)
        .bearer_auth(KEY)
        .header("content-type", "application/json");
    for h in headers {
        if let Some((k, v)) = h.split_once(": ") {
            req = req.header(k, v);
        }
    }
    let (status, tool_call) = match req.body(body.json.clone()).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(b) => (status, has_tool_calls(&b)),
                Err(_) => (0, false),
            }
        }
        Err(_) => (0, false),
    };
    Sample {
        kind: body.kind,
        ms: t0.elapsed().as_secs_f64() * 1000.0,
        status,
        tool_call,
    }
}

fn has_tool_calls(b: &[u8]) -> bool {
    b.windows(12).any(|w| w == b"\"tool_calls\"")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Run the workload for `secs`: closed loop with `conns` connections when
/// `rate` is `None`, else open loop at `rate` requests/s (latency counted
/// from each request's scheduled start, so a slow server cannot hide its
/// queueing).
pub async fn probe(
    url: String,
    headers: Vec<String>,
    bodies: Arc<Vec<Body>>,
    conns: usize,
    rate: Option<u32>,
    secs: u64,
) -> Value {
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(conns.max(64))
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut samples: Vec<Sample> = Vec::new();
    match rate {
        None => {
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (client, url, headers, bodies, next) = (
                    client.clone(),
                    url.clone(),
                    headers.clone(),
                    bodies.clone(),
                    next.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed) % bodies.len();
                        out.push(send(&client, &url, &headers, &bodies[i], Instant::now()).await);
                    }
                    out
                }));
            }
            for t in tasks {
                samples.extend(t.await.unwrap_or_default());
            }
        }
        Some(rate) => {
            let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
            let mut tasks = Vec::new();
            let mut k: u32 = 0;
            loop {
                let at = start + gap * k;
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let i = k as usize % bodies.len();
                let (client, url, headers, bodies) =
                    (client.clone(), url.clone(), headers.clone(), bodies.clone());
                tasks.push(tokio::spawn(async move {
                    let s = send(&client, &url, &headers, &bodies[i], at).await;
                    drop(permit);
                    s
                }));
                k += 1;
            }
            for t in tasks {
                if let Ok(s) = t.await {
                    samples.push(s);
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(secs as f64);
    let mut all: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    let of = |k: Kind| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.kind == k)
            .map(|s| s.ms)
            .collect()
    };
    let (mut plain, mut secret, mut tool) = (of(Kind::Plain), of(Kind::Secret), of(Kind::Tool));
    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count();
    let total = samples.len();
    json!({
        "total": total,
        "rps": total as f64 / elapsed,
        "p50_ms": pct(&mut all, 0.5), "p90_ms": pct(&mut all, 0.9), "p99_ms": pct(&mut all, 0.99),
        "plain_p50_ms": pct(&mut plain, 0.5), "plain_p99_ms": pct(&mut plain, 0.99),
        "secret_p50_ms": pct(&mut secret, 0.5), "secret_p99_ms": pct(&mut secret, 0.99),
        "tool_p50_ms": pct(&mut tool, 0.5), "tool_p99_ms": pct(&mut tool, 0.99),
        "ok": count(&|s| (200..300).contains(&s.status)),
        "refused_403": count(&|s| s.status == 403),
        "errors": count(&|s| s.status == 0 || s.status >= 500),
        "secret_total": count(&|s| s.kind == Kind::Secret),
        "secret_refused": count(&|s| s.kind == Kind::Secret && s.status == 403),
        "tool_total": count(&|s| s.kind == Kind::Tool),
        "tool_call_replies": count(&|s| s.kind == Kind::Tool && s.tool_call),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_deterministic_and_in_proportion() {
        let a = bodies("m", 7);
        let b = bodies("m", 7);
        let c = bodies("m", 8);
        assert_eq!(a.len(), CYCLE);
        assert!(a.iter().zip(&b).all(|(x, y)| x.json == y.json));
        assert!(a.iter().zip(&c).any(|(x, y)| x.json != y.json));
        let n = |k| a.iter().filter(|x| x.kind == k).count();
        assert_eq!(n(Kind::Secret), CYCLE / 10);
        assert_eq!(n(Kind::Tool), CYCLE / 20);
        for x in &a {
            let v: Value = serde_json::from_str(&x.json).expect("valid JSON");
            let text = v.to_string();
            match x.kind {
                Kind::Secret => assert!(SECRETS.iter().any(|s| text.contains(&s[..12]))),
                Kind::Tool => assert!(v["tools"].is_array() && text.contains("MOCK:")),
                Kind::Plain => assert!(!text.contains("MOCK:") && v["tools"].is_null()),
            }
        }
    }
}
