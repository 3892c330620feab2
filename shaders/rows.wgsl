// Row gathers and scatters by an index list: the last valid state of each sequence, the
// previous-step states for the W_hh gradient, and the last-step head's gradient; and a
// transpose (W_hh for the persistent forward kernel).

struct RowsParams {
    rows: u32,
    cols: u32,
    src_offset: u32,
    dst_offset: u32,
}

@group(0) @binding(0) var<uniform> p: RowsParams;
@group(0) @binding(1) var<storage, read> index: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

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
    dst[p.dst_offset + r * p.cols + c] = src[p.src_offset + index[r] * p.cols + c];
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
    dst[p.dst_offset + index[r] * p.cols + c] = src[p.src_offset + r * p.cols + c];
}

// dst = src^T: src is [rows, cols] at src_offset, dst [cols, rows] at dst_offset (`index`
// is not read)
@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = element(gid, nwg);
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    dst[p.dst_offset + c * p.rows + r] = src[p.src_offset + r * p.cols + c];
}
