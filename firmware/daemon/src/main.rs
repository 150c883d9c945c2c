//! `isthmusd`, the firmware daemon: wires the configuration store, the IKE driver, the dataplane
//! and the plugin host together, serves the management API, and is PID 1 inside the image.

fn main() {
    eprintln!("isthmusd {}: the daemon is not built yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(1);
}
