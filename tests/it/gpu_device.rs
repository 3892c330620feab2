//! The adapter's limits: work that does not fit is refused with a clear error.

use crate::common;

use unfold::ndarray::Array2;
use unfold::{Error, Rnn, RnnParams, SequenceBatch, Targets};

#[test]
fn adapter_limits_give_a_clear_error() {
    let Some(gpu) = common::gpu() else { return };
    let config = common::config(1, 1024, 1, 1, false, false);
    let params = RnnParams::init(&config, 0);
    let mut rnn = Rnn::new(config, params.clone(), &gpu).expect("model fits");
    // 40 sequences x 1000 steps x 1024 hidden units of f32 is 160 MB of states per layer:
    // more than lavapipe's 128 MiB storage binding (and refused, not split, on any adapter
    // whose limit is below that)
    let inputs = vec![Array2::zeros((1000, 1)); 40];
    let batch =
        SequenceBatch::new(inputs, Targets::Classes(vec![vec![0; 1000]; 40])).expect("batch");
    let limit = unfold::internals::gpu::max_storage_binding(&gpu).expect("gpu device");
    match rnn.forward(&batch) {
        Err(Error::ExceedsDeviceLimit {
            needed, limit: l, ..
        }) => {
            assert!(needed > l);
            assert_eq!(l, limit);
        }
        Ok(_) => assert!(limit >= 40 * 1000 * 1024 * 4, "a batch over the limit ran"),
        Err(e) => panic!("unexpected error {e}"),
    }
    assert_eq!(rnn.params().expect("params"), params);
}
