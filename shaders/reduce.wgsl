// Reductions: sums in two passes, the gradients' Euclidean norm in two passes (scaled, so
// that finite gradients never overflow it), and column sums for bias gradients.

struct ReduceParams {
    len: u32,         // partial_*: elements; column_sums: rows; finish_*: partials
    offset: u32,      // element offset of the input
    stride: u32,      // column_partials: row stride of the input
    cols: u32,        // column_sums: columns
    out_offset: u32,  // column_sums / finish_*: where the result goes
    scale: f32,       // finish_sum: multiplies the total
    chunk_rows: u32,  // column_partials: rows per chunk; column_finish: number of chunks
    flag_offset: u32, // finish_norm: where 1 (every element finite) or 0 goes
}

@group(0) @binding(0) var<uniform> p: ReduceParams;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

var<workgroup> shared_sum: array<f32, 256>;

fn workgroup_total(local: u32, v: f32) -> f32 {
    shared_sum[local] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (local < stride) {
            shared_sum[local] += shared_sum[local + stride];
        }
        workgroupBarrier();
    }
    return shared_sum[0];
}

// output[workgroup] = sum over a grid-strided share of input[offset .. offset + len]
@compute @workgroup_size(256)
fn partial_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) local: u32,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    var acc = 0.0;
    for (var i = wg.x * 256u + local; i < p.len; i += nwg.x * 256u) {
        acc += input[p.offset + i];
    }
    let total = workgroup_total(local, acc);
    if (local == 0u) {
        output[wg.x] = total;
    }
}

// output[out_offset] = scale * sum of input[0 .. len]; one workgroup
@compute @workgroup_size(256)
fn finish_sum(@builtin(local_invocation_index) local: u32) {
    var acc = 0.0;
    for (var i = local; i < p.len; i += 256u) {
        acc += input[i];
    }
    let total = workgroup_total(local, acc);
    if (local == 0u) {
        output[p.out_offset] = total * p.scale;
    }
}

// The norm as BLAS's nrm2 keeps it: (scale, ssq) with norm = scale * sqrt(ssq) and scale
// the largest magnitude seen, so no square overflows or underflows. A NaN element makes
// ssq NaN, an infinite one makes scale infinite: either way the pair is not finite, while
// for finite elements only the norm itself can exceed the f32 range.
fn norm_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let b_bigger = b.x > a.x;
    let big = select(a, b, b_bigger);
    let small = select(b, a, b_bigger);
    if (big.x == 0.0) {
        return big;
    }
    let r = small.x / big.x;
    return vec2<f32>(big.x, big.y + small.y * r * r);
}

var<workgroup> shared_norm: array<vec2<f32>, 256>;

fn workgroup_norm(local: u32, v: vec2<f32>) -> vec2<f32> {
    shared_norm[local] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (local < stride) {
            shared_norm[local] = norm_merge(shared_norm[local], shared_norm[local + stride]);
        }
        workgroupBarrier();
    }
    return shared_norm[0];
}

// output[2 wg], output[2 wg + 1] = (scale, ssq) of a grid-strided share of the input
@compute @workgroup_size(256)
fn partial_norms(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) local: u32,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = wg.x * 256u + local; i < p.len; i += nwg.x * 256u) {
        acc = norm_merge(acc, vec2<f32>(abs(input[p.offset + i]), 1.0));
    }
    let total = workgroup_norm(local, acc);
    if (local == 0u) {
        output[2u * wg.x] = total.x;
        output[2u * wg.x + 1u] = total.y;
    }
}

// output[out_offset] = the norm (infinite past the f32 range), output[flag_offset] = 1 if
// every element was finite, else 0; one workgroup over `len` partial pairs
@compute @workgroup_size(256)
fn finish_norm(@builtin(local_invocation_index) local: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = local; i < p.len; i += 256u) {
        acc = norm_merge(acc, vec2<f32>(input[2u * i], input[2u * i + 1u]));
    }
    let total = workgroup_norm(local, acc);
    if (local == 0u) {
        let finite = abs(total.x) <= 3.4028235e38 && abs(total.y) <= 3.4028235e38;
        output[p.out_offset] = total.x * sqrt(total.y);
        output[p.flag_offset] = select(0.0, 1.0, finite);
    }
}

// Column sums in two passes, so that long columns are summed by many workgroups at once.
// Pass 1: workgroup (x, y) sums 64 columns over chunk y of the rows, four row lanes per
// column, into output[y * cols + c]; the input is `cols` columns of rows `stride` apart
// from `offset` (one direction's block of a wider matrix).
var<workgroup> lane_sum: array<array<f32, 64>, 4>;

@compute @workgroup_size(256)
fn column_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    let c = wg.x * 64u + local % 64u;
    let lane = local / 64u;
    let first = wg.y * p.chunk_rows;
    let end = min(p.len, first + p.chunk_rows);
    var acc = 0.0;
    if (c < p.cols) {
        for (var r = first + lane; r < end; r += 4u) {
            acc += input[p.offset + r * p.stride + c];
        }
    }
    lane_sum[lane][local % 64u] = acc;
    workgroupBarrier();
    if (lane == 0u && c < p.cols) {
        let l = local % 64u;
        output[wg.y * p.cols + c] = lane_sum[0][l] + lane_sum[1][l] + lane_sum[2][l] + lane_sum[3][l];
    }
}

// Pass 2: output[out_offset + c] = sum of the chunk_rows (here: chunk count) partials of c.
@compute @workgroup_size(256)
fn column_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var y = 0u; y < p.chunk_rows; y++) {
        acc += input[y * p.cols + c];
    }
    output[p.out_offset + c] = acc;
}
