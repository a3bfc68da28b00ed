"""Built-in backends: transformers (in-process), vLLM (lazy), any OpenAI-compatible server,
a policy on `vllm serve` replicas fed the trainer's weights."""

from cat_framework import hookimpl

BACKENDS: dict[str, str] = {
    "transformers": "cat_plugins.backends.transformers_backend:TransformersBackend",
    "vllm": "cat_plugins.backends.vllm_backend:VLLMBackend",
    "openai": "cat_plugins.backends.openai_backend:OpenAIBackend",
    "vllm-server": "cat_plugins.backends.vllm_server:VLLMServerBackend",
}


@hookimpl
def register_backends(register):
    for name, target in BACKENDS.items():
        register(target, name=name)
