//! Hidden-layer activations and their derivatives, in the forms the GPU kernels use too.

/// A hidden layer's nonlinearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Tanh,
    #[default]
    Relu,
    Sigmoid,
    /// GELU in its tanh form, `½z(1 + tanh(√(2/π)(z + 0.044715z³)))` (PyTorch's `approximate="tanh"`).
    Gelu,
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_A: f64 = 0.044715;

impl Activation {
    pub const ALL: [Activation; 4] = [
        Activation::Tanh,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Gelu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "gelu",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The code the shaders use for it.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// σ(z)
    pub fn apply(self, z: f64) -> f64 {
        match self {
            Activation::Tanh => z.tanh(),
            Activation::Relu => z.max(0.0),
            Activation::Sigmoid => sigmoid(z),
            Activation::Gelu => 0.5 * z * (1.0 + (GELU_C * (z + GELU_A * z * z * z)).tanh()),
        }
    }

    /// σ'(z)
    pub fn derivative(self, z: f64) -> f64 {
        match self {
            Activation::Tanh => 1.0 - z.tanh().powi(2),
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
            Activation::Gelu => {
                let u = GELU_C * (z + GELU_A * z * z * z);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z * z)
            }
        }
    }

    /// The initial weight scale that keeps activations' variance steady through this
    /// nonlinearity: He for the rectifiers, Glorot for the saturating ones.
    pub fn init_std(self, fan_in: usize, fan_out: usize) -> f64 {
        match self {
            Activation::Relu | Activation::Gelu => (2.0 / fan_in as f64).sqrt(),
            Activation::Tanh | Activation::Sigmoid => (2.0 / (fan_in + fan_out) as f64).sqrt(),
        }
    }
}

/// The logistic function, stable for large |z|.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
