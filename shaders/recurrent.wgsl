// The time-loop kernels of the unfolded recurrence, for every cell (cell_common.wgsl is
// prepended: the parameter block, bindings and cell math), on the packed layout (rows of
// step t are the sequences still running, a prefix of those of the step before). Both
// directions of a layer advance in the same dispatch: workgroup z (per-step kernels) or y
// (persistent kernels) is the direction, each with its own step in `p.dir`.
//
// step_forward:  one fused dispatch per step (TimeLoop::PerStep): the recurrent product of
//                all gates h(t-1) W_hh^T + b_hh, then the cell, in place on the layer's
//                buffers whose rows of step t already hold the hoisted input projection.
// step_backward: the gradient reaching h(t) through W_hh from the step after,
//                dgh(t+1) W_hh (K = G*H), plus what arrived from the readout or the layer
//                above and the cell's carry, then the cell backward.
//
// A workgroup computes 16 rows x 16 columns of the step's product, one per thread, staging
// 64-deep slices of the left operand and of W_hh through workgroup memory. Forward, the
// columns are gate columns: 16 / G units with all their gates (Elman: 16 units), so the
// cell of a unit finds its G pre-activations in one workgroup.
//
// sequence_forward / sequence_backward are the persistent forms for hidden <= 256: one
// dispatch runs every step of a layer. Workgroup (r, d) owns sequence r in direction d
// (rows are independent), keeps its state vector in workgroup memory and walks its own
// length (the reverse direction from its last step down), so steps are separated by
// workgroup barriers instead of dispatches. Each step's product is shared among all 256
// threads, and both directions read W_hh along its rows' contiguous dimension: the forward
// kernel gets a transposed copy.

// K advances 64 at a time: each thread stages 4 elements of each operand per slice, all
// loaded at once, and the next slice's loads are issued before the current slice's
// multiply-adds, so a step of depth K waits on K / 64 global-load latencies, not K / 16.
const STEP_K: u32 = 64u;

// [row][k]: 16 rows of the previous step's state (or the next step's dgh)
var<workgroup> left_tile: array<array<f32, 64>, 16>;
// forward: W_hh[gate column][k], rows padded to 65 so that a warp's reads down a column
// (w_rows[lid.x][j]) fall in distinct banks
var<workgroup> w_rows: array<array<f32, 65>, 16>;
// backward: W_hh[k][unit]
var<workgroup> w_cols: array<array<f32, 16>, 64>;

// units per forward workgroup: all gate columns of each
override GROUP_UNITS: u32 = 16u / GATES;

// One slice in flight: element e of this thread's share of each tile.
struct StepSlice {
    left: vec4<f32>,
    w: vec4<f32>,
}

// Forward: rows of h(t-1) (tile element idx = (idx / 64, idx % 64): row, k) and W_hh rows
// of the workgroup's gate columns (idx / 64: column, idx % 64: k), for the slice at k0.
fn fetch_forward(d: u32, tid: u32, row0: u32, unit0: u32, k0: u32) -> StepSlice {
    let s = p.dir[d];
    let h = p.hidden;
    var sl: StepSlice;
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let j = row0 + idx / STEP_K;
        let k = k0 + idx % STEP_K;
        if (j < s.rows && k < h) {
            sl.left[e] = previous_h(d, j, k);
        }
        let col = idx / STEP_K;
        let unit = unit0 + col / GATES;
        if (col < GROUP_UNITS * GATES && unit < h && k < h) {
            sl.w[e] = params[s.w_hh + ((col % GATES) * h + unit) * h + k];
        }
    }
    return sl;
}

@compute @workgroup_size(16, 16)
fn step_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let d = wg.z;
    let s = p.dir[d];
    let row0 = wg.y * 16u;
    if (row0 >= s.rows) {
        return; // the other direction's step has more rows
    }
    let unit0 = wg.x * GROUP_UNITS;
    let tid = lid.y * 16u + lid.x;
    let h = p.hidden;
    var acc = 0.0;
    // rows that all start from zeros have no recurrent product
    if (s.prev_rows > 0u || p.has_initial != 0u) {
        var next = fetch_forward(d, tid, row0, unit0, 0u);
        for (var k0 = 0u; k0 < h; k0 += STEP_K) {
            for (var e = 0u; e < 4u; e++) {
                let idx = tid + e * 256u;
                left_tile[idx / STEP_K][idx % STEP_K] = next.left[e];
                w_rows[idx / STEP_K][idx % STEP_K] = next.w[e];
            }
            workgroupBarrier();
            if (k0 + STEP_K < h) {
                next = fetch_forward(d, tid, row0, unit0, k0 + STEP_K);
            }
            for (var j = 0u; j < STEP_K; j++) {
                acc = fma(left_tile[lid.y][j], w_rows[lid.x][j], acc);
            }
            workgroupBarrier();
        }
    }
    // a gated cell's unit needs all its gates: they meet in workgroup memory
    var hh = vec4<f32>(0.0);
    if (GATES == 1u) {
        hh.x = acc;
    } else {
        left_tile[lid.y][lid.x] = acc;
        workgroupBarrier();
        if (lid.x < GROUP_UNITS) {
            for (var g = 0u; g < GATES; g++) {
                hh[g] = left_tile[lid.y][lid.x * GATES + g];
            }
        }
    }
    let j = row0 + lid.y;
    let k = unit0 + lid.x;
    if (j < s.rows && lid.x < GROUP_UNITS && k < h) {
        for (var g = 0u; g < GATES; g++) {
            hh[g] += params[s.b_hh + g * h + k];
        }
        finish_forward(d, j, k, hh);
    }
}

// Backward: rows of dgh(t+1) (idx / 64: row, idx % 64: gate column m) and W_hh[m][unit]
// (idx / 16: m, idx % 16: unit), for the slice at k0.
fn fetch_backward(d: u32, tid: u32, row0: u32, unit0: u32, k0: u32) -> StepSlice {
    let s = p.dir[d];
    let h = p.hidden;
    let gh = GATES * h;
    var sl: StepSlice;
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let j = row0 + idx / STEP_K;
        let m = k0 + idx % STEP_K;
        if (j < s.next_rows && m < gh) {
            sl.left[e] = dgh_at(s.next + j, d, m);
        }
        let wm = k0 + idx / 16u;
        let u = unit0 + idx % 16u;
        if (wm < gh && u < h) {
            sl.w[e] = params[s.w_hh + wm * h + u];
        }
    }
    return sl;
}

@compute @workgroup_size(16, 16)
fn step_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let d = wg.z;
    let s = p.dir[d];
    let row0 = wg.y * 16u;
    if (row0 >= s.rows) {
        return;
    }
    let unit0 = wg.x * 16u;
    let tid = lid.y * 16u + lid.x;
    let h = p.hidden;
    let gh = GATES * h;
    var acc = 0.0;
    if (s.next_rows > 0u) {
        var next = fetch_backward(d, tid, row0, unit0, 0u);
        for (var k0 = 0u; k0 < gh; k0 += STEP_K) {
            for (var e = 0u; e < 4u; e++) {
                let idx = tid + e * 256u;
                left_tile[idx / STEP_K][idx % STEP_K] = next.left[e];
                w_cols[idx / 16u][idx % 16u] = next.w[e];
            }
            workgroupBarrier();
            if (k0 + STEP_K < gh) {
                next = fetch_backward(d, tid, row0, unit0, k0 + STEP_K);
            }
            for (var j = 0u; j < STEP_K; j++) {
                acc = fma(left_tile[lid.y][j], w_cols[j][lid.x], acc);
            }
            workgroupBarrier();
        }
    }
    let j = row0 + lid.y;
    let k = unit0 + lid.x;
    if (j < s.rows && k < h) {
        finish_backward(d, j, k, acc);
    }
}

// ---- persistent kernels ----

var<workgroup> seq_len: u32;
// forward: h(t-1), and the step's G*H recurrent products (or parts of them, see
// forward_products)
var<workgroup> carried_h: array<f32, 256>;
var<workgroup> products: array<f32, 1024>;
// backward: dgh of the step after (G*H), and parts of the step's H products
var<workgroup> carried_d: array<f32, 1024>;
var<workgroup> partial: array<f32, 256>;

// The persistent kernels load each step's inputs (the input projection forward; the
// incoming gradient and, Elman, the slope backward) a chunk of steps at a time into
// workgroup memory, every load of a chunk in flight at once, so that a step waits on no
// global load: with one step ahead only, two dependent global loads (the step's row,
// then its values) were the longest wait of a step at hidden 64. A chunk is
// STAGE / width steps (width G*H forward, H backward), at most MAX_CHUNK.
const STAGE: u32 = 1024u;
const MAX_CHUNK: u32 = 256u;
var<workgroup> staged: array<f32, 1024>;
var<workgroup> staged_slope: array<f32, 1024>;
// packed row of each step of the chunk
var<workgroup> chunk_rows: array<u32, 256>;

// The step at position i of a walk over a sequence of length len: forward from step 0,
// except for the reverse direction's forward pass and the forward direction's backward
// pass, which walk down from len - 1.
fn walk_step(d: u32, len: u32, i: u32, backward: bool) -> u32 {
    if ((d == 1u) != backward) {
        return len - 1u - i;
    }
    return i;
}

// Loads the chunk of `steps` steps from walk position i0 of sequence r: chunk_rows, then
// `width` values per step into staged (forward: the input projection; backward: the
// incoming gradient, and the slope of an Elman cell). Ends with a barrier.
fn stage_chunk(u: u32, r: u32, d: u32, len: u32, i0: u32, steps: u32, width: u32, backward: bool) {
    if (u < steps) {
        chunk_rows[u] = packing[walk_step(d, len, i0 + u, backward)] + r;
    }
    workgroupBarrier();
    for (var e = 0u; e < STAGE / 256u; e++) {
        let i = u + e * 256u;
        let q = i / width;
        if (q < steps) {
            let row = chunk_rows[q];
            let c = i % width;
            if (!backward) {
                staged[i] = gate_input(row, d, c);
            } else {
                staged[i] = grad[state_at(row, d, c)];
                if (ELMAN) {
                    let v = states[state_at(row, d, c)];
                    if (CELL == RELU_CELL) {
                        staged_slope[i] = select(0.0, 1.0, v > 0.0);
                    } else {
                        staged_slope[i] = 1.0 - v * v;
                    }
                }
            }
        }
    }
    workgroupBarrier();
}

// sum over k in [k_begin, k_end) of carried_h[k] * params[base + k * stride] (forward:
// W_hh^T, so neighbouring threads, neighbouring columns, read neighbouring floats), eight
// loads at a time in independent chains: at hidden 256, W_hh (256 KiB) comes from L2
// every step, and the loads a thread has in flight are what bounds the step
fn dot_h(base: u32, stride: u32, k_begin: u32, k_end: u32) -> f32 {
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
        let at = base + k * stride;
        a0 = fma(carried_h[k], params[at], a0);
        a1 = fma(carried_h[k + 1u], params[at + stride], a1);
        a2 = fma(carried_h[k + 2u], params[at + 2u * stride], a2);
        a3 = fma(carried_h[k + 3u], params[at + 3u * stride], a3);
        a4 = fma(carried_h[k + 4u], params[at + 4u * stride], a4);
        a5 = fma(carried_h[k + 5u], params[at + 5u * stride], a5);
        a6 = fma(carried_h[k + 6u], params[at + 6u * stride], a6);
        a7 = fma(carried_h[k + 7u], params[at + 7u * stride], a7);
    }
    for (; k < k_end; k++) {
        a0 = fma(carried_h[k], params[base + k * stride], a0);
    }
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// The same over carried_d (backward: W_hh[m][unit], m the gate column).
fn dot_d(base: u32, stride: u32, k_begin: u32, k_end: u32) -> f32 {
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
        let at = base + k * stride;
        a0 = fma(carried_d[k], params[at], a0);
        a1 = fma(carried_d[k + 1u], params[at + stride], a1);
        a2 = fma(carried_d[k + 2u], params[at + 2u * stride], a2);
        a3 = fma(carried_d[k + 3u], params[at + 3u * stride], a3);
        a4 = fma(carried_d[k + 4u], params[at + 4u * stride], a4);
        a5 = fma(carried_d[k + 5u], params[at + 5u * stride], a5);
        a6 = fma(carried_d[k + 6u], params[at + 6u * stride], a6);
        a7 = fma(carried_d[k + 7u], params[at + 7u * stride], a7);
    }
    for (; k < k_end; k++) {
        a0 = fma(carried_d[k], params[base + k * stride], a0);
    }
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// How a step's product of `cols` columns (each a sum over `depth` terms) is shared among
// the 256 threads: `parts` threads per column (4 for 64 columns, 2 for 128, 1 for 256),
// thread u taking column u % cols and a 1/parts share of the sum, so that the chain of
// dependent loads and multiply-adds each step waits on is `parts` times shorter.
struct Share {
    col: u32,
    k_begin: u32,
    k_end: u32,
}

fn share_of(u: u32, cols: u32, depth: u32) -> Share {
    let parts = max(256u / cols, 1u);
    let part = u / cols;
    let len = (depth + parts - 1u) / parts;
    var s: Share;
    s.col = u % cols;
    s.k_begin = min(part * len, depth);
    s.k_end = min(s.k_begin + len, depth);
    return s;
}

// Whether the persistent forward step's product has more than 256 columns (G*H of a gated
// cell past hidden 64 or 85): a constant per pipeline (src/gpu/kernels.rs), so that each
// variant holds only its own code (the wide variant's loop slowed the other by a sixth on
// the software adapter, branch or no branch).
override WIDE_PRODUCTS: bool = false;

// The forward step's G*H products h(t-1) W_hh^T: up to 256 columns shared as `share`
// (share_of(u, gh, h)) says, products[u] being part of column share.col; more, one thread
// per column, each whole, products[col] being column col.
fn forward_products(u: u32, share: Share, w: u32, h: u32, gh: u32) {
    if (WIDE_PRODUCTS) {
        for (var col = u; col < gh; col += 256u) {
            products[col] = dot_h(w + col, gh, 0u, h);
        }
    } else {
        products[u] = dot_h(w + share.col, gh, share.k_begin, share.k_end);
    }
}

// Column `col` of the forward step's product: the sum of its parts.
fn forward_product(col: u32, gh: u32) -> f32 {
    if (WIDE_PRODUCTS) {
        return products[col];
    }
    var total = 0.0;
    for (var i = col; i < 256u; i += gh) {
        total += products[i];
    }
    return total;
}

// `params` here holds W_hh^T [H, G*H] at dir.w_hh and b_hh at dir.b_hh (see
// src/gpu/time_loop.rs).
@compute @workgroup_size(256)
fn sequence_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) u: u32) {
    let r = wg.x;
    let d = wg.y;
    let s = p.dir[d];
    let h = p.hidden;
    let gh = GATES * h;
    if (u == 0u) {
        seq_len = packing[p.lengths + r];
    }
    carried_h[u] = 0.0;
    for (var e = 0u; e < 4u; e++) {
        products[u + e * 256u] = 0.0;
    }
    // the LSTM's c(t-1) of unit u: only its own thread reads it
    var c = 0.0;
    if (p.has_initial != 0u && u < h) {
        carried_h[u] = initial[s.initial + r * h + u];
        if (CELL == LSTM_CELL) {
            c = initial[p.initial_c + s.initial + r * h + u];
        }
    }
    // unit u's b_hh, in registers for the whole walk
    var b_hh = vec4<f32>(0.0);
    if (u < h) {
        for (var g = 0u; g < GATES; g++) {
            b_hh[g] = params[s.b_hh + g * h + u];
        }
    }
    let len = workgroupUniformLoad(&seq_len);
    let share = share_of(u, min(gh, 256u), h);
    let chunk = min(STAGE / gh, MAX_CHUNK);
    for (var i0 = 0u; i0 < len; i0 += chunk) {
        let steps = min(chunk, len - i0);
        stage_chunk(u, r, d, len, i0, steps, gh, false);
        for (var q = 0u; q < steps; q++) {
            if (i0 + q > 0u || p.has_initial != 0u) {
                forward_products(u, share, s.w_hh, h, gh);
            }
            workgroupBarrier();
            if (u < h) {
                var gx = vec4<f32>(0.0);
                var hh = b_hh;
                for (var g = 0u; g < GATES; g++) {
                    gx[g] = staged[q * gh + g * h + u];
                    hh[g] += forward_product(g * h + u, gh);
                }
                let out = cell_forward(gx, hh, carried_h[u], c);
                c = out.aux;
                carried_h[u] = out.h;
                store_forward(chunk_rows[q], d, u, out);
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(256)
fn sequence_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) u: u32) {
    let r = wg.x;
    let d = wg.y;
    let s = p.dir[d];
    let h = p.hidden;
    let gh = GATES * h;
    if (u == 0u) {
        seq_len = packing[p.lengths + r];
    }
    for (var e = 0u; e < 4u; e++) {
        carried_d[u + e * 256u] = 0.0;
    }
    partial[u] = 0.0;
    // what unit u's cell passes to the previous step directly: only its own thread reads it
    var carry = 0.0;
    let len = workgroupUniformLoad(&seq_len);
    let share = share_of(u, h, gh);
    let chunk = min(STAGE / h, MAX_CHUNK);
    for (var i0 = 0u; i0 < len; i0 += chunk) {
        let steps = min(chunk, len - i0);
        stage_chunk(u, r, d, len, i0, steps, h, true);
        for (var q = 0u; q < steps; q++) {
            let row = chunk_rows[q];
            // a gated cell's values from the forward pass: loaded before the product,
            // which they do not depend on, so that their latency overlaps it
            var saved_row: CellSaved;
            if (!ELMAN && u < h) {
                // this step's previous state in the forward pass
                let t = walk_step(d, len, i0 + q, true);
                var has_prev = false;
                var prev_row = 0u;
                if (d == 0u && t > 0u) {
                    has_prev = true;
                    prev_row = packing[t - 1u] + r;
                } else if (d == 1u && t + 1u < len) {
                    has_prev = true;
                    prev_row = packing[t + 1u] + r;
                }
                saved_row = load_saved(row, d, has_prev, prev_row, r, u);
            }
            if (i0 + q > 0u) {
                // (dgh(t+1) W_hh)[unit] = sum_m dgh(t+1)[m] W_hh[m][unit]
                partial[u] = dot_d(s.w_hh + share.col, h, share.k_begin, share.k_end);
            }
            workgroupBarrier();
            if (u < h) {
                var recurrent = 0.0;
                for (var i = u; i < 256u; i += h) {
                    recurrent += partial[i];
                }
                let dh = staged[q * h + u] + recurrent;
                if (ELMAN) {
                    let da = dh * staged_slope[q * h + u];
                    carried_d[u] = da;
                    grad[state_at(row, d, u)] = da;
                } else {
                    let out = cell_backward(saved_row, dh, carry);
                    carry = out.carry;
                    for (var g = 0u; g < GATES; g++) {
                        carried_d[g * h + u] = out.dgh[g];
                    }
                    store_backward(row, d, u, out);
                }
            }
            workgroupBarrier();
        }
    }
}
