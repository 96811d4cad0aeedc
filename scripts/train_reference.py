"""Train the tiny reference model that ships in ``vidcache/assets/tiny`` (``--model tiny``).

Why: feature caches work because a *trained* video DiT changes its features slowly between
denoising steps; random weights do not, so vidcache ships a small Wan model that was really trained
on the procedural world of ``vidcache.reference`` (coloured shapes moving over a dark background).

What: a Wan 2.x architecture end to end, assembled as a diffusers ``WanPipeline``:
  1. ``AutoencoderKLWan`` (Wan 2.2-style 2x2 patchify, 8x spatial / 4x temporal, 8 latent
     channels) trained for reconstruction (MSE + L1 + a small KL) on short 64 px clips, then
     briefly at 128 px;
  2. the clip set encoded once into normalised latents (per-channel mean/std go into the VAE
     config, exactly where ``WanPipeline`` reads them back when decoding);
  3. ``WanTransformer3DModel`` + a small ``UMT5EncoderModel`` (word-level tokenizer of
     ``vidcache.tiny``) trained together with rectified flow in diffusers' FlowMatchEuler
     convention: x_t = (1 - s) x0 + s eps, target eps - x0, timestep = 1000 s, with s drawn through
     the same shift the scheduler uses; 10 % of prompts are replaced by "" so that CFG works; EMA
     weights are saved.

The shipped model is two runs of this script: default flags (stage 1), then ``--init-from`` that
output for 8,899 more transformer steps (stage 2). With ``--threads 2`` on the idle 2-core CPU the
two take 27 + 31 = 58 minutes, measured end to end; the exact commands and the measured numbers are
in ``docs/reference_model.md``. ``--device cuda`` trains on a GPU. ``--tiny-test`` trains a toy
config for a few steps in seconds (the test suite uses it). Same seed, flags and thread count give
the same weights on the CPU, byte for byte (step-count budgets; ``--minutes`` budgets trade that for
a wall-clock limit; another thread count sums in another order, and the runs diverge).

    python scripts/train_reference.py --threads 2 --out stage1
    python scripts/train_reference.py --threads 2 --init-from stage1 --seed 1 --steps 8899 --lr 1e-3 \\
        --out vidcache/assets/tiny --eval 3
    python scripts/train_reference.py --tiny-test --out /tmp/tiny-ref
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidcache import reference as R  # noqa: E402
from vidcache.tiny import t5_tokenizer  # noqa: E402

CONFIGS: dict[str, dict] = {
    "full": {
        "frames": R.DEFAULTS["frames"],
        "height": R.DEFAULTS["height"],
        "width": R.DEFAULTS["width"],
        "text_len": R.DEFAULTS["text_len"],
        "flow_shift": R.DEFAULTS["flow_shift"],
        "vae": {
            "base_dim": 8,
            "decoder_base_dim": 16,
            "z_dim": 8,
            "dim_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [True, True],
            "in_channels": 12,
            "out_channels": 12,
            "patch_size": 2,
        },
        "transformer": {
            "num_attention_heads": 2,
            "attention_head_dim": 32,
            "ffn_dim": 128,
            "num_layers": 4,
            "freq_dim": 64,
        },
        "text": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4},
        # VAE phases: (steps, batch, frames, rendered size, crop) -- cheap 32 px crops first
        # (convolutions are local), then whole 64 px clips long enough to exercise the causal
        # cache over several chunks, then a few full-size clips
        "vae_phases": [(2400, 8, 9, 64, 32), (300, 2, 17, 64, 64), (20, 1, 25, 128, 128)],
        "vae_lr": 3e-3,
        "n_clips": 1536,
        "dit_steps": 4000,
        "short_frac": 0.5,  # share of steps on the first 4 latent frames (a 13-frame clip)
        "dit_batch": 16,
        "dit_lr": 1.5e-3,
        "warmup": 100,
        "ema": 0.998,
    },
    "tiny-test": {
        "frames": 9,
        "height": 32,
        "width": 32,
        "text_len": 16,
        "flow_shift": 2.0,
        "vae": {
            "base_dim": 4,
            "decoder_base_dim": 4,
            "z_dim": 4,
            "dim_mult": [1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [True, True],
            "in_channels": 12,
            "out_channels": 12,
            "patch_size": 2,
        },
        "transformer": {
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "ffn_dim": 32,
            "num_layers": 1,
            "freq_dim": 16,
        },
        "text": {"d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2},
        "vae_phases": [(2, 2, 5, 32, 16), (1, 1, 9, 32, 32)],
        "short_frac": 0.5,
        "vae_lr": 1e-3,
        "n_clips": 4,
        "dit_steps": 3,
        "dit_batch": 2,
        "dit_lr": 1e-3,
        "warmup": 1,
        "ema": 0.9,
    },
}

TEXT_DROPOUT = 0.1
KL_WEIGHT = 1e-3  # enough to keep the decoder robust to latent noise (what the DiT will make)
FG_WEIGHT = 4.0


class Log:
    """Prints and appends to a log file, with the wall time since start."""

    def __init__(self, path: Path | None):
        self.t0 = time.time()
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")


def build_components(cfg: dict, seed: int):
    """Fresh (untrained) tokenizer, text encoder, VAE and transformer for a config."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    t = cfg["text"]
    te = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=t["d_model"],
            d_kv=t["d_kv"],
            d_ff=t["d_ff"],
            num_layers=t["num_layers"],
            num_heads=t["num_heads"],
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
        )
    )
    z = cfg["vae"]["z_dim"]
    vae = AutoencoderKLWan(**cfg["vae"], latents_mean=[0.0] * z, latents_std=[1.0] * z)
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        in_channels=z,
        out_channels=z,
        text_dim=t["d_model"],
        rope_max_seq_len=64,
        **cfg["transformer"],
    )
    return tok, te, vae, tr


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan._decode`` (same causal frame-by-frame cache) minus its final clamp.

    The clamp to [-1, 1] zeroes the gradient of every pixel that overshoots, which stalls training
    near the dark background (about -0.9); the pipeline keeps clamping at inference.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        outs.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                        first_chunk=i == 0)
        )
    out = torch.cat(outs, 2)
    if vae.config.patch_size is not None:
        out = unpatchify(out, patch_size=vae.config.patch_size)
    vae.clear_cache()
    return out


def train_vae(vae, cfg: dict, gen: torch.Generator, log: Log, minutes: float | None,
              device: torch.device) -> None:
    """Reconstruction training through the pipeline's own causal chunked encode/decode path.

    ``minutes`` (if given) replaces the step count of the first, cheap phase.
    """
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
    phases = cfg["vae_phases"]
    total = sum(p[0] for p in phases)
    done = 0
    vae.train()
    for k, (steps, bs, frames, size, crop) in enumerate(phases):
        name = f"{size}px/{crop}crop/{frames}f"
        mins = minutes if k == 0 else None
        t0, step, run = time.time(), 0, 0.0
        while step < steps:
            if mins is not None and step == 10:
                steps = steps_for(mins, t0, step)
                total = sum(p[0] for p in phases[1:]) + steps
                log(f"vae: {steps} first-phase steps fit {mins} min "
                    f"(reproduce with --vae-steps {steps})")
            for g in opt.param_groups:
                g["lr"] = lr_at(done, total, cfg["vae_lr"], cfg["warmup"])
            x = R.make_batch(bs, frames=frames, height=size, width=size, generator=gen).video
            if crop < size:
                oy, ox = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
                x = x[..., oy : oy + crop, ox : ox + crop]
            x = x.to(device) * 2 - 1
            post = vae.encode(x).latent_dist
            y = decode_unclamped(vae, post.sample(generator=gen))
            kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
            # the object is a few % of the pixels but all of the meaning: weigh it up
            obj = (x - x.amin(dim=(2, 3, 4), keepdim=True)).amax(1, keepdim=True) > 0.1
            weight = 1.0 + FG_WEIGHT * obj.float()
            err = y - x
            rec = (weight * (err.pow(2) + 0.5 * err.abs())).mean() / weight.mean()
            loss = rec + KL_WEIGHT * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            mse = err.detach().pow(2).mean().item()
            run = mse if step == 0 else 0.95 * run + 0.05 * mse
            if step % 50 == 0 or step == steps - 1:
                log(f"vae[{name}] step {step} mse {mse:.5f} (avg {run:.5f}) "
                    f"weighted {rec.item():.4f} kl {kl.item():.2f}")
            step += 1
            done += 1
    vae.eval()


@torch.no_grad()
def encode_dataset(vae, cfg: dict, gen: torch.Generator, log: Log, device: torch.device):
    """Render ``n_clips`` training clips and encode them; returns (mode latents, prompts)."""
    n, bs = cfg["n_clips"], 16 if device.type == "cpu" else 64
    lat, prompts = [], []
    for i in range(0, n, bs):
        b = R.make_batch(min(bs, n - i), frames=cfg["frames"], height=cfg["height"],
                         width=cfg["width"], generator=gen)
        lat.append(vae.encode(b.video.to(device) * 2 - 1).latent_dist.mode())
        prompts += b.prompts
        if (i // bs) % 40 == 0 or i + bs >= n:
            log(f"encoded {i + len(b.prompts)}/{n} clips")
    return torch.cat(lat), prompts


def tokenize(tok, prompts: list[str], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask exactly as ``WanPipeline._get_t5_prompt_embeds`` makes them."""
    enc = tok(
        prompts,
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return enc.input_ids, enc.attention_mask


def embed(te, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Text states as the pipeline feeds them to the transformer: zeros past each prompt's end."""
    h = te(ids, mask).last_hidden_state
    return h * mask[..., None].to(h.dtype)


def sample_sigma(n: int, shift: float, gen: torch.Generator) -> torch.Tensor:
    """Logit-normal draws (most weight mid-way, as in SD3) pushed through the scheduler's shift."""
    u = torch.sigmoid(torch.randn(n, generator=gen))
    return shift * u / (1 + (shift - 1) * u)


def noise_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise drawn from the seeded CPU generator, placed where ``x`` lives: the same draws
    on any device."""
    return torch.randn(x.shape, generator=gen).to(x.device, x.dtype)


def steps_for(minutes: float, started: float, done: int) -> int:
    """Fix a step count from the pace so far, so that a time budget still gives a seeded run."""
    pace = (time.time() - started) / max(done, 1)
    return max(done + 1, int(minutes * 60 / pace))


def train_dit(tr, te, tok, latents, prompts, cfg, gen, log, minutes: float | None):
    """Rectified-flow training of transformer + text encoder; returns their EMA copies.

    Most steps see only the first 4 latent frames: with a causal VAE those are exactly the latents
    of the clip's first 13 frames, so this is a shorter clip, not a crop, at half the cost.
    With ``minutes``, the step count is fixed after 10 steps from the pace (and logged), so
    ``--steps N`` reproduces the run.
    """
    device = latents.device
    vocab = sorted(set(prompts)) + [""]
    index = {p: i for i, p in enumerate(vocab)}
    ids, mask = (x.to(device) for x in tokenize(tok, vocab, cfg["text_len"]))
    pidx = torch.tensor([index[p] for p in prompts])
    empty = index[""]
    params = list(tr.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["dit_lr"], weight_decay=0.01, betas=(0.9, 0.99))
    ema_tr, ema_te = copy.deepcopy(tr).eval(), copy.deepcopy(te).eval()
    for m in (ema_tr, ema_te):
        m.requires_grad_(False)
    tr.train()
    te.train()
    n, bs, steps = latents.shape[0], cfg["dit_batch"], cfg["dit_steps"]
    short = min(4, latents.shape[2])
    t0, step, run = time.time(), 0, 0.0
    while step < steps:
        if minutes is not None and step == 10:
            steps = steps_for(minutes, t0, step)
            log(f"dit: {steps} steps fit {minutes} min (reproduce with --steps {steps})")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, cfg["dit_lr"], cfg["warmup"])
        sel = torch.randint(n, (bs,), generator=gen)
        x0 = latents[sel.to(device)]
        if float(torch.rand(1, generator=gen)) < cfg["short_frac"]:
            x0 = x0[:, :, :short]
        p = pidx[sel].clone()
        p[torch.rand(bs, generator=gen) < TEXT_DROPOUT] = empty
        uniq, inv = torch.unique(p, return_inverse=True)
        text = embed(te, ids[uniq.to(device)], mask[uniq.to(device)])[inv.to(device)]
        eps = noise_like(x0, gen)
        sigma = sample_sigma(bs, cfg["flow_shift"], gen).to(device)
        s = sigma.view(bs, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        pred = tr(xt, sigma * 1000, text, return_dict=False)[0]
        loss = F.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((tr, ema_tr), (te, ema_te)):
                torch._foreach_lerp_(list(dst.parameters()), list(src.parameters()), 1 - decay)
        if step % 25 == 0 or step == steps - 1:  # the one host read (a device sync) every 25 steps
            value = loss.item()
            run = value if step == 0 else 0.6 * run + 0.4 * value
            lr = opt.param_groups[0]["lr"]
            log(f"dit step {step} loss {value:.4f} (avg {run:.4f}) lr {lr:.2e} "
                f"frames {x0.shape[2]}")
        step += 1
    return ema_tr, ema_te


def assemble(tok, te, vae, tr, cfg: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from diffusers.configuration_utils import FrozenDict

    for m in (te, vae, tr):
        m.eval()
    for m in (vae, tr):  # loaded with --init-from / --load-vae: no local path in the shipped config
        m._internal_dict = FrozenDict({k: v for k, v in m.config.items() if k != "_name_or_path"})
    return WanPipeline(
        tokenizer=tok,
        text_encoder=te,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg["flow_shift"]),
        transformer=tr,
    )


@torch.no_grad()
def attention_share(tr, cfg: dict, repeats: int = 5) -> float:
    """Share of one transformer forward (default size) spent in attention kernels (SDPA).

    Self CPU time of the ``scaled_dot_product`` / flash-attention ops over the self time of every op
    under the profiler; the profiler's per-op overhead falls mostly on the many small non-attention
    ops, so this errs low.
    """
    from torch.profiler import ProfilerActivity, profile

    z = tr.config.in_channels
    lat_t = (cfg["frames"] - 1) // 4 + 1
    x = torch.randn(1, z, lat_t, cfg["height"] // 8, cfg["width"] // 8)
    text = torch.randn(1, cfg["text_len"], tr.config.text_dim)
    t = torch.tensor([500.0])
    for _ in range(2):
        tr(x, t, text)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            tr(x, t, text)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    att = sum(e.self_cpu_time_total for e in events
              if "scaled_dot_product" in e.key or "flash_attention" in e.key)
    return att / total


def evaluate(folder: Path, cfg: dict, repeats: int, log: Log, seed: int = 1234) -> dict:
    """Adherence of the saved pipeline, loaded back through diffusers, at the default settings."""
    from diffusers import WanPipeline

    from vidcache.metrics import adherence, adherence_accuracy

    pipe = WanPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    samples = []
    prompts = R.prompt_set("train", 1)
    rng = random.Random(seed)
    rng.shuffle(prompts)
    prompts = prompts[: max(repeats, 1) * 8] + R.prompt_set("held_out", repeats)
    t0 = time.time()
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            frames = pipe(
                prompt,
                negative_prompt=R.DEFAULTS["negative_prompt"],
                height=cfg["height"],
                width=cfg["width"],
                num_frames=cfg["frames"],
                num_inference_steps=R.DEFAULTS["steps"],
                guidance_scale=R.DEFAULTS["guidance"],
                max_sequence_length=cfg["text_len"],
                generator=torch.Generator().manual_seed(seed + i),
                output_type="np",
            ).frames[0]
        samples.append((frames, prompt))
        log(f"eval {prompt!r}: {adherence(frames, prompt)}")
    acc = adherence_accuracy(samples)
    acc["seconds_per_clip"] = (time.time() - t0) / len(prompts)
    log(f"adherence: {json.dumps(acc)}")
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("vidcache/assets/tiny"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core free)")
    ap.add_argument("--tiny-test", action="store_true", help="toy config, a few steps, seconds")
    ap.add_argument("--vae-steps", type=int, help="override the first VAE phase's step count")
    ap.add_argument("--steps", type=int, help="override the transformer step count")
    ap.add_argument("--clips", type=int, help="override the number of encoded training clips")
    ap.add_argument("--vae-minutes", type=float,
                    help="wall-clock budget for the first VAE phase instead")
    ap.add_argument("--minutes", type=float, help="wall-clock budget for the transformer instead")
    ap.add_argument("--eval", type=int, default=0, metavar="N",
                    help="after saving, score adherence on 8N train prompts and N per held-out "
                    "combo")
    ap.add_argument("--log", type=Path, help="log file (default: <out>.train.log)")
    ap.add_argument("--load-vae", type=Path,
                    help="reuse the VAE of a saved pipeline (skip its training)")
    ap.add_argument("--init-from", type=Path,
                    help="continue from a saved pipeline: its VAE (and latent statistics), text "
                    "encoder and transformer; a second stage on top of an earlier run")
    ap.add_argument("--lr", type=float, help="override the transformer learning rate")
    ap.add_argument("--device", default="cpu", help="train on this torch device (cpu, cuda)")
    ap.add_argument("--batch", type=int, help="override the transformer batch size")
    ap.add_argument("--short-frac", type=float,
                    help="override the share of transformer steps on 13-frame clips")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = dict(CONFIGS["tiny-test" if args.tiny_test else "full"])
    overrides = {"dit_steps": args.steps, "n_clips": args.clips, "dit_batch": args.batch,
                 "short_frac": args.short_frac, "dit_lr": args.lr}
    for key, val in overrides.items():
        if val is not None:
            cfg[key] = val
    if args.vae_steps is not None:
        cfg["vae_phases"] = [(args.vae_steps, *cfg["vae_phases"][0][1:]), *cfg["vae_phases"][1:]]
    log = Log(args.log if args.log else args.out.with_name(args.out.name + ".train.log"))
    log(f"config: {json.dumps(cfg)}")
    random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tok, te, vae, tr = build_components(cfg, args.seed)
    parts = (("text", te), ("vae", vae), ("dit", tr))
    sizes = {k: sum(p.numel() for p in m.parameters()) for k, m in parts}
    log(f"parameters: {sizes}")
    device = torch.device(args.device)
    t_start = time.time()

    if args.init_from:
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        args.load_vae = args.load_vae or args.init_from
        te = UMT5EncoderModel.from_pretrained(str(args.init_from), subfolder="text_encoder")
        tr = WanTransformer3DModel.from_pretrained(str(args.init_from), subfolder="transformer")
        log(f"continuing from the text encoder and transformer of {args.init_from}")
    if args.load_vae:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(str(args.load_vae), subfolder="vae").eval()
        log(f"loaded VAE from {args.load_vae}")
        vae.to(device)
    else:
        train_vae(vae.to(device), cfg, gen, log, args.vae_minutes, device)
    t_vae = time.time()

    latents, prompts = encode_dataset(vae, cfg, gen, log, device)
    z = cfg["vae"]["z_dim"]
    if args.init_from:  # the transformer learned on latents normalised by these: keep them
        mean = torch.tensor(vae.config.latents_mean, device=latents.device)
        std = torch.tensor(vae.config.latents_std, device=latents.device)
    else:
        mean = latents.mean(dim=(0, 2, 3, 4))
        std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    latents = (latents - mean.view(1, z, 1, 1, 1)) / std.view(1, z, 1, 1, 1)
    log(f"latents {tuple(latents.shape)} mean {[round(v, 3) for v in mean.tolist()]} "
        f"std {[round(v, 3) for v in std.tolist()]}")
    t_enc = time.time()

    ema_tr, ema_te = train_dit(tr.to(device), te.to(device), tok, latents, prompts, cfg, gen, log,
                               args.minutes)
    t_dit = time.time()
    ema_tr, ema_te, vae = ema_tr.cpu(), ema_te.cpu(), vae.cpu()  # saved and measured on the CPU

    pipe = assemble(tok, ema_te, vae, ema_tr, cfg)
    if args.out.exists():
        shutil.rmtree(args.out)
    pipe.save_pretrained(str(args.out), safe_serialization=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(
        f"saved {args.out} ({size / 1e6:.2f} MB); wall: vae {t_vae - t_start:.0f}s, "
        f"encode {t_enc - t_vae:.0f}s, dit {t_dit - t_enc:.0f}s, total {time.time() - t_start:.0f}s"
    )
    log(f"attention share of a transformer forward: {attention_share(ema_tr, cfg):.1%}")
    if args.eval:
        evaluate(args.out, cfg, args.eval, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
