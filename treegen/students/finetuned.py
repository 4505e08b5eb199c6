"""The ``minilm-ft`` student: a fine-tuned transformer; tens of minutes on a CPU.

Multiple choice as the paper does it: ``AutoModelForMultipleChoice`` encodes every
(question, option) pair, a linear layer scores each, and a softmax runs across the options of
the question. Yes/no: two-way ``AutoModelForSequenceClassification`` over (context, question).
Defaults are CPU-sane; a GPU is used when torch sees one. The best epoch on dev is kept.

Unless given, the input length is 256 tokens when examples carry a passage (BoolQ, PubMedQA
and BioASQ passages are cut off at 128) and 128 otherwise, and the number of epochs is chosen
so that a small training set still gets about ``MIN_STEPS`` optimizer steps (2 to 5 epochs).

Seeding is local: the shuffles use ``random.Random(seed)``, and the head's initialisation and
dropout draw from torch's global generator only inside ``torch.random.fork_rng``, so the
caller's random state is the same after ``fit`` as before it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from treegen.errors import StudentError
from treegen.task import Example, TaskFormat
from treegen.students.base import (
    ProgressCallback, argmax_options, check_train, is_yesno, progress_counter, read_meta, write_meta,
)

YESNO_LABELS = ("True", "False")  # class 0 = True, class 1 = False: scores come out in option order


def _setup() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return torch


def default_epochs(steps_per_epoch: int, min_steps: int = 100, bounds: tuple[int, int] = (2, 5)) -> int:
    """Epochs that give about ``min_steps`` optimizer steps, within ``bounds``."""
    lo, hi = bounds
    return max(lo, min(hi, -(-min_steps // max(1, steps_per_epoch))))


@contextlib.contextmanager
def _seeded_torch(torch: Any, seed: int, device: str) -> Iterator[None]:
    """torch's global generators seeded for the block and restored after it (weights init, dropout)."""
    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class FineTunedStudent:
    name: ClassVar[str] = "minilm-ft"
    min_train: ClassVar[int] = 16  # a tenth is held out for model selection when there is no dev set
    options: ClassVar[dict[str, type]] = {
        "model_path": str, "max_length": int, "batch_size": int, "epochs": int, "lr": float,
        "max_train": int, "max_dev": int, "device": str,
    }
    MIN_STEPS = 100
    EPOCHS_RANGE = (2, 5)

    def __init__(
        self,
        model_path: str | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        epochs: int | None = None,
        lr: float = 5e-5,
        max_train: int | None = 2000,
        max_dev: int | None = 500,
        device: str | None = None,
    ):
        self.model_path = model_path
        self.max_length = max_length
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.max_train = max_train
        self.max_dev = max_dev
        self.device = device
        self.fmt: TaskFormat | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    def _device(self) -> str:
        torch = _setup()
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _encode(self, batch: list[Example]) -> dict[str, Any]:
        """Token tensors for a batch: (batch, options, length) for mcqa, (batch, length) for yes/no."""
        assert self.fmt is not None
        if self.fmt.kind == "yesno":
            first = [e.question for e in batch]
            second = [e.context for e in batch] if self.fmt.has_context else None
            enc = self.tokenizer(first, second, truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            return dict(enc)
        k = len(batch[0].options)
        first = [((e.context + " ") if e.context else "") + e.question for e in batch for _ in e.options]
        second = [o for e in batch for o in e.options]
        enc = self.tokenizer(first, second, truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        return {key: val.view(len(batch), k, -1) for key, val in enc.items()}

    def _target(self, batch: list[Example]) -> Any:
        torch = _setup()
        if self.fmt is not None and self.fmt.kind == "yesno":
            return torch.tensor([YESNO_LABELS.index(e.label) for e in batch])
        return torch.tensor([e.label_index for e in batch])

    def _batches(self, examples: list[Example], order: list[int]) -> list[list[int]]:
        # One batch holds examples with the same number of options (a tensor needs one shape).
        by_k: dict[int, list[int]] = {}
        for i in order:
            by_k.setdefault(len(examples[i].options), []).append(i)
        return [idx[s : s + self.batch_size] for idx in by_k.values() for s in range(0, len(idx), self.batch_size)]

    # ------------------------------------------------------------------ interface
    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            on_progress: ProgressCallback | None = None) -> "FineTunedStudent":
        self.fmt = check_train(self.name, self.min_train, train, dev)
        if self.max_length is None:
            self.max_length = 256 if self.fmt.has_context else 128
        torch = _setup()
        from transformers import (AutoModelForMultipleChoice, AutoModelForSequenceClassification,
                                  AutoTokenizer, get_linear_schedule_with_warmup)

        from treegen.embedders import minilm_path

        path = self.model_path or minilm_path()
        device = self._device()
        with _seeded_torch(torch, seed, device):
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                if self.fmt.kind == "yesno":
                    self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
                else:
                    self.model = AutoModelForMultipleChoice.from_pretrained(path)
            except (OSError, ValueError) as exc:
                raise StudentError(f"Cannot load a Hugging Face model from {path} ({exc}). "
                                   "Give --model-path a local model folder (config.json, weights, tokenizer).") from None
            rng = random.Random(seed)
            pool = list(train)
            rng.shuffle(pool)
            n_all = len(pool)
            if self.max_train is not None and len(pool) > self.max_train:
                pool = pool[: self.max_train]
            dev = [e for e in (dev or []) if is_yesno([e]) == (self.fmt.kind == "yesno")]
            dev_note = "dev split"
            if not dev:  # model selection still needs a hold-out: a tenth of the training pool
                cut = max(1, len(pool) // 10)
                dev, pool = pool[:cut], pool[cut:]
                dev_note = f"{cut} held out of train"
            if self.max_dev is not None and len(dev) > self.max_dev:
                dev = random.Random(seed + 1).sample(dev, self.max_dev)
            self.model.to(device)
            opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.01)
            steps_per_epoch = len(self._batches(pool, list(range(len(pool)))))
            if self.epochs is None:
                self.epochs = default_epochs(steps_per_epoch, self.MIN_STEPS, self.EPOCHS_RANGE)
            total = max(1, steps_per_epoch * self.epochs)
            sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
            best_acc, best_state, best_epoch, history = -1.0, None, 0, []
            advance = progress_counter(on_progress, total, f"fine-tuning {self.name}")
            for epoch in range(1, self.epochs + 1):
                self.model.train()
                order = list(range(len(pool)))
                rng.shuffle(order)
                for idx in self._batches(pool, order):
                    batch = [pool[i] for i in idx]
                    inputs = {k: v.to(device) for k, v in self._encode(batch).items()}
                    out = self.model(**inputs, labels=self._target(batch).to(device))
                    out.loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                    advance(1)
                acc = float(np.mean([p == e.label for p, e in zip(self.predict(dev), dev)]))
                history.append(round(acc, 4))
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.info = {
            "n_train_available": n_all, "n_train_used": len(pool), "max_train": self.max_train,
            "dev": dev_note, "n_dev": len(dev), "dev_accuracy_by_epoch": history, "best_epoch": best_epoch,
            "epochs": self.epochs, "max_length": self.max_length, "batch_size": self.batch_size, "lr": self.lr,
            "base_model": str(path), "device": device, "seed": seed,
        }
        return self

    def score(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[list[float]]:
        if self.model is None or self.fmt is None:
            raise StudentError("The minilm-ft student is not trained: call fit() or load a saved one.")
        if examples and is_yesno(examples) != (self.fmt.kind == "yesno"):
            raise StudentError(f"This student was trained on {self.fmt.name} data and cannot score these examples.")
        torch = _setup()
        device = next(self.model.parameters()).device
        self.model.eval()
        out: list[list[float]] = [[] for _ in examples]
        batches = self._batches(examples, list(range(len(examples))))
        advance = progress_counter(on_progress, len(batches), f"scoring with {self.name}")
        with torch.inference_mode():
            for idx in batches:
                inputs = {k: v.to(device) for k, v in self._encode([examples[i] for i in idx]).items()}
                probs = torch.softmax(self.model(**inputs).logits.float(), dim=-1).cpu().numpy()
                for i, p in zip(idx, probs):
                    out[i] = p.tolist()
                advance(1)
        return out

    def predict(self, examples: list[Example], on_progress: ProgressCallback | None = None) -> list[str]:
        return argmax_options(examples, self.score(examples, on_progress))

    def save(self, path: str | Path) -> None:
        if self.model is None or self.fmt is None:
            raise StudentError("Nothing to save: the minilm-ft student is not trained.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        write_meta(path, {"student": self.name, "format": self.fmt.name, "max_length": self.max_length,
                          "batch_size": self.batch_size, "info": self.info})

    @classmethod
    def load(cls, path: str | Path) -> "FineTunedStudent":
        meta = read_meta(path, known=(cls.name,))
        _setup()
        from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, AutoTokenizer

        student = cls(max_length=int(meta.get("max_length", 128)), batch_size=int(meta.get("batch_size", 16)))
        try:
            student.fmt = TaskFormat.parse(meta["format"])
            auto = AutoModelForSequenceClassification if student.fmt.kind == "yesno" else AutoModelForMultipleChoice
            student.tokenizer = AutoTokenizer.from_pretrained(str(path))
            student.model = auto.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to read the folder is a corrupt student
            raise StudentError(f"{path}: the saved model is missing or corrupt ({exc}). Retrain with `treegen train`.") from None
        student.model.to(student._device())
        student.info = meta.get("info", {})
        return student
