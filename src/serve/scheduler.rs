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
use crate::tokenize::EncodedPair;

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
    /// False once a thread has stopped: /health turns 503.
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
    pub fn start(
        reranker: Arc<Reranker>,
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
            Box::new(move || tokenize_loop(&r, &m, jobs, encoded_tx)),
        )?;
        let (r, m) = (reranker, metrics.clone());
        let inference = spawn(
            "crossrank-forward",
            Box::new(move || inference_loop(&r, &m, encoded_rx)),
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

    /// Both threads are running.
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

fn tokenize_loop(r: &Reranker, metrics: &Metrics, jobs: Receiver<Job>, out: Sender<Encoded>) {
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
fn encode(
    r: &Reranker,
    call: &Call,
) -> std::result::Result<(Vec<EncodedPair>, Vec<usize>), ApiError> {
    let mut pairs = Vec::with_capacity(call.documents());
    let mut lens = Vec::with_capacity(call.groups.len());
    for (g, group) in call.groups.iter().enumerate() {
        let encoded = r
            .encode(&group.query, &group.docs, None)
            .map_err(|e| match e {
                Error::Input(m) => ApiError::validation(m),
                other => ApiError::backend(other.to_string()),
            })?;
        if !call.truncate {
            if let Some(i) = encoded.iter().position(|p| p.truncated) {
                let at = if call.groups.len() > 1 {
                    format!("groups[{g}].documents[{i}]")
                } else {
                    format!("document {i}")
                };
                return Err(ApiError::too_large(format!(
                    "{at} with the query is longer than the model's max length of {} tokens, and truncate is false",
                    r.tokenizer().default_max_length()
                )));
            }
        }
        lens.push(encoded.len());
        pairs.extend(encoded);
    }
    Ok((pairs, lens))
}

fn inference_loop(r: &Reranker, metrics: &Metrics, jobs: Receiver<Encoded>) {
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
            catch_unwind(AssertUnwindSafe(|| r.score_pairs(&refs)))
        };
        let seconds = t0.elapsed().as_secs_f64();
        let logits = match outcome {
            Ok(Ok(l)) if l.len() == count => Ok(l),
            Ok(Ok(l)) => Err(format!(
                "internal error: the forward returned {} scores for {count} pairs",
                l.len()
            )),
            Ok(Err(e)) => Err(format!("the forward pass failed: {e}")),
            Err(_) => Err("the forward pass panicked".to_string()),
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
