"""The Tune station's options and what will run: ``TuneConfig`` (the loop's ``LoopOptions`` plus the data,
method, LoRA, GRPO and evaluation options), the method constants, and ``select_backend``, which picks the backend
(peft or unsloth) and the device and says why when it falls back (QLoRA without an NVIDIA GPU) or refuses
(naming the extra to install). torch is imported inside functions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmlab.errors import ConfigError
from llmlab.scoring import EvalOptions
from llmlab.training.loop import LoopOptions
from llmlab.tune.rewards import check_reward_names

Method = Literal["lora", "dora", "full", "qlora", "dpo", "orpo", "grpo"]
ADAPTER_METHODS = ("lora", "dora", "qlora", "dpo", "orpo", "grpo")
PREFERENCE_METHODS = ("dpo", "orpo")
# Methods that run outside llmlab's supervised loop (so not under torchrun).
OWN_TRAINER_METHODS = (*PREFERENCE_METHODS, "grpo")
QLORA_EXTRA = "pip install 'llmlab[qlora]'"
UNSLOTH_EXTRA = "pip install 'llmlab[unsloth]'"


class TuneConfig(LoopOptions, EvalOptions):
    """Options of the Tune station (``llmlab tune`` and a recipe's ``tune`` step)."""

    name: str = Field(..., description="Name of the artifact to write (an adapter, or a full model for 'full').")
    model: str = Field(..., description="Model to tune: an artifact in the store or a local Hugging Face folder; "
                       "for grpo also an adapter artifact (an SFT LoRA), whose weights GRPO trains on.")
    data: str = Field("world:tune", description="Training data: 'world:tune' (the demo world's tuning questions, "
                      "from the model's world), a local .jsonl/.json/.txt/.parquet file or folder, or a Hugging "
                      "Face data set name. Records: messages, instruction/input/output, prompt/completion, "
                      "question/answer, text; for dpo/orpo: prompt/chosen/rejected (or 'world:tune' again: "
                      "pairs built from the world, a wrong answer of the same relation as 'rejected'); for grpo: "
                      "questions with gold answers (answer, answers or SQuAD's answers.text), or any prompts your "
                      "own reward can judge.")
    data_limit: int | None = Field(None, ge=1, description="Most records read from data (None: all).")
    anchor: str | None = Field(
        None, description="Data on which the tuned model must keep the base model's predictions (the same "
        "forms as data, e.g. 'world:tune:people' for a places specialist): a KL term to the base (the adapter "
        "switched off) on its answer tokens is added to the loss. It stops an adapter from changing what it "
        "was not tuned for, so adapters of one base merge with less interference. LoRA-type methods only.")
    anchor_weight: float = Field(1.0, gt=0, description="Strength of the anchor's KL term against the training loss.")
    method: Method = Field("lora", description="lora, dora (weight-decomposed LoRA), full (every weight), "
                           "qlora (4-bit base, needs an NVIDIA GPU), dpo or orpo (preference pairs, LoRA), grpo (reinforcement "
                           "learning from rewards of sampled answers; LoRA, or every weight with grpo_weights: full).")
    backend: Literal["auto", "peft", "unsloth"] = Field(
        "auto", description="auto: unsloth when it is installed and a CUDA GPU is present, else peft.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Layers that get adapters: 'all-linear', a list of module names "
        "(q_proj, v_proj, ...; a comma-separated string works too) or a regex.")
    # rank 32 x 8 epochs: on the small demo, held-out accuracy 3% -> 84% in ~45 s of training on
    # one thread with little forgetting (world-text perplexity 2.58 -> 2.66); rank 64 x 12 epochs
    # reaches 87% but doubles the time and the perplexity.
    rank: int = Field(32, description="LoRA rank (size of the low-rank update).")
    alpha: float | None = Field(None, description="LoRA scaling alpha; None means 2 x rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    learning_rate: float | None = Field(
        None, description="Peak learning rate; None means 2e-3 for adapters, 1e-3 for full tuning, 5e-5 for "
        "dpo/orpo, 3e-4 for grpo (1e-4 with grpo_weights: full).")
    answer_only: bool = Field(True, description="Loss on the answer tokens only (the prompt is masked).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory (slower).")
    beta: float = Field(0.1, ge=0, description="dpo/orpo: strength of the preference term; grpo: weight of the KL "
                        "term that keeps the policy near where it started (0: no KL, one forward pass less).")
    # GRPO (method: grpo): llmlab.tune.grpo and llmlab.tune.rewards.
    rewards: dict[str, float] | str = Field(
        "exact_match", validate_default=True, description="grpo: reward terms and weights, as {name: weight} or 'exact_match, length=0.2': "
        "built in exact_match, f1 (against the record's gold answers), short (one to five words), json (JSON, "
        "valid under the record's schema), length (a penalty per extra word), or your own function "
        "'path/to/file.py:function' taking (completion, record) and returning a number.")
    group_size: int = Field(8, ge=2, description="grpo: answers sampled per prompt; each is rewarded against the "
                            "mean of its group.")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of the answers.")
    max_new_tokens: int = Field(16, ge=1, description="grpo: longest sampled answer in tokens.")
    clip: float = Field(0.2, gt=0, lt=1, description="grpo: the policy ratio is clipped to 1 +- clip.")
    policy_updates: int = Field(1, ge=1, description="grpo: optimizer steps on each batch of sampled answers "
                                "(above 1, the ratio clipping bounds how far they move the policy).")
    grpo_weights: Literal["lora", "full"] = Field(
        "lora", description="grpo: train a LoRA adapter (a new one, or the given adapter's own weights) or every "
        "weight (an adapter given as model is merged into its base first).")
    reward_timeout: float = Field(10.0, gt=0, description="grpo: seconds one call of your own reward may take "
                                  "before the run stops.")
    show_samples: int = Field(3, ge=0, description="grpo: prompts whose sampled answers and rewards are shown "
                              "at each checkpoint.")
    evaluate: bool = Field(True, description="After training, score base and tuned on the same held-out texts and "
                           "questions (texts, qa; by default the demo world's, when the model has one).")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        # peft reads a string as a regex; "q_proj,v_proj" (a CLI flag) means a list of names.
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) and "," in v else v

    @field_validator("rewards", mode="before")
    @classmethod
    def _rewards(cls, v: Any) -> dict[str, float]:
        if isinstance(v, str):  # "exact_match, f1=0.5, my_rewards.py:brevity=2" (a flag or a form field)
            parsed: dict[str, float] = {}
            for part in (p.strip() for p in v.split(",")):
                name, eq, weight = part.partition("=")
                if not name.strip():
                    continue
                try:
                    parsed[name.strip()] = float(weight) if eq else 1.0
                except ValueError:
                    raise ValueError(f"the weight of reward '{name.strip()}' must be a number, got '{weight}'") from None
            v = parsed
        if not isinstance(v, dict):
            raise ValueError("rewards must be {name: weight} or a comma-separated list of names")
        check_reward_names(v)
        return v

    @model_validator(mode="after")
    def _anchor_needs_adapter(self) -> TuneConfig:
        if self.anchor and self.method not in ("lora", "dora", "qlora"):
            raise ValueError(f"anchor needs a LoRA-type method (lora, dora, qlora), not '{self.method}': the base's "
                             "predictions come from switching the adapter off")
        if self.method in PREFERENCE_METHODS and self.beta <= 0:
            raise ValueError(f"beta must be positive for {self.method}, got {self.beta}; 0.1 is a good start")
        return self

    def reward_weights(self) -> dict[str, float]:
        """``rewards`` as {name: weight} (validated)."""
        assert isinstance(self.rewards, dict)
        return self.rewards

    @field_validator("rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"rank must be at least 1, got {v}; typical LoRA ranks are 8 to 64")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"alpha must be positive, got {v}; 2 x rank is a good start")
        return v

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if self.method == "grpo":
            # RL gradients are noisy: on the demo, 1e-3 and 2e-3 drifted the SFT adapter's reward down
            return 1e-4 if self.grpo_weights == "full" else 3e-4
        return {"full": 1e-3, "dpo": 5e-5, "orpo": 5e-5}.get(self.method, 2e-3)

    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank



@dataclass
class Plan:
    """What will actually run: backend and method, and why when it differs from what was asked."""

    backend: Literal["peft", "unsloth"]
    method: str
    device: str
    messages: list[str] = field(default_factory=list)


def select_backend(config: TuneConfig) -> Plan:
    """Choose the backend and device; fall back (with a message) or refuse (with the extra to install)."""
    import torch

    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU.",
                          "Use device: auto (or cpu) on this machine.")
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    method, messages = config.method, []
    if method == "qlora" and not (cuda and has_bnb):
        why = "no CUDA GPU is visible" if not cuda else "bitsandbytes is not installed"
        messages.append(f"QLoRA needs an NVIDIA GPU with CUDA and the qlora extra ({QLORA_EXTRA}), but {why}: "
                        "training plain LoRA with peft instead.")
        method = "lora"
    unsloth_ok = cuda and has_unsloth and method in ("lora", "qlora")
    if config.backend == "unsloth" and not unsloth_ok:
        if not (cuda and has_unsloth):
            raise ConfigError("The unsloth backend needs an NVIDIA GPU with CUDA and the unsloth extra "
                              f"({UNSLOTH_EXTRA}); " + ("no CUDA GPU is visible." if not cuda else
                                                        "unsloth is not installed."),
                              "Use backend: auto or peft to train with peft on this machine.")
        raise ConfigError(f"The unsloth backend runs lora and qlora, not {method}.",
                          "Use backend: auto or peft for this method.")
    backend: Literal["peft", "unsloth"] = "unsloth" if unsloth_ok and config.backend != "peft" else "peft"
    return Plan(backend, method, "cuda" if cuda else "cpu", messages)

