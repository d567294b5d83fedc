"""Byte-level text data with nothing to download: by default the Python
standard library's own source files (found through `sysconfig`), or any text
files the user names. Tokens are bytes (vocabulary 256).

The split is by file and deterministic: a file goes to validation when the
CRC32 of its path relative to its root is 0 mod 10 (about 10% of files), so
that no validation text was seen in training, whatever the machine.
"""
from __future__ import annotations

import functools
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

DEFAULT_MAX_BYTES = 16 * 2**20


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def _as_tensor(data: bytearray) -> torch.Tensor:
    return torch.frombuffer(data, dtype=torch.uint8).clone() if data else torch.empty(0, dtype=torch.uint8)


@dataclass
class PackedBatch:
    """Whole documents back to back in one row: inputs and next-token targets
    (1, total), and the documents' boundaries in FlashAttention's varlen
    convention (int32 cu_seqlens, the longest length)."""
    inputs: torch.Tensor
    targets: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.inputs.to(device), self.targets.to(device), self.cu_seqlens.to(device),
                           self.max_seqlen)


@dataclass
class ByteCorpus:
    train: torch.Tensor  # uint8
    val: torch.Tensor
    source: str
    train_files: Optional[torch.Tensor] = None  # int64 (files + 1,): where each training file starts, then the end

    @staticmethod
    def load(files: Optional[Sequence[str]] = None, max_bytes: int = DEFAULT_MAX_BYTES) -> "ByteCorpus":
        """The corpus from `files` (default: the standard library's .py files),
        at most `max_bytes` in all, files taken in sorted order."""
        if files:
            paths = [Path(f) for f in files]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"data files not found: {missing}")
            source, root = f"{len(paths)} user file(s)", None
        else:
            paths = stdlib_files()
            if not paths:
                raise FileNotFoundError(f"no .py files under {sysconfig.get_paths()['stdlib']}")
            root = Path(sysconfig.get_paths()["stdlib"])
            source = f"Python {sysconfig.get_python_version()} standard library at {root}"
        train, val, total, train_starts = bytearray(), bytearray(), 0, []
        for path in paths:
            data = path.read_bytes()[: max_bytes - total]
            name = str(path.relative_to(root)) if root else path.name
            if zlib.crc32(name.encode()) % 10 == 0:
                val.extend(data)
            else:
                train_starts.append(len(train))
                train.extend(data)
            total += len(data)
            if total >= max_bytes:
                break
        if not val:  # one user file, or all hashed to train: hold out its last 10%
            cut = len(train) * 9 // 10
            train, val = train[:cut], train[cut:]
            train_starts = [s for s in train_starts if s < cut]
        files = torch.tensor(train_starts + [len(train)], dtype=torch.int64)
        return ByteCorpus(_as_tensor(train), _as_tensor(val), source, files)

    @functools.cached_property
    def checksums(self) -> dict:
        """CRC-32 of each split's bytes: what tells two corpora apart where
        describe()'s rounded sizes agree."""
        return {"train": zlib.crc32(self.train.numpy().tobytes()), "validation": zlib.crc32(self.val.numpy().tobytes())}

    def describe(self) -> str:
        return f"{self.source}: {len(self.train) / 2**20:.1f} MiB train, {len(self.val) / 2**20:.2f} MiB validation"

    def batch(self, split: str, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Random windows of length + 1 tokens (inputs and next-token targets)."""
        data = self.train if split == "train" else self.val
        if len(data) <= length + 1:
            raise ValueError(f"the {split} split has {len(data)} bytes, fewer than one window of {length + 1}")
        starts = torch.randint(0, len(data) - length - 1, (batch_size,), generator=generator)
        return torch.stack([data[s: s + length + 1] for s in starts.tolist()]).long()

    def packed_batch(self, budget: int, max_document: int, generator: torch.Generator) -> PackedBatch:
        """`budget` input tokens of whole training files in random order, each
        at most max_document tokens long (a longer file is cut to a random
        window of that length; the last one to what is left of the budget), with
        their next-token targets. Documents never see each other."""
        if self.train_files is None or len(self.train_files) < 2:
            raise ValueError("this corpus has no file boundaries to pack (load it with ByteCorpus.load)")
        inputs, targets, lengths = [], [], []
        order = torch.randperm(len(self.train_files) - 1, generator=generator).tolist()
        while sum(lengths) < budget:
            before = len(lengths)
            for f in order:
                start, end = self.train_files[f].item(), self.train_files[f + 1].item()
                room = min(max_document, budget - sum(lengths))
                if end - start < 2 or room < 1:
                    continue
                length = min(end - start - 1, room)  # inputs; targets are shifted by one
                offset = torch.randint(0, end - start - length, (1,), generator=generator).item()
                window = self.train[start + offset: start + offset + length + 1].long()
                inputs.append(window[:-1])
                targets.append(window[1:])
                lengths.append(length)
            if len(lengths) == before:
                raise ValueError("no training file has the two bytes a document needs (an input and a target)")
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        return PackedBatch(torch.cat(inputs)[None], torch.cat(targets)[None], cu, max(lengths))

    def eval_windows(self, length: int, count: int) -> torch.Tensor:
        """`count` fixed, evenly spaced validation windows of length + 1 tokens."""
        if len(self.val) <= length + 1:
            raise ValueError(f"validation has {len(self.val)} bytes, fewer than one window of {length + 1}")
        starts = torch.linspace(0, len(self.val) - length - 2, count).long()
        return torch.stack([self.val[s: s + length + 1] for s in starts.tolist()]).long()
