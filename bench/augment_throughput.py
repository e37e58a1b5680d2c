"""Batched on-device augmentation versus torchvision's per-image PIL pipeline (images/s).

Both apply the quick profile's augmentation to CIFAR-10 images: random resized crop (scale
0.2-1) back to 32 px, horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8,
grayscale with probability 0.2, then conversion to a normalised float tensor.

* ``odc_mini.augment.augment`` takes a whole uint8 batch on the training device;
* the torchvision pipeline (``transforms.Compose``) takes one PIL image at a time, as a
  DataLoader worker does (here in the main process: per worker, throughput scales with workers).

    python bench/augment_throughput.py          # batch 512, CPU (and the GPU when there is one)
    python bench/augment_throughput.py --tiny   # seconds; for the test suite

Goal: batched / PIL >= 20x.
"""
from __future__ import annotations

import argparse

import torch
from PIL import Image
from torchvision import transforms

from common import bench_data, compare, print_table, verdict

from odc_mini.augment import CIFAR_MEAN, CIFAR_STD, AugmentConfig, augment


def pil_pipeline() -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


def run(batch: int, repeats: int, devices: list[torch.device]) -> dict:
    images, source = bench_data(max(batch, 1000))
    x = images.images[:batch]                                         # (B, 3, 32, 32) uint8
    pil = [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()]
    pipeline = pil_pipeline()
    cfg = AugmentConfig(saturation=0.4, hue=0.1, jitter_p=0.8)
    torch.manual_seed(0)

    fns = {"torchvision PIL, per image": lambda: torch.stack([pipeline(im) for im in pil])}
    for device in devices:
        xd = x.to(device)
        gen = torch.Generator(device=device).manual_seed(0)
        order_gen = torch.Generator().manual_seed(0)
        fns[f"odc_mini batched, {device.type}"] = (
            lambda xd=xd, gen=gen, order_gen=order_gen: augment(xd, cfg, gen, order_gen))
    times = {}
    for name, fn in fns.items():   # each device synchronised separately
        dev = "cuda" if name.endswith("cuda") else None
        times.update(compare({name: fn}, repeats=repeats, warmup=1, device=dev))
    base = times["torchvision PIL, per image"]
    return dict(batch=batch, data=source,
                rows={name: dict(img_s=batch / t, ratio=base / t) for name, t in times.items()})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="a few seconds, for tests")
    a = p.parse_args(argv)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    batch, repeats = (64, 2) if a.tiny else (a.batch, a.repeats)
    r = run(batch, repeats, devices)
    print_table(f"Augmentation throughput (batch {batch} {r['data']} images; median of {repeats}; "
                f"{torch.get_num_threads()} CPU threads)",
                ["pipeline", "images/s", "speed-up over PIL"],
                [[name, f"{row['img_s']:,.0f}",
                  f"{row['ratio']:.1f}x" + ("" if "PIL" in name else f"  ({verdict(row['ratio'], 20, True)})")]
                 for name, row in r["rows"].items()])
    return r


if __name__ == "__main__":
    main()
