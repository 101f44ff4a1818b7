//! `--suite`: the matrix performance engineers ask for first, over every
//! engine and fio, on one file, written as JSON and as an SVG chart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::engines::{self, Engine, Progress};
use crate::job::{BenchError, JobSpec, Rw};
use crate::report::Summary;
use crate::svg;

/// One cell row of the matrix.
pub struct Case {
    /// Label.
    pub name: &'static str,
    /// Pattern.
    pub rw: Rw,
    /// Block size.
    pub bs: usize,
    /// Queue depth.
    pub iodepth: usize,
}

/// 4 KiB random reads at QD1 and QD32, 4 KiB random writes at QD32, 1 MiB
/// sequential reads and writes (QD8, enough to keep a virtio queue busy).
pub const CASES: [Case; 5] = [
    Case {
        name: "4k randread QD1",
        rw: Rw::RandRead,
        bs: 4096,
        iodepth: 1,
    },
    Case {
        name: "4k randread QD32",
        rw: Rw::RandRead,
        bs: 4096,
        iodepth: 32,
    },
    Case {
        name: "4k randwrite QD32",
        rw: Rw::RandWrite,
        bs: 4096,
        iodepth: 32,
    },
    Case {
        name: "1M read QD8",
        rw: Rw::Read,
        bs: 1 << 20,
        iodepth: 8,
    },
    Case {
        name: "1M write QD8",
        rw: Rw::Write,
        bs: 1 << 20,
        iodepth: 8,
    },
];

/// Suite settings.
pub struct SuiteOptions {
    /// Target file.
    pub filename: PathBuf,
    /// Its size (created if missing).
    pub size: u64,
    /// Runtime of each cell.
    pub runtime: Duration,
    /// O_DIRECT.
    pub direct: bool,
    /// Engines to run (fio is added when `with_fio`).
    pub engines: Vec<Engine>,
    /// Run fio too.
    pub with_fio: bool,
    /// JSON output path; the chart goes next to it with `.svg`.
    pub output: PathBuf,
    /// Per-op deadline for `uring`.
    pub op_deadline: Duration,
    /// Interleaved rounds per cell: each engine's figures are from its
    /// median round by IOPS ratio to the last engine (fio when it runs).
    pub rounds: usize,
}

/// Run the matrix; returns the JSON written.
pub fn run(opts: &SuiteOptions, progress: Arc<Progress>) -> Result<serde_json::Value, BenchError> {
    let mut names: Vec<String> = opts
        .engines
        .iter()
        .map(|e| e.as_str().to_string())
        .collect();
    if opts.with_fio {
        names.push("fio".into());
    }
    let mut iops = vec![Vec::new(); names.len()];
    let mut p99_us = vec![Vec::new(); names.len()];
    let mut cpu_us = vec![Vec::new(); names.len()];
    let mut cells = Vec::new();
    for case in &CASES {
        let spec = JobSpec {
            rw: case.rw,
            bs: case.bs,
            iodepth: case.iodepth,
            numjobs: 1,
            size: Some(opts.size),
            runtime: Some(opts.runtime),
            direct: opts.direct,
            filename: opts.filename.clone(),
            rwmixread: 50,
            op_deadline: opts.op_deadline,
        };
        spec.validate()?;
        let file_size = engines::prepare_file(&spec)?;
        let mut rounds = Vec::new();
        for round in 1..=opts.rounds.max(1) {
            let mut row = Vec::new();
            for name in &names {
                let s = if name == "fio" {
                    crate::fio::run(&spec, file_size)?
                } else {
                    let engine = Engine::parse(name)?;
                    Summary::from_run(&engines::run(engine, &spec, file_size, progress.clone())?)
                };
                eprintln!(
                    "  {:<18} round {round} {:<17} {:>10.0} IOPS  p99 {:>9.1} us  cpu {:>6.1} us/io{}",
                    case.name,
                    name,
                    s.iops(),
                    s.main_dir().lat_ns.p99 / 1e3,
                    s.cpu_us_per_io,
                    if s.errors > 0 { "  (errors!)" } else { "" }
                );
                row.push(s);
            }
            rounds.push(row);
        }
        let ratios = crate::report::median_ratios(&rounds);
        let mut medians = Vec::new();
        for i in 0..names.len() {
            let s = crate::report::median_round(&rounds, i);
            iops[i].push(s.iops());
            p99_us[i].push(s.main_dir().lat_ns.p99 / 1e3);
            cpu_us[i].push(s.cpu_us_per_io);
            medians.push(s);
        }
        eprintln!(
            "  {:<18} median per-round IOPS ratio to {}: {}",
            case.name,
            names.last().map_or("", String::as_str),
            ratios
                .iter()
                .map(|(n, r)| format!("{n} {r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        cells.push(json!({
            "case": case.name,
            "job": spec,
            "median_round": medians,
            "median_ratio_to_last": ratios.iter().map(|(n, r)| json!({"engine": n, "ratio": r})).collect::<Vec<_>>(),
            "rounds": rounds,
        }));
    }
    let doc = json!({
        "generated_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "runtime_per_cell_ms": opts.runtime.as_millis() as u64,
        "rounds": opts.rounds.max(1),
        "direct": opts.direct,
        "file": opts.filename.display().to_string(),
        "cells": cells,
    });
    write(
        &opts.output,
        &serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )?;
    let groups: Vec<String> = CASES.iter().map(|c| c.name.to_string()).collect();
    let chart = svg::document(&[
        svg::Chart {
            title: "IOPS (higher is better)",
            unit: "",
            groups: &groups,
            series: &names,
            values: &iops,
        },
        svg::Chart {
            title: "p99 latency (lower is better)",
            unit: "us",
            groups: &groups,
            series: &names,
            values: &p99_us,
        },
        svg::Chart {
            title: "CPU per op, user + system (lower is better)",
            unit: "us",
            groups: &groups,
            series: &names,
            values: &cpu_us,
        },
    ]);
    let svg_path = opts.output.with_extension("svg");
    write(&svg_path, &chart)?;
    eprintln!("wrote {} and {}", opts.output.display(), svg_path.display());
    Ok(doc)
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::Io {
            what: format!("create {}", dir.display()),
            source: e,
        })?;
    }
    std::fs::write(path, text).map_err(|e| BenchError::Io {
        what: format!("write {}", path.display()),
        source: e,
    })
}
