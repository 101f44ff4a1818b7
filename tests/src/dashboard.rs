//! The Grafana dashboard SREs import (`deploy/grafana/disk-io-dashboard.json`), read as
//! data: its panels, the PromQL of every panel target and template variable, and the
//! series those queries select, so tests can hold each name against what is really
//! exported.
//!
//! * [`Dashboard`] / [`queries`]: the panels (rows' nested panels included) and their
//!   targets' `expr`s.
//! * [`parse`] / [`series_names`]: the metric names (and label names) a PromQL expression
//!   reads. A small lexer, not a full PromQL parser: it knows strings, ranges, label
//!   matchers, grouping clauses, numbers and durations, functions, keywords and
//!   Grafana's `$variables`, which is all it takes to tell a metric name from everything
//!   else.
//! * [`unexported`]: every name or label the dashboard's queries use that a given
//!   exposition does not have.
//! * [`node_only_series`] / [`node_documented`]: series only the node binary
//!   (`disk-io-node`) exports (S3 and readiness, prefixes [`NODE_ONLY_PREFIXES`]). No
//!   in-process recorder sees them, so they are never passed silently: a test checks the
//!   dashboard uses only the documented ones ([`NODE_ONLY_FAMILIES`]), and a test that
//!   scrapes a live node's `/metrics` checks the list [`node_only_series`] returns.
//!
//! ```
//! use disk_io_harness::dashboard::series_names;
//!
//! let names = series_names(
//!     r#"histogram_quantile(0.99, sum by (le, disk) (rate(diskio_op_duration_seconds_bucket{disk=~"$disk"}[5m])))"#,
//! );
//! let want = ["diskio_op_duration_seconds", "diskio_op_duration_seconds_bucket"];
//! assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), want);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a dashboard could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("dashboard is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not a dashboard this module understands (a target without `expr`,
    /// `panels` that is not a list, ...).
    #[error("dashboard structure: {what}")]
    Structure {
        /// What is wrong, naming the panel.
        what: String,
    },
    /// A query is not well-formed PromQL as far as the lexer can tell (unterminated
    /// string, unbalanced brackets, a label matcher without a value, ...).
    #[error("query {expr:?}: {what}")]
    Query {
        /// The query.
        expr: String,
        /// What is wrong with it.
        what: String,
    },
}

/// Results of this module.
pub type Result<T, E = DashboardError> = std::result::Result<T, E>;

/// Where the shipped dashboard lives in the repository.
pub fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/disk-io-dashboard.json")
}

/// One query of a panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Its `refId` (empty if the target has none).
    pub ref_id: String,
    /// The PromQL.
    pub expr: String,
    /// The target's own `datasource`, if it names one.
    pub datasource: Option<Value>,
}

/// A panel that shows data (rows are not panels here; see [`Dashboard::rows`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Its `id`, if it has one.
    pub id: Option<u64>,
    /// Its `title`.
    pub title: String,
    /// Its `type` (`timeseries`, `stat`, ...).
    pub kind: String,
    /// The title of the row it is in (`None` above the first row).
    pub row: Option<String>,
    /// Its `datasource`, if it names one.
    pub datasource: Option<Value>,
    /// Its `gridPos`, if it has one.
    pub grid_pos: Option<Value>,
    /// Its targets, in order.
    pub targets: Vec<Target>,
}

/// A template variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    /// Its `name`.
    pub name: String,
    /// Its `type` (`query`, `datasource`, ...).
    pub kind: String,
    /// Its query text (a `query` string, or the `query` field of a query object).
    pub query: Option<String>,
    /// Its `datasource`, if it names one.
    pub datasource: Option<Value>,
}

/// A dashboard, parsed.
#[derive(Clone, Debug)]
pub struct Dashboard {
    json: Value,
    panels: Vec<Panel>,
    rows: Vec<String>,
    variables: Vec<Variable>,
}

impl Dashboard {
    /// Parses a dashboard's JSON (panels of collapsed rows, which Grafana nests in the
    /// row, included; so are the pre-v16 `rows[].panels`).
    pub fn parse(json: &str) -> Result<Dashboard> {
        let json: Value = serde_json::from_str(json)?;
        if !json.is_object() {
            return Err(structure("the top level is not an object"));
        }
        let mut d = Dashboard {
            panels: Vec::new(),
            rows: Vec::new(),
            variables: Vec::new(),
            json: Value::Null,
        };
        let mut row = None;
        if let Some(panels) = json.get("panels") {
            d.walk(panels, &mut row)?;
        }
        if let Some(rows) = json.get("rows") {
            for r in list(rows, "rows")? {
                let mut title = Some(str_field(r, "title").to_owned());
                d.rows.extend(title.clone());
                if let Some(panels) = r.get("panels") {
                    d.walk(panels, &mut title)?;
                }
            }
        }
        if let Some(vars) = json.pointer("/templating/list") {
            for v in list(vars, "templating.list")? {
                let query = match v.get("query") {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Object(o)) => {
                        o.get("query").and_then(Value::as_str).map(str::to_owned)
                    }
                    _ => None,
                };
                d.variables.push(Variable {
                    name: str_field(v, "name").to_owned(),
                    kind: str_field(v, "type").to_owned(),
                    query,
                    datasource: v.get("datasource").cloned(),
                });
            }
        }
        d.json = json;
        Ok(d)
    }

    /// Reads and parses the dashboard at `path`.
    pub fn load(path: &Path) -> Result<Dashboard> {
        let text = std::fs::read_to_string(path).map_err(|source| DashboardError::Read {
            path: path.to_owned(),
            source,
        })?;
        Dashboard::parse(&text)
    }

    /// The dashboard shipped in `deploy/grafana/` ([`shipped_path`]).
    pub fn shipped() -> Result<Dashboard> {
        Dashboard::load(&shipped_path())
    }

    fn walk(&mut self, panels: &Value, row: &mut Option<String>) -> Result<()> {
        for p in list(panels, "panels")? {
            let title = str_field(p, "title").to_owned();
            let kind = str_field(p, "type").to_owned();
            if kind == "row" {
                self.rows.push(title.clone());
                *row = Some(title);
                if let Some(nested) = p.get("panels") {
                    // A collapsed row holds its panels; they belong to it.
                    self.walk(nested, row)?;
                }
                continue;
            }
            let mut targets = Vec::new();
            if let Some(ts) = p.get("targets") {
                for t in list(ts, &format!("targets of panel {title:?}"))? {
                    let expr = t.get("expr").and_then(Value::as_str).ok_or_else(|| {
                        structure(format!("a target of panel {title:?} has no string `expr`"))
                    })?;
                    targets.push(Target {
                        ref_id: str_field(t, "refId").to_owned(),
                        expr: expr.to_owned(),
                        datasource: t.get("datasource").cloned(),
                    });
                }
            }
            self.panels.push(Panel {
                id: p.get("id").and_then(Value::as_u64),
                title,
                kind,
                row: row.clone(),
                datasource: p.get("datasource").cloned(),
                grid_pos: p.get("gridPos").cloned(),
                targets,
            });
            if let Some(nested) = p.get("panels") {
                self.walk(nested, row)?;
            }
        }
        Ok(())
    }

    /// The raw JSON.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Every panel that is not a row, in order, nested ones included.
    pub fn panels(&self) -> &[Panel] {
        &self.panels
    }

    /// Row titles, in order.
    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    /// Template variables, in order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Every target's `expr`, in panel order.
    pub fn queries(&self) -> Vec<String> {
        self.panels
            .iter()
            .flat_map(|p| p.targets.iter().map(|t| t.expr.clone()))
            .collect()
    }

    /// Every PromQL expression the dashboard runs, with where it is: each target's
    /// `expr` ("panel TITLE") and the series expression of each `label_values(...)`
    /// variable ("variable NAME").
    pub fn promql(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .panels
            .iter()
            .flat_map(|p| {
                p.targets
                    .iter()
                    .map(|t| (format!("panel {:?}", p.title), t.expr.clone()))
            })
            .collect();
        for v in &self.variables {
            if let Some((expr, _)) = v.query.as_deref().and_then(label_values_query) {
                out.push((format!("variable {:?}", v.name), expr));
            }
        }
        out
    }
}

fn structure(what: impl Into<String>) -> DashboardError {
    DashboardError::Structure { what: what.into() }
}

fn list<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| structure(format!("`{what}` is not a list")))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Every `expr` of every panel target of the dashboard `dashboard_json`, nested rows'
/// panels included, in panel order.
pub fn queries(dashboard_json: &str) -> Result<Vec<String>> {
    Ok(Dashboard::parse(dashboard_json)?.queries())
}

/// A Grafana `label_values(EXPR, LABEL)` variable query split into its series
/// expression and label; `None` for any other query (`label_values(LABEL)` included,
/// which names no series).
pub fn label_values_query(q: &str) -> Option<(String, String)> {
    let inner = q
        .trim()
        .strip_prefix("label_values")?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let (expr, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    let is_ident = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    is_ident.then(|| (expr.trim().to_owned(), label.to_owned()))
}

// ---- PromQL --------------------------------------------------------------

/// One vector selector of an expression: a metric name and the label names its
/// matchers use (`name{a="x", b=~"y"}` → `name`, {a, b}).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// The metric name as written (`..._bucket` stays `..._bucket`).
    pub name: String,
    /// Label names of its matchers (`__name__` excluded).
    pub labels: BTreeSet<String>,
}

/// What an expression reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Its vector selectors, in order (a name selected twice appears twice).
    pub selectors: Vec<Selector>,
    /// Label names of its `by`, `without`, `on`, `ignoring`, `group_left` and
    /// `group_right` clauses.
    pub grouping: BTreeSet<String>,
}

/// Keywords that are never metric names (compared case-insensitively, as PromQL does).
/// Grouping clauses are handled apart from these.
const KEYWORDS: &[&str] = &[
    "bool", "offset", "and", "or", "unless", "atan2", "inf", "nan",
];

/// Aggregation operators (their `(` may come after a grouping clause, so they are not
/// recognised as functions by the parenthesis).
const AGGREGATORS: &[&str] = &[
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "count_values",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Clauses whose parenthesised list is of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Suffixes of a histogram's (or summary's) samples.
pub const SAMPLE_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The metric names `expr` selects: every identifier that is not a function, keyword,
/// label name (in `{}` or a grouping clause), number, duration, string or Grafana
/// variable; also `{__name__="x"}`. A name ending in `_bucket`, `_sum` or `_count` is
/// given twice, as written and as its family's base name (the lexer cannot tell a
/// histogram's `_count` from a counter so named; the caller checks either against what
/// it knows). Lenient: an ill-formed expression yields the names found anyway ([`parse`]
/// says what is wrong with it).
pub fn series_names(expr: &str) -> BTreeSet<String> {
    let (parsed, _) = scan(expr);
    let mut out = BTreeSet::new();
    for s in parsed.selectors {
        if let Some(base) = family_base(&s.name) {
            out.insert(base.to_owned());
        }
        out.insert(s.name);
    }
    out
}

/// The base family name of a `_bucket`/`_sum`/`_count` sample name.
pub fn family_base(name: &str) -> Option<&str> {
    SAMPLE_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| !b.is_empty())
}

/// The selectors and grouping labels of `expr`; an error if it is ill-formed as far as
/// the lexer can tell.
pub fn parse(expr: &str) -> Result<Parsed> {
    match scan(expr) {
        (p, None) => Ok(p),
        (_, Some(what)) => Err(DashboardError::Query {
            expr: expr.to_owned(),
            what,
        }),
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_ident(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }

    /// The next non-blank byte, without consuming it.
    fn next_significant(&mut self) -> Option<u8> {
        self.skip_ws();
        self.peek()
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_ident) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.b[start..self.i]).into_owned()
    }

    /// A string literal starting at the current quote; its contents (escapes kept).
    fn string(&mut self) -> Result<String, String> {
        let quote = self.b[self.i];
        let start = self.i + 1;
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'\\' && quote != b'`' {
                self.i += 1;
            } else if c == quote {
                return Ok(String::from_utf8_lossy(&self.b[start..self.i - 1]).into_owned());
            }
        }
        Err(format!(
            "unterminated string starting at byte {}",
            start - 1
        ))
    }

    /// A number or duration (`0.99`, `1e-3`, `0x1f`, `5m`, `1h30m`).
    fn number(&mut self) {
        let hex = self.b[self.i..].starts_with(b"0x") || self.b[self.i..].starts_with(b"0X");
        while let Some(c) = self.peek() {
            let exponent_sign = (c == b'+' || c == b'-')
                && !hex
                && matches!(self.b[self.i - 1], b'e' | b'E')
                && self.b.get(self.i + 1).is_some_and(u8::is_ascii_digit);
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// A Grafana variable: `$name`, `$__rate_interval`, `${name:format}`.
    fn variable(&mut self) -> Result<(), String> {
        self.i += 1;
        if self.peek() == Some(b'{') {
            while let Some(c) = self.peek() {
                self.i += 1;
                if c == b'}' {
                    return Ok(());
                }
            }
            return Err("unterminated ${...} variable".into());
        }
        if !self.peek().is_some_and(is_ident) {
            return Err(format!("a lone `$` at byte {}", self.i - 1));
        }
        self.ident();
        Ok(())
    }

    /// A range or subquery (`[5m]`, `[$__rate_interval]`, `[1h:5m]`), skipped.
    fn range(&mut self) -> Result<(), String> {
        let start = self.i;
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b']' => return Ok(()),
                b'[' | b'(' | b')' | b'{' | b'}' | b'"' | b'\'' => {
                    return Err(format!(
                        "unexpected `{}` in the range at byte {start}",
                        c as char
                    ))
                }
                _ => {}
            }
        }
        Err(format!("unterminated range starting at byte {start}"))
    }

    /// Label matchers starting at `{`: their label names, and the name a
    /// `__name__="x"` matcher gives.
    fn matchers(&mut self) -> Result<(BTreeSet<String>, Option<String>), String> {
        let start = self.i;
        self.i += 1;
        let mut labels = BTreeSet::new();
        let mut name = None;
        loop {
            match self.next_significant() {
                Some(b'}') => {
                    self.i += 1;
                    return Ok((labels, name));
                }
                Some(b',') => {
                    self.i += 1;
                    continue;
                }
                Some(c) if is_ident_start(c) => {}
                Some(c) => {
                    return Err(format!(
                        "unexpected `{}` in the label matchers at byte {start}",
                        c as char
                    ))
                }
                None => return Err(format!("unterminated label matchers at byte {start}")),
            }
            let label = self.ident();
            self.skip_ws();
            let op: &[u8] = match (self.peek(), self.b.get(self.i + 1).copied()) {
                (Some(b'='), Some(b'~')) => b"=~",
                (Some(b'!'), Some(b'=')) => b"!=",
                (Some(b'!'), Some(b'~')) => b"!~",
                (Some(b'='), _) => b"=",
                _ => return Err(format!("label {label:?} has no match operator")),
            };
            self.i += op.len();
            if !matches!(self.next_significant(), Some(b'"' | b'\'' | b'`')) {
                return Err(format!("label {label:?} has no quoted value"));
            }
            let value = self.string()?;
            if label == "__name__" {
                if op == b"=" {
                    name = Some(value);
                }
            } else {
                labels.insert(label);
            }
        }
    }

    /// A grouping clause's `(a, b, ...)`: its label names.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.next_significant() {
                Some(b')') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b',') => self.i += 1,
                Some(c) if is_ident_start(c) => out.push(self.ident()),
                Some(c) => return Err(format!("unexpected `{}` in a grouping clause", c as char)),
                None => return Err("unterminated grouping clause".into()),
            }
        }
    }
}

/// Keeps the first error.
fn fail(e: String, error: &mut Option<String>) {
    error.get_or_insert(e);
}

/// The lexer's pass: what it found, and the first thing that was wrong.
fn scan(expr: &str) -> (Parsed, Option<String>) {
    let mut lx = Lexer {
        b: expr.as_bytes(),
        i: 0,
    };
    let mut out = Parsed::default();
    let mut error: Option<String> = None;
    let mut parens = 0usize;
    // The previous token was a metric name (its `{...}` belong to it).
    let mut after_metric = false;
    while let Some(c) = lx.next_significant() {
        let was_metric = std::mem::take(&mut after_metric);
        match c {
            b'"' | b'\'' | b'`' => {
                if let Err(e) = lx.string() {
                    fail(e, &mut error);
                    break;
                }
            }
            b'[' => {
                if let Err(e) = lx.range() {
                    fail(e, &mut error);
                    break;
                }
            }
            b'{' => match lx.matchers() {
                Ok((labels, name)) => {
                    if was_metric {
                        if let Some(last) = out.selectors.last_mut() {
                            last.labels.extend(labels);
                        }
                        if name.is_some() {
                            fail("both a metric name and `__name__`".into(), &mut error);
                        }
                    } else if let Some(name) = name {
                        out.selectors.push(Selector { name, labels });
                    } else {
                        fail("a selector without a metric name".into(), &mut error);
                    }
                }
                Err(e) => {
                    fail(e, &mut error);
                    break;
                }
            },
            b'(' => {
                parens += 1;
                lx.i += 1;
            }
            b')' => {
                if parens == 0 {
                    fail(format!("unbalanced `)` at byte {}", lx.i), &mut error);
                } else {
                    parens -= 1;
                }
                lx.i += 1;
            }
            b'$' => {
                if let Err(e) = lx.variable() {
                    fail(e, &mut error);
                }
            }
            b'.' if lx.b.get(lx.i + 1).is_some_and(u8::is_ascii_digit) => lx.number(),
            c if c.is_ascii_digit() => lx.number(),
            c if is_ident_start(c) => {
                let word = lx.ident();
                let lower = word.to_ascii_lowercase();
                let next = lx.next_significant();
                if GROUPING.contains(&lower.as_str()) {
                    if next == Some(b'(') {
                        match lx.label_list() {
                            Ok(labels) => out.grouping.extend(labels),
                            Err(e) => {
                                fail(e, &mut error);
                                break;
                            }
                        }
                    } else if lower != "group_left" && lower != "group_right" {
                        fail(format!("`{word}` without a label list"), &mut error);
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATORS.contains(&lower.as_str())
                    || next == Some(b'(')
                {
                    // A keyword, aggregation operator or function.
                } else {
                    out.selectors.push(Selector {
                        name: word,
                        labels: BTreeSet::new(),
                    });
                    after_metric = true;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' | b',' | b':'
            | b'@' => lx.i += 1,
            c => {
                fail(
                    format!("unexpected `{}` at byte {}", c as char, lx.i),
                    &mut error,
                );
                lx.i += 1;
            }
        }
    }
    if parens > 0 {
        fail(format!("{parens} unclosed `(`"), &mut error);
    }
    if out.selectors.is_empty() {
        fail("selects no series".into(), &mut error);
    }
    (out, error)
}

// ---- checking against an exposition ---------------------------------------

/// Series as a Prometheus scrape sees them: sample name (a histogram's
/// `_bucket`/`_sum`/`_count` each under its own) → the label names it carries.
pub type Exposition = BTreeMap<String, BTreeSet<String>>;

/// Type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A counter (its name as given, `_total` included).
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram: `_bucket` (with `le`), `_sum`, `_count`.
    Histogram,
    /// A summary: the name itself (with `quantile`), `_sum`, `_count`.
    Summary,
}

/// Adds to `into` the samples a family `name` of `kind` with `labels` exposes.
pub fn expose(into: &mut Exposition, name: &str, kind: Kind, labels: &BTreeSet<String>) {
    let with = |extra: &str| {
        let mut l = labels.clone();
        l.insert(extra.to_owned());
        l
    };
    let samples: Vec<(String, BTreeSet<String>)> = match kind {
        Kind::Counter | Kind::Gauge => vec![(name.to_owned(), labels.clone())],
        Kind::Histogram => vec![
            (format!("{name}_bucket"), with("le")),
            (format!("{name}_sum"), labels.clone()),
            (format!("{name}_count"), labels.clone()),
        ],
        Kind::Summary => vec![
            (name.to_owned(), with("quantile")),
            (format!("{name}_sum"), labels.clone()),
            (format!("{name}_count"), labels.clone()),
        ],
    };
    for (n, l) in samples {
        into.entry(n).or_default().extend(l);
    }
}

/// Labels any series has once scraped (Prometheus adds them).
pub const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// Prefixes of the series only the node binary exports.
pub const NODE_ONLY_PREFIXES: [&str; 2] = ["diskio_s3_", "diskio_node_"];

/// A family the node binary is documented to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFamily {
    /// Its name.
    pub name: &'static str,
    /// Its type (histograms with `_bucket`/`_sum`/`_count`, the node's exporter has
    /// buckets for every name ending in `_seconds`).
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
}

/// What the node binary exports besides the libraries' series: S3 requests (`outcome`
/// is `ok` or an S3 error code), their latency, bytes in and out (`direction` is `in`
/// or `out`), and readiness (0/1).
pub const NODE_ONLY_FAMILIES: &[NodeFamily] = &[
    NodeFamily {
        name: "diskio_s3_requests_total",
        kind: Kind::Counter,
        labels: &["op", "outcome"],
    },
    NodeFamily {
        name: "diskio_s3_request_seconds",
        kind: Kind::Histogram,
        labels: &["op"],
    },
    NodeFamily {
        name: "diskio_s3_bytes_total",
        kind: Kind::Counter,
        labels: &["direction"],
    },
    NodeFamily {
        name: "diskio_node_ready",
        kind: Kind::Gauge,
        labels: &[],
    },
];

/// Whether `name` is one only the node binary exports.
pub fn is_node_only(name: &str) -> bool {
    NODE_ONLY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The node-only series as a scrape shows them ([`NODE_ONLY_FAMILIES`]).
pub fn node_documented() -> Exposition {
    let mut out = Exposition::new();
    for f in NODE_ONLY_FAMILIES {
        let labels = f.labels.iter().map(|l| (*l).to_owned()).collect();
        expose(&mut out, f.name, f.kind, &labels);
    }
    out
}

/// The node-only series ([`NODE_ONLY_PREFIXES`]) the dashboard's queries select, as
/// written (a histogram's as `_bucket`/`_sum`/`_count`, which is how a scrape of the
/// node's `/metrics` shows them). A test scraping a live node checks each is there.
pub fn node_only_series(dashboard: &Dashboard) -> BTreeSet<String> {
    dashboard
        .promql()
        .iter()
        .flat_map(|(_, expr)| scan(expr).0.selectors)
        .map(|s| s.name)
        .filter(|n| is_node_only(n))
        .collect()
}

/// One thing a dashboard query uses that is not exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the query is (`panel "TITLE"`, `variable "NAME"`).
    pub place: String,
    /// The query.
    pub expr: String,
    /// What is missing.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (in `{}`)", self.place, self.what, self.expr)
    }
}

/// Every name or label the dashboard's queries (targets and `label_values` variables)
/// use that is not exported: a selected name that is in neither `exported` nor, for
/// node-only names, [`node_documented`]; a matcher label the selected series does not
/// carry; a grouping label (or a variable's label) none of the query's series carries.
/// [`SCRAPE_LABELS`] are always there. Ill-formed queries are problems too.
pub fn unexported(dashboard: &Dashboard, exported: &Exposition) -> Vec<Problem> {
    let node = node_documented();
    let mut out = Vec::new();
    let mut queries: Vec<(String, String, Option<String>)> = dashboard
        .panels()
        .iter()
        .flat_map(|p| {
            p.targets
                .iter()
                .map(|t| (format!("panel {:?}", p.title), t.expr.clone(), None))
        })
        .collect();
    for v in dashboard.variables() {
        if let Some((expr, label)) = v.query.as_deref().and_then(label_values_query) {
            queries.push((format!("variable {:?}", v.name), expr, Some(label)));
        }
    }
    for (place, expr, var_label) in queries {
        let mut problem = |what: String| {
            out.push(Problem {
                place: place.clone(),
                expr: expr.clone(),
                what,
            })
        };
        let parsed = match parse(&expr) {
            Ok(p) => p,
            Err(e) => {
                problem(e.to_string());
                continue;
            }
        };
        let mut carried: BTreeSet<String> = SCRAPE_LABELS.iter().map(|l| (*l).to_owned()).collect();
        let mut all_known = true;
        for s in &parsed.selectors {
            let (source, from) = if is_node_only(&s.name) {
                (&node, "the node's documented series")
            } else {
                (exported, "the exported series")
            };
            let Some(labels) = source.get(&s.name) else {
                problem(format!("`{}` is not among {from}", s.name));
                all_known = false;
                continue;
            };
            for l in s.labels.iter().filter(|l| !carried_always(l)) {
                if !labels.contains(l) {
                    problem(format!(
                        "`{}` has no label `{l}` (it carries {labels:?})",
                        s.name
                    ));
                }
            }
            carried.extend(labels.iter().cloned());
        }
        // (Labels of a query with an unknown series would only repeat that.)
        for l in parsed.grouping.iter().chain(var_label.as_ref()) {
            if all_known && !carried.contains(l) {
                problem(format!(
                    "groups by `{l}`, which none of its series carries ({carried:?})"
                ));
            }
        }
    }
    out
}

fn carried_always(label: &str) -> bool {
    SCRAPE_LABELS.contains(&label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn names_are_told_from_functions_keywords_labels_durations_and_strings() {
        let e = r#"
            histogram_quantile(0.99,
              sum by (le, disk, op) (
                rate(diskio_op_duration_seconds_bucket{instance=~"$instance", disk=~"${disk:regex}"}[$__rate_interval])
              )
            )"#;
        assert_eq!(
            series_names(e),
            set(&[
                "diskio_op_duration_seconds",
                "diskio_op_duration_seconds_bucket"
            ])
        );
        let p = parse(e).expect("well-formed");
        assert_eq!(p.grouping, set(&["le", "disk", "op"]));
        assert_eq!(p.selectors[0].labels, set(&["instance", "disk"]));

        let e = r#"sum without (result) (rate(a_total{x="rate(b_total[5m])"}[5m] offset 1h))
                   / on (instance, set) group_left (kind) max(c) BY (set)
                   > bool 0.5e-3 and ignoring (y) d_total unless e or vector(1)
                   + count(f) + sum(g) + topk(3, h) + 0x1F * Inf - nan + absent(i @ start())"#;
        assert_eq!(
            series_names(e),
            set(&["a_total", "c", "d_total", "e", "f", "g", "h", "i"])
        );
        let p = parse(e).expect("well-formed");
        assert_eq!(p.grouping, set(&["result", "instance", "set", "kind", "y"]));
    }

    #[test]
    fn name_matchers_subqueries_and_comments() {
        let e = "max_over_time({__name__=\"up\", job='x'}[1h:5m]) # up_total here is a comment\n+ `raw`";
        assert_eq!(series_names(e), set(&["up"]));
        assert_eq!(parse(e).expect("ok").selectors[0].labels, set(&["job"]));
        assert_eq!(
            series_names("x_sum / x_count"),
            set(&["x", "x_count", "x_sum"])
        );
    }

    #[test]
    fn ill_formed_queries_are_refused() {
        for bad in [
            "rate(x[5m]",
            "x{a=\"b}",
            "x{a}",
            "rate(x[5m)",
            "sum by x",
            "1 + 2",
            "{a=\"b\"}",
            "x)",
            "x ; y",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        // Lenient: the names are still found.
        assert_eq!(series_names("rate(x[5m]"), set(&["x"]));
    }

    fn dashboard(exprs: &[&str]) -> Dashboard {
        let targets: Vec<Value> = exprs
            .iter()
            .map(|e| serde_json::json!({ "refId": "A", "expr": e }))
            .collect();
        let json = serde_json::json!({
            "panels": [
                { "type": "row", "title": "R", "collapsed": true, "panels": [
                    { "type": "timeseries", "title": "nested", "targets": targets }
                ]},
            ],
            "templating": { "list": [
                { "name": "disk", "type": "query",
                  "query": { "query": "label_values(diskio_ops_total, disk)", "refId": "V" } }
            ]}
        });
        Dashboard::parse(&json.to_string()).expect("parse")
    }

    fn exported() -> Exposition {
        let mut e = Exposition::new();
        expose(
            &mut e,
            "diskio_ops_total",
            Kind::Counter,
            &set(&["disk", "op", "result"]),
        );
        expose(
            &mut e,
            "diskio_op_duration_seconds",
            Kind::Histogram,
            &set(&["disk", "op"]),
        );
        e
    }

    #[test]
    fn queries_of_nested_panels_are_found() {
        let d = dashboard(&["sum(rate(diskio_ops_total[5m]))", "diskio_node_ready"]);
        let json = d.json().to_string();
        assert_eq!(
            queries(&json).expect("queries"),
            ["sum(rate(diskio_ops_total[5m]))", "diskio_node_ready"]
        );
        assert_eq!(d.rows(), ["R"]);
        assert_eq!(d.panels()[0].row.as_deref(), Some("R"));
        assert_eq!(node_only_series(&d), set(&["diskio_node_ready"]));
        assert!(unexported(&d, &exported()).is_empty());
        // A target without an expression is refused, not skipped.
        let bad = r#"{"panels": [{"type": "stat", "title": "t", "targets": [{"refId": "A"}]}]}"#;
        assert!(queries(bad).is_err());
    }

    #[test]
    fn a_name_or_label_nobody_exports_is_caught() {
        let cases = [
            (
                "rate(diskio_opps_total[5m])",
                "`diskio_opps_total` is not among",
            ),
            (
                "rate(diskio_ops_total_count[5m])",
                "`diskio_ops_total_count` is not",
            ),
            (
                "diskio_op_duration_seconds",
                "`diskio_op_duration_seconds` is not",
            ),
            ("diskio_ops_total{peer=\"a\"}", "has no label `peer`"),
            ("sum by (set) (diskio_ops_total)", "groups by `set`"),
            ("sum by (le) (diskio_ops_total)", "groups by `le`"),
            ("diskio_s3_request_total", "not among the node's documented"),
            ("diskio_s3_bytes_total{op=\"x\"}", "has no label `op`"),
            ("rate(diskio_ops_total[5m]", "unclosed"),
        ];
        for (expr, want) in cases {
            let problems = unexported(&dashboard(&[expr]), &exported());
            assert!(
                problems.iter().any(|p| p.to_string().contains(want)),
                "{expr}: {problems:?}"
            );
        }
        let fine = [
            "histogram_quantile(0.9, sum by (le, op) (rate(diskio_op_duration_seconds_bucket{disk!=\"\"}[5m])))",
            "sum by (instance, op) (rate(diskio_op_duration_seconds_count[5m]))",
            "sum by (direction) (rate(diskio_s3_bytes_total[5m]))",
            "histogram_quantile(0.5, sum by (le) (rate(diskio_s3_request_seconds_bucket[5m])))",
        ];
        assert!(unexported(&dashboard(&fine), &exported()).is_empty());
        // A variable's label is checked against its series too.
        let json = serde_json::json!({ "panels": [], "templating": { "list": [
            { "name": "p", "type": "query", "query": "label_values(diskio_ops_total, peer)" }
        ]}});
        let d = Dashboard::parse(&json.to_string()).expect("parse");
        let problems = unexported(&d, &exported());
        assert!(
            problems.iter().any(|p| p.to_string().contains("`peer`")),
            "{problems:?}"
        );
    }

    #[test]
    fn label_values_queries_split() {
        assert_eq!(
            label_values_query("label_values(diskio_disk_state{instance=~\"$i\"}, disk)"),
            Some(("diskio_disk_state{instance=~\"$i\"}".into(), "disk".into()))
        );
        assert_eq!(label_values_query("label_values(disk)"), None);
        assert_eq!(label_values_query("query_result(up)"), None);
    }
}
