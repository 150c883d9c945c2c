//! `isthmus`, the operator CLI: every management API action, as tables or JSON.

fn main() {
    eprintln!("isthmus {}: the CLI is not built yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(1);
}
