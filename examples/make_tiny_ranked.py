"""Write examples/data/tiny_ranked.jsonl: 48 small ranked lists (prompt, 4 responses, 4 distinct scores).

Each list answers "What is a + b?" four ways: the right sum in a sentence (score 3), the right sum alone (2),
a sum off by one (1) and an unrelated word (0). Used by configs/curry_dpo_tiny.yaml and
configs/ranked_dpo_tiny.yaml. Run: python examples/make_tiny_ranked.py
"""
import json
import random
from pathlib import Path

rng = random.Random(0)
rows = []
for _ in range(48):
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    responses = [f" The sum of {a} and {b} is {a + b}.", f" {a + b}", f" {a + b + rng.choice([-1, 1])}", " banana"]
    scores = [3.0, 2.0, 1.0, 0.0]
    order = list(range(4))
    rng.shuffle(order)  # the best answer is not always first
    rows.append({"prompt": f"What is {a} + {b}?", "responses": [responses[i] for i in order],
                 "scores": [scores[i] for i in order]})
out = Path(__file__).parent / "data" / "tiny_ranked.jsonl"
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} rows to {out}")
