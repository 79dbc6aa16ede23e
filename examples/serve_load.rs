//! A bounded load run against a running `crossrank serve`: `--concurrency` clients send rerank
//! requests back to back for `--seconds` (at most 60), then it prints throughput and latency
//! percentiles, and the server's own batching figures from /metrics.
//!
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 \
//!     --concurrency 16 --seconds 20 --docs 32 --words 40
//!
//! With `--rate R` the requests arrive open loop instead, R a second whatever the answers (as a
//! search front end sends them); with `--big-clients N`, N more clients send requests of
//! `--big-docs` documents back to back beside them, measured apart (the mix of issue 14: how
//! long small requests wait behind big ones).

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
    /// Open loop: this many requests a second, each sent whatever the answers so far, instead
    /// of `--concurrency` clients back to back.
    #[arg(long)]
    rate: Option<f64>,
    /// Clients sending big requests back to back beside the others (0: none). With
    /// `--docs 0` only they run.
    #[arg(long, default_value_t = 0)]
    big_clients: usize,
    /// Documents per big request.
    #[arg(long, default_value_t = 300)]
    big_docs: usize,
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

/// `n` different request bodies of `docs` documents, cycled by the clients.
fn bodies(args: &Args, n: usize, docs: usize, mut seed: u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            let query = text(&mut seed, 8);
            let docs: Vec<String> = (0..docs).map(|_| text(&mut seed, args.words)).collect();
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
/// A metric's value summed over its label sets (one per model), or None if absent.
fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            rest.strip_prefix(' ')?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// What the clients of one kind saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    errors: usize,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }
}

/// Where and how to send.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    auth: Option<String>,
}

impl Target {
    /// One request; its latency, or None if it failed.
    async fn send(&self, body: String) -> Option<Duration> {
        let mut r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = &self.auth {
            r = r.header("authorization", a);
        }
        let t0 = Instant::now();
        let ok = match r.send().await {
            Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
            Err(_) => false,
        };
        ok.then(|| t0.elapsed())
    }

    /// `clients` clients sending back to back until `deadline`, cycling through `bodies`.
    fn closed_loop(
        &self,
        clients: usize,
        bodies: Arc<Vec<String>>,
        deadline: Instant,
    ) -> Vec<tokio::task::JoinHandle<Seen>> {
        (0..clients)
            .map(|w| {
                let (target, bodies) = (self.clone(), bodies.clone());
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut k = w;
                    while Instant::now() < deadline {
                        match target.send(bodies[k % bodies.len()].clone()).await {
                            Some(l) => seen.latencies.push(l),
                            None => seen.errors += 1,
                        }
                        // A stride coprime with 64: clients rarely send the same body at once.
                        k += 7;
                    }
                    seen
                })
            })
            .collect()
    }

    /// `rate` requests a second until `deadline`, each sent whatever the answers so far.
    fn open_loop(
        &self,
        rate: f64,
        bodies: Arc<Vec<String>>,
        deadline: Instant,
    ) -> tokio::task::JoinHandle<Seen> {
        let target = self.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut k = 0;
            while Instant::now() < deadline {
                tick.tick().await;
                let (target, body) = (target.clone(), bodies[k % bodies.len()].clone());
                sent.push(tokio::spawn(async move { target.send(body).await }));
                k += 7;
            }
            let mut seen = Seen::default();
            for s in sent {
                match s.await.ok().flatten() {
                    Some(l) => seen.latencies.push(l),
                    None => seen.errors += 1,
                }
            }
            seen
        })
    }
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> Result<Seen, String> {
    let mut seen = Seen::default();
    for t in tasks {
        seen.add(t.await.map_err(|e| e.to_string())?);
    }
    seen.latencies.sort();
    Ok(seen)
}

/// One line of throughput and one of latency for a kind of request.
fn report(what: &str, seen: &Seen, docs: usize, words: usize, wall: f64) {
    let n = seen.latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: {n} requests ok, {} failed, in {wall:.1} s: {:.2} requests/s, {:.0} pairs/s ({docs} docs x {words} words per request)",
        seen.errors,
        n as f64 / wall,
        (n * docs) as f64 / wall,
    );
    println!(
        "{what}: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&seen.latencies, 50.0)),
        ms(percentile(&seen.latencies, 99.0)),
        ms(percentile(&seen.latencies, 100.0))
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if !(1..=60).contains(&args.seconds) {
        return Err("--seconds must be between 1 and 60".into());
    }
    if args.concurrency == 0 || (args.docs == 0 && args.big_clients == 0) {
        return Err("--concurrency must be at least 1, and --docs too unless --big-clients".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r <= 1000.0)) {
        return Err("--rate must be more than 0 and at most 1000 a second".into());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let target = Target {
        client: client.clone(),
        url: format!("{}{}", args.url.trim_end_matches('/'), args.route),
        auth: args.api_key.as_ref().map(|k| format!("Bearer {k}")),
    };
    let metrics_url = format!("{}/metrics", args.url.trim_end_matches('/'));
    let get_metrics = || async {
        let mut r = client.get(&metrics_url);
        if let Some(a) = &target.auth {
            r = r.header("authorization", a);
        }
        match r.send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let before = get_metrics().await;
    let small = Arc::new(bodies(&args, 64, args.docs, 42));
    let big = Arc::new(bodies(&args, 8, args.big_docs, 7));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let big_tasks = target.closed_loop(args.big_clients, big, deadline);
    let small_tasks = match (args.docs, args.rate) {
        (0, _) => Vec::new(),
        (_, Some(rate)) => vec![target.open_loop(rate, small, deadline)],
        (_, None) => target.closed_loop(args.concurrency, small, deadline),
    };
    let small_seen = gather(small_tasks).await?;
    let big_seen = gather(big_tasks).await?;
    let wall = start.elapsed().as_secs_f64();
    let after = get_metrics().await;
    if args.docs > 0 {
        let how = match args.rate {
            Some(rate) => format!("{rate} a second, open loop"),
            None => format!("{} clients", args.concurrency),
        };
        report(
            &format!("requests ({how})"),
            &small_seen,
            args.docs,
            args.words,
            wall,
        );
    }
    if args.big_clients > 0 {
        let what = format!("big requests ({} clients)", args.big_clients);
        report(&what, &big_seen, args.big_docs, args.words, wall);
    }
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
    let errors = small_seen.errors + big_seen.errors;
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}
