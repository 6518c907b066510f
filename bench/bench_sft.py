"""Training throughput of the SFT loop against the Hugging Face Trainer on the same job.

Both sides train the same model folder on the same tokenized examples (the SFT masking), with
the same micro-batch size and gradient accumulation, Adafactor at lr 1e-5 with the linear
schedule, no gradient clipping, fp32 on CPU (or the GPU's bf16 with --bf16), in this process.
Throughput is non-padding tokens per second over steps 2..K (step 1 is warm-up), wall clock
including batching; also per CPU-second of this process, which other jobs on a shared machine
disturb much less than the wall clock (with the same --threads on both sides). Runs alternate
(ours, Trainer, ours, ...) so that changes in machine load hit both; the report gives each
side's median and the ratio ours / Trainer. Our loop also logs MFU when the device's peak is
known (GPU) or given (--peak-tflops).

    .venv/bin/python bench/bench_sft.py --model models/smollm2 --runs 3
    .venv/bin/python bench/bench_sft.py --tiny --runs 5       # no model folder needed
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "sft_final.jsonl"


def ours(args: argparse.Namespace, model_dir: str, workdir: Path) -> dict[str, Any]:
    from sft.config import recipe_from_dict
    from sft.train import train

    out = Path(tempfile.mkdtemp(dir=workdir, prefix="ours-"))
    recipe = recipe_from_dict(
        {
            "model": {"name_or_path": model_dir, "precision": "bf16" if args.bf16 else "fp32"},
            "data": {"path": args.data, "max_length": args.max_length},
            "training": {
                "output_dir": str(out),
                "global_batch_size": args.global_batch,
                "micro_batch_size": args.micro_batch,
                "max_steps": args.steps,
                "packing": args.packing,
                "save_every_steps": None,
                "progress_bar": False,
                "peak_tflops": args.peak_tflops,
            },
        }
    )
    train(recipe)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = rows[1:]
    tokens = sum(r["tokens"] for r in measured)
    seconds = sum(r["step_time_s"] for r in measured)
    cpu_seconds = sum(r["cpu_time_s"] for r in measured)
    mfu = [r["mfu"] for r in measured if r["mfu"] is not None]
    return {
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "step_s": [round(r["step_time_s"], 3) for r in measured],
        "mfu": statistics.median(mfu) if mfu else None,
        "loss": [round(r["loss"], 4) for r in rows],
    }


def trainer(args: argparse.Namespace, model_dir: str, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from sft.config import DataConfig, ModelConfig
    from sft.data import IGNORE_INDEX, build_dataset
    from sft.model import load_model, resolve_precision

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = build_dataset(DataConfig(path=args.data, max_length=args.max_length), tokenizer)
    rows = [
        {"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in examples.examples
    ]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    seen = {"tokens": 0}

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), IGNORE_INDEX)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        seen["tokens"] += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    marks: list[tuple[float, float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *unused: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), time.process_time(), seen["tokens"]))

    # The same loading as our loop (dropout off, same dtype) so only the loop differs.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("bf16" if args.bf16 else "fp32", device)
    model = load_model(ModelConfig(name_or_path=model_dir), precision)
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="trainer-"))
    training_args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.global_batch // args.micro_batch,
        learning_rate=1e-5,
        optim="adafactor",
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a float below 1 is a ratio of the total steps
        max_steps=args.steps,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=42,
    )
    Trainer(
        model=model, args=training_args, train_dataset=rows, data_collator=collate,
        callbacks=[Clock()],
    ).train()  # fmt: skip
    (t1, c1, k1), (tn, cn, kn) = marks[0], marks[-1]
    steps = [round(b[0] - a[0], 3) for a, b in itertools.pairwise(marks)]
    return {
        "tokens_per_s": (kn - k1) / (tn - t1),
        "tokens_per_cpu_s": (kn - k1) / (cn - c1),
        "step_s": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2"))
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead")
    parser.add_argument("--data", default=str(FIXTURE))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1280)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--packing", action="store_true", help="our loop with packing")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = args.model
        if args.tiny:
            from sft.tiny import save_tiny_model

            model_dir = str(save_tiny_model(workdir / "tiny", hidden_size=128, num_layers=4))
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": []}
        for run in range(args.runs):
            for name, fn in (("ours", ours), ("trainer", trainer)):
                result = fn(args, model_dir, workdir)
                results[name].append(result)
                print(f"run {run + 1} {name:8s} {result['tokens_per_s']:9.1f} tokens/s "
                      f"{result['tokens_per_cpu_s']:9.1f} tokens/cpu-s "
                      f"steps {result['step_s']}", flush=True)  # fmt: skip

    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    per_cpu = {k: statistics.median(r["tokens_per_cpu_s"] for r in v) for k, v in results.items()}
    mfu = [r["mfu"] for r in results["ours"] if r.get("mfu") is not None]
    summary = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        "model": "tiny" if args.tiny else args.model,
        "steps": args.steps,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "packing": args.packing,
        "ours_tokens_per_s": round(median["ours"], 1),
        "trainer_tokens_per_s": round(median["trainer"], 1),
        "ratio": round(median["ours"] / median["trainer"], 3),
        "ours_tokens_per_cpu_s": round(per_cpu["ours"], 1),
        "trainer_tokens_per_cpu_s": round(per_cpu["trainer"], 1),
        "ratio_per_cpu_s": round(per_cpu["ours"] / per_cpu["trainer"], 3),
        "ours_mfu": round(statistics.median(mfu), 4) if mfu else None,
        "runs": {k: [round(r["tokens_per_s"], 1) for r in v] for k, v in results.items()},
        "runs_per_cpu_s": {
            k: [round(r["tokens_per_cpu_s"], 1) for r in v] for k, v in results.items()
        },
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
