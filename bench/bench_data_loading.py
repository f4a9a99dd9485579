"""Images per second of the three loaders, PIL + torchvision v2 (baseline), torchvision.io and DALI, in the same run.

pytest-benchmark mode (bench/conftest.py prints the speedup over the PIL baseline)::

    pytest bench/bench_data_loading.py --benchmark-only

Script mode, prints images/s and the ratio::

    python bench/bench_data_loading.py [--images 16] [--threads 2]

Workload: ``IMAGES`` synthetic quality-90 JPEGs of 500 x 375 (a typical Flickr30K size) written to a temporary
folder, one (image, sentence) pair each, resized to 600 / 1000 (the paper's setting), Caffe BGR normalisation,
M = 50 proposals, batches of 8. The PIL path runs in-process (``num_workers=0``) so both use the same cores;
DALI decodes on the CPU (``device_id=None``) with ``THREADS`` threads. Everything except decode + resize +
normalise is the same code (``GroundingDataset.build_item``), so the ratio isolates the image pipeline. The
``torchvision`` loader (``data.loader: torchvision``) decodes with ``torchvision.io`` and resizes + normalises
in :func:`relground.data.device_decode.finish_images`, here on the CPU (on a GPU: nvJPEG and the GPU).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # script mode: import the checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relground.config.data import DataConfig
from relground.data.dataset import GroundingDataset, build_dataloader, collate_grounding
from relground.data.proposals import ProposalSet, ProposalStore, write_proposals
from relground.structures.records import ImageAnnotation, PhraseAnnotation, SentenceAnnotation
from relground.language.vocab import PHRASE_SPECIALS, Vocabulary, tokenize
from tests.data.conftest import DETECTOR_CLASSES, write_smooth_jpeg

IMAGES, WIDTH, HEIGHT, BATCH, THREADS = 16, 500, 375, 8, 2


def zero_prior(phrase_words):
    return np.zeros((len(phrase_words), len(DETECTOR_CLASSES)), dtype=np.float32)


def make_workload(folder: Path, count: int = IMAGES) -> dict:
    """JPEGs, one-sentence records and a proposals file; returns the dataset arguments."""
    rng = np.random.default_rng(0)
    records, sets = [], {}
    for i in range(count):
        image_id = f"bench{i:04d}"
        path = folder / f"{image_id}.jpg"
        write_smooth_jpeg(path, WIDTH, HEIGHT, seed=i)
        text = "a man in a red shirt"
        phrase = PhraseAnnotation(0, "a man", str(i), ("people",), (10.0, 20.0, 200.0, 300.0))
        records.append(ImageAnnotation(image_id, WIDTH, HEIGHT, [SentenceAnnotation(0, text, text.split(" "), [phrase])],
                                       {str(i): [phrase.union_box]}, str(path)))
        xy = rng.uniform(0, [WIDTH / 2, HEIGHT / 2], size=(50, 2))
        sets[image_id] = ProposalSet(np.hstack([xy, xy + 50]), rng.random(50), rng.integers(0, len(DETECTOR_CLASSES), 50),
                                     WIDTH, HEIGHT)
    proposals = ProposalStore(write_proposals(folder / "proposals.h5", sets, DETECTOR_CLASSES))
    tokens = [tokenize(r.sentences[0].text) for r in records]
    return dict(images=records, proposals=proposals, caption_vocab=Vocabulary.build(tokens),
                phrase_vocab=Vocabulary.build(tokens, specials=PHRASE_SPECIALS), category_prior=zero_prior)


def pil_epoch(dataset: GroundingDataset) -> int:
    for start in range(0, len(dataset), BATCH):
        collate_grounding([dataset[i] for i in range(start, min(start + BATCH, len(dataset)))])
    return len(dataset)


def torchvision_loader(workload: dict):
    """The ``torchvision`` loader, in-process like the PIL baseline, decoding and finishing on the CPU."""
    cfg = DataConfig(loader="torchvision", batch_size=BATCH, num_workers=0)
    return build_dataloader(cfg, GroundingDataset(**workload, raw_images="decoded"), train=False)


def loader_epoch(loader) -> int:
    return sum(batch.batch_size for batch in loader)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return make_workload(tmp_path_factory.mktemp("bench_data"))


def test_pil(benchmark, workload):
    dataset = GroundingDataset(**workload)
    benchmark.group = "data-loading-cpu"
    benchmark.extra_info["baseline"] = True
    assert benchmark.pedantic(pil_epoch, args=(dataset,), rounds=3, warmup_rounds=1) == IMAGES


def test_torchvision_cpu(benchmark, workload):
    benchmark.group = "data-loading-cpu"
    assert benchmark.pedantic(loader_epoch, args=(torchvision_loader(workload),), rounds=3, warmup_rounds=1) == IMAGES


def test_dali_cpu(benchmark, workload):
    pytest.importorskip("nvidia.dali")
    from relground.data.dali import DaliGroundingLoader

    loader = DaliGroundingLoader(GroundingDataset(**workload, load_images=False), BATCH, num_threads=THREADS)
    benchmark.group = "data-loading-cpu"
    assert benchmark.pedantic(loader_epoch, args=(loader,), rounds=3, warmup_rounds=1) == IMAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from relground.data.dali import DaliGroundingLoader

    with tempfile.TemporaryDirectory() as tmp:
        workload = make_workload(Path(tmp), args.images)
        runs = {
            "pil": (pil_epoch, GroundingDataset(**workload)),
            "torchvision-cpu": (loader_epoch, torchvision_loader(workload)),
            "dali-cpu": (loader_epoch, DaliGroundingLoader(GroundingDataset(**workload, load_images=False), BATCH,
                                                          num_threads=args.threads)),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for epoch, source in runs.values():
            epoch(source)  # warm-up
        for _ in range(args.rounds):  # rounds interleaved: a load change on a shared machine hits every loader
            for name, (epoch, source) in runs.items():
                start = time.perf_counter()
                n = epoch(source)
                times[name].append(time.perf_counter() - start)
        rates = {}
        for name in runs:
            rates[name] = n / float(np.median(times[name]))
            print(f"{name:<15} {rates[name]:8.1f} images/s (median of {args.rounds} interleaved rounds)")
        for name in ("torchvision-cpu", "dali-cpu"):
            print(f"{name} / pil = {rates[name] / rates['pil']:.2f}x")


if __name__ == "__main__":
    main()
