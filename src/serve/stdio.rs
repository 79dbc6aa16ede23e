//! `crossrank serve --stdio`: one JSON request per line on stdin, one JSON answer per line on
//! stdout in the order answers complete, logs on stderr only.
//!
//! A request line is the body of an HTTP request plus two optional fields: `"id"` (any JSON
//! value, echoed back) and `"route"` (`/rerank`, `/v1/rerank`, `/v2/rerank` or `/rerank/batch`;
//! without it the shape decides: `texts` → /rerank, `documents` → /v1/rerank, `groups` →
//! /rerank/batch). An answer line is `{"id", "status": 200, "result": <the HTTP body>}` or
//! `{"id", "status", "error", "error_type"}`.
//!
//! Lines are read only while fewer than --max-concurrent requests are in progress, so a fast
//! writer is slowed down rather than refused. At end of input every request is answered, then
//! the process exits 0.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::api::{self, ApiError, Route};
use super::{log_request, Served, Service};
use crate::error::{Error, Result};

pub async fn run(service: Arc<Service>) -> Result<()> {
    eprintln!("crossrank serve: reading JSON lines on stdin");
    run_on(service, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serves requests read from `input`, writing answers to `output`, until end of input.
pub async fn run_on(
    service: Arc<Service>,
    input: impl tokio::io::AsyncRead + Unpin,
    mut output: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            output.write_all(line.as_bytes()).await?;
            output.write_all(b"\n").await?;
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let places = Arc::new(Semaphore::new(service.opts.max_concurrent));
    let mut input = BufReader::new(input);
    let mut tasks = JoinSet::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Error::input(format!("stdin: {e}")))?;
        if n == 0 {
            break;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let permit = places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the stdio semaphore closed".into()))?;
        let (service, tx, request) = (service.clone(), tx.clone(), std::mem::take(&mut line));
        tasks.spawn(async move {
            let answer = answer(&service, &request).await;
            drop(permit);
            let _ = tx.send(answer);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    match writer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::input(format!("stdout: {e}"))),
        Err(e) => Err(Error::Internal(format!("stdout writer: {e}"))),
    }
}

/// One request line to one answer line.
async fn answer(service: &Service, line: &[u8]) -> String {
    let start = Instant::now();
    let mut id = Value::Null;
    let mut path = String::from("-");
    let mut served = Served::default();
    let result = async {
        if line.len() > service.opts.max_body_bytes {
            return Err(ApiError::too_large(format!(
                "the line is longer than --max-body-bytes {}",
                service.opts.max_body_bytes
            )));
        }
        let mut value = api::parse_json(line, "line")?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| ApiError::validation("the line must be a JSON object"))?;
        id = obj.remove("id").unwrap_or(Value::Null);
        let route = match obj.remove("route") {
            Some(Value::String(p)) => Route::from_path(&p)
                .ok_or_else(|| ApiError::new(404, "not_found", format!("no such route: {p}")))?,
            Some(_) => return Err(ApiError::validation("\"route\" must be a string")),
            None if obj.contains_key("groups") => Route::Batch,
            None if obj.contains_key("texts") => Route::Tei,
            None if obj.contains_key("documents") => Route::Cohere { version: 1 },
            None => return Err(ApiError::validation(
                "cannot tell the route: give \"route\", or \"texts\", \"documents\" or \"groups\"",
            )),
        };
        path = route.path().to_string();
        let call = api::parse_value(route, value, &service.limits)?;
        service.rerank(call, &mut served).await
    }
    .await;
    let (status, out) = match result {
        Ok(body) => (200, json!({ "id": id, "status": 200, "result": body })),
        Err(e) => (
            e.status,
            json!({ "id": id, "status": e.status, "error": e.message, "error_type": e.kind }),
        ),
    };
    let model = served.model.as_ref().map_or("", |m| m.name.as_str());
    service.metrics.request(
        &format!("stdio:{path}"),
        status,
        model,
        start.elapsed().as_secs_f64(),
    );
    log_request("STDIO", &path, status, &served, start.elapsed());
    out.to_string()
}
