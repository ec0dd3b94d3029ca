"""SPO's step-aware preference model: score(predicted clean image at step t, t, prompt) -> logit.

Liang et al. 2024 (SPO), sec. 4.1: a preference model that judges the *predicted* clean image x0_hat of a
noisy sample at its own noise level, trained on preference pairs at random noise levels; its scores are
Bradley-Terry logits, so softmax([s_w, s_l]) is the predicted preference probability the sampler
thresholds. Two implementations share that contract:

* ``StepAwareCNNScorer``: a small CNN for the embedded world; timestep and prompt enter every conv block
  by FiLM; the prompt is the (N, L, D) text-encoder states of the diffusion model, flattened.
* ``CLIPStepScorer``: PickScore-style, ``logit_scale * cos(image_emb, text_emb)`` with transformers'
  CLIPModel loaded from local weights; a timestep embedding is added to every vision token. Its last
  layer is zero-initialised, so a freshly wrapped CLIP scores exactly like the CLIP it was loaded from.

Training (``StepScorerModule`` on the one Trainer loop): a labelled clean pair (x0_w, x0_l, prompt) is
noised to a random sampler timestep with one shared noise, the diffusion model's ``denoise_fn`` predicts
x0_hat for both, and the scorer is trained with -log sigmoid(s_w - s_l) on (x0_hat, t); with probability
``p_clean`` the clean images are used at t = 0 (the sampler scores final images at t = 0).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (N,) -> (N, dim), as in DDPM/diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def bradley_terry_loss(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s_w - s_l), (N,). ln 2 when the scorer cannot tell the pair apart."""
    return -F.logsigmoid(s_w - s_l)


# ----------------------------------------------------------------------------------- embedded CNN scorer
@dataclass
class CNNScorerConfig:
    in_channels: int = 3
    image_size: int = 16
    text_len: int = 8         # L of the (N, L, D) text states (shorter ones are zero-padded)
    text_dim: int = 32        # D
    width: int = 32
    cond_dim: int = 64
    time_dim: int = 32

    def __post_init__(self):
        if self.image_size % 4:
            raise ValueError(f"CNNScorerConfig.image_size must be divisible by 4, got {self.image_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "CNNScorerConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"CNNScorerConfig: unknown keys {unknown}")
        return cls(**d)


class _FiLMBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)
        self.film = nn.Linear(cond_dim, 2 * c_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x))  # (N, C, H, W)
        gamma, beta = self.film(cond).chunk(2, dim=-1)  # (N, C) each
        return F.silu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


class StepAwareCNNScorer(nn.Module):
    """score(x0_hat (N, C, H, W) in [-1, 1], t (N,), text (N, L, D)) -> (N,) logits."""

    def __init__(self, config: CNNScorerConfig):
        super().__init__()
        self.config = c = config
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.cond_dim), nn.SiLU(), nn.Linear(c.cond_dim, c.cond_dim))
        self.text_mlp = nn.Sequential(nn.Linear(c.text_len * c.text_dim, c.cond_dim), nn.SiLU(),
                                      nn.Linear(c.cond_dim, c.cond_dim))
        self.blocks = nn.ModuleList([
            _FiLMBlock(c.in_channels, c.width, c.cond_dim, 1),
            _FiLMBlock(c.width, c.width, c.cond_dim, 2),
            _FiLMBlock(c.width, 2 * c.width, c.cond_dim, 2),
        ])
        side = c.image_size // 4
        self.head = nn.Sequential(nn.Linear(2 * c.width * side * side + c.cond_dim, c.cond_dim), nn.SiLU(),
                                  nn.Linear(c.cond_dim, 1))

    def _text(self, text: torch.Tensor) -> torch.Tensor:
        L, D = self.config.text_len, self.config.text_dim
        if text.dim() != 3 or text.shape[-1] != D or text.shape[1] > L:
            raise ValueError(f"StepAwareCNNScorer: text states must be (N, <= {L}, {D}), got {tuple(text.shape)}")
        return F.pad(text, (0, 0, 0, L - text.shape[1])).flatten(1)  # (N, L*D)

    def forward(self, images: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cond = self.time_mlp(timestep_embedding(timesteps, self.config.time_dim)) + self.text_mlp(self._text(text))
        h = images.clamp(-3.0, 3.0)  # x0_hat of very noisy steps can be far out of range
        for blk in self.blocks:
            h = blk(h, cond)  # (N, C', H', W')
        return self.head(torch.cat([h.flatten(1), cond], dim=-1)).squeeze(-1)  # (N,)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "scorer_config.json").write_text(json.dumps({"kind": "cnn", **asdict(self.config)}, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "scorer.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "StepAwareCNNScorer":
        path = Path(path)
        cfg = json.loads((path / "scorer_config.json").read_text())
        if cfg.pop("kind", "cnn") != "cnn":
            raise ValueError(f"{path}: not a CNN step scorer")
        model = cls(CNNScorerConfig.from_dict(cfg))
        model.load_state_dict(load_file(str(path / "scorer.safetensors")))
        return model


# ----------------------------------------------------------------------------------- CLIP-style scorer
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPStepScorer(nn.Module):
    """PickScore-style scorer with a timestep embedding, around a transformers CLIPModel.

    ``forward(images (N, 3, H, W) in [-1, 1], timesteps (N,), input_ids (N, T), attention_mask=None)``
    -> (N,) logits ``logit_scale.exp() * cos(img, txt)``. The timestep MLP's output is added to the vision
    embeddings (all tokens) by a forward hook, so any CLIP vision tower works unchanged.
    """

    def __init__(self, clip, time_dim: int = 64, tokenizer=None):
        super().__init__()
        self.clip, self.time_dim, self.tokenizer = clip, time_dim, tokenizer
        hidden = clip.config.vision_config.hidden_size
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)
        self._t_emb: torch.Tensor | None = None
        clip.vision_model.embeddings.register_forward_hook(self._add_time)
        self.image_size = clip.config.vision_config.image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def _add_time(self, module, inputs, output):
        if self._t_emb is None:
            return output
        return output + self._t_emb[:, None, :].to(output.dtype)  # (N, tokens, hidden)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(-1, 1) + 1) / 2  # (N, 3, H, W) in [0, 1]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    @staticmethod
    def _features(out) -> torch.Tensor:
        return out if torch.is_tensor(out) else out.pooler_output  # transformers >= 5 returns a ModelOutput

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self._features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)), dim=-1)

    def image_features(self, images: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self._t_emb = self.time_mlp(timestep_embedding(timesteps, self.time_dim).to(images.device))
        try:
            return F.normalize(self._features(self.clip.get_image_features(pixel_values=self.preprocess(images))), dim=-1)
        finally:
            self._t_emb = None

    def forward(self, images, timesteps, input_ids, attention_mask=None) -> torch.Tensor:
        img = self.image_features(images, timesteps)  # (N, P)
        txt = self.text_features(input_ids, attention_mask)  # (N, P)
        return self.clip.logit_scale.exp() * (img * txt).sum(-1)  # (N,)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("CLIPStepScorer: no tokenizer (load from a folder that has one, or pass input_ids)")
        max_len = self.clip.config.text_config.max_position_embeddings
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        dev = self.clip.logit_scale.device
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def score_prompts(self, images: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self(images, timesteps, *self.encode_prompts(prompts))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.clip.save_pretrained(str(path))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
        save_file({k: v.contiguous() for k, v in self.time_mlp.state_dict().items()}, str(path / "step_time_mlp.safetensors"))
        (path / "scorer_config.json").write_text(json.dumps({"kind": "clip", "time_dim": self.time_dim}))

    @classmethod
    def from_pretrained(cls, path: str | Path, time_dim: int = 64) -> "CLIPStepScorer":
        """A local CLIP (or a saved CLIPStepScorer) folder; never downloads. A plain CLIP folder gets a fresh,
        zero-effect timestep embedding."""
        from transformers import CLIPModel

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIPStepScorer: {path} is not a local folder (no downloads are made)")
        cfg_file = path / "scorer_config.json"
        if cfg_file.exists():
            time_dim = json.loads(cfg_file.read_text()).get("time_dim", time_dim)
        tokenizer = None
        if (path / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = cls(CLIPModel.from_pretrained(str(path), local_files_only=True), time_dim=time_dim, tokenizer=tokenizer)
        if (path / "step_time_mlp.safetensors").exists():
            model.time_mlp.load_state_dict(load_file(str(path / "step_time_mlp.safetensors")))
        return model


def load_step_scorer(path: str | Path) -> nn.Module:
    """A saved CNN or CLIP step scorer, by the `kind` in its scorer_config.json (plain CLIP folders -> CLIP)."""
    path = Path(path)
    cfg_file = path / "scorer_config.json"
    kind = json.loads(cfg_file.read_text()).get("kind") if cfg_file.exists() else "clip"
    return StepAwareCNNScorer.from_pretrained(path) if kind == "cnn" else CLIPStepScorer.from_pretrained(path)


# ----------------------------------------------------------------------------------- training module
# denoise_fn(x_t (N, C, H, W), timesteps (N,), batch) -> x0_hat (N, C, H, W) or (x0_hat, UNet forwards spent),
# no grad (the diffusion model); a bare tensor counts one forward per item
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
# scorer_call(scorer, images, timesteps, batch) -> (N,): how the prompt reaches the scorer
ScorerCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict], torch.Tensor]


class StepScorerModule(nn.Module):
    """Trainer module: noised labelled pairs -> x0_hat at a random sampler timestep -> Bradley-Terry loss.

    batch: ``x_w``, ``x_l`` (B, C, H, W) clean images plus whatever ``denoise_fn`` and ``scorer_call``
    read (e.g. text states). ``timesteps`` is the pool of sampler timesteps (the DDIM grid), ``alphas_cumprod``
    the training schedule.
    """

    def __init__(self, scorer: nn.Module, denoise_fn: DenoiseFn, scorer_call: ScorerCall,
                 timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, p_clean: float = 0.1):
        super().__init__()
        self.scorer, self.denoise_fn, self.scorer_call = scorer, denoise_fn, scorer_call
        self.register_buffer("pool", torch.as_tensor(timesteps, dtype=torch.long), persistent=False)
        self.register_buffer("abar", torch.as_tensor(alphas_cumprod, dtype=torch.float32), persistent=False)
        self.p_clean = p_clean
        self.denoise_forwards = 0  # per-sample diffusion-model evaluations made by denoise_fn

    def noisy_x0_hat(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_w, x_l = batch["x_w"], batch["x_l"]  # (B, C, H, W)
        B = x_w.shape[0]
        t = self.pool[torch.randint(0, len(self.pool), (B,), device=x_w.device)]  # (B,)
        clean = torch.rand(B, device=x_w.device) < self.p_clean
        a = self.abar[t].view(B, 1, 1, 1)
        noise = torch.randn_like(x_w)  # one noise shared by the pair
        with torch.no_grad():
            xt = torch.cat([a.sqrt() * x_w + (1 - a).sqrt() * noise, a.sqrt() * x_l + (1 - a).sqrt() * noise])
            both = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (B,) else v for k, v in batch.items()}
            out = self.denoise_fn(xt, torch.cat([t, t]), both)
            x0, n = out if isinstance(out, tuple) else (out, int(xt.shape[0]))  # (2B, C, H, W), UNet forwards spent
            self.denoise_forwards += n
        x0_w, x0_l = x0.chunk(2)
        m = clean.view(B, 1, 1, 1)
        x0_w, x0_l = torch.where(m, x_w, x0_w), torch.where(m, x_l, x0_l)
        return x0_w, x0_l, torch.where(clean, torch.zeros_like(t), t)

    def forward(self, batch: dict):
        x0_w, x0_l, t = self.noisy_x0_hat(batch)
        B = x0_w.shape[0]
        both = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (B,) else v for k, v in batch.items()}
        s = self.scorer_call(self.scorer, torch.cat([x0_w, x0_l]), torch.cat([t, t]), both)  # (2B,)
        s_w, s_l = s.chunk(2)
        losses = bradley_terry_loss(s_w, s_l)
        metrics = {"scorer/accuracy": (s_w > s_l).float().mean().detach(),
                   "scorer/margin": (s_w - s_l).mean().detach()}
        return losses.mean(), metrics

    def save_pretrained(self, path) -> None:
        self.scorer.save_pretrained(path)
