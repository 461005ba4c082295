//! A snapshot of training state: named arrays (f32 or f64, exactly as held) and named JSON values,
//! which every stateful piece (trainer, optimisers, curvature representations) writes into and
//! reads back from. `io::state` stores one as `state.safetensors`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// One array of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Named arrays and values; names are dotted paths (`optimizer.velocity`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub tensors: BTreeMap<String, Tensor>,
    pub values: BTreeMap<String, Value>,
}

fn missing(name: &str, what: &str) -> Error {
    Error::Shape(format!("training state: {name} is missing or not {what}"))
}

impl Snapshot {
    pub fn put_f32(&mut self, name: impl Into<String>, data: Vec<f32>) {
        self.tensors.insert(name.into(), Tensor::F32(data));
    }

    pub fn put_f64(&mut self, name: impl Into<String>, data: Vec<f64>) {
        self.tensors.insert(name.into(), Tensor::F64(data));
    }

    pub fn put(&mut self, name: impl Into<String>, value: impl Serialize) {
        self.values
            .insert(name.into(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// The f32 array `name` of `len` values.
    pub fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        match self.tensors.get(name) {
            Some(Tensor::F32(v)) if v.len() == len => Ok(v.clone()),
            _ => Err(missing(name, &format!("{len} f32 values"))),
        }
    }

    /// The f64 array `name` of `len` values.
    pub fn f64s(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        match self.tensors.get(name) {
            Some(Tensor::F64(v)) if v.len() == len => Ok(v.clone()),
            _ => Err(missing(name, &format!("{len} f64 values"))),
        }
    }

    /// Whether there is an array called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The value `name`, as a `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value = self.values.get(name).ok_or_else(|| missing(name, "present"))?;
        serde_json::from_value(value.clone()).map_err(|e| missing(name, &format!("readable ({e})")))
    }
}
