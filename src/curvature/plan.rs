//! The memory plan: what each representation holds for a problem's shape, whether it fits the
//! device (its largest buffer, and the memory available), and `--curvature auto`'s choice. Every
//! size is checked here before anything is allocated; the refusal names the buffer, its size, the
//! limit and a representation that would fit.

use super::CurvatureKind;
use crate::backend::Backend;
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp};

/// `--curvature`: a representation, or `auto` (chosen by [`choose`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Examples per step.
    pub n: usize,
    /// The layers' (fan_in, fan_out).
    pub layers: Vec<(usize, usize)>,
}

impl Shape {
    /// The shape of natural gradient on `mlp` with batches of `examples` and the Fisher `kind`.
    pub fn of(mlp: &Mlp, examples: usize, kind: FisherKind) -> Self {
        Self {
            p: mlp.num_params(),
            m: examples * kind.rows_per_example(mlp.likelihood()),
            blocks: mlp.layers().iter().map(|l| l.len()).collect(),
            n: examples,
            layers: mlp.layers().iter().map(|l| (l.fan_in, l.fan_out)).collect(),
        }
    }

    /// The batch's per-layer scratch of a backward pass over all m score rows (m × Σ fan_out f32),
    /// and the forward-mode tangents (n × Σ fan_out): what the matrix-free and K-FAC passes hold.
    pub(crate) fn pass_scratch(&self) -> Need {
        let widths: u64 = self.layers.iter().map(|l| l.1 as u64).sum();
        let widest = self.layers.iter().map(|l| l.1 as u64).max().unwrap_or(0);
        let rows = self.m.max(self.n) as u64;
        Need {
            buffer: "backward scratch and tangents (score rows × layer widths)",
            shape: format!("{}×{widths} f32", self.m.max(self.n)),
            piece: 4 * rows * widest,
            total: 4 * (rows + self.n as u64) * widths,
        }
    }

    /// Bytes of one row of G on a device (a GPU matrix pads rows to whole vec4s).
    fn g_row_bytes(&self) -> u64 {
        4 * self.p.next_multiple_of(4) as u64
    }

    /// Bytes of the largest chunk of G's rows one device buffer of `max_buffer` bytes holds.
    pub(crate) fn g_chunk_bytes(&self, limits: &Limits) -> u64 {
        let row = self.g_row_bytes();
        match super::scores::rows_per_chunk(limits.max_buffer, self.p) {
            // the smallest chunk, over the limit: the plan refuses it
            0 => super::scores::MIN_CHUNK_ROWS as u64 * row,
            fit => fit.min(self.m.max(1)) as u64 * row,
        }
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

    /// The least of every rank's `local` limits: what every rank plans within, so that all
    /// choose the same representation (and so the same collectives) or refuse together.
    pub fn least_of(comm: &dyn Collective, local: Limits) -> Result<Limits> {
        let all = dist::gather_f64(comm, "device limits", &[local.max_buffer as f64, local.memory as f64])?;
        // f64 holds byte counts exactly to 8 PiB, and u64::MAX (unknown) converts back to itself
        let least = |k: usize| all.chunks_exact(2).map(|r| r[k]).fold(f64::INFINITY, f64::min) as u64;
        Ok(Limits {
            max_buffer: least(0),
            memory: least(1),
        })
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

/// Parameter-sized vectors a natural-gradient step holds: θ, the last good θ, g, the weight mask,
/// d, CG's four, D, and the host's copies for initialisation and checkpoints.
pub const NGD_VECTORS: u64 = 12;

/// `count` vectors of p f32 each, as a need (a piece is one vector).
pub fn vectors(count: u64, p: usize) -> Need {
    Need {
        buffer: "parameter vectors",
        shape: format!("{p} f32 each, {count} of them"),
        piece: 4 * p as u64,
        total: 4 * count * p as u64,
    }
}

/// Everything `kind` holds for `shape`: its own buffers and the vectors every step holds.
pub fn needs(kind: CurvatureKind, shape: &Shape, limits: &Limits) -> Vec<Need> {
    let mut all = vec![vectors(NGD_VECTORS, shape.p)];
    all.extend(kind.needs(shape, limits));
    all
}

/// Checks that `needs` fit the device: the first that does not, named with its size and the
/// limit it breaks, and `advice` on what would fit.
pub fn check(needs: &[Need], limits: &Limits, context: &str, advice: &str) -> Result<()> {
    let Some((need, limit_name, limit)) = misfit(needs, limits) else {
        return Ok(());
    };
    Err(Error::TooLarge {
        buffer: need.buffer,
        shape: format!("{}{context}; {advice}", need.shape),
        bytes: if need.piece > limit { need.piece } else { need.total },
        limit_name,
        limit,
    })
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
    if fits(kind, shape, limits) {
        return Ok(());
    }
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
    check(
        &needs(kind, shape, limits),
        limits,
        &format!(", with --curvature {}", kind.name()),
        &advice,
    )
}

/// What a step's cost depends on beyond the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    /// Most CG iterations per step.
    pub cg_iters: usize,
    /// K-FAC: steps between inverse refreshes.
    pub inverse_every: usize,
}

/// The floating-point work of one natural-gradient step with `kind`, the cost model behind
/// `auto` (checked against `natgrad bench`'s `ngd_step_*` in the README). With L the weights
/// (Σ fan_in·fan_out) and m the score rows: a pass over the batch is 2nL, back-propagating every
/// score row 2mL; the dense Fisher is m·p² to build and 2p² per CG iteration; Woodbury's Gram
/// matrix m²·p; a matrix-free product three passes; K-FAC's statistics m·Σout² + n·Σin², its
/// Cholesky inverses about 2·Σ(in³ + out³) every `inverse_every` steps, its step two small
/// products per layer, and one forward-mode pass for the trust region; host work and small
/// dispatches are counted as the flops they take the time of.
pub fn step_flops(kind: CurvatureKind, shape: &Shape, cadence: Cadence) -> f64 {
    let (p, m, n) = (shape.p as f64, shape.m as f64, shape.n as f64);
    let iters = cadence.cg_iters as f64;
    let weights: f64 = shape.layers.iter().map(|&(i, o)| (i * o) as f64).sum();
    let pass = 2.0 * n * weights;
    let backprop_rows = 2.0 * m * weights;
    let product = 3.0 * pass;
    let kron: f64 = shape
        .layers
        .iter()
        .map(|&(i, o)| 2.0 * (o * (i + 1)) as f64 * ((i + 1) + o) as f64)
        .sum();
    let statistics: f64 = backprop_rows
        + shape
            .layers
            .iter()
            .map(|&(i, o)| 2.0 * (m * (o * o) as f64 + n * ((i + 1) * (i + 1)) as f64))
            .sum::<f64>();
    let inverses: f64 = shape
        .layers
        .iter()
        .map(|&(i, o)| 2.0 * (((i + 1).pow(3) + o.pow(3)) as f64))
        .sum::<f64>()
        / cadence.inverse_every.max(1) as f64;
    match kind {
        CurvatureKind::Dense => backprop_rows + m * p * p + iters * 2.0 * p * p,
        CurvatureKind::Woodbury => backprop_rows + m * m * p + iters.max(m) * 2.0 * m * m + 4.0 * m * p,
        CurvatureKind::Implicit => {
            statistics + inverses + KFAC_HOST_FLOPS + iters * (product + kron + CG_ITERATION_FLOPS)
        }
        CurvatureKind::Kfac => statistics + inverses + KFAC_HOST_FLOPS + kron + pass,
        CurvatureKind::Block => {
            let blocks: f64 = shape.blocks.iter().map(|&b| (b * b) as f64).sum();
            backprop_rows + m * blocks + iters * 2.0 * blocks
        }
        CurvatureKind::Diagonal => backprop_rows + 2.0 * m * p,
    }
}

/// K-FAC's work per step that flops do not count, as flops: downloading the factors, their moving
/// average and inverses on the host, uploading the inverses. About 0.3 ms a step on the
/// development machine's CPU, where small products run near 20 GFLOP/s (README: the race).
const KFAC_HOST_FLOPS: f64 = 6e6;
/// A matrix-free CG iteration's fixed cost beyond its passes (a dozen small dispatches and host
/// dot products), as flops: about 0.1 ms.
const CG_ITERATION_FLOPS: f64 = 2e6;

/// How much more work per step an exact representation may cost than K-FAC and still be chosen
/// by `auto`. On digits K-FAC reaches a target loss in about as many steps as the exact Fisher,
/// so the exact step must cost about as little; on spirals (3 classes, 195 parameters) the dense
/// Fisher's step costs 3× K-FAC's and reaches 0.05 as soon, and 0.01 where K-FAC stalls.
const EXACT_PREMIUM: f64 = 4.0;

/// `--curvature auto`: by the memory plan and the cost model ([`step_flops`]). The cheapest exact
/// representation that fits (dense, Woodbury, matrix-free implicit) when it costs at most
/// [`EXACT_PREMIUM`]× K-FAC's step; otherwise K-FAC; the diagonal when nothing else fits.
/// Returns the choice and why.
pub fn choose(shape: &Shape, limits: &Limits, cadence: Cadence) -> (CurvatureKind, String) {
    let cost = |k| step_flops(k, shape, cadence);
    let mflop = |k| cost(k) / 1e6;
    let exact = [CurvatureKind::Dense, CurvatureKind::Woodbury, CurvatureKind::Implicit]
        .into_iter()
        .filter(|&k| fits(k, shape, limits))
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)));
    let kfac = fits(CurvatureKind::Kfac, shape, limits).then_some(CurvatureKind::Kfac);
    match (exact, kfac) {
        (Some(e), Some(k)) if cost(e) <= EXACT_PREMIUM * cost(k) => (
            e,
            format!(
                "the exact {} step costs {:.3} MFLOP, within {EXACT_PREMIUM}× K-FAC's {:.3}",
                e.name(),
                mflop(e),
                mflop(k)
            ),
        ),
        (Some(e), Some(k)) => (
            k,
            format!(
                "K-FAC's step costs {:.3} MFLOP, the cheapest exact one ({}) {:.0}× that",
                mflop(k),
                e.name(),
                cost(e) / cost(k)
            ),
        ),
        (Some(e), None) => (
            e,
            format!("K-FAC does not fit; {} is the cheapest exact step that does", e.name()),
        ),
        (None, Some(k)) => (k, "no exact representation fits".into()),
        (None, None) => (
            CurvatureKind::Diagonal,
            "nothing else fits: the diagonal approximation".into(),
        ),
    }
}

/// Resolves `choice` for `shape` on a device of `limits`, checking that it fits: the
/// representation and a line that says what was chosen and why.
pub fn resolve(
    choice: CurvatureChoice,
    shape: &Shape,
    limits: &Limits,
    cadence: Cadence,
) -> Result<(CurvatureKind, String)> {
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
            let (kind, why) = choose(shape, limits, cadence);
            // the diagonal is auto's last resort: when even it does not fit, say what does not
            check_fits(kind, shape, limits)?;
            Ok((kind, format!("curvature: auto picked {}: {why}", kind.name())))
        }
    }
}
