//! Checkpoints: safetensors files with PyTorch's names, so that `torch.nn.RNN` +
//! `torch.nn.Linear` load them with `safetensors.torch.load_file`.
//!
//! `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}` (= b),
//! `rnn.bias_hh_l{k}` (zeros), `out.weight`, `out.bias`. Loading sums the two biases, so
//! a file written by PyTorch loads too.

use crate::model::{LayerParams, RnnParams};
use crate::{Error, Head, Nonlinearity, Result};
use ndarray::{Array1, Array2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

impl RnnParams<f32> {
    /// Writes a safetensors checkpoint atomically: to a temporary file in the same
    /// directory, flushed to disk, then renamed over `path`. A crash at any moment leaves
    /// either the old file or the new one, never a half-written one.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let params = self.clone().into_standard_layout();
        if let Some(k) = params
            .layers
            .iter()
            .position(|l| l.w_hh.nrows() != l.w_ih.nrows() || l.b.len() != l.w_ih.nrows())
        {
            return Err(Error::shape(
                format!("layers[{k}] (w_ih, w_hh and b must share the hidden size)"),
                "consistent shapes",
                "inconsistent",
            ));
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push2 = |name: String, a: &Array2<f32>| {
            let bytes = bytemuck::cast_slice(a.as_slice().expect("standard layout")).to_vec();
            tensors.push((name, a.shape().to_vec(), bytes));
        };
        for (k, l) in params.layers.iter().enumerate() {
            push2(format!("rnn.weight_ih_l{k}"), &l.w_ih);
            push2(format!("rnn.weight_hh_l{k}"), &l.w_hh);
        }
        push2("out.weight".into(), &params.w_out);
        let mut push1 = |name: String, a: &[f32]| {
            tensors.push((name, vec![a.len()], bytemuck::cast_slice(a).to_vec()));
        };
        for (k, l) in params.layers.iter().enumerate() {
            push1(
                format!("rnn.bias_ih_l{k}"),
                l.b.as_slice().expect("standard layout"),
            );
            push1(format!("rnn.bias_hh_l{k}"), &vec![0.0; l.b.len()]);
        }
        push1(
            "out.bias".into(),
            params.b_out.as_slice().expect("standard layout"),
        );
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches the byte count");
                (name.clone(), view)
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| {
            Error::Checkpoint {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        write_atomically(path, &bytes)
    }

    /// Reads a safetensors checkpoint written by [`RnnParams::save`] or by PyTorch.
    /// Every tensor must be present, f32, finite and consistently shaped.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            action: "reading checkpoint",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let get = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = file
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape().len() != rank {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, expected rank {rank}",
                    t.shape()
                )));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), data))
        };
        let matrix = |name: &str| -> Result<Array2<f32>> {
            let (shape, data) = get(name, 2)?;
            Ok(Array2::from_shape_vec((shape[0], shape[1]), data)
                .expect("safetensors checked the size"))
        };
        let vector = |name: &str| -> Result<Array1<f32>> { Ok(Array1::from_vec(get(name, 1)?.1)) };
        let num_layers = (0..)
            .take_while(|k| {
                file.names()
                    .iter()
                    .any(|n| *n == format!("rnn.weight_ih_l{k}"))
            })
            .count();
        if num_layers == 0 {
            return Err(bad("missing tensor `rnn.weight_ih_l0`".into()));
        }
        let mut layers = Vec::with_capacity(num_layers);
        for k in 0..num_layers {
            let b_ih = vector(&format!("rnn.bias_ih_l{k}"))?;
            let b_hh = vector(&format!("rnn.bias_hh_l{k}"))?;
            if b_ih.len() != b_hh.len() {
                return Err(bad(format!(
                    "rnn.bias_ih_l{k} has {} elements but rnn.bias_hh_l{k} has {}",
                    b_ih.len(),
                    b_hh.len()
                )));
            }
            layers.push(LayerParams {
                w_ih: matrix(&format!("rnn.weight_ih_l{k}"))?,
                w_hh: matrix(&format!("rnn.weight_hh_l{k}"))?,
                b: b_ih + b_hh,
            });
        }
        let params = RnnParams {
            layers,
            w_out: matrix("out.weight")?,
            b_out: vector("out.bias")?,
        };
        params
            .infer_config(Nonlinearity::Tanh, Head::PerStep)
            .map_err(|e| bad(format!("inconsistent tensors: {e}")))?;
        Ok(params)
    }
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename, syncing the
/// file and its directory, so that `path` is always either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Io {
        action: "writing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    // unique per call, so that concurrent saves to one path never share a temporary file
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{serial}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        // make the rename itself durable; not every platform can open a directory
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
