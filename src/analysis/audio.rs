//! Audio metrics between a reference waveform A and a candidate B (docs/audio-metrics.md):
//! sample max |Δ|, SNR and SI-SDR (dB), log-mel spectral distance, multi-resolution STFT
//! distance, and the first departure mapped to a codec frame. With a cross-decode (B's tokens
//! decoded by A's codec, `audio_cross.npy` in B) the difference is split into the part that
//! comes from the tokens (A vs cross) and the part that comes from the codec (cross vs B).
//!
//! Every number is finite or an explicit ±∞ ([`Db`]); NaN/Inf samples are an error naming the
//! file, never a metric.
use crate::capture::audio::{Audio, CodecInfo};
use crate::capture::Run;
use anyhow::{bail, Context, Result};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Serialize, Serializer};
use std::path::PathBuf;
use std::sync::Arc;

/// Codec frames per second (Mimi: 12.5, i.e. 1920 samples at 24 kHz).
pub const FRAME_RATE: f64 = 12.5;

/// Log-mel settings (docs/audio-metrics.md).
pub const MEL_FFT: usize = 1024;
pub const MEL_HOP: usize = 256;
pub const MEL_BANDS: usize = 80;
/// Upper edge of the mel bank, Hz (capped at the Nyquist frequency).
pub const MEL_FMAX: f64 = 12_000.0;
/// Floor of the mel power before log10.
pub const MEL_FLOOR: f32 = 1e-5;
/// Multi-resolution STFT: FFT sizes (hop = size / 4).
pub const MR_STFT_SIZES: [usize; 3] = [512, 1024, 2048];
/// Floor of the STFT power before the square root (magnitude ≥ √1e-7).
pub const STFT_POWER_FLOOR: f32 = 1e-7;

/// Settings of the audio comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AudioOptions {
    /// The audio departs at the first sample where |a − b| > departure_rtol · peak|A|
    /// (peak over the compared prefix; `departure_rtol` itself when A is silent). This is also
    /// the codec tolerance of the stage rule.
    pub departure_rtol: f64,
}

impl Default for AudioOptions {
    fn default() -> Self {
        AudioOptions {
            departure_rtol: 1e-4,
        }
    }
}

/// A level in dB that may be infinite: +∞ when the error energy is exactly zero (identical),
/// −∞ when the signal energy is zero and the error is not. Serialized as a number, `"inf"` or
/// `"-inf"`; never NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Db {
    Finite(f64),
    Inf,
    NegInf,
}

impl Db {
    /// 10·log10(signal / noise) with the ±∞ cases explicit (energies ≥ 0).
    pub fn ratio(signal: f64, noise: f64) -> Db {
        if noise == 0.0 {
            // Identical (also when both are zero: B reproduces A exactly).
            Db::Inf
        } else if signal == 0.0 {
            Db::NegInf
        } else {
            Db::Finite(10.0 * (signal / noise).log10())
        }
    }

    /// The value as f64 (±∞ included).
    pub fn value(self) -> f64 {
        match self {
            Db::Finite(x) => x,
            Db::Inf => f64::INFINITY,
            Db::NegInf => f64::NEG_INFINITY,
        }
    }

    pub fn is_inf(self) -> bool {
        self == Db::Inf
    }
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Finite(x) => write!(f, "{x:.2} dB"),
            Db::Inf => write!(f, "+inf dB (identical)"),
            Db::NegInf => write!(f, "-inf dB"),
        }
    }
}

impl Serialize for Db {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Db::Finite(x) => s.serialize_f64(*x),
            Db::Inf => s.serialize_str("inf"),
            Db::NegInf => s.serialize_str("-inf"),
        }
    }
}

/// Where the audio first departs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Departure {
    pub sample: usize,
    pub time_s: f64,
    /// Codec frame holding the sample: ⌊time · 12.5⌋ (1920 samples per frame at 24 kHz).
    pub frame: usize,
    /// |a − b| at that sample.
    pub abs_diff: f64,
}

/// One STFT resolution of the multi-resolution distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StftResolution {
    pub fft_size: usize,
    pub hop: usize,
    pub spectral_convergence: f64,
    pub log_magnitude: f64,
}

/// Multi-resolution STFT distance: the means over [`MR_STFT_SIZES`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MrStft {
    pub spectral_convergence: f64,
    pub log_magnitude: f64,
    /// spectral_convergence + log_magnitude.
    pub total: f64,
    pub resolutions: Vec<StftResolution>,
}

/// Metrics of one pair of waveforms over their common prefix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairMetrics {
    pub samples_compared: usize,
    /// B equals A sample for sample over the compared prefix.
    pub identical: bool,
    pub max_abs_diff: f64,
    pub max_abs_diff_sample: usize,
    pub max_abs_diff_time_s: f64,
    /// Peak |A| over the compared prefix.
    pub peak_reference: f64,
    pub snr_db: Db,
    pub si_sdr_db: Db,
    /// Mean |Δ| of log10 mel power (80 Slaney bands, FFT 1024, hop 256).
    pub log_mel_distance: f64,
    pub mr_stft: MrStft,
    /// Absolute departure tolerance: departure_rtol · peak|A| (departure_rtol when A is silent).
    pub tolerance: f64,
    pub first_departure: Option<Departure>,
}

impl PairMetrics {
    /// No sample departs beyond the tolerance.
    pub fn within_tolerance(&self) -> bool {
        self.first_departure.is_none()
    }
}

/// The cross-decode split: A vs cross (tokens) and cross vs B (codec).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossSplit {
    pub file: String,
    pub samples: usize,
    /// A vs B's tokens decoded with A's codec: the difference the tokens make.
    pub from_tokens: PairMetrics,
    /// B's tokens decoded with A's codec vs B: the difference the codec makes.
    pub from_codec: PairMetrics,
    /// Σ(x−b)² / (Σ(a−x)² + Σ(x−b)²) over the common prefix of all three (x = cross);
    /// None when both energies are zero.
    pub codec_share: Option<f64>,
}

/// The stage the audio holds responsible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AudioStage {
    /// Tokens identical, audio beyond the codec tolerance: the codecs differ.
    Codec,
}

impl AudioStage {
    pub fn name(self) -> &'static str {
        match self {
            AudioStage::Codec => "codec",
        }
    }
}

/// The stage rule: identical (post-processed) tokens with audio beyond the codec tolerance
/// (a sample departs, or the lengths differ) → stage `codec`; anything else → None (the token
/// comparison's own stage stands).
pub fn stage_rule(post_tokens_identical: bool, audio_within_tolerance: bool) -> Option<AudioStage> {
    (post_tokens_identical && !audio_within_tolerance).then_some(AudioStage::Codec)
}

/// Samples and log-mel spectrograms kept for the report's plots (not serialized).
#[derive(Debug, Clone)]
pub struct AudioData {
    pub sample_rate: u32,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub wav_a: PathBuf,
    pub wav_b: PathBuf,
    /// log10 mel power `[frames, MEL_BANDS]` of the whole of A and of B.
    pub mel_a: Vec<f32>,
    pub mel_b: Vec<f32>,
    pub cross: Option<Vec<f32>>,
}

impl AudioData {
    pub fn mel_frames_a(&self) -> usize {
        self.mel_a.len() / MEL_BANDS
    }
    pub fn mel_frames_b(&self) -> usize {
        self.mel_b.len() / MEL_BANDS
    }
}

/// The audio section of `diff`.
#[derive(Debug, Clone, Serialize)]
pub struct AudioComparison {
    pub sample_rate: u32,
    pub samples_a: usize,
    pub samples_b: usize,
    pub seconds_a: f64,
    pub seconds_b: f64,
    /// The metrics use the common prefix when the lengths differ.
    pub lengths_differ: bool,
    pub file_a: String,
    pub file_b: String,
    pub codec_a: Option<CodecInfo>,
    pub codec_b: Option<CodecInfo>,
    pub undecodable_tokens_a: usize,
    pub undecodable_tokens_b: usize,
    pub options: AudioOptions,
    /// A vs B.
    pub metrics: PairMetrics,
    /// Equal lengths and no sample departs beyond the tolerance.
    pub within_tolerance: bool,
    /// The runs' post-processed tokens are identical (same frame count, every token equal).
    pub post_tokens_identical: bool,
    pub cross: Option<CrossSplit>,
    /// [`stage_rule`] applied to this comparison.
    pub stage: Option<AudioStage>,
    /// One sentence saying where the audio difference comes from.
    pub explanation: String,
    #[serde(skip)]
    pub data: Option<Arc<AudioData>>,
}

/// First sample index of `x` that is not finite.
fn first_non_finite(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}

fn check_finite(x: &[f32], what: &str) -> Result<()> {
    if let Some(i) = first_non_finite(x) {
        bail!(
            "{what}: sample {i} is {} (audio metrics need finite samples)",
            x[i]
        );
    }
    Ok(())
}

/// Codec frame of a sample index: ⌊i · 12.5 / rate⌋.
pub fn frame_of_sample(i: usize, sample_rate: u32) -> usize {
    // i * 25 / (2 * rate), in integers.
    ((i as u128 * 25) / (2 * sample_rate as u128)) as usize
}

/// Number of STFT frames for `len` samples: the signal is zero-padded at the end to a whole
/// number of hops; at least one frame.
pub fn stft_frames(len: usize, n_fft: usize, hop: usize) -> usize {
    if len <= n_fft {
        1
    } else {
        1 + (len - n_fft).div_ceil(hop)
    }
}

/// Periodic Hann window of length n: w[i] = 0.5 − 0.5·cos(2πi/n).
pub fn hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
        .collect()
}

/// Slaney mel scale (librosa's default, `htk=False`): linear below 1 kHz, logarithmic above.
pub fn hz_to_mel(f: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= MIN_LOG_HZ {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / logstep
    } else {
        f / F_SP
    }
}

pub fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep * (m - MIN_LOG_MEL)).exp()
    } else {
        F_SP * m
    }
}

/// A triangular mel filter: weights for FFT bins `start..start + weights.len()`.
#[derive(Debug, Clone)]
pub struct MelFilter {
    pub start: usize,
    pub weights: Vec<f32>,
}

/// The mel bank: `bands` triangles with peak 1 (no area normalization), edges equally spaced
/// on the Slaney mel scale from 0 Hz to min(fmax, rate/2), over the `n_fft/2 + 1` bins of a
/// real FFT at `sample_rate`.
pub fn mel_bank(sample_rate: u32, n_fft: usize, bands: usize, fmax: f64) -> Vec<MelFilter> {
    let fmax = fmax.min(sample_rate as f64 / 2.0);
    let (m_lo, m_hi) = (hz_to_mel(0.0), hz_to_mel(fmax));
    let edges: Vec<f64> = (0..bands + 2)
        .map(|i| mel_to_hz(m_lo + (m_hi - m_lo) * i as f64 / (bands + 1) as f64))
        .collect();
    let bins = n_fft / 2 + 1;
    let bin_hz = sample_rate as f64 / n_fft as f64;
    (0..bands)
        .map(|m| {
            let (lo, c, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let w: Vec<f32> = (0..bins)
                .map(|k| {
                    let f = k as f64 * bin_hz;
                    let up = (f - lo) / (c - lo);
                    let down = (hi - f) / (hi - c);
                    up.min(down).max(0.0) as f32
                })
                .collect();
            let start = w.iter().position(|&x| x > 0.0).unwrap_or(0);
            let end = w.iter().rposition(|&x| x > 0.0).map_or(start, |e| e + 1);
            MelFilter {
                start,
                weights: w[start..end].to_vec(),
            }
        })
        .collect()
}

/// Windowed power spectra of a signal, one frame at a time, with buffers reused across frames.
struct PowerStft {
    n_fft: usize,
    hop: usize,
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl PowerStft {
    fn new(planner: &mut RealFftPlanner<f32>, n_fft: usize, hop: usize) -> PowerStft {
        let fft = planner.plan_fft_forward(n_fft);
        PowerStft {
            n_fft,
            hop,
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            window: hann(n_fft),
            fft,
        }
    }

    fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Power |X_k|² of frame `t` of `x` into `out` (len n_fft/2 + 1).
    fn frame(&mut self, x: &[f32], t: usize, out: &mut [f32]) {
        let start = t * self.hop;
        let end = (start + self.n_fft).min(x.len());
        let n = end.saturating_sub(start);
        for i in 0..n {
            self.input[i] = x[start + i] * self.window[i];
        }
        self.input[n..].fill(0.0);
        self.fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .expect("FFT buffer sizes are fixed at construction");
        for (o, c) in out.iter_mut().zip(&self.spectrum) {
            *o = c.norm_sqr();
        }
    }
}

/// Log10 mel spectrograms at a sample rate, with the FFT plan and filters built once.
pub struct LogMel {
    stft: PowerStft,
    filters: Vec<MelFilter>,
    power: Vec<f32>,
}

impl LogMel {
    pub fn new(sample_rate: u32) -> LogMel {
        let mut planner = RealFftPlanner::new();
        LogMel {
            stft: PowerStft::new(&mut planner, MEL_FFT, MEL_HOP),
            filters: mel_bank(sample_rate, MEL_FFT, MEL_BANDS, MEL_FMAX),
            power: vec![0.0; MEL_FFT / 2 + 1],
        }
    }

    /// log10(max(mel power, 1e-5)), `[frames, MEL_BANDS]` row-major.
    pub fn compute(&mut self, x: &[f32]) -> Vec<f32> {
        let frames = stft_frames(x.len(), MEL_FFT, MEL_HOP);
        let mut out = vec![0f32; frames * MEL_BANDS];
        for t in 0..frames {
            self.stft.frame(x, t, &mut self.power);
            let row = &mut out[t * MEL_BANDS..(t + 1) * MEL_BANDS];
            for (o, f) in row.iter_mut().zip(&self.filters) {
                let p = &self.power[f.start..f.start + f.weights.len()];
                let s: f32 = p.iter().zip(&f.weights).map(|(a, b)| a * b).sum();
                *o = s.max(MEL_FLOOR).log10();
            }
        }
        out
    }
}

/// Mean |Δ| of two log-mel spectrograms over their common frames.
fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / n as f64
}

/// Multi-resolution STFT distance of equal-length `a` and `b` (docs/audio-metrics.md).
pub fn mr_stft(a: &[f32], b: &[f32]) -> MrStft {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut planner = RealFftPlanner::new();
    let mut resolutions = Vec::with_capacity(MR_STFT_SIZES.len());
    for &size in &MR_STFT_SIZES {
        let hop = size / 4;
        let mut st = PowerStft::new(&mut planner, size, hop);
        let bins = st.bins();
        let (mut pa, mut pb) = (vec![0f32; bins], vec![0f32; bins]);
        let frames = stft_frames(n, size, hop);
        let (mut diff2, mut ref2, mut logsum) = (0f64, 0f64, 0f64);
        for t in 0..frames {
            st.frame(a, t, &mut pa);
            st.frame(b, t, &mut pb);
            for (&x, &y) in pa.iter().zip(&pb) {
                let (pa, pb) = (
                    x.max(STFT_POWER_FLOOR) as f64,
                    y.max(STFT_POWER_FLOOR) as f64,
                );
                let (ma, mb) = (pa.sqrt(), pb.sqrt());
                diff2 += (ma - mb) * (ma - mb);
                ref2 += pa;
                // |ln M_A − ln M_B| = |ln(P_A / P_B)| / 2: one logarithm per bin.
                logsum += 0.5 * (pa / pb).ln().abs();
            }
        }
        resolutions.push(StftResolution {
            fft_size: size,
            hop,
            // ref2 > 0: every magnitude is at least √floor.
            spectral_convergence: diff2.sqrt() / ref2.sqrt(),
            log_magnitude: logsum / (frames * bins) as f64,
        });
    }
    let k = resolutions.len() as f64;
    let sc = resolutions
        .iter()
        .map(|r| r.spectral_convergence)
        .sum::<f64>()
        / k;
    let lm = resolutions.iter().map(|r| r.log_magnitude).sum::<f64>() / k;
    MrStft {
        spectral_convergence: sc,
        log_magnitude: lm,
        total: sc + lm,
        resolutions,
    }
}

/// Time-domain metrics: (max |Δ|, its index, Σa², Σ(a−b)², ⟨a,b⟩, Σb², peak |a|).
struct TimeSums {
    max_abs: f64,
    max_i: usize,
    aa: f64,
    ee: f64,
    ab: f64,
    bb: f64,
    peak: f64,
}

fn time_sums(a: &[f32], b: &[f32]) -> TimeSums {
    let mut s = TimeSums {
        max_abs: 0.0,
        max_i: 0,
        aa: 0.0,
        ee: 0.0,
        ab: 0.0,
        bb: 0.0,
        peak: 0.0,
    };
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x as f64, y as f64);
        let d = x - y;
        if d.abs() > s.max_abs {
            s.max_abs = d.abs();
            s.max_i = i;
        }
        s.aa += x * x;
        s.ee += d * d;
        s.ab += x * y;
        s.bb += y * y;
        s.peak = s.peak.max(x.abs());
    }
    s
}

/// SI-SDR of `b` against the reference `a`: the target is the projection of b onto a, α·a with
/// α = ⟨a,b⟩/⟨a,a⟩; the noise is b − α·a (computed directly, a second pass).
fn si_sdr(a: &[f32], b: &[f32], s: &TimeSums) -> Db {
    if s.ee == 0.0 {
        return Db::Inf;
    }
    if s.aa == 0.0 {
        // No reference direction and B differs from the silent A: all noise.
        return Db::NegInf;
    }
    let alpha = s.ab / s.aa;
    let noise: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = y as f64 - alpha * x as f64;
            d * d
        })
        .sum();
    Db::ratio(alpha * alpha * s.aa, noise)
}

/// Compares `b` against the reference `a` over their common prefix.
pub fn compare_samples(
    a: &[f32],
    b: &[f32],
    sample_rate: u32,
    opt: &AudioOptions,
) -> Result<PairMetrics> {
    compare_with_mels(a, b, sample_rate, opt).map(|(m, _, _)| m)
}

/// [`compare_samples`] that also returns the log-mel spectrograms of the compared prefixes.
fn compare_with_mels(
    a: &[f32],
    b: &[f32],
    sample_rate: u32,
    opt: &AudioOptions,
) -> Result<(PairMetrics, Vec<f32>, Vec<f32>)> {
    if sample_rate == 0 {
        bail!("audio metrics: sample rate 0");
    }
    if !(opt.departure_rtol.is_finite() && opt.departure_rtol >= 0.0) {
        bail!(
            "audio departure tolerance must be a non-negative number (got {})",
            opt.departure_rtol
        );
    }
    check_finite(a, "audio A")?;
    check_finite(b, "audio B")?;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let s = time_sums(a, b);
    let tolerance = if s.peak > 0.0 {
        opt.departure_rtol * s.peak
    } else {
        opt.departure_rtol
    };
    let first_departure = a
        .iter()
        .zip(b)
        .position(|(&x, &y)| (x as f64 - y as f64).abs() > tolerance)
        .map(|i| Departure {
            sample: i,
            time_s: i as f64 / sample_rate as f64,
            frame: frame_of_sample(i, sample_rate),
            abs_diff: (a[i] as f64 - b[i] as f64).abs(),
        });
    let mut mel = LogMel::new(sample_rate);
    let (ma, mb) = (mel.compute(a), mel.compute(b));
    let m = PairMetrics {
        samples_compared: n,
        identical: s.ee == 0.0,
        max_abs_diff: s.max_abs,
        max_abs_diff_sample: s.max_i,
        max_abs_diff_time_s: s.max_i as f64 / sample_rate as f64,
        peak_reference: s.peak,
        snr_db: Db::ratio(s.aa, s.ee),
        si_sdr_db: si_sdr(a, b, &s),
        log_mel_distance: mean_abs_diff(&ma, &mb),
        mr_stft: mr_stft(a, b),
        tolerance,
        first_departure,
    };
    Ok((m, ma, mb))
}

fn energy_of_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

/// Compares the audio of two waveforms (A the reference). `cross` is B's tokens decoded with
/// A's codec, when available.
pub fn compare_audio(
    a: &Audio,
    b: &Audio,
    cross: Option<&Audio>,
    opt: &AudioOptions,
) -> Result<(PairMetrics, Option<CrossSplit>)> {
    compare_audio_mels(a, b, cross, opt).map(|(m, x, _)| (m, x))
}

/// Log-mel spectrograms of the compared prefixes of A and B.
type Mels = (Vec<f32>, Vec<f32>);

fn compare_audio_mels(
    a: &Audio,
    b: &Audio,
    cross: Option<&Audio>,
    opt: &AudioOptions,
) -> Result<(PairMetrics, Option<CrossSplit>, Mels)> {
    if a.sample_rate != b.sample_rate {
        bail!(
            "cannot compare audio: {} is at {} Hz, {} at {} Hz",
            a.path.display(),
            a.sample_rate,
            b.path.display(),
            b.sample_rate
        );
    }
    check_finite(&a.samples, &a.path.display().to_string())?;
    check_finite(&b.samples, &b.path.display().to_string())?;
    let (metrics, mel_a, mel_b) = compare_with_mels(&a.samples, &b.samples, a.sample_rate, opt)?;
    let cross = match cross {
        None => None,
        Some(x) => {
            if x.sample_rate != a.sample_rate {
                bail!(
                    "{}: cross-decoded audio at {} Hz, expected {} Hz",
                    x.path.display(),
                    x.sample_rate,
                    a.sample_rate
                );
            }
            check_finite(&x.samples, &x.path.display().to_string())?;
            let from_tokens = compare_samples(&a.samples, &x.samples, a.sample_rate, opt)?;
            let from_codec = compare_samples(&x.samples, &b.samples, a.sample_rate, opt)?;
            let n = a.samples.len().min(b.samples.len()).min(x.samples.len());
            let et = energy_of_diff(&a.samples[..n], &x.samples[..n]);
            let ec = energy_of_diff(&x.samples[..n], &b.samples[..n]);
            Some(CrossSplit {
                file: x.path.display().to_string(),
                samples: x.samples.len(),
                from_tokens,
                from_codec,
                codec_share: (et + ec > 0.0).then(|| ec / (et + ec)),
            })
        }
    };
    Ok((metrics, cross, (mel_a, mel_b)))
}

fn explain(c: &AudioComparison) -> String {
    let m = &c.metrics;
    let diff_text = if m.identical && !c.lengths_differ {
        "the audio is identical sample for sample".to_string()
    } else if c.within_tolerance {
        format!(
            "the audio agrees within the codec tolerance (max |Δ| {:.3e} ≤ {:.3e})",
            m.max_abs_diff, m.tolerance
        )
    } else if let Some(d) = m.first_departure {
        format!(
            "the audio departs at {:.4} s (frame {}, sample {})",
            d.time_s, d.frame, d.sample
        )
    } else {
        format!(
            "the audio lengths differ ({} vs {} samples)",
            c.samples_a, c.samples_b
        )
    };
    let cause = match (&c.stage, &c.cross, c.post_tokens_identical) {
        (Some(AudioStage::Codec), _, _) => {
            "; the tokens are identical, so the codec is responsible (stage codec)".to_string()
        }
        (None, _, _) if c.within_tolerance => String::new(),
        (None, Some(x), false) => format!(
            "; the tokens differ; cross-decode: {} of the difference comes from the codec (tokens {}, codec {})",
            x.codec_share
                .map(|s| format!("{:.1}%", s * 100.0))
                .unwrap_or_else(|| "none".into()),
            if x.from_tokens.within_tolerance() { "within tolerance" } else { "beyond tolerance" },
            if x.from_codec.within_tolerance() { "within tolerance" } else { "beyond tolerance" }
        ),
        (None, None, false) => {
            "; the tokens differ (no cross-decode to separate tokens from codec)".to_string()
        }
        (None, _, true) => String::new(),
    };
    format!("{diff_text}{cause}")
}

/// Compares the audio of run `b` (candidate) against run `a` (reference). `Ok(None)` when either
/// run has no audio; an error when the audio is invalid (naming the file).
pub fn compare(a: &Run, b: &Run, opt: &AudioOptions) -> Result<Option<AudioComparison>> {
    let (Some(aa), Some(ab)) = (
        a.audio()
            .with_context(|| format!("run A ({})", a.dir().display()))?,
        b.audio()
            .with_context(|| format!("run B ({})", b.dir().display()))?,
    ) else {
        return Ok(None);
    };
    let cross = b
        .audio_cross()
        .with_context(|| format!("run B ({})", b.dir().display()))?;
    let (metrics, split, (mel_a, mel_b)) = compare_audio_mels(&aa, &ab, cross.as_ref(), opt)?;
    let (ma, mb) = (a.manifest().audio.as_ref(), b.manifest().audio.as_ref());
    let post_tokens_identical = a.frames() == b.frames() && a.post_tokens() == b.post_tokens();
    let lengths_differ = aa.samples.len() != ab.samples.len();
    let within_tolerance = metrics.within_tolerance() && !lengths_differ;
    // The plots show all of A and of B: the prefix spectrograms are reused when the lengths
    // agree (the common prefix is then everything).
    let (mel_a, mel_b) = if lengths_differ {
        let mut mel = LogMel::new(aa.sample_rate);
        (mel.compute(&aa.samples), mel.compute(&ab.samples))
    } else {
        (mel_a, mel_b)
    };
    let data = AudioData {
        sample_rate: aa.sample_rate,
        mel_a,
        mel_b,
        wav_a: a.dir().join(crate::capture::audio::AUDIO_WAV),
        wav_b: b.dir().join(crate::capture::audio::AUDIO_WAV),
        cross: cross.map(|x| x.samples),
        a: aa.samples,
        b: ab.samples,
    };
    let mut c = AudioComparison {
        sample_rate: data.sample_rate,
        samples_a: data.a.len(),
        samples_b: data.b.len(),
        seconds_a: data.a.len() as f64 / data.sample_rate as f64,
        seconds_b: data.b.len() as f64 / data.sample_rate as f64,
        lengths_differ,
        file_a: aa.path.display().to_string(),
        file_b: ab.path.display().to_string(),
        codec_a: ma.map(|m| m.codec.clone()),
        codec_b: mb.map(|m| m.codec.clone()),
        undecodable_tokens_a: ma.map_or(0, |m| m.undecodable_tokens),
        undecodable_tokens_b: mb.map_or(0, |m| m.undecodable_tokens),
        options: *opt,
        metrics,
        within_tolerance,
        post_tokens_identical,
        cross: split,
        stage: stage_rule(post_tokens_identical, within_tolerance),
        explanation: String::new(),
        data: Some(Arc::new(data)),
    };
    c.explanation = explain(&c);
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_is_slaney() {
        for f in [0.0, 200.0, 999.0, 1000.0, 4000.0, 12000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9 * f.max(1.0));
        }
        // Slaney: 1000 Hz is 15 mel, linear below.
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-12);
    }

    #[test]
    fn frames_and_counts() {
        assert_eq!(stft_frames(0, 1024, 256), 1);
        assert_eq!(stft_frames(1024, 1024, 256), 1);
        assert_eq!(stft_frames(1025, 1024, 256), 2);
        assert_eq!(stft_frames(1024 + 512, 1024, 256), 3);
        assert_eq!(frame_of_sample(1919, 24_000), 0);
        assert_eq!(frame_of_sample(1920, 24_000), 1);
        assert_eq!(frame_of_sample(12_000, 24_000), 6);
    }
}
