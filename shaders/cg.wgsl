// Conjugate gradient for (F + λI) d = g, driven entirely on the GPU.
//
// One iteration is three dispatches: linalg's `matvec` (q = (F + λI) s, with the partial sums of
// sᵀq and sᵀs), `cg_update` (α, then d and r) and `cg_direction` (β, then s, and the decision).
// Every workgroup reduces the partial sums itself, in the same order, so all of them compute the
// same α and β without another dispatch. The state ping-pongs between two buffers: an iteration
// reads `state_in` and `cg_direction`'s first invocation writes `state_out`, so no dispatch reads
// what it writes. `cg_direction` also writes the indirect dispatch sizes of the next iteration's
// matvec and update, zero once the solve has stopped: iterations recorded past convergence cost
// no workgroups.

#import reduce

// RUNNING, CONVERGED, MAX_ITERATIONS and BREAKDOWN come from the prelude (src/gpu/sizes.rs), as
// does BREAKDOWN_RATIO: a search direction whose Rayleigh quotient sᵀAs/sᵀs falls below this
// fraction of the largest seen so far has met a (numerically) singular direction of A (see
// backend::cg::BREAKDOWN_RATIO).

struct Params {
    n4: u32,
    tol2: f32,
    max_iters: u32,
    // workgroups of the vector kernels
    vec_groups: u32,
}

struct State {
    // rᵀr of the recursively updated residual
    rr: f32,
    // gᵀg
    gg: f32,
    // the largest Rayleigh quotient sᵀAs/sᵀs seen: A's scale, for the breakdown test
    mu: f32,
    // final: the true ‖g − (F + λI)d‖ / ‖g‖
    rel_residual: f32,
    iters: u32,
    status: u32,
    // 1 when the warm start was worse than d = 0 and the solve restarts from zero
    restart: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> d: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> r: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q: array<vec4<f32>>;
// [sᵀq per matvec block | sᵀs per matvec block | rᵀr per vector group | gᵀg per vector group |
//  cg_update's decision: 1 when it took the step]
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
@group(0) @binding(7) var<storage, read> state_in: State;
@group(0) @binding(8) var<storage, read_write> state_out: State;
// indirect sizes for the next iteration: matvec (x, y, z), then update (x, y, z)
@group(0) @binding(9) var<storage, read_write> next_args: array<u32, 6>;

// The sum of partial[start .. start + count), in a fixed order.
fn sum_partials(start: u32, count: u32, ids: Ids) -> f32 {
    var v = 0.0;
    for (var i = ids.lid; i < count; i += WG) {
        v += partial[start + i];
    }
    return workgroup_sum(v, ids);
}

// The matvec's sᵀq and sᵀs, reduced.
fn curvature(ids: Ids) -> vec2<f32> {
    return vec2<f32>(sum_partials(0u, params.n4, ids), sum_partials(params.n4, params.n4, ids));
}

fn rr_offset() -> u32 {
    return 2u * params.n4;
}

fn gg_offset() -> u32 {
    return 2u * params.n4 + params.vec_groups;
}

fn decision_offset() -> u32 {
    return 2u * params.n4 + 2u * params.vec_groups;
}

// cg_update's decision, read once and shared uniformly with the workgroup
var<workgroup> step_taken: f32;

// False when the step along s would divide by a (numerically) zero or negative curvature.
fn curvature_ok(c: vec2<f32>, mu: f32) -> bool {
    let rayleigh = c.x / c.y;
    return rayleigh > BREAKDOWN_RATIO * max(mu, rayleigh);
}

fn write_args(running: bool) {
    let k = select(0u, 1u, running);
    next_args[0] = k * min(params.n4, 65535u);
    next_args[1] = k * ((params.n4 + 65534u) / 65535u);
    next_args[2] = k;
    next_args[3] = k * params.vec_groups;
    next_args[4] = k;
    next_args[5] = k;
}

// After q = (F + λI)d₀: r = g − q, s = r, and the partial sums of rᵀr and gᵀg.
@compute @workgroup_size(WG)
fn cg_init(ids: Ids) {
    let i = ids.wg.x * WG + ids.lid;
    var rr = 0.0;
    var gg = 0.0;
    if i < params.n4 {
        let gi = g[i];
        let ri = gi - q[i];
        r[i] = ri;
        s[i] = ri;
        rr = dot(ri, ri);
        gg = dot(gi, gi);
    }
    let sums = workgroup_sum4(vec4<f32>(rr, gg, 0.0, 0.0), ids);
    if ids.lid == 0u {
        partial[rr_offset() + ids.wg.x] = sums.x;
        partial[gg_offset() + ids.wg.x] = sums.y;
    }
}

// One workgroup: the starting state, and the sizes of the first iteration.
@compute @workgroup_size(WG)
fn cg_init_state(ids: Ids) {
    let rr = sum_partials(rr_offset(), params.vec_groups, ids);
    let gg = sum_partials(gg_offset(), params.vec_groups, ids);
    if ids.lid == 0u {
        var st: State;
        st.rr = rr;
        st.gg = gg;
        st.iters = 0u;
        if rr > gg {
            // the warm start is worse than none: cg_restart zeroes d, and r = s = g
            st.restart = 1u;
            st.rr = gg;
        }
        if st.rr <= params.tol2 * gg || gg == 0.0 {
            st.status = CONVERGED;
        } else if params.max_iters == 0u {
            st.status = MAX_ITERATIONS;
        } else {
            st.status = RUNNING;
        }
        state_out = st;
        write_args(st.status == RUNNING);
    }
}

// After cg_init_state: a start from d = 0 when the warm start was worse than that.
@compute @workgroup_size(WG)
fn cg_restart(ids: Ids) {
    let i = ids.wg.x * WG + ids.lid;
    if state_in.restart != 0u && i < params.n4 {
        d[i] = vec4<f32>(0.0);
        r[i] = g[i];
        s[i] = g[i];
    }
}

// α = rᵀr / sᵀq; d += α s; r −= α q; partial sums of the new rᵀr.
@compute @workgroup_size(WG)
fn cg_update(ids: Ids) {
    let c = curvature(ids);
    let ok = curvature_ok(c, state_in.mu);
    // cg_direction follows this decision rather than recomputing it: another pipeline's
    // reduction (another subgroup size) could round differently at the threshold
    if ids.lid == 0u && ids.wg.x == 0u {
        partial[decision_offset()] = select(0.0, 1.0, ok);
    }
    if !ok {
        return;
    }
    let alpha = state_in.rr / c.x;
    let i = ids.wg.x * WG + ids.lid;
    var rr = 0.0;
    if i < params.n4 {
        d[i] = fma(vec4<f32>(alpha), s[i], d[i]);
        let ri = fma(vec4<f32>(-alpha), q[i], r[i]);
        r[i] = ri;
        rr = dot(ri, ri);
    }
    let sum = workgroup_sum(rr, ids);
    if ids.lid == 0u {
        partial[rr_offset() + ids.wg.x] = sum;
    }
}

// β = rᵀr(new) / rᵀr(old); s = r + β s; the first invocation writes the next state.
@compute @workgroup_size(WG)
fn cg_direction(ids: Ids) {
    let first = ids.lid == 0u && ids.wg.x == 0u;
    var st = state_in;
    if st.status != RUNNING {
        if first {
            state_out = st;
            write_args(false);
        }
        return;
    }
    let c = curvature(ids);
    st.mu = max(st.mu, c.x / c.y);
    if ids.lid == 0u {
        step_taken = partial[decision_offset()];
    }
    if workgroupUniformLoad(&step_taken) == 0.0 {
        if first {
            st.status = BREAKDOWN;
            state_out = st;
            write_args(false);
        }
        return;
    }
    let rr = sum_partials(rr_offset(), params.vec_groups, ids);
    let beta = rr / st.rr;
    let i = ids.wg.x * WG + ids.lid;
    if i < params.n4 {
        s[i] = fma(vec4<f32>(beta), s[i], r[i]);
    }
    if first {
        st.rr = rr;
        st.iters += 1u;
        if rr <= params.tol2 * st.gg {
            st.status = CONVERGED;
        } else if st.iters >= params.max_iters {
            st.status = MAX_ITERATIONS;
        }
        state_out = st;
        write_args(st.status == RUNNING);
    }
}

// After q = (F + λI)d: the true residual's partial sums (the recursive r drifts in f32).
// With g = 0 the solution is d = 0 whatever the warm start was.
@compute @workgroup_size(WG)
fn cg_final_residual(ids: Ids) {
    let i = ids.wg.x * WG + ids.lid;
    var rr = 0.0;
    if i < params.n4 {
        if state_in.gg == 0.0 {
            d[i] = vec4<f32>(0.0);
            r[i] = g[i];
        } else {
            r[i] = g[i] - q[i];
        }
        rr = dot(r[i], r[i]);
    }
    let sum = workgroup_sum(rr, ids);
    if ids.lid == 0u {
        partial[rr_offset() + ids.wg.x] = sum;
    }
}

// One workgroup: the report.
@compute @workgroup_size(WG)
fn cg_final_state(ids: Ids) {
    let rr = sum_partials(rr_offset(), params.vec_groups, ids);
    if ids.lid == 0u {
        var st = state_in;
        if st.gg > 0.0 {
            st.rel_residual = sqrt(rr / st.gg);
        } else {
            st.rel_residual = 0.0;
        }
        state_out = st;
    }
}
