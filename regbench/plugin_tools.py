"""What regularizers share beyond the hooks: public, stable helpers for plugin authors.

The built-ins use these and nothing private; a third-party plugin imports them the same way.

- Random state: `rng_state` and `replayed` rerun part of a pass with the random draws (dropout
  masks) of the main pass; `drawn_apart` makes draws that depend on the run's seed alone and
  leave the run's own stream (its dropout masks) untouched. `State.generator` is a generator of
  the run's own for a plugin's draws in the loop.
- Precision: `autocast` is the context the harness runs every forward pass in;
  `ComputedInFP32` is how the harness applies a plugin's `fp32_parts` (named by `model_parts`).
- The model: `logits_head`, what turns the last hidden state into logits; `caught_pooled`, the
  features the head reads (the harness hands the main pass's to the hooks as `outputs.pooled`).
- Weights: `averaged_tensors` (what a copy of the weights covers), `snapshot` (a detached copy),
  `swap` (exchange two copies in place), `pretrained_and_head` (the parameters the checkpoint held
  and the new head's), `squared_norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from regbench.errors import RegbenchError
from regbench.modeling import encoder_layers
from regbench.plugin import State

# -- random state ---------------------------------------------------------------------------------

RngState = tuple[torch.Tensor, torch.Tensor | None]


def rng_state(device: torch.device) -> RngState:
    """The generators dropout draws from on `device`: the CPU's, and on CUDA the device's own.
    Take it just before a module runs (a forward pre-hook) to replay that module's draws."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda"
                                   else None)


@contextmanager
def replayed(state: RngState, device: torch.device) -> Iterator[None]:
    """Within the block, draw again what was drawn from `state`; afterwards the generators are
    where they were before it, so the rest of the step draws as if nothing had been replayed.
    A rerun of a module under the same `state` draws the same dropout masks as its first run."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


@contextmanager
def drawn_apart(device: torch.device) -> Iterator[None]:
    """A block whose random draws depend on the run's seed alone and leave the global RNG as it
    was, so that the run draws the same dropout masks as a vanilla run of that seed: for seeded
    initialisation or noise in `setup` (re-init, NoisyTune)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # The harness seeds the global RNG with the number that also seeds the head's generator:
        # reseeding from a draw keeps these draws from repeating the head's values.
        torch.manual_seed(int(torch.randint(2**62, (1,))))
        yield


def plugin_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator `State.generator` holds: on `device`, a function of the run's seed alone."""
    # The run's seed seeds the head (a generator of its own) and dropout (the global one): this
    # one starts from a scrambled seed, so that it repeats neither. The CPU's generator reads 32
    # bits of a seed, so an offset of 2³² would give the seed's own stream.
    return torch.Generator(device).manual_seed((seed * 0x9E3779B1 + 0x7F4A7C15) % 2**32)


# -- precision ------------------------------------------------------------------------------------

def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """The harness's context for forward passes: bf16 autocast where `bf16` (`state.bf16`), else
    nothing. A plugin's passes outside `loss` (in `setup`, say) compute as the loop's do in
    `with autocast(state.device, state.bf16):`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


class ComputedInFP32:
    """Modules whose forward passes compute in fp32 under autocast while this is `on`: each
    module's `forward` is replaced on the instance by one that turns autocast off, so everything
    the module calls (its submodules, its functions) computes in fp32; autocast resumes outside
    it. `off` puts the modules' own `forward` back; `close` does so for good.

    The harness applies a plugin's `fp32_parts` this way: on from setup, off around every
    evaluation (which computes in the run's own precision), closed after training."""

    def __init__(self, modules: Iterable[torch.nn.Module], device: torch.device) -> None:
        self.device_type = device.type
        # A module's forward as it is now: the class's, or an instance's own that stays.
        self.own = {module: vars(module).get("forward") for module in modules}

    def on(self) -> None:
        for module in self.own:
            if "forward" not in vars(module) or vars(module)["forward"] is self.own[module]:
                module.forward = _without_autocast(module.forward, self.device_type)

    def off(self) -> None:
        for module, own in self.own.items():
            if own is None:
                vars(module).pop("forward", None)
            else:
                module.forward = own

    def close(self) -> None:
        self.off()
        self.own.clear()


def _without_autocast(forward: Callable, device_type: str) -> Callable:
    def in_fp32(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(*args, **kwargs)
    return in_fp32


# -- the model ------------------------------------------------------------------------------------

def logits_head(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                 list[torch.nn.Module]]:
    """What turns the last hidden state into logits, as a function of it, and the modules it
    calls in the order of the main pass: BERT's pooler, dropout and classifier (the pooler being
    the mean of the tokens under the recipe's mean pooling), or the head of RoBERTa and ELECTRA,
    which pools by itself."""
    base, classifier = model.base_model, getattr(model, "classifier", None)
    if getattr(base, "pooler", None) is not None and isinstance(classifier, torch.nn.Linear):
        return (lambda h: classifier(model.dropout(base.pooler(h))),
                [base.pooler, model.dropout, classifier])
    if hasattr(classifier, "out_proj"):
        return classifier, [classifier]
    raise RegbenchError(f"regbench does not know the classification head of "
                        f"{type(model).__name__}: it knows BERT's (a pooler and a linear "
                        "classifier) and RoBERTa's or ELECTRA's (a classifier with `out_proj`).")


@contextmanager
def caught_pooled(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """A list that receives, for each forward pass of `model` in the block, the features its
    classification head reads, one vector per example: the pooler's output in BERT-style models
    (the dense layer on [CLS], or the mean of the real tokens under the recipe's mean pooling,
    which replaces it), the [CLS] hidden state that RoBERTa's and ELECTRA's heads start from.
    It stays empty for a model of another shape."""
    caught: list[torch.Tensor] = []
    pooler, classifier = getattr(model.base_model, "pooler", None), getattr(model, "classifier",
                                                                            None)
    if pooler is not None:
        hook = pooler.register_forward_hook(lambda module, args, out: caught.append(out))
    elif hasattr(classifier, "out_proj"):
        hook = classifier.register_forward_pre_hook(
            lambda module, args: caught.append(args[0][:, 0]))
    else:
        yield caught
        return
    try:
        yield caught
    finally:
        hook.remove()


PARTS = ("model", "embeddings", "layer.K", "head")


def model_parts(model: torch.nn.Module, names: Iterable[str]) -> list[torch.nn.Module]:
    """The modules `names` name, in a BERT-family model: "model" (all of it), "embeddings",
    "layer.K" (encoder layer K, from 0) and "head" (`logits_head`'s modules)."""
    modules: list[torch.nn.Module] = []
    for name in names:
        kind, _, index = name.partition(".")
        if name == "model":
            modules.append(model)
        elif name == "embeddings":
            modules.append(model.base_model.embeddings)
        elif name == "head":
            modules.extend(logits_head(model)[1])
        elif kind == "layer" and index.isdigit() and int(index) < len(encoder_layers(model)):
            modules.append(encoder_layers(model)[int(index)])
        else:
            raise RegbenchError(f"{name!r} names no part of {type(model).__name__}; the parts "
                                f"are {', '.join(PARTS)}, K below the model's depth.")
    return modules


# -- weights --------------------------------------------------------------------------------------

def averaged_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """What a copy of the weights covers: every parameter, and the floating-point buffers
    (a BatchNorm's running statistics). Integer buffers, such as BERT's position ids, are
    constants and stay as they are."""
    return [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]


def snapshot(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of `tensors`, apart from autograd: the starting point of a pull or an average."""
    return [t.detach().clone() for t in tensors]


@torch.no_grad()
def swap(live: list[torch.Tensor], kept: list[torch.Tensor]) -> None:
    """Exchange the values of two lists of tensors in place: exact, and one tensor's worth of
    memory at a time. The live tensors stay the same objects, as the optimiser knows them."""
    for a, b in zip(live, kept, strict=True):
        held = a.clone()
        a.copy_(b)
        b.copy_(held)


def pretrained_and_head(model: torch.nn.Module,
                        state: State) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The trainable parameters the checkpoint held, and those it did not (the new head)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return ([p for n, p in trainable if n not in state.head_parameters],
            [p for n, p in trainable if n in state.head_parameters])


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ‖t‖² over the list: on a GPU, one multi-tensor kernel per dtype, not one per tensor."""
    if not tensors:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(tensors)).square().sum()
