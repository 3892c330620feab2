//! The only place the CPU path tells the cells apart: the element-wise work of one step,
//! forward and backward, on one packed row. Everything around it (the products, the
//! loop over steps, layers and directions) is the same for every cell.
//!
//! Gate blocks are stacked as PyTorch stacks them: LSTM `i, f, g, o`, GRU `r, z, n`.

use crate::model::Cell;
use crate::real::Real;

fn sigmoid<F: Real>(x: F) -> F {
    F::one() / (F::one() + (-x).exp())
}

/// What one step of one row reads and writes in the forward pass. Slices a cell does
/// not use are empty.
pub(super) struct RowForward<'a, F> {
    /// In: `W_ih in(t) + b_ih`; out: the gates after their nonlinearities (Elman: `h`).
    pub gates: &'a mut [F],
    /// `W_hh h(t-1) + b_hh`
    pub hh: &'a [F],
    /// `h(t-1)` (GRU)
    pub h_prev: &'a [F],
    /// `c(t-1)` (LSTM)
    pub c_prev: &'a [F],
    /// Out: `h(t)`
    pub h: &'a mut [F],
    /// Out: `c(t)` (LSTM)
    pub c: &'a mut [F],
    /// Out: `W_hn h(t-1) + b_hn`, kept for the backward pass (GRU)
    pub hn: &'a mut [F],
}

/// One row of one step forward.
pub(super) fn forward_row<F: Real>(cell: Cell, r: RowForward<F>) {
    let h = r.h.len();
    match cell {
        Cell::Tanh => {
            for k in 0..h {
                let v = (r.gates[k] + r.hh[k]).fast_tanh();
                r.gates[k] = v;
                r.h[k] = v;
            }
        }
        Cell::Relu => {
            for k in 0..h {
                let v = (r.gates[k] + r.hh[k]).max(F::zero());
                r.gates[k] = v;
                r.h[k] = v;
            }
        }
        Cell::Lstm => {
            for k in 0..h {
                let i = sigmoid(r.gates[k] + r.hh[k]);
                let f = sigmoid(r.gates[h + k] + r.hh[h + k]);
                let g = (r.gates[2 * h + k] + r.hh[2 * h + k]).fast_tanh();
                let o = sigmoid(r.gates[3 * h + k] + r.hh[3 * h + k]);
                let c = f * r.c_prev[k] + i * g;
                r.gates[k] = i;
                r.gates[h + k] = f;
                r.gates[2 * h + k] = g;
                r.gates[3 * h + k] = o;
                r.c[k] = c;
                r.h[k] = o * c.fast_tanh();
            }
        }
        Cell::Gru => {
            for k in 0..h {
                let rg = sigmoid(r.gates[k] + r.hh[k]);
                let z = sigmoid(r.gates[h + k] + r.hh[h + k]);
                let hn = r.hh[2 * h + k];
                let n = (r.gates[2 * h + k] + rg * hn).fast_tanh();
                r.gates[k] = rg;
                r.gates[h + k] = z;
                r.gates[2 * h + k] = n;
                r.hn[k] = hn;
                r.h[k] = (F::one() - z) * n + z * r.h_prev[k];
            }
        }
    }
}

/// What one step of one row reads and writes in the backward pass. Slices a cell does
/// not use are empty.
pub(super) struct RowBackward<'a, F> {
    /// The gates as the forward pass left them (Elman: `h`).
    pub gates: &'a [F],
    /// `h(t-1)` (GRU), `c(t-1)` and `c(t)` (LSTM), `W_hn h(t-1) + b_hn` (GRU).
    pub h_prev: &'a [F],
    pub c_prev: &'a [F],
    pub c: &'a [F],
    pub hn: &'a [F],
    /// The loss's gradient with respect to `h(t)` (and `c(t)`, LSTM), everything after
    /// step `t` included.
    pub dh: &'a [F],
    pub dc: &'a [F],
    /// Out: the gradient with respect to `W_ih in(t) + b_ih`.
    pub dgx: &'a mut [F],
    /// Out: the gradient with respect to `W_hh h(t-1) + b_hh` (GRU only: for the other
    /// cells it equals `dgx`).
    pub dgh: &'a mut [F],
    /// Out: the gradient reaching `h(t-1)` other than through `W_hh` (GRU's `z ⊙ dh`),
    /// and reaching `c(t-1)` (LSTM's `f ⊙ dc`).
    pub dh_prev: &'a mut [F],
    pub dc_prev: &'a mut [F],
}

/// One row of one step backward.
pub(super) fn backward_row<F: Real>(cell: Cell, r: RowBackward<F>) {
    let h = r.dh.len();
    let one = F::one();
    match cell {
        Cell::Tanh => {
            for k in 0..h {
                let v = r.gates[k];
                r.dgx[k] = r.dh[k] * (one - v * v);
            }
        }
        Cell::Relu => {
            for k in 0..h {
                r.dgx[k] = if r.gates[k] > F::zero() {
                    r.dh[k]
                } else {
                    F::zero()
                };
            }
        }
        Cell::Lstm => {
            for k in 0..h {
                let (i, f, g, o) = (
                    r.gates[k],
                    r.gates[h + k],
                    r.gates[2 * h + k],
                    r.gates[3 * h + k],
                );
                let tc = r.c[k].fast_tanh();
                let dc = r.dc[k] + r.dh[k] * o * (one - tc * tc);
                r.dgx[k] = dc * g * i * (one - i);
                r.dgx[h + k] = dc * r.c_prev[k] * f * (one - f);
                r.dgx[2 * h + k] = dc * i * (one - g * g);
                r.dgx[3 * h + k] = r.dh[k] * tc * o * (one - o);
                r.dc_prev[k] = dc * f;
            }
        }
        Cell::Gru => {
            for k in 0..h {
                let (rg, z, n) = (r.gates[k], r.gates[h + k], r.gates[2 * h + k]);
                let dh = r.dh[k];
                let dn = dh * (one - z) * (one - n * n);
                let dz = dh * (r.h_prev[k] - n) * z * (one - z);
                let dr = dn * r.hn[k] * rg * (one - rg);
                r.dgx[k] = dr;
                r.dgx[h + k] = dz;
                r.dgx[2 * h + k] = dn;
                r.dgh[k] = dr;
                r.dgh[h + k] = dz;
                r.dgh[2 * h + k] = dn * rg;
                r.dh_prev[k] = dh * z;
            }
        }
    }
}
