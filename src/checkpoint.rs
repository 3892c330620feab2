//! Checkpoints: safetensors files with PyTorch's names, so that a module holding
//! `rnn = nn.RNN | nn.LSTM | nn.GRU` and `out = nn.Linear` loads them strictly with
//! `safetensors.torch.load_file` + `load_state_dict`, and files PyTorch writes load here.
//!
//! `rnn.weight_ih_l{k}[_reverse]`, `rnn.weight_hh_l{k}[_reverse]`,
//! `rnn.bias_ih_l{k}[_reverse]`, `rnn.bias_hh_l{k}[_reverse]`, `out.weight`, `out.bias`
//! (no `out.*` for an encoder). The metadata records the cell and the shape of the model.

use crate::model::{Cell, LayerParams, RnnConfig, RnnParams};
use crate::{Error, Head, Result};
use ndarray::{Array1, Array2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

impl RnnParams<f32> {
    /// Writes a safetensors checkpoint atomically (see [`RnnParams::save_for`]), with the
    /// model's shape inferred from the tensors: the gate count tells an LSTM (4) and a
    /// GRU (3) from an Elman cell (1), and a second tensor per layer with the first
    /// layer's input width marks a bidirectional model. A one-layer bidirectional model
    /// whose input size equals its hidden size has the layer shapes of a two-layer
    /// unidirectional one; the readout's width (directions × hidden, declared even by an
    /// encoder's empty `w_out`) tells them apart. [`RnnParams::save_for`] names the model
    /// exactly.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let config = self.guess_config()?;
        self.validate(&config)?;
        self.write(&config, path.as_ref(), false)
    }

    /// Writes a safetensors checkpoint of a model with `config` atomically: to a
    /// temporary file in the same directory, flushed to disk, then renamed over `path`.
    /// A crash at any moment leaves either the old file or the new one, never a
    /// half-written one. The metadata records the cell, so that [`RnnParams::load_for`]
    /// can tell a checkpoint of another cell from a bad one.
    pub fn save_for(&self, config: &RnnConfig, path: impl AsRef<Path>) -> Result<()> {
        // shapes and values: a non-finite parameter would make a file no load accepts
        self.validate(config)?;
        self.write(config, path.as_ref(), true)
    }

    /// The model shape [`RnnParams::save`] assumes.
    fn guess_config(&self) -> Result<RnnConfig> {
        let inconsistent = |k: usize| {
            Error::shape(
                format!("layers[{k}] (w_ih, w_hh, b_ih and b_hh must share gates x hidden)"),
                "consistent shapes",
                "inconsistent",
            )
        };
        let first = self.layers.first().ok_or(Error::InvalidConfig {
            what: "num_layers",
            expected: "at least 1",
            got: "0".into(),
        })?;
        let h = first.w_hh.ncols().max(1);
        let cell = cell_from_shapes(first, Cell::Tanh);
        let input = first.w_ih.ncols();
        let bidirectional = self.layers.len().is_multiple_of(2)
            && self.layers.get(1).is_some_and(|l| l.w_ih.ncols() == input)
            && (self.layers.len() == 2
                || self.layers.get(2).is_some_and(|l| l.w_ih.ncols() == 2 * h))
            // one bidirectional layer or two unidirectional ones whose input width is
            // the hidden size: the readout's width tells (directions x hidden)
            && !(self.layers.len() == 2 && input == h && self.w_out.ncols() != 2 * h);
        let head = if self.w_out.nrows() == 0 {
            Head::None
        } else {
            Head::PerStep
        };
        let config = RnnConfig::new(input, h, self.w_out.nrows())
            .num_layers(self.layers.len() / (1 + bidirectional as usize))
            .cell(cell)
            .head(head)
            .bidirectional(bidirectional);
        if let Some(k) = self.layers.iter().position(|l| {
            let g = l.w_hh.nrows();
            l.w_ih.nrows() != g || l.b_ih.len() != g || l.b_hh.len() != g
        }) {
            return Err(inconsistent(k));
        }
        self.validate_shapes(&config)?;
        Ok(config)
    }

    fn write(&self, config: &RnnConfig, path: &Path, exact: bool) -> Result<()> {
        let params = self.clone().into_standard_layout();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: String, shape: &[usize], data: &[f32]| {
            tensors.push((name, shape.to_vec(), bytemuck::cast_slice(data).to_vec()));
        };
        for (u, l) in params.layers.iter().enumerate() {
            let k = config.unit_name(u);
            let std = "standard layout";
            push(
                format!("rnn.weight_ih_{k}"),
                l.w_ih.shape(),
                l.w_ih.as_slice().expect(std),
            );
            push(
                format!("rnn.weight_hh_{k}"),
                l.w_hh.shape(),
                l.w_hh.as_slice().expect(std),
            );
            push(
                format!("rnn.bias_ih_{k}"),
                l.b_ih.shape(),
                l.b_ih.as_slice().expect(std),
            );
            push(
                format!("rnn.bias_hh_{k}"),
                l.b_hh.shape(),
                l.b_hh.as_slice().expect(std),
            );
        }
        if config.head != Head::None {
            let (w, b) = (&params.w_out, &params.b_out);
            push(
                "out.weight".into(),
                w.shape(),
                w.as_slice().expect("standard layout"),
            );
            push(
                "out.bias".into(),
                b.shape(),
                b.as_slice().expect("standard layout"),
            );
        }
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches the byte count");
                (name.clone(), view)
            })
            .collect();
        let mut metadata = BTreeMap::from([
            ("format", "pt".to_string()),
            ("num_layers", config.num_layers.to_string()),
            ("bidirectional", config.bidirectional.to_string()),
        ]);
        // an Elman cell's nonlinearity is not in its shapes: record it only when known
        if exact || config.cell.gates() > 1 {
            metadata.insert("cell", config.cell.name().into());
        }
        let fail = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = safetensors::tensor::serialize(views, None).map_err(|e| fail(e.to_string()))?;
        write_atomically(path, &with_metadata(&bytes, &metadata).map_err(fail)?)
    }

    /// Reads a safetensors checkpoint written by [`RnnParams::save`] or by PyTorch (an
    /// `nn.RNN`, `nn.LSTM` or `nn.GRU` as `rnn`, optionally an `nn.Linear` as `out`).
    /// Every tensor must be present, f32, finite and consistently shaped; LSTM
    /// projections (`proj_size`) are refused.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(read_checkpoint(path.as_ref())?.0)
    }

    /// [`RnnParams::load`] for a model with `config`: a checkpoint of another cell,
    /// direction count or size is refused with an error naming what the file holds and
    /// what the config asks for.
    pub fn load_for(config: &RnnConfig, path: impl AsRef<Path>) -> Result<Self> {
        // a bad config is the caller's error, not the file's
        config.validate()?;
        let path = path.as_ref();
        let (params, meta) = read_checkpoint(path)?;
        let mismatch = |what: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: what,
        };
        let recorded = meta
            .cell
            .unwrap_or_else(|| cell_from_shapes(&params.layers[0], config.cell));
        let elman = |c: Cell| matches!(c, Cell::Tanh | Cell::Relu);
        let fits = recorded == config.cell
            || (meta.cell.is_none() && elman(recorded) && elman(config.cell));
        if !fits {
            return Err(mismatch(format!(
                "it holds a {} model, the config asks for a {} cell",
                recorded, config.cell
            )));
        }
        if meta.bidirectional != config.bidirectional {
            return Err(mismatch(format!(
                "it holds a {} model, the config asks for a {} one",
                if meta.bidirectional {
                    "bidirectional"
                } else {
                    "unidirectional"
                },
                if config.bidirectional {
                    "bidirectional"
                } else {
                    "unidirectional"
                },
            )));
        }
        params.validate(config).map_err(|e| {
            mismatch(format!(
                "its tensors do not fit the config ({} cell, input {}, hidden {}, output {}, {} layers): {e}",
                config.cell, config.input_size, config.hidden_size, config.output_size, config.num_layers
            ))
        })?;
        Ok(params)
    }
}

/// A serialized safetensors file with `metadata` put into its header, every key in sorted
/// order: the same parameters always give the same bytes (safetensors writes its metadata
/// map in hash order, which changes from run to run).
fn with_metadata(
    file: &[u8],
    metadata: &BTreeMap<&str, String>,
) -> std::result::Result<Vec<u8>, String> {
    let header_len = u64::from_le_bytes(file[..8].try_into().map_err(|_| "short file")?) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + header_len]).map_err(|e| e.to_string())?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut text = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // the data that follows stays aligned to 8 bytes, as safetensors pads it
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - 8 - header_len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&file[8 + header_len..]);
    Ok(out)
}

/// The cell a layer's shapes say: 4 gate blocks an LSTM, 3 a GRU; one block is an Elman
/// cell, whose nonlinearity the shapes cannot tell, so `elman` is taken.
fn cell_from_shapes(layer: &LayerParams, elman: Cell) -> Cell {
    match layer.w_hh.nrows() / layer.w_hh.ncols().max(1) {
        4 => Cell::Lstm,
        3 => Cell::Gru,
        _ => elman,
    }
}

/// What a checkpoint says about its model besides the tensors.
struct CheckpointMeta {
    cell: Option<Cell>,
    bidirectional: bool,
}

fn read_checkpoint(path: &Path) -> Result<(RnnParams, CheckpointMeta)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "reading checkpoint",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let names = file.names();
    if let Some(n) = names.iter().find(|n| n.contains("weight_hr_l")) {
        return Err(bad(format!(
            "`{n}` is an LSTM projection (PyTorch's proj_size), which unfold does not have"
        )));
    }
    let meta = header.metadata().clone().unwrap_or_default();
    let cell = meta
        .get("cell")
        .map(|c| Cell::from_name(c))
        .transpose()
        .map_err(|e| bad(format!("metadata: {e}")))?;
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
        Array2::from_shape_vec((shape[0], shape[1]), data)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))
    };
    let vector = |name: &str| -> Result<Array1<f32>> { Ok(Array1::from_vec(get(name, 1)?.1)) };
    let has = |name: String| names.iter().any(|n| **n == name);
    let num_layers = (0..)
        .take_while(|k| has(format!("rnn.weight_ih_l{k}")))
        .count();
    if num_layers == 0 {
        return Err(bad("missing tensor `rnn.weight_ih_l0`".into()));
    }
    let bidirectional = has("rnn.weight_ih_l0_reverse".into());
    let suffixes: &[&str] = if bidirectional {
        &["", "_reverse"]
    } else {
        &[""]
    };
    let mut layers = Vec::with_capacity(num_layers * suffixes.len());
    for k in 0..num_layers {
        for sfx in suffixes {
            layers.push(LayerParams {
                w_ih: matrix(&format!("rnn.weight_ih_l{k}{sfx}"))?,
                w_hh: matrix(&format!("rnn.weight_hh_l{k}{sfx}"))?,
                b_ih: vector(&format!("rnn.bias_ih_l{k}{sfx}"))?,
                b_hh: vector(&format!("rnn.bias_hh_l{k}{sfx}"))?,
            });
        }
    }
    let encoder = !has("out.weight".into()) && !has("out.bias".into());
    let (w_out, b_out) = if encoder {
        let width = (1 + bidirectional as usize) * layers[0].w_hh.ncols();
        (Array2::zeros((0, width)), Array1::zeros(0))
    } else {
        (matrix("out.weight")?, vector("out.bias")?)
    };
    let params = RnnParams {
        layers,
        w_out,
        b_out,
    };
    let shape_cell = cell.unwrap_or_else(|| cell_from_shapes(&params.layers[0], Cell::Tanh));
    let head = if encoder { Head::None } else { Head::PerStep };
    params
        .infer_config(shape_cell, head, bidirectional)
        .map_err(|e| bad(format!("inconsistent tensors: {e}")))?;
    Ok((
        params,
        CheckpointMeta {
            cell,
            bidirectional,
        },
    ))
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
            .map_err(io("creating a temporary file to write", path))?;
        f.write_all(bytes).map_err(io("writing", path))?;
        f.sync_all().map_err(io("syncing", path))?;
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
