//! A grouped bar chart as SVG text. Written by hand: two bar charts do not
//! justify a plotting library's build time on a 2-core CI machine.

/// One chart: groups along x (e.g. job cases), one bar per series (e.g.
/// engine) in each group, on a log10 y axis (the cases span orders of
/// magnitude).
pub struct Chart<'a> {
    /// Title above the chart.
    pub title: &'a str,
    /// Unit shown on the y axis.
    pub unit: &'a str,
    /// Group labels.
    pub groups: &'a [String],
    /// Series labels.
    pub series: &'a [String],
    /// `values[series][group]`; zero or negative means "no value".
    pub values: &'a [Vec<f64>],
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
const W: f64 = 960.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const RIGHT: f64 = 170.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart<'_> {
    /// The chart's SVG elements, drawn with its top-left corner at `y0`.
    fn draw(&self, y0: f64) -> String {
        let mut s = String::new();
        let positive = self.values.iter().flatten().copied().filter(|v| *v > 0.0);
        let (lo, hi) = positive.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
        let lo_exp = lo.log10().floor();
        let hi_exp = hi.log10().ceil().max(lo_exp + 1.0);
        let plot_h = H - TOP - BOTTOM;
        let plot_w = W - LEFT - RIGHT;
        let y_of = |v: f64| y0 + TOP + plot_h * (1.0 - (v.log10() - lo_exp) / (hi_exp - lo_exp));
        s += &format!(
            "<text x='{LEFT}' y='{}' font-size='16' font-weight='bold'>{}</text>\n",
            y0 + 24.0,
            esc(self.title)
        );
        let mut e = lo_exp;
        while e <= hi_exp {
            let v = 10f64.powf(e);
            let y = y_of(v);
            s += &format!(
                "<line x1='{LEFT}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/>\n<text x='{}' y='{:.1}' font-size='11' text-anchor='end'>{} {}</text>\n",
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                compact(v),
                esc(self.unit)
            );
            e += 1.0;
        }
        let groups = self.groups.len().max(1) as f64;
        let group_w = plot_w / groups;
        let bar_w = (group_w * 0.8) / self.series.len().max(1) as f64;
        for (g, label) in self.groups.iter().enumerate() {
            let gx = LEFT + g as f64 * group_w + group_w * 0.1;
            for (si, vals) in self.values.iter().enumerate() {
                let v = vals.get(g).copied().unwrap_or(0.0);
                if v <= 0.0 {
                    continue;
                }
                let x = gx + si as f64 * bar_w;
                let y = y_of(v.max(10f64.powf(lo_exp)));
                let base = y0 + TOP + plot_h;
                s += &format!(
                    "<rect x='{x:.1}' y='{y:.1}' width='{:.1}' height='{:.1}' fill='{}'><title>{}: {}</title></rect>\n",
                    bar_w * 0.92,
                    (base - y).max(0.0),
                    PALETTE[si % PALETTE.len()],
                    esc(&self.series[si]),
                    compact(v)
                );
                s += &format!(
                    "<text x='{:.1}' y='{:.1}' font-size='9' text-anchor='middle'>{}</text>\n",
                    x + bar_w * 0.46,
                    y - 3.0,
                    compact(v)
                );
            }
            s += &format!(
                "<text x='{:.1}' y='{:.1}' font-size='12' text-anchor='middle'>{}</text>\n",
                gx + group_w * 0.4,
                y0 + H - BOTTOM + 18.0,
                esc(label)
            );
        }
        for (si, name) in self.series.iter().enumerate() {
            let y = y0 + TOP + 10.0 + si as f64 * 18.0;
            s += &format!(
                "<rect x='{}' y='{:.1}' width='12' height='12' fill='{}'/><text x='{}' y='{:.1}' font-size='12'>{}</text>\n",
                W - RIGHT + 16.0,
                y - 10.0,
                PALETTE[si % PALETTE.len()],
                W - RIGHT + 34.0,
                y,
                esc(name)
            );
        }
        s
    }
}

/// Several charts stacked vertically in one SVG document.
pub fn document(charts: &[Chart<'_>]) -> String {
    let total_h = H * charts.len() as f64;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{total_h}' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    for (i, c) in charts.iter().enumerate() {
        s += &c.draw(i as f64 * H);
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_bar_per_value_and_escapes_labels() {
        let groups = vec!["4k <QD1>".to_string(), "1M".to_string()];
        let series = vec!["uring".to_string(), "fio".to_string()];
        let values = vec![vec![1000.0, 50.0], vec![2000.0, 0.0]];
        let doc = document(&[Chart {
            title: "IOPS",
            unit: "",
            groups: &groups,
            series: &series,
            values: &values,
        }]);
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<title>").count(), 3, "zero means no bar");
        assert!(doc.contains("4k &lt;QD1&gt;"));
    }
}
