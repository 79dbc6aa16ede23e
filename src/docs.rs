//! Reading the documents of a `rerank` call: `-` for stdin, a `.jsonl` file (each line a JSON
//! string, an object with a "text" field, or an object with an "image" field: a path relative
//! to the file's folder or a `data:image/...;base64,...` URI), or plain text with one passage
//! per line. A file's documents are all text or all images.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pixels::{self, ImageLimits};

/// A `rerank --docs` file's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Docs {
    Texts(Vec<String>),
    /// Each image's encoded bytes (PNG, JPEG or WebP; decoded later, by the model's processor).
    Images(Vec<Vec<u8>>),
}

/// One line of a docs file.
enum Entry {
    Text(String),
    /// An image reference as written: a path or a data URI.
    Image(String),
}

/// Reads documents from a path (`-` is stdin). Errors name the path and the line.
pub fn read_docs(path: &str) -> Result<Docs> {
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
    let name = if path == "-" { "stdin" } else { path };
    let base = Path::new(path).parent().unwrap_or(Path::new(""));
    let entries = entries(&bytes, jsonl, name)?;
    let Some((_, Entry::Image(_))) = entries.first() else {
        return text_only(entries, name).map(Docs::Texts);
    };
    let limits = ImageLimits::default();
    let mut images = Vec::with_capacity(entries.len());
    for (n, e) in entries {
        let Entry::Image(src) = e else {
            return Err(Error::input(format!(
                "{name}: line {n} is text but the first document is an image; a file's documents are all text or all images"
            )));
        };
        images.push(
            image_bytes(&src, base, &limits).map_err(|m| {
                Error::input(format!("{name}: line {n}: image {}: {m}", short(&src)))
            })?,
        );
    }
    Ok(Docs::Images(images))
}

/// An image reference's bytes: a data URI decoded, a path read relative to `base`; a remote
/// URL refused.
fn image_bytes(
    src: &str,
    base: &Path,
    limits: &ImageLimits,
) -> std::result::Result<Vec<u8>, String> {
    if pixels::is_remote_url(src) {
        return Err(pixels::REMOTE_REFUSED.to_string());
    }
    if let Some(bytes) = pixels::data_uri(src, limits).map_err(|e| e.to_string())? {
        return Ok(bytes);
    }
    let path = base.join(src);
    std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} not found", path.display()),
        _ => format!("{}: {e}", path.display()),
    })
}

/// An image reference for an error line: a data URI cut to its header.
fn short(src: &str) -> String {
    match src.split_once(',') {
        Some((head, _)) if src.len() > 80 => format!("{head},..."),
        _ => format!("{src:?}"),
    }
}

/// The texts of a file with no image documents, or an error naming the first image's line.
fn text_only(entries: Vec<(usize, Entry)>, name: &str) -> Result<Vec<String>> {
    entries
        .into_iter()
        .map(|(n, e)| match e {
            Entry::Text(t) => Ok(t),
            Entry::Image(_) => Err(Error::input(format!(
                "{name}: line {n} is an image but the first document is text; a file's documents are all text or all images"
            ))),
        })
        .collect()
}

/// Splits the bytes into passages; a file with image documents is refused, naming the line.
/// `name` is used in errors.
pub fn parse_docs(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<String>> {
    text_only(entries(bytes, jsonl, name)?, name)
}

/// The documents of a file with their line numbers.
fn entries(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<(usize, Entry)>> {
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
            docs.push((n, Entry::Text(text.to_string())));
            continue;
        }
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("{name}: line {n} is not valid JSON: {e}")))?;
        match v {
            serde_json::Value::String(s) => docs.push((n, Entry::Text(s))),
            serde_json::Value::Object(mut o) => match (o.remove("text"), o.remove("image")) {
                (Some(serde_json::Value::String(s)), None) => docs.push((n, Entry::Text(s))),
                (None, Some(serde_json::Value::String(s))) => docs.push((n, Entry::Image(s))),
                (Some(_), Some(_)) => {
                    return Err(Error::input(format!(
                        "{name}: line {n} has both \"text\" and \"image\"; a document is one or the other"
                    )))
                }
                _ => {
                    return Err(Error::input(format!(
                        "{name}: line {n} is an object without a string \"text\" or \"image\" field"
                    )))
                }
            },
            _ => {
                return Err(Error::input(format!(
                    "{name}: line {n} is neither a JSON string nor an object with \"text\" or \"image\""
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
    fn image_documents_are_paths_or_data_uris_never_urls() {
        let dir = std::env::temp_dir().join(format!("crossrank-docs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"png bytes").unwrap();
        let file = dir.join("docs.jsonl");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        write("{\"image\": \"a.png\"}\n\n{\"image\": \"data:image/png;base64,AAEC\"}\n");
        let want = Docs::Images(vec![b"png bytes".to_vec(), vec![0, 1, 2]]);
        assert_eq!(read_docs(path).unwrap(), want);
        write("{\"image\": \"a.png\"}\n{\"image\": \"https://example.com/b.png\"}\n");
        let e = read_docs(path).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("remote URLs are not fetched"),
            "{e}"
        );
        write("{\"image\": \"missing.png\"}\n");
        let e = read_docs(path).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("not found"), "{e}");
        write("{\"image\": \"a.png\"}\n\"text\"\n");
        let e = read_docs(path).unwrap_err().to_string();
        assert!(e.contains("line 2 is text"), "{e}");
        write("\"text\"\n{\"image\": \"a.png\"}\n");
        let e = read_docs(path).unwrap_err().to_string();
        assert!(e.contains("line 2 is an image"), "{e}");
        write("{\"image\": \"a.png\", \"text\": \"t\"}\n");
        assert!(read_docs(path).unwrap_err().to_string().contains("both"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_input_is_no_passages() {
        assert!(parse_docs(b"", false, "x").unwrap().is_empty());
        assert!(parse_docs(b"", true, "x").unwrap().is_empty());
    }
}
