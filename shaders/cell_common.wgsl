// What every cell kernel shares (the prelude of recurrent.wgsl and cells.wgsl, see
// src/gpu/shaders.rs): the step's parameter block and bindings, the cell's element-wise
// math forward and backward, and where a step's rows and their previous states live.
//
// The cell is the pipeline-overridable constant CELL (0 tanh, 1 relu, 2 LSTM, 3 GRU; one
// pipeline per cell, src/gpu/kernels.rs), so each cell's kernels are compiled with only
// its own arithmetic. Gate blocks are stacked as PyTorch stacks them: LSTM i, f, g, o;
// GRU r, z, n. Everything in this file is per (row, unit); the kernels around it decide
// how a step's recurrent product is computed.
//
// Layout (packed rows, src/batch.rs; D directions, H hidden, G gates):
// - states  [tokens, D*H]: the layer's output; direction d's h in columns d*H ..
// - saved   [tokens, D*G*H]: the input projection W_ih in + b_ih (hoisted before the
//           loop), overwritten with the gates after their nonlinearities; then at
//           saved_aux [tokens, D*H]: c (LSTM) or W_hn h(t-1) + b_hn (GRU). An Elman cell
//           has no saved buffer: its input projection sits in `states`, where h replaces it.
// - grad    [tokens, D*H]: the gradient with respect to the layer's output, from the
//           readout or the layer above; the backward step leaves in each row what its
//           cell passes to the previous step directly (GRU: z*dh, LSTM: f*dc), and an
//           Elman cell leaves there the gradient with respect to its pre-activation.
// - dgates  [tokens, D*G*H]: the gradient with respect to the input projection (dgx);
//           the GRU's with respect to the recurrent product (dgh) at `dgh`.
// - initial: h0 [layers*D, batch, H] in packed sequence order, then c0 at initial_c.

// One direction's step: which packed rows it runs, and where its previous and next
// states are.
struct DirStep {
    rows: u32,      // sequences running at this step (a prefix of the packed order)
    cur: u32,       // packed row of its first sequence
    prev: u32,      // packed row of the first sequence at the step it continues from
    prev_rows: u32, // rows that continue from there; the rest start from the initial state
    next: u32,      // backward: packed row of the first sequence at the step continuing it
    next_rows: u32, // rows continued there (0 for the last step the direction visits)
    w_hh: u32,      // element offset of W_hh [G*H, H] in `params` (persistent forward: W_hh^T)
    b_hh: u32,      // element offset of b_hh [G*H] in `params`
    gate_col: u32,  // d*G*H: the direction's first column of saved and dgates
    state_col: u32, // d*H: its first column of states and grad
    initial: u32,   // element offset of its initial state [batch, H] in `initial`
    aux: u32,       // tiled steps: element offset of its step product [rows, G*H] in `aux`
}

struct CellStep {
    hidden: u32,
    gate_stride: u32,  // D*G*H
    state_stride: u32, // D*H
    has_initial: u32,  // 0: every sequence starts from zeros
    lengths: u32,      // persistent kernels: where the sequences' lengths start in `packing`
    saved_aux: u32,    // element offset of c / W_hn h + b_hn in `saved`
    dgh: u32,          // element offset of dgh in `dgates` (GRU; 0 for the others: dgh = dgx)
    initial_c: u32,    // element offset of c0 in `initial`
    dir: array<DirStep, 2>,
}

@group(0) @binding(0) var<uniform> p: CellStep;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> states: array<f32>;
@group(0) @binding(3) var<storage, read_write> saved: array<f32>;
@group(0) @binding(4) var<storage, read> initial: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> dgates: array<f32>;
// persistent kernels: step offsets offsets[0..=max_len], then the sequences' lengths
@group(0) @binding(7) var<storage, read> packing: array<u32>;
// tiled steps: the step's recurrent product
@group(0) @binding(8) var<storage, read_write> aux: array<f32>;

const TANH_CELL: u32 = 0u;
const RELU_CELL: u32 = 1u;
const LSTM_CELL: u32 = 2u;
const GRU_CELL: u32 = 3u;

override CELL: u32 = 0u;
// gate blocks per weight matrix: 1 (Elman), 4 (LSTM), 3 (GRU)
override GATES: u32 = select(select(1u, 4u, CELL == LSTM_CELL), 3u, CELL == GRU_CELL);
override ELMAN: bool = CELL < LSTM_CELL;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// clamped: some drivers overflow inside tanh for large |x|; tanh(15) is 1 in f32
fn tanh_clamped(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// ---- the cell's element-wise math (src/cpu/cell.rs is the reference) ----

struct CellOut {
    gates: vec4<f32>, // after their nonlinearities (Elman: h)
    h: f32,
    aux: f32,         // LSTM: c(t); GRU: W_hn h(t-1) + b_hn, kept for the backward pass
}

// gx: W_ih in(t) + b_ih, hh: W_hh h(t-1) + b_hh, one per gate block
fn cell_forward(gx: vec4<f32>, hh: vec4<f32>, h_prev: f32, c_prev: f32) -> CellOut {
    var o: CellOut;
    if (CELL == TANH_CELL) {
        o.h = tanh_clamped(gx.x + hh.x);
        o.gates = vec4<f32>(o.h, 0.0, 0.0, 0.0);
    } else if (CELL == RELU_CELL) {
        o.h = max(gx.x + hh.x, 0.0);
        o.gates = vec4<f32>(o.h, 0.0, 0.0, 0.0);
    } else if (CELL == LSTM_CELL) {
        let i = sigmoid(gx.x + hh.x);
        let f = sigmoid(gx.y + hh.y);
        let g = tanh_clamped(gx.z + hh.z);
        let og = sigmoid(gx.w + hh.w);
        let c = f * c_prev + i * g;
        o.gates = vec4<f32>(i, f, g, og);
        o.aux = c;
        o.h = og * tanh_clamped(c);
    } else {
        let r = sigmoid(gx.x + hh.x);
        let z = sigmoid(gx.y + hh.y);
        let n = tanh_clamped(gx.z + r * hh.z);
        o.gates = vec4<f32>(r, z, n, 0.0);
        o.aux = hh.z;
        o.h = (1.0 - z) * n + z * h_prev;
    }
    return o;
}

// What the backward step of one row and unit reads from the forward pass.
struct CellSaved {
    gates: vec4<f32>,
    c: f32,      // LSTM
    c_prev: f32, // LSTM
    h_prev: f32, // GRU
    hn: f32,     // GRU
}

struct CellGrad {
    dgx: vec4<f32>, // with respect to W_ih in(t) + b_ih
    dgh: vec4<f32>, // with respect to W_hh h(t-1) + b_hh (differs from dgx for the GRU only)
    carry: f32,     // to the previous step other than through W_hh: GRU z*dh, LSTM f*dc
}

// dh: the gradient with respect to h(t) from outside the cell's own recurrence (readout or
// layer above) and through W_hh from the step after; carry: that step's `carry`
// (0 where no step follows)
fn cell_backward(s: CellSaved, dh_in: f32, carry: f32) -> CellGrad {
    var o: CellGrad;
    if (CELL == TANH_CELL) {
        let v = s.gates.x;
        o.dgx = vec4<f32>(dh_in * (1.0 - v * v), 0.0, 0.0, 0.0);
        o.dgh = o.dgx;
    } else if (CELL == RELU_CELL) {
        o.dgx = vec4<f32>(select(0.0, dh_in, s.gates.x > 0.0), 0.0, 0.0, 0.0);
        o.dgh = o.dgx;
    } else if (CELL == LSTM_CELL) {
        let i = s.gates.x;
        let f = s.gates.y;
        let g = s.gates.z;
        let og = s.gates.w;
        let tc = tanh_clamped(s.c);
        let dc = carry + dh_in * og * (1.0 - tc * tc);
        o.dgx = vec4<f32>(
            dc * g * i * (1.0 - i),
            dc * s.c_prev * f * (1.0 - f),
            dc * i * (1.0 - g * g),
            dh_in * tc * og * (1.0 - og),
        );
        o.dgh = o.dgx;
        o.carry = dc * f;
    } else {
        let r = s.gates.x;
        let z = s.gates.y;
        let n = s.gates.z;
        let dh = dh_in + carry;
        let dn = dh * (1.0 - z) * (1.0 - n * n);
        let dz = dh * (s.h_prev - n) * z * (1.0 - z);
        let dr = dn * s.hn * r * (1.0 - r);
        o.dgx = vec4<f32>(dr, dz, dn, 0.0);
        o.dgh = vec4<f32>(dr, dz, dn * r, 0.0);
        o.carry = dh * z;
    }
    return o;
}

// ---- where things are ----

fn state_at(row: u32, d: u32, k: u32) -> u32 {
    return row * p.state_stride + p.dir[d].state_col + k;
}

fn gate_at(row: u32, d: u32, m: u32) -> u32 {
    return row * p.gate_stride + p.dir[d].gate_col + m;
}

// The input projection of gate column m (m = gate * H + unit) of a row.
fn gate_input(row: u32, d: u32, m: u32) -> f32 {
    if (ELMAN) {
        return states[state_at(row, d, m)];
    }
    return saved[gate_at(row, d, m)];
}

// h(t-1) of unit k: the state at packed row `prev_row` when `has_prev`, else row j of the
// initial state (zeros without one).
fn h_before(d: u32, has_prev: bool, prev_row: u32, j: u32, k: u32) -> f32 {
    if (has_prev) {
        return states[state_at(prev_row, d, k)];
    }
    if (p.has_initial != 0u) {
        return initial[p.dir[d].initial + j * p.hidden + k];
    }
    return 0.0;
}

// c(t-1), likewise (LSTM).
fn c_before(d: u32, has_prev: bool, prev_row: u32, j: u32, k: u32) -> f32 {
    if (has_prev) {
        return saved[p.saved_aux + state_at(prev_row, d, k)];
    }
    if (p.has_initial != 0u) {
        return initial[p.initial_c + p.dir[d].initial + j * p.hidden + k];
    }
    return 0.0;
}

// h(t-1) of row j of direction d's current step.
fn previous_h(d: u32, j: u32, k: u32) -> f32 {
    let s = p.dir[d];
    return h_before(d, j < s.prev_rows, s.prev + j, j, k);
}

// Stores one row and unit of a step's forward results.
fn store_forward(row: u32, d: u32, k: u32, out: CellOut) {
    states[state_at(row, d, k)] = out.h;
    if (!ELMAN) {
        for (var g = 0u; g < GATES; g++) {
            saved[gate_at(row, d, g * p.hidden + k)] = out.gates[g];
        }
        saved[p.saved_aux + state_at(row, d, k)] = out.aux;
    }
}

// The rest of a forward step for row j and unit k of direction d's step, given its
// recurrent product hh (W_hh h(t-1) + b_hh, one per gate).
fn finish_forward(d: u32, j: u32, k: u32, hh: vec4<f32>) {
    let s = p.dir[d];
    let row = s.cur + j;
    var gx = vec4<f32>(0.0);
    for (var g = 0u; g < GATES; g++) {
        gx[g] = gate_input(row, d, g * p.hidden + k);
    }
    var h_prev = 0.0;
    var c_prev = 0.0;
    if (CELL == GRU_CELL) {
        h_prev = previous_h(d, j, k);
    }
    if (CELL == LSTM_CELL) {
        c_prev = c_before(d, j < s.prev_rows, s.prev + j, j, k);
    }
    store_forward(row, d, k, cell_forward(gx, hh, h_prev, c_prev));
}

// What the backward step of packed row `row` (unit k) needs from the forward pass; its
// previous state as for h_before.
fn load_saved(row: u32, d: u32, has_prev: bool, prev_row: u32, j: u32, k: u32) -> CellSaved {
    var s: CellSaved;
    if (ELMAN) {
        s.gates.x = states[state_at(row, d, k)];
        return s;
    }
    for (var g = 0u; g < GATES; g++) {
        s.gates[g] = saved[gate_at(row, d, g * p.hidden + k)];
    }
    let aux_value = saved[p.saved_aux + state_at(row, d, k)];
    if (CELL == LSTM_CELL) {
        s.c = aux_value;
        s.c_prev = c_before(d, has_prev, prev_row, j, k);
    } else {
        s.hn = aux_value;
        s.h_prev = h_before(d, has_prev, prev_row, j, k);
    }
    return s;
}

// Stores one row and unit of a step's gradients.
fn store_backward(row: u32, d: u32, k: u32, out: CellGrad) {
    let at = state_at(row, d, k);
    if (ELMAN) {
        grad[at] = out.dgx.x;
        return;
    }
    for (var g = 0u; g < GATES; g++) {
        let m = gate_at(row, d, g * p.hidden + k);
        dgates[m] = out.dgx[g];
        if (CELL == GRU_CELL) {
            dgates[p.dgh + m] = out.dgh[g];
        }
    }
    grad[at] = out.carry;
}

// The rest of a backward step for row j and unit k of direction d's step, given the
// gradient reaching h(t) through W_hh from the step after (`recurrent`).
fn finish_backward(d: u32, j: u32, k: u32, recurrent: f32) {
    let s = p.dir[d];
    let row = s.cur + j;
    let dh = grad[state_at(row, d, k)] + recurrent;
    var carry = 0.0;
    if (!ELMAN && j < s.next_rows) {
        carry = grad[state_at(s.next + j, d, k)];
    }
    let saved_row = load_saved(row, d, j < s.prev_rows, s.prev + j, j, k);
    store_backward(row, d, k, cell_backward(saved_row, dh, carry));
}

// dgh of gate column m of a row: what the backward product with W_hh reads.
fn dgh_at(row: u32, d: u32, m: u32) -> f32 {
    if (ELMAN) {
        return grad[state_at(row, d, m)];
    }
    return dgates[p.dgh + gate_at(row, d, m)];
}
