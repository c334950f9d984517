"""Converters: how a task's upstream origin files become its tidy data frame.

Every converter takes the task and a mapping {origin file name -> local path} and returns a pandas
DataFrame identical to the dataset's curated ``data.csv``: same columns in the same order, same rows
in the same order, same values (integer columns as ints, strings as strings, a ``split`` column).
The transformation each one implements is the one written down in the dataset's PROVENANCE.md.

The registry maps the name used in a task's ``converter`` field to the function.
"""
from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from discovery.tasks.spec import Task

Converter = Callable[["Task", dict[str, Path]], pd.DataFrame]
CONVERTERS: dict[str, Converter] = {}


class ConverterError(ValueError):
    """A converter cannot run: unknown name, or an origin file it needs is missing."""


def register(name: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} registered twice")
        CONVERTERS[name] = fn
        return fn

    return deco


def get_converter(name: str) -> Converter:
    try:
        return CONVERTERS[name]
    except KeyError:
        known = ", ".join(sorted(CONVERTERS))
        raise ConverterError(f"unknown converter {name!r}; known converters: {known}") from None


def _need(paths: dict[str, Path], *files: str) -> list[Path]:
    missing = [f for f in files if f not in paths]
    if missing:
        raise ConverterError(
            f"converter needs origin file(s) {missing}, but the task's sources only give {sorted(paths)}"
        )
    return [Path(paths[f]) for f in files]


# --------------------------------------------------------------------------------------------------
# A user's own task: one CSV that is already tidy (a `split` column, optional `group`).


@register("tidy_csv")
def tidy_csv(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    if len(paths) != 1:
        raise ConverterError(f"tidy_csv reads exactly one CSV source, the task lists {sorted(paths)}")
    (path,) = paths.values()
    return pd.read_csv(path)


# --------------------------------------------------------------------------------------------------
# SLDBench: the 8 tasks mirrored from pkuHaowei/sldbench (train and test parquet files).


@register("sldbench_parquet")
def sldbench_parquet(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    """Read the train and test parquet files, add `split`, concatenate train then test.

    Columns are reordered to: group, features, targets, extras, split. Within each category the
    parquet file's own column order is kept (not the order of the task file), which is the order
    of the curated data.csv.
    """
    frames: dict[str, pd.DataFrame] = {}
    for src in task.sources:
        if src.split is None:
            raise ConverterError(f"sldbench_parquet: source {src.file!r} has no `split` (train or test)")
        if src.split in frames:
            raise ConverterError(f"sldbench_parquet: two sources for split {src.split!r}")
        (path,) = _need(paths, src.file)
        df = pd.read_parquet(path) if src.format == "parquet" else pd.read_csv(path)
        df["split"] = src.split
        frames[src.split] = df
    if set(frames) != {"train", "test"}:
        raise ConverterError(f"sldbench_parquet: needs one train and one test source, got {sorted(frames)}")
    df = pd.concat([frames["train"], frames["test"]], ignore_index=True)

    cols = [c for c in df.columns if c != "split"]
    group = [task.group_column] if task.group_column in cols else []
    features = [c for c in cols if c in set(task.columns) and c not in group]
    targets = [c for c in cols if c in set(task.targets) and c not in group and c not in features]
    extras = [c for c in cols if c not in set(group + features + targets)]
    return df[group + features + targets + extras + ["split"]]


# --------------------------------------------------------------------------------------------------
# Chinchilla (Hoffmann et al. 2022, Figure 4 as extracted by Besiroglu et al. 2024).


@register("chinchilla_approach3")
def chinchilla_approach3(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    (path,) = _need(paths, "svg_extracted_data.csv")
    raw = pd.read_csv(path)
    df = raw.rename(columns={"Model Size": "params", "Training FLOP": "flops"})[["params", "flops", "loss"]]
    df = df.assign(tokens=df["flops"] / (6 * df["params"]))
    df = df.sort_values(["flops", "params"], kind="mergesort").reset_index(drop=True)
    df["split"] = np.where(df["flops"] <= 1.1e21, "train", "test")
    return df[["params", "tokens", "flops", "loss", "split"]]


# --------------------------------------------------------------------------------------------------
# Alabdulmohsin et al. 2022: 92 learning curves (vision + language).


def _bigbench_task(name: str) -> str:
    """`('date', '1-shot')` -> `date_1-shot`; any other task name is kept."""
    if name.startswith("("):
        parts = ast.literal_eval(name)
        return "_".join(str(p) for p in parts)
    return name


@register("learning_curves_alabdulmohsin2022")
def learning_curves_alabdulmohsin2022(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    vision, lang = _need(paths, "revisiting_vision.csv", "revisiting_lang.csv")
    raw = pd.concat([pd.read_csv(vision), pd.read_csv(lang)], ignore_index=True)
    raw = raw.drop_duplicates()  # 687 exact duplicates in the LM domain
    df = pd.DataFrame(
        {
            "domain": raw["Domain"],
            "task": raw["Task"].map(_bigbench_task),
            "model": raw["Model"].str.replace(" ", "", regex=False),
            "seen_examples": raw["Seen Examples"],
            "loss": raw["Loss"],
            "split": np.where(raw["Training"] == 1, "train", "test"),
        }
    )
    df.insert(0, "group", df["domain"] + "|" + df["task"] + "|" + df["model"])
    return df.sort_values(["domain", "task", "model", "seen_examples"], kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Cherti et al. 2023: OpenCLIP zero-shot results.

_OPENCLIP_METRIC = {
    "mscoco_captions": "image_retrieval_recall@5",
    "flickr30k": "image_retrieval_recall@5",
    "voc2007_multilabel": "mean_average_precision",
}
_OPENCLIP_DATA_SIZE = {"LAION-80M": 80e6, "LAION-400M": 400e6, "LAION-2B": 2e9}
_OPENCLIP_TEST_ARCHS = ("ViT-H-14", "ViT-g-14")


@register("openclip_cherti2023")
def openclip_cherti2023(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    results_path, arch_path = _need(paths, "zeroshot_results.csv", "arch_info.csv")
    z = pd.read_csv(results_path)
    arch = pd.read_csv(arch_path).set_index("model")
    z = z[z["upstream_dataset"] != "CLIP-WIT"]  # the 3 OpenAI models per task are fitted separately
    unknown = sorted(set(z["upstream_dataset"]) - set(_OPENCLIP_DATA_SIZE))
    if unknown:
        raise ConverterError(f"openclip_cherti2023: unexpected upstream datasets {unknown}")
    metric = z["downstream_dataset"].map(_OPENCLIP_METRIC).fillna("acc1")
    values = z.reindex(columns=sorted(set(metric))).to_numpy(dtype=float)
    col_of = {m: i for i, m in enumerate(sorted(set(metric)))}
    score = values[np.arange(len(z)), metric.map(col_of).to_numpy()]
    df = pd.DataFrame(
        {
            "group": z["downstream_dataset"],
            "task_type": z["task"],
            "arch": z["arch"],
            "params_total_M": z["arch"].map(arch["mparams"]),
            "params_image_M": z["arch"].map(arch["image_mparams"]),
            "params_text_M": z["arch"].map(arch["text_mparams"]),
            "gmacs_per_sample": z["gmacs"],
            "samples_seen": z["samples_seen"],
            "samples_seen_label": z["samples_seen_pretty"],
            "upstream_dataset": z["upstream_dataset"],
            "dataset_size": z["upstream_dataset"].map(_OPENCLIP_DATA_SIZE),
            "compute_gmacs": z["gmacs_total"],
            "metric_name": metric,
            "score": score,
            "error": 1 - score,
            "model_file": z["name"],
            "split": np.where(z["arch"].isin(_OPENCLIP_TEST_ARCHS), "test", "train"),
        }
    )
    return df.sort_values(["group", "compute_gmacs"], kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Ruan et al. 2024: observational scaling laws over 148 public base LLMs.

_RUAN_BENCH = ["MMLU", "ARC-C", "HellaSwag", "Winograd", "TruthfulQA", "GSM8K", "XWinograd", "HumanEval"]
_RUAN_POST_TRAINING = {
    "gsm8k_5_exact_match,flexible-extract": "pt_gsm8k_5shot",
    "gsm8k_cot_8_exact_match,flexible-extract": "pt_gsm8k_cot_8shot",
    "gsm8k_cot_self_consistency_8_exact_match,maj@5-flexible-extract": "pt_gsm8k_cot_sc_maj5",
    "bbh_fewshot_overall_3_exact_match,flexible-extract": "pt_bbh_3shot",
    "bbh_cot_fewshot_overall_3_exact_match,flexible-extract": "pt_bbh_cot_3shot",
}
_RUAN_SUSPECT = ("cerebras/btlm-3b-8k-base",)  # 627 "T" tokens and 11,286e21 FLOPs: 1000x too large
_RUAN_CUTOFF_1E21 = 84.0  # 8.4e22 FLOP, Llama-2-7B (the README's cutoff), inclusive


@register("observational_ruan2024")
def observational_ruan2024(task: "Task", paths: dict[str, Path]) -> pd.DataFrame:
    bench_p, emergent_p, post_p = _need(
        paths,
        "base_llm_benchmark_eval.csv",
        "base_llm_emergent_capability_eval.csv",
        "base_llm_post_training_eval.csv",
    )
    bench = pd.read_csv(bench_p)
    emergent = pd.read_csv(emergent_p)
    post = pd.read_csv(post_p)
    df = bench.rename(
        columns={
            "Model": "model",
            "Model Family": "family",
            "Model Size (B)": "params_B",
            "Pretraining Data Size (T)": "tokens_T",
            "FLOPs (1E21)": "flops_1e21",
            **{b: "bench_" + b.replace("-", "_") for b in _RUAN_BENCH},
        }
    )
    em = emergent.rename(columns={c: "em_" + c for c in emergent.columns if c != "Model"})
    pt = post[["Model", *_RUAN_POST_TRAINING]].rename(columns=_RUAN_POST_TRAINING)
    df = df.merge(em.rename(columns={"Model": "model"}), on="model", how="left", validate="one_to_one")
    df = df.merge(pt.rename(columns={"Model": "model"}), on="model", how="left", validate="one_to_one")
    df["log10_flops"] = np.log10(df["flops_1e21"] * 1e21)
    suspect = df["model"].isin(_RUAN_SUSPECT)
    df["split"] = np.select(
        [suspect, df["flops_1e21"].isna(), df["flops_1e21"] <= _RUAN_CUTOFF_1E21],
        ["excluded", "no_flops", "train"],
        "test",
    )
    df["suspect_metadata"] = suspect
    # A model "has" an eval when at least one of the extracted columns has a value. (bloom and
    # falcon-180B appear in the post-training file with all five extracted columns empty.)
    df["has_emergent_eval"] = df[[c for c in df.columns if c.startswith("em_")]].notna().any(axis=1)
    df["has_post_training_eval"] = df[[c for c in df.columns if c.startswith("pt_")]].notna().any(axis=1)
    return df.sort_values(["flops_1e21", "model"], kind="mergesort", na_position="last").reset_index(drop=True)
