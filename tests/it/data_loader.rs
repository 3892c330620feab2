//! `unfold::data`: datasets, the bucketing minibatch loader, standardisation, evaluation
//! helpers.

use unfold::data::{
    padding_fraction, predict, BatchLoader, ConfusionMatrix, Dataset, Standardizer,
};
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Error, Head, Rnn, RnnConfig, RnnParams, Targets};

/// Sequence `i` has length `lengths[i]`, label `i % classes`, and its index in feature 0
/// of every step (so that a batch tells which sequences it holds).
fn indexed_dataset(lengths: &[usize], classes: usize) -> Dataset {
    let inputs = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            Array2::from_shape_fn((len, 2), |(t, f)| if f == 0 { i as f32 } else { t as f32 })
        })
        .collect();
    let labels = (0..lengths.len()).map(|i| (i % classes) as u32).collect();
    let names = (0..classes).map(|k| format!("c{k}")).collect();
    Dataset::new(inputs, labels, names).expect("valid dataset")
}

fn random_lengths(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| lo + rng.below(hi - lo + 1)).collect()
}

/// The dataset indices held by each batch of an epoch, read from the batches themselves.
fn served(loader: &BatchLoader, epoch: u64) -> Vec<Vec<usize>> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.expect("batch");
            b.inputs().iter().map(|x| x[[0, 0]] as usize).collect()
        })
        .collect()
}

#[test]
fn every_sequence_exactly_once_per_epoch_last_partial_batch_kept() {
    let n = 103;
    let data = indexed_dataset(&random_lengths(n, 1, 40, 1), 3);
    for batch_size in [1, 7, 16, 103, 500] {
        for pool in [1, 3, 8] {
            let loader = BatchLoader::new(&data, batch_size)
                .unwrap()
                .seed(5)
                .pool_batches(pool);
            for epoch in 0..4 {
                let batches = served(&loader, epoch);
                assert_eq!(batches, loader.plan(epoch), "batches follow the plan");
                assert_eq!(batches.len(), n.div_ceil(batch_size));
                assert_eq!(loader.num_batches(), batches.len());
                let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
                seen.sort_unstable();
                assert_eq!(
                    seen,
                    (0..n).collect::<Vec<_>>(),
                    "batch {batch_size}, pool {pool}, epoch {epoch}: each sequence exactly once"
                );
                let partial: Vec<usize> = batches
                    .iter()
                    .map(Vec::len)
                    .filter(|&l| l != batch_size)
                    .collect();
                let rest = n % batch_size.min(n);
                if batch_size > n {
                    assert_eq!(partial, vec![n]);
                } else if rest == 0 {
                    assert!(partial.is_empty());
                } else {
                    assert_eq!(partial, vec![rest], "exactly one partial batch, kept");
                }
            }
        }
    }
}

#[test]
fn batches_carry_last_step_class_targets() {
    let data = indexed_dataset(&random_lengths(40, 1, 10, 2), 4);
    let loader = BatchLoader::new(&data, 6).unwrap().seed(3);
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let Targets::Classes(classes) = batch.targets().unwrap() else {
            panic!("class targets expected");
        };
        for (x, c) in batch.inputs().iter().zip(classes) {
            let i = x[[0, 0]] as usize;
            assert_eq!(
                c,
                &vec![data.labels()[i]],
                "one target per sequence, its label"
            );
            assert_eq!(x, &data.inputs()[i], "the sequence itself");
        }
    }
}

#[test]
fn deterministic_for_a_seed_and_different_across_epochs_and_seeds() {
    let data = indexed_dataset(&random_lengths(200, 1, 50, 3), 5);
    let a = BatchLoader::new(&data, 16).unwrap().seed(11);
    let b = BatchLoader::new(&data, 16).unwrap().seed(11);
    for epoch in 0..3 {
        assert_eq!(served(&a, epoch), served(&b, epoch));
        let batches_a: Vec<_> = a
            .epoch(epoch)
            .map(|x| x.unwrap().inputs().to_vec())
            .collect();
        let batches_b: Vec<_> = b
            .epoch(epoch)
            .map(|x| x.unwrap().inputs().to_vec())
            .collect();
        assert_eq!(
            batches_a, batches_b,
            "the same data, not only the same indices"
        );
        assert_eq!(a.padding_fraction(epoch), b.padding_fraction(epoch));
    }
    assert_ne!(a.plan(0), a.plan(1), "a fresh shuffle each epoch");
    let other = BatchLoader::new(&data, 16).unwrap().seed(12);
    assert_ne!(a.plan(0), other.plan(0), "the seed matters");
}

#[test]
fn without_shuffling_batches_follow_the_dataset_order() {
    let data = indexed_dataset(&random_lengths(10, 1, 9, 4), 2);
    let loader = BatchLoader::new(&data, 4).unwrap().shuffle(false);
    let want = vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]];
    assert_eq!(served(&loader, 0), want);
    assert_eq!(served(&loader, 7), want);
}

#[test]
fn bucketing_lowers_padding_on_skewed_lengths() {
    // skewed: 85% short sequences (5..=20 steps), 15% long ones (60..=300)
    let mut rng = SplitMix64::new(42);
    let lengths: Vec<usize> = (0..2000)
        .map(|_| {
            if rng.below(100) < 85 {
                5 + rng.below(16)
            } else {
                60 + rng.below(241)
            }
        })
        .collect();
    let data = indexed_dataset(&lengths, 2);
    let epochs = 5;
    let mean = |pool: usize| {
        let loader = BatchLoader::new(&data, 32)
            .unwrap()
            .seed(9)
            .pool_batches(pool);
        (0..epochs).map(|e| loader.padding_fraction(e)).sum::<f64>() / epochs as f64
    };
    let plain = mean(1);
    let pooled = mean(8);
    let sorted_pools_of_32 = mean(32);
    eprintln!("padding: plain shuffle {plain:.3}, pools of 8 batches {pooled:.3}, of 32 {sorted_pools_of_32:.3}");
    // measured (deterministic): plain 0.844, pools of 8 batches 0.336, pools of 32 0.104
    assert!(
        plain > 0.8,
        "plain shuffling pads most positions here: {plain}"
    );
    assert!(pooled < 0.4, "pools of 8 batches: {pooled}");
    assert!(pooled < plain / 2.0, "bucketing: {pooled} vs plain {plain}");
    assert!(sorted_pools_of_32 < pooled, "larger pools pad less");
}

#[test]
fn padding_fraction_by_hand() {
    let lengths = [1, 3, 3, 4, 2];
    // batch {0,1}: max 3, padding 2 of 6; batch {2,3,4}: max 4, padding 1+0+2 = 3 of 12
    let f = padding_fraction(&lengths, &[vec![0, 1], vec![2, 3, 4]]);
    assert!((f - 5.0 / 18.0).abs() < 1e-12, "{f}");
    assert_eq!(
        padding_fraction(&lengths, &[vec![1, 2], vec![0], vec![3], vec![4]]),
        0.0
    );
    assert_eq!(padding_fraction(&lengths, &[]), 0.0);
}

#[test]
fn standardizer_uses_the_training_statistics_only() {
    let train = Dataset::new(
        vec![
            Array2::from_shape_vec((2, 3), vec![1.0, 10.0, 5.0, 3.0, 10.0, 5.0]).unwrap(),
            Array2::from_shape_vec((1, 3), vec![2.0, 40.0, 5.0]).unwrap(),
        ],
        vec![0, 1],
        vec!["a".into(), "b".into()],
    )
    .unwrap();
    let s = Standardizer::fit(&train);
    // feature 0: 1, 3, 2 -> mean 2, population std sqrt(2/3); feature 1: 10, 10, 40 -> mean
    // 20, std sqrt(200); feature 2 constant -> std 1
    let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-5 * b.abs().max(1.0);
    assert!(
        close(s.mean[0], 2.0) && close(s.std[0], (2.0f64 / 3.0).sqrt()),
        "{s:?}"
    );
    assert!(
        close(s.mean[1], 20.0) && close(s.std[1], 200f64.sqrt()),
        "{s:?}"
    );
    assert!(close(s.mean[2], 5.0) && close(s.std[2], 1.0), "{s:?}");

    let standardized = s.apply(&train).unwrap();
    let all: Vec<f32> = standardized
        .inputs()
        .iter()
        .flat_map(|x| x.column(0).to_vec())
        .collect();
    let mean = all.iter().sum::<f32>() / all.len() as f32;
    let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / all.len() as f32;
    assert!(
        mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
        "mean {mean} var {var}"
    );
    assert!(standardized
        .inputs()
        .iter()
        .all(|x| x.column(2).iter().all(|&v| v == 0.0)));
    assert_eq!(standardized.labels(), train.labels());

    // a test set is mapped with the training statistics, not its own
    let test = Dataset::new(
        vec![Array2::from_shape_vec((1, 3), vec![4.0, 20.0, 6.0]).unwrap()],
        vec![1],
        vec!["a".into(), "b".into()],
    )
    .unwrap();
    let t = s.apply(&test).unwrap();
    let x = &t.inputs()[0];
    assert!(close(x[[0, 0]], 2.0 / (2.0f64 / 3.0).sqrt()), "{x}");
    assert!(close(x[[0, 1]], 0.0) && close(x[[0, 2]], 1.0), "{x}");

    let narrow = Dataset::new(vec![Array2::zeros((2, 2))], vec![0], vec!["a".into()]).unwrap();
    assert!(matches!(s.apply(&narrow), Err(Error::ShapeMismatch { .. })));
}

#[test]
fn bad_datasets_and_settings_are_errors() {
    let names = || vec!["a".to_string(), "b".to_string()];
    let seq = |len: usize| Array2::<f32>::zeros((len, 2));
    let cases: Vec<(&str, unfold::Result<Dataset>)> = vec![
        ("no sequences", Dataset::new(vec![], vec![], names())),
        (
            "label count",
            Dataset::new(vec![seq(2)], vec![0, 1], names()),
        ),
        ("no classes", Dataset::new(vec![seq(2)], vec![0], vec![])),
        (
            "label range",
            Dataset::new(vec![seq(2), seq(1)], vec![0, 2], names()),
        ),
        (
            "empty sequence",
            Dataset::new(vec![seq(2), seq(0)], vec![0, 1], names()),
        ),
        (
            "feature width",
            Dataset::new(vec![seq(2), Array2::zeros((2, 3))], vec![0, 1], names()),
        ),
        (
            "no features",
            Dataset::new(vec![Array2::zeros((2, 0))], vec![0], names()),
        ),
        (
            "non-finite",
            Dataset::new(vec![Array2::from_elem((2, 2), f32::NAN)], vec![0], names()),
        ),
    ];
    for (what, result) in cases {
        let e = result.expect_err(what);
        eprintln!("{what}: {e}");
    }
    let data = Dataset::new(vec![seq(2), seq(3)], vec![0, 1], names()).unwrap();
    assert!(matches!(
        BatchLoader::new(&data, 0),
        Err(Error::InvalidConfig { .. })
    ));
    let e = data.batch(&[0, 2]).expect_err("index out of range");
    assert!(e.to_string().contains("index 2"), "{e}");
    assert!(matches!(data.batch(&[]), Err(Error::EmptyBatch)));
    assert_eq!(data.lengths(), vec![2, 3]);
    assert_eq!(data.class_counts(), vec![1, 1]);
}

#[test]
fn confusion_matrix_counts_and_accuracy() {
    let m = ConfusionMatrix::new(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 2, 0], 3).unwrap();
    assert_eq!(m.counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
    assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
    let table = m.render(&["x".into(), "y".into(), "z".into()]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(ConfusionMatrix::new(&[0, 3], &[0, 0], 3).is_err());
    assert!(ConfusionMatrix::new(&[0], &[0, 0], 3).is_err());
}

/// The whole pipeline learns: the class is the sign of the last step of a noisy walk.
#[test]
fn loader_batches_train_a_last_step_classifier() {
    let mut rng = SplitMix64::new(8);
    let (mut inputs, mut labels) = (vec![], vec![]);
    for _ in 0..96 {
        let len = 2 + rng.below(12);
        let class = rng.below(2);
        let x = Array2::from_shape_fn((len, 3), |(t, f)| {
            let noise = rng.normal() * 0.3;
            if t + 1 == len && f == 0 {
                if class == 1 {
                    1.0 + noise
                } else {
                    -1.0 + noise
                }
            } else {
                noise
            }
        });
        inputs.push(x);
        labels.push(class as u32);
    }
    let data = Dataset::new(inputs, labels, vec!["neg".into(), "pos".into()]).unwrap();
    let data = Standardizer::fit(&data).apply(&data).unwrap();
    let config = RnnConfig::new(3, 16, 2).head(Head::LastStep);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 1), &Device::cpu()).unwrap();
    let mut adam = unfold::Optimizer::adam(1e-2).clip_grad_norm(1.0);
    let loader = BatchLoader::new(&data, 16).unwrap().seed(2);
    let (_, before) = predict(&mut rnn, &data, 32).unwrap();
    for epoch in 0..30 {
        for batch in loader.epoch(epoch) {
            rnn.train_step(&batch.unwrap(), &mut adam).unwrap();
        }
    }
    let (predicted, after) = predict(&mut rnn, &data, 32).unwrap();
    let accuracy = ConfusionMatrix::new(data.labels(), &predicted, 2)
        .unwrap()
        .accuracy();
    assert!(after < before * 0.5, "loss {before} -> {after}");
    assert!(accuracy > 0.95, "accuracy {accuracy}");

    let per_step = RnnConfig::new(3, 4, 2);
    let mut wrong = Rnn::new(
        per_step.clone(),
        RnnParams::init(&per_step, 0),
        &Device::cpu(),
    )
    .unwrap();
    assert!(matches!(
        predict(&mut wrong, &data, 8),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        predict(&mut rnn, &data, 0),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn stratified_split_holds_out_a_share_of_every_class() {
    // 3 classes of 10, 7 and 2 sequences, feature 0 naming the sequence
    let labels: Vec<u32> = [vec![0u32; 10], vec![1; 7], vec![2; 2]].concat();
    let inputs = (0..labels.len())
        .map(|i| Array2::from_elem((1 + i % 4, 1), i as f32))
        .collect();
    let names = vec!["a".into(), "b".into(), "c".into()];
    let data = Dataset::new(inputs, labels.clone(), names).unwrap();
    let ids =
        |d: &Dataset| -> Vec<usize> { d.inputs().iter().map(|x| x[[0, 0]] as usize).collect() };

    let (rest, held) = data.stratified_split(0.3, 7).unwrap();
    // round(0.3 · n) of each class: 3 of 10, 2 of 7, 1 of 2 (0.6 rounds up, and the
    // class keeps its other sequence)
    assert_eq!(held.class_counts(), vec![3, 2, 1]);
    assert_eq!(rest.class_counts(), vec![7, 5, 1]);
    assert_eq!(held.class_names(), data.class_names());
    // disjoint, together every sequence once, each part in the dataset's order, with its
    // own label and steps
    let (r, h) = (ids(&rest), ids(&held));
    let mut all: Vec<usize> = r.iter().chain(&h).copied().collect();
    assert!(r.windows(2).all(|w| w[0] < w[1]) && h.windows(2).all(|w| w[0] < w[1]));
    all.sort_unstable();
    assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    for (part, ids) in [(&rest, &r), (&held, &h)] {
        for (k, &i) in ids.iter().enumerate() {
            assert_eq!(part.labels()[k], labels[i]);
            assert_eq!(part.inputs()[k], data.inputs()[i]);
        }
    }
    // the same seed splits the same way; other seeds pick other sequences
    assert_eq!(ids(&data.stratified_split(0.3, 7).unwrap().1), h);
    assert!((0..8).any(|s| ids(&data.stratified_split(0.3, s).unwrap().1) != h));

    // many small classes: a tenth of 30 sequences is 3, one from each of 3 classes
    // (a tenth of each class, rounded class by class, would be none)
    let many = indexed_dataset(&[5; 30], 10);
    let (rest, held) = many.stratified_split(0.1, 3).unwrap();
    assert_eq!((rest.len(), held.len()), (27, 3));
    assert!(
        held.class_counts().iter().all(|&c| c <= 1),
        "{:?}",
        held.class_counts()
    );

    // a class is never emptied; a fraction that holds out nothing, or is not in (0, 1),
    // is an error
    let (rest, held) = data.stratified_split(0.95, 1).unwrap();
    assert_eq!(rest.class_counts(), vec![1, 1, 1]);
    assert_eq!(held.class_counts(), vec![9, 6, 1]);
    let err = data.stratified_split(0.01, 1).unwrap_err().to_string();
    assert!(err.contains("holds out none"), "{err}");
    for bad in [0.0, 1.0, -0.5, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            data.stratified_split(bad, 1),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
