"""Paired comparison (exact McNemar) of the SFT model and the Step-DPO / DPO models of the 2,000-problem runs on the same
500 test problems. Needs the run folders of: experiments/step_dpo.py --tag p3 / p3s2 --runs runs/experiments/step_dpo_big n_pref=2000
Result: experiments/results/step_dpo_2000/paired.md."""
import sys, math, torch
sys.path.insert(0, '.')
from pathlib import Path
from prefkit.eval.math_eval import evaluate_math, load_math_jsonl
from prefkit.pipelines.sampling import HFSampler
torch.set_num_threads(2)
test = Path('runs/experiments/step_dpo_big/p3/problems/test.jsonl')
items, _ = load_math_jsonl(test)
def outcomes(m):
    r = evaluate_math(HFSampler.from_pretrained(str(m), batch_size=128, progress=False), items, max_new_tokens=110)
    return [rec['correct'] for rec in r.records]
def binom_two_sided(b, c):
    n, k = b + c, min(b, c)
    if n == 0: return 1.0
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * p)
sft = outcomes('runs/cache/arithmetic-sft-5278c9828dde-s0')
print(f'SFT {sum(sft)}/{len(sft)}')
runs = {0: 'runs/experiments/step_dpo_big/p3/seed0/self', 1: 'runs/experiments/step_dpo_big/p3/seed1/self', 2: 'runs/experiments/step_dpo_big/p3s2/seed2/self'}
tot = {}
for arm, g in (('step_dpo', 'g1'), ('dpo', 'g0')):
    B = C = 0
    for s, root in runs.items():
        o = outcomes(Path(root) / g / arm / 'model')
        b = sum(1 for x, y in zip(sft, o) if not x and y); c = sum(1 for x, y in zip(sft, o) if x and not y)
        B += b; C += c
        print(f'{arm} seed {s}: {sum(o)}/500; fixed {b}, broke {c}, exact McNemar p = {binom_two_sided(b, c):.3f}', flush=True)
    print(f'{arm} pooled over seeds: fixed {B}, broke {C}')
