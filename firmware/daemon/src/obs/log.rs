//! The daemon's log on standard error, in the form whoever reads it wants: text for a person at
//! a terminal (colour only there), one JSON object per line for a log pipeline, and for
//! journald lines without timestamps or colour whose `<N>` prefix (sd-daemon(3)) becomes the
//! entry's priority, so that `journalctl -p warning` works.
//!
//! journald gets text with priority prefixes rather than its native protocol: standard error is
//! where systemd sends a service's output anyway, so nothing is lost when the journal socket is
//! absent, and no second logging path is needed. Structured fields stay in the message as
//! `key=value`; `--log-format json` keeps them apart.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journald` when standard error is the journal stream systemd gave the service
    /// (`JOURNAL_STREAM`), `text` otherwise.
    Auto,
    /// Timestamp, level, target, message; coloured only when standard error is a terminal and
    /// `NO_COLOR` is not set.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
    /// `<N>` syslog priority prefix (3 error, 4 warning, 6 info, 7 debug), target and message; no
    /// timestamp (the journal records its own) and no colour.
    Journald,
}

/// Starts logging to standard error with `filter` (EnvFilter directives, e.g. `info` or
/// `info,isthmus_ike=debug`).
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match resolve(format) {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Journald => {
            // No time (the journal stamps each entry), no level (the prefix carries it).
            let inner = tracing_subscriber::fmt::format().without_time().with_level(false);
            builder.with_ansi(false).event_format(Journald(inner.with_ansi(false))).init()
        }
        LogFormat::Text | LogFormat::Auto => builder.with_ansi(colour()).init(),
    }
}

/// `auto` decided.
fn resolve(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    }
}

/// Colour for a person at a terminal only: a pipe, a file or the journal gets none.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether standard error is the stream systemd connected to the journal. `JOURNAL_STREAM` holds
/// its device and inode (systemd.exec(5)); comparing them, rather than trusting the variable,
/// keeps a child whose output was redirected from writing journal prefixes into a file.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// sd-daemon(3)'s priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes every line of an event with its priority: journald splits entries at newlines, and
/// a multi-line message (a configuration's errors) keeps its priority on each.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let p = priority(*event.metadata().level());
        for l in line.lines() {
            writeln!(writer, "<{p}>{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_text_without_a_journal_stream() {
        assert_eq!(resolve(LogFormat::Json), LogFormat::Json);
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert_eq!(resolve(LogFormat::Auto), LogFormat::Text);
        }
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority),
            [3, 4, 6, 7, 7]
        );
    }
}
