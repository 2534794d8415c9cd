"""LNSR: layer-wise noise stability regularisation (regularizers.md, "lnsr")."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from regbench.errors import RegbenchError
from regbench.params import Param
from regbench.plugin import Regularizer, State

NOISE_KINDS = ("absolute", "relative")


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a BERT-family model (BERT, RoBERTa, ELECTRA and their kin)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise RegbenchError(
            f"This regularizer cannot find the encoder layers of {type(model).__name__}: it "
            "looks for `base_model.encoder.layer`, as BERT-family models have. Pick a "
            "BERT-family model or another regularizer."
        )
    return layers


def logits_head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What turns the last hidden state into logits, for the optional logits term."""
    base, classifier = model.base_model, getattr(model, "classifier", None)
    if getattr(base, "pooler", None) is not None and isinstance(classifier, torch.nn.Linear):
        return lambda h: classifier(model.dropout(base.pooler(h)))  # BERT: the pooled [CLS]
    if hasattr(classifier, "out_proj"):  # RoBERTa, ELECTRA: the head pools by itself
        return classifier
    raise RegbenchError(f"lnsr's include_logits does not know the classification head of "
                        f"{type(model).__name__}; set include_logits to false.")


class LNSR(Regularizer):
    """`loss` adds λ · Σ_k w_k · mean over real tokens of ‖h̃_k − h_k‖², where h̃ reruns only the
    layers above `inject_layer` from its noisy hidden state.

    The rerun replays each layer's own call from the main pass (caught by a forward pre-hook), so
    it sees the same attention mask, in the same format, as the clean pass. It runs in the model's
    current mode: in training it draws its own dropout, as the main pass did.
    """

    name = "lnsr"
    description = ("Noise stability: Gaussian noise on one layer's hidden states, penalising how "
                   "far every layer above it moves.")
    citation = ("Hua et al., NAACL 2021, Noise Stability Regularization for Improving BERT "
                "Fine-tuning")
    # noise "relative": each token's noise has norm sigma · ‖h_i‖ (the paper's analysis: 0.05).
    # layer_weights: w_1 … w_L, one per layer (those at or below inject_layer go unused); None: 1s.
    hyperparameters = {
        "lambda": Param(1.0, ge=0), "sigma": Param(0.1, ge=0), "noise": Param(
            "absolute", choices=NOISE_KINDS),
        "inject_layer": Param(0, ge=0, le=lambda layers: layers - 1),
        "layer_weights": Param(None, kind=list, nullable=True),
        "include_logits": Param(False), "samples": Param(1, ge=1)}
    needs_hidden_states = True

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"lambda": FloatDistribution(1e-2, 10.0, log=True),
                "sigma": FloatDistribution(1e-3, 1.0, log=True),
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
        weights = self.params["layer_weights"] or [1.0] * top
        if len(weights) != top:
            raise RegbenchError(f"lnsr's layer_weights needs one weight per layer ({top}), "
                                f"not {len(weights)}.")
        self.layers = layers[i:]
        self.weights = weights[i:]
        self.head = logits_head(model) if self.params["include_logits"] else None
        self.calls: dict[int, tuple[tuple, dict[str, Any]]] = {}
        for k, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(partial(self._record_call, k), with_kwargs=True)

    def _record_call(self, k: int, module: torch.nn.Module, args: tuple,
                     kwargs: dict[str, Any]) -> None:
        self.calls[k] = (args[1:], kwargs)  # everything but the hidden states

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
                args, kwargs = self.calls[k]
                h = layer(h, *args, **kwargs)
                if isinstance(h, tuple):  # transformers 4.x layers return a tuple
                    h = h[0]
                moved = (h - clean[i + 1 + k]).float().square().sum(-1)
                total = total + weight * (moved * token_share).sum()
            if self.head is not None:
                total = total + (self.head(h) - outputs.logits).float().square().sum(-1).mean()
        return total / self.params["samples"]

    def noise(self, h: torch.Tensor) -> torch.Tensor:
        eps = torch.randn_like(h)
        if self.params["noise"] == "relative":
            # A scale, not a path for gradients: the noise stays noise.
            eps = eps * (h.detach().norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True))
        return self.params["sigma"] * eps
