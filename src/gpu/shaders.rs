//! Every WGSL source, compiled into the binary: nothing is read from disk at run time.
//!
//! WGSL has no includes: the cell kernels' shared prelude (`cell_common.wgsl`: their
//! parameter block, bindings and the cells' element-wise math) is prepended to the two
//! files that use it.

/// `shaders/matmul.wgsl`
pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
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

/// Parses and validates a WGSL source with naga, as wgpu would before compiling it.
pub fn validate(name: &str, source: &str) -> Result<(), String> {
    use wgpu::naga;
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    Ok(())
}
