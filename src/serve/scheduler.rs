//! Cross-request batching: a tokenizer thread and an inference thread, a queue between them.
//!
//! A request is one job (one group, or many for /rerank/batch); its query is tokenized once
//! and its pairs stay together in order. The inference thread owns the forward: it takes every
//! job that is waiting, packs their pairs front to back into forwards of at most
//! `max_batch_tokens` tokens (a large job spans several forwards, a small one shares a forward
//! with its neighbours), and answers each job when its last pair is scored. Meanwhile the
//! tokenizer thread encodes the jobs that arrive, so tokenization overlaps the forward.
//!
//! Every accepted job is answered exactly once through its oneshot channel: with its scores,
//! with the error of the forward that held its pairs (only the jobs in that forward fail), or,
//! if a thread dies, by the channel closing, which the caller turns into a 500. A job whose
//! client has gone away is dropped before its forward instead of being scored.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::api::{ApiError, Call, GroupScores};
use super::metrics::Metrics;
use crate::engine::Reranker;
use crate::error::{Error, Result};
use crate::tokenize::{EncodedPair, TruncationSide};

/// A scored request.
#[derive(Debug, Clone)]
pub struct Scored {
    pub groups: Vec<GroupScores>,
    /// Tokens of all its pairs, after truncation.
    pub tokens: usize,
    /// From acceptance to the first forward that held its pairs.
    pub queue: Duration,
    /// From that forward's start to the answer.
    pub infer: Duration,
}

pub type Reply = std::result::Result<Scored, ApiError>;

/// What the scheduler needs from a model: the two halves of a rerank call. [`Reranker`] is the
/// one implementation outside tests.
pub trait PairScorer: Send + Sync + 'static {
    /// (query, doc) for every doc, truncated on `side` to the model's default max length.
    fn encode(
        &self,
        query: &str,
        docs: &[String],
        side: TruncationSide,
    ) -> Result<Vec<EncodedPair>>;
    /// One logit per pair, in order.
    fn score(&self, pairs: &[&EncodedPair]) -> Result<Vec<f32>>;
    /// The most tokens in one call of `score` (one pair may exceed it).
    fn max_batch_tokens(&self) -> usize;
    /// The max length `encode` truncates to.
    fn max_length(&self) -> usize;
}

impl PairScorer for Reranker {
    fn encode(
        &self,
        query: &str,
        docs: &[String],
        side: TruncationSide,
    ) -> Result<Vec<EncodedPair>> {
        Reranker::encode_with(self, query, docs, None, side)
    }

    fn score(&self, pairs: &[&EncodedPair]) -> Result<Vec<f32>> {
        self.score_pairs(pairs)
    }

    fn max_batch_tokens(&self) -> usize {
        Reranker::max_batch_tokens(self)
    }

    fn max_length(&self) -> usize {
        self.tokenizer().default_max_length()
    }
}

/// Holds one place among the --max-concurrent; freed when the job is answered or dropped.
struct Permit(Arc<Metrics>);

/// Frees the job's place, then answers: a caller that sees the answer also sees the place free
/// (the stdio reader relies on it to never be refused).
fn answer(reply: oneshot::Sender<Reply>, permit: Permit, result: Reply) {
    drop(permit);
    let _ = reply.send(result);
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Job {
    call: Arc<Call>,
    reply: oneshot::Sender<Reply>,
    accepted: Instant,
    permit: Permit,
}

struct Encoded {
    pairs: Vec<EncodedPair>,
    group_lens: Vec<usize>,
    reply: oneshot::Sender<Reply>,
    accepted: Instant,
    permit: Permit,
}

/// A job in the inference thread: its pairs, the logits so far, the next pair to schedule.
struct Active {
    job: Encoded,
    logits: Vec<f32>,
    next: usize,
    first_forward: Option<Instant>,
}

pub struct Scheduler {
    submit: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    max_concurrent: usize,
    /// False once a thread has stopped or a forward panicked: /health turns 503.
    alive: Arc<AtomicBool>,
}

/// Marks the scheduler dead when its thread ends, also by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Scheduler {
    /// Starts the tokenizer and inference threads over a loaded model.
    pub fn start<S: PairScorer>(
        reranker: Arc<S>,
        metrics: Arc<Metrics>,
        max_concurrent: usize,
    ) -> Result<Self> {
        let (submit, jobs) = mpsc::channel::<Job>();
        let (encoded_tx, encoded_rx) = mpsc::channel::<Encoded>();
        let alive = Arc::new(AtomicBool::new(true));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            let guard = AliveGuard(alive.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let _guard = guard;
                    f()
                })
                .map_err(|e| Error::Internal(format!("cannot start the {name} thread: {e}")))
        };
        let (r, m) = (reranker.clone(), metrics.clone());
        let tokenizer = spawn(
            "crossrank-tokenize",
            Box::new(move || tokenize_loop(&*r, &m, jobs, encoded_tx)),
        )?;
        let (r, m, a) = (reranker, metrics.clone(), alive.clone());
        let inference = spawn(
            "crossrank-forward",
            Box::new(move || inference_loop(&*r, &m, &a, encoded_rx)),
        )?;
        Ok(Scheduler {
            submit: Mutex::new(Some(submit)),
            threads: Mutex::new(vec![tokenizer, inference]),
            metrics,
            max_concurrent,
            alive,
        })
    }

    /// Queues a request, or refuses it at once with 503 past --max-concurrent.
    pub fn submit(
        &self,
        call: Arc<Call>,
    ) -> std::result::Result<oneshot::Receiver<Reply>, ApiError> {
        let unavailable = || ApiError::new(503, "unavailable", "the server is shutting down");
        let depth = &self.metrics.queue_depth;
        if depth.fetch_add(1, Ordering::AcqRel) >= self.max_concurrent as u64 {
            depth.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overloaded();
            return Err(ApiError::new(
                503,
                "overloaded",
                format!(
                    "{} requests are already waiting (--max-concurrent); retry later",
                    self.max_concurrent
                ),
            ));
        }
        let permit = Permit(self.metrics.clone());
        let (reply, rx) = oneshot::channel();
        let job = Job {
            call,
            reply,
            accepted: Instant::now(),
            permit,
        };
        let sender = self.submit.lock().map_err(|_| unavailable())?;
        match sender.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| unavailable())?,
            None => return Err(unavailable()),
        }
        Ok(rx)
    }

    /// Both threads are running and no forward has panicked.
    pub fn healthy(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Stops taking jobs, lets the threads answer every job already queued, and joins them.
    pub fn shutdown(&self) {
        if let Ok(mut s) = self.submit.lock() {
            s.take();
        }
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tokenize_loop<S: PairScorer>(
    r: &S,
    metrics: &Metrics,
    jobs: Receiver<Job>,
    out: Sender<Encoded>,
) {
    for job in jobs {
        if job.reply.is_closed() {
            metrics.cancelled();
            continue;
        }
        match encode(r, &job.call) {
            Err(e) => answer(job.reply, job.permit, Err(e)),
            Ok((pairs, group_lens)) if pairs.is_empty() => {
                let scored = Scored {
                    groups: group_lens.iter().map(|_| GroupScores::default()).collect(),
                    tokens: 0,
                    queue: job.accepted.elapsed(),
                    infer: Duration::ZERO,
                };
                answer(job.reply, job.permit, Ok(scored));
            }
            Ok((pairs, group_lens)) => {
                let encoded = Encoded {
                    pairs,
                    group_lens,
                    reply: job.reply,
                    accepted: job.accepted,
                    permit: job.permit,
                };
                // If the inference thread is gone, the job is dropped here and its caller
                // sees the channel close.
                if out.send(encoded).is_err() {
                    return;
                }
            }
        }
    }
}

/// Every group's pairs, flattened, and the group sizes.
fn encode<S: PairScorer>(
    r: &S,
    call: &Call,
) -> std::result::Result<(Vec<EncodedPair>, Vec<usize>), ApiError> {
    let mut pairs = Vec::with_capacity(call.documents());
    let mut lens = Vec::with_capacity(call.groups.len());
    for (g, group) in call.groups.iter().enumerate() {
        let encoded = r
            .encode(&group.query, &group.docs, call.truncation_side)
            .map_err(|e| match e {
                Error::Input(m) => ApiError::validation(m),
                other => ApiError::backend(other.to_string()),
            })?;
        let at = |i: usize| {
            if call.groups.len() > 1 {
                format!("groups[{g}].documents[{i}]")
            } else {
                format!("document {i}")
            }
        };
        // Refused here, with this request's own 4xx: inside a shared forward it would fail
        // every request of the batch.
        if let Some(i) = encoded.iter().position(|p| p.ids.is_empty()) {
            return Err(ApiError::validation(format!(
                "{} with the query encodes to no tokens; the model needs at least one",
                at(i)
            )));
        }
        if !call.truncate {
            if let Some(i) = encoded.iter().position(|p| p.truncated) {
                return Err(ApiError::too_large(format!(
                    "{} with the query is longer than the model's max length of {} tokens, and truncate is false",
                    at(i),
                    r.max_length()
                )));
            }
        }
        lens.push(encoded.len());
        pairs.extend(encoded);
    }
    Ok((pairs, lens))
}

/// `alive` turns false after a forward panics: the requests in it get a 500 and the loop goes on,
/// but a model whose forward panicked may be broken (a poisoned arena), so /health says so.
fn inference_loop<S: PairScorer>(
    r: &S,
    metrics: &Metrics,
    alive: &AtomicBool,
    jobs: Receiver<Encoded>,
) {
    let limit = r.max_batch_tokens();
    let mut active: Vec<Active> = Vec::new();
    loop {
        if active.is_empty() {
            match jobs.recv() {
                Ok(job) => active.push(Active::new(job)),
                Err(_) => return,
            }
        }
        active.extend(jobs.try_iter().map(Active::new));
        // A job whose client has gone away is not scored any further.
        active.retain(|a| {
            let gone = a.job.reply.is_closed();
            if gone {
                metrics.cancelled();
            }
            !gone
        });
        if active.is_empty() {
            continue;
        }

        // Pack: (job, first pair, end) front to back, at least one pair per forward.
        let mut spans = Vec::new();
        let mut tokens = 0;
        let mut count = 0;
        'pack: for (k, a) in active.iter().enumerate() {
            let start = a.next;
            let mut end = start;
            while end < a.job.pairs.len() {
                let t = a.job.pairs[end].ids.len();
                if count > 0 && tokens + t > limit {
                    if end > start {
                        spans.push((k, start, end));
                    }
                    break 'pack;
                }
                tokens += t;
                count += 1;
                end += 1;
            }
            spans.push((k, start, end));
        }

        let t0 = Instant::now();
        let outcome = {
            let refs: Vec<&EncodedPair> = spans
                .iter()
                .flat_map(|&(k, s, e)| active[k].job.pairs[s..e].iter())
                .collect();
            catch_unwind(AssertUnwindSafe(|| r.score(&refs)))
        };
        let seconds = t0.elapsed().as_secs_f64();
        let logits = match outcome {
            Ok(Ok(l)) if l.len() == count => Ok(l),
            Ok(Ok(l)) => Err(format!(
                "internal error: the forward returned {} scores for {count} pairs",
                l.len()
            )),
            Ok(Err(e)) => Err(format!("the forward pass failed: {e}")),
            Err(_) => {
                alive.store(false, Ordering::Release);
                Err("the forward pass panicked".to_string())
            }
        };
        metrics.forward(count, tokens, seconds, logits.is_ok());

        let mut failed = vec![false; active.len()];
        match &logits {
            Ok(values) => {
                let mut at = 0;
                for &(k, s, e) in &spans {
                    let a = &mut active[k];
                    if a.first_forward.is_none() {
                        a.first_forward = Some(t0);
                        metrics.queued((t0 - a.job.accepted).as_secs_f64());
                    }
                    a.logits.extend_from_slice(&values[at..at + (e - s)]);
                    a.next = e;
                    at += e - s;
                }
            }
            Err(msg) => {
                eprintln!(
                    "crossrank serve: {msg}; failing the {} requests in it",
                    spans.len()
                );
                for &(k, _, _) in &spans {
                    failed[k] = true;
                }
            }
        }
        // Answer the failed and the finished jobs; keep the rest, in order.
        for (k, a) in std::mem::take(&mut active).into_iter().enumerate() {
            if failed[k] {
                let msg = logits.as_ref().err().cloned().unwrap_or_default();
                answer(a.job.reply, a.job.permit, Err(ApiError::backend(msg)));
            } else if a.next == a.job.pairs.len() {
                a.finish();
            } else {
                active.push(a);
            }
        }
    }
}

impl Active {
    fn new(job: Encoded) -> Self {
        let n = job.pairs.len();
        Active {
            job,
            logits: Vec::with_capacity(n),
            next: 0,
            first_forward: None,
        }
    }

    fn finish(self) {
        let first = self.first_forward.unwrap_or_else(Instant::now);
        let mut groups = Vec::with_capacity(self.job.group_lens.len());
        let mut at = 0;
        for &n in &self.job.group_lens {
            groups.push(GroupScores {
                logits: self.logits[at..at + n].to_vec(),
            });
            at += n;
        }
        let scored = Scored {
            groups,
            tokens: self.job.pairs.iter().map(|p| p.ids.len()).sum(),
            queue: first - self.job.accepted,
            infer: first.elapsed(),
        };
        answer(self.job.reply, self.job.permit, Ok(scored));
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler over a fake model whose forwards are recorded and can be held, so that
    //! what each forward packs is known exactly.

    use std::sync::Condvar;

    use super::*;
    use crate::serve::api::{GroupIn, Route};

    /// A doc "T:N" encodes to N tokens of id T, and scores T + N/1000. A forward holding id 999
    /// fails, one holding 666 panics, and one holding 100 waits until `release`.
    struct Fake {
        limit: usize,
        held: Mutex<bool>,
        forwards: Mutex<Vec<Vec<u32>>>,
        queries: Mutex<Vec<String>>,
        changed: Condvar,
    }

    impl PairScorer for Fake {
        fn encode(
            &self,
            query: &str,
            docs: &[String],
            _side: TruncationSide,
        ) -> Result<Vec<EncodedPair>> {
            let pairs = docs
                .iter()
                .map(|d| {
                    let (t, n) = d.split_once(':').unwrap();
                    let (t, n): (u32, usize) = (t.parse().unwrap(), n.parse().unwrap());
                    EncodedPair {
                        ids: vec![t; n],
                        type_ids: vec![0; n],
                        truncated: false,
                    }
                })
                .collect();
            self.queries.lock().unwrap().push(query.to_string());
            self.changed.notify_all();
            Ok(pairs)
        }

        fn score(&self, pairs: &[&EncodedPair]) -> Result<Vec<f32>> {
            let tags: Vec<u32> = pairs.iter().map(|p| p.ids[0]).collect();
            self.forwards.lock().unwrap().push(tags.clone());
            self.changed.notify_all();
            if tags.contains(&100) {
                let held = self.held.lock().unwrap();
                let _held = self.changed.wait_while(held, |h| *h).unwrap();
            }
            if tags.contains(&999) {
                return Err(Error::Internal("poisoned pair".into()));
            }
            assert!(!tags.contains(&666), "a panicking forward");
            Ok(pairs
                .iter()
                .map(|p| p.ids[0] as f32 + p.ids.len() as f32 / 1000.0)
                .collect())
        }

        fn max_batch_tokens(&self) -> usize {
            self.limit
        }

        fn max_length(&self) -> usize {
            512
        }
    }

    struct Rig {
        fake: Arc<Fake>,
        metrics: Arc<Metrics>,
        scheduler: Scheduler,
    }

    impl Rig {
        /// A scheduler whose first forward is held until `release`.
        fn held(limit: usize, max_concurrent: usize) -> (Rig, oneshot::Receiver<Reply>) {
            let fake = Arc::new(Fake {
                limit,
                held: Mutex::new(true),
                forwards: Mutex::default(),
                queries: Mutex::default(),
                changed: Condvar::new(),
            });
            let metrics = Arc::new(Metrics::default());
            let scheduler =
                Scheduler::start(fake.clone(), metrics.clone(), max_concurrent).unwrap();
            let rig = Rig {
                fake,
                metrics,
                scheduler,
            };
            let gate = rig.submit("gate", &["100:1"]).unwrap();
            // The held forward holds the gate alone: wait until it has started.
            let forwards = rig.fake.forwards.lock().unwrap();
            let (forwards, timeout) = rig
                .fake
                .changed
                .wait_timeout_while(forwards, Duration::from_secs(10), |f| f.is_empty())
                .unwrap();
            assert!(!timeout.timed_out(), "the held forward never started");
            assert_eq!(*forwards, vec![vec![100]]);
            drop(forwards);
            (rig, gate)
        }

        fn submit(
            &self,
            query: &str,
            docs: &[&str],
        ) -> std::result::Result<oneshot::Receiver<Reply>, ApiError> {
            self.scheduler.submit(Arc::new(Call {
                route: Route::Tei,
                groups: vec![GroupIn {
                    query: query.into(),
                    docs: docs.iter().map(|d| d.to_string()).collect(),
                    top_n: None,
                }],
                raw_scores: true,
                return_docs: false,
                truncate: true,
                truncation_side: TruncationSide::Right,
                model: None,
            }))
        }

        /// Waits until every job submitted so far is tokenized and queued (a sentinel job with
        /// no documents, answered by the tokenizer thread, marks the point), then lets the held
        /// forward go.
        fn release(&self) {
            let sentinel = self.submit("sentinel", &[]).unwrap();
            let queries = self.fake.queries.lock().unwrap();
            let (queries, timeout) = self
                .fake
                .changed
                .wait_timeout_while(queries, Duration::from_secs(10), |q| {
                    !q.iter().any(|x| x == "sentinel")
                })
                .unwrap();
            assert!(!timeout.timed_out(), "the sentinel was never tokenized");
            drop(queries);
            assert!(sentinel.blocking_recv().unwrap().is_ok());
            *self.fake.held.lock().unwrap() = false;
            self.fake.changed.notify_all();
        }

        fn forwards(&self) -> Vec<Vec<u32>> {
            self.fake.forwards.lock().unwrap().clone()
        }
    }

    fn logits(rx: oneshot::Receiver<Reply>) -> std::result::Result<Vec<f32>, ApiError> {
        rx.blocking_recv()
            .expect("answered")
            .map(|s| s.groups[0].logits.clone())
    }

    #[test]
    fn requests_share_forwards_and_large_ones_are_split_in_order() {
        let (rig, gate) = Rig::held(10, 16);
        let a = rig.submit("a", &["1:4", "2:4"]).unwrap();
        let b = rig.submit("b", &["3:4"]).unwrap();
        let c = rig.submit("c", &["4:3", "5:3", "6:3", "7:3"]).unwrap();
        rig.release();
        assert_eq!(logits(gate).unwrap(), vec![100.001]);
        assert_eq!(logits(a).unwrap(), vec![1.004, 2.004]);
        assert_eq!(logits(b).unwrap(), vec![3.004]);
        assert_eq!(logits(c).unwrap(), vec![4.003, 5.003, 6.003, 7.003]);
        // Front to back, at most 10 tokens a forward: b shares with c, c spans two forwards.
        assert_eq!(
            rig.forwards(),
            vec![vec![100], vec![1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        rig.scheduler.shutdown();
        assert_eq!(rig.metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_pair_of_no_tokens_is_its_own_requests_422_not_a_failed_forward() {
        let (rig, gate) = Rig::held(10, 16);
        let a = rig.submit("a", &["1:3"]).unwrap();
        let empty = rig.submit("e", &["2:2", "5:0"]).unwrap();
        let c = rig.submit("c", &["3:2"]).unwrap();
        rig.release();
        assert!(logits(gate).is_ok());
        let e = logits(empty).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.message
                .contains("document 1 with the query encodes to no tokens"),
            "{}",
            e.message
        );
        assert_eq!(logits(a).unwrap(), vec![1.003]);
        assert_eq!(logits(c).unwrap(), vec![3.002]);
        assert!(rig.forwards().iter().flatten().all(|&t| t != 2 && t != 5));
    }

    #[test]
    fn a_failed_forward_fails_only_the_requests_in_it() {
        let (rig, gate) = Rig::held(10, 16);
        let a = rig.submit("a", &["1:8"]).unwrap();
        let poisoned = rig.submit("p", &["999:4"]).unwrap();
        // c's first pair shares the failing forward; its second pair would have come later.
        let c = rig.submit("c", &["3:4", "4:4"]).unwrap();
        let d = rig.submit("d", &["5:2"]).unwrap();
        rig.release();
        assert!(logits(gate).is_ok());
        assert_eq!(logits(a).unwrap(), vec![1.008]);
        let e = logits(poisoned).unwrap_err();
        assert_eq!(e.status, 500);
        assert!(e.message.contains("poisoned pair"), "{}", e.message);
        assert_eq!(logits(c).unwrap_err().status, 500);
        assert_eq!(logits(d).unwrap(), vec![5.002]);
        assert_eq!(
            rig.forwards(),
            vec![vec![100], vec![1], vec![999, 3], vec![5]]
        );
        // A panicking forward is a 500 too; the scheduler keeps answering, and says it is
        // unhealthy from then on.
        assert!(rig.scheduler.healthy());
        let boom = rig.submit("boom", &["666:1"]).unwrap();
        let e = logits(boom).unwrap_err();
        assert!(e.message.contains("panicked"), "{}", e.message);
        assert!(!rig.scheduler.healthy());
        assert_eq!(
            logits(rig.submit("after", &["8:1"]).unwrap()).unwrap(),
            vec![8.001]
        );
        assert!(rig
            .metrics
            .render()
            .contains("crossrank_forward_failures_total 2\n"));
    }

    /// crossrank_pairs_total and crossrank_tokens_total count scored pairs only: the pairs of
    /// a failed forward count as a failure, not as work done.
    #[test]
    fn metrics_count_only_the_pairs_of_forwards_that_succeeded() {
        let (rig, gate) = Rig::held(10, 16);
        let a = rig.submit("a", &["1:8"]).unwrap();
        let poisoned = rig.submit("p", &["999:4", "3:5"]).unwrap();
        let d = rig.submit("d", &["5:2"]).unwrap();
        rig.release();
        assert!(logits(gate).is_ok());
        assert!(logits(a).is_ok());
        assert_eq!(logits(poisoned).unwrap_err().status, 500);
        assert!(logits(d).is_ok());
        assert_eq!(
            rig.forwards(),
            vec![vec![100], vec![1], vec![999, 3], vec![5]]
        );
        // Scored: the gate (1 token), a (8) and d (2); not the 9 tokens of the failed forward.
        let text = rig.metrics.render();
        for line in [
            "crossrank_pairs_total 3\n",
            "crossrank_tokens_total 11\n",
            "crossrank_forward_failures_total 1\n",
            "crossrank_batch_pairs_count 4\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn a_request_whose_client_left_is_not_scored() {
        let (rig, gate) = Rig::held(10, 16);
        drop(rig.submit("gone", &["1:2"]).unwrap());
        let b = rig.submit("b", &["2:2"]).unwrap();
        rig.release();
        assert!(logits(gate).is_ok());
        assert_eq!(logits(b).unwrap(), vec![2.002]);
        assert_eq!(rig.forwards(), vec![vec![100], vec![2]]);
        assert!(rig
            .metrics
            .render()
            .contains("crossrank_cancelled_total 1\n"));
        rig.scheduler.shutdown();
        assert_eq!(rig.metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    #[test]
    fn past_max_concurrent_the_answer_is_503_at_once() {
        let (rig, gate) = Rig::held(10, 2);
        let a = rig.submit("a", &["1:1"]).unwrap();
        let refused = rig.submit("b", &["2:1"]).unwrap_err();
        assert_eq!((refused.status, refused.kind), (503, "overloaded"));
        assert!(refused.message.contains("--max-concurrent"));
        // The sentinel of `release` needs a place: free one by answering the gate first.
        *rig.fake.held.lock().unwrap() = false;
        rig.fake.changed.notify_all();
        assert!(logits(gate).is_ok());
        assert_eq!(logits(a).unwrap(), vec![1.001]);
        assert_eq!(
            logits(rig.submit("c", &["3:1"]).unwrap()).unwrap(),
            vec![3.001]
        );
        assert_eq!(rig.metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    #[test]
    fn shutdown_answers_every_queued_request() {
        let (rig, gate) = Rig::held(10, 16);
        let queued: Vec<_> = (1..=5)
            .map(|t| rig.submit("q", &[&format!("{t}:3")]).unwrap())
            .collect();
        rig.release();
        rig.scheduler.shutdown();
        assert!(logits(gate).is_ok());
        for (t, rx) in (1..=5).zip(queued) {
            assert_eq!(logits(rx).unwrap(), vec![t as f32 + 0.003]);
        }
        let refused = rig.submit("late", &["1:1"]).unwrap_err();
        assert_eq!(refused.status, 503);
    }
}
