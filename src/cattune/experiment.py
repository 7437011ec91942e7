"""The experiment recipe: train every arm (baseline, CAT, variants) over the seeds, evaluate them on
every test split, measure the spurious flip rate and attention shares, and write the results.

Layout of the run folder (``runs/<name>/`` by default)::

    config.yaml            the resolved experiment config
    data/                  the generated benchmark (when the config generates one)
    base/attention.json    attention shares of the untrained model
    <arm>/                 the arm's training run for the first seed (loadable by cattune evaluate)
    <arm>-seed<S>/         the same for every further seed
      eval/<split>.json, eval/<split>.predictions.jsonl, eval/<split>.flip.json
      attention.json, heatmap.json
    results.json           every figure, with n, intervals, config, version and git revision
    report.md, *.png       the comparison table, findings and plots

Every step writes its result file atomically and is skipped when that file already exists, so an
interrupted experiment resumes where it stopped without redoing finished arms.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cattune import __version__
from cattune.config import from_dict, read_yaml, save_config, to_dict
from cattune.data.records import Record, load_records, write_records
from cattune.evaluate import git_revision
from cattune.experiment_config import ExperimentConfig
from cattune.files import atomic_write_json
from cattune.precision import usable_precision
from cattune.train_config import TrainConfig

logger = logging.getLogger(__name__)


def arm_dir(out: Path, arm: str, seed: int, seeds: list[int]) -> Path:
    """The run folder of ``arm`` at ``seed``: ``out/<arm>`` for the first seed of the list,
    ``out/<arm>-seed<seed>`` for the others, except that a folder already holding a run keeps its
    seed, so a later call with other seeds (``seeds=[43,44]`` after ``seeds=[42,43,44]``) finds
    the runs of an earlier one instead of mistaking seed 42's run for seed 43's."""
    bare, suffixed = out / arm, out / f"{arm}-seed{seed}"
    if suffixed.exists():
        return suffixed
    held = _run_seed(bare)
    if held == seed or (held is None and seed == seeds[0]):
        return bare
    return suffixed


def _run_seed(run_dir: Path) -> int | None:
    """The seed of the run in ``run_dir`` (its saved config, or the experiment's request), if any."""
    for name in ("config.yaml", "train_request.yaml"):
        path = run_dir / name
        if path.exists() and isinstance(seed := read_yaml(path).get("seed"), int):
            return seed
    return None


def _benchmark_module(name: str) -> Any:
    from cattune.data.benchmarks import BENCHMARKS

    return BENCHMARKS[name].module


def prepare_data(config: ExperimentConfig, out: Path) -> tuple[Path, dict[str, Path]]:
    """The training file and the test files.

    With a ``generate`` section the benchmark is generated once into ``out/data``; ``train_file``
    and ``test_files``, where given, replace or add to the generated ones (for example: train and
    test on the released files, plus a generated extra OOD shift via ``generate.splits``).
    """
    train_file = Path(config.train_file) if config.train_file else None
    tests: dict[str, Path] = {}
    if config.generate is not None:
        from cattune.data.benchmarks import write_benchmark

        gen = config.generate
        folder = out / "data"
        if not (folder / "card.json").exists():
            options = {"middle_risk": gen.middle_risk} if gen.benchmark == "stg" else {}
            write_benchmark(gen.benchmark, folder, seed=gen.seed, train_size=gen.train_size, test_size=gen.test_size,
                            **options)
        tests = {p.stem: p for p in sorted(folder.glob("test_*.jsonl")) if gen.splits is None or p.stem in gen.splits}
        train_file = train_file or folder / "train.jsonl"
    # The named test files first (IID, OOD), then any generated extra shifts, in report order.
    tests = {**{k: Path(v) for k, v in config.test_files.items()}, **{k: v for k, v in tests.items() if k not in config.test_files}}
    if train_file is None:
        raise FileNotFoundError("the experiment names no training file")
    if config.flip:
        train_file = with_noncausal_spans(train_file, config.flip, folder=out / "data")
    return train_file, tests


def with_noncausal_spans(train_file: Path, benchmark: str, *, folder: Path) -> Path:
    """The training file with a ``noncausal`` field (named spurious and irrelevant spans) on every record.

    STG-style prompts name their non-causal values; the field lets training log the attention on
    them and lets the path constraint (``path_weight``) act on them. The causes (``important``) are
    kept exactly as in the file. A file whose records all carry the field is used as it is.
    """
    records = load_records(train_file)
    if all(isinstance(rec.extra.get("noncausal"), dict) for rec in records):
        return train_file
    target = folder / f"{train_file.stem}.with_spans.jsonl"
    if not target.exists():
        from cattune.data.benchmarks import add_noncausal_spans

        enriched = add_noncausal_spans(records, benchmark)
        folder.mkdir(parents=True, exist_ok=True)
        write_records(target, enriched)  # atomic
        logger.info("wrote %s: %d training records with their named non-causal spans", target, len(enriched))
    return target


def _train_config(config: ExperimentConfig, arm: str, seed: int, train_file: Path, run_dir: Path) -> TrainConfig:
    data = to_dict(config.train)
    data.update(config.arms[arm] or {})
    data.update(seed=seed, train_file=str(train_file), output_dir=str(run_dir))
    return usable_precision(from_dict(TrainConfig, data))


def _annotated_for_diagnostics(records: list[Record], benchmark: str | None) -> tuple[list[Record], list[dict[str, list[str]]]]:
    """Records with causes and named non-causal spans, derived from the prompt for STG-style data."""
    spans: list[dict[str, list[str]]] = []
    out = []
    for rec in records:
        if benchmark:
            relations, noncausal = _benchmark_module(benchmark).spans(rec.input, rec.target)
            rec = dataclasses.replace(rec, important=relations)
        else:
            noncausal = rec.extra.get("noncausal") or {}
        if rec.important:
            out.append(rec)
            spans.append(noncausal)
    return out, spans


class ExperimentRunner:
    """Runs one experiment config step by step; every step is resumable."""

    def __init__(self, config: ExperimentConfig, *, progress: bool = True, results_dir: Path | None = None):
        # The saved config and results.json say what the runs train with (fp32 where bf16 is emulated).
        self.config = dataclasses.replace(config, train=usable_precision(config.train))
        self.out = Path(config.output_dir or Path("runs") / config.name)
        # Where config.yaml, results.json and the report go: the run folder unless told otherwise
        # (a subset of a grid's arms reported apart, leaving the whole grid's results in place).
        self.results_dir = Path(results_dir) if results_dir else self.out
        self.progress = progress
        self._tokenizer: Any = None

    # -- helpers -----------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from cattune.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.train.model)
        return self._tokenizer

    def _cached(self, path: Path, compute: Callable[[], Any]) -> Any:
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        atomic_write_json(path, value)
        return value

    def _test_records(self, path: Path) -> list[Record]:
        records = load_records(path)
        return records[: self.config.eval_limit] if self.config.eval_limit else records

    # -- steps -------------------------------------------------------------------------------
    def _trained(self, arm: str, seed: int) -> bool:
        run_dir = arm_dir(self.out, arm, seed, self.config.seeds)
        return (run_dir / "model").exists() and (run_dir / "train_summary.json").exists()

    def train_arms_in_parallel(self, runs: list[tuple[str, int]], train_file: Path) -> None:
        """Train several (arm, seed) runs at once, each in its own process with its share of the CPU threads.

        On a CPU two single-thread runs side by side finish sooner than two two-thread runs one
        after the other. Each process is an ordinary resumable ``cattune train`` run.
        """
        cfg = self.config
        procs = []
        planned = 0
        for arm, seed in runs:
            run_dir = arm_dir(self.out, arm, seed, cfg.seeds)
            run_dir.mkdir(parents=True, exist_ok=True)
            request = run_dir / "train_request.yaml"
            train_config = _train_config(cfg, arm, seed, train_file, run_dir)
            planned += _planned_steps(train_config, train_file)
            save_config(train_config, request)
            log = (run_dir / "train.log").open("a")
            cmd = [sys.executable, "-m", "cattune.cli.main", "-q", "train", "--config", str(request), "--resume"]
            procs.append((arm, run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
            logger.info("training %s (seed %d) in a background process; log: %s", arm, seed, run_dir / "train.log")
        names = ", ".join(f"{arm} (seed {seed})" for arm, seed in runs)
        with tqdm(total=planned, desc=f"training {names}", unit="step", disable=not self.progress) as bar:
            while any(p.poll() is None for _, _, p, _ in procs):
                time.sleep(5)
                steps = sum(_last_step(run_dir / "metrics.jsonl") for _, run_dir, _, _ in procs)
                bar.update(steps - bar.n)
        for _, _, _, log in procs:
            log.close()
        failed = [(arm, run_dir) for arm, run_dir, p, _ in procs if p.returncode != 0]
        if failed:
            raise RuntimeError("training failed for " + ", ".join(f"{arm} (see {d / 'train.log'})" for arm, d in failed))

    def train_arm(self, arm: str, seed: int, train_file: Path) -> Path:
        from cattune.training import train

        run_dir = arm_dir(self.out, arm, seed, self.config.seeds)
        if self._trained(arm, seed):
            logger.info("%s (seed %d): already trained", arm, seed)
            return run_dir
        cfg = _train_config(self.config, arm, seed, train_file, run_dir)
        logger.info("training %s (seed %d) -> %s", arm, seed, run_dir)
        train(cfg, resume=True)
        return run_dir

    def evaluate_arm(self, model_ref: str, run_dir: Path, tests: dict[str, Path]) -> dict[str, Any]:
        from cattune.evaluate import evaluate_records
        from cattune.flip import flip_rate, flips_by_token_change
        from cattune.models import load_model

        cfg = self.config
        results: dict[str, Any] = {}
        model = None

        def get_model() -> Any:
            nonlocal model
            if model is None:
                model = load_model(model_ref, merge_adapter=True).eval()
            return model

        for split, path in tests.items():
            records = self._test_records(path)
            eval_dir = run_dir / "eval"
            predictions = eval_dir / f"{split}.predictions.jsonl"

            def compute_eval() -> dict[str, Any]:
                res = evaluate_records(get_model(), self.tokenizer, records, task=cfg.task,
                                       batch_size=cfg.eval_batch_size, predictions_path=predictions)
                return res.to_json()

            results[split] = dict(self._cached(eval_dir / f"{split}.json", compute_eval))
            if "absolute_error" not in results[split]:
                # Evaluations cached before cattune measured numeric error: it follows from the
                # predictions file, no model needed.
                results[split].update(_numeric_error_from_predictions(results[split]["task"], predictions) or {})
            if cfg.flip and split in cfg.flip_splits:
                module = _benchmark_module(cfg.flip)
                kinds = {"flip": module.redraw_spurious}
                if cfg.flip_same_length:
                    kinds["flip_same_length"] = module.redraw_spurious_same_length
                for kind, perturb in kinds.items():

                    def compute_flip(kind: str = kind, perturb: Any = perturb) -> dict[str, Any]:
                        # The originals' answers are already in the predictions file: generate only
                        # the perturbed prompts.
                        originals = [json.loads(line)["generation"] for line in predictions.read_text().splitlines()]
                        res = flip_rate(get_model(), self.tokenizer, records, perturb, task=results[split]["task"],
                                        seed=0, batch_size=cfg.eval_batch_size, original_generations=originals,
                                        per_item_path=eval_dir / f"{split}.{kind}.jsonl")
                        return dataclasses.asdict(res)

                    results[split][kind] = self._cached(eval_dir / f"{split}.{kind}.json", compute_flip)
                    results[split][kind]["by_token_change"] = flips_by_token_change(
                        results[split][kind]["per_item"], self.tokenizer)
        if cfg.diagnostics:
            results["_attention"] = self._cached(run_dir / "attention.json", lambda: self.attention(get_model(), tests))
            results["_heatmap"] = self._cached(run_dir / "heatmap.json", lambda: self.heatmap(get_model(), tests))
        return results

    def attention(self, model: Any, tests: dict[str, Path]) -> dict[str, Any]:
        from cattune.diagnostics import attention_shares, path_attention

        split = self.config.heatmap_split if self.config.heatmap_split in tests else next(iter(tests))
        records = self._test_records(tests[split])[: self.config.diagnostics_limit]
        records, spans = _annotated_for_diagnostics(records, self.config.flip)
        if not records:
            return {}
        backend, batch = self.config.train.attn_backend, self.config.eval_batch_size
        shares = attention_shares(model, self.tokenizer, records, spans, backend=backend, batch_size=batch)
        if any(spans):
            shares["path"] = path_attention(model, self.tokenizer, records, spans, backend=backend, batch_size=batch)
        return shares

    def heatmap(self, model: Any, tests: dict[str, Path]) -> dict[str, Any]:
        """The mean attention of one OOD example's supervised rows, with token categories."""
        from cattune.diagnostics import row_attention_map
        from cattune.encoding import encode_record
        from cattune.masks import span_columns

        split = self.config.heatmap_split if self.config.heatmap_split in tests else next(iter(tests))
        records, spans = _annotated_for_diagnostics(self._test_records(tests[split])[:1], self.config.flip)
        if not records:
            return {}
        record, named = records[0], spans[0]
        max_length = self.config.train.max_length
        tokens, rows, matrix = row_attention_map(model, self.tokenizer, record, backend=self.config.train.attn_backend,
                                                 max_length=max_length)
        enc = encode_record(self.tokenizer, record, max_length=max_length)
        categories = {"cause": sorted({c for cols in enc.rows.rows.values() for c in cols})}
        for name, span_list in named.items():
            categories[name] = list(span_columns(enc.text, enc.offsets, span_list, max_length=max_length))
        return {
            "tokens": tokens,
            "row_labels": [f"{r}: predicts {tokens[r + 1]!r}" if r + 1 < len(tokens) else str(r) for r in rows],
            "matrix": matrix.tolist(),
            "title": f"{split} item 1: target {record.target!r}",
            "categories": categories,
        }

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from cattune.training import check_same_settings

        cfg = self.config
        revision = git_revision()  # now: the code may change on disk while a long run goes on
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.results_dir / "config.yaml")
        train_file, tests = prepare_data(cfg, self.out)
        if not tests:
            raise FileNotFoundError(f"no test files for experiment {cfg.name}")
        runs = [(arm, seed) for seed in cfg.seeds for arm in cfg.arms]
        # Before any long work: a run trained under other settings is not this config's run.
        for arm, seed in runs:
            run_dir = arm_dir(self.out, arm, seed, cfg.seeds)
            check_same_settings(run_dir, _train_config(cfg, arm, seed, train_file, run_dir))
        base: dict[str, Any] = {}
        if cfg.diagnostics:
            from cattune.models import load_model

            def base_attention() -> dict[str, Any]:
                return self.attention(load_model(cfg.train.model).eval(), tests)

            base = {"attention": self._cached(self.out / "base" / "attention.json", base_attention)}

        per_run: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in cfg.arms}
        # Seed by seed, arm by arm; up to parallel_arms untrained runs train at once, and each group
        # is evaluated before the next trains, so a long grid leaves finished results behind.
        pending = [run for run in runs if not self._trained(*run)]
        size = max(1, cfg.parallel_arms)
        groups = [pending[i : i + size] for i in range(0, len(pending), size)]
        for group in [[run] for run in runs if run not in pending] + groups:
            if len(group) > 1:
                self.train_arms_in_parallel(group, train_file)
            for arm, seed in group:
                run_dir = self.train_arm(arm, seed, train_file)
                per_run[arm][seed] = self.evaluate_arm(str(run_dir), run_dir, tests)
                per_run[arm][seed]["_train"] = json.loads((run_dir / "train_summary.json").read_text())
                per_run[arm][seed]["_losses"] = losses_by_epoch(_read_metrics(run_dir / "metrics.jsonl"))
        results = aggregate(cfg, per_run, list(tests), base, revision=revision)
        atomic_write_json(self.results_dir / "results.json", results)
        write_folder_report(results, self.out, self.results_dir)
        return results


def write_folder_report(results: dict[str, Any], folder: Path, out: Path | None = None) -> dict[str, Path]:
    """``report.md`` and plots for the results of the experiment in ``folder``, written to ``out``
    (default: ``folder``), with the training curves and heat-maps of each arm's first-seed run
    where its folder is there (a copied results folder has only ``results.json``)."""
    from cattune.report import write_report

    seeds = list(results.get("seeds") or [])
    metrics: dict[str, list[dict[str, Any]]] = {}
    heatmaps: dict[str, dict[str, Any]] = {}
    for arm in results.get("arms") or {}:
        run_dir = arm_dir(folder, arm, seeds[0], seeds) if seeds else folder / arm
        if rows := _read_metrics(run_dir / "metrics.jsonl"):
            metrics[arm] = rows
        if (run_dir / "heatmap.json").exists():
            heatmaps[arm] = json.loads((run_dir / "heatmap.json").read_text())
    return write_report(results, out or folder, metrics=metrics or None, heatmaps={k: v for k, v in heatmaps.items() if v})


def report_from_folder(folder: Path, out: Path | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Rewrite the report of a finished experiment from its ``results.json`` (after an upgrade of
    cattune's report, or for a copied results folder), without training or evaluating anything."""
    path = folder / "results.json" if folder.is_dir() else folder
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results.json here; give an experiment folder (runs/<name>) or its results.json")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(results, dict) or "arms" not in results:
        raise ValueError(f"{path}: not the results.json of a cattune experiment (no 'arms' key)")
    return results, write_folder_report(results, path.parent, out)


def _numeric_error_from_predictions(task: str, predictions: Path) -> dict[str, Any] | None:
    from cattune.checkers import get_checker
    from cattune.evaluate import absolute_error_summary

    checker = get_checker(task)
    if not checker.numeric or not predictions.exists():
        return None
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return absolute_error_summary(checker, [r["answer"] for r in rows], [r["target"] for r in rows])


def _planned_steps(train: TrainConfig, train_file: Path) -> int:
    """Optimizer steps of one arm (for progress bars): max_steps, or epochs over the records."""
    if train.max_steps > 0:
        return train.max_steps
    n = sum(1 for line in train_file.open() if line.strip())
    if train.limit:
        n = min(n, train.limit)
    return math.ceil(math.ceil(n / train.batch_size) / train.grad_accum * train.epochs)


def _last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return int(json.loads(lines[-1]).get("step", 0)) if lines else 0


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The loss terms a run logs (cattune.trainer), reported per epoch: whether a run learned the task
# shows in its LM loss, and whether a constraint went silent in its own term.
LOSS_TERMS = ("lm_loss", "attn_loss", "path_loss")


def losses_by_epoch(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Mean of each logged loss term over the logging steps of each epoch (epoch 1 holds the
    steps in (0, 1]), from a run's ``metrics.jsonl`` rows; terms a run never logged are left out."""
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not isinstance(epoch, (int, float)) or epoch <= 0:
            continue
        terms = by_epoch.setdefault(math.ceil(epoch - 1e-9), {})
        for term in LOSS_TERMS:
            value = row.get(term)
            if isinstance(value, (int, float)) and math.isfinite(value):
                terms.setdefault(term, []).append(float(value))
    return [{"epoch": e, **{t: sum(v) / len(v) for t, v in terms.items()}}
            for e, terms in sorted(by_epoch.items()) if terms]


# Flip measurements of a split: the spurious redraw, and the same with every printed length kept.
FLIP_KINDS = ("flip", "flip_same_length")


def _seed_interval(summary: dict[str, float]) -> tuple[float, float]:
    """The 95% t interval of a mean over seeds, kept inside [0, 1] (it is a share).

    With 3 seeds the t quantile is 4.3, not 1.96: a normal interval would claim far more
    certainty about seed-to-seed variation than 3 runs can give.
    """
    return max(0.0, summary["ci_low"]), min(1.0, summary["ci_high"])


def _numeric_error_entry(seeds: list[int], evals: list[dict[str, Any]], per_seed: dict[str, Any]) -> dict[str, Any]:
    """Mean absolute error of one arm on one split (numeric tasks): the mean over seeds of each seed's
    mean over the answers that hold a number, with its t interval (over items for a single seed)."""
    from cattune.stats import seed_summary

    maes = [e.get("mean_absolute_error") for e in evals]
    if any(m is None for m in maes):
        return {}
    for s, m in zip(seeds, maes):
        per_seed[str(s)]["mean_absolute_error"] = m
    numeric = sum(e["numeric_answers"] for e in evals)
    if len(seeds) == 1:
        summ = seed_summary([x for x in evals[0]["absolute_error"] if x is not None])
        method = "items"
    else:
        summ = seed_summary(maes)
        method = "seeds"
    low = None if summ["ci_low"] is None else max(0.0, summ["ci_low"])
    return {"mean_absolute_error": summ["mean"], "mae_ci_low": low, "mae_ci_high": summ["ci_high"],
            "median_answer_error": evals[0].get("median_answer_error"),
            "mae_ci_method": method, "numeric_answers": numeric, "numeric_answer_share": numeric / sum(e["n"] for e in evals)}


def _paired_numeric_error(seeds: list[int], base: list[dict[str, Any]], arm: list[dict[str, Any]]) -> dict[str, Any]:
    """Arm minus reference absolute error over the items where both answered with a number (pooled over
    seeds; paired bootstrap), and across seeds when there are several."""
    from cattune.stats import paired_bootstrap, paired_seed_test

    if not all("absolute_error" in e for e in base + arm):
        return {}
    pairs = [(x, y) for b, a in zip(base, arm) for x, y in zip(b["absolute_error"], a["absolute_error"])
             if x is not None and y is not None]
    if not pairs:
        return {}
    out: dict[str, Any] = {"absolute_error_bootstrap": paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs])}
    maes_b, maes_a = [e.get("mean_absolute_error") for e in base], [e.get("mean_absolute_error") for e in arm]
    if len(seeds) > 1 and None not in maes_b + maes_a:
        out["absolute_error_seeds_paired"] = paired_seed_test(maes_b, maes_a)
    return out


def aggregate(config: ExperimentConfig, per_run: dict[str, dict[int, dict[str, Any]]], splits: list[str],
              base: dict[str, Any], *, revision: str | None = None) -> dict[str, Any]:
    """Combine per-arm, per-seed evaluations into the results.json structure."""
    from cattune.flip import pool_token_changes
    from cattune.stats import mcnemar_exact, paired_bootstrap, paired_seed_test, seed_summary

    seeds = config.seeds
    arms: dict[str, Any] = {}
    for arm, by_seed in per_run.items():
        arm_splits: dict[str, Any] = {}
        for split in splits:
            evals = [by_seed[s][split] for s in seeds]
            accs = [e["accuracy"] for e in evals]
            entry: dict[str, Any] = {
                "n": evals[0]["n"],
                "majority_accuracy": evals[0]["majority_accuracy"],
                "majority_label": evals[0].get("majority_label"),
                "task": evals[0].get("task"),
                "per_seed": {str(s): {"accuracy": e["accuracy"]} for s, e in zip(seeds, evals)},
            }
            if len(seeds) == 1:
                entry.update(accuracy=accs[0], ci_low=evals[0]["ci_low"], ci_high=evals[0]["ci_high"], ci_method="wilson")
            else:
                summ = seed_summary(accs)
                low, high = _seed_interval(summ)
                entry.update(accuracy=summ["mean"], ci_low=low, ci_high=high, ci_method="seeds", accuracy_sd=summ["std"])
            for kind in FLIP_KINDS:
                flips = [by_seed[s][split].get(kind) for s in seeds]
                if not all(flips):
                    continue
                rates = [f["rate"] for f in flips]
                for s, f in zip(seeds, flips):
                    entry["per_seed"][str(s)][f"{kind}_rate"] = f["rate"]
                if len(seeds) == 1:
                    rate, low, high, extra = rates[0], flips[0]["ci_low"], flips[0]["ci_high"], {}
                else:
                    summ = seed_summary(rates)
                    rate, (low, high) = summ["mean"], _seed_interval(summ)
                    extra = {f"{kind}_sd": summ["std"]}
                entry.update({f"{kind}_rate": rate, f"{kind}_ci_low": low, f"{kind}_ci_high": high,
                              f"{kind}_n": flips[0]["n"], **extra})
                if all("by_token_change" in f for f in flips):
                    entry[f"{kind}_by_token_change"] = pool_token_changes([f["by_token_change"] for f in flips])
            entry.update(_numeric_error_entry(seeds, evals, entry["per_seed"]))
            arm_splits[split] = entry
        first = by_seed[seeds[0]]
        train = first.get("_train", {})
        arms[arm] = {
            "splits": arm_splits,
            "attention": first.get("_attention") or None,
            "train": {"steps": train.get("global_step"), "seconds": (train.get("metrics") or {}).get("train_runtime"),
                      "final_train_loss": train.get("train_loss"), "overrides": config.arms[arm],
                      "git_revision": train.get("git_revision"),
                      "losses_by_epoch": {str(s): by_seed[s]["_losses"] for s in seeds if by_seed[s].get("_losses")}},
        }

    paired: dict[str, Any] = {}
    if (ref := config.reference) in per_run:
        for arm in per_run:
            if arm == ref:
                continue
            for split in splits:
                a = [x for s in seeds for x in per_run[ref][s][split]["per_item"]]
                b = [x for s in seeds for x in per_run[arm][s][split]["per_item"]]
                entry = {
                    "mcnemar": mcnemar_exact(a, b),
                    "accuracy_difference": sum(b) / len(b) - sum(a) / len(a),
                }
                boot = paired_bootstrap([float(x) for x in a], [float(x) for x in b])
                entry.update(diff_ci_low=boot["ci_low"], diff_ci_high=boot["ci_high"])
                if len(seeds) > 1:
                    # Pooled McNemar treats items of different seeds as independent pairs; this test
                    # has one pair per seed, so it also covers seed-to-seed variation.
                    entry["seeds_paired"] = paired_seed_test(
                        [per_run[ref][s][split]["accuracy"] for s in seeds],
                        [per_run[arm][s][split]["accuracy"] for s in seeds])
                for kind in FLIP_KINDS:
                    fa = [per_run[ref][s][split].get(kind) for s in seeds]
                    fb = [per_run[arm][s][split].get(kind) for s in seeds]
                    if all(fa) and all(fb):
                        # A flip is a failure of invariance: compare "did not flip" per item like accuracy.
                        ka = [not it["flipped"] for f in fa for it in f["per_item"]]
                        kb = [not it["flipped"] for f in fb for it in f["per_item"]]
                        entry[f"{kind}_mcnemar"] = mcnemar_exact(ka, kb)
                        if len(seeds) > 1:
                            entry[f"{kind}_seeds_paired"] = paired_seed_test([f["rate"] for f in fa], [f["rate"] for f in fb])
                entry.update(_paired_numeric_error(seeds, [per_run[ref][s][split] for s in seeds],
                                                   [per_run[arm][s][split] for s in seeds]))
                key = split if arm == "cat" else f"{arm}:{split}"
                paired[key] = entry

    return {
        "name": config.name,
        "cattune_version": __version__,
        "git_revision": revision,  # at the start of this invocation (each arm's training: arms.<arm>.train)
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(config),
        "seeds": seeds,
        "splits": splits,
        "arms": arms,
        "reference": config.reference,
        "base_model": base or None,
        "paired": paired,
        "pooling": "paired tests pool items across seeds" if len(seeds) > 1 else "single seed",
    }
