//! Power-on to readiness of the two lab appliances (both booting at once, direct kernel boot), and,
//! when the image carries the real daemon, power-on to the first packet through the tunnel (issue 8
//! target: 10 s under TCG).

use std::time::{Duration, Instant};

use isthmus_lab::lab::{DaemonMode, Lab, LabOptions};
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
        _ => match isthmus_lab::lab::lab_data_files(&root).map_err(|e| e.to_string()).and_then(
            |files| {
                let mut o = isthmus_image::Options::new(&root);
                o.data_files = files;
                isthmus_image::build(&o).map_err(|e| e.to_string())
            },
        ) {
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
        uefi: [false, false],
    };
    let t0 = Instant::now();
    let mut lab = match Lab::boot(&opts) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("boot bench: {e}");
            std::process::exit(1);
        }
    };
    let ready = t0.elapsed().as_secs_f64();
    let details: Vec<String> = lab
        .sites
        .iter()
        .map(|s| {
            format!(
                "  {}: {:.1} s to `{}` ({accel:?})",
                s.spec.name,
                s.ready_secs,
                s.ready_line.trim()
            )
        })
        .collect();
    // With the real daemon: power-on to the first packet through the tunnel.
    let mode = lab.wire(&root);
    if let Ok(DaemonMode::WaitsForConfig) = mode {
        match lab.wait_tunnel(Duration::from_secs(120)) {
            Ok(Some(t)) => println!("BENCH boot_to_tunnel_sec {t:.1} s"),
            Ok(None) => eprintln!("boot bench: no packet crossed the tunnel within 120 s"),
            Err(e) => eprintln!("boot bench: {e}"),
        }
    }
    println!("BENCH boot_to_ready_sec {ready:.1} s");
    for d in details {
        println!("{d}");
    }
    lab.shutdown();
}
