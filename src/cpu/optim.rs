//! The optimiser updates on the CPU: the twins of `shaders/optim.wgsl`.

use super::Cpu;
use crate::backend::{self, AdamStep, OptimOps};
use crate::error::Result;

/// velocity ← μ·velocity + g; θ ← θ − lr·velocity
pub fn sgd_step(theta: &mut [f32], g: &[f32], velocity: &mut [f32], lr: f32, momentum: f32) {
    for ((t, gi), v) in theta.iter_mut().zip(g).zip(velocity.iter_mut()) {
        *v = momentum * *v + gi;
        *t -= lr * *v;
    }
}

/// One Adam update: the twin of `adam_step` in shaders/optim.wgsl.
pub fn adam_step(theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: AdamStep) {
    let (bias1, bias2) = step.bias_corrections();
    for (((t, gi), mi), vi) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *mi = step.beta1 * *mi + (1.0 - step.beta1) * gi;
        *vi = step.beta2 * *vi + (1.0 - step.beta2) * gi * gi;
        *t -= step.lr * (*mi / bias1) / ((*vi / bias2).sqrt() + step.eps);
    }
}

impl OptimOps for Cpu {
    fn sgd_step(
        &self,
        theta: &mut Vec<f32>,
        g: &Vec<f32>,
        velocity: &mut Vec<f32>,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        backend::check_same_len(theta.len(), g.len())?;
        backend::check_same_len(theta.len(), velocity.len())?;
        sgd_step(theta, g, velocity, lr, momentum);
        Ok(())
    }

    fn adam_step(
        &self,
        theta: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        step: AdamStep,
    ) -> Result<()> {
        for len in [g.len(), m.len(), v.len()] {
            backend::check_same_len(theta.len(), len)?;
        }
        adam_step(theta, g, m, v, step);
        Ok(())
    }
}
