//! Model throughput: aifab's encoder (candle and the CPU fast paths) against the peer,
//! sentence-transformers on PyTorch, on the same texts, interleaved in one run.
//!
//! Usually run through `load-tests/bench-model`, which builds this in release mode and
//! sets the thread environment. For each batch size it times this process's encoder,
//! then asks the peer (`load-tests/peer/bench_peer.py --serve`, a child process kept
//! alive between batch sizes so the model loads once) for the same batch size, and so
//! on: candle b1, peer b1, candle b8, peer b8, ...
//!
//! Both sides: the texts sorted by token length (order computed once, outside the
//! timer), cut into consecutive batches of B, the whole path timed per batch —
//! tokenization, forward pass, mean pooling, L2 normalisation — with a few warm-up
//! batches first and the best of `--repeat` passes kept.
//!
//! Prints progress on stderr and, at the end, `key value` lines on stdout:
//! `candle_b1 ... peer_b1 ... candle_vs_peer_b1 ...` (sequences per second).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use aifab_model::{DType, Device, Encoder, EncoderImpl, EncoderOptions, TextTokenizer};
use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Encoder throughput: aifab (candle / CPU fast paths) vs sentence-transformers")]
struct Args {
    /// JSONL file with a `text` field per line.
    #[arg(long, default_value = aifab_tests::SMS_TEST_SPLIT)]
    data: PathBuf,
    /// Threads for both sides (rayon / candle here, torch.set_num_threads there).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Truncation length in tokens (special tokens included), both sides.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Batch sizes, comma separated.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    batches: Vec<usize>,
    /// Encoder implementations to time, comma separated: auto (what `Encoder::load`
    /// picks; its figures are the `candle_bN` keys), candle (plain candle), fast-i16,
    /// fast-f32. Extra ones print `candle_<impl>_bN` keys.
    #[arg(long = "impl", default_value = "auto", value_delimiter = ',')]
    impls: Vec<String>,
    /// Compute dtype for the candle implementation (f32, f16, bf16).
    #[arg(long)]
    dtype: Option<String>,
    /// Shorthand: `--quant i16` times the integer fast path first (as `candle_bN`),
    /// `--quant none` the f32 fast path.
    #[arg(long)]
    quant: Option<String>,
    /// Model directory (default: $AIFAB_MODEL_DIR, else scripts/fetch-model's).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Python with torch + sentence-transformers.
    #[arg(
        long,
        env = "AIFAB_PEER_PYTHON",
        default_value = "/tmp/peer-venv/bin/python"
    )]
    peer_python: PathBuf,
    /// Do not run the peer (candle figures only).
    #[arg(long)]
    no_peer: bool,
    /// Timed passes over all texts per batch size and side; the best is kept.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Warm-up batches before each timed pass.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Use only the first N texts (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// After timing, print the lowest cosine between each implementation's embeddings
    /// and plain f32 candle's over the texts (`<impl>_min_cos_vs_candle`).
    #[arg(long)]
    check_cosine: bool,
}

fn load_texts(path: &Path, limit: usize) -> Result<Vec<String>> {
    let body =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let t = v["text"]
            .as_str()
            .with_context(|| format!("{}:{}: no string field `text`", path.display(), i + 1))?;
        texts.push(t.to_string());
    }
    if limit > 0 {
        texts.truncate(limit);
    }
    if texts.is_empty() {
        bail!("no texts in {}", path.display());
    }
    Ok(texts)
}

/// One implementation under test.
struct Variant {
    /// `candle` for the first (the keys `candle_bN`), else `candle_<name>`.
    key: String,
    name: String,
    encoder: Encoder,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype {other}: expected f32, f16 or bf16"),
    })
}

/// Times the whole path over `sorted` in batches of `batch`; returns seconds.
fn time_pass(
    tok: &TextTokenizer,
    enc: &Encoder,
    sorted: &[&str],
    batch: usize,
    warmup: Option<usize>,
) -> Result<f64> {
    let mut chunks: Vec<&[&str]> = sorted.chunks(batch).collect();
    if let Some(n) = warmup {
        let step = (chunks.len() / n.max(1)).max(1);
        chunks = chunks.into_iter().step_by(step).take(n).collect();
    }
    let t0 = Instant::now();
    for c in chunks {
        let encoded = tok.encode_batch(c)?;
        let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
        let out = enc.embed(&ids)?;
        std::hint::black_box(out);
    }
    Ok(t0.elapsed().as_secs_f64())
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(args: &Args, dir: &Path) -> Result<Self> {
        if !args.peer_python.exists() {
            bail!("peer python {} does not exist", args.peer_python.display());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/bench_peer.py");
        let mut child = Command::new(&args.peer_python)
            .arg(&script)
            .arg("--serve")
            .arg("--data")
            .arg(&args.data)
            .arg("--model-dir")
            .arg(dir)
            .arg("--threads")
            .arg(args.threads.to_string())
            .arg("--max-len")
            .arg(args.max_len.to_string())
            .arg("--repeat")
            .arg(args.repeat.to_string())
            .arg("--warmup")
            .arg(args.warmup.to_string())
            .arg("--limit")
            .arg(args.limit.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", args.peer_python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut peer = Peer {
            child,
            stdin,
            stdout,
        };
        let ready = peer.read_json().context("the peer did not start")?;
        if ready["ready"] != serde_json::Value::Bool(true) {
            bail!("unexpected first line from the peer: {ready}");
        }
        Ok(peer)
    }

    fn read_json(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the peer exited");
            }
            // Libraries may print to stdout; our lines are the JSON objects.
            if line.trim_start().starts_with('{') {
                return Ok(serde_json::from_str(line.trim())?);
            }
        }
    }

    fn measure(&mut self, batch: usize) -> Result<f64> {
        writeln!(self.stdin, "{batch}")?;
        self.stdin.flush()?;
        let v = self.read_json()?;
        v["seq_per_s"]
            .as_f64()
            .with_context(|| format!("peer answer without seq_per_s: {v}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.data = aifab_tests::sms_test_split_or(args.data);
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    // Before anything starts a thread pool: candle and rayon read these.
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, args.threads.to_string());
        }
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global();

    let dir = args
        .model_dir
        .clone()
        .unwrap_or_else(aifab_model::testing::real_model_dir);
    if !dir.join("model.safetensors").is_file() {
        bail!(
            "no model in {}: run scripts/fetch-model first (or pass --model-dir)",
            dir.display()
        );
    }
    let texts = load_texts(&args.data, args.limit)?;
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), args.max_len)?;

    // Implementations: --quant puts its choice first.
    let mut names: Vec<String> = args.impls.iter().map(|s| s.trim().to_string()).collect();
    match args
        .quant
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => {}
        Some("i16") | Some("int16") => names.insert(0, "fast-i16".into()),
        Some("none") | Some("f32") => names.insert(0, "fast-f32".into()),
        Some("int8") | Some("i8") | Some("q8") => bail!(
            "--quant int8: there is no int8 path. Simulated on this model, int8 weights \
             with int8 activations keep only cosine 0.979-0.992 of f32, and on AVX2 without \
             VNNI u8×i8 products are not faster than the i16 path (load-tests/README.md)"
        ),
        Some(other) => bail!("unknown --quant {other}: expected i16 or none"),
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let mut variants = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let implementation: EncoderImpl = name.parse()?;
        let encoder = Encoder::load_with_options(
            &dir,
            &Device::Cpu,
            EncoderOptions {
                implementation,
                dtype,
                ..Default::default()
            },
        )?;
        eprintln!("bench-model: {name} -> {encoder:?}");
        let key = if i == 0 {
            "candle".to_string()
        } else {
            format!("candle_{}", name.replace('-', "_"))
        };
        variants.push(Variant {
            key,
            name: name.clone(),
            encoder,
        });
    }

    // Length order, computed once outside the timer (the peer does the same).
    let lens: Vec<usize> = tok
        .encode_batch(&texts.iter().map(String::as_str).collect::<Vec<_>>())?
        .iter()
        .map(|e| e.len())
        .collect();
    let tokens: usize = lens.iter().sum();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let sorted: Vec<&str> = order.iter().map(|&i| texts[i].as_str()).collect();
    eprintln!(
        "bench-model: {} texts, {} tokens (mean {:.1}), max_len {}, threads {}, batches {:?}",
        texts.len(),
        tokens,
        tokens as f64 / texts.len() as f64,
        args.max_len,
        args.threads,
        args.batches
    );

    let mut peer = None;
    let mut peer_error = None;
    if !args.no_peer {
        match Peer::start(&args, &dir) {
            Ok(p) => peer = Some(p),
            Err(e) => {
                eprintln!("bench-model: peer unavailable: {e:#}");
                peer_error = Some(format!("{e:#}"));
            }
        }
    }

    let mut results: Vec<(String, f64)> = vec![
        ("texts".into(), texts.len() as f64),
        ("tokens".into(), tokens as f64),
        ("threads".into(), args.threads as f64),
        ("max_len".into(), args.max_len as f64),
    ];
    let mut ratios = Vec::new();
    for &b in &args.batches {
        if b == 0 {
            bail!("batch sizes must be positive");
        }
        let mut figures = Vec::new();
        for v in &variants {
            time_pass(&tok, &v.encoder, &sorted, b, Some(args.warmup))?;
            let mut best = f64::INFINITY;
            for _ in 0..args.repeat.max(1) {
                best = best.min(time_pass(&tok, &v.encoder, &sorted, b, None)?);
            }
            let rate = texts.len() as f64 / best;
            eprintln!("bench-model: {} ({}) b{b}: {rate:.1} seq/s", v.key, v.name);
            if std::env::var_os("AIFAB_ENCODER_PROFILE").is_some() {
                eprintln!("  stages so far: {}", Encoder::cpu_stage_report());
            }
            figures.push((v.key.clone(), rate));
        }
        let peer_rate = match peer.as_mut() {
            Some(p) => match p.measure(b) {
                Ok(r) => {
                    eprintln!("bench-model: peer b{b}: {r:.1} seq/s");
                    Some(r)
                }
                Err(e) => {
                    eprintln!("bench-model: peer failed: {e:#}");
                    peer_error = Some(format!("{e:#}"));
                    peer = None;
                    None
                }
            },
            None => None,
        };
        for (key, rate) in &figures {
            results.push((format!("{key}_b{b}"), *rate));
        }
        if let Some(p) = peer_rate {
            results.push((format!("peer_b{b}"), p));
            for (key, rate) in &figures {
                // `candle_vs_peer_bN` for the default, `candle_<impl>_vs_peer_bN` for the others.
                let rkey = format!("{key}_vs_peer_b{b}");
                ratios.push((rkey, rate / p));
            }
        }
    }
    drop(peer);
    results.extend(ratios);

    if args.check_cosine {
        let plain = Encoder::load_with_options(
            &dir,
            &Device::Cpu,
            EncoderOptions {
                implementation: EncoderImpl::Candle,
                dtype: Some(DType::F32),
                ..Default::default()
            },
        )?;
        let mut want = Vec::new();
        for c in sorted.chunks(32) {
            let enc = tok.encode_batch(c)?;
            let ids: Vec<&[u32]> = enc.iter().map(|e| e.ids.as_slice()).collect();
            want.extend(plain.embed(&ids)?);
        }
        for v in &variants {
            let mut got = Vec::new();
            for c in sorted.chunks(32) {
                let enc = tok.encode_batch(c)?;
                let ids: Vec<&[u32]> = enc.iter().map(|e| e.ids.as_slice()).collect();
                got.extend(v.encoder.embed(&ids)?);
            }
            let (min, sum) = got
                .iter()
                .zip(&want)
                .map(|(a, b)| cosine(a, b))
                .fold((f64::INFINITY, 0.0), |(m, s), c| (m.min(c), s + c));
            let name = v.name.replace('-', "_");
            results.push((format!("{name}_min_cos_vs_candle"), min));
            results.push((format!("{name}_mean_cos_vs_candle"), sum / got.len() as f64));
        }
    }

    let out = std::io::stdout();
    let mut out = out.lock();
    for (k, v) in &results {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            writeln!(out, "{k} {v}")?;
        } else if k.contains("cos") {
            writeln!(out, "{k} {v:.6}")?;
        } else if k.contains("_vs_") {
            writeln!(out, "{k} {v:.3}")?;
        } else {
            writeln!(out, "{k} {v:.1}")?;
        }
    }
    out.flush()?;
    if let Some(e) = peer_error {
        eprintln!(
            "bench-model: the peer (sentence-transformers) did not run: {e}\n\
             Set it up with:\n    python3 -m venv /tmp/peer-venv\n    \
             /tmp/peer-venv/bin/pip install -r load-tests/peer/requirements.txt\n\
             or point AIFAB_PEER_PYTHON at a python that has torch and sentence-transformers."
        );
        std::process::exit(2);
    }
    Ok(())
}
