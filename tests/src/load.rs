//! A closed-loop HTTP/1.1 load generator for the filter benchmark, built to compare listeners on a noisy
//! shared machine.
//!
//! The listeners are loaded one at a time in short slices (a few hundred milliseconds), cycle after cycle,
//! each cycle in the opposite order to the one before. A slowdown of the machine lasts seconds, so it falls
//! on adjacent slices of every variant alike; the ratio of two variants within a cycle is then far steadier
//! than the ratio of two runs of several seconds each. Each connection stays open for the whole run (no
//! connection set-up in a slice); within a slice every connection sends its next request when the previous
//! answer has arrived, until the slice's end, and the slice ends when the last answer is in.
//!
//! Per slice: answers, wall time, and the CPU time the target process used (the sum over its threads of
//! `/proc/PID/task/TID/schedstat`, in nanoseconds). Per request: its latency.
//!
//! Not [`crate::client::Client`]: its pool does not keep a fixed set of connections per listener, and it
//! builds a whole [`crate::client::Response`] per request; here each connection is pinned to its listener
//! and an answer is only framed (status and `content-length`), so the generator stays light beside the
//! backends on its core.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send, to whom, and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// The listeners compared, in the order of the first cycle.
    pub ports: Vec<u16>,
    /// Request line path and `Host` header.
    pub path: String,
    pub host: String,
    /// Connections per listener, each with one request in flight.
    pub connections: usize,
    pub slice: Duration,
    pub cycles: usize,
    /// The process whose CPU time is measured (Envoy).
    pub pid: u32,
}

/// One slice of one variant.
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    pub requests: u64,
    pub secs: f64,
    /// CPU time of the measured process, microseconds.
    pub cpu_us: f64,
    /// Latency percentiles of this slice's requests, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Slice {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    pub fn cpu_us_per_req(&self) -> f64 {
        self.cpu_us / self.requests as f64
    }
}

/// Everything measured for one variant.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Its slices, one per cycle, in cycle order.
    pub slices: Vec<Slice>,
    /// Every request's latency, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Variant {
    pub fn requests(&self) -> u64 {
        self.slices.iter().map(|s| s.requests).sum()
    }
    /// Answers per second over all its slices.
    pub fn rps(&self) -> f64 {
        self.requests() as f64 / self.slices.iter().map(|s| s.secs).sum::<f64>()
    }
    /// CPU time of the measured process per answer, over all its slices.
    pub fn cpu_us_per_req(&self) -> f64 {
        self.slices.iter().map(|s| s.cpu_us).sum::<f64>() / self.requests() as f64
    }
    /// Share of wall time the measured process was on a CPU: near 1 when it is the bottleneck.
    pub fn busy(&self) -> f64 {
        self.slices.iter().map(|s| s.cpu_us).sum::<f64>()
            / 1e6
            / self.slices.iter().map(|s| s.secs).sum::<f64>()
    }
    /// Latency percentile `p` (0..=100) over all its requests.
    pub fn latency_us(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p)
    }
}

/// Percentile `p` of sorted values (nearest rank); NaN for none.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The ratio of `a` to `b` within each cycle (`f` of each slice), and its median with a 95% confidence
/// interval (order statistics: the ranks around the median that bound it 95% of the time).
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub cycles: usize,
}

impl Paired {
    pub fn new(a: &Variant, b: &Variant, f: impl Fn(&Slice) -> f64) -> Paired {
        let mut r: Vec<f64> = a
            .slices
            .iter()
            .zip(&b.slices)
            .map(|(x, y)| f(x) / f(y))
            .filter(|v| v.is_finite())
            .collect();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n == 0 {
            return Paired {
                median: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
                cycles: 0,
            };
        }
        // The median's 95% interval by order statistics: ranks n/2 ± 1.96·√n/2, symmetric.
        let half = 0.98 * (n as f64).sqrt();
        let lo = ((n as f64 / 2.0 - half).floor().max(0.0)) as usize;
        let hi = n - 1 - lo;
        let median = if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        };
        Paired {
            median,
            low: r[lo],
            high: r[hi],
            cycles: n,
        }
    }
}

impl std::fmt::Display for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (95% CI {:.3} to {:.3}, {} cycles)",
            self.median, self.low, self.high, self.cycles
        )
    }
}

/// CPU time of process `pid` (all its threads), nanoseconds.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One keep-alive connection and what it has read past the last answer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The length of the first complete `200` answer in `buf`, if one is there.
fn answer_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_text = &buf[..head];
    anyhow::ensure!(
        crate::client::raw_status(head_text) == Some(200),
        "non-200 answer under load: {}",
        String::from_utf8_lossy(head_text)
    );
    let mut len = None;
    for line in head_text.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(i) = line.iter().position(|&b| b == b':') {
            let name = &line[..i];
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = std::str::from_utf8(&line[i + 1..])?.trim();
                len = Some(v.parse::<usize>()?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                anyhow::bail!("chunked answers are not supported by the load generator");
            }
        }
    }
    let body = len.ok_or_else(|| anyhow::anyhow!("answer without content-length"))?;
    let total = head + 4 + body;
    Ok((buf.len() >= total).then_some(total))
}

impl Conn {
    async fn open(port: u16) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// One request and its answer.
    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(request).await?;
        loop {
            if let Some(n) = answer_len(&self.buf)? {
                self.buf.drain(..n);
                return Ok(());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("connection closed by the server");
            }
        }
    }

    /// Requests until `until`; latencies are pushed to `lat`.
    async fn drive(
        &mut self,
        request: &[u8],
        until: Instant,
        lat: &mut Vec<u32>,
    ) -> anyhow::Result<()> {
        loop {
            let t = Instant::now();
            if t >= until {
                return Ok(());
            }
            self.exchange(request).await?;
            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
}

/// One slice against `conns`.
async fn slice(
    conns: &mut [Conn],
    request: &[u8],
    len: Duration,
    pid: u32,
    all: &mut Vec<u32>,
) -> anyhow::Result<Slice> {
    let mut lats: Vec<Vec<u32>> = conns.iter().map(|_| Vec::with_capacity(1024)).collect();
    let cpu0 = cpu_ns(pid);
    let start = Instant::now();
    let until = start + len;
    let results = futures::future::join_all(
        conns
            .iter_mut()
            .zip(lats.iter_mut())
            .map(|(c, l)| c.drive(request, until, l)),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_ns(pid).saturating_sub(cpu0);
    for r in results {
        r?;
    }
    let mut here: Vec<u32> = lats.into_iter().flatten().collect();
    here.sort_unstable();
    all.extend_from_slice(&here);
    Ok(Slice {
        requests: here.len() as u64,
        secs,
        cpu_us: cpu as f64 / 1000.0,
        p50_us: percentile(&here, 50.0),
        p99_us: percentile(&here, 99.0),
    })
}

impl Load {
    /// Runs the load on the current runtime: a warm-up slice per listener, then the cycles. One
    /// [`Variant`] per port, in `ports` order.
    pub async fn run(&self) -> anyhow::Result<Vec<Variant>> {
        let request =
            format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", self.path, self.host).into_bytes();
        let mut conns = Vec::new();
        for &p in &self.ports {
            let mut c = Vec::new();
            for _ in 0..self.connections {
                c.push(Conn::open(p).await?);
            }
            conns.push(c);
        }
        let mut out: Vec<Variant> = self.ports.iter().map(|_| Variant::default()).collect();
        let mut scratch = Vec::new();
        for c in conns.iter_mut() {
            slice(c, &request, self.slice, self.pid, &mut scratch).await?;
        }
        let n = self.ports.len();
        for cycle in 0..self.cycles {
            for k in 0..n {
                // Forward, then backward: a variant is not always the one that follows another.
                let i = if cycle % 2 == 0 { k } else { n - 1 - k };
                let v = &mut out[i];
                let s = slice(
                    &mut conns[i],
                    &request,
                    self.slice,
                    self.pid,
                    &mut v.latencies_us,
                )
                .await?;
                v.slices.push(s);
            }
        }
        for v in &mut out {
            v.latencies_us.sort_unstable();
        }
        Ok(out)
    }

    /// [`Load::run`] on a single-threaded runtime of its own thread (the load generator then takes one
    /// core's share at most, and never competes with itself).
    pub fn run_on_own_thread(&self) -> anyhow::Result<Vec<Variant>> {
        let me = self.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(me.run())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("load generator thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::{answer_len, percentile, Paired, Slice, Variant};

    #[test]
    fn answers_are_framed_by_content_length() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx: y\r\n\r\nabcHTTP/1.1";
        assert_eq!(answer_len(a).ok().flatten(), Some(a.len() - 8));
        assert_eq!(answer_len(&a[..40]).ok().flatten(), None, "body incomplete");
        assert_eq!(answer_len(b"HTTP/1.1 200 OK\r\n").ok().flatten(), None);
        assert!(answer_len(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
        assert!(answer_len(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(answer_len(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    fn variant(rps: &[f64]) -> Variant {
        Variant {
            slices: rps
                .iter()
                .map(|&r| Slice {
                    requests: r as u64,
                    secs: 1.0,
                    cpu_us: 1e6,
                    p50_us: 1.0,
                    p99_us: 2.0,
                })
                .collect(),
            latencies_us: Vec::new(),
        }
    }

    #[test]
    fn paired_ratios_are_taken_within_each_cycle() {
        // Both slow down together in cycle 2: the ratio within each cycle stays 0.9.
        let native = variant(&[1000.0, 1000.0, 500.0, 1000.0, 1000.0]);
        let ksit = variant(&[900.0, 900.0, 450.0, 900.0, 900.0]);
        let p = Paired::new(&ksit, &native, Slice::rps);
        assert!((p.median - 0.9).abs() < 1e-9, "{p}");
        assert!((p.low - 0.9).abs() < 1e-9 && (p.high - 0.9).abs() < 1e-9);
        assert_eq!(p.cycles, 5);
        // Against the ratio of totals, which the slow cycle does not move either here, but the CPU
        // figure: the same CPU in every slice.
        assert!((ksit.rps() / native.rps() - 0.9).abs() < 1e-9);
        assert!((native.cpu_us_per_req() / ksit.cpu_us_per_req() - 0.9).abs() < 1e-9);
    }

    #[test]
    fn an_even_count_takes_the_middle_pair_and_a_symmetric_interval() {
        let native = variant(&[1000.0; 4]);
        let ksit = variant(&[800.0, 860.0, 900.0, 990.0]);
        let p = Paired::new(&ksit, &native, Slice::rps);
        assert!((p.median - 0.88).abs() < 1e-9, "{p}");
        assert!(
            (p.low - 0.8).abs() < 1e-9 && (p.high - 0.99).abs() < 1e-9,
            "{p}"
        );
    }

    #[test]
    fn the_interval_widens_with_scattered_ratios() {
        let native = variant(&[1000.0; 9]);
        let ksit = variant(&[
            800.0, 850.0, 870.0, 880.0, 890.0, 900.0, 910.0, 950.0, 990.0,
        ]);
        let p = Paired::new(&ksit, &native, Slice::rps);
        assert!((p.median - 0.89).abs() < 1e-9, "{p}");
        assert!(p.low < 0.89 && p.high > 0.89, "{p}");
        assert!(p.low >= 0.8 && p.high <= 0.99, "{p}");
    }
}
