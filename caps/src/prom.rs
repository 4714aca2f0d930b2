//! Checks a daemon's `/metrics` text with the Prometheus project's own parser.
//!
//! Tests hand the text to [`scrape`], which runs the official Python client's text parser
//! (`prometheus_client.parser`, Debian package `python3-prometheus-client`, installed by
//! `scripts/setup`) and then holds the exposition to the house rules the parser alone does
//! not enforce:
//!
//! - every family has a `# HELP` and a `# TYPE` (counter, gauge or histogram), and all its
//!   samples follow them contiguously (a sample the parser cannot place is an error);
//! - every name is `ferrostack_<crate>_<thing>[_<unit>]` in lowercase, counters end in
//!   `_total`, no family appears twice and no series (name plus labels) repeats;
//! - every histogram series has ascending, cumulative `le` buckets ending in `+Inf`, whose
//!   count equals `_count`, and a `_sum`.
//!
//! What comes back is the list of samples, so a test can assert exactly how far a counter
//! moved.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The Python interpreter whose `dist-packages` hold Debian's `prometheus_client`.
const PYTHON: &str = "/usr/bin/python3";

const CHECKER: &str = r##"
import math, re, sys
from prometheus_client.parser import text_string_to_metric_families

crate = sys.argv[1]
text = sys.stdin.read()
errors = []
if text and not text.endswith("\n"):
    errors.append("exposition does not end with a newline")
name_re = re.compile(r"^ferrostack_" + re.escape(crate) + r"_[a-z][a-z0-9_]*[a-z0-9]$")
for line in text.splitlines():
    parts = line.split()
    if len(parts) == 4 and parts[:2] == ["#", "TYPE"] and parts[3] == "counter" \
            and not parts[2].endswith("_total"):
        errors.append("%s: a counter's name must end in _total" % parts[2])
seen_families = set()
seen_series = set()
out = []
for fam in text_string_to_metric_families(text):
    full = fam.name + ("_total" if fam.type == "counter" else "")
    if fam.type not in ("counter", "gauge", "histogram"):
        errors.append("%s: no TYPE line covers it (parsed as %s)" % (full, fam.type))
    if not fam.documentation:
        errors.append("%s: no HELP text" % full)
    if not name_re.match(full):
        errors.append("%s: name is not ferrostack_%s_<thing>_<unit>" % (full, crate))
    if full in seen_families:
        errors.append("%s: family appears twice (its samples are not contiguous)" % full)
    seen_families.add(full)
    hist = {}
    for s in fam.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen_series:
            errors.append("%s%s: series repeated" % (s.name, dict(s.labels)))
        seen_series.add(key)
        for k, v in s.labels.items():
            if "\t" in v or "\x1f" in v or "\n" in v:
                errors.append("%s: label %s has a control character" % (s.name, k))
        if fam.type == "histogram":
            rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            h = hist.setdefault(rest, {"buckets": [], "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                h["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                h["count"] = s.value
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
        out.append("%s\t%s\t%r" % (
            s.name,
            "\x1f".join("%s=%s" % kv for kv in sorted(s.labels.items())),
            s.value,
        ))
    for rest, h in hist.items():
        b = h["buckets"]
        where = "%s%s" % (full, dict(rest))
        if not b or not math.isinf(b[-1][0]):
            errors.append("%s: buckets do not end with le=+Inf" % where)
            continue
        if any(b[i][0] >= b[i + 1][0] for i in range(len(b) - 1)):
            errors.append("%s: le bounds are not ascending" % where)
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            errors.append("%s: buckets are not cumulative" % where)
        if h["count"] is None or h["count"] != b[-1][1]:
            errors.append("%s: _count differs from the +Inf bucket" % where)
        if h["sum"] is None:
            errors.append("%s: no _sum" % where)
if errors:
    sys.stderr.write("\n".join(errors) + "\n")
    sys.exit(1)
sys.stdout.write("\n".join(out) + ("\n" if out else ""))
"##;

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (with `_total`, `_bucket`, `_sum`, `_count` as exposed).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed, checked `/metrics` exposition.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every sample, in exposition order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of every series named `name` whose labels include all of `labels`
    /// (0 when none matches, as a counter that has not been created yet).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one series named `name` with exactly these labels.
    ///
    /// # Panics
    /// When there is no such series, so a renamed or missing metric fails the test.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no series {name}{want:?} in the scrape"))
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// Parses and checks `text` as the `/metrics` of crate `krate` (the `<crate>` in
/// `ferrostack_<crate>_...`), or says everything that is wrong with it.
pub fn scrape(krate: &str, text: &str) -> Result<Scrape, String> {
    let mut child = Command::new(PYTHON)
        .args(["-c", CHECKER, krate])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {PYTHON} (scripts/setup installs it): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for the checker: {e}"))?;
    writer
        .join()
        .map_err(|_| "checker writer panicked".to_string())?
        .map_err(|e| format!("feeding the checker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the exposition fails the Prometheus text checks:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8(out.stdout).map_err(|e| format!("checker output: {e}"))?;
    let mut samples = Vec::new();
    for line in stdout.lines() {
        let mut parts = line.split('\t');
        let (Some(name), Some(labels), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("checker output line {line:?}"));
        };
        let labels = labels
            .split('\x1f')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let value = match value {
            "inf" => f64::INFINITY,
            "nan" => f64::NAN,
            v => v.parse().map_err(|e| format!("checker value {v:?}: {e}"))?,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(Scrape { samples })
}

/// [`scrape`], panicking with the checker's complaints (for tests).
pub fn must_scrape(krate: &str, text: &str) -> Scrape {
    scrape(krate, text).unwrap_or_else(|e| panic!("{e}\n--- exposition ---\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP ferrostack_demo_io_requests_total Requests.
# TYPE ferrostack_demo_io_requests_total counter
ferrostack_demo_io_requests_total{op=\"read\"} 3
ferrostack_demo_io_requests_total{op=\"write\"} 4
# HELP ferrostack_demo_io_latency_seconds Latency.
# TYPE ferrostack_demo_io_latency_seconds histogram
ferrostack_demo_io_latency_seconds_bucket{le=\"0.001\"} 1
ferrostack_demo_io_latency_seconds_bucket{le=\"+Inf\"} 2
ferrostack_demo_io_latency_seconds_sum 0.5
ferrostack_demo_io_latency_seconds_count 2
";

    #[test]
    fn good_text_parses_into_samples() {
        let s = must_scrape("demo", GOOD);
        assert_eq!(s.sum("ferrostack_demo_io_requests_total", &[]), 7.0);
        assert_eq!(
            s.get("ferrostack_demo_io_requests_total", &[("op", "write")]),
            4.0
        );
        assert_eq!(s.get("ferrostack_demo_io_latency_seconds_count", &[]), 2.0);
    }

    #[test]
    fn each_broken_rule_is_reported() {
        let cases = [
            ("ferrostack_demo_x_total 1\n", "no TYPE line"),
            (
                "# TYPE ferrostack_demo_x_total counter\nferrostack_demo_x_total 1\n",
                "no HELP",
            ),
            (
                "# HELP ferrostack_other_x_total h\n# TYPE ferrostack_other_x_total counter\nferrostack_other_x_total 1\n",
                "name is not",
            ),
            (
                "# HELP ferrostack_demo_x h\n# TYPE ferrostack_demo_x counter\nferrostack_demo_x 1\n",
                "name must end in _total",
            ),
            (
                "# HELP ferrostack_demo_h h\n# TYPE ferrostack_demo_h histogram\nferrostack_demo_h_bucket{le=\"1\"} 2\nferrostack_demo_h_bucket{le=\"+Inf\"} 1\nferrostack_demo_h_sum 1\nferrostack_demo_h_count 1\n",
                "not cumulative",
            ),
            (
                "# HELP ferrostack_demo_h h\n# TYPE ferrostack_demo_h histogram\nferrostack_demo_h_bucket{le=\"+Inf\"} 1\nferrostack_demo_h_sum 1\nferrostack_demo_h_count 2\n",
                "_count differs",
            ),
            (
                "# HELP ferrostack_demo_g h\n# TYPE ferrostack_demo_g gauge\nferrostack_demo_g 1\nferrostack_demo_g 2\n",
                "series repeated",
            ),
            (
                "# HELP ferrostack_demo_a_total h\n# TYPE ferrostack_demo_a_total counter\n# HELP ferrostack_demo_b_total h\n# TYPE ferrostack_demo_b_total counter\nferrostack_demo_a_total 1\nferrostack_demo_b_total 1\n",
                "no TYPE line",
            ),
            ("ferrostack_demo_x{a=\"1\" 1\n", "Traceback"),
        ];
        for (text, want) in cases {
            let err = scrape("demo", text).expect_err(text);
            assert!(err.contains(want), "{text:?}: wanted {want:?} in {err}");
        }
    }
}
