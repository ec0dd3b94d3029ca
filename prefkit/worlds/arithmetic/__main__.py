"""python -m prefkit.worlds.arithmetic --out DIR [--config configs/step_dpo_demo.yaml] [--pretrain]

Writes DIR/{pref,val,test}.jsonl with the demo's world settings; with --pretrain also prints the folder of
the (cached) SFT model, ready for `prefkit build step-pairs --model ... --problems DIR/pref.jsonl`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prefkit.worlds.arithmetic")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="a demo config (default: configs/step_dpo_demo.yaml)")
    ap.add_argument("--pretrain", action="store_true")
    args = ap.parse_args(argv)
    from prefkit.demos.step_dpo import DEFAULT_CONFIG, load_demo_config
    from prefkit.worlds.arithmetic.problems import make_splits, write_jsonl

    cfg = load_demo_config(args.config or DEFAULT_CONFIG, [])
    s = make_splits(cfg.world, seed=cfg.split_seed, n_train=0, n_val=cfg.n_val, n_test=cfg.n_test, n_pref=cfg.n_pref)
    for name in ("pref", "val", "test"):
        print(write_jsonl(getattr(s, name), Path(args.out) / f"{name}.jsonl"))
    if args.pretrain:
        from prefkit.worlds.arithmetic.model import pretrain

        print(pretrain(cfg.world, cfg.model, cfg.sft, cache_root=cfg.cache_root, split_seed=cfg.split_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
