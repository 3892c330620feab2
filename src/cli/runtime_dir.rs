//! Keeps Vulkan's window-system probe quiet.
//!
//! When wgpu creates a Vulkan instance it enables every window-system extension the
//! driver offers (wgpu 30 has no way to leave them out), and Mesa's device-selection
//! layer, seeing `VK_KHR_wayland_surface`, tries to connect to a Wayland display. Where
//! `XDG_RUNTIME_DIR` is unset (a server, a container, CI), libwayland prints
//! `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` for every instance.
//! A compute-only program has no display to find, so in that case the command line points
//! `XDG_RUNTIME_DIR` at a private, empty directory of its own: the probe then finds no
//! display, silently, and nothing else changes. The directory is removed at exit.

use std::path::{Path, PathBuf};

/// The private runtime directory, if one was made; removed when dropped.
pub struct RuntimeDir(Option<PathBuf>);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir); // empty: nothing is ever written there
        }
    }
}

/// Where `XDG_RUNTIME_DIR` is unset (or not an absolute path, which libwayland refuses
/// the same way), sets it to a new private directory. Call it before any thread starts
/// and before any Vulkan call. Does nothing if the directory cannot be made.
pub fn quiet_window_system_probe() -> RuntimeDir {
    let usable = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).is_absolute());
    if usable {
        return RuntimeDir(None);
    }
    let base = std::env::temp_dir();
    let made = (0..8)
        .map(|i| base.join(format!("unfold-runtime-{}-{i}", std::process::id())))
        .filter(|dir| dir.is_absolute())
        .find(|dir| make_private_dir(dir).is_ok());
    if let Some(dir) = &made {
        // single-threaded still: nothing reads the environment concurrently
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
    RuntimeDir(made)
}

/// A new directory only its owner can use (as `XDG_RUNTIME_DIR` must be).
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
