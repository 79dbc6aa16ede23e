//! Requests with image documents, and every request to an image-text model: decoded,
//! preprocessed and scored on a blocking thread of their own, outside the scheduler (no
//! cross-request batching for images yet). Every such request gets exactly one answer: its
//! scores, a 413 or 422 naming the document, a 504 past its budget, or a 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{self, ApiError, Call, GroupScores, Route};
use super::models::Loaded;
use super::scheduler::Scored;
use crate::engine::Reranker;
use crate::error::Error;
use crate::pixels::ImageLimits;

/// Scores `call` with `model`'s first copy; the request's budget, if any, bounds the wait.
pub async fn score(
    model: &Loaded,
    call: Arc<Call>,
    limits: ImageLimits,
) -> Result<Scored, ApiError> {
    let reranker = model.reranker.clone();
    let name = model.name.clone();
    let timeout = call.timeout;
    let work =
        tokio::task::spawn_blocking(move || score_blocking(&reranker, &call, &limits, &name));
    let joined = match timeout {
        Some(t) => match tokio::time::timeout(Duration::from_millis(t.ms), work).await {
            Ok(joined) => joined,
            Err(_) => return Err(ApiError::deadline(t)),
        },
        None => work.await,
    };
    joined.map_err(|e| ApiError::backend(format!("image scoring stopped: {e}")))?
}

/// The field a group's documents came in, for error messages.
fn field(call: &Call, g: usize) -> String {
    match call.route {
        Route::Batch => format!("groups[{g}].documents"),
        Route::Tei => "texts".to_string(),
        Route::Cohere { .. } => "documents".to_string(),
    }
}

fn score_blocking(
    r: &Reranker,
    call: &Call,
    limits: &ImageLimits,
    name: &str,
) -> Result<Scored, ApiError> {
    let t0 = Instant::now();
    let arch = &r.info().architecture;
    let Some(processor) = r.image_processor() else {
        // A text model: name the first image document.
        for (g, group) in call.groups.iter().enumerate() {
            if let Some(i) = group.images.iter().position(Option::is_some) {
                return Err(ApiError::validation(format!(
                    "{}[{i}] is an image, but model {name} ({arch}) is a text model: it scores text documents only",
                    field(call, g)
                )));
            }
        }
        return Err(ApiError::backend(
            "a text-only request reached the image path",
        ));
    };
    if call.instruction.is_some() {
        return Err(ApiError::validation(format!(
            "instruction: model {name} ({arch}) takes none (only LLM rerankers have a prompt template)"
        )));
    }
    let max_length = r.info().max_length;
    // Every group's images decoded first (an error names its document), then every pair of
    // the request in one call: an image sent in several groups runs the vision tower once.
    let mut pixels = Vec::new();
    let mut pairs = Vec::new();
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
            pairs.push((g, pixels.len()));
            pixels.push(px);
        }
    }
    let queries: Vec<&str> = call.groups.iter().map(|g| g.query.as_str()).collect();
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let (logits, truncated) = if pairs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        r.score_image_pairs(&queries, &pairs, &refs, None)
            .map_err(|e| match e {
                Error::Input(m) => ApiError::validation(m),
                other => ApiError::backend(other.to_string()),
            })?
    };
    let mut groups = Vec::with_capacity(call.groups.len());
    let mut tokens = 0;
    let mut next = logits.into_iter();
    for (g, group) in call.groups.iter().enumerate() {
        if truncated.get(g).copied().unwrap_or(false) && !call.truncate {
            return Err(ApiError::too_large(format!(
                "the query of {} is longer than the model's max length {max_length} and truncate is false",
                field(call, g)
            )));
        }
        let logits: Vec<f32> = next.by_ref().take(group.docs.len()).collect();
        if !logits.is_empty() {
            let query_tokens = r
                .tokenizer()
                .encode_single(&group.query, max_length)
                .map(|p| p.ids.len())
                .unwrap_or(0);
            tokens += query_tokens * logits.len();
        }
        groups.push(GroupScores { logits });
    }
    Ok(Scored {
        groups,
        tokens,
        queue: Duration::ZERO,
        infer: t0.elapsed(),
    })
}
