"""HyPe: a little random noise on the hidden states entering every transformer layer, in training
(Yuan et al., ACL 2023)."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.modeling import encoder_layers
from regbench.params import Param
from regbench.plugin import Regularizer, State

NOISE_KINDS = ("uniform", "normal")


class HyPe(Regularizer):
    """In training, the hidden states h entering each transformer layer become h + ε, a fresh ε
    per layer and per pass:

        uniform (the default): ε = σ · U(0, 1) per element;   normal: ε = σ · N(0, 1)

    as the authors' code draws them (Yuanhy1997/HyPe, `BertEncoder.forward`: σ times torch's
    `uniform_()`, which draws on [0, 1), or `normal_()`), for every layer, the first one's input
    being the embedding layer's output. Evaluation sees no noise. Nothing is added to the loss.

    Precision: σ = 1e-5 is far below what bf16 resolves (8 bits of mantissa: 0.4% of a value,
    about 2e-3 for MiniLM's hidden states), so under bf16 autocast the layers and the head would
    round the noise away; every layer and the head compute in fp32 in training (`fp32_parts`),
    whatever the run's precision. Measured on one RTE batch of 8 (MiniLM, a fresh head): the
    noise moves the loss by 2e-7 in fp32, and by the same under bf16 with those parts; with the
    whole model in bf16, by 3e-5, bf16's rounding. The draws come from the run's own generator
    (`state.generator`), so the run's dropout masks are a vanilla run's.

    Defaults: the authors' GLUE script (uniform noise, σ = 1e-5); the search covers a decade
    each side of σ. Cost: no extra pass; in a bf16 run, the fp32 layers make a step cost what an
    fp32 step does (1.8× vanilla's at glue-cpu's step, BENCHMARKS.md).
    """

    name = "hype"
    description = ("Small random noise on the hidden states entering every transformer layer in "
                   "training; the perturbed layers compute in fp32.")
    citation = ("Yuan et al., ACL 2023, HyPe: Better Pre-trained Language Model Fine-tuning with "
                "Hidden Representation Perturbation")
    hyperparameters = {"sigma": Param(1e-5, ge=0, le=1),
                       "noise": Param("uniform", choices=NOISE_KINDS)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"sigma": FloatDistribution(1e-6, 1e-4, log=True)}

    def fp32_parts(self, layers: int) -> tuple[str, ...]:
        return (*(f"layer.{k}" for k in range(layers)), "head")

    def setup(self, model: torch.nn.Module, state: State) -> None:
        self.hooks = [layer.register_forward_pre_hook(self._perturb, with_kwargs=True)
                      for layer in encoder_layers(model)]

    def _perturb(self, layer: torch.nn.Module, args: tuple,
                 kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if not layer.training:
            return None
        hidden = args[0]
        generator = self.state.generator
        draw = (torch.rand if self.params["noise"] == "uniform" else torch.randn)(
            hidden.shape, generator=generator, device=hidden.device, dtype=hidden.dtype)
        return (hidden + self.params["sigma"] * draw, *args[1:]), kwargs

    def after_training(self, state: State) -> None:
        for hook in self.hooks:
            hook.remove()
