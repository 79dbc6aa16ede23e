//! `crossrank audit`: how does model B reorder model A's candidates?
//!
//! query set (JSON lines, [`input`]) → both models score every pair, a batch of queries at a
//! time → per-query comparison ([`compare`], statistics in [`stats`]) → streamed into
//! `audit.json` and into small running totals → `audit.md` ([`report`]) and PNG charts
//! ([`charts`]).
//!
//! Memory: one batch of queries and their scores, plus per query a few numbers (the
//! distributions), per distinct document one tally (the cross-query trends), the most changed
//! queries and a fixed rank grid. Each query's full record goes to `audit.json` as soon as it is
//! scored.

pub mod charts;
pub mod compare;
pub mod input;
pub mod report;
pub mod stats;

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::engine::{self, Device, LoadOptions, Options, Reranker};
use crate::error::{Error, Result};
use crate::tokenize::EncodedPair;
use compare::{QueryAudit, Settings, Totals};
use input::{QueryLine, QueryReader};

/// `crossrank audit`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditOptions {
    /// The model the audit starts from (the "before"): a model directory.
    #[arg(long)]
    pub model_a: PathBuf,
    /// The model it is compared with (the "after").
    #[arg(long)]
    pub model_b: PathBuf,
    /// JSON lines: {"id": ..., "query": "...", "documents": ["...", {"text": "...", "id": ...}]}.
    #[arg(long)]
    pub queries: PathBuf,
    /// cpu, cuda or cuda:N, for both models (see --device-a, --device-b).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Model A's device, when not --device.
    #[arg(long)]
    pub device_a: Option<Device>,
    /// Model B's device, when not --device.
    #[arg(long)]
    pub device_b: Option<Device>,
    /// The depth of the top-k overlap.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Rank-biased overlap's persistence p, in (0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub rbo_p: f64,
    /// Documents listed per query as moving most, each way.
    #[arg(long, default_value_t = 5)]
    pub movers: usize,
    /// Where audit.json, audit.md and the charts go (created if missing).
    #[arg(long, default_value = "audit")]
    pub out: PathBuf,
    /// Truncate each (query, document) pair to this many tokens (default: the model's).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Compare logits instead of sigmoid(logit) scores (the order is the same; the score shift
    /// is not).
    #[arg(long)]
    pub raw_scores: bool,
    /// Documents scored per batch (whole queries; a query larger than this is one batch).
    #[arg(long, default_value_t = 512)]
    pub batch_docs: usize,
    /// The most tokens in one forward pass.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
}

/// Where a model came from and which bytes it was: enough to tell two audits' models apart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Identity {
    pub path: String,
    pub architecture: String,
    pub family: String,
    pub dtype: String,
    pub parameters: usize,
    pub device: String,
    pub config_sha256: String,
    /// tokenizer.json's SHA-256 (null when the model has none).
    pub tokenizer_sha256: Option<String>,
    /// One weights file: its SHA-256 (what the Hugging Face Hub shows for it). Several: the
    /// SHA-256 of their `sha256sum` lines (`<hash>  <name>\n`, by name).
    pub weights_sha256: String,
    pub weight_files: Vec<WeightFile>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WeightFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, read in 1 MiB pieces; with its size.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), total))
}

/// The identity of a loaded model: its directory's config, tokenizer and weights hashed.
pub fn identity(dir: &Path, model: &Reranker) -> Result<Identity> {
    let (config_sha256, _) = sha256_file(&dir.join("config.json"))?;
    let tok = dir.join("tokenizer.json");
    let tokenizer_sha256 = if tok.is_file() {
        Some(sha256_file(&tok)?.0)
    } else {
        None
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    let mut weight_files = Vec::with_capacity(names.len());
    for name in names {
        let (sha256, bytes) = sha256_file(&dir.join(&name))?;
        weight_files.push(WeightFile {
            file: name,
            bytes,
            sha256,
        });
    }
    let weights_sha256 = match weight_files.as_slice() {
        [one] => one.sha256.clone(),
        many => {
            let mut h = Sha256::new();
            for w in many {
                h.update(format!("{}  {}\n", w.sha256, w.file).as_bytes());
            }
            hex(&h.finalize())
        }
    };
    let info = model.info();
    Ok(Identity {
        path: dir.display().to_string(),
        architecture: info.architecture.clone(),
        family: info.family.to_string(),
        dtype: info.dtype.to_string(),
        parameters: info.parameters,
        device: model.device_name(),
        config_sha256,
        tokenizer_sha256,
        weights_sha256,
        weight_files,
    })
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_from_unix(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn utc_from_unix(secs: u64) -> String {
    let rem = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        crate::bench::run::civil_date(secs / 86_400),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Progress on stderr: rewritten in place on a terminal, a line every few seconds otherwise.
struct Progress {
    total_queries: usize,
    total_pairs: usize,
    start: Instant,
    last: Option<Instant>,
    /// The query count of the last line written.
    shown: Option<usize>,
    tty: bool,
}

impl Progress {
    fn new(total_queries: usize, total_pairs: usize) -> Self {
        Progress {
            total_queries,
            total_pairs,
            start: Instant::now(),
            last: None,
            shown: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, queries: usize, pairs: usize, done: bool) {
        let every = if self.tty { 0.2 } else { 5.0 };
        if !done && self.last.is_some_and(|t| t.elapsed().as_secs_f64() < every) {
            return;
        }
        // The closing call repeats nothing the last line already said.
        if done && !self.tty && self.shown == Some(queries) {
            return;
        }
        self.last = Some(Instant::now());
        self.shown = Some(queries);
        let secs = self.start.elapsed().as_secs_f64();
        let width = 30;
        let filled = (width * pairs)
            .checked_div(self.total_pairs)
            .unwrap_or(width)
            .min(width);
        let line = format!(
            "audit: [{}{}] {queries}/{} queries, {pairs}/{} documents, {secs:.1} s ({:.0} documents/s, both models)",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total_queries,
            self.total_pairs,
            pairs as f64 / secs.max(1e-9)
        );
        if self.tty {
            eprint!("\r{line}");
            if done {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }
}

/// Scores a batch of queries with one model: each query's documents ranked best first (ties in
/// input order, `engine::rank`).
fn score_batch(
    model: &Reranker,
    batch: &[QueryLine],
    opts: &Options,
) -> Result<Vec<Vec<engine::Ranked>>> {
    let encoded: Vec<Vec<EncodedPair>> = batch
        .iter()
        .map(|q| {
            let texts: Vec<&str> = q.docs.iter().map(|d| d.text.as_str()).collect();
            model
                .encode_for(
                    &q.query,
                    &texts,
                    opts.max_length,
                    opts.truncation_side,
                    None,
                )
                .map_err(|e| Error::input(format!("line {}: {e}", q.line)))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&EncodedPair> = encoded.iter().flatten().collect();
    let logits = model.score_pairs(&refs)?;
    let mut out = Vec::with_capacity(batch.len());
    let mut at = 0;
    for pairs in &encoded {
        out.push(engine::rank(pairs, &logits[at..at + pairs.len()], opts));
        at += pairs.len();
    }
    Ok(out)
}

/// What the report is made from once every query has been scored.
pub struct Finished {
    pub options: AuditOptions,
    pub models: [Identity; 2],
    pub created: String,
    pub totals: Totals,
    pub seconds: f64,
    /// The most documents of one query.
    pub max_docs: usize,
}

/// Runs the audit and writes audit.json, audit.md and the charts into `opts.out`.
pub fn run(opts: AuditOptions) -> Result<()> {
    let f = audit(opts)?;
    eprintln!(
        "audit: wrote audit.json, audit.md and {} charts to {}",
        charts::FILES.len(),
        f.options.out.display()
    );
    Ok(())
}

/// The audit itself (`run` without the closing message); returns what the report was made of.
pub fn audit(opts: AuditOptions) -> Result<Finished> {
    if opts.top_k == 0 {
        return Err(Error::input("--top-k must be at least 1"));
    }
    if !(opts.rbo_p > 0.0 && opts.rbo_p < 1.0) {
        return Err(Error::input(format!(
            "--rbo-p must be between 0 and 1 (exclusive), not {}",
            opts.rbo_p
        )));
    }
    if opts.batch_docs == 0 {
        return Err(Error::input("--batch-docs must be at least 1"));
    }
    if opts.max_batch_tokens == 0 {
        return Err(Error::input("--max-batch-tokens must be at least 1"));
    }
    // The whole file is checked before any model loads: a bad line fails in a second.
    let shape = input::check(&opts.queries)?;
    if shape.queries == 0 {
        return Err(Error::input(format!(
            "queries file {}: no queries",
            opts.queries.display()
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;

    let load = LoadOptions {
        max_batch_tokens: opts.max_batch_tokens,
        ..LoadOptions::default()
    };
    let dev_a = opts.device_a.unwrap_or(opts.device);
    let dev_b = opts.device_b.unwrap_or(opts.device);
    // Nothing on stderr before both models load: a refusal stays one line.
    let model_a = Reranker::load(&opts.model_a, dev_a, &load)?;
    let model_b = Reranker::load(&opts.model_b, dev_b, &load)?;
    let models = [
        identity(&opts.model_a, &model_a)?,
        identity(&opts.model_b, &model_b)?,
    ];
    for (name, m) in ["A", "B"].iter().zip(&models) {
        eprintln!(
            "audit: model {name} {} ({}, {}, weights sha256 {}…)",
            m.path,
            m.architecture,
            m.device,
            m.weights_sha256.chars().take(16).collect::<String>()
        );
    }
    let created = utc_now();
    let rank_opts = Options {
        max_length: opts.max_length,
        raw_scores: opts.raw_scores,
        ..Options::default()
    };
    let settings = Settings {
        top_k: opts.top_k,
        rbo_p: opts.rbo_p,
        movers: opts.movers,
    };

    let json_path = opts.out.join("audit.json");
    let partial = opts.out.join("audit.json.partial");
    let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut json =
        report::JsonWriter::begin(BufWriter::new(file), &partial, &opts, &models, &created)?;

    let mut totals = Totals::new(shape.max_docs.clamp(1, 50), 20);
    let mut progress = Progress::new(shape.queries, shape.pairs);
    let start = Instant::now();
    let mut reader = QueryReader::open(&opts.queries)?;
    let mut batch: Vec<QueryLine> = Vec::new();
    let mut batch_docs = 0;
    let mut exhausted = false;
    while !exhausted {
        match reader.next() {
            Some(q) => {
                let q = q?;
                batch_docs += q.docs.len();
                batch.push(q);
                if batch_docs < opts.batch_docs {
                    continue;
                }
            }
            None => exhausted = true,
        }
        if batch.is_empty() {
            continue;
        }
        let ranked_a = score_batch(&model_a, &batch, &rank_opts)?;
        let ranked_b = score_batch(&model_b, &batch, &rank_opts)?;
        for ((q, a), b) in batch.iter().zip(&ranked_a).zip(&ranked_b) {
            let audit: QueryAudit = compare::compare(q, a, b, &settings);
            json.query(&audit)?;
            totals.add(q, &audit);
        }
        batch.clear();
        batch_docs = 0;
        progress.update(totals.queries, totals.pairs, false);
    }
    progress.update(totals.queries, totals.pairs, true);
    let seconds = start.elapsed().as_secs_f64();

    let mut finished = Finished {
        options: opts,
        models,
        created,
        totals,
        seconds,
        max_docs: shape.max_docs,
    };
    let charts = charts::draw_all(&finished.options.out, &finished)?;
    let summary = report::Summary::of(&mut finished, &charts);
    json.finish(&summary)?;
    std::fs::rename(&partial, &json_path).map_err(|e| Error::io(&json_path, e))?;
    let md = report::markdown(&finished, &summary);
    let md_path = finished.options.out.join("audit.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        // date -u -d @951782400: 2000-02-29 00:00:00 (a leap day of a century leap year).
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        // date -u -d @1798761599: Thu Dec 31 23:59:59 UTC 2026.
        assert_eq!(utc_from_unix(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
