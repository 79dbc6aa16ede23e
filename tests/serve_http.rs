//! `crossrank serve` over real HTTP on 127.0.0.1 (an ephemeral port), against the committed
//! tiny models on the CPU backend: every endpoint, scores against the library's, every error the
//! issue lists, backpressure, clients that go away, and a bounded concurrency run.
//!
//! Score rules. A request served alone is packed exactly as the library packs the same call
//! (one forward over the same pairs in the same order), so its logits must be bit-identical.
//! Requests packed together with others, or split across forwards, change only how the GEMM
//! crate blocks its f32 sums. Their logits must agree with the library's one-at-a-time logits
//! within `BATCH_TOL * max(1, |logit|)`: the library itself, scoring the same pairs among
//! different companions, spreads by up to 2.4e-6 on these models (about 10 f32 ulps at a
//! logit near 2; measured over 4 models x 4 queries x 7 batch sizes x 40 offsets); 1e-5 is four
//! times that and ten times inside the 1e-4 parity bound against transformers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use crossrank::engine::{Group, Options};
use crossrank::serve::{http, ServeOptions, Service};
use crossrank::{Device, LoadOptions, Reranker, TruncationSide};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const BATCH_TOL: f32 = 1e-5;

struct Server {
    base: String,
    client: reqwest::Client,
    service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<crossrank::Result<()>>,
}

impl Server {
    async fn start(opts: ServeOptions) -> Server {
        let service = Service::start(opts).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, service.clone(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Server {
            base,
            client,
            service,
            stop: Some(stop),
            task,
        }
    }

    async fn model(name: &str) -> Server {
        Server::start(ServeOptions::new(model_dir(name), Device::Cpu)).await
    }

    /// POSTs raw bytes; returns status, headers and the body parsed as JSON.
    async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
        (status, headers, value)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self.post_bytes(path, body.to_string().into_bytes()).await;
        (s, v)
    }

    /// POSTs JSON with one extra header.
    async fn post_with(&self, path: &str, header: (&str, &str), body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header(header.0, header.1)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
        (status, value)
    }

    /// Waits until every accepted request is answered or dropped (at most 30 s).
    async fn drained(&self) {
        let mut waited = 0;
        while self.queue_depth() > 0 && waited < 600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert_eq!(self.queue_depth(), 0, "the queue did not drain in 30 s");
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Stops the server the way a signal does and checks it drained cleanly.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self.service.drain();
        let depth = self
            .service
            .metrics
            .queue_depth
            .load(std::sync::atomic::Ordering::Acquire);
        assert_eq!(depth, 0);
    }

    fn queue_depth(&self) -> u64 {
        self.service
            .metrics
            .queue_depth
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

fn library(name: &str) -> Reranker {
    Reranker::load(model_dir(name), Device::Cpu, &LoadOptions::default()).unwrap()
}

fn raw() -> Options {
    Options {
        raw_scores: true,
        ..Default::default()
    }
}

/// (index, score) pairs of a TEI answer or of Cohere `results`.
fn pairs(results: &Value, key: &str) -> Vec<(usize, f32)> {
    results
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {results}"))
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as usize,
                r[key].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_in_message: &str) {
    assert_eq!(status, want_status, "{body}");
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(body["error_type"].is_string(), "{body}");
    assert!(
        msg.contains(want_in_message),
        "{want_in_message:?} not in {msg:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_rerank_scores_equal_the_library() {
    for name in ["bert-f32", "xlmr-bf16"] {
        let server = Server::model(name).await;
        let lib = library(name);
        for group in golden(name).groups {
            for raw_scores in [false, true] {
                let body = json!({"query": group.query, "texts": group.passages,
                                  "raw_scores": raw_scores, "return_text": true});
                let (status, v) = server.post("/rerank", body).await;
                assert_eq!(status, 200, "{v}");
                let opts = Options {
                    raw_scores,
                    ..Default::default()
                };
                let want: Vec<(usize, f32)> = lib
                    .rerank(&group.query, &group.passages, &opts)
                    .unwrap()
                    .iter()
                    .map(|r| (r.index, r.score))
                    .collect();
                assert_eq!(pairs(&v, "score"), want, "{name}: {}", group.query);
                for r in v.as_array().unwrap() {
                    let i = r["index"].as_u64().unwrap() as usize;
                    assert_eq!(r["text"], json!(group.passages[i]));
                }
            }
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_v1_v2_shapes_top_n_and_documents() {
    let name = "bert-f16-noprefix";
    let server = Server::model(name).await;
    let lib = library(name);
    let group = &golden(name).groups[1];
    let want = lib
        .rerank(&group.query, &group.passages, &Options::default())
        .unwrap();
    // Documents as strings and as {"text"} objects, mixed.
    let docs: Vec<Value> = group
        .passages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 0 {
                json!(p)
            } else {
                json!({"text": p, "title": "ignored"})
            }
        })
        .collect();
    for version in [1, 2] {
        let body = json!({"model": name, "query": group.query, "documents": docs,
                          "top_n": 3, "return_documents": true});
        let (status, v) = server.post(&format!("/v{version}/rerank"), body).await;
        assert_eq!(status, 200, "{v}");
        let got = pairs(&v["results"], "relevance_score");
        let expect: Vec<(usize, f32)> = want.iter().take(3).map(|r| (r.index, r.score)).collect();
        assert_eq!(got, expect);
        for r in v["results"].as_array().unwrap() {
            let i = r["index"].as_u64().unwrap() as usize;
            assert_eq!(r["document"], json!({"text": group.passages[i]}));
        }
        assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert_eq!(v["model"], name);
        assert_eq!(v["meta"]["api_version"]["version"], version.to_string());
        let tokens: usize = lib
            .encode(&group.query, &group.passages, None)
            .unwrap()
            .iter()
            .map(|p| p.ids.len())
            .sum();
        assert_eq!(v["usage"]["total_tokens"], tokens);
    }
    // Without top_n every document comes back, without documents unless asked.
    let body = json!({"query": group.query, "documents": group.passages});
    let (status, v) = server.post("/v1/rerank", body).await;
    assert_eq!(status, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), group.passages.len());
    assert!(v["results"][0].get("document").is_none());
    assert_eq!(v["model"], name);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_route_scores_every_group_like_the_library() {
    let name = "roberta-sharded";
    let server = Server::model(name).await;
    let lib = library(name);
    let gold = golden(name);
    let groups: Vec<Value> = gold
        .groups
        .iter()
        .enumerate()
        .map(|(g, x)| json!({"query": x.query, "documents": x.passages, "top_n": g + 1}))
        .collect();
    let (status, v) = server
        .post(
            "/rerank/batch",
            json!({"groups": groups, "raw_scores": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let lib_groups: Vec<Group<String>> = gold
        .groups
        .iter()
        .map(|x| Group {
            query: x.query.clone(),
            passages: x.passages.clone(),
        })
        .collect();
    // One request: all groups packed in one forward, exactly as rerank_many packs them.
    let want = lib.rerank_many(&lib_groups, &raw()).unwrap();
    let got = v["groups"].as_array().unwrap();
    assert_eq!(got.len(), gold.groups.len());
    for (g, results) in got.iter().enumerate() {
        let expect: Vec<(usize, f32)> = want[g]
            .iter()
            .take(g + 1)
            .map(|r| (r.index, r.score))
            .collect();
        assert_eq!(
            pairs(&results["results"], "relevance_score"),
            expect,
            "group {g}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_metrics_and_empty_documents() {
    let server = Server::model("bert-f32").await;
    let (status, body) = server.get("/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    let (status, body) = server.get("/info").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["model"], "bert-f32");
    assert_eq!(info["architecture"], "BertForSequenceClassification");
    assert_eq!(
        info["device"].as_str().map(|d| d.starts_with("cpu")),
        Some(true)
    );
    assert_eq!(info["max_length"], 48);
    assert_eq!(info["max_client_batch_size"], 1000);
    assert_eq!(
        (info["cuda_graphs"].clone(), info["tune_gemm"].clone()),
        (false.into(), false.into())
    );
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));

    // Empty documents: a 200 with no results, on every route.
    let (s, v) = server
        .post("/rerank", json!({"query": "q", "texts": []}))
        .await;
    assert_eq!((s, v), (200, json!([])));
    let (s, v) = server
        .post("/v1/rerank", json!({"query": "q", "documents": []}))
        .await;
    assert_eq!((s, &v["results"]), (200, &json!([])));
    let (s, v) = server
        .post(
            "/rerank/batch",
            json!({"groups": [{"query": "q", "documents": []}]}),
        )
        .await;
    assert_eq!((s, &v["groups"]), (200, &json!([{"results": []}])));
    // Several empty groups: one empty result per group, in order.
    let empty = |q: &str| json!({"query": q, "documents": []});
    let (s, v) = server
        .post(
            "/rerank/batch",
            json!({"groups": [empty("q"), empty("r"), empty("s")]}),
        )
        .await;
    let three = json!([{"results": []}, {"results": []}, {"results": []}]);
    assert_eq!((s, &v["groups"]), (200, &three), "{v}");
    let (s, _) = server
        .post(
            "/rerank",
            json!({"query": "a cat", "texts": ["a cat sat", "a dog ran"]}),
        )
        .await;
    assert_eq!(s, 200);

    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "crossrank_requests_total{route=\"/rerank\",status=\"200\",model=\"bert-f32\"} 2\n",
        "crossrank_requests_total{route=\"/v1/rerank\",status=\"200\",model=\"bert-f32\"} 1\n",
        "crossrank_requests_total{route=\"/health\",status=\"200\",model=\"\"} 1\n",
        "crossrank_queue_depth 0\n",
        "crossrank_pairs_total{model=\"bert-f32\"} 2\n",
        "crossrank_batch_pairs_count{model=\"bert-f32\"} 1\n",
        "# TYPE crossrank_request_duration_seconds histogram\n",
        "crossrank_request_duration_seconds_count{route=\"/rerank\"} 2\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    let tokens: usize = library("bert-f32")
        .encode("a cat", &["a cat sat", "a dog ran"], None)
        .unwrap()
        .iter()
        .map(|p| p.ids.len())
        .sum();
    assert!(text.contains(&format!(
        "crossrank_tokens_total{{model=\"bert-f32\"}} {tokens}\n"
    )));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_error_is_a_json_4xx() {
    let mut opts = ServeOptions::new(model_dir("bert-f32"), Device::Cpu);
    opts.max_client_batch_size = 4;
    opts.max_body_bytes = 4096;
    let server = Server::start(opts).await;

    // Malformed JSON and invalid UTF-8: 400.
    let (s, _, v) = server.post_bytes("/rerank", b"{\"query\": ".to_vec()).await;
    assert_error(s, &v, 400, "not JSON");
    let (s, _, v) = server
        .post_bytes(
            "/v1/rerank",
            b"{\"query\": \"\xff\", \"documents\": []}".to_vec(),
        )
        .await;
    assert_error(s, &v, 400, "not valid UTF-8");
    // Wrong types and missing fields: 422, naming the field.
    let (s, v) = server
        .post("/rerank", json!({"query": 3, "texts": ["a"]}))
        .await;
    assert_error(s, &v, 422, "invalid type");
    let (s, v) = server.post("/rerank", json!({"query": "q"})).await;
    assert_error(s, &v, 422, "texts");
    let (s, v) = server
        .post("/v2/rerank", json!({"query": "q", "documents": ["a", 7]}))
        .await;
    assert_error(s, &v, 422, "documents[1]");
    let (s, v) = server.post("/rerank", json!(["not", "an", "object"])).await;
    assert_error(s, &v, 422, "JSON object");
    // Too many documents: 413 naming the limit, also summed over batch groups.
    let five = ["a", "b", "c", "d", "e"];
    let (s, v) = server
        .post("/rerank", json!({"query": "q", "texts": five}))
        .await;
    assert_error(s, &v, 413, "--max-client-batch-size 4");
    // Exactly the limit is accepted, in one request or summed over batch groups.
    let four = ["a", "b", "c", "d"];
    let (s, v) = server
        .post("/rerank", json!({"query": "q", "texts": four}))
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(4)), "{v}");
    let groups = json!([{"query": "q", "documents": ["a", "b", "c"]},
                        {"query": "r", "documents": ["d"]}]);
    let (s, v) = server
        .post("/rerank/batch", json!({"groups": groups}))
        .await;
    assert_eq!(s, 200, "{v}");
    let groups = json!([{"query": "q", "documents": ["a", "b", "c"]},
                        {"query": "r", "documents": ["d", "e"]}]);
    let (s, v) = server
        .post("/rerank/batch", json!({"groups": groups}))
        .await;
    assert_error(s, &v, 413, "5 documents");
    // A body over the limit: 413.
    let big = json!({"query": "q", "texts": ["x".repeat(5000)]});
    let (s, v) = server.post("/rerank", big).await;
    assert_error(s, &v, 413, "--max-body-bytes 4096");
    // truncate=false and an over-long pair: 413 naming the max length; truncate=true scores it.
    let long = "word ".repeat(100);
    let body = json!({"query": "q", "texts": ["short", long], "truncate": false});
    let (s, v) = server.post("/rerank", body).await;
    assert_error(
        s,
        &v,
        413,
        "document 1 with the query is longer than the model's max length of 48 tokens",
    );
    let (s, _) = server
        .post("/rerank", json!({"query": "q", "texts": [long]}))
        .await;
    assert_eq!(s, 200);
    // Left truncation cuts the other end, as transformers' truncation_side = "left": the
    // scores are the library's with TruncationSide::Left (a single pair is scored alone, so
    // bit for bit), and differ from right truncation's.
    let text = format!("{long} the end of a long passage");
    let body =
        json!({"query": "q", "texts": [text], "raw_scores": true, "truncation_direction": "left"});
    let (s, v) = server.post("/rerank", body).await;
    assert_eq!(s, 200, "{v}");
    let lib = library("bert-f32");
    let opts = |side| Options {
        truncation_side: side,
        ..raw()
    };
    let left = lib
        .rerank("q", &[text.as_str()], &opts(TruncationSide::Left))
        .unwrap();
    let right = lib
        .rerank("q", &[text.as_str()], &opts(TruncationSide::Right))
        .unwrap();
    assert_eq!(pairs(&v, "score"), vec![(0, left[0].score)]);
    assert_ne!(left[0].score, right[0].score);
    let body = json!({"query": "q", "texts": ["a"], "truncation_direction": "up"});
    let (s, v) = server.post("/rerank", body).await;
    assert_error(s, &v, 422, "truncation_direction");
    let body = json!({"query": "q", "texts": ["a"], "truncation_direction": "Right"});
    assert_eq!(server.post("/rerank", body).await.0, 200);
    // Unknown route: 404; wrong method: 405; both JSON.
    let (s, v) = server.post("/v3/rerank", json!({})).await;
    assert_error(s, &v, 404, "no such route");
    let (s, body) = server.get("/rerank").await;
    assert_error(s, &serde_json::from_str(&body).unwrap(), 405, "method");
    server.stop().await;
}

/// Deadlines: `timeout_ms` on every route, else the X-Request-Timeout-Ms header, else
/// --request-timeout-ms. A bad budget is a 4xx naming where it came from. A budget of 1 ms for
/// 1000 documents (more than its tokenization alone takes) is a 504 naming the budget and its
/// source, counted in /metrics; a generous one changes nothing, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_from_the_body_the_header_and_the_server_default() {
    let name = "bert-f32";
    let server = Server::model(name).await;
    let routes = |query: &str, texts: &[String], timeout: Value| {
        let docs = json!(texts);
        let groups = json!([{"query": query, "documents": docs}]);
        [
            (
                "/rerank",
                json!({"query": query, "texts": docs, "timeout_ms": timeout, "raw_scores": true}),
                "score",
            ),
            (
                "/v1/rerank",
                json!({"query": query, "documents": docs, "timeout_ms": timeout}),
                "relevance_score",
            ),
            (
                "/v2/rerank",
                json!({"query": query, "documents": docs, "timeout_ms": timeout}),
                "relevance_score",
            ),
            (
                "/rerank/batch",
                json!({"groups": groups, "timeout_ms": timeout, "raw_scores": true}),
                "relevance_score",
            ),
        ]
    };
    let one = vec!["a".to_string()];
    for bad in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!("100"),
        json!(true),
        json!([1]),
    ] {
        for (path, body, _) in routes("q", &one, bad.clone()) {
            let (s, v) = server.post(path, body).await;
            assert_error(s, &v, 422, "timeout_ms must be a positive integer");
        }
    }
    let body = json!({"query": "q", "texts": ["a"]});
    for bad in ["0", "-1", "1.5", "soon", ""] {
        let (s, v) = server
            .post_with("/rerank", ("X-Request-Timeout-Ms", bad), body.clone())
            .await;
        assert_error(
            s,
            &v,
            400,
            "X-Request-Timeout-Ms must be a positive integer",
        );
    }

    // Generous budgets: the scores of the request alone, on every route and by the header.
    let lib = library(name);
    let group = &golden(name).groups[0];
    let scored = lib.rerank(&group.query, &group.passages, &raw()).unwrap();
    let want: Vec<(usize, f32)> = scored.iter().map(|r| (r.index, r.score)).collect();
    let sigmoid: Vec<(usize, f32)> = want
        .iter()
        .map(|&(i, s)| (i, crossrank::engine::sigmoid(s)))
        .collect();
    for (path, body, key) in routes(&group.query, &group.passages, json!(600_000)) {
        let (s, v) = server.post(path, body).await;
        assert_eq!(s, 200, "{path}: {v}");
        let results = match path {
            "/rerank" => &v,
            "/rerank/batch" => &v["groups"][0]["results"],
            _ => &v["results"],
        };
        let expect = if key == "score" || path == "/rerank/batch" {
            &want
        } else {
            &sigmoid
        };
        assert_eq!(&pairs(results, key), expect, "{path}");
    }
    let body = json!({"query": group.query, "texts": group.passages, "raw_scores": true});
    let (s, v) = server
        .post_with("/rerank", ("X-Request-Timeout-Ms", "600000"), body)
        .await;
    assert_eq!((s, pairs(&v, "score")), (200, want.clone()));
    // Budgets past any clock's range are no deadline at all, not a panic.
    for huge in [u64::MAX, 1_000_000_000_000_000] {
        let body = json!({"query": group.query, "texts": group.passages, "raw_scores": true,
                          "timeout_ms": huge});
        let (s, v) = server.post("/rerank", body).await;
        assert_eq!((s, pairs(&v, "score")), (200, want.clone()), "{huge}");
        let body = json!({"query": group.query, "texts": group.passages, "raw_scores": true});
        let (s, v) = server
            .post_with("/rerank", ("X-Request-Timeout-Ms", &huge.to_string()), body)
            .await;
        assert_eq!((s, pairs(&v, "score")), (200, want.clone()), "{huge}");
    }

    // Budgets too short: 504 naming the budget and where it came from; the body wins.
    let many: Vec<String> = (0..1000)
        .map(|i| format!("{i} {}", "word ".repeat(40)))
        .collect();
    let (s, v) = server
        .post(
            "/rerank",
            json!({"query": "q", "texts": many, "timeout_ms": 1}),
        )
        .await;
    assert_error(s, &v, 504, "budget of 1 ms (timeout_ms)");
    assert_eq!(v["error_type"], "timeout");
    let body = json!({"query": "q", "documents": many});
    let (s, v) = server
        .post_with("/v1/rerank", ("X-Request-Timeout-Ms", "1"), body)
        .await;
    assert_error(s, &v, 504, "budget of 1 ms (X-Request-Timeout-Ms)");
    let body = json!({"groups": [{"query": "q", "documents": many}], "timeout_ms": 1});
    let (s, v) = server
        .post_with("/rerank/batch", ("X-Request-Timeout-Ms", "600000"), body)
        .await;
    assert_error(s, &v, 504, "budget of 1 ms (timeout_ms)");
    server.drained().await;
    let (_, text) = server.get("/metrics").await;
    assert!(
        text.contains(&format!(
            "crossrank_deadline_exceeded_total{{model=\"{name}\"}} 3\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "crossrank_requests_total{{route=\"/rerank\",status=\"504\",model=\"{name}\"}} 1\n"
    )));
    server.stop().await;

    // The server default applies to requests that give no budget of their own.
    let mut opts = ServeOptions::new(model_dir(name), Device::Cpu);
    opts.request_timeout_ms = Some(0);
    let refused = Service::start(opts.clone()).err().unwrap();
    assert!(
        refused.to_string().contains("--request-timeout-ms"),
        "{refused}"
    );
    opts.request_timeout_ms = Some(1);
    let server = Server::start(opts).await;
    let (_, info) = server.get("/info").await;
    assert!(info.contains("\"request_timeout_ms\":1"), "{info}");
    let (s, v) = server
        .post("/rerank", json!({"query": "q", "texts": many}))
        .await;
    assert_error(s, &v, 504, "budget of 1 ms (--request-timeout-ms)");
    let body = json!({"query": group.query, "texts": group.passages, "raw_scores": true, "timeout_ms": 600_000});
    let (s, v) = server.post("/rerank", body).await;
    assert_eq!((s, pairs(&v, "score")), (200, want));
    server.drained().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_except_on_health() {
    let mut opts = ServeOptions::new(model_dir("bert-f32"), Device::Cpu);
    opts.api_key = Some("s3cret".into());
    let server = Server::start(opts).await;
    let body = json!({"query": "q", "documents": ["a"]}).to_string();
    let send = |auth: Option<&'static str>| {
        let mut r = server
            .client
            .post(format!("{}/v1/rerank", server.base))
            .body(body.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
    ] {
        let r = send(auth).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["error_type"], "unauthorized");
    }
    let r = send(Some("Bearer s3cret")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(server.get("/health").await.0, 200);
    assert_eq!(server.get("/info").await.0, 401);
    assert_eq!(server.get("/metrics").await.0, 401);
    server.stop().await;
}

/// Past --max-concurrent waiting requests the answer is 503 with Retry-After, at once; the
/// requests accepted are all answered with the right scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after() {
    let name = "bert-f32";
    let mut opts = ServeOptions::new(model_dir(name), Device::Cpu);
    opts.max_concurrent = 1;
    let server = Arc::new(Server::start(opts).await);
    // Requests of 300 pairs at the max length (48 tokens): each forward takes long enough that
    // 40 requests sent at once overlap.
    let long = "word ".repeat(60);
    let texts: Vec<String> = (0..300).map(|i| format!("{i} {long}")).collect();
    let want = library(name).rerank("q", &texts, &raw()).unwrap();
    let want: Vec<(usize, f32)> = want.iter().map(|r| (r.index, r.score)).collect();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (server, texts) = (server.clone(), texts.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"query": "q", "texts": texts, "raw_scores": true});
            server
                .post_bytes("/rerank", body.to_string().into_bytes())
                .await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (status, headers, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(pairs(&v, "score"), want);
            }
            503 => {
                busy += 1;
                assert_eq!(headers.get("retry-after").unwrap(), "1");
                assert_error(status, &v, 503, "--max-concurrent");
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    let (_, text) = server.get("/metrics").await;
    assert!(text.contains(&format!("crossrank_overloaded_total {busy}\n")));
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

/// Clients that give up before their answer: the server keeps serving and every place among
/// --max-concurrent comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_free_their_place() {
    let name = "bert-f32";
    let mut opts = ServeOptions::new(model_dir(name), Device::Cpu);
    opts.max_concurrent = 64;
    let server = Server::start(opts).await;
    let texts: Vec<String> = (0..200)
        .map(|i| format!("{i} {}", "word ".repeat(60)))
        .collect();
    let body = json!({"query": "q", "texts": texts}).to_string();
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let r = impatient
            .post(format!("{}/rerank", server.base))
            .body(body.clone());
        tasks.push(tokio::spawn(
            async move { r.send().await.map(|r| r.status()) },
        ));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    // Every accepted request is answered or dropped: the queue empties within a bound.
    server.drained().await;
    let (s, v) = server
        .post("/rerank", json!({"query": "q", "texts": ["a", "b"]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
}

/// A few hundred requests from many tasks against a small --max-batch-tokens, so that
/// requests share forwards and large ones are split across several: every one is answered,
/// and each matches the library scoring that request alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_one_at_a_time() {
    let name = "xlmr-bf16";
    let mut opts = ServeOptions::new(model_dir(name), Device::Cpu);
    opts.max_batch_tokens = 256;
    let server = Arc::new(Server::start(opts).await);
    let lib = library(name);
    let gold = golden(name);
    // Requests: every golden query with a rotating slice of 1 to 16 passages of every group.
    let all: Vec<String> = gold
        .groups
        .iter()
        .flat_map(|g| g.passages.clone())
        .collect();
    let mut requests = Vec::new();
    for i in 0..320usize {
        let query = gold.groups[i % gold.groups.len()].query.clone();
        let n = 1 + (i * 7) % 16;
        let docs: Vec<String> = (0..n)
            .map(|k| all[(i + k * 3) % all.len()].clone())
            .collect();
        let want: Vec<(usize, f32)> = lib
            .rerank(&query, &docs, &raw())
            .unwrap()
            .iter()
            .map(|r| (r.index, r.score))
            .collect();
        requests.push((query, docs, want));
    }
    let requests = Arc::new(requests);
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (server, requests) = (server.clone(), requests.clone());
            tokio::spawn(async move {
                let mut answered = 0;
                for i in (t..requests.len()).step_by(32) {
                    let (query, docs, want) = &requests[i];
                    let (path, body, key) = if i % 2 == 0 {
                        (
                            "/rerank",
                            json!({"query": query, "texts": docs, "raw_scores": true}),
                            "score",
                        )
                    } else {
                        let groups = json!([{"query": query, "documents": docs}]);
                        (
                            "/rerank/batch",
                            json!({"groups": groups, "raw_scores": true}),
                            "relevance_score",
                        )
                    };
                    let (status, v) = server.post(path, body).await;
                    assert_eq!(status, 200, "request {i}: {v}");
                    let results = if i % 2 == 0 {
                        &v
                    } else {
                        &v["groups"][0]["results"]
                    };
                    let got = pairs(results, key);
                    assert_eq!(got.len(), want.len(), "request {i}");
                    // Each passage's score within the bound, and the answer best first.
                    let mut by_index = vec![f32::NAN; want.len()];
                    for &(idx, s) in &got {
                        by_index[idx] = s;
                    }
                    for &(idx, s) in want {
                        let d = (by_index[idx] - s).abs();
                        assert!(
                            d <= BATCH_TOL * s.abs().max(1.0),
                            "request {i} passage {idx}: {} vs {s}",
                            by_index[idx]
                        );
                    }
                    for w in got.windows(2) {
                        assert!(w[0].1 >= w[1].1, "request {i}: not best first");
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, requests.len());
    let (_, text) = server.get("/metrics").await;
    let forwards: usize = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("crossrank_batch_pairs_count{{model=\"{name}\"}} ")))
        .unwrap()
        .parse()
        .unwrap();
    let pairs_total: usize = requests.iter().map(|r| r.1.len()).sum();
    eprintln!(
        "{} requests, {pairs_total} pairs, {forwards} forwards",
        requests.len()
    );
    assert!(text.contains(&format!(
        "crossrank_pairs_total{{model=\"{name}\"}} {pairs_total}\n"
    )));
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

/// An LLM reranker over HTTP: the body's `instruction` reaches the prompt on every route
/// (scores equal the library's with the same instruction, and differ from the default's); an
/// encoder model refuses an instruction with a 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_reranker_takes_the_instruction_field() {
    let name = "qwen3-reranker-tiny";
    let server = Server::model(name).await;
    let lib = library(name);
    let (query, docs) = (
        "how do I bake bread?",
        ["Knead the dough.", "Stocks fell today."],
    );
    let want = |instruction: Option<&str>| -> Vec<(usize, f32)> {
        let opts = Options {
            raw_scores: true,
            instruction: instruction.map(str::to_string),
            ..Default::default()
        };
        lib.rerank(query, &docs, &opts)
            .unwrap()
            .iter()
            .map(|r| (r.index, r.score))
            .collect()
    };
    let custom = "Find recipes";
    for instruction in [None, Some(custom)] {
        let mut body = json!({"query": query, "texts": docs, "raw_scores": true});
        if let Some(i) = instruction {
            body["instruction"] = json!(i);
        }
        let (status, v) = server.post("/rerank", body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            pairs(&v, "score"),
            want(instruction),
            "/rerank {instruction:?}"
        );
    }
    assert_ne!(want(None), want(Some(custom)));
    let body = json!({"query": query, "documents": docs, "instruction": custom});
    let (status, v) = server.post("/v2/rerank", body).await;
    assert_eq!(status, 200, "{v}");
    let sig: Vec<(usize, f32)> = want(Some(custom))
        .into_iter()
        .map(|(i, s)| (i, 1.0 / (1.0 + (-s).exp())))
        .collect();
    assert_eq!(pairs(&v["results"], "relevance_score"), sig, "/v2/rerank");
    let body = json!({"groups": [{"query": query, "documents": docs}], "raw_scores": true,
                      "instruction": custom});
    let (status, v) = server.post("/rerank/batch", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        pairs(&v["groups"][0]["results"], "relevance_score"),
        want(Some(custom)),
        "/rerank/batch"
    );
    // Each call's two pairs share the template prefix and the query: counted in /metrics.
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let shared: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("crossrank_shared_prefix_tokens_total{model=\"qwen3-reranker-tiny\"} ")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shared-prefix counter in {text}"));
    assert!(
        shared >= 4 * 39,
        "{shared} shared tokens after four calls of two pairs"
    );
    server.stop().await;

    let server = Server::model("bert-f32").await;
    let body = json!({"query": query, "texts": docs, "instruction": custom});
    let (status, v) = server.post("/rerank", body).await;
    assert_error(status, &v, 422, "instruction");
    server.stop().await;
}

/// Two models of different families (BERT and XLM-R) in one server: a request's `model` picks
/// the model on every route, a request naming none gets --default-model, each answer's scores
/// are bit-identical to its own model's library scores and it names that model (body and
/// headers); an unknown name is a 404 naming the models served; /info lists both; the
/// metrics carry a `model` label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_of_different_families_route_by_name() {
    let mut opts = ServeOptions::new(model_dir("bert-f32"), Device::Cpu);
    let spec = |name: &str, dir: &str| -> crossrank::serve::models::ModelSpec {
        format!("{name}={}", model_dir(dir).display())
            .parse()
            .unwrap()
    };
    opts.models = vec![spec("bert", "bert-f32"), spec("xlmr", "xlmr-bf16")];
    opts.default_model = Some("xlmr".into());
    let server = Server::start(opts.clone()).await;
    let libs = [
        ("bert", library("bert-f32")),
        ("xlmr", library("xlmr-bf16")),
    ];
    let group = &golden("bert-f32").groups[0];
    let (q, docs) = (&group.query, &group.passages);
    for (model, field) in [
        ("bert", json!("bert")),
        ("xlmr", json!("xlmr")),
        ("xlmr", Value::Null),
    ] {
        let lib = &libs.iter().find(|(n, _)| *n == model).unwrap().1;
        let logits: Vec<(usize, f32)> = lib
            .rerank(q, docs, &raw())
            .unwrap()
            .iter()
            .map(|r| (r.index, r.score))
            .collect();
        let probs: Vec<(usize, f32)> = lib
            .rerank(q, docs, &Options::default())
            .unwrap()
            .iter()
            .map(|r| (r.index, r.score))
            .collect();
        let mut bodies = vec![
            (
                "/rerank",
                json!({"query": q, "texts": docs, "raw_scores": true}),
            ),
            ("/v1/rerank", json!({"query": q, "documents": docs})),
            ("/v2/rerank", json!({"query": q, "documents": docs})),
            (
                "/rerank/batch",
                json!({"groups": [{"query": q, "documents": docs}], "raw_scores": true}),
            ),
        ];
        for (_, b) in &mut bodies {
            if !field.is_null() {
                b["model"] = field.clone();
            }
        }
        for (path, body) in bodies {
            let what = format!("{path} model {field}");
            let (s, headers, v) = server.post_bytes(path, body.to_string().into_bytes()).await;
            assert_eq!(s, 200, "{what}: {v}");
            assert_eq!(headers["x-crossrank-model"], model, "{what}");
            let revision = if model == "bert" { "1" } else { "2" };
            assert_eq!(headers["x-crossrank-model-revision"], revision, "{what}");
            match path {
                "/rerank" => assert_eq!(pairs(&v, "score"), logits, "{what}"),
                "/rerank/batch" => {
                    assert_eq!(pairs(&v["groups"][0]["results"], "relevance_score"), logits);
                    assert_eq!(v["model"], model, "{what}");
                }
                _ => {
                    assert_eq!(pairs(&v["results"], "relevance_score"), probs, "{what}");
                    assert_eq!(v["model"], model, "{what}");
                }
            }
        }
    }
    // An unknown model on every route: 404 naming the models served.
    for (path, body) in [
        (
            "/rerank",
            json!({"model": "nope", "query": "q", "texts": ["a"]}),
        ),
        (
            "/v1/rerank",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
        ),
        (
            "/v2/rerank",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
        ),
        (
            "/rerank/batch",
            json!({"model": "nope", "groups": [{"query": "q", "documents": ["a"]}]}),
        ),
    ] {
        let (s, v) = server.post(path, body).await;
        assert_error(
            s,
            &v,
            404,
            "model \"nope\" is not served here; served: bert, xlmr",
        );
        assert_eq!(v["error_type"], "model_not_found");
    }

    let (_, info) = server.get("/info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["default_model"], "xlmr");
    assert_eq!(info["model"], "xlmr");
    let listed: Vec<(String, String)> = info["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().into(),
                m["family"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("bert".into(), "bert".into()),
            ("xlmr".into(), "roberta".into())
        ]
    );

    let (_, text) = server.get("/metrics").await;
    let n = docs.len();
    for line in [
        // bert: 4 routes once; xlmr: 4 routes, named and unnamed.
        format!("crossrank_pairs_total{{model=\"bert\"}} {}\n", 4 * n),
        format!("crossrank_pairs_total{{model=\"xlmr\"}} {}\n", 8 * n),
        "crossrank_requests_total{route=\"/v2/rerank\",status=\"200\",model=\"xlmr\"} 2\n".into(),
        "crossrank_requests_total{route=\"/v2/rerank\",status=\"200\",model=\"bert\"} 1\n".into(),
        "crossrank_requests_total{route=\"/v2/rerank\",status=\"404\",model=\"\"} 1\n".into(),
        "crossrank_shared_prefix_tokens_total{model=\"bert\"} 0\n".into(),
    ] {
        assert!(text.contains(&line), "{line:?} not in\n{text}");
    }
    server.stop().await;

    // Start-up errors name what was wrong.
    let refused = |opts: ServeOptions| match Service::start(opts) {
        Ok(_) => panic!("started"),
        Err(e) => e.to_string(),
    };
    let mut twice = opts.clone();
    twice.models[1].name = "bert".into();
    let e = refused(twice);
    assert!(e.contains("--model bert is given twice"), "{e}");
    let mut unknown = opts.clone();
    unknown.default_model = Some("nope".into());
    let e = refused(unknown);
    assert!(
        e.contains("--default-model nope is not one of the models given: bert, xlmr"),
        "{e}"
    );
    let mut bad = opts;
    bad.models[0].name = "a b".into();
    let e = refused(bad);
    assert!(e.contains("model name \"a b\" must be"), "{e}");
}

/// --shadow: a candidate (XLM-R) also scores every second request of the default model (BERT),
/// after the answer; /metrics gets per-group Kendall tau, top-k overlap (k = top_n, else 10)
/// and score shift, equal to those of the two libraries' own logits; requests to another
/// model are neither sampled nor counted; the answers are the default model's, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_compares_a_sampled_share_of_the_default_models_requests() {
    use crossrank::audit::stats::{kendall_tau_b, top_k_overlap};
    use crossrank::serve::api::order;
    let wide = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
    let spec = |name: &str, dir: &str| -> crossrank::serve::models::ModelSpec {
        format!("{name}={}", model_dir(dir).display())
            .parse()
            .unwrap()
    };
    let mut opts = ServeOptions::new(model_dir("bert-f32"), Device::Cpu);
    opts.models.push(spec("other", "modernbert-cls"));
    opts.shadow = Some(spec("cand", "xlmr-bf16"));
    opts.shadow_sample = 0.5;
    let server = Server::start(opts).await;
    let (bert, xlmr) = (library("bert-f32"), library("xlmr-bf16"));
    let gold = golden("bert-f32");
    let logits = |lib: &Reranker, q: &str, docs: &[String]| -> Vec<f32> {
        let mut by_index = vec![0.0; docs.len()];
        for r in lib.rerank(q, docs, &raw()).unwrap() {
            by_index[r.index] = r.score;
        }
        by_index
    };
    let compared = |text: &str| -> u64 {
        let line = "crossrank_shadow_requests_total{model=\"bert-f32\",shadow=\"cand\",outcome=\"compared\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in\n{text}"))
    };
    // Every second request of the default model is sampled: the 2nd, 4th, 6th.
    let (mut taus, mut overlaps, mut shifts, mut groups) = (0.0f64, 0.0f64, 0.0f64, 0);
    let mut sampled = 0;
    for i in 0..6 {
        let g = &gold.groups[i % gold.groups.len()];
        let (q, docs) = (&g.query, &g.passages);
        let top_n = if i % 3 == 0 { None } else { Some(i % 3 + 1) };
        let mut body = json!({"query": q, "documents": docs, "model": "bert-f32"});
        if let Some(n) = top_n {
            body["top_n"] = json!(n);
        }
        let (s, v) = server.post("/v1/rerank", body).await;
        assert_eq!(s, 200, "{v}");
        let want: Vec<(usize, f32)> = bert
            .rerank(
                q,
                docs,
                &Options {
                    top_k: top_n,
                    ..Options::default()
                },
            )
            .unwrap()
            .iter()
            .map(|r| (r.index, r.score))
            .collect();
        assert_eq!(pairs(&v["results"], "relevance_score"), want);
        // A request to another model between them: not sampled, not counted.
        let (s, _) = server
            .post(
                "/rerank",
                json!({"model": "other", "query": q, "texts": docs}),
            )
            .await;
        assert_eq!(s, 200);
        if i % 2 == 1 {
            sampled += 1;
            let (p, c) = (logits(&bert, q, docs), logits(&xlmr, q, docs));
            taus += kendall_tau_b(&wide(&p), &wide(&c)).unwrap();
            let k = top_n.unwrap_or(10).min(docs.len());
            overlaps += top_k_overlap(&order(&p, None), &order(&c, None), k) as f64 / k as f64;
            shifts += p
                .iter()
                .zip(&c)
                .map(|(&a, &b)| {
                    f64::from(crossrank::engine::sigmoid(b))
                        - f64::from(crossrank::engine::sigmoid(a))
                })
                .sum::<f64>()
                / p.len() as f64;
            groups += 1;
        }
        // Wait for the comparison (bounded), so that each is scored alone, as the library does.
        let mut waited = 0;
        loop {
            let (_, text) = server.get("/metrics").await;
            if compared(&text) == sampled {
                break;
            }
            assert!(waited < 600, "the shadow did not compare in 30 s:\n{text}");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, text) = server.get("/metrics").await;
    let value = |name: &str| -> f64 {
        let prefix = format!("crossrank_shadow_{name}{{model=\"bert-f32\",shadow=\"cand\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
    };
    assert_eq!(compared(&text), 3);
    for (name, want) in [
        ("kendall_tau", taus),
        ("topk_overlap", overlaps),
        ("score_shift", shifts),
    ] {
        assert_eq!(value(&format!("{name}_count")), groups as f64, "{name}");
        let got = value(&format!("{name}_sum"));
        assert!((got - want).abs() <= 1e-9, "{name}: {got} vs {want}");
    }
    assert!(text.contains(
        "crossrank_shadow_requests_total{model=\"bert-f32\",shadow=\"cand\",outcome=\"dropped\"} 0\n"
    ));
    // The candidate's work takes none of the server's places and is not a served model.
    assert!(!text.contains("model=\"cand\"}"), "{text}");
    let (_, info) = server.get("/info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (
            info["shadow"]["model"].clone(),
            info["shadow"]["sample"].clone()
        ),
        (json!("cand"), json!(0.5))
    );
    let (s, v) = server
        .post(
            "/rerank",
            json!({"model": "cand", "query": "q", "texts": ["a"]}),
        )
        .await;
    assert_error(s, &v, 404, "served: bert-f32, other");
    server.stop().await;
}

/// --device cpu,cpu: two copies of the model, two inference threads fed from one queue. One
/// request of more pairs than a forward holds: the two devices each take a forward at once
/// (both used, by /metrics), and the scores are bit-identical to the library's with the same
/// arena, which packs the same forwards front to back (as one device does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_share_one_queue_and_score_as_one() {
    let name = "bert-f32";
    let mut opts = ServeOptions::new(model_dir(name), Device::Cpu);
    opts.device = "cpu,cpu".parse().unwrap();
    opts.max_batch_tokens = 128;
    let server = Server::start(opts).await;
    let lib = Reranker::load(
        model_dir(name),
        Device::Cpu,
        &LoadOptions {
            max_batch_tokens: 128,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let gold = golden(name);
    let q = &gold.groups[0].query;
    let docs: Vec<String> = (0..4)
        .flat_map(|i| {
            gold.groups
                .iter()
                .flat_map(move |g| g.passages.iter().map(move |p| format!("{i} {p}")))
        })
        .collect();
    let tokens: usize = lib
        .encode(q, &docs, None)
        .unwrap()
        .iter()
        .map(|p| p.ids.len())
        .sum();
    assert!(
        tokens > 2 * lib.max_batch_tokens(),
        "{tokens} tokens: not enough for two forwards"
    );
    let want: Vec<(usize, f32)> = lib
        .rerank(q, &docs, &raw())
        .unwrap()
        .iter()
        .map(|r| (r.index, r.score))
        .collect();
    let (s, v) = server
        .post(
            "/rerank",
            json!({"query": q, "texts": docs, "raw_scores": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(pairs(&v, "score"), want);
    let (_, text) = server.get("/metrics").await;
    let counter = |name: &str, device: &str| -> u64 {
        let prefix = format!(
            "crossrank_{name}{{model=\"{}\",device=\"{device}\"}} ",
            "bert-f32"
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
    };
    for d in ["0", "1"] {
        assert!(
            counter("device_forwards_total", d) >= 1,
            "device {d} unused:\n{text}"
        );
    }
    assert_eq!(
        counter("device_pairs_total", "0") + counter("device_pairs_total", "1"),
        docs.len() as u64
    );
    let (_, info) = server.get("/info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["models"][0]["devices"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );
    server.stop().await;
    // A device list that names no device, or a bad one, is refused with the flag's own error.
    let e = "cpu,"
        .parse::<crossrank::serve::Devices>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("device `` is not one of"), "{e}");
    let e = "cpu,cuda:0"
        .parse::<crossrank::serve::Devices>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixes the CPU with CUDA devices"), "{e}");
    let both: crossrank::serve::Devices = " cuda:1, cuda:0".parse().unwrap();
    assert_eq!(both.0, vec![Device::Cuda(1), Device::Cuda(0)]);
    assert_eq!(both.to_string(), "cuda:1,cuda:0");
}

/// The committed BLIP test images as data URIs, with their bytes.
fn image_uris() -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    [
        "alpha.png",
        "gray.jpg",
        "wide.png",
        "tiny.png",
        "photo.webp",
        "palette.png",
    ]
    .iter()
    .map(|f| {
        let bytes = std::fs::read(data_dir().join("images").join(f)).unwrap();
        let kind = match f.rsplit('.').next() {
            Some("jpg") => "jpeg",
            Some(ext) => ext,
            None => unreachable!(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        (format!("data:image/{kind};base64,{b64}"), bytes)
    })
    .collect()
}

/// Image documents (`{"image": data URI}`, Jina's multimodal shape) on /v1, /v2 and
/// /rerank/batch score exactly as the library over the same bytes: the same pairs make the
/// same forwards, so the logits are bit-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_documents_score_like_the_library() {
    let images = image_uris();
    let lib = library("blip-itm-tiny");
    let bytes: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let limits = crossrank::pixels::ImageLimits::default();
    let query = "a photo of a cat";
    let want = lib.rerank_images(query, &bytes, &limits, &raw()).unwrap();
    let want: Vec<(usize, f32)> = want
        .iter()
        .map(|r| (r.index, crossrank::engine::sigmoid(r.score)))
        .collect();
    let docs: Vec<Value> = images.iter().map(|(u, _)| json!({ "image": u })).collect();
    let s = Server::model("blip-itm-tiny").await;
    let (st, v) = s
        .post("/v1/rerank", json!({ "query": query, "documents": docs }))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(pairs(&v["results"], "relevance_score"), want);
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0, "{v}");
    // /v2 echoes an image document as it came.
    let body = json!({ "query": query, "documents": docs, "top_n": 2, "return_documents": true });
    let (st, v) = s.post("/v2/rerank", body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(pairs(&v["results"], "relevance_score"), want[..2].to_vec());
    let top = want[0].0;
    assert_eq!(
        v["results"][0]["document"],
        json!({ "image": images[top].0 })
    );
    // Bare base64, as Jina's API also takes it.
    let bare = images[0].0.split_once(',').unwrap().1;
    let (st, v) = s
        .post(
            "/v1/rerank",
            json!({ "query": query, "documents": [{ "image": bare }] }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let alone = lib
        .rerank_images(query, &bytes[..1], &limits, &raw())
        .unwrap();
    assert_eq!(
        pairs(&v["results"], "relevance_score"),
        vec![(0, crossrank::engine::sigmoid(alone[0].score))]
    );
    // Two groups in one batch call, raw logits.
    let body = json!({ "raw_scores": true, "groups": [
        { "query": query, "documents": docs },
        { "query": "red", "documents": docs[2..4] },
    ]});
    let (st, v) = s.post("/rerank/batch", body).await;
    assert_eq!(st, 200, "{v}");
    // The request's pairs share forwards across groups (images 2 and 3 run the vision tower
    // once for both queries): the library's call of the same pairs makes the same forwards.
    let px = lib.pixel_values(&bytes, &limits).unwrap();
    let refs: Vec<&[f32]> = px.iter().map(Vec::as_slice).collect();
    let mut both: Vec<(usize, usize)> = (0..6).map(|i| (0, i)).collect();
    both.extend([(1, 2), (1, 3)]);
    let (logits, _) = lib
        .score_image_pairs(&[query, "red"], &both, &refs, None)
        .unwrap();
    let best_first = |l: &[f32]| {
        let mut v: Vec<(usize, f32)> = l.iter().copied().enumerate().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    assert_eq!(
        pairs(&v["groups"][0]["results"], "relevance_score"),
        best_first(&logits[..6])
    );
    assert_eq!(
        pairs(&v["groups"][1]["results"], "relevance_score"),
        best_first(&logits[6..])
    );
    // Each group alone scores within a few f32 ulps of that: the CPU GEMM's sums differ by
    // rounding with the batch's row count, as for text models.
    let red = lib
        .rerank_images("red", &bytes[2..4], &limits, &raw())
        .unwrap();
    for r in &red {
        let shared = logits[6 + r.index];
        assert!(
            (r.score - shared).abs() <= 1e-5 * shared.abs().max(1.0),
            "red image {}: alone {} vs shared {shared}",
            r.index,
            r.score
        );
    }
    // The six images ran the vision tower once, in the first request (the warm-up's blank
    // image is not counted); every later image was the cache's.
    let (st, text) = s.get("/metrics").await;
    assert_eq!(st, 200);
    let metric = |name: &str| -> u64 {
        let line = format!("crossrank_image_cache_{name}{{model=\"blip-itm-tiny\"}} ");
        let at = text
            .find(&line)
            .unwrap_or_else(|| panic!("no {line} in {text}"));
        let rest = &text[at + line.len()..];
        rest[..rest.find('\n').unwrap()].parse().unwrap()
    };
    assert_eq!(metric("misses_total"), 6, "{text}");
    assert_eq!(metric("entries"), 6);
    assert_eq!(metric("evictions_total"), 0);
    assert_eq!(metric("capacity_bytes"), 256 << 20);
    assert!(metric("hits_total") >= 6 + 1 + 6, "{text}");
    s.stop().await;
}

/// Every refusal of an image document, each the request's one answer, naming the document:
/// a remote URL 422 (never fetched), a corrupt or unsupported image 422, over
/// --max-image-bytes or --max-image-pixels 413, text to an image model and images to a text
/// model 422. The server answers the next request as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_documents_refused_with_the_documented_status() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let images = image_uris();
    let good = json!({ "image": images[0].0 });
    let mut opts = ServeOptions::new(model_dir("blip-itm-tiny"), Device::Cpu);
    // alpha.png is 3.6 kB of 30x40 = 1200 pixels; wide.png is 64x24 = 1536 pixels.
    opts.max_image_pixels = 1200;
    opts.max_image_bytes = 6000;
    let s = Server::start(opts).await;
    let one = |doc: Value| json!({ "query": "a cat", "documents": [good.clone(), doc] });
    let cases: Vec<(&str, Value, u16, String)> = vec![
        (
            "/v1/rerank",
            one(json!({ "image": "https://example.com/cat.png" })),
            422,
            "documents[1].image: remote URLs are not fetched".into(),
        ),
        (
            "/v2/rerank",
            one(json!({ "image": "http://169.254.169.254/latest" })),
            422,
            "documents[1].image: remote URLs are not fetched".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": format!("data:image/png;base64,{}", b64(b"not an image")) })),
            422,
            "documents[1].image: not a PNG, JPEG or WebP image".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": format!("data:image/png;base64,{}", b64(&images[0].1[..200])) })),
            422,
            "documents[1].image: corrupt image".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": format!("data:image/gif;base64,{}", b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")) })),
            422,
            "documents[1].image: Gif images are not supported".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": "data:image/png;base64,***" })),
            422,
            "documents[1].image: invalid base64".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": images[2].0 })),
            413,
            "documents[1].image: the image is 64x24 = 1536 pixels, more than the limit of 1200 (--max-image-pixels)".into(),
        ),
        (
            "/v1/rerank",
            one(json!({ "image": format!("data:image/png;base64,{}", b64(&[0u8; 7000])) })),
            413,
            "documents[1].image: the image is 7000 bytes, more than the limit of 6000 (--max-image-bytes)".into(),
        ),
        (
            "/v1/rerank",
            one(json!("a text document")),
            422,
            "documents[1] is text, but model blip-itm-tiny (BlipForImageTextRetrieval) is an image-text model".into(),
        ),
        (
            "/rerank/batch",
            json!({ "groups": [{ "query": "q", "documents": [good] },
                               { "query": "q", "documents": [{ "image": "https://x.test/a.png" }] }] }),
            422,
            "groups[1].documents[0].image: remote URLs are not fetched".into(),
        ),
        (
            "/rerank/batch",
            json!({ "groups": [{ "query": "q", "documents": [good] },
                               { "query": "q", "documents": [good, { "image": format!("data:image/jpeg;base64,{}", b64(b"\xff\xd8\xff junk")) }] }] }),
            422,
            "groups[1].documents[1].image: corrupt image".into(),
        ),
        (
            "/rerank",
            json!({ "query": "a cat", "texts": ["a text"] }),
            422,
            "texts[0] is text".into(),
        ),
    ];
    for (path, body, status, msg) in cases {
        let (st, v) = s.post(path, body).await;
        assert_error(st, &v, status, &msg);
    }
    let (st, v) = s
        .post(
            "/v1/rerank",
            json!({ "query": "a cat", "documents": [good] }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
    // A text model: an image document is its request's 422, naming it.
    let s = Server::model("bert-f32").await;
    let (st, v) = s
        .post(
            "/v1/rerank",
            json!({ "query": "q", "documents": ["text", good] }),
        )
        .await;
    assert_error(
        st,
        &v,
        422,
        "documents[1] is an image, but model bert-f32 (BertForSequenceClassification) is a text model",
    );
    let (st, v) = s
        .post("/v1/rerank", json!({ "query": "q", "documents": ["text"] }))
        .await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}
