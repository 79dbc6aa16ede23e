//! The audit's query set: JSON lines, one query with its candidates per line,
//!
//! ```json
//! {"id": "q1", "query": "...", "documents": ["...", {"text": "...", "id": "d7"}, {"image": "..."}]}
//! ```
//!
//! `id` (string or number) is optional on the query and on a document; blank lines are skipped.
//! `crossrank serve --sample-traffic` writes this format. The file is read line by line, never
//! whole: once to check it (a malformed line fails before any model is loaded), once to score.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One candidate document.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    pub text: String,
    /// The caller's stable id, when given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
}

/// One line of the query set.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub id: Option<String>,
    pub query: String,
    pub docs: Vec<Doc>,
}

impl QueryLine {
    /// The query's id, or `line N` when it has none.
    pub fn label(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!("line {}", self.line),
        }
    }
}

/// An id field: a string, or a number written as JSON writes it.
fn id_of(v: Option<&Value>, what: &str) -> std::result::Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{what} \"id\" is neither a string nor a number")),
    }
}

/// Parses one line (`n` is its 1-based number, `name` the file, both for errors). `None` for a
/// blank line.
pub fn parse_line(text: &str, n: usize, name: &str) -> Result<Option<QueryLine>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bad = |msg: String| Error::input(format!("{name}: line {n}: {msg}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let Value::Object(mut o) = v else {
        return Err(bad("not a JSON object".into()));
    };
    let id = id_of(o.get("id"), "the query's").map_err(bad)?;
    let query = match o.remove("query") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("\"query\" is not a string".into())),
        None => return Err(bad("no \"query\" field".into())),
    };
    let items = match o.remove("documents") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("\"documents\" is not an array".into())),
        None => return Err(bad("no \"documents\" array".into())),
    };
    let mut docs = Vec::with_capacity(items.len());
    for (j, item) in items.into_iter().enumerate() {
        let j = j + 1;
        match item {
            Value::String(text) => docs.push(Doc { text, id: None }),
            Value::Object(mut d) => {
                let id = id_of(d.get("id"), &format!("document {j}'s")).map_err(bad)?;
                match d.remove("text") {
                    Some(Value::String(text)) => docs.push(Doc { text, id }),
                    Some(_) => return Err(bad(format!("document {j}'s \"text\" is not a string"))),
                    None if d.contains_key("image") => {
                        return Err(bad(format!(
                            "document {j} is an image; both models are text cross-encoders \
                             (image documents need a visual cross-encoder)"
                        )))
                    }
                    None => {
                        return Err(bad(format!(
                            "document {j} is an object without a string \"text\" field"
                        )))
                    }
                }
            }
            _ => {
                return Err(bad(format!(
                    "document {j} is neither a string nor an object with \"text\""
                )))
            }
        }
    }
    Ok(Some(QueryLine {
        line: n,
        id,
        query,
        docs,
    }))
}

/// Reads the query set line by line.
pub struct QueryReader {
    lines: std::io::Lines<BufReader<File>>,
    name: String,
    line: usize,
}

impl QueryReader {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::input(format!("queries file {name}: not found")),
            _ => Error::input(format!("queries file {name}: {e}")),
        })?;
        Ok(QueryReader {
            lines: BufReader::new(file).lines(),
            name,
            line: 0,
        })
    }
}

impl Iterator for QueryReader {
    type Item = Result<QueryLine>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(e) => {
                    self.line += 1;
                    let msg = if e.kind() == std::io::ErrorKind::InvalidData {
                        "not valid UTF-8".to_string()
                    } else {
                        e.to_string()
                    };
                    return Some(Err(Error::input(format!(
                        "{}: line {}: {msg}",
                        self.name, self.line
                    ))));
                }
            };
            self.line += 1;
            match parse_line(&text, self.line, &self.name) {
                Ok(None) => continue,
                Ok(Some(q)) => return Some(Ok(q)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What the checking pass learns about a query set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetShape {
    pub queries: usize,
    pub pairs: usize,
    /// The most documents of one query.
    pub max_docs: usize,
}

/// Reads the whole set once without keeping it: the first malformed line is the error.
pub fn check(path: &Path) -> Result<SetShape> {
    let mut shape = SetShape::default();
    for q in QueryReader::open(path)? {
        let q = q?;
        shape.queries += 1;
        shape.pairs += q.docs.len();
        shape.max_docs = shape.max_docs.max(q.docs.len());
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_line(text, 7, "q.jsonl").unwrap_err().to_string()
    }

    #[test]
    fn parses_strings_objects_ids_and_blank_lines() {
        let q = parse_line(
            r#"{"id": 12, "query": "q", "documents": ["a", {"text": "b", "id": "d2"}, {"text": "c", "id": 3}]}"#,
            4,
            "f",
        )
        .unwrap()
        .unwrap();
        assert_eq!(q.line, 4);
        assert_eq!(q.id.as_deref(), Some("12"));
        assert_eq!(q.query, "q");
        let ids: Vec<Option<&str>> = q.docs.iter().map(|d| d.id.as_deref()).collect();
        assert_eq!(ids, vec![None, Some("d2"), Some("3")]);
        assert_eq!(q.docs[1].text, "b");
        assert_eq!(q.label(), "12");
        assert!(parse_line("   ", 1, "f").unwrap().is_none());
        let e = parse_line(r#"{"query": "q", "documents": []}"#, 9, "f")
            .unwrap()
            .unwrap();
        assert!(e.docs.is_empty());
        assert_eq!(e.label(), "line 9");
    }

    #[test]
    fn errors_name_the_file_the_line_and_what_was_wrong() {
        assert!(err("{nope").starts_with("q.jsonl: line 7: not valid JSON"));
        assert_eq!(err("[1]"), "q.jsonl: line 7: not a JSON object");
        assert_eq!(
            err(r#"{"documents": []}"#),
            "q.jsonl: line 7: no \"query\" field"
        );
        assert_eq!(
            err(r#"{"query": "q"}"#),
            "q.jsonl: line 7: no \"documents\" array"
        );
        assert_eq!(
            err(r#"{"query": "q", "documents": "a"}"#),
            "q.jsonl: line 7: \"documents\" is not an array"
        );
        assert_eq!(
            err(r#"{"query": "q", "documents": ["a", 5]}"#),
            "q.jsonl: line 7: document 2 is neither a string nor an object with \"text\""
        );
        assert!(
            err(r#"{"query": "q", "documents": ["a", {"image": "x.png"}]}"#)
                .starts_with("q.jsonl: line 7: document 2 is an image; both models are text")
        );
        assert_eq!(
            err(r#"{"query": "q", "id": [1], "documents": []}"#),
            "q.jsonl: line 7: the query's \"id\" is neither a string nor a number"
        );
    }
}
