// C = α · A·B + β · C on strided views, the general matrix product behind the MLP's layers:
//   A(m, k) = a[a_off + m·a_rs + k·a_cs]    (m < M, k < K)
//   B(k, n) = b[b_off + k·b_rs + n·b_cs]    (k < K, n < N)
//   C(m, n) = c[c_off + m·c_rs + n]
// Strides express transposes (and a stride of 0 a broadcast, e.g. a column of ones). With β = 0,
// C is not read. Split-k: with `c_split` ≠ 0, workgroup z reduces only k in
// [z·k_per_group, (z+1)·k_per_group) and writes α times its partial sum to slice z of a scratch
// buffer (bound as c, slices c_split apart); `matmul_reduce` then adds the slices into C. Few
// output tiles and a long k (a Gram matrix GGᵀ of a few rows) thus still fill the device.
// A 16×16 workgroup computes a 64×64 tile of C, 4×4 per invocation, staging
// KSTEP-deep slabs of A and B through workgroup memory, loaded along whichever axis is
// contiguous in memory so neighbouring invocations read neighbouring addresses.

const TILE: u32 = MATMUL_TILE;
const KSTEP: u32 = MATMUL_KSTEP;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    alpha: f32,
    beta: f32,
    k_per_group: u32,
    c_split: u32,
    // matmul_reduce: the number of slices
    splits: u32,
    // 1: C is symmetric (XᵀX-like, and C too when β ≠ 0; no split-k): only tiles touching the
    // upper triangle run, and each element on or above the diagonal is written to both places
    upper: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// matmul_reduce: the slices to add
@group(0) @binding(4) var<storage, read> partials: array<f32>;

// stage_a[kk][mm] = A(m0 + mm, k0 + kk); stage_b[kk][nn] = B(k0 + kk, n0 + nn). Scalars: the loads
// write single elements, and a store into a vector lane picked at run time is not portable.
var<workgroup> stage_a: array<array<f32, TILE>, KSTEP>;
var<workgroup> stage_b: array<array<f32, TILE>, KSTEP>;

// True for a workgroup of a symmetric product whose tile (first row `top`, last column
// `right`) lies wholly below the diagonal: the tiles above it write its elements.
fn below_diagonal(top: u32, right: u32) -> bool {
    return params.upper != 0u && top > right;
}

fn load_a(m: u32, k: u32, k_end: u32) -> f32 {
    if m < params.m && k < k_end {
        return a[params.a_off + m * params.a_rs + k * params.a_cs];
    }
    return 0.0;
}

fn load_b(k: u32, n: u32, k_end: u32) -> f32 {
    if k < k_end && n < params.n {
        return b[params.b_off + k * params.b_rs + n * params.b_cs];
    }
    return 0.0;
}

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m0 = wg.y * TILE;
    let n0 = wg.x * TILE;
    if below_diagonal(m0, n0 + TILE - 1u) {
        return;
    }
    let k_begin = wg.z * params.k_per_group;
    let k_end = min(params.k, k_begin + params.k_per_group);
    let tx = lid3.x;
    let ty = lid3.y;
    // which axis the 1024-element slab loads walk fastest: the one contiguous in memory
    let a_k_fast = params.a_cs == 1u;
    let b_n_fast = params.b_rs != 1u;
    // one row of the 4×4 block per variable, so that every register index is static (a register
    // array indexed at run time may be spilled to memory)
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = k_begin; k0 < k_end; k0 += KSTEP) {
        for (var i = 0u; i < 4u; i++) {
            let t = lid + 256u * i;
            var kk: u32;
            var mm: u32;
            if a_k_fast {
                kk = t % KSTEP;
                mm = t / KSTEP;
            } else {
                kk = t / TILE;
                mm = t % TILE;
            }
            stage_a[kk][mm] = load_a(m0 + mm, k0 + kk, k_end);
            var nn: u32;
            if b_n_fast {
                kk = t / TILE;
                nn = t % TILE;
            } else {
                kk = t % KSTEP;
                nn = t / KSTEP;
            }
            stage_b[kk][nn] = load_b(k0 + kk, n0 + nn, k_end);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSTEP; kk++) {
            let bv = vec4<f32>(stage_b[kk][4u * tx], stage_b[kk][4u * tx + 1u], stage_b[kk][4u * tx + 2u], stage_b[kk][4u * tx + 3u]);
            acc0 = fma(vec4<f32>(stage_a[kk][4u * ty]), bv, acc0);
            acc1 = fma(vec4<f32>(stage_a[kk][4u * ty + 1u]), bv, acc1);
            acc2 = fma(vec4<f32>(stage_a[kk][4u * ty + 2u]), bv, acc2);
            acc3 = fma(vec4<f32>(stage_a[kk][4u * ty + 3u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let n = n0 + 4u * tx;
    let m = m0 + 4u * ty;
    store_row(m, n, 1u, wg.z, acc0);
    store_row(m + 1u, n, 1u, wg.z, acc1);
    store_row(m + 2u, n, 1u, wg.z, acc2);
    store_row(m + 3u, n, 1u, wg.z, acc3);
}

// C(m, n + step·j) = α·v[j] (+ β·C) for j < 4, within C's bounds; in split-k, into slice z of
// the scratch.
fn store_row(m: u32, n: u32, step: u32, z: u32, v: vec4<f32>) {
    if m >= params.m {
        return;
    }
    store(m, n, z, v.x);
    store(m, n + step, z, v.y);
    store(m, n + 2u * step, z, v.z);
    store(m, n + 3u * step, z, v.w);
}

fn store(m: u32, n: u32, z: u32, value: f32) {
    if n >= params.n {
        return;
    }
    if params.upper != 0u {
        if m <= n {
            let upper = params.c_off + m * params.c_rs + n;
            var v = params.alpha * value;
            if params.beta != 0.0 {
                v += params.beta * c[upper];
            }
            c[upper] = v;
            c[params.c_off + n * params.c_rs + m] = v;
        }
        return;
    }
    let idx = params.c_off + z * params.c_split + m * params.c_rs + n;
    var v = params.alpha * value;
    if params.c_split == 0u && params.beta != 0.0 {
        v += params.beta * c[idx];
    }
    c[idx] = v;
}

// C = β·C + Σ_z slice z, for the m×n block of C; the slices are m×n row-major, c_split apart.
@compute @workgroup_size(256)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= params.m * params.n {
        return;
    }
    var v = 0.0;
    for (var z = 0u; z < params.splits; z++) {
        v += partials[z * params.c_split + i];
    }
    let idx = params.c_off + (i / params.n) * params.c_rs + i % params.n;
    if params.beta != 0.0 {
        v += params.beta * c[idx];
    }
    c[idx] = v;
}

// The same product without workgroup memory or barriers, for CPU adapters (lavapipe, llvmpipe),
// which run a workgroup's invocations as SIMD lanes and pay for every barrier with a switch of
// all of them: an 8×8 workgroup computes a 32×32 tile, 4×4 per invocation (its columns 8 apart,
// so that neighbouring invocations read neighbouring columns), reading A and B straight from
// memory. On lavapipe this made natgrad's steps 3 to 5 times faster than `matmul`.
@compute @workgroup_size(8, 8)
fn matmul_direct(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    // invocation (x, y) takes rows m .. m + 3 and the columns n, n + 8, n + 16, n + 24, so that
    // neighbouring invocations (a CPU adapter's SIMD lanes) read neighbouring elements of B
    let m = (wg.y * 8u + lid3.y) * 4u;
    let n = wg.x * 32u + lid3.x;
    if below_diagonal(wg.y * 32u, wg.x * 32u + 31u) {
        return;
    }
    let k_begin = wg.z * params.k_per_group;
    let k_end = min(params.k, k_begin + params.k_per_group);
    // rows and columns past C's edge read its last one (always in bounds) and are never stored:
    // the loop then loads without a branch
    let last_m = max(params.m, 1u) - 1u;
    let last_n = max(params.n, 1u) - 1u;
    let a0 = params.a_off + min(m, last_m) * params.a_rs;
    let a1 = params.a_off + min(m + 1u, last_m) * params.a_rs;
    let a2 = params.a_off + min(m + 2u, last_m) * params.a_rs;
    let a3 = params.a_off + min(m + 3u, last_m) * params.a_rs;
    let b0 = params.b_off + min(n, last_n) * params.b_cs;
    let b1 = params.b_off + min(n + 8u, last_n) * params.b_cs;
    let b2 = params.b_off + min(n + 16u, last_n) * params.b_cs;
    let b3 = params.b_off + min(n + 24u, last_n) * params.b_cs;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = k_begin; k < k_end; k++) {
        let ka = k * params.a_cs;
        let kb = k * params.b_rs;
        let bv = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);
        acc0 = fma(vec4<f32>(a[a0 + ka]), bv, acc0);
        acc1 = fma(vec4<f32>(a[a1 + ka]), bv, acc1);
        acc2 = fma(vec4<f32>(a[a2 + ka]), bv, acc2);
        acc3 = fma(vec4<f32>(a[a3 + ka]), bv, acc3);
    }
    store_row(m, n, 8u, wg.z, acc0);
    store_row(m + 1u, n, 8u, wg.z, acc1);
    store_row(m + 2u, n, 8u, wg.z, acc2);
    store_row(m + 3u, n, 8u, wg.z, acc3);
}


// The product for CPU adapters when C is wide: a workgroup of 64 invocations takes 8 rows of C,
// the same for all of them, and 256 columns, invocation i the columns n0 + i + 64j (j < 4). The
// elements of A it reads are the same across the workgroup (uniform), and it reads 4 elements
// of B per 32 products, against 8 per 16 in matmul_direct.
@compute @workgroup_size(64)
fn matmul_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m = wg.y * 8u;
    let n = wg.x * 256u + lid;
    if below_diagonal(m, wg.x * 256u + 255u) {
        return;
    }
    let k_begin = wg.z * params.k_per_group;
    let k_end = min(params.k, k_begin + params.k_per_group);
    let last_m = max(params.m, 1u) - 1u;
    let last_n = max(params.n, 1u) - 1u;
    var rows: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        rows[r] = params.a_off + min(m + r, last_m) * params.a_rs;
    }
    let b0 = params.b_off + min(n, last_n) * params.b_cs;
    let b1 = params.b_off + min(n + 64u, last_n) * params.b_cs;
    let b2 = params.b_off + min(n + 128u, last_n) * params.b_cs;
    let b3 = params.b_off + min(n + 192u, last_n) * params.b_cs;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var k = k_begin; k < k_end; k++) {
        let ka = k * params.a_cs;
        let kb = k * params.b_rs;
        let bv = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);
        acc0 = fma(vec4<f32>(a[rows[0] + ka]), bv, acc0);
        acc1 = fma(vec4<f32>(a[rows[1] + ka]), bv, acc1);
        acc2 = fma(vec4<f32>(a[rows[2] + ka]), bv, acc2);
        acc3 = fma(vec4<f32>(a[rows[3] + ka]), bv, acc3);
        acc4 = fma(vec4<f32>(a[rows[4] + ka]), bv, acc4);
        acc5 = fma(vec4<f32>(a[rows[5] + ka]), bv, acc5);
        acc6 = fma(vec4<f32>(a[rows[6] + ka]), bv, acc6);
        acc7 = fma(vec4<f32>(a[rows[7] + ka]), bv, acc7);
    }
    store_row(m, n, 64u, wg.z, acc0);
    store_row(m + 1u, n, 64u, wg.z, acc1);
    store_row(m + 2u, n, 64u, wg.z, acc2);
    store_row(m + 3u, n, 64u, wg.z, acc3);
    store_row(m + 4u, n, 64u, wg.z, acc4);
    store_row(m + 5u, n, 64u, wg.z, acc5);
    store_row(m + 6u, n, 64u, wg.z, acc6);
    store_row(m + 7u, n, 64u, wg.z, acc7);
}

