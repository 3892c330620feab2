// The cell's element-wise step on its own, for TimeLoop::TiledSteps with a gated cell
// (cell_common.wgsl is prepended): the step's recurrent product comes from the tiled
// matrix-product kernels, and these kernels do the rest, one thread per row and unit,
// both directions in one dispatch (workgroup z is the direction). An Elman cell needs
// none of this: its tiled steps apply the nonlinearity (or its slope) in the product's
// epilogue (matmul.wgsl).

// Forward: the product h(t-1) W_hh^T + b_hh of the step's rows is in `aux` at dir.aux,
// [rows, G*H].
@compute @workgroup_size(16, 16)
fn cell_forward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let d = wg.z;
    let s = p.dir[d];
    let j = wg.y * 16u + lid.y;
    let k = wg.x * 16u + lid.x;
    let h = p.hidden;
    if (j >= s.rows || k >= h) {
        return;
    }
    var hh = vec4<f32>(0.0);
    for (var g = 0u; g < GATES; g++) {
        hh[g] = aux[s.aux + j * GATES * h + g * h + k];
    }
    finish_forward(d, j, k, hh);
}

// Backward: `grad` already holds, for the step's rows, the gradient from outside plus
// dgh(t+1) W_hh (added by the product).
@compute @workgroup_size(16, 16)
fn cell_backward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let d = wg.z;
    let s = p.dir[d];
    let j = wg.y * 16u + lid.y;
    let k = wg.x * 16u + lid.x;
    if (j >= s.rows || k >= p.hidden) {
        return;
    }
    finish_backward(d, j, k, 0.0);
}
