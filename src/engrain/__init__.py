"""engrain: teach a language model what a prompt would have told it.

The Python API mirrors the CLI::

    import engrain
    record = engrain.evaluate(engrain.EvalConfig(model="smollm2-135m", task="rte", shots=16, limit=100))
    print(record["metrics"]["rte"]["accuracy"])
"""

from engrain.config import EvalConfig
from engrain.errors import EngrainError
from engrain.evaluate import evaluate

__all__ = ["EvalConfig", "EngrainError", "evaluate", "__version__"]
__version__ = "0.1.0"
