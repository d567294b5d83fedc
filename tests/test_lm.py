"""The language model, its data and the extrapolation experiment, on the tiny
preset (CPU, seconds)."""
import dataclasses
import json
import math
import os
import statistics
import subprocess
import zlib
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

from fibsparse_ext.lm.data import ByteCorpus
from fibsparse_ext.lm.experiments import extrapolate, intervals, report
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
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["runs"]
    assert set(runs) == {"stagger", "dense"} and all(set(by_seed) == {"0"} for by_seed in runs.values())
    for r in (by_seed["0"] for by_seed in runs.values()):
        assert set(r["perplexity"]) == {"1", "2", "4", "8", "16"} and all(p > 1 for p in r["perplexity"].values())
        assert r["train_tokens"] == 6 * 8 * 64 and r["timed_steps"] == 6 and r["tokens_per_s"] > 0
    # One seed: a paired difference but no interval, said in the table rather than made up.
    difference = saved["paired_differences"]["by_baseline"]["stagger"]["dense"]["4"]
    assert difference["n"] == 1 and difference["ci95_pct"] is None and "no interval" in difference["note"]
    assert saved["aggregate"]["dense"]["perplexity"]["4"]["std"] is None
    out = capsys.readouterr().out
    assert "ppl @4x" in out and "ppl @16x" in out and "no interval can be computed" in out and "±" not in out
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


def test_t_quantile():
    # Published two-sided 95% and 99% critical values, to the table's three decimals.
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert round(intervals.t_quantile(0.975, dof), 3) == value, dof
    assert round(intervals.t_quantile(0.995, 10), 3) == 3.169
    # Closed forms: Cauchy for one degree of freedom, and t_2 = (2p - 1) / sqrt(2 p (1 - p)).
    for p in (0.6, 0.9, 0.975, 0.999):
        assert intervals.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert intervals.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        assert intervals.t_quantile(1 - p, 3) == -intervals.t_quantile(p, 3)
    assert intervals.t_quantile(0.975, 1e5) == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-4)
    for bad in ((0.0, 3), (1.0, 3), (0.9, 0)):
        with pytest.raises(ValueError):
            intervals.t_quantile(*bad)


def fake_run(seed, ppl):
    return {"seed": seed, "perplexity": {"1": ppl}, "learned_alphas": [], "tokens_per_s": 1000.0 + seed,
            "train_seconds": 2.0, "latency_ms": 1.0, "final_train_loss": 1.0}


def test_paired_differences_over_seeds():
    ppl = {"fixed": [3.0, 3.3, 2.9], "stagger": [2.97, 3.26, 2.88]}
    runs = {v: {str(s): fake_run(s, p) for s, p in enumerate(values)} for v, values in ppl.items()}
    aggregate, pairs = report.summarize(runs, [1])
    assert aggregate["fixed"]["perplexity"]["1"] == pytest.approx(
        {"mean": statistics.mean(ppl["fixed"]), "std": statistics.stdev(ppl["fixed"]), "n": 3})
    per_seed = [100 * (s / f - 1) for f, s in zip(ppl["fixed"], ppl["stagger"])]
    d = pairs["fixed"]["stagger"]["1"]
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * statistics.stdev(per_seed) / math.sqrt(3)  # t(0.975, 2)
    assert d["n"] == 3 and d["mean_pct"] == pytest.approx(statistics.mean(per_seed))
    assert d["ci95_pct"] == pytest.approx([statistics.mean(per_seed) - half, statistics.mean(per_seed) + half])
    # Paired: when the seed moves both variants alike, the interval of their
    # difference is far narrower than each variant's own spread (here ~7%).
    assert 5 * half < statistics.stdev(ppl["fixed"]) / statistics.mean(ppl["fixed"]) * 100
    # Only the seeds both variants have are paired; one seed gives no interval.
    runs["stagger"] = {"1": runs["stagger"]["1"]}
    _, pairs = report.summarize(runs, [1])
    d = pairs["fixed"]["stagger"]["1"]
    assert d["n"] == 1 and d["seeds"] == [1] and d["ci95_pct"] is None and d["std_pct"] is None
    assert d["mean_pct"] == pytest.approx(per_seed[1])


def test_experiment_over_seeds(tmp_path, capsys):
    args = ["--preset", "tiny", "--schedules", "stagger,dense", "--seeds", "0,1", "--steps", "4",
            "--max-bytes", "1000000", "--device", "cpu", "--out", str(tmp_path)]
    assert extrapolate.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    runs, aggregate = saved["runs"], saved["aggregate"]
    assert saved["meta"]["seeds"] == [0, 1] and set(runs) == {"stagger", "dense"}
    for variant in runs:
        assert set(runs[variant]) == {"0", "1"}
        # The seed sets the initial weights and the data order: two seeds, two models.
        assert runs[variant]["0"]["perplexity"]["1"] != runs[variant]["1"]["perplexity"]["1"]
        for seed, name in (("0", f"{variant}.pt"), ("1", f"{variant}.seed1.pt")):
            assert runs[variant][seed]["checkpoint"] == name
            assert torch.load(tmp_path / "checkpoints" / name)["train"]["seed"] == int(seed)
            assert runs[variant][seed]["tokens_per_s"] > 0 and runs[variant][seed]["train_seconds"] > 0
        for m in ("1", "2", "4", "8", "16"):
            values = [runs[variant][s]["perplexity"][m] for s in ("0", "1")]
            assert aggregate[variant]["perplexity"][m] == pytest.approx(
                {"mean": statistics.mean(values), "std": statistics.stdev(values), "n": 2})
    for baseline, variant in (("stagger", "dense"), ("dense", "stagger")):
        for m in ("1", "16"):
            d = saved["paired_differences"]["by_baseline"][baseline][variant][m]
            per_seed = [100 * (runs[variant][s]["perplexity"][m] / runs[baseline][s]["perplexity"][m] - 1)
                        for s in ("0", "1")]
            lo, hi = d["ci95_pct"]
            half = math.tan(math.pi * 0.475) * statistics.stdev(per_seed) / math.sqrt(2)  # t(0.975, 1)
            assert d["n"] == 2 and math.isfinite(lo) and math.isfinite(hi)
            assert [lo, hi] == pytest.approx([statistics.mean(per_seed) - half, statistics.mean(per_seed) + half])
    out = capsys.readouterr().out
    assert "paired differences vs stagger" in out and "±" in out and "tokens/s" in out
    assert "no interval" not in out
    assert (tmp_path / "results.txt").read_text().strip() in out


def test_interrupted_sweep_over_seeds_resumes_to_the_same_result(tmp_path, monkeypatch):
    args = ["--preset", "tiny", "--schedules", "stagger", "--seeds", "0,1", "--steps", "10",
            "--max-bytes", "1000000", "--device", "cpu", "--eval-multiples", "1,4"]
    assert extrapolate.main(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())["runs"]["stagger"]

    update = extrapolate.Progress.update

    def interrupt_seed_1_at_step_7(self, step, loss):
        if self.label.endswith("s1") and step == 7:
            raise KeyboardInterrupt
        update(self, step, loss)
    monkeypatch.setattr(extrapolate.Progress, "update", interrupt_seed_1_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        extrapolate.main(args + ["--out", str(tmp_path / "cut")])
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert torch.load(checkpoints / "stagger.pt")["step"] == 10
    assert torch.load(checkpoints / "stagger.seed1.pt")["step"] == 6
    finished = (checkpoints / "stagger.pt").stat().st_mtime_ns
    monkeypatch.setattr(extrapolate.Progress, "update", update)
    assert extrapolate.main(args + ["--out", str(tmp_path / "cut")]) == 0
    # The finished seed is neither trained nor evaluated again: its checkpoint is untouched.
    assert (checkpoints / "stagger.pt").stat().st_mtime_ns == finished
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())["runs"]["stagger"]
    assert set(resumed) == set(whole) == {"0", "1"}
    for seed in whole:
        assert resumed[seed]["perplexity"] == pytest.approx(whole[seed]["perplexity"], rel=1e-6)
        assert resumed[seed]["final_train_loss"] == pytest.approx(whole[seed]["final_train_loss"], rel=1e-5)
        assert resumed[seed]["timed_steps"] == 10  # 6 before the cut, 4 after
    assert torch.load(checkpoints / "stagger.seed1.pt")["losses"] == pytest.approx(
        torch.load(tmp_path / "whole" / "checkpoints" / "stagger.seed1.pt")["losses"], rel=1e-5)


def test_too_short_validation_skips_multiples(tmp_path, capsys, corpus):
    # One file that hashes to training (data.py splits by CRC32 of the name): its last 10% is the validation.
    text = tmp_path / next(name for name in (f"text{i}.py" for i in range(100)) if zlib.crc32(name.encode()) % 10)
    text.write_bytes(bytes(corpus.train[:4000].tolist()))
    size = len(ByteCorpus.load([str(text)]).val)
    assert size == 4000 // 10  # too short for one window of 8x (512 tokens) and 16x, long enough for 4x
    args = ["--preset", "tiny", "--schedules", "stagger", "--steps", "2", "--data", str(text), "--device", "cpu"]
    assert extrapolate.main(args + ["--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["meta"]["eval_multiples"] == [1, 2, 4]
    assert set(saved["meta"]["skipped_multiples"]) == {"8", "16"}
    assert set(saved["runs"]["stagger"]["0"]["perplexity"]) == {"1", "2", "4"}
    assert saved["meta"]["overlapping_windows"]["4"] == size // (4 * 64 + 1)
    out = capsys.readouterr().out
    assert f"skipping 8x (512 tokens): the validation split has {size} bytes" in out and "skipping 16x" in out
    # At the boundary the plan agrees with what ByteCorpus.eval_windows accepts.
    for size in (2 * 64 + 1, 2 * 64 + 2):
        short = ByteCorpus(corpus.train, corpus.val[:size], "test")
        evaluated, skipped, _ = extrapolate.evaluation_plan(short, 64, [1, 2], 8)
        try:
            short.eval_windows(2 * 64, 8)
            fits = True
        except ValueError:
            fits = False
        assert (2 in evaluated) == fits and ("2" in skipped) != fits and evaluated[0] == 1
    with pytest.raises(ValueError, match="no evaluation length fits the validation split"):
        extrapolate.main(args + ["--eval-multiples", "8,16", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args", [["--seeds", ""], ["--seeds", "-1"], ["--seeds", "0,0"], ["--seeds", "a"],
                                  ["--eval-multiples", "0"], ["--eval-multiples", "1,x"],
                                  ["--schedules", "stagger,stagger"]])
def test_bad_seed_and_multiple_arguments(tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        extrapolate.main(args + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def test_medium_preset_sits_between_small_and_paper():
    sizes = {name: FibSparseLM(LMConfig.preset(name)).num_parameters() for name in ("small", "medium", "paper")}
    assert sizes["small"] < sizes["medium"] < sizes["paper"]
    config, train = LMConfig.preset("medium"), extrapolate.TRAIN_PRESETS["medium"]
    assert 20e6 <= train.steps * train.batch_size * config.seq_len <= 50e6
    for variant in extrapolate.DEFAULT_VARIANTS.split(",") + ["pow2-coprime"]:
        schedule = LMConfig.preset("medium", **LMConfig.parse_variant(variant)).make_schedule()
        if variant not in ("dense", "learned"):
            # Training windows hold seq_len inputs, distances up to seq_len - 1: every offset is read in training.
            assert max(max(schedule.offsets(i)) for i in range(config.num_layers)) < config.seq_len, variant


PARALLEL_SWEEP = Path(__file__).resolve().parents[1] / "tools" / "extrapolate_parallel.sh"


def run_parallel_sweep(args, cwd, gpus="0", per_gpu="2"):
    return subprocess.run(["bash", str(PARALLEL_SWEEP)] + args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "GPUS": gpus, "PER_GPU": per_gpu}, timeout=300)


def test_parallel_sweep_equals_one_sequential_call(tmp_path):
    """tools/extrapolate_parallel.sh runs each (variant, seed) in its own
    process, then one call that only loads them: the same runs as one call.
    A relative output folder is the caller's."""
    common = ["--steps", "4", "--max-bytes", "1000000", "--device", "cpu", "--eval-multiples", "1,2"]
    assert extrapolate.main(["--preset", "tiny", "--schedules", "stagger,dense", "--seeds", "0,1",
                             "--out", str(tmp_path / "sequential")] + common) == 0
    done = run_parallel_sweep(["tiny", "0,1", "stagger,dense", "parallel"] + common, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" rc=0 ") == 4 and "all runs ended" in done.stdout
    for seed in ("0", "1"):
        log = (tmp_path / "parallel" / "logs" / f"dense.seed{seed}.log").read_text()
        assert f"dense seed {seed}: perplexity 1x" in log  # --runs-only: the run's line, no results files
    sequential, parallel = (json.loads((tmp_path / name / "results.json").read_text())
                            for name in ("sequential", "parallel"))
    for variant in ("stagger", "dense"):
        for seed in ("0", "1"):
            assert parallel["runs"][variant][seed]["perplexity"] == sequential["runs"][variant][seed]["perplexity"]
    assert parallel["aggregate"]["dense"]["perplexity"] == sequential["aggregate"]["dense"]["perplexity"]


def test_parallel_sweep_reports_failed_runs_and_writes_no_results(tmp_path):
    # The arguments pass the checks; every run then fails reading its data.
    done = run_parallel_sweep(["tiny", "0", "stagger,dense", "out", "--steps", "2", "--device", "cpu",
                               "--data", str(tmp_path / "missing.txt")], cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed runs" in done.stdout and "stagger seed 0 (rc=" in done.stdout and "dense seed 0 (rc=" in done.stdout
    assert "missing.txt" in (tmp_path / "out" / "logs" / "stagger.seed0.log").read_text()
    assert not list((tmp_path / "out").glob("results.*"))


@pytest.mark.parametrize("gpus, args, message", [
    ("0,0", ["0", "stagger"], "GPUS names a GPU twice"),
    ("a", ["0", "stagger"], "GPUS must be comma-separated GPU indices"),
    ("0", ["0", "stagger,stagger"], "--schedules names a variant twice"),
    ("0", ["0,0", "stagger"], "names a value twice"),
    ("0", ["0", "fancy"], "unknown schedule variant 'fancy'"),
])
def test_parallel_sweep_refuses_bad_arguments_before_any_run(tmp_path, gpus, args, message):
    done = run_parallel_sweep(["tiny"] + args + ["out", "--device", "cpu"], cwd=tmp_path, gpus=gpus)
    assert done.returncode == 2 and message in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


def test_matmul_precision_is_the_presets_and_restored(tmp_path, monkeypatch):
    assert extrapolate.TRAIN_PRESETS["small"].matmul_precision == "highest"  # its committed runs: float32
    assert extrapolate.TRAIN_PRESETS["medium"].matmul_precision == "high"
    seen = []
    update = extrapolate.Progress.update
    monkeypatch.setattr(extrapolate.Progress, "update",
                        lambda self, step, loss: (seen.append(torch.get_float32_matmul_precision()),
                                                  update(self, step, loss)))
    monkeypatch.setitem(extrapolate.TRAIN_PRESETS, "tiny",
                        dataclasses.replace(extrapolate.TRAIN_PRESETS["tiny"], matmul_precision="medium"))
    before = torch.get_float32_matmul_precision()
    assert extrapolate.main(["--preset", "tiny", "--schedules", "stagger", "--steps", "2", "--max-bytes", "1000000",
                             "--device", "cpu", "--eval-multiples", "1", "--out", str(tmp_path)]) == 0
    assert seen == ["medium", "medium"] and torch.get_float32_matmul_precision() == before
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["train"]["matmul_precision"] == "medium"


def test_checkpoint_from_before_the_matmul_precision_option_resumes(tmp_path):
    args = ["--preset", "tiny", "--schedules", "stagger", "--steps", "2", "--max-bytes", "1000000",
            "--device", "cpu", "--eval-multiples", "1", "--out", str(tmp_path)]
    assert extrapolate.main(args) == 0
    path = tmp_path / "checkpoints" / "stagger.pt"
    state = torch.load(path)
    del state["train"]["matmul_precision"]
    torch.save(state, path)
    assert extrapolate.main(args) == 0  # loads it: float32 was the only precision then


def test_report_merges_sweeps_made_apart(tmp_path, capsys):
    """Sweeps made in several folders (or on several machines) merge from
    their results.json alone into the report one sweep would have written."""
    common = ["--preset", "tiny", "--schedules", "stagger,dense", "--steps", "3", "--max-bytes", "1000000",
              "--device", "cpu", "--eval-multiples", "1,2,4"]
    assert extrapolate.main(common + ["--seeds", "0,1,2", "--out", str(tmp_path / "together")]) == 0
    for seeds in ("0,2", "1"):
        assert extrapolate.main(common + ["--seeds", seeds, "--out", str(tmp_path / seeds)]) == 0
    capsys.readouterr()
    assert report.main([str(tmp_path / "0,2" / "results.json"), str(tmp_path / "1" / "results.json"),
                        "--out", str(tmp_path / "merged")]) == 0
    together, merged = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("together", "merged"))
    assert merged["meta"]["seeds"] == [0, 1, 2] and list(merged["runs"]["dense"]) == ["0", "1", "2"]
    assert merged["aggregate"]["stagger"]["perplexity"] == together["aggregate"]["stagger"]["perplexity"]
    assert merged["paired_differences"] == together["paired_differences"]
    for variant in ("stagger", "dense"):
        change = merged["aggregate"][variant]["change_from_shortest"]
        assert change == together["aggregate"][variant]["change_from_shortest"] and set(change) == {"2", "4"}
        runs = merged["runs"][variant]
        per_seed = [100 * (runs[s]["perplexity"]["4"] / runs[s]["perplexity"]["1"] - 1) for s in ("0", "1", "2")]
        assert change["4"]["per_seed_pct"] == pytest.approx(per_seed) and change["4"]["n"] == 3
        lo, hi = change["4"]["ci95_pct"]
        assert lo < statistics.mean(per_seed) < hi
    out = capsys.readouterr().out
    assert "change with length" in out and "@4x vs @1x" in out and "wall time" not in out
    assert (tmp_path / "merged" / "results.txt").read_text().strip() == out.split("\nresults:")[0].strip()


def test_report_refuses_sweeps_of_other_configurations(tmp_path, capsys):
    common = ["--preset", "tiny", "--schedules", "stagger", "--device", "cpu", "--eval-multiples", "1", "--steps"]
    assert extrapolate.main(common + ["2", "--max-bytes", "1000000", "--out", str(tmp_path / "a")]) == 0
    assert extrapolate.main(common + ["3", "--max-bytes", "1000000", "--out", str(tmp_path / "b")]) == 0
    # Other bytes with the same rounded description ("0.9 MiB train, 0.05 MiB validation"):
    # the checksums tell them apart.
    assert extrapolate.main(common + ["2", "--max-bytes", "1005000", "--out", str(tmp_path / "c")]) == 0
    paths = {name: str(tmp_path / name / "results.json") for name in "abc"}
    documents = {name: json.loads(Path(path).read_text()) for name, path in paths.items()}
    assert documents["a"]["meta"]["data"] == documents["c"]["meta"]["data"]
    for other, key in (("b", "train"), ("c", "data")):
        with pytest.raises(SystemExit) as exit_info:
            report.main([paths["a"], paths[other], "--out", str(tmp_path / "merged")])
        assert exit_info.value.code == 2 and not (tmp_path / "merged").exists()
        assert f"{paths[other]} has another {key}" in capsys.readouterr().err
    # The same (variant, seed) with other results: refused, naming both files, not silently picked.
    changed = json.loads(json.dumps(documents["a"]))
    changed["runs"]["stagger"]["0"]["perplexity"]["1"] *= 1.01
    with pytest.raises(ValueError, match="stagger seed 0 has different perplexities in first.json and second.json"):
        report.merge([("first.json", documents["a"]), ("second.json", changed)])
    with pytest.raises(ValueError, match="notes.json is not the results.json of an extrapolation sweep"):
        report.merge([("notes.json", {"runs": {}})])
    for bad in (tmp_path / "missing.json", tmp_path / "a" / "checkpoints"):
        with pytest.raises(SystemExit):
            report.main([str(bad), "--out", str(tmp_path / "merged")])
        assert str(bad) in capsys.readouterr().err
