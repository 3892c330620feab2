//! Checkpoints: safetensors files with PyTorch's names (`rnn.weight_ih_l{k}`,
//! `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}` = b, `rnn.bias_hh_l{k}` = zeros, `out.weight`,
//! `out.bias`); exact round trips; atomic writes; loading sums the two biases; failed saves
//! leave what was there.

use crate::common;

use common::{config, param_bits, params, random_batch};
use safetensors::tensor::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use unfold::ndarray::{Array2, ShapeBuilder};
use unfold::{Device, Error, Rnn, RnnParams};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Parameters with awkward values: negative zero, subnormals, extremes.
fn awkward(p: &mut RnnParams) {
    p.layers[0].w_ih[[0, 0]] = -0.0;
    p.layers[0].w_hh[[1, 1]] = f32::MIN_POSITIVE / 8.0;
    p.layers[1].b_ih[0] = f32::MAX;
    p.layers[1].b_hh[1] = -0.0;
    p.w_out[[0, 1]] = f32::MIN;
    p.b_out[0] = 1e-40;
}

#[test]
fn round_trip_is_exact() {
    let dir = scratch("round-trip");
    for layers in [1, 2, 3] {
        let c = config(3, 5, 4, layers, false, false);
        let mut p = params(&c, layers as u64);
        if layers >= 2 {
            awkward(&mut p);
        }
        let path = dir.join(format!("l{layers}.safetensors"));
        p.save(&path).unwrap();
        let q = RnnParams::load(&path).unwrap();
        assert_eq!(q, p, "{layers} layers");
        assert_eq!(
            param_bits(&q),
            param_bits(&p),
            "{layers} layers: not bit-exact"
        );
    }
}

#[test]
fn round_trip_of_non_standard_layouts() {
    // arrays in column-major layout save their logical values, not their memory order
    let dir = scratch("layout");
    let c = config(3, 4, 2, 2, false, false);
    let mut p = params(&c, 7);
    let column_major = |a: &Array2<f32>| {
        let mut f = Array2::zeros(a.dim().f());
        f.assign(a);
        assert!(!f.is_standard_layout());
        f
    };
    let w = p.layers[0].w_ih.clone();
    p.layers[0].w_ih = column_major(&w);
    let wo = p.w_out.clone();
    p.w_out = column_major(&wo);
    let path = dir.join("m.safetensors");
    p.save(&path).unwrap();
    let q = RnnParams::load(&path).unwrap();
    assert_eq!(q.layers[0].w_ih, w);
    assert_eq!(q.w_out, wo);
    assert_eq!(q, p);
}

#[test]
fn file_has_pytorch_names_shapes_and_zero_hidden_bias() {
    let dir = scratch("names");
    let c = config(3, 5, 4, 2, false, false);
    let p = params(&c, 2);
    let path = dir.join("m.safetensors");
    p.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = file.names().into_iter().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "out.bias",
            "out.weight",
            "rnn.bias_hh_l0",
            "rnn.bias_hh_l1",
            "rnn.bias_ih_l0",
            "rnn.bias_ih_l1",
            "rnn.weight_hh_l0",
            "rnn.weight_hh_l1",
            "rnn.weight_ih_l0",
            "rnn.weight_ih_l1",
        ]
    );
    let get = |name: &str| {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), data)
    };
    for (k, l) in p.layers.iter().enumerate() {
        let in_size = if k == 0 { 3 } else { 5 };
        assert_eq!(
            get(&format!("rnn.weight_ih_l{k}")),
            (vec![5, in_size], l.w_ih.iter().copied().collect())
        );
        assert_eq!(
            get(&format!("rnn.weight_hh_l{k}")),
            (vec![5, 5], l.w_hh.iter().copied().collect())
        );
        assert_eq!(
            get(&format!("rnn.bias_ih_l{k}")),
            (vec![5], l.b_ih.to_vec())
        );
        assert_eq!(
            get(&format!("rnn.bias_hh_l{k}")),
            (vec![5], l.b_hh.to_vec())
        );
    }
    assert_eq!(
        get("out.weight"),
        (vec![4, 5], p.w_out.iter().copied().collect())
    );
    assert_eq!(get("out.bias"), (vec![4], p.b_out.to_vec()));
}

#[test]
fn both_biases_load_as_separate_parameters() {
    let dir = scratch("biases");
    let c = config(3, 5, 4, 2, false, false);
    let p = params(&c, 3);
    assert_ne!(p.layers[0].b_ih, p.layers[0].b_hh, "init draws both biases");
    let path = dir.join("torch.safetensors");
    common::write_pytorch_checkpoint(&path, &p, "");
    let q = RnnParams::load(&path).unwrap();
    assert_eq!(
        q, p,
        "every tensor, both biases included, as PyTorch wrote it"
    );
    // the model adds both biases: dropping b_hh changes what it computes
    let batch = random_batch(&c, &[3, 2], false, 5);
    let loaded = Rnn::new(c.clone(), q, &Device::cpu())
        .unwrap()
        .forward(&batch)
        .unwrap();
    let mut ih_only = p.clone();
    ih_only.layers.iter_mut().for_each(|l| l.b_hh.fill(0.0));
    let ih_only = Rnn::new(c.clone(), ih_only, &Device::cpu())
        .unwrap()
        .forward(&batch)
        .unwrap();
    assert_ne!(loaded.final_hidden, ih_only.final_hidden);
    // and saving it again writes the same file contents
    let again = dir.join("again.safetensors");
    RnnParams::load(&path).unwrap().save(&again).unwrap();
    assert_eq!(RnnParams::load(&again).unwrap(), p);
}

#[test]
fn saving_over_an_existing_file_replaces_it_fully() {
    let dir = scratch("overwrite");
    let path = dir.join("model.safetensors");
    // a bigger 3-layer checkpoint, then a smaller 1-layer one over it: nothing of the old
    // file may survive (no stale tail, no stale tensors)
    let big_c = config(6, 16, 5, 3, false, false);
    params(&big_c, 1).save(&path).unwrap();
    let big_len = std::fs::metadata(&path).unwrap().len();
    let small_c = config(2, 3, 2, 1, false, false);
    let small = params(&small_c, 2);
    small.save(&path).unwrap();
    let reference = dir.join("reference.safetensors");
    small.save(&reference).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!((bytes.len() as u64) < big_len);
    assert_eq!(
        bytes,
        std::fs::read(&reference).unwrap(),
        "the overwritten file differs from a fresh save"
    );
    assert_eq!(RnnParams::load(&path).unwrap(), small);
    // over a file of junk, too
    std::fs::write(&path, vec![0xAB; 100_000]).unwrap();
    small.save(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&reference).unwrap()
    );
    // and no temporary file is left behind
    assert_eq!(
        entries(&dir),
        ["model.safetensors", "reference.safetensors"]
    );
}

#[test]
fn saving_many_times_leaves_no_temporary_files() {
    let dir = scratch("no-temp");
    let c = config(2, 3, 2, 2, false, false);
    for seed in 0..5 {
        params(&c, seed).save(dir.join("a.safetensors")).unwrap();
        params(&c, seed).save(dir.join("b.safetensors")).unwrap();
    }
    assert_eq!(entries(&dir), ["a.safetensors", "b.safetensors"]);
    assert_eq!(
        RnnParams::load(dir.join("a.safetensors")).unwrap(),
        params(&c, 4)
    );
}

#[test]
fn saving_into_a_missing_directory_is_an_io_error() {
    let dir = scratch("missing-dir");
    let c = config(2, 3, 2, 2, false, false);
    let path = dir.join("no").join("such").join("model.safetensors");
    let e = params(&c, 1)
        .save(&path)
        .expect_err("saved into a missing directory");
    assert!(matches!(&e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("no"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the Io error keeps its cause"
    );
    assert!(
        entries(&dir).is_empty(),
        "the failed save created {:?}",
        entries(&dir)
    );
}

#[test]
fn a_failed_save_leaves_the_existing_file_untouched() {
    let dir = scratch("failed-save");
    let c = config(2, 3, 2, 2, false, false);
    let path = dir.join("model.safetensors");
    let old = params(&c, 1);
    old.save(&path).unwrap();
    let old_bytes = std::fs::read(&path).unwrap();

    // parameters that cannot be a model (w_hh and w_ih disagree on the hidden size)
    let mut bad = params(&c, 2);
    bad.layers[1].w_hh = Array2::zeros((4, 4));
    let e = bad.save(&path).expect_err("saved inconsistent parameters");
    assert!(matches!(&e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        old_bytes,
        "a refused save changed the file"
    );
    assert_eq!(entries(&dir), ["model.safetensors"]);

    // an I/O failure after the temporary file is written: the target is a directory,
    // so the rename into place fails; what is there stays, and the temporary file goes
    let occupied = dir.join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"keep").unwrap();
    let e = params(&c, 3)
        .save(&occupied)
        .expect_err("saved over a directory");
    assert!(matches!(&e, Error::Io { .. }), "{e:?}");
    assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"keep");
    assert_eq!(
        entries(&dir),
        ["model.safetensors", "occupied"],
        "a temporary file was left behind"
    );

    // an I/O failure before anything is written: a read-only directory (only where
    // permissions bind; root ignores them)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = std::fs::File::create(dir.join("probe"));
        if probe.is_ok() {
            let _ = std::fs::remove_file(dir.join("probe"));
            eprintln!("permissions do not bind here (running as root?): read-only case skipped");
        } else {
            let e = params(&c, 4)
                .save(&path)
                .expect_err("saved into a read-only directory");
            assert!(matches!(&e, Error::Io { .. }), "{e:?}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                old_bytes,
                "a failed save changed the file"
            );
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(entries(&dir), ["model.safetensors", "occupied"]);
    }
    assert_eq!(RnnParams::load(&path).unwrap(), old);
}

#[test]
fn concurrent_saves_to_one_path_are_each_atomic() {
    // several threads of one process checkpointing to the same path (a training loop and
    // a signal handler, parallel tests sharing a file), and a reader: each save is atomic,
    // so each succeeds, and every read sees exactly one of the saved parameter sets
    let dir = scratch("concurrent");
    let path = dir.join("model.safetensors");
    let c = config(8, 32, 8, 2, false, false);
    let candidates: Vec<RnnParams> = (0..8).map(|seed| params(&c, seed)).collect();
    candidates[0].save(&path).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (errors, bad_reads, reads) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut bad, mut reads) = (Vec::new(), 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                reads += 1;
                match RnnParams::load(&path) {
                    Ok(p) if candidates.contains(&p) => {}
                    Ok(_) => bad.push("a mix of several saves".to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (bad, reads)
        });
        let writers: Vec<_> = candidates
            .iter()
            .map(|p| {
                let path = &path;
                s.spawn(move || {
                    (0..20)
                        .filter_map(|_| p.save(path).err().map(|e| e.to_string()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let errors: Vec<String> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (bad, reads) = reader.join().unwrap();
        (errors, bad, reads)
    });
    let last = RnnParams::load(&path);
    let leftovers: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n != "model.safetensors")
        .collect();
    assert!(
        errors.is_empty() && bad_reads.is_empty() && leftovers.is_empty(),
        "{} of 160 concurrent saves failed (e.g. {:?}); {} of {reads} concurrent reads saw no whole checkpoint (e.g. {:?}); \
         temporary files left: {leftovers:?}; final file readable: {}",
        errors.len(),
        errors.first(),
        bad_reads.len(),
        bad_reads.first(),
        last.is_ok()
    );
    assert!(
        candidates.contains(&last.unwrap()),
        "the final checkpoint mixes several saves"
    );
}
