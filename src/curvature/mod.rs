//! How natural gradient holds the curvature `A = F + wd·D_W + λI` (F the Fisher of the batch, D_W
//! the weights' diagonal): one file per representation behind the [`Curvature`] trait, registered
//! in one line of [`representations!`]; [`plan`] picks one (`auto`) and checks that it fits the
//! device before anything is allocated.
//!
//! - `dense`: F itself, p×p, solved by the device's dense CG (fused on the GPU).
//! - `implicit`: only the score rows G (m×p); `Av = Gᵀ(Gv)/n + Dv`, never forming F.
//! - `woodbury`: the m×m system `(nI + G D⁻¹ Gᵀ) u = G D⁻¹ g` when m < p.
//! - `block`: one dense block per layer (the cross-layer curvature dropped).
//! - `diagonal`: the mean of the squared scores (the Adam-like approximation).
//! - `kfac`: per layer the Kronecker factors `A = E[āāᵀ]`, `S = E[δδᵀ]` (Martens & Grosse 2015).
//!
//! `implicit` applies the exact F matrix-free and solves by CG, preconditioned by K-FAC's factors
//! unless told otherwise.

mod block;
mod dense;
mod diagonal;
pub mod factors;
mod implicit;
mod kfac;
pub mod plan;
mod rows;
pub mod scores;
mod woodbury;

use crate::backend::{Backend, CgParams, CgReport};
use crate::dist::Ranks;
use crate::error::Result;
use crate::model::{FisherKind, Mlp, SampleKey};
use crate::snapshot::Snapshot;

pub use factors::KfacSettings;
pub use plan::{CurvatureChoice, Limits, Need, Shape};

/// Settings the representations share, beyond the batch: K-FAC's averaging and cadence, and how
/// matrix-free CG is preconditioned.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvatureSettings {
    pub kfac: KfacSettings,
    pub preconditioner: PreconditionerKind,
    /// Matrix-free CG also stops when its quadratic model improves by less than this per
    /// iteration, relatively (Martens 2010's rule, ε; 0 turns it off).
    pub cg_progress: f32,
}

impl Default for CurvatureSettings {
    fn default() -> Self {
        Self {
            kfac: KfacSettings::default(),
            preconditioner: PreconditionerKind::default(),
            // Martens uses 5e-4; on the race 5e-3 stopped K-FAC-preconditioned CG sooner with
            // no more steps to the target loss (README: the race)
            cg_progress: 5e-3,
        }
    }
}

/// `--preconditioner`: what matrix-free CG (`implicit`) is preconditioned with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum PreconditionerKind {
    /// K-FAC's damped Kronecker factors: on the race, CG stopped early gives a better direction.
    #[default]
    Kfac,
    /// The diagonal of K-FAC's factors (Jacobi).
    Diagonal,
    None,
}

/// Where the curvature is taken: the model at θ on a batch whose forward pass at θ is done, the
/// Fisher's kind and draws' key, the weight decay whose curvature `wd·D_W` joins F, and the
/// ranks the batch is split across (a representation's means over the batch go through them).
pub struct At<'a, B: Backend> {
    pub mlp: &'a Mlp,
    pub theta: &'a B::Vector,
    pub batch: &'a mut B::Batch,
    pub fisher: FisherKind,
    pub key: SampleKey,
    pub weight_decay: f32,
    pub ranks: Ranks<'a>,
}

/// A curvature representation on a device: built on a batch, then solved with and measured.
pub trait Curvature<B: Backend> {
    /// Records, ahead of the step's first wait, the device work of the next
    /// [`Curvature::build`] whose results the host reads back (K-FAC's statistics), so that they
    /// come back with the step's loss. Nothing for the representations that read nothing back.
    fn prefetch(&mut self, _b: &B, _at: &mut At<'_, B>) -> Result<()> {
        Ok(())
    }
    /// Builds (or refreshes) the representation at `at`.
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()>;
    /// Solves `(C + wd·D_W + λI) d = g` from the `d` given (C: this representation's F).
    fn solve(
        &mut self,
        b: &B,
        at: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport>;
    /// `dᵀ(C + wd·D_W + λI)d`: the trust region's measure of a step.
    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64>;

    /// Writes what outlives a step into `snapshot` (names under `curvature.`): nothing for the
    /// representations rebuilt from each batch, K-FAC's averaged factors and inverses.
    fn save(&self, _b: &B, _snapshot: &mut Snapshot) -> Result<()> {
        Ok(())
    }

    /// Restores what [`Curvature::save`] wrote.
    fn load(&mut self, _b: &B, _snapshot: &Snapshot) -> Result<()> {
        Ok(())
    }

    /// Whether [`Curvature::save`] keeps all of it; if not, a resumed run rebuilds it at its
    /// first step (the same step an unbroken run takes when it rebuilds every step).
    fn persists(&self) -> bool {
        false
    }
}

/// What registers a representation: its name, the memory it needs, and how it is made.
pub trait Representation {
    /// Its `--curvature` name.
    const NAME: &'static str;
    /// The buffers it holds for `shape` on a device of `limits` (the plan adds the vectors every
    /// representation holds).
    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need>;
    /// Allocates it on `b` for `mlp`.
    fn create<'a, B: Backend + 'a>(
        b: &B,
        mlp: &Mlp,
        settings: &CurvatureSettings,
    ) -> Result<Box<dyn Curvature<B> + 'a>>;
}

/// Registers each representation: `Variant => file::Type`, one line each. Generates
/// [`CurvatureKind`] and its dispatch to the representation's [`Representation`] impl.
macro_rules! representations {
    ($($variant:ident => $ty:path),* $(,)?) => {
        /// A curvature representation (`--curvature NAME`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum CurvatureKind {
            $($variant),*
        }

        impl CurvatureKind {
            pub const ALL: &'static [CurvatureKind] = &[$(CurvatureKind::$variant),*];

            /// Every `--curvature` value: auto, then each representation.
            const CHOICES: &'static [CurvatureChoice] =
                &[CurvatureChoice::Auto, $(CurvatureChoice::Kind(CurvatureKind::$variant)),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(CurvatureKind::$variant => <$ty as Representation>::NAME),*
                }
            }

            /// The buffers it holds for `shape`, beyond the plan's vectors.
            pub fn needs(self, shape: &Shape, limits: &Limits) -> Vec<Need> {
                match self {
                    $(CurvatureKind::$variant => <$ty as Representation>::needs(shape, limits)),*
                }
            }

            /// Allocates it on `b` for `mlp`.
            pub fn create<'a, B: Backend + 'a>(
                self,
                b: &B,
                mlp: &Mlp,
                settings: &CurvatureSettings,
            ) -> Result<Box<dyn Curvature<B> + 'a>> {
                match self {
                    $(CurvatureKind::$variant => <$ty as Representation>::create(b, mlp, settings)),*
                }
            }
        }
    };
}

representations! {
    Dense => dense::Dense,
    Implicit => implicit::Implicit,
    Woodbury => woodbury::Woodbury,
    Block => block::Block,
    Diagonal => diagonal::Diagonal,
    Kfac => kfac::Kfac,
}

/// `--curvature auto|dense|...`: the values are the registered representations' names.
impl clap::ValueEnum for CurvatureChoice {
    fn value_variants<'a>() -> &'a [Self] {
        CurvatureKind::CHOICES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl CurvatureKind {
    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

/// `D = λ + wd·D_W` on the device, uploaded again only when λ or wd change: the damping of the
/// representations that keep it apart from their F.
pub(crate) struct DampingDiagonal<B: Backend> {
    weight_mask: Vec<f32>,
    current: Option<(f32, f32, B::Vector)>,
}

impl<B: Backend> DampingDiagonal<B> {
    pub fn new(mlp: &Mlp) -> Self {
        Self {
            weight_mask: mlp.weight_mask(),
            current: None,
        }
    }

    /// D's entries on the host.
    pub fn host(&self, damping: f32, weight_decay: f32) -> Vec<f32> {
        self.weight_mask.iter().map(|m| damping + weight_decay * m).collect()
    }

    /// D on the device.
    pub fn get(&mut self, b: &B, damping: f32, weight_decay: f32) -> Result<&B::Vector> {
        let current = match self.current.take() {
            Some(entry) if entry.0 == weight_decay && entry.1 == damping => entry,
            _ => (
                weight_decay,
                damping,
                b.upload_vector("damping diagonal D", &self.host(damping, weight_decay))?,
            ),
        };
        Ok(&self.current.insert(current).2)
    }
}
