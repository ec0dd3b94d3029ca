"""The prompt grammar of the shapes world: two groups of coloured shapes in a spatial relation.

    prompt  := group RELATION group
    group   := ("a" COLOUR SHAPE) | ("two" COLOUR SHAPE+"s")
    e.g. "a red square left of two blue circles", "two green triangles above a yellow circle"

The two groups always have different colours (so a colour names a group), 4 colours x 3 shapes x
2 counts x 4 relations: 1,728 prompts. A fixed 20% of them (by a hash of the text) form the "test"
split, never seen in pre-training or preference training.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.15, 0.35, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES = ("square", "circle", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {1: "a", 2: "two"}
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Group:
    colour: str
    shape: str
    count: int

    def text(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class PromptSpec:
    """`first` RELATION `second`: e.g. first is left of second."""

    first: Group
    relation: str
    second: Group

    def text(self) -> str:
        return f"{self.first.text()} {self.relation} {self.second.text()}"

    @property
    def groups(self) -> tuple[Group, Group]:
        return (self.first, self.second)


def all_specs() -> list[PromptSpec]:
    """Every prompt of the grammar, in a fixed order."""
    groups = [Group(c, s, n) for c in COLOURS for s in SHAPES for n in COUNT_WORDS]
    out = []
    for a, b in itertools.product(groups, groups):
        if a.colour == b.colour:
            continue
        for rel in RELATIONS:
            out.append(PromptSpec(a, rel, b))
    return out


def split_of(text: str) -> str:
    """'test' for a fixed TEST_FRACTION of prompts (stable hash of the text), else 'train'."""
    h = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < TEST_FRACTION else "train"


def specs_of_split(split: str) -> list[PromptSpec]:
    if split not in ("train", "test", "all"):
        raise ValueError(f"shapes world: unknown split {split!r}; expected 'train', 'test' or 'all'")
    specs = all_specs()
    return specs if split == "all" else [s for s in specs if split_of(s.text()) == split]


def sample_specs(n: int, seed: int, split: str = "train") -> list[PromptSpec]:
    """n prompt specs of `split`, without replacement while the split lasts (then it reshuffles)."""
    pool = specs_of_split(split)
    rng = random.Random(seed)
    out: list[PromptSpec] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def sample_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    """n prompt strings of `split` ('train', 'test' or 'all'), reproducible from `seed`."""
    return [s.text() for s in sample_specs(n, seed, split)]


def _parse_group(words: list[str], text: str) -> Group:
    if len(words) != 3:
        raise ValueError(f"shapes world: cannot parse group {' '.join(words)!r} in prompt {text!r}")
    count_word, colour, noun = words
    counts = {v: k for k, v in COUNT_WORDS.items()}
    if count_word not in counts or colour not in COLOURS:
        raise ValueError(f"shapes world: cannot parse group {' '.join(words)!r} in prompt {text!r}")
    count = counts[count_word]
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPES or (count > 1) != noun.endswith("s"):
        raise ValueError(f"shapes world: bad noun {noun!r} for count {count_word!r} in prompt {text!r}")
    return Group(colour, shape, count)


def parse_prompt(text: str) -> PromptSpec:
    """Inverse of PromptSpec.text(); raises ValueError naming the prompt if it is not in the grammar."""
    words = text.strip().lower().split()
    for rel in RELATIONS:
        rw = rel.split()
        for i in range(len(words) - len(rw) + 1):
            if words[i : i + len(rw)] == rw and i == 3:
                first = _parse_group(words[:3], text)
                second = _parse_group(words[3 + len(rw) :], text)
                if first.colour == second.colour:
                    raise ValueError(f"shapes world: both groups are {first.colour} in prompt {text!r}")
                return PromptSpec(first, rel, second)
    raise ValueError(f"shapes world: prompt {text!r} is not in the grammar (GROUP RELATION GROUP)")
