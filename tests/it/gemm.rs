//! The GPU matrix-product kernels alone, every tiling and K split against ndarray's
//! product, over shapes off the tile grids, all four transpose combinations, and the
//! errors of a bad product.

use crate::common::{self, random_matrix as random, stored};

use unfold::internals::gpu::{GemmPlan, ResidentProduct, Tile};
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Error};

const PLANS: [GemmPlan; 7] = [
    GemmPlan {
        tile: Tile::Tile32,
        splits: 1,
    },
    GemmPlan {
        tile: Tile::Tile32,
        splits: 4,
    },
    GemmPlan {
        tile: Tile::Tile64,
        splits: 1,
    },
    GemmPlan {
        tile: Tile::Tile64,
        splits: 3,
    },
    GemmPlan {
        tile: Tile::Tile128,
        splits: 1,
    },
    GemmPlan {
        tile: Tile::Tile128,
        splits: 2,
    },
    // more splits than the K slices allow: ranges shrink to what K has
    GemmPlan {
        tile: Tile::Tile64,
        splits: 32,
    },
];

#[test]
fn every_tiling_matches_ndarray() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = SplitMix64::new(7);
    // (m, n, k): a single element, off both tile grids, K off the slice depths, K long
    // enough for several ranges, and a row/column vector
    for (m, n, k) in [
        (1, 1, 1),
        (65, 130, 17),
        (129, 257, 40),
        (70, 9, 300),
        (1, 200, 33),
        (150, 1, 64),
    ] {
        let (a, b) = (random(m, k, &mut rng), random(k, n, &mut rng));
        let want = a.dot(&b);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for plan in PLANS.into_iter().map(Some).chain([None]) {
                if let Some(plan) = plan.filter(|p| p.splits > 1 && k > 16) {
                    // K longer than one slice: the forced split runs split (the scratch
                    // holds its ranges), so that the split kernels are what is checked
                    let r = ranges(plan, (m as u32, n as u32, k as u32));
                    assert!(r > 1, "{m}x{n}x{k} {plan:?} runs unsplit");
                }
                let (sa, sb) = (stored(&a, ta), stored(&b, tb));
                let mut product = ResidentProduct::new(&gpu, sa.view(), sb.view(), (ta, tb), plan)
                    .expect("product");
                product.run(2).expect("run");
                let got = product.output().expect("output");
                common::assert_close(
                    &format!("{m}x{n}x{k} transposed {ta}/{tb} {:?}", product.plan()),
                    &common::flat(&got),
                    &common::flat(&want),
                    1e-5,
                );
            }
        }
    }
}

/// How many K ranges a product under `plan` is computed in (1: unsplit), read from the
/// scratch memory the plan asks for: a range's partial product is `m × n` floats.
fn ranges(plan: GemmPlan, (m, n, k): (u32, u32, u32)) -> u32 {
    let scratch = plan.scratch_floats(m, n, k);
    let mn = (m * n) as usize;
    assert_eq!(scratch % mn, 0, "{plan:?} {m}x{n}x{k}: scratch {scratch}");
    (scratch / mn).max(1) as u32
}

#[test]
fn the_chosen_plan_fits_the_shape() {
    // every plan the library chooses, over shapes on and off the tile grids and K from
    // 1 to a weight gradient's many thousand tokens: a tiling the shape fills, a split
    // that really splits (its scratch holds every range's partial product), ranges at
    // least 128 deep (each costs a write and a read of m × n floats), never more
    // workgroups than a large GPU runs at once, and on one tiling no fewer splits for a
    // longer K
    let sides = [1, 8, 63, 64, 65, 128, 129, 300, 512, 1024, 4096];
    let depths = [1, 16, 100, 255, 256, 600, 2000, 6400, 16384];
    for m in sides {
        for n in sides {
            let mut last = GemmPlan::choose(m, n, 1);
            for k in depths {
                let plan = GemmPlan::choose(m, n, k);
                let what = format!("{m}x{n}x{k}: {plan:?}");
                assert!((1..=32).contains(&plan.splits), "{what}");
                if plan.tile == Tile::Tile128 {
                    assert!(
                        m >= 128 && n >= 128,
                        "{what}: 128x128 tiles left mostly idle"
                    );
                }
                let side = plan.tile.size();
                let tiles = m.div_ceil(side) * n.div_ceil(side);
                let r = ranges(plan, (m, n, k));
                if plan.splits == 1 {
                    assert_eq!(plan.scratch_floats(m, n, k), 0, "{what}");
                } else {
                    assert!((2..=plan.splits).contains(&r), "{what}: {r} ranges");
                    // K ranges are rounded up to whole 16-deep slices: a few fewer
                    // ranges than splits, never fewer than half
                    assert!(2 * r >= plan.splits, "{what}: {r} ranges");
                    assert!(k / r >= 128, "{what}: {r} ranges of K {k}");
                    assert!(tiles * r <= 512, "{what}: {tiles} tiles x {r} ranges");
                }
                if plan.tile == last.tile {
                    assert!(
                        plan.splits >= last.splits,
                        "{what}: fewer splits for a longer K"
                    );
                }
                last = plan;
            }
        }
    }
    // what the rules are for: weight gradients (few output tiles, K every token of a
    // batch) are split, on the big tile when the output is wide; large products take
    // the big tile whole; a short K is never split
    let weight_grad = GemmPlan::choose(512, 512, 6400);
    assert_eq!(weight_grad.tile, Tile::Tile128);
    assert!(ranges(weight_grad, (512, 512, 6400)) > 1, "{weight_grad:?}");
    let short_weight_grad = GemmPlan::choose(512, 128, 2000);
    assert!(
        ranges(short_weight_grad, (512, 128, 2000)) > 1,
        "{short_weight_grad:?}"
    );
    assert_eq!(
        GemmPlan::choose(4096, 4096, 4096),
        GemmPlan {
            tile: Tile::Tile128,
            splits: 1
        }
    );
    assert_eq!(GemmPlan::choose(8, 8, 200).splits, 1, "short K stays whole");
}

#[test]
fn bad_products_are_refused() {
    let a = Array2::<f32>::zeros((3, 4));
    let at = Array2::<f32>::zeros((4, 3));
    let b = Array2::<f32>::zeros((5, 2));
    let e = ResidentProduct::new(&Device::cpu(), a.view(), at.view(), (false, false), None)
        .err()
        .expect("a CPU device was accepted");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
    let Some(gpu) = common::gpu() else { return };
    let e = ResidentProduct::new(&gpu, a.view(), b.view(), (false, false), None)
        .err()
        .expect("mismatched inner sizes were accepted");
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("op(A) 3 × 4, op(B) 5 × 2"), "{e}");
    let empty = Array2::<f32>::zeros((0, 4));
    let e = ResidentProduct::new(&gpu, empty.view(), at.view(), (false, false), None)
        .err()
        .expect("an empty operand was accepted");
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let zero_splits = GemmPlan {
        tile: Tile::Tile64,
        splits: 0,
    };
    let e = ResidentProduct::new(&gpu, a.view(), at.view(), (false, false), Some(zero_splits))
        .err()
        .expect("zero splits were accepted");
    assert!(e.to_string().contains("splits"), "{e}");
}
