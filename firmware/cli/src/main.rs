//! `isthmus`, the operator CLI: every management API action, as tables for people or `--json` for
//! scripts. Exit codes: 0 success, 1 error, 2 usage, 3 authentication, 4 not found, 5 invalid
//! configuration or request, 6 daemon unreachable (or its certificate changed).

mod client;
mod complete;
mod import;
mod table;
mod when;

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;
use client::{CliError, Client, exit};
use isthmus_api as api;
use serde_json::json;

#[derive(Parser)]
#[command(name = "isthmus", version, about = "Operate an Isthmus VPN gateway")]
struct Cli {
    /// The daemon's API, e.g. https://192.0.2.1:8443 (env ISTHMUS_ENDPOINT, or `endpoint` in
    /// ~/.config/isthmus/config.toml; default http://127.0.0.1:8080, where a daemon on this host
    /// always listens).
    #[arg(long, global = true, env = "ISTHMUS_ENDPOINT")]
    endpoint: Option<String>,
    /// Bearer token (env ISTHMUS_TOKEN, or `token` in ~/.config/isthmus/config.toml).
    #[arg(long, global = true, env = "ISTHMUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The gateway at a glance: revision, tunnels, alarms.
    Status,
    /// Tunnels and their SAs.
    #[command(subcommand)]
    Tunnel(TunnelCmd),
    /// Security associations across all tunnels.
    #[command(subcommand)]
    Sa(SaCmd),
    /// The configuration: show, validate, diff, apply, confirm, roll back.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Policy plugins: keys, signing, upload, activation.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Alarms.
    #[command(subcommand)]
    Alarm(AlarmCmd),
    /// Follow the event stream (tunnel changes, negotiation failures, alarms), in local time.
    ///
    /// The daemon filters: only what matches is sent. It keeps the last 512 events; `--since`
    /// replays those from then on before following.
    Events {
        /// Only events about this tunnel.
        #[arg(long, add = ArgValueCandidates::new(complete::tunnels))]
        tunnel: Option<String>,
        /// Only events of these kinds (repeat the flag or separate with commas).
        #[arg(long, value_delimiter = ',', value_parser = event_kinds())]
        kind: Vec<String>,
        /// First the kept events since then: a span back from now (10m, 2h, 1d) or an RFC 3339
        /// time (2026-12-07T23:00:00Z).
        #[arg(long, value_parser = when::parse_since)]
        since: Option<u64>,
        /// Print the kept events that match (those since `--since`, else all) and exit.
        #[arg(long)]
        no_follow: bool,
    },
    /// The firmware: A/B slots, upgrades.
    #[command(subcommand)]
    System(SystemCmd),
    /// Explain why traffic does not pass: trace a packet, or a tunnel's failed negotiations.
    #[command(subcommand)]
    Diagnose(DiagnoseCmd),
    /// Make an API token and the hash to put in the configuration's `[[api_token]]`.
    Token {
        /// The token's name (recorded as the author of commits).
        name: String,
        /// Role: admin or read-only.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Print a shell completion script (static subcommands and flags; tunnel names, revisions
    /// and alarms asked from the daemon at each TAB).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (isthmus.1 and one per subcommand) into DIR, for packaging.
    #[command(hide = true)]
    ManPages {
        /// An existing folder.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DiagnoseCmd {
    /// Follow a packet through the gateway (ACL, route, SPD, SA, security group, MTU) and back.
    Path {
        /// Source address (on a LAN of this gateway).
        #[arg(long)]
        src: String,
        /// Destination address.
        #[arg(long)]
        dst: String,
        /// Protocol: tcp, udp, icmp, icmpv6, gre, esp or a number (default icmp, tcp with --dport).
        #[arg(long)]
        proto: Option<String>,
        /// Source port (ICMP: type).
        #[arg(long)]
        sport: Option<u16>,
        /// Destination port (ICMP: code).
        #[arg(long)]
        dport: Option<u16>,
        /// Packet size in bytes, IP header included (default 100).
        #[arg(long)]
        size: Option<u32>,
    },
    /// A tunnel's last failed negotiations: our proposals and selectors beside the peer's.
    Tunnel {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
    },
}

#[derive(Subcommand)]
enum TunnelCmd {
    /// Every configured tunnel, up or down.
    List,
    /// One tunnel: SAs, counters, rekeys, recent events.
    Show {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
    },
    /// Bring a tunnel up now.
    Initiate {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
    },
    /// Tear a tunnel down.
    Terminate {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
    },
    /// Rekey a tunnel's CHILD SAs (with --ike, its IKE SA).
    Rekey {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
        #[arg(long)]
        ike: bool,
    },
    /// Print the customer gateway's side of a tunnel for its software (needs an admin token).
    ///
    /// Mirrored from this gateway's: addresses, identities, proposals, selectors, lifetimes and
    /// DPD. Formats: `swanctl` (strongSwan's swanctl.conf; tested against a real charon).
    PeerConfig {
        #[arg(add = ArgValueCandidates::new(complete::tunnels))]
        name: String,
        /// The peer's configuration format.
        #[arg(long, default_value = "swanctl")]
        format: String,
        /// Include the pre-shared key (otherwise the secret line is a comment).
        #[arg(long)]
        show_secret: bool,
    },
}

#[derive(Subcommand)]
enum SaCmd {
    /// Every established IKE SA with its CHILD SAs, like `swanctl --list-sas`: peers, SPIs,
    /// algorithms, ages, rekey countdowns, bytes and packets.
    List,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The active configuration (secrets redacted), or a stored revision.
    Show {
        #[arg(long, add = ArgValueCandidates::new(complete::revisions))]
        revision: Option<u64>,
    },
    /// Validate a file; every error names its field path.
    Validate {
        file: PathBuf,
        /// Check the file alone, without a daemon: errors and warnings on standard error as
        /// `FILE:LINE:COLUMN: error: PATH: MESSAGE` (with --json, a JSON array on standard
        /// output). Secrets kept in files or the environment are not read.
        #[arg(long)]
        offline: bool,
    },
    /// What applying a file would change.
    Diff { file: PathBuf },
    /// Write an Isthmus configuration from a strongSwan swanctl.conf (see docs/migrating.md).
    /// Each setting not carried over is named on standard error with its file and line.
    Import {
        /// The swanctl.conf; its `include` statements are read relative to it.
        file: PathBuf,
        /// A separate file with the `secrets` section (the PSKs).
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// An Isthmus configuration whose `[gateway]` (and the rest) the imported customer
        /// gateways and tunnels are added to. Without it, `[gateway]` holds placeholders.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Where to write the configuration (mode 0600: it holds the PSKs); standard output
        /// without it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Validate, commit and apply a file.
    Apply {
        file: PathBuf,
        /// Revert by itself unless `isthmus config confirm` comes within this time (e.g. 90s, 5m,
        /// 1h30m: the configuration's duration grammar).
        #[arg(long, value_parser = parse_duration)]
        confirm: Option<Duration>,
        /// The revision's comment.
        #[arg(long, short, default_value = "")]
        message: String,
        /// Print the plan without applying.
        #[arg(long)]
        dry_run: bool,
    },
    /// Confirm a pending `apply --confirm`.
    Confirm,
    /// Make a revision active again (default: the one before the active one).
    Rollback {
        #[arg(add = ArgValueCandidates::new(complete::revisions))]
        revision: Option<u64>,
    },
    /// Stored revisions.
    Revisions,
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Make an ed25519 signing key pair (PKCS#8 private key and raw public key).
    Keygen {
        /// Where to write NAME.key and NAME.pub.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value = "plugin-signing")]
        name: String,
    },
    /// Package and sign a component with its manifest.
    Sign {
        /// The component (.wasm).
        component: PathBuf,
        /// The manifest (TOML: name, version, hook, capabilities).
        #[arg(long)]
        manifest: PathBuf,
        /// The private key from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The package to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Upload a signed package (it is verified against the configuration's trusted keys).
    Upload { package: PathBuf },
    /// Stored plugin versions, then what runs for each hook (plugin, table generation and
    /// size, quarantine). With `--json`: the versions only (see `plugin hooks`).
    List,
    /// What runs for each hook: plugin, source, table generation and size, quarantine, last error.
    Hooks,
    /// Activate a stored version.
    Activate { digest: String },
    /// Go back to the previously active version of a plugin.
    Rollback { name: String },
    /// Remove an inactive version.
    Remove { digest: String },
}

#[derive(Subcommand)]
enum SystemCmd {
    /// Booted slot, the other slot, whether each is blessed, and the last upgrade.
    Status,
    /// Write a firmware image (`build/isthmus-VERSION.efi` from `make image`) to the other slot and
    /// reboot into it on trial; it stays only if its health gate passes.
    Upgrade {
        /// The firmware image (a unified kernel image).
        image: PathBuf,
        /// Boots the new slot gets before the firmware falls back (1-9).
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// Health gate: how long the new firmware has to apply its configuration and bring back
        /// the tunnels that are up now (e.g. 120s, 5m).
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        gate: Duration,
    },
}

#[derive(Subcommand)]
enum AlarmCmd {
    /// Active and recently cleared alarms.
    List,
    /// Mark a raised alarm as seen (it stays raised until its condition ends).
    Ack {
        /// The alarm's name, as `alarm list` shows it (e.g. upgrade-failed).
        #[arg(add = ArgValueCandidates::new(complete::alarm_names))]
        name: String,
        /// What it concerns, as `alarm list` shows it (e.g. tunnel/to-idc, system).
        #[arg(add = ArgValueCandidates::new(complete::alarm_subjects))]
        subject: String,
    },
}

/// A positive span of time in the configuration's grammar (`90s`, `5m`, `1h30m`, `1d`; see
/// [`isthmus_config::Dur`]), so that the CLI and the documents accept the same durations. The API
/// takes whole seconds: a sub-second remainder is refused rather than rounded away.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: isthmus_config::Dur = s.parse()?;
    if d.is_zero() {
        return Err(format!("`{s}` is zero; give a duration longer than zero"));
    }
    if !d.as_millis().is_multiple_of(1000) {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    Ok(d.as_duration())
}

/// The event kinds the daemon emits, for `events --kind` (a typo is refused naming them all).
fn event_kinds() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(api::EventKind::ALL.map(|k| k.as_str()))
}

fn main() {
    // reqwest builds its plain-HTTP client with the process-wide rustls provider too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A shell asking for completions (`COMPLETE=bash isthmus -- isthmus tunnel show ''`):
    // answer and exit.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            let code = match e.downcast_ref::<CliError>() {
                Some(c) => c.code,
                None => exit::ERROR,
            };
            eprintln!("isthmus: {e:#}");
            std::process::exit(code);
        }
    }
}

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let file = client::file_settings()?;
    let (endpoint, origin) = match (&cli.endpoint, file.endpoint) {
        (Some(e), _) => (e.clone(), "--endpoint or ISTHMUS_ENDPOINT".to_owned()),
        (None, Some(e)) => (e, format!("`endpoint` in {}", client::settings_path().display())),
        (None, None) => (api::LOCAL_ENDPOINT.to_owned(), "the default".to_owned()),
    };
    let token = cli.token.clone().or(file.token);
    Client::new(&endpoint, &origin, token)
}

/// Reads a configuration file; one that is not UTF-8 is an invalid configuration (exit 5).
fn read_file(p: &std::path::Path) -> anyhow::Result<String> {
    isthmus_config::read_file(p).map_err(|e| {
        let code = match e {
            isthmus_config::Error::NotUtf8 { .. } => exit::INVALID,
            _ => exit::ERROR,
        };
        CliError { code, message: e.to_string(), details: vec![] }.into()
    })
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `--json` of an API object whose instants (at `times`, listed in [`api::instant`]) the API
/// carries as Unix seconds: printed as RFC 3339.
fn print_json_times<T: serde::Serialize>(v: &T, times: &[&str]) {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    api::instant::rfc3339_fields(&mut v, times);
    print_json(&v);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Completions { shell } => {
            // The script `COMPLETE=SHELL isthmus` prints, calling `isthmus` on the PATH: a file
            // a package installs keeps working, and stays in step with the binary it ships with.
            let name = shell.to_string();
            let shells = clap_complete::env::Shells::builtins();
            let Some(sh) = shells.completer(&name) else {
                anyhow::bail!("no completion for {name}");
            };
            sh.write_registration(
                "COMPLETE",
                "isthmus",
                "isthmus",
                "isthmus",
                &mut std::io::stdout(),
            )?;
            return Ok(());
        }
        Cmd::ManPages { dir } => {
            // Rendered from the same definitions that parse the arguments, so the pages never
            // disagree with the binary they ship with.
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            return Ok(());
        }
        Cmd::Token { name, role } => {
            let role = match role.as_str() {
                "admin" => "admin",
                "read-only" | "readonly" => "read-only",
                r => anyhow::bail!("unknown role `{r}`: use admin or read-only"),
            };
            let token = isthmus_config::new_token();
            let hash = isthmus_config::hash_token(&token);
            if cli.json {
                let hex = hash.strip_prefix("sha256:").unwrap_or(&hash);
                print_json(
                    &json!({"name": name, "role": role, "token": token, "sha256": hex, "token_hash": hash}),
                );
            } else {
                println!("token (give it to its holder; it is shown only now): {token}");
                println!(
                    "\nadd to the configuration:\n[[api_token]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_hash = \"{hash}\""
                );
            }
            return Ok(());
        }
        Cmd::Plugin(p @ (PluginCmd::Keygen { .. } | PluginCmd::Sign { .. })) => {
            return plugin_offline(&cli, p);
        }
        Cmd::Config(ConfigCmd::Validate { file, offline: true }) => {
            return validate_offline(&cli, file);
        }
        Cmd::Config(ConfigCmd::Import { file, secrets, base, output }) => {
            return import::run(file, secrets.as_deref(), base.as_deref(), output.as_deref());
        }
        _ => {}
    }
    let c = connect(&cli)?;
    match &cli.cmd {
        Cmd::Status => {
            let s: api::Status = c.get("/status")?;
            if cli.json {
                print_json(&s);
            } else {
                println!(
                    "gateway   {}  (isthmus {}, up {})",
                    s.gateway,
                    s.version,
                    table::secs(s.uptime_secs)
                );
                println!("revision  {}", s.revision.map(|r| r.to_string()).unwrap_or("-".into()));
                if let Some(p) = s.confirm_pending_secs {
                    println!(
                        "PENDING   commit reverts in {} unless `isthmus config confirm`",
                        table::secs(p)
                    );
                }
                println!("alarms    {} active", s.active_alarms);
                println!("drops     {}\n", table::stage_drops(&s.drops));
                table::tunnels(&s.tunnels);
            }
        }
        Cmd::Tunnel(t) => tunnel(&cli, &c, t)?,
        Cmd::Sa(SaCmd::List) => {
            let v: Vec<api::IkeSa> = c.get("/sa")?;
            if cli.json {
                print_json(&v);
            } else {
                print!("{}", table::sas(&v));
            }
        }
        Cmd::Config(cc) => config(&cli, &c, cc)?,
        Cmd::Plugin(p) => plugin(&cli, &c, p)?,
        Cmd::System(sc) => system(&cli, &c, sc)?,
        Cmd::Alarm(AlarmCmd::List) => {
            let a: Vec<api::Alarm> = c.get("/alarms")?;
            if cli.json {
                print_json_times(&a, api::instant::ALARMS);
            } else {
                table::alarms(&a);
            }
        }
        Cmd::Alarm(AlarmCmd::Ack { name, subject }) => {
            let a: api::Alarm =
                c.post("/alarms/acknowledge", &json!({ "name": name, "subject": subject }))?;
            if cli.json {
                print_json_times(&a, api::instant::ALARM);
            } else if let Some(k) = &a.acknowledged {
                println!(
                    "alarm `{}` about `{}` acknowledged by {} at {}",
                    a.name,
                    a.subject,
                    k.by,
                    when::local(k.at)
                );
            }
        }
        Cmd::Events { tunnel, kind, since, no_follow } => {
            let mut q: Vec<(&str, String)> = vec![];
            if let Some(t) = tunnel {
                q.push(("tunnel", t.clone()));
            }
            if !kind.is_empty() {
                q.push(("kind", kind.join(",")));
            }
            if let Some(s) = since {
                q.push(("since", s.to_string()));
            }
            if *no_follow {
                q.push(("follow", "false".into()));
            }
            events(&cli, c.stream("/events", &q)?)?;
        }
        Cmd::Diagnose(d) => diagnose(&cli, &c, d)?,
        Cmd::Completions { .. } | Cmd::ManPages { .. } | Cmd::Token { .. } => {}
    }
    Ok(())
}

/// Prints server-sent events as they come: a line per event in local time, or (`--json`) a
/// JSON object per line with its time in RFC 3339.
fn events(cli: &Cli, stream: impl Read) -> anyhow::Result<()> {
    let mut name = String::new();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_owned();
            continue;
        }
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if name == "lagged" {
            eprintln!("isthmus: {data} events were missed (this reader fell behind)");
            continue;
        }
        if cli.json {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(data) else { continue };
            api::instant::rfc3339_fields(&mut v, api::instant::EVENT);
            println!("{v}");
        } else if let Ok(e) = serde_json::from_str::<api::Event>(data) {
            println!(
                "{} {:<8} {:<22} {} {}",
                when::local(e.time),
                e.severity.to_string(),
                e.kind,
                e.subject,
                e.message
            );
        }
        std::io::Write::flush(&mut std::io::stdout())?;
    }
    Ok(())
}

fn verdict_word(v: api::StageVerdict) -> &'static str {
    match v {
        api::StageVerdict::Pass => "pass",
        api::StageVerdict::Drop => "DROP",
        api::StageVerdict::Warn => "WARN",
        api::StageVerdict::Skip => "skip",
    }
}

fn print_stages(stages: &[api::PathStage]) {
    for s in stages {
        let detail = if s.detail.is_empty() { String::new() } else { format!("  ({})", s.detail) };
        println!("  {:<15} {:<5} {}{detail}", s.stage, verdict_word(s.verdict), s.entry);
    }
}

fn diagnose(cli: &Cli, c: &Client, d: &DiagnoseCmd) -> anyhow::Result<()> {
    match d {
        DiagnoseCmd::Path { src, dst, proto, sport, dport, size } => {
            let mut q = format!("/diagnose/path?src={src}&dst={dst}");
            if let Some(p) = proto {
                q.push_str(&format!("&proto={p}"));
            }
            for (k, v) in
                [("sport", sport.map(u32::from)), ("dport", dport.map(u32::from)), ("size", *size)]
            {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={v}"));
                }
            }
            let r: api::PathReport = c.get(&q)?;
            if cli.json {
                print_json(&r);
                return Ok(());
            }
            println!("packet   {}", r.packet);
            println!("forward:");
            print_stages(&r.forward);
            if !r.reply.is_empty() {
                println!("reply:");
                print_stages(&r.reply);
            }
            println!("verdict  {}", verdict_word(r.verdict));
            if let Some(c) = &r.drop_counter {
                let n = r.counters.get(c).copied().unwrap_or(0);
                println!("counted  {c}: {n} packets dropped there so far");
            }
            for a in &r.advice {
                println!("advice   {a}");
            }
        }
        DiagnoseCmd::Tunnel { name } => {
            let r: api::TunnelDiagnosis = c.get(&format!("/diagnose/tunnel/{name}"))?;
            if cli.json {
                print_json_times(&r, api::instant::WITH_EVENTS);
                return Ok(());
            }
            println!("tunnel   {}  ({})", r.tunnel, r.state);
            match &r.last_failure {
                Some(f) => {
                    println!("last failure: {} failed: {}", f.exchange, f.cause);
                    println!("  ours     {}", f.ours);
                    println!("  theirs   {}", f.theirs.as_deref().unwrap_or("(not known)"));
                    if let Some(s) = &f.suggestion {
                        println!("  change   {s}");
                    }
                }
                None => println!("last failure: none recorded"),
            }
            if let Some(t) = &r.transport {
                println!("transport {t}");
            }
            if let Some(d) = &r.last_down_reason {
                println!("last down: {d}");
            }
            if !r.events.is_empty() {
                println!("recent events:");
                let now = when::now();
                for e in &r.events {
                    println!("  {:<10} {:<20} {}", when::human(e.time, now), e.kind, e.message);
                }
            }
            for a in &r.advice {
                println!("advice   {a}");
            }
        }
    }
    Ok(())
}

/// What a commit or a rollback did: warnings, the plan, and the revision in force.
fn print_commit(cli: &Cli, r: &api::CommitResponse, confirm: Option<Duration>) {
    if cli.json {
        print_json(r);
        return;
    }
    for w in &r.warnings {
        println!("warning: {}: {}", w.path, w.message);
    }
    for p in &r.plan {
        println!("  {p}");
    }
    match (r.revision, confirm) {
        (None, _) => println!("dry run: nothing applied"),
        (Some(n), Some(d)) => println!(
            "revision {n} applied; it reverts in {} unless you run `isthmus config confirm`",
            table::secs(d.as_secs())
        ),
        (Some(n), None) => println!("revision {n} applied"),
    }
}

/// Which peers' default proposals a tunnel meets, after `config validate` of a valid file.
fn print_interop(t: &api::TunnelInterop) {
    let list = |v: &[String]| if v.is_empty() { "none".into() } else { v.join("; ") };
    println!(
        "tunnel {}: meets the default proposals of {}; not those of {} (docs/interop.md)",
        t.tunnel,
        list(&t.meets),
        list(&t.misses)
    );
}

/// `config validate` found errors (exit 5).
fn invalid_file(file: &std::path::Path, errors: usize) -> anyhow::Error {
    CliError {
        code: exit::INVALID,
        message: format!("{}: {errors} error(s)", file.display()),
        details: vec![],
    }
    .into()
}

/// `config validate FILE --offline`: the daemon's validation of the file alone
/// ([`isthmus_config::offline`]), printed for editors and CI.
fn validate_offline(cli: &Cli, file: &std::path::Path) -> anyhow::Result<()> {
    let c = isthmus_config::offline::check_file(file).map_err(|e| CliError {
        code: exit::ERROR,
        message: e.to_string(),
        details: vec![],
    })?;
    c.print(cli.json)?;
    if c.has_errors() {
        let errors = c.diagnostics.iter().filter(|d| d.severity == isthmus_config::Severity::Error);
        return Err(invalid_file(file, errors.count()));
    }
    if let (false, Some(k)) = (cli.json, &c.checked) {
        for t in &k.config.tunnels {
            let (meets, misses) = isthmus_config::interop::meets(t);
            print_interop(&api::TunnelInterop { tunnel: t.name.clone(), meets, misses });
        }
    }
    Ok(())
}

/// Carries out an action whose answer says what was done.
fn act(cli: &Cli, c: &Client, a: api::Action) -> anyhow::Result<()> {
    let r: api::Message = c.act(&a)?;
    if cli.json {
        print_json(&r);
    } else {
        println!("{}", r.message);
    }
    Ok(())
}

fn tunnel(cli: &Cli, c: &Client, t: &TunnelCmd) -> anyhow::Result<()> {
    match t {
        TunnelCmd::List => {
            let v: Vec<api::TunnelSummary> = c.get("/tunnels")?;
            if cli.json {
                print_json(&v);
            } else {
                table::tunnels(&v);
            }
        }
        TunnelCmd::Show { name } => {
            let d: api::TunnelDetail = c.get(&format!("/tunnels/{name}"))?;
            if cli.json {
                print_json_times(&d, api::instant::WITH_EVENTS);
            } else {
                table::tunnel_detail(&d);
            }
        }
        TunnelCmd::Initiate { name } => {
            act(cli, c, api::Action::TunnelInitiate { name: name.clone() })?
        }
        TunnelCmd::Terminate { name } => {
            act(cli, c, api::Action::TunnelTerminate { name: name.clone() })?
        }
        TunnelCmd::Rekey { name, ike } => {
            act(cli, c, api::Action::TunnelRekey { name: name.clone(), ike: *ike })?
        }
        TunnelCmd::PeerConfig { name, format, show_secret } => {
            let body = json!({"format": format, "show_secret": show_secret});
            print!("{}", c.post_text(&format!("/tunnels/{name}/peer-config"), &body)?);
        }
    }
    Ok(())
}

fn config(cli: &Cli, c: &Client, cc: &ConfigCmd) -> anyhow::Result<()> {
    match cc {
        ConfigCmd::Show { revision } => {
            let path = match revision {
                Some(n) => format!("/config/revisions/{n}"),
                None => "/config".into(),
            };
            print!("{}", c.get_text(&path)?);
        }
        ConfigCmd::Validate { file, .. } => {
            let r: api::ValidateResponse =
                c.post("/config/validate", &json!({"text": read_file(file)?}))?;
            if cli.json {
                print_json(&r);
            } else {
                for w in &r.warnings {
                    println!("warning: {}: {}", w.path, w.message);
                }
                for e in &r.errors {
                    println!("error: {}: {}", e.path, e.message);
                }
                if r.ok {
                    println!("{}: valid", file.display());
                }
                r.interop.iter().for_each(print_interop);
            }
            if !r.ok {
                return Err(invalid_file(file, r.errors.len()));
            }
        }
        ConfigCmd::Diff { file } => {
            let r: api::DiffResponse =
                c.act(&api::Action::ConfigDiff { text: read_file(file)? })?;
            if cli.json {
                print_json(&r);
            } else {
                print!("{}", r.diff);
            }
        }
        ConfigCmd::Apply { file, confirm, message, dry_run } => {
            let body = json!({
                "text": read_file(file)?,
                "comment": message,
                "confirm_secs": confirm.map(|d| d.as_secs()),
                "dry_run": dry_run,
            });
            let spinner = indicatif::ProgressBar::new_spinner();
            if !cli.json {
                spinner.set_message("validating, committing and applying");
                spinner.enable_steady_tick(Duration::from_millis(120));
            }
            let r: Result<api::CommitResponse, CliError> = c.post("/config/commit", &body);
            spinner.finish_and_clear();
            print_commit(cli, &r?, *confirm);
        }
        ConfigCmd::Import { .. } => unreachable!("import runs offline"),
        ConfigCmd::Confirm => act(cli, c, api::Action::ConfigConfirm {})?,
        ConfigCmd::Rollback { revision } => {
            let rev = match revision {
                Some(r) => *r,
                None => {
                    let revs: Vec<api::Revision> = c.get("/config/revisions")?;
                    let active = revs.iter().find(|r| r.active).map(|r| r.number).unwrap_or(0);
                    revs.iter().map(|r| r.number).filter(|n| *n < active).max().ok_or_else(
                        || CliError {
                            code: exit::NOT_FOUND,
                            message: "there is no revision before the active one".into(),
                            details: vec![],
                        },
                    )?
                }
            };
            let r: api::CommitResponse = c.act(&api::Action::ConfigRollback { revision: rev })?;
            print_commit(cli, &r, None);
        }
        ConfigCmd::Revisions => {
            let v: Vec<api::Revision> = c.get("/config/revisions")?;
            if cli.json {
                print_json_times(&v, api::instant::REVISIONS);
            } else {
                table::revisions(&v);
            }
        }
    }
    Ok(())
}

fn plugin(cli: &Cli, c: &Client, p: &PluginCmd) -> anyhow::Result<()> {
    match p {
        PluginCmd::Upload { package } => {
            let f = std::fs::File::open(package)
                .with_context(|| format!("opening {}", package.display()))?;
            let len = f.metadata()?.len();
            let bar = indicatif::ProgressBar::new(len);
            if !cli.json {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "uploading {bytes}/{total_bytes} {wide_bar}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
            } else {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let reader = Progress { inner: f, bar: bar.clone() };
            let r: api::Plugin = c.post_bytes("/plugins", reader, len)?;
            bar.finish_and_clear();
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "uploaded {} {} ({} hook), digest {}",
                    r.name, r.version, r.hook, r.digest
                );
            }
        }
        PluginCmd::List => {
            let v: Vec<api::Plugin> = c.get("/plugins")?;
            if cli.json {
                print_json(&v);
            } else {
                table::plugins(&v);
                let h: Vec<api::PluginHook> = c.get("/plugins/hooks")?;
                println!();
                table::plugin_hooks(&h);
            }
        }
        PluginCmd::Hooks => {
            let h: Vec<api::PluginHook> = c.get("/plugins/hooks")?;
            if cli.json {
                print_json(&h);
            } else {
                table::plugin_hooks(&h);
            }
        }
        PluginCmd::Activate { digest } => {
            act(cli, c, api::Action::PluginActivate { digest: digest.clone() })?
        }
        PluginCmd::Rollback { name } => {
            act(cli, c, api::Action::PluginRollback { name: name.clone() })?
        }
        PluginCmd::Remove { digest } => {
            act(cli, c, api::Action::PluginRemove { digest: digest.clone() })?
        }
        PluginCmd::Keygen { .. } | PluginCmd::Sign { .. } => plugin_offline(cli, p)?,
    }
    Ok(())
}

fn system(cli: &Cli, c: &Client, sc: &SystemCmd) -> anyhow::Result<()> {
    match sc {
        SystemCmd::Status => {
            let s: api::SystemStatus = c.get("/system")?;
            if cli.json {
                print_json_times(&s, api::instant::SYSTEM_STATUS);
                return Ok(());
            }
            println!(
                "firmware  {}  (booted from slot {})",
                s.version,
                s.booted_slot.as_deref().unwrap_or("- (not the appliance image)")
            );
            for sl in &s.slots {
                let state = match (sl.file.is_empty(), sl.blessed, sl.tries_left) {
                    (true, _, _) => "empty".to_string(),
                    (false, true, _) => "blessed".to_string(),
                    (false, false, Some(n)) => format!("on trial, {n} tries left"),
                    (false, false, None) => "not blessed".to_string(),
                };
                println!(
                    "slot {}{}  {:<10} {:<28} {}",
                    sl.slot,
                    if sl.booted { "*" } else { " " },
                    sl.version.as_deref().unwrap_or("-"),
                    state,
                    sl.file
                );
            }
            if let Some(u) = &s.upgrade {
                println!(
                    "last upgrade  {} (slot {}) -> {} (slot {}) by {}: {}\n              {}",
                    u.from_version,
                    u.from_slot,
                    u.to_version,
                    u.to_slot,
                    u.requested_by,
                    u.state,
                    u.detail
                );
            }
        }
        SystemCmd::Upgrade { image, tries, gate } => {
            let bytes =
                std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            let len = bytes.len() as u64;
            let bar = indicatif::ProgressBar::new(len);
            if cli.json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            } else {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "uploading firmware {bytes}/{total_bytes} {wide_bar} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
            }
            let reader = Progress { inner: std::io::Cursor::new(bytes), bar: bar.clone() };
            let path =
                format!("/system/upgrade?sha256={sha}&tries={tries}&gate_secs={}", gate.as_secs());
            let r: api::UpgradeResponse = c.post_bytes(&path, reader, len)?;
            bar.finish_and_clear();
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "wrote firmware {} to slot {} ({}, {} bytes, sha256 {})",
                    r.version, r.slot, r.file, r.bytes, r.sha256
                );
                println!(
                    "rebooting into it on trial ({} tries); it stays once its configuration is applied{} within {} s, else the appliance falls back to the running firmware",
                    r.tries,
                    if r.tunnels.is_empty() {
                        String::new()
                    } else {
                        format!(" and tunnels {} are up", r.tunnels.join(", "))
                    },
                    r.gate_secs
                );
                println!("then: isthmus system status");
            }
        }
    }
    Ok(())
}

struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// `plugin keygen` and `plugin sign`: local, no daemon needed.
fn plugin_offline(cli: &Cli, p: &PluginCmd) -> anyhow::Result<()> {
    let invalid = |e: isthmus_package::PackageError| CliError {
        code: exit::INVALID,
        message: e.to_string(),
        details: vec![],
    };
    match p {
        PluginCmd::Keygen { dir, name } => {
            let (sk, pk) = isthmus_package::generate_key().map_err(invalid)?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = dir.join(format!("{name}.key"));
            let public = dir.join(format!("{name}.pub"));
            anyhow::ensure!(
                !key.exists(),
                "{} exists; refusing to overwrite a signing key",
                key.display()
            );
            write_private(&key, format!("{}\n", sk.to_text()).as_bytes())?;
            std::fs::write(&public, format!("{pk}\n"))
                .with_context(|| format!("writing {}", public.display()))?;
            if cli.json {
                print_json(&json!({
                    "key": key, "public_key_file": public, "public_key": pk.to_string()
                }));
            } else {
                println!("private key  {} (keep it secret)", key.display());
                println!("public key   {} : {pk}", public.display());
                println!(
                    "\ntrust it in the configuration:\n[[trusted_key]]\nname = \"{name}\"\n\
                     public_key = \"{pk}\""
                );
            }
        }
        PluginCmd::Sign { component, manifest, key, out } => {
            let text = std::fs::read_to_string(manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let m: isthmus_package::Manifest = toml::from_str(&text).map_err(|e| CliError {
                code: exit::INVALID,
                message: format!("bad plugin manifest {}: {e}", manifest.display()),
                details: vec![],
            })?;
            let wasm = std::fs::read(component)
                .with_context(|| format!("reading {}", component.display()))?;
            let sk_text = std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?;
            let sk = isthmus_package::SecretKey::parse(&sk_text).map_err(invalid)?;
            let pkg = isthmus_package::Package::unsigned(m, wasm).map_err(invalid)?;
            let pkg = isthmus_package::sign(pkg, &sk).map_err(invalid)?;
            let bytes = pkg.to_bytes();
            std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            let signer = pkg.signer().map(|k| k.to_string()).unwrap_or_default();
            if cli.json {
                print_json(&json!({
                    "package": out, "name": pkg.manifest.name, "version": pkg.manifest.version,
                    "hook": pkg.manifest.hook.name(), "digest": pkg.digest(), "signer": signer,
                    "bytes": bytes.len(),
                }));
            } else {
                println!(
                    "signed {} {} ({} hook) with {signer}\nwrote {} ({} bytes), digest {}",
                    pkg.manifest.name,
                    pkg.manifest.version,
                    pkg.manifest.hook.name(),
                    out.display(),
                    bytes.len(),
                    pkg.digest()
                );
            }
        }
        _ => unreachable!("only keygen and sign run offline"),
    }
    Ok(())
}

/// Creates `path` with mode 0600 (a secret key), failing if it exists.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
