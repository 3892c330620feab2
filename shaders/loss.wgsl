// Losses over the packed valid rows, with their gradients with respect to the outputs.
// One thread per row writes the row's loss (summed later by reduce.wgsl) and the row of
// d_out, already divided as the mean requires.

struct LossParams {
    rows: u32,
    cols: u32,
    scale: f32,      // cross-entropy: 1 / rows; squared error: 2 / (rows * cols)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: LossParams;
@group(0) @binding(1) var<storage, read> outputs: array<f32>;
@group(0) @binding(2) var<storage, read_write> d_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read> classes: array<u32>;
@group(0) @binding(5) var<storage, read> values: array<f32>;

fn row_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn cross_entropy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_index(gid, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var m = outputs[base];
    for (var j = 1u; j < p.cols; j++) {
        m = max(m, outputs[base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        sum += exp(outputs[base + j] - m);
    }
    let y = classes[r];
    row_loss[r] = m + log(sum) - outputs[base + y];
    let inv = p.scale / sum;
    for (var j = 0u; j < p.cols; j++) {
        d_out[base + j] = exp(outputs[base + j] - m) * inv;
    }
    d_out[base + y] -= p.scale;
}

@compute @workgroup_size(256)
fn squared_error(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_index(gid, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var total = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let diff = outputs[base + j] - values[base + j];
        total += diff * diff;
        d_out[base + j] = diff * p.scale;
    }
    row_loss[r] = total;
}
