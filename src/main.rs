//! The `crossrank` command line: thin; everything it does is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crossrank::docs::Docs;
use crossrank::engine::{self, CudaOptions, Device, LoadOptions, Options, Reranker};
use crossrank::pixels::ImageLimits;
use crossrank::{Error, Result};

#[derive(Parser)]
#[command(
    name = "crossrank",
    version,
    about = "Rerank passages with cross-encoders, fast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every passage against a query and print them best first, as JSON.
    Rerank {
        /// Model directory: config.json, tokenizer.json, model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// The query.
        #[arg(long)]
        query: String,
        /// Passages: `-` for stdin, a .jsonl file, or plain text with one passage per line. An
        /// image-text model's documents: a .jsonl file of `{"image": PATH}` (relative to the
        /// file's folder) or `{"image": "data:image/...;base64,..."}`.
        #[arg(long)]
        docs: String,
        /// Truncate each (query, passage) pair to this many tokens.
        #[arg(long)]
        max_length: Option<usize>,
        /// Print logits instead of sigmoid(logit).
        #[arg(long)]
        raw_scores: bool,
        /// Keep only the best K results.
        #[arg(long)]
        top_k: Option<usize>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The most tokens in one forward pass; bigger calls are split.
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// An image-text model's image-feature cache, in MiB of device memory (0: off).
        #[arg(long, default_value_t = crossrank::engine::DEFAULT_IMAGE_CACHE_MIB)]
        image_cache_mib: usize,
        #[command(flatten)]
        cuda: CudaOptions,
        /// A causal-LM reranker's prompt template (see `info`); default: the architecture's.
        #[arg(long)]
        template: Option<String>,
        /// A causal-LM reranker's instruction in place of the template's default.
        #[arg(long)]
        instruction: Option<String>,
    },
    /// Serve reranking over HTTP (TEI /rerank, Cohere/Jina /v1 and /v2/rerank, /rerank/batch),
    /// or as JSON lines on stdin/stdout with --stdio.
    Serve(crossrank::serve::ServeOptions),
    #[command(flatten)]
    Bench(crossrank::bench::cli::BenchCommand),
    /// Compare two models' rankings on a query set: per-query Kendall's tau-b, Spearman's rho,
    /// top-k overlap, RBO, movers and score shifts, into audit.json, audit.md and PNG charts.
    Audit(crossrank::audit::AuditOptions),
    /// Print version, backends, CUDA architectures and devices, and a model's facts, as JSON.
    Info {
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's message without the usage block.
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", msg.join(" "));
            return ExitCode::FAILURE;
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Rerank {
            model,
            query,
            docs,
            max_length,
            raw_scores,
            top_k,
            device,
            max_batch_tokens,
            image_cache_mib,
            cuda,
            template,
            instruction,
        } => {
            let device: Device = device.parse()?;
            let docs = crossrank::docs::read_docs(&docs)?;
            if max_batch_tokens == 0 {
                return Err(Error::input("--max-batch-tokens must be at least 1"));
            }
            let reranker = Reranker::load(
                &model,
                device,
                &LoadOptions {
                    max_batch_tokens,
                    cuda,
                    template,
                    image_cache_mib,
                },
            )?;
            let opts = Options {
                max_length,
                raw_scores,
                top_k,
                instruction,
                ..Options::default()
            };
            let results = match docs {
                Docs::Texts(passages) => reranker.rerank(&query, &passages, &opts)?,
                Docs::Images(images) => {
                    let images: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
                    reranker.rerank_images(&query, &images, &ImageLimits::default(), &opts)?
                }
            };
            println!("{}", serde_json::json!({ "results": results }));
            Ok(())
        }
        Command::Serve(opts) => crossrank::serve::run(opts),
        Command::Bench(cmd) => crossrank::bench::cli::run(cmd),
        Command::Audit(opts) => crossrank::audit::run(opts),
        Command::Info { model } => {
            let mut out = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "backends": engine::backends(),
                "cuda_architectures": engine::cuda_architectures(),
                "devices": engine::cuda_devices(),
                "templates": crossrank::llm_template::TEMPLATES.iter().map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "about": t.about,
                        "default_instruction": t.default_instruction,
                    })
                }).collect::<Vec<_>>(),
            });
            if let Some(dir) = model {
                let (_, _, info, _) = engine::inspect(&dir)?;
                out["model"] =
                    serde_json::to_value(info).map_err(|e| Error::Internal(e.to_string()))?;
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(e.to_string()))?
            );
            Ok(())
        }
    }
}
