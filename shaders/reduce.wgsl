// Reductions: sums (of values or squares) in two passes, and column sums for bias
// gradients.

struct ReduceParams {
    len: u32,        // partial_sums: elements; column_sums: rows; finish_sum: partials
    offset: u32,     // element offset of the input
    square: u32,     // partial_sums: 1 to sum squares
    cols: u32,       // column_sums: columns
    out_offset: u32, // column_sums / finish_sum: where the result goes
    scale: f32,      // finish_sum: multiplies the total
    chunk_rows: u32, // column_partials: rows per chunk; column_finish: number of chunks
    _pad1: u32,
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
        let v = input[p.offset + i];
        acc += select(v, v * v, p.square != 0u);
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

// Column sums in two passes, so that long columns are summed by many workgroups at once.
// Pass 1: workgroup (x, y) sums 64 columns over chunk y of the rows, four row lanes per
// column, into output[y * cols + c].
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
            acc += input[p.offset + r * p.cols + c];
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
