//! `--sample-traffic`: a sample of accepted requests written as `crossrank audit`'s query set
//! (one JSON line per query: `{"id", "query", "documents", "model"}`; texts only, never
//! scores), so that audits can run on real traffic. Off by default. Each request is sampled
//! with probability --sample-rate (a SplitMix64 hash of its number against the rate). The file
//! is rotated at a size limit: the full file becomes `FILE.1` (replacing the previous one) and
//! a new `FILE` starts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::api::Call;
use crate::error::{Error, Result};

/// The sampler's command-line options (flattened into `crossrank serve`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct SampleOptions {
    /// Append a sample of served requests (queries and documents, no scores) to this JSON-lines
    /// file, in `crossrank audit --queries`' format. Off by default.
    #[arg(long)]
    pub sample_traffic: Option<PathBuf>,
    /// The share of requests sampled, in [0, 1].
    #[arg(long, default_value_t = 0.01)]
    pub sample_rate: f64,
    /// Rotate the sample file when a line would take it past this many bytes: it becomes
    /// FILE.1, replacing the previous one.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub sample_max_bytes: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            sample_traffic: None,
            sample_rate: 0.01,
            sample_max_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Sink {
    file: File,
    bytes: u64,
}

/// Decides which requests are sampled and appends them.
pub struct Sampler {
    path: PathBuf,
    rotated: PathBuf,
    /// `rate` as a threshold on a 64-bit hash: a request is sampled when its hash is below.
    threshold: u64,
    all: bool,
    max_bytes: u64,
    seed: u64,
    seen: AtomicU64,
    sink: Mutex<Sink>,
    /// Write errors after the first are not repeated on stderr.
    failed: AtomicU64,
}

/// SplitMix64: a well-mixed 64-bit hash of a counter (Steele, Lea & Flood 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::input(format!("--sample-traffic {}: {e}", path.display())))
}

impl Sampler {
    /// `None` when sampling is off. Refuses a rate outside [0, 1], a zero size limit and a
    /// file that cannot be opened for appending.
    pub fn new(opts: &SampleOptions) -> Result<Option<Self>> {
        let Some(path) = &opts.sample_traffic else {
            return Ok(None);
        };
        if !(0.0..=1.0).contains(&opts.sample_rate) {
            return Err(Error::input(format!(
                "--sample-rate must be between 0 and 1, not {}",
                opts.sample_rate
            )));
        }
        if opts.sample_max_bytes == 0 {
            return Err(Error::input("--sample-max-bytes must be at least 1"));
        }
        let file = open_append(path)?;
        eprintln!(
            "crossrank serve: sampling {} of requests into {} (rotated at {} bytes)",
            opts.sample_rate,
            path.display(),
            opts.sample_max_bytes
        );
        let bytes = file
            .metadata()
            .map_err(|e| Error::input(format!("--sample-traffic {}: {e}", path.display())))?
            .len();
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Some(Sampler {
            path: path.clone(),
            rotated: PathBuf::from(rotated),
            threshold: (opts.sample_rate * u64::MAX as f64) as u64,
            all: opts.sample_rate >= 1.0,
            max_bytes: opts.sample_max_bytes,
            seed,
            seen: AtomicU64::new(0),
            sink: Mutex::new(Sink { file, bytes }),
            failed: AtomicU64::new(0),
        }))
    }

    /// The next request's number when it is sampled.
    fn pick(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        (self.all || splitmix64(self.seed ^ n) < self.threshold).then_some(n)
    }

    /// Offers an accepted request for `model`: sampled ones are appended, one line per query.
    /// Never fails the request: a write error is reported on stderr once.
    pub fn offer(&self, call: &Call, model: &str) {
        let Some(n) = self.pick() else {
            return;
        };
        let mut text = String::new();
        for (g, group) in call.groups.iter().enumerate() {
            let line = serde_json::json!({
                "id": format!("{:x}-{n}-{g}", self.seed),
                "query": group.query,
                "documents": group.docs,
                "model": model,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        if let Err(e) = self.append(text.as_bytes()) {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("crossrank serve: --sample-traffic: {e} (further errors not shown)");
            }
        }
    }

    fn append(&self, bytes: &[u8]) -> Result<()> {
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| Error::Internal("the sample file's lock is poisoned".into()))?;
        let len = bytes.len() as u64;
        if sink.bytes > 0 && sink.bytes + len > self.max_bytes {
            sink.file.flush().map_err(|e| Error::io(&self.path, e))?;
            std::fs::rename(&self.path, &self.rotated).map_err(|e| Error::io(&self.rotated, e))?;
            sink.file = open_append(&self.path)?;
            sink.bytes = 0;
        }
        sink.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        sink.bytes += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::api::{GroupIn, Route};
    use crate::TruncationSide;

    fn call(groups: &[(&str, &[&str])]) -> Call {
        Call {
            route: Route::Batch,
            groups: groups
                .iter()
                .map(|(q, d)| GroupIn {
                    query: q.to_string(),
                    docs: d.iter().map(|s| s.to_string()).collect(),
                    images: Vec::new(),
                    top_n: None,
                })
                .collect(),
            raw_scores: false,
            return_docs: false,
            truncate: true,
            truncation_side: TruncationSide::Right,
            model: None,
            timeout: None,
            instruction: None,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("crossrank-sample-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn opts(path: &Path, rate: f64, max: u64) -> SampleOptions {
        SampleOptions {
            sample_traffic: Some(path.to_path_buf()),
            sample_rate: rate,
            sample_max_bytes: max,
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn off_by_default_and_bad_options_refused() {
        assert!(Sampler::new(&SampleOptions::default()).unwrap().is_none());
        let dir = scratch("bad");
        let f = dir.join("s.jsonl");
        for rate in [-0.1, 1.5, f64::NAN] {
            let e = Sampler::new(&opts(&f, rate, 10)).err().unwrap();
            assert!(e.to_string().starts_with("--sample-rate"), "{e}");
        }
        let e = Sampler::new(&opts(&f, 0.5, 0)).err().unwrap();
        assert!(e.to_string().starts_with("--sample-max-bytes"), "{e}");
        let e = Sampler::new(&opts(&dir.join("no/such/dir.jsonl"), 0.5, 10))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no/such/dir.jsonl"), "{e}");
    }

    /// Rate 1 writes every query of every request, in the audit's format (read back by its
    /// parser); rate 0 writes nothing.
    #[test]
    fn every_group_becomes_an_audit_query() {
        let dir = scratch("all");
        let f = dir.join("s.jsonl");
        let s = Sampler::new(&opts(&f, 1.0, 1 << 20)).unwrap().unwrap();
        s.offer(&call(&[("q1", &["a", "b"])]), "m");
        s.offer(&call(&[("q2", &["c"]), ("q3", &[])]), "m");
        let got = lines(&f);
        assert_eq!(got.len(), 3);
        let parsed: Vec<_> = got
            .iter()
            .enumerate()
            .map(|(i, l)| {
                crate::audit::input::parse_line(l, i + 1, "s")
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(parsed[0].query, "q1");
        let texts: Vec<&str> = parsed[0].docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, vec!["a", "b"]);
        assert_eq!(parsed[2].query, "q3");
        assert!(parsed[2].docs.is_empty());
        assert!(got[0].contains("\"model\":\"m\""), "{}", got[0]);
        assert!(!got[0].contains("score"));
        let ids: std::collections::BTreeSet<_> = parsed.iter().map(|q| q.id.clone()).collect();
        assert_eq!(ids.len(), 3, "ids are distinct");

        let g = dir.join("none.jsonl");
        let none = Sampler::new(&opts(&g, 0.0, 1 << 20)).unwrap().unwrap();
        for _ in 0..1000 {
            none.offer(&call(&[("q", &["a"])]), "m");
        }
        assert!(lines(&g).is_empty());
    }

    /// A quarter of 8000 requests: 2000 expected, sd 39; the bound is over 10 sd wide.
    #[test]
    fn the_rate_is_the_share_sampled() {
        let dir = scratch("rate");
        let f = dir.join("s.jsonl");
        let s = Sampler::new(&opts(&f, 0.25, 1 << 30)).unwrap().unwrap();
        for _ in 0..8000 {
            s.offer(&call(&[("q", &["a"])]), "m");
        }
        let n = lines(&f).len();
        assert!((1600..=2400).contains(&n), "{n} of 8000 sampled at 0.25");
    }

    /// Past the size limit the file moves to FILE.1 and a new one starts; no line is split and
    /// neither file exceeds the limit.
    #[test]
    fn rotates_at_the_size_limit() {
        let dir = scratch("rotate");
        let f = dir.join("s.jsonl");
        let s = Sampler::new(&opts(&f, 1.0, 300)).unwrap().unwrap();
        for i in 0..20 {
            s.offer(&call(&[(&format!("query {i}"), &["doc"])]), "m");
        }
        let rotated = dir.join("s.jsonl.1");
        let (cur, old) = (lines(&f), lines(&rotated));
        assert!(!old.is_empty(), "rotated");
        for p in [&f, &rotated] {
            assert!(std::fs::metadata(p).unwrap().len() <= 300);
        }
        for l in cur.iter().chain(&old) {
            crate::audit::input::parse_line(l, 1, "s").unwrap().unwrap();
        }
        // The newest line is the last query offered.
        assert!(cur.last().unwrap().contains("query 19"));
        // A reopened sampler counts the bytes already there: 290 of 300 taken, the next
        // line rotates.
        drop(s);
        std::fs::write(&f, format!("{}\n", "x".repeat(289))).unwrap();
        let again = Sampler::new(&opts(&f, 1.0, 300)).unwrap().unwrap();
        again.offer(&call(&[("more", &["doc"])]), "m");
        assert_eq!(lines(&rotated), vec!["x".repeat(289)]);
        assert_eq!(lines(&f).len(), 1);
        assert!(lines(&f)[0].contains("more"));
    }
}
