// Clipping and parameter updates, with PyTorch's semantics, entirely on the GPU.
//
// scalars: [0] loss, [1] the gradients' norm (reduce.wgsl's finish_norm; infinite only
// past the f32 range), [2] clip scale, [3] 1 if the loss and gradients are finite, else 0;
// [4] set to 1 by a checking pass when some new parameter would not be finite, [5] the
// same for a new moment; [6] 1 if every gradient is finite (finish_norm). An update
// changes nothing unless [3] is 1 and [4], [5] are 0 (see `may_apply`).
//
// A step is three dispatches: `prepare`, then `check_<rule>` computes every new value
// without writing it and flags any that is not finite (many threads may store the same
// 1.0; the next dispatch sees it), then `<rule>` commits, through the same functions, so
// that what was checked is exactly what is written.

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
    decay: f32,        // Adam: 1 - lr * weight_decay (AdamW's decoupled decay)
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
    let norm = scalars[1];
    var scale = 1.0;
    if (p.has_clip != 0u) {
        // as the CPU path: a norm past the f32 range scales the gradients to zero
        scale = min(1.0, p.max_norm / (norm + 1e-6));
    }
    scalars[2] = scale;
    scalars[3] = select(0.0, 1.0, is_finite(loss) && scalars[6] != 0.0);
    scalars[4] = 0.0;
    scalars[5] = 0.0;
}

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Whether the checking pass should look at element i: in range, and loss and gradients
// finite (otherwise nothing is applied anyway).
fn should_check(i: u32) -> bool {
    return i < p.len && scalars[3] != 0.0;
}

// Whether the update of element i may be written (after the checking pass).
fn may_apply(i: u32) -> bool {
    return i < p.len && scalars[3] != 0.0 && scalars[4] == 0.0 && scalars[5] == 0.0;
}

fn flag(param: f32, moments_finite: bool) {
    if (!is_finite(param)) {
        scalars[4] = 1.0;
    }
    if (!moments_finite) {
        scalars[5] = 1.0;
    }
}

// New parameter.
fn sgd_update(i: u32) -> f32 {
    return params[i] - p.lr * (grads[i] * scalars[2]);
}

// New parameter and momentum buffer.
fn momentum_update(i: u32) -> vec2<f32> {
    let buf = p.momentum * m[i] + grads[i] * scalars[2];
    return vec2<f32>(params[i] - p.lr * buf, buf);
}

// New parameter, first and second moment.
fn adam_update(i: u32) -> vec3<f32> {
    let g = grads[i] * scalars[2];
    let mi = p.momentum * m[i] + (1.0 - p.momentum) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    return vec3<f32>(params[i] * p.decay - p.step_size * mi / (sqrt(vi) / p.bias_correction2_sqrt + p.eps), mi, vi);
}

@compute @workgroup_size(256)
fn check_sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!should_check(i)) {
        return;
    }
    flag(sgd_update(i), true);
}

@compute @workgroup_size(256)
fn check_momentum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!should_check(i)) {
        return;
    }
    let u = momentum_update(i);
    flag(u.x, is_finite(u.y));
}

@compute @workgroup_size(256)
fn check_adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!should_check(i)) {
        return;
    }
    let u = adam_update(i);
    flag(u.x, is_finite(u.y) && is_finite(u.z));
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!may_apply(i)) {
        return;
    }
    params[i] = sgd_update(i);
}

@compute @workgroup_size(256)
fn momentum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!may_apply(i)) {
        return;
    }
    let u = momentum_update(i);
    m[i] = u.y;
    params[i] = u.x;
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (!may_apply(i)) {
        return;
    }
    let u = adam_update(i);
    m[i] = u.y;
    v[i] = u.z;
    params[i] = u.x;
}
