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
