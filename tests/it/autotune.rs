//! `Rnn::autotune`: the plans it keeps run the same numbers (within rounding) as the
//! built-in ones, it never keeps a slower plan than it measured, it tunes a shape once
//! per device, it respects its budget, and on the CPU it does nothing.

use crate::common;

use std::time::Duration;
use unfold::internals::TimeLoop;
use unfold::{Cell, Device, Rnn, RnnConfig, RnnParams};

/// Long enough for the per-step and K-split products to show up, small for lavapipe.
fn model(cell: Cell) -> (RnnConfig, unfold::SequenceBatch) {
    let config = RnnConfig::new(6, 40, 5).cell(cell).num_layers(2);
    let batch = common::random_batch(&config, &[30, 7, 22, 30], false, 3);
    (config, batch)
}

#[test]
fn tuned_plans_give_the_same_loss_and_gradients() {
    let Some(gpu) = common::gpu() else { return };
    for cell in [Cell::Tanh, Cell::Lstm] {
        let (config, batch) = model(cell);
        let params = RnnParams::init(&config, 1);
        let mut rnn = Rnn::new(config.clone(), params.clone(), &gpu).unwrap();
        // the time loop autotuning may choose between: not the persistent one
        rnn.set_time_loop(TimeLoop::Auto).unwrap();
        let (loss, grads) = rnn.loss_and_gradients(&batch).unwrap();

        let report = rnn.autotune(&batch, Duration::from_secs(30)).unwrap();
        assert!(!report.products.is_empty(), "{cell}: nothing tuned");
        assert!(
            report.skipped.is_empty(),
            "{cell}: {:?} over budget",
            report.skipped
        );
        for t in &report.products {
            assert!(
                t.chosen.1 <= t.before.1,
                "{cell}: kept {:?} slower than {:?}",
                t.chosen,
                t.before
            );
        }
        // hidden 40 runs persistent under Auto: no time loop to choose
        assert!(report.time_loops.is_empty(), "{:?}", report.time_loops);
        assert_eq!(rnn.time_loop(), TimeLoop::Auto);

        let (tuned_loss, tuned_grads) = rnn.loss_and_gradients(&batch).unwrap();
        common::assert_close(&format!("{cell} loss"), &[tuned_loss], &[loss], 1e-5);
        common::assert_params_close(&format!("{cell} gradients"), &tuned_grads, &grads, 1e-5);
        assert_eq!(
            common::param_bits(&rnn.params().unwrap()),
            common::param_bits(&params),
            "{cell}: autotuning changed the parameters"
        );

        // another model on the same device finds those shapes tuned
        let mut again = Rnn::new(config, params, &gpu).unwrap();
        let report = again.autotune(&batch, Duration::from_secs(30)).unwrap();
        assert!(
            report.products.is_empty(),
            "{cell}: tuned twice: {report:?}"
        );
    }
}

#[test]
fn the_time_loop_is_chosen_by_measurement_and_kept() {
    let Some(gpu) = common::gpu() else { return };
    // hidden past the persistent loop's 256: Auto walks step by step or tiled
    let config = RnnConfig::new(3, 260, 4);
    let batch = common::random_batch(&config, &[5, 3], false, 4);
    let params = RnnParams::init(&config, 2);
    let mut rnn = Rnn::new(config, params, &gpu).unwrap();
    let (loss, grads) = rnn.loss_and_gradients(&batch).unwrap();
    let report = rnn.autotune(&batch, Duration::from_secs(60)).unwrap();
    let loops: Vec<TimeLoop> = report.time_loops.iter().map(|(l, _)| *l).collect();
    assert!(
        loops == [TimeLoop::PerStep, TimeLoop::TiledSteps]
            || loops == [TimeLoop::TiledSteps, TimeLoop::PerStep],
        "{loops:?}"
    );
    assert!(report.time_loops[0].1 <= report.time_loops[1].1);
    assert_eq!(rnn.time_loop(), loops[0], "the faster loop is kept");
    // the tiled steps' own products (a step's rows by W_hhᵀ) were tuned before the loops
    // were compared, although the first pass (per step under Auto) records none
    assert!(
        report
            .products
            .iter()
            .any(|t| (t.shape.m, t.shape.n, t.shape.k) == (2, 260, 260) && t.shape.transpose_b),
        "{:?}",
        report.products
    );
    let (tuned_loss, tuned_grads) = rnn.loss_and_gradients(&batch).unwrap();
    common::assert_close("loss", &[tuned_loss], &[loss], 1e-5);
    common::assert_params_close("gradients", &tuned_grads, &grads, 1e-5);
}

#[test]
fn no_budget_tunes_nothing() {
    // a device of its own: the other tests' tuned shapes are not on it
    let Some(gpu) = common::gpu() else { return };
    let (config, batch) = model(Cell::Gru);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 3), &gpu).unwrap();
    let report = rnn.autotune(&batch, Duration::ZERO).unwrap();
    assert!(report.products.is_empty(), "{report:?}");
    assert!(
        !report.skipped.is_empty(),
        "every shape is over a zero budget"
    );
    assert!(report.time_loops.is_empty());
    // still untuned: a budget lets them be measured now
    let report = rnn.autotune(&batch, Duration::from_secs(30)).unwrap();
    assert!(!report.products.is_empty());
}

#[test]
fn the_cpu_has_nothing_to_tune() {
    let (config, batch) = model(Cell::Lstm);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 4), &Device::cpu()).unwrap();
    let report = rnn.autotune(&batch, Duration::from_secs(1)).unwrap();
    assert_eq!(report, Default::default());
}
