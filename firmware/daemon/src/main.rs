//! `isthmusd`, the firmware daemon: wires the configuration store, the IKE driver, the dataplane
//! and the plugin host together, serves the management API, and is PID 1 inside the image.
//!
//! On a host: `isthmusd --config FILE --data-dir DIR`. Inside the image it runs with no
//! arguments: the data partition holds the store, and on first boot the configuration is read from
//! `/data/isthmus/config.toml` once it appears there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use isthmusd::core::{Core, Options};
use isthmusd::system::pid1;

#[derive(Parser, Debug)]
#[command(name = "isthmusd", version, about = "The Isthmus VPN gateway daemon")]
struct Args {
    /// Configuration committed as revision 1 when the store is empty; later, applied instead of
    /// an active revision that fails to apply (see docs/config.md, "Recovery").
    #[arg(long, default_value = "/data/isthmus/config.toml")]
    config: PathBuf,
    /// Store, API certificate and plugins.
    #[arg(long, default_value = "/data/isthmus")]
    data_dir: PathBuf,
    /// Where the API listens, instead of its defaults: 127.0.0.1:8080 (plain HTTP) always, and the
    /// management address and port from the configuration (TLS). TLS unless the address is
    /// loopback.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Serve TLS even on loopback.
    #[arg(long)]
    tls: bool,
    /// Wait for the configuration file to appear when the store is empty (first boot).
    #[arg(long)]
    wait_for_config: bool,
    /// Do not touch the kernel's links, addresses, routes or firewall.
    #[arg(long)]
    no_net: bool,
    /// Run no dataplane and no IKE (the API and the store only).
    #[arg(long)]
    no_tunnels: bool,
}

fn main() {
    // Inside the image this process is PID 1: do init's duties first (returns at once elsewhere).
    let in_image = std::process::id() == 1;
    pid1::boot();
    let mut args = Args::parse();
    if in_image {
        args.wait_for_config = true;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run(args) {
        tracing::error!("{e:#}");
        eprintln!("isthmusd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.wait_for_config {
        let store_exists = args.data_dir.join("config").exists();
        while !store_exists && !args.config.exists() {
            tracing::info!("waiting for {} (first boot)", args.config.display());
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let core = Core::start(Options {
        data_dir: args.data_dir.clone(),
        config_file: Some(args.config.clone()),
        manage_net: !args.no_net,
        run_tunnels: !args.no_tunnels,
    })
    .inspect_err(|e| {
        isthmusd::system::upgrade::note_start_failure(&args.data_dir, &format!("{e:#}"))
    })?;
    // After an upgrade: bless the slot once the health gate passes, or reboot.
    let gate = core.clone();
    std::thread::spawn(move || {
        isthmusd::system::upgrade::run_gate(&isthmusd::system::upgrade::Gate {
            readings: &|| gate.readings(),
            data_dir: gate.data_dir(),
            events: gate.events(),
            alarms: &gate.alarms,
        })
    });
    // Customer gateways known by DNS name: resolved off the apply path, followed when they move.
    let resolver = core.clone();
    std::thread::Builder::new().name("peer-names".into()).spawn(move || {
        loop {
            resolver.refresh_peer_names();
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(core, args))
}

async fn serve(core: Arc<Core>, args: Args) -> anyhow::Result<()> {
    core.alarms.start_delivery();
    // Once a second: commit-confirm deadline, counters, alarms.
    let ticker = core.clone();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            iv.tick().await;
            let c = ticker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                c.poll_confirm();
                let r = c.readings();
                c.monitor.sample(&r, &c.health);
                c.alarms.evaluate(&r, &c.monitor, &c.health, c.events());
            })
            .await;
        }
    });
    let shutdown = core.clone();
    tokio::select! {
        r = isthmusd::http::serve_all(core.clone(), args.api, args.tls, &args.data_dir) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = sigterm() => tracing::info!("terminated"),
    }
    tokio::task::spawn_blocking(move || shutdown.shutdown()).await?;
    Ok(())
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
