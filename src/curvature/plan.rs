//! The memory plan: what each representation holds for a problem's shape, whether it fits the
//! device (its largest buffer, and the memory available), and `--curvature auto`'s choice. Every
//! size is checked here before anything is allocated; the refusal names the buffer, its size, the
//! limit and a representation that would fit.

use super::CurvatureKind;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp};

/// `--curvature`: a representation, or `auto` (chosen by [`choose`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CurvatureChoice {
    #[default]
    Auto,
    Kind(CurvatureKind),
}

impl CurvatureChoice {
    pub fn name(self) -> &'static str {
        match self {
            CurvatureChoice::Auto => "auto",
            CurvatureChoice::Kind(k) => k.name(),
        }
    }
}

/// The sizes a representation's needs depend on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shape {
    /// Parameters.
    pub p: usize,
    /// Score rows per step: the batch times the Fisher kind's rows per example.
    pub m: usize,
    /// The layers' parameter counts (the blocks of `block`).
    pub blocks: Vec<usize>,
}

impl Shape {
    /// The shape of natural gradient on `mlp` with batches of `examples` and the Fisher `kind`.
    pub fn of(mlp: &Mlp, examples: usize, kind: FisherKind) -> Self {
        Self {
            p: mlp.num_params(),
            m: examples * kind.rows_per_example(mlp.likelihood()),
            blocks: mlp.layers().iter().map(|l| l.len()).collect(),
        }
    }

    /// Bytes of one row of G on a device (a GPU matrix pads rows to whole vec4s).
    fn g_row_bytes(&self) -> u64 {
        4 * self.p.next_multiple_of(4) as u64
    }

    /// Bytes of the largest chunk of G's rows one device buffer of `max_buffer` bytes holds.
    pub(crate) fn g_chunk_bytes(&self, limits: &Limits) -> u64 {
        let row = self.g_row_bytes();
        (limits.max_buffer / row).clamp(1, (self.m as u64).max(1)) * row
    }

    /// One chunk of G, as a need.
    pub(crate) fn g_chunk(&self, limits: &Limits) -> Need {
        let piece = self.g_chunk_bytes(limits);
        Need {
            buffer: "score rows G (one chunk)",
            shape: format!("≤{}×{} f32", self.m, self.p),
            piece,
            total: piece,
        }
    }

    /// All of G, held in chunks, as a need.
    pub(crate) fn g_whole(&self, limits: &Limits) -> Need {
        Need {
            buffer: "score rows G",
            shape: format!("{}×{} f32", self.m, self.p),
            piece: self.g_chunk_bytes(limits),
            total: self.m as u64 * self.g_row_bytes(),
        }
    }
}

/// What a device allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the largest single buffer.
    pub max_buffer: u64,
    /// Bytes of memory available in all (`u64::MAX` where the device cannot tell).
    pub memory: u64,
}

impl Limits {
    pub fn of<B: Backend>(b: &B) -> Self {
        Self {
            max_buffer: b.max_matrix_bytes(),
            memory: b.memory_available().unwrap_or(u64::MAX),
        }
    }
}

/// One buffer a representation needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub buffer: &'static str,
    pub shape: String,
    /// Bytes of the largest single piece (what one device buffer must hold).
    pub piece: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Everything `kind` holds for `shape`: its own buffers and the vectors every step holds.
pub fn needs(kind: CurvatureKind, shape: &Shape, limits: &Limits) -> Vec<Need> {
    let p = shape.p as u64;
    let vectors = Need {
        buffer: "vectors (θ, g, d and CG's)",
        shape: format!("8 × {} f32", shape.p),
        piece: 4 * p,
        total: 32 * p,
    };
    let mut all = vec![vectors];
    all.extend(kind.needs(shape, limits));
    all
}

/// The first need that does not fit: a piece over the largest buffer, or a total over the memory.
fn misfit(needs: &[Need], limits: &Limits) -> Option<(Need, &'static str, u64)> {
    let total: u64 = needs.iter().map(|n| n.total).sum();
    if let Some(n) = needs.iter().find(|n| n.piece > limits.max_buffer) {
        return Some((n.clone(), "largest buffer", limits.max_buffer));
    }
    if total > limits.memory {
        let biggest = needs.iter().max_by_key(|n| n.total).cloned()?;
        return Some((Need { total, ..biggest }, "memory available", limits.memory));
    }
    None
}

fn fits(kind: CurvatureKind, shape: &Shape, limits: &Limits) -> bool {
    misfit(&needs(kind, shape, limits), limits).is_none()
}

/// Checks `kind` fits the device; the error names the buffer, its size, the limit, and a
/// representation that would fit.
pub fn check_fits(kind: CurvatureKind, shape: &Shape, limits: &Limits) -> Result<()> {
    let Some((need, limit_name, limit)) = misfit(&needs(kind, shape, limits), limits) else {
        return Ok(());
    };
    let fitting = CurvatureKind::ALL
        .iter()
        .filter(|k| fits(**k, shape, limits))
        .map(|k| k.name())
        .collect::<Vec<_>>();
    let advice = if fitting.is_empty() {
        "no representation fits: use a smaller model or batch".to_string()
    } else {
        format!("--curvature {} would fit", fitting.join(" or "))
    };
    Err(Error::TooLarge {
        buffer: need.buffer,
        shape: format!("{}, with --curvature {}; {advice}", need.shape, kind.name()),
        bytes: if need.piece > limit { need.piece } else { need.total },
        limit_name,
        limit,
    })
}

/// `--curvature auto`: dense while F is small (p ≤ 8192, and it fits); Woodbury when the batch
/// has fewer score rows than parameters; implicit otherwise; diagonal when nothing exact fits.
/// Returns the choice and why.
pub fn choose(shape: &Shape, limits: &Limits) -> (CurvatureKind, String) {
    let (p, m) = (shape.p, shape.m);
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let dense_bytes = 4 * (p as u64).pow(2);
    if p <= 8192 && fits(CurvatureKind::Dense, shape, limits) {
        return (
            CurvatureKind::Dense,
            format!("the dense Fisher ({p}×{p}, {:.0} MiB) fits", mib(dense_bytes)),
        );
    }
    let why_not_dense = if p > 8192 {
        format!("{p} parameters make a dense Fisher of {:.0} MiB", mib(dense_bytes))
    } else {
        "the dense Fisher does not fit".into()
    };
    if m < p && fits(CurvatureKind::Woodbury, shape, limits) {
        return (
            CurvatureKind::Woodbury,
            format!("{why_not_dense}; {m} score rows < {p} parameters: an {m}×{m} system"),
        );
    }
    if fits(CurvatureKind::Implicit, shape, limits) {
        return (
            CurvatureKind::Implicit,
            format!("{why_not_dense}; G ({m}×{p}) fits, and F is applied without forming it"),
        );
    }
    (
        CurvatureKind::Diagonal,
        format!("{why_not_dense}, and G ({m}×{p}) does not fit: the diagonal approximation"),
    )
}

/// Resolves `choice` for `shape` on a device of `limits`, checking that it fits: the
/// representation and a line that says what was chosen and why.
pub fn resolve(choice: CurvatureChoice, shape: &Shape, limits: &Limits) -> Result<(CurvatureKind, String)> {
    match choice {
        CurvatureChoice::Kind(kind) => {
            check_fits(kind, shape, limits)?;
            Ok((
                kind,
                format!(
                    "curvature: {} ({} score rows of {} parameters per step)",
                    kind.name(),
                    shape.m,
                    shape.p
                ),
            ))
        }
        CurvatureChoice::Auto => {
            let (kind, why) = choose(shape, limits);
            Ok((kind, format!("curvature: auto picked {}: {why}", kind.name())))
        }
    }
}
