"""Command line: prepare a model folder, or serve one until interrupted.

python -m model_server prepare --model smollm2 --out models/smollm2
python -m model_server serve --model models/smollm2 --port 8000
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from model_server.prepare import KNOWN_MODELS, PrepareError, prepare
from model_server.serve import ServeConfig, ServerStartError, VLLMServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_server")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build a local bf16 model folder vLLM can serve")
    p.add_argument("--model", required=True, help=f"{' | '.join(KNOWN_MODELS)} | .gguf | HF id")
    p.add_argument("--out", default=None, help="output folder (default: under the cache dir)")
    p.add_argument("--cache-dir", default=None, help="downloads and assembled GGUF files")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is valid")

    s = sub.add_parser("serve", help="run a vLLM OpenAI-compatible server until interrupted")
    s.add_argument("--model", required=True, help="a prepared folder (or a known model name)")
    s.add_argument("--served-model-name", default=None)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    s.add_argument("--max-model-len", type=int, default=4096)
    s.add_argument("--cpu-kvcache-gib", type=float, default=2.0)
    s.add_argument("--max-num-seqs", type=int, default=None)
    s.add_argument("--max-num-batched-tokens", type=int, default=None)
    s.add_argument(
        "--chunked-prefill",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: off on CPU (per-request seeds crash it there), vLLM's default on GPU",
    )
    s.add_argument("--tensor-parallel-size", type=int, default=1)
    s.add_argument("--gpu-memory-utilization", type=float, default=None)
    s.add_argument("--no-prefix-caching", action="store_true")
    s.add_argument("--log-path", default=None)
    s.add_argument("extra", nargs="*", help="further vLLM flags after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        try:
            print(prepare(args.model, args.out, args.cache_dir, force=args.force))
        except PrepareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    model = args.model
    if model in KNOWN_MODELS:
        model = str(prepare(model))
    chunked = {"auto": None, "on": True, "off": False}[args.chunked_prefill]
    config = ServeConfig(
        model=model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        device=args.device,
        max_model_len=args.max_model_len,
        cpu_kvcache_gib=args.cpu_kvcache_gib,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        chunked_prefill=chunked,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=not args.no_prefix_caching,
        log_path=args.log_path,
        extra_args=tuple(args.extra),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with VLLMServer(config) as server:
            print(f"serving {server.model_name} at {server.base_url} (Ctrl-C stops)", flush=True)
            while not stop.is_set() and server.alive():
                stop.wait(1.0)
            if not server.alive():
                print(f"error: vLLM exited; log {server.log_path}", file=sys.stderr)
                return 1
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
