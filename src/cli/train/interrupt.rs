//! Ctrl-C during training: the first ends the loop with a last checkpoint, a second quits
//! at once.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler; a failure only costs the last checkpoint, so it is a warning.
pub fn install_handler() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without a last checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: writing a last checkpoint (Ctrl-C again to quit at once)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not write a last checkpoint ({e})");
    }
}

/// Whether a Ctrl-C came.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
