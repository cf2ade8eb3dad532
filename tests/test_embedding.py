"""Stage 2: the ported EfficientNet-Lite0 weights are right, descriptors are unit length and
separate copies from other images, and torch stays out of ``import detector``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import skimage.data
from PIL import Image

from detector.stage2.embedding import EMBEDDING_DIM, from_blobs, to_blob

from .conftest import textured


def test_chelsea_is_classified_as_a_cat(models):
    probs = models.embedder.classify(skimage.data.chelsea())
    assert probs.shape == (1000,)
    assert int(np.argmax(probs)) in range(281, 286)  # ImageNet's domestic cats
    assert probs[281:286].sum() > 0.8


def test_coffee_is_classified_as_espresso(models):
    assert int(np.argmax(models.embedder.classify(skimage.data.coffee()))) == 967


def test_descriptors_are_unit_length_and_batch_independent(models):
    images = [textured(s, (224, 224)) for s in range(5)] + [skimage.data.astronaut()]
    one_by_one = np.stack([models.embed([im])[0] for im in images])
    together = models.embed(images)
    assert together.shape == (6, EMBEDDING_DIM) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one_by_one, together, atol=1e-4)


def test_copies_are_closer_than_other_images(models):
    cat = skimage.data.chelsea()
    small = np.asarray(Image.fromarray(cat).resize((150, 100), Image.Resampling.BILINEAR))
    vecs = models.embed([cat, small, skimage.data.coffee(), skimage.data.rocket()])
    sims = vecs @ vecs[0]
    assert sims[1] > 0.85
    assert max(sims[2], sims[3]) < 0.6


def test_float16_blob_round_trip(models):
    vec = models.embed([skimage.data.astronaut()])[0]
    blob = to_blob(vec)
    assert len(blob) == 2 * EMBEDDING_DIM
    back = from_blobs([blob, blob])
    assert back.shape == (2, EMBEDDING_DIM)
    assert float(back[0] @ vec) > 0.9999


def test_importing_detector_does_not_import_torch():
    code = (
        "import sys, detector, detector.scan.scanner, detector.tasks.cataloging, detector.tasks.dedupe,"
        " cli.main;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_model_loads_once_per_models_holder(settings, monkeypatch):
    from detector.stage2 import embedding
    from detector.stage2.embedding import Models

    built = []
    real = embedding.Embedder

    def counting(s):
        built.append(s)
        return real(s)

    holder = Models(settings, factory=counting)
    for seed in range(3):
        holder.embed([textured(seed)])
    assert len(built) == 1


def test_the_cnn_runs_on_the_threads_it_is_given_and_gives_them_back(models, settings):
    """A scan beside busy intake workers runs the CNN on fewer threads (``Models.threads``);
    the descriptors are the same, and the process's thread count is as it was after."""
    import torch

    from detector.stage2.embedding import Models

    seen: list[int] = []

    class Watching:
        def __init__(self, s):
            self.inner = models.embedder

        def embed(self, images):
            seen.append(torch.get_num_threads())
            return self.inner.embed(images)

    images = [textured(s, (224, 224)) for s in range(3)]
    before = torch.get_num_threads()
    holder = Models(settings, factory=Watching)
    assert np.array_equal(holder.embed(images), models.embed(images))  # threads as they are
    holder.threads = 1
    one = holder.embed(images)
    holder.threads = 2
    two = holder.embed(images)
    assert seen == [before, 1, 2] and torch.get_num_threads() == before
    assert np.allclose(one, two, atol=1e-5)


def test_bfloat16_descriptors_stay_close_to_float32(models, settings):
    from detector.stage2.embedding import Embedder, native_bf16

    assert models.embedder.bf16 == native_bf16()  # on by default where the CPU has it
    fp32 = Embedder(settings.replace(cnn_bf16=False))
    assert fp32.bf16 is False
    images = [textured(s, (224, 224)) for s in range(4)]
    images += [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    bf16 = Embedder(settings.replace(cnn_bf16=True))
    cosines = (bf16.embed(images) * fp32.embed(images)).sum(axis=1)
    assert cosines.min() >= 0.98 and cosines.mean() >= 0.995, cosines


def test_folding_batch_norm_keeps_the_networks_outputs():
    import torch

    from detector.stage2.embedding import weights_path
    from detector.stage2.network import EfficientNetLite0

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    plain = EfficientNetLite0()
    plain.load_state_dict(state, strict=True)
    folded = EfficientNetLite0()
    folded.load_state_dict(state, strict=True)
    folded = folded.eval().folded()
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    images = [textured(s, (224, 224)) for s in range(3)] + [skimage.data.chelsea()[:224, :224]]
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        want, got = plain.eval().features(x), folded.features(x)
        logits_want, logits_got = plain(x), folded(x)
    assert want.abs().max() > 1  # the feature map is not trivially small
    assert torch.allclose(want, got, atol=1e-4)
    assert torch.allclose(logits_want, logits_got, atol=1e-4)
    assert folded.folded() is folded  # folding twice changes nothing
    with torch.inference_mode():
        assert torch.allclose(folded.features(x), got, atol=0)
