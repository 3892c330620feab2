//! The adapter's limits: a batch past them runs in chunks of sequences
//! (tests/it/split.rs); a sequence that alone does not fit is refused with a clear error.

use crate::common;

use unfold::ndarray::Array2;
use unfold::{Device, Error, Rnn, RnnParams, SequenceBatch, Targets};

#[test]
fn adapter_limits_give_a_clear_error() {
    let Some(gpu) = common::gpu() else { return };
    let config = common::config(1, 1024, 1, 1, false, false);
    let params = RnnParams::init(&config, 0);
    let mut rnn = Rnn::new(config, params.clone(), &gpu).expect("model fits");
    // one sequence of 40,000 steps x 1024 hidden units of f32 is 160 MB of states: more
    // than lavapipe's 128 MiB storage binding, and no split of the batch helps (refused
    // on any adapter whose limit is below that)
    let steps = 40_000;
    let inputs = vec![Array2::zeros((steps, 1))];
    let batch = SequenceBatch::new(inputs, Targets::Classes(vec![vec![0; steps]])).expect("batch");
    let limit = unfold::internals::gpu::max_storage_binding(&gpu).expect("gpu device");
    // the buffer that does not fit: one layer's states, worked out here
    let states_bytes = steps as u64 * 1024 * 4;
    match rnn.forward(&batch) {
        Err(e @ Error::ExceedsDeviceLimit { .. }) => {
            let message = e.to_string();
            let Error::ExceedsDeviceLimit {
                what,
                needed,
                limit: l,
                hint,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(l, limit);
            assert_eq!(needed, states_bytes, "{what}");
            assert!(needed > l);
            assert!(
                what.contains("one layer's states") && what.contains("single sequence"),
                "{what}"
            );
            assert!(hint.contains("shorter sequences"), "{hint}");
            // the message says what needs how much, and what the adapter allows
            assert!(
                message.contains(&format!(
                    "needs {needed} but the adapter allows at most {l}"
                )),
                "{message}"
            );
        }
        Ok(_) => assert!(limit >= states_bytes, "a sequence over the limit ran"),
        Err(e) => panic!("unexpected error {e}"),
    }
    assert_eq!(rnn.params().expect("params"), params);
    // the refusal left the model whole: a batch that fits runs, as on the CPU
    let small = common::random_batch(rnn.config(), &[5, 2], false, 3);
    let got = rnn.forward(&small).expect("a batch that fits");
    let mut cpu = Rnn::new(rnn.config().clone(), params, &unfold::Device::cpu()).expect("cpu");
    let want = cpu.forward(&small).expect("cpu forward");
    common::assert_close(
        "outputs after a refused batch",
        &common::flat(&got.outputs),
        &common::flat(&want.outputs),
        1e-4,
    );
}

/// `Device::gpu_at(i)` takes the `i`-th of the adapters like `Device::gpu`'s (its backend
/// and device type, among those `WGPU_ADAPTER_NAME` matches), in wgpu's order, and wraps
/// around past them: index 0 is `Device::gpu`'s adapter.
#[test]
fn gpu_at_counts_the_adapters_like_the_default_one_and_wraps_around() {
    let Some(gpu) = common::gpu() else { return };
    let describe =
        |a: &wgpu::AdapterInfo| format!("GPU {}", unfold::internals::gpu::describe_adapter(a));
    let all = unfold::internals::gpu::list_adapters();
    let chosen = all
        .iter()
        .find(|a| describe(a) == gpu.describe())
        .expect("Device::gpu's adapter is listed");
    let want = std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .map(|n| n.to_lowercase());
    let peers: Vec<String> = all
        .iter()
        .filter(|a| a.backend == chosen.backend && a.device_type == chosen.device_type)
        .filter(|a| {
            want.as_ref()
                .is_none_or(|n| a.name.to_lowercase().contains(n))
        })
        .map(describe)
        .collect();
    assert_eq!(peers[0], gpu.describe(), "{peers:?}");
    for (i, expected) in peers.iter().enumerate() {
        assert_eq!(
            &Device::gpu_at(i).unwrap().describe(),
            expected,
            "index {i}"
        );
    }
    // one more than there are: the first again
    let wrapped = Device::gpu_at(peers.len()).unwrap();
    assert_eq!(wrapped.describe(), peers[0]);
}
