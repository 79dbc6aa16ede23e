//! Requests with image documents, and every request to an image-text model: admitted among
//! the --max-concurrent (503 past it), decoded and checked on a blocking thread of their own
//! (many requests decode at once), then queued for the model. One thread per copy of the model
//! takes the oldest waiting request with every other one waiting, up to [`MERGE_PAIRS`] pairs,
//! and scores them in one call: an image sent by several requests (sub-queries of one search)
//! runs the vision tower once, and its keys and values serve all their pairs in a forward.
//!
//! Every accepted request gets exactly one answer: its scores, a 413 or 422 naming the
//! document, a 504 at its deadline (a request past it when its turn comes is not scored), or a
//! 500 naming the failed call, which fails only the requests merged into it. A request whose
//! client has gone away is dropped before scoring. Image requests are neither sampled nor
//! shadowed (both speak text).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::api::{self, ApiError, Call, GroupScores, Route};
use super::metrics::{Metrics, ModelMetrics};
use super::models::Loaded;
use super::scheduler::{self, Clock, Feed, Scored, Ticket};
use crate::engine::Reranker;
use crate::error::{Error, Result};
use crate::pixels::ImageLimits;

/// The most pairs merged into one call: the oldest request whole, then the next ones waiting
/// while they fit. A request merged with others is answered when the call ends, so this bounds
/// how long a small request waits behind larger ones.
pub const MERGE_PAIRS: usize = crate::models::blip::MAX_PAIRS_PER_FORWARD;

/// One request, decoded: its queries, its images' pixels, and its pairs (query, image) group
/// by group, in document order.
struct Prepared {
    queries: Vec<String>,
    pixels: Vec<Vec<f32>>,
    pairs: Vec<(usize, usize)>,
    group_lens: Vec<usize>,
    tokens: usize,
}

struct Job {
    prepared: Prepared,
    ticket: Ticket,
}

/// The image requests of one model: their queue and the threads that score them.
pub struct ImageQueue {
    feed: Feed<Job>,
    metrics: Arc<Metrics>,
    max_concurrent: usize,
    clock: Clock,
    alive: Arc<AtomicBool>,
}

impl ImageQueue {
    /// One scoring thread per copy of the model in `devices`; its calls count in
    /// `metrics.model(model)`, its requests in the server's queue depth.
    pub fn start(
        devices: Vec<Arc<Reranker>>,
        metrics: Arc<Metrics>,
        model: &str,
        max_concurrent: usize,
    ) -> Result<Self> {
        let clock: Clock = Arc::new(Instant::now);
        let stats = metrics.model(model);
        let (submit, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let alive = Arc::new(AtomicBool::new(true));
        let mut threads = Vec::with_capacity(devices.len());
        for (d, r) in devices.into_iter().enumerate() {
            let (m, c, a, j) = (stats.clone(), clock.clone(), alive.clone(), jobs.clone());
            let t = std::thread::Builder::new()
                .name(format!("crossrank-images-{d}"))
                .spawn(move || device_loop(&r, d, &m, &c, &a, &j))
                .map_err(|e| Error::Internal(format!("cannot start an image thread: {e}")))?;
            threads.push(t);
        }
        Ok(ImageQueue {
            feed: Feed::new(submit, threads),
            metrics,
            max_concurrent,
            clock,
            alive,
        })
    }

    /// No scoring call has panicked.
    pub fn healthy(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Stops taking requests, lets the threads answer every one queued, and joins them.
    pub fn shutdown(&self) {
        self.feed.shutdown();
    }
}

/// Scores `call` with `model`: admitted or refused with 503 at once, decoded on a blocking
/// thread, then queued; the request's budget, if any, bounds it all from now.
pub async fn score(
    model: &Loaded,
    call: Arc<Call>,
    limits: ImageLimits,
) -> std::result::Result<Scored, ApiError> {
    let Some(queue) = &model.images else {
        return Err(refuse_images(&model.reranker, &call, &model.name));
    };
    let (ticket, pending) = scheduler::admit(
        &queue.metrics,
        queue.max_concurrent,
        &queue.clock,
        call.timeout,
    )?;
    let reranker = model.reranker.clone();
    let name = model.name.clone();
    let c = call.clone();
    let work = tokio::task::spawn_blocking(move || prepare(&reranker, &c, &limits, &name));
    let prepared = match pending.deadline {
        Some(d) => {
            let at = tokio::time::Instant::from_std(d.at);
            match tokio::time::timeout_at(at, work).await {
                Ok(joined) => joined,
                Err(_) => return Err(ApiError::deadline(d.timeout)),
            }
        }
        None => work.await,
    }
    .map_err(|e| ApiError::backend(format!("image decoding stopped: {e}")))??;
    queue.feed.send(Job { prepared, ticket })?;
    pending.answer().await
}

/// The field a group's documents came in, for error messages.
fn field(call: &Call, g: usize) -> String {
    match call.route {
        Route::Batch => format!("groups[{g}].documents"),
        Route::Tei => "texts".to_string(),
        Route::Cohere { .. } => "documents".to_string(),
    }
}

/// A text model's refusal of a request with image documents, naming the first.
fn refuse_images(r: &Reranker, call: &Call, name: &str) -> ApiError {
    let arch = &r.info().architecture;
    for (g, group) in call.groups.iter().enumerate() {
        if let Some(i) = group.images.iter().position(Option::is_some) {
            return ApiError::validation(format!(
                "{}[{i}] is an image, but model {name} ({arch}) is a text model: it scores text documents only",
                field(call, g)
            ));
        }
    }
    ApiError::backend("a text-only request reached the image path")
}

/// Decodes and preprocesses every image of `call` (an error names its document) and checks
/// its queries, so that nothing about this request can fail the call it is merged into.
fn prepare(
    r: &Reranker,
    call: &Call,
    limits: &ImageLimits,
    name: &str,
) -> std::result::Result<Prepared, ApiError> {
    let arch = &r.info().architecture;
    let Some(processor) = r.image_processor() else {
        return Err(refuse_images(r, call, name));
    };
    if call.instruction.is_some() {
        return Err(ApiError::validation(format!(
            "instruction: model {name} ({arch}) takes none (only LLM rerankers have a prompt template)"
        )));
    }
    let max_length = r.info().max_length;
    let mut p = Prepared {
        queries: Vec::with_capacity(call.groups.len()),
        pixels: Vec::new(),
        pairs: Vec::new(),
        group_lens: Vec::with_capacity(call.groups.len()),
        tokens: 0,
    };
    for (g, group) in call.groups.iter().enumerate() {
        let field = field(call, g);
        for i in 0..group.docs.len() {
            let Some(Some(bytes)) = group.images.get(i) else {
                return Err(ApiError::validation(format!(
                    "{field}[{i}] is text, but model {name} ({arch}) is an image-text model: every document must be {{\"image\": \"data:image/...;base64,...\"}}"
                )));
            };
            let px = processor
                .pixel_values(bytes, limits)
                .map_err(|e| api::image_error(e, &format!("{field}[{i}].image")))?;
            p.pairs.push((g, p.pixels.len()));
            p.pixels.push(px);
        }
        if !group.docs.is_empty() {
            let q = r
                .tokenizer()
                .encode_single(&group.query, max_length)
                .map_err(|e| ApiError::validation(e.to_string()))?;
            if q.ids.is_empty() {
                return Err(ApiError::validation(format!(
                    "the query of {field} encodes to no tokens; the model needs at least one"
                )));
            }
            if q.truncated && !call.truncate {
                return Err(ApiError::too_large(format!(
                    "the query of {field} is longer than the model's max length {max_length} and truncate is false"
                )));
            }
            p.tokens += q.ids.len() * group.docs.len();
        }
        p.queries.push(group.query.clone());
        p.group_lens.push(group.docs.len());
    }
    Ok(p)
}

/// One copy of the model: takes the oldest request waiting and every other one that fits in
/// [`MERGE_PAIRS`], drops those past their deadline or whose client has gone, and scores the
/// rest in one call.
fn device_loop(
    r: &Reranker,
    device: usize,
    metrics: &ModelMetrics,
    clock: &Clock,
    alive: &AtomicBool,
    jobs: &Mutex<Receiver<Job>>,
) {
    let name = device.to_string();
    // A request too large to join the last call: it leads the next.
    let mut carry: Option<Job> = None;
    loop {
        let mut batch = Vec::new();
        {
            let Ok(rx) = jobs.lock() else { return };
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let mut pairs = first.prepared.pairs.len();
            batch.push(first);
            while pairs < MERGE_PAIRS {
                match rx.try_recv() {
                    Ok(job) if pairs + job.prepared.pairs.len() <= MERGE_PAIRS => {
                        pairs += job.prepared.pairs.len();
                        batch.push(job);
                    }
                    Ok(job) => {
                        carry = Some(job);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        run(r, &name, metrics, clock, alive, batch);
    }
}

/// Scores the requests of `batch` still wanted in one call and answers each.
fn run(
    r: &Reranker,
    device: &str,
    metrics: &ModelMetrics,
    clock: &Clock,
    alive: &AtomicBool,
    batch: Vec<Job>,
) {
    let now = clock();
    let mut wanted = Vec::with_capacity(batch.len());
    for job in batch {
        match job.ticket.verdict(now) {
            Some(verdict) => job.ticket.settle(verdict, metrics),
            None => wanted.push(job),
        }
    }
    if wanted.is_empty() {
        return;
    }
    // Every request's queries and images side by side, its pairs shifted to match.
    let (mut queries, mut images, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for job in &wanted {
        let p = &job.prepared;
        let (q0, i0) = (queries.len(), images.len());
        queries.extend(p.queries.iter().map(String::as_str));
        images.extend(p.pixels.iter().map(Vec::as_slice));
        pairs.extend(p.pairs.iter().map(|&(q, i)| (q0 + q, i0 + i)));
    }
    let tokens: usize = wanted.iter().map(|j| j.prepared.tokens).sum();
    let t0 = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        r.score_image_pairs(&queries, &pairs, &images, None)
    }));
    let seconds = t0.elapsed().as_secs_f64();
    let logits = match outcome {
        Ok(Ok((l, _))) if l.len() == pairs.len() => Ok(l),
        Ok(Ok((l, _))) => Err(format!(
            "internal error: the call returned {} scores for {} pairs",
            l.len(),
            pairs.len()
        )),
        Ok(Err(e)) => Err(format!("the forward pass failed: {e}")),
        Err(_) => {
            alive.store(false, Ordering::Release);
            Err("the forward pass panicked".to_string())
        }
    };
    metrics.forward(pairs.len(), tokens, seconds, logits.is_ok());
    metrics.device_forward(device, pairs.len(), logits.is_ok());
    let logits = match logits {
        Ok(l) => l,
        Err(msg) => {
            eprintln!(
                "crossrank serve: {msg}; failing the {} image requests in it",
                wanted.len()
            );
            for job in wanted {
                job.ticket.answer(Err(ApiError::backend(msg.clone())));
            }
            return;
        }
    };
    let done = clock();
    let mut next = logits.into_iter();
    for job in wanted {
        let Job { prepared, ticket } = job;
        let mut groups = Vec::with_capacity(prepared.group_lens.len());
        for &n in &prepared.group_lens {
            groups.push(GroupScores {
                logits: next.by_ref().take(n).collect(),
            });
        }
        metrics.queued((t0 - ticket.accepted).as_secs_f64());
        // Past its deadline during the call: the caller has answered 504 already.
        if let Some(verdict @ scheduler::Verdict::Expired(_)) = ticket.verdict(done) {
            ticket.settle(verdict, metrics);
            continue;
        }
        let scored = Scored {
            groups,
            tokens: prepared.tokens,
            queue: t0 - ticket.accepted,
            infer: t0.elapsed(),
        };
        ticket.answer(Ok(scored));
    }
}

#[cfg(test)]
mod tests {
    //! The image queue's loop over the committed tiny BLIP model, run on the test's thread
    //! with its jobs queued beforehand, so what merges is known exactly.

    use super::*;
    use crate::serve::api::Timeout;
    use crate::serve::scheduler::Pending;
    use crate::Device;
    use std::sync::mpsc::Sender;

    fn tiny() -> Reranker {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/models/blip-itm-tiny");
        Reranker::load(&dir, Device::Cpu, &crate::LoadOptions::default())
            .unwrap_or_else(|e| panic!("blip-itm-tiny: {e}"))
    }

    /// The golden images' pixel values (transformers' own).
    fn pixels() -> Vec<Vec<f32>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/goldens/blip/blip-itm-tiny.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| serde_json::from_value(i["pixel_values"].clone()).unwrap())
            .collect()
    }

    struct Rig {
        metrics: Arc<Metrics>,
        clock: Clock,
        now: Arc<Mutex<Instant>>,
        tx: Sender<Job>,
        rx: Mutex<Receiver<Job>>,
    }

    impl Rig {
        fn new() -> Rig {
            let now = Arc::new(Mutex::new(Instant::now()));
            let n = now.clone();
            let (tx, rx) = mpsc::channel();
            Rig {
                metrics: Arc::new(Metrics::default()),
                clock: Arc::new(move || *n.lock().unwrap()),
                now,
                tx,
                rx: Mutex::new(rx),
            }
        }

        /// Queues a request of `groups` (query, images by index into `px`).
        fn push(&self, px: &[Vec<f32>], groups: &[(&str, &[usize])], ms: Option<u64>) -> Pending {
            let timeout = ms.map(|ms| Timeout { ms, source: "test" });
            let (ticket, pending) =
                scheduler::admit(&self.metrics, 8, &self.clock, timeout).unwrap();
            let mut p = Prepared {
                queries: Vec::new(),
                pixels: Vec::new(),
                pairs: Vec::new(),
                group_lens: Vec::new(),
                tokens: 0,
            };
            for (g, (q, images)) in groups.iter().enumerate() {
                p.queries.push(q.to_string());
                p.group_lens.push(images.len());
                for &i in *images {
                    p.pairs.push((g, p.pixels.len()));
                    p.pixels.push(px[i].clone());
                }
            }
            self.tx
                .send(Job {
                    prepared: p,
                    ticket,
                })
                .unwrap();
            pending
        }

        /// Runs the loop until every queued job is taken, then returns.
        fn drain(self, r: &Reranker) -> Arc<Metrics> {
            let Rig {
                metrics,
                clock,
                tx,
                rx,
                ..
            } = self;
            drop(tx);
            let alive = AtomicBool::new(true);
            device_loop(r, 0, &metrics.model("m"), &clock, &alive, &rx);
            assert!(alive.load(Ordering::Acquire));
            metrics
        }
    }

    fn answer(p: Pending) -> std::result::Result<Vec<Vec<f32>>, ApiError> {
        let mut rx = p.reply;
        let scored = rx.try_recv().expect("answered")?;
        Ok(scored.groups.into_iter().map(|g| g.logits).collect())
    }

    fn metric(m: &Metrics, name: &str) -> String {
        let text = m.render();
        let line = format!("crossrank_{name}{{model=\"m\"}} ");
        let at = text.find(&line).unwrap_or_else(|| panic!("no {line}"));
        let rest = &text[at + line.len()..];
        rest[..rest.find('\n').unwrap()].to_string()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Requests waiting together are one call while they fit in MERGE_PAIRS, exactly full
    /// included; one that does not fit leads the next call. The merged call's pairs are the
    /// library's call of the same pairs; each request gets its own scores, group by group, and
    /// its place back.
    #[test]
    fn waiting_requests_merge_into_one_call_and_each_gets_its_own_scores() {
        let (r, px) = (tiny(), pixels());
        let rig = Rig::new();
        let a = rig.push(&px, &[("a photo of a cat", &[0, 1, 2])], None);
        // b's second query differs from a's: a pair read with another request's query shows.
        let b = rig.push(&px, &[("red", &[2, 3]), ("a dog", &[0])], None);
        let big: Vec<usize> = vec![4; MERGE_PAIRS - 6];
        let c = rig.push(&px, &[("red", &big)], None);
        let d = rig.push(&px, &[("red", &[5])], None);
        let metrics = rig.drain(&r);
        let refs: Vec<&[f32]> = px.iter().map(Vec::as_slice).collect();
        let mut pairs = vec![(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (2, 0)];
        pairs.extend(std::iter::repeat_n((1, 4), MERGE_PAIRS - 6));
        let (want, _) = r
            .score_image_pairs(&["a photo of a cat", "red", "a dog"], &pairs, &refs, None)
            .unwrap();
        let a = answer(a).unwrap();
        let b = answer(b).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(bits(&a[0]), bits(&want[..3]));
        assert_eq!(b.len(), 2);
        assert_eq!(bits(&b[0]), bits(&want[3..5]));
        assert_eq!(bits(&b[1]), bits(&want[5..6]));
        assert_eq!(bits(&answer(c).unwrap()[0]), bits(&want[6..]));
        let (alone, _) = r.score_images("red", &[&px[5]], None).unwrap();
        assert_eq!(bits(&answer(d).unwrap()[0]), bits(&alone));
        // Two calls: a full one of 512 pairs, then d's 1.
        assert_eq!(metric(&metrics, "batch_pairs_count"), "2");
        assert_eq!(
            metric(&metrics, "batch_pairs_sum"),
            (MERGE_PAIRS + 1).to_string()
        );
        let text = metrics.render();
        assert!(
            text.contains("crossrank_batch_pairs_bucket{model=\"m\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert_eq!(metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    /// When its turn comes, a request past its deadline is answered 504 and one whose client
    /// has gone away is dropped; neither is scored, the one still wanted is.
    #[test]
    fn a_request_past_its_deadline_or_gone_is_not_scored() {
        let (r, px) = (tiny(), pixels());
        let rig = Rig::new();
        let late = rig.push(&px, &[("red", &[0, 1])], Some(10));
        let gone = rig.push(&px, &[("red", &[2])], None);
        drop(gone);
        let kept = rig.push(&px, &[("red", &[3])], Some(60_000));
        *rig.now.lock().unwrap() += std::time::Duration::from_secs(1);
        let metrics = rig.drain(&r);
        let e = answer(late).unwrap_err();
        assert_eq!(e.status, 504, "{}", e.message);
        assert_eq!(answer(kept).unwrap()[0].len(), 1);
        assert_eq!(metric(&metrics, "deadline_exceeded_total"), "1");
        assert_eq!(metric(&metrics, "cancelled_total"), "1");
        assert_eq!(metric(&metrics, "batch_pairs_sum"), "1");
        assert_eq!(metrics.queue_depth.load(Ordering::Acquire), 0);
    }

    /// Past --max-concurrent an image request is refused at once, and an answered one frees
    /// its place.
    #[test]
    fn past_max_concurrent_an_image_request_is_refused_at_once() {
        let rig = Rig::new();
        let first = scheduler::admit(&rig.metrics, 1, &rig.clock, None).unwrap();
        let e = scheduler::admit(&rig.metrics, 1, &rig.clock, None)
            .err()
            .unwrap();
        assert_eq!((e.status, e.kind), (503, "overloaded"));
        first.0.answer(Err(ApiError::backend("done")));
        assert!(scheduler::admit(&rig.metrics, 1, &rig.clock, None).is_ok());
    }
}
