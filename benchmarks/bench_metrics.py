"""How close one streaming pass of `CollapseMetrics` gets to its floor, one float64 Gram GEMM.

    python benchmarks/bench_metrics.py                 # N=50,000, d=768, K=100, float32 on CPU
    python benchmarks/bench_metrics.py --device cuda

Rows (median wall time over --repeats runs, after one warm-up):
  floor            z.double() then z64.T @ z64: the float32->float64 cast plus one float64 ZᵀZ
  streaming        CollapseMetrics.update over batches of --batch rows, then compute()
  one batch        CollapseMetrics.update on all N rows at once, then compute()
  naive            loop over classes: per-class float64 covariance, explicit Σ_W/Σ_B,
                   torch.linalg.pinv(Σ_B), CDNV and NC2 by Python loops over pairs
                   (--naive-repeats runs, no warm-up: it is only the yardstick)
Ratios are to the floor; the target for the streaming rows is <= 1.5x.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from skipcollapse.collapse.metrics import CollapseMetrics


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor(z: torch.Tensor) -> torch.Tensor:
    z64 = z.double()
    return z64.T @ z64


def streaming(z: torch.Tensor, y: torch.Tensor, k: int, batch: int) -> dict[str, float]:
    metric = CollapseMetrics(k)
    for start in range(0, len(z), batch):
        metric.update(z[start : start + batch], y[start : start + batch])
    return metric.compute()


def naive(z: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, float]:
    """The textbook implementation: per-class loops, a d×d pseudo-inverse."""
    z = z.double()
    n, d = z.shape
    mu_g = z.mean(dim=0)
    sigma_w = torch.zeros(d, d, dtype=torch.float64, device=z.device)
    means, variances = [], []
    for c in range(k):
        zc = z[y == c]
        mu = zc.mean(dim=0)
        centred = zc - mu
        sigma_w += centred.T @ centred
        means.append(mu)
        variances.append(centred.square().sum(dim=1).mean().item())
    sigma_w /= n
    m = torch.stack(means) - mu_g
    sigma_b = m.T @ m / k
    nc1 = torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)).item() / k
    cdnv = [
        (variances[i] + variances[j]) / (2 * (means[i] - means[j]).square().sum().item())
        for i, j in itertools.permutations(range(k), 2)
    ]
    norms = m.norm(dim=1)
    cosines = torch.stack([m[i] @ m[j] / (norms[i] * norms[j]) for i, j in itertools.combinations(range(k), 2)])
    return {
        "nc1": nc1,
        "cdnv": sum(cdnv) / len(cdnv),
        "nc2_equinorm": (norms.std(correction=0) / norms.mean()).item(),
        "nc2_equiangle": cosines.std(correction=0).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1)
    args = parser.parse_args()

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.k, (args.n,), generator=g)
    centres = 3 * torch.randn(args.k, args.d, generator=g)
    features = (centres[labels] + torch.randn(args.n, args.d, generator=g)).to(device)  # float32
    labels = labels.to(device)

    # The fast paths and the naive one must agree before their times mean anything.
    fast, slow = streaming(features, labels, args.k, args.batch), naive(features, labels, args.k)
    for key, value in slow.items():
        assert abs(fast[key] - value) <= 1e-8 * abs(value), (key, fast[key], value)

    rows = [
        ("floor: cast + float64 ZᵀZ", timed(lambda: floor(features), device, args.repeats)),
        (
            f"streaming, batches of {args.batch}",
            timed(lambda: streaming(features, labels, args.k, args.batch), device, args.repeats),
        ),
        ("one batch", timed(lambda: streaming(features, labels, args.k, args.n), device, args.repeats)),
        ("naive per-class + pinv", timed(lambda: naive(features, labels, args.k), device, args.naive_repeats, 0)),
    ]
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"N={args.n:,} d={args.d} K={args.k} float32 input on {device} (torch {torch.__version__}, "
        f"{threads} threads); median of {args.repeats} after a warm-up, naive: {args.naive_repeats} run(s)"
    )
    print(f"{'what':<34}{'seconds':>10}{'x floor':>10}")
    base = rows[0][1]
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>10.3f}{seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
