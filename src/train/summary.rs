//! What a run reports when it ends: `summary.json`, typed, written once.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::run::RunConfig;
use crate::curvature::{CurvatureKind, PreconditionerKind};
use crate::dist::Op;
use crate::model::{FisherKind, Mlp};

/// The final figures of a run (the command-line contract's `summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub train_loss: f64,
    pub train_objective: f64,
    /// Classification only (null for regression).
    pub train_accuracy: Option<f64>,
    /// With a validation split only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub val: Option<Validation>,
    pub steps: usize,
    pub epochs: usize,
    /// Training time from the first step, without start-up or the per-epoch evaluations.
    pub wall_s: f64,
    pub device: String,
    pub adapter: String,
    /// Every setting (see [`config_json`]).
    pub config: Value,
    /// Stopped by a signal before its last step (it can be resumed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// With `--profile`: mean milliseconds per step by phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_ms_per_step: Option<BTreeMap<String, f64>>,
    /// On a GPU: submissions and host waits per step (the steps only, not the evaluations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<DeviceProfile>,
    /// The ranks of a data-parallel run (absent in one process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    /// Across ranks, per step and by what was summed: what rank 0 handed to collectives, and how
    /// long it waited in them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub communication_per_step: Option<BTreeMap<String, FlowPerStep>>,
}

/// One kind of collective call, per step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FlowPerStep {
    /// the collective operation: `all-reduce`, `broadcast`, `all-gather` or `all-to-all`
    pub collective: Option<Op>,
    pub calls: f64,
    /// bytes this rank handed in (an all-reduce's network traffic is about twice that)
    pub bytes: f64,
    /// milliseconds this rank spent in them, waiting for the others included
    pub ms: f64,
}

/// How often a step handed work to the device and waited for it, per step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DeviceProfile {
    pub submissions_per_step: f64,
    /// Waits of the host on the device: read-backs of the step's scalars and reports.
    pub host_syncs_per_step: f64,
    /// The most waits any one step made.
    pub max_host_syncs_per_step: u64,
}

/// The validation set's final figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// The settings, as summary.json's "config"; `curvature` is the representation natural gradient
/// held (what `auto` resolved to).
pub fn config_json(cfg: &RunConfig, mlp: &Mlp, curvature: Option<CurvatureKind>) -> Value {
    let o = &cfg.optim;
    let draws = match o.ngd.fisher {
        FisherKind::Sampled { draws } => Some(draws),
        _ => None,
    };
    json!({
        "data": cfg.data,
        "task": if mlp.likelihood().is_classification() { "classify" } else { "regress" },
        "hidden": cfg.hidden,
        "activation": cfg.activation.name(),
        "likelihood": mlp.likelihood().name(),
        "parameters": mlp.num_params(),
        "optimizer": o.kind.name(),
        "lr": o.lr(),
        "momentum": o.sgd.momentum,
        "adam_betas": [o.adam.beta1, o.adam.beta2],
        "adam_eps": o.adam.eps,
        "fisher": o.ngd.fisher.name(),
        "draws": draws,
        "curvature": curvature.map_or(o.ngd.curvature.name(), |k| k.name()),
        "damping": o.ngd.damping,
        "adaptive_damping": o.ngd.adaptive_damping,
        "kl": o.ngd.kl,
        "weight_decay": o.weight_decay,
        "curvature_every": o.ngd.curvature_every,
        "inverse_every": o.ngd.settings.kfac.inverse_every,
        "kfac_decay": o.ngd.settings.kfac.decay,
        "kfac_draws": o.ngd.settings.kfac.draws,
        "preconditioner": match o.ngd.settings.preconditioner {
            PreconditionerKind::Kfac => "kfac",
            PreconditionerKind::Diagonal => "diagonal",
            PreconditionerKind::None => "none",
        },
        "warm_start": o.ngd.warm_start,
        "curvature_batch": o.ngd.curvature_batch,
        "cg_progress": o.ngd.settings.cg_progress,
        "cg_iters": o.ngd.cg.max_iters,
        "cg_tol": o.ngd.cg.rel_tol,
        "batch": cfg.batch,
        "epochs": cfg.epochs,
        "steps": cfg.steps,
        "val_split": cfg.val_split,
        "standardize": cfg.standardize,
        "sigma": cfg.sigma,
        "seed": cfg.seed,
    })
}
