//! Threefry-2×32 with 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
//! the generator JAX uses): a counter-based generator, so every draw is a pure function of
//! (key, counter) and the GPU and the CPU produce the same bits in any order.
//! `shaders/shared/rng.wgsl` holds its twin.

const ROTATIONS: [u32; 8] = [13, 15, 26, 6, 17, 29, 16, 24];
const PARITY: u32 = 0x1BD1_1BDA;

/// The two 32-bit outputs for `counter` under `key`.
pub fn threefry2x32(counter: [u32; 2], key: [u32; 2]) -> [u32; 2] {
    let ks = [key[0], key[1], PARITY ^ key[0] ^ key[1]];
    let mut x = [counter[0].wrapping_add(ks[0]), counter[1].wrapping_add(ks[1])];
    for round in 0..20 {
        x[0] = x[0].wrapping_add(x[1]);
        x[1] = x[1].rotate_left(ROTATIONS[round % 8]) ^ x[0];
        if round % 4 == 3 {
            let s = round / 4 + 1;
            x[0] = x[0].wrapping_add(ks[s % 3]);
            x[1] = x[1].wrapping_add(ks[(s + 1) % 3]).wrapping_add(s as u32);
        }
    }
    x
}

/// A uniform in (0, 1) from 23 random bits, exact in f32 and never 0 or 1 (safe under log).
pub fn uniform(bits: u32) -> f64 {
    ((bits >> 9) as f64 + 0.5) * (1.0 / 8_388_608.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors (kat_vectors: threefry2x32, 20 rounds).
    #[test]
    fn known_answers() {
        assert_eq!(threefry2x32([0, 0], [0, 0]), [0x6b20_0159, 0x99ba_4efe]);
        assert_eq!(
            threefry2x32([u32::MAX, u32::MAX], [u32::MAX, u32::MAX]),
            [0x1cb9_96fc, 0xbb00_2be7]
        );
        assert_eq!(
            threefry2x32([0x243f_6a88, 0x85a3_08d3], [0x1319_8a2e, 0x0370_7344]),
            [0xc492_3a9c, 0x483d_f7a0]
        );
    }

    #[test]
    fn uniforms_stay_inside_the_open_interval() {
        assert!(uniform(0) > 0.0 && uniform(u32::MAX) < 1.0);
        assert_eq!(uniform(u32::MAX) as f32 as f64, uniform(u32::MAX));
    }
}
