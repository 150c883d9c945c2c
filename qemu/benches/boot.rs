//! Power-on to readiness of the two lab appliances (both booting at once, direct kernel boot), and
//! the image's compressed size. `boot_to_tunnel_sec` replaces `boot_to_ready_sec` once the daemon
//! brings tunnels up.

use std::time::Instant;

use isthmus_lab::lab::{Lab, LabOptions};
use isthmus_lab::vm::{Accel, qemu_binary};
use isthmus_lab::wan::Impairment;

fn main() {
    let root = isthmus_image::workspace_root();
    if let Some(why) = isthmus_lab::unavailable(&root) {
        eprintln!("boot bench skipped: {why}");
        return;
    }
    let image = match isthmus_image::read_manifest(&root.join("build")) {
        Ok(m) if m.raw.exists() => m,
        _ => match isthmus_image::build(&isthmus_image::Options::new(&root)) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("boot bench: image build failed: {e}");
                std::process::exit(1);
            }
        },
    };
    let accel = Accel::detect();
    let opts = LabOptions {
        qemu: qemu_binary(&root).unwrap_or_default(),
        accel,
        image,
        dir: root.join("build/bench-lab"),
        impairment: Impairment::default(),
        api_ports: [None, None],
        mem_mib: 512,
    };
    let t0 = Instant::now();
    match Lab::boot(&opts) {
        Ok(lab) => {
            println!("BENCH boot_to_ready_sec {:.1} s", t0.elapsed().as_secs_f64());
            for s in &lab.sites {
                println!(
                    "  {}: {:.1} s to `{}` ({accel:?})",
                    s.spec.name,
                    s.ready_secs,
                    s.ready_line.trim()
                );
            }
            lab.shutdown();
        }
        Err(e) => {
            eprintln!("boot bench: {e}");
            std::process::exit(1);
        }
    }
}
