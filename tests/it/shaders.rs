//! Every WGSL file parses and validates with naga, without any adapter.

use std::collections::BTreeSet;

#[test]
fn every_shader_validates() {
    for (name, source) in unfold::internals::gpu::shaders::ALL {
        if let Err(e) = unfold::internals::gpu::shaders::validate(name, source) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_cooperative_matrix_product_validates_for_each_adapter_header() {
    let variants = unfold::internals::gpu::shaders::coop_variants();
    assert_eq!(
        variants.len(),
        4,
        "16×16 fragments (NVIDIA) and 8×8 (lavapipe), 64×64 and 128×128 tiles"
    );
    for (name, source) in &variants {
        if let Err(e) = unfold::internals::gpu::shaders::validate_coop(name, source) {
            panic!("{e}");
        }
        // it needs the capabilities a cooperative-matrix device enables
        assert!(
            unfold::internals::gpu::shaders::validate(name, source).is_err(),
            "{name} validated without f16, subgroups and cooperative matrices"
        );
    }
}

#[test]
fn every_file_in_shaders_is_registered() {
    let on_disk: BTreeSet<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"))
            .expect("shaders/ exists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wgsl"))
            .collect();
    let registered: BTreeSet<String> = unfold::internals::gpu::shaders::ALL
        .iter()
        .map(|(n, _)| n.to_string())
        // the cooperative-matrix product is validated with each adapter header
        .chain(
            unfold::internals::gpu::shaders::coop_variants()
                .into_iter()
                .map(|(n, _)| n.split(' ').next().unwrap_or_default().to_string()),
        )
        .collect();
    assert_eq!(on_disk, registered);
}

#[test]
fn a_broken_shader_is_reported() {
    let err =
        unfold::internals::gpu::shaders::validate("broken.wgsl", "fn f() -> f32 { return 1u; }")
            .unwrap_err();
    assert!(err.contains("broken.wgsl"), "{err}");
}
