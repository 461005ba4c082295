// First-order parameter updates, one vec4 per invocation: SGD with momentum, and Adam.

struct Params {
    n4: u32,
    lr: f32,
    // SGD: the momentum μ; Adam: β1
    beta1: f32,
    beta2: f32,
    eps: f32,
    // Adam's bias corrections 1 − β1ᵗ and 1 − β2ᵗ
    bias1: f32,
    bias2: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> theta: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;

// velocity ← μ·velocity + g; θ ← θ − lr·velocity (velocity in m)
@compute @workgroup_size(WG)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.n4 {
        return;
    }
    let velocity = params.beta1 * m[i] + grad[i];
    m[i] = velocity;
    theta[i] -= params.lr * velocity;
}

// m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²; θ ← θ − lr · m̂ / (√v̂ + ε)
@compute @workgroup_size(WG)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.n4 {
        return;
    }
    let g = grad[i];
    let mi = params.beta1 * m[i] + (1.0 - params.beta1) * g;
    let vi = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    theta[i] -= params.lr * (mi / params.bias1) / (sqrt(vi / params.bias2) + params.eps);
}
