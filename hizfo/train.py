"""The one runner: compose model x task x method, fine-tune, evaluate, log, write a run record.

    python -m hizfo.train model=opt-2.7b task=scitldr method=hizfo
    python -m hizfo.train -m method=hizfo method.rho=0.4,0.5,0.6      # Hydra multirun
    python -m hizfo.train experiment=demo                              # the embedded default

Reads top to bottom: build -> (evaluate before) -> train -> evaluate -> record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hizfo import __version__
from hizfo.data import TrainDataset, collate_train
from hizfo.data.tasks import load_split
from hizfo.data.tokenize import chat_example
from hizfo.evaluation import evaluate_task, validation_loss
from hizfo.evaluation.predictions import attach_predictions
from hizfo.methods import build_method
from hizfo.models.loading import count_parameters, load_model_and_tokenizer, resolve_device
from hizfo.runs import context as run_context
from hizfo.runs import records
from hizfo.runs.config_schema import validate_config  # importing it registers the config resolvers
from hizfo.runs.protocols import protocol_of
from hizfo.runs.resources import CHECKOUT_ROOT, conf_dir, hydra_config_path, in_checkout, project_path
from hizfo.runs.wandb_log import WandbLogger
from hizfo.training import checkpoints, distributed, resume
from hizfo.training.export import export_final, final_model_dir
from hizfo.training.loop import LoopConfig, seed_everything, train
from hizfo.training.losses import configure_loss
from hizfo.training.precision import check_precision, check_zo_precision

log = logging.getLogger("hizfo.train")
_abs = project_path  # relative config paths: against the checkout, else the current directory


def loss_batches(tokenizer, examples, task_cfg, batch_size: int, limit: int | None, device):
    dataset = TrainDataset(examples, tokenizer, int(task_cfg.max_input_len), int(task_cfg.max_output_len))
    collate = collate_train(tokenizer.pad_token_id)
    items = [dataset[i] for i in range(len(dataset))]
    batches = [collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    batches = batches[:limit] if limit else batches
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def load_train_examples(task_cfg: DictConfig, data_dir: str | None, eos: str):
    """The task's train split, or another task's (task.train_task) for test-only tasks."""
    source = task_cfg.get("train_task")
    if source and task_cfg.splits.get("train") is None:
        log.info("%s has no train split; training on %s train (task.train_task)", task_cfg.name, source)
        task_cfg = OmegaConf.merge(task_cfg, {"name": source, "splits": {"train": source}})
    return load_split(task_cfg, "train", data_dir, eos)


def also_task_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """conf/task/<name>.yaml of each ``eval.also_tasks`` entry: tasks the trained model is also scored
    on (their full test split unless ``eval.also_max_examples``). Table 2 trains once on GSM8K and
    scores GSM8K, MATH500 and HumanEval, as three separate runs with the same training would."""
    out = {}
    for name in cfg.eval.also_tasks or []:
        path = conf_dir() / "task" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml"))
            raise ValueError(f"eval.also_tasks: no task {name!r} (conf/task/{name}.yaml); known: {known}")
        task_cfg = OmegaConf.load(path)
        if cfg.eval.also_max_examples is not None:
            task_cfg.max_eval_examples = int(cfg.eval.also_max_examples)
        out[str(name)] = task_cfg
    return out


def load_optional_split(task_cfg: DictConfig, split: str | None, data_dir: str | None, eos: str):
    """An evaluation split, or [] when not asked for or the task has none (e.g. GSM8K validation)."""
    if not split:
        return []
    if task_cfg.splits.get(split) is None:
        log.info("%s has no %s split; skipping it", task_cfg.name, split)
        return []
    return load_split(task_cfg, split, data_dir, eos)


def config_fingerprint(resolved: dict[str, Any]) -> str:
    """Hash of everything that changes what is trained, so a sweep's runs (say over method.rho)
    never resume from one another's checkpoints; paths, logging and eval settings are left out."""
    keep = {k: resolved[k] for k in ("model", "task", "method", "seed", "data") if k in resolved}
    keep["trainer"] = {k: v for k, v in resolved.get("trainer", {}).items()
                       if k not in resume.OPERATIONAL_TRAINER_KEYS}
    keep["task"] = {k: v for k, v in keep.get("task", {}).items()
                    if k not in ("max_eval_examples", "rouge_reference_aggregation", "accuracy_metric")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]


def checkpoint_folder(resolved: dict[str, Any]) -> Path:
    """A run's own checkpoint folder: paths.checkpoint_dir / its config fingerprint. The runner writes
    and resumes there; the study queue reads it to count a member's steps already done."""
    return Path(_abs(resolved["paths"]["checkpoint_dir"])) / config_fingerprint(resolved)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured job; returns the run record (also written to paths.results_dir)."""
    started_at = records.now_iso()
    t_start = time.perf_counter()
    done = _completed_record(cfg) if cfg.trainer.skip_completed else None
    if done is not None:  # resumable grids: this member already finished
        log.info("skipping %s: completed record %s", cfg.run_name, done["_path"])
        return {**done, "skipped": True}
    record: dict[str, Any] = {
        "run_name": _or_none(lambda: str(cfg.run_name)) or "unnamed-run", "config_fingerprint": None,
        "protocol": None, "status": "running", "started_at": started_at, "config": _config_as_given(cfg),
        "hardware": None, "versions": None, "git": None, "hydra": run_context.hydra_context(), "metrics": {}}
    results_dir = _or_none(lambda: _abs(cfg.paths.results_dir))  # None: the record goes to a fallback
    method = device = memory_scope = windows = None
    model = logger = loop_result = None
    predictions: dict[str, list[dict[str, Any]]] = {}  # phase -> every prediction (the record's sidecar)
    try:  # from here on, config parsing included, any failure still writes a record ("failed")
        validate_config(cfg)  # types, allowed values, ranges, unknown keys: before anything is built
        seed_everything(int(cfg.seed))
        configure_loss(chunked=bool(cfg.trainer.chunked_loss))
        method = build_method(cfg.method.name, cfg.method)
        check_zo_precision(str(cfg.trainer.precision), method)  # bf16 storage + ZO drifts: refused
        device = resolve_device(cfg.trainer.device)
        dist_ctx = distributed.setup(str(cfg.trainer.strategy), device.type,
                                     timeout_min=int(cfg.trainer.dist_timeout_min))  # torchrun / SLURM ranks
        device = distributed.device_for(device)
        run_context.set_cpu_threads(cfg.trainer.cpu_threads, device, record["hydra"])
        memory_scope = records.reset_peak_memory(device)
        windows = records.PeakWindows(device)  # training's peak apart from evaluation's (the tables use it)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        fingerprint = config_fingerprint(resolved)
        checkpoint_dir = str(checkpoint_folder(resolved))
        record.update({"config_fingerprint": fingerprint, "protocol": protocol_of(resolved),
                       "config": resolved, "hardware": records.hardware_info(device),
                       "versions": records.package_versions(), "git": _source_info()})
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if model_cfg.get("source") == "local":
            model_cfg["path"] = _abs(model_cfg["path"])
        sharded = dist_ctx.strategy == "fsdp"  # loaded on the CPU, only each rank's shards go to the device
        model, tokenizer = load_model_and_tokenizer(OmegaConf.create(model_cfg),
                                                    "cpu" if sharded else device,
                                                    check_precision(cfg.trainer.precision))
        if cfg.trainer.gradient_checkpointing:  # non-reentrant: restores the RNG, so dropout replays
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        distributed.shard_model(model, method.name)  # fsdp: before any forward, evaluation included
        data_dir = _abs(cfg.data.dir) if cfg.data.dir else None
        eos = tokenizer.eos_token
        train_examples = load_train_examples(cfg.task, data_dir, eos) if method.trains else []
        val_examples = load_optional_split(cfg.task, cfg.eval.split, data_dir, eos)
        test_examples = load_optional_split(cfg.task, cfg.eval.final_split, data_dir, eos)
        instruction = cfg.task.get("chat_instruction")
        if instruction is not None:  # an instruct model's own format (data/tokenize.py: chat_example)
            train_examples, val_examples, test_examples = (
                [chat_example(tokenizer, ex, str(instruction)) for ex in split]
                for split in (train_examples, val_examples, test_examples))
        also_tasks = also_task_configs(cfg)  # a bad name fails here, before any training
        record["data"] = {"train_examples": len(train_examples), "validation_examples": len(val_examples),
                          "test_examples": len(test_examples)}
        eval_bs = int(cfg.eval.batch_size)
        logger = WandbLogger(bool(cfg.logger.wandb) and dist_ctx.is_main, cfg.logger.project,
                             cfg.logger.mode, cfg.run_name, resolved,
                             **run_context.wandb_identity(cfg, fingerprint, record["protocol"],
                                                          record["hydra"]))
        record["wandb"] = logger.info or None

        def evaluate(split_examples) -> dict[str, Any]:
            return evaluate_task(method.eval_model(model), tokenizer, cfg.task, split_examples,
                                 batch_size=eval_bs, max_examples=cfg.eval.max_examples, data_dir=data_dir,
                                 device=device)

        # rank 0 evaluates; under FSDP every rank runs the same sharded forwards in lockstep
        evaluates = dist_ctx.is_main or dist_ctx.strategy == "fsdp"
        if cfg.eval.before_training and test_examples and evaluates:
            windows.switch("eval")
            before = evaluate(test_examples)
            windows.switch("train")
            record["metrics"]["before"] = before
            record.setdefault("samples", {})["before"] = getattr(before, "samples", [])[:8]
            predictions["before"] = getattr(before, "predictions", [])
            logger.summary({f"before/{k}": v for k, v in before.items()})
            log.info("before training: %s", _fmt(before))
        loop_result = None
        if method.trains:
            val_batches = loss_batches(tokenizer, val_examples, cfg.task, eval_bs,
                                       cfg.eval.max_loss_batches, device) if val_examples else []

            def on_epoch_end(epoch: int) -> dict[str, Any]:
                if not (cfg.trainer.eval_every_epoch and val_batches):
                    return {}
                with windows.evaluating():
                    val = {"val_loss": validation_loss(method.eval_model(model), val_batches)}
                logger.log(val)
                log.info("epoch %d: %s", epoch + 1, _fmt(val))
                return val

            def validate() -> float:
                with windows.evaluating():  # a loss pass on the validation split: evaluation memory
                    return validation_loss(method.eval_model(model), val_batches)

            loop_cfg = LoopConfig(
                num_epochs=int(cfg.trainer.num_epochs), batch_size=int(cfg.trainer.batch_size),
                grad_accum=int(cfg.trainer.grad_accum), max_steps=cfg.trainer.max_steps, seed=int(cfg.seed),
                checkpoint_dir=checkpoint_dir,
                checkpoint_every_steps=cfg.trainer.checkpoint_every_steps, resume=bool(cfg.trainer.resume),
                checkpoint_lock=str(cfg.trainer.checkpoint_lock),
                allow_version_mismatch=bool(cfg.trainer.allow_version_mismatch),
                log_every_steps=int(cfg.trainer.log_every_steps), num_workers=int(cfg.trainer.num_workers),
                eval_every_steps=cfg.trainer.eval_every_steps,
                select=str(cfg.trainer.select),
                precision=str(cfg.trainer.precision))
            dataset = TrainDataset(train_examples, tokenizer, int(cfg.task.max_input_len),
                                   int(cfg.task.max_output_len))
            loop_result = train(model, method, dataset, collate_train(tokenizer.pad_token_id), loop_cfg,
                                device, on_epoch_end=on_epoch_end,
                                on_step=lambda step, m: logger.log(m, step=step),
                                validate=validate if val_batches else None, train_peak=windows.train_so_far)
            record["history"] = loop_result.history
            record["epochs"] = loop_result.epoch_metrics
            record["resumed_from_step"] = loop_result.resumed_from_step
            record["segments"] = loop_result.segments  # each process that worked on the run
            record["val_evaluations"] = loop_result.val_evaluations
            record["scored_checkpoint"] = loop_result.scored_checkpoint  # which step "final" scores
            record["truncation"] = dataset.stats.summary()
            if dist_ctx.active:  # what each rank held: the record's memory is rank 0's
                peaks = distributed.gather_objects((windows.train_so_far() or {}).get("bytes"))
                record["distributed"] = {"world_size": dist_ctx.world_size, "backend": dist_ctx.backend,
                                         "strategy": dist_ctx.strategy,
                                         "peak_bytes_per_rank": peaks, "peak_bytes_max": max(peaks),
                                         "peak_bytes_sum": sum(peaks)}
            if loop_result.steps_done < loop_result.planned_steps:  # never a short run as "completed"
                raise RuntimeError(f"the run did {loop_result.steps_done} of its "
                                   f"{loop_result.planned_steps} planned optimizer steps")
        t_eval = time.perf_counter()
        windows.switch("eval")
        final = evaluate(test_examples) if test_examples and evaluates else {}
        record["metrics"]["final"] = final
        record.setdefault("samples", {})["final"] = getattr(final, "samples", [])[:8]
        predictions["final"] = getattr(final, "predictions", [])
        if cfg.eval.get("score_validation") and val_examples and evaluates:  # model selection on dev
            dev = evaluate(val_examples)
            record["metrics"]["validation"] = dev
            predictions["validation"] = getattr(dev, "predictions", [])
            logger.summary({f"validation/{k}": v for k, v in dev.items()})
            log.info("final (%s): %s", cfg.eval.split, _fmt(dev))
        for name, task_cfg in also_tasks.items():  # the same trained model, other tasks
            if not evaluates:
                break
            also = evaluate_task(method.eval_model(model), tokenizer, task_cfg,
                                 load_split(task_cfg, "test", data_dir, eos), batch_size=eval_bs,
                                 max_examples=task_cfg.max_eval_examples, data_dir=data_dir, device=device)
            record.setdefault("also_tasks", {})[name] = OmegaConf.to_container(task_cfg, resolve=True)
            record["metrics"].setdefault("also", {})[name] = also
            record["samples"][f"final@{name}"] = getattr(also, "samples", [])[:8]
            predictions[f"final@{name}"] = getattr(also, "predictions", [])
            logger.summary({f"final@{name}/{k}": v for k, v in also.items()})
            log.info("final (%s test, same model): %s", name, _fmt(also))
        if cfg.trainer.save_final and method.trains and evaluates:  # the record names the folder
            record["final_model"] = export_final(method, model, tokenizer, final_model_dir(
                record["hydra"].get("output_dir"), checkpoint_dir))
        record["status"] = "completed"
        logger.summary({f"final/{k}": v for k, v in final.items()})
        log.info("final (%s): %s", cfg.eval.final_split, _fmt(final))
        record["time"] = {"train_seconds": loop_result.train_seconds if loop_result else 0.0,
                          "train_cpu_seconds": loop_result.train_cpu_seconds if loop_result else 0.0,
                          "epoch_eval_seconds": loop_result.eval_seconds if loop_result else 0.0,
                          "final_eval_seconds": time.perf_counter() - t_eval,
                          "steps": loop_result.steps_done if loop_result else 0,
                          "segments": len(loop_result.segments) if loop_result else 1}
    except BaseException as exc:  # record what happened, keep checkpoints, then re-raise
        record["status"] = "failed"
        record["error"] = {"type": type(exc).__name__, "message": str(exc),
                           "traceback": traceback.format_exc(limit=20)}
        raise
    finally:
        record["finished_at"] = records.now_iso()
        record.setdefault("time", {})["total_seconds"] = records.total_seconds(
            time.perf_counter() - t_start, loop_result.segments if loop_result else None)
        completed = record["status"] == "completed"
        if windows is not None:
            segments = [s["peak_memory"] for s in loop_result.segments[:-1]] if loop_result else []
            record["memory"] = {**windows.summary(earlier_train=segments), "scope": memory_scope}
        if model is not None:
            trainable = _safe(lambda: count_parameters(method.trainable_parameters(model)))
            record["parameters"] = {"total": count_parameters(model.parameters()), "trainable": trainable}
        record["method"] = _safe(method.describe) if completed else {}
        main_rank = distributed.context().is_main  # under data parallel only rank 0 writes
        path = records.write_record_or_fallback(record, results_dir) if main_rank else None  # never raises
        record["_path"] = str(path) if path else None
        if path and any(predictions.values()):  # every prediction + references beside the record (rescore)
            record["predictions"] = _safe(lambda: attach_predictions(path, predictions))
        try:
            sharded = distributed.context().strategy == "fsdp"  # every rank helps gather; rank 0 writes
            if hasattr(method, "save_artifacts") and completed and (main_rank or sharded):
                method.save_artifacts(Path(checkpoint_dir) / "artifacts")
            if completed and cfg.trainer.keep_checkpoints == "none" and main_rank:
                checkpoints.delete_folder(Path(checkpoint_dir))
            if logger is not None:
                memory = record.get("memory") or {}
                logger.summary({"status": record["status"], "peak_mem_bytes": memory.get("bytes"),
                                "peak_train_mem_bytes": memory.get("train_bytes")})
                logger.finish(0 if completed else 1)
        except Exception:
            if completed:
                raise
            log.exception("closing the failed run failed as well (the run's own error follows)")
        log.info("run record: %s", path)
    distributed.teardown()
    if path is None and main_rank:
        raise RuntimeError("the run completed but its record could not be written anywhere; its metrics "
                           "are printed above")
    return record


def _or_none(fn):
    """``fn()``, or None when it fails (the failure is met again, and recorded, inside the run)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def _config_as_given(cfg: DictConfig) -> Any:
    """The config for a record made before validation: resolved if possible, else as written."""
    for resolve in (True, False):
        try:
            return OmegaConf.to_container(cfg, resolve=resolve)
        except Exception:  # noqa: BLE001
            continue
    return repr(cfg)


def _completed_record(cfg: DictConfig) -> dict[str, Any] | None:
    """The member's completed record (trainer.skip_completed), or None. A config that does not even
    resolve is left to run() itself, which records the failure."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        results_dir = _abs(cfg.paths.results_dir)
    except Exception:  # noqa: BLE001
        return None
    return resume.completed_record(results_dir, resolved)


def _source_info() -> dict[str, Any]:
    """The code that ran: the checkout's git commit, else the installed package's version."""
    info = records.git_info(CHECKOUT_ROOT) if in_checkout() else {"commit": None, "dirty": None}
    return {**info, "hizfo_version": __version__}


def _safe(fn):
    """Bookkeeping for the record must never mask the error that ended a run (a method that failed
    before its setup cannot report its trainable tensors)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({type(exc).__name__}: {exc})"


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


_STARTED: list[bool] = []  # set once Hydra has composed a config and called main


@hydra.main(config_path=hydra_config_path(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    _STARTED.append(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    record = run(cfg)
    final = record["metrics"].get("final", {})
    # Returned value lets Hydra sweepers (e.g. Optuna) optimise the run's main metric.
    for key in ("rouge1", "accuracy", "pass@1"):
        if key in final:
            return float(final[key])
    return None


def cli() -> None:
    """The command line (``python -m hizfo.train``, ``hizfo-train``): ``main``, plus a failed record
    when Hydra refuses the overrides before any run starts (hizfo.runs.override_failure)."""
    import sys

    try:
        main()
    except SystemExit as exc:
        if exc.code not in (0, None) and not _STARTED:
            from hizfo.runs.override_failure import record_refused_overrides

            path = record_refused_overrides(sys.argv[1:])
            if path is not None:
                print(f"hizfo: the overrides were refused; failed run record: {path}", file=sys.stderr)
        raise


if __name__ == "__main__":
    cli()
