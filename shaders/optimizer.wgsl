// Clipping and parameter updates, with PyTorch's semantics, entirely on the GPU.
//
// scalars: [0] loss, [1] sum of squared gradients, [2] clip scale, [3] 1 if the step may
// be applied (loss and gradients finite), else 0 and every update leaves params as is.

struct OptimParams {
    len: u32,
    has_clip: u32,
    max_norm: f32,
    lr: f32,
    momentum: f32,     // momentum, or Adam's beta1
    beta2: f32,
    eps: f32,
    step_size: f32,    // Adam: lr / (1 - beta1^t)
    bias_correction2_sqrt: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: OptimParams;
@group(0) @binding(1) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

fn is_finite(x: f32) -> bool {
    // NaN fails the comparison; infinities exceed the largest f32
    return abs(x) <= 3.4028235e38;
}

@compute @workgroup_size(1)
fn prepare() {
    let loss = scalars[0];
    let sum_sq = scalars[1];
    let norm = sqrt(sum_sq);
    var scale = 1.0;
    if (p.has_clip != 0u) {
        scale = min(1.0, p.max_norm / (norm + 1e-6));
    }
    scalars[2] = scale;
    scalars[3] = select(0.0, 1.0, is_finite(loss) && is_finite(sum_sq));
}

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.len || scalars[3] == 0.0) {
        return;
    }
    params[i] -= p.lr * (grads[i] * scalars[2]);
}

@compute @workgroup_size(256)
fn momentum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.len || scalars[3] == 0.0) {
        return;
    }
    let buf = p.momentum * m[i] + grads[i] * scalars[2];
    m[i] = buf;
    params[i] -= p.lr * buf;
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.len || scalars[3] == 0.0) {
        return;
    }
    let g = grads[i] * scalars[2];
    let mi = p.momentum * m[i] + (1.0 - p.momentum) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] -= p.step_size * mi / (sqrt(vi) / p.bias_correction2_sqrt + p.eps);
}
