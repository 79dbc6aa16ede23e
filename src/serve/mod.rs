//! `crossrank serve`: the engine as a service, over HTTP (TEI- and Cohere-compatible routes) or
//! JSON lines on stdin/stdout, with cross-request batching, limits and Prometheus metrics.
//!
//! request bytes → [`api`] (parse, check) → [`scheduler`] (tokenize, pack across requests,
//! forward) → [`api::render`] → answer. [`http`] and [`stdio`] are the two ways in.

pub mod api;
pub mod http;
pub mod images;
pub mod metrics;
pub mod models;
pub mod sample;
pub mod scheduler;
pub mod shadow;
pub mod stdio;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::engine::{self, Device};
use crate::error::{Error, Result};
use crate::pixels::ImageLimits;
use api::{ApiError, Call, Limits, Meta, Timeout};
use metrics::Metrics;
use models::{Loaded, ModelSpec, Models};

/// Everything `crossrank serve` is told on its command line (clap reads it as is).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// A model to serve: `NAME=DIR`, or a bare `DIR` named after its folder (DIR holds
    /// config.json, tokenizer.json, model.safetensors). Repeat it to serve several; a request
    /// picks one by its `model` field.
    #[arg(long = "model", value_name = "[NAME=]DIR", required = true)]
    pub models: Vec<ModelSpec>,
    /// The model that answers requests naming none; default: the first --model.
    #[arg(long)]
    pub default_model: Option<String>,
    /// A candidate model (`NAME=DIR` or a bare `DIR`), not served: it also scores a sampled
    /// share of the default model's requests, off the answer's path, and /metrics shows how
    /// its rankings agree with the default model's.
    #[arg(long, value_name = "[NAME=]DIR")]
    pub shadow: Option<ModelSpec>,
    /// The share of the default model's requests the --shadow model also scores, 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub shadow_sample: f64,
    /// cpu, cuda or cuda:N; or several, `cuda:0,cuda:1` or `cuda:all` (every visible GPU):
    /// each gets its own copy of every model and its own inference thread, all fed from one
    /// queue per model.
    #[arg(long, default_value = "cpu")]
    pub device: Devices,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start-up).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health and /admin. Read from
    /// the environment when not given, which keeps it out of `ps`.
    #[arg(long, env = "CROSSRANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Turn on the admin routes (`POST` and `DELETE /admin/models/NAME`) and require
    /// `Authorization: Bearer KEY` on them; must differ from --api-key. Without it they are off.
    #[arg(long, env = "CROSSRANK_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
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
    /// The largest image document, in encoded bytes (413 past it). Images travel base64 inside
    /// the body, so --max-body-bytes bounds a request's images together.
    #[arg(long, default_value_t = ImageLimits::default().max_bytes)]
    pub max_image_bytes: usize,
    /// The most pixels (width x height, read from the header before decoding) in one image
    /// document (413 past it).
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// An image-text model's image-feature cache, in MiB of device memory per copy: the vision
    /// tower's output for each image seen, keyed by its preprocessed pixels, least recently
    /// used out first. An image many queries score costs its vision tower once. 0: off.
    #[arg(long, default_value_t = engine::DEFAULT_IMAGE_CACHE_MIB)]
    pub image_cache_mib: usize,
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
    #[command(flatten)]
    pub sampling: sample::SampleOptions,
}

impl ServeOptions {
    /// The defaults of the command line, for `model` on `device`.
    /// The model is named after its folder, as a bare `--model DIR` is (a folder whose name
    /// cannot name a model is refused at start).
    pub fn new(model: impl Into<PathBuf>, device: Device) -> Self {
        let path: PathBuf = model.into();
        let spec = ModelSpec::from_dir(&path).unwrap_or_else(|_| ModelSpec {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
        });
        ServeOptions {
            models: vec![spec],
            default_model: None,
            shadow: None,
            shadow_sample: 0.1,
            device: Devices(vec![device]),
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            admin_key: None,
            max_batch_tokens: 16384,
            max_client_batch_size: 1000,
            max_concurrent: 512,
            max_body_bytes: 8 * 1024 * 1024,
            max_image_bytes: ImageLimits::default().max_bytes,
            max_image_pixels: ImageLimits::default().max_pixels,
            image_cache_mib: engine::DEFAULT_IMAGE_CACHE_MIB,
            request_timeout_ms: None,
            stdio: false,
            cuda: engine::CudaOptions::default(),
            template: None,
            sampling: sample::SampleOptions::default(),
        }
    }

    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--max-batch-tokens", self.max_batch_tokens),
            ("--max-client-batch-size", self.max_client_batch_size),
            ("--max-concurrent", self.max_concurrent),
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-image-bytes", self.max_image_bytes),
            ("--max-image-pixels", self.max_image_pixels as usize),
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
        if self.admin_key.as_deref() == Some("") {
            return Err(Error::input("--admin-key must not be empty"));
        }
        if self.admin_key.is_some() && self.admin_key == self.api_key {
            return Err(Error::input(
                "--admin-key must differ from --api-key: a client key must not change the models",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for spec in &self.models {
            models::check_name(&spec.name)?;
            if !seen.insert(spec.name.as_str()) {
                return Err(Error::input(format!(
                    "--model {} is given twice; give each model its own name with --model NAME=DIR",
                    spec.name
                )));
            }
        }
        if let Some(s) = &self.shadow {
            models::check_name(&s.name)?;
            if seen.contains(s.name.as_str()) {
                return Err(Error::input(format!(
                    "--shadow {} has the name of a --model; give it its own with --shadow NAME=DIR",
                    s.name
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.shadow_sample) {
            return Err(Error::input(format!(
                "--shadow-sample must be between 0 and 1, got {}",
                self.shadow_sample
            )));
        }
        if let Some(d) = &self.default_model {
            if !seen.contains(d.as_str()) {
                let names: Vec<&str> = seen.into_iter().collect();
                return Err(Error::input(format!(
                    "--default-model {d} is not one of the models given: {}",
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// `--device`: the devices every model is copied to, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices(pub Vec<Device>);

impl std::str::FromStr for Devices {
    type Err = Error;

    /// `cpu`, `cuda`, `cuda:N`, a comma-separated list of those, or `cuda:all`.
    fn from_str(s: &str) -> Result<Self> {
        if s.trim() == "cuda:all" {
            if !cfg!(feature = "cuda") {
                return Err(Error::CudaNotCompiled);
            }
            let n = engine::cuda_devices().len();
            if n == 0 {
                return Err(Error::input(
                    "--device cuda:all: no CUDA device is visible (see `crossrank info`)",
                ));
            }
            return Ok(Devices((0..n).map(Device::Cuda).collect()));
        }
        let list = s
            .split(',')
            .map(|d| d.trim().parse::<Device>())
            .collect::<Result<Vec<_>>>()?;
        // One queue feeds every device, so a request's pairs may be scored on any of them:
        // they must all compute the same thing.
        let cpus = list.iter().filter(|d| matches!(d, Device::Cpu)).count();
        if cpus > 0 && cpus < list.len() {
            return Err(Error::input(format!(
                "--device {s}: mixes the CPU with CUDA devices; one server scores on one kind"
            )));
        }
        Ok(Devices(list))
    }
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(Device::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

/// What one answered request adds to its log line.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub docs: usize,
    pub tokens: usize,
    pub queue: Duration,
    pub infer: Duration,
    /// The model picked, once one was.
    pub model: Option<ModelTag>,
}

/// Which model answered: its name and the revision of its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTag {
    pub name: String,
    pub revision: u64,
}

/// The served models, each loaded, warmed up and behind a running scheduler.
pub struct Service {
    pub models: Models,
    /// --shadow: the candidate and its agreement with the default model.
    pub shadow: Option<Arc<shadow::Shadow>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub opts: ServeOptions,
    /// The revision of the last successful load.
    revisions: AtomicU64,
    /// One admin change (load, swap, removal, reload) at a time.
    admin: tokio::sync::Mutex<()>,
    /// The threads freeing models no longer served; joined by [`Service::drain`].
    retiring: Mutex<Vec<JoinHandle<()>>>,
    id_prefix: String,
    next_id: AtomicU64,
    /// --sample-traffic: a sample of accepted requests, for `crossrank audit`.
    sampler: Option<sample::Sampler>,
}

impl Service {
    /// The Prometheus text of /metrics: the serving metrics, then each model's shared-prefix
    /// saving (tokens an LLM reranker's shared-prefix forward kept out of the layers).
    pub fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        text.push_str("# HELP crossrank_shared_prefix_tokens_total Tokens not run through the model because a prefix shared by the pairs of a forward ran once (LLM rerankers; since the model's last load).\n# TYPE crossrank_shared_prefix_tokens_total counter\n");
        for m in self.models.all() {
            text.push_str(&format!(
                "crossrank_shared_prefix_tokens_total{{model=\"{}\"}} {}\n",
                m.name,
                m.reranker.shared_tokens()
            ));
        }
        text.push_str(&self.render_image_cache());
        if let Some(s) = &self.shadow {
            text.push_str(&s.render(self.models.default_name()));
        }
        text
    }

    /// The image-feature caches of image-text models (`--image-cache-mib`), each model's copies
    /// summed: distinct images found and not found, entries evicted, and what is held now.
    fn render_image_cache(&self) -> String {
        let stats: Vec<(String, crate::models::blip::CacheStats)> = self
            .models
            .all()
            .iter()
            .filter_map(|m| {
                let mut sum = crate::models::blip::CacheStats::default();
                for r in &m.replicas {
                    let s = r.image_cache_stats()?;
                    sum.hits += s.hits;
                    sum.misses += s.misses;
                    sum.evictions += s.evictions;
                    sum.entries += s.entries;
                    sum.bytes += s.bytes;
                    sum.capacity_bytes += s.capacity_bytes;
                }
                Some((m.name.clone(), sum))
            })
            .collect();
        if stats.is_empty() {
            return String::new();
        }
        type Pick = fn(&crate::models::blip::CacheStats) -> u64;
        let families: [(&str, &str, &str, Pick); 6] = [
            (
                "hits_total",
                "counter",
                "Images whose vision-tower output the cache held (distinct images per forward).",
                |s| s.hits,
            ),
            (
                "misses_total",
                "counter",
                "Images that ran the vision tower.",
                |s| s.misses,
            ),
            (
                "evictions_total",
                "counter",
                "Cached images dropped, least recently used first, to make room.",
                |s| s.evictions,
            ),
            ("entries", "gauge", "Images held.", |s| s.entries as u64),
            (
                "bytes",
                "gauge",
                "Device bytes the held images take.",
                |s| s.bytes as u64,
            ),
            (
                "capacity_bytes",
                "gauge",
                "The budget (--image-cache-mib); 0: off.",
                |s| s.capacity_bytes as u64,
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, pick) in families {
            text.push_str(&format!(
                "# HELP crossrank_image_cache_{name} {help}\n# TYPE crossrank_image_cache_{name} {kind}\n"
            ));
            for (model, s) in &stats {
                text.push_str(&format!(
                    "crossrank_image_cache_{name}{{model=\"{model}\"}} {}\n",
                    pick(s)
                ));
            }
        }
        text
    }

    /// Loads every model, each with a warm-up forward, and starts their schedulers. Prints a
    /// start-up summary on stderr.
    pub fn start(opts: ServeOptions) -> Result<Arc<Service>> {
        opts.check()?;
        let sampler = sample::Sampler::new(&opts.sampling)?;
        let metrics = Arc::new(Metrics::default());
        let mut loaded = Vec::with_capacity(opts.models.len());
        for (i, spec) in opts.models.iter().enumerate() {
            loaded.push(Loaded::load(
                &spec.name,
                &spec.path,
                i as u64 + 1,
                &opts,
                &metrics,
            )?);
        }
        let models = Models::new(loaded, opts.default_model.as_deref())?;
        let shadow = match &opts.shadow {
            None => None,
            Some(spec) => {
                // Its own metrics and bound: its requests take none of the server's places.
                let own = Arc::new(Metrics::default());
                let mut o = opts.clone();
                o.max_concurrent = shadow::IN_FLIGHT;
                let revision = opts.models.len() as u64 + 1;
                let loaded = Loaded::load(&spec.name, &spec.path, revision, &o, &own)?;
                eprintln!(
                    "crossrank serve: shadow {} scores {} of the requests of {}, off the answer's path",
                    spec.name,
                    opts.shadow_sample,
                    models.default_name()
                );
                Some(Arc::new(shadow::Shadow::new(
                    loaded,
                    opts.shadow_sample,
                    own,
                )))
            }
        };
        eprintln!(
            "crossrank serve: {} model(s), default {}; max client batch {}, max concurrent {}, max body {} bytes, request timeout {}{}",
            opts.models.len(),
            models.default_name(),
            opts.max_client_batch_size,
            opts.max_concurrent,
            opts.max_body_bytes,
            opts.request_timeout_ms
                .map_or("none".to_string(), |ms| format!("{ms} ms")),
            if opts.api_key.is_some() { ", API key required" } else { "" },
        );
        let limits = Limits {
            max_client_batch_size: opts.max_client_batch_size,
            image: ImageLimits {
                max_bytes: opts.max_image_bytes,
                max_pixels: opts.max_image_pixels,
            },
        };
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Service {
            revisions: AtomicU64::new(opts.models.len() as u64 + u64::from(shadow.is_some())),
            shadow,
            models,
            metrics,
            limits,
            admin: tokio::sync::Mutex::new(()),
            retiring: Mutex::new(Vec::new()),
            opts,
            id_prefix: format!("{:x}", since_epoch.as_micros()),
            next_id: AtomicU64::new(0),
            sampler,
        }))
    }

    /// `POST /admin/models/{name}`: loads `path` (default: the path model `name` was loaded
    /// from) beside the models served, warms it up, then serves it as `name` from the next
    /// request on. Requests already under way finish on the model they started on, which is
    /// freed once the last of them is answered. A load that fails changes nothing and answers
    /// with its error. Answers once the new model is the one serving.
    pub async fn load_model(
        self: &Arc<Self>,
        name: &str,
        path: Option<PathBuf>,
    ) -> std::result::Result<Value, ApiError> {
        models::check_name(name).map_err(|e| ApiError::validation(e.to_string()))?;
        let _one = self.admin.lock().await;
        let path = match path {
            Some(p) => p,
            None => self
                .models
                .all()
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.path.clone())
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "model {name} is not served: give the directory to load as \"path\""
                    ))
                })?,
        };
        // One more than any load so far; taken only if this load succeeds (admin changes run
        // one at a time, under `_one`).
        let revision = self.revisions.load(Ordering::Acquire) + 1;
        let t0 = Instant::now();
        let (service, n, p) = (self.clone(), name.to_string(), path.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            Loaded::load(&n, &p, revision, &service.opts, &service.metrics)
        })
        .await
        .map_err(|e| ApiError::backend(format!("loading model {name} panicked: {e}")))?
        .map_err(|e| {
            let msg = format!(
                "cannot load model {name} from {}: {e}; the models served are unchanged",
                path.display()
            );
            eprintln!("crossrank serve: {msg}");
            match e {
                Error::Io { .. } | Error::Model { .. } | Error::Input(_) => {
                    ApiError::new(422, "load_failed", msg)
                }
                _ => ApiError::new(500, "load_failed", msg),
            }
        })?;
        self.revisions.store(revision, Ordering::Release);
        let replaced = self.models.put(loaded).map(|old| {
            let revision = old.revision;
            self.retire(old);
            revision
        });
        eprintln!(
            "crossrank serve: model {name} now serves revision {revision} from {}{}",
            path.display(),
            replaced.map_or(String::new(), |r| format!(" in place of revision {r}"))
        );
        Ok(json!({
            "model": name,
            "revision": revision,
            "path": path,
            "replaced_revision": replaced,
            "load_ms": t0.elapsed().as_secs_f64() * 1e3,
        }))
    }

    /// `DELETE /admin/models/{name}`: stops routing to model `name`; it is freed once its
    /// last request is answered.
    pub async fn remove_model(&self, name: &str) -> std::result::Result<Value, ApiError> {
        let _one = self.admin.lock().await;
        let old = self.models.remove(name)?;
        let revision = old.revision;
        self.retire(old);
        eprintln!("crossrank serve: model {name} (revision {revision}) removed");
        Ok(json!({ "removed": name, "revision": revision }))
    }

    /// SIGHUP: reloads every model from its path, one after the other, each as
    /// [`Service::load_model`] does; a model whose load fails keeps serving.
    pub async fn reload_all(self: &Arc<Self>) {
        for m in self.models.all() {
            if let Err(e) = self.load_model(&m.name, Some(m.path.clone())).await {
                eprintln!(
                    "crossrank serve: reload of model {} failed ({}); revision {} keeps serving",
                    m.name, e.message, m.revision
                );
            }
        }
    }

    fn retire(&self, old: Arc<Loaded>) {
        if let Some(t) = models::retire(old) {
            let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
            retiring.retain(|t| !t.is_finished());
            retiring.push(t);
        }
    }

    /// Scores a checked request through the scheduler and renders its answer. A request with
    /// no budget of its own gets --request-timeout-ms. `served` gets the model as soon as one
    /// is picked (an error after that counts against it), and the rest with the answer.
    pub async fn rerank(
        &self,
        mut call: Call,
        served: &mut Served,
    ) -> std::result::Result<Value, ApiError> {
        served.docs = call.documents();
        if call.timeout.is_none() {
            call.timeout = self.opts.request_timeout_ms.map(|ms| Timeout {
                ms,
                source: "--request-timeout-ms",
            });
        }
        let model = self.models.get(call.model.as_deref())?;
        // Image documents, and every request to an image-text model, go to the model's image
        // queue (images.rs); neither is sampled nor shadowed (both speak text).
        let images = call.has_images() || model.reranker.is_image_model();
        if let Some(sampler) = self.sampler.as_ref().filter(|_| !images) {
            sampler.offer(&call, &model.name);
        }
        served.model = Some(ModelTag {
            name: model.name.clone(),
            revision: model.revision,
        });
        let call = Arc::new(call);
        // `model` is held until the answer: a swap meanwhile does not free it.
        let scored = if images {
            images::score(&model, call.clone(), self.limits.image).await?
        } else {
            model.scheduler.submit(call.clone())?.answer().await?
        };
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let meta = Meta {
            id: &id,
            model: &model.name,
            total_tokens: scored.tokens,
        };
        let body = api::render(&call, &scored.groups, &meta);
        if !images {
            self.shadow_compare(&model, &call, &scored.groups);
        }
        served.tokens = scored.tokens;
        served.queue = scored.queue;
        served.infer = scored.infer;
        Ok(body)
    }

    /// Sends a sampled request of the default model to the --shadow model too, in a task of
    /// its own: the answer does not wait for it.
    fn shadow_compare(&self, model: &Loaded, call: &Call, groups: &[api::GroupScores]) {
        let Some(shadow) = &self.shadow else { return };
        if model.name != self.models.default_name() || !shadow.sampled() {
            return;
        }
        let (shadow, groups) = (shadow.clone(), groups.to_vec());
        // The candidate scores it in full: the client's budget is not its.
        let mut call = call.clone();
        call.timeout = None;
        let depth = self.metrics.queue_depth.load(Ordering::Acquire);
        let max = self.opts.max_concurrent;
        tokio::spawn(async move { shadow.compare(Arc::new(call), groups, depth, max).await });
    }

    /// Every model's scheduler threads are running.
    pub fn healthy(&self) -> bool {
        self.models.all().iter().all(|m| m.healthy())
    }

    /// GET /info: the default model's facts at the top (as when one model was served), then
    /// every model's under `models`.
    pub fn info(&self) -> Value {
        let models: Vec<Value> = self.models.all().iter().map(|m| model_info(m)).collect();
        let mut out = models
            .iter()
            .find(|m| m["model"] == self.models.default_name())
            .cloned()
            .unwrap_or_else(|| json!({}));
        let more = json!({
            "default_model": self.models.default_name(),
            "models": models,
            "shadow": self.shadow.as_ref().map(|s| {
                let mut v = model_info(&s.loaded);
                v["sample"] = json!(s.sample);
                v
            }),
            "max_client_batch_size": self.opts.max_client_batch_size,
            "max_concurrent": self.opts.max_concurrent,
            "max_body_bytes": self.opts.max_body_bytes,
            "request_timeout_ms": self.opts.request_timeout_ms,
            "api_key_required": self.opts.api_key.is_some(),
            "cuda_graphs": self.opts.cuda.cuda_graphs,
            "tune_gemm": self.opts.cuda.tune_gemm,
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let (Some(out), Value::Object(more)) = (out.as_object_mut(), more) {
            out.extend(more);
        }
        out
    }

    /// Stops taking requests and waits until every accepted one is answered.
    pub fn drain(&self) {
        for m in self.models.all() {
            m.shutdown();
        }
        if let Some(s) = &self.shadow {
            s.loaded.shutdown();
        }
        let retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|e| e.into_inner()));
        for t in retiring {
            let _ = t.join();
        }
    }
}

/// One model's entry in /info.
fn model_info(m: &Loaded) -> Value {
    let info = m.reranker.info();
    json!({
        "model": m.name,
        "revision": m.revision,
        "model_path": info.path,
        "architecture": info.architecture,
        "family": info.family,
        "parameters": info.parameters,
        "dtype": info.dtype,
        "device": m.reranker.device_name(),
        "devices": m.replicas.iter().map(|r| r.device_name()).collect::<Vec<_>>(),
        "max_length": info.max_length,
        "max_batch_tokens": m.reranker.max_batch_tokens(),
    })
}

/// Logs one answered request on stderr.
pub fn log_request(method: &str, path: &str, status: u16, s: &Served, total: Duration) {
    let model = s.model.as_ref().map_or(String::new(), |m| {
        format!(" model={}@{}", m.name, m.revision)
    });
    eprintln!(
        "{method} {path} {status} docs={} tokens={} queue_ms={:.1} infer_ms={:.1} total_ms={:.1}{model}",
        s.docs,
        s.tokens,
        s.queue.as_secs_f64() * 1e3,
        s.infer.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
}

/// On SIGHUP, reloads every model from its path (in the background: serving goes on).
fn reload_on_sighup(service: Arc<Service>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("crossrank serve: cannot listen for SIGHUP ({e}); reload with POST /admin/models/NAME");
                return;
            }
        };
        while hup.recv().await.is_some() {
            eprintln!("crossrank serve: SIGHUP: reloading every model from its path");
            service.reload_all().await;
        }
    });
    #[cfg(not(unix))]
    drop(service);
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
        reload_on_sighup(service.clone());
        if stdio {
            stdio::run(service.clone()).await
        } else {
            http::run(service.clone()).await
        }
    });
    service.drain();
    result
}
