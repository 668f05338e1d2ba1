//! The audio part of the `diff` outputs (docs/audio-metrics.md): one terminal line, an HTML
//! section with a player per run (the WAV files are copied into the report directory), log-mel
//! spectrograms of A and B side by side with their difference on fixed colour scales, and the
//! waveform overlay around the first departure with the codec frame boundaries marked.
use super::html::esc;
use super::num;
use super::plots::{colormap, ensure_font};
use crate::analysis::audio::{
    AudioComparison, AudioData, Db, PairMetrics, FRAME_RATE, MEL_BANDS, MEL_HOP,
};
use crate::analysis::Diff;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

/// Fixed colour scale of the log-mel spectrograms: log10 mel power from the floor (−5) to 5.
pub const MEL_SCALE: (f64, f64) = (-5.0, 5.0);
/// Fixed colour scale of the spectrogram difference B − A, log10 units (clamped).
pub const MEL_DIFF_SCALE: f64 = 2.0;
/// Codec frames shown on each side of the first departure in the waveform overlay.
pub const OVERLAY_FRAMES: usize = 2;
/// Most columns drawn per spectrogram (longer audio is averaged over bins of frames).
const MAX_COLUMNS: usize = 400;
const FONT: &str = "sans-serif";
const COLOR_A: RGBColor = RGBColor(31, 119, 180);
const COLOR_B: RGBColor = RGBColor(214, 39, 40);

/// Files the audio section wrote into the report directory.
#[derive(Debug, Clone, Default)]
pub struct AudioAssets {
    pub wav_a: Option<String>,
    pub wav_b: Option<String>,
    pub wav_cross: Option<String>,
    /// Spectrogram and waveform PNGs (absent without a font).
    pub mel_png: Option<String>,
    pub wave_png: Option<String>,
}

fn db(x: Db) -> String {
    match x {
        Db::Finite(v) => format!("{v:.2} dB"),
        Db::Inf => "+inf dB (identical)".into(),
        Db::NegInf => "-inf dB".into(),
    }
}

fn departure(m: &PairMetrics) -> String {
    match m.first_departure {
        Some(d) => format!("{:.4} s (frame {}, sample {})", d.time_s, d.frame, d.sample),
        None => "none".into(),
    }
}

/// The single terminal line of the audio comparison.
pub fn terminal_line(c: &AudioComparison) -> String {
    let m = &c.metrics;
    let mut s = format!(
        "audio: A {:.3} s B {:.3} s @ {} Hz; max |Δ| {} at {:.4} s; SNR {}; SI-SDR {}; log-mel {}; MR-STFT {}; departs {}",
        c.seconds_a,
        c.seconds_b,
        c.sample_rate,
        num(m.max_abs_diff),
        m.max_abs_diff_time_s,
        db(m.snr_db),
        db(m.si_sdr_db),
        num(m.log_mel_distance),
        num(m.mr_stft.total),
        departure(m),
    );
    if let Some(x) = &c.cross {
        let _ = write!(
            s,
            "; cross-decode: tokens SNR {}, codec SNR {}",
            db(x.from_tokens.snr_db),
            db(x.from_codec.snr_db)
        );
    }
    if let Some(st) = c.stage {
        let _ = write!(s, "; stage {}", st.name());
    } else if c.within_tolerance {
        s.push_str("; within codec tolerance");
    } else if !c.post_tokens_identical {
        s.push_str("; tokens differ");
    }
    if c.undecodable_tokens_a + c.undecodable_tokens_b > 0 {
        let _ = write!(
            s,
            "; undecodable tokens A {} B {}",
            c.undecodable_tokens_a, c.undecodable_tokens_b
        );
    }
    s
}

fn metric_rows(m: &PairMetrics) -> Vec<(String, String)> {
    vec![
        ("samples compared".into(), m.samples_compared.to_string()),
        (
            "max |Δ| (sample)".into(),
            format!(
                "{} at {:.4} s (sample {})",
                num(m.max_abs_diff),
                m.max_abs_diff_time_s,
                m.max_abs_diff_sample
            ),
        ),
        ("SNR".into(), db(m.snr_db)),
        ("SI-SDR".into(), db(m.si_sdr_db)),
        (
            "log-mel distance (mean |Δ log10|)".into(),
            num(m.log_mel_distance),
        ),
        (
            "MR-STFT: spectral convergence / log-magnitude / total".into(),
            format!(
                "{} / {} / {}",
                num(m.mr_stft.spectral_convergence),
                num(m.mr_stft.log_magnitude),
                num(m.mr_stft.total)
            ),
        ),
        (
            "first departure".into(),
            format!("{} (tolerance {})", departure(m), num(m.tolerance)),
        ),
    ]
}

/// Copies the runs' WAV files and renders the audio plots into the report directory `dir`.
/// `Ok(None)` when the diff has no audio.
pub fn write_assets(d: &Diff, dir: &Path) -> Result<Option<AudioAssets>> {
    let Some(c) = &d.audio else {
        return Ok(None);
    };
    let mut assets = AudioAssets::default();
    let Some(data) = c.data.as_deref() else {
        return Ok(Some(assets));
    };
    for (src, name, slot) in [
        (&data.wav_a, "audio_a.wav", &mut assets.wav_a),
        (&data.wav_b, "audio_b.wav", &mut assets.wav_b),
    ] {
        std::fs::copy(src, dir.join(name))
            .with_context(|| format!("{}: cannot copy into the report", src.display()))?;
        *slot = Some(name.to_string());
    }
    if let Some(x) = &data.cross {
        crate::capture::audio::write_wav(&dir.join("audio_cross.wav"), x, data.sample_rate)?;
        assets.wav_cross = Some("audio_cross.wav".into());
    }
    if let Err(e) = ensure_font() {
        eprintln!("warning: {e}; the report has no audio plots");
        return Ok(Some(assets));
    }
    {
        let path = dir.join("audio_mel.png");
        let root = BitMapBackend::new(&path, (1500, 430)).into_drawing_area();
        mel_figure(data, &root)?;
        root.present().map_err(err)?;
        assets.mel_png = Some("audio_mel.png".into());
    }
    {
        let path = dir.join("audio_wave.png");
        let root = BitMapBackend::new(&path, (1400, 560)).into_drawing_area();
        wave_figure(c, data, &root)?;
        root.present().map_err(err)?;
        assets.wave_png = Some("audio_wave.png".into());
    }
    Ok(Some(assets))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("audio plot drawing failed: {e:?}")
}

/// Blue (−1) – white (0) – red (+1).
fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = if t < 0.0 {
        let u = -t;
        (
            255.0 * (1.0 - u) + 33.0 * u,
            255.0 * (1.0 - u) + 102.0 * u,
            255.0 * (1.0 - u) + 172.0 * u,
        )
    } else {
        (
            255.0 * (1.0 - t) + 178.0 * t,
            255.0 * (1.0 - t) + 24.0 * t,
            255.0 * (1.0 - t) + 43.0 * t,
        )
    };
    RGBColor(r.round() as u8, g.round() as u8, b.round() as u8)
}

/// Mean of each mel band over bins of frames: (values `[cols, MEL_BANDS]`, cols, frames per bin).
fn bin_columns(frames: usize, value: impl Fn(usize, usize) -> f64) -> (Vec<f64>, usize, usize) {
    let bin = frames.div_ceil(MAX_COLUMNS).max(1);
    let cols = frames.div_ceil(bin);
    let mut out = vec![0f64; cols * MEL_BANDS];
    for col in 0..cols {
        let (f0, f1) = (col * bin, ((col + 1) * bin).min(frames));
        for m in 0..MEL_BANDS {
            let s: f64 = (f0..f1).map(|f| value(f, m)).sum();
            out[col * MEL_BANDS + m] = s / (f1 - f0) as f64;
        }
    }
    (out, cols, bin)
}

fn mel_figure<DB: DrawingBackend>(data: &AudioData, root: &DrawingArea<DB, Shift>) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    let sec_per_frame = MEL_HOP as f64 / data.sample_rate as f64;
    let (fa, fb) = (data.mel_frames_a(), data.mel_frames_b());
    let fc = fa.min(fb);
    let (lo, hi) = MEL_SCALE;
    let spec =
        |mel: &[f32], frames: usize| bin_columns(frames, |f, m| mel[f * MEL_BANDS + m] as f64);
    let (va, ca, ba) = spec(&data.mel_a, fa);
    let (vb, cb, bb) = spec(&data.mel_b, fb);
    let (vd, cd, bd) = bin_columns(fc, |f, m| {
        (data.mel_b[f * MEL_BANDS + m] - data.mel_a[f * MEL_BANDS + m]) as f64
    });
    let viridis = |v: f64| colormap((v - lo) / (hi - lo));
    let div = |v: f64| diverging(v / MEL_DIFF_SCALE);
    mel_panel(
        &panels[0],
        "A (reference): log10 mel power",
        (&va, ca, ba),
        sec_per_frame,
        (lo, hi),
        &viridis,
    )?;
    mel_panel(
        &panels[1],
        "B (candidate): log10 mel power",
        (&vb, cb, bb),
        sec_per_frame,
        (lo, hi),
        &viridis,
    )?;
    mel_panel(
        &panels[2],
        "B − A (log10 units)",
        (&vd, cd, bd),
        sec_per_frame,
        (-MEL_DIFF_SCALE, MEL_DIFF_SCALE),
        &div,
    )?;
    Ok(())
}

fn mel_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    (vals, cols, bin): (&[f64], usize, usize),
    sec_per_frame: f64,
    (lo, hi): (f64, f64),
    color: &dyn Fn(f64) -> RGBColor,
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let (main, bar) = area.split_horizontally(w as i32 - 85);
    let t_end = (cols * bin) as f64 * sec_per_frame;
    let mut chart = ChartBuilder::on(&main)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(38)
        .y_label_area_size(46)
        .build_cartesian_2d(0f64..t_end.max(1e-9), 0f64..MEL_BANDS as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("time (s)")
        .y_desc("mel band")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let dt = bin as f64 * sec_per_frame;
    chart
        .draw_series((0..cols).flat_map(|col| {
            (0..MEL_BANDS).map(move |m| {
                let x0 = col as f64 * dt;
                Rectangle::new(
                    [(x0, m as f64), (x0 + dt, m as f64 + 1.0)],
                    color(vals[col * MEL_BANDS + m]).filled(),
                )
            })
        }))
        .map_err(err)?;
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(36)
        .margin_bottom(46)
        .margin_right(6)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(err)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_label_formatter(&|v| {
            if (hi - lo) <= 4.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .label_style((FONT, 11))
        .draw()
        .map_err(err)?;
    let n = 100;
    cb.draw_series((0..n).map(|i| {
        let a = lo + (hi - lo) * i as f64 / n as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
        Rectangle::new([(0.0, a), (1.0, b)], color((a + b) / 2.0).filled())
    }))
    .map_err(err)?;
    Ok(())
}

/// The sample window of the overlay: [start, end) around the first departure (or the largest
/// difference), `OVERLAY_FRAMES` codec frames each side, within the common prefix.
pub fn overlay_window(c: &AudioComparison) -> (usize, usize, usize) {
    let m = &c.metrics;
    let n = m.samples_compared;
    let spf = (c.sample_rate as f64 / FRAME_RATE).round() as usize;
    let center = m
        .first_departure
        .map(|d| d.sample)
        .unwrap_or(m.max_abs_diff_sample);
    let start = center.saturating_sub(OVERLAY_FRAMES * spf);
    let end = (center + OVERLAY_FRAMES * spf).min(n);
    (start, end.max(start), center)
}

fn wave_figure<DB: DrawingBackend>(
    c: &AudioComparison,
    data: &AudioData,
    root: &DrawingArea<DB, Shift>,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(340);
    let (start, end, center) = overlay_window(c);
    let rate = data.sample_rate as f64;
    let t = |i: usize| i as f64 / rate;
    let spf = (rate / FRAME_RATE).round() as usize;
    let (a, b) = (&data.a[start..end], &data.b[start..end]);
    let peak = a
        .iter()
        .chain(b)
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-6)
        * 1.1;
    let (t0, t1) = (t(start), t(end.max(start + 1)));
    let title = match c.metrics.first_departure {
        Some(d) => format!(
            "Waveforms around the first departure at {:.4} s (frame {})",
            d.time_s, d.frame
        ),
        None => format!(
            "Waveforms around the largest difference at {:.4} s (no departure)",
            c.metrics.max_abs_diff_time_s
        ),
    };
    let frames_in = |lo: f64, hi: f64| {
        let (f0, f1) = (start.div_ceil(spf), end / spf);
        (f0..=f1)
            .map(move |f| f * spf)
            .filter(move |&s| s >= start && s <= end)
            .map(move |s| (t(s), lo, hi))
    };
    let mut chart = ChartBuilder::on(&top)
        .caption(&title, (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, -peak..peak)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_desc("amplitude")
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let grey = RGBColor(150, 150, 150);
    for (x, lo, hi) in frames_in(-peak, peak) {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                grey.stroke_width(1),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("frame {}", (x * rate).round() as usize / spf),
                (x, peak * 0.97),
                (FONT, 11).into_font().color(&grey),
            )))
            .map_err(err)?;
    }
    // A drawn thicker underneath, so where B lies on top of it both stay visible.
    for (wave, color, width, label) in [
        (a, COLOR_A, 2, "A (reference)"),
        (b, COLOR_B, 1, "B (candidate)"),
    ] {
        chart
            .draw_series(LineSeries::new(
                wave.iter()
                    .enumerate()
                    .map(|(i, &v)| (t(start + i), v as f64)),
                color.stroke_width(width),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if c.metrics.first_departure.is_some() {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(t(center), -peak), (t(center), peak)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?
            .label("first departure")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    // B − A with the tolerance band.
    let dmax = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((y as f64 - x as f64).abs()))
        .max(c.metrics.tolerance)
        .max(1e-12)
        * 1.1;
    let mut dc = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, -dmax..dmax)
        .map_err(err)?;
    dc.configure_mesh()
        .disable_mesh()
        .x_desc("time (s); grey lines: codec frame boundaries")
        .y_desc("B − A")
        .y_label_formatter(&|v| {
            if v.abs() < dmax * 1e-6 {
                "0".into()
            } else {
                format!("{v:.1e}")
            }
        })
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for (x, lo, hi) in frames_in(-dmax, dmax) {
        dc.draw_series(std::iter::once(PathElement::new(
            vec![(x, lo), (x, hi)],
            grey.stroke_width(1),
        )))
        .map_err(err)?;
    }
    let tol = c.metrics.tolerance;
    for y in [tol, -tol] {
        dc.draw_series(std::iter::once(PathElement::new(
            vec![(t0, y), (t1, y)],
            RGBColor(44, 160, 44).stroke_width(1),
        )))
        .map_err(err)?;
    }
    dc.draw_series(LineSeries::new(
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(i, (&x, &y))| (t(start + i), y as f64 - x as f64)),
        BLACK.stroke_width(1),
    ))
    .map_err(err)?;
    Ok(())
}

/// The HTML section (players, metrics table, plots).
pub fn html_section(c: &AudioComparison, assets: &AudioAssets) -> String {
    let mut s = String::new();
    s.push_str("<h2 id=audio>Audio</h2>\n");
    let _ = writeln!(s, "<p><b>{}.</b></p>", esc(&capitalize(&c.explanation)));
    s.push_str("<div style=\"display:flex;gap:2em;flex-wrap:wrap\">\n");
    for (label, file) in [
        ("A (reference)", &assets.wav_a),
        ("B (candidate)", &assets.wav_b),
        ("B's tokens, A's codec (cross-decode)", &assets.wav_cross),
    ] {
        if let Some(f) = file {
            let _ = writeln!(
                s,
                "<figure style=\"margin:.4em 0\"><figcaption>{}</figcaption><audio controls preload=metadata src=\"{}\"></audio><br><a href=\"{}\">{}</a></figure>",
                esc(label),
                esc(f),
                esc(f),
                esc(f)
            );
        }
    }
    s.push_str("</div>\n");
    let mut rows: Vec<(String, String)> = vec![
        (
            "length A / B".into(),
            format!(
                "{} / {} samples ({:.3} s / {:.3} s) at {} Hz{}",
                c.samples_a,
                c.samples_b,
                c.seconds_a,
                c.seconds_b,
                c.sample_rate,
                if c.lengths_differ {
                    "; metrics over the common prefix"
                } else {
                    ""
                }
            ),
        ),
        (
            "post-processed tokens identical".into(),
            if c.post_tokens_identical { "yes" } else { "no" }.into(),
        ),
        (
            "stage".into(),
            c.stage
                .map(|x| x.name().to_string())
                .unwrap_or_else(|| "–".into()),
        ),
    ];
    rows.extend(metric_rows(&c.metrics));
    let codec = |x: &Option<crate::capture::CodecInfo>| match x {
        Some(x) => format!("{} ({}; {})", x.name, x.library, x.path),
        None => "–".into(),
    };
    rows.push(("codec A".into(), codec(&c.codec_a)));
    rows.push(("codec B".into(), codec(&c.codec_b)));
    rows.push((
        "undecodable tokens A / B".into(),
        format!("{} / {}", c.undecodable_tokens_a, c.undecodable_tokens_b),
    ));
    s.push_str("<table><thead><tr><th>A vs B</th><th>value</th></tr></thead><tbody>");
    for (k, v) in &rows {
        let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</tbody></table>\n");
    if let Some(x) = &c.cross {
        s.push_str("<p class=note>Cross-decode: B's post-processed tokens decoded with A's codec separate what the tokens change (A vs cross) from what the codec changes (cross vs B).</p>\n");
        s.push_str("<table><thead><tr><th>metric</th><th>from tokens (A vs cross)</th><th>from codec (cross vs B)</th></tr></thead><tbody>");
        let (t, k) = (metric_rows(&x.from_tokens), metric_rows(&x.from_codec));
        for ((name, a), (_, b)) in t.iter().zip(&k) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(a),
                esc(b)
            );
        }
        let _ = write!(
            s,
            "<tr><td>codec share of the error energy</td><td colspan=2>{}</td></tr>",
            x.codec_share
                .map(|v| format!("{:.1}%", v * 100.0))
                .unwrap_or_else(|| "– (no difference)".into())
        );
        s.push_str("</tbody></table>\n");
    }
    if let Some(p) = &assets.mel_png {
        let _ = writeln!(
            s,
            "<figure id=audio_mel><img src=\"{}\" alt=\"log-mel spectrograms\" style=\"max-width:100%\"><figcaption><b>Log-mel spectrograms.</b> A and B side by side (log10 mel power, fixed scale {} to {}) and B − A (fixed scale ±{} log10 units, clamped); 80 Slaney mel bands 0–12 kHz, FFT 1024, hop 256.</figcaption></figure>",
            esc(p),
            MEL_SCALE.0,
            MEL_SCALE.1,
            MEL_DIFF_SCALE
        );
    }
    if let Some(p) = &assets.wave_png {
        let _ = writeln!(
            s,
            "<figure id=audio_wave><img src=\"{}\" alt=\"waveform overlay\" style=\"max-width:100%\"><figcaption><b>Waveform overlay.</b> A and B over {} codec frames each side of the first departure (or of the largest difference), frame boundaries in grey; below, B − A with the departure tolerance ±{} in green.</figcaption></figure>",
            esc(p),
            OVERLAY_FRAMES,
            num(c.metrics.tolerance)
        );
    }
    if assets.mel_png.is_none() {
        s.push_str(
            "<p class=warn>No audio plots: no TrueType font was found (set CSM_PARITY_FONT).</p>\n",
        );
    }
    s
}

/// The markdown section.
pub fn markdown_section(c: &AudioComparison, assets: &AudioAssets) -> String {
    let mut s = String::from("\n## Audio\n\n");
    let _ = writeln!(s, "{}.\n", capitalize(&c.explanation));
    s.push_str("| A vs B | value |\n|---|---|\n");
    for (k, v) in metric_rows(&c.metrics) {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    if let Some(x) = &c.cross {
        let _ = writeln!(
            s,
            "| from tokens (A vs cross): SNR / log-mel | {} / {} |",
            db(x.from_tokens.snr_db),
            num(x.from_tokens.log_mel_distance)
        );
        let _ = writeln!(
            s,
            "| from codec (cross vs B): SNR / log-mel | {} / {} |",
            db(x.from_codec.snr_db),
            num(x.from_codec.log_mel_distance)
        );
    }
    s.push('\n');
    for f in [&assets.wav_a, &assets.wav_b, &assets.wav_cross]
        .into_iter()
        .flatten()
    {
        let _ = writeln!(s, "- [{f}]({f})");
    }
    for p in [&assets.mel_png, &assets.wave_png].into_iter().flatten() {
        let _ = writeln!(s, "\n![{p}]({p})");
    }
    s
}

/// Inserts the audio section into index.html before the plots (or before `</body>`).
pub fn inject_html(html: String, c: &AudioComparison, assets: &AudioAssets) -> String {
    let section = html_section(c, assets);
    let at = html
        .find("<h2>Plots</h2>")
        .or_else(|| html.rfind("</body>"))
        .unwrap_or(html.len());
    let mut out = String::with_capacity(html.len() + section.len());
    out.push_str(&html[..at]);
    out.push_str(&section);
    out.push_str(&html[at..]);
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
