//! The `crossrank serve` binary as a process: JSON lines on stdin/stdout (--stdio), and HTTP on
//! an ephemeral loopback port drained by SIGTERM/SIGINT with exit status 0. Every wait here is
//! bounded; a process that outlives its bound is killed and the test fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use crossrank::engine::Options;
use crossrank::{Device, LoadOptions, Reranker};
use serde_json::{json, Value};

/// Packed-vs-alone bound, as stated and measured in tests/serve_http.rs.
const BATCH_TOL: f32 = 1e-5;

fn crossrank() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crossrank"))
}

/// Waits for the process to exit, at most `limit`; kills it and fails past that.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crossrank serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw_logits(lib: &Reranker, query: &str, docs: &[String]) -> Vec<f32> {
    let opts = Options {
        raw_scores: true,
        ..Default::default()
    };
    let mut by_index = vec![0.0; docs.len()];
    for r in lib.rerank(query, docs, &opts).unwrap() {
        by_index[r.index] = r.score;
    }
    by_index
}

/// Checks `results` (best first, `key` holding the score) against logits by input index.
fn check_scores(results: &Value, key: &str, want: &[f32], what: &str) {
    let results = results
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {results}"));
    assert_eq!(results.len(), want.len(), "{what}");
    let mut last = f32::INFINITY;
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        let got = r[key].as_f64().unwrap() as f32;
        let tol = BATCH_TOL * want[i].abs().max(1.0);
        assert!(
            (got - want[i]).abs() <= tol,
            "{what} passage {i}: {got} vs {}",
            want[i]
        );
        assert!(got <= last, "{what}: not best first");
        last = got;
    }
}

/// `crossrank serve --stdio ARGS` fed `input`: its stdout and stderr once it has exited 0.
fn run_stdio(args: &[&str], input: Vec<u8>) -> (String, String) {
    let mut child = crossrank()
        .args(["serve", "--stdio"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        // Dropping stdin is the end of input.
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = wait_exit(&mut child, Duration::from_secs(60));
    writer.join().unwrap();
    let out = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{err}");
    (out, err)
}

#[test]
fn stdio_answers_every_line_then_exits_0() {
    let name = "bert-f32";
    let lib = Reranker::load(model_dir(name), Device::Cpu, &LoadOptions::default()).unwrap();
    let gold = golden(name);
    let (q0, d0) = (&gold.groups[0].query, &gold.groups[0].passages);
    let (q1, d1) = (&gold.groups[1].query, &gold.groups[1].passages);
    let long = "word ".repeat(100);

    let mut input: Vec<u8> = Vec::new();
    let mut line = |v: Value| {
        input.extend(v.to_string().as_bytes());
        input.push(b'\n');
    };
    line(json!({"id": 1, "query": q0, "texts": d0, "raw_scores": true}));
    line(json!({"id": "two", "query": q1, "documents": d1, "top_n": 3}));
    line(json!({"id": [3], "route": "/v2/rerank", "query": q0, "documents": d1}));
    line(
        json!({"id": 4, "groups": [{"query": q0, "documents": d0}, {"query": q1, "documents": d1}],
                "raw_scores": true}),
    );
    line(json!({"id": 5, "route": "/nope", "query": "q", "texts": []}));
    line(json!({"id": 6, "query": "q", "texts": []}));
    line(json!({"id": 7, "something": "else"}));
    line(json!({"id": 8, "query": "q", "texts": [long], "truncate": false}));
    input.extend(b"\n   \n"); // blank lines are skipped
    input.extend(b"{\"id\": 9, \"query\": \n"); // malformed JSON: no id can be read
    input.extend(b"{\"id\": 10, \"query\": \"\xff\", \"texts\": []}\r\n"); // invalid UTF-8

    let model = model_dir(name).display().to_string();
    let (out, err) = run_stdio(&["--model", &model], input);

    // Exactly one JSON answer per request line on stdout, nothing else; logs on stderr.
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?}: {e}")))
        .collect();
    assert_eq!(answers.len(), 10, "stdout:\n{out}");
    assert!(err.contains("STDIO /rerank 200"), "stderr:\n{err}");
    let by_id = |id: Value| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer with id {id}:\n{out}"))
    };

    let a = by_id(json!(1));
    assert_eq!(a["status"], 200);
    check_scores(&a["result"], "score", &raw_logits(&lib, q0, d0), "id 1");

    let a = by_id(json!("two"));
    assert_eq!(a["status"], 200);
    let want: Vec<f32> = raw_logits(&lib, q1, d1)
        .iter()
        .map(|&x| crossrank::engine::sigmoid(x))
        .collect();
    let results = a["result"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(a["result"]["meta"]["api_version"]["version"], "1");

    let a = by_id(json!([3]));
    assert_eq!(a["status"], 200);
    assert_eq!(a["result"]["meta"]["api_version"]["version"], "2");
    let want_v2: Vec<f32> = raw_logits(&lib, q0, d1)
        .iter()
        .map(|&x| crossrank::engine::sigmoid(x))
        .collect();
    check_scores(
        &a["result"]["results"],
        "relevance_score",
        &want_v2,
        "id [3]",
    );
    // top_n keeps the three best of the full ranking, with their scores.
    let mut best = want.clone();
    best.sort_by(|x, y| y.total_cmp(x));
    for (r, expect) in results.iter().zip(&best) {
        let i = r["index"].as_u64().unwrap() as usize;
        let got = r["relevance_score"].as_f64().unwrap() as f32;
        assert!((got - want[i]).abs() <= BATCH_TOL, "id two passage {i}");
        assert!(
            (got - expect).abs() <= BATCH_TOL,
            "id two: not the best three"
        );
    }

    let a = by_id(json!(4));
    assert_eq!(a["status"], 200);
    let groups = a["result"]["groups"].as_array().unwrap();
    check_scores(
        &groups[0]["results"],
        "relevance_score",
        &raw_logits(&lib, q0, d0),
        "id 4/0",
    );
    check_scores(
        &groups[1]["results"],
        "relevance_score",
        &raw_logits(&lib, q1, d1),
        "id 4/1",
    );

    let statuses = [(5, 404), (6, 200), (7, 422), (8, 413)];
    for (id, status) in statuses {
        let a = by_id(json!(id));
        assert_eq!(a["status"], status, "{a}");
        if status != 200 {
            assert!(a["error"].is_string() && a["error_type"].is_string(), "{a}");
        }
    }
    assert_eq!(by_id(json!(6))["result"], json!([]));
    // Lines that cannot be parsed are answered with a null id.
    let unparsed: Vec<&Value> = answers.iter().filter(|a| a["id"].is_null()).collect();
    assert_eq!(unparsed.len(), 2, "{out}");
    assert!(unparsed.iter().all(|a| a["status"] == 400));
    assert!(unparsed.iter().any(|a| a["error_type"] == "invalid_utf8"));
    assert!(unparsed.iter().any(|a| a["error_type"] == "invalid_json"));
}

/// Starts `crossrank serve --port 0` (with CROSSRANK_API_KEY set to `key`, if any), returns
/// the child, its base URL, and its stderr lines.
fn start_http(name: &str, key: Option<&str>) -> (Child, String, mpsc::Receiver<String>) {
    let model = model_dir(name).display().to_string();
    start_serve(&["--model", &model], key)
}

/// `crossrank serve --port 0 ARGS`, as [`start_http`].
fn start_serve(args: &[&str], key: Option<&str>) -> (Child, String, mpsc::Receiver<String>) {
    let mut cmd = crossrank();
    cmd.env_remove("CROSSRANK_API_KEY");
    cmd.env_remove("CROSSRANK_ADMIN_KEY");
    if let Some(key) = key {
        cmd.env("CROSSRANK_API_KEY", key);
    }
    let mut child = cmd
        .args(["serve", "--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("crossrank serve: listening on ") {
                    return (child, addr.to_string(), rx);
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line from crossrank serve: {e}");
            }
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// The stderr lines that arrived within `limit`, up to the end of the stream.
fn drain_lines(rx: &mpsc::Receiver<String>, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    lines
}

#[test]
fn sigterm_finishes_accepted_requests_then_exits_0() {
    let name = "bert-f32";
    let (mut child, base, stderr) = start_http(name, None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // 40 requests of 300 pairs at the max length: seconds of work on two cores.
    let long = "word ".repeat(60);
    let texts: Vec<String> = (0..300).map(|i| format!("{i} {long}")).collect();
    let body = json!({"query": "q", "texts": texts}).to_string();
    let (ok, refused) = runtime.block_on(async {
        let requests: Vec<_> = (0..40)
            .map(|_| {
                let r = client.post(format!("{base}/rerank")).body(body.clone());
                tokio::spawn(async move {
                    match r.send().await {
                        Ok(resp) => Ok((resp.status().as_u16(), resp.text().await)),
                        Err(e) => Err(e),
                    }
                })
            })
            .collect();
        // Signal once some request is in progress (queue depth above zero), bounded.
        let mut seen = false;
        for _ in 0..2000 {
            let m = client.get(format!("{base}/metrics")).send().await;
            if let Ok(m) = m {
                let text = m.text().await.unwrap_or_default();
                if text
                    .lines()
                    .any(|l| l.starts_with("crossrank_queue_depth ") && !l.ends_with(" 0"))
                {
                    seen = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen, "no request was ever seen in progress");
        signal(&child, "-TERM");
        let (mut ok, mut refused) = (0, 0);
        for r in requests {
            match r.await.unwrap() {
                Ok((status, text)) => {
                    // Accepted before the signal: answered in full.
                    assert_eq!(status, 200, "{text:?}");
                    let v: Value = serde_json::from_str(&text.unwrap()).unwrap();
                    assert_eq!(v.as_array().unwrap().len(), 300);
                    ok += 1;
                }
                // Not accepted: the listener had closed. Never an error answer or a hang.
                Err(e) => {
                    assert!(e.is_connect() || e.is_request(), "{e}");
                    refused += 1;
                }
            }
        }
        (ok, refused)
    });
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let lines = drain_lines(&stderr, Duration::from_secs(5));
    eprintln!("{ok} answered, {refused} refused after the signal");
    assert!(ok >= 1);
    assert!(
        lines.iter().any(|l| l.contains("signal received")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "crossrank serve: stopped; 0 accepted requests unanswered"),
        "{lines:#?}"
    );
}

/// One HTTP/1.1 GET over a fresh connection; the whole reply.
fn get(base: &str, path: &str, headers: &str) -> String {
    let mut c = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

/// Also: the API key comes from CROSSRANK_API_KEY when --api-key is not given (so it stays out
/// of `ps`); /health needs none.
#[test]
fn sigint_on_an_idle_server_exits_0() {
    let (mut child, base, _stderr) = start_http("xlmr-bf16", Some("s3cret"));
    let reply = get(&base, "/health", "");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let reply = get(&base, "/info", "");
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    let reply = get(&base, "/info", "Authorization: Bearer s3cret\r\n");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Without --admin-key the admin routes are off, whatever key is sent.
    let reply = get(&base, "/admin/models/x", "Authorization: Bearer s3cret\r\n");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(reply.contains("--admin-key"), "{reply}");
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// What one client request of the swap test saw.
struct Seen {
    sent: Instant,
    answered: Instant,
    status: u16,
    revision: u64,
    logits: Vec<f32>,
}

/// A client of a server with `--api-key api --admin-key adm` (async; every call bounded).
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Client {
            base: base.to_string(),
            http,
        }
    }

    /// Sends with `key`; returns the status, the model revision header (0 if none) and the
    /// body as JSON.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, u64, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {key}"));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let revision = resp
            .headers()
            .get("x-crossrank-model-revision")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: {status} with non-JSON {text:?}: {e}"));
        (status, revision, value)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        name: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (s, _, v) = self
            .send(method, &format!("/admin/models/{name}"), "adm", body)
            .await;
        (s, v)
    }

    /// A TEI request with raw scores for `model` (None: the default); (status, revision,
    /// logits by input index).
    async fn rerank(
        &self,
        model: Option<&str>,
        query: &str,
        docs: &[String],
    ) -> (u16, u64, Vec<f32>) {
        let mut body = json!({"query": query, "texts": docs, "raw_scores": true});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        let (s, rev, v) = self
            .send(reqwest::Method::POST, "/rerank", "api", Some(body))
            .await;
        let mut logits = vec![f32::NAN; docs.len()];
        if s == 200 {
            for r in v.as_array().unwrap() {
                logits[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
            }
        }
        (s, rev, logits)
    }
}

/// Within BATCH_TOL of `want`, entry by entry.
fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= BATCH_TOL * w.abs().max(1.0))
}

/// A swap under a bounded concurrent load: `POST /admin/models/m` moves model m from a BERT
/// checkpoint to an XLM-R one while four clients send requests back to back. No request fails;
/// each answer carries the old model's revision and scores or the new one's, never a mix; what
/// was answered before the admin call was sent is the old model's, what was sent after it
/// answered is the new one's; the old model is freed. Then a failed swap (broken files) keeps
/// the new model serving, a model is added and removed, admin calls need the admin key (not
/// the API key), and SIGHUP reloads every model from its path.
#[test]
fn swaps_under_load_lose_no_request_and_each_answer_is_one_models() {
    let (bert, xlmr) = (model_dir("bert-f32"), model_dir("xlmr-bf16"));
    let load =
        |dir: &std::path::Path| Reranker::load(dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let gold = golden("bert-f32");
    let (query, docs) = (
        gold.groups[0].query.clone(),
        gold.groups[0].passages.clone(),
    );
    let old = raw_logits(&load(&bert), &query, &docs);
    let new = raw_logits(&load(&xlmr), &query, &docs);
    assert!(!close(&old, &new), "the two models must score apart");

    let m = format!("m={}", bert.display());
    let (mut child, base, stderr) = start_serve(
        &[
            "--model",
            &m,
            "--admin-key",
            "adm",
            "--max-batch-tokens",
            "256",
        ],
        Some("api"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = std::sync::Arc::new(Client::new(&base));
    use reqwest::Method;
    runtime.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (c, stop, seen) = (client.clone(), stop.clone(), seen.clone());
                let (q, d) = (query.clone(), docs.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        let sent = Instant::now();
                        let (status, revision, logits) = c.rerank(Some("m"), &q, &d).await;
                        let answered = Instant::now();
                        seen.lock().unwrap().push(Seen { sent, answered, status, revision, logits });
                    }
                })
            })
            .collect();
        // Bounded waits: until `n` answers satisfy `which`, at most 60 s.
        let wait_for = |n: usize, which: &dyn Fn(&Seen) -> bool| {
            let start = Instant::now();
            loop {
                let k = seen.lock().unwrap().iter().filter(|s| which(s)).count();
                if k >= n {
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "only {k} of {n} answers in 60 s");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        tokio::task::block_in_place(|| wait_for(8, &|_| true));

        // Admin needs the admin key: none, or the API key, is a 401.
        let (s, _, v) = client.send(Method::POST, "/admin/models/m", "api", Some(json!({"path": xlmr}))).await;
        assert_eq!(s, 401, "{v}");
        let admin_sent = Instant::now();
        let (s, v) = client.admin(Method::POST, "m", Some(json!({"path": xlmr}))).await;
        let admin_done = Instant::now();
        assert_eq!(s, 200, "{v}");
        assert_eq!((v["model"].clone(), v["revision"].clone(), v["replaced_revision"].clone()), (json!("m"), json!(2), json!(1)));
        tokio::task::block_in_place(|| wait_for(8, &|s| s.sent > admin_done));
        stop.store(true, std::sync::atomic::Ordering::Release);
        for c in clients {
            c.await.unwrap();
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let (mut before, mut after) = (0, 0);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.status, 200, "request {i} failed during the swap");
            match s.revision {
                1 => assert!(close(&s.logits, &old), "request {i}: revision 1 but not its scores: {:?}", s.logits),
                2 => assert!(close(&s.logits, &new), "request {i}: revision 2 but not its scores: {:?}", s.logits),
                r => panic!("request {i}: revision {r}"),
            }
            if s.answered < admin_sent {
                assert_eq!(s.revision, 1, "request {i} answered before the swap was asked");
                before += 1;
            }
            if s.sent > admin_done {
                assert_eq!(s.revision, 2, "request {i} sent after the swap answered");
                after += 1;
            }
        }
        eprintln!("{} requests: {before} answered before the swap was asked, {after} sent after it answered", seen.len());
        let metrics = client
            .http
            .get(format!("{base}/metrics"))
            .header("authorization", "Bearer api")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = format!("crossrank_requests_total{{route=\"/rerank\",status=\"200\",model=\"m\"}} {}\n", seen.len());
        assert!(metrics.contains(&line), "{line:?} not in\n{metrics}");

        // A failed swap: the error names what was wrong, and the new model keeps serving.
        let broken = std::env::temp_dir().join(format!("crossrank-broken-{}", std::process::id()));
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("config.json"), "{ not json").unwrap();
        let (s, v) = client.admin(Method::POST, "m", Some(json!({"path": broken}))).await;
        std::fs::remove_dir_all(&broken).unwrap();
        assert_eq!(s, 422, "{v}");
        assert!(v["error"].as_str().unwrap().contains("config.json"), "{v}");
        let (s, v) = client.admin(Method::POST, "m", Some(json!({"path": "/no/such/dir"}))).await;
        assert_eq!(s, 422, "{v}");
        assert!(v["error"].as_str().unwrap().contains("/no/such/dir"), "{v}");
        let (s, rev, logits) = client.rerank(None, &query, &docs).await;
        assert_eq!((s, rev), (200, 2));
        assert!(close(&logits, &new), "{logits:?}");
        let (s, v) = client.admin(Method::POST, "m", Some(json!({"path": 7}))).await;
        assert_eq!(s, 422, "{v}");
        let (s, v) = client.admin(Method::POST, "a b", Some(json!({"path": bert}))).await;
        assert_eq!(s, 422, "{v}");
        let (s, v) = client.admin(Method::POST, "fresh", Some(json!({}))).await;
        assert_eq!(s, 422, "{v}");
        assert!(v["error"].as_str().unwrap().contains("path"), "{v}");

        // Add a model, use it, remove it; the default model cannot be removed.
        let (s, v) = client.admin(Method::POST, "extra", Some(json!({"path": bert}))).await;
        assert_eq!((s, v["revision"].clone(), v["replaced_revision"].clone()), (200, json!(3), Value::Null), "{v}");
        let (s, rev, logits) = client.rerank(Some("extra"), &query, &docs).await;
        assert_eq!((s, rev, close(&logits, &old)), (200, 3, true));
        let (s, v) = client.admin(Method::DELETE, "extra", None).await;
        assert_eq!((s, v["removed"].clone()), (200, json!("extra")), "{v}");
        let (s, _, _) = client.rerank(Some("extra"), &query, &docs).await;
        assert_eq!(s, 404);
        let (s, v) = client.admin(Method::DELETE, "extra", None).await;
        assert_eq!(s, 404, "{v}");
        let (s, v) = client.admin(Method::DELETE, "m", None).await;
        assert_eq!(s, 409, "{v}");
        let (s, _, v) = client.send(Method::DELETE, "/admin/models/m", "", None).await;
        assert_eq!(s, 401, "{v}");

        // SIGHUP reloads every model from its path: m comes back from XLM-R as revision 4.
        signal(&child, "-HUP");
        let start = Instant::now();
        loop {
            let (s, rev, logits) = client.rerank(None, &query, &docs).await;
            assert_eq!(s, 200);
            if rev == 4 {
                assert!(close(&logits, &new), "{logits:?}");
                break;
            }
            assert_eq!(rev, 2, "before the reload");
            assert!(start.elapsed() < Duration::from_secs(60), "no reload in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let lines = drain_lines(&stderr, Duration::from_secs(5));
    for want in [
        "model m revision 1 freed",
        "model extra revision 3 freed",
        "model m revision 2 freed",
    ] {
        assert!(
            lines.iter().any(|l| l.ends_with(want)),
            "{want:?} not in {lines:#?}"
        );
    }
}

/// `crossrank serve --stdio` with an image-text model and the image limits as flags: every
/// line answered once, in the status the issue gives (a good image 200 scored as the library
/// scores it, a remote URL and a corrupt image 422, over --max-image-pixels and
/// --max-image-bytes 413, a text document 422), then exit 0.
#[test]
fn stdio_answers_image_documents_with_their_statuses() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let read = |f: &str| std::fs::read(data_dir().join("images").join(f)).unwrap();
    let (alpha, wide) = (read("alpha.png"), read("wide.png"));
    let uri = |b: &[u8]| format!("data:image/png;base64,{}", b64(b));
    let doc = |src: String| json!({ "image": src });
    let lines = [
        json!({"id": 1, "query": "a cat", "documents": [doc(uri(&alpha))], "return_documents": true}),
        json!({"id": 2, "query": "a cat", "documents": [doc("https://example.com/a.png".into())]}),
        json!({"id": 3, "query": "a cat", "documents": [doc(uri(&alpha)), doc(uri(&alpha[..300]))]}),
        json!({"id": 4, "query": "a cat", "documents": [doc(uri(&wide))]}),
        json!({"id": 5, "query": "a cat", "documents": [doc(uri(&[1u8; 7000]))]}),
        json!({"id": 6, "query": "a cat", "documents": ["text"]}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let model = model_dir("blip-itm-tiny").display().to_string();
    let flags = ["--max-image-pixels", "1200", "--max-image-bytes", "6000"];
    let (out, _) = run_stdio(
        &[&flags[..], &["--model", &model]].concat(),
        input.into_bytes(),
    );
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?}: {e}")))
        .collect();
    assert_eq!(answers.len(), lines.len(), "stdout:\n{out}");
    let by_id = |id: u64| {
        let found: Vec<&Value> = answers.iter().filter(|a| a["id"] == id).collect();
        assert_eq!(found.len(), 1, "answers to id {id}:\n{out}");
        found[0]
    };
    let lib = Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cpu,
        &LoadOptions::default(),
    )
    .unwrap();
    let limits = crossrank::pixels::ImageLimits::default();
    let want = lib
        .rerank_images("a cat", &[&alpha], &limits, &Options::default())
        .unwrap();
    let a = by_id(1);
    assert_eq!(a["status"], 200, "{a}");
    let r = &a["result"]["results"][0];
    assert_eq!(r["relevance_score"].as_f64().unwrap() as f32, want[0].score);
    assert_eq!(r["document"]["image"], json!(uri(&alpha)));
    let refusals = [
        (2, 422, "documents[0].image: remote URLs are not fetched"),
        (3, 422, "documents[1].image: corrupt image"),
        (
            4,
            413,
            "documents[0].image: the image is 64x24 = 1536 pixels",
        ),
        (5, 413, "documents[0].image: the image is 7000 bytes"),
        (6, 422, "documents[0] is text"),
    ];
    for (id, status, msg) in refusals {
        let a = by_id(id);
        assert_eq!(a["status"], status, "{a}");
        let e = a["error"].as_str().unwrap_or_else(|| panic!("{a}"));
        assert!(e.starts_with(msg), "id {id}: {e}");
    }
}
