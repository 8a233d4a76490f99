//! Validation failures and where they are: each one names a text to look for (the
//! value at fault, after its route's own line, never inside a comment), so that every
//! error carries a `LINE:COL`. Also the strict check of `log.level`.

/// Checks a `log.level` filter strictly: every directive is a level (`warn`) or
/// `target=level`. tracing's own parser takes a bare unknown word (`warning`) as a
/// target name, which silences every log line: a typo must not do that.
pub(super) fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    for directive in filter.split(',').map(str::trim) {
        let ok = match directive.rsplit_once('=') {
            None => is_level(directive),
            Some((target, level)) => {
                !target.trim().is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c))
                    && is_level(level)
            }
        };
        if !ok {
            return Err(format!(
                "{directive:?} is not a level ({}) nor target=level",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A validation failure, with a text to look for so the error can point at a line.
pub(super) struct Invalid {
    pub(super) needle: String,
    pub(super) message: String,
    pub(super) anchor: Option<Anchor>,
}

/// Where to start looking for an [`Invalid`]'s needle.
pub(super) enum Anchor {
    /// The `n`-th route (0-based among routes with this path) with this path.
    Route(String, usize),
    /// A line that also holds this key.
    Key(&'static str),
}

impl Invalid {
    pub(super) fn at(needle: &str, message: &str) -> Invalid {
        Invalid {
            needle: needle.to_string(),
            message: message.to_string(),
            anchor: None,
        }
    }

    pub(super) fn with(mut self, anchor: Anchor) -> Invalid {
        self.anchor = Some(anchor);
        self
    }
}

/// The code of a line: nothing for a comment line, the part before an inline `#`.
fn code_of(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    line.split(" #").next().unwrap_or(line)
}

/// Finds the line holding the failing value (after its route's own line, skipping
/// comments), so that validation errors also carry a position.
pub(super) fn locate(text: &str, invalid: &Invalid) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.lines().map(code_of).collect();
    let from = match &invalid.anchor {
        Some(Anchor::Route(path, n)) => lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("path") && l.contains(path.as_str()))
            .nth(*n)
            .map_or(0, |(i, _)| i),
        _ => 0,
    };
    lines.iter().enumerate().skip(from).find_map(|(i, line)| {
        if let Some(Anchor::Key(key)) = &invalid.anchor
            && !line.contains(key)
        {
            return None;
        }
        line.find(invalid.needle.as_str())
            .map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

/// serde-saphyr's message without its snippet and position (we print our own).
pub(super) fn yaml_reason(e: &serde_saphyr::Error) -> String {
    let rendered = e.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    // Strip a trailing " at line X column Y" that the renderer may add.
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.to_string()
}
