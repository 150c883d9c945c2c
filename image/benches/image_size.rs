//! Builds the image and reports its compressed size (issue target: at most 64 MiB).

fn main() {
    let root = isthmus_image::workspace_root();
    let opts = isthmus_image::Options::new(&root);
    match isthmus_image::build(&opts) {
        Ok(m) => {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!("BENCH image_size_compressed_mib {:.1} MiB", mib(m.qcow2_bytes));
            println!(
                "  qcow2 -c {}; raw {:.1} MiB; initramfs {:.1} MiB; kernel {}",
                m.qcow2.display(),
                mib(m.raw_bytes),
                mib(m.initrd_bytes),
                m.kernel_release
            );
        }
        Err(e) => {
            eprintln!("image_size: cannot build the image: {e}");
            std::process::exit(1);
        }
    }
}
