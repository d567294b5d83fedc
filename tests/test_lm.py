"""The language model, its data and the extrapolation experiment, on the tiny
preset (CPU, seconds)."""
import json

import pytest
import torch

from fibsparse_ext.lm.data import ByteCorpus
from fibsparse_ext.lm.experiments import extrapolate
from fibsparse_ext.lm.models import FibSparseLM, LMConfig


@pytest.fixture(scope="module")
def corpus():
    return ByteCorpus.load(max_bytes=2 * 2**20)


def train_steps(model, corpus, steps, lr=3e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        tokens = corpus.batch("train", 8, model.config.seq_len, torch.Generator().manual_seed(step))
        loss = model.loss(tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_corpus_is_the_standard_library_split_by_file(corpus):
    assert len(corpus.train) > 10 * len(corpus.val) / 2 > 0
    again = ByteCorpus.load(max_bytes=2 * 2**20)
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.val, again.val)  # deterministic
    assert b"def " in bytes(corpus.train[:200000].tolist())


@pytest.mark.parametrize("variant", ["stagger", "pow2-coprime", "learned", "dense"])
def test_tiny_model_learns(corpus, variant):
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", **LMConfig.parse_variant(variant)))
    losses = train_steps(model, corpus, 40)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses


def test_learned_alphas_change_during_training(corpus):
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="learned"))
    before = model.alphas()
    train_steps(model, corpus, 10, lr=1e-2)
    after = model.alphas()
    assert len(before) == model.config.num_layers
    assert all(a != b for a, b in zip(before, after)), (before, after)


def test_evaluation_at_4x_uses_only_offsets_from_construction(corpus):
    """At 4x the training length, a sparse model still looks no farther back
    than its construction offsets reach (num_layers hops of the largest one):
    changing the first token leaves the last outputs unchanged. Dense does not."""
    torch.manual_seed(0)
    for schedule, far_sighted in (("stagger", False), ("dense", True)):
        model = FibSparseLM(LMConfig.preset("tiny", schedule=schedule))
        length = 4 * model.config.seq_len
        reach = model.config.num_layers * model.config.seq_len  # offsets are <= seq_len by construction
        tokens = corpus.eval_windows(length, 1)[:, :length]
        changed = tokens.clone()
        changed[:, 0] = (tokens[:, 0] + 1) % 256
        with torch.no_grad():
            a, b = model(tokens)[:, reach + 1:], model(changed)[:, reach + 1:]
        assert torch.equal(a, b) != far_sighted, schedule
        if schedule == "stagger":
            assert all(int(block.attn.offsets.max()) <= model.config.seq_len for block in model.blocks)


def test_experiment_end_to_end(tmp_path, capsys):
    args = ["--preset", "tiny", "--schedules", "stagger,dense", "--steps", "6", "--max-bytes", "1000000",
            "--device", "cpu", "--out", str(tmp_path)]
    assert extrapolate.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"stagger", "dense"}
    for r in results.values():
        assert set(r["perplexity"]) == {"1", "2", "4"} and all(p > 1 for p in r["perplexity"].values())
    assert "ppl @4x" in capsys.readouterr().out
    with pytest.raises(ValueError, match="another configuration"):  # a changed recipe is not mixed in
        extrapolate.main(args[:5] + ["9"] + args[6:])


def test_interrupted_training_resumes_to_the_same_result(tmp_path, monkeypatch):
    args = ["--preset", "tiny", "--schedules", "learned", "--steps", "10", "--max-bytes", "1000000",
            "--device", "cpu"]
    assert extrapolate.main(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "learned.pt")

    update = extrapolate.Progress.update

    def interrupt_at_step_7(self, step, loss):
        if step == 7:
            raise KeyboardInterrupt
        update(self, step, loss)
    monkeypatch.setattr(extrapolate.Progress, "update", interrupt_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        extrapolate.main(args + ["--out", str(tmp_path / "cut")])
    assert torch.load(tmp_path / "cut" / "checkpoints" / "learned.pt")["step"] == 6  # saved every steps // 5
    monkeypatch.setattr(extrapolate.Progress, "update", update)
    assert extrapolate.main(args + ["--out", str(tmp_path / "cut")]) == 0
    resumed = torch.load(tmp_path / "cut" / "checkpoints" / "learned.pt")
    assert resumed["step"] == 10 and resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    assert torch.allclose(resumed["model"]["blocks.0.attn.alpha"], whole["model"]["blocks.0.attn.alpha"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset must be one of"):
        LMConfig.preset("huge")


def test_bad_experiment_arguments(tmp_path):
    with pytest.raises(SystemExit) as exit_info:  # an argparse usage error, before anything is created
        extrapolate.main(["--schedules", "stagger,fancy", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="data files not found"):
        extrapolate.main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])


def test_packed_batches_hold_whole_documents(corpus):
    """A packed batch fills its token budget with documents cut from single
    training files, none longer than the limit, targets shifted by one."""
    batch = corpus.packed_batch(4096, 512, torch.Generator().manual_seed(0))
    cu = batch.cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    assert cu[0] == 0 and cu[-1] == 4096 == batch.inputs.shape[1] and batch.max_seqlen == max(lengths) <= 512
    assert len(lengths) > 1 and min(lengths) >= 1
    train = bytes(corpus.train.tolist())
    for a, b in zip(cu, cu[1:]):
        document = bytes(batch.inputs[0, a:b].tolist()) + bytes([batch.targets[0, b - 1].item()])
        assert bytes(batch.targets[0, a:b].tolist()) == document[1:]
        start = train.find(document)
        assert start >= 0
        files = corpus.train_files.tolist()
        file = max(i for i, s in enumerate(files[:-1]) if s <= start)
        assert start + len(document) <= files[file + 1]  # never across a file boundary


def test_packed_loss_is_each_document_alone(corpus):
    torch.manual_seed(0)
    model = FibSparseLM(LMConfig.preset("tiny", schedule="stagger")).double()
    batch = corpus.packed_batch(300, 128, torch.Generator().manual_seed(1))
    logits = model(batch.inputs, cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen)
    cu = batch.cu_seqlens.tolist()
    alone = torch.cat([model(batch.inputs[:, a:b]) for a, b in zip(cu, cu[1:])], 1)
    assert (logits - alone).abs().max() < 1e-10
    expected = torch.nn.functional.cross_entropy(alone[0].float(), batch.targets[0])  # as the loss computes it
    assert abs(model.packed_loss(batch).item() - expected.item()) < 1e-6


def test_experiment_trains_on_packed_documents(tmp_path):
    args = ["--preset", "tiny", "--schedules", "stagger", "--steps", "4", "--max-bytes", "1000000",
            "--device", "cpu", "--out", str(tmp_path), "--packed"]
    assert extrapolate.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["train"]["packed"] is True
