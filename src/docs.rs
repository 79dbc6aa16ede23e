//! Reading the passages of a `rerank` call: `-` for stdin, a `.jsonl` file (each line a JSON
//! string or an object with a "text" field), or plain text with one passage per line.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads passages from a path (`-` is stdin). Errors name the path and the line.
pub fn read_docs(path: &str) -> Result<Vec<String>> {
    let (bytes, jsonl) = if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::input(format!("stdin: {e}")))?;
        (buf, false)
    } else {
        let p = Path::new(path);
        let bytes = std::fs::read(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::input(format!("docs file {path}: not found")),
            _ => Error::input(format!("docs file {path}: {e}")),
        })?;
        (bytes, p.extension().is_some_and(|e| e == "jsonl"))
    };
    parse_docs(&bytes, jsonl, if path == "-" { "stdin" } else { path })
}

/// Splits the bytes into passages. `name` is used in errors.
pub fn parse_docs(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<String>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut docs = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line)
            .map_err(|_| Error::input(format!("{name}: line {n} is not valid UTF-8")))?;
        if !jsonl {
            docs.push(text.to_string());
            continue;
        }
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("{name}: line {n} is not valid JSON: {e}")))?;
        match v {
            serde_json::Value::String(s) => docs.push(s),
            serde_json::Value::Object(mut o) => match o.remove("text") {
                Some(serde_json::Value::String(s)) => docs.push(s),
                _ => {
                    return Err(Error::input(format!(
                        "{name}: line {n} is an object without a string \"text\" field"
                    )))
                }
            },
            _ => {
                return Err(Error::input(format!(
                    "{name}: line {n} is neither a JSON string nor an object with \"text\""
                )))
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_keep_empty_passages() {
        let d = parse_docs(b"a\n\nb c\r\n", false, "x").unwrap();
        assert_eq!(d, vec!["a", "", "b c"]);
    }

    #[test]
    fn jsonl_strings_and_objects() {
        let d = parse_docs(
            b"\"a\"\n{\"text\":\"\"}\n\n{\"text\":\"b\",\"id\":3}\n",
            true,
            "x",
        )
        .unwrap();
        assert_eq!(d, vec!["a", "", "b"]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_docs(b"ok\n\xff\xfe\n", false, "f.txt").unwrap_err();
        assert_eq!(e.to_string(), "f.txt: line 2 is not valid UTF-8");
        let e = parse_docs(b"\"a\"\n{\"x\":1}\n", true, "f.jsonl").unwrap_err();
        assert!(
            e.to_string().starts_with("f.jsonl: line 2 is an object"),
            "{e}"
        );
        let e = parse_docs(b"[1]\n", true, "f.jsonl").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn empty_input_is_no_passages() {
        assert!(parse_docs(b"", false, "x").unwrap().is_empty());
        assert!(parse_docs(b"", true, "x").unwrap().is_empty());
    }
}
