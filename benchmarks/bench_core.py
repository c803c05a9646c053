"""Throughput and peak memory of the AEPO hot path: token entropy, window entropy, HWE.

    python benchmarks/bench_core.py                       # 8 x 4096 tokens, vocab 151,936 (Qwen2.5)
    python benchmarks/bench_core.py --batch 2 --seq 1024  # a quicker look

Prints numbers and asserts nothing. On the CPU, peak memory is the growth of the process's resident
set over the measured call (sampled every 2 ms); on CUDA it is torch's peak allocation.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import torch

from ares_lit.core import hwe_mask, hwe_threshold, hwe_window_mask, token_entropy, window_entropy


class PeakMemory:
    """Peak extra memory over a block: CUDA allocator peak, or sampled RSS growth on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        proc = psutil.Process()
        self.base = proc.memory_info().rss
        self.peak_rss = self.base
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak_rss, psutil.Process().memory_info().rss) - self.base


def timed(fn, device, repeats):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--naive-tokens", type=int, default=512, help="tokens for the unchunked fp32 comparison")
    args = ap.parse_args()
    device = torch.device(args.device)
    mib = 2**20
    tokens = args.batch * args.seq

    logits = torch.empty(args.batch, args.seq, args.vocab, dtype=torch.bfloat16, device=device).normal_(0, 3)
    input_mib = logits.numel() * logits.element_size() / mib
    print(f"device={device} threads={torch.get_num_threads()} logits=[{args.batch}, {args.seq}, {args.vocab}] bf16 ({input_mib:,.0f} MiB)")

    with PeakMemory(device) as mem:
        ent, sec = timed(lambda: token_entropy(logits), device, args.repeats)
    print(f"token_entropy (chunked, fp32 accumulation): {tokens / sec:,.0f} tok/s  {sec * 1e3:,.1f} ms  peak extra {mem.peak / mib:,.1f} MiB ({100 * mem.peak / mib / input_mib:.1f}% of input)")

    naive = logits.reshape(-1, args.vocab)[: args.naive_tokens]

    def unchunked():
        z = naive.float()
        p = torch.softmax(z, dim=-1)
        return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)

    with PeakMemory(device) as mem_naive:
        _, sec_naive = timed(unchunked, device, args.repeats)
    per_tok = mem_naive.peak / args.naive_tokens
    print(f"unchunked fp32 reference on {args.naive_tokens} tokens: {args.naive_tokens / sec_naive:,.0f} tok/s  peak extra {mem_naive.peak / mib:,.1f} MiB -> ~{per_tok * tokens / mib:,.0f} MiB for the full batch")
    del logits

    lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch,), device=device)
    mask = torch.arange(args.seq, device=device)[None, :] < lengths[:, None]
    (win, valid), sec_w = timed(lambda: window_entropy(ent, mask, args.window), device, max(args.repeats, 5))
    print(f"window_entropy (w={args.window}): {tokens / sec_w:,.0f} tok/s  {sec_w * 1e3:,.2f} ms")

    def hwe():
        tau = hwe_threshold(win, valid, 0.95)
        m = hwe_mask(win, valid, tau)
        return hwe_window_mask(m, args.window, mask), tau

    (windows, tau), sec_h = timed(hwe, device, max(args.repeats, 5))
    print(f"hwe threshold + mask + windows: {tokens / sec_h:,.0f} tok/s  {sec_h * 1e3:,.2f} ms  (tau={float(tau):.3f}, {int(windows.sum())} window tokens)")


if __name__ == "__main__":
    main()
