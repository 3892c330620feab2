//! The adapter's limits: a batch past them runs in chunks of sequences
//! (tests/it/split.rs); a sequence that alone does not fit is refused with a clear error.

use crate::common;

use unfold::ndarray::Array2;
use unfold::{Error, Rnn, RnnParams, SequenceBatch, Targets};

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
    match rnn.forward(&batch) {
        Err(Error::ExceedsDeviceLimit {
            what,
            needed,
            limit: l,
            ..
        }) => {
            assert!(needed > l);
            assert_eq!(l, limit);
            assert!(what.contains("single sequence"), "{what}");
        }
        Ok(_) => assert!(
            limit >= steps as u64 * 1024 * 4,
            "a sequence over the limit ran"
        ),
        Err(e) => panic!("unexpected error {e}"),
    }
    assert_eq!(rnn.params().expect("params"), params);
}
