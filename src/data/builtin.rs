//! Datasets by name: `digits` (shipped with natgrad), and the seeded generators `spirals` and
//! `blobs`.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::{Dataset, Task, TaskChoice, csv};
use crate::error::Result;

/// The names `--dataset` accepts.
pub const NAMES: [&str; 3] = ["digits", "spirals", "blobs"];

/// UCI optical digits as shipped with scikit-learn (see data/README.md): 1797 images of 8×8
/// pixels, 10 classes, intensities scaled to [0, 1] in the file itself.
const DIGITS: &str = include_str!("../../data/digits.csv");

/// The built-in dataset `name`, if there is one.
pub fn by_name(name: &str, seed: u64) -> Option<Result<Dataset>> {
    match name {
        "digits" => Some(digits()),
        "spirals" => Some(Ok(spirals(3, 200, seed))),
        "blobs" => Some(Ok(blobs(4, 150, seed))),
        _ => None,
    }
}

/// Digits, pixel intensities in [0, 1]: `data/digits.csv` as it is.
pub fn digits() -> Result<Dataset> {
    Dataset::from_table("digits", csv::parse("digits", DIGITS)?, TaskChoice::Classify)
}

/// A standard normal draw (σ·z is then N(0, σ²), the draw `Normal::new(0, σ)` makes).
fn normal(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// `arms` interleaved spirals in the plane, `per_arm` points each, with angular noise: a
/// classification no linear model can do.
pub fn spirals(arms: usize, per_arm: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(2 * arms * per_arm);
    let mut y = Vec::with_capacity(arms * per_arm);
    for arm in 0..arms {
        for i in 0..per_arm {
            let r = i as f64 / per_arm as f64;
            let angle = arm as f64 * std::f64::consts::TAU / arms as f64 + 4.0 * r + 0.2 * normal(&mut rng);
            x.extend([(r * angle.sin()) as f32, (r * angle.cos()) as f32]);
            y.push(arm as f32);
        }
    }
    Dataset {
        name: "spirals".into(),
        x,
        y,
        n: arms * per_arm,
        d: 2,
        task: Task::Classify {
            labels: (0..arms).map(|c| c as f64).collect(),
        },
    }
}

/// `centers` Gaussian blobs in the plane (unit spread, centres drawn in [−5, 5]²), `per_blob`
/// points each; they overlap a little, so the optimum is finite.
pub fn blobs(centers: usize, per_blob: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centres: Vec<[f64; 2]> = (0..centers)
        .map(|_| [rng.random_range(-5.0..5.0), rng.random_range(-5.0..5.0)])
        .collect();
    let mut x = Vec::with_capacity(2 * centers * per_blob);
    let mut y = Vec::with_capacity(centers * per_blob);
    for (c, centre) in centres.iter().enumerate() {
        for _ in 0..per_blob {
            x.extend([
                (centre[0] + normal(&mut rng)) as f32,
                (centre[1] + normal(&mut rng)) as f32,
            ]);
            y.push(c as f32);
        }
    }
    Dataset {
        name: "blobs".into(),
        x,
        y,
        n: centers * per_blob,
        d: 2,
        task: Task::Classify {
            labels: (0..centers).map(|c| c as f64).collect(),
        },
    }
}
