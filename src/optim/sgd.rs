//! SGD with momentum: `velocity ← μ·velocity + g; θ ← θ − lr·velocity`.

use super::{Optimizer, StepInput, UpdateInfo, bad, check_lr};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::Mlp;
use crate::snapshot::Snapshot;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub lr: f32,
    /// μ
    pub momentum: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.1, momentum: 0.9 }
    }
}

impl SgdConfig {
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(bad("--momentum", format!("{} is not in [0, 1)", self.momentum)));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("sgd (lr {}, momentum {})", self.lr, self.momentum)
    }
}

pub struct Sgd<B: Backend> {
    config: SgdConfig,
    velocity: B::Vector,
}

impl<B: Backend> Sgd<B> {
    pub fn new(b: &B, config: SgdConfig, mlp: &Mlp) -> Result<Self> {
        Ok(Self {
            config,
            velocity: b.zeros_vector("SGD velocity", mlp.num_params())?,
        })
    }
}

impl<B: Backend> Optimizer<B> for Sgd<B> {
    fn update(&mut self, b: &B, step: &mut StepInput<'_, B>) -> Result<UpdateInfo> {
        b.begin_phase(crate::backend::Phase::Update);
        let SgdConfig { lr, momentum } = self.config;
        b.sgd_step(step.theta, step.g, &mut self.velocity, lr, momentum)?;
        Ok(UpdateInfo {
            step_size: lr,
            ..Default::default()
        })
    }

    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        snapshot.put_f32("optimizer.velocity", b.download_vector(&self.velocity)?);
        Ok(())
    }

    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()> {
        let p = b.len(&self.velocity);
        self.velocity = b.upload_vector("SGD velocity", &snapshot.f32s("optimizer.velocity", p)?)?;
        Ok(())
    }
}
