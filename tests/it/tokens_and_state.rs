//! Token inputs, initial states (truncated BPTT) and optimizer state export/import, on
//! both paths. References: the dense path with one-hot inputs, the whole sequence run in
//! one piece, finite differences, and an uninterrupted training run.

use crate::common;

use unfold::internals::{cpu, TimeLoop};
use unfold::ndarray::{s, Array2, Array3};
use unfold::rng::SplitMix64;
use unfold::{Device, Error, Optimizer, Rnn, RnnConfig, RnnState, SequenceBatch, Targets};

const VOCAB: usize = 7;

fn token_problem(seed: u64, lengths: &[usize]) -> (Vec<Vec<u32>>, Targets) {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(VOCAB) as u32).collect())
        .collect();
    let classes = lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(5) as u32).collect())
        .collect();
    (tokens, Targets::Classes(classes))
}

fn one_hot(tokens: &[Vec<u32>]) -> Vec<Array2<f32>> {
    tokens
        .iter()
        .map(|seq| {
            let mut x = Array2::zeros((seq.len(), VOCAB));
            for (t, &k) in seq.iter().enumerate() {
                x[[t, k as usize]] = 1.0;
            }
            x
        })
        .collect()
}

fn config() -> RnnConfig {
    common::config(VOCAB, 6, 5, 2, false, false)
}

#[test]
fn tokens_match_one_hot_inputs() {
    let config = config();
    let (tokens, targets) = token_problem(1, &[5, 2, 7, 1]);
    let dense = SequenceBatch::new(one_hot(&tokens), targets.clone()).unwrap();
    let ids = SequenceBatch::from_tokens(tokens, VOCAB, targets).unwrap();
    assert!(ids.inputs().is_empty() && ids.token_ids().is_some());
    let params = common::params(&config, 3);
    let mut rnn = Rnn::new(config, params, &Device::cpu()).unwrap();
    let (want, got) = (rnn.forward(&dense).unwrap(), rnn.forward(&ids).unwrap());
    common::assert_close(
        "outputs",
        &common::flat(&got.outputs),
        &common::flat(&want.outputs),
        1e-6,
    );
    let (_, want_g) = rnn.loss_and_gradients(&dense).unwrap();
    let (_, got_g) = rnn.loss_and_gradients(&ids).unwrap();
    common::assert_params_close("token gradients", &got_g, &want_g, 1e-6);
}

#[test]
fn token_gradients_match_finite_differences() {
    let config = config();
    let (tokens, targets) = token_problem(2, &[4, 3, 1]);
    let batch = SequenceBatch::from_tokens(tokens, VOCAB, targets).unwrap();
    let params = common::params(&config, 5).cast::<f64>();
    let (_, grads) = cpu::loss_and_gradients::<f64>(&config, &params, &batch);
    let eps = 1e-6;
    for (r, c) in [(0, 0), (3, 2), (5, 6), (1, 4)] {
        let mut plus = params.clone();
        plus.layers[0].w_ih[[r, c]] += eps;
        let mut minus = params.clone();
        minus.layers[0].w_ih[[r, c]] -= eps;
        let fd =
            (cpu::loss(&config, &plus, &batch) - cpu::loss(&config, &minus, &batch)) / (2.0 * eps);
        let analytic = grads.layers[0].w_ih[[r, c]];
        assert!(
            (fd - analytic).abs() <= 1e-7 + 1e-6 * fd.abs(),
            "w_ih[{r},{c}]: {analytic} vs {fd}"
        );
    }
}

#[test]
fn bad_tokens_are_refused() {
    let err =
        SequenceBatch::from_tokens(vec![vec![1, 7]], VOCAB, Targets::Classes(vec![vec![0, 0]]))
            .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                sequence: 0,
                step: 1,
                token: 7,
                vocab_size: VOCAB
            }
        ),
        "{err}"
    );
    let err = SequenceBatch::from_tokens(vec![vec![]], VOCAB, Targets::Classes(vec![vec![]]))
        .unwrap_err();
    assert!(
        matches!(err, Error::ZeroLengthSequence { index: 0 }),
        "{err}"
    );
    // a model whose input_size is not the vocabulary
    let batch =
        SequenceBatch::from_tokens(vec![vec![1]], VOCAB, Targets::Classes(vec![vec![0]])).unwrap();
    let wrong = common::config(VOCAB + 1, 4, 5, 1, false, false);
    let mut rnn = Rnn::new(wrong.clone(), common::params(&wrong, 0), &Device::cpu()).unwrap();
    assert!(matches!(
        rnn.forward(&batch),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// Splits each sequence of `x` at `cut`: the second chunk, started from the first
/// chunk's final state, must give what the whole sequence gives from `cut` on.
#[test]
fn carried_state_continues_the_sequence() {
    let config = common::config(3, 5, 4, 2, true, false);
    let params = common::params(&config, 8);
    let whole = common::random_batch(&config, &[9, 9, 9], true, 4);
    let cut = 4;
    let part = |range: std::ops::Range<usize>| {
        let inputs = whole
            .inputs()
            .iter()
            .map(|x| x.slice(s![range.clone(), ..]).to_owned())
            .collect();
        let Targets::Values(v) = whole.targets().unwrap() else {
            unreachable!()
        };
        let targets = v
            .iter()
            .map(|y| y.slice(s![range.clone(), ..]).to_owned())
            .collect();
        SequenceBatch::new(inputs, Targets::Values(targets)).unwrap()
    };
    let (first, second) = (part(0..cut), part(cut..9));
    let devices = common::devices();
    for device in &devices {
        for time_loop in [
            TimeLoop::PerStep,
            TimeLoop::Persistent,
            TimeLoop::TiledSteps,
        ] {
            let mut rnn = Rnn::new(config.clone(), params.clone(), device).unwrap();
            rnn.set_time_loop(time_loop).unwrap();
            let all = rnn.forward(&whole).unwrap();
            let state = RnnState::hidden(rnn.forward(&first).unwrap().final_hidden);
            let rest = rnn.forward_from(&second, Some(&state)).unwrap();
            let label = format!("{} {time_loop:?}", device.describe());
            common::assert_close(
                &format!("{label} outputs after the cut"),
                &common::flat(&rest.outputs),
                &common::flat(&all.outputs.slice(s![.., cut.., ..]).to_owned()),
                1e-5,
            );
            common::assert_close(
                &format!("{label} final state"),
                &common::flat(&rest.final_hidden),
                &common::flat(&all.final_hidden),
                1e-5,
            );
        }
    }
}

#[test]
fn truncated_gradients_match_finite_differences() {
    let config = common::config(2, 4, 3, 2, false, false);
    let params = common::params(&config, 9).cast::<f64>();
    let batch = common::random_batch(&config, &[3, 1, 2], false, 6);
    let mut rng = SplitMix64::new(12);
    let initial = RnnState::hidden(Array3::from_shape_simple_fn((2, 3, 4), || {
        0.5 * rng.normal()
    }));
    let loss = |p: &unfold::RnnParams<f64>| {
        cpu::forward(
            &config,
            p,
            &batch,
            Some(&initial),
            None,
            &mut cpu::Workspace::default(),
        )
    };
    let mut ws = cpu::Workspace::default();
    cpu::forward(&config, &params, &batch, Some(&initial), None, &mut ws);
    let grads = cpu::backward(&config, &params, &batch, &mut ws);
    let eps = 1e-6;
    for l in 0..2 {
        for (r, c) in [(0, 0), (1, 3), (3, 2)] {
            let (mut plus, mut minus) = (params.clone(), params.clone());
            plus.layers[l].w_hh[[r, c]] += eps;
            minus.layers[l].w_hh[[r, c]] -= eps;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * eps);
            let analytic = grads.layers[l].w_hh[[r, c]];
            assert!(
                (fd - analytic).abs() <= 1e-7 + 1e-6 * fd.abs(),
                "layer {l} w_hh[{r},{c}]: {analytic} vs {fd}"
            );
        }
    }
}

#[test]
fn gpu_matches_cpu_with_tokens_and_initial_state() {
    let Some(gpu) = common::gpu() else { return };
    let config = config();
    let (tokens, targets) = token_problem(3, &[6, 3, 6, 1, 4]);
    let batch = SequenceBatch::from_tokens(tokens, VOCAB, targets).unwrap();
    let mut rng = SplitMix64::new(4);
    let initial = RnnState::hidden(Array3::from_shape_simple_fn((2, 5, 6), || {
        0.3 * rng.normal()
    }));
    let params = common::params(&config, 10);
    for time_loop in [
        TimeLoop::PerStep,
        TimeLoop::Persistent,
        TimeLoop::TiledSteps,
    ] {
        let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).unwrap();
        let mut dev = Rnn::new(config.clone(), params.clone(), &gpu).unwrap();
        dev.set_time_loop(time_loop).unwrap();
        for init in [None, Some(&initial)] {
            let label = format!("{time_loop:?} initial {}", init.is_some());
            let (want, got) = (
                cpu.forward_from(&batch, init).unwrap(),
                dev.forward_from(&batch, init).unwrap(),
            );
            common::assert_close(
                &format!("{label} outputs"),
                &common::flat(&got.outputs),
                &common::flat(&want.outputs),
                1e-4,
            );
            common::assert_close(
                &format!("{label} final"),
                &common::flat(&got.final_hidden),
                &common::flat(&want.final_hidden),
                1e-4,
            );
            let (_, want_g) = cpu.loss_and_gradients_from(&batch, init).unwrap();
            let (_, got_g) = dev.loss_and_gradients_from(&batch, init).unwrap();
            common::assert_params_close(&label, &got_g, &want_g, 1e-4);
        }
        // truncated BPTT over three chunks, carrying the state
        let (mut o_cpu, mut o_gpu) = (Optimizer::adam(0.01), Optimizer::adam(0.01));
        let (mut s_cpu, mut s_gpu) = (None::<RnnState>, None::<RnnState>);
        for chunk in 0..3 {
            let (l1, f1) = cpu
                .train_step_from(&batch, s_cpu.as_ref(), &mut o_cpu)
                .unwrap();
            let (l2, f2) = dev
                .train_step_from(&batch, s_gpu.as_ref(), &mut o_gpu)
                .unwrap();
            common::assert_close(
                &format!("{time_loop:?} chunk {chunk} loss"),
                &[l2],
                &[l1],
                1e-4,
            );
            common::assert_close(
                &format!("{time_loop:?} chunk {chunk} state"),
                &common::flat(&f2.h),
                &common::flat(&f1.h),
                1e-4,
            );
            (s_cpu, s_gpu) = (Some(f1), Some(f2));
        }
        common::assert_params_close(
            &format!("{time_loop:?} params"),
            &dev.params().unwrap(),
            &cpu.params().unwrap(),
            1e-4,
        );
    }
}

#[test]
fn bad_initial_states_are_refused() {
    let config = config();
    let params = common::params(&config, 1);
    let (tokens, targets) = token_problem(5, &[2, 3]);
    let batch = SequenceBatch::from_tokens(tokens, VOCAB, targets).unwrap();
    let mut rnn = Rnn::new(config, params.clone(), &Device::cpu()).unwrap();
    let wrong = RnnState::hidden(Array3::zeros((2, 3, 6)));
    assert!(matches!(
        rnn.forward_from(&batch, Some(&wrong)),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan = RnnState::hidden(Array3::zeros((2, 2, 6)));
    nan.h[[1, 0, 2]] = f32::NAN;
    let mut sgd = Optimizer::sgd(0.1);
    assert!(matches!(
        rnn.train_step_from(&batch, Some(&nan), &mut sgd),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(rnn.params().unwrap(), params);
}

/// Training interrupted after 3 steps and resumed from the exported optimizer state must
/// give what an uninterrupted run gives, on each device, and a state moves between them.
#[test]
fn optimizer_state_round_trips() {
    let config = common::config(3, 5, 4, 1, false, false);
    let params = common::params(&config, 2);
    let batch = common::random_batch(&config, &[4, 2, 5], false, 3);
    let devices = common::devices();
    for device in &devices {
        for make in [
            || Optimizer::adam(0.05),
            || Optimizer::sgd_momentum(0.1, 0.9),
            || Optimizer::sgd(0.1),
        ] {
            let mut straight = Rnn::new(config.clone(), params.clone(), device).unwrap();
            let mut opt = make();
            assert_eq!(opt.export_state().unwrap(), None);
            for _ in 0..6 {
                straight.train_step(&batch, &mut opt).unwrap();
            }
            let mut first = Rnn::new(config.clone(), params.clone(), device).unwrap();
            let mut opt1 = make();
            for _ in 0..3 {
                first.train_step(&batch, &mut opt1).unwrap();
            }
            let saved = opt1.export_state().unwrap().expect("state after 3 steps");
            assert_eq!(saved.steps, 3);
            let mut resumed = Rnn::new(config.clone(), first.params().unwrap(), device).unwrap();
            let mut opt2 = make();
            opt2.import_state(saved).unwrap();
            for _ in 0..3 {
                resumed.train_step(&batch, &mut opt2).unwrap();
            }
            let label = format!("{} {:?}", device.describe(), make().kind());
            common::assert_params_close(
                &label,
                &resumed.params().unwrap(),
                &straight.params().unwrap(),
                1e-5,
            );
            assert_eq!(opt2.steps(), 6);
        }
    }
    // a state of the wrong size is refused at the next step, and nothing changes
    let mut rnn = Rnn::new(config.clone(), params.clone(), &Device::cpu()).unwrap();
    let mut opt = Optimizer::adam(0.1);
    opt.import_state(unfold::OptimizerState {
        layout: Vec::new(),
        steps: 2,
        m: vec![0.0; 3],
        v: vec![0.0; 3],
    })
    .unwrap();
    assert!(matches!(
        rnn.train_step(&batch, &mut opt),
        Err(Error::OptimizerMismatch(_))
    ));
    assert_eq!(rnn.params().unwrap(), params);
}

#[test]
fn a_large_vocabulary_needs_no_dense_input_buffer() {
    // 600 tokens of a 60,000-word vocabulary: as one-hot rows that would be 144 MB, past
    // the 128 MiB storage binding many adapters allow; token batches never build it. A
    // dense batch on the same model afterwards gets its input buffer then.
    let Some(gpu) = common::gpu() else { return };
    let vocab = 60_000;
    let config = RnnConfig::new(vocab, 4, 3);
    let mut rng = SplitMix64::new(11);
    let tokens: Vec<Vec<u32>> = [300, 200, 100]
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let classes = tokens.iter().map(|s| vec![1; s.len()]).collect();
    let batch = SequenceBatch::from_tokens(tokens, vocab, Targets::Classes(classes)).unwrap();
    let params = common::params(&config, 12);
    let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).unwrap();
    let mut dev = Rnn::new(config.clone(), params, &gpu).unwrap();
    let (want, got) = (cpu.forward(&batch).unwrap(), dev.forward(&batch).unwrap());
    common::assert_close(
        "outputs",
        &common::flat(&got.outputs),
        &common::flat(&want.outputs),
        1e-4,
    );
    let dense = SequenceBatch::new(
        vec![Array2::from_shape_simple_fn((3, vocab), || rng.normal())],
        Targets::Classes(vec![vec![0, 1, 2]]),
    )
    .unwrap();
    let (want, got) = (cpu.forward(&dense).unwrap(), dev.forward(&dense).unwrap());
    common::assert_close(
        "dense outputs",
        &common::flat(&got.outputs),
        &common::flat(&want.outputs),
        1e-4,
    );
}
