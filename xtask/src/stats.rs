//! Medians and ratio printing for benchmarks.

use std::time::Duration;

pub fn median(mut samples: Vec<Duration>) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints "name: ours X ms, peer Y ms, ratio R (target ≤ T)".
pub fn report(name: &str, ours: Duration, peer_name: &str, peer: Duration, target: Option<f64>) {
    let ratio = ours.as_secs_f64() / peer.as_secs_f64().max(f64::MIN_POSITIVE);
    let verdict = match target {
        Some(t) if ratio <= t => format!("  (target ≤ {t}: met)"),
        Some(t) => format!("  (target ≤ {t}: NOT met)"),
        None => String::new(),
    };
    println!(
        "{name:<40} aurae {:>8.2} ms   {peer_name} {:>8.2} ms   ratio {ratio:.2}{verdict}",
        ms(ours),
        ms(peer)
    );
}
