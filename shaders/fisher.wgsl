// F = (accumulate ? F : 0) + scale · GᵀG, for G: m×p (row stride ldg4 vec4s) and F: p×p (row
// stride ldf4 vec4s), both row-major f32 with zero padding to whole vec4s.
//
// A 16×16 workgroup computes one TILE×TILE tile of F; each invocation owns NB×NB register blocks
// of 4×4. Rows of G pass through workgroup memory KSTEP at a time as vec4s. Only tiles on or
// above the diagonal are computed; an off-diagonal tile also writes its transpose below the
// diagonal, with the very same arithmetic, so F comes out exactly symmetric. Accumulating over
// chunks of G (F += scale · GcᵀGc) keeps that property because both halves start equal.

// Register blocking: 1 → 64×64 tiles (software and small GPUs), 2 → 128×128 tiles.
const NB: u32 = 1u;
const TILE: u32 = FISHER_TILE * NB;
const TILE4: u32 = TILE / 4u;
// Rows of G per stage: a stage is one vec4 per invocation for each of the two operands.
const KSTEP: u32 = FISHER_KSTEP / NB;

struct Params {
    // rows of G in this dispatch, starting at row0 (long G is split across dispatches)
    m: u32,
    p: u32,
    ldg4: u32,
    ldf4: u32,
    scale: f32,
    accumulate: u32,
    row0: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> f: array<vec4<f32>>;

// stage[kk][c]: G[k0 + kk, tile origin + 4c .. 4c + 3], for the tile's rows (a) and columns (b)
var<workgroup> stage_a: array<array<vec4<f32>, TILE4>, KSTEP>;
var<workgroup> stage_b: array<array<vec4<f32>, TILE4>, KSTEP>;

@compute @workgroup_size(16, 16)
fn fisher_build(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // tile (bi, bj) covers F rows bi·TILE.. and columns bj·TILE..; the lower triangle is mirrored
    let bi = wg.y;
    let bj = wg.x;
    if bi > bj {
        return;
    }
    let tx = lid3.x;
    let ty = lid3.y;
    let a4 = bi * TILE4;
    let b4 = bj * TILE4;

    // acc[(sr·4 + r)·NB + sc] holds F[row(sr, r), 4 columns of sub-block sc], where
    // row(sr, r) = bi·TILE + 64·sr + 4·ty + r and sub-block sc starts at column bj·TILE + 64·sc + 4·tx.
    var acc: array<vec4<f32>, 4u * NB * NB>;

    for (var k0 = 0u; k0 < params.m; k0 += KSTEP) {
        for (var t = lid; t < KSTEP * TILE4; t += 256u) {
            let kk = t / TILE4;
            let c = t % TILE4;
            let row = k0 + kk;
            let at = (params.row0 + row) * params.ldg4;
            var va = vec4<f32>(0.0);
            var vb = vec4<f32>(0.0);
            if row < params.m {
                if a4 + c < params.ldg4 {
                    va = g[at + a4 + c];
                }
                if b4 + c < params.ldg4 {
                    vb = g[at + b4 + c];
                }
            }
            stage_a[kk][c] = va;
            stage_b[kk][c] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSTEP; kk++) {
            var av: array<vec4<f32>, NB>;
            var bv: array<vec4<f32>, NB>;
            for (var sb = 0u; sb < NB; sb++) {
                av[sb] = stage_a[kk][16u * sb + ty];
                bv[sb] = stage_b[kk][16u * sb + tx];
            }
            for (var sr = 0u; sr < NB; sr++) {
                for (var r = 0u; r < 4u; r++) {
                    for (var sc = 0u; sc < NB; sc++) {
                        let k = (sr * 4u + r) * NB + sc;
                        acc[k] = fma(vec4<f32>(av[sr][r]), bv[sc], acc[k]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    let mirror = bi < bj;
    for (var sr = 0u; sr < NB; sr++) {
        let row4 = a4 + 16u * sr + ty;
        for (var sc = 0u; sc < NB; sc++) {
            let col4 = b4 + 16u * sc + tx;
            let base = (sr * 4u) * NB + sc;
            // upper: rows 4·row4 + r, the vec4 of columns col4
            for (var r = 0u; r < 4u; r++) {
                let i = 4u * row4 + r;
                if i < params.p && col4 < params.ldf4 {
                    let idx = i * params.ldf4 + col4;
                    var v = params.scale * acc[base + r * NB];
                    if params.accumulate != 0u {
                        v += f[idx];
                    }
                    f[idx] = v;
                }
            }
            // lower: rows 4·col4 + c, the vec4 of columns row4 (the same block, transposed)
            if mirror {
                for (var c = 0u; c < 4u; c++) {
                    let j = 4u * col4 + c;
                    if j < params.p && row4 < params.ldf4 {
                        let idx = j * params.ldf4 + row4;
                        var v = params.scale * vec4<f32>(
                            acc[base][c],
                            acc[base + NB][c],
                            acc[base + 2u * NB][c],
                            acc[base + 3u * NB][c],
                        );
                        if params.accumulate != 0u {
                            v += f[idx];
                        }
                        f[idx] = v;
                    }
                }
            }
        }
    }
}
