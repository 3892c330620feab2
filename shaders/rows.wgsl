// Row gathers and scatters by an index list, with row strides and column offsets on both
// sides (so that one direction's columns of a layer's output can be read or written in
// place): the last valid state of each sequence, the last-step head's gradient, the
// previous state of every row (for the W_hh gradient); a transpose (W_hh and b_hh for
// the persistent forward kernel); and the dropout masks applied to a layer's input.

struct RowsParams {
    rows: u32,
    cols: u32,
    src_offset: u32,
    dst_offset: u32,
    src_stride: u32,
    dst_stride: u32,
    index_offset: u32,
    extra_offset: u32,
}

@group(0) @binding(0) var<uniform> p: RowsParams;
@group(0) @binding(1) var<storage, read> index: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// gather_previous: initial states; apply_mask: the mask
@group(0) @binding(4) var<storage, read> extra: array<f32>;

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// dst row r = src row index[r]
@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    dst[p.dst_offset + r * p.dst_stride + c] = src[p.src_offset + index[p.index_offset + r] * p.src_stride + c];
}

// dst row index[r] = src row r
@compute @workgroup_size(256)
fn scatter_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    dst[p.dst_offset + index[p.index_offset + r] * p.dst_stride + c] = src[p.src_offset + r * p.src_stride + c];
}

// Index values of gather_previous: a packed row, or (with this bit) a row of the initial
// state, or NO_ROW for a zero state.
const INITIAL_ROW: u32 = 0x80000000u;
const NO_ROW: u32 = 0xffffffffu;

// dst row r = the state row r started from: src row index[r], or row j of the initial
// state (`extra`, [rows, cols] at extra_offset), or zeros
@compute @workgroup_size(256)
fn gather_previous(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    let v = index[p.index_offset + r];
    var value = 0.0;
    if (v < INITIAL_ROW) {
        value = src[p.src_offset + v * p.src_stride + c];
    } else if (v != NO_ROW) {
        value = extra[p.extra_offset + (v - INITIAL_ROW) * p.cols + c];
    }
    dst[p.dst_offset + r * p.dst_stride + c] = value;
}

// dst = src * mask, element by element over rows x cols (all three dense, `index` is not
// read)
@compute @workgroup_size(256)
fn apply_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.cols) {
        return;
    }
    dst[p.dst_offset + e] = src[p.src_offset + e] * extra[p.extra_offset + e];
}

// dst = [src | v]^T: src is [rows, cols] at src_offset, with the vector v [rows] at
// extra_offset (in the same buffer) as one more column; dst is [cols + 1, rows] at
// dst_offset (`index` is not read). The persistent forward kernel's W_hh^T, with b_hh as
// its last row, in one dispatch.
@compute @workgroup_size(256)
fn transpose_with_column(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    let cols = p.cols + 1u;
    if (e >= p.rows * cols) {
        return;
    }
    let r = e / cols;
    let c = e % cols;
    var v = 0.0;
    if (c < p.cols) {
        v = src[p.src_offset + r * p.cols + c];
    } else {
        v = src[p.extra_offset + r];
    }
    dst[p.dst_offset + c * p.rows + r] = v;
}
