//! Golden values from PyTorch (`tests/golden/golden.json` and `tests/golden/ckpt_*.safetensors`,
//! made by `tests/golden/make_golden.py` in float64): for every cell (tanh, relu, LSTM,
//! GRU), 1 and 2 layers, one or two directions, both heads, class and value targets, the
//! outputs, final states, loss, the gradient of every parameter (both biases
//! separately), and parameters after clipped SGD / momentum / Adam / AdamW runs; encoders
//! (`Head::None`) given a gradient on their states: the states, every parameter and input
//! gradient of `backward`, and SGD+clip / Adam runs through `apply_gradients`; and checkpoints
//! written by PyTorch itself, which must load and give PyTorch's outputs. Checked on
//! every device of `common::devices()`: the CPU always, the GPU where an adapter exists.
//!
//! Tolerances are relative errors per tensor, ‖got − want‖ / ‖want‖ (see
//! `common::assert_close`): 1e-5 on the CPU, 1e-4 on the GPU. PyTorch's own float32 run
//! of each case is within 1e-6 of these values (the case's `f32_rel_error`), so a
//! failure is a real disagreement, not rounding.
//!
//! Where the GPU path does not run a configuration yet, `Rnn::new` refuses it with
//! `Error::Unsupported`; those (GPU, case) pairs, and only those, are skipped, each with
//! a line saying so.

use crate::common;

use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use unfold::ndarray::{Array1, Array2, Array3};
use unfold::{
    Cell, Device, Error, Head, LayerParams, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch,
    Targets,
};

const GOLDEN: &str = include_str!("../golden/golden.json");

fn root() -> Value {
    serde_json::from_str(GOLDEN).expect("golden.json parses")
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("not a number array: {other}"),
    }
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows = v.as_array().expect("matrix").len();
    let data = floats(v);
    let cols = data.len().checked_div(rows).unwrap_or(0);
    Array2::from_shape_vec((rows, cols), data).expect("rectangular")
}

fn vector(v: &Value) -> Array1<f32> {
    Array1::from_vec(floats(v))
}

/// Parameters (or gradients) in PyTorch's order: l0, l0_reverse, l1, ..., then the readout.
fn params(v: &Value) -> RnnParams {
    RnnParams {
        layers: v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| LayerParams {
                w_ih: matrix(&l["w_ih"]),
                w_hh: matrix(&l["w_hh"]),
                b_ih: vector(&l["b_ih"]),
                b_hh: vector(&l["b_hh"]),
            })
            .collect(),
        w_out: matrix(&v["w_out"]),
        b_out: vector(&v["b_out"]),
    }
}

fn config(c: &Value) -> RnnConfig {
    let get = |k: &str| c[k].as_u64().expect(k) as usize;
    let cell = match c["cell"].as_str().expect("cell") {
        "tanh" => Cell::Tanh,
        "relu" => Cell::Relu,
        "lstm" => Cell::Lstm,
        "gru" => Cell::Gru,
        other => panic!("unknown cell {other}"),
    };
    let head = match c["head"].as_str().expect("head") {
        "per_step" => Head::PerStep,
        "last_step" => Head::LastStep,
        "none" => Head::None,
        other => panic!("unknown head {other}"),
    };
    assert_eq!(
        c["dropout"].as_f64(),
        Some(0.0),
        "golden cases have no dropout"
    );
    RnnConfig::new(get("input_size"), get("hidden_size"), get("output_size"))
        .num_layers(get("num_layers"))
        .cell(cell)
        .head(head)
        .bidirectional(c["bidirectional"].as_bool().expect("bidirectional"))
}

/// The batch of a case or checkpoint entry: `inputs` and `targets`.
fn batch(c: &Value) -> SequenceBatch {
    let inputs: Vec<Array2<f32>> = c["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(matrix)
        .collect();
    let lengths: Vec<usize> = inputs.iter().map(|x| x.nrows()).collect();
    let want: Vec<usize> = c["lengths"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|n| n.as_u64().expect("length") as usize)
        .collect();
    assert_eq!(lengths, want, "inputs have the recorded lengths");
    let targets = if let Some(classes) = c["targets"].get("classes") {
        Targets::Classes(
            classes
                .as_array()
                .expect("classes")
                .iter()
                .map(|s| {
                    s.as_array()
                        .expect("seq")
                        .iter()
                        .map(|k| k.as_u64().expect("class") as u32)
                        .collect()
                })
                .collect(),
        )
    } else {
        Targets::Values(
            c["targets"]["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(matrix)
                .collect(),
        )
    };
    SequenceBatch::new(inputs, targets).expect("golden batch is valid")
}

fn optimizer(o: &Value) -> Optimizer {
    let lr = o["lr"].as_f64().expect("lr") as f32;
    let opt = match o["optimizer"].as_str().expect("optimizer") {
        "sgd" => Optimizer::sgd(lr),
        "momentum" => Optimizer::sgd_momentum(lr, o["momentum"].as_f64().expect("momentum") as f32),
        "adam" => Optimizer::adam(lr),
        "adamw" => Optimizer::adamw(lr, o["weight_decay"].as_f64().expect("weight_decay") as f32),
        other => panic!("unknown optimizer {other}"),
    };
    match o["clip"].as_f64() {
        Some(c) => opt.clip_grad_norm(c as f32),
        None => opt,
    }
}

fn tolerance(device: &Device) -> f64 {
    if device.is_gpu() {
        1e-4
    } else {
        1e-5
    }
}

/// `Rnn::new`, or `None` (with a line saying so) where the GPU path refuses the
/// configuration as unsupported. Any other error fails the test.
fn bind(config: &RnnConfig, params: &RnnParams, device: &Device, label: &str) -> Option<Rnn> {
    match Rnn::new(config.clone(), params.clone(), device) {
        Ok(rnn) => Some(rnn),
        Err(Error::Unsupported(why)) if device.is_gpu() && why.contains("GPU") => {
            eprintln!("SKIPPED {label} on {}: {why}", device.describe());
            None
        }
        Err(e) => panic!("{label}: Rnn::new on {}: {e}", device.describe()),
    }
}

/// Compares a forward pass with PyTorch's `outputs`, `h_n`, `c_n` (LSTM) and `loss`.
fn check_forward(label: &str, rnn: &mut Rnn, batch: &SequenceBatch, expected: &Value, tol: f64) {
    let fwd = rnn.forward(batch).expect("forward");
    let want_outputs = floats(&expected["outputs"]);
    let outputs = common::flat(&fwd.outputs);
    assert_eq!(
        outputs.len(),
        want_outputs.len(),
        "{label}: outputs shape {:?}",
        fwd.outputs.shape()
    );
    common::assert_close(&format!("{label} outputs"), &outputs, &want_outputs, tol);
    common::assert_close(
        &format!("{label} final_hidden (h_n)"),
        &common::flat(&fwd.final_hidden),
        &floats(&expected["h_n"]),
        tol,
    );
    match (&fwd.final_cell, expected["c_n"].is_null()) {
        (Some(c), false) => common::assert_close(
            &format!("{label} final_cell (c_n)"),
            &common::flat(c),
            &floats(&expected["c_n"]),
            tol,
        ),
        (None, true) => {}
        (got, _) => panic!(
            "{label}: final_cell is {} but PyTorch's c_n is {}",
            if got.is_some() { "Some" } else { "None" },
            expected["c_n"]
        ),
    }
    let want_loss = expected["loss"].as_f64().expect("loss") as f32;
    common::assert_close(&format!("{label} loss"), &[fwd.loss], &[want_loss], tol);
}

/// Everything of one case on one device; false when the device skipped it.
fn check_case(case: &Value, device: &Device) -> bool {
    let tol = tolerance(device);
    let name = case["name"].as_str().expect("name");
    let label = format!("[{}] {name}", if device.is_gpu() { "gpu" } else { "cpu" });
    let config = config(&case["config"]);
    let start = params(&case["params"]);
    let batch = batch(case);
    let expected = &case["expected"];

    let Some(mut rnn) = bind(&config, &start, device, name) else {
        return false;
    };
    check_forward(&label, &mut rnn, &batch, expected, tol);
    let (loss, grads) = rnn.loss_and_gradients(&batch).expect("gradients");
    let want_loss = expected["loss"].as_f64().expect("loss") as f32;
    common::assert_close(
        &format!("{label} loss (with gradients)"),
        &[loss],
        &[want_loss],
        tol,
    );
    common::assert_params_close(
        &format!("{label} gradient"),
        &grads,
        &params(&expected["grads"]),
        tol,
    );

    for run in case["optim"].as_array().expect("optim") {
        let what = format!(
            "{label} {} lr {} clip {}",
            run["optimizer"].as_str().expect("optimizer"),
            run["lr"],
            run["clip"]
        );
        let mut rnn = bind(&config, &start, device, name).expect("bound once already");
        let mut opt = optimizer(run);
        let losses: Vec<f32> = (0..run["steps"].as_u64().expect("steps"))
            .map(|_| rnn.train_step(&batch, &mut opt).expect("train step"))
            .collect();
        common::assert_close(
            &format!("{what} losses"),
            &losses,
            &floats(&run["losses"]),
            tol,
        );
        common::assert_params_close(
            &format!("{what} params after {} steps", losses.len()),
            &rnn.params().expect("params"),
            &params(&run["params_after"]),
            tol,
        );
    }
    true
}

/// Runs every check, catching failures so that one run reports all of them.
fn run_all<F: FnOnce() -> bool>(what: &str, items: impl IntoIterator<Item = (String, F)>) {
    let (mut ran, mut skipped, mut failed) = (0, Vec::new(), Vec::new());
    for (label, check) in items {
        match catch_unwind(AssertUnwindSafe(check)) {
            Ok(true) => ran += 1,
            Ok(false) => skipped.push(label),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                // assert_close's messages start with the label already
                failed.push(if msg.starts_with(&label) {
                    msg
                } else {
                    format!("{label}: {msg}")
                });
            }
        }
    }
    eprintln!(
        "{what}: {ran} checked, {} skipped (unsupported on the GPU), {} failed",
        skipped.len(),
        failed.len()
    );
    if !skipped.is_empty() {
        eprintln!("  skipped: {}", skipped.join(", "));
    }
    assert!(
        failed.is_empty(),
        "{} {what} disagree with PyTorch:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn golden_cases_cover_the_model_matrix() {
    let root = root();
    let cases = root["cases"].as_array().expect("cases");
    assert!(cases.len() >= 12, "golden.json has its cases");
    let has = |pred: &dyn Fn(&Value) -> bool| cases.iter().any(|c| pred(&c["config"]));
    for cell in ["tanh", "relu", "lstm", "gru"] {
        assert!(has(&|c| c["cell"] == cell), "a {cell} case");
        assert!(
            has(&|c| c["cell"] == cell && c["bidirectional"] == true),
            "a bidirectional {cell} case"
        );
    }
    for layers in [1, 2] {
        assert!(has(&|c| c["num_layers"] == layers), "a {layers}-layer case");
    }
    for head in ["per_step", "last_step"] {
        assert!(has(&|c| c["head"] == head), "a {head} case");
    }
    for c in cases {
        let name = &c["name"];
        assert!(
            c["lengths"].as_array().unwrap().iter().any(|n| n == 1),
            "{name}: a length-1 sequence"
        );
        for l in c["params"]["layers"].as_array().unwrap() {
            assert_ne!(
                floats(&l["b_ih"]),
                floats(&l["b_hh"]),
                "{name}: distinct biases"
            );
        }
        let f32_err = c["f32_rel_error"].as_f64().expect("f32_rel_error");
        assert!(
            f32_err < 1e-6,
            "{name}: PyTorch's float32 run is {f32_err:e} off"
        );
        let sgd = c["optim"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["optimizer"] == "sgd");
        let sgd = sgd.unwrap_or_else(|| panic!("{name}: an sgd run"));
        let clip = sgd["clip"].as_f64().expect("sgd runs clip");
        assert!(
            floats(&sgd["grad_norms"]).iter().all(|&n| n as f64 > clip),
            "{name}: clipping is active at every sgd step"
        );
    }
    let targets = |k: &str| cases.iter().any(|c| c["targets"].get(k).is_some());
    assert!(targets("classes") && targets("values"));
}

#[test]
fn every_case_matches_pytorch_on_every_device() {
    let root = root();
    let cases = root["cases"].as_array().expect("cases");
    for device in common::devices() {
        let tag = if device.is_gpu() { "gpu" } else { "cpu" };
        run_all(
            &format!("golden cases on {}", device.describe()),
            cases.iter().map(|case| {
                let device = &device;
                let label = format!("[{tag}] {}", case["name"].as_str().unwrap());
                (label, move || check_case(case, device))
            }),
        );
    }
}

fn checkpoint_path(entry: &Value) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(entry["file"].as_str().expect("file"))
}

#[test]
fn pytorch_checkpoints_load_and_give_pytorchs_outputs() {
    let root = root();
    let entries: Vec<&Value> = root["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter(|e| e["refused"] == false)
        .collect();
    assert!(
        entries.len() >= 4,
        "RNN, LSTM, GRU and bidirectional LSTM checkpoints"
    );
    for device in common::devices() {
        let tag = if device.is_gpu() { "gpu" } else { "cpu" };
        run_all(
            &format!("PyTorch checkpoints on {}", device.describe()),
            entries.iter().map(|&entry| {
                let device = &device;
                let name = entry["name"].as_str().unwrap();
                let label = format!("[{tag}] checkpoint {name}");
                let key = label.clone();
                let check = move || {
                    let path = checkpoint_path(entry);
                    let config = config(&entry["config"]);
                    let loaded = RnnParams::load(&path)
                        .unwrap_or_else(|e| panic!("{label}: RnnParams::load: {e}"));
                    let directions = if config.bidirectional { 2 } else { 1 };
                    assert_eq!(
                        loaded.layers.len(),
                        config.num_layers * directions,
                        "{label}: one LayerParams per layer and direction"
                    );
                    let exact = RnnParams::load_for(&config, &path)
                        .unwrap_or_else(|e| panic!("{label}: RnnParams::load_for: {e}"));
                    assert_eq!(
                        common::param_bits(&loaded),
                        common::param_bits(&exact),
                        "{label}: load and load_for read the same tensors"
                    );
                    let Some(mut rnn) = bind(&config, &loaded, device, &label) else {
                        return false;
                    };
                    check_forward(
                        &label,
                        &mut rnn,
                        &batch(entry),
                        &entry["expected"],
                        tolerance(device),
                    );
                    true
                };
                (key, check)
            }),
        );
    }
}

#[test]
fn pytorch_lstm_with_projection_is_refused() {
    let root = root();
    let entry = root["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .find(|e| e["refused"] == true)
        .expect("the proj_size checkpoint");
    let path = checkpoint_path(entry);
    assert!(path.exists(), "{} exists", path.display());
    let config = RnnConfig::new(3, 4, 3).cell(Cell::Lstm);
    for (how, result) in [
        ("load", RnnParams::load(&path)),
        ("load_for", RnnParams::load_for(&config, &path)),
    ] {
        match result {
            Err(e @ Error::Checkpoint { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("weight_hr") || msg.contains("proj"),
                    "{how}: the refusal names the projection: {msg}"
                );
            }
            Err(e) => panic!("{how}: refused, but not as a checkpoint error: {e}"),
            Ok(_) => panic!("{how}: an LSTM with proj_size > 0 loaded"),
        }
    }
}

/// The recurrent layers of an encoder entry, with an empty readout.
fn encoder_params(e: &Value, config: &RnnConfig) -> RnnParams {
    let mut p = params(&serde_json::json!({"layers": e["layers"], "w_out": [], "b_out": []}));
    p.w_out = Array2::zeros((0, config.state_width()));
    p
}

/// An encoder (`Head::None`) against autograd: the states and final states of `encode`,
/// the parameter and input gradients of `backward` given PyTorch's gradient on the
/// states, and SGD+clip / Adam runs through `backward` + `apply_gradients`.
fn check_encoder(e: &Value, device: &Device) -> bool {
    let name = e["name"].as_str().expect("name");
    let label = format!("{name} on {}", device.describe());
    let config = config(&e["config"]);
    let tol = tolerance(device);
    let inputs: Vec<Array2<f32>> = e["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(matrix)
        .collect();
    let batch = SequenceBatch::inputs_only(inputs).expect("valid inputs");
    let width = config.state_width();
    let grad_states = Array3::from_shape_vec(
        (batch.len(), batch.max_len(), width),
        floats(&e["grad_states"]),
    )
    .expect("grad_states shape");
    let start = encoder_params(e, &config);
    let Some(mut rnn) = bind(&config, &start, device, &label) else {
        return false;
    };
    let x = &e["expected"];
    let encoded = rnn.encode(&batch).expect("encode");
    common::assert_close(
        &format!("{label} states"),
        &common::flat(&encoded.states),
        &floats(&x["states"]),
        tol,
    );
    common::assert_close(
        &format!("{label} h_n"),
        &common::flat(&encoded.final_hidden),
        &floats(&x["h_n"]),
        tol,
    );
    if let Some(c_n) = encoded.final_cell {
        common::assert_close(
            &format!("{label} c_n"),
            &common::flat(&c_n),
            &floats(&x["c_n"]),
            tol,
        );
    }
    let grads = rnn.backward(&batch, &grad_states).expect("backward");
    let want = encoder_params(&serde_json::json!({"layers": x["grads"]}), &config);
    for (u, (g, w)) in grads.params.layers.iter().zip(&want.layers).enumerate() {
        for (what, a, b) in [
            ("w_ih", common::flat(&g.w_ih), common::flat(&w.w_ih)),
            ("w_hh", common::flat(&g.w_hh), common::flat(&w.w_hh)),
            ("b_ih", g.b_ih.to_vec(), w.b_ih.to_vec()),
            ("b_hh", g.b_hh.to_vec(), w.b_hh.to_vec()),
        ] {
            common::assert_close(&format!("{label} grad layers[{u}].{what}"), &a, &b, tol);
        }
    }
    for (i, (got, want)) in grads
        .inputs
        .iter()
        .zip(x["input_grads"].as_array().expect("input_grads"))
        .enumerate()
    {
        common::assert_close(
            &format!("{label} input grad {i}"),
            &common::flat(got),
            &floats(want),
            tol,
        );
    }
    for run in e["optim"].as_array().expect("optim") {
        let mut rnn = bind(&config, &start, device, &label).expect("bound above");
        let mut opt = optimizer(run);
        for _ in 0..run["steps"].as_u64().expect("steps") {
            let g = rnn.backward(&batch, &grad_states).expect("backward");
            rnn.apply_gradients(&g.params, &mut opt)
                .expect("apply_gradients");
        }
        let after = encoder_params(&serde_json::json!({"layers": run["layers_after"]}), &config);
        let got = rnn.params().expect("params");
        let what = format!(
            "{label} {} run",
            run["optimizer"].as_str().expect("optimizer")
        );
        common::assert_close(&what, &got.to_flat(), &after.to_flat(), tol);
    }
    true
}

#[test]
fn encoders_match_pytorchs_autograd_and_optimizers_on_every_device() {
    let root = root();
    let encoders = root["encoders"].as_array().expect("encoders");
    assert!(encoders.len() >= 3, "encoder cases");
    let mut items = Vec::new();
    for device in common::devices() {
        for e in encoders {
            let label = format!(
                "{} on {}",
                e["name"].as_str().expect("name"),
                device.describe()
            );
            let device = device.clone();
            items.push((label, move || check_encoder(e, &device)));
        }
    }
    run_all("encoders", items);
}
