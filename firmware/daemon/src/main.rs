//! `isthmusd`, the firmware daemon: wires the configuration store, the IKE driver, the dataplane
//! and the plugin host together, serves the management API, and is PID 1 inside the image.

mod pid1;

fn main() {
    // Inside the image this process is PID 1: do init's duties first (returns at once elsewhere).
    pid1::boot();
    eprintln!("isthmusd {}: the daemon is not built yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(1);
}
