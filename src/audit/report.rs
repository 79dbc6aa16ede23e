//! The audit's two documents: `audit.json` (everything, each query's record streamed in as it
//! is scored) and `audit.md` (the summary people read).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::compare::{DocTrend, QueryAudit, QueryBrief};
use super::stats::{self, Summary as Dist};
use super::{AuditOptions, Finished, Identity};
use crate::error::{Error, Result};

/// Documents must appear in at least this many queries to count as a cross-query trend.
pub const TREND_MIN_QUERIES: usize = 2;
/// Rows of the most-changed, rising and falling tables.
pub const TABLE_ROWS: usize = 10;

/// The `settings` object: what the figures mean and how they were made.
fn settings(o: &AuditOptions) -> serde_json::Value {
    json!({
        "queries": o.queries.display().to_string(),
        "top_k": o.top_k,
        "rbo_p": o.rbo_p,
        "movers": o.movers,
        "max_length": o.max_length,
        "score": if o.raw_scores { "logit" } else { "sigmoid(logit)" },
        "ranks": "1-based, 1 = best; equal scores keep their input order (as `crossrank rerank`)",
        "kendall_tau": "tau-b (ties corrected; the orders have no ties, so here it equals tau-a)",
        "spearman_rho": "Pearson's correlation of the ranks",
        "rbo": "extrapolated rank-biased overlap over the full list (Webber, Moffat & Zobel 2010, eq. 32)",
        "score_shift": "score under B minus score under A",
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("audit.json: {e}")))
}

/// Writes `audit.json` as the audit goes: the head, then one line per query, then the summary.
pub struct JsonWriter<W: Write> {
    out: W,
    path: PathBuf,
    first: bool,
}

impl<W: Write> JsonWriter<W> {
    pub fn begin(
        out: W,
        path: &Path,
        opts: &AuditOptions,
        models: &[Identity; 2],
        created: &str,
    ) -> Result<Self> {
        let mut w = JsonWriter {
            out,
            path: path.to_path_buf(),
            first: true,
        };
        let head = format!(
            "{{\n\"crossrank_version\": {},\n\"created\": {},\n\"settings\": {},\n\"models\": {{\"a\": {}, \"b\": {}}},\n\"queries\": [",
            to_json(&env!("CARGO_PKG_VERSION"))?,
            to_json(&created)?,
            to_json(&settings(opts))?,
            to_json(&models[0])?,
            to_json(&models[1])?,
        );
        w.write(head.as_bytes())?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn query(&mut self, q: &QueryAudit) -> Result<()> {
        let sep = if self.first { "\n" } else { ",\n" };
        self.first = false;
        let line = to_json(q)?;
        self.write(sep.as_bytes())?;
        self.write(line.as_bytes())
    }

    pub fn finish(mut self, summary: &Summary) -> Result<()> {
        let text = serde_json::to_string_pretty(summary)
            .map_err(|e| Error::Internal(format!("audit.json: {e}")))?;
        self.write(format!("\n],\n\"summary\": {text}\n}}\n").as_bytes())?;
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryRef {
    pub line: usize,
    pub id: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Trends {
    /// Distinct documents (by id, else text hash) in queries of two or more documents.
    pub distinct: usize,
    pub min_queries: usize,
    pub rising: Vec<DocTrend>,
    pub falling: Vec<DocTrend>,
}

/// The whole set's figures: `audit.json`'s `summary`, and what `audit.md` is written from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub queries: usize,
    pub documents: usize,
    pub queries_without_documents: Vec<QueryRef>,
    pub queries_with_one_document: Vec<QueryRef>,
    /// Queries of two or more documents whose two orders are identical.
    pub unchanged_queries: usize,
    pub kendall_tau_b: Option<Dist>,
    pub spearman_rho: Option<Dist>,
    pub top_k_overlap_fraction: Option<Dist>,
    pub rbo: Option<Dist>,
    pub mean_abs_score_shift: Option<Dist>,
    pub most_changed: Vec<QueryBrief>,
    pub documents_across_queries: Trends,
    pub charts: Vec<String>,
    pub seconds: f64,
}

impl Summary {
    pub fn of(f: &mut Finished, charts: &[String]) -> Self {
        let t = &mut f.totals;
        let refs = |v: &[(usize, Option<String>)]| {
            v.iter()
                .map(|(line, id)| QueryRef {
                    line: *line,
                    id: id.clone(),
                })
                .collect()
        };
        let mut most_changed = t.most_changed();
        most_changed.truncate(TABLE_ROWS);
        let (rising, falling) = t.trends(TREND_MIN_QUERIES, TABLE_ROWS);
        Summary {
            queries: t.queries,
            documents: t.pairs,
            queries_without_documents: refs(&t.empty),
            queries_with_one_document: refs(&t.single),
            unchanged_queries: t.unchanged,
            kendall_tau_b: stats::summarize(&t.tau),
            spearman_rho: stats::summarize(&t.rho),
            top_k_overlap_fraction: stats::summarize(&t.overlap),
            rbo: stats::summarize(&t.rbo),
            mean_abs_score_shift: stats::summarize(&t.mean_abs_shift),
            most_changed,
            documents_across_queries: Trends {
                distinct: t.distinct_docs(),
                min_queries: TREND_MIN_QUERIES,
                rising,
                falling,
            },
            charts: charts.to_vec(),
            seconds: f.seconds,
        }
    }
}

/// Text for a markdown table cell: one line, no pipes.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'")
}

fn num(x: Option<f64>) -> String {
    match x {
        Some(v) => format!("{v:.3}"),
        None => "–".into(),
    }
}

fn short(hash: &str) -> String {
    hash.chars().take(16).collect()
}

fn label(line: usize, id: &Option<String>) -> String {
    match id {
        Some(id) => cell(id),
        None => format!("line {line}"),
    }
}

/// `audit.md`.
pub fn markdown(f: &Finished, s: &Summary) -> String {
    let o = &f.options;
    let [a, b] = &f.models;
    let mut md = String::new();
    let k = o.top_k;
    let _ = writeln!(md, "# Rank-shift audit\n");
    let _ = writeln!(
        md,
        "How model B reorders model A's candidates on `{}`: {} queries, {} (query, document) pairs, \
         scored by both models in {:.1} s. crossrank {}, {}.\n",
        cell(&o.queries.display().to_string()),
        s.queries,
        s.documents,
        s.seconds,
        env!("CARGO_PKG_VERSION"),
        f.created
    );
    let _ = writeln!(md, "| | model A | model B |\n|---|---|---|");
    let row = |md: &mut String, name: &str, x: String, y: String| {
        let _ = writeln!(md, "| {name} | {x} | {y} |");
    };
    row(
        &mut md,
        "path",
        format!("`{}`", cell(&a.path)),
        format!("`{}`", cell(&b.path)),
    );
    row(
        &mut md,
        "architecture",
        cell(&a.architecture),
        cell(&b.architecture),
    );
    row(
        &mut md,
        "parameters, dtype",
        format!("{}, {}", a.parameters, a.dtype),
        format!("{}, {}", b.parameters, b.dtype),
    );
    row(&mut md, "device", a.device.clone(), b.device.clone());
    row(
        &mut md,
        "config.json SHA-256",
        format!("`{}…`", short(&a.config_sha256)),
        format!("`{}…`", short(&b.config_sha256)),
    );
    let tok = |i: &Identity| match &i.tokenizer_sha256 {
        Some(h) => format!("`{}…`", short(h)),
        None => "–".into(),
    };
    row(&mut md, "tokenizer.json SHA-256", tok(a), tok(b));
    row(
        &mut md,
        "weights SHA-256",
        format!("`{}…`", short(&a.weights_sha256)),
        format!("`{}…`", short(&b.weights_sha256)),
    );
    if a.config_sha256 == b.config_sha256
        && a.tokenizer_sha256 == b.tokenizer_sha256
        && a.weights_sha256 == b.weights_sha256
    {
        let _ = writeln!(
            md,
            "\nThe two models have the same config, tokenizer and weights: any difference below comes from their devices."
        );
    }

    let _ = writeln!(md, "\n## At a glance\n");
    let compared = s.kendall_tau_b.map_or(0, |d| d.count);
    let _ = writeln!(
        md,
        "{compared} queries have two or more documents to compare; {} of them keep exactly the same order.",
        s.unchanged_queries
    );
    if let Some(t) = s.kendall_tau_b {
        let _ = writeln!(
            md,
            "Median Kendall's tau-b {:.3} (lowest {:.3}); median top-{k} overlap {}; median RBO {}.",
            t.median,
            t.min,
            num(s.top_k_overlap_fraction.map(|d| d.median)),
            num(s.rbo.map(|d| d.median)),
        );
    }
    if !s.queries_without_documents.is_empty() || !s.queries_with_one_document.is_empty() {
        let _ = writeln!(
            md,
            "Not compared (listed at the end): queries without documents {}, with one document {}.",
            s.queries_without_documents.len(),
            s.queries_with_one_document.len()
        );
    }
    let _ = writeln!(
        md,
        "\n| per query | mean | min | p10 | median | p90 | max |\n|---|---|---|---|---|---|---|"
    );
    let dist = |md: &mut String, name: &str, d: &Option<Dist>| {
        if let Some(d) = d {
            let _ = writeln!(
                md,
                "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                d.mean, d.min, d.p10, d.median, d.p90, d.max
            );
        } else {
            let _ = writeln!(md, "| {name} | – | – | – | – | – | – |");
        }
    };
    dist(&mut md, "Kendall's tau-b", &s.kendall_tau_b);
    dist(&mut md, "Spearman's rho", &s.spearman_rho);
    dist(
        &mut md,
        &format!("top-{k} overlap"),
        &s.top_k_overlap_fraction,
    );
    dist(&mut md, &format!("RBO (p = {})", o.rbo_p), &s.rbo);
    dist(&mut md, "mean \\|score shift\\|", &s.mean_abs_score_shift);
    let _ = writeln!(md);
    for c in &s.charts {
        let _ = writeln!(md, "![{c}]({c})");
    }

    let _ = writeln!(md, "\n## Queries that changed most\n");
    if s.most_changed.is_empty() {
        let _ = writeln!(md, "No query changed order.");
    } else {
        let _ = writeln!(
            md,
            "Lowest Kendall's tau-b first. Ranks are 1-based; \"3 → 1\" is rank 3 under A, 1 under B.\n"
        );
        let _ = writeln!(
            md,
            "| query | text | docs | tau-b | rho | top-{k} | RBO | rose most | fell most |\n|---|---|---|---|---|---|---|---|---|"
        );
        for q in &s.most_changed {
            let mv = |m: Option<&super::compare::Mover>| match m {
                Some(m) => format!(
                    "{} → {} \"{}\"",
                    m.rank_a,
                    m.rank_b,
                    cell(&super::compare::preview(&m.text, 30))
                ),
                None => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} |",
                label(q.line, &q.id),
                cell(&super::compare::preview(&q.query, 40)),
                q.documents,
                q.kendall_tau_b,
                num(q.spearman_rho),
                num(q.top_k_overlap_fraction),
                num(q.rbo),
                mv(q.movers_up.first()),
                mv(q.movers_down.first()),
            );
        }
        let _ = writeln!(md, "\n### Top movers of the most changed queries\n");
        for q in s.most_changed.iter().take(3) {
            let _ = writeln!(
                md,
                "**{}** ({}):\n\n| document | rank A → B | score A → B |\n|---|---|---|",
                label(q.line, &q.id),
                cell(&super::compare::preview(&q.query, 60))
            );
            for m in q.movers_up.iter().chain(&q.movers_down) {
                let _ = writeln!(
                    md,
                    "| {} | {} → {} ({:+}) | {:.4} → {:.4} |",
                    cell(&super::compare::preview(&m.text, 50)),
                    m.rank_a,
                    m.rank_b,
                    m.gain(),
                    m.score_a,
                    m.score_b
                );
            }
            let _ = writeln!(md);
        }
    }

    let t = &s.documents_across_queries;
    let _ = writeln!(md, "## Documents that rise or fall across queries\n");
    let _ = writeln!(
        md,
        "{} distinct documents (by their `id`, else by a hash of their text); those in {} or more queries, by queries where they rose minus where they fell.\n",
        t.distinct, t.min_queries
    );
    let trend_table = |md: &mut String, title: &str, rows: &[DocTrend]| {
        if rows.is_empty() {
            let _ = writeln!(md, "{title}: none.\n");
            return;
        }
        let _ = writeln!(
            md,
            "{title}:\n\n| document | key | queries | rose | fell | mean rank gain | mean score shift |\n|---|---|---|---|---|---|---|"
        );
        for r in rows {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} | {} | {} | {:+.2} | {:+.4} |",
                cell(&r.text),
                cell(&r.key),
                r.queries,
                r.rose,
                r.fell,
                r.mean_gain,
                r.mean_score_shift
            );
        }
        let _ = writeln!(md);
    };
    trend_table(&mut md, "Rising under B", &t.rising);
    trend_table(&mut md, "Falling under B", &t.falling);

    if !s.queries_without_documents.is_empty() || !s.queries_with_one_document.is_empty() {
        let _ = writeln!(md, "## Queries not compared\n");
        let place = |q: &QueryRef| match &q.id {
            Some(id) => format!("{} (line {})", cell(id), q.line),
            None => format!("line {}", q.line),
        };
        for q in &s.queries_without_documents {
            let _ = writeln!(md, "- {}: no documents", place(q));
        }
        for q in &s.queries_with_one_document {
            let _ = writeln!(md, "- {}: one document, nothing to reorder", place(q));
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(
        md,
        "## How to read this\n\n\
         - Each model ranks a query's documents by score, best first; equal scores keep their input order (as `crossrank rerank` does). Scores are {}.\n\
         - Kendall's tau-b: 1 = the same order, -1 = reversed. Spearman's rho: the correlation of the two rank lists.\n\
         - Top-{k} overlap: the share of model A's top {k} that is also in model B's top {k} (k cut to the list's length).\n\
         - RBO: rank-biased overlap, extrapolated (Webber, Moffat & Zobel 2010), persistence p = {}: agreement near the top weighs most (at p = 0.9 the top 10 ranks carry 86% of the weight).\n\
         - Score shift: score under B minus score under A, per document.\n\
         - Every query's full record (ranks and scores of every document under both models) is in `audit.json`.",
        if o.raw_scores { "logits" } else { "sigmoid(logit)" },
        o.rbo_p
    );
    md
}
