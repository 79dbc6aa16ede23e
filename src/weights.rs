//! safetensors → named host tensors in f32, per-architecture name mapping, fused QKV.
//!
//! The files are memory-mapped; each tensor is converted to f32 once (from f32, f16 or bf16)
//! into the host copy that backends upload from. Names are accepted with or without the
//! `bert.`/`roberta.` prefix, and sharded checkpoints (model.safetensors.index.json) are followed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};

/// One weight on the host, in f32, row-major, with the checkpoint name it came from.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// `y = x · Wᵀ + b`, with W stored row-major as [out, in] (the checkpoint's layout).
#[derive(Debug, Clone)]
pub struct Linear<T> {
    pub w: T,
    pub b: T,
    pub out_dim: usize,
    pub in_dim: usize,
}

#[derive(Debug, Clone)]
pub struct LayerNorm<T> {
    pub gamma: T,
    pub beta: T,
}

#[derive(Debug, Clone)]
pub struct Embeddings<T> {
    pub word: T,
    pub position: T,
    pub token_type: T,
    pub ln: LayerNorm<T>,
}

/// One encoder layer. `qkv` is Q, K and V fused into one [3·hidden, hidden] projection.
#[derive(Debug, Clone)]
pub struct Layer<T> {
    pub qkv: Linear<T>,
    pub attn_out: Linear<T>,
    pub ln_attn: LayerNorm<T>,
    pub ffn_in: Linear<T>,
    pub ffn_out: Linear<T>,
    pub ln_ffn: LayerNorm<T>,
}

/// The classification head of both families: dense + tanh on the [CLS] row, then one logit.
/// BERT: bert.pooler.dense then classifier. RoBERTa: classifier.dense then classifier.out_proj.
#[derive(Debug, Clone)]
pub struct Head<T> {
    pub dense: Linear<T>,
    pub out: Linear<T>,
}

#[derive(Debug, Clone)]
pub struct Weights<T> {
    pub embeddings: Embeddings<T>,
    pub layers: Vec<Layer<T>>,
    pub head: Head<T>,
}

impl<T> Linear<T> {
    fn try_map<U>(self, f: &mut impl FnMut(T) -> Result<U>) -> Result<Linear<U>> {
        Ok(Linear {
            w: f(self.w)?,
            b: f(self.b)?,
            out_dim: self.out_dim,
            in_dim: self.in_dim,
        })
    }
}

impl<T> LayerNorm<T> {
    fn try_map<U>(self, f: &mut impl FnMut(T) -> Result<U>) -> Result<LayerNorm<U>> {
        Ok(LayerNorm {
            gamma: f(self.gamma)?,
            beta: f(self.beta)?,
        })
    }
}

impl<T> Weights<T> {
    /// Converts every tensor, e.g. host f32 → device f16, in a fixed order.
    pub fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Weights<U>> {
        let f = &mut f;
        let e = self.embeddings;
        let embeddings = Embeddings {
            word: f(e.word)?,
            position: f(e.position)?,
            token_type: f(e.token_type)?,
            ln: e.ln.try_map(f)?,
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            layers.push(Layer {
                qkv: l.qkv.try_map(f)?,
                attn_out: l.attn_out.try_map(f)?,
                ln_attn: l.ln_attn.try_map(f)?,
                ffn_in: l.ffn_in.try_map(f)?,
                ffn_out: l.ffn_out.try_map(f)?,
                ln_ffn: l.ln_ffn.try_map(f)?,
            });
        }
        let head = Head {
            dense: self.head.dense.try_map(f)?,
            out: self.head.out.try_map(f)?,
        };
        Ok(Weights {
            embeddings,
            layers,
            head,
        })
    }
}

/// The dtype of the checkpoint's floating-point tensors, for `crossrank info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDtype {
    F32,
    F16,
    Bf16,
    Mixed,
}

impl DiskDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskDtype::F32 => "f32",
            DiskDtype::F16 => "f16",
            DiskDtype::Bf16 => "bf16",
            DiskDtype::Mixed => "mixed",
        }
    }
}

/// The memory-mapped checkpoint files and where each tensor lives.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name → index into `files`
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or else the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        // As transformers: a single model.safetensors wins over an index beside it.
        let shard_map: Vec<(String, String)> = if single.exists() {
            Vec::new()
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::model(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::model(&index_path, "no `weight_map` object"))?;
            let mut out = Vec::with_capacity(map.len());
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::model(
                        &index_path,
                        format!("`weight_map` entry `{name}` is not a file name"),
                    )
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(Error::model(
                        &index_path,
                        format!("shard name `{file}` must be a plain file name"),
                    ));
                }
                out.push((name.clone(), file.to_string()));
            }
            out
        } else {
            return Err(Error::model(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory (only safetensors weights are supported)",
            ));
        };

        let mut files: Vec<(PathBuf, Mmap)> = Vec::new();
        let mut index = HashMap::new();
        let open = |path: PathBuf, files: &mut Vec<(PathBuf, Mmap)>| -> Result<usize> {
            if let Some(i) = files.iter().position(|(p, _)| *p == path) {
                return Ok(i);
            }
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is opened read-only and mapped privately; crossrank never writes
            // model files, and one changed underneath us can only change the numbers read.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            SafeTensors::deserialize(&map)
                .map_err(|e| Error::model(&path, format!("not a valid safetensors file: {e}")))?;
            files.push((path, map));
            Ok(files.len() - 1)
        };
        if shard_map.is_empty() {
            let i = open(single, &mut files)?;
            let st = SafeTensors::deserialize(&files[i].1)
                .map_err(|e| Error::model(&files[i].0, e.to_string()))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
        } else {
            for (name, file) in shard_map {
                let i = open(dir.join(&file), &mut files)?;
                index.insert(name, i);
            }
        }
        Ok(Checkpoint { files, index })
    }

    fn find<'a>(&self, candidates: &'a [String]) -> Option<(&'a str, usize)> {
        candidates
            .iter()
            .find_map(|c| self.index.get(c).map(|&i| (c.as_str(), i)))
    }

    /// Reads one tensor as f32, checking its shape. `candidates` are the accepted names.
    pub(crate) fn tensor(&self, candidates: &[String], shape: &[usize]) -> Result<HostTensor> {
        let (name, i) = self.find(candidates).ok_or_else(|| {
            let shown = self.files.first().map(|f| f.0.clone()).unwrap_or_default();
            Error::model(shown, format!("tensor `{}` is missing", candidates[0]))
        })?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map).map_err(|e| Error::model(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|_| {
            Error::model(
                path,
                format!("tensor `{name}` is listed in the index but not in this file"),
            )
        })?;
        if view.shape() != shape {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {:?}",
                    view.shape(),
                    shape
                ),
            ));
        }
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::model(
                    path,
                    format!("tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16"),
                ))
            }
        };
        Ok(HostTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        })
    }

    /// The dtype shared by the floating-point tensors.
    pub fn dtype(&self) -> DiskDtype {
        let mut seen = None;
        for (path, map) in &self.files {
            let Ok(st) = SafeTensors::deserialize(map) else {
                continue;
            };
            let _ = path;
            for (_, view) in st.tensors() {
                let d = match view.dtype() {
                    Dtype::F32 => DiskDtype::F32,
                    Dtype::F16 => DiskDtype::F16,
                    Dtype::BF16 => DiskDtype::Bf16,
                    _ => continue,
                };
                match seen {
                    None => seen = Some(d),
                    Some(s) if s != d => return DiskDtype::Mixed,
                    _ => {}
                }
            }
        }
        seen.unwrap_or(DiskDtype::F32)
    }
}

/// Maps logical names to checkpoint names for one family.
struct Names {
    prefix: &'static str,
}

impl Names {
    /// A body tensor: `bert.embeddings...` or `embeddings...`; LayerNorm weights also under
    /// their old TensorFlow names gamma/beta, as transformers accepts.
    fn body(&self, name: &str) -> Vec<String> {
        let mut v = vec![format!("{}{name}", self.prefix), name.to_string()];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            v.push(format!("{}{stem}LayerNorm.gamma", self.prefix));
            v.push(format!("{stem}LayerNorm.gamma"));
        } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            v.push(format!("{}{stem}LayerNorm.beta", self.prefix));
            v.push(format!("{stem}LayerNorm.beta"));
        }
        v
    }
}

/// Loads and validates every tensor the forward pass needs, fusing Q, K and V.
pub fn load(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Weights<HostTensor>> {
    let names =
        Names {
            prefix: match cfg.family {
                Family::Bert => "bert.",
                Family::Roberta => "roberta.",
                Family::ModernBert | Family::Qwen | Family::Blip => return Err(Error::Internal(
                    "a family with its own forward (ModernBERT, Qwen, BLIP) reached BERT's loader"
                        .into(),
                )),
            },
        };
    let h = cfg.hidden_size;
    let inter = cfg.intermediate_size;
    let body = |name: &str, shape: &[usize]| ckpt.tensor(&names.body(name), shape);
    let linear = |name: &str, out_dim: usize, in_dim: usize| -> Result<Linear<HostTensor>> {
        Ok(Linear {
            w: body(&format!("{name}.weight"), &[out_dim, in_dim])?,
            b: body(&format!("{name}.bias"), &[out_dim])?,
            out_dim,
            in_dim,
        })
    };
    let layer_norm = |name: &str| -> Result<LayerNorm<HostTensor>> {
        Ok(LayerNorm {
            gamma: body(&format!("{name}.LayerNorm.weight"), &[h])?,
            beta: body(&format!("{name}.LayerNorm.bias"), &[h])?,
        })
    };

    let embeddings = Embeddings {
        word: body("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
        position: body(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?,
        token_type: body(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?,
        ln: layer_norm("embeddings")?,
    };

    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("encoder.layer.{i}");
        let q = linear(&format!("{p}.attention.self.query"), h, h)?;
        let k = linear(&format!("{p}.attention.self.key"), h, h)?;
        let v = linear(&format!("{p}.attention.self.value"), h, h)?;
        layers.push(Layer {
            qkv: fuse_qkv(q, k, v, &format!("{p}.attention.self.qkv")),
            attn_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
            ln_attn: layer_norm(&format!("{p}.attention.output"))?,
            ffn_in: linear(&format!("{p}.intermediate.dense"), inter, h)?,
            ffn_out: linear(&format!("{p}.output.dense"), h, inter)?,
            ln_ffn: layer_norm(&format!("{p}.output"))?,
        });
    }

    let n = cfg.num_labels;
    let head = match cfg.family {
        Family::Bert => Head {
            dense: linear("pooler.dense", h, h)?,
            out: Linear {
                w: ckpt.tensor(&["classifier.weight".to_string()], &[n, h])?,
                b: ckpt.tensor(&["classifier.bias".to_string()], &[n])?,
                out_dim: n,
                in_dim: h,
            },
        },
        Family::Roberta | Family::ModernBert | Family::Qwen | Family::Blip => {
            let exact = |name: &str, shape: &[usize]| ckpt.tensor(&[name.to_string()], shape);
            Head {
                dense: Linear {
                    w: exact("classifier.dense.weight", &[h, h])?,
                    b: exact("classifier.dense.bias", &[h])?,
                    out_dim: h,
                    in_dim: h,
                },
                out: Linear {
                    w: exact("classifier.out_proj.weight", &[n, h])?,
                    b: exact("classifier.out_proj.bias", &[n])?,
                    out_dim: n,
                    in_dim: h,
                },
            }
        }
    };
    Ok(Weights {
        embeddings,
        layers,
        head,
    })
}

/// Stacks the three [h, h] projections into one [3h, h]: output columns are Q, then K, then V.
fn fuse_qkv(
    q: Linear<HostTensor>,
    k: Linear<HostTensor>,
    v: Linear<HostTensor>,
    name: &str,
) -> Linear<HostTensor> {
    let h = q.out_dim;
    let cat = |a: HostTensor, b: HostTensor, c: HostTensor, suffix: &str, shape: Vec<usize>| {
        let mut data = a.data;
        data.extend_from_slice(&b.data);
        data.extend_from_slice(&c.data);
        HostTensor {
            name: format!("{name}.{suffix}"),
            shape,
            data,
        }
    };
    Linear {
        w: cat(q.w, k.w, v.w, "weight", vec![3 * h, q.in_dim]),
        b: cat(q.b, k.b, v.b, "bias", vec![3 * h]),
        out_dim: 3 * h,
        in_dim: q.in_dim,
    }
}
