// The matrix product on cooperative matrices (tensor cores where the driver maps them
// there): f16 operands, f32 accumulation, the same parameters, epilogue and K splits as
// matmul.wgsl (matmul_common.wgsl is prepended).
//
// The host prepends a header that this file needs and cannot write itself, since it
// depends on the adapter and the tiling (src/gpu/shaders.rs): the `enable` directives;
// COOP, the fragment side (16 on NVIDIA, 8 on lavapipe: the f16 x f16 -> f32 sizes the
// driver offers), and the aliases FragA, FragB, FragC (coop_mat{COOP}x{COOP}<f16, A>,
// <f16, B> and <f32, C>); COOP_SUBGROUP, the adapter's fixed subgroup size; and the
// tiling: COOP_TILE (the square tile of C a workgroup computes, 64 or 128) and BLOCK_M x
// BLOCK_N, the block of it each subgroup computes (32x32 of the 64 tile, 64x32 of the 128
// one: four or eight subgroups).
//
// K advances 32 at a time: the workgroup stages a COOP_TILE x 32 slice of op(A) and a
// 32 x COOP_TILE slice of op(B) in workgroup memory, as f16; each subgroup loads its
// operand fragments of the slice once and multiplies them into each of its fragments of C.
//
// Block scaling: f16 holds magnitudes from 6e-8 to 65504 only, and gradients routinely
// fall below that range (weight gradients are sums of terms of 1e-6 and less). Each staged
// slice of each operand is therefore multiplied by a power of two that brings its largest
// magnitude into [2^14, 2^15) before it is rounded to f16, and the slice's product, summed
// in f32, is multiplied back by the inverse powers as it is added to the accumulator. An
// element keeps f16's 11 significant bits unless it is more than 2^14 times smaller than
// the largest of its slice; infinities and NaNs are not scaled and reach C as in f32.

// depth of a staged K slice, and the fragment steps along it
const COOP_K: u32 = 32u;
const K_STEPS: u32 = COOP_K / COOP;
// subgroups along the tile's columns, and in all
const SUBGROUPS_N: u32 = COOP_TILE / BLOCK_N;
const SUBGROUPS: u32 = (COOP_TILE / BLOCK_M) * SUBGROUPS_N;
const COOP_THREADS: u32 = SUBGROUPS * COOP_SUBGROUP;
// fragments along each side of a subgroup's block
const FRAGS_M: u32 = BLOCK_M / COOP;
const FRAGS_N: u32 = BLOCK_N / COOP;
// staged elements of each operand per thread and slice
const PER_THREAD: u32 = COOP_TILE * COOP_K / COOP_THREADS;

// op(A) slice [row][k] and op(B) slice [k][col], as f16
var<workgroup> a_coop: array<f16, COOP_TILE * COOP_K>;
var<workgroup> b_coop: array<f16, COOP_K * COOP_TILE>;
// one fragment of C per subgroup, on its way to the epilogue
var<workgroup> c_coop: array<f32, SUBGROUPS * COOP * COOP>;
// the largest magnitude of the slice being staged, as the bits of a non-negative f32
// (which order as the floats do)
var<workgroup> a_largest: atomic<u32>;
var<workgroup> b_largest: atomic<u32>;

// The power of two that brings a slice whose largest magnitude has bits `bits` into
// [2^14, 2^15), as an exponent: 0 for an all-zero or non-finite slice.
fn scale_exponent(bits: u32) -> i32 {
    if (bits == 0u || bits >= 0x7f800000u) {
        return 0;
    }
    // largest = fraction * 2^e with fraction in [0.5, 1)
    let e = frexp(bitcast<f32>(bits)).exp;
    return clamp(15 - e, -126, 126);
}

@compute @workgroup_size(COOP_THREADS)
fn matmul_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * COOP_TILE;
    let col0 = wg.x * COOP_TILE;
    // this subgroup's block inside the tile
    let block_row = (sid / SUBGROUPS_N) * BLOCK_M;
    let block_col = (sid % SUBGROUPS_N) * BLOCK_N;
    let ks = k_range(wg.z);
    var acc: array<FragC, FRAGS_M * FRAGS_N>;
    for (var f = 0u; f < FRAGS_M * FRAGS_N; f++) {
        acc[f] = FragC();
    }
    var a_val: array<f32, PER_THREAD>;
    var b_val: array<f32, PER_THREAD>;
    // workgroup memory starts undefined (the kernels are compiled without wgpu's zeroing):
    // the maxima start from zero before any thread adds to them
    if (tid == 0u) {
        atomicStore(&a_largest, 0u);
        atomicStore(&b_largest, 0u);
    }
    workgroupBarrier();
    for (var k0 = ks.x; k0 < ks.y; k0 += COOP_K) {
        // load this thread's share of the slice (along each operand's contiguous
        // dimension) and note its largest magnitudes
        var a_big = 0.0;
        var b_big = 0.0;
        for (var e = 0u; e < PER_THREAD; e++) {
            let idx = tid + e * COOP_THREADS;
            let sa = a_slot(idx, COOP_K, COOP_TILE);
            a_val[e] = load_a(row0 + sa.y, k0 + sa.x, ks.y);
            a_big = max(a_big, abs(a_val[e]));
            let sb = b_slot(idx, COOP_K, COOP_TILE);
            b_val[e] = load_b(k0 + sb.x, col0 + sb.y, ks.y);
            b_big = max(b_big, abs(b_val[e]));
        }
        atomicMax(&a_largest, bitcast<u32>(a_big));
        atomicMax(&b_largest, bitcast<u32>(b_big));
        workgroupBarrier();
        let a_exp = scale_exponent(atomicLoad(&a_largest));
        let b_exp = scale_exponent(atomicLoad(&b_largest));
        for (var e = 0u; e < PER_THREAD; e++) {
            let idx = tid + e * COOP_THREADS;
            let sa = a_slot(idx, COOP_K, COOP_TILE);
            a_coop[sa.y * COOP_K + sa.x] = f16(ldexp(a_val[e], a_exp));
            let sb = b_slot(idx, COOP_K, COOP_TILE);
            b_coop[sb.x * COOP_TILE + sb.y] = f16(ldexp(b_val[e], b_exp));
        }
        workgroupBarrier();
        // every thread has read the maxima (first barrier) and none adds to them again
        // before the barrier that ends this slice
        if (tid == 0u) {
            atomicStore(&a_largest, 0u);
            atomicStore(&b_largest, 0u);
        }
        let a_back = ldexp(1.0, -a_exp);
        let b_back = ldexp(1.0, -b_exp);
        // this subgroup's operand fragments of the slice, each loaded once
        var fa: array<FragA, FRAGS_M * K_STEPS>;
        var fb: array<FragB, FRAGS_N * K_STEPS>;
        for (var s = 0u; s < K_STEPS; s++) {
            for (var i = 0u; i < FRAGS_M; i++) {
                fa[i * K_STEPS + s] = coopLoadT<FragA>(&a_coop[(block_row + i * COOP) * COOP_K + s * COOP], COOP_K);
            }
            for (var j = 0u; j < FRAGS_N; j++) {
                fb[j * K_STEPS + s] = coopLoadT<FragB>(&b_coop[s * COOP * COOP_TILE + block_col + j * COOP], COOP_TILE);
            }
        }
        // the slice's product into each fragment of C, scaled back on the way in
        for (var f = 0u; f < FRAGS_M * FRAGS_N; f++) {
            var part = FragC();
            for (var s = 0u; s < K_STEPS; s++) {
                part = coopMultiplyAdd(fa[(f / FRAGS_N) * K_STEPS + s], fb[(f % FRAGS_N) * K_STEPS + s], part);
            }
            // two steps: their product may leave f32's range where each does not
            acc[f] = acc[f] + (part * a_back) * b_back;
        }
        workgroupBarrier();
    }
    // each fragment goes through workgroup memory to the epilogue, one per subgroup at a time
    let mine = sid * COOP * COOP;
    for (var f = 0u; f < FRAGS_M * FRAGS_N; f++) {
        coopStoreT(acc[f], &c_coop[mine], COOP);
        workgroupBarrier();
        let row = row0 + block_row + (f / FRAGS_N) * COOP;
        let col = col0 + block_col + (f % FRAGS_N) * COOP;
        for (var e = lane; e < COOP * COOP; e += COOP_SUBGROUP) {
            store_one(wg.z, row + e / COOP, col + e % COOP, c_coop[mine + e]);
        }
        workgroupBarrier();
    }
}
