"""Training: AdamW, linear warmup + cosine decay, gradient clipping, LM loss plus the MTP heads' losses (and, for
mixture-of-experts models, config.moe_aux_loss_coef times the routers' load-balancing loss; DeepSeek-style choice
biases nudged after each step by TrainArgs.moe_bias_rate), periodic held-out evaluation, resumable safetensors
checkpoints (model + optimizer; no pickle).

A run directory holds `config.json`, `checkpoint/` (model.safetensors, optimizer.safetensors,
trainer_state.json) and, when finished, `model/` (config.json + model.safetensors, ready to load).
Batches depend only on (seed, step), so a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from omnicoder.config import OmniCoderConfig
from omnicoder.data import find_corpus, read_documents, sample_batch, token_stream
from omnicoder.errors import OmniCoderError
from omnicoder.evaluate import bits_per_byte
from omnicoder.fsutil import atomic_directory
from omnicoder.model import OmniCoder
from omnicoder.moe import moe_aux_loss, update_score_bias
from omnicoder.weights import load_state, save_model, state_dict_for_saving


@dataclass
class TrainArgs:
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mtp_weight: float = 0.3
    moe_bias_rate: float = 0.001  # MoE layers with moe_score_bias: bias step per update (aux-loss-free balancing)
    eval_every: int = 250
    eval_bytes: int = 65536
    save_every: int = 250
    max_minutes: float = 0.0
    seed: int = 0
    compile: bool = False
    corpus: str | None = None
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, args: TrainArgs) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_loss(
    model: OmniCoder, batch: torch.Tensor, seq_len: int, mtp_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """LM loss on next tokens plus `mtp_weight` times each MTP head's loss, plus config.moe_aux_loss_coef times the
    MoE layers' mean load-balancing loss (model in training mode); returns (total, lm)."""
    b = batch.shape[0]
    inputs = batch[:, :seq_len]
    out = model(inputs, torch.arange(seq_len).expand(b, seq_len))
    vocab = out.logits.shape[-1]
    lm = F.cross_entropy(out.logits.reshape(-1, vocab), batch[:, 1 : seq_len + 1].reshape(-1))
    total = lm
    if out.mtp_logits is not None:
        for k in range(out.mtp_logits.shape[2]):  # head k predicts token t + 2 + k
            pred = out.mtp_logits[:, : seq_len - 1 - k, k].reshape(-1, vocab)
            target = batch[:, 2 + k : seq_len + 1].reshape(-1)
            total = total + mtp_weight * F.cross_entropy(pred, target)
    aux = moe_aux_loss(model)
    if aux is not None and model.config.moe_aux_loss_coef > 0:
        total = total + model.config.moe_aux_loss_coef * aux
    return total, lm


def _param_groups(model: OmniCoder, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_tensors(model: OmniCoder, opt: torch.optim.AdamW) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, state in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                out[f"{names[id(p)]}::{key}"] = (
                    state[key].detach().reshape(-1) if key == "step" else state[key].contiguous()
                )
    return out


def _load_optimizer(model: OmniCoder, opt: torch.optim.AdamW, tensors: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if f"{name}::exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"{name}::step"].reshape(()).clone(),
                "exp_avg": tensors[f"{name}::exp_avg"].clone(),
                "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].clone(),
            }


def save_checkpoint(run_dir: Path, model: OmniCoder, opt: torch.optim.AdamW, step: int, state: dict) -> None:
    with atomic_directory(run_dir / "checkpoint") as tmp:
        save_file(state_dict_for_saving(model), str(tmp / "model.safetensors"))
        save_file(_optimizer_tensors(model, opt), str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))


def train(config: OmniCoderConfig, run_dir: str | Path, args: TrainArgs, progress: bool = True) -> dict:
    """Train (or resume) into run_dir; returns the final trainer state."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    model = OmniCoder(config)
    model.set_mla_absorbed(False)  # the expanded form is cheaper when every token is a query
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), fused=False)
    state: dict = {"tokens": 0, "seconds": 0.0, "history": [], "args": asdict(args), "config": config.to_dict()}
    step = 0
    if (ckpt / "trainer_state.json").is_file():
        from omnicoder.runtimes.input_files import read_json

        saved = read_json(ckpt / "trainer_state.json", "checkpoint state", f"remove {ckpt} or pass a new --out")
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            raise OmniCoderError(f"{ckpt} holds no readable trainer state; remove it or pass a new --out")
        if saved.get("config") != config.to_dict():
            raise OmniCoderError(f"{run_dir} holds a run of another config; pass a new --out or the same config")
        model.load_state_dict(load_state(ckpt / "model.safetensors"), strict=False)
        _load_optimizer(model, opt, load_file(str(ckpt / "optimizer.safetensors")))
        step = saved["step"]
        state.update({k: saved[k] for k in ("tokens", "seconds", "history")})
        print(f"resuming {run_dir} at step {step}", flush=True)
    config.save(run_dir / "config.json")

    corpus = find_corpus(args.corpus)
    stream = token_stream(read_documents(corpus.train), config.bos_id, config.eos_id)
    heldout = _heldout_sample(read_documents(corpus.heldout), args.eval_bytes)
    window = args.seq_len + 1 + config.n_mtp
    step_fn = torch.compile(training_loss) if args.compile else training_loss

    started = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", disable=not progress)
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        batch = torch.from_numpy(sample_batch(stream, args.batch_size, window, args.seed, step))
        model.train()
        loss, lm = step_fn(model, batch, args.seq_len, args.mtp_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        update_score_bias(model, args.moe_bias_rate)
        opt.zero_grad(set_to_none=True)
        step += 1
        state["tokens"] += args.batch_size * args.seq_len
        elapsed = state["seconds"] + time.time() - started
        bar.set_postfix(
            loss=f"{lm.item():.3f}",
            bpb=f"{lm.item() / math.log(2):.3f}",
            tok_s=f"{state['tokens'] / max(elapsed, 1e-9):.0f}",
        )
        bar.update(1)
        out_of_time = args.max_minutes > 0 and time.time() - started > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            model.eval()
            result = bits_per_byte(model, heldout, window=args.seq_len)
            state["history"].append(
                {
                    "step": step,
                    "tokens": state["tokens"],
                    "train_bpb": lm.item() / math.log(2),
                    "heldout_bpb": result["bits_per_byte"],
                    "seconds": round(elapsed, 1),
                }
            )
            bar.write(f"step {step}: held-out {result['bits_per_byte']:.4f} bits/byte ({result['bytes']} bytes)")
        if step % args.save_every == 0 or step == args.steps or out_of_time:
            save_checkpoint(run_dir, model, opt, step, {**state, "seconds": elapsed})
        if out_of_time:
            bar.write(f"stopping after {args.max_minutes} minutes at step {step}; run again to resume")
            break
    bar.close()
    state["seconds"] += time.time() - started
    state["step"] = step
    if step >= args.steps:
        model.set_mla_absorbed(True)
        save_model(model.eval(), run_dir / "model")
    return state


def _heldout_sample(docs: list[bytes], max_bytes: int) -> list[bytes]:
    """A fixed sample of held-out documents (whole files, in order) of about max_bytes."""
    out, total = [], 0
    for doc in docs:
        if total >= max_bytes:
            break
        out.append(doc[: max_bytes - total])
        total += len(out[-1])
    return out
