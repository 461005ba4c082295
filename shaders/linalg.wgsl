// Dense linear algebra on the GPU: the symmetric matvec, dot product, axpy and xpby.
//
// Vectors and matrix rows are padded with zeros to whole vec4s (and matrices to a multiple of 4
// rows), so every load here is a full vec4 and no row loop needs a tail.

#import reduce

struct Params {
    // vec4s per vector (and rows / 4 of the matrix)
    n4: u32,
    // vec4s per matrix row
    ld4: u32,
    // matvec: damping λ; axpy: α; xpby: β
    alpha: f32,
    // dot_final: partial sums to add; add_diagonal: the matrix's order n
    count: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
// dot's second operand: read-only, so x·x binds one buffer twice without a usage conflict
@group(0) @binding(5) var<storage, read> x2: array<vec4<f32>>;
// add_diagonal's matrix as scalars: one element per invocation, no store into a vector lane
@group(0) @binding(6) var<storage, read_write> matrix: array<f32>;

// y = (A + λI) x for A symmetric n×n. One workgroup owns four consecutive rows, so its four row
// sums are one vec4 of y; the workgroup's invocations stride along the rows with vec4 loads.
// It also leaves the block's xᵀy in partial[blk] and xᵀx in partial[n4 + blk]: conjugate
// gradient needs both reduced right after its matvec, and they cost one write per workgroup.
@compute @workgroup_size(WG)
fn matvec(ids: Ids) {
    let blk = ids.wg.x + ids.wg.y * ids.nwg.x;
    if blk >= params.n4 {
        return;
    }
    let row0 = blk * 4u * params.ld4;
    var acc = vec4<f32>(0.0);
    for (var c = ids.lid; c < params.ld4; c += WG) {
        let xc = x[c];
        acc += vec4<f32>(
            dot(a[row0 + c], xc),
            dot(a[row0 + params.ld4 + c], xc),
            dot(a[row0 + 2u * params.ld4 + c], xc),
            dot(a[row0 + 3u * params.ld4 + c], xc),
        );
    }
    let rows = workgroup_sum4(acc, ids);
    if ids.lid == 0u {
        let xb = x[blk];
        let yb = rows + params.alpha * xb;
        y[blk] = yb;
        partial[blk] = dot(xb, yb);
        partial[params.n4 + blk] = dot(xb, xb);
    }
}

// First pass of xᵀy: one partial sum per workgroup of WG vec4s.
@compute @workgroup_size(WG)
fn dot_partial(ids: Ids) {
    let i = ids.wg.x * WG + ids.lid;
    var v = 0.0;
    if i < params.n4 {
        v = dot(x[i], x2[i]);
    }
    let s = workgroup_sum(v, ids);
    if ids.lid == 0u {
        partial[ids.wg.x] = s;
    }
}

// First pass of Σ xᵢ wᵢ yᵢ, the weights w bound as `a`.
@compute @workgroup_size(WG)
fn weighted_dot_partial(ids: Ids) {
    let i = ids.wg.x * WG + ids.lid;
    var v = 0.0;
    if i < params.n4 {
        v = dot(x[i] * a[i], x2[i]);
    }
    let s = workgroup_sum(v, ids);
    if ids.lid == 0u {
        partial[ids.wg.x] = s;
    }
}

// Second pass: one workgroup adds the partial sums; the result goes after them.
@compute @workgroup_size(WG)
fn dot_final(ids: Ids) {
    var v = 0.0;
    for (var i = ids.lid; i < params.count; i += WG) {
        v += partial[i];
    }
    let s = workgroup_sum(v, ids);
    if ids.lid == 0u {
        partial[params.count] = s;
    }
}

// y ← y + α x
@compute @workgroup_size(WG)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < params.n4 {
        y[i] = fma(vec4<f32>(params.alpha), x[i], y[i]);
    }
}

// y ← x + β y
@compute @workgroup_size(WG)
fn xpby(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < params.n4 {
        y[i] = fma(vec4<f32>(params.alpha), y[i], x[i]);
    }
}

// A[i, i] += x[i] for the n×n matrix A (row stride 4·ld4), bound as `matrix`.
@compute @workgroup_size(WG)
fn add_diagonal(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < params.count {
        matrix[i * 4u * params.ld4 + i] += x[i / 4u][i % 4u];
    }
}
