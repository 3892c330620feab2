// Tiled matrix products: C = alpha * op(A) * op(B) + beta * C (+ bias broadcast over rows).
//
// op(A) is [M, K] and op(B) is [K, N]; either may be stored transposed. Every operand
// lives at an element offset inside its buffer with its own row stride, so weights are
// read in place from the flat parameter buffer and weight gradients are written in place
// into the flat gradient buffer. Any shape works: loads and stores are bounds-checked.
//
// Three tilings of the same product (the host picks one from the shape, src/gpu/gemm.rs):
// - matmul_tile: a square tile of C per workgroup, TILE_THREADS x TILE_THREADS threads
//   with a 4x4 block each, K in slices of 16; compiled twice, as the 64x64 tile (16x16
//   threads) and the 32x32 one (8x8). Many small workgroups: for products with few output
//   tiles (the 32x32 one fills a large GPU with a time step's product without splitting K).
// - matmul_tile128: a 128x128 tile, 16x16 threads with an 8x8 block each (64 accumulators,
//   twice the multiply-adds per workgroup-memory read), K in slices of 8 staged through
//   two workgroup buffers: the next slice is fetched into registers while the current one
//   is multiplied, so there is one barrier per slice and global loads overlap arithmetic.
//
// Recurrent steps as products (TimeLoop::TiledSteps): `epilogue` applies the step's
// element-wise work as C is stored (tanh or relu; or times phi'(h) with h read from the
// bias binding at C's position), flag bit 3 reads A from C's own buffer (the previous or
// next step's rows of the state being updated), and rows of op(A) from `a_rows` on read
// as zero (the sequences that ended). The gradient reaching a layer below through
// dropout is multiplied by its mask the same way (epilogue 5).
//
// Split K: with k_chunk > 0, workgroup layer z multiplies only K range
// [z * k_chunk, (z + 1) * k_chunk) and writes its partial product (alpha = 1, beta = 0,
// no bias) at c_offset + z * split_stride; matmul_sum_splits then adds the `splits`
// partial products into C with alpha, beta and bias. Weight gradients (M, N = hidden
// sizes, K = every token of the batch) use it, so that a long K does not leave most of
// the GPU idle.

// (matmul_common.wgsl, prepended, has the parameter block, bindings and helpers.)

// ---- 64x64 and 32x32 tiles ----

// Threads along each side of the workgroup (16 or 8, a power of two); the tile is 4 times
// that on a side.
override TILE_THREADS: u32 = 16u;
const KSLICE: u32 = 16u;
// vec4 slots of a staged slice (an array sized by an override cannot be nested)
override TILE_SLOTS: u32 = KSLICE * TILE_THREADS;

// [k][m / 4] and [k][n / 4], flattened: each thread reads its 4 rows and 4 columns as one
// vec4 each
var<workgroup> a_tile: array<vec4<f32>, TILE_SLOTS>;
var<workgroup> b_tile: array<vec4<f32>, TILE_SLOTS>;

@compute @workgroup_size(TILE_THREADS, TILE_THREADS)
fn matmul_tile(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = 4u * TILE_THREADS;
    let threads = TILE_THREADS * TILE_THREADS;
    let mask = min(TILE_THREADS, 16u) - 1u;
    let row0 = wg.y * tile;
    let col0 = wg.x * tile;
    let tid = lid.y * TILE_THREADS + lid.x;
    let ks = k_range(wg.z);
    // accumulators in registers: row i of this thread's 4x4 block is acc_i
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = ks.x; k0 < ks.y; k0 += KSLICE) {
        // the threads stage 16 x tile elements of each operand, 64 / TILE_THREADS each
        for (var e = 0u; e < 64u / TILE_THREADS; e++) {
            let idx = tid + e * threads;
            let sa = a_slot(idx, KSLICE, tile);
            a_tile[sa.x * TILE_THREADS + swizzle(sa.y / 4u, sa.x, mask)][sa.y % 4u] = load_a(row0 + sa.y, k0 + sa.x, ks.y);
            let sb = b_slot(idx, KSLICE, tile);
            b_tile[sb.x * TILE_THREADS + swizzle(sb.y / 4u, sb.x, mask)][sb.y % 4u] = load_b(k0 + sb.x, col0 + sb.y, ks.y);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSLICE; kk++) {
            let av = a_tile[kk * TILE_THREADS + swizzle(lid.y, kk, mask)];
            let bv = b_tile[kk * TILE_THREADS + swizzle(lid.x, kk, mask)];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    store(wg.z, row, col, acc0);
    store(wg.z, row + 1u, col, acc1);
    store(wg.z, row + 2u, col, acc2);
    store(wg.z, row + 3u, col, acc3);
}

// ---- 128x128 tiles, double-buffered ----

const TILE128: u32 = 128u;
const KSLICE128: u32 = 8u;

// [buffer][k][m / 4] and [buffer][k][n / 4]: 2 x 8 KiB
var<workgroup> a_tile128: array<array<array<vec4<f32>, 32>, 8>, 2>;
var<workgroup> b_tile128: array<array<array<vec4<f32>, 32>, 8>, 2>;

// One staged slice in flight: 4 elements of each operand per thread.
struct Staged {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn fetch128(tid: u32, row0: u32, col0: u32, k0: u32, k_end: u32) -> Staged {
    var s: Staged;
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let sa = a_slot(idx, KSLICE128, TILE128);
        s.a[e] = load_a(row0 + sa.y, k0 + sa.x, k_end);
        let sb = b_slot(idx, KSLICE128, TILE128);
        s.b[e] = load_b(k0 + sb.x, col0 + sb.y, k_end);
    }
    return s;
}

fn stage128(buf: u32, tid: u32, s: Staged) {
    for (var e = 0u; e < 4u; e++) {
        let idx = tid + e * 256u;
        let sa = a_slot(idx, KSLICE128, TILE128);
        a_tile128[buf][sa.x][swizzle(sa.y / 4u, sa.x, 15u)][sa.y % 4u] = s.a[e];
        let sb = b_slot(idx, KSLICE128, TILE128);
        b_tile128[buf][sb.x][swizzle(sb.y / 4u, sb.x, 15u)][sb.y % 4u] = s.b[e];
    }
}

@compute @workgroup_size(16, 16)
fn matmul_tile128(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE128;
    let col0 = wg.x * TILE128;
    let tid = lid.y * 16u + lid.x;
    let ks = k_range(wg.z);
    // this thread's rows: lid.y * 4 + i (block "lo") and 64 + lid.y * 4 + i ("hi"); its
    // columns likewise: so that a warp's workgroup-memory reads are contiguous
    // c{i}{l|h}: row i of the lo (0-3) or hi (4-7) rows, columns lo (l) or hi (h)
    var c0l = vec4<f32>(0.0); var c0h = vec4<f32>(0.0);
    var c1l = vec4<f32>(0.0); var c1h = vec4<f32>(0.0);
    var c2l = vec4<f32>(0.0); var c2h = vec4<f32>(0.0);
    var c3l = vec4<f32>(0.0); var c3h = vec4<f32>(0.0);
    var c4l = vec4<f32>(0.0); var c4h = vec4<f32>(0.0);
    var c5l = vec4<f32>(0.0); var c5h = vec4<f32>(0.0);
    var c6l = vec4<f32>(0.0); var c6h = vec4<f32>(0.0);
    var c7l = vec4<f32>(0.0); var c7h = vec4<f32>(0.0);
    stage128(0u, tid, fetch128(tid, row0, col0, ks.x, ks.y));
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = ks.x; k0 < ks.y; k0 += KSLICE128) {
        let more = k0 + KSLICE128 < ks.y;
        var next: Staged;
        if (more) {
            next = fetch128(tid, row0, col0, k0 + KSLICE128, ks.y);
        }
        for (var kk = 0u; kk < KSLICE128; kk++) {
            let alo = a_tile128[buf][kk][swizzle(lid.y, kk, 15u)];
            let ahi = a_tile128[buf][kk][swizzle(lid.y + 16u, kk, 15u)];
            let bl = b_tile128[buf][kk][swizzle(lid.x, kk, 15u)];
            let bh = b_tile128[buf][kk][swizzle(lid.x + 16u, kk, 15u)];
            c0l = fma(vec4<f32>(alo.x), bl, c0l); c0h = fma(vec4<f32>(alo.x), bh, c0h);
            c1l = fma(vec4<f32>(alo.y), bl, c1l); c1h = fma(vec4<f32>(alo.y), bh, c1h);
            c2l = fma(vec4<f32>(alo.z), bl, c2l); c2h = fma(vec4<f32>(alo.z), bh, c2h);
            c3l = fma(vec4<f32>(alo.w), bl, c3l); c3h = fma(vec4<f32>(alo.w), bh, c3h);
            c4l = fma(vec4<f32>(ahi.x), bl, c4l); c4h = fma(vec4<f32>(ahi.x), bh, c4h);
            c5l = fma(vec4<f32>(ahi.y), bl, c5l); c5h = fma(vec4<f32>(ahi.y), bh, c5h);
            c6l = fma(vec4<f32>(ahi.z), bl, c6l); c6h = fma(vec4<f32>(ahi.z), bh, c6h);
            c7l = fma(vec4<f32>(ahi.w), bl, c7l); c7h = fma(vec4<f32>(ahi.w), bh, c7h);
        }
        // the other buffer was last read before the previous barrier: safe to refill
        if (more) {
            stage128(1u - buf, tid, next);
        }
        workgroupBarrier();
        buf = 1u - buf;
    }
    let lo = row0 + lid.y * 4u;
    let hi = lo + 64u;
    let cl = col0 + lid.x * 4u;
    let ch = cl + 64u;
    store(wg.z, lo, cl, c0l); store(wg.z, lo, ch, c0h);
    store(wg.z, lo + 1u, cl, c1l); store(wg.z, lo + 1u, ch, c1h);
    store(wg.z, lo + 2u, cl, c2l); store(wg.z, lo + 2u, ch, c2h);
    store(wg.z, lo + 3u, cl, c3l); store(wg.z, lo + 3u, ch, c3h);
    store(wg.z, hi, cl, c4l); store(wg.z, hi, ch, c4h);
    store(wg.z, hi + 1u, cl, c5l); store(wg.z, hi + 1u, ch, c5h);
    store(wg.z, hi + 2u, cl, c6l); store(wg.z, hi + 2u, ch, c6h);
    store(wg.z, hi + 3u, cl, c7l); store(wg.z, hi + 3u, ch, c7h);
}

// ---- split K: the partial products summed into C ----

// One thread per element of C (a row-major [m, n] index, folded into two dimensions past
// the per-dimension dispatch limit); `a` holds the partial products at 0, split_stride, ...
// with row stride n.
@compute @workgroup_size(256)
fn matmul_sum_splits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.m * p.n) {
        return;
    }
    let row = i / p.n;
    let col = i % p.n;
    var total = 0.0;
    for (var z = 0u; z < p.splits; z++) {
        total += a[z * p.split_stride + i];
    }
    let at = p.c_offset + row * p.ldc + col;
    c[at] = finish(at, row, col, total);
}
