"""Ranked-list loaders: plain jsonl, UltraFeedback rows, the public Curry-DPO pairs; NaN, ties, skip counts."""
import json

import pytest

from prefkit.data.errors import DataError
from prefkit.data.ranked import load_curry_dpo_pairs, load_curry_dpo_ranked, load_ranked, load_ultrafeedback


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_plain_jsonl_variable_k(tmp_path):
    p = _write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "2+2?", "responses": ["4", "5", "22"], "scores": [1.0, 0.2, 0.0]},
        {"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b", "c", "d", "e"],
         "scores": [1, 2, 3, 4, 5]},
    ])
    lists, report = load_ranked(p)
    assert [len(x.responses) for x in lists] == [3, 5]
    assert lists[0].scores == (1.0, 0.2, 0.0) and lists[1].prompt[0]["content"] == "hi"
    assert (report.rows_read, report.rows_kept, report.n_skipped) == (2, 2, 0)
    assert lists[1].meta["_row"] == 2


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1.0, float("nan")]}, "scores[1]", "NaN"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1.0, "x"]}, "scores[1]", "must be a number"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 1.0]}, "scores", "tie: responses 0 and 2"),
    ({"prompt": "q", "responses": ["a", ""], "scores": [1.0, 0.0]}, "responses[1]", "non-empty string"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1.0]}, "scores", "1 scores for 2 responses"),
    ({"prompt": "q", "responses": ["a"], "scores": [1.0]}, "scores", "at least 2"),
    ({"responses": ["a", "b"], "scores": [1.0, 0.0]}, "prompt", "missing"),
])
def test_plain_bad_rows_name_file_row_field(tmp_path, row, field, problem):
    good = {"prompt": "q", "responses": ["a", "b"], "scores": [1.0, 0.0]}
    p = tmp_path / "bad.jsonl"
    # json.dumps writes NaN as the bare token NaN, which json.loads reads back as float('nan')
    _write_jsonl(p, [good, row])
    with pytest.raises(DataError) as e:
        load_ranked(p)
    assert (e.value.source, e.value.row, e.value.field) == (str(p), 2, field)
    assert problem in str(e.value) and str(p) in str(e.value) and "row 2" in str(e.value)
    lists, report = load_ranked(p, skip_invalid=True)
    assert len(lists) == 1 and report.rows_read == 2 and report.rows_kept == 1 and report.n_skipped == 1
    assert "skipped 1" in report.summary()


def test_ties_allowed_on_request_but_not_all_equal(tmp_path):
    p = _write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": "q", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 0.5]},
        {"prompt": "q", "responses": ["a", "b"], "scores": [0.5, 0.5]},
    ])
    lists, report = load_ranked(p, ties="allow", skip_invalid=True)
    assert len(lists) == 1 and lists[0].scores == (1.0, 0.5, 0.5)
    assert report.n_skipped == 1 and "all 2 scores are equal" in report.first_errors[0]
    _, report = load_ranked(p, skip_invalid=True)
    assert report.n_skipped == 2 and sum(v for k, v in report.skipped.items() if "tie" in k) == 2


def test_invalid_json_line_is_a_named_error(tmp_path):
    p = _write_jsonl(tmp_path / "j.jsonl", ['{"prompt": "q", "responses": ["a", "b"], "scores": [1, 0]}', "{oops"])
    with pytest.raises(DataError, match="row 2: malformed JSON"):
        load_ranked(p)
    lists, report = load_ranked(p, skip_invalid=True)
    assert len(lists) == 1 and report.n_skipped == 1


def _uf_row(scores, ratings=None):
    comps = []
    for k, s in enumerate(scores):
        r = "4" if ratings is None else ratings[k]
        comps.append({"model": f"m{k}", "response": f"answer {k}", "overall_score": s, "fine-grained_score": s / 2,
                      "annotations": {"helpfulness": {"Rating": r, "Rationale": "..."}}})
    return {"source": "evol", "instruction": "Explain X.", "models": [c["model"] for c in comps], "completions": comps}


def test_ultrafeedback_rows_and_score_fields(tmp_path):
    rows = [_uf_row([7.0, 8.5, 3.0, 6.0], ratings=["4", "5", "2", "3"])]
    lists, report = load_ultrafeedback(rows)
    assert lists[0].prompt == "Explain X." and lists[0].scores == (7.0, 8.5, 3.0, 6.0)
    assert lists[0].responses[1] == "answer 1" and lists[0].meta["models"][1] == "m1"
    lists, _ = load_ultrafeedback(rows, score="helpfulness")
    assert lists[0].scores == (4.0, 5.0, 2.0, 3.0)
    lists, _ = load_ultrafeedback(rows, score="fine-grained_score")
    assert lists[0].scores == (3.5, 4.25, 1.5, 3.0)
    p = _write_jsonl(tmp_path / "uf.jsonl", rows)
    assert load_ultrafeedback(p)[1].source == str(p)
    with pytest.raises(ValueError, match="score must be one of"):
        load_ultrafeedback(rows, score="stars")


def test_ultrafeedback_na_rating_nan_score_and_ties(tmp_path):
    rows = [_uf_row([7.0, 8.0], ratings=["4", "N/A"]), _uf_row([7.0, float("nan")]), _uf_row([7.0, 7.0]),
            _uf_row([9.0, 1.0])]
    p = _write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_ultrafeedback(p, score="helpfulness")
    assert e.value.row == 1 and e.value.field == "completions[1].annotations.helpfulness.Rating"
    with pytest.raises(DataError) as e:
        load_ultrafeedback(p)
    assert e.value.row == 2 and e.value.field == "completions[1].overall_score" and "NaN" in str(e.value)
    lists, report = load_ultrafeedback(p, skip_invalid=True)
    assert len(lists) == 2 and report.n_skipped == 2  # row 2 NaN, row 3 tie; row 1 is fine for overall_score
    assert any("tie" in k for k in report.skipped)


def _curry_rec(prompt="What is 2+2?", r=("R1", "R2", "R3", "R4"), chosen_medium=None):
    def level(chosen, rejected):
        return {"conversation": [{"role": "user", "content": prompt},
                                 {"role": "assistant", "chosen_content": chosen, "rejected_content": rejected}]}
    return {"easy": level(r[0], r[3]), "medium": level(chosen_medium or r[0], r[2]), "hard": level(r[0], r[1])}


def test_curry_dpo_pairs_levels_in_order(tmp_path):
    p = tmp_path / "curry.json"
    p.write_text(json.dumps([_curry_rec(), _curry_rec(prompt="Name a prime.", r=("7", "9", "cat", ""))]))
    with pytest.raises(DataError) as e:
        load_curry_dpo_pairs(p)
    assert e.value.row == 2 and e.value.field == "easy.conversation[1].rejected_content"
    stages, report = load_curry_dpo_pairs(p, skip_invalid=True)
    assert [len(s) for s in stages] == [1, 1, 1] and report.n_skipped == 1
    easy, medium, hard = (s[0] for s in stages)
    assert (easy.chosen, easy.rejected, medium.rejected, hard.rejected) == ("R1", "R4", "R3", "R2")
    assert easy.prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert [s[0].meta["level"] for s in stages] == ["easy", "medium", "hard"]
    stages, _ = load_curry_dpo_pairs(p, levels=("hard",), skip_invalid=True)
    assert len(stages) == 1 and stages[0][0].rejected == "R2"


def test_curry_dpo_missing_level_and_bad_roles(tmp_path):
    rec = _curry_rec()
    del rec["medium"]
    rec2 = _curry_rec()
    rec2["hard"]["conversation"][1]["role"] = "user"
    p = _write_jsonl(tmp_path / "c.jsonl", [rec, rec2])
    with pytest.raises(DataError) as e:
        load_curry_dpo_pairs(p)
    assert (e.value.row, e.value.field) == (1, "medium.conversation")
    _, report = load_curry_dpo_pairs(p, skip_invalid=True)
    assert report.n_skipped == 2 and report.rows_kept == 0
    assert "hard.conversation[1].role" in report.first_errors[1]


def test_curry_dpo_rebuilds_ranked_lists():
    lists, report = load_curry_dpo_ranked([_curry_rec(), _curry_rec(chosen_medium="other")], skip_invalid=True)
    assert len(lists) == 1 and report.n_skipped == 1
    assert lists[0].responses == ("R1", "R2", "R3", "R4") and lists[0].scores == (3.0, 2.0, 1.0, 0.0)
    assert "medium.conversation[1].chosen_content" in report.first_errors[0]


def test_prefix_shared_logps_of_k_completions_match_naive_and_a_plain_forward():
    """Item 5: K completions of one prompt, prompt computed once (prefix backend) == naive padded rows
    == a plain full forward per (prompt, completion), to 1e-5 in float32; lists of K = 4 and K = 3 mixed."""
    import torch
    import torch.nn.functional as F

    from prefkit.data.collate import collate_groups
    from prefkit.data.examples import RankedList
    from prefkit.data.tokenize import TokenizeSettings, tokenize_ranked
    from prefkit.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from prefkit.models.logprobs import completion_logps

    cfg = ModelConfig(tokenizer="byte", init_config={
        "model_type": "qwen2", "vocab_size": 259, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128, "tie_word_embeddings": True})
    model, tok = load_causal_lm(cfg).eval(), load_tokenizer(cfg)
    lists = [RankedList("Start with 7. Add 5.", ("Step 1: 7 + 5 = 12", "Step 1: 7 + 5 = 13", "12", "I do not know"),
                        (1.0, 0.5, 0.8, 0.0)),
             RankedList([{"role": "user", "content": "2 * 3?"}], ("6", "five", "2 * 3 = 6"), (0.9, 0.0, 1.0))]
    settings = TokenizeSettings(max_length=96)
    groups = [tokenize_ranked(x, tok, settings, index=i) for i, x in enumerate(lists)]
    with torch.no_grad():
        pre = completion_logps(model, collate_groups(groups, tok.pad_token_id, "prefix"))
        nai = completion_logps(model, collate_groups(groups, tok.pad_token_id, "naive"))
        plain = torch.zeros(2, 4)
        for b, g in enumerate(groups):
            for k, comp in enumerate(g.completion_ids):
                ids = torch.tensor([g.prompt_ids + comp])
                logits = model(input_ids=ids).logits[0, len(g.prompt_ids) - 1: -1].float()  # (len(comp), V)
                plain[b, k] = -F.cross_entropy(logits, torch.tensor(comp), reduction="sum")
    assert pre.logps.shape == (2, 4) and pre.mask.tolist() == [[True] * 4, [True, True, True, False]]
    torch.testing.assert_close(pre.logps, nai.logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.logps, plain, atol=1e-5, rtol=0)
    assert torch.equal(pre.n_tokens, nai.n_tokens) and pre.logps[1, 3] == 0


def test_demo_lists_merge_duplicates_drop_ties_and_count(tmp_path):
    """The experiment's list builder: first answers new as text AND as score, K varies, short lists dropped."""
    from prefkit.demos.curry_dpo import CurryDemoConfig, sample_ranked_lists
    from prefkit.worlds.arithmetic.problems import Problem

    p = Problem(start=7, ops=(("+", 5), ("*", 3)))  # 12, 36
    right = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nThe answer is \\boxed{36}"
    wrong2a = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 35\nThe answer is \\boxed{35}"
    wrong2b = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 34\nThe answer is \\boxed{34}"  # ties wrong2a exactly
    wrong1 = "Step 1: 7 + 5 = 13\nStep 2: 13 * 3 = 39\nThe answer is \\boxed{39}"

    class FakeSampler:
        def generate(self, prompts, params):
            assert params.n == 6 and len(prompts) == 2
            return [[right, right, wrong2a, wrong2b, "", wrong1], [right] * 6]

    cfg = CurryDemoConfig(k=4, n_samples=6)
    lists, stats = sample_ranked_lists(FakeSampler(), [p, p], cfg, tmp_path / "lists.jsonl", seed=0, log=lambda *a: None)
    assert len(lists) == 1 and lists[0].responses == (right, wrong2a, wrong1)
    assert lists[0].scores[0] > lists[0].scores[1] > lists[0].scores[2]
    assert stats["lists_dropped"] == 1 and stats["tied_answers_dropped"] == 1
    assert stats["duplicate_answers_merged"] == 2 + 5  # the repeated right answer and the empty one; 5 repeats
    assert stats["k_histogram"] == {3: 1} and stats["mean_share"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_curry_dpo_file_becomes_three_stages_in_the_chosen_order(tmp_path):
    from prefkit.methods.curry_dpo import CurryMethodConfig, make_stages
    from prefkit.methods.ranked_dpo import RankedDataConfig

    p = _write_jsonl(tmp_path / "c.jsonl", [_curry_rec(prompt=f"q{i}", r=(f"a{i}", f"b{i}", f"c{i}", f"d{i}"))
                                            for i in range(4)])
    data = RankedDataConfig(train_file=str(p), format="curry_dpo")
    stages, report = make_stages(data, CurryMethodConfig())
    assert report.rows_kept == 4 and [[x.meta["level"] for x in s][0] for s in stages] == ["easy", "medium", "hard"]
    assert [x.rejected for x in stages[0]] == ["d0", "d1", "d2", "d3"]
    stages, _ = make_stages(data, CurryMethodConfig(ordering="hard_to_easy"))
    assert stages[0][0].meta["level"] == "hard" and stages[2][0].meta["level"] == "easy"
    stages, _ = make_stages(data, CurryMethodConfig(ordering="random"), seed=1)
    assert sorted(len(s) for s in stages) == [4, 4, 4] and len({x.meta["level"] for s in stages for x in s}) == 3
