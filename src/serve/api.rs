//! The wire formats: requests parsed and checked into one [`Call`], results rendered back in
//! the shape of the route that asked. HTTP and stdio share all of it.
//!
//! - `/rerank` (TEI): `{model?, query, texts, raw_scores, return_text, truncate,
//!   truncation_direction}`
//!   → `[{index, score, text?}]`.
//! - `/v1/rerank`, `/v2/rerank` (Cohere, Jina): `{model?, query, documents: [string | {text} |
//!   {image}], top_n?, return_documents?}` → `{id, model, results: [{index, relevance_score,
//!   document?}], meta, usage}`. An image document (Jina's multimodal shape, for an image-text
//!   model) is `{"image": "data:image/...;base64,..."}` or bare base64; a remote URL is refused
//!   (422: never fetched), bytes past --max-image-bytes are a 413.
//! - `/rerank/batch`: `{model?, groups: [{query, documents, top_n?}], raw_scores?,
//!   return_documents?, truncate?}` → `{id, model, groups: [{results: [...]}], usage}`.
//!
//! `model` names the served model that scores the request (the default one without it); the
//! answer's `model` is the name of the model that scored it.
//!
//! Every route also takes `timeout_ms` (a positive integer): the request's latency budget, and
//! `instruction` (a string): an LLM reranker's instruction in place of its template's default
//! (a model without a template answers 422).
//!
//! Unknown fields are ignored (clients such as the Cohere SDK send fields we do not use).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::sigmoid;
use crate::pixels::{self, ImageError, ImageLimits};
use crate::tokenize::TruncationSide;

/// An error answer: an HTTP status and `{"error": message, "error_type": kind}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 422: the request parsed but a field is wrong.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(422, "validation", message)
    }

    /// 413: a limit was passed.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "too_large", message)
    }

    /// 500: the forward pass or the service failed.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(500, "backend", message)
    }

    /// 504: the request's deadline passed before it was scored.
    pub fn deadline(timeout: Timeout) -> Self {
        Self::new(
            504,
            "timeout",
            format!(
                "the request was not scored within its budget of {} ms ({}); its pairs not yet scored were dropped",
                timeout.ms, timeout.source
            ),
        )
    }

    pub fn body(&self) -> Value {
        json!({ "error": self.message, "error_type": self.kind })
    }
}

/// The routes that score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// TEI's `/rerank`.
    Tei,
    /// Cohere and Jina's `/v1/rerank` and `/v2/rerank`.
    Cohere { version: u8 },
    /// `/rerank/batch`: many groups in one call.
    Batch,
}

impl Route {
    pub fn path(self) -> &'static str {
        match self {
            Route::Tei => "/rerank",
            Route::Cohere { version: 1 } => "/v1/rerank",
            Route::Cohere { .. } => "/v2/rerank",
            Route::Batch => "/rerank/batch",
        }
    }

    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/rerank" => Some(Route::Tei),
            "/v1/rerank" => Some(Route::Cohere { version: 1 }),
            "/v2/rerank" => Some(Route::Cohere { version: 2 }),
            "/rerank/batch" => Some(Route::Batch),
            _ => None,
        }
    }
}

/// Limits every request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most documents in one request, all groups together.
    pub max_client_batch_size: usize,
    /// What one image document may cost (--max-image-bytes, --max-image-pixels).
    pub image: ImageLimits,
}

/// A request's latency budget, counted from when it is accepted, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub ms: u64,
    /// `timeout_ms`, `X-Request-Timeout-Ms` or `--request-timeout-ms`: named in the 504.
    pub source: &'static str,
}

impl Timeout {
    /// A budget given as text (a header): a positive integer of milliseconds, or a 400 naming
    /// `source`.
    pub fn parse(text: &str, source: &'static str) -> Result<Timeout, ApiError> {
        match text.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Timeout { ms, source }),
            _ => Err(ApiError::new(
                400,
                "invalid_header",
                format!("{source} must be a positive integer of milliseconds, got {text:?}"),
            )),
        }
    }

    /// The body's `timeout_ms`: absent or null is none, a positive integer is a budget,
    /// anything else a 422 naming the field.
    fn from_field(value: Option<Value>) -> Result<Option<Timeout>, ApiError> {
        let source = "timeout_ms";
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(ms) if ms > 0 => Ok(Some(Timeout { ms, source })),
                _ => Err(ApiError::validation(format!(
                    "{source} must be a positive integer of milliseconds, got {v}"
                ))),
            },
        }
    }
}

/// One query and its documents.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupIn {
    pub query: String,
    /// The documents as sent: texts, and for an image document its reference as written.
    pub docs: Vec<String>,
    /// Each document's image bytes (None for a text), or empty when every document is text.
    pub images: Vec<Option<Vec<u8>>>,
    pub top_n: Option<usize>,
}

/// A checked request, whatever route it came by.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub route: Route,
    pub groups: Vec<GroupIn>,
    /// Logits instead of sigmoid(logit).
    pub raw_scores: bool,
    /// Echo the document text back.
    pub return_docs: bool,
    /// Cut over-long pairs (true) or refuse them with 413 (false).
    pub truncate: bool,
    /// Which end of an over-long pair is cut (TEI's truncation_direction).
    pub truncation_side: TruncationSide,
    /// The client's `model` field: the served model to score with (None: the default one).
    pub model: Option<String>,
    /// The latency budget: the body's `timeout_ms`, else the header, else the server default.
    pub timeout: Option<Timeout>,
    /// An LLM reranker's instruction (the body's `instruction`) in place of its template's
    /// default; a model without a template answers it with a 422.
    pub instruction: Option<String>,
}

impl Call {
    pub fn documents(&self) -> usize {
        self.groups.iter().map(|g| g.docs.len()).sum()
    }

    /// Whether any document is an image.
    pub fn has_images(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.images.iter().any(Option::is_some))
    }
}

#[derive(Deserialize)]
struct TeiRequest {
    #[serde(default)]
    timeout_ms: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    instruction: Option<String>,
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
}

#[derive(Deserialize)]
struct CohereRequest {
    #[serde(default)]
    timeout_ms: Option<Value>,
    #[serde(default)]
    instruction: Option<String>,
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<Value>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: Option<bool>,
}

#[derive(Deserialize)]
struct BatchGroup {
    query: String,
    documents: Vec<Value>,
    #[serde(default)]
    top_n: Option<usize>,
}

#[derive(Deserialize)]
struct BatchRequest {
    #[serde(default)]
    timeout_ms: Option<Value>,
    #[serde(default)]
    instruction: Option<String>,
    #[serde(default)]
    model: Option<String>,
    groups: Vec<BatchGroup>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_documents: bool,
    #[serde(default)]
    truncate: Option<bool>,
}

/// Parses a request body: invalid UTF-8 and malformed JSON are 400, wrong or missing fields
/// 422, limits 413.
pub fn parse_body(route: Route, body: &[u8], limits: &Limits) -> Result<Call, ApiError> {
    parse_value(route, parse_json(body, "body")?, limits)
}

/// Bytes to JSON: invalid UTF-8 and malformed JSON are 400. `what` names the bytes in errors.
pub fn parse_json(bytes: &[u8], what: &str) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::new(
            400,
            "invalid_utf8",
            format!("the {what} is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::new(400, "invalid_json", format!("the {what} is not JSON: {e}")))
}

/// Checks an already parsed JSON request.
pub fn parse_value(route: Route, value: Value, limits: &Limits) -> Result<Call, ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation("the body must be a JSON object"));
    }
    let bad = |e: serde_json::Error| ApiError::validation(format!("invalid request: {e}"));
    let call = match route {
        Route::Tei => {
            let r: TeiRequest = serde_json::from_value(value).map_err(bad)?;
            let truncation_side = direction(r.truncation_direction.as_deref())?;
            Call {
                route,
                groups: vec![GroupIn {
                    query: r.query,
                    docs: r.texts,
                    images: Vec::new(),
                    top_n: None,
                }],
                raw_scores: r.raw_scores,
                return_docs: r.return_text,
                truncate: r.truncate.unwrap_or(true),
                truncation_side,
                model: r.model,
                timeout: Timeout::from_field(r.timeout_ms)?,
                instruction: r.instruction,
            }
        }
        Route::Cohere { .. } => {
            let r: CohereRequest = serde_json::from_value(value).map_err(bad)?;
            let (docs, images) = documents(r.documents, "documents", &limits.image)?;
            Call {
                route,
                groups: vec![GroupIn {
                    query: r.query,
                    docs,
                    images,
                    top_n: r.top_n,
                }],
                raw_scores: false,
                return_docs: r.return_documents.unwrap_or(false),
                truncate: true,
                truncation_side: TruncationSide::Right,
                model: r.model,
                timeout: Timeout::from_field(r.timeout_ms)?,
                instruction: r.instruction,
            }
        }
        Route::Batch => {
            let r: BatchRequest = serde_json::from_value(value).map_err(bad)?;
            let groups = r
                .groups
                .into_iter()
                .enumerate()
                .map(|(g, group)| {
                    let field = format!("groups[{g}].documents");
                    let (docs, images) = documents(group.documents, &field, &limits.image)?;
                    Ok(GroupIn {
                        query: group.query,
                        docs,
                        images,
                        top_n: group.top_n,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            Call {
                route,
                groups,
                raw_scores: r.raw_scores,
                return_docs: r.return_documents,
                truncate: r.truncate.unwrap_or(true),
                truncation_side: TruncationSide::Right,
                model: r.model,
                timeout: Timeout::from_field(r.timeout_ms)?,
                instruction: r.instruction,
            }
        }
    };
    let n = call.documents();
    if n > limits.max_client_batch_size {
        return Err(ApiError::too_large(format!(
            "{n} documents in one request is more than --max-client-batch-size {}",
            limits.max_client_batch_size
        )));
    }
    Ok(call)
}

/// Documents as strings, `{"text": ...}` or `{"image": ...}` objects: the texts (an image's
/// reference as sent) and, if any is an image, every document's image bytes. Errors name the
/// index: 422 for a wrong shape, a remote URL or bad base64, 413 past --max-image-bytes.
#[allow(clippy::type_complexity)]
fn documents(
    values: Vec<Value>,
    field: &str,
    limits: &ImageLimits,
) -> Result<(Vec<String>, Vec<Option<Vec<u8>>>), ApiError> {
    let mut docs = Vec::with_capacity(values.len());
    let mut images: Vec<Option<Vec<u8>>> = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let (text, image) = match v {
            Value::String(s) => (s, None),
            Value::Object(mut m) => match (m.remove("text"), m.remove("image")) {
                (Some(Value::String(s)), None) => (s, None),
                (Some(_), None) => {
                    return Err(ApiError::validation(format!(
                        "{field}[{i}].text must be a string"
                    )))
                }
                (None, Some(Value::String(src))) => {
                    let bytes = image_bytes(&src, limits)
                        .map_err(|e| image_error(e, &format!("{field}[{i}].image")))?;
                    (src, Some(bytes))
                }
                (None, Some(_)) => {
                    return Err(ApiError::validation(format!(
                        "{field}[{i}].image must be a string: a data:image/...;base64,... URI"
                    )))
                }
                (Some(_), Some(_)) => {
                    return Err(ApiError::validation(format!(
                    "{field}[{i}] has both \"text\" and \"image\"; a document is one or the other"
                )))
                }
                (None, None) => {
                    return Err(ApiError::validation(format!(
                        "{field}[{i}] has no \"text\" field"
                    )))
                }
            },
            _ => {
                return Err(ApiError::validation(format!(
                    "{field}[{i}] must be a string or an object with a \"text\" or \"image\" field"
                )))
            }
        };
        if image.is_some() && images.is_empty() {
            images.resize(i, None);
        }
        if image.is_some() || !images.is_empty() {
            images.push(image);
        }
        docs.push(text);
    }
    Ok((docs, images))
}

/// An image document's bytes: a data URI, or bare base64 as Jina's API takes it; a remote URL
/// is refused.
fn image_bytes(src: &str, limits: &ImageLimits) -> Result<Vec<u8>, ImageError> {
    if pixels::is_remote_url(src) {
        return Err(ImageError::Invalid(pixels::REMOTE_REFUSED.to_string()));
    }
    match pixels::data_uri(src, limits)? {
        Some(bytes) => Ok(bytes),
        None if src.contains(':') => Err(ImageError::Invalid(
            "must be a data:image/...;base64,... URI or base64 bytes (no other URL scheme is taken)"
                .to_string(),
        )),
        None => pixels::base64_bytes(src, limits),
    }
}

/// An image refused: 413 past a limit, else 422; the message starts with `what`.
pub fn image_error(e: ImageError, what: &str) -> ApiError {
    match e {
        ImageError::TooLarge(m) => ApiError::too_large(format!("{what}: {m}")),
        ImageError::Invalid(m) => ApiError::validation(format!("{what}: {m}")),
    }
}

/// TEI's truncation_direction: transformers' truncation_side, right by default.
fn direction(direction: Option<&str>) -> Result<TruncationSide, ApiError> {
    match direction {
        None | Some("right") | Some("Right") => Ok(TruncationSide::Right),
        Some("left") | Some("Left") => Ok(TruncationSide::Left),
        Some(other) => Err(ApiError::validation(format!(
            "truncation_direction must be \"right\" or \"left\", got {other:?}"
        ))),
    }
}

/// The scores of one group, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupScores {
    pub logits: Vec<f32>,
}

/// Sorts a group best first (ties keep input order; NaN last) and applies top_n.
pub fn order(logits: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let key = |i: usize| {
        if logits[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            logits[i]
        }
    };
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    if let Some(n) = top_n {
        idx.truncate(n);
    }
    idx
}

/// Facts every rendered answer may carry.
pub struct Meta<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub total_tokens: usize,
}

/// Renders the answer in the shape the route's clients expect.
pub fn render(call: &Call, scores: &[GroupScores], meta: &Meta) -> Value {
    let score = |logit: f32| {
        if call.raw_scores {
            logit
        } else {
            sigmoid(logit)
        }
    };
    let results = |g: &GroupIn, s: &GroupScores, score_key: &str, text_key: &str| -> Value {
        order(&s.logits, g.top_n)
            .into_iter()
            .map(|i| {
                let mut r = json!({ "index": i, score_key: score(s.logits[i]) });
                if call.return_docs {
                    r[text_key] = if call.route == Route::Tei {
                        json!(g.docs[i])
                    } else if g.images.get(i).is_some_and(Option::is_some) {
                        json!({ "image": g.docs[i] })
                    } else {
                        json!({ "text": g.docs[i] })
                    };
                }
                r
            })
            .collect()
    };
    let model = meta.model;
    match call.route {
        Route::Tei => results(&call.groups[0], &scores[0], "score", "text"),
        Route::Cohere { version } => json!({
            "id": meta.id,
            "model": model,
            "results": results(&call.groups[0], &scores[0], "relevance_score", "document"),
            "meta": {
                "api_version": { "version": version.to_string() },
                "billed_units": { "search_units": 1 },
            },
            "usage": { "total_tokens": meta.total_tokens },
        }),
        Route::Batch => json!({
            "id": meta.id,
            "model": model,
            "groups": call.groups.iter().zip(scores).map(|(g, s)| {
                json!({ "results": results(g, s, "relevance_score", "document") })
            }).collect::<Vec<_>>(),
            "usage": { "total_tokens": meta.total_tokens },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_client_batch_size: 3,
            image: ImageLimits {
                max_bytes: 4,
                max_pixels: 100,
            },
        }
    }

    #[test]
    fn errors_have_the_documented_statuses() {
        let l = limits();
        let tei = Route::Tei;
        assert_eq!(parse_body(tei, b"\xff{}", &l).unwrap_err().status, 400);
        assert_eq!(parse_body(tei, b"{\"query\":", &l).unwrap_err().status, 400);
        assert_eq!(parse_body(tei, b"[1]", &l).unwrap_err().status, 422);
        let wrong_type = parse_body(tei, br#"{"query": 1, "texts": []}"#, &l).unwrap_err();
        assert_eq!((wrong_type.status, wrong_type.kind), (422, "validation"));
        let missing = parse_body(tei, br#"{"query": "q"}"#, &l).unwrap_err();
        assert!(missing.message.contains("texts"), "{}", missing.message);
        let many = parse_body(tei, br#"{"query": "q", "texts": ["a","b","c","d"]}"#, &l);
        let many = many.unwrap_err();
        assert_eq!(many.status, 413);
        assert!(many.message.contains("--max-client-batch-size 3"));
        let left = br#"{"query": "q", "texts": [], "truncation_direction": "left"}"#;
        let left = parse_body(tei, left, &l).unwrap();
        assert_eq!(left.truncation_side, TruncationSide::Left);
        let up = br#"{"query": "q", "texts": [], "truncation_direction": "up"}"#;
        assert_eq!(parse_body(tei, up, &l).unwrap_err().status, 422);
    }

    #[test]
    fn cohere_documents_are_strings_or_text_objects() {
        let body =
            br#"{"query": "q", "documents": ["a", {"text": "b", "title": "t"}], "top_n": 1}"#;
        let call = parse_body(Route::Cohere { version: 1 }, body, &limits()).unwrap();
        assert_eq!(call.groups[0].docs, vec!["a", "b"]);
        assert_eq!(call.groups[0].top_n, Some(1));
        let bad = br#"{"query": "q", "documents": ["a", {"title": "t"}]}"#;
        let err = parse_body(Route::Cohere { version: 2 }, bad, &limits()).unwrap_err();
        assert_eq!(err.message, "documents[1] has no \"text\" field");
    }

    /// Image documents: data URIs and bare base64 decoded at parse, every answer naming the
    /// document: a remote URL or bad base64 422, past --max-image-bytes 413.
    #[test]
    fn image_documents_are_parsed_and_checked() {
        let l = limits();
        let v1 = Route::Cohere { version: 1 };
        let body = br#"{"query": "q", "documents": ["a", {"image": "data:image/png;base64,AAEC"}, {"image": "AAEC"}]}"#;
        let call = parse_body(v1, body, &l).unwrap();
        assert!(call.has_images());
        let g = &call.groups[0];
        assert_eq!(
            g.images,
            vec![None, Some(vec![0, 1, 2]), Some(vec![0, 1, 2])]
        );
        assert_eq!(g.docs[1], "data:image/png;base64,AAEC");
        let text = parse_body(v1, br#"{"query": "q", "documents": ["a"]}"#, &l).unwrap();
        assert!(!text.has_images() && text.groups[0].images.is_empty());
        let cases: [(&[u8], u16, &str); 5] = [
            (
                br#"{"query": "q", "documents": [{"image": "https://x.test/a.png"}]}"#,
                422,
                "documents[0].image: remote URLs are not fetched",
            ),
            (
                br#"{"query": "q", "documents": ["a", {"image": "ftp://x/a.png"}]}"#,
                422,
                "documents[1].image: must be a data:",
            ),
            (
                br#"{"query": "q", "documents": [{"image": "data:image/png;base64,@@@@"}]}"#,
                422,
                "documents[0].image: invalid base64",
            ),
            (
                br#"{"query": "q", "documents": [{"image": "data:image/png;base64,AAECAwQF"}]}"#,
                413,
                "documents[0].image: the image is 6 bytes",
            ),
            (
                br#"{"query": "q", "documents": [{"image": 3}]}"#,
                422,
                "documents[0].image must be a string",
            ),
        ];
        for (body, status, msg) in cases {
            let e = parse_body(v1, body, &l).unwrap_err();
            assert_eq!(e.status, status, "{}", e.message);
            assert!(e.message.starts_with(msg), "{}", e.message);
        }
        let batch = br#"{"groups": [{"query": "a", "documents": ["x"]}, {"query": "b", "documents": [{"image": "http://h/i.png"}]}]}"#;
        let e = parse_body(Route::Batch, batch, &l).unwrap_err();
        assert!(
            e.message
                .starts_with("groups[1].documents[0].image: remote"),
            "{}",
            e.message
        );
    }

    #[test]
    fn batch_limit_counts_every_group() {
        let body = br#"{"groups": [{"query": "a", "documents": ["x", "y"]},
                                   {"query": "b", "documents": ["z", "w"]}]}"#;
        let err = parse_body(Route::Batch, body, &limits()).unwrap_err();
        assert_eq!(err.status, 413);
    }

    /// The limit is inclusive: exactly --max-client-batch-size documents are accepted, in one
    /// group or summed over a batch's groups; one more is a 413.
    #[test]
    fn exactly_the_batch_limit_is_accepted() {
        let l = limits();
        let tei = br#"{"query": "q", "texts": ["a", "b", "c"]}"#;
        assert_eq!(parse_body(Route::Tei, tei, &l).unwrap().documents(), 3);
        let cohere = br#"{"query": "q", "documents": ["a", "b", {"text": "c"}]}"#;
        let call = parse_body(Route::Cohere { version: 1 }, cohere, &l).unwrap();
        assert_eq!(call.documents(), 3);
        let batch = br#"{"groups": [{"query": "a", "documents": ["x", "y"]},
                                    {"query": "b", "documents": []},
                                    {"query": "c", "documents": ["z"]}]}"#;
        assert_eq!(parse_body(Route::Batch, batch, &l).unwrap().documents(), 3);
        let over = br#"{"query": "q", "texts": ["a", "b", "c", "d"]}"#;
        assert_eq!(parse_body(Route::Tei, over, &l).unwrap_err().status, 413);
    }

    #[test]
    fn order_is_best_first_ties_in_input_order_nan_last() {
        assert_eq!(order(&[0.5, f32::NAN, 2.0, 0.5], None), vec![2, 0, 3, 1]);
        assert_eq!(order(&[0.5, 1.0], Some(1)), vec![1]);
        assert_eq!(order(&[0.5, 1.0], Some(5)), vec![1, 0]);
    }

    #[test]
    fn renders_each_route_shape() {
        let l = limits();
        let body =
            br#"{"query": "q", "texts": ["a", "b"], "return_text": true, "raw_scores": true}"#;
        let call = parse_body(Route::Tei, body, &l).unwrap();
        let scores = [GroupScores {
            logits: vec![-1.0, 3.0],
        }];
        let meta = Meta {
            id: "x",
            model: "m",
            total_tokens: 9,
        };
        let v = render(&call, &scores, &meta);
        assert_eq!(
            v,
            json!([{"index": 1, "score": 3.0, "text": "b"}, {"index": 0, "score": -1.0, "text": "a"}])
        );
        let body = br#"{"query": "q", "documents": ["a", "b"], "return_documents": true}"#;
        let call = parse_body(Route::Cohere { version: 2 }, body, &l).unwrap();
        let v = render(&call, &scores, &meta);
        assert_eq!(v["results"][0]["document"], json!({"text": "b"}));
        assert_eq!(v["results"][0]["relevance_score"], json!(sigmoid(3.0)));
        assert_eq!(v["meta"]["api_version"]["version"], "2");
        assert_eq!(v["usage"]["total_tokens"], 9);
    }
}
