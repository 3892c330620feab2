// What every matrix-product kernel shares (the prelude of matmul.wgsl and
// matmul_coop.wgsl, see src/gpu/shaders.rs): the parameter block and bindings, bounds-checked
// operand loads, the epilogue applied as C is stored, and where a staged element comes from.
// matmul.wgsl says what the parameters mean.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,      // bit 0: A transposed, bit 1: B transposed, bit 2: add bias,
                     // bit 3: A lives in C's buffer
    a_offset: u32,
    b_offset: u32,
    c_offset: u32,
    bias_offset: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    alpha: f32,
    beta: f32,
    k_chunk: u32,      // split K: depth of each workgroup layer's K range (0: all of K)
    splits: u32,       // matmul_sum_splits: number of partial products
    split_stride: u32, // elements between consecutive partial products
    a_rows: u32,       // rows of op(A) that exist (0: all m)
    epilogue: u32,     // 0 none, 1 tanh, 2 relu, 3 times tanh'(h), 4 times relu'(h),
                       // 5 times a mask (3-5 read from the bias binding at C's position)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// The K range [x, y) of workgroup layer z.
fn k_range(z: u32) -> vec2<u32> {
    if (p.k_chunk == 0u) {
        return vec2<u32>(0u, p.k);
    }
    let begin = min(z * p.k_chunk, p.k);
    return vec2<u32>(begin, min(begin + p.k_chunk, p.k));
}

fn load_a(row: u32, kk: u32, k_end: u32) -> f32 {
    if (row >= p.m || kk >= k_end || (p.a_rows != 0u && row >= p.a_rows)) {
        return 0.0;
    }
    var at = p.a_offset + row * p.lda + kk;
    if ((p.flags & 1u) != 0u) {
        at = p.a_offset + kk * p.lda + row;
    }
    if ((p.flags & 8u) != 0u) {
        return c[at];
    }
    return a[at];
}

fn load_b(kk: u32, col: u32, k_end: u32) -> f32 {
    if (kk >= k_end || col >= p.n) {
        return 0.0;
    }
    if ((p.flags & 2u) != 0u) {
        return b[p.b_offset + col * p.ldb + kk];
    }
    return b[p.b_offset + kk * p.ldb + col];
}

// alpha * v + beta * C + bias, then the epilogue, for element (row, col) of C at `at`
fn finish(at: u32, row: u32, col: u32, v: f32) -> f32 {
    var r = p.alpha * v;
    if (p.beta != 0.0) {
        r += p.beta * c[at];
    }
    if ((p.flags & 4u) != 0u) {
        r += bias[p.bias_offset + col];
    }
    switch p.epilogue {
        case 1u: {
            // as recurrent.wgsl's activate: some drivers overflow inside tanh for large |v|
            r = tanh(clamp(r, -15.0, 15.0));
        }
        case 2u: {
            r = max(r, 0.0);
        }
        case 3u: {
            let h = bias[p.bias_offset + row * p.ldc + col];
            r *= 1.0 - h * h;
        }
        case 4u: {
            let h = bias[p.bias_offset + row * p.ldc + col];
            r *= select(0.0, 1.0, h > 0.0);
        }
        case 5u: {
            // a dropout mask, laid out as C
            r *= bias[p.bias_offset + row * p.ldc + col];
        }
        default: {}
    }
    return r;
}

// Stores element (row, col) of C (or of partial product z when splitting K).
fn store_one(z: u32, row: u32, col: u32, v: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    if (p.k_chunk != 0u) {
        c[p.c_offset + z * p.split_stride + row * p.ldc + col] = v;
    } else {
        let at = p.c_offset + row * p.ldc + col;
        c[at] = finish(at, row, col, v);
    }
}

// Stores four columns of one row of C.
fn store(z: u32, row: u32, col0: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        store_one(z, row, col0 + j, v[j]);
    }
}

// Where element `idx` of a staged slice of op(A) (k_depth x tile) comes from, as
// (k, m): along the operand's contiguous dimension, so that neighbouring threads read
// neighbouring floats. The same for op(B) as (k, n).
fn a_slot(idx: u32, k_depth: u32, tile: u32) -> vec2<u32> {
    if ((p.flags & 1u) != 0u) {
        return vec2<u32>(idx / tile, idx % tile);
    }
    return vec2<u32>(idx % k_depth, idx / k_depth);
}

fn b_slot(idx: u32, k_depth: u32, tile: u32) -> vec2<u32> {
    if ((p.flags & 2u) != 0u) {
        return vec2<u32>(idx % k_depth, idx / k_depth);
    }
    return vec2<u32>(idx / tile, idx % tile);
}

// Where operand column v (a group of 4 rows of A or 4 columns of B) of slice row k sits in
// workgroup memory: XOR-swizzled with k (its low bits, `mask`, one less than the number of
// groups or 16), so that staging along K (operands whose K is contiguous) spreads a warp's
// stores over all banks instead of piling them on a few; the compute loop's reads stay
// contiguous (a permutation within aligned groups).
fn swizzle(v: u32, k: u32, mask: u32) -> u32 {
    return v ^ (k & mask);
}
