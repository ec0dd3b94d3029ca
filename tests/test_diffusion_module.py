"""DiffusionPreferenceModule with the generic Trainer: ln 2 at step 1, learning, LoRA-only updates, configs."""
import copy
import json
import math

import pytest
import torch

from prefkit.data.images import ImagePair, ImagePreferenceDataset, ImageRankedList, collate_image_groups
from prefkit.diffusion.backend import TinyConfig, build_tiny_backend
from prefkit.diffusion.lora import WIDE_TARGETS, add_lora
from prefkit.diffusion.module import DiffusionPreferenceModule
from prefkit.diffusion.noise_mse import group_mse
from prefkit.diffusion.word_tokenizer import WordTokenizer
from prefkit.losses.diffusion import ranked_diffusion_dpo_loss
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer

LN2 = math.log(2)


def tiny():
    cfg = TinyConfig(sample_size=8, block_out_channels=(16, 32), text_hidden=32, attention_head_dim=8, max_text_len=8)
    return build_tiny_backend(cfg, WordTokenizer(["a", "red", "blue", "square"], 8), seed=0)


def ranked_data(n=8, k=3):
    g = torch.Generator().manual_seed(0)
    prompts = ["a red square", "a blue square"]
    return [ImageRankedList(prompts[i % 2], tuple(torch.rand(3, 8, 8, generator=g) * 2 - 1 for _ in range(k)),
                            tuple(float(j) / (k - 1) for j in range(k))) for i in range(n)]


def heldout_loss(b, batch, beta, draws=4):
    """Mean RankDPO loss over fixed noise/timestep draws (less noisy than the training log)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        cond = b.encode_text(batch["prompts"])
        tot = 0.0
        for _ in range(draws):
            m = group_mse(b.unet, b.scheduler, batch["pixels"], cond, generator=g)
            tot += ranked_diffusion_dpo_loss(m.model, m.ref, batch["scores"], beta=beta, weighting="uniform")[0].mean().item()
    return tot / draws


def test_rankdpo_trains_lora_only_and_starts_at_ln2(tmp_path):
    torch.manual_seed(0)
    b = tiny()
    base = {n: p.detach().clone() for n, p in b.unet.named_parameters()}
    add_lora(b.unet, rank=4, target_modules=WIDE_TARGETS)
    module = DiffusionPreferenceModule(b, objective="rankdpo", beta=200.0, weighting="uniform")
    data = ImagePreferenceDataset(ranked_data(), 8)
    batch = collate_image_groups([data[i] for i in range(len(data))])
    assert heldout_loss(b, batch, 200.0) == pytest.approx(LN2, abs=1e-6)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=3e-3, max_steps=20, batch_size=8,
                      lr_scheduler="constant", warmup_ratio=0.0, progress_bar=False)
    result = Trainer(cfg, module, data, collate_image_groups, log=lambda *a: None).train()
    hist = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert hist[0]["loss"] == pytest.approx(LN2, abs=1e-4) and result.global_step == 20
    assert heldout_loss(b, batch, 200.0) < LN2 - 0.02  # the training lists' preferences are learned
    for n, p in b.unet.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n
    assert (tmp_path / "run" / "model" / "pytorch_lora_weights.safetensors").exists()


def test_dpo_with_frozen_copy_reference():
    b = tiny()
    module = DiffusionPreferenceModule(b, objective="dpo", beta=5000.0, reference_unet=copy.deepcopy(b.unet))
    g = torch.Generator().manual_seed(1)
    pairs = [ImagePair("a red square", torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)) for _ in range(3)]
    batch = collate_image_groups([ImagePreferenceDataset(pairs, 8)[i] for i in range(3)])
    loss, metrics = module(batch)
    assert loss.item() == pytest.approx(LN2, abs=1e-6) and metrics["rewards/accuracies"].item() == 0.5
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == sum(p.numel() for p in b.unet.parameters())
    with pytest.raises(ValueError, match="K = 3"):
        module(collate_image_groups([ImagePreferenceDataset(ranked_data(1), 8)[0]]))
    with pytest.raises(ValueError, match="reference_unet"):
        DiffusionPreferenceModule(tiny(), objective="dpo")


@pytest.mark.parametrize("name", ["diffusion_dpo_shapes.yaml", "rankdpo_shapes.yaml", "rankdpo_sd_lora.yaml"])
def test_configs_parse_and_reject_unknown_keys(name):
    import yaml

    from prefkit.config import ConfigError, from_dict
    from prefkit.methods.diffusion_dpo import DiffusionDPORunConfig
    from prefkit.methods.rankdpo import RankDPORunConfig

    data = yaml.safe_load(open(f"configs/{name}"))
    cls = DiffusionDPORunConfig if data["method"]["name"] == "diffusion_dpo" else RankDPORunConfig
    cfg = from_dict(cls, data)
    assert cfg.train.output_dir.startswith("runs/")
    data["method"]["betta"] = 1.0
    with pytest.raises(ConfigError, match="betta"):
        from_dict(cls, data)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_prefkit_train_cli_on_a_local_sd_folder(tmp_path, kind):
    """End to end: `prefkit train` with both diffusion recipes on a tiny SD-style folder (VAE latents, CLIP text),
    and on a tiny SDXL folder (two text encoders, pooled embeddings and time ids)."""
    import numpy as np
    import yaml
    from PIL import Image

    from prefkit.cli import main
    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline, save_tiny_sdxl_pipeline

    sd = {"sd": save_tiny_sd_pipeline, "sdxl": save_tiny_sdxl_pipeline}[kind](str(tmp_path / kind), latent_size=8)
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "img").mkdir(parents=True)
    rows = []
    for i in range(4):
        names = []
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / "img" / f"{i}_{j}.png")
            names.append(f"img/{i}_{j}.png")
        rows.append({"caption": f"prompt {i}", "images": names, "scores": [1.0, 0.5, 0.0]})
    (tmp_path / "data" / "ranked.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name, method in [("rankdpo", {"name": "rankdpo", "beta": 100.0, "weighting": "uniform"}),
                         ("diffusion_dpo", {"name": "diffusion_dpo", "beta": 200.0})]:
        cfg = {"model": {"path": sd, "lora_rank": 2}, "data": {"train_file": str(tmp_path / "data" / "ranked.jsonl")},
               "method": method, "train": {"output_dir": str(tmp_path / name), "learning_rate": 1e-3, "max_steps": 2,
                                           "batch_size": 2, "progress_bar": False}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(path)]) == 0
        first = json.loads(open(tmp_path / name / "metrics.jsonl").readline())
        assert first["loss"] == pytest.approx(LN2, abs=1e-4)  # uniform / pairwise at policy == reference
        assert (tmp_path / name / "model" / "pytorch_lora_weights.safetensors").exists()


def test_resume_draws_the_same_noise_as_the_uninterrupted_run(tmp_path):
    """Noise, timesteps and the VAE sample come from a generator named by (seed, epoch, micro-batch, process), so
    a run resumed from step 2 ends with the uninterrupted run's LoRA weights (the global RNG, which re-creating
    the data loader at resume consumes, gave other draws)."""
    import shutil

    def run(out, resume=False):
        torch.manual_seed(0)
        b = tiny()
        add_lora(b.unet, rank=4, target_modules=WIDE_TARGETS)
        module = DiffusionPreferenceModule(b, objective="rankdpo", beta=200.0, weighting="uniform")
        cfg = TrainConfig(output_dir=str(out), learning_rate=3e-3, max_steps=4, batch_size=2, save_steps=2,
                          lr_scheduler="constant", warmup_ratio=0.0, progress_bar=False)
        Trainer(cfg, module, ImagePreferenceDataset(ranked_data(), 8), collate_image_groups, log=lambda *a: None).train(resume=resume)
        assert module._draw_key is None
        return {n: p.detach().clone() for n, p in b.unet.named_parameters() if "lora_" in n}

    whole = run(tmp_path / "a")
    # (and after training the module draws from the global RNG again, as outside the Trainer)
    run(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    torch.manual_seed(123)  # whatever the global RNG holds
    resumed = run(tmp_path / "b", resume=True)
    assert max((whole[n] - resumed[n]).abs().max().item() for n in whole) < 1e-6


def test_image_recipes_take_diffusers_defaults_and_say_how_beta_dpo_maps():
    """A partial train: section keeps the image recipes' defaults (constant 1e-5, as diffusers' Diffusion-DPO example;
    the language-model 5e-7 cosine left a LoRA UNet where it was); diffusers' --beta_dpo is named with its
    conversion; SPO refuses train keys it would not follow (it trains by rounds)."""
    from prefkit.config import ConfigError
    from prefkit.train.cli_train import load_run_config

    _, cfg = load_run_config("configs/diffusion_dpo_shapes.yaml", ["train={output_dir: x}"])
    assert (cfg.train.learning_rate, cfg.train.lr_scheduler, cfg.train.warmup_ratio) == (1e-5, "constant", 0.0)
    with pytest.raises(ConfigError, match="beta_dpo 2500 is method.beta 5000"):
        load_run_config("configs/diffusion_dpo_shapes.yaml", ["method.beta_dpo=2500"])
    with pytest.raises(ValueError, match="eval_steps"):
        load_run_config("configs/rankdpo_shapes.yaml", ["train.eval_steps=2"])
    _, spo = load_run_config("configs/spo_shapes.yaml", ["train={output_dir: x}"])
    assert (spo.train.learning_rate, spo.train.lr_scheduler) == (1e-4, "constant")
    for key in ("max_steps=3", "save_steps=1"):
        with pytest.raises(ValueError, match="SPO trains in method.rounds"):
            load_run_config("configs/spo_shapes.yaml", [f"train.{key}"])


def test_crop_and_flip_options_reach_the_training_dataset_and_epochs_redraw(tmp_path, monkeypatch):
    """data.center_crop / data.random_flip and the seed reach the dataset the Trainer iterates, and it is told each
    epoch (accelerate's data loader passes set_epoch on), so random crops and flips change between epochs."""
    import numpy as np
    import yaml
    from PIL import Image

    import prefkit.methods.diffusion_recipe as recipe
    from prefkit.cli import main
    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline

    seen = {"kw": None, "epochs": []}

    class Recording(recipe.ImagePreferenceDataset):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen["kw"] = kw

        def set_epoch(self, epoch):
            seen["epochs"].append(epoch)
            super().set_epoch(epoch)

    monkeypatch.setattr(recipe, "ImagePreferenceDataset", Recording)
    sd = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(2):
        for j in range(2):
            Image.fromarray(np.random.default_rng(i * 2 + j).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
                tmp_path / "img" / f"{i}_{j}.png")
        rows.append({"caption": f"prompt {i}", "chosen": f"img/{i}_0.png", "rejected": f"img/{i}_1.png"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = {"model": {"path": sd, "lora_rank": 2}, "method": {"name": "diffusion_dpo", "beta": 200.0},
           "data": {"train_file": str(tmp_path / "pairs.jsonl"), "format": "pairs", "center_crop": False,
                    "random_flip": True},
           "train": {"output_dir": str(tmp_path / "out"), "num_epochs": 2, "batch_size": 2, "seed": 7,
                     "progress_bar": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    assert seen["kw"] == {"center_crop": False, "random_flip": True, "seed": 7}
    assert seen["epochs"] == sorted(seen["epochs"]) and set(seen["epochs"]) == {0, 1}
