"""LNSR: layer-wise noise stability regularisation (regularizers.md, "lnsr")."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from regbench.errors import RegbenchError
from regbench.modeling import encoder_layers
from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import RngState, logits_head, replayed, rng_state

NOISE_KINDS = ("relative", "absolute")


class LNSR(Regularizer):
    """`loss` adds λ · Σ_k w_k · mean over real tokens of ‖h̃_k − h_k‖², where h̃ reruns only the
    layers above `inject_layer` from its noisy hidden state.

    The rerun replays each layer's own call from the main pass (caught by a forward pre-hook): the
    same attention mask, in the same format, and the same random generators' state, so that in
    training each layer draws the same dropout masks as it did in the main pass and the two
    branches differ by the injected noise alone (σ = 0 gives exactly 0). The logits term replays
    the head's dropout the same way.

    Noise: `relative` (default) scales each token's noise to norm σ·‖h_i‖ of that token, the
    paper's analysis at σ = 0.05 (MiniLM's per-token norms are 10–13 below its last layer, 5 at
    it, so an absolute σ means a different share at every layer); `absolute` is ε ~ N(0, σ²I).

    λ's default, 0.3, is measured: MiniLM with a fresh RTE head, four real RTE batches of 16,
    training mode, relative σ 0.05 at inject_layer 0. There, at λ = 1, the penalty's gradient norm
    is 1.4–2.4 against the task loss's 0.47–0.68, 2.1–5.1 times it (median 2.7); λ = 0.3 brings
    the ratio to 0.6–1.5. The search covers three decades around it, [0.01, 9].

    Precision: under bf16 autocast the layers above the injection point (and, with the logits
    term, the head) compute in fp32 in both branches while lnsr trains (`fp32_parts`). bf16
    rounds each linear layer's input to 0.4–0.8% of every element, a difference between the
    branches as large as small noise: measured at relative σ 0.01 (the bottom of the search
    range) on the batches above, the bf16 penalty was 1.62–1.66× the fp32 one with those layers
    in bf16; in fp32 it is fp32's exactly. Evaluation computes in the run's own precision.
    """

    name = "lnsr"
    version = "2"  # 2: dropout replayed in the rerun; relative noise; defaults measured
    description = ("Noise stability: Gaussian noise on one layer's hidden states, penalising how "
                   "far every layer above it moves, the same dropout masks in both branches.")
    citation = ("Hua et al., NAACL 2021, Noise Stability Regularization for Improving BERT "
                "Fine-tuning")
    # layer_weights: w_1 … w_L, one per layer (those at or below inject_layer go unused); None: 1s.
    hyperparameters = {
        "lambda": Param(0.3, ge=0, le=1e3), "sigma": Param(0.05, ge=0, le=100),
        "noise": Param("relative", choices=NOISE_KINDS),
        "inject_layer": Param(0, ge=0, le=lambda layers: layers - 1),
        "layer_weights": Param(None, kind=list, nullable=True,
                               items=Param(1.0, ge=0, le=1e3)),
        "include_logits": Param(False), "samples": Param(1, ge=1, le=64)}
    needs_hidden_states = True

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        # λ: three decades centred on the default (√(0.01 · 9) = 0.3).
        return {"lambda": FloatDistribution(0.01, 9.0, log=True),
                "sigma": FloatDistribution(0.01, 0.2, log=True),
                "inject_layer": IntDistribution(0, num_layers - 1)}

    def extra_passes(self) -> float:
        # Exact at inject_layer 0; an upper bound above it, where (L − i) / L of a pass reruns.
        return float(self.params["samples"])

    def setup(self, model: torch.nn.Module, context: State) -> None:
        layers = encoder_layers(model)
        top, i = len(layers), self.params["inject_layer"]
        if not 0 <= i < top:
            raise RegbenchError(f"lnsr's inject_layer must be in 0..{top - 1} for this "
                                f"{top}-layer model, not {i}.")
        weights = self.params["layer_weights"]
        if weights is None:
            weights = [1.0] * top
        if len(weights) != top:
            raise RegbenchError(f"lnsr's layer_weights needs one weight per layer ({top}), "
                                f"not {len(weights)}.")
        self.layers = layers[i:]
        self.weights = weights[i:]
        recorded: list[tuple[Any, torch.nn.Module]] = list(enumerate(self.layers))
        self.head, head_modules = None, []
        if self.params["include_logits"]:
            self.head, head_modules = logits_head(model)
            # The head's first module draws nothing before its dropout does.
            recorded.append(("head", head_modules[0]))
        self.calls: dict[Any, tuple[tuple, dict[str, Any], RngState]] = {}
        self.hooks = [module.register_forward_pre_hook(partial(self._record_call, key),
                                                       with_kwargs=True)
                      for key, module in recorded]

    def fp32_parts(self, layers: int) -> tuple[str, ...]:
        # bf16 cannot resolve small noise: it rounds each element to 0.4–0.8% of its size, so
        # both branches of everything above the noise compute in fp32 (see the class docstring).
        above = tuple(f"layer.{k}" for k in range(self.params["inject_layer"], layers))
        return (*above, "head") if self.params["include_logits"] else above

    def _record_call(self, key: Any, module: torch.nn.Module, args: tuple,
                     kwargs: dict[str, Any]) -> None:
        # Everything but the hidden states, and where the generators stood.
        self.calls[key] = (args[1:], kwargs, rng_state(args[0].device))

    # The harness switches the fp32 parts off around its evaluations and closes them after
    # training; lnsr's own hooks do the same, so that they undo all of lnsr called alone.
    def before_evaluate(self, state: State) -> None:
        state.fp32.off()  # evaluation computes as every other regularizer's does

    def after_evaluate(self, state: State) -> None:
        state.fp32.on()

    def after_training(self, state: State) -> None:
        for hook in self.hooks:
            hook.remove()
        self.calls.clear()
        state.fp32.close()  # the test's evaluation comes later: it must find nothing to switch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        return task_loss + self.params["lambda"] * self.penalty(batch, outputs)

    def penalty(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """R averaged over the noise samples, from the main pass's `outputs`."""
        i = self.params["inject_layer"]
        clean = outputs.hidden_states
        mask = batch["attention_mask"].float()
        token_share = mask / mask.sum()  # a mean over the real tokens of the whole batch
        total = torch.zeros((), device=mask.device)
        for _ in range(self.params["samples"]):
            h = clean[i] + self.noise(clean[i])
            for k, (layer, weight) in enumerate(zip(self.layers, self.weights, strict=True)):
                args, kwargs, rng = self.calls[k]
                with replayed(rng, h.device):
                    h = layer(h, *args, **kwargs)
                if isinstance(h, tuple):  # transformers 4.x layers return a tuple
                    h = h[0]
                moved = (h.float() - clean[i + 1 + k].float()).square().sum(-1)
                total = total + weight * (moved * token_share).sum()
            if self.head is not None:
                with replayed(self.calls["head"][2], h.device):
                    logits = self.head(h)
                total = total + (logits.float() - outputs.logits.float()).square().sum(-1).mean()
        return total / self.params["samples"]

    def noise(self, h: torch.Tensor) -> torch.Tensor:
        eps = torch.randn_like(h)
        if self.params["noise"] == "relative":
            # A scale, not a path for gradients: the noise stays noise.
            eps = eps * (h.detach().norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True))
        return self.params["sigma"] * eps
