#!/usr/bin/env python3
"""Throughput of the peer implementation: sentence-transformers (PyTorch) on the CPU.

Encodes the texts of a JSONL file (field `text`) with all-MiniLM-L6-v2 at several batch
sizes and prints one JSON line per batch size:

    {"batch": 32, "seq_per_s": 231.4, "texts": 1120, "seconds": 4.84, "threads": 2}

Fairness rules, the same as load-tests/src/bin/bench_model.rs applies to candle:
  * torch.set_num_threads(N) with N = --threads (default 2), interop threads 1;
  * max_seq_length = --max-len (default 128);
  * the texts are sorted by token length and cut into consecutive batches (so padding
    is small); the order is computed once, outside the timer;
  * each timed call is `model.encode(batch_texts, batch_size=B, normalize_embeddings=True)`,
    which includes tokenization, the forward pass, mean pooling and L2 normalisation;
  * a warm-up pass (a few batches) runs before each timed pass; the timed pass covers
    every text `--repeat` times (default 1) and the best pass is reported.

Setup (once):
    python3 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install -r load-tests/peer/requirements.txt

    /tmp/peer-venv/bin/python load-tests/peer/bench_peer.py \
        --data services/aifab/data/sms_spam/test.jsonl --threads 2 --batches 1,8,32,64

`--serve` makes it read batch sizes one per line on stdin and answer each with the JSON
line (so bench-model can interleave the peer and candle without reloading the model).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

MODEL_NAME = "all-minilm-l6-v2"


def default_model_dir() -> Path:
    if os.environ.get("AIFAB_MODEL_DIR"):
        return Path(os.environ["AIFAB_MODEL_DIR"])
    cache = os.environ.get("AIFAB_MODEL_CACHE") or os.path.expanduser("~/.cache/aifab/models")
    return Path(cache) / MODEL_NAME


def load_texts(path: Path, limit: int) -> list:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                texts.append(json.loads(line)["text"])
    if limit > 0:
        texts = texts[:limit]
    if not texts:
        raise SystemExit(f"no texts in {path}")
    return texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="JSONL file with a `text` field")
    ap.add_argument("--model-dir", default=None, help="model directory (default: fetch-model's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per batch size (best kept)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up batches before each pass")
    ap.add_argument("--serve", action="store_true",
                    help="read batch sizes from stdin, one per line, answer each")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from sentence_transformers import SentenceTransformer

    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    if not (model_dir / "model.safetensors").is_file():
        print(f"no model in {model_dir}: run scripts/fetch-model first", file=sys.stderr)
        return 1
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = args.max_len
    model.eval()

    texts = load_texts(Path(args.data), args.limit)
    tok = model.tokenizer
    lens = [len(ids) for ids in
            tok(texts, truncation=True, max_length=args.max_len)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lens[i])
    sorted_texts = [texts[i] for i in order]

    def run_pass(batch: int, n_batches=None) -> float:
        chunks = [sorted_texts[i:i + batch] for i in range(0, len(sorted_texts), batch)]
        if n_batches is not None:
            # Warm-up: a spread of lengths, not just the shortest.
            step = max(1, len(chunks) // max(1, n_batches))
            chunks = chunks[::step][:n_batches]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for c in chunks:
                model.encode(c, batch_size=batch, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
        return time.perf_counter() - t0

    def measure(batch: int) -> dict:
        run_pass(batch, n_batches=args.warmup)
        best = min(run_pass(batch) for _ in range(max(1, args.repeat)))
        return {"batch": batch, "seq_per_s": round(len(texts) / best, 2), "texts": len(texts),
                "seconds": round(best, 4), "threads": args.threads,
                "tokens": sum(lens), "impl": "sentence-transformers",
                "torch": torch.__version__}

    if args.serve:
        print(json.dumps({"ready": True, "texts": len(texts), "tokens": sum(lens)}), flush=True)
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line == "quit":
                break
            print(json.dumps(measure(int(line))), flush=True)
        return 0

    for b in [int(x) for x in args.batches.split(",") if x.strip()]:
        print(json.dumps(measure(b)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
