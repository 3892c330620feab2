//! Mixed precision (`Device::gpu_mixed_precision`): the cooperative-matrix product
//! against ndarray's f32 product, within the error that rounding each operand to f16
//! allows; block scaling across magnitudes f16 cannot hold; and models on such a device
//! against the CPU path. These run where the adapter has cooperative matrices (CI runs
//! them on a newer lavapipe with `UNFOLD_REQUIRE_COOP=1`).

use crate::common::{self, random_matrix as random, stored};

use unfold::internals::gpu::{GemmPlan, ResidentProduct, Tile};
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Error, Optimizer, Rnn};

/// f16 keeps 11 significant bits: rounding each operand moves a product of two by at
/// most about 2⁻¹⁰ of its magnitude (2⁻¹¹ each); f32 accumulation adds far less.
const F16_PRODUCT: f64 = 1.0 / 1024.0;

/// Runs `op(a)·op(b)` under `plan` on `device` and checks every element against the f32
/// product: off by at most [`F16_PRODUCT`] (with a tenth of margin) of the sum of its
/// terms' magnitudes. Returns the largest error relative to that bound.
fn check_product(
    device: &Device,
    a: &Array2<f32>,
    b: &Array2<f32>,
    (ta, tb): (bool, bool),
    plan: Option<GemmPlan>,
    what: &str,
) -> f64 {
    let op = |x: &Array2<f32>, t: bool| if t { x.t().to_owned() } else { x.clone() };
    let (oa, ob) = (op(a, ta), op(b, tb));
    let (want, magnitude) = (
        oa.dot(&ob),
        oa.mapv(f32::abs)
            .mapv(f64::from)
            .dot(&ob.mapv(f32::abs).mapv(f64::from)),
    );
    let mut product =
        ResidentProduct::new(device, a.view(), b.view(), (ta, tb), plan).expect("product");
    assert!(
        product.plan().tile.is_cooperative(),
        "{what}: {:?}",
        product.plan()
    );
    product.run(2).expect("run");
    let got = product.output().expect("output");
    let mut worst: f64 = 0.0;
    for ((idx, g), w) in got.indexed_iter().zip(want.iter()) {
        let bound = 1.1 * F16_PRODUCT * magnitude[idx] + 1e-30;
        let err = (*g as f64 - *w as f64).abs();
        assert!(
            err <= bound,
            "{what} {:?}: element {idx:?} got {g}, f32 gives {w}, allowed {bound:e}",
            product.plan()
        );
        worst = worst.max(err / bound);
    }
    worst
}

#[test]
fn cooperative_products_match_f32_within_f16_rounding() {
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(11);
    let mut worst: f64 = 0.0;
    // a single element, off the 64×64 tile and the 32-deep slice, several K ranges, and a
    // row and a column vector
    for (m, n, k) in [
        (1, 1, 1),
        (65, 130, 17),
        (129, 70, 300),
        (1, 200, 33),
        (150, 1, 64),
    ] {
        let (a, b) = (random(m, k, &mut rng), random(k, n, &mut rng));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (sa, sb) = (stored(&a, ta), stored(&b, tb));
            for plan in [
                None,
                Some(GemmPlan {
                    tile: Tile::Coop64,
                    splits: 3,
                }),
                Some(GemmPlan {
                    tile: Tile::Coop128,
                    splits: 1,
                }),
                Some(GemmPlan {
                    tile: Tile::Coop128,
                    splits: 2,
                }),
            ] {
                let what = format!("{m}x{n}x{k} transposed {ta}/{tb}");
                worst = worst.max(check_product(&gpu, &sa, &sb, (ta, tb), plan, &what));
            }
        }
    }
    eprintln!("largest error: {worst:.3} of the f16 bound");
    // a product large enough for the built-in plan's 128×128 tile (it needs 96 of them)
    let (a, b) = (random(1300, 1100, &mut rng), random(1100, 1030, &mut rng));
    let mut product =
        ResidentProduct::new(&gpu, a.view(), b.view(), (false, false), None).expect("product");
    let wide = unfold::internals::gpu::tilings(&gpu).contains(&Tile::Coop128);
    assert_eq!(
        product.plan().tile,
        if wide { Tile::Coop128 } else { Tile::Coop64 },
        "the built-in plan for 1300×1030×1100"
    );
    product.run(1).expect("run");
    common::assert_close(
        "1300×1030×1100 on the built-in plan",
        &common::flat(&product.output().expect("output")),
        &common::flat(&a.dot(&b)),
        2e-3,
    );
    // the products really are rounded: an f32 kernel would stay far inside the bound
    assert!(
        worst > 0.01,
        "every element within 1% of the f16 bound ({worst}): are the operands rounded at all?"
    );
}

#[test]
fn block_scaling_keeps_magnitudes_that_f16_cannot_hold() {
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(12);
    let (m, n, k) = (70, 40, 100);
    // A around 1e-9 (f16's smallest subnormal is 6e-8) in its first 32 columns and 1e6
    // (past f16's largest, 65504) after them; B around 1e-5 and 3e4: plain f16 would
    // flush the one to zero and overflow the other
    let a = Array2::from_shape_fn((m, k), |(_, j)| {
        rng.uniform(-1.0, 1.0) * if j < 32 { 1e-9 } else { 1e6 }
    });
    let b = Array2::from_shape_fn((k, n), |(i, _)| {
        rng.uniform(-1.0, 1.0) * if i % 2 == 0 { 1e-5 } else { 3e4 }
    });
    check_product(&gpu, &a, &b, (false, false), None, "tiny and huge operands");
    // only tiny operands: every product term near 1e-14, the result as well
    let a = a.mapv(|v| v * 1e-12);
    let b = Array2::from_shape_fn((k, n), |_| rng.uniform(-1.0, 1.0) * 1e-6);
    check_product(&gpu, &a, &b, (false, false), None, "tiny operands");
}

#[test]
fn non_finite_operands_reach_the_product_as_in_f32() {
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(13);
    let mut a = random(40, 50, &mut rng);
    let b = random(50, 30, &mut rng);
    a[[3, 7]] = f32::INFINITY;
    a[[20, 44]] = f32::NAN;
    let mut product =
        ResidentProduct::new(&gpu, a.view(), b.view(), (false, false), None).expect("product");
    product.run(1).expect("run");
    let got = product.output().expect("output");
    for (row, bad) in [(3, true), (20, true), (0, false), (39, false)] {
        let finite = got.row(row).iter().all(|v| v.is_finite());
        assert_eq!(!finite, bad, "row {row}: {:?}", got.row(row));
    }
}

#[test]
fn the_cooperative_tiling_is_refused_on_an_f32_device() {
    let Some(gpu) = common::gpu() else { return };
    if gpu.is_mixed_precision() {
        return;
    }
    let a = Array2::<f32>::ones((4, 4));
    for tile in [Tile::Coop64, Tile::Coop128] {
        let plan = GemmPlan { tile, splits: 1 };
        match ResidentProduct::new(&gpu, a.view(), a.view(), (false, false), Some(plan)) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains("mixed-precision"), "{msg}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a cooperative-matrix plan {tile:?} ran on an f32 device"),
        }
    }
    assert!(
        unfold::internals::gpu::tilings(&gpu)
            .iter()
            .all(|t| !t.is_cooperative()),
        "an f32 device offers a cooperative tiling"
    );
}

/// A model on the mixed-precision device and the same model on the CPU path: every
/// cell, tiled steps (where every recurrent product is a matrix product) and the
/// per-step loop, forward outputs, loss, gradients and a few training steps, within a
/// tolerance f16 operands allow.
#[test]
fn models_match_the_cpu_path_within_mixed_precision() {
    use unfold::internals::TimeLoop;
    use unfold::Cell;
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    for (cell, time_loop, bidirectional) in [
        (Cell::Tanh, TimeLoop::TiledSteps, false),
        (Cell::Lstm, TimeLoop::TiledSteps, false),
        (Cell::Gru, TimeLoop::PerStep, false),
        (Cell::Gru, TimeLoop::TiledSteps, true),
    ] {
        let config = common::config(20, 48, 7, 2, false, false)
            .cell(cell)
            .bidirectional(bidirectional);
        let batch = common::random_batch(&config, &[9, 4, 7, 1, 9], false, 21);
        let params = common::params(&config, 22);
        let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).expect("cpu");
        let mut dev = Rnn::new(config.clone(), params, &gpu).expect("gpu");
        dev.set_time_loop(time_loop).expect("time loop");
        let label = format!("{cell:?} {time_loop:?} bidirectional {bidirectional}");
        let (want, got) = (cpu.forward(&batch).unwrap(), dev.forward(&batch).unwrap());
        common::assert_close(
            &format!("{label} outputs"),
            &common::flat(&got.outputs),
            &common::flat(&want.outputs),
            5e-3,
        );
        let (want_loss, want_grads) = cpu.loss_and_gradients(&batch).unwrap();
        let (got_loss, got_grads) = dev.loss_and_gradients(&batch).unwrap();
        common::assert_close(&format!("{label} loss"), &[got_loss], &[want_loss], 5e-3);
        common::assert_params_close(&label, &got_grads, &want_grads, 2e-2);
        let (mut o_cpu, mut o_gpu) = (Optimizer::adam(0.01), Optimizer::adam(0.01));
        let mut losses = Vec::new();
        for _ in 0..4 {
            let want = cpu.train_step(&batch, &mut o_cpu).unwrap();
            let got = dev.train_step(&batch, &mut o_gpu).unwrap();
            common::assert_close(&format!("{label} training loss"), &[got], &[want], 1e-2);
            losses.push(got);
        }
        assert!(losses[3] < losses[0], "{label}: no learning: {losses:?}");
    }
}

/// Autotuning on a mixed-precision device tries the splits of the cooperative-matrix
/// tiling only: tuning never turns a product back to f32.
#[test]
fn autotune_keeps_the_products_in_mixed_precision() {
    use unfold::Cell;
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    let config = common::config(12, 40, 5, 1, false, false).cell(Cell::Lstm);
    let batch = common::random_batch(&config, &[6, 3, 6], false, 31);
    let mut rnn = Rnn::new(config.clone(), common::params(&config, 32), &gpu).unwrap();
    let report = rnn
        .autotune(&batch, std::time::Duration::from_secs(5))
        .expect("autotune");
    assert!(!report.products.is_empty(), "{report:?}");
    for p in &report.products {
        assert!(p.before.0.tile.is_cooperative(), "{p:?}");
        assert!(p.chosen.0.tile.is_cooperative(), "{p:?}");
    }
}

/// The kernel's per-slice maxima live in workgroup memory, which starts undefined (the
/// kernels are compiled without wgpu's zeroing) and is shared with whatever ran before: a
/// product right after one of huge values must not inherit their scale (its small
/// operands would flush to zero). Without the kernel's reset at its start, the CI run
/// of this module once failed this way on another test's product (0.45 for 4.34); that
/// depends on which workgroup ran where before, so this test guards the reset at the end
/// of each slice more than the one at the start.
#[test]
fn a_product_does_not_inherit_the_scale_of_the_one_before() {
    let Some(gpu) = common::mixed_gpu() else {
        return;
    };
    let mut rng = SplitMix64::new(14);
    let huge = random(64, 64, &mut rng).mapv(|v| v * 1e30);
    let (a, b) = (random(64, 33, &mut rng), random(33, 64, &mut rng));
    for round in 0..4 {
        let mut big =
            ResidentProduct::new(&gpu, huge.view(), huge.view(), (false, false), None).unwrap();
        big.run(1).unwrap();
        check_product(
            &gpu,
            &a,
            &b,
            (false, false),
            None,
            &format!("round {round}"),
        );
    }
}
