//! The models one server serves, by name: each a loaded, warmed-up [`Reranker`] behind a
//! [`Scheduler`] of its own.
//!
//! A request picks its model by name (`model` in its body) or gets the default one. It holds
//! the model it picked (an `Arc`) until it is answered, so a swap that puts a new model under
//! the same name never touches a request already under way: it finishes on the model it started
//! on, and the old model's scheduler and weights are freed when the last such request is
//! answered ([`retire`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::api::ApiError;
use super::images::ImageQueue;
use super::metrics::Metrics;
use super::scheduler::Scheduler;
use super::ServeOptions;
use crate::engine::{LoadOptions, Reranker};
use crate::error::{Error, Result};

/// One `--model`: `NAME=DIR`, or a bare `DIR` named after its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
}

/// The longest model name: it travels in metric labels, URLs and log lines.
const MAX_NAME: usize = 64;

/// A model name is 1 to 64 of `A-Z a-z 0-9 . _ -`, so that it needs no escaping in a URL path,
/// a Prometheus label or a log line.
pub fn check_name(name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(ok) {
        return Err(Error::input(format!(
            "model name {name:?} must be 1 to {MAX_NAME} of the characters A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl ModelSpec {
    /// A bare directory, named after its folder.
    pub fn from_dir(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_name(&name).map_err(|_| {
            Error::input(format!(
                "--model {}: the folder's name {name:?} cannot name the model; give one with --model NAME=DIR",
                path.display()
            ))
        })?;
        Ok(ModelSpec { name, path })
    }
}

impl FromStr for ModelSpec {
    type Err = Error;

    /// `NAME=DIR` when what comes before the first `=` is a valid name; else a bare `DIR`.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::input("--model must not be empty"));
        }
        match s.split_once('=') {
            Some((name, dir)) if check_name(name).is_ok() => {
                if dir.is_empty() {
                    return Err(Error::input(format!("--model {s}: no directory after `=`")));
                }
                Ok(ModelSpec {
                    name: name.to_string(),
                    path: PathBuf::from(dir),
                })
            }
            _ => ModelSpec::from_dir(s),
        }
    }
}

/// A model being served: its name, where it was loaded from, and the scheduler in front of it.
pub struct Loaded {
    pub name: String,
    pub path: PathBuf,
    /// Grows with every load in this process (start-up, swap, reload): tells an old model
    /// from its replacement under the same name.
    pub revision: u64,
    /// The copy on the first device: what /info describes.
    pub reranker: Arc<Reranker>,
    /// One copy per --device, in order (the first is `reranker`).
    pub replicas: Vec<Arc<Reranker>>,
    pub scheduler: Scheduler,
    /// An image-text model's queue (images.rs); None for a text model.
    pub images: Option<ImageQueue>,
}

impl Loaded {
    /// Loads `path` as model `name`, runs a warm-up forward and starts its scheduler; prints
    /// one summary line on stderr. Nothing is served from it until it is put in [`Models`].
    pub fn load(
        name: &str,
        path: &Path,
        revision: u64,
        opts: &ServeOptions,
        metrics: &Arc<Metrics>,
    ) -> Result<Loaded> {
        let (mut replicas, mut loaded, mut warm) = (Vec::new(), Duration::ZERO, Duration::ZERO);
        for &device in &opts.device.0 {
            let t0 = Instant::now();
            let reranker = Reranker::load(
                path,
                device,
                &LoadOptions {
                    max_batch_tokens: opts.max_batch_tokens,
                    cuda: opts.cuda,
                    template: opts.template.clone(),
                    image_cache_mib: opts.image_cache_mib,
                },
            )?;
            loaded += t0.elapsed();
            let t1 = Instant::now();
            reranker.warm_up()?;
            warm += t1.elapsed();
            replicas.push(Arc::new(reranker));
        }
        let reranker = replicas
            .first()
            .cloned()
            .ok_or_else(|| Error::input("--device names no device"))?;
        let devices: Vec<String> = replicas.iter().map(|r| r.device_name()).collect();
        let info = reranker.info();
        eprintln!(
            "crossrank serve: model {name} (revision {revision}): {} ({}, {} parameters, {}) on {}, loaded in {:.0} ms, warm-up forward {:.1} ms; max length {}, max batch tokens {}",
            path.display(),
            info.architecture,
            info.parameters,
            info.dtype,
            devices.join(", "),
            ms(loaded),
            ms(warm),
            info.max_length,
            reranker.max_batch_tokens(),
        );
        let scheduler =
            Scheduler::start(replicas.clone(), metrics.clone(), name, opts.max_concurrent)?;
        let images = if reranker.is_image_model() {
            Some(ImageQueue::start(
                replicas.clone(),
                metrics.clone(),
                name,
                opts.max_concurrent,
            )?)
        } else {
            None
        };
        Ok(Loaded {
            name: name.to_string(),
            path: path.to_path_buf(),
            revision,
            reranker,
            replicas,
            scheduler,
            images,
        })
    }

    /// Stops taking requests and answers every one queued (text and image).
    pub fn shutdown(&self) {
        self.scheduler.shutdown();
        if let Some(q) = &self.images {
            q.shutdown();
        }
    }

    /// Every scheduling thread is running and no forward has panicked.
    pub fn healthy(&self) -> bool {
        self.scheduler.healthy() && self.images.as_ref().is_none_or(ImageQueue::healthy)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The served models, in the order they were first given; and which one answers a request
/// that names none.
pub struct Models {
    list: RwLock<Vec<Arc<Loaded>>>,
    default: String,
}

impl Models {
    /// `default`: `--default-model`, else the first model; it must be one of `list`.
    pub fn new(list: Vec<Loaded>, default: Option<&str>) -> Result<Models> {
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        let default = match default {
            Some(d) if names.contains(&d) => d.to_string(),
            Some(d) => {
                return Err(Error::input(format!(
                    "--default-model {d} is not one of the models given: {}",
                    names.join(", ")
                )))
            }
            None => names
                .first()
                .map(|n| n.to_string())
                .ok_or_else(|| Error::input("give at least one --model"))?,
        };
        Ok(Models {
            list: RwLock::new(list.into_iter().map(Arc::new).collect()),
            default,
        })
    }

    /// The name of the model that answers requests naming none.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every model now served, in order.
    pub fn all(&self) -> Vec<Arc<Loaded>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The model named `name`, or the default one; an unknown name is a 404 naming the
    /// models served.
    pub fn get(&self, name: Option<&str>) -> std::result::Result<Arc<Loaded>, ApiError> {
        let want = name.unwrap_or(&self.default);
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = list.iter().find(|m| m.name == want) {
            return Ok(m.clone());
        }
        let served: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        Err(ApiError::new(
            404,
            "model_not_found",
            format!(
                "model {want:?} is not served here; served: {}",
                served.join(", ")
            ),
        ))
    }

    /// Serves `new` under its name from now on: in place of the model of that name (returned,
    /// to be retired) or, for a new name, after the others.
    pub fn put(&self, new: Loaded) -> Option<Arc<Loaded>> {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let new = Arc::new(new);
        match list.iter_mut().find(|m| m.name == new.name) {
            Some(slot) => Some(std::mem::replace(slot, new)),
            None => {
                list.push(new);
                None
            }
        }
    }

    /// Stops serving model `name` (returned, to be retired). The default model cannot be
    /// removed: requests that name no model need it.
    pub fn remove(&self, name: &str) -> std::result::Result<Arc<Loaded>, ApiError> {
        if name == self.default {
            return Err(ApiError::new(
                409,
                "default_model",
                format!("model {name} is the default model (--default-model) and cannot be removed; swap it instead"),
            ));
        }
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        match list.iter().position(|m| m.name == name) {
            Some(i) => Ok(list.remove(i)),
            None => {
                let served: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
                Err(ApiError::new(
                    404,
                    "model_not_found",
                    format!(
                        "model {name:?} is not served here; served: {}",
                        served.join(", ")
                    ),
                ))
            }
        }
    }
}

/// Frees a model no longer served once the requests still holding it are answered: a thread
/// waits for the last of them, then stops its scheduler (which answers anything still queued)
/// and drops its weights.
pub fn retire(old: Arc<Loaded>) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("crossrank-retire".into())
        .spawn(move || {
            let mut old = old;
            let loaded = loop {
                match Arc::try_unwrap(old) {
                    Ok(loaded) => break loaded,
                    Err(still) => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            };
            let (name, revision) = (loaded.name.clone(), loaded.revision);
            loaded.shutdown();
            drop(loaded);
            eprintln!("crossrank serve: model {name} revision {revision} freed");
        });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            // The model stays in memory; serving is not affected.
            eprintln!("crossrank serve: cannot start a thread to free an old model: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_name_equals_dir_or_a_bare_dir() {
        let s: ModelSpec = "bge=/models/bge-v2".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.path.as_path()),
            ("bge", Path::new("/models/bge-v2"))
        );
        let s: ModelSpec = "/models/bge-v2".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.path.as_path()),
            ("bge-v2", Path::new("/models/bge-v2"))
        );
        // What comes before `=` is not a name: the whole is a directory.
        let s: ModelSpec = "/data/a=b/m1".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.path.as_path()),
            ("m1", Path::new("/data/a=b/m1"))
        );
        let e = "bge=".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(e.contains("no directory after `=`"), "{e}");
        let e = "/m/a b".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(e.contains("--model NAME=DIR"), "{e}");
        assert!("".parse::<ModelSpec>().is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
        assert!(check_name(&"x".repeat(64)).is_ok());
    }
}
