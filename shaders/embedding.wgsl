// Token inputs: the input projection of a token is a column of W_ih (a lookup, never a
// product with a one-hot matrix), and its gradient is the sum of the rows that used it.
//
// token_data holds, from element 0: the packed token id of every row; from
// `ranges_offset`: for each token v, the range [ranges[v], ranges[v+1]) of `order`; from
// `order_offset`: the rows sorted by token. The host builds both from the batch.

struct EmbedParams {
    rows: u32,
    width: u32,         // rows of W_ih: gates x hidden
    vocab: u32,
    w_offset: u32,      // W_ih [width, vocab] in the parameter / gradient buffer
    b_offset: u32,      // b_ih [width] in the parameter buffer (embed only)
    ranges_offset: u32,
    order_offset: u32,
    stride: u32,        // row stride of the projections (embed: dst; embed_grad: src)
    col_offset: u32,    // their first column (the direction's)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(1) var<storage, read> token_data: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;          // embed: params; embed_grad: dgx
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;    // embed: projections; embed_grad: grads

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// dst[row, col_offset + u] = W_ih[u, token(row)] + b_ih[u]
@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.width) {
        return;
    }
    let row = e / p.width;
    let u = e % p.width;
    dst[row * p.stride + p.col_offset + u] = src[p.w_offset + u * p.vocab + token_data[row]] + src[p.b_offset + u];
}

// dst[W_ih + u * vocab + v] = sum of dgx[row, u] over the rows whose token is v
@compute @workgroup_size(256)
fn embed_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.vocab * p.width) {
        return;
    }
    let v = e / p.width;
    let u = e % p.width;
    var acc = 0.0;
    let first = token_data[p.ranges_offset + v];
    let end = token_data[p.ranges_offset + v + 1u];
    for (var j = first; j < end; j++) {
        acc += src[token_data[p.order_offset + j] * p.stride + p.col_offset + u];
    }
    dst[p.w_offset + u * p.vocab + v] = acc;
}
