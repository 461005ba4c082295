//! The Rust twins of the WGSL structs that cross from host to device (uniform parameters, solver
//! state), declared through `shader_struct!` so that (in tests) each knows its kernel, size and
//! field offsets, and a test that reflects every shader with naga and holds each struct to its twin.

/// Where a struct's fields sit: what the test compares with the shader's own layout.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// The kernel (shader file) that declares the WGSL struct.
    pub kernel: &'static str,
    pub name: &'static str,
    pub size: usize,
    /// (field, byte offset), in declaration order.
    pub fields: Vec<(&'static str, usize)>,
}

/// A `#[repr(C)]` Pod struct that mirrors a WGSL struct.
#[cfg(test)]
pub trait ShaderStruct: bytemuck::Pod {
    fn layout() -> StructLayout;
}

/// Declares a Rust twin of WGSL struct `$name` in `shaders/$kernel.wgsl`: `#[repr(C)]`, Pod, and
/// its layout recorded for the reflection test.
macro_rules! shader_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident in $kernel:literal { $($fvis:vis $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($fvis $field: $ty),*
        }

        #[cfg(test)]
        impl $crate::gpu::layout::ShaderStruct for $name {
            fn layout() -> $crate::gpu::layout::StructLayout {
                $crate::gpu::layout::StructLayout {
                    kernel: $kernel,
                    name: stringify!($name),
                    size: ::std::mem::size_of::<Self>(),
                    fields: vec![$((stringify!($field), ::std::mem::offset_of!(Self, $field))),*],
                }
            }
        }
    };
}
pub(crate) use shader_struct;

/// Every twin: a struct a shader declares for its bindings must be here.
#[cfg(test)]
pub fn twins() -> Vec<StructLayout> {
    use super::{blas2, cg, fisher, linalg, matmul, mlp, optim, pcg};
    vec![
        blas2::Params::layout(),
        cg::Params::layout(),
        pcg::Params::layout(),
        pcg::State::layout(),
        cg::State::layout(),
        fisher::Params::layout(),
        linalg::Params::layout(),
        matmul::Params::layout(),
        mlp::Params::layout(),
        optim::Params::layout(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::shader::{self, KERNELS, Variant};

    /// The structs kernel `name` binds as uniform or storage buffers, as naga lays them out.
    fn reflected(name: &'static str) -> Vec<StructLayout> {
        let source = shader::source(name, &Variant::default()).unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name}.wgsl: {e}"));
        let mut found: Vec<StructLayout> = Vec::new();
        for (_, var) in module.global_variables.iter() {
            if !matches!(
                var.space,
                naga::AddressSpace::Uniform | naga::AddressSpace::Storage { .. }
            ) {
                continue;
            }
            let mut ty = &module.types[var.ty];
            if let naga::TypeInner::Array { base, .. } = ty.inner {
                ty = &module.types[base];
            }
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                continue;
            };
            let struct_name = ty.name.clone().unwrap_or_default();
            if found.iter().any(|s| s.name == struct_name) {
                continue;
            }
            found.push(StructLayout {
                kernel: name,
                name: Box::leak(struct_name.into_boxed_str()),
                size: *span as usize,
                fields: members
                    .iter()
                    .map(|m| {
                        let field: &'static str = Box::leak(m.name.clone().unwrap_or_default().into_boxed_str());
                        (field, m.offset as usize)
                    })
                    .collect(),
            });
        }
        found
    }

    #[test]
    fn every_shader_struct_matches_its_rust_twin() {
        let twins = twins();
        let mut checked = 0;
        for (kernel, _) in KERNELS {
            for wgsl in reflected(kernel) {
                let rust = twins
                    .iter()
                    .find(|t| t.kernel == wgsl.kernel && t.name == wgsl.name)
                    .unwrap_or_else(|| {
                        panic!(
                            "{kernel}.wgsl struct {} has no Rust twin in gpu::layout::twins",
                            wgsl.name
                        )
                    });
                assert_eq!(
                    rust, &wgsl,
                    "{kernel}.wgsl struct {}: Rust and WGSL layouts differ",
                    wgsl.name
                );
                checked += 1;
            }
        }
        assert_eq!(
            checked,
            twins.len(),
            "a twin in gpu::layout::twins matches no shader struct"
        );
    }

    #[test]
    fn a_differing_layout_is_caught() {
        let mut wrong = twins()[0].clone();
        wrong.fields.swap(0, 1);
        assert!(reflected(wrong.kernel).iter().all(|w| w != &wrong));
    }
}
