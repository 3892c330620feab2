// The per-step kernels of the unfolded recurrence, on the packed layout (rows of step t
// are the sequences still running, a prefix of those of step t-1).
//
// forward_step:  h(t) = phi(pre(t) + W_hh h(t-1)), in place on the layer's state buffer
//                whose rows of step t already hold the hoisted W_ih x(t) + b.
// backward_step: dA(t) = (g(t) + W_hh^T dA(t+1)) * phi'(h(t)), in place on the gradient
//                buffer whose rows of step t hold g(t), the gradient arriving from the
//                readout or the layer above; rows past n_next get no recurrent term.
//
// Each workgroup computes 16 rows x 16 hidden units, one per thread, staging 16-wide
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

var<workgroup> left_tile: array<array<f32, 16>, 16>;
// rows padded to 17: forward_step reads a column (w_tile[lid.x][j]) across a warp, which
// with 16-float rows would hit two banks only
var<workgroup> w_tile: array<array<f32, 17>, 16>;

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

@compute @workgroup_size(16, 16)
fn forward_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * 16u + lid.y;
    let unit = wg.x * 16u + lid.x;
    let h = p.hidden;
    var acc = 0.0;
    if (p.has_other != 0u) {
        for (var k0 = 0u; k0 < h; k0 += 16u) {
            let kk = k0 + lid.x;
            var hv = 0.0;
            if (row < p.rows && kk < h) {
                if (p.has_other == 2u) {
                    hv = hidden_out[p.other_offset + row * h + kk];
                } else {
                    hv = state[p.other_offset + row * h + kk];
                }
            }
            left_tile[lid.y][lid.x] = hv;
            // W_hh[u][k]: tile row = unit, column = k
            let wu = wg.x * 16u + lid.y;
            var wv = 0.0;
            if (wu < h && kk < h) {
                wv = params[p.w_offset + wu * h + kk];
            }
            w_tile[lid.y][lid.x] = wv;
            workgroupBarrier();
            for (var j = 0u; j < 16u; j++) {
                acc = fma(left_tile[lid.y][j], w_tile[lid.x][j], acc);
            }
            workgroupBarrier();
        }
    }
    if (row < p.rows && unit < h) {
        let at = p.cur_offset + row * h + unit;
        state[at] = activate(state[at] + acc);
    }
}

@compute @workgroup_size(16, 16)
fn backward_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * 16u + lid.y;
    let unit = wg.x * 16u + lid.x;
    let h = p.hidden;
    var acc = 0.0;
    if (p.rows_next > 0u) {
        for (var k0 = 0u; k0 < h; k0 += 16u) {
            let kk = k0 + lid.x;
            var dv = 0.0;
            if (row < p.rows_next && kk < h) {
                dv = state[p.other_offset + row * h + kk];
            }
            left_tile[lid.y][lid.x] = dv;
            // W_hh[k][u]: tile row = k, column = unit
            let wk = k0 + lid.y;
            var wv = 0.0;
            if (wk < h && unit < h) {
                wv = params[p.w_offset + wk * h + unit];
            }
            w_tile[lid.y][lid.x] = wv;
            workgroupBarrier();
            for (var j = 0u; j < 16u; j++) {
                acc = fma(left_tile[lid.y][j], w_tile[j][lid.x], acc);
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

// sum over k in [k_begin, k_end) of carried[k] * params[base + k * h], in four independent
// chains so that the loads of one chain overlap the multiply-adds of the others;
// neighbouring threads (neighbouring units) read neighbouring floats
fn carried_dot(base: u32, h: u32, k_begin: u32, k_end: u32) -> f32 {
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var k = k_begin;
    for (; k + 4u <= k_end; k += 4u) {
        let at = base + k * h;
        a0 = fma(carried[k], params[at], a0);
        a1 = fma(carried[k + 1u], params[at + h], a1);
        a2 = fma(carried[k + 2u], params[at + 2u * h], a2);
        a3 = fma(carried[k + 3u], params[at + 3u * h], a3);
    }
    for (; k < k_end; k++) {
        a0 = fma(carried[k], params[base + k * h], a0);
    }
    return (a0 + a1) + (a2 + a3);
}

// The step's whole product for unit u (< h): the sum of its parts.
fn gathered(u: u32, h: u32) -> f32 {
    var total = 0.0;
    for (var i = u; i < 256u; i += h) {
        total += partial[i];
    }
    return total;
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
    let own = min(u, h - 1u); // threads past the last unit shadow its loads, never store
    // each step's row and input term are loaded one step ahead, so that their latency
    // hides behind the previous step's product
    var at = (packing[0] + r) * h + own;
    var pre = state[at];
    for (var t = 0u; t < len; t++) {
        var at_next = at;
        var pre_next = 0.0;
        if (t + 1u < len) {
            at_next = (packing[t + 1u] + r) * h + own;
            pre_next = state[at_next];
        }
        if (t > 0u || from_initial) {
            partial[u] = carried_dot(p.w_offset + share.unit, h, share.k_begin, share.k_end);
        }
        workgroupBarrier();
        if (u < h) {
            let v = activate(pre + gathered(u, h));
            carried[u] = v;
            state[at] = v;
        }
        workgroupBarrier();
        at = at_next;
        pre = pre_next;
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
    let own = min(u, h - 1u);
    // as forward: the next step's row, incoming gradient and slope are loaded a step ahead
    var at = (packing[len - 1u] + r) * h + own;
    var incoming = state[at];
    var slope = derivative(hidden_out[at]);
    for (var step = 0u; step < len; step++) {
        var at_next = at;
        var incoming_next = 0.0;
        var slope_next = 0.0;
        if (step + 1u < len) {
            at_next = (packing[len - 2u - step] + r) * h + own;
            incoming_next = state[at_next];
            slope_next = derivative(hidden_out[at_next]);
        }
        if (step > 0u) {
            // (W_hh^T dA(t+1))[u] = sum_k W_hh[k][u] dA(t+1)[k]
            partial[u] = carried_dot(p.w_offset + share.unit, h, share.k_begin, share.k_end);
        }
        workgroupBarrier();
        if (u < h) {
            let d = (incoming + gathered(u, h)) * slope;
            carried[u] = d;
            state[at] = d;
        }
        workgroupBarrier();
        at = at_next;
        incoming = incoming_next;
        slope = slope_next;
    }
}
