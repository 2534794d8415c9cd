"""The LNSR paper's own diagnostic, measured on every final run (protocol.md, "Noise stability").

Hua et al. inject Gaussian noise of 5% of a layer's output norm into that layer and measure how far
every layer above it moves; models that generalise better move less in the top layers. After
training, in eval mode, on a fixed slice of the test half: noise of `SCALE` × each token's norm is
added at layer i (the embedding output is layer 0), the layers above are run again from there, and
the L2 distance ‖h̃_k − h_k‖ and the relative change ‖h̃_k − h_k‖ / ‖h_k‖ of every layer k > i are
averaged over the real tokens and `DRAWS` noise draws of a fixed seed. Noise of 5% of each token's
norm is noise of 5% of the layer's output norm, over the tokens together as well. A run's summary
is the relative change of the last layer for noise at the embedding output.

The layers are rerun with the arguments of their own clean call (attention mask and all), caught
by forward pre-hooks, in fp32 whatever the run's precision: the changes measured are a few percent,
close to what bf16 can resolve.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from regbench.features import Examples, evaluation_batches
from regbench.modeling import encoder_layers

SCALE = 0.05  # the noise's norm, as a share of each token's norm (Hua et al.)
DRAWS = 2
# The first examples of the test half: the measure is a mean over their real tokens, about a
# thousand on STS-B, and costs about a second a run on two CPU cores (BENCHMARKS.md).
EXAMPLES = 32
SEED = 0
BATCH = 32


@torch.no_grad()
def noise_stability(model: torch.nn.Module, examples: Examples, pad_id: int,
                    device: torch.device, scale: float = SCALE) -> dict[str, Any]:
    """`{"table": rows, "distance": rows, "summary": change, "settings": …}` for `model` on the
    first `EXAMPLES` of `examples`: row i of `table` holds the relative change of layers 1 … L
    for noise at layer i, row i of `distance` their L2 distance (None at and below i). Runs
    stored before the distance was measured have `table` alone."""
    layers = encoder_layers(model)
    depth = len(layers)
    calls: dict[int, tuple[tuple, dict]] = {}

    def record(k: int, module, args: tuple, kwargs: dict) -> None:
        calls[k] = (args[1:], kwargs)  # all but the hidden states

    hooks = [layer.register_forward_pre_hook(functools.partial(record, k), with_kwargs=True)
             for k, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(SEED)
    change = torch.zeros(depth, depth + 1, dtype=torch.float64)
    distance = torch.zeros_like(change)
    tokens = 0
    try:
        lengths = examples.lengths[:EXAMPLES]
        for indices in evaluation_batches(lengths, BATCH):
            batch = {k: v.to(device) for k, v in examples.collate(indices, pad_id).items()
                     if k != "labels"}
            with torch.autocast(device.type, enabled=False):
                clean = model.base_model(**batch, output_hidden_states=True).hidden_states
                real = batch["attention_mask"].bool()
                tokens += int(real.sum()) * DRAWS
                for i in range(depth):
                    for _ in range(DRAWS):
                        hidden = clean[i] + _noise(clean[i], scale, generator)
                        for k in range(i + 1, depth + 1):
                            args, kwargs = calls[k - 1]
                            hidden = layers[k - 1](hidden, *args, **kwargs)
                            if isinstance(hidden, tuple):  # transformers 4.x layers: a tuple
                                hidden = hidden[0]
                            moved = (hidden - clean[k]).norm(dim=-1)[real]
                            distance[i, k] += moved.double().sum().item()
                            change[i, k] += (moved / clean[k].norm(dim=-1)[real]
                                             .clamp_min(1e-12)).double().sum().item()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    change /= max(tokens, 1)
    distance /= max(tokens, 1)

    def rows(measure: torch.Tensor) -> list[list[float | None]]:
        return [[measure[i, k].item() if k > i else None for k in range(1, depth + 1)]
                for i in range(depth)]

    return {"table": rows(change), "distance": rows(distance),
            "summary": change[0, depth].item(),
            "settings": {"scale": scale, "draws": DRAWS, "examples": min(EXAMPLES, len(examples)),
                         "seed": SEED}}


def _noise(hidden: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose norm is `scale` × each token's norm."""
    eps = torch.randn(hidden.shape, generator=generator, device=hidden.device,
                      dtype=hidden.dtype)
    return eps * (scale * hidden.norm(dim=-1, keepdim=True)
                  / eps.norm(dim=-1, keepdim=True).clamp_min(1e-12))
