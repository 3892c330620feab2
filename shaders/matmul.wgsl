// Tiled matrix product: C = alpha * op(A) * op(B) + beta * C (+ bias broadcast over rows).
//
// op(A) is [M, K] and op(B) is [K, N]; either may be stored transposed. Every operand
// lives at an element offset inside its buffer with its own row stride, so weights are
// read in place from the flat parameter buffer and weight gradients are written in place
// into the flat gradient buffer. Any shape works: loads and stores are bounds-checked.
//
// Each workgroup computes a 64x64 tile of C with 16x16 threads, each thread a 4x4 block
// held in four vec4 registers; K advances in slices of 16 staged through workgroup memory.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,      // bit 0: A transposed, bit 1: B transposed, bit 2: add bias
    a_offset: u32,
    b_offset: u32,
    c_offset: u32,
    bias_offset: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const KSLICE: u32 = 16u;

// [k][m / 4] and [k][n / 4]: each thread reads its 4 rows and 4 columns as one vec4 each
var<workgroup> a_tile: array<array<vec4<f32>, 16>, 16>;
var<workgroup> b_tile: array<array<vec4<f32>, 16>, 16>;

fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if ((p.flags & 1u) != 0u) {
        return a[p.a_offset + kk * p.lda + row];
    }
    return a[p.a_offset + row * p.lda + kk];
}

fn load_b(kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if ((p.flags & 2u) != 0u) {
        return b[p.b_offset + col * p.ldb + kk];
    }
    return b[p.b_offset + kk * p.ldb + col];
}

fn store(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col < p.n) {
            let at = p.c_offset + row * p.ldc + col;
            var r = p.alpha * v[j];
            if (p.beta != 0.0) {
                r += p.beta * c[at];
            }
            if ((p.flags & 4u) != 0u) {
                r += bias[p.bias_offset + col];
            }
            c[at] = r;
        }
    }
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let tid = lid.y * 16u + lid.x;
    // accumulators in registers: row i of this thread's 4x4 block is acc_i
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += KSLICE) {
        // 256 threads stage 16x64 elements of each operand, 4 each, reading along the
        // operand's contiguous dimension so that neighbouring threads read neighbouring floats
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            var kk: u32;
            var mm: u32;
            if ((p.flags & 1u) != 0u) {
                kk = idx / TILE;
                mm = idx % TILE;
            } else {
                kk = idx % KSLICE;
                mm = idx / KSLICE;
            }
            a_tile[kk][mm / 4u][mm % 4u] = load_a(row0 + mm, k0 + kk);
            var kb: u32;
            var nn: u32;
            if ((p.flags & 2u) != 0u) {
                kb = idx % KSLICE;
                nn = idx / KSLICE;
            } else {
                kb = idx / TILE;
                nn = idx % TILE;
            }
            b_tile[kb][nn / 4u][nn % 4u] = load_b(k0 + kb, col0 + nn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSLICE; kk++) {
            let av = a_tile[kk][lid.y];
            let bv = b_tile[kk][lid.x];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    store(row, col, acc0);
    store(row + 1u, col, acc1);
    store(row + 2u, col, acc2);
    store(row + 3u, col, acc3);
}
