//! Golden values from PyTorch's `nn.RNN` + `nn.Linear` (`tests/golden/golden.json`, made by
//! `tests/golden/make_golden.py`): forward outputs, final states, loss, every gradient,
//! and parameters after SGD / momentum / Adam runs with and without clipping. Checked on
//! the CPU path, and on the GPU path where an adapter exists.

use crate::common;

use serde_json::Value;
use unfold::ndarray::{Array1, Array2};
use unfold::{Device, LayerParams, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

const GOLDEN: &str = include_str!("../golden/golden.json");

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

fn params(v: &Value) -> RnnParams {
    RnnParams {
        layers: v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| LayerParams {
                w_ih: matrix(&l["w_ih"]),
                w_hh: matrix(&l["w_hh"]),
                b: Array1::from_vec(floats(&l["b"])),
            })
            .collect(),
        w_out: matrix(&v["w_out"]),
        b_out: Array1::from_vec(floats(&v["b_out"])),
    }
}

struct Case {
    name: String,
    config: RnnConfig,
    params: RnnParams,
    batch: SequenceBatch,
    json: Value,
}

fn cases() -> Vec<Case> {
    let root: Value = serde_json::from_str(GOLDEN).expect("golden.json parses");
    root["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let get = |k: &str| c[k].as_u64().expect(k) as usize;
            let config = common::config(
                get("input_size"),
                get("hidden_size"),
                get("output_size"),
                get("num_layers"),
                c["nonlinearity"] == "relu",
                c["head"] == "last_step",
            );
            let inputs = c["inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .map(matrix)
                .collect();
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
            Case {
                name: c["name"].as_str().expect("name").to_string(),
                config,
                params: params(&c["params"]),
                batch: SequenceBatch::new(inputs, targets).expect("golden batch is valid"),
                json: c.clone(),
            }
        })
        .collect()
}

fn optimizer(o: &Value) -> Optimizer {
    let lr = o["lr"].as_f64().expect("lr") as f32;
    let opt = match o["optimizer"].as_str().expect("optimizer") {
        "sgd" => Optimizer::sgd(lr),
        "momentum" => Optimizer::sgd_momentum(lr, o["momentum"].as_f64().expect("momentum") as f32),
        "adam" => Optimizer::adam(lr),
        other => panic!("unknown optimizer {other}"),
    };
    match o["clip"].as_f64() {
        Some(c) => opt.clip_grad_norm(c as f32),
        None => opt,
    }
}

fn check_device(device: &Device, tol: f64) {
    let all = cases();
    assert!(all.len() >= 4, "golden.json has its cases");
    for case in all {
        let name = &case.name;
        let expected = &case.json["expected"];
        let mut rnn = Rnn::new(case.config.clone(), case.params.clone(), device).expect("model");
        let fwd = rnn.forward(&case.batch).expect("forward");
        common::assert_close(
            &format!("{name} outputs"),
            &common::flat(&fwd.outputs),
            &floats(&expected["outputs"]),
            tol,
        );
        common::assert_close(
            &format!("{name} final_hidden"),
            &common::flat(&fwd.final_hidden),
            &floats(&expected["final_hidden"]),
            tol,
        );
        let want_loss = expected["loss"].as_f64().expect("loss") as f32;
        common::assert_close(&format!("{name} loss"), &[fwd.loss], &[want_loss], tol);
        let (loss, grads) = rnn.loss_and_gradients(&case.batch).expect("gradients");
        common::assert_close(
            &format!("{name} loss (with gradients)"),
            &[loss],
            &[want_loss],
            tol,
        );
        common::assert_params_close(
            &format!("{name} gradient"),
            &grads,
            &params(&expected["grads"]),
            tol,
        );

        for run in case.json["optim"].as_array().expect("optim") {
            let label = format!(
                "{name} {} lr {} clip {}",
                run["optimizer"], run["lr"], run["clip"]
            );
            let mut rnn =
                Rnn::new(case.config.clone(), case.params.clone(), device).expect("model");
            let mut opt = optimizer(run);
            let losses: Vec<f32> = (0..run["steps"].as_u64().expect("steps"))
                .map(|_| rnn.train_step(&case.batch, &mut opt).expect("train step"))
                .collect();
            common::assert_close(
                &format!("{label} losses"),
                &losses,
                &floats(&run["losses"]),
                tol,
            );
            common::assert_params_close(
                &format!("{label} params after"),
                &rnn.params().expect("params"),
                &params(&run["params_after"]),
                tol,
            );
        }
    }
}

#[test]
fn cpu_matches_pytorch() {
    check_device(&Device::cpu(), 1e-5);
}

#[test]
fn gpu_matches_pytorch() {
    if let Some(device) = common::gpu() {
        check_device(&device, 1e-4);
    }
}
