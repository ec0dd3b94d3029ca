"""Step-pair construction: step splitting, judges (programmatic and LLM), the three-stage builder with a
scripted sampler, the CLI end to end on a tiny model, and the rows tokenized by the core."""
import json

import pytest

from prefkit.eval.math_eval import MathItem
from prefkit.pipelines.sampling import Sampler, SamplingParams
from prefkit.pipelines.step_judges import (ArithmeticStepJudge, JudgeRequest, LLMStepJudge, parse_verdicts,
                                           split_steps, step_contents)
from prefkit.pipelines.step_pairs import STEP_DPO_COLUMNS, StepPairsConfig, build_step_pairs
from prefkit.worlds.arithmetic.problems import Problem

P = Problem(7, (("+", 5), ("*", 3)))
ITEM = MathItem(P.question, str(P.answer), P.to_row(), 0)
PROMPT = "Question: " + P.question + "\nAnswer: "
PRE = "Let's think step by step.\n"
GOOD = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nThe answer is \\boxed{36}"
BAD2 = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 35\nThe answer is \\boxed{35}"
BAD1 = "Step 1: 7 + 5 = 13\nStep 2: 13 * 3 = 39\nThe answer is \\boxed{39}"


class ScriptedSampler(Sampler):
    """Returns scripted completions: script[prompt] = list of texts (cycled to n)."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, params: SamplingParams):
        self.calls.append((list(prompts), params))
        return [[self.script[p][j % len(self.script[p])] for j in range(params.n)] for p in prompts]


def test_split_steps_and_contents():
    text = PRE + BAD2
    spans = split_steps(text)
    assert len(spans) == 2
    assert text[spans[1].marker_start : spans[1].content_start] == "Step 2:"
    assert step_contents(text) == [" 7 + 5 = 12", " 12 * 3 = 35\nThe answer is \\boxed{35}"]
    assert split_steps("no steps") == []
    assert step_contents("Step 1: a\nnot a Step 2: b") == [" a\nnot a Step 2: b"]  # markers only at line starts


def test_parse_verdicts():
    assert parse_verdicts("Step 1: correct\nStep 2: incorrect\nStep 3: correct", 3).first_wrong == 1
    assert parse_verdicts("Step 1: Correct\nStep 2 - **Wrong**", 2).first_wrong == 1
    v = parse_verdicts("Step 1: correct\nStep 2: correct", 2)
    assert v.first_wrong is None and v.verdicts == [True, True]
    assert parse_verdicts("I think it is fine", 2).reason.startswith("the judge's reply has no")
    assert parse_verdicts("Step 9: incorrect", 2).first_wrong is None  # out of range


def test_llm_judge_with_a_scripted_model():
    req = JudgeRequest(P.question, PRE + BAD2, "36", {})
    judge = LLMStepJudge(ScriptedSampler({}))
    prompt = judge.render(req)
    assert "Step 2: 12 * 3 = 35" in prompt and P.question in prompt
    judge.sampler.script[prompt] = ["Step 1: correct\nStep 2: incorrect"]
    assert judge.judge([req])[0].first_wrong == 1
    with pytest.raises(ValueError):
        LLMStepJudge(ScriptedSampler({}), prompt="no placeholders")


def test_arithmetic_judge():
    reqs = [JudgeRequest(P.question, PRE + t, "36", P.to_row()) for t in (GOOD, BAD2, BAD1)]
    assert [v.first_wrong for v in ArithmeticStepJudge().judge(reqs)] == [None, 1, 0]
    with pytest.raises(ValueError, match="start"):
        ArithmeticStepJudge().judge([JudgeRequest("q", PRE + GOOD, "36", {})])


def test_builder_three_stages_with_a_scripted_policy():
    pre1 = PRE + "Step 1:"
    pre2 = PRE + "Step 1: 7 + 5 = 12\nStep 2:"
    script = {
        PROMPT + PRE: [GOOD, BAD2, BAD2, BAD1, "nonsense"],  # 1 right, wrong x3 (one duplicate) + no answer
        PROMPT + pre2: [" 12 * 3 = 36\nThe answer is \\boxed{36}", " 12 * 3 = 35\nThe answer is \\boxed{35}",
                        " 12 * 3 = 36\nThe answer is \\boxed{36}"],
        PROMPT + pre1: [" 7 + 5 = 12\nStep 2: 12 * 3 = 36\nThe answer is \\boxed{36}",
                        " 7 + 5 = 13\nStep 2: 13 * 3 = 36\nThe answer is \\boxed{36}",  # = rejected step
                        " 7 + 5 = 11\nStep 2: 11 * 3 = 36\nThe answer is \\boxed{36}"],  # lucky: right answer, wrong step
    }
    sampler = ScriptedSampler(script)
    cfg = StepPairsConfig(n_samples=5, n_rectify=3, max_chosen_per_error=0)
    logs = []
    rows, c = build_step_pairs(sampler, [ITEM], ArithmeticStepJudge(), cfg, log=logs.append)
    assert c["samples"] == 5 and c["samples_correct"] == 1 and c["samples_wrong"] == 4
    assert c["wrong_duplicates"] == 1 and c["located_errors"] == 2 and c["not_localised"] == 1
    by_step = {r["step_index"]: r for r in rows if r["chosen"].startswith(" 7 + 5 = 12") or r["step_index"] == 2}
    r2 = by_step[2]
    assert r2["prompt"] == PROMPT and r2["initial_reason_steps"] == pre2
    assert r2["chosen"] == " 12 * 3 = 36\nThe answer is \\boxed{36}"
    assert r2["rejected"] == " 12 * 3 = 35\nThe answer is \\boxed{35}"
    assert r2["full_chosen"] == r2["chosen"] and r2["answer"] == "36"
    step1 = [r for r in rows if r["step_index"] == 1]
    assert {r["chosen"] for r in step1} == {" 7 + 5 = 12", " 7 + 5 = 11"}  # paper: final answer only
    assert all(r["rejected"] == " 7 + 5 = 13" for r in step1)
    assert c["chosen_duplicates"] == 1  # the repeated right continuation of step 2
    assert c["chosen_same_as_rejected"] == 1  # " 7 + 5 = 13" then a right answer
    assert len(rows) == 3 and set(STEP_DPO_COLUMNS) <= set(rows[0])
    assert len(logs) == 4 and "1/3" in logs[0] and "3/3" in logs[2]
    # sampling settings reach the sampler: T=0.8, top-p 0.95 by default
    assert sampler.calls[0][1].temperature == 0.8 and sampler.calls[0][1].top_p == 0.95

    # verify_chosen asks the judge about the chosen step too: the lucky " 7 + 5 = 11" goes
    rows_v, c_v = build_step_pairs(ScriptedSampler(script), [ITEM], ArithmeticStepJudge(),
                                   StepPairsConfig(n_samples=5, n_rectify=3, verify_chosen=True, max_chosen_per_error=0),
                                   log=lambda m: None)
    assert c_v["chosen_rejected_by_judge"] == 1 and len(rows_v) == 2
    assert {r["chosen"] for r in rows_v if r["step_index"] == 1} == {" 7 + 5 = 12"}
    # the default keeps one chosen step per located error
    rows_1, _ = build_step_pairs(ScriptedSampler(script), [ITEM], ArithmeticStepJudge(),
                                 StepPairsConfig(n_samples=5, n_rectify=3), log=lambda m: None)
    assert len(rows_1) == 2


def test_a_continuation_without_an_answer_does_not_borrow_the_prefixs_number():
    """Gold 2 and a prefix ending in "Step 2:": a continuation with no number used to be "correct" (its answer
    was read from prefix + continuation, whose last number is the step marker)."""
    p = Problem(1, (("+", 1), ("*", 1)))  # 1 + 1 = 2, 2 * 1 = 2: the answer equals the next step's number
    item = MathItem(p.question, str(p.answer), p.to_row(), 0)
    prompt = "Question: " + p.question + "\nAnswer: "
    bad = "Step 1: 1 + 1 = 2\nStep 2: 2 * 1 = 3\nThe answer is \\boxed{3}"
    script = {prompt + PRE: [bad], prompt + PRE + "Step 1: 1 + 1 = 2\nStep 2:": [" Let me think about this."]}
    rows, c = build_step_pairs(ScriptedSampler(script), [item], ArithmeticStepJudge(),
                               StepPairsConfig(n_samples=1, n_rectify=1), log=lambda m: None)
    assert rows == [] and c["continuations_wrong"] == 1


@pytest.mark.parametrize("reply", ["I think it's fine.", "Step 1: correct"])
def test_verify_chosen_drops_steps_the_judge_never_reached(reply):
    """An unparseable reply, or one that stops before step k, verifies nothing: the chosen step is dropped and
    counted, not kept as if judged correct."""
    lucky = " 12 * 4 = 36\nThe answer is \\boxed{36}"  # a wrong step 2 that lands on the right answer
    script = {PROMPT + PRE: [BAD2], PROMPT + PRE + "Step 1: 7 + 5 = 12\nStep 2:": [lucky]}
    judge_model = ScriptedSampler({})
    judge = LLMStepJudge(judge_model)
    localise = judge.render(JudgeRequest(P.question, PRE + BAD2, "36", ITEM.row))
    verify = judge.render(JudgeRequest(P.question, PRE + "Step 1: 7 + 5 = 12\nStep 2:" + lucky, "36", ITEM.row))
    judge_model.script = {localise: ["Step 1: correct\nStep 2: incorrect"], verify: [reply]}
    rows, c = build_step_pairs(ScriptedSampler(script), [ITEM], judge,
                               StepPairsConfig(n_samples=1, n_rectify=1, verify_chosen=True), log=lambda m: None)
    assert rows == [] and c["chosen_not_judged"] == 1 and c.get("chosen_rejected_by_judge", 0) == 0


def test_rows_tokenize_as_step_pairs_for_the_core():
    from prefkit.data.loaders import parse_step_pair
    from prefkit.data.tokenize import TokenizeSettings, tokenize_step_pair
    from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    row = {"prompt": PROMPT, "initial_reason_steps": PRE + "Step 1: 7 + 5 = 12\nStep 2:",
           "chosen": " 12 * 3 = 36\nThe answer is \\boxed{36}", "rejected": " 12 * 3 = 35\nThe answer is \\boxed{35}"}
    g = tokenize_step_pair(parse_step_pair(row, "x", 1), tok, TokenizeSettings(max_length=512))
    full = tok(row["prompt"] + row["initial_reason_steps"] + row["chosen"])["input_ids"]
    assert g.prompt_ids + g.completion_ids[0] == full  # context masked, step scored, no EOS
    assert g.completion_ids[0][-1] != tok.eos_token_id


def test_cli_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from prefkit.pipelines.step_pairs import cli_main
    from prefkit.worlds.arithmetic.model import TinyModelConfig, build_tiny_model
    from prefkit.worlds.arithmetic.problems import WorldConfig, make_splits, write_jsonl
    from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                       intermediate_size=64), tok.pad_token_id, tok.eos_token_id)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    probs = make_splits(WorldConfig(max_ops=2), seed=0, n_train=0, n_val=0, n_test=0, n_pref=3).pref
    write_jsonl(probs, tmp_path / "p.jsonl")
    out = tmp_path / "pairs.jsonl"
    rc = cli_main(["--model", str(tmp_path / "m"), "--problems", str(tmp_path / "p.jsonl"), "--out", str(out),
                   "--n-samples", "2", "--n-rectify", "2", "--max-new-tokens", "24"])
    assert rc == 0 and out.exists()
    stats = json.loads((tmp_path / "pairs.jsonl.stats.json").read_text())
    assert stats["judge"] == "arithmetic" and stats["counts"]["samples"] == 6
    text = capsys.readouterr().out
    assert "1/3 error collection" in text and "2/3 step localisation" in text and "3/3 rectification" in text
    # its `prompt` column is already rendered as sampled: training must not wrap it in another template
    from prefkit.methods.lm_recipe import check_built_prompts
    with pytest.raises(ValueError, match="already holds the prompt as sampled, rendered with prompt_template 'Question"):
        check_built_prompts(str(out), "<|user|>{prompt}<|assistant|>")
    check_built_prompts(str(out), "{prompt}")


def test_full_solution_rows_keep_the_response_prefix_in_the_prompt():
    """The DPO baseline scores what the policy writes: the instruction text before "Step 1:" (which SFT and
    evaluation put in the prompt) is not part of the completions; chosen and rejected differ at step k."""
    from prefkit.methods.step_dpo import full_solution_rows

    row = {"prompt": "Question: Start with 2, then * 3, + 1.\nAnswer: ",
           "initial_reason_steps": "Let's think step by step.\nStep 1: 2 * 3 = 6\nStep 2:",
           "chosen": " 6 + 1 = 7", "rejected": " 6 + 1 = 8",
           "full_chosen": " 6 + 1 = 7\nThe answer is \\boxed{7}", "full_rejected": " 6 + 1 = 8\nThe answer is \\boxed{8}",
           "answer": "7", "step_index": 2}
    (out,) = full_solution_rows([row])
    assert out["prompt"] == row["prompt"] + "Let's think step by step.\n"
    assert out["chosen"] == "Step 1: 2 * 3 = 6\nStep 2: 6 + 1 = 7\nThe answer is \\boxed{7}"
    assert out["rejected"] == "Step 1: 2 * 3 = 6\nStep 2: 6 + 1 = 8\nThe answer is \\boxed{8}"
    assert full_solution_rows([dict(row, full_rejected=row["full_chosen"])]) == []  # identical: no pair
