//! The library front: load a model directory on a device, rerank passages for a query.
//!
//! text → tokens (tokenize.rs) → packed batch (batch.rs) → forward (model.rs) → scores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use crate::backend::cpu::CpuBackend;
use crate::batch::PackedBatch;
use crate::config::{Family, LayerType, ModelConfig};
use crate::error::{Error, Result};
use crate::llm_template::LlmEncoder;
use crate::model::{Model, Scorer};
use crate::models::blip::ImageScorer;
use crate::pixels::{ImageLimits, ImageProcessor};
use crate::tokenize::{EncodedPair, PairTokenizer, TruncationSide};
use crate::weights::{self, Checkpoint, DiskDtype};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::input(format!(
                    "device `{s}` is not one of: cpu, cuda, cuda:N"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Settings fixed at load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The most tokens one forward pass takes; bigger calls are split. Sizes the arena.
    pub max_batch_tokens: usize,
    pub cuda: CudaOptions,
    /// A causal-LM reranker's prompt template by name (`llm_template::TEMPLATES`); None: the
    /// architecture's own.
    pub template: Option<String>,
    /// An image-text model's image-feature cache budget in MiB (device memory): the vision
    /// tower's output per image, keyed by its preprocessed pixels. 0: off.
    pub image_cache_mib: usize,
}

/// The image-feature cache's default budget.
pub const DEFAULT_IMAGE_CACHE_MIB: usize = 256;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_batch_tokens: 16384,
            cuda: CudaOptions::default(),
            template: None,
            image_cache_mib: DEFAULT_IMAGE_CACHE_MIB,
        }
    }
}

/// How the CUDA backend runs the forward; the CPU backend ignores them. Off by default until a
/// GPU run has measured them (perf/README.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args, serde::Serialize)]
pub struct CudaOptions {
    /// CUDA: record the forward once per batch shape as a CUDA graph and replay it (batches
    /// are padded to a few shapes: at most 1/8 more rows).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// CUDA: at load, time cuBLASLt's candidate algorithms for every GEMM shape a forward runs
    /// and keep the fastest (a fraction of a second; summary on stderr).
    #[arg(long)]
    pub tune_gemm: bool,
}

impl CudaOptions {
    /// The bench's system name: `crossrank`, then `+graphs`, `+tuned` for the options on.
    pub fn system_name(&self) -> String {
        let mut name = String::from("crossrank");
        if self.cuda_graphs {
            name.push_str("+graphs");
        }
        if self.tune_gemm {
            name.push_str("+tuned");
        }
        name
    }
}

/// Settings of one call.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Truncate pairs to this many tokens; default: what the model and tokenizer allow.
    pub max_length: Option<usize>,
    /// Return logits instead of sigmoid(logit).
    pub raw_scores: bool,
    /// Keep only the best `k`.
    pub top_k: Option<usize>,
    /// Which end of a too-long pair is cut (default: right, as transformers).
    pub truncation_side: TruncationSide,
    /// A causal-LM reranker's instruction in place of its template's default (encoder models
    /// have none and ignore it).
    pub instruction: Option<String>,
}

/// One passage's result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Ranked {
    /// Position of the passage in the input.
    pub index: usize,
    pub score: f32,
    /// The pair was cut to the max length.
    pub truncated: bool,
}

/// One query with its own passages, for scoring many groups in one call.
#[derive(Debug, Clone)]
pub struct Group<S> {
    pub query: String,
    pub passages: Vec<S>,
}

/// What `crossrank info --model` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub architecture: String,
    pub parameters: usize,
    pub dtype: &'static str,
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_length: usize,
    pub max_length_limit: usize,
    /// bert, roberta or modernbert.
    pub family: &'static str,
    /// ModernBERT: `local_attention` (a sliding layer sees half of it on each side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// ModernBERT: `full_attention` / `sliding_attention` per layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<&'static str>>,
    /// cls (the first row) or mean.
    pub pooling: &'static str,
}

/// Reads and validates a model directory without running anything.
pub fn inspect(dir: &Path) -> Result<(ModelConfig, PairTokenizer, ModelInfo, Checkpoint)> {
    if !dir.is_dir() {
        return Err(Error::model(dir, "model directory not found"));
    }
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let tokenizer = PairTokenizer::load(dir, &cfg)?;
    let info = ModelInfo {
        path: dir.to_path_buf(),
        architecture: cfg.architecture.clone(),
        parameters: cfg.parameter_count(),
        dtype: ckpt.dtype().as_str(),
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        heads: cfg.num_heads,
        head_dim: cfg.head_dim,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        max_length: tokenizer.default_max_length(),
        max_length_limit: tokenizer.max_length_limit(),
        family: match cfg.family {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::ModernBert => "modernbert",
            Family::Qwen => "qwen",
            Family::Blip => "blip",
        },
        window: cfg.modernbert.as_ref().map(|m| m.local_attention),
        layer_types: cfg.modernbert.as_ref().map(|m| {
            m.layer_types
                .iter()
                .map(|t| match t {
                    LayerType::Full => "full_attention",
                    LayerType::Sliding => "sliding_attention",
                })
                .collect()
        }),
        pooling: match (&cfg.modernbert, cfg.family) {
            (Some(m), _) => m.classifier_pooling.as_str(),
            // A causal LM scores from its last position's yes / no logits.
            (None, Family::Qwen) => "last",
            // The ITM head reads the text [CLS] row.
            (None, _) => "cls",
        },
    };
    Ok((cfg, tokenizer, info, ckpt))
}

pub struct Reranker {
    cfg: ModelConfig,
    tokenizer: PairTokenizer,
    /// A causal-LM reranker's prompt template, bound to its tokenizer.
    llm: Option<LlmEncoder>,
    scorer: Box<dyn Scorer>,
    /// An image-text model's scorer (BLIP); `scorer` then refuses text-only batches.
    image: Option<Box<dyn ImageScorer>>,
    /// An image-text model's image processor (preprocessor_config.json).
    processor: Option<ImageProcessor>,
    info: ModelInfo,
    dtype: DiskDtype,
}

impl Reranker {
    /// Loads config, tokenizer and weights from a Hugging Face model directory and uploads
    /// the weights to `device`.
    pub fn load(dir: impl AsRef<Path>, device: Device, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let (cfg, tokenizer, info, ckpt) = inspect(dir)?;
        // Every pair fits in one forward: the arena holds at least one longest pair.
        let max_tokens = opts.max_batch_tokens.max(tokenizer.max_length_limit());
        if cfg.family == Family::Blip {
            let processor = ImageProcessor::load(dir, crate::models::blip::vision(&cfg)?)?;
            let cache_bytes = opts.image_cache_mib.saturating_mul(1 << 20);
            let image: Box<dyn ImageScorer> = match device {
                Device::Cpu => {
                    let host = crate::models::blip::load(&ckpt, &cfg)?;
                    Box::new(crate::models::blip::Model::new(
                        CpuBackend,
                        cfg.clone(),
                        host,
                        max_tokens,
                        crate::models::blip::MAX_IMAGES_PER_FORWARD,
                        cache_bytes,
                    )?)
                }
                Device::Cuda(ordinal) => {
                    let host = crate::models::blip::load(&ckpt, &cfg)?;
                    blip_cuda(ordinal, &cfg, host, max_tokens, opts.cuda, cache_bytes)?
                }
            };
            let dtype = ckpt.dtype();
            let scorer = Box::new(crate::models::blip::TextRefused {
                architecture: cfg.architecture.clone(),
                device: image.device_name(),
                max_tokens,
            });
            return Ok(Reranker {
                cfg,
                tokenizer,
                llm: None,
                scorer,
                image: Some(image),
                processor: Some(processor),
                info,
                dtype,
            });
        }
        if cfg.family == Family::ModernBert {
            let scorer: Box<dyn Scorer> = match device {
                Device::Cpu => {
                    let host = crate::models::modernbert::load(&ckpt, &cfg)?;
                    Box::new(crate::models::modernbert::Model::new(
                        CpuBackend,
                        cfg.clone(),
                        host,
                        max_tokens,
                    )?)
                }
                Device::Cuda(ordinal) => {
                    let host = crate::models::modernbert::load(&ckpt, &cfg)?;
                    modernbert_cuda(ordinal, &cfg, host, max_tokens, opts.cuda)?
                }
            };
            let dtype = ckpt.dtype();
            return Ok(Reranker {
                cfg,
                tokenizer,
                llm: None,
                scorer,
                image: None,
                processor: None,
                info,
                dtype,
            });
        }
        if cfg.family == Family::Qwen {
            let template = match &opts.template {
                Some(name) => crate::llm_template::by_name(name)?,
                None => crate::llm_template::default_for(&cfg.architecture).ok_or_else(|| {
                    Error::input(format!(
                        "no reranking template for {} (pass --template; known: {})",
                        cfg.architecture,
                        template_names()
                    ))
                })?,
            };
            let llm = LlmEncoder::new(template, tokenizer.inner())?;
            let host = crate::models::qwen::load(&ckpt, &cfg, llm.yes_id, llm.no_id)?;
            let scorer: Box<dyn Scorer> = match device {
                Device::Cpu => Box::new(crate::models::qwen::Model::new(
                    CpuBackend,
                    cfg.clone(),
                    host,
                    max_tokens,
                )?),
                Device::Cuda(ordinal) => qwen_cuda(ordinal, &cfg, host, max_tokens, opts.cuda)?,
            };
            let dtype = ckpt.dtype();
            return Ok(Reranker {
                cfg,
                tokenizer,
                llm: Some(llm),
                scorer,
                image: None,
                processor: None,
                info,
                dtype,
            });
        }
        let host = weights::load(&ckpt, &cfg)?;
        let dtype = ckpt.dtype();
        drop(ckpt);
        let scorer: Box<dyn Scorer> = match device {
            Device::Cpu => Box::new(Model::new(CpuBackend, cfg.clone(), host, max_tokens)?),
            Device::Cuda(ordinal) => cuda_scorer(ordinal, &cfg, host, max_tokens, opts.cuda)?,
        };
        Ok(Reranker {
            cfg,
            tokenizer,
            llm: None,
            scorer,
            image: None,
            processor: None,
            info,
            dtype,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn disk_dtype(&self) -> DiskDtype {
        self.dtype
    }

    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    pub fn device_name(&self) -> String {
        self.scorer.device_name()
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.scorer.max_batch_tokens()
    }

    /// Tokens a shared-prefix forward kept out of the layers since load (LLM rerankers).
    pub fn shared_tokens(&self) -> u64 {
        self.scorer.shared_tokens()
    }

    /// Encodes (query, passage) pairs; the query once, the passages in parallel.
    pub fn encode<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        max_length: Option<usize>,
    ) -> Result<Vec<EncodedPair>> {
        self.encode_with(query, passages, max_length, TruncationSide::Right)
    }

    /// `encode`, cutting too-long pairs on `side`.
    pub fn encode_with<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        max_length: Option<usize>,
        side: TruncationSide,
    ) -> Result<Vec<EncodedPair>> {
        self.encode_for(query, passages, max_length, side, None)
    }

    /// `encode_with`, with a causal-LM reranker's instruction in place of its template's
    /// default. Through a template the middle text is cut from its end whatever `side` says,
    /// as the reference code does.
    pub fn encode_for<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        max_length: Option<usize>,
        side: TruncationSide,
        instruction: Option<&str>,
    ) -> Result<Vec<EncodedPair>> {
        if self.image.is_some() {
            return Err(self.text_refused());
        }
        let max_length = self.tokenizer.resolve_max_length(max_length)?;
        if instruction.is_some() && self.llm.is_none() {
            return Err(Error::input(format!(
                "instruction: {} takes none (only LLM rerankers have a prompt template)",
                self.cfg.architecture
            )));
        }
        match &self.llm {
            Some(llm) => llm.encode_group(
                self.tokenizer.inner(),
                instruction,
                query,
                passages,
                max_length,
            ),
            None => self
                .tokenizer
                .encode_group_with(query, passages, max_length, side),
        }
    }

    /// An image-text model's refusal of text documents.
    fn text_refused(&self) -> Error {
        Error::input(format!(
            "{} is an image-text model ({}): every document must be an image ({{\"image\": PATH or data URI}}), not text",
            self.info.path.display(),
            self.cfg.architecture
        ))
    }

    /// Whether the model scores (query, image) pairs (BLIP) rather than text pairs.
    pub fn is_image_model(&self) -> bool {
        self.image.is_some()
    }

    /// An image-text model's vision settings (the input size its images are resized to).
    pub fn vision_config(&self) -> Option<&crate::config::BlipVisionConfig> {
        self.cfg.blip.as_ref()
    }

    /// Raw logits of (query, image) pairs: the query against every preprocessed image
    /// ([3, size, size] CHW, as the model's image processor makes them), in order. Also says
    /// whether the query was cut. See [`Reranker::score_image_pairs`].
    pub fn score_images(
        &self,
        query: &str,
        images: &[&[f32]],
        max_length: Option<usize>,
    ) -> Result<(Vec<f32>, bool)> {
        let pairs: Vec<(usize, usize)> = (0..images.len()).map(|i| (0, i)).collect();
        let (logits, truncated) = self.score_image_pairs(&[query], &pairs, images, max_length)?;
        Ok((logits, truncated.first().copied().unwrap_or(false)))
    }

    /// Raw logits of (query, image) pairs: `pairs[k] = (q, i)` scores `queries[q]` against
    /// preprocessed image `i` of `images`, logits in `pairs`' order; also whether each query
    /// was cut. Images with the same pixels are one image: it runs the vision tower at most
    /// once per call (not at all when the image-feature cache holds it), and its
    /// cross-attention keys and values serve every pair of it in a forward. Pairs are packed
    /// image by image into as few forwards as the arena allows.
    pub fn score_image_pairs(
        &self,
        queries: &[&str],
        pairs: &[(usize, usize)],
        images: &[&[f32]],
        max_length: Option<usize>,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        use crate::models::blip::{Image, ImageKey};
        let Some(model) = &self.image else {
            return Err(self.images_refused());
        };
        let max_length = self.tokenizer.resolve_max_length(max_length)?;
        if let Some(&(q, i)) = pairs
            .iter()
            .find(|&&(q, i)| q >= queries.len() || i >= images.len())
        {
            return Err(Error::Internal(format!(
                "a pair of query {q} and image {i} among {} queries and {} images",
                queries.len(),
                images.len()
            )));
        }
        // The queries some pair scores (a query of no pairs is not encoded, nor refused).
        let mut scored = vec![false; queries.len()];
        for &(q, _) in pairs {
            scored[q] = true;
        }
        let mut encoded = Vec::with_capacity(queries.len());
        for (q, &s) in queries.iter().zip(&scored) {
            if !s {
                encoded.push(EncodedPair::default());
                continue;
            }
            let pair = self.tokenizer.encode_single(q, max_length)?;
            if pair.ids.is_empty() {
                return Err(Error::input("the query encodes to no tokens"));
            }
            encoded.push(pair);
        }
        // Distinct images by their pixels.
        let keys: Vec<ImageKey> = images.par_iter().map(|px| ImageKey::of(px)).collect();
        let mut distinct: Vec<Image<'_>> = Vec::new();
        let mut index: HashMap<ImageKey, usize> = HashMap::new();
        let mut which = Vec::with_capacity(images.len());
        for (&key, &pixels) in keys.iter().zip(images) {
            let d = *index.entry(key).or_insert_with(|| {
                distinct.push(Image { key, pixels });
                distinct.len() - 1
            });
            which.push(d);
        }
        // Image by image, so that each image's pairs share a forward.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&k| which[pairs[k].1]);
        let (max_tokens, max_pairs, max_images) = (
            model.max_batch_tokens(),
            model.max_batch_pairs(),
            model.max_batch_images(),
        );
        let items: Vec<(usize, usize)> = order
            .iter()
            .map(|&k| (encoded[pairs[k].0].ids.len(), which[pairs[k].1]))
            .collect();
        let mut logits = vec![0f32; pairs.len()];
        for forward in image_forwards(&items, max_tokens, max_pairs, max_images) {
            let chunk = &order[forward.clone()];
            let batch = PackedBatch::pack(chunk.iter().map(|&k| &encoded[pairs[k].0]), &self.cfg);
            // The forward's distinct images in order, and each pair's among them.
            let (mut imgs, mut image_of): (Vec<Image<'_>>, Vec<u32>) = (Vec::new(), Vec::new());
            for &(_, d) in &items[forward] {
                if imgs.last().map(|im| im.key) != Some(distinct[d].key) {
                    imgs.push(distinct[d]);
                }
                image_of.push(imgs.len() as u32 - 1);
            }
            let out = model.score(&batch, &image_of, &imgs)?;
            for (&k, v) in chunk.iter().zip(out) {
                logits[k] = v;
            }
        }
        Ok((logits, encoded.iter().map(|p| p.truncated).collect()))
    }

    /// An image-text model's image-feature cache counters; None for a text model.
    pub fn image_cache_stats(&self) -> Option<crate::models::blip::CacheStats> {
        self.image.as_ref().map(|m| m.cache_stats())
    }

    /// Empties an image-text model's image-feature cache and zeroes its counters.
    pub fn clear_image_cache(&self) {
        if let Some(m) = &self.image {
            m.clear_cache();
        }
    }

    /// Scores every preprocessed image against the query and returns them best first.
    pub fn rerank_pixels(
        &self,
        query: &str,
        images: &[&[f32]],
        opts: &Options,
    ) -> Result<Vec<Ranked>> {
        if opts.instruction.is_some() {
            return Err(Error::input(format!(
                "instruction: {} takes none (only LLM rerankers have a prompt template)",
                self.cfg.architecture
            )));
        }
        let (logits, truncated) = self.score_images(query, images, opts.max_length)?;
        let pairs: Vec<EncodedPair> = (0..logits.len())
            .map(|_| EncodedPair {
                ids: Vec::new(),
                type_ids: Vec::new(),
                truncated,
            })
            .collect();
        Ok(rank(&pairs, &logits, opts))
    }

    /// One small forward before serving: a text pair, or for an image-text model the word
    /// against one blank image (a text pair would be refused).
    pub fn warm_up(&self) -> Result<()> {
        match self.cfg.blip.as_ref() {
            Some(v) => {
                let blank = vec![0f32; v.pixels_per_image()];
                self.score_images("warm-up", &[&blank], None)?;
                // The blank image is nobody's: the cache and its counters start empty.
                self.clear_image_cache();
                Ok(())
            }
            None => self
                .rerank("warm-up", &["warm-up"], &Options::default())
                .map(|_| ()),
        }
    }

    /// An image-text model's image processor: encoded image → its pixel values.
    pub fn image_processor(&self) -> Option<&ImageProcessor> {
        self.processor.as_ref()
    }

    /// Decodes and preprocesses encoded images (PNG, JPEG, WebP) as the model's image
    /// processor does; an error names the image by its index.
    pub fn pixel_values(&self, images: &[&[u8]], limits: &ImageLimits) -> Result<Vec<Vec<f32>>> {
        let Some(p) = &self.processor else {
            return Err(self.images_refused());
        };
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                p.pixel_values(bytes, limits)
                    .map_err(|e| Error::input(format!("document {i}: {e}")))
            })
            .collect()
    }

    /// Scores every encoded image against the query and returns them best first.
    pub fn rerank_images(
        &self,
        query: &str,
        images: &[&[u8]],
        limits: &ImageLimits,
        opts: &Options,
    ) -> Result<Vec<Ranked>> {
        let pixels = self.pixel_values(images, limits)?;
        let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
        self.rerank_pixels(query, &refs, opts)
    }

    /// A text model's refusal of image documents.
    fn images_refused(&self) -> Error {
        Error::input(format!(
            "{} is a text model ({}): it cannot score image documents",
            self.info.path.display(),
            self.cfg.architecture
        ))
    }

    /// A causal-LM reranker's template and its token ids (None for encoder models).
    pub fn llm_template(&self) -> Option<&LlmEncoder> {
        self.llm.as_ref()
    }

    /// Raw logits for encoded pairs, in order, packed into as few forwards as the arena allows.
    pub fn score_pairs(&self, pairs: &[&EncodedPair]) -> Result<Vec<f32>> {
        if let Some(i) = pairs.iter().position(|p| p.ids.is_empty()) {
            // Only a tokenizer without special tokens can get here (empty query and passage).
            return Err(Error::input(format!(
                "pair {i} encodes to no tokens; the model needs at least one"
            )));
        }
        let limit = self.scorer.max_batch_tokens();
        let mut logits = Vec::with_capacity(pairs.len());
        let mut start = 0;
        while start < pairs.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < pairs.len() && (end == start || tokens + pairs[end].ids.len() <= limit) {
                tokens += pairs[end].ids.len();
                end += 1;
            }
            let batch = PackedBatch::pack(pairs[start..end].iter().copied(), &self.cfg);
            logits.extend(self.scorer.score(&batch)?);
            start = end;
        }
        Ok(logits)
    }

    /// Scores every passage against the query and returns them best first.
    pub fn rerank<S: AsRef<str> + Sync>(
        &self,
        query: &str,
        passages: &[S],
        opts: &Options,
    ) -> Result<Vec<Ranked>> {
        let pairs = self.encode_for(
            query,
            passages,
            opts.max_length,
            opts.truncation_side,
            opts.instruction.as_deref(),
        )?;
        let refs: Vec<&EncodedPair> = pairs.iter().collect();
        let logits = self.score_pairs(&refs)?;
        Ok(rank(&pairs, &logits, opts))
    }

    /// Many queries, each with its own passages, scored in shared packed batches.
    pub fn rerank_many<S: AsRef<str> + Sync>(
        &self,
        groups: &[Group<S>],
        opts: &Options,
    ) -> Result<Vec<Vec<Ranked>>> {
        let encoded = groups
            .iter()
            .map(|g| {
                self.encode_for(
                    &g.query,
                    &g.passages,
                    opts.max_length,
                    opts.truncation_side,
                    opts.instruction.as_deref(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&EncodedPair> = encoded.iter().flatten().collect();
        let logits = self.score_pairs(&refs)?;
        let mut out = Vec::with_capacity(groups.len());
        let mut at = 0;
        for pairs in &encoded {
            out.push(rank(pairs, &logits[at..at + pairs.len()], opts));
            at += pairs.len();
        }
        Ok(out)
    }
}

/// Splits pairs into forwards: `items[k] = (text tokens, distinct image)` of pair k, the pairs
/// already grouped image by image; each forward is a run of consecutive pairs of at most
/// `max_pairs` pairs, `max_tokens` tokens (a single longer pair alone) and `max_images` distinct
/// images, each as full as those allow.
fn image_forwards(
    items: &[(usize, usize)],
    max_tokens: usize,
    max_pairs: usize,
    max_images: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens, mut images) = (0, 0, 0);
    for (k, &(t, image)) in items.iter().enumerate() {
        let new_image = k == start || items[k - 1].1 != image;
        let full = k - start + 1 > max_pairs
            || tokens + t > max_tokens
            || (new_image && images + 1 > max_images);
        if k > start && full {
            out.push(start..k);
            (start, tokens, images) = (k, 0, 0);
        }
        if k == start || items[k - 1].1 != image {
            images += 1;
        }
        tokens += t;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Turns logits into results sorted best first; ties keep input order.
pub fn rank(pairs: &[EncodedPair], logits: &[f32], opts: &Options) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = pairs
        .iter()
        .zip(logits)
        .enumerate()
        .map(|(index, (p, &logit))| Ranked {
            index,
            score: if opts.raw_scores {
                logit
            } else {
                sigmoid(logit)
            },
            truncated: p.truncated,
        })
        .collect();
    let key = |r: &Ranked| {
        if r.score.is_nan() {
            f32::NEG_INFINITY
        } else {
            r.score
        }
    };
    out.sort_by(|a, b| key(b).total_cmp(&key(a)));
    if let Some(k) = opts.top_k {
        out.truncate(k);
    }
    out
}

#[cfg(not(feature = "cuda"))]
fn cuda_scorer(
    _ordinal: usize,
    _cfg: &ModelConfig,
    _host: weights::Weights<weights::HostTensor>,
    _max_tokens: usize,
    _opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    Err(Error::CudaNotCompiled)
}

#[cfg(not(feature = "cuda"))]
fn modernbert_cuda(
    _ordinal: usize,
    _cfg: &ModelConfig,
    _host: crate::models::modernbert::Weights<weights::HostTensor>,
    _max_tokens: usize,
    _opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    Err(Error::CudaNotCompiled)
}

#[cfg(not(feature = "cuda"))]
fn blip_cuda(
    _ordinal: usize,
    _cfg: &ModelConfig,
    _host: crate::models::blip::Weights<weights::HostTensor>,
    _max_tokens: usize,
    _opts: CudaOptions,
    _cache_bytes: usize,
) -> Result<Box<dyn ImageScorer>> {
    Err(Error::CudaNotCompiled)
}

#[cfg(not(feature = "cuda"))]
fn qwen_cuda(
    _ordinal: usize,
    _cfg: &ModelConfig,
    _host: crate::models::qwen::Weights<weights::HostTensor>,
    _max_tokens: usize,
    _opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    Err(Error::CudaNotCompiled)
}

/// Opens CUDA device `ordinal` for a model, storing in `S`, tuning its GEMMs first when asked.
#[cfg(feature = "cuda")]
fn cuda_backend<S: crate::backend::cuda::Storage>(
    ordinal: usize,
    cfg: &ModelConfig,
    max_tokens: usize,
    opts: CudaOptions,
) -> Result<crate::backend::cuda::CudaBackend<S>> {
    let backend = crate::backend::cuda::CudaBackend::<S>::open(ordinal)?;
    if opts.tune_gemm {
        // Before the first forward: a recorded graph keeps the algorithms it was recorded with.
        let tuning = backend.tune_gemm(cfg, max_tokens)?;
        eprintln!("crossrank: {tuning}");
    }
    Ok(backend)
}

#[cfg(feature = "cuda")]
fn cuda_scorer(
    ordinal: usize,
    cfg: &ModelConfig,
    host: weights::Weights<weights::HostTensor>,
    max_tokens: usize,
    opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    let backend = cuda_backend::<half::f16>(ordinal, cfg, max_tokens, opts)?;
    Ok(Box::new(
        Model::new(backend, cfg.clone(), host, max_tokens)?.with_graphs(opts.cuda_graphs),
    ))
}

/// The decoder LLMs run in bf16 on CUDA: the dtype their checkpoints are trained and shipped
/// in, with f32's exponent range. Decoder LLMs' residual streams carry outlier activations far
/// above the encoders'; fp16's ±65504 could be shown safe only on real checkpoints, and none
/// can be downloaded where this was written (see README, "LLM rerankers").
#[cfg(feature = "cuda")]
fn qwen_cuda(
    ordinal: usize,
    cfg: &ModelConfig,
    host: crate::models::qwen::Weights<weights::HostTensor>,
    max_tokens: usize,
    opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    let backend = cuda_backend::<half::bf16>(ordinal, cfg, max_tokens, opts)?;
    Ok(Box::new(
        crate::models::qwen::Model::new(backend, cfg.clone(), host, max_tokens)?
            .with_graphs(opts.cuda_graphs),
    ))
}

#[cfg(feature = "cuda")]
fn modernbert_cuda(
    ordinal: usize,
    cfg: &ModelConfig,
    host: crate::models::modernbert::Weights<weights::HostTensor>,
    max_tokens: usize,
    opts: CudaOptions,
) -> Result<Box<dyn Scorer>> {
    let backend = cuda_backend::<half::f16>(ordinal, cfg, max_tokens, opts)?;
    Ok(Box::new(
        crate::models::modernbert::Model::new(backend, cfg.clone(), host, max_tokens)?
            .with_graphs(opts.cuda_graphs),
    ))
}

/// BLIP on CUDA in fp16 (eager: its forward records no graph).
#[cfg(feature = "cuda")]
fn blip_cuda(
    ordinal: usize,
    cfg: &ModelConfig,
    host: crate::models::blip::Weights<weights::HostTensor>,
    max_tokens: usize,
    opts: CudaOptions,
    cache_bytes: usize,
) -> Result<Box<dyn ImageScorer>> {
    let backend = cuda_backend::<half::f16>(ordinal, cfg, max_tokens, opts)?;
    Ok(Box::new(crate::models::blip::Model::new(
        backend,
        cfg.clone(),
        host,
        max_tokens,
        crate::models::blip::MAX_IMAGES_PER_FORWARD,
        cache_bytes,
    )?))
}

/// The names of the causal-LM reranking templates, comma-separated.
pub fn template_names() -> String {
    let names: Vec<&str> = crate::llm_template::TEMPLATES
        .iter()
        .map(|t| t.name)
        .collect();
    names.join(", ")
}

/// The backends compiled into this build.
pub fn backends() -> Vec<&'static str> {
    if cfg!(feature = "cuda") {
        vec!["cpu", "cuda"]
    } else {
        vec!["cpu"]
    }
}

/// The GPU architectures whose code is embedded in this build (empty without `cuda`).
pub fn cuda_architectures() -> Vec<String> {
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::architectures()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}

/// The CUDA devices visible to this process (empty without `cuda`, a driver or a device).
pub fn cuda_devices() -> Vec<String> {
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::devices()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn pair(len: usize, truncated: bool) -> EncodedPair {
        EncodedPair {
            ids: vec![1; len],
            type_ids: vec![0; len],
            truncated,
        }
    }

    /// Each limit of an image forward, met exactly and passed by one: a forward is as full as
    /// the limits allow and no fuller; an image's pairs continue into the next forward when
    /// pairs or tokens run out (the image then counts again there); a pair longer than the
    /// token budget goes alone.
    #[test]
    fn image_forwards_fill_to_each_limit() {
        let f = image_forwards;
        // Images: 2 fit, the third starts a forward.
        let items = [(1, 0), (1, 0), (1, 1), (1, 2), (1, 2)];
        assert_eq!(f(&items, 100, 100, 2), vec![0..3, 3..5]);
        assert_eq!(f(&items, 100, 100, 3), vec![0..5]);
        // Pairs: 2 per forward, whatever their images.
        assert_eq!(f(&items, 100, 2, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(f(&items, 100, 5, 100), vec![0..5]);
        // Tokens: 5 + 3 = 8 fits 8, 8 + 1 does not; 9 fits 9; a pair of 9 over a budget of 8
        // goes alone.
        let items = [(5, 0), (3, 0), (1, 0), (9, 1), (2, 1)];
        assert_eq!(f(&items, 8, 100, 100), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(f(&items, 9, 100, 100), vec![0..3, 3..4, 4..5]);
        assert_eq!(f(&items, 10, 100, 100), vec![0..3, 3..4, 4..5]);
        assert_eq!(f(&items, 11, 100, 100), vec![0..3, 3..5]);
        // A first pair longer than the budget is a forward of its own, not an empty one first.
        assert_eq!(f(&[(9, 0), (1, 0)], 8, 100, 100), vec![0..1, 1..2]);
        // An image continued into the next forward counts there: 1 image per forward.
        let items = [(1, 0), (1, 0), (1, 0), (1, 1)];
        assert_eq!(f(&items, 100, 2, 1), vec![0..2, 2..3, 3..4]);
        assert_eq!(f(&[], 10, 10, 10), Vec::<std::ops::Range<usize>>::new());
    }

    /// Equal scores keep their input order (a stable sort, best first); NaN goes last.
    #[test]
    fn rank_keeps_ties_in_input_order() {
        let pairs: Vec<EncodedPair> = (0..7).map(|i| pair(2, i == 3)).collect();
        let logits = [1.0, 2.0, 1.0, 2.0, f32::NAN, 1.0, 2.0];
        for raw_scores in [true, false] {
            let opts = Options {
                raw_scores,
                ..Default::default()
            };
            let ranked = rank(&pairs, &logits, &opts);
            let order: Vec<usize> = ranked.iter().map(|r| r.index).collect();
            assert_eq!(order, vec![1, 3, 6, 0, 2, 5, 4], "raw_scores {raw_scores}");
            assert!(ranked.iter().all(|r| r.truncated == (r.index == 3)));
            let top = rank(
                &pairs,
                &logits,
                &Options {
                    top_k: Some(2),
                    ..opts
                },
            );
            assert_eq!(top.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 3]);
        }
    }

    /// Records the token count of every forward and answers each pair with its length.
    struct Counting {
        limit: usize,
        forwards: Arc<Mutex<Vec<usize>>>,
    }

    impl Scorer for Counting {
        fn score(&self, batch: &PackedBatch) -> Result<Vec<f32>> {
            if batch.tokens() > self.limit {
                return Err(Error::Internal(format!(
                    "{} tokens over the arena's {}",
                    batch.tokens(),
                    self.limit
                )));
            }
            self.forwards.lock().unwrap().push(batch.tokens());
            Ok((0..batch.len())
                .map(|s| batch.range(s).len() as f32)
                .collect())
        }
        fn max_batch_tokens(&self) -> usize {
            self.limit
        }
        fn device_name(&self) -> String {
            "counting".into()
        }
    }

    /// Pairs fill a forward up to exactly max_batch_tokens (not one token less), and the next
    /// pair starts the next forward; a pair alone is never split.
    #[test]
    fn a_forward_takes_pairs_up_to_exactly_max_batch_tokens() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/bert-f32");
        let mut r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let forwards = Arc::new(Mutex::new(Vec::new()));
        r.scorer = Box::new(Counting {
            limit: 20,
            forwards: forwards.clone(),
        });
        let lens = [6, 6, 8, 1, 19, 1, 20, 20];
        let pairs: Vec<EncodedPair> = lens.iter().map(|&n| pair(n, false)).collect();
        let refs: Vec<&EncodedPair> = pairs.iter().collect();
        let logits = r.score_pairs(&refs).unwrap();
        let want: Vec<f32> = lens.iter().map(|&n| n as f32).collect();
        assert_eq!(logits, want);
        // 6+6+8 = 20 fills the first; 1+19 = 20 the second; then 1 (20 would make 21), 20, 20.
        assert_eq!(*forwards.lock().unwrap(), vec![20, 20, 1, 20, 20]);
    }
}
