"""The one training loop. :func:`fit` makes any method ready to save, every stage of it; each stage is run
by :func:`train_stage`, for which the method supplies ``make_batch`` and ``loss`` and the loop owns the
optimizers, progress bar, checkpoints, resume, the NaN guard and the cost record.

A run interrupted at any point and continued with ``resume=True`` reaches the same weights as an
uninterrupted run with the same seed: checkpoints hold the method's tensors, every optimizer's
state, the random generator's state and the step.
"""

import contextlib
import math
import os
import re
import resource
import shutil
import time

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._io import atomic_dir
from ..errors import TrainingDiverged, VeilError
from ..methods.base import Stage
from .hardware import HALF_DTYPES, autocast_for, cast_frozen, check_mixed_precision, gradient_checkpointing, latent_size, set_attention

_CHECKPOINT = re.compile(r"^step-(\d+)$")


def peak_memory_mb(device):
    """Peak memory of this run: CUDA's allocator peak on a GPU, else the process's peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latest_checkpoint(work_dir):
    folder = os.path.join(work_dir, "checkpoints")
    if not os.path.isdir(folder):
        return None
    steps = [int(m.group(1)) for m in map(_CHECKPOINT.match, os.listdir(folder)) if m]
    return os.path.join(folder, f"step-{max(steps):06d}") if steps else None


def _save_checkpoint(work_dir, step, method, optimizers, generator, losses, seconds, keep=2):
    folder = os.path.join(work_dir, "checkpoints")
    path = os.path.join(folder, f"step-{step:06d}")
    with atomic_dir(path, overwrite=True) as tmp:
        # Checkpoints hold everything needed to resume, a KPOP key included (sealed when the method has a
        # passphrase; the work folder is removed once every output is written); the artifact holds only ``state_dict()``.
        states, private = _optimizer_states(method, optimizers)
        save_file(_checkpoint_tensors(method, private), os.path.join(tmp, "method.safetensors"))
        torch.save(
            {
                "step": step,
                "config": method.config.to_dict(),
                "optimizers": states,
                "generator": generator.get_state(),
                "losses": losses,
                "seconds": seconds,
            },
            os.path.join(tmp, "state.pt"),
        )
    old = sorted(m.group(0) for m in map(_CHECKPOINT.match, os.listdir(folder)) if m)[:-keep]
    for name in old:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return path


def _checkpoint_tensors(method, private=None):
    return {k: v.detach().to("cpu").contiguous() for k, v in method.checkpoint_state_dict(private).items()}


def _optimizer_params(optimizer):
    """The parameters in the order of the optimizer's ``state_dict()`` indices."""
    if isinstance(optimizer, _StepInBackward):
        return optimizer.params
    return [p for group in optimizer.param_groups for p in group["params"]]


def _optimizer_states(method, optimizers):
    """Every optimizer's ``state_dict()``, less the state of the method's secret parameters (Adam's moments of a
    KPOP key), which come back apart as ``{"<phase>.<index>.<name>": tensor}`` for the method to keep with its secrets."""
    secret = {id(p) for p in method.secret_parameters()}
    states, private = {}, {}
    for phase, optimizer in optimizers.items():
        state = optimizer.state_dict()
        for index, param in enumerate(_optimizer_params(optimizer)):
            if id(param) in secret and index in state["state"]:
                for name, value in state["state"].pop(index).items():
                    private[f"{phase}.{index}.{name}"] = torch.as_tensor(value).detach().cpu()
        states[phase] = state
    return states, private


def _restore_private_states(states, private):
    """Put the secret parameters' optimizer state (``_optimizer_states``' second part) back into ``states``."""
    for name, value in private.items():
        phase, index, field = name.split(".", 2)
        states[phase]["state"].setdefault(int(index), {})[field] = value


def _load_checkpoint(path, method):
    try:
        state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        tensors = load_file(os.path.join(path, "method.safetensors"))
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
        raise VeilError(f"The checkpoint {path!r} is unreadable ({error}); delete it to resume from the one before.") from None
    if state["config"] != method.config.to_dict():
        raise VeilError(
            f"The checkpoint {path!r} was made with other settings; resume with the same options, or start afresh without --resume."
        )
    _restore_private_states(state["optimizers"], method.load_checkpoint(tensors, f"the checkpoint {path!r}"))
    return state


class _StepInBackward:
    """An optimizer over ``param_groups`` that steps each parameter the moment its gradient is complete in the
    backward pass, then frees that gradient: a training step never holds the gradients of all trained weights at
    once (3.3 GB for ESD-u on SD 1.5). Adam(W) on one parameter is the same arithmetic as on all at once, and
    :meth:`state_dict` is the usual one, so checkpoints read the same either way.

    It steps only between :meth:`zero_grad` and :meth:`step` (its phase's backward pass); gradients that reach
    its parameters in another phase's pass wait, as in any optimizer, for its ``zero_grad``.
    """

    def __init__(self, optimizer_class, param_groups):
        self.groups = [{k: v for k, v in group.items() if k != "params"} for group in param_groups]
        self.owner = [g for g, group in enumerate(param_groups) for _ in group["params"]]
        self.params = [p for group in param_groups for p in group["params"]]
        self.optimizers = [optimizer_class([{"params": [p], **self.groups[g]}]) for p, g in zip(self.params, self.owner)]
        self.active = False
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)]

    def _hook(self, index):
        def step(param):
            if self.active:
                self.optimizers[index].step()
                param.grad = None

        return step

    def zero_grad(self, set_to_none=True):
        for param in self.params:
            param.grad = None
        self.active = True

    def step(self):
        self.active = False

    def state_dict(self):
        parts = [optimizer.state_dict() for optimizer in self.optimizers]
        state = {i: part["state"][0] for i, part in enumerate(parts) if 0 in part["state"]}
        groups = [{**parts[self.owner.index(g)]["param_groups"][0], "params": [i for i, o in enumerate(self.owner) if o == g]}
                  for g in range(len(self.groups))]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        options = [{k: v for k, v in group.items() if k != "params"} for group in state_dict["param_groups"]]
        for i, optimizer in enumerate(self.optimizers):
            state = {0: state_dict["state"][i]} if i in state_dict["state"] else {}
            optimizer.load_state_dict({"state": state, "param_groups": [{**options[self.owner[i]], "params": [0]}]})

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _freeze(pipe):
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)


def train_stage(
    method,
    pipe,
    stage=None,
    *,
    work_dir=None,
    checkpoint_every=50,
    resume=False,
    mixed_precision=None,
    max_grad_norm=None,
    progress=True,
    stop_after=None,
    restore_frozen=True,
):
    """Train one stage of ``method`` on ``pipe`` for the stage's steps; :func:`fit` runs every stage.

    Args:
        method: a registered method of kind ``"trained"``; attached to ``pipe`` here.
        stage: a :class:`~veil.methods.base.Stage` of ``method.stages()`` or its name; ``None``: the first.
        work_dir: where checkpoints go (``work_dir/checkpoints/step-N``); ``None`` for none.
        checkpoint_every: steps between checkpoints.
        resume: continue from the latest checkpoint in ``work_dir``.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (CUDA only); ``None``: the config's ``mixed_precision``
            (``"no"`` where it has none). The frozen weights are cast to that dtype and left so; the trained ones stay
            in float32 (:mod:`veil.training.hardware`). The config's ``gradient_checkpointing`` and ``attention``
            apply for the run.
        max_grad_norm: clip gradients to this norm when set.
        stop_after: stop after this many steps of the stage in total (an interruption).
        restore_frozen: after a mixed-precision run, put the frozen weights back as loaded (a copy is kept meanwhile);
            ``False`` leaves them in the half dtype and keeps no copy, for a caller that drops the pipeline (on a CPU,
            the only way the half dtype lowers the memory a run holds).

    Returns:
        `dict`: the cost record ``{"steps", "seconds", "peak_mem_mb", "device", "losses"}``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; the last good checkpoint is kept.
    """
    if not isinstance(stage, Stage):
        stages = method.stages()
        named = [s for s in stages if s.name == stage]
        if stage is not None and not named:
            raise VeilError(f"{method.name} has no stage {stage!r}; its stages are {', '.join(s.name for s in stages)}.")
        stage = named[0] if named else stages[0]
    method.set_stage(stage.name)
    config = method.config
    if mixed_precision is None:
        mixed_precision = getattr(config, "mixed_precision", "no")
    check_mixed_precision(mixed_precision, pipe.device)
    latent_size(pipe, getattr(config, "resolution", None))  # refuse a resolution this UNet cannot take before any step
    # Autocast and, for fp16, the gradient scaler, as accelerate sets them up for one device.
    autocast = autocast_for(pipe.device, mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if mixed_precision == "fp16" else None
    _freeze(pipe)
    if getattr(config, "attention", None):
        set_attention(pipe.unet, config.attention)  # before attach: a method may install processors of its own
    method.attach(pipe)
    generator = torch.Generator("cpu").manual_seed(int(config.seed))
    step, losses, seconds_before = 0, [], 0.0
    state = None
    if resume:
        if work_dir is None:
            raise VeilError("Resuming needs the work directory of the interrupted run.")
        path = latest_checkpoint(work_dir)
        if path is None:
            raise VeilError(f"There is no checkpoint in {work_dir!r} to resume from; run without --resume.")
        state = _load_checkpoint(path, method)
        step, losses, seconds_before = state["step"], list(state["losses"]), float(state["seconds"])
        generator.set_state(state["generator"])
    settings = contextlib.ExitStack()  # what the run sets up and puts back when it ends
    groups = method.optimizer_groups()
    optimizer_class = method.optimizer_class
    optimizers = {}
    for phase, param_groups in groups.items():
        for group in param_groups:
            for param in group["params"]:
                param.requires_grad_(True)
    if mixed_precision != "no":
        # The method's own weights stay in float32 even in a stage that does not train them (KPOP's key_finish).
        trained = [p for g in groups.values() for group in g for p in group["params"]] + list(method.trainable_parameters())
        restore = cast_frozen(pipe, method, trained, HALF_DTYPES[mixed_precision], keep=restore_frozen)
        settings.callback(restore)  # restored when the run ends (unless restore_frozen is False)
    # fp16 needs the gradient scaler between backward and step, and clipping needs every gradient at once.
    in_backward = not max_grad_norm and mixed_precision != "fp16"
    for phase, param_groups in groups.items():
        if in_backward:
            optimizers[phase] = _StepInBackward(optimizer_class, param_groups)
        else:
            optimizers[phase] = optimizer_class(param_groups)
    if state is not None:
        for phase, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][phase])

    total = int(stage.steps)
    end = total if stop_after is None else min(total, int(stop_after))
    last_checkpoint = latest_checkpoint(work_dir) if work_dir else None
    start_time = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"{method.name} {', '.join(config.concepts)}", disable=not progress, dynamic_ncols=True)
    try:
        settings.enter_context(gradient_checkpointing(pipe.unet, bool(getattr(config, "gradient_checkpointing", False))))
        while step < end:
            with autocast():  # the trajectory and the teacher's passes too: most of a step's compute
                batch = method.make_batch(pipe, generator)
            step_losses = {}
            for phase, optimizer in optimizers.items():
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = method.loss(pipe, batch, phase)
                value = float(loss.detach())
                if not math.isfinite(value):
                    if last_checkpoint:
                        advice = f"the last good checkpoint is {last_checkpoint!r} — lower the learning rate and start again (or --resume from it)"
                    else:
                        advice = "no checkpoint was written yet — lower the learning rate and start again"
                    raise TrainingDiverged(f"The {phase} loss became {value} at step {step + 1}; {advice}.")
                (scaler.scale(loss) if scaler else loss).backward()
                if max_grad_norm:
                    params = [p for g in groups[phase] for p in g["params"]]
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                method.after_step(phase)
                step_losses[phase] = value
            step += 1
            losses.append(step_losses)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in step_losses.items()})
            if work_dir and checkpoint_every and step % checkpoint_every == 0 and step < total:
                seconds = seconds_before + time.perf_counter() - start_time
                last_checkpoint = _save_checkpoint(work_dir, step, method, optimizers, generator, losses, seconds)
    finally:
        bar.close()
        settings.close()
        for param_groups in groups.values():
            for group in param_groups:
                for param in group["params"]:
                    param.requires_grad_(False)
                    param.grad = None  # the last step's gradients: as large as the trained weights
        for optimizer in optimizers.values():
            getattr(optimizer, "close", lambda: None)()
        optimizers.clear()
    return {
        "steps": step,
        "seconds": round(seconds_before + time.perf_counter() - start_time, 3),
        "peak_mem_mb": round(peak_memory_mb(pipe.device), 1),
        "device": str(pipe.device),
        "losses": losses,
    }


def fit(method, pipe, *, work_dir=None, resume=False, progress=True, stop_after=None, **train_kwargs):
    """Make ``method`` ready to save, whatever its kind: every training stage in turn through :func:`train_stage`,
    ``fit()`` for closed-form methods, nothing for inference-time ones.

    Args:
        work_dir: where checkpoints go; a method with several stages gets one folder per stage, and each finished
            stage leaves ``<stage>/done.safetensors`` (with its checkpoint tensors) for ``resume``.
        resume: continue from the latest checkpoint (or finished stage) in ``work_dir``.
        stop_after: stop after this many training steps over all stages (an interruption).
        **train_kwargs: ``checkpoint_every``, ``mixed_precision``, ``max_grad_norm``, ``restore_frozen`` of
            :func:`train_stage`.

    Returns:
        `dict`: the cost record ``{"steps", "seconds", "peak_mem_mb", "device"}``, with ``"losses"`` for trained
        methods, ``"stages"`` (each stage's steps and seconds) for methods of several stages and ``fit()``'s own
        fields for closed-form ones.
    """
    if torch.device(pipe.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)  # this run's peak, not the process's
    if method.kind == "closed_form":
        start = time.perf_counter()
        extra = method.fit(pipe) or {}
        method.attach(pipe)
        return {"steps": 0, "seconds": round(time.perf_counter() - start, 3),
                "peak_mem_mb": round(peak_memory_mb(pipe.device), 1), "device": str(pipe.device), **extra}
    if method.kind != "trained":
        method.attach(pipe)
        return {"steps": 0, "seconds": 0.0, "peak_mem_mb": round(peak_memory_mb(pipe.device), 1), "device": str(pipe.device)}
    stages = method.stages()
    total = {"steps": 0, "seconds": 0.0, "losses": [], "stages": {}}
    done = 0  # steps of the stages before this one
    for stage in stages:
        stage_dir = work_dir if (work_dir is None or len(stages) == 1) else os.path.join(work_dir, stage.name)
        stage_resume = resume and stage_dir is not None and latest_checkpoint(stage_dir) is not None
        if resume and not stage_resume and stage_dir is not None and os.path.isfile(os.path.join(stage_dir, "done.safetensors")):
            method.set_stage(stage.name)
            method.load_state_dict(load_file(os.path.join(stage_dir, "done.safetensors")))
            done += stage.steps
            continue  # this stage finished before the interruption
        left = None if stop_after is None else max(0, int(stop_after) - done)
        cost = train_stage(method, pipe, stage, work_dir=stage_dir, resume=stage_resume, progress=progress,
                           stop_after=left, **train_kwargs)
        finished = cost["steps"] >= stage.steps
        if finished and stage_dir is not None and len(stages) > 1:
            os.makedirs(stage_dir, exist_ok=True)
            # Like a checkpoint, everything the next stage starts from (a KPOP key too); the work folder goes with the artifact.
            save_file(_checkpoint_tensors(method), os.path.join(stage_dir, "done.safetensors"))
        total["steps"] += cost["steps"]
        total["seconds"] += cost["seconds"]
        total["losses"] += cost["losses"]
        total["stages"][stage.name] = {"steps": cost["steps"], "seconds": cost["seconds"]}
        total["peak_mem_mb"], total["device"] = max(total.get("peak_mem_mb", 0.0), cost["peak_mem_mb"]), cost["device"]
        done += stage.steps
        if not finished:
            break  # interrupted (stop_after)
    if len(stages) == 1:
        total.pop("stages")
    total["seconds"] = round(total["seconds"], 3)
    return total
