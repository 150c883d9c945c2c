//! `isthmus-image` builds the bootable GPT disk image (UEFI, A/B slots, ext4 data partition).
//!
//! ```text
//! isthmus-image [--flavour cloud|generic] [--out DIR] [--daemon PATH] [--refresh]
//!               [--slot-b-tries N [--slot-b-blesses]] [--esp-mib N] [--data-mib N]
//!               [--version V] [--omit-module NAME]...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use isthmus_image::{Options, build, workspace_root};

const USAGE: &str =
    "usage: isthmus-image [--flavour cloud|generic] [--out DIR] [--daemon PATH] [--refresh]
                     [--slot-b-tries N [--slot-b-blesses]] [--esp-mib N] [--data-mib N]
                     [--version V] [--omit-module NAME]...";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::new(&workspace_root());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let number = |v: String, name: &str| {
            v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--flavour" | "--flavor" => {
                opts.flavour = value(arg)?.parse().map_err(|e| format!("{e}"))?
            }
            "--out" => opts.out = PathBuf::from(value(arg)?),
            "--daemon" => opts.daemon = Some(PathBuf::from(value(arg)?)),
            "--refresh" => opts.refresh = true,
            "--slot-b-tries" => opts.slot_b_tries = Some(number(value(arg)?, arg)? as u32),
            "--slot-b-blesses" => opts.slot_b_blesses = true,
            "--esp-mib" => opts.esp_mib = number(value(arg)?, arg)?,
            "--data-mib" => opts.data_mib = number(value(arg)?, arg)?,
            "--version" => opts.version = Some(value(arg)?),
            "--omit-module" => opts.omit_modules.push(value(arg)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    match build(&opts) {
        Ok(m) => {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!(
                "isthmus-image: kernel {} ({}), {} modules",
                m.kernel_release,
                m.flavour,
                m.modules.len()
            );
            println!("  initramfs {} ({:.1} MiB)", m.initrd.display(), mib(m.initrd_bytes));
            println!("  raw       {} ({:.1} MiB)", m.raw.display(), mib(m.raw_bytes));
            println!(
                "  qcow2     {} ({:.1} MiB compressed)",
                m.qcow2.display(),
                mib(m.qcow2_bytes)
            );
            println!("  ESP: {}", m.esp_files.join(", "));
            println!("  upgrade   {} (isthmus system upgrade FILE)", m.upgrade.display());
            println!(
                "  built in {:.1} s (SOURCE_DATE_EPOCH={})",
                started.elapsed().as_secs_f64(),
                m.source_date_epoch
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("isthmus-image: {e}");
            ExitCode::FAILURE
        }
    }
}
