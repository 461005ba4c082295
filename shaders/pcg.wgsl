// Preconditioned conjugate gradient for A d = g with any operator A and preconditioner M that the
// host records as dispatches (matrix-free Fisher products, K-FAC's Kronecker factors): the scalar
// half of src/solve/cg.rs's `cg_with_progress`, on the device, so that a solve reads back one
// state, not three dot products per iteration.
//
// One iteration, every dispatch but `pcg_gate` indirect through the gate's sizes:
//   pcg_gate      the iteration's dispatch sizes: the recorded ones while running, zero after
//   (operator)    q = A s
//   pcg_curvature partial sums of sᵀq and sᵀs
//   pcg_update    α = rᵀz / sᵀq (or the breakdown decision); d += α s; r −= α q; partials of rᵀr
//   (M⁻¹, or pcg_copy_z)  z = M⁻¹ r
//   pcg_dots      partial sums of rᵀz, gᵀd and rᵀd
//   pcg_direction β = rᵀz(new) / rᵀz(old); s = z + β s
//   pcg_state     one workgroup: the next state (stopping tests, Martens' progress rule)
// Every workgroup reduces the partial sums it needs itself, in the same order, so all of them
// compute the same α and β (shaders/shared/reduce.wgsl). A state is written only by the
// one-workgroup kernels, which no other dispatch runs beside.

#import reduce

struct Params {
    n4: u32,
    vec_groups: u32,
    tol2: f32,
    max_iters: u32,
    // Martens' relative-progress ε (0: off)
    progress: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct State {
    // rᵀr of the recursively updated residual
    rr: f32,
    gg: f32,
    // rᵀz, the preconditioned residual's
    rz: f32,
    // the largest Rayleigh quotient sᵀAs/sᵀs seen: A's scale, for the breakdown test
    mu: f32,
    // final: the true ‖g − A d‖ / ‖g‖
    rel_residual: f32,
    iters: u32,
    status: u32,
    // 1 when the warm start was worse than d = 0 and the solve restarts from zero
    restart: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> d: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> r: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> z: array<vec4<f32>>;
// seven runs of vec_groups partial sums (SQ, SS, RR, RZ, GD, RD, GG), then pcg_update's decision
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read_write> state: State;
// φ = −½(gᵀd + rᵀd) after each iteration, for the progress rule
@group(0) @binding(9) var<storage, read_write> phi: array<f32>;

// pcg_gate's own bind group (with the state): the recorded sizes [count, (x, y, z)...] and the
// sizes the gated dispatches read, which no other kernel binds (a dispatch may not write what
// it reads its size from)
@group(0) @binding(10) var<storage, read> recorded: array<u32>;
@group(0) @binding(11) var<storage, read_write> live: array<u32>;

const SQ: u32 = 0u;
const SS: u32 = 1u;
const RR: u32 = 2u;
const RZ: u32 = 3u;
const GD: u32 = 4u;
const RD: u32 = 5u;
const GG: u32 = 6u;

fn slot(k: u32) -> u32 {
    return k * params.vec_groups;
}

fn decision_offset() -> u32 {
    return 7u * params.vec_groups;
}

// The sum of run k of the partial sums, in a fixed order.
fn total(k: u32, ids: Ids) -> f32 {
    var v = 0.0;
    for (var i = ids.lid; i < params.vec_groups; i += WG) {
        v += partial[slot(k) + i];
    }
    return workgroup_sum(v, ids);
}

fn store(k: u32, value: f32, ids: Ids) {
    if ids.lid == 0u {
        partial[slot(k) + ids.wg.x] = value;
    }
}

fn index(ids: Ids) -> u32 {
    return ids.wg.x * WG + ids.lid;
}

// False when the step along s would divide by a (numerically) zero or negative curvature.
fn curvature_ok(sq: f32, ss: f32, mu: f32) -> bool {
    let rayleigh = sq / ss;
    return rayleigh > BREAKDOWN_RATIO * max(mu, rayleigh);
}

var<workgroup> step_taken: f32;

fn decision(ids: Ids) -> bool {
    if ids.lid == 0u {
        step_taken = partial[decision_offset()];
    }
    return workgroupUniformLoad(&step_taken) != 0.0;
}

// After q = A d₀: r = g − q, and the partial sums of rᵀr and gᵀg.
@compute @workgroup_size(WG)
fn pcg_init(ids: Ids) {
    let i = index(ids);
    var sums = vec4<f32>(0.0);
    if i < params.n4 {
        let ri = g[i] - q[i];
        r[i] = ri;
        sums = vec4<f32>(dot(ri, ri), dot(g[i], g[i]), 0.0, 0.0);
    }
    let t = workgroup_sum4(sums, ids);
    store(RR, t.x, ids);
    store(GG, t.y, ids);
}

// One workgroup: the starting state.
@compute @workgroup_size(WG)
fn pcg_init_state(ids: Ids) {
    let rr = total(RR, ids);
    let gg = total(GG, ids);
    if ids.lid == 0u {
        var st: State;
        st.rr = rr;
        st.gg = gg;
        if rr > gg {
            // the warm start is worse than none: pcg_restart zeroes d, and r = g
            st.restart = 1u;
            st.rr = gg;
        }
        if st.rr <= params.tol2 * gg || gg == 0.0 {
            st.status = CONVERGED;
        } else {
            st.status = RUNNING;
        }
        state = st;
    }
}

// After pcg_init_state: a start from d = 0 when the warm start was worse than that.
@compute @workgroup_size(WG)
fn pcg_restart(ids: Ids) {
    let i = index(ids);
    if state.restart != 0u && i < params.n4 {
        d[i] = vec4<f32>(0.0);
        r[i] = g[i];
    }
}

// z = r: the identity preconditioner.
@compute @workgroup_size(WG)
fn pcg_copy_z(ids: Ids) {
    let i = index(ids);
    if i < params.n4 {
        z[i] = r[i];
    }
}

// After z = M⁻¹ r₀: s = z, and the partial sums of rᵀz.
@compute @workgroup_size(WG)
fn pcg_start(ids: Ids) {
    let i = index(ids);
    var rz = 0.0;
    if i < params.n4 {
        s[i] = z[i];
        rz = dot(r[i], z[i]);
    }
    store(RZ, workgroup_sum(rz, ids), ids);
}

// One workgroup: rᵀz of the start.
@compute @workgroup_size(WG)
fn pcg_start_state(ids: Ids) {
    let rz = total(RZ, ids);
    if ids.lid == 0u {
        state.rz = rz;
    }
}

// One workgroup, never gated: the sizes of this iteration's gated dispatches.
@compute @workgroup_size(WG)
fn pcg_gate(ids: Ids) {
    let running = state.status == RUNNING;
    let count = 3u * recorded[0];
    for (var i = ids.lid; i < count; i += WG) {
        live[i] = select(0u, recorded[i + 1u], running);
    }
}

// After q = A s: the partial sums of sᵀq and sᵀs.
@compute @workgroup_size(WG)
fn pcg_curvature(ids: Ids) {
    let i = index(ids);
    var sums = vec4<f32>(0.0);
    if i < params.n4 {
        sums = vec4<f32>(dot(s[i], q[i]), dot(s[i], s[i]), 0.0, 0.0);
    }
    let t = workgroup_sum4(sums, ids);
    store(SQ, t.x, ids);
    store(SS, t.y, ids);
}

// α = rᵀz / sᵀq; d += α s; r −= α q; the partial sums of the new rᵀr.
@compute @workgroup_size(WG)
fn pcg_update(ids: Ids) {
    let sq = total(SQ, ids);
    let ss = total(SS, ids);
    let ok = curvature_ok(sq, ss, state.mu);
    // the later kernels follow this decision rather than recomputing it
    if ids.lid == 0u && ids.wg.x == 0u {
        partial[decision_offset()] = select(0.0, 1.0, ok);
    }
    if !ok {
        return;
    }
    let alpha = state.rz / sq;
    let i = index(ids);
    var rr = 0.0;
    if i < params.n4 {
        d[i] = fma(vec4<f32>(alpha), s[i], d[i]);
        let ri = fma(vec4<f32>(-alpha), q[i], r[i]);
        r[i] = ri;
        rr = dot(ri, ri);
    }
    store(RR, workgroup_sum(rr, ids), ids);
}

// After z = M⁻¹ r: the partial sums of rᵀz, gᵀd and rᵀd.
@compute @workgroup_size(WG)
fn pcg_dots(ids: Ids) {
    let i = index(ids);
    var sums = vec4<f32>(0.0);
    if i < params.n4 {
        sums = vec4<f32>(dot(r[i], z[i]), dot(g[i], d[i]), dot(r[i], d[i]), 0.0);
    }
    let t = workgroup_sum4(sums, ids);
    store(RZ, t.x, ids);
    store(GD, t.y, ids);
    store(RD, t.z, ids);
}

// β = rᵀz(new) / rᵀz(old); s = z + β s.
@compute @workgroup_size(WG)
fn pcg_direction(ids: Ids) {
    if !decision(ids) {
        return;
    }
    let beta = total(RZ, ids) / state.rz;
    let i = index(ids);
    if i < params.n4 {
        s[i] = fma(vec4<f32>(beta), s[i], z[i]);
    }
}

// One workgroup: the state after the iteration, with the stopping tests in the host's order
// (converged, out of iterations, stalled).
@compute @workgroup_size(WG)
fn pcg_state(ids: Ids) {
    let sq = total(SQ, ids);
    let ss = total(SS, ids);
    let rr = total(RR, ids);
    let rz = total(RZ, ids);
    let gd = total(GD, ids);
    let rd = total(RD, ids);
    let took = decision(ids);
    if ids.lid != 0u {
        return;
    }
    var st = state;
    if !took {
        st.status = BREAKDOWN;
        state = st;
        return;
    }
    st.mu = max(st.mu, sq / ss);
    st.rr = rr;
    st.rz = rz;
    st.iters += 1u;
    if rr <= params.tol2 * st.gg {
        st.status = CONVERGED;
    } else if st.iters >= params.max_iters {
        st.status = MAX_ITERATIONS;
    } else if params.progress > 0.0 {
        // Martens (2010) §4.4: stop when φ improved by less than k·ε relatively over k iterations
        let it = st.iters;
        let now = -0.5 * (gd + rd);
        phi[it - 1u] = now;
        let k = max(10u, it / 10u);
        if it > k {
            let then = phi[it - 1u - k];
            if now < 0.0 && (now - then) / now < f32(k) * params.progress {
                st.status = STALLED;
            }
        }
    }
    state = st;
}

// After q = A d: the true residual's partial sums (the recursive r drifts in f32). With g = 0
// the solution is d = 0 whatever the warm start was.
@compute @workgroup_size(WG)
fn pcg_final_residual(ids: Ids) {
    let i = index(ids);
    var rr = 0.0;
    if i < params.n4 {
        var ri = g[i] - q[i];
        if state.gg == 0.0 {
            d[i] = vec4<f32>(0.0);
            ri = g[i];
        }
        r[i] = ri;
        rr = dot(ri, ri);
    }
    store(RR, workgroup_sum(rr, ids), ids);
}

// One workgroup: the report.
@compute @workgroup_size(WG)
fn pcg_final_state(ids: Ids) {
    let rr = total(RR, ids);
    if ids.lid == 0u {
        if state.gg > 0.0 {
            state.rel_residual = sqrt(rr / state.gg);
        } else {
            state.rel_residual = 0.0;
        }
    }
}
