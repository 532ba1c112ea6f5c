#!/usr/bin/env python3
"""PyTorch CPU reference for bench/cpu_ops_bench and bench/model_bench (same shapes, same threads).

Benchmark-only: needs torch (Debian `apt-get install python3-torch`, or `pip install torch`),
which is never a dependency of the server. Prints wall times (median of repeats):
  * MatMul x[n,k] fp32 · W[m,k]^T at Llama-3-8B layer shapes for n = 1 and 512, with
    - "bf16":      W stored bf16 and x cast to bf16 (torch's native bf16 matmul),
    - "bf16->f32": W stored bf16, widened to fp32 on every call (what mplus computes),
    - "fp32":      W stored fp32 (twice the memory; torch's fp32 BLAS);
  * the decode step and a 128-token prefill (no retrieval) of model_bench's mid-size M+ config
    (L 4, d 2048, 16/4 heads of 128, I 5632, V 32000, decoder LoRA rank 16), written with plain
    torch ops, with bf16 weights computing in bf16, and with fp32 weights computing in fp32;
  * long-term retrieval of one layer at mplus-8b scale as the official get_ltm computes it
    (sigmoid of queries x keys^T, mean over the queries, topk of 2560), 150,000 keys of 256,
    keys float32 and bfloat16 (as retrieval_bench; 512 queries with --full);
  * next-token sampling over Llama 3's 128,256 logits as transformers' logits processors do it
    (repetition penalty, temperature, top-k, top-p, then softmax and multinomial), with the
    options of bench/sampler_bench.
Usage: python3 -u bench/torch_reference.py [--threads 2] [--full]
Without --full only n = 1 and the decode step run: Debian's torch 1.13 is built with a generic
(unoptimised) BLAS, where one 512-row layer MatMul takes ~10 s, so the full tables take long.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_table(repeats, full):
    shapes = [(4096, 4096, "q/o_proj"), (1024, 4096, "k/v_proj"), (14336, 4096, "gate/up_proj"),
              (4096, 14336, "down_proj")]
    print("| n | m x k | weights | ms | GFLOP/s |")
    print("|---|---|---|---|---|")
    for n in (1, 512) if full else (1,):
        for m, k, name in shapes:
            x = torch.randn(n, k) * 0.02
            w32 = torch.randn(m, k) * 0.02
            w16 = w32.bfloat16()
            xb = x.bfloat16()
            variants = [("bf16", lambda: torch.matmul(xb, w16.t())),
                        ("bf16->f32", lambda: torch.matmul(x, w16.float().t())),
                        ("fp32", lambda: torch.matmul(x, w32.t()))]
            for label, fn in variants:
                s = timed(fn, repeats if n == 1 else 1)
                print(f"| {n} | {m} x {k} ({name}) | {label} | {s * 1e3:.2f} | "
                      f"{2 * n * m * k / s * 1e-9:.1f} |")


class MidModel:
    """model_bench's M+ decoder (generation side) with random weights."""

    L, D, H, HKV, HD, I, V, R = 4, 2048, 16, 4, 128, 5632, 32000, 16
    PREFIX = 1 + 64 * 10  # bos + K_ltm 128 + N 512

    def __init__(self, dtype):
        g = torch.Generator().manual_seed(0)

        def w(*shape):
            return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

        self.dtype = dtype
        self.embed = w(self.V, self.D)
        self.lm_head = w(self.V, self.D)
        self.norm = torch.ones(self.D, dtype=dtype)
        self.layers = []
        for _ in range(self.L):
            lay = {"in_norm": torch.ones(self.D, dtype=dtype),
                   "post_norm": torch.ones(self.D, dtype=dtype),
                   "q": w(self.H * self.HD, self.D), "k": w(self.HKV * self.HD, self.D),
                   "v": w(self.HKV * self.HD, self.D), "o": w(self.D, self.H * self.HD),
                   "gate": w(self.I, self.D), "up": w(self.I, self.D), "down": w(self.D, self.I)}
            for name in ("q", "k", "v", "gate", "up", "down"):
                out_f, in_f = lay[name].shape
                lay[name + "_A"] = w(self.R, in_f)
                lay[name + "_B"] = w(out_f, self.R)
            self.layers.append(lay)
        inv = 1.0 / (500000.0 ** (torch.arange(0, self.HD, 2).float() / self.HD))
        self.inv_freq = inv

    def proj(self, lay, name, x):
        y = F.linear(x, lay[name])
        return y + 2.0 * F.linear(F.linear(x, lay[name + "_A"]), lay[name + "_B"])

    @staticmethod
    def rms(x, weight):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
        return weight * xf.to(weight.dtype)

    def rope(self, x, pos):
        ang = pos.float()[:, None] * self.inv_freq[None, :]
        cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)[:, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)[:, None, :]
        x1, x2 = x[..., : self.HD // 2], x[..., self.HD // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def new_cache(self, capacity):
        return [(torch.zeros(capacity, self.HKV, self.HD, dtype=self.dtype),
                 torch.zeros(capacity, self.HKV, self.HD, dtype=self.dtype))
                for _ in range(self.L)]

    def forward(self, ids, cache, start):
        n = ids.shape[0]
        pos = torch.arange(start, start + n)
        h = F.embedding(ids, self.embed)
        total = start + n
        mask = torch.ones(n, total, dtype=torch.bool).tril(diagonal=start)
        for lay, (kc, vc) in zip(self.layers, cache):
            x = self.rms(h, lay["in_norm"])
            q = self.rope(self.proj(lay, "q", x).view(n, self.H, self.HD), pos)
            kc[start:total] = self.rope(self.proj(lay, "k", x).view(n, self.HKV, self.HD), pos)
            vc[start:total] = self.proj(lay, "v", x).view(n, self.HKV, self.HD)
            k = kc[:total].repeat_interleave(self.H // self.HKV, 1).transpose(0, 1)
            v = vc[:total].repeat_interleave(self.H // self.HKV, 1).transpose(0, 1)
            a = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask) \
                if hasattr(F, "scaled_dot_product_attention") else \
                torch.softmax((q.transpose(0, 1) @ k.transpose(1, 2)) / self.HD ** 0.5
                              + torch.where(mask, 0.0, float("-inf")).to(q.dtype), -1) @ v
            h = h + F.linear(a.transpose(0, 1).reshape(n, self.H * self.HD), lay["o"])
            x = self.rms(h, lay["post_norm"])
            h = h + self.proj(lay, "down",
                              F.silu(self.proj(lay, "gate", x)) * self.proj(lay, "up", x))
        return F.linear(self.rms(h[-1:], self.norm), self.lm_head).float()


def model_table(repeats, full):
    print("| weights / compute | prefill 128 tokens after 641-row prefix (ms) | decode step (ms) "
          "| decode tokens/s |")
    print("|---|---|---|---|")
    for dtype, label in ((torch.bfloat16, "bf16 / bf16"), (torch.float32, "fp32 / fp32")):
        m = MidModel(dtype)
        prompt = torch.randint(3, 31000, (128,))
        with torch.inference_mode():
            cache = m.new_cache(m.PREFIX + 128 + 64)
            for kc, vc in cache:  # the prefix rows' keys/values (their values don't matter)
                kc.normal_()
                vc.normal_()
            prefill = timed(lambda: m.forward(prompt, cache, m.PREFIX), 2) if full else None
            tok = torch.tensor([5])
            decode = timed(lambda: m.forward(tok, cache, m.PREFIX + 128), repeats * 3)
        pf = f"{prefill * 1e3:.1f}" if prefill is not None else "(--full)"
        print(f"| {label} | {pf} | {decode * 1e3:.1f} | {1 / decode:.2f} |")


def sample(scores, history, temperature, top_p, top_k, penalty):
    """One draw the way transformers' processors compute it, written with plain torch ops."""
    if penalty != 1.0 and history.numel():
        picked = scores.gather(0, history)
        scores = scores.scatter(0, history, torch.where(picked < 0, picked * penalty,
                                                        picked / penalty))
    if temperature == 0:
        return int(scores.argmax())
    scores = scores / temperature
    if top_k > 0:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores)  # ascending, as transformers sorts
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - top_p
        drop[-1] = False  # at least one token
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1))


def retrieval_table(repeats, full):
    print("| keys | queries | scores (ms) | scores + topk 2560 (ms) |")
    print("|---|---|---|---|")
    gen = torch.Generator().manual_seed(7)
    keys32 = torch.randn(150000, 256, generator=gen) * 0.0625
    for dtype, label in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        keys = keys32.to(dtype)
        for nq in (64, 512) if full else (64,):
            q = (torch.randn(nq, 256, generator=gen) * 0.0625).to(dtype)
            scores = lambda: torch.sigmoid(q @ keys.t()).mean(0)
            select = lambda: torch.topk(scores(), 2560).indices.sort().values
            print(f"| {label} | {nq} | {timed(scores, repeats) * 1e3:.1f} | "
                  f"{timed(select, repeats) * 1e3:.1f} |")


def sampling_table(repeats):
    print("| temperature / top_p / top_k / repetition penalty, history | ms per token |")
    print("|---|---|")
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(128256, generator=gen) * 2.5
    for t, p, k, rep, hist in ((0, 1.0, 0, 1.0, 0), (0.7, 0.9, 0, 1.0, 0), (1.0, 1.0, 50, 1.0, 0),
                               (1.0, 1.0, 0, 1.0, 0), (0.7, 0.9, 0, 1.1, 2048)):
        history = torch.arange(hist, dtype=torch.int64) * 37 % 128256
        s = timed(lambda: sample(logits, history, t, p, k, rep), repeats * 20)
        print(f"| {t} / {p} / {k} / {rep}, {hist} | {s * 1e3:.3f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, 'cpu') else ''}")
    matmul_table(repeats, args.full)
    print()
    model_table(repeats, args.full)
    print()
    retrieval_table(repeats, args.full)
    print()
    sampling_table(repeats)


if __name__ == "__main__":
    main()
