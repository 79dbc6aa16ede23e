//! `crossrank audit` from outside, on the committed tiny models: what it writes, what the
//! figures are (checked against a direct computation from the ranks it reports), and what it
//! refuses.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::Value;

/// A query set: repeated documents with ids (for the cross-query trends), duplicates, an empty
/// list, a single document, documents by plain string and by object.
fn query_set() -> String {
    let lines = [
        r#"{"id": "q1", "query": "what do rerankers do?", "documents": [{"text": "A reranker scores each passage against the query.", "id": "d1"}, {"text": "Cats sleep most of the day.", "id": "d2"}, {"text": "Cross-encoders read the query and passage together.", "id": "d3"}, "The weather in Paris is mild.", {"text": "Search engines retrieve then rerank.", "id": "d5"}]}"#,
        r#"{"id": "q2", "query": "how do search engines rank results", "documents": [{"text": "Search engines retrieve then rerank.", "id": "d5"}, {"text": "A reranker scores each passage against the query.", "id": "d1"}, "Bread needs flour, water and yeast.", {"text": "Cross-encoders read the query and passage together.", "id": "d3"}, "PageRank counts links.", "Ranking uses many signals."]}"#,
        r#"{"id": "empty", "query": "nothing to rank", "documents": []}"#,
        r#"{"query": "one lonely document", "documents": ["only me"]}"#,
        "",
        r#"{"id": 5, "query": "duplicates", "documents": ["same text", "other text", "same text", "another one", "same text"]}"#,
        r#"{"id": "q6", "query": "Wie funktioniert eine Suchmaschine?", "documents": [{"text": "Search engines retrieve then rerank.", "id": "d5"}, "Eine Suchmaschine durchsucht das Netz.", "Der Hund bellt.", {"text": "Cats sleep most of the day.", "id": "d2"}, "Le moteur de recherche classe les pages."]}"#,
        r#"{"id": "q7", "query": "cats", "documents": [{"text": "Cats sleep most of the day.", "id": "d2"}, "Dogs bark.", "A kitten is a young cat.", "Lions are big cats.", "Tigers have stripes.", "Cats purr when content.", "The cat sat on the mat."]}"#,
        r#"{"id": "q8", "query": "bread recipe", "documents": ["Bread needs flour, water and yeast.", "Sourdough uses a starter.", "Bake at 230 degrees.", "Knead the dough for ten minutes.", {"text": "A reranker scores each passage against the query.", "id": "d1"}]}"#,
    ];
    lines.join("\n") + "\n"
}

fn write_queries(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("queries.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn audit(a: &Path, b: &Path, queries: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "audit",
        "--model-a",
        a.to_str().unwrap(),
        "--model-b",
        b.to_str().unwrap(),
        "--queries",
        queries.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    crossrank(&args)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "audit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("audit.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn queries(r: &Value) -> &Vec<Value> {
    r["queries"].as_array().unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Kendall's tau between two permutations, straight from the definition (no ties).
fn tau_direct(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len();
    let mut s = 0i64;
    for i in 0..n {
        for j in 0..n {
            if i < j {
                let x = (a[i] as i64 - a[j] as i64).signum() * (b[i] as i64 - b[j] as i64).signum();
                s += x;
            }
        }
    }
    s as f64 / (n * (n - 1) / 2) as f64
}

/// Spearman's rho between two permutations: 1 - 6 Σd² / (n (n² - 1)).
fn rho_direct(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len() as f64;
    let d2: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// The ranks a list of scores gives, best first, equal scores in input order (1-based).
fn ranks_of(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    let mut ranks = vec![0; scores.len()];
    for (pos, &i) in order.iter().enumerate() {
        ranks[i] = pos + 1;
    }
    ranks
}

/// Every figure of every query agrees with a direct computation from the ranks and scores the
/// report gives, and the ranks agree with the scores (best first, ties in input order).
fn check_figures(r: &Value, k: usize) {
    for q in queries(r) {
        let n = q["documents"].as_u64().unwrap() as usize;
        let (ra, rb) = (usizes(&q["ranks_a"]), usizes(&q["ranks_b"]));
        let (sa, sb) = (floats(&q["scores_a"]), floats(&q["scores_b"]));
        assert_eq!(ra.len(), n);
        assert_eq!(
            ranks_of(&sa),
            ra,
            "query {}: ranks A follow scores A",
            q["line"]
        );
        assert_eq!(
            ranks_of(&sb),
            rb,
            "query {}: ranks B follow scores B",
            q["line"]
        );
        if n < 2 {
            assert!(q["kendall_tau_b"].is_null() && q["rbo"].is_null());
            continue;
        }
        let tau = q["kendall_tau_b"].as_f64().unwrap();
        let rho = q["spearman_rho"].as_f64().unwrap();
        assert!((tau - tau_direct(&ra, &rb)).abs() < 1e-12, "{q}");
        assert!((rho - rho_direct(&ra, &rb)).abs() < 1e-12, "{q}");
        let kk = k.min(n);
        let shared = (0..n).filter(|&i| ra[i] <= kk && rb[i] <= kk).count();
        assert_eq!(q["top_k_overlap"].as_u64().unwrap() as usize, shared);
        let shift_max = (0..n).map(|i| (sb[i] - sa[i]).abs()).fold(0.0, f64::max);
        let got = q["score_shift"]["max_abs"].as_f64().unwrap();
        assert!((got - shift_max).abs() < 1e-6, "{got} vs {shift_max}");
        for m in q["movers_up"].as_array().unwrap() {
            let i = m["index"].as_u64().unwrap() as usize;
            assert!(ra[i] > rb[i]);
            assert_eq!(m["rank_a"].as_u64().unwrap() as usize, ra[i]);
        }
        for m in q["movers_down"].as_array().unwrap() {
            let i = m["index"].as_u64().unwrap() as usize;
            assert!(ra[i] < rb[i]);
        }
    }
}

/// The same model twice (one directory, and a byte copy of it): every order is the same, so
/// tau = rho = RBO = top-k overlap = 1, no movers, no score shift, same hashes.
#[test]
fn identical_models_give_tau_one_everywhere() {
    let dir = scratch_dir("audit-same");
    let qs = write_queries(&dir, &query_set());
    let a = model_dir("bert-f32");
    let copy = copy_model("bert-f32", "audit-same-copy");
    for (tag, b) in [("same", a.clone()), ("copy", copy)] {
        let out = dir.join(tag);
        ok(&audit(&a, &b, &qs, &out, &[]));
        let r = report(&out);
        check_figures(&r, 10);
        let mut compared = 0;
        for q in queries(&r) {
            if q["documents"].as_u64().unwrap() < 2 {
                continue;
            }
            compared += 1;
            assert_eq!(q["kendall_tau_b"].as_f64(), Some(1.0), "{q}");
            assert_eq!(q["spearman_rho"].as_f64(), Some(1.0), "{q}");
            assert!((q["rbo"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{q}");
            assert_eq!(q["top_k_overlap_fraction"].as_f64(), Some(1.0));
            assert!(q["movers_up"].as_array().unwrap().is_empty());
            assert!(q["movers_down"].as_array().unwrap().is_empty());
            assert_eq!(q["score_shift"]["max_abs"].as_f64(), Some(0.0));
        }
        assert_eq!(compared, 6);
        let s = &r["summary"];
        assert_eq!(s["unchanged_queries"], 6);
        assert_eq!(s["kendall_tau_b"]["min"].as_f64(), Some(1.0));
        assert!(s["most_changed"].as_array().unwrap().is_empty());
        let (ma, mb) = (&r["models"]["a"], &r["models"]["b"]);
        for h in ["config_sha256", "tokenizer_sha256", "weights_sha256"] {
            assert_eq!(ma[h], mb[h], "{h}");
            assert_eq!(ma[h].as_str().unwrap().len(), 64);
        }
        let md = std::fs::read_to_string(out.join("audit.md")).unwrap();
        assert!(md.contains("same config, tokenizer and weights"), "{md}");
        assert!(md.contains("No query changed order."));
    }
}

/// Two different models: the figures follow from the ranks, the ranks from the scores, and
/// model A's order is exactly `crossrank rerank`'s.
#[test]
fn two_different_models() {
    let dir = scratch_dir("audit-two");
    let qs = write_queries(&dir, &query_set());
    let (a, b) = (model_dir("bert-f32"), model_dir("xlmr-bf16"));
    let out = dir.join("out");
    let run = audit(&a, &b, &qs, &out, &["--top-k", "3"]);
    ok(&run);
    let r = report(&out);
    check_figures(&r, 3);
    let qv = queries(&r);
    assert_eq!(qv.len(), 8, "blank line skipped, every other line a query");
    assert!(
        qv.iter()
            .any(|q| q["kendall_tau_b"].as_f64().is_some_and(|t| t < 1.0)),
        "two unrelated random models should disagree somewhere"
    );
    // Model A's order of q7 is `crossrank rerank`'s.
    let q7 = qv.iter().find(|q| q["id"] == "q7").unwrap();
    let docs = dir.join("q7.jsonl");
    std::fs::write(
        &docs,
        "\"Cats sleep most of the day.\"\n\"Dogs bark.\"\n\"A kitten is a young cat.\"\n\"Lions are big cats.\"\n\"Tigers have stripes.\"\n\"Cats purr when content.\"\n\"The cat sat on the mat.\"\n",
    )
    .unwrap();
    let rr = crossrank(&[
        "rerank",
        "--model",
        a.to_str().unwrap(),
        "--query",
        "cats",
        "--docs",
        docs.to_str().unwrap(),
    ]);
    assert!(rr.status.success());
    let v: Value = serde_json::from_slice(&rr.stdout).unwrap();
    let order: Vec<usize> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap() as usize)
        .collect();
    let ra = usizes(&q7["ranks_a"]);
    for (pos, &i) in order.iter().enumerate() {
        assert_eq!(ra[i], pos + 1, "rerank puts document {i} at {}", pos + 1);
        // The audit packs every query into one forward, rerank this one alone: the same
        // scores to float rounding.
        let s = v["results"][pos]["score"].as_f64().unwrap();
        let got = q7["scores_a"][i].as_f64().unwrap();
        assert!((s - got).abs() <= 1e-6, "{s} vs {got}");
    }
    // Identities name each model's own files.
    assert_eq!(
        r["models"]["a"]["architecture"],
        "BertForSequenceClassification"
    );
    assert_eq!(
        r["models"]["b"]["architecture"],
        "XLMRobertaForSequenceClassification"
    );
    assert_ne!(
        r["models"]["a"]["weights_sha256"],
        r["models"]["b"]["weights_sha256"]
    );
    assert_eq!(r["settings"]["top_k"], 3);
    // The summary's distributions cover the six queries of two or more documents.
    assert_eq!(r["summary"]["kendall_tau_b"]["count"], 6);
    assert_eq!(r["summary"]["queries"], 8);
    let md = std::fs::read_to_string(out.join("audit.md")).unwrap();
    assert!(md.contains("## Queries that changed most"));
    assert!(md.contains("top-3 overlap"));
    // Document d5 appears in three queries, so it is tracked across queries.
    assert_eq!(r["summary"]["documents_across_queries"]["min_queries"], 2);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("audit: [") && stderr.contains("8/8 queries"),
        "{stderr}"
    );
}

/// A copy of a model with one weight changed: the config and tokenizer hashes match, the
/// weights hash does not, and the audit shows where the order moved.
#[test]
fn one_weight_changed_shows_where_it_differs() {
    let dir = scratch_dir("audit-weight");
    let qs = write_queries(&dir, &query_set());
    let a = model_dir("bert-f32");
    let b = copy_model("bert-f32", "audit-weight-model");
    bump_f32(&b.join("model.safetensors"), "classifier.weight", 0, 4.0);
    let out = dir.join("out");
    ok(&audit(&a, &b, &qs, &out, &[]));
    let r = report(&out);
    check_figures(&r, 10);
    let (ma, mb) = (&r["models"]["a"], &r["models"]["b"]);
    assert_eq!(ma["config_sha256"], mb["config_sha256"]);
    assert_eq!(ma["tokenizer_sha256"], mb["tokenizer_sha256"]);
    assert_ne!(ma["weights_sha256"], mb["weights_sha256"]);
    let shifted = queries(&r)
        .iter()
        .filter(|q| {
            q["score_shift"]["max_abs"]
                .as_f64()
                .is_some_and(|x| x > 0.0)
        })
        .count();
    assert_eq!(
        shifted, 7,
        "every query with documents has its scores moved"
    );
    assert!(
        r["summary"]["unchanged_queries"].as_u64().unwrap() < 6,
        "some order changed"
    );
}

/// Adds `delta` to element `i` of an f32 tensor in a safetensors file.
fn bump_f32(file: &Path, tensor: &str, i: usize, delta: f32) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[tensor];
    assert_eq!(t["dtype"], "F32", "{tensor}");
    let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize + 4 * i;
    let old = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
    bytes[start..start + 4].copy_from_slice(&(old + delta).to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

/// Empty and single-document queries are reported, not a crash; duplicates tie and keep their
/// input order under both models.
#[test]
fn empty_lists_single_documents_and_duplicates() {
    let dir = scratch_dir("audit-edges");
    let qs = write_queries(&dir, &query_set());
    let (a, b) = (model_dir("bert-f32"), model_dir("modernbert-cls"));
    let out = dir.join("out");
    ok(&audit(&a, &b, &qs, &out, &[]));
    let r = report(&out);
    let qv = queries(&r);
    let empty = qv.iter().find(|q| q["id"] == "empty").unwrap();
    assert_eq!(empty["documents"], 0);
    assert!(empty["kendall_tau_b"].is_null());
    let single = qv.iter().find(|q| q["line"] == 4).unwrap();
    assert!(single["id"].is_null());
    assert_eq!(usizes(&single["ranks_a"]), vec![1]);
    let s = &r["summary"];
    assert_eq!(s["queries_without_documents"][0]["id"], "empty");
    assert_eq!(s["queries_without_documents"][0]["line"], 3);
    assert_eq!(s["queries_with_one_document"][0]["line"], 4);
    let md = std::fs::read_to_string(out.join("audit.md")).unwrap();
    assert!(md.contains("- empty (line 3): no documents"), "{md}");
    assert!(md.contains("- line 4: one document"), "{md}");

    // Documents 0, 2, 4 are the same text: equal scores, ranks in input order, under both.
    let dup = qv.iter().find(|q| q["id"] == "5").unwrap();
    for side in ["a", "b"] {
        let ranks = usizes(&dup[format!("ranks_{side}")]);
        let scores = floats(&dup[format!("scores_{side}")]);
        assert_eq!(scores[0], scores[2]);
        assert_eq!(scores[0], scores[4]);
        assert!(
            ranks[0] < ranks[2] && ranks[2] < ranks[4],
            "ties keep input order under {side}: {ranks:?}"
        );
        // The three copies sit next to each other.
        assert_eq!(ranks[4] - ranks[0], 2, "{ranks:?}");
        assert!(dup[format!("tied_{side}")].as_u64().unwrap() >= 3);
    }
    check_figures(&r, 10);
}

/// A set larger than one batch (three documents a batch, forwards of at most 64 tokens) gives
/// the same orders and, within float rounding, the same scores as one batch.
#[test]
fn a_set_larger_than_one_batch() {
    let dir = scratch_dir("audit-batches");
    let mut text = query_set();
    for i in 0..30 {
        text.push_str(&format!(
            "{{\"id\": \"extra{i}\", \"query\": \"query number {i}\", \"documents\": [\"first {i}\", \"second passage {i}\", \"a third, longer passage about number {i}\", \"fourth\"]}}\n"
        ));
    }
    let qs = write_queries(&dir, &text);
    let (a, b) = (model_dir("bert-f32"), model_dir("xlmr-bf16"));
    let (one, many) = (dir.join("one"), dir.join("many"));
    ok(&audit(&a, &b, &qs, &one, &["--batch-docs", "100000"]));
    ok(&audit(
        &a,
        &b,
        &qs,
        &many,
        &["--batch-docs", "3", "--max-batch-tokens", "64"],
    ));
    let (r1, r2) = (report(&one), report(&many));
    assert_eq!(queries(&r1).len(), 38);
    assert_eq!(queries(&r2).len(), 38);
    for (x, y) in queries(&r1).iter().zip(queries(&r2)) {
        assert_eq!(x["line"], y["line"]);
        for side in ["a", "b"] {
            let (sx, sy) = (
                floats(&x[format!("scores_{side}")]),
                floats(&y[format!("scores_{side}")]),
            );
            for (p, q) in sx.iter().zip(&sy) {
                assert!((p - q).abs() <= 1e-5, "{p} vs {q}");
            }
            assert_eq!(x[format!("ranks_{side}")], y[format!("ranks_{side}")]);
        }
        assert_eq!(x["kendall_tau_b"], y["kendall_tau_b"]);
    }
    check_figures(&r2, 10);
}

fn png_info(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf)
}

/// The charts are real PNGs of the stated size with more than a background in them, and two
/// audits that differ only in their data (same model names in the subtitle, same query set)
/// draw different charts.
#[test]
fn charts_are_pngs_that_differ_between_audits() {
    let dir = scratch_dir("audit-charts");
    let qs = write_queries(&dir, &query_set());
    let a = model_dir("bert-f32");
    // The changed copy keeps the name bert-f32, so only the data can tell the charts apart.
    let b = dir.join("changed").join("bert-f32");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(&a).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
    }
    bump_f32(&b.join("model.safetensors"), "classifier.weight", 0, 4.0);
    let (same, diff) = (dir.join("same"), dir.join("diff"));
    // Top-2: every list here is shorter than 10, so a top-10 overlap would always be 1.
    ok(&audit(&a, &a, &qs, &same, &["--top-k", "2"]));
    ok(&audit(&a, &b, &qs, &diff, &["--top-k", "2"]));
    let md = std::fs::read_to_string(diff.join("audit.md")).unwrap();
    for name in ["tau_histogram.png", "topk_overlap.png", "rank_scatter.png"] {
        let (w, h, px) = png_info(&same.join(name));
        assert_eq!((w, h), (900, 600), "{name}");
        let mut colours: Vec<&[u8]> = px.chunks(3).collect();
        colours.sort();
        colours.dedup();
        assert!(colours.len() > 20, "{name}: {} colours", colours.len());
        let non_white = px.chunks(3).filter(|c| c != &[255, 255, 255]).count();
        assert!(non_white > 5000, "{name}: {non_white} drawn pixels");
        let (_, _, other) = png_info(&diff.join(name));
        assert_ne!(px, other, "{name} is the same for two different audits");
        assert!(md.contains(&format!("]({name})")), "audit.md shows {name}");
    }
}

/// Refusals: one line, exit 1, naming what was wrong; nothing is written for a bad file.
#[test]
fn bad_input_is_refused_with_the_line() {
    let dir = scratch_dir("audit-bad");
    let a = model_dir("bert-f32");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed",
            format!(
                "{}\n{{\"query\": \"q\", \"documents\": [\"a\"\n",
                query_set().lines().next().unwrap()
            ),
            vec!["line 2", "not valid JSON"],
        ),
        (
            "image",
            "{\"query\": \"q\", \"documents\": [\"a\", {\"image\": \"cat.png\"}]}\n".into(),
            vec!["line 1", "document 2 is an image", "text cross-encoders"],
        ),
        (
            "no-query",
            "\n\n{\"documents\": []}\n".into(),
            vec!["line 3", "no \"query\" field"],
        ),
        ("empty", "\n\n".into(), vec!["no queries"]),
    ];
    for (tag, text, needles) in cases {
        let d = dir.join(tag);
        std::fs::create_dir_all(&d).unwrap();
        let qs = write_queries(&d, &text);
        let out = d.join("out");
        let run = audit(&a, &a, &qs, &out, &[]);
        assert_refused(&run, &needles);
        assert!(!out.join("audit.json").exists(), "{tag}: nothing written");
    }
    // Invalid UTF-8 bytes.
    let d = dir.join("bytes");
    std::fs::create_dir_all(&d).unwrap();
    let qs = d.join("queries.jsonl");
    std::fs::write(
        &qs,
        b"{\"query\": \"q\", \"documents\": []}\n{\"query\": \"\xff\"}\n",
    )
    .unwrap();
    assert_refused(
        &audit(&a, &a, &qs, &d.join("out"), &[]),
        &["line 2", "UTF-8"],
    );

    let qs = write_queries(&dir, &query_set());
    let out = dir.join("out");
    let missing = dir.join("missing.jsonl");
    assert_refused(
        &audit(&a, &a, &missing, &out, &[]),
        &["missing.jsonl", "not found"],
    );
    assert_refused(&audit(&a, &a, &qs, &out, &["--top-k", "0"]), &["--top-k"]);
    assert_refused(&audit(&a, &a, &qs, &out, &["--rbo-p", "1"]), &["--rbo-p"]);
    assert_refused(
        &audit(&a, &a, &qs, &out, &["--batch-docs", "0"]),
        &["--batch-docs"],
    );
    assert_refused(
        &audit(&a, &dir.join("no-model"), &qs, &out, &[]),
        &["no-model", "not found"],
    );
    assert_refused(&audit(&a, &a, &qs, &out, &["--device", "gpu"]), &["gpu"]);
}

/// `crossrank serve --sample-traffic` at rate 1 writes every accepted request's queries in the
/// audit's format; `crossrank audit` runs on that file. A refused request is not sampled.
#[test]
fn served_traffic_sample_feeds_an_audit() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = scratch_dir("audit-sampled");
    let sample = dir.join("traffic.jsonl");
    let model = model_dir("bert-f32");
    let input = [
        r#"{"id": 1, "query": "what do rerankers do?", "texts": ["they score passages", "cats sleep", "search engines rank"]}"#,
        r#"{"id": 2, "groups": [{"query": "cats", "documents": ["cats sleep", "dogs bark"]}, {"query": "bread", "documents": ["flour and water", "yeast", "cats sleep"]}]}"#,
        r#"{"id": 3, "query": "refused", "texts": ["x"], "model": "no-such-model"}"#,
    ]
    .join("\n")
        + "\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossrank"))
        .args(["serve", "--stdio", "--model"])
        .arg(&model)
        .arg("--sample-traffic")
        .arg(&sample)
        .args(["--sample-rate", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut asked: Vec<&str> = lines.iter().map(|l| l["query"].as_str().unwrap()).collect();
    asked.sort();
    assert_eq!(asked, vec!["bread", "cats", "what do rerankers do?"]);
    assert!(lines.iter().all(|l| l.get("scores").is_none()));

    let report_dir = dir.join("out");
    ok(&audit(
        &model,
        &model_dir("xlmr-bf16"),
        &sample,
        &report_dir,
        &[],
    ));
    let r = report(&report_dir);
    assert_eq!(queries(&r).len(), 3);
    check_figures(&r, 10);

    let bad = crossrank(&[
        "serve",
        "--stdio",
        "--model",
        model.to_str().unwrap(),
        "--sample-traffic",
        sample.to_str().unwrap(),
        "--sample-rate",
        "2",
    ]);
    assert_refused(&bad, &["--sample-rate"]);
}

/// A sharded model's identity: each weights file's SHA-256, and for the set the SHA-256 of
/// their `sha256sum` lines (`sha256sum model-*.safetensors | sha256sum`). A query longer than
/// the scatter's 50 ranks is audited whole.
#[test]
fn sharded_identity_and_a_long_list() {
    use sha2::{Digest, Sha256};
    let dir = scratch_dir("audit-sharded");
    let docs: Vec<String> = (0..60)
        .map(|i| format!("\"passage number {i} about {}\"", i % 7))
        .collect();
    let text = format!(
        "{{\"id\": \"long\", \"query\": \"passages\", \"documents\": [{}]}}\n",
        docs.join(", ")
    );
    let qs = write_queries(&dir, &text);
    let a = model_dir("roberta-sharded");
    let out = dir.join("out");
    ok(&audit(&a, &model_dir("xlmr-bf16"), &qs, &out, &[]));
    let r = report(&out);
    let m = &r["models"]["a"];
    let files = m["weight_files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let mut lines = String::new();
    for f in files {
        let name = f["file"].as_str().unwrap();
        let bytes = std::fs::read(a.join(name)).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(f["sha256"].as_str().unwrap(), hex, "{name}");
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
        lines.push_str(&format!("{hex}  {name}\n"));
    }
    let set: String = Sha256::digest(lines.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(m["weights_sha256"].as_str().unwrap(), set);
    let q = &queries(&r)[0];
    let mut ranks = usizes(&q["ranks_b"]);
    ranks.sort();
    assert_eq!(ranks, (1..=60).collect::<Vec<_>>());
    check_figures(&r, 10);
    let (w, h, _) = png_info(&out.join("rank_scatter.png"));
    assert_eq!((w, h), (900, 600));
}
