// Token inputs: the input projection of a token is a column of W_ih (a lookup, never a
// product with a one-hot matrix), and its gradient is the sum of the rows that used it.
//
// token_data holds, from element 0: the packed token id of every row; from
// `ranges_offset`: for each token v, the range [ranges[v], ranges[v+1]) of `order`; from
// `order_offset`: the rows sorted by token. The host builds both from the batch.

struct EmbedParams {
    rows: u32,
    hidden: u32,
    vocab: u32,
    w_offset: u32,      // W_ih [hidden, vocab] in the parameter / gradient buffer
    b_offset: u32,      // b [hidden] in the parameter buffer (embed only)
    ranges_offset: u32,
    order_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(1) var<storage, read> token_data: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;          // embed: params; embed_grad: dA
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;    // embed: states; embed_grad: grads

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// dst[row, u] = W_ih[u, token(row)] + b[u]
@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.hidden) {
        return;
    }
    let row = e / p.hidden;
    let u = e % p.hidden;
    dst[e] = src[p.w_offset + u * p.vocab + token_data[row]] + src[p.b_offset + u];
}

// dst[W_ih + u * vocab + v] = sum of dA[row, u] over the rows whose token is v
@compute @workgroup_size(256)
fn embed_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.vocab * p.hidden) {
        return;
    }
    let v = e / p.hidden;
    let u = e % p.hidden;
    var acc = 0.0;
    let first = token_data[p.ranges_offset + v];
    let end = token_data[p.ranges_offset + v + 1u];
    for (var j = first; j < end; j++) {
        acc += src[token_data[p.order_offset + j] * p.hidden + u];
    }
    dst[p.w_offset + u * p.vocab + v] = acc;
}
