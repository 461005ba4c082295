//! Parameters of the elementwise optimiser updates that both devices implement.

/// Settings of one Adam update (step t counts from 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub t: u32,
}

impl AdamStep {
    /// The bias corrections 1 − β1ᵗ and 1 − β2ᵗ.
    pub fn bias_corrections(&self) -> (f32, f32) {
        (
            1.0 - self.beta1.powi(self.t as i32),
            1.0 - self.beta2.powi(self.t as i32),
        )
    }
}
