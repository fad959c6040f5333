"""The `loraplex` command: `loraplex serve [--model-id PATH ...]` starts the HTTP server;
`loraplex bench --url URL ...` load-tests a running one."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import NoReturn

from loraplex.server.config import ConfigError, EngineConfig

from .http_stack import EVENT_LOOPS, HTTP_PROTOCOLS

logger = logging.getLogger("loraplex")


def _in_range(kind: type, low: float, high: float, what: str, low_open: bool = False):
    """An argparse type: `kind(text)` within [low, high] (`low_open`: (low, high]), NaN refused."""

    def parse(text: str):
        value = kind(text)
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_FINITE = 1.7976931348623157e308  # the largest float: infinity is refused
_positive_int = _in_range(int, 1, _FINITE, "a positive integer")
_non_negative_int = _in_range(int, 0, _FINITE, "0 or more")
_positive_float = _in_range(float, 0, _FINITE, "a positive number of seconds", low_open=True)
_non_negative_float = _in_range(float, 0, _FINITE, "0 or more")
_port = _in_range(int, 0, 65535, "a TCP port (0-65535)")


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model-id",
        default=None,
        help="a Hugging Face model folder, or a hub id in the local cache (default: the built-in demo model)",
    )
    model.add_argument(
        "--served-model-name", default=None, help="the model's name in the API (default: --model-id)"
    )
    model.add_argument("--revision", default=None, help="hub revision (with a hub id)")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    model.add_argument(
        "--num-threads", type=_positive_int, default=None, help="CPU threads for torch (default: torch's)"
    )

    http = parser.add_argument_group("http")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=_port, default=8080)
    http.add_argument("--max-concurrent-requests", type=_positive_int, default=128)
    http.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    http.add_argument(
        "--request-timeout", type=_positive_float, default=None, help="seconds before a request is ended"
    )
    http.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=30.0,
        help="seconds SIGTERM waits for running requests",
    )
    http.add_argument(
        "--loop",
        default="auto",
        choices=["auto", *EVENT_LOOPS],
        help="the event loop (auto: uvloop where it is installed, as uvicorn chooses; /info names it)",
    )
    http.add_argument(
        "--http",
        default="auto",
        choices=["auto", *HTTP_PROTOCOLS],
        help="the HTTP/1.1 implementation (auto: httptools where it is installed; /info names it)",
    )
    http.add_argument(
        "--gil-switch-interval-ms",
        type=_in_range(float, 0.001, 1000, "in [0.001, 1000] ms"),
        default=0.5,
        help="how long the HTTP thread may keep the GIL while the engine thread waits for it "
        "(Python's own default is 5 ms, which delays GPU decode steps)",
    )

    chat = parser.add_argument_group("chat")
    chat.add_argument(
        "--chat-template",
        default=None,
        help="a chat template file (or the template itself) that replaces the base model's; adapters "
        "that ship their own keep theirs",
    )
    chat.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="render the `chat_template` a chat request sends (refused by default, as in vLLM)",
    )

    security = parser.add_argument_group("auth, rate limits and metrics")
    security.add_argument("--api-key", action="append", default=[], help="accepted API key (repeatable)")
    security.add_argument("--api-key-file", default=None, help="file with one API key per line")
    security.add_argument(
        "--metrics-without-auth", action="store_true", help="leave /metrics open when API keys are set"
    )
    security.add_argument(
        "--rate-limit-requests", type=_positive_int, default=None, help="requests per minute per key"
    )
    security.add_argument(
        "--rate-limit-tokens", type=_positive_int, default=None, help="tokens per minute per key"
    )
    security.add_argument(
        "--metrics-adapter-label-limit",
        type=_non_negative_int,
        default=100,
        help="adapters named in metric labels, then 'other'",
    )

    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--max-input-length", type=int, default=None, help="default: min(1024, context - 1)")
    limits.add_argument("--max-total-tokens", type=int, default=None, help="default: min(2048, context)")
    limits.add_argument("--max-batch-prefill-tokens", type=int, default=4096, help="prefill tokens per step")
    limits.add_argument(
        "--max-batch-total-tokens",
        type=int,
        default=None,
        help="KV cache size in tokens (default: what the memory budget holds)",
    )
    limits.add_argument("--max-batch-size", type=int, default=256, help="requests running at once")
    limits.add_argument("--max-stop-sequences", type=int, default=4)
    limits.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    limits.add_argument("--kv-cache-memory-gib", type=float, default=1.0, help="KV cache budget on CPU")
    limits.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    limits.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="run decode steps eagerly on CUDA (default: captured CUDA graphs)",
    )

    adapters = parser.add_argument_group("adapters")
    adapters.add_argument(
        "--adapter-dir", action="append", default=[], help="a root folder of adapters (repeatable)"
    )
    adapters.add_argument("--max-active-adapters", type=int, default=32, help="GPU adapter slots")
    adapters.add_argument("--max-lora-rank", type=int, default=64)
    adapters.add_argument("--adapter-cpu-cache", type=int, default=128, help="adapters kept in host memory")
    adapters.add_argument("--adapter-memory-gib", type=float, default=None, help="cap on GPU slot memory")
    adapters.add_argument("--preload-adapter", action="append", default=[], help="load at start (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplex", description="Serve one LLM with many LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    _add_serve_arguments(serve)
    # `loraplex bench ...` is dispatched to loraplex.loadgen before this parser runs; listed for --help.
    commands.add_parser("bench", help="load-test a running server (`loraplex bench --help`)")
    return parser


DEMO_NAME = "loraplex-demo"


def use_demo_defaults(args: argparse.Namespace) -> bool:
    """Without --model-id, serve the built-in demo model with its three adapters preloaded."""
    if args.model_id is not None:
        return False
    from loraplex import demo

    args.model_id = str(demo.base_model_dir())
    args.served_model_name = args.served_model_name or DEMO_NAME
    args.adapter_dir = [*args.adapter_dir, str(demo.adapters_dir())]
    args.preload_adapter = [*args.preload_adapter, *demo.ADAPTER_NAMES]
    return True


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model_id=args.model_id,
        served_model_name=args.served_model_name,
        revision=args.revision,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        max_batch_total_tokens=args.max_batch_total_tokens,
        kv_cache_memory_gib=args.kv_cache_memory_gib,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_batch_size=args.max_batch_size,
        max_input_length=args.max_input_length,
        max_total_tokens=args.max_total_tokens,
        max_stop_sequences=args.max_stop_sequences,
        adapter_dirs=tuple(args.adapter_dir),
        max_active_adapters=args.max_active_adapters,
        max_lora_rank=args.max_lora_rank,
        adapter_cpu_cache=args.adapter_cpu_cache,
        adapter_memory_gib=args.adapter_memory_gib,
        preload_adapters=tuple(args.preload_adapter),
        cuda_graphs=args.cuda_graphs,
    )


def _check_stack(flag: str, choice: str) -> None:
    """A named `--loop`/`--http` that does not import ends `serve` with one line."""
    from .http_stack import check_installed

    try:
        check_installed(choice)
    except ValueError as error:
        fail(f"{flag}: {error}")


def fail(message: str) -> NoReturn:
    print(f"loraplex: error: {message}", file=sys.stderr)
    sys.exit(2)


def listen_error(host: str, port: int) -> str | None:
    """Why the server could not listen on `host:port`, or None if it can.

    Binds, then releases, every address uvicorn will listen on, the way asyncio's `create_server`
    binds them (SO_REUSEADDR; IPv6 sockets IPv6-only; families the system lacks skipped), so that a
    taken port is refused before the model loads rather than after.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                probe = socket.socket(family, kind, proto)
            except OSError:
                continue
            with probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as error:
        reason = error.strerror or str(error)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}"
    return None


def serve(args: argparse.Namespace) -> None:
    problem = listen_error(args.host, args.port)
    if problem:
        fail(problem)

    import uvicorn

    from loraplex.server.engine import Engine
    from loraplex.server.models.loader import (
        ModelLoadError,
        check_model_folder,
        load_config,
        resolve_model_path,
    )

    from .app import ServerSettings, create_app
    from .auth import read_api_keys
    from .chat_template import load_server_template
    from .draining import DrainingServer
    from .http_stack import protocol_name

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    demo = use_demo_defaults(args)
    sys.setswitchinterval(args.gil_switch_interval_ms / 1000)
    if args.num_threads is not None:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        config = engine_config(args)
        path = resolve_model_path(config.model_id, config.revision)
        check_model_folder(path)
        load_config(path)
    except (ConfigError, ModelLoadError) as error:
        fail(str(error))

    _check_stack("--loop", args.loop)
    _check_stack("--http", args.http)

    chat_template = None
    if args.chat_template is not None:
        try:
            chat_template = load_server_template(args.chat_template)
        except ValueError as error:
            fail(f"--chat-template: {error}")
    try:
        settings = ServerSettings(
            max_concurrent_requests=args.max_concurrent_requests,
            api_keys=read_api_keys(args.api_key, args.api_key_file),
            metrics_without_auth=args.metrics_without_auth,
            rate_limit_requests=args.rate_limit_requests,
            rate_limit_tokens=args.rate_limit_tokens,
            request_timeout=args.request_timeout,
            adapter_label_limit=args.metrics_adapter_label_limit,
            chat_template=chat_template,
            trust_request_chat_template=args.trust_request_chat_template,
        )
    except OSError as error:
        fail(f"--api-key-file: {error}")
    except ValueError as error:
        fail(str(error))

    failure: list[str] = []
    server: DrainingServer | None = None

    def on_load_failure(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(lambda: Engine(config), settings, on_load_failure)
    uvicorn_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        loop=args.loop,
        http=args.http,
    )
    uvicorn_config.load()  # resolves the HTTP protocol class now (uvicorn skips loading again)
    app.state.http_protocol = protocol_name(uvicorn_config.http_protocol_class)
    server = DrainingServer(uvicorn_config, app.state.client, args.shutdown_timeout)
    if demo:
        logger.info(
            "no --model-id given: serving the built-in demo model %r (it echoes its input) with adapters "
            "upper, reverse and rot13 preloaded, on http://%s:%d",
            DEMO_NAME,
            args.host,
            args.port,
        )
    else:
        logger.info("loraplex serving %s on http://%s:%d", config.model_id, args.host, args.port)
    server.run()
    if failure:
        print(f"loraplex: error: {failure[0]}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from loraplex.loadgen.cli import main as bench_main

        bench_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(args)


if __name__ == "__main__":
    main()
