//! `unfold devices`: the adapters wgpu sees, and the one `--device auto` picks.

use super::options::pick_auto;
use super::CliResult;
use std::process::ExitCode;

pub fn run() -> CliResult<ExitCode> {
    let adapters = unfold::internals::gpu::list_adapters();
    if adapters.is_empty() {
        println!(
            "no adapters (install a Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1)"
        );
    }
    for a in &adapters {
        println!("{}", unfold::internals::gpu::describe_adapter(a));
    }
    println!("auto picks: {}", pick_auto().describe());
    Ok(ExitCode::SUCCESS)
}
