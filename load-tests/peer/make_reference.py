#!/usr/bin/env python3
"""Reference sentence embeddings from sentence-transformers (the peer implementation).

Writes shared/model/testdata/reference_embeddings.json, which
shared/model/tests/reference.rs compares aifab's encoder against (cosine >= 0.999).

    python3 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install torch sentence-transformers
    /tmp/peer-venv/bin/python load-tests/peer/make_reference.py [MODEL_DIR]

MODEL_DIR defaults to $AIFAB_MODEL_DIR, else the directory scripts/fetch-model fills
(${AIFAB_MODEL_CACHE:-~/.cache/aifab/models}/all-minilm-l6-v2). The model is loaded from
that local directory only (no hub access), on the CPU, with max_seq_length 128 and
normalised embeddings, as the Rust side runs it.
"""

import json
import os
import sys
from pathlib import Path

MAX_SEQ_LENGTH = 128
MODEL_NAME = "all-minilm-l6-v2"

SENTENCES = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "I absolutely loved this movie; the acting was superb!",
    "Terrible service. We waited 45 minutes and the food arrived cold.",
    "What time does the next train to Edinburgh leave?",
    "ok",
    "Kafka, NATS and Redis carry the events between the services.",
    "The patient was prescribed 20 mg of atorvastatin once daily.",
    "Don't you think it's a bit too early to call it a success?",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates by half a point.",
    "She sells sea-shells by the sea-shore (or so they say)...",
    "Please reset my password; I can't log in to my account anymore.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "   Leading and trailing spaces, and    irregular   spacing inside.   ",
    "The café's crème brûlée was naïve but delightful — 10/10 would order again!",
    # Longer than 128 word pieces (157), so truncation at 128 is exercised in both
    # implementations.
    " ".join(
        [
            "In the beginning the committee met every Tuesday to review the quarterly reports,",
            "discuss the budget, argue about the colour of the new logo, and plan the annual",
            "retreat, which was always held in a small mountain village with a single hotel,",
            "two restaurants, a bakery that opened at dawn, and a railway station whose clock",
            "had stopped at a quarter past nine many years earlier; nobody could remember who",
            "had first suggested the village, but every year the same arguments were repeated,",
            "the same compromises reached, and the same photographs taken in front of the same",
            "fountain, until at last a new chairwoman arrived, looked at the accumulated minutes",
            "of twenty years, laughed for a long time, and proposed that the committee should",
            "simply stop meeting altogether and let everyone get on with their actual work.",
        ]
    ),
]


def default_model_dir() -> Path:
    if os.environ.get("AIFAB_MODEL_DIR"):
        return Path(os.environ["AIFAB_MODEL_DIR"])
    cache = os.environ.get("AIFAB_MODEL_CACHE") or os.path.expanduser("~/.cache/aifab/models")
    return Path(cache) / MODEL_NAME


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> int:
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_dir()
    if not (model_dir / "model.safetensors").is_file():
        print(f"no model in {model_dir}: run scripts/fetch-model first", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), normalize_embeddings=True,
                       convert_to_numpy=True)

    tok = model.tokenizer
    lengths = [len(tok(s, truncation=False)["input_ids"]) for s in SENTENCES]
    ids = [tok(s, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"] for s in SENTENCES]
    if max(lengths) <= MAX_SEQ_LENGTH:
        print(f"no sentence exceeds {MAX_SEQ_LENGTH} tokens: {lengths}", file=sys.stderr)
        return 1

    out = {
        "model": MODEL_NAME,
        "max_seq_length": MAX_SEQ_LENGTH,
        "normalized": True,
        "pooling": "mean",
        "generator": "load-tests/peer/make_reference.py (sentence-transformers, CPU)",
        "token_counts": lengths,
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": [[sig7(v) for v in row] for row in emb.tolist()],
    }
    root = Path(__file__).resolve().parents[2]
    path = root / "shared" / "model" / "testdata" / "reference_embeddings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(SENTENCES)} sentences, dim {emb.shape[1]}, token counts {lengths})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
