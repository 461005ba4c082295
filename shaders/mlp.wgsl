// The MLP's elementwise and per-row kernels around matmul: bias and activation, the activation's
// derivative in the backward pass, the output seeds that start each score row's backward pass
// (the three Fisher kinds), the batch loss, and the expansion of score rows into G.
//
// Buffers are plain row-major f32 (no vec4 padding) except G, whose row stride `ld` is padded.
// A "row" in the backward kernels is a row of G: example = (row0 + row) / rows_per_example.

#import reduce
#import rng

// Activation, likelihood and Fisher-kind codes (TANH…, CATEGORICAL…, EMPIRICAL…) come from the
// prelude (src/gpu/sizes.rs).

const GELU_C: f32 = 0.7978845608028654;
const GELU_A: f32 = 0.044715;
const TWO_PI: f32 = 6.283185307179586;

struct Params {
    // rows to process, and the width of each row
    rows: u32,
    width: u32,
    // score rows per example, and the first row's index
    per_example: u32,
    row0: u32,
    activation: u32,
    likelihood: u32,
    kind: u32,
    draws: u32,
    sigma: f32,
    key0: u32,
    key1: u32,
    // expand: fan-in of the layer, offset of its weight in a G row, G's row stride
    fan_in: u32,
    offset: u32,
    ld: u32,
    // bias_act: apply the activation (hidden layers) or not (the output layer)
    apply: u32,
    // output_seeds: where the batch's first example stands in the whole batch (its draws' key)
    example0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> act_out: array<f32>;
@group(0) @binding(3) var<storage, read> theta: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read> act_in: array<f32>;
@group(0) @binding(9) var<storage, read> seeds: array<f32>;

// Stable forms: the builtin tanh may overflow to NaN for large |x| on some drivers.
fn stable_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}

fn activate(x: f32) -> f32 {
    switch params.activation {
        case TANH: { return stable_tanh(x); }
        case RELU: { return max(x, 0.0); }
        case SIGMOID: { return sigmoid(x); }
        default: { return 0.5 * x * (1.0 + stable_tanh(GELU_C * (x + GELU_A * x * x * x))); }
    }
}

fn activate_grad(x: f32) -> f32 {
    switch params.activation {
        case TANH: {
            let t = stable_tanh(x);
            return 1.0 - t * t;
        }
        case RELU: { return select(0.0, 1.0, x > 0.0); }
        case SIGMOID: {
            let s = sigmoid(x);
            return s * (1.0 - s);
        }
        default: {
            let t = stable_tanh(GELU_C * (x + GELU_A * x * x * x));
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
        }
    }
}

// z[row, j] += bias[j]; act_out[row, j] = σ(z[row, j]) for hidden layers. Bias at theta[offset].
@compute @workgroup_size(WG)
fn bias_act(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= params.rows * params.width {
        return;
    }
    let v = z[i] + theta[params.offset + i % params.width];
    z[i] = v;
    if params.apply != 0u {
        act_out[i] = activate(v);
    }
}

// delta[row, j] *= σ'(z[example(row), j])
@compute @workgroup_size(WG)
fn act_grad_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= params.rows * params.width {
        return;
    }
    let row = i / params.width;
    let example = (params.row0 + row) / params.per_example;
    delta[i] *= activate_grad(z[example * params.width + i % params.width]);
}

// log Σ_c exp z[base + c] over `width` logits, stable.
fn log_sum_exp(base: u32) -> f32 {
    var m = z[base];
    for (var c = 1u; c < params.width; c++) {
        m = max(m, z[base + c]);
    }
    var total = 0.0;
    for (var c = 0u; c < params.width; c++) {
        total += exp(z[base + c] - m);
    }
    return m + log(total);
}

// Uniforms (u1, u2) for a draw: the twin of SampleKey::uniforms.
fn uniforms(example: u32, draw: u32, output: u32, outputs: u32) -> vec2<f32> {
    let bits = threefry2x32(vec2<u32>(params.example0 + example, draw * outputs + output), vec2<u32>(params.key0, params.key1));
    return vec2<f32>(uniform01(bits.x), uniform01(bits.y));
}

// delta[row, :] = the output seed of G row row0 + row (see fisher::output_seed): the gradient
// with respect to the outputs of the row's (weighted) log-likelihood. z holds the outputs.
@compute @workgroup_size(WG)
fn output_seeds(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if row >= params.rows {
        return;
    }
    let q = params.row0 + row;
    let e = q / params.per_example;
    let r = q % params.per_example;
    let w = params.width;
    let out = row * w;
    let zb = e * w;
    switch params.likelihood {
        case CATEGORICAL: {
            // p_c = exp(z_c − lse), recomputed where needed: no per-class storage, any C
            let lse = log_sum_exp(zb);
            var label = u32(targets[e]);
            var scale = 1.0;
            if params.kind == SAMPLED {
                let u = uniforms(e, r, 0u, 1u).x;
                var cumulative = 0.0;
                label = w - 1u;
                for (var c = 0u; c < w; c++) {
                    cumulative += exp(z[zb + c] - lse);
                    if u < cumulative {
                        label = c;
                        break;
                    }
                }
                scale = inverseSqrt(f32(params.draws));
            } else if params.kind == EXACT {
                label = r;
                scale = sqrt(exp(z[zb + r] - lse));
            }
            for (var c = 0u; c < w; c++) {
                delta[out + c] = scale * (select(0.0, 1.0, c == label) - exp(z[zb + c] - lse));
            }
        }
        case BERNOULLI: {
            let q1 = sigmoid(z[zb]);
            if params.kind == EXACT {
                delta[out] = sqrt(q1 * (1.0 - q1));
            } else if params.kind == SAMPLED {
                let y = select(0.0, 1.0, uniforms(e, r, 0u, 1u).x < q1);
                delta[out] = inverseSqrt(f32(params.draws)) * (y - q1);
            } else {
                delta[out] = targets[e] - q1;
            }
        }
        default: {
            let s2 = params.sigma * params.sigma;
            for (var k = 0u; k < w; k++) {
                if params.kind == EXACT {
                    delta[out + k] = select(0.0, 1.0 / params.sigma, k == r);
                } else if params.kind == SAMPLED {
                    let u = uniforms(e, r, k, w);
                    // cos(2πu) = −cos(2π(u − ½)): WGSL bounds cos's error only on [−π, π]
                    let eps = -sqrt(-2.0 * log(u.x)) * cos(TWO_PI * (u.y - 0.5));
                    // (ỹ − μ)/σ² with ỹ = μ + σε
                    delta[out + k] = inverseSqrt(f32(params.draws)) * eps / params.sigma;
                } else {
                    delta[out + k] = (targets[e * w + k] - z[zb + k]) / s2;
                }
            }
        }
    }
}

// Per-workgroup sums of the negative log-likelihood and of correct predictions over `rows`
// examples: partial[2·g] and partial[2·g + 1] of workgroup g (numbered across a 2-D grid).
@compute @workgroup_size(WG)
fn batch_loss(ids: Ids) {
    // a batch of more than 65535 workgroups comes as a 2-D grid
    let group = ids.wg.x + ids.wg.y * ids.nwg.x;
    let e = group * WG + ids.lid;
    var nll = 0.0;
    var correct = 0.0;
    if e < params.rows {
        let w = params.width;
        let zb = e * w;
        switch params.likelihood {
            case CATEGORICAL: {
                let label = u32(targets[e]);
                var best = 0u;
                for (var c = 1u; c < w; c++) {
                    if z[zb + c] > z[zb + best] {
                        best = c;
                    }
                }
                nll = log_sum_exp(zb) - z[zb + label];
                correct = select(0.0, 1.0, best == label);
            }
            case BERNOULLI: {
                let y = targets[e];
                nll = softplus(z[zb]) - y * z[zb];
                correct = select(0.0, 1.0, (z[zb] > 0.0) == (y > 0.5));
            }
            default: {
                let s2 = params.sigma * params.sigma;
                var sq = 0.0;
                for (var k = 0u; k < w; k++) {
                    let r = targets[e * w + k] - z[zb + k];
                    sq += r * r;
                }
                nll = sq / (2.0 * s2) + 0.5 * f32(w) * log(TWO_PI * s2);
            }
        }
    }
    let sums = workgroup_sum4(vec4<f32>(nll, correct, 0.0, 0.0), ids);
    // the grid's last row may run past the batch's workgroups: those have no slot
    if ids.lid == 0u && 2u * group < arrayLength(&partial) {
        partial[2u * group] = sums.x;
        partial[2u * group + 1u] = sums.y;
    }
}

// One layer's part of G rows: scores[row, offset + o·fan_in + j] = delta[row, o] · act_in[example, j]
// (the weight), then scores[row, offset + width·fan_in + o] = delta[row, o] (the bias).
// x runs over the layer's parameters, y over rows.
@compute @workgroup_size(WG)
fn expand_scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    let row = gid.y;
    let weights = params.width * params.fan_in;
    if t >= weights + params.width || row >= params.rows {
        return;
    }
    var v: f32;
    if t < weights {
        let example = (params.row0 + row) / params.per_example;
        v = delta[row * params.width + t / params.fan_in] * act_in[example * params.fan_in + t % params.fan_in];
    } else {
        v = delta[row * params.width + t - weights];
    }
    scores[row * params.ld + params.offset + t] = v;
}

// The output-space Fisher applied to each example's output tangent: with the example's R output
// seeds s_r (rows e·R + r of `seeds`, as output_seeds writes them), H_e = Σ_r s_r s_rᵀ and
// delta[e, :] = Σ_r s_r (s_rᵀ act_in[e, :]). One invocation per example (R·width is small).
@compute @workgroup_size(WG)
fn seed_product(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if e >= params.rows {
        return;
    }
    let w = params.width;
    for (var k = 0u; k < w; k++) {
        delta[e * w + k] = 0.0;
    }
    for (var r = 0u; r < params.per_example; r++) {
        let base = (e * params.per_example + r) * w;
        var d = 0.0;
        for (var k = 0u; k < w; k++) {
            d += seeds[base + k] * act_in[e * w + k];
        }
        for (var k = 0u; k < w; k++) {
            delta[e * w + k] += d * seeds[base + k];
        }
    }
}

// delta[e] = Σ_r (s_rᵀ act_in[e, :])²: each example's share of vᵀFv, its output tangent J_e v
// in act_in and its R output seeds in `seeds` (the quadratic form of seed_product).
@compute @workgroup_size(WG)
fn seed_quad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if e >= params.rows {
        return;
    }
    let w = params.width;
    var total = 0.0;
    for (var r = 0u; r < params.per_example; r++) {
        let base = (e * params.per_example + r) * w;
        var d = 0.0;
        for (var k = 0u; k < w; k++) {
            d += seeds[base + k] * act_in[e * w + k];
        }
        total += d * d;
    }
    delta[e] = total;
}
