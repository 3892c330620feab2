//! Helpers shared by the integration tests: deterministic random problems, comparisons
//! that explain themselves, and the GPU device (which must exist when CI says so).
#![allow(dead_code)]

use std::process::{Command, Output};
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Head, Nonlinearity, RnnConfig, RnnParams, SequenceBatch};

/// The GPU device for a test: `Some` if an adapter exists. When `UNFOLD_REQUIRE_GPU=1`
/// (as in CI), a missing adapter fails the test instead of skipping it.
pub fn gpu() -> Option<Device> {
    match Device::gpu() {
        Ok(d) => {
            eprintln!("testing on {}", d.describe());
            Some(d)
        }
        Err(e) => {
            if std::env::var("UNFOLD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("UNFOLD_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// A mixed-precision GPU device (matrix products on cooperative matrices) for a test:
/// `Some` where the adapter offers them (Mesa's lavapipe from 25.x on does; Debian 12's
/// does not). When `UNFOLD_REQUIRE_COOP=1` (as in CI's run on a newer lavapipe), a
/// missing one fails the test instead of skipping it.
pub fn mixed_gpu() -> Option<Device> {
    // SAFETY: wgpu's cooperative matrices are experimental; these tests are where this
    // crate checks its one kernel that uses them against the CPU path.
    match unsafe { Device::gpu_mixed_precision() } {
        Ok(d) => {
            eprintln!("testing on {}", d.describe());
            Some(d)
        }
        Err(e) => {
            if std::env::var("UNFOLD_REQUIRE_COOP").is_ok_and(|v| v == "1") {
                panic!("UNFOLD_REQUIRE_COOP=1 but no mixed-precision device: {e}");
            }
            eprintln!("skipping mixed-precision test: {e}");
            None
        }
    }
}

/// The CPU, and the GPU where there is one (see [`gpu`]).
pub fn devices() -> Vec<Device> {
    std::iter::once(Device::cpu()).chain(gpu()).collect()
}

/// Bitwise copy of every parameter (so NaN compares equal to itself and -0 differs from 0).
pub fn param_bits(p: &RnnParams) -> Vec<u32> {
    p.to_flat().iter().map(|v| v.to_bits()).collect()
}

/// Relative error ‖a−b‖/‖b‖ with a floor on ‖b‖, and on failure the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let rel = diff / norm.max(1e-6);
    if rel > tol || got.iter().any(|v| !v.is_finite()) {
        let (worst, _) = got
            .iter()
            .zip(want)
            .enumerate()
            .map(|(i, (a, b))| (i, ((a - b) as f64).abs()))
            .fold((0, -1.0), |m, x| if x.1 > m.1 { x } else { m });
        let bad = got
            .iter()
            .zip(want)
            .filter(|(a, b)| ((*a - *b) as f64).abs() > tol * (b.abs() as f64).max(1e-3))
            .count();
        panic!(
            "{what}: relative error {rel:.3e} > {tol:.0e}; {bad} of {} elements off, worst at {worst}: got {} want {}",
            got.len(),
            got[worst],
            want[worst]
        );
    }
}

/// Compares every tensor of two parameter sets.
pub fn assert_params_close(what: &str, got: &RnnParams, want: &RnnParams, tol: f64) {
    for ((name, g), (_, w)) in got.tensors().into_iter().zip(want.tensors()) {
        assert_close(&format!("{what} {name}"), g, w, tol);
    }
}

pub fn flat<D: unfold::ndarray::Dimension>(a: &unfold::ndarray::Array<f32, D>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// A `rows × cols` matrix of uniform values in [-1, 1).
pub fn random_matrix(rows: usize, cols: usize, rng: &mut SplitMix64) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| rng.uniform(-1.0, 1.0))
}

/// `x` or its transpose, stored in standard layout (an operand as a product reads it
/// transposed or not).
pub fn stored(x: &Array2<f32>, transposed: bool) -> Array2<f32> {
    if transposed {
        x.t().as_standard_layout().to_owned()
    } else {
        x.clone()
    }
}

/// A random batch for `config` with the given lengths (class or value targets).
pub fn random_batch(
    config: &RnnConfig,
    lengths: &[usize],
    values: bool,
    seed: u64,
) -> SequenceBatch {
    unfold::internals::workloads::random_batch(config, lengths, values, &mut SplitMix64::new(seed))
        .expect("valid random batch")
}

/// A config from its parts.
pub fn config(
    i: usize,
    h: usize,
    o: usize,
    layers: usize,
    relu: bool,
    last_step: bool,
) -> RnnConfig {
    RnnConfig::new(i, h, o)
        .num_layers(layers)
        .nonlinearity(if relu {
            Nonlinearity::Relu
        } else {
            Nonlinearity::Tanh
        })
        .head(if last_step {
            Head::LastStep
        } else {
            Head::PerStep
        })
}

/// Parameters with a random (nonzero) bias so that relu units are a mix of on and off.
pub fn params(config: &RnnConfig, seed: u64) -> RnnParams {
    RnnParams::init(config, seed)
}

/// Runs the built `unfold` binary with `args`, echoing what it printed (shown when a
/// test fails).
pub fn unfold(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_unfold"))
        .args(args)
        .output()
        .expect("the unfold binary runs");
    eprintln!(
        "$ unfold {}\n--- status {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure reported by `main` as an error that contains `needle`, not a panic.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected a failure");
    assert!(!err.contains("panicked"), "a panic: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

/// Writes `p` (a unidirectional model) by hand as PyTorch would save `nn.RNN` +
/// `nn.Linear` (independently of `RnnParams::save`), every tensor except the one named
/// `skip`, without metadata.
pub fn write_pytorch_checkpoint(path: &std::path::Path, p: &RnnParams, skip: &str) {
    use safetensors::tensor::{Dtype, TensorView};
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: &[usize], data: Vec<f32>| {
        tensors.push((
            name,
            shape.to_vec(),
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    };
    for (k, l) in p.layers.iter().enumerate() {
        put(
            format!("rnn.weight_ih_l{k}"),
            l.w_ih.shape(),
            l.w_ih.iter().copied().collect(),
        );
        put(
            format!("rnn.weight_hh_l{k}"),
            l.w_hh.shape(),
            l.w_hh.iter().copied().collect(),
        );
        put(format!("rnn.bias_ih_l{k}"), l.b_ih.shape(), l.b_ih.to_vec());
        put(format!("rnn.bias_hh_l{k}"), l.b_hh.shape(), l.b_hh.to_vec());
    }
    put(
        "out.weight".into(),
        p.w_out.shape(),
        p.w_out.iter().copied().collect(),
    );
    put("out.bias".into(), p.b_out.shape(), p.b_out.to_vec());
    let views = tensors
        .iter()
        .filter(|(name, _, _)| name != skip)
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match"),
            )
        });
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serializes"),
    )
    .expect("writes the file");
}

/// Central differences `(L(θ+ε) − L(θ−ε)) / 2ε` with `ε = 1e-5` in f64 against every
/// scalar of `grads`: each must agree to `1e-6 · max(|analytic|, |numeric|, 1e-3)` (see
/// gradcheck.rs for why those bounds). Returns the largest relative error and where.
pub fn check_every_scalar(
    what: &str,
    p: &RnnParams<f64>,
    grads: &RnnParams<f64>,
    loss: impl Fn(&RnnParams<f64>) -> f64,
) -> (f64, String) {
    const EPS: f64 = 1e-5;
    const TOL: f64 = 1e-6;
    const FLOOR: f64 = 1e-3;
    let names: Vec<String> = p
        .tensors()
        .into_iter()
        .flat_map(|(name, t)| (0..t.len()).map(move |i| format!("{name}[{i}]")))
        .collect();
    let (theta, analytic) = (p.to_flat(), grads.to_flat());
    assert_eq!(
        theta.len(),
        analytic.len(),
        "{what}: gradient and parameter counts"
    );
    let (mut probe, mut shifted) = (p.clone(), theta.clone());
    let mut worst = (0.0f64, String::new());
    for i in 0..theta.len() {
        shifted[i] = theta[i] + EPS;
        probe.assign_flat(&shifted).unwrap();
        let up = loss(&probe);
        shifted[i] = theta[i] - EPS;
        probe.assign_flat(&shifted).unwrap();
        let down = loss(&probe);
        shifted[i] = theta[i];
        let numeric = (up - down) / (2.0 * EPS);
        let a = analytic[i];
        let rel = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
        assert!(
            rel <= TOL,
            "{what}: d loss / d {} analytic {a:.12e} numeric {numeric:.12e} (relative error {rel:.2e})",
            names[i]
        );
        if rel > worst.0 {
            worst = (rel, names[i].clone());
        }
    }
    worst
}
