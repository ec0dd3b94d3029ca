"""Where a safety run's prompts come from: the embedded world or an Egida JSON file, split by held-out
topics and styles, plus the benign-but-scary prompts for over-refusal. Shared by `build safety-pairs`,
`eval safety`, the recipe and the demo, so all of them see the same split for the same settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from prefkit.data.errors import DataError, LoadReport
from prefkit.data.jsonl import read_jsonl_objects
from prefkit.safety.schema import SafetyExample, load_egida_json
from prefkit.safety.split import SafetySplit, choose_heldout, split_heldout


EMBEDDED_PROMPT_TEMPLATE = "Question: {prompt}\nAnswer: "  # the embedded world's model-facing format


@dataclass
class SafetyDataConfig:
    source: str = "embedded"  # embedded | egida
    egida_file: str = ""  # source=egida: an Egida JSON / JSONL file of attacked questions
    base_key: str | None = None  # egida: the column naming the base question (see load_egida_json)
    topic_columns: list[str] | None = None  # egida: flat topic columns instead of a `topics` map
    skip_invalid: bool = False
    heldout_topics: list[str] | None = None  # None: draw n_heldout_topics at random (seeded)
    heldout_styles: list[str] | None = None  # None: draw n_heldout_styles at random (seeded)
    n_heldout_topics: int = 2
    n_heldout_styles: int = 4
    test_fraction: float = 0.2  # share of seen-topic base questions also kept for test
    seed: int = 0
    overrefusal_file: str = ""  # egida: jsonl of benign-but-scary prompts (column `prompt`); embedded: built in
    max_overrefusal: int | None = None

    def __post_init__(self):
        if self.source not in ("embedded", "egida"):
            raise ValueError(f"data.source: {self.source!r} is not embedded or egida")
        if self.source == "egida" and not self.egida_file:
            raise ValueError("data.egida_file: required when data.source is egida")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction: must be in [0, 1), got {self.test_fraction}")


def load_attacked(cfg: SafetyDataConfig) -> tuple[list[SafetyExample], list[str], LoadReport | None]:
    """(attacked examples, candidate held-out topics, load report). Embedded: the harmful requests under
    every style; only harmful topics can be held out."""
    if cfg.source == "embedded":
        from prefkit.worlds.safety.lexicon import HARMFUL, topics_of_kind
        from prefkit.worlds.safety.world import attacked_requests
        return attacked_requests(kinds=(HARMFUL,), seed=cfg.seed), topics_of_kind(HARMFUL), None
    rows, report = load_egida_json(cfg.egida_file, skip_invalid=cfg.skip_invalid, topic_columns=cfg.topic_columns,
                                   base_key=cfg.base_key)
    if cfg.base_key is None and rows and all(e.base_id == e.uuid and not e.base_question for e in rows):
        raise ValueError(
            f"data.base_key: {cfg.egida_file} names no base question (no base_id / base_question fields), so every "
            "row would be its own base question and the attacked forms of one question could land in both train "
            "and test, which the held-out evaluation must not allow. Set data.base_key to the column that names the "
            "base question, or data.base_key: uuid to accept one row per base question knowingly")
    return rows, sorted({t for e in rows for t in e.active_topics}), report


def make_split(cfg: SafetyDataConfig) -> SafetySplit:
    rows, candidates, _ = load_attacked(cfg)
    topics, styles = cfg.heldout_topics, cfg.heldout_styles
    if topics is None or styles is None:
        t, s = choose_heldout(rows, cfg.n_heldout_topics, cfg.n_heldout_styles, seed=cfg.seed,
                              candidate_topics=candidates)
        topics = t if topics is None else topics
        styles = s if styles is None else styles
    return split_heldout(rows, topics, styles, test_fraction=cfg.test_fraction, seed=cfg.seed)


@dataclass(frozen=True)
class BenignPrompt:
    prompt: str
    kind: str  # "scary" (looks dangerous, is benign) | "benign"
    topic: str
    meta: dict | None = None


def overrefusal_prompts(cfg: SafetyDataConfig) -> list[BenignPrompt]:
    """Benign-but-scary prompts (and, in the embedded world, plainly benign ones) for over-refusal."""
    if cfg.source == "embedded":
        from prefkit.worlds.safety.lexicon import BENIGN, SCARY
        from prefkit.worlds.safety.world import base_questions, topic_of
        out = [BenignPrompt(e.question, e.meta["kind"], topic_of(e), {"uuid": e.uuid})
               for e in base_questions(kinds=(SCARY, BENIGN))]
    elif cfg.overrefusal_file:
        out = load_overrefusal_file(cfg.overrefusal_file, skip_invalid=cfg.skip_invalid)
    else:
        out = []
    return out[: cfg.max_overrefusal] if cfg.max_overrefusal is not None else out


def load_overrefusal_file(path: str, skip_invalid: bool = False) -> list[BenignPrompt]:
    """jsonl rows with `prompt` (required), optional `category` (-> topic) and `kind` (default scary)."""
    def parse(row: dict, i: int) -> BenignPrompt:
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(path, i, "prompt", "missing or not a non-empty string")
        kind = row.get("kind", "scary")
        if kind not in ("scary", "benign"):
            raise DataError(path, i, "kind", f"{kind!r} is not scary or benign")
        return BenignPrompt(row["prompt"], kind, str(row.get("category", "all")))

    return read_jsonl_objects(path, parse, skip_invalid)[0]


def split_summary(split: SafetySplit) -> dict:
    return {"heldout_topics": sorted(split.heldout_topics), "heldout_styles": sorted(split.heldout_styles),
            **split.stats}


def save_split(split: SafetySplit, out_dir: str | Path, cfg: SafetyDataConfig) -> None:
    """split.json (held-out names, sizes, data config) and test.jsonl (the attacked test prompts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps({**split_summary(split), "data": asdict(cfg)}, indent=1))
    with open(out / "test.jsonl", "w", encoding="utf-8") as f:
        for e in split.test:
            f.write(json.dumps(e.to_dict()) + "\n")
