"""SMART: smoothness-inducing adversarial regularisation plus Bregman proximal point optimisation
with a momentum teacher (regularizers.md, "smart")."""

from __future__ import annotations

import copy
from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State


def divergence(a: torch.Tensor, b: torch.Tensor, regression: bool) -> torch.Tensor:
    """ℓ_s per example: the symmetric KL divergence between the predictive distributions of two
    sets of logits, or the squared error between two regression outputs."""
    a, b = a.float(), b.float()
    if regression:
        return (a - b).square().sum(-1)
    log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
    # KL(p‖q) + KL(q‖p) = Σ (p − q)(log p − log q): one expression, differentiable in both.
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def unit_inf_norm(delta: torch.Tensor) -> torch.Tensor:
    """Scale each token's vector (the last dimension) to ∞-norm 1."""
    return delta / delta.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(delta.dtype).tiny)


def adversarial_perturbation(model: torch.nn.Module, embeds: torch.Tensor,
                             inputs: dict[str, torch.Tensor], clean_logits: torch.Tensor,
                             regression: bool, sigma: float, eta: float,
                             steps: int) -> torch.Tensor:
    """δ on the word embeddings after `steps` of projected gradient ascent on ℓ_s, from
    δ₀ ~ N(0, σ²). Only δ is differentiated: no parameter gradient is computed here."""
    embeds, clean_logits = embeds.detach(), clean_logits.detach()
    delta = torch.randn_like(embeds) * sigma
    for _ in range(steps):
        delta.requires_grad_()
        logits = model(inputs_embeds=embeds + delta, **inputs).logits
        # Summed over the batch, as the reference code does: each example's δ gets its own
        # gradient, whatever the batch size.
        (grad,) = torch.autograd.grad(divergence(logits, clean_logits, regression).sum(), delta)
        delta = unit_inf_norm(delta.detach() + eta * grad)
    return delta.detach()


class Smart(Regularizer):
    """`loss` adds λ_s · ℓ_s(f(e + δ), f(e)) and, with the teacher on, μ · ℓ_s(f(x; θ), f(x; θ̃)).

    The perturbed passes call the model in whatever mode the harness left it, so they draw dropout
    exactly as the main pass does. The teacher is a frozen copy in eval mode, moved only by the
    momentum update of `after_step`.
    """

    name = "smart"
    description = ("Adversarial smoothness on the word embeddings (K steps of projected ascent) "
                   "and a Bregman proximal term toward a momentum teacher.")
    citation = ("Jiang et al., ACL 2020, SMART: Robust and efficient fine-tuning for pre-trained "
                "natural language models through principled regularized optimization")
    hyperparameters = {"lambda_s": Param(1.0, ge=0), "eta": Param(1e-3, ge=0),
                       "sigma": Param(1e-5, ge=0), "K": Param(1, ge=0), "mu": Param(1.0, ge=0),
                       "beta": Param(0.99, ge=0, le=1), "teacher": Param(True)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"lambda_s": FloatDistribution(0.1, 10.0, log=True),
                "mu": FloatDistribution(0.1, 10.0, log=True)}

    def extra_passes(self) -> float:
        # K ascent passes and the final perturbed pass, each forward and backward; the teacher
        # only goes forward, about a third of a forward-and-backward.
        return self.params["K"] + 1 + (1 / 3 if self.params["teacher"] else 0.0)

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.regression = context.task.is_regression
        self.teacher: torch.nn.Module | None = None
        if self.params["teacher"]:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
            self._student_params = list(model.parameters())
            self._teacher_params = list(self.teacher.parameters())

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        p = self.params
        inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
        embeds = model.get_input_embeddings()(batch["input_ids"])
        delta = adversarial_perturbation(model, embeds, inputs, outputs.logits, self.regression,
                                         p["sigma"], p["eta"], p["K"])
        perturbed = model(inputs_embeds=embeds + delta, **inputs).logits
        loss = task_loss + p["lambda_s"] * divergence(perturbed, outputs.logits,
                                                      self.regression).mean()
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(input_ids=batch["input_ids"], **inputs).logits
            loss = loss + p["mu"] * divergence(outputs.logits, target, self.regression).mean()
        return loss

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        if self.teacher is not None:
            # θ̃ + (1 − β)(θ − θ̃) = β·θ̃ + (1 − β)·θ
            torch._foreach_lerp_(self._teacher_params, self._student_params,
                                 1.0 - self.params["beta"])
