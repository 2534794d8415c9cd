"""FreeLB: adversarial training on the word embeddings, the parameters' gradients accumulated over
the ascent's steps (Zhu et al., ICLR 2020)."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Loss, Regularizer, State
from regbench.plugin_tools import replayed, rng_state
from regbench.registry.smart import embedding_layer


class FreeLB(Regularizer):
    """Each step, K passes over the batch with a perturbation δ added to the word embeddings
    (the token lookup, before the position embeddings and the LayerNorm):

        δ₀ = 0, or with `init_mag` > 0: U(−1, 1) on the real tokens · init_mag / √(n·d)
        pass k = 1 … K: L_k = L(x + δ_{k−1}); backward of L_k / K (the gradients add up)
        δ_k = δ_{k−1} + α · ∇_δ L_k / ‖∇_δ L_k‖   (per example, the norm over its n tokens × d)
              then, with `max_norm` > 0, scaled back to norm `max_norm` where it is beyond

    and the optimiser steps once with the sum, the gradient of the mean of the K losses. As the
    authors' code does (zhuchen03/FreeLB, `run_glue_freelb.py`, the l2 norm): the first pass is
    the harness's main pass, with δ₀; `loss` runs the backward of the first K − 1 and hands the
    harness the last. All K passes draw the main pass's dropout masks, as the paper prescribes
    (their code passes the masks along; here the random state is replayed). The run reports the
    mean of the K losses, as their log does.

    Defaults: the authors' GLUE launch settings for RTE (α = adv_lr 0.1, init_mag 0, no
    max_norm, K = 3); their other tasks take α 0.03–0.2, init_mag 0–0.6, K 2–4. The search
    covers α and init_mag over those ranges. Cost: K − 1 extra forward and backward passes.
    """

    name = "freelb"
    description = ("Adversarial perturbations of the word embeddings, K ascent steps per batch, "
                   "the parameter gradients of all K passes accumulated.")
    citation = ("Zhu et al., ICLR 2020, FreeLB: Enhanced Adversarial Training for Natural Language "
                "Understanding")
    hyperparameters = {"adv_lr": Param(0.1, gt=0, le=100), "steps": Param(3, ge=1, le=100),
                       "init_mag": Param(0.0, ge=0, le=100), "max_norm": Param(0.0, ge=0, le=1e3)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"adv_lr": FloatDistribution(0.02, 0.3, log=True),
                "init_mag": FloatDistribution(0.0, 0.6)}

    def extra_passes(self) -> float:
        return float(self.params["steps"] - 1)

    def setup(self, model: torch.nn.Module, state: State) -> None:
        self.delta: torch.Tensor | None = None
        lookup = embedding_layer(model).word_embeddings
        self.width = lookup.embedding_dim
        self.hook = lookup.register_forward_hook(self._perturb)

    def _perturb(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if self.delta is not None:
            return output + self.delta
        return None

    def before_forward(self, state: State) -> None:
        mask = state.batch["attention_mask"].unsqueeze(-1).float()
        shape = (*mask.shape[:2], self.width)
        if self.params["init_mag"] > 0:
            lengths = mask.sum(dim=(1, 2), keepdim=True)
            draw = torch.rand(shape, generator=state.generator, device=state.device)
            delta = (2 * draw - 1) * mask * self.params["init_mag"] / (lengths * self.width).sqrt()
        else:
            delta = torch.zeros(shape, device=state.device)
        self.delta = delta.requires_grad_()
        self.dropout = rng_state(state.device)  # the main pass's masks, for every pass

    def ascend(self, grad: torch.Tensor) -> torch.Tensor:
        """δ_k from δ_{k−1} (`self.delta`) and ∇_δ L_k."""
        per_example = grad.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, 1, 1)
        delta = self.delta.detach() + self.params["adv_lr"] * grad / per_example
        if self.params["max_norm"] > 0:
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
            delta = delta * (self.params["max_norm"] / norm).clamp(max=1.0)
        return delta

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> Loss:
        steps = self.params["steps"]
        losses = [task_loss]
        for _ in range(steps - 1):
            (losses[-1] / steps).backward()
            self.delta = self.ascend(self.delta.grad).requires_grad_()
            with replayed(self.dropout, self.state.device):
                losses.append(model(**batch).loss)
        self.delta = None  # evaluations and the next step's main pass see no leftover
        reported = torch.stack([value.detach() for value in losses]).mean()
        return Loss(backward=losses[-1] / steps, reported=reported)

    def after_training(self, state: State) -> None:
        self.hook.remove()
