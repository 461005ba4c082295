//! Every shader, in every variant natgrad builds, parses and validates with naga, without a GPU.

use natgrad::gpu::shader::{self, KERNELS, Variant};

/// Every specialisation the GPU backend can ask for.
fn variants(kernel: &str) -> Vec<Variant> {
    let reductions = [false, true].map(|on| Variant::default().define("SUBGROUPS", on));
    match kernel {
        "fisher" => [1, 2].map(|nb| Variant::default().with_u32("NB", nb)).to_vec(),
        _ => reductions.to_vec(),
    }
}

fn validate(name: &str, source: &str, subgroups: bool) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let caps = if subgroups {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::empty()
    };
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if subgroups {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .map(|_| ())
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))
}

#[test]
fn every_kernel_variant_validates() {
    for (name, _) in KERNELS {
        for variant in variants(name) {
            let source = shader::source(name, &variant).unwrap_or_else(|e| panic!("{name}: {e}"));
            if let Err(e) = validate(name, &source, variant.uses_subgroups()) {
                panic!("{name} {variant:?} does not validate:\n{e}");
            }
        }
    }
}

#[test]
fn subgroup_variants_need_the_subgroup_capability() {
    let source = shader::source("linalg", &Variant::default().define("SUBGROUPS", true)).unwrap();
    assert!(
        validate("linalg", &source, false).is_err(),
        "validation without SUBGROUP must reject subgroup operations"
    );
}

#[test]
fn validation_rejects_a_broken_shader() {
    let source = shader::source("linalg", &Variant::default()).unwrap();
    let (good, bad) = ("dot(x[i], x2[i])", "dot(x[i], 1u)");
    assert!(source.contains(good), "the shader changed: update this test's pattern");
    assert!(validate("broken", &source.replace(good, bad), false).is_err());
}

#[test]
fn every_wgsl_file_is_a_registered_kernel() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "wgsl").then(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))?
        })
        .collect();
    files.sort();
    let mut registered: Vec<String> = KERNELS.iter().map(|(n, _)| n.to_string()).collect();
    registered.sort();
    assert_eq!(files, registered, "shaders/*.wgsl and gpu::shader::KERNELS differ");
}
