//! `isthmusd`, the firmware daemon: wires the configuration store, the IKE driver, the dataplane
//! and the plugin host together, serves the management API, and is PID 1 inside the image.
//!
//! On a host: `isthmusd --config FILE --data-dir DIR`. Inside the image it runs with no
//! arguments: the data partition holds the store, and on first boot the configuration is read from
//! `/data/isthmus/config.toml` once it appears there. `isthmusd --check FILE` checks a file
//! offline and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use isthmusd::core::{Core, Options, Reload, StopMode};
use isthmusd::obs::log::LogFormat;
use isthmusd::system::pid1;
use sd_notify::NotifyState;

#[derive(Parser, Debug)]
#[command(
    name = "isthmusd",
    version,
    about = "The Isthmus VPN gateway daemon",
    after_help = "The log goes to standard error. ISTHMUS_LOG sets --log-level and \
                  ISTHMUS_LOG_FORMAT sets --log-format; the flags win.\n\n\
                  Signals: SIGHUP re-reads the --config file and commits it as a new revision \
                  (unchanged or invalid files change nothing); SIGTERM stops (see --keep-state). \
                  With NOTIFY_SOCKET set (systemd Type=notify), READY=1 is sent once the API \
                  listens, RELOADING=1 and READY=1 around a reload, STOPPING=1 at stop."
)]
struct Args {
    /// Check FILE and exit, without a daemon, a store or root: parsing, validation and
    /// planning as a commit runs them, but secrets kept in files or the environment are not
    /// read. Errors and warnings go to standard error as `FILE:LINE:COLUMN: error: PATH: MESSAGE`;
    /// the exit status is 1 when there is an error.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// With --check: the errors and warnings as a JSON array on standard output (objects with
    /// file, line, column, severity, path, message).
    #[arg(long, requires = "check")]
    json: bool,
    /// What to log: a level (error, warn, info, debug, trace) or tracing's EnvFilter directives,
    /// e.g. `info,isthmus_ike=debug`.
    #[arg(long, env = "ISTHMUS_LOG", default_value = "info", value_name = "FILTER",
          value_parser = parse_filter)]
    log_level: String,
    /// How log lines are written: auto is journald when standard error is systemd's journal
    /// stream (JOURNAL_STREAM), text otherwise; text is coloured only on a terminal.
    #[arg(long, env = "ISTHMUS_LOG_FORMAT", value_enum, default_value = "auto")]
    log_format: LogFormat,
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
    /// At stop (SIGTERM, `systemctl stop`), leave the peers untold and the kernel as it is
    /// (firewall table, routes, rules, addresses, TUN device), for a restart that should not
    /// disturb traffic. Without it a stop on a host deletes every IKE SA with its peer and then
    /// removes everything the daemon installed in the kernel.
    #[arg(long)]
    keep_state: bool,
    /// Write the manual page isthmusd.8 into DIR and exit (for packaging).
    #[arg(long, hide = true, value_name = "DIR", exclusive = true)]
    man_page: Option<PathBuf>,
}

fn main() {
    // Inside the image this process is PID 1: do init's duties first (returns at once elsewhere).
    let in_image = std::process::id() == 1;
    pid1::boot();
    let mut args = Args::parse();
    if let Some(dir) = &args.man_page {
        std::process::exit(man_page(dir));
    }
    if let Some(file) = &args.check {
        std::process::exit(check(file, args.json));
    }
    if in_image {
        args.wait_for_config = true;
    }
    // Checked by `parse_filter`.
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).unwrap_or_default();
    isthmusd::obs::log::init(args.log_format, filter);
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run(args) {
        // Once, in the log's format; on standard error as it is only when the log filter
        // drops errors.
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!("{e:#}");
        } else {
            eprintln!("isthmusd: {e:#}");
        }
        std::process::exit(1);
    }
}

fn parse_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// `--man-page DIR`: isthmusd(8), rendered from [`Args`] so it matches the binary it ships
/// with. Returns the exit status.
fn man_page(dir: &Path) -> i32 {
    use clap::CommandFactory;
    match clap_mangen::Man::new(Args::command()).section("8").generate_to(dir) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("isthmusd: writing the manual page into {}: {e}", dir.display());
            1
        }
    }
}

/// `--check FILE`: [`isthmus_config::offline::check_file`] and the planner's check, which
/// `POST /config/validate` runs too. Returns the exit status.
fn check(file: &Path, json: bool) -> i32 {
    let mut c = match isthmus_config::offline::check_file(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("isthmusd: {e}");
            return 1;
        }
    };
    if let Some(e) = c.checked.as_ref().and_then(|k| isthmusd::core::plan::check(&k.config).err()) {
        c.refuse(e);
    }
    if let Err(e) = c.print(json) {
        eprintln!("isthmusd: {e}");
        return 1;
    }
    i32::from(c.has_errors())
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
    use tokio::signal::unix::{SignalKind, signal};
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
    // Inside the image the `--config` file is only the first boot's (the store is the truth
    // there) and PID 1 owns the machine's signals: SIGHUP keeps its default there.
    let in_image = pid1::in_image();
    let mut hup = if in_image { None } else { Some(signal(SignalKind::hangup())?) };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ready = core.clone();
    let api =
        isthmusd::http::serve_all(core.clone(), args.api, args.tls, &args.data_dir, move || {
            notify(&[NotifyState::Ready, NotifyState::Status(&status(&ready, "running"))]);
        });
    tokio::pin!(api);
    let served = loop {
        tokio::select! {
            r = &mut api => break r,
            _ = int.recv() => {
                tracing::info!("interrupted");
                break Ok(());
            }
            _ = term.recv() => {
                tracing::info!("terminated");
                break Ok(());
            }
            Some(()) = async { hup.as_mut()?.recv().await } => {
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                notify(&reloading);
                let c = core.clone();
                let r = tokio::task::spawn_blocking(move || c.reload()).await?;
                match &r {
                    Reload::Refused { .. } => tracing::error!("{r}"),
                    _ => tracing::info!("{r}"),
                }
                notify(&[NotifyState::Ready, NotifyState::Status(&status(&core, &r.to_string()))]);
            }
        }
    };
    // The image's SIGTERM is PID 1 rebooting or powering off: the kernel state goes with the
    // machine, and the peers' SAs may live on in an HA standby that synced them, which a DELETE
    // would tear down. A host's stop is an operator's `systemctl stop`: clean up.
    let mode = if args.keep_state || in_image { StopMode::KeepState } else { StopMode::Clean };
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tokio::task::spawn_blocking(move || core.stop(mode)).await?;
    served
}

/// Tells the service manager (systemd's `Type=notify`, through `NOTIFY_SOCKET`); nothing
/// without it. A manager that does not listen is no reason to fail.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// The `STATUS=` line `systemctl status` shows.
fn status(core: &Core, what: &str) -> String {
    match core.applied() {
        Some((rev, _)) => format!("revision {rev} in force; {what}"),
        None => format!("no configuration in force; {what}"),
    }
}
