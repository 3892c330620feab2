//! GPU memory stays flat over many lifetimes: wgpu's count of live buffers and bind
//! groups on a device does not grow over 50 optimizers on one model (of every kind, some
//! replaced by an imported state, some used through `apply_gradients`), over work
//! buffers replaced for ever larger batches, and over 20 models, and it returns to where
//! it started once they are all gone. Cached bind groups would keep the buffers they bind
//! alive; this is what says they leave with them.

use crate::common;

use unfold::internals::gpu::{live_resources, LiveResources};
use unfold::{Device, Optimizer, Rnn, RnnConfig, SequenceBatch};

fn live(device: &Device) -> LiveResources {
    live_resources(device).expect("wgpu reports its resources")
}

fn optimizer(k: usize) -> Optimizer {
    match k % 3 {
        0 => Optimizer::adam(0.01).clip_grad_norm(1.0),
        1 => Optimizer::sgd_momentum(0.01, 0.9),
        _ => Optimizer::sgd(0.01),
    }
}

/// One optimizer's life on `rnn`: training steps, sometimes gradients applied by hand,
/// sometimes its GPU state replaced by an imported copy (which drops the GPU buffers).
fn optimizer_lifetime(rnn: &mut Rnn, batch: &SequenceBatch, k: usize) {
    let mut opt = optimizer(k);
    rnn.train_step(batch, &mut opt).expect("step");
    if k.is_multiple_of(2) {
        let (_, grads) = rnn.loss_and_gradients(batch).expect("gradients");
        rnn.apply_gradients(&grads, &mut opt).expect("apply");
    }
    if k.is_multiple_of(5) {
        if let Some(state) = opt.export_state().expect("export") {
            opt.import_state(state).expect("import");
            rnn.train_step(batch, &mut opt)
                .expect("step from an imported state");
        }
    }
}

#[test]
fn buffers_and_bind_groups_do_not_pile_up() {
    let Some(gpu) = common::gpu() else { return };
    if live_resources(&gpu).is_none() {
        eprintln!("skipping: wgpu gives no resource report on this backend");
        return;
    }
    let start = live(&gpu);
    let config: RnnConfig = common::config(3, 8, 4, 2, false, false);
    let batch = common::random_batch(&config, &[5, 3, 4], false, 1);
    let mut rnn = Rnn::new(config.clone(), common::params(&config, 2), &gpu).unwrap();
    // every kind of optimizer once, so that everything a model makes lazily is there
    for k in 0..3 {
        optimizer_lifetime(&mut rnn, &batch, k);
    }
    let model = live(&gpu);
    assert!(model.buffers > start.buffers && model.bind_groups > start.bind_groups);
    for k in 0..50 {
        optimizer_lifetime(&mut rnn, &batch, k);
    }
    assert_eq!(live(&gpu), model, "after 50 optimizers on one model");

    // larger batches replace the work buffers: the old ones go, with their groups
    let mut adam = Optimizer::adam(0.01);
    let mut grown = None;
    for n in 4..14 {
        let lengths: Vec<usize> = (0..n).map(|i| 3 + (i * 7 + n) % 9).collect();
        let bigger = common::random_batch(&config, &lengths, false, 3);
        rnn.train_step(&bigger, &mut adam).expect("a larger batch");
        let now = live(&gpu);
        assert_eq!(
            *grown.get_or_insert(now),
            now,
            "work buffers for {n} sequences"
        );
    }
    drop(adam);

    // models come and go, some dropped before their optimizer
    drop(rnn);
    assert_eq!(live(&gpu), start, "the model and its optimizers are gone");
    for k in 0..21 {
        let mut rnn = Rnn::new(config.clone(), common::params(&config, k), &gpu).unwrap();
        let mut opt = optimizer(k as usize);
        rnn.train_step(&batch, &mut opt).unwrap();
        rnn.forward(&batch).unwrap();
        if k.is_multiple_of(2) {
            drop(rnn);
            drop(opt);
        } else {
            drop(opt);
            drop(rnn);
        }
        assert_eq!(live(&gpu), start, "after model {k}");
    }
}
