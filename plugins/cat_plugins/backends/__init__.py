"""Built-in backends: transformers (in-process), vLLM (lazy), any OpenAI-compatible server."""

from cat_framework import hookimpl

BACKENDS: dict[str, str] = {
    "transformers": "cat_plugins.backends.transformers_backend:TransformersBackend",
}


@hookimpl
def register_backends(register):
    for name, target in BACKENDS.items():
        register(target, name=name)
