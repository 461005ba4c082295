// Threefry-2×32, 20 rounds: the twin of src/fisher/rng.rs (same bits for the same key and counter).

fn rotl(x: u32, r: u32) -> u32 {
    return (x << r) | (x >> (32u - r));
}

fn threefry2x32(counter: vec2<u32>, key: vec2<u32>) -> vec2<u32> {
    let rot = array<u32, 8>(13u, 15u, 26u, 6u, 17u, 29u, 16u, 24u);
    let ks = array<u32, 3>(key.x, key.y, 0x1BD11BDAu ^ key.x ^ key.y);
    var x0 = counter.x + ks[0];
    var x1 = counter.y + ks[1];
    for (var round = 0u; round < 20u; round++) {
        x0 += x1;
        x1 = rotl(x1, rot[round % 8u]) ^ x0;
        if round % 4u == 3u {
            let s = round / 4u + 1u;
            x0 += ks[s % 3u];
            x1 += ks[(s + 1u) % 3u] + s;
        }
    }
    return vec2<u32>(x0, x1);
}

// A uniform in (0, 1) from 23 random bits: exact in f32, never 0 or 1.
fn uniform01(bits: u32) -> f32 {
    return (f32(bits >> 9u) + 0.5) * (1.0 / 8388608.0);
}
