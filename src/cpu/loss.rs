//! Losses over the valid positions and their gradients with respect to the outputs.

use crate::batch::{Packing, Targets};
use crate::real::Real;
use ndarray::{Array2, ArrayViewMut2};

/// Softmax cross-entropy, mean over rows. `classes[r]` is the class of row `r`.
/// Writes `d_out = (softmax - onehot) / rows` and returns the mean loss.
pub fn cross_entropy<F: Real>(out: &Array2<F>, classes: &[u32], mut d_out: ArrayViewMut2<F>) -> F {
    let rows = out.nrows();
    let inv = F::one() / F::from_f64(rows as f64);
    let mut total = 0.0f64;
    for ((o, mut d), &y) in out.outer_iter().zip(d_out.outer_iter_mut()).zip(classes) {
        let max = o.iter().copied().fold(F::neg_infinity(), F::max);
        let mut sum = F::zero();
        for (dv, &ov) in d.iter_mut().zip(o.iter()) {
            let e = (ov - max).exp();
            *dv = e;
            sum = sum + e;
        }
        let y = y as usize;
        total += (max + sum.ln() - o[y]).to_f64();
        let scale = inv / sum;
        d.mapv_inplace(|e| e * scale);
        d[y] = d[y] - inv;
    }
    F::from_f64(total / rows as f64)
}

/// Squared error, mean over rows and units (PyTorch `mse_loss`). Writes
/// `d_out = 2 (out - target) / (rows * units)` and returns the loss.
pub fn squared_error<F: Real>(
    out: &Array2<F>,
    target: &Array2<F>,
    mut d_out: ArrayViewMut2<F>,
) -> F {
    let count = out.len() as f64;
    let scale = F::from_f64(2.0 / count);
    let mut total = 0.0f64;
    ndarray::Zip::from(&mut d_out)
        .and(out)
        .and(target)
        .for_each(|d, &o, &y| {
            let diff = o - y;
            total += (diff * diff).to_f64();
            *d = diff * scale;
        });
    F::from_f64(total / count)
}

/// The targets of a batch in packed row order: one row per valid position (per-step
/// head) or per sequence (last-step head).
pub fn pack_classes(targets: &[Vec<u32>], packing: &Packing, per_step: bool, dst: &mut Vec<u32>) {
    dst.clear();
    if per_step {
        for (t, &n) in packing.batch_sizes.iter().enumerate() {
            dst.extend(packing.order[..n].iter().map(|&i| targets[i][t]));
        }
    } else {
        dst.extend(packing.order.iter().map(|&i| targets[i][0]));
    }
}

/// Value targets in packed row order (see [`pack_classes`]).
pub fn pack_values<F: Real>(
    targets: &[Array2<f32>],
    packing: &Packing,
    per_step: bool,
    dst: &mut Array2<F>,
) {
    let width = targets[0].ncols();
    let rows = if per_step {
        packing.tokens()
    } else {
        packing.batch()
    };
    super::resize(dst, rows, width);
    let mut r = 0;
    let mut put = |src: ndarray::ArrayView1<f32>, dst: &mut Array2<F>| {
        dst.row_mut(r)
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = F::from_f32(s));
        r += 1;
    };
    if per_step {
        for (t, &n) in packing.batch_sizes.iter().enumerate() {
            for &i in &packing.order[..n] {
                put(targets[i].row(t), dst);
            }
        }
    } else {
        for &i in &packing.order {
            put(targets[i].row(0), dst);
        }
    }
}

/// Loss of `out` against the batch's targets, packed as `out` is.
pub fn loss_and_d_out<F: Real>(
    targets: &Targets,
    packing: &Packing,
    per_step: bool,
    out: &Array2<F>,
    d_out: &mut Array2<F>,
    classes_buf: &mut Vec<u32>,
    values_buf: &mut Array2<F>,
) -> F {
    super::resize(d_out, out.nrows(), out.ncols());
    match targets {
        Targets::Classes(c) => {
            pack_classes(c, packing, per_step, classes_buf);
            cross_entropy(out, classes_buf, d_out.view_mut())
        }
        Targets::Values(v) => {
            pack_values(v, packing, per_step, values_buf);
            squared_error(out, values_buf, d_out.view_mut())
        }
    }
}
