"""engrain: teach a language model what a prompt would have told it.

The Python API mirrors the CLI::

    import engrain
    record = engrain.evaluate(engrain.EvalConfig(model="smollm2-135m", task="rte", shots=16, limit=100))
    print(record["metrics"]["rte"]["accuracy"])

Importing engrain (or its config) does not import torch: the functions that compute load it when called.
"""

from engrain.config import EvalConfig, TrainConfig
from engrain.errors import EngrainError

__all__ = ["EvalConfig", "TrainConfig", "EngrainError", "evaluate", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "evaluate":  # the function; the module is engrain.evaluation
        from engrain.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'engrain' has no attribute {name!r}")
