"""Write examples/data/tiny_pairs.jsonl: 64 small arithmetic preference pairs (TRL columns).

The chosen answer is the correct sum in a full sentence, the rejected one a terse answer off by one; used by configs/dpo_tiny.yaml and the
README quick start. Run: python examples/make_tiny_pairs.py
"""
import json
import random
from pathlib import Path

rng = random.Random(0)
rows = []
for _ in range(64):
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    wrong = a + b + rng.choice([-1, 1])
    rows.append({"prompt": f"What is {a} + {b}?", "chosen": f" The sum of {a} and {b} is {a + b}.", "rejected": f" {wrong}?"})
out = Path(__file__).parent / "data" / "tiny_pairs.jsonl"
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} rows to {out}")
