//! Adapter choice through `WGPU_ADAPTER_NAME`. Alone in its test binary because it
//! changes the process environment.

use unfold::{Device, Error};

#[test]
fn unknown_adapter_name_is_no_adapter() {
    std::env::set_var("WGPU_ADAPTER_NAME", "no such adapter 7f3a");
    let err = Device::gpu().expect_err("no adapter has that name");
    std::env::remove_var("WGPU_ADAPTER_NAME");
    assert!(matches!(err, Error::NoAdapter { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("WGPU_ADAPTER_NAME") && msg.contains("mesa-vulkan-drivers"),
        "{msg}"
    );
}
