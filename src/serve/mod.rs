//! `crossrank serve`: the engine as a service, over HTTP (TEI- and Cohere-compatible routes) or
//! JSON lines on stdin/stdout, with cross-request batching, limits and Prometheus metrics.
//!
//! request bytes → [`api`] (parse, check) → [`scheduler`] (tokenize, pack across requests,
//! forward) → [`api::render`] → answer. [`http`] and [`stdio`] are the two ways in.

pub mod api;
pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod stdio;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::engine::{self, Device, LoadOptions, Reranker};
use crate::error::{Error, Result};
use api::{ApiError, Call, Limits, Meta, Timeout};
use metrics::Metrics;
use scheduler::Scheduler;

/// Everything `crossrank serve` is told on its command line (clap reads it as is).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Model directory: config.json, tokenizer.json, model.safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start-up).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health. Read from the
    /// environment when not given, which keeps it out of `ps`.
    #[arg(long, env = "CROSSRANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The most tokens in one forward pass; requests are packed together up to it.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// The most documents in one request, all groups together (413 past it).
    #[arg(long, default_value_t = 1000)]
    pub max_client_batch_size: usize,
    /// The most requests accepted and not yet answered (503 past it).
    #[arg(long, default_value_t = 512)]
    pub max_concurrent: usize,
    /// The largest request body, or stdio line, in bytes (413 past it).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The latency budget of a request that gives none (`timeout_ms` or
    /// `X-Request-Timeout-Ms`): past it the answer is 504 and its pairs not yet scored are
    /// dropped. Off by default.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// JSON lines on stdin and stdout instead of HTTP.
    #[arg(long)]
    pub stdio: bool,
    #[command(flatten)]
    pub cuda: engine::CudaOptions,
    /// An LLM reranker's prompt template (see `crossrank info`); default: the architecture's.
    #[arg(long)]
    pub template: Option<String>,
}

impl ServeOptions {
    /// The defaults of the command line, for `model` on `device`.
    pub fn new(model: impl Into<PathBuf>, device: Device) -> Self {
        ServeOptions {
            model: model.into(),
            device,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_batch_tokens: 16384,
            max_client_batch_size: 1000,
            max_concurrent: 512,
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout_ms: None,
            stdio: false,
            cuda: engine::CudaOptions::default(),
            template: None,
        }
    }

    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--max-batch-tokens", self.max_batch_tokens),
            ("--max-client-batch-size", self.max_client_batch_size),
            ("--max-concurrent", self.max_concurrent),
            ("--max-body-bytes", self.max_body_bytes),
        ] {
            if v == 0 {
                return Err(Error::input(format!("{name} must be at least 1")));
            }
        }
        if self.request_timeout_ms == Some(0) {
            return Err(Error::input("--request-timeout-ms must be at least 1"));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(Error::input("--api-key must not be empty"));
        }
        Ok(())
    }
}

/// What one answered request adds to its log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub docs: usize,
    pub tokens: usize,
    pub queue: Duration,
    pub infer: Duration,
}

/// A loaded, warmed-up model behind a running scheduler.
pub struct Service {
    reranker: Arc<Reranker>,
    scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub opts: ServeOptions,
    /// The name answers carry when the client names no model: the directory's name.
    model_name: String,
    id_prefix: String,
    next_id: AtomicU64,
}

impl Service {
    /// The Prometheus text of /metrics: the serving metrics, then the model's shared-prefix
    /// saving (tokens an LLM reranker's shared-prefix forward kept out of the layers).
    pub fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        text.push_str(&format!(
            "# HELP crossrank_shared_prefix_tokens_total Tokens not run through the model because a prefix shared by the pairs of a forward ran once (LLM rerankers).\n# TYPE crossrank_shared_prefix_tokens_total counter\ncrossrank_shared_prefix_tokens_total {}\n",
            self.reranker.shared_tokens()
        ));
        text
    }

    /// Loads the model, runs a warm-up forward and starts the scheduler. Prints a start-up
    /// summary on stderr.
    pub fn start(opts: ServeOptions) -> Result<Arc<Service>> {
        opts.check()?;
        let t0 = Instant::now();
        let reranker = Reranker::load(
            &opts.model,
            opts.device,
            &LoadOptions {
                max_batch_tokens: opts.max_batch_tokens,
                cuda: opts.cuda,
                template: opts.template.clone(),
            },
        )?;
        let loaded = t0.elapsed();
        let t1 = Instant::now();
        reranker.rerank("warm-up", &["warm-up"], &engine::Options::default())?;
        let warm = t1.elapsed();
        let info = reranker.info();
        let model_name = opts
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| opts.model.display().to_string());
        eprintln!(
            "crossrank serve: {} ({}, {} parameters, {}) on {}, loaded in {:.0} ms, warm-up forward {:.1} ms; max length {}, max batch tokens {}, max client batch {}, max concurrent {}, max body {} bytes, request timeout {}{}",
            opts.model.display(),
            info.architecture,
            info.parameters,
            info.dtype,
            reranker.device_name(),
            loaded.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            info.max_length,
            reranker.max_batch_tokens(),
            opts.max_client_batch_size,
            opts.max_concurrent,
            opts.max_body_bytes,
            opts.request_timeout_ms
                .map_or("none".to_string(), |ms| format!("{ms} ms")),
            if opts.api_key.is_some() { ", API key required" } else { "" },
        );
        let limits = Limits {
            max_client_batch_size: opts.max_client_batch_size,
        };
        let reranker = Arc::new(reranker);
        let metrics = Arc::new(Metrics::default());
        let scheduler = Scheduler::start(reranker.clone(), metrics.clone(), opts.max_concurrent)?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Service {
            reranker,
            scheduler,
            metrics,
            limits,
            opts,
            model_name,
            id_prefix: format!("{:x}", since_epoch.as_micros()),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Scores a checked request through the scheduler and renders its answer. A request with
    /// no budget of its own gets --request-timeout-ms.
    pub async fn rerank(&self, mut call: Call) -> std::result::Result<(Value, Served), ApiError> {
        if call.timeout.is_none() {
            call.timeout = self.opts.request_timeout_ms.map(|ms| Timeout {
                ms,
                source: "--request-timeout-ms",
            });
        }
        let call = Arc::new(call);
        let scored = self.scheduler.submit(call.clone())?.answer().await?;
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let meta = Meta {
            id: &id,
            model: &self.model_name,
            total_tokens: scored.tokens,
        };
        let body = api::render(&call, &scored.groups, &meta);
        let served = Served {
            docs: call.documents(),
            tokens: scored.tokens,
            queue: scored.queue,
            infer: scored.infer,
        };
        Ok((body, served))
    }

    /// The scheduler's threads are running.
    pub fn healthy(&self) -> bool {
        self.scheduler.healthy()
    }

    /// GET /info.
    pub fn info(&self) -> Value {
        let info = self.reranker.info();
        json!({
            "model": self.model_name,
            "model_path": info.path,
            "architecture": info.architecture,
            "parameters": info.parameters,
            "dtype": info.dtype,
            "device": self.reranker.device_name(),
            "max_length": info.max_length,
            "max_batch_tokens": self.reranker.max_batch_tokens(),
            "max_client_batch_size": self.opts.max_client_batch_size,
            "max_concurrent": self.opts.max_concurrent,
            "max_body_bytes": self.opts.max_body_bytes,
            "request_timeout_ms": self.opts.request_timeout_ms,
            "api_key_required": self.opts.api_key.is_some(),
            "cuda_graphs": self.opts.cuda.cuda_graphs,
            "tune_gemm": self.opts.cuda.tune_gemm,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// Stops taking requests and waits until every accepted one is answered.
    pub fn drain(&self) {
        self.scheduler.shutdown();
    }
}

/// Logs one answered request on stderr.
pub fn log_request(method: &str, path: &str, status: u16, s: &Served, total: Duration) {
    eprintln!(
        "{method} {path} {status} docs={} tokens={} queue_ms={:.1} infer_ms={:.1} total_ms={:.1}",
        s.docs,
        s.tokens,
        s.queue.as_secs_f64() * 1e3,
        s.infer.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
}

/// `crossrank serve`: loads, serves until SIGTERM/SIGINT (HTTP) or end of input (stdio),
/// answers everything accepted, and returns.
pub fn run(opts: ServeOptions) -> Result<()> {
    opts.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crossrank-serve")
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    let stdio = opts.stdio;
    let service = Service::start(opts)?;
    let result = runtime.block_on(async {
        if stdio {
            stdio::run(service.clone()).await
        } else {
            http::run(service.clone()).await
        }
    });
    service.drain();
    result
}
