//! The mixed workload: 1 KiB chat prompts of which 10% carry a secret (an
//! access key or token with random characters inside the prompt) and 5% carry a tool call (tool
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

/// The prefixes of the credential kinds the secret-carrying prompts hold.
const SECRET_PREFIXES: [&str; 4] = ["AKIA", "ghp_", "xoxb-", "sk_live_"];

fn random_chars(rng: &mut StdRng, n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// A credential of one of four common kinds, with random (high-entropy)
/// characters as a real one has: an AWS key pair, a GitHub personal access
/// token, a Slack bot token or a Stripe live key.
fn secret(rng: &mut StdRng) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const DIGITS: &[u8] = b"0123456789";
    match rng.random_range(0..4) {
        0 => format!(
            "aws_access_key_id={}{} aws_secret_access_key={}",
            SECRET_PREFIXES[0],
            random_chars(rng, 16, B32),
            random_chars(rng, 40, B64)
        ),
        1 => format!(
            "GITHUB_TOKEN={}{}",
            SECRET_PREFIXES[1],
            random_chars(rng, 36, ALNUM)
        ),
        2 => format!(
            "SLACK_BOT_TOKEN={}{}-{}-{}",
            SECRET_PREFIXES[2],
            random_chars(rng, 12, DIGITS),
            random_chars(rng, 13, DIGITS),
            random_chars(rng, 24, ALNUM)
        ),
        _ => format!(
            "the stripe key is {}{}",
            SECRET_PREFIXES[3],
            random_chars(rng, 24, ALNUM)
        ),
    }
}

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
                    let secret = secret(&mut rng);
                    let before = prose(&mut rng, 512);
                    let after = prose(&mut rng, 1024usize.saturating_sub(512 + secret.len() + 2));
                    json!({"model": model, "stream": false, "messages": [{"role": "user",
                        "content": format!("{before} {secret} {after}")}]})
                }
                Kind::Tool => {
                    // A tool of the policy catalog (`zendesk.read_ticket`,
                    // called by its native name), so that tool governance
                    // checks and releases it rather than refusing an
                    // unknown tool.
                    let ticket = rng.random_range(10_000..99_999u32);
                    let script = json!({"tool_call": {"name": "zendesk_read_ticket",
                        "arguments": json!({"ticket_id": ticket}).to_string()}});
                    json!({"model": model, "stream": false,
                    "tools": [{"type": "function", "function": {"name": "zendesk_read_ticket",
                        "description": "Read a support ticket.",
                        "parameters": {"type": "object",
                            "properties": {"ticket_id": {"type": "integer"}},
                            "required": ["ticket_id"]}}}],
                    "messages": [
                        {"role": "user", "content": prose(&mut rng, 900)},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                            "type": "function", "function": {"name": "zendesk_read_ticket",
                            "arguments": json!({"ticket_id": ticket - 1}).to_string()}}]},
                        {"role": "tool", "tool_call_id": "call_1",
                            "content": "The printer on floor 3 is jammed again."},
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

/// Send one body. Every request is its own session (`x-tappass-session`),
/// as independent conversations are: one session repeating the same tool
/// call would rightly be ended by the gateway's loop guard.
async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[String],
    body: &Body,
    seq: usize,
    t0: Instant,
) -> Sample {
    let mut req = client
        .post(url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("x-tappass-session", format!("bench-mixed-{seq}"));
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
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        let body = &bodies[seq % bodies.len()];
                        out.push(send(&client, &url, &headers, body, seq, Instant::now()).await);
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
                let seq = k as usize;
                let (client, url, headers, bodies) =
                    (client.clone(), url.clone(), headers.clone(), bodies.clone());
                tasks.push(tokio::spawn(async move {
                    let body = &bodies[seq % bodies.len()];
                    let s = send(&client, &url, &headers, body, seq, at).await;
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
                Kind::Secret => assert!(SECRET_PREFIXES.iter().any(|p| text.contains(p))),
                Kind::Tool => assert!(v["tools"].is_array() && text.contains("MOCK:")),
                Kind::Plain => assert!(!text.contains("MOCK:") && v["tools"].is_null()),
            }
        }
    }
}
