//! A bounded load run against a running `crossrank serve`: `--concurrency` clients send rerank
//! requests back to back for `--seconds` (at most 60), then it prints throughput and latency
//! percentiles, and the server's own batching figures from /metrics.
//!
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 \
//!     --concurrency 16 --seconds 20 --docs 32 --words 40

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The server's base URL (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Clients sending at the same time, each one request after another.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to send, in seconds (1 to 60).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Documents per request.
    #[arg(long, default_value_t = 32)]
    docs: usize,
    /// Words per document (the query has 8).
    #[arg(long, default_value_t = 40)]
    words: usize,
    /// The route: /rerank (TEI) or /v1/rerank (Cohere).
    #[arg(long, default_value = "/rerank")]
    route: String,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
}

const WORDS: &[&str] = &[
    "search",
    "engine",
    "query",
    "passage",
    "relevance",
    "score",
    "model",
    "token",
    "attention",
    "layer",
    "weather",
    "paris",
    "coffee",
    "river",
    "fox",
    "kernel",
    "memory",
    "batch",
    "rank",
    "document",
    "learning",
    "machine",
    "translation",
    "language",
    "index",
    "retrieval",
    "fast",
    "slow",
    "city",
    "music",
    "garden",
    "history",
    "science",
    "number",
    "market",
    "travel",
];

/// Deterministic text: `n` words picked by a linear congruential generator.
fn text(seed: &mut u64, n: usize) -> String {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(WORDS[(*seed >> 33) as usize % WORDS.len()]);
    }
    out.join(" ")
}

/// 64 different request bodies, cycled by the clients.
fn bodies(args: &Args) -> Vec<String> {
    let mut seed = 42u64;
    (0..64)
        .map(|_| {
            let query = text(&mut seed, 8);
            let docs: Vec<String> = (0..args.docs)
                .map(|_| text(&mut seed, args.words))
                .collect();
            let body = if args.route == "/rerank" {
                serde_json::json!({ "query": query, "texts": docs })
            } else {
                serde_json::json!({ "query": query, "documents": docs })
            };
            body.to_string()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A counter or histogram count from the server's /metrics, if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if !(1..=60).contains(&args.seconds) {
        return Err("--seconds must be between 1 and 60".into());
    }
    if args.concurrency == 0 || args.docs == 0 {
        return Err("--concurrency and --docs must be at least 1".into());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.route);
    let metrics_url = format!("{}/metrics", args.url.trim_end_matches('/'));
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let get_metrics = || async {
        let mut r = client.get(&metrics_url);
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        match r.send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let before = get_metrics().await;
    let bodies = Arc::new(bodies(&args));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, url, bodies, auth) =
                (client.clone(), url.clone(), bodies.clone(), auth.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                let mut k = w;
                while Instant::now() < deadline {
                    let mut r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(bodies[k % bodies.len()].clone());
                    if let Some(a) = &auth {
                        r = r.header("authorization", a);
                    }
                    let t0 = Instant::now();
                    let ok = match r.send().await {
                        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(t0.elapsed());
                    } else {
                        errors += 1;
                    }
                    // A stride coprime with 64: clients rarely send the same body at once.
                    k += 7;
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort();
    let after = get_metrics().await;
    let n = latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{n} requests ok, {errors} failed, in {wall:.1} s from {} clients: {:.1} requests/s, {:.0} pairs/s ({} docs x {} words per request)",
        args.concurrency,
        n as f64 / wall,
        (n * args.docs) as f64 / wall,
        args.docs,
        args.words
    );
    println!(
        "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0))
    );
    let delta = |name: &str| Some(metric(&after, name)? - metric(&before, name).unwrap_or(0.0));
    if let (Some(forwards), Some(pairs), Some(tokens), Some(busy)) = (
        delta("crossrank_batch_pairs_count"),
        delta("crossrank_pairs_total"),
        delta("crossrank_tokens_total"),
        delta("crossrank_forward_duration_seconds_sum"),
    ) {
        if forwards > 0.0 {
            println!(
                "server: {forwards:.0} forwards, {:.1} pairs and {:.0} tokens per forward on average, {:.0} tokens/s; forwards took {:.0}% of the run ({:.1} ms each)",
                pairs / forwards,
                tokens / forwards,
                tokens / wall,
                100.0 * busy / wall,
                1e3 * busy / forwards
            );
        }
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}
