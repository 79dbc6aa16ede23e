//! Cross-request batching: a tokenizer thread, a planner thread, and one inference thread per
//! device (one copy of the model on each), channels between them.
//!
//! A request is one job (one group, or many for /rerank/batch); its query is tokenized once
//! and its pairs stay together in order. The planner owns the queue: each time a device is
//! idle, it plans that device's next forward of at most `max_batch_tokens` tokens, filled
//! fairly from every job waiting (see [`plan`]): a small request that arrives while a large
//! one is being scored gets its pairs into the next forward, and a large request alone still
//! fills every forward. With one device the forwards run one after the other, each planned
//! when the previous one has ended; with several, a large request is scored on all of them at
//! once. Each job is answered when its last pair is scored, wherever its forwards ran.
//! Meanwhile the tokenizer thread encodes the jobs that arrive, so tokenization overlaps the
//! forwards.
//!
//! Every accepted job is answered exactly once through its oneshot channel: with its scores,
//! with the error of the forward that held its pairs (only the jobs in that forward fail), with
//! a 504 once its deadline has passed (its pairs not yet scored are dropped before their
//! forward), or, if a thread dies, by the channel closing, which the caller turns into a 500. A
//! job whose client has gone away is dropped before its forward instead of being scored.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::api::{ApiError, Call, GroupScores, Timeout};
use super::metrics::{Metrics, ModelMetrics};
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
    /// (query, doc) for every doc, truncated on `side` to the model's default max length; an
    /// LLM reranker's prompt carries `instruction` (or its template's default).
    fn encode(
        &self,
        query: &str,
        docs: &[String],
        side: TruncationSide,
        instruction: Option<&str>,
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
        instruction: Option<&str>,
    ) -> Result<Vec<EncodedPair>> {
        Reranker::encode_for(self, query, docs, None, side, instruction)
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

/// The time deadlines are checked against: `Instant::now`, or a hand-moved clock in tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// When a request's budget runs out.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub timeout: Timeout,
}

/// A queued request's answer, to be awaited.
pub struct Pending {
    pub reply: oneshot::Receiver<Reply>,
    pub deadline: Option<Deadline>,
}

impl Pending {
    /// The answer; at the deadline a 504 at once, without waiting for a forward in progress
    /// (the scheduler then drops the request's remaining pairs before their forward).
    pub async fn answer(self) -> Reply {
        let closed = || {
            ApiError::backend(
                "the request was dropped: the inference thread stopped (see the server log)",
            )
        };
        match self.deadline {
            None => self.reply.await.map_err(|_| closed())?,
            Some(d) => {
                let at = tokio::time::Instant::from_std(d.at);
                match tokio::time::timeout_at(at, self.reply).await {
                    Ok(reply) => reply.map_err(|_| closed())?,
                    Err(_) => Err(ApiError::deadline(d.timeout)),
                }
            }
        }
    }
}

/// Holds one place among the --max-concurrent; freed when the job is answered or dropped.
pub(super) struct Permit(Arc<Metrics>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a job is not scored any further.
pub(super) enum Verdict {
    /// Its deadline has passed: answered 504.
    Expired(Timeout),
    /// Its client has gone away: dropped.
    Gone,
}

/// What answers a job, whichever thread holds it.
pub(super) struct Ticket {
    reply: oneshot::Sender<Reply>,
    permit: Permit,
    pub(super) accepted: Instant,
    deadline: Option<Deadline>,
}

/// Takes one of the --max-concurrent places for a request, or refuses it at once with 503;
/// its deadline, if it has a budget, counts from now on `clock`. The ticket answers it (and
/// frees the place), the pending side waits for that answer.
pub(super) fn admit(
    metrics: &Arc<Metrics>,
    max_concurrent: usize,
    clock: &Clock,
    timeout: Option<Timeout>,
) -> std::result::Result<(Ticket, Pending), ApiError> {
    let depth = &metrics.queue_depth;
    if depth.fetch_add(1, Ordering::AcqRel) >= max_concurrent as u64 {
        depth.fetch_sub(1, Ordering::AcqRel);
        metrics.overloaded();
        return Err(ApiError::new(
            503,
            "overloaded",
            format!(
                "{max_concurrent} requests are already waiting (--max-concurrent); retry later"
            ),
        ));
    }
    let permit = Permit(metrics.clone());
    // A budget too large for an Instant is no deadline at all.
    let deadline = timeout.and_then(|timeout| {
        let at = clock().checked_add(Duration::from_millis(timeout.ms))?;
        Some(Deadline { at, timeout })
    });
    let (reply, rx) = oneshot::channel();
    let ticket = Ticket {
        reply,
        permit,
        accepted: Instant::now(),
        deadline,
    };
    Ok((
        ticket,
        Pending {
            reply: rx,
            deadline,
        },
    ))
}

impl Ticket {
    /// Frees the job's place, then answers: a caller that sees the answer also sees the place
    /// free (the stdio reader relies on it to never be refused).
    pub(super) fn answer(self, result: Reply) {
        drop(self.permit);
        let _ = self.reply.send(result);
    }

    /// Whether the job is past its deadline at `now` (checked first: the caller's own timer
    /// closes the channel at the deadline) or its client has gone away.
    pub(super) fn verdict(&self, now: Instant) -> Option<Verdict> {
        match self.deadline {
            Some(d) if now >= d.at => Some(Verdict::Expired(d.timeout)),
            _ if self.reply.is_closed() => Some(Verdict::Gone),
            _ => None,
        }
    }

    pub(super) fn settle(self, verdict: Verdict, metrics: &ModelMetrics) {
        match verdict {
            Verdict::Expired(timeout) => {
                metrics.deadline_exceeded();
                self.answer(Err(ApiError::deadline(timeout)));
            }
            Verdict::Gone => metrics.cancelled(),
        }
    }
}

struct Job {
    call: Arc<Call>,
    ticket: Ticket,
}

struct Encoded {
    pairs: Vec<EncodedPair>,
    group_lens: Vec<usize>,
    ticket: Ticket,
}

/// The sending end of a queue and the threads that drain it: closed and joined by `shutdown`
/// (and on drop), after the threads have answered every job already sent. The text scheduler's
/// and the image queue's.
pub(super) struct Feed<T> {
    submit: Mutex<Option<Sender<T>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<T> Feed<T> {
    pub(super) fn new(submit: Sender<T>, threads: Vec<JoinHandle<()>>) -> Self {
        Feed {
            submit: Mutex::new(Some(submit)),
            threads: Mutex::new(threads),
        }
    }

    /// Queues `job`; a 503 once the feed is shut down.
    pub(super) fn send(&self, job: T) -> std::result::Result<(), ApiError> {
        let unavailable = || ApiError::new(503, "unavailable", "the server is shutting down");
        let sender = self.submit.lock().map_err(|_| unavailable())?;
        match sender.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| unavailable()),
            None => Err(unavailable()),
        }
    }

    /// Stops taking jobs, lets the threads answer every job already queued, and joins them.
    pub(super) fn shutdown(&self) {
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

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub struct Scheduler {
    feed: Feed<Job>,
    metrics: Arc<Metrics>,
    max_concurrent: usize,
    clock: Clock,
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
    /// Starts the tokenizer thread, the planner and one inference thread per copy of the model
    /// in `devices` (one per device; the first also tokenizes); its forwards count in
    /// `metrics.model(model)`, its requests in the server's queue depth.
    pub fn start<S: PairScorer>(
        devices: Vec<Arc<S>>,
        metrics: Arc<Metrics>,
        model: &str,
        max_concurrent: usize,
    ) -> Result<Self> {
        Self::start_with_clock(
            devices,
            metrics,
            model,
            max_concurrent,
            Arc::new(Instant::now),
        )
    }

    /// [`Scheduler::start`] with deadlines measured on `clock`.
    pub fn start_with_clock<S: PairScorer>(
        devices: Vec<Arc<S>>,
        metrics: Arc<Metrics>,
        model: &str,
        max_concurrent: usize,
        clock: Clock,
    ) -> Result<Self> {
        let first = devices
            .first()
            .cloned()
            .ok_or_else(|| Error::Internal("a scheduler needs at least one device".into()))?;
        // Every forward fits every device's arena.
        let limit = devices
            .iter()
            .map(|d| d.max_batch_tokens())
            .min()
            .unwrap_or(1);
        let stats = metrics.model(model);
        let (submit, jobs) = mpsc::channel::<Job>();
        let (events, events_rx) = mpsc::channel::<Event>();
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
        let mut threads = Vec::with_capacity(devices.len() + 2);
        let (m, c, out) = (stats.clone(), clock.clone(), ClosedGuard(events.clone()));
        threads.push(spawn(
            "crossrank-tokenize",
            Box::new(move || tokenize_loop(&*first, &m, &c, jobs, out)),
        )?);
        let mut feeds = Vec::with_capacity(devices.len());
        for (d, r) in devices.into_iter().enumerate() {
            let (feed, forwards) = mpsc::channel::<Forward>();
            feeds.push(feed);
            let (m, a, done) = (stats.clone(), alive.clone(), events.clone());
            threads.push(spawn(
                &format!("crossrank-forward-{d}"),
                Box::new(move || device_loop(&*r, d, &m, &a, forwards, done)),
            )?);
        }
        drop(events);
        let (m, c) = (stats, clock.clone());
        threads.push(spawn(
            "crossrank-plan",
            Box::new(move || planner_loop(&m, &c, limit, events_rx, feeds)),
        )?);
        Ok(Scheduler {
            feed: Feed::new(submit, threads),
            metrics,
            max_concurrent,
            clock,
            alive,
        })
    }

    /// Queues a request, or refuses it at once with 503 past --max-concurrent. Its deadline,
    /// if it has a budget, counts from now.
    pub fn submit(&self, call: Arc<Call>) -> std::result::Result<Pending, ApiError> {
        let (ticket, pending) = admit(
            &self.metrics,
            self.max_concurrent,
            &self.clock,
            call.timeout,
        )?;
        self.feed.send(Job { call, ticket })?;
        Ok(pending)
    }

    /// Both threads are running and no forward has panicked.
    pub fn healthy(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Stops taking jobs, lets the threads answer every job already queued, and joins them.
    pub fn shutdown(&self) {
        self.feed.shutdown();
    }
}

fn tokenize_loop<S: PairScorer>(
    r: &S,
    metrics: &ModelMetrics,
    clock: &Clock,
    jobs: Receiver<Job>,
    out: ClosedGuard,
) {
    for Job { call, ticket } in jobs {
        if let Some(verdict) = ticket.verdict(clock()) {
            ticket.settle(verdict, metrics);
            continue;
        }
        match encode(r, &call) {
            Err(e) => ticket.answer(Err(e)),
            Ok((pairs, group_lens)) if pairs.is_empty() => {
                let scored = Scored {
                    groups: group_lens.iter().map(|_| GroupScores::default()).collect(),
                    tokens: 0,
                    queue: ticket.accepted.elapsed(),
                    infer: Duration::ZERO,
                };
                ticket.answer(Ok(scored));
            }
            Ok((pairs, group_lens)) => {
                let encoded = Encoded {
                    pairs,
                    group_lens,
                    ticket,
                };
                // If the inference thread is gone, the job is dropped here and its caller
                // sees the channel close.
                if out.0.send(Event::Job(encoded)).is_err() {
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
            .encode(
                &group.query,
                &group.docs,
                call.truncation_side,
                call.instruction.as_deref(),
            )
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

/// How many of its next pairs each waiting request puts into the next forward of at most
/// `limit` tokens. `waiting[k]` are request k's pairs not yet scored, oldest request first.
///
/// The policy: the forward is filled one pair at a time, and each pair goes to the request
/// with the fewest tokens in this forward so far, the oldest on a tie. A request whose next
/// pair does not fit stops taking for this forward (its pairs stay in order); the first pair
/// always goes in, however long. So:
/// - a request alone fills every forward exactly as the library's front-to-back packing does;
/// - requests that need less than an even share of the budget get all their pairs in, and the
///   rest is split evenly among the larger ones (max-min fairness, to within a pair);
/// - with k requests waiting and pairs of at most L tokens, a request that does not finish in a
///   forward got more than `limit / k - L` tokens of it (when it stopped taking, the others had
///   at most L more than it, and the next pair did not fit: `k * (x + L) - L > limit - L`);
/// - ties go to the oldest, so a request waits only behind older ones, never younger.
fn plan(waiting: &[&[EncodedPair]], limit: usize) -> Vec<usize> {
    let mut takes = vec![0; waiting.len()];
    let mut turn: BinaryHeap<Reverse<(usize, usize)>> = (0..waiting.len())
        .filter(|&k| !waiting[k].is_empty())
        .map(|k| Reverse((0, k)))
        .collect();
    let mut pairs = 0;
    let mut tokens = 0;
    while let Some(Reverse((taken, k))) = turn.pop() {
        let t = waiting[k][takes[k]].ids.len();
        if pairs > 0 && tokens + t > limit {
            continue;
        }
        pairs += 1;
        tokens += t;
        takes[k] += 1;
        if takes[k] < waiting[k].len() {
            turn.push(Reverse((taken + t, k)));
        }
    }
    takes
}

/// What the planner thread hears: a tokenized job, the end of a forward, or the end of input.
enum Event {
    Job(Encoded),
    Done(Done),
    /// The tokenizer thread has ended: no job will come.
    Closed,
}

/// Sends [`Event::Closed`] when the tokenizer thread ends, also by panic.
struct ClosedGuard(Sender<Event>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Closed);
    }
}

/// One forward for a device: the pairs `start..end` of each job, in that order.
struct Forward {
    spans: Vec<Span>,
}

/// Pairs `start..end` of job `id`, whose pairs are `pairs`.
struct Span {
    id: u64,
    pairs: Arc<Vec<EncodedPair>>,
    start: usize,
    end: usize,
}

/// A forward's end: its logits in span order, or why it failed.
struct Done {
    device: usize,
    spans: Vec<(u64, usize, usize)>,
    logits: std::result::Result<Vec<f32>, String>,
    started: Instant,
}

/// A job in the planner: its pairs, the logits so far by pair, the next pair to schedule and
/// how many are scored.
struct Active {
    id: u64,
    job: Encoded,
    pairs: Arc<Vec<EncodedPair>>,
    logits: Vec<f32>,
    next: usize,
    scored: usize,
    first_forward: Option<Instant>,
}

/// The planner: keeps the jobs, plans a forward (see [`plan`]) for each idle device, and
/// answers each job when its last pair is scored. With one device it plans each forward when
/// the previous one has ended, over every job waiting by then; with several, each device gets
/// the next forward as soon as it is idle, so one queue feeds them all.
fn planner_loop(
    metrics: &ModelMetrics,
    clock: &Clock,
    limit: usize,
    events: Receiver<Event>,
    devices: Vec<Sender<Forward>>,
) {
    // Oldest first.
    let mut queue: Vec<Active> = Vec::new();
    let mut idle: Vec<usize> = (0..devices.len()).rev().collect();
    let mut next_id = 0u64;
    let mut closed = false;
    loop {
        let pending = queue.iter().any(|a| a.next < a.pairs.len());
        if closed && queue.is_empty() && idle.len() == devices.len() {
            return;
        }
        let mut handle = |e: Event, queue: &mut Vec<Active>, idle: &mut Vec<usize>| match e {
            Event::Job(mut job) => {
                let pairs = Arc::new(std::mem::take(&mut job.pairs));
                let n = pairs.len();
                queue.push(Active {
                    id: next_id,
                    job,
                    pairs,
                    logits: vec![f32::NAN; n],
                    next: 0,
                    scored: 0,
                    first_forward: None,
                });
                next_id += 1;
            }
            Event::Done(done) => {
                idle.push(done.device);
                record(queue, done, clock, metrics);
            }
            Event::Closed => closed = true,
        };
        if idle.is_empty() || !pending {
            match events.recv() {
                Ok(e) => handle(e, &mut queue, &mut idle),
                Err(_) => return,
            }
        }
        for e in events.try_iter() {
            handle(e, &mut queue, &mut idle);
        }
        if idle.is_empty() {
            continue;
        }
        // A job past its deadline or whose client has gone away is not scored any further
        // (pairs of it already on a device are ignored when they come back).
        let now = clock();
        for a in std::mem::take(&mut queue) {
            match a.job.ticket.verdict(now) {
                Some(verdict) => a.job.ticket.settle(verdict, metrics),
                None => queue.push(a),
            }
        }
        while let Some(&device) = idle.last() {
            let waiting: Vec<&[EncodedPair]> = queue.iter().map(|a| &a.pairs[a.next..]).collect();
            if waiting.iter().all(|w| w.is_empty()) {
                break;
            }
            let takes = plan(&waiting, limit);
            let mut spans = Vec::new();
            for (a, n) in queue.iter_mut().zip(takes) {
                if n > 0 {
                    spans.push(Span {
                        id: a.id,
                        pairs: a.pairs.clone(),
                        start: a.next,
                        end: a.next + n,
                    });
                    a.next += n;
                }
            }
            idle.pop();
            if devices[device].send(Forward { spans }).is_err() {
                // The device thread is gone; its jobs' callers see their channels close.
                return;
            }
        }
    }
}

/// Puts a forward's logits in place, or fails the jobs that had pairs in it; answers the jobs
/// now complete.
fn record(queue: &mut Vec<Active>, done: Done, clock: &Clock, metrics: &ModelMetrics) {
    let mut failed = Vec::new();
    match &done.logits {
        Ok(values) => {
            let mut at = 0;
            for &(id, s, e) in &done.spans {
                if let Some(a) = queue.iter_mut().find(|a| a.id == id) {
                    if a.first_forward.is_none() {
                        a.first_forward = Some(done.started);
                        metrics.queued((done.started - a.job.ticket.accepted).as_secs_f64());
                    }
                    a.logits[s..e].copy_from_slice(&values[at..at + (e - s)]);
                    a.scored += e - s;
                }
                at += e - s;
            }
        }
        Err(msg) => {
            eprintln!(
                "crossrank serve: {msg}; failing the {} requests in it",
                done.spans.len()
            );
            failed.extend(done.spans.iter().map(|&(id, _, _)| id));
        }
    }
    let now = clock();
    for a in std::mem::take(queue) {
        if failed.contains(&a.id) {
            let msg = done.logits.as_ref().err().cloned().unwrap_or_default();
            a.job.ticket.answer(Err(ApiError::backend(msg)));
        } else if a.scored == a.pairs.len() {
            a.finish(now, metrics);
        } else {
            queue.push(a);
        }
    }
}

/// One device: runs the forwards the planner sends, one at a time. `alive` turns false after a
/// forward panics: the requests in it get a 500 and the loop goes on, but a model whose forward
/// panicked may be broken (a poisoned arena), so /health says so.
fn device_loop<S: PairScorer>(
    r: &S,
    device: usize,
    metrics: &ModelMetrics,
    alive: &AtomicBool,
    forwards: Receiver<Forward>,
    done: Sender<Event>,
) {
    // Labelled by position in --device (for cuda:all, the CUDA ordinal): device names repeat.
    let name = device.to_string();
    for Forward { spans } in forwards {
        let refs: Vec<&EncodedPair> = spans
            .iter()
            .flat_map(|s| s.pairs[s.start..s.end].iter())
            .collect();
        let count = refs.len();
        let tokens: usize = refs.iter().map(|p| p.ids.len()).sum();
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| r.score(&refs)));
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
        metrics.device_forward(&name, count, logits.is_ok());
        let spans = spans.iter().map(|s| (s.id, s.start, s.end)).collect();
        let sent = done.send(Event::Done(Done {
            device,
            spans,
            logits,
            started: t0,
        }));
        if sent.is_err() {
            return;
        }
    }
}

impl Active {
    /// Answers with the scores, or with the 504 its caller has already given if the deadline
    /// passed during its last forward.
    fn finish(self, now: Instant, metrics: &ModelMetrics) {
        let ticket = self.job.ticket;
        if let Some(verdict @ Verdict::Expired(_)) = ticket.verdict(now) {
            ticket.settle(verdict, metrics);
            return;
        }
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
            tokens: self.pairs.iter().map(|p| p.ids.len()).sum(),
            queue: first - ticket.accepted,
            infer: first.elapsed(),
        };
        ticket.answer(Ok(scored));
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler over a fake model whose forwards are recorded and can be held or stepped
    //! one at a time, and a hand-moved clock for deadlines, so that what each forward packs is
    //! known exactly and nothing depends on timing.

    use std::sync::atomic::AtomicU64;
    use std::sync::Condvar;

    use super::*;
    use crate::serve::api::{GroupIn, Route};

    #[derive(Default)]
    struct State {
        /// A forward holding id 100 waits while this is true.
        held: bool,
        /// Some(n): every forward waits until it may go, and n more may; None: they run freely.
        steps: Option<usize>,
        /// Encoding the query "hold" waits while this is true.
        hold_encode: bool,
        /// The first id of every pair, forward by forward, recorded as each forward starts.
        forwards: Vec<Vec<u32>>,
        /// Every query encoded, in order.
        queries: Vec<String>,
    }

    /// A doc "T:N" encodes to N tokens of id T, and scores T + N/1000. A forward holding id 999
    /// fails, one holding 666 panics.
    struct Fake {
        limit: usize,
        state: Mutex<State>,
        changed: Condvar,
    }

    impl Fake {
        /// Waits until `ready` holds (at most 10 s: a test that waits longer has failed).
        fn wait_for(&self, what: &str, ready: impl Fn(&State) -> bool) {
            let state = self.state.lock().unwrap();
            let (_state, timeout) = self
                .changed
                .wait_timeout_while(state, Duration::from_secs(10), |s| !ready(s))
                .unwrap();
            assert!(!timeout.timed_out(), "{what} never happened");
        }

        fn update(&self, f: impl FnOnce(&mut State)) {
            f(&mut self.state.lock().unwrap());
            self.changed.notify_all();
        }
    }

    impl PairScorer for Fake {
        fn encode(
            &self,
            query: &str,
            docs: &[String],
            _side: TruncationSide,
            _instruction: Option<&str>,
        ) -> Result<Vec<EncodedPair>> {
            if query == "hold" {
                self.wait_for("the encode release", |s| !s.hold_encode);
            }
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
            self.update(|s| s.queries.push(query.to_string()));
            Ok(pairs)
        }

        fn score(&self, pairs: &[&EncodedPair]) -> Result<Vec<f32>> {
            let tags: Vec<u32> = pairs.iter().map(|p| p.ids[0]).collect();
            self.update(|s| s.forwards.push(tags.clone()));
            let held = tags.contains(&100);
            self.wait_for("the forward's release", |s| {
                !(held && s.held) && s.steps != Some(0)
            });
            self.update(|s| {
                if let Some(n) = &mut s.steps {
                    *n -= 1;
                }
            });
            if tags.contains(&999) {
                return Err(Error::Internal("poisoned pair".into()));
            }
            assert!(!tags.contains(&666), "a panicking forward");
            Ok(pairs
                .iter()
                .map(|p| score_of(p.ids[0], p.ids.len()))
                .collect())
        }

        fn max_batch_tokens(&self) -> usize {
            self.limit
        }

        fn max_length(&self) -> usize {
            512
        }
    }

    fn score_of(tag: u32, tokens: usize) -> f32 {
        tag as f32 + tokens as f32 / 1000.0
    }

    struct Rig {
        fake: Arc<Fake>,
        metrics: Arc<Metrics>,
        scheduler: Scheduler,
        /// The hand-moved clock's reading, in ms after the rig started.
        clock_ms: Arc<AtomicU64>,
    }

    impl Rig {
        fn new(limit: usize, max_concurrent: usize, steps: Option<usize>) -> Rig {
            let fake = Arc::new(Fake {
                limit,
                state: Mutex::new(State {
                    held: true,
                    steps,
                    ..State::default()
                }),
                changed: Condvar::new(),
            });
            let metrics = Arc::new(Metrics::default());
            let clock_ms = Arc::new(AtomicU64::new(0));
            let (base, ms) = (Instant::now(), clock_ms.clone());
            let clock: Clock =
                Arc::new(move || base + Duration::from_millis(ms.load(Ordering::Acquire)));
            let scheduler = Scheduler::start_with_clock(
                vec![fake.clone()],
                metrics.clone(),
                "m",
                max_concurrent,
                clock,
            )
            .unwrap();
            Rig {
                fake,
                metrics,
                scheduler,
                clock_ms,
            }
        }

        /// A scheduler whose first forward, holding a request of its own, is held until
        /// `release`.
        fn held(limit: usize, max_concurrent: usize) -> (Rig, oneshot::Receiver<Reply>) {
            let rig = Rig::new(limit, max_concurrent, None);
            let gate = rig.submit("gate", &["100:1"]).unwrap();
            rig.fake
                .wait_for("the held forward", |s| !s.forwards.is_empty());
            assert_eq!(rig.forwards(), vec![vec![100]]);
            (rig, gate)
        }

        /// A scheduler whose every forward waits for `step`.
        fn stepped(limit: usize) -> Rig {
            Rig::new(limit, 64, Some(0))
        }

        /// A stepped scheduler whose first forward, waiting, holds the start of a large
        /// request of `n` one-token pairs tagged from 1000 (timeout_ms `timeout_ms`).
        fn behind_big(limit: usize, n: u32, timeout_ms: Option<u64>) -> (Rig, Pending) {
            let rig = Rig::stepped(limit);
            let big = rig
                .submit_within("big", &docs(1000, n), timeout_ms)
                .unwrap();
            rig.fake
                .wait_for("the first forward", |s| !s.forwards.is_empty());
            (rig, big)
        }

        fn call(groups: &[(&str, &[String])], timeout_ms: Option<u64>) -> Arc<Call> {
            Arc::new(Call {
                route: if groups.len() == 1 {
                    Route::Tei
                } else {
                    Route::Batch
                },
                groups: groups
                    .iter()
                    .map(|(query, docs)| GroupIn {
                        query: query.to_string(),
                        docs: docs.to_vec(),
                        images: Vec::new(),
                        top_n: None,
                    })
                    .collect(),
                raw_scores: true,
                return_docs: false,
                truncate: true,
                truncation_side: TruncationSide::Right,
                model: None,
                instruction: None,
                timeout: timeout_ms.map(|ms| Timeout {
                    ms,
                    source: "timeout_ms",
                }),
            })
        }

        fn submit(
            &self,
            query: &str,
            docs: &[&str],
        ) -> std::result::Result<oneshot::Receiver<Reply>, ApiError> {
            self.submit_within(query, &strings(docs), None)
                .map(|p| p.reply)
        }

        /// A request with a budget of `timeout_ms` on the rig's clock.
        fn submit_within(
            &self,
            query: &str,
            docs: &[String],
            timeout_ms: Option<u64>,
        ) -> std::result::Result<Pending, ApiError> {
            self.scheduler
                .submit(Rig::call(&[(query, docs)], timeout_ms))
        }

        /// Returns once every request submitted so far is tokenized and queued for the
        /// inference thread: a sentinel with no documents, answered by the tokenizer thread
        /// after all of them, marks the point.
        fn sync(&self) {
            let sentinel = self.submit("sentinel", &[]).unwrap();
            assert!(sentinel.blocking_recv().unwrap().is_ok());
        }

        /// Lets the held first forward go, once everything submitted is queued.
        fn release(&self) {
            self.sync();
            self.fake.update(|s| s.held = false);
        }

        /// Lets the forward that waits finish, then waits until the next one has started and
        /// returns what it holds. The answers of the requests the finished forward completed
        /// are sent before the next forward starts.
        fn step(&self) -> Vec<u32> {
            let before = self.forwards().len();
            self.fake.update(|s| s.steps = Some(1));
            self.fake
                .wait_for("the next forward", |s| s.forwards.len() > before);
            self.forwards()[before].clone()
        }

        /// Lets every forward run freely from now on.
        fn run_free(&self) {
            self.fake.update(|s| s.steps = None);
        }

        /// Stops the scheduler and checks that the one request tagged [first, first + n) was
        /// dropped by its deadline: none of its pairs reached a forward, and it was counted once,
        /// as a deadline and not as a client gone away.
        fn dropped_by_deadline(&self, first: u32, n: u32) {
            self.scheduler.shutdown();
            let forwards = self.forwards();
            let scored = forwards.iter().flatten();
            assert!(
                scored.clone().all(|t| !(first..first + n).contains(t)),
                "{forwards:?}"
            );
            let text = self.metrics.render();
            for line in [
                "crossrank_deadline_exceeded_total{model=\"m\"} 1\n",
                "crossrank_cancelled_total{model=\"m\"} 0\n",
                "crossrank_queue_depth 0\n",
            ] {
                assert!(text.contains(line), "{line:?} not in\n{text}");
            }
        }

        fn advance_clock(&self, ms: u64) {
            self.clock_ms.fetch_add(ms, Ordering::AcqRel);
        }

        fn forwards(&self) -> Vec<Vec<u32>> {
            self.fake.state.lock().unwrap().forwards.clone()
        }
    }

    fn strings(docs: &[&str]) -> Vec<String> {
        docs.iter().map(|d| d.to_string()).collect()
    }

    /// `n` one-token docs tagged `first`, `first + 1`, ...
    fn docs(first: u32, n: u32) -> Vec<String> {
        (first..first + n).map(|t| format!("{t}:1")).collect()
    }

    /// What `docs(first, n)` must score: each pair's own logit, whatever it shared a forward with.
    fn want(first: u32, n: u32) -> Vec<f32> {
        (first..first + n).map(|t| score_of(t, 1)).collect()
    }

    fn logits(rx: oneshot::Receiver<Reply>) -> std::result::Result<Vec<f32>, ApiError> {
        rx.blocking_recv()
            .expect("answered")
            .map(|s| s.groups[0].logits.clone())
    }

    /// The tags of a forward in [first, first + n).
    fn of(forward: &[u32], first: u32, n: u32) -> Vec<u32> {
        forward
            .iter()
            .copied()
            .filter(|t| (first..first + n).contains(t))
            .collect()
    }

    #[test]
    fn waiting_requests_share_each_forward_fairly() {
        let (rig, gate) = Rig::held(10, 16);
        let a = rig.submit("a", &["1:4", "2:4"]).unwrap();
        let b = rig.submit("b", &["3:4"]).unwrap();
        let c = rig.submit("c", &["4:3", "5:3", "6:3", "7:3"]).unwrap();
        rig.release();
        assert_eq!(logits(gate).unwrap(), vec![100.001]);
        assert_eq!(logits(a).unwrap(), vec![1.004, 2.004]);
        assert_eq!(logits(b).unwrap(), vec![3.004]);
        assert_eq!(logits(c).unwrap(), vec![4.003, 5.003, 6.003, 7.003]);
        // At most 10 tokens a forward, each pair to the request with the fewest tokens in it so
        // far: a and b take 4 each, then neither c's 3 nor a's next 4 fit. Then a and c share,
        // and c, alone, finishes.
        assert_eq!(
            rig.forwards(),
            vec![vec![100], vec![1, 3], vec![2, 4, 5], vec![6, 7]]
        );
        rig.scheduler.shutdown();
        assert_eq!(rig.metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    /// The case: a small request that arrives while a large one is being scored gets
    /// all its pairs into the very next forward, and every answer is each pair's own score.
    #[test]
    fn a_small_request_gets_into_the_next_forward_of_a_large_one() {
        let (rig, big) = Rig::behind_big(10, 30, None);
        assert_eq!(rig.forwards()[0], (1000..1010).collect::<Vec<_>>());
        let small = rig.submit_within("small", &docs(2000, 3), None).unwrap();
        rig.sync();
        let second = rig.step();
        assert_eq!(of(&second, 2000, 3), vec![2000, 2001, 2002], "{second:?}");
        assert_eq!(of(&second, 1000, 30), (1010..1017).collect::<Vec<_>>());
        // The small one is answered before the third forward starts.
        let third = rig.step();
        assert_eq!(third, (1017..1027).collect::<Vec<_>>());
        let mut small = small.reply;
        let scored = small
            .try_recv()
            .expect("answered after its forward")
            .unwrap();
        assert_eq!(scored.groups[0].logits, want(2000, 3));
        rig.run_free();
        assert_eq!(logits(big.reply).unwrap(), want(1000, 30));
    }

    /// A request alone is packed as the library packs it, front to back: every forward holds as
    /// many pairs as fit in the budget, and the next pair would not have fitted.
    #[test]
    fn a_lone_request_fills_every_forward_to_the_budget() {
        let limit = 10;
        let rig = Rig::new(limit, 16, None);
        let lens: Vec<usize> = (0..40).map(|i| 1 + (i * 7) % 5).collect();
        let docs: Vec<String> = lens
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}:{n}", 1000 + i))
            .collect();
        let big = rig.submit_within("big", &docs, None).unwrap();
        let want: Vec<f32> = (0..40)
            .map(|i| score_of(1000 + i, lens[i as usize]))
            .collect();
        assert_eq!(logits(big.reply).unwrap(), want);
        // The library's rule (Reranker::score_pairs): take pairs while they fit, at least one.
        let mut expected = Vec::new();
        let mut start = 0;
        while start < lens.len() {
            let (mut end, mut tokens) = (start, 0);
            while end < lens.len() && (end == start || tokens + lens[end] <= limit) {
                tokens += lens[end];
                end += 1;
            }
            expected.push((start..end).map(|i| 1000 + i as u32).collect::<Vec<_>>());
            start = end;
        }
        let forwards = rig.forwards();
        assert_eq!(forwards, expected);
        for f in &forwards[..forwards.len() - 1] {
            let tokens: usize = f.iter().map(|&t| lens[(t - 1000) as usize]).sum();
            let next = lens[(f[f.len() - 1] - 1000 + 1) as usize];
            assert!(tokens <= limit && tokens + next > limit, "{f:?}");
        }
    }

    /// A stream of small requests that alone would fill every forward (two of 5 one-token
    /// pairs before each forward of 10) cannot starve a large request: with k requests waiting
    /// and pairs of L = 1 token, a request not finished in a forward gets more than 10/k - 1
    /// tokens of it, and so the large one finishes within a bound of forwards.
    #[test]
    fn a_large_request_is_not_starved_by_a_stream_of_small_ones() {
        let (limit, longest) = (10.0, 1.0);
        let (rig, big) = Rig::behind_big(10, 30, None);
        let big = big.reply;
        let mut smalls: Vec<oneshot::Receiver<Reply>> = Vec::new();
        let mut left = 30 - rig.forwards()[0].len();
        let mut forwards = 1;
        for i in 0..20u32 {
            // Requests waiting for the next forward: the big one, the small ones not yet
            // answered, and the two new ones.
            smalls.retain_mut(|rx| rx.try_recv().is_err());
            let k = 1 + smalls.len() + 2;
            for j in 0..2 {
                let first = 2000 + 10 * (2 * i + j);
                let rx = rig.submit_within("small", &docs(first, 5), None).unwrap();
                smalls.push(rx.reply);
            }
            rig.sync();
            let forward = rig.step();
            forwards += 1;
            let got = of(&forward, 1000, 30).len();
            left -= got;
            if left > 0 {
                assert!(
                    got as f64 > limit / k as f64 - longest,
                    "forward {forwards}: the large request got {got} of 10 tokens among {k} requests"
                );
            } else {
                break;
            }
        }
        assert_eq!(
            left, 0,
            "the large request was not finished in {forwards} forwards"
        );
        // 20 pairs after the first forward, at least 2 a forward while at most 9 requests wait.
        assert!(forwards <= 11, "{forwards} forwards");
        rig.run_free();
        assert_eq!(logits(big).unwrap(), want(1000, 30));
    }

    /// /rerank/batch is one request however many groups it has: it shares a forward with
    /// another request half and half, not a third per group; its groups stay in order.
    #[test]
    fn a_batch_call_is_one_request_whatever_its_groups() {
        let (rig, big) = Rig::behind_big(12, 30, None);
        let (g0, g1, g2) = (docs(2000, 10), docs(3000, 10), docs(4000, 10));
        let call = Rig::call(&[("a", &g0), ("b", &g1), ("c", &g2)], None);
        let batch = rig.scheduler.submit(call).unwrap();
        rig.sync();
        let second = rig.step();
        assert_eq!(of(&second, 1000, 30).len(), 6, "{second:?}");
        assert_eq!(
            second.iter().filter(|&&t| t >= 2000).count(),
            6,
            "{second:?}"
        );
        assert_eq!(of(&second, 2000, 10), (2000..2006).collect::<Vec<_>>());
        rig.run_free();
        let scored = batch.reply.blocking_recv().unwrap().unwrap();
        let groups: Vec<Vec<f32>> = scored.groups.into_iter().map(|g| g.logits).collect();
        assert_eq!(groups, vec![want(2000, 10), want(3000, 10), want(4000, 10)]);
        assert_eq!(logits(big.reply).unwrap(), want(1000, 30));
    }

    /// The policy's stated properties over seeded random queues: a lone request is packed
    /// front to back; a forward holds at most the budget (or one pair); the oldest request
    /// always gets a pair; a request left unfinished got more than limit/k - L tokens.
    #[test]
    fn the_plan_keeps_its_stated_bounds() {
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let pair = |n: usize| EncodedPair {
            ids: vec![1; n],
            type_ids: vec![0; n],
            truncated: false,
        };
        for case in 0..2000 {
            let limit = 4 + next(60);
            let longest = 1 + next(limit.min(16));
            let k = 1 + next(12);
            let queues: Vec<Vec<EncodedPair>> = (0..k)
                .map(|_| (0..1 + next(20)).map(|_| pair(1 + next(longest))).collect())
                .collect();
            let waiting: Vec<&[EncodedPair]> = queues.iter().map(Vec::as_slice).collect();
            let takes = plan(&waiting, limit);
            let tokens_of =
                |r: usize| -> usize { waiting[r][..takes[r]].iter().map(|p| p.ids.len()).sum() };
            let total: usize = (0..k).map(tokens_of).sum();
            let pairs: usize = takes.iter().sum();
            assert!(
                total <= limit || pairs == 1,
                "case {case}: {total} > {limit}"
            );
            assert!(takes[0] >= 1, "case {case}: the oldest got nothing");
            let l = waiting
                .iter()
                .flat_map(|w| w.iter())
                .map(|p| p.ids.len())
                .max();
            let l = l.unwrap_or(0) as f64;
            for r in 0..k {
                if takes[r] < waiting[r].len() {
                    assert!(
                        tokens_of(r) as f64 > limit as f64 / k as f64 - l,
                        "case {case}: request {r} got {} of {limit} among {k}",
                        tokens_of(r)
                    );
                }
            }
            // Alone, the library's front-to-back rule.
            let alone = plan(&waiting[..1], limit);
            let (mut end, mut tokens) = (0, 0);
            while end < waiting[0].len()
                && (end == 0 || tokens + waiting[0][end].ids.len() <= limit)
            {
                tokens += waiting[0][end].ids.len();
                end += 1;
            }
            assert_eq!(alone, vec![end], "case {case}");
        }
    }

    /// A request whose deadline passes while it waits is answered 504 naming its budget, and
    /// its pairs never reach a forward; one with a generous deadline is scored as usual.
    #[test]
    fn a_request_past_its_deadline_is_answered_504_and_never_scored() {
        let (rig, big) = Rig::behind_big(10, 15, None);
        let late = rig.submit_within("late", &docs(2000, 3), Some(10)).unwrap();
        let patient = rig
            .submit_within("patient", &docs(3000, 3), Some(3_600_000))
            .unwrap();
        rig.sync();
        rig.advance_clock(11);
        let second = rig.step();
        let e = late.reply.blocking_recv().unwrap().unwrap_err();
        assert_eq!((e.status, e.kind), (504, "timeout"));
        assert!(
            e.message.contains("budget of 10 ms (timeout_ms)"),
            "{}",
            e.message
        );
        assert_eq!(of(&second, 3000, 3), vec![3000, 3001, 3002], "{second:?}");
        rig.run_free();
        assert_eq!(logits(patient.reply).unwrap(), want(3000, 3));
        assert_eq!(logits(big.reply).unwrap(), want(1000, 15));
        rig.dropped_by_deadline(2000, 3);
    }

    /// The caller's answer is the 504 at the deadline itself, while the forward in progress
    /// still runs; the scheduler then drops the request before the next forward.
    #[test]
    fn the_504_comes_at_the_deadline_without_waiting_for_the_forward() {
        let (rig, big) = Rig::behind_big(10, 30, None);
        let small = rig
            .submit_within("small", &docs(2000, 3), Some(10))
            .unwrap();
        rig.sync();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // The first forward never finishes until stepped; the answer must not wait for it.
        let answer = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), small.answer()).await
        });
        let e = answer.expect("answered at the deadline").unwrap_err();
        assert!(e.message.contains("budget of 10 ms"), "{}", e.message);
        assert_eq!(rig.forwards().len(), 1);
        rig.advance_clock(10);
        rig.run_free();
        assert_eq!(logits(big.reply).unwrap(), want(1000, 30));
        rig.dropped_by_deadline(2000, 3);
    }

    /// A large request whose deadline passes between its forwards: the rest of its pairs are
    /// dropped. One whose deadline passes during its last forward is answered 504 too, as its
    /// caller's own timer has already answered.
    #[test]
    fn a_deadline_drops_the_pairs_not_yet_scored() {
        let (rig, big) = Rig::behind_big(10, 30, Some(50));
        rig.advance_clock(50);
        rig.run_free();
        let e = big.reply.blocking_recv().unwrap().unwrap_err();
        assert!(e.message.contains("budget of 50 ms"), "{}", e.message);
        let small = rig.submit_within("small", &docs(2000, 2), None).unwrap();
        assert_eq!(logits(small.reply).unwrap(), want(2000, 2));
        // The big one's first forward, then the small one's: nothing more of the big one.
        assert_eq!(rig.forwards().len(), 2, "{:?}", rig.forwards());

        let rig = Rig::stepped(10);
        let last = rig.submit_within("last", &docs(1000, 3), Some(50)).unwrap();
        rig.fake
            .wait_for("the first forward", |s| !s.forwards.is_empty());
        rig.advance_clock(50);
        rig.run_free();
        assert_eq!(last.reply.blocking_recv().unwrap().unwrap_err().status, 504);
        assert!(rig
            .metrics
            .render()
            .contains("crossrank_deadline_exceeded_total{model=\"m\"} 1\n"));
    }

    /// A request already past its deadline when the tokenizer reaches it is not even tokenized.
    #[test]
    fn a_request_past_its_deadline_is_not_tokenized() {
        let rig = Rig::new(10, 16, None);
        rig.fake.update(|s| s.hold_encode = true);
        let first = rig.submit("hold", &["1:1"]).unwrap();
        let late = rig.submit_within("late", &docs(2000, 2), Some(5)).unwrap();
        rig.advance_clock(5);
        rig.fake.update(|s| s.hold_encode = false);
        assert_eq!(late.reply.blocking_recv().unwrap().unwrap_err().status, 504);
        assert_eq!(logits(first).unwrap(), vec![1.001]);
        assert!(!rig
            .fake
            .state
            .lock()
            .unwrap()
            .queries
            .contains(&"late".into()));
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
        assert_eq!(rig.forwards(), vec![vec![100], vec![1, 5], vec![999, 3]]);
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
            .contains("crossrank_forward_failures_total{model=\"m\"} 2\n"));
    }

    /// Two devices fed from one queue: each idle device gets the next forward at once; a
    /// request split over both is answered in its own order when the later one ends, however
    /// they finish; the device that is free takes new requests meanwhile; a forward that
    /// fails on one device fails only the requests in it; the forwards and pairs are counted
    /// per device.
    #[test]
    fn two_devices_take_forwards_from_one_queue() {
        let fakes: Vec<Arc<Fake>> = [true, false]
            .iter()
            .map(|&held| {
                Arc::new(Fake {
                    limit: 4,
                    state: Mutex::new(State {
                        held,
                        ..State::default()
                    }),
                    changed: Condvar::new(),
                })
            })
            .collect();
        let metrics = Arc::new(Metrics::default());
        let scheduler = Scheduler::start(fakes.clone(), metrics.clone(), "m", 16).unwrap();
        let submit = |query: &str, docs: &[&str]| {
            scheduler
                .submit(Rig::call(&[(query, &strings(docs))], None))
                .unwrap()
                .reply
        };
        let forwards = |d: usize| fakes[d].state.lock().unwrap().forwards.clone();
        // Two pairs per forward: device 0 takes the first two (and holds them), device 1 the
        // next two at once.
        let mut big = submit("big", &["100:2", "2:2", "3:2", "4:2"]);
        fakes[0].wait_for("device 0's forward", |s| !s.forwards.is_empty());
        fakes[1].wait_for("device 1's forward", |s| !s.forwards.is_empty());
        assert_eq!(forwards(0), vec![vec![100, 2]]);
        assert_eq!(forwards(1), vec![vec![3, 4]]);
        // Device 1 has ended; device 0 still holds the start of `big`, so `big` waits while
        // device 1 serves what comes next.
        let poisoned = submit("p", &["999:1"]);
        let e = logits(poisoned).unwrap_err();
        assert!(e.message.contains("poisoned pair"), "{}", e.message);
        assert_eq!(logits(submit("s", &["7:1"])).unwrap(), vec![7.001]);
        assert!(
            big.try_recv().is_err(),
            "answered before its first forward ended"
        );
        assert_eq!(forwards(1), vec![vec![3, 4], vec![999], vec![7]]);
        fakes[0].update(|s| s.held = false);
        assert_eq!(logits(big).unwrap(), vec![100.002, 2.002, 3.002, 4.002]);
        assert_eq!(forwards(0), vec![vec![100, 2]]);
        scheduler.shutdown();
        let text = metrics.render();
        for line in [
            "crossrank_device_forwards_total{model=\"m\",device=\"0\"} 1\n",
            "crossrank_device_forwards_total{model=\"m\",device=\"1\"} 3\n",
            "crossrank_device_pairs_total{model=\"m\",device=\"0\"} 2\n",
            "crossrank_device_pairs_total{model=\"m\",device=\"1\"} 3\n",
            "crossrank_forward_failures_total{model=\"m\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
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
        assert_eq!(rig.forwards(), vec![vec![100], vec![1, 5], vec![999, 3]]);
        // Scored: the gate (1 token), a (8) and d (2); not the 9 tokens of the failed forward.
        let text = rig.metrics.render();
        for line in [
            "crossrank_pairs_total{model=\"m\"} 3\n",
            "crossrank_tokens_total{model=\"m\"} 11\n",
            "crossrank_forward_failures_total{model=\"m\"} 1\n",
            "crossrank_batch_pairs_count{model=\"m\"} 3\n",
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
            .contains("crossrank_cancelled_total{model=\"m\"} 1\n"));
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
        rig.fake.update(|s| s.held = false);
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
