// The per-step kernels of the unfolded recurrence, on the packed layout (rows of step t
// are the sequences still running, a prefix of those of step t-1).
//
// forward_step:  h(t) = phi(pre(t) + W_hh h(t-1)), in place on the layer's state buffer
//                whose rows of step t already hold the hoisted W_ih x(t) + b.
// backward_step: dA(t) = (g(t) + W_hh^T dA(t+1)) * phi'(h(t)), in place on the gradient
//                buffer whose rows of step t hold g(t), the gradient arriving from the
//                readout or the layer above; rows past n_next get no recurrent term.
//
// Each workgroup computes 16 rows x 16 hidden units, one per thread, staging 64-deep
// slices of the state and of W_hh through workgroup memory.
//
// forward_sequence / backward_sequence are the persistent forms for hidden <= 256: one
// dispatch runs every step of a layer. Workgroup r owns sequence r (rows are independent),
// keeps its state vector in workgroup memory and walks its own length, so steps are
// separated by workgroup barriers instead of dispatches. Each step's product is shared
// among all 256 threads (see share_of), and both directions read W_hh along its rows'
// contiguous dimension: the forward kernel gets a transposed copy.

struct StepParams {
    rows: u32,         // sequences running at step t
    rows_next: u32,    // backward: sequences running at step t+1 (0 at the last step)
    hidden: u32,
    cur_offset: u32,   // element offset of row 0 of step t
    other_offset: u32, // forward: row 0 of step t-1; backward: row 0 of step t+1
    w_offset: u32,     // element offset of W_hh in the parameter buffer
    relu: u32,         // 0: tanh, 1: relu
    has_other: u32,    // forward: 0 at t = 0 with a zero initial state, 2 to read the
                       // previous state from `hidden_out` (the initial state) at other_offset
}
// The persistent kernels read `packing`: offsets[0..=max_len] at 0, then the sequences'
// lengths in packed order from `rows_next` on; `rows` is the number of sequences.

@group(0) @binding(0) var<uniform> p: StepParams;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;  // forward: h; backward: g
@group(0) @binding(3) var<storage, read> hidden_out: array<f32>;   // backward: h; forward: initial state
@group(0) @binding(4) var<storage, read> packing: array<u32>;      // persistent kernels only

// K advances 64 at a time: each thread stages 4 elements of each operand per slice, all
// loaded at once, and the next slice's loads are issued before the current slice's
// multiply-adds, so a step of hidden H waits on H / 64 global-load latencies, not H / 16.
const STEP_K: u32 = 64u;

// [row][k]: 16 rows of the other step's state (or gradient)
var<workgroup> left_tile: array<array<f32, 64>, 16>;
// forward: W_hh[unit][k], rows padded to 65 so that a warp's reads down a column
// (w_rows[lid.x][j]) fall in distinct banks
var<workgroup> w_rows: array<array<f32, 65>, 16>;
// backward: W_hh[k][unit]
var<workgroup> w_cols: array<array<f32, 16>, 64>;

fn activate(v: f32) -> f32 {
    if (p.relu != 0u) {
        return max(v, 0.0);
    }
    // clamped: some drivers overflow inside tanh for large |v|; tanh(15) is 1 in f32
    return tanh(clamp(v, -15.0, 15.0));
}

fn derivative(h: f32) -> f32 {
    if (p.relu != 0u) {
        return select(0.0, 1.0, h > 0.0);
    }
    return 1.0 - h * h;
}

// One slice in flight: element e of this thread's share of each tile.
struct StepSlice {
    left: vec4<f32>,
    w: vec4<f32>,
}

// Forward: row r of step t-1 (or of the initial state) and W_hh[unit][k], for the
// slice starting at k0; tile element idx = tid + 256 e is (idx / 64, idx % 64).
fn fetch_forward(tid: u32, row0: u32, unit0: u32, k0: u32) -> StepSlice {
    let h = p.hidden;
    var s: StepSlice;
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let r = row0 + idx / STEP_K;
        let k = k0 + idx % STEP_K;
        let u = unit0 + idx / STEP_K;
        if (r < p.rows && k < h) {
            if (p.has_other == 2u) {
                s.left[e] = hidden_out[p.other_offset + r * h + k];
            } else {
                s.left[e] = state[p.other_offset + r * h + k];
            }
        }
        if (u < h && k < h) {
            s.w[e] = params[p.w_offset + u * h + k];
        }
    }
    return s;
}

@compute @workgroup_size(16, 16)
fn forward_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * 16u;
    let unit0 = wg.x * 16u;
    let row = row0 + lid.y;
    let unit = unit0 + lid.x;
    let tid = lid.y * 16u + lid.x;
    let h = p.hidden;
    var acc = 0.0;
    if (p.has_other != 0u) {
        var next = fetch_forward(tid, row0, unit0, 0u);
        for (var k0 = 0u; k0 < h; k0 += STEP_K) {
            for (var e = 0u; e < 4u; e++) {
                let idx = tid + e * 256u;
                left_tile[idx / STEP_K][idx % STEP_K] = next.left[e];
                w_rows[idx / STEP_K][idx % STEP_K] = next.w[e];
            }
            workgroupBarrier();
            if (k0 + STEP_K < h) {
                next = fetch_forward(tid, row0, unit0, k0 + STEP_K);
            }
            for (var j = 0u; j < STEP_K; j++) {
                acc = fma(left_tile[lid.y][j], w_rows[lid.x][j], acc);
            }
            workgroupBarrier();
        }
    }
    if (row < p.rows && unit < h) {
        let at = p.cur_offset + row * h + unit;
        state[at] = activate(state[at] + acc);
    }
}

// Backward: row r of dA(t+1) (tile element idx = (idx / 64, idx % 64)) and W_hh[k][unit]
// (tile element idx = (idx / 16, idx % 16): k, unit), for the slice starting at k0.
fn fetch_backward(tid: u32, row0: u32, unit0: u32, k0: u32) -> StepSlice {
    let h = p.hidden;
    var s: StepSlice;
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let r = row0 + idx / STEP_K;
        let k = k0 + idx % STEP_K;
        if (r < p.rows_next && k < h) {
            s.left[e] = state[p.other_offset + r * h + k];
        }
        let wk = k0 + idx / 16u;
        let u = unit0 + idx % 16u;
        if (wk < h && u < h) {
            s.w[e] = params[p.w_offset + wk * h + u];
        }
    }
    return s;
}

@compute @workgroup_size(16, 16)
fn backward_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * 16u;
    let unit0 = wg.x * 16u;
    let row = row0 + lid.y;
    let unit = unit0 + lid.x;
    let tid = lid.y * 16u + lid.x;
    let h = p.hidden;
    var acc = 0.0;
    if (p.rows_next > 0u) {
        var next = fetch_backward(tid, row0, unit0, 0u);
        for (var k0 = 0u; k0 < h; k0 += STEP_K) {
            for (var e = 0u; e < 4u; e++) {
                let idx = tid + e * 256u;
                left_tile[idx / STEP_K][idx % STEP_K] = next.left[e];
                w_cols[idx / 16u][idx % 16u] = next.w[e];
            }
            workgroupBarrier();
            if (k0 + STEP_K < h) {
                next = fetch_backward(tid, row0, unit0, k0 + STEP_K);
            }
            for (var j = 0u; j < STEP_K; j++) {
                acc = fma(left_tile[lid.y][j], w_cols[j][lid.x], acc);
            }
            workgroupBarrier();
        }
    }
    if (row < p.rows && unit < h) {
        let at = p.cur_offset + row * h + unit;
        state[at] = (state[at] + acc) * derivative(hidden_out[at]);
    }
}

var<workgroup> carried: array<f32, 256>;
var<workgroup> partial: array<f32, 256>;
var<workgroup> seq_len: u32;

// The persistent kernels load each step's inputs (the pre-activation forward; the
// incoming gradient and the slope backward) a chunk of steps at a time into workgroup
// memory, every load of a chunk in flight at once, so that a step waits on no global
// load: with one step ahead only, two dependent global loads (the step's row, then its
// values) were the longest wait of a step at hidden 64. A chunk is STAGE / hidden steps.
const STAGE: u32 = 1024u;
var<workgroup> staged: array<f32, 1024>;
var<workgroup> staged_slope: array<f32, 1024>;
// packed row of step t0 + s of the chunk, in the layout's order
var<workgroup> chunk_rows: array<u32, 1024>;

// How the persistent kernels share one step's product among the workgroup's 256 threads:
// `parts` threads per hidden unit (4 for hidden 64, 2 for 128, 1 for 256), thread u taking
// unit u % hidden and a 1/parts share of the sum over k, so that the chain of dependent
// loads and multiply-adds each step waits on is `parts` times shorter.
struct Share {
    unit: u32,
    k_begin: u32,
    k_end: u32,
}

fn share_of(u: u32, h: u32) -> Share {
    let parts = max(256u / h, 1u);
    let part = u / h;
    let depth = (h + parts - 1u) / parts;
    var s: Share;
    s.unit = u % h;
    s.k_begin = min(part * depth, h);
    s.k_end = min(s.k_begin + depth, h);
    return s;
}

// sum over k in [k_begin, k_end) of carried[k] * params[base + k * h], eight loads at a
// time in independent chains: at hidden 256, W_hh (256 KiB) comes from L2 every step,
// and the loads a thread has in flight are what bounds the step;
// neighbouring threads (neighbouring units) read neighbouring floats
fn carried_dot(base: u32, h: u32, k_begin: u32, k_end: u32) -> f32 {
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    var k = k_begin;
    for (; k + 8u <= k_end; k += 8u) {
        let at = base + k * h;
        a0 = fma(carried[k], params[at], a0);
        a1 = fma(carried[k + 1u], params[at + h], a1);
        a2 = fma(carried[k + 2u], params[at + 2u * h], a2);
        a3 = fma(carried[k + 3u], params[at + 3u * h], a3);
        a4 = fma(carried[k + 4u], params[at + 4u * h], a4);
        a5 = fma(carried[k + 5u], params[at + 5u * h], a5);
        a6 = fma(carried[k + 6u], params[at + 6u * h], a6);
        a7 = fma(carried[k + 7u], params[at + 7u * h], a7);
    }
    for (; k < k_end; k++) {
        a0 = fma(carried[k], params[base + k * h], a0);
    }
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// The step's whole product for unit u (< h): the sum of its parts.
fn gathered(u: u32, h: u32) -> f32 {
    var total = 0.0;
    for (var i = u; i < 256u; i += h) {
        total += partial[i];
    }
    return total;
}

// Loads the chunk of `steps` steps from t0 (forward: t0 upwards; backward: t0 downwards)
// of sequence r: chunk_rows, then staged (the state rows) and, backward, staged_slope.
// Ends with a barrier.
fn stage_chunk(u: u32, r: u32, h: u32, t0: u32, steps: u32, backward: bool) {
    for (var e = 0u; e < STAGE / 256u; e++) {
        let s = u + e * 256u;
        if (s < steps) {
            var t = t0 + s;
            if (backward) {
                t = t0 - s;
            }
            chunk_rows[s] = packing[t] + r;
        }
    }
    workgroupBarrier();
    for (var e = 0u; e < STAGE / 256u; e++) {
        let i = u + e * 256u;
        let s = i / h;
        if (s < steps) {
            let at = chunk_rows[s] * h + i % h;
            staged[i] = state[at];
            if (backward) {
                staged_slope[i] = derivative(hidden_out[at]);
            }
        }
    }
    workgroupBarrier();
}

// `params` here is W_hh transposed ([k][u], at w_offset): see GpuRnn::record_forward.
@compute @workgroup_size(256)
fn forward_sequence(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) u: u32) {
    let r = wg.x;
    let h = p.hidden;
    if (u == 0u) {
        seq_len = packing[p.rows_next + r];
    }
    // with an initial state (has_other == 2) it sits in hidden_out at cur_offset, [batch, hidden]
    let from_initial = p.has_other == 2u;
    carried[u] = 0.0;
    partial[u] = 0.0;
    if (from_initial && u < h) {
        carried[u] = hidden_out[p.cur_offset + r * h + u];
    }
    let len = workgroupUniformLoad(&seq_len);
    let share = share_of(u, h);
    let chunk = STAGE / h;
    for (var t0 = 0u; t0 < len; t0 += chunk) {
        let steps = min(chunk, len - t0);
        stage_chunk(u, r, h, t0, steps, false);
        for (var s = 0u; s < steps; s++) {
            if (t0 + s > 0u || from_initial) {
                partial[u] = carried_dot(p.w_offset + share.unit, h, share.k_begin, share.k_end);
            }
            workgroupBarrier();
            if (u < h) {
                let v = activate(staged[s * h + u] + gathered(u, h));
                carried[u] = v;
                state[chunk_rows[s] * h + u] = v;
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(256)
fn backward_sequence(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) u: u32) {
    let r = wg.x;
    let h = p.hidden;
    if (u == 0u) {
        seq_len = packing[p.rows_next + r];
    }
    carried[u] = 0.0;
    partial[u] = 0.0;
    let len = workgroupUniformLoad(&seq_len);
    let share = share_of(u, h);
    let chunk = STAGE / h;
    // steps are walked from the last (len - 1) down; `done` of them so far
    for (var done = 0u; done < len; done += chunk) {
        let steps = min(chunk, len - done);
        stage_chunk(u, r, h, len - 1u - done, steps, true);
        for (var s = 0u; s < steps; s++) {
            if (done + s > 0u) {
                // (W_hh^T dA(t+1))[u] = sum_k W_hh[k][u] dA(t+1)[k]
                partial[u] = carried_dot(p.w_offset + share.unit, h, share.k_begin, share.k_end);
            }
            workgroupBarrier();
            if (u < h) {
                let d = (staged[s * h + u] + gathered(u, h)) * staged_slope[s * h + u];
                carried[u] = d;
                state[chunk_rows[s] * h + u] = d;
            }
            workgroupBarrier();
        }
    }
}
