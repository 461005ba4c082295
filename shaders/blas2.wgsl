// Matrix-vector (BLAS-2) kernels over general matrices such as the score rows G: products with G
// and its transpose, elementwise scaling and division, column sums of squares, column scaling,
// and copies of column blocks and vector ranges. Plain f32 arrays; matrices carry their row
// stride `ld`.

#import reduce

struct Params {
    rows: u32,
    cols: u32,
    // row stride of `mat`
    ld: u32,
    // row stride of `out_mat`
    ld_out: u32,
    // first source column or element, first target element
    src0: u32,
    dst0: u32,
    scale: f32,
    // 1: add to y instead of overwriting it
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> mat: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_mat: array<f32>;

// y[r] = Σ_c mat[r, c] x[c]: one workgroup per row, striding along it.
@compute @workgroup_size(WG)
fn gemv(ids: Ids) {
    let r = ids.wg.x + ids.wg.y * ids.nwg.x;
    if r >= params.rows {
        return;
    }
    var acc = 0.0;
    for (var c = ids.lid; c < params.cols; c += WG) {
        acc += mat[r * params.ld + c] * x[c];
    }
    let sum = workgroup_sum(acc, ids);
    if ids.lid == 0u {
        y[r] = sum;
    }
}

// y[c] = (accumulate ? y[c] : 0) + scale · Σ_r mat[r, c] x[r]: one invocation per column, so
// neighbouring invocations read neighbouring addresses of every row.
@compute @workgroup_size(WG)
fn gemv_t(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if c >= params.cols {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < params.rows; r++) {
        acc += mat[r * params.ld + c] * x[r];
    }
    var v = params.scale * acc;
    if params.accumulate != 0u {
        v += y[c];
    }
    y[c] = v;
}

// y[c] = (accumulate ? y[c] : 0) + scale · Σ_r mat[r, c]²
@compute @workgroup_size(WG)
fn column_sq_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if c >= params.cols {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < params.rows; r++) {
        let v = mat[r * params.ld + c];
        acc += v * v;
    }
    var v = params.scale * acc;
    if params.accumulate != 0u {
        v += y[c];
    }
    y[c] = v;
}

// y[i] = scale · y[i] + w[i] · x[i] for i < cols
@compute @workgroup_size(WG)
fn scale_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i < params.cols {
        y[i] = params.scale * y[i] + w[i] * x[i];
    }
}

// y[i] = x[i] / w[i] for i < cols
@compute @workgroup_size(WG)
fn divide(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i < params.cols {
        y[i] = x[i] / w[i];
    }
}

// mat[r, c] *= w[c]: x runs over columns, y over rows
@compute @workgroup_size(WG)
fn scale_columns(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let r = gid.y;
    if c < params.cols && r < params.rows {
        mat[r * params.ld + c] *= w[c];
    }
}

// out_mat[r, c] = mat[r, src0 + c] for c < cols: a block of columns, copied contiguous
@compute @workgroup_size(WG)
fn copy_columns(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let r = gid.y;
    if c < params.cols && r < params.rows {
        out_mat[r * params.ld_out + c] = mat[r * params.ld + params.src0 + c];
    }
}

// y[dst0 + i] = x[src0 + i] for i < cols
@compute @workgroup_size(WG)
fn copy_range(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i < params.cols {
        y[params.dst0 + i] = x[params.src0 + i];
    }
}
