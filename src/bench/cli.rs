//! The bench subcommands of the `crossrank` binary: `bench`, `make-shape`, `bench-table` and
//! `perf-gate`. main.rs flattens [`BenchCommand`] into its own subcommands.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::gate;
use super::report::{self, Report};
use super::run::{self, BenchArgs};
use super::shapes::{self, Shape, DEFAULT_SEED};
use crate::engine::Device;
use crate::error::{Error, Result};

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure latency, throughput, FLOP/s and MFU on a generated workload: one query and N
    /// passages per call, for each N. Prints a table, or one JSON object with --json.
    Bench {
        /// A model shape with seeded weights: minilm-l6, bge-base, bge-large, tiny-bert,
        /// tiny-xlmr, gte-modernbert-base, ettin-150m, qwen3-reranker-0.6b, blip-itm-base,
        /// tiny-blip (written under --shape-dir on first use). An image-text model (BLIP) runs
        /// the image workload: one query and N synthetic images per call, cache cold and warm.
        #[arg(long, conflicts_with = "model", required_unless_present = "model")]
        shape: Option<String>,
        /// A model directory instead of a shape.
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Candidate counts N, comma-separated.
        #[arg(long, default_value = "40,80,100,120")]
        candidates: String,
        /// Passage lengths: marco (40-200 tokens, mean near 80) or rag (200-500). Ignored by
        /// image-text models, whose candidates are images.
        #[arg(long, default_value = "marco")]
        lengths: String,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Timed calls per N (default: 30 on CUDA, 3 on the CPU).
        #[arg(long)]
        iters: Option<usize>,
        /// Untimed calls per N before timing (default: 5 on CUDA, 1 on the CPU).
        #[arg(long)]
        warmup: Option<usize>,
        /// Distinct calls per N that the iterations rotate through.
        #[arg(long, default_value_t = 4)]
        calls: usize,
        #[arg(long, default_value_t = DEFAULT_SEED)]
        seed: u64,
        /// Truncate pairs to this many tokens (default: what the model allows).
        #[arg(long)]
        max_length: Option<usize>,
        /// Skip measuring the dense GEMM rate (no MFU).
        #[arg(long)]
        no_gemm: bool,
        #[command(flatten)]
        cuda: crate::engine::CudaOptions,
        /// Write the workload (every query and passage) here as JSON, for scripts/peers.py;
        /// an image workload's images go into W.images/ beside it.
        #[arg(long)]
        export_workload: Option<PathBuf>,
        /// Image-text models: the image-feature cache's budget in MiB (0: off).
        #[arg(long, default_value_t = crate::engine::DEFAULT_IMAGE_CACHE_MIB)]
        image_cache_mib: usize,
        /// BERT tokenizer.json for the BERT-vocabulary shapes (minilm-l6, tiny-bert, the
        /// ModernBERT and BLIP shapes; default: scripts/fetch-minilm.sh's).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Where shapes are written.
        #[arg(long, default_value = "target/bench-shapes")]
        shape_dir: PathBuf,
    },
    /// Write a model shape with seeded random weights as a Hugging Face model directory.
    MakeShape {
        /// minilm-l6, bge-base, bge-large, tiny-bert, tiny-xlmr, gte-modernbert-base, ettin-150m,
        /// qwen3-reranker-0.6b, blip-itm-base or tiny-blip.
        #[arg(long)]
        shape: String,
        #[arg(long)]
        out: PathBuf,
        /// BERT tokenizer.json for minilm-l6 / tiny-bert (default: scripts/fetch-minilm.sh's).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = DEFAULT_SEED)]
        seed: u64,
    },
    /// Compare bench reports (crossrank's and the peers') in one markdown table; with
    /// --combine, also write them into one JSON file.
    BenchTable {
        /// Report files: one report, a list, or {"reports": [...]}.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write {"date", ..., "reports": [...]} here.
        #[arg(long)]
        combine: Option<PathBuf>,
        /// KEY=VALUE facts for the combined file (gpu, driver, ...).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// The regression gate: compare crossrank's figures in repeated runs with a baseline
    /// (see src/bench/gate.rs for the rule), or make the baseline.
    PerfGate {
        /// Report files, one per repetition of the benches.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The baseline (default: perf/baseline-<gpu>.json for the runs' device).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Make the baseline from the runs instead of comparing (needs 3 or more).
        #[arg(long)]
        make_baseline: bool,
    },
}

fn parse_list(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| {
            x.trim().parse::<usize>().map_err(|_| {
                Error::input(format!(
                    "--candidates `{s}`: `{x}` is not a count (expected e.g. 40,80,100,120)"
                ))
            })
        })
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Runs one bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Bench {
            shape,
            model,
            device,
            candidates,
            lengths,
            json,
            out,
            iters,
            warmup,
            calls,
            seed,
            max_length,
            no_gemm,
            cuda,
            export_workload,
            image_cache_mib,
            tokenizer,
            shape_dir,
        } => {
            let device: Device = device.parse()?;
            let model_dir = match (shape, model) {
                (Some(s), _) => {
                    let shape: Shape = s.parse()?;
                    let dir = shape_dir.join(shape.name());
                    shapes::ensure_shape(shape, &dir, tokenizer.as_deref(), seed)?
                }
                (None, Some(m)) => m,
                (None, None) => return Err(Error::input("give --shape or --model")),
            };
            let on_gpu = device != Device::Cpu;
            let args = BenchArgs {
                model_name: run::model_name(&model_dir),
                model_dir,
                device,
                candidates: parse_list(&candidates)?,
                lengths: lengths.parse()?,
                calls,
                iterations: iters.unwrap_or(if on_gpu { 30 } else { 3 }),
                warmup: warmup.unwrap_or(if on_gpu { 5 } else { 1 }),
                seed,
                max_length,
                gemm: !no_gemm,
                cuda,
                export_workload,
                image_cache_mib,
            };
            let report = run::run(&args)?;
            let text = to_json(&report)?;
            if let Some(path) = out {
                write(&path, &text)?;
            }
            if json {
                println!("{text}");
            } else {
                print!("{}", report::table(&report));
            }
            Ok(())
        }
        BenchCommand::MakeShape {
            shape,
            out,
            tokenizer,
            seed,
        } => {
            let shape: Shape = shape.parse()?;
            shapes::ensure_shape(shape, &out, tokenizer.as_deref(), seed)?;
            println!("{}", out.display());
            Ok(())
        }
        BenchCommand::BenchTable {
            files,
            combine,
            set,
        } => {
            let mut reports: Vec<Report> = Vec::new();
            for f in &files {
                reports.extend(report::read_reports(f)?);
            }
            if let Some(path) = combine {
                let mut doc = serde_json::json!({
                    "date": run::today(),
                    "reports": reports,
                });
                for kv in &set {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| Error::input(format!("--set `{kv}` is not KEY=VALUE")))?;
                    doc[k] = v.into();
                }
                write(&path, &to_json(&doc)?)?;
            }
            print!("{}", report::comparison_markdown(&reports));
            Ok(())
        }
        BenchCommand::PerfGate {
            runs,
            baseline,
            make_baseline,
        } => {
            let reps = runs
                .iter()
                .map(|f| report::read_reports(f))
                .collect::<Result<Vec<_>>>()?;
            let device = reps
                .iter()
                .flatten()
                .find(|r| r.system == "crossrank")
                .map(|r| r.device.clone())
                .ok_or_else(|| Error::input("no crossrank report among the runs"))?;
            let path = baseline.unwrap_or_else(|| {
                PathBuf::from(format!("perf/baseline-{}.json", gate::gpu_slug(&device)))
            });
            if make_baseline {
                let commit = reps.iter().flatten().find_map(|r| r.commit.clone());
                let b = gate::make_baseline(&reps, &run::today(), commit)?;
                write(&path, &to_json(&b)?)?;
                println!(
                    "wrote {} ({} figures from {} runs)",
                    path.display(),
                    b.figures.len(),
                    reps.len()
                );
                return Ok(());
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let b: gate::Baseline = serde_json::from_str(&text)
                .map_err(|e| Error::input(format!("{}: not a baseline: {e}", path.display())))?;
            let verdict = gate::compare(&b, &reps)?;
            print!("{}", verdict.table());
            println!("rule: {}", gate::RULE);
            let failed = verdict.failures();
            if failed.is_empty() {
                println!("perf gate: pass ({} figures)", verdict.rows.len());
                Ok(())
            } else {
                let names: Vec<&str> = failed.iter().map(|r| r.key.as_str()).collect();
                Err(Error::input(format!(
                    "perf gate: {} of {} figures regressed or missing against {}: {}",
                    failed.len(),
                    verdict.rows.len(),
                    path.display(),
                    names.join(", ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_lists() {
        assert_eq!(parse_list("40, 80,100").unwrap(), vec![40, 80, 100]);
        let e = parse_list("40,x").unwrap_err().to_string();
        assert!(e.contains("`x` is not a count"), "{e}");
    }
}
