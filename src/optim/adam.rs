//! Adam (Kingma & Ba 2015): bias-corrected first and second moments of the gradient.

use super::{Optimizer, StepInput, UpdateInfo, bad, check_lr};
use crate::backend::{AdamStep, Backend};
use crate::error::Result;
use crate::model::Mlp;
use crate::snapshot::Snapshot;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamConfig {
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        let unit = |v: f32| (0.0..1.0).contains(&v);
        if !(unit(self.beta1) && unit(self.beta2) && self.eps.is_finite() && self.eps > 0.0) {
            return Err(bad(
                "Adam's β1, β2, ε",
                format!("{}, {}, {}", self.beta1, self.beta2, self.eps),
            ));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("adam (lr {})", self.lr)
    }
}

pub struct Adam<B: Backend> {
    config: AdamConfig,
    m: B::Vector,
    v: B::Vector,
    /// steps taken (the bias corrections' t)
    t: u32,
}

impl<B: Backend> Adam<B> {
    pub fn new(b: &B, config: AdamConfig, mlp: &Mlp) -> Result<Self> {
        let p = mlp.num_params();
        Ok(Self {
            config,
            m: b.zeros_vector("Adam first moment", p)?,
            v: b.zeros_vector("Adam second moment", p)?,
            t: 0,
        })
    }
}

impl<B: Backend> Optimizer<B> for Adam<B> {
    fn update(&mut self, b: &B, step: &mut StepInput<'_, B>) -> Result<UpdateInfo> {
        b.begin_phase(crate::backend::Phase::Update);
        self.t += 1;
        let AdamConfig { lr, beta1, beta2, eps } = self.config;
        let adam = AdamStep {
            lr,
            beta1,
            beta2,
            eps,
            t: self.t,
        };
        b.adam_step(step.theta, step.g, &mut self.m, &mut self.v, adam)?;
        Ok(UpdateInfo {
            step_size: lr,
            ..Default::default()
        })
    }

    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        snapshot.put_f32("optimizer.m", b.download_vector(&self.m)?);
        snapshot.put_f32("optimizer.v", b.download_vector(&self.v)?);
        snapshot.put("optimizer.t", self.t);
        Ok(())
    }

    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()> {
        let p = b.len(&self.m);
        self.m = b.upload_vector("Adam first moment", &snapshot.f32s("optimizer.m", p)?)?;
        self.v = b.upload_vector("Adam second moment", &snapshot.f32s("optimizer.v", p)?)?;
        self.t = snapshot.get("optimizer.t")?;
        Ok(())
    }
}
