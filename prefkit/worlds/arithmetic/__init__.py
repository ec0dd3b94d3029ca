"""The embedded arithmetic world: multi-step integer problems, a programmatic step checker, a locally built
tokenizer and a tiny model pre-trained (SFT) on CPU and cached. `python -m prefkit.worlds.arithmetic
--out DIR` writes problem files (pref / val / test jsonl) for `prefkit build step-pairs` and `prefkit eval math`."""
from prefkit.worlds.arithmetic.checker import first_wrong_step, judge_step
from prefkit.worlds.arithmetic.problems import (PROMPT_TEMPLATE, RESPONSE_PREFIX, Problem, WorldConfig, make_splits,
                                                write_jsonl)

__all__ = ["PROMPT_TEMPLATE", "RESPONSE_PREFIX", "Problem", "WorldConfig", "first_wrong_step", "judge_step",
           "make_splits", "write_jsonl"]
