//! Every WGSL source, compiled into the binary: nothing is read from disk at run time.
//!
//! WGSL has no includes: the cell kernels' shared prelude (`cell_common.wgsl`: their
//! parameter block, bindings and the cells' element-wise math) is prepended to the two
//! files that use it, and the matrix products' (`matmul_common.wgsl`) to theirs. The
//! cooperative-matrix product also takes a header written for the adapter
//! ([`matmul_coop`]).

/// `shaders/matmul_common.wgsl`: the matrix products' prelude on its own.
pub const MATMUL_COMMON: &str = include_str!("../../shaders/matmul_common.wgsl");
/// `shaders/matmul.wgsl`, with its prelude.
pub const MATMUL: &str = concat!(
    include_str!("../../shaders/matmul_common.wgsl"),
    include_str!("../../shaders/matmul.wgsl")
);
/// `shaders/matmul_coop.wgsl` with its prelude, without the header [`matmul_coop`] adds.
const MATMUL_COOP_BODY: &str = concat!(
    include_str!("../../shaders/matmul_common.wgsl"),
    include_str!("../../shaders/matmul_coop.wgsl")
);

/// `shaders/matmul_coop.wgsl` for an adapter whose cooperative matrices are `fragment` ×
/// `fragment` (f16 operands, f32 accumulator) and whose subgroups have `subgroup`
/// invocations, computing `tile` × `tile` blocks of C (64: four subgroups of 32×32 each;
/// 128: eight of 64×32): the `enable` directives, those sizes and the fragment types, then
/// the prelude and the kernel.
pub fn matmul_coop(fragment: u32, subgroup: u32, tile: u32) -> String {
    let (block_m, block_n) = coop_block(tile);
    format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n\
         const COOP: u32 = {fragment}u;\n\
         const COOP_SUBGROUP: u32 = {subgroup}u;\n\
         const COOP_TILE: u32 = {tile}u;\n\
         const BLOCK_M: u32 = {block_m}u;\n\
         const BLOCK_N: u32 = {block_n}u;\n\
         alias FragA = coop_mat{fragment}x{fragment}<f16, A>;\n\
         alias FragB = coop_mat{fragment}x{fragment}<f16, B>;\n\
         alias FragC = coop_mat{fragment}x{fragment}<f32, C>;\n\
         {MATMUL_COOP_BODY}"
    )
}

/// The block of a `tile` × `tile` tile of C that each subgroup of the
/// cooperative-matrix product computes, rows × columns (see [`matmul_coop`]).
fn coop_block(tile: u32) -> (u32, u32) {
    if tile >= 128 {
        (64, 32)
    } else {
        (32, 32)
    }
}

/// Subgroups in a workgroup of the cooperative-matrix product with `tile` × `tile`
/// blocks of C: one per block.
pub fn coop_subgroups(tile: u32) -> u32 {
    let (block_m, block_n) = coop_block(tile);
    (tile / block_m) * (tile / block_n)
}

/// `shaders/cell_common.wgsl`: the cell kernels' prelude on its own.
pub const CELL_COMMON: &str = include_str!("../../shaders/cell_common.wgsl");
/// `shaders/recurrent.wgsl`: the time-loop kernels, with the cell prelude.
pub const RECURRENT: &str = concat!(
    include_str!("../../shaders/cell_common.wgsl"),
    include_str!("../../shaders/recurrent.wgsl")
);
/// `shaders/cells.wgsl`: the cell's element-wise step on its own (tiled steps of gated
/// cells), with the prelude.
pub const CELLS: &str = concat!(
    include_str!("../../shaders/cell_common.wgsl"),
    include_str!("../../shaders/cells.wgsl")
);
/// `shaders/loss.wgsl`
pub const LOSS: &str = include_str!("../../shaders/loss.wgsl");
/// `shaders/reduce.wgsl`
pub const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
/// `shaders/rows.wgsl`
pub const ROWS: &str = include_str!("../../shaders/rows.wgsl");
/// `shaders/optimizer.wgsl`
pub const OPTIMIZER: &str = include_str!("../../shaders/optimizer.wgsl");
/// `shaders/embedding.wgsl`
pub const EMBEDDING: &str = include_str!("../../shaders/embedding.wgsl");

/// `(file name, source)` of every shader, for validation without an adapter (files that
/// take the cell prelude are validated with it).
pub const ALL: &[(&str, &str)] = &[
    ("matmul_common.wgsl", MATMUL_COMMON),
    ("matmul.wgsl", MATMUL),
    ("cell_common.wgsl", CELL_COMMON),
    ("recurrent.wgsl", RECURRENT),
    ("cells.wgsl", CELLS),
    ("loss.wgsl", LOSS),
    ("reduce.wgsl", REDUCE),
    ("rows.wgsl", ROWS),
    ("optimizer.wgsl", OPTIMIZER),
    ("embedding.wgsl", EMBEDDING),
];

/// `(name, source)` of the cooperative-matrix product for each adapter header it is
/// written for (NVIDIA's 16×16 fragments and subgroups of 32, lavapipe's 8×8 and 8) and
/// each tiling, for validation without an adapter ([`validate_coop`]).
pub fn coop_variants() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (f, s) in [(16, 32), (8, 8)] {
        for tile in [64, 128] {
            out.push((
                format!(
                    "matmul_coop.wgsl ({f}×{f} fragments, subgroups of {s}, {tile}×{tile} tiles)"
                ),
                matmul_coop(f, s, tile),
            ));
        }
    }
    out
}

/// Parses and validates a WGSL source with naga, as wgpu would before compiling it.
pub fn validate(name: &str, source: &str) -> Result<(), String> {
    validate_with(name, source, wgpu::naga::valid::Capabilities::empty())
}

/// [`validate`] for a source that needs what a cooperative-matrix device enables: f16,
/// subgroups and cooperative matrices.
pub fn validate_coop(name: &str, source: &str) -> Result<(), String> {
    use wgpu::naga::valid::Capabilities;
    validate_with(
        name,
        source,
        Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP | Capabilities::COOPERATIVE_MATRIX,
    )
}

fn validate_with(
    name: &str,
    source: &str,
    capabilities: wgpu::naga::valid::Capabilities,
) -> Result<(), String> {
    use wgpu::naga;
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    Ok(())
}
